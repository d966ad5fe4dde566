"""Who may do what, where: verbs x resources, roles, bindings per tenant, and the grants they add up to.

    Principal --bindings--> (tenant, role) --role rules--> (verb, resource) --> Grants
                                                                              allows / tenants_for / covers

A binding's tenant is a tenant name, or ``"*"``: every tenant *and* the platform-scoped resources (tenant
definitions, custom roles, metrics). Deny by default: a grant exists only where a binding names it. Roles are
not hierarchical at evaluation time; the built-in ones are listed in full below.

No escalation (Kubernetes RBAC's rule): a principal may bind a role in a tenant, or mint a key carrying it,
only when it holds every permission of that role in that tenant already (``Grants.covers``).
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime

ALL_TENANTS = "*"
ANY = "*"  # as a verb or a resource in a rule: every one


class Verb(enum.StrEnum):
    """What a request does to a resource."""

    GET = "get"
    LIST = "list"
    CREATE = "create"
    UPDATE = "update"
    DELETE = "delete"


class Resource(enum.StrEnum):
    """What a permission is about. Tenant-scoped unless listed in ``PLATFORM_RESOURCES``."""

    TASKS = "tasks"
    LOGS = "logs"
    RESERVATIONS = "reservations"
    CAPACITY = "capacity"
    USAGE = "usage"
    TENANTS = "tenants"
    TOKENS = "tokens"
    ROLES = "roles"
    ROLEBINDINGS = "rolebindings"
    AUDIT = "audit"
    METRICS = "metrics"
    STATE = "state"
    LEASES = "leases"


# Resources with no tenant of their own: only a binding at ``"*"`` grants them. (Creating tenants or custom
# roles is platform-wide too: the route table gives those routes the ``platform`` scope.)
PLATFORM_RESOURCES = frozenset({Resource.METRICS})

Permission = tuple[str, str]  # (verb, resource), either may be ``"*"`` in a role's rules

_ROLE_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")


def _rules(verbs: Iterable[str], resources: Iterable[str]) -> frozenset[Permission]:
    return frozenset((v, r) for v in verbs for r in resources)


_READ = (Verb.GET, Verb.LIST)
_VIEWED = (Resource.TASKS, Resource.LOGS, Resource.RESERVATIONS, Resource.CAPACITY, Resource.USAGE, Resource.TENANTS)
_VIEW = _rules(_READ, (*_VIEWED, Resource.STATE, Resource.LEASES))
_SUBMIT = (
    _VIEW
    | _rules((Verb.CREATE, Verb.UPDATE), (Resource.TASKS,))
    | _rules((Verb.CREATE, Verb.UPDATE, Verb.DELETE), (Resource.STATE, Resource.LEASES))
)
_OPERATE = _SUBMIT | _rules((Verb.CREATE, Verb.DELETE), (Resource.RESERVATIONS,)) | _rules(_READ, (Resource.AUDIT,))
_TENANT_ADMIN = (
    _OPERATE
    | _rules((*_READ, Verb.CREATE, Verb.DELETE), (Resource.TOKENS, Resource.ROLEBINDINGS))
    | _rules(_READ, (Resource.ROLES,))
)


@dataclass(frozen=True, slots=True)
class Role:
    """A named set of (verb, resource) rules. Built-in roles cannot be changed or deleted."""

    name: str
    rules: frozenset[Permission]
    description: str = ""
    builtin: bool = False

    def grants(self, verb: str, resource: str) -> bool:
        """True when a rule of this role allows ``verb`` on ``resource``."""
        rules = self.rules  # four set lookups, not a scan: this runs several times per request
        return (verb, resource) in rules or (ANY, resource) in rules or (verb, ANY) in rules or (ANY, ANY) in rules


BUILTIN_ROLES: Mapping[str, Role] = {
    role.name: role
    for role in (
        Role("platform-admin", frozenset({(ANY, ANY)}), "everything, in every tenant and on the platform", True),
        Role("tenant-admin", _TENANT_ADMIN, "operator, plus keys and role bindings of its tenant", True),
        Role("operator", _OPERATE, "submitter, plus reservations and the tenant's audit log", True),
        Role("submitter", _SUBMIT, "viewer, plus submitting and cancelling tasks and writing state", True),
        Role("viewer", _VIEW, "reads the tenant's tasks, logs, reservations, usage and state", True),
    )
}


def check_role_name(name: str) -> str | None:
    """Why ``name`` cannot name a custom role, or ``None``."""
    if not _ROLE_NAME.match(name):
        return "a role name is 1-63 lowercase letters, digits or '-', starting and ending with a letter or digit"
    if name in BUILTIN_ROLES:
        return f"{name!r} is a built-in role"
    return None


def check_rule(verb: str, resource: str) -> str | None:
    """Why ``(verb, resource)`` is not a valid rule, or ``None``."""
    if verb != ANY and verb not in Verb.__members__.values():
        return f"unknown verb {verb!r}; valid: {', '.join(v.value for v in Verb)} or '*'"
    if resource != ANY and resource not in Resource.__members__.values():
        return f"unknown resource {resource!r}; valid: {', '.join(r.value for r in Resource)} or '*'"
    return None


@dataclass(frozen=True, slots=True)
class Binding:
    """``role`` granted in ``tenant`` (``"*"``: everywhere, platform included)."""

    tenant: str
    role: str


class PrincipalKind(enum.StrEnum):
    """How a principal proved who it is."""

    API_KEY = "api_key"
    OIDC = "oidc"
    ANONYMOUS = "anonymous"  # only with --insecure-no-auth
    SYSTEM = "system"  # the server itself (bootstrap), never from a request


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated caller: its stable ``subject`` (``key:<id>``, ``oidc:<sub>``) and where it holds roles."""

    subject: str
    kind: PrincipalKind
    bindings: tuple[Binding, ...]
    name: str = ""  # the key's owner or the token's name claim, for people
    key_id: str | None = None

    @property
    def home_tenant(self) -> str | None:
        """The one tenant this principal is bound in (``None`` when several, or everywhere)."""
        tenants = {b.tenant for b in self.bindings}
        if len(tenants) == 1:
            (only,) = tenants
            return None if only == ALL_TENANTS else only
        return None


@dataclass(frozen=True, slots=True)
class Grants:
    """The permissions a set of bindings adds up to, by tenant; ``"*"`` holds the everywhere ones."""

    by_tenant: Mapping[str, frozenset[Role]] = field(default_factory=dict)

    def allows(self, verb: str, resource: str, tenant: str | None) -> bool:
        """True when ``verb`` on ``resource`` may be done in ``tenant`` (``None``: on the platform itself)."""
        if any(role.grants(verb, resource) for role in self.by_tenant.get(ALL_TENANTS, ())):
            return True
        if tenant is None or tenant == ALL_TENANTS or resource in PLATFORM_RESOURCES:
            return False
        return any(role.grants(verb, resource) for role in self.by_tenant.get(tenant, ()))

    def tenants_for(self, verb: str, resource: str) -> frozenset[str] | None:
        """The tenants where ``verb`` on ``resource`` is allowed; ``None`` means every tenant."""
        if self.allows(verb, resource, None):
            return None
        if resource in PLATFORM_RESOURCES:
            return frozenset()
        return frozenset(
            t
            for t, roles in self.by_tenant.items()
            if t != ALL_TENANTS and any(role.grants(verb, resource) for role in roles)
        )

    def holds_anywhere(self, verb: str, resource: str) -> bool:
        """True when ``verb`` on ``resource`` is allowed in at least one tenant (or everywhere)."""
        found = self.tenants_for(verb, resource)
        return found is None or bool(found)

    def covers(self, role: Role, tenant: str) -> bool:
        """True when every rule of ``role`` is already allowed in ``tenant``: granting it escalates nothing."""
        scope = None if tenant == ALL_TENANTS else tenant
        for verb, resource in role.rules:
            verbs = [v.value for v in Verb] if verb == ANY else [verb]
            resources = [r.value for r in Resource] if resource == ANY else [resource]
            if not all(self.allows(v, r, scope) for v in verbs for r in resources):
                return False
        return True


def compute_grants(bindings: Iterable[Binding], roles: Mapping[str, Role]) -> Grants:
    """The grants of ``bindings``; a binding to a role that no longer exists grants nothing."""
    by_tenant: dict[str, set[Role]] = {}
    for binding in bindings:
        role = roles.get(binding.role)
        if role is not None:
            by_tenant.setdefault(binding.tenant, set()).add(role)
    return Grants({tenant: frozenset(found) for tenant, found in by_tenant.items()})


SYSTEM_PRINCIPAL = Principal("system", PrincipalKind.SYSTEM, (Binding(ALL_TENANTS, "platform-admin"),), "taskplane")


@dataclass(frozen=True, slots=True)
class ApiKey:
    """A stored API key: everything but the secret, of which only a keyed hash is kept.

    The token a caller sends is ``tpk_<id>_<secret>``; ``id`` is public (it names the key in lists, the audit
    log and revocations), ``secret`` is 256 random bits shown once at creation.
    """

    id: str
    secret_hash: str
    owner: str
    tenant: str  # "*" for a platform-wide key
    roles: tuple[str, ...]
    created_at: datetime
    created_by: str
    expires_at: datetime | None = None
    revoked_at: datetime | None = None
    last_used_at: datetime | None = None
    description: str = ""

    def live(self, now: datetime) -> bool:
        """Not revoked and not expired at ``now``."""
        return self.revoked_at is None and (self.expires_at is None or now < self.expires_at)

    @property
    def subject(self) -> str:
        """The principal subject of whoever presents this key."""
        return f"key:{self.id}"


@dataclass(frozen=True, slots=True)
class RoleBinding:
    """A stored binding of ``role`` in ``tenant`` to the principal ``subject`` (e.g. ``oidc:alice``)."""

    id: str
    subject: str
    tenant: str
    role: str
    created_at: datetime
    created_by: str


@dataclass(frozen=True, slots=True)
class StoredRole:
    """A custom role as stored (built-in roles are never stored)."""

    role: Role
    created_at: datetime
    created_by: str
