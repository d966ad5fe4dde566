"""Security use cases: API keys, custom roles, role bindings, the caller's identity, and the audit log.

Granting is checked twice: the caller must be allowed to create keys (or bindings) in the tenant, and must
already hold every permission of each role it hands out there (``Grants.covers``: no escalation). Every change
is stored together with its audit entry; the audit log itself is read-only over the API.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta

import orjson

from taskplane.domain.access import (
    ALL_TENANTS,
    BUILTIN_ROLES,
    ApiKey,
    Resource,
    Role,
    RoleBinding,
    StoredRole,
    Verb,
    check_role_name,
    check_rule,
)
from taskplane.domain.audit import AuditEntry, AuditRecord, Checkpoint
from taskplane.errors import ForbiddenError, InvalidRequestError, NotFoundError
from taskplane.services.access import Caller
from taskplane.services.auth import AuthService
from taskplane.services.ids import new_binding_id
from taskplane.services.ports import AuditFilter, Clock, SecurityStore
from taskplane.wire.security import (
    AuditHead,
    AuditPage,
    AuditRecordOut,
    BindingCreate,
    BindingList,
    BindingOut,
    BindingRef,
    RoleCreate,
    RoleList,
    RoleOut,
    RuleOut,
    TokenCreate,
    TokenCreated,
    TokenList,
    TokenOut,
    WhoAmI,
)

MAX_AUDIT_PAGE = 1000
EXPORT_PAGE = 1000


def token_out(key: ApiKey, now: datetime) -> TokenOut:
    """The listed form of a key."""
    state = "revoked" if key.revoked_at is not None else "active" if key.live(now) else "expired"
    return TokenOut(
        id=key.id,
        owner=key.owner,
        tenant=key.tenant,
        roles=list(key.roles),
        created_at=key.created_at,
        created_by=key.created_by,
        expires_at=key.expires_at,
        revoked_at=key.revoked_at,
        last_used_at=key.last_used_at,
        description=key.description,
        state=state,
    )


def role_out(role: Role, stored: StoredRole | None = None) -> RoleOut:
    """The wire form of a role."""
    return RoleOut(
        name=role.name,
        builtin=role.builtin,
        description=role.description,
        rules=[RuleOut(verb=v, resource=r) for v, r in sorted(role.rules)],
        created_at=stored.created_at if stored is not None else None,
        created_by=stored.created_by if stored is not None else None,
    )


def binding_out(b: RoleBinding) -> BindingOut:
    """The wire form of a binding."""
    return BindingOut(
        id=b.id, subject=b.subject, tenant=b.tenant, role=b.role, created_at=b.created_at, created_by=b.created_by
    )


def audit_out(r: AuditRecord) -> AuditRecordOut:
    """The wire form of an audit record."""
    e = r.entry
    return AuditRecordOut(
        seq=r.seq,
        at=e.at,
        request_id=e.request_id,
        principal=e.principal,
        tenant=e.tenant,
        action=e.action,
        resource=e.resource,
        outcome=e.outcome,
        status=e.status,
        source=e.source,
        detail=dict(e.detail),
        prev_hash=r.prev_hash,
        hash=r.hash,
    )


class SecurityService:
    """Keys, roles and bindings, each change with its audit entry."""

    def __init__(
        self, store: SecurityStore, auth: AuthService, clock: Clock, tenant_exists: Callable[[str], bool] | None = None
    ) -> None:
        self._store = store
        self._auth = auth
        self._clock = clock
        self._tenant_exists = tenant_exists

    # ----------------------------------------------------------------------------------------- who

    def whoami(self, caller: Caller) -> WhoAmI:
        """The caller's subject, kind and bindings."""
        p = caller.principal
        return WhoAmI(
            subject=p.subject,
            kind=p.kind.value,
            name=p.name,
            bindings=[BindingRef(tenant=b.tenant, role=b.role) for b in p.bindings],
        )

    async def bootstrap_admin_key(self) -> str | None:
        """On a database that never had a key, create the platform-admin key; its token, else ``None``."""
        if await self._store.has_api_keys():
            return None
        return await self.mint_admin_key("created at first start")

    async def mint_admin_key(self, description: str) -> str:
        """Create a platform-admin key on the server's own authority (first start, ``db admin-token``)."""
        caller = Caller.system("bootstrap")
        minted = self._auth.mint(
            owner="admin",
            tenant=ALL_TENANTS,
            roles=("platform-admin",),
            created_by=caller.subject,
            description=description,
        )
        audit = caller.entry(self._clock.now(), "tokens.create", f"tokens/{minted.key.id}", None, why=description)
        await self._store.create_api_key(minted.key, audit)
        return minted.token

    # ---------------------------------------------------------------------------------------- keys

    async def _grantable(self, caller: Caller, verb: str, resource: str, tenant: str, roles: list[str]) -> None:
        """Refuse unless ``caller`` may ``verb`` ``resource`` in ``tenant`` and holds every role it grants."""
        if tenant == ALL_TENANTS:
            caller.check_platform(verb, resource)
        else:
            caller.check_target(verb, resource, tenant)
            # No grant may wait for a tenant that does not exist (yet): it would wake up when one is created.
            if self._tenant_exists is not None and not self._tenant_exists(tenant):
                raise NotFoundError(f"tenant {tenant!r} not found", code="tenant_not_found", field="tenant")
        catalog = await self._auth.roles()
        for name in roles:
            role = catalog.get(name)
            if role is None:
                raise InvalidRequestError(f"there is no role {name!r}", code="unknown_role", field="roles")
            if not caller.grants.covers(role, tenant):
                caller.denied = f"escalation: {name} in {tenant}"
                raise ForbiddenError(
                    f"cannot grant {name!r} in tenant {tenant!r}: it allows more than you hold there",
                    code="escalation",
                    role=name,
                )

    async def create_token(self, caller: Caller, body: TokenCreate) -> TokenCreated:
        """Mint a key; its token is in this response only."""
        tenant = body.tenant or caller.principal.home_tenant
        if tenant is None:
            raise InvalidRequestError("name the key's tenant ('*' for platform-wide)", code="invalid_field")
        roles = list(dict.fromkeys(body.roles))
        await self._grantable(caller, Verb.CREATE, Resource.TOKENS, tenant, roles)
        now = self._clock.now()
        expires_at = body.expires_at
        if body.expires_in is not None:
            if expires_at is not None:
                raise InvalidRequestError("give expires_in or expires_at, not both", code="invalid_field")
            expires_at = now + timedelta(seconds=body.expires_in)
        if expires_at is not None:
            try:
                expires_at.astimezone(UTC)
            except OverflowError:
                raise InvalidRequestError("expires_at is out of range", code="invalid_field") from None
        if expires_at is not None and expires_at <= now:
            raise InvalidRequestError("expires_at is in the past", code="invalid_field", field="expires_at")
        minted = self._auth.mint(
            owner=body.owner,
            tenant=tenant,
            roles=tuple(roles),
            created_by=caller.subject,
            expires_at=expires_at,
            description=body.description,
        )
        audit = caller.entry(now, "tokens.create", f"tokens/{minted.key.id}", _tenant_of(tenant), roles=roles)
        stored = await self._store.create_api_key(minted.key, audit)
        caller.audited = True
        return TokenCreated(**token_out(stored, now).model_dump(), token=minted.token)

    async def list_tokens(self, caller: Caller) -> TokenList:
        """The keys of the tenants where the caller may list keys."""
        visible = caller.visible(Verb.LIST, Resource.TOKENS)
        now = self._clock.now()
        keys = await self._store.list_api_keys(visible)
        return TokenList(items=[token_out(k, now) for k in keys])

    async def _visible_key(self, caller: Caller, verb: str, key_id: str) -> ApiKey:
        missing = NotFoundError(f"API key {key_id} not found", code="token_not_found")
        key = await self._store.get_api_key(key_id)
        if key is None:
            raise missing
        caller.check_object(verb, Resource.TOKENS, key.tenant, missing)
        return key

    async def get_token(self, caller: Caller, key_id: str) -> TokenOut:
        """One key, without its secret."""
        return token_out(await self._visible_key(caller, Verb.GET, key_id), self._clock.now())

    async def revoke_token(self, caller: Caller, key_id: str) -> TokenOut:
        """Revoke a key; effective at once. Revoking a revoked key is a no-op."""
        key = await self._visible_key(caller, Verb.DELETE, key_id)
        now = self._clock.now()
        audit = caller.entry(now, "tokens.revoke", f"tokens/{key.id}", _tenant_of(key.tenant))
        revoked = await self._store.revoke_api_key(key.id, now, audit)
        self._auth.forget_key(key.id)
        if revoked is None:  # deleted meanwhile: nothing was written, the gate records the 404
            raise NotFoundError(f"API key {key_id} not found", code="token_not_found")
        caller.audited = True
        return token_out(revoked, now)

    # --------------------------------------------------------------------------------------- roles

    async def list_roles(self) -> RoleList:
        """Built-in roles, then custom ones by name."""
        stored = await self._store.list_roles()
        return RoleList(items=[role_out(r) for r in BUILTIN_ROLES.values()] + [role_out(s.role, s) for s in stored])

    async def get_role(self, name: str) -> RoleOut:
        """One role."""
        if name in BUILTIN_ROLES:
            return role_out(BUILTIN_ROLES[name])
        stored = await self._store.get_role(name)
        if stored is None:
            raise NotFoundError(f"role {name} not found", code="role_not_found")
        return role_out(stored.role, stored)

    async def create_role(self, caller: Caller, body: RoleCreate) -> RoleOut:
        """Define a custom role (platform administrators only: the route table says so)."""
        problem = check_role_name(body.name)
        if problem is not None:
            raise InvalidRequestError(problem, code="invalid_field", field="name")
        rules: set[tuple[str, str]] = set()
        for rule in body.rules:
            for verb in rule.verbs:
                for resource in rule.resources:
                    problem = check_rule(verb, resource)
                    if problem is not None:
                        raise InvalidRequestError(problem, code="invalid_field", field="rules")
                    rules.add((verb, resource))
        now = self._clock.now()
        role = Role(body.name, frozenset(rules), body.description)
        audit = caller.entry(now, "roles.create", f"roles/{role.name}", None, rules=sorted(map(list, rules)))
        stored = await self._store.create_role(StoredRole(role, now, caller.subject), audit)
        caller.audited = True
        self._auth.forget_bindings()
        return role_out(stored.role, stored)

    async def delete_role(self, caller: Caller, name: str) -> None:
        """Delete a custom role no binding or live key uses (409 ``role_in_use``)."""
        if name in BUILTIN_ROLES:
            raise InvalidRequestError(f"{name!r} is a built-in role", code="role_builtin")
        audit = caller.entry(self._clock.now(), "roles.delete", f"roles/{name}", None)
        await self._store.delete_role(name, audit)
        caller.audited = True
        self._auth.forget_bindings()

    # ------------------------------------------------------------------------------------ bindings

    async def create_binding(self, caller: Caller, body: BindingCreate) -> BindingOut:
        """Bind a role to a subject in a tenant (no escalation)."""
        await self._grantable(caller, Verb.CREATE, Resource.ROLEBINDINGS, body.tenant, [body.role])
        now = self._clock.now()
        binding = RoleBinding(new_binding_id(now), body.subject, body.tenant, body.role, now, caller.subject)
        audit = caller.entry(
            now, "rolebindings.create", f"rolebindings/{binding.id}", _tenant_of(body.tenant),
            subject=body.subject, role=body.role,
        )  # fmt: skip
        stored = await self._store.create_binding(binding, audit)
        caller.audited = True
        self._auth.forget_bindings(body.subject)
        return binding_out(stored)

    async def list_bindings(self, caller: Caller, subject: str | None) -> BindingList:
        """Bindings in the tenants where the caller may list them."""
        visible = caller.visible(Verb.LIST, Resource.ROLEBINDINGS)
        rows = await self._store.list_bindings(subject=subject, tenants=visible)
        return BindingList(items=[binding_out(b) for b in rows])

    async def delete_binding(self, caller: Caller, binding_id: str) -> None:
        """Remove a binding (its tenant must be one where the caller may delete bindings)."""
        missing = NotFoundError(f"role binding {binding_id} not found", code="binding_not_found")
        found = [b for b in await self._store.list_bindings() if b.id == binding_id]
        if not found:
            raise missing
        binding = found[0]
        caller.check_object(Verb.DELETE, Resource.ROLEBINDINGS, binding.tenant, missing)
        audit = caller.entry(
            self._clock.now(), "rolebindings.delete", f"rolebindings/{binding.id}", _tenant_of(binding.tenant),
            subject=binding.subject, role=binding.role,
        )  # fmt: skip
        if await self._store.delete_binding(binding.id, audit) is None:
            raise missing
        caller.audited = True
        self._auth.forget_bindings(binding.subject)


def _tenant_of(tenant: str) -> str | None:
    """The audit tenant of an object in ``tenant`` (platform-wide objects have none)."""
    return None if tenant == ALL_TENANTS else tenant


class AuditService:
    """Reads of the audit log, and records of requests that changed nothing."""

    def __init__(self, store: SecurityStore) -> None:
        self._store = store

    async def record(self, entries: list[AuditEntry]) -> None:
        """Chain records in a transaction of their own; raises when they cannot be written."""
        await self._store.append_audit(entries)

    @staticmethod
    def _filter(caller: Caller, **given: object) -> AuditFilter:
        visible = caller.visible(Verb.LIST, Resource.AUDIT)
        tenant = given.pop("tenant", None)
        if isinstance(tenant, str):
            visible = frozenset({tenant}) if visible is None or tenant in visible else frozenset()
        return AuditFilter(tenants=visible, **given)  # type: ignore[arg-type]

    async def list(
        self,
        caller: Caller,
        *,
        tenant: str | None = None,
        principal: str | None = None,
        action: str | None = None,
        outcome: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        request_id: str | None = None,
        after: str | None = None,
        limit: int = 100,
    ) -> AuditPage:
        """Records visible to the caller (its tenants' records; everything for platform administrators)."""
        if not 1 <= limit <= MAX_AUDIT_PAGE:
            raise InvalidRequestError(f"limit must be between 1 and {MAX_AUDIT_PAGE}", code="invalid_field")
        after_seq = _cursor(after)
        filt = self._filter(
            caller, tenant=tenant, principal=principal, action=action, outcome=outcome, since=since, until=until,
            request_id=request_id,
        )  # fmt: skip
        if filt.tenants is not None and not filt.tenants:
            return AuditPage(items=[], next_cursor=None)
        rows = await self._store.list_audit(filt, limit, after_seq)
        cursor = str(rows[-1].seq) if len(rows) == limit else None
        return AuditPage(items=[audit_out(r) for r in rows], next_cursor=cursor)

    async def export(self, caller: Caller, *, since: datetime | None = None) -> AsyncIterator[bytes]:
        """Every visible record as JSON lines, oldest first (streamed page by page)."""
        filt = self._filter(caller, since=since)
        if filt.tenants is not None and not filt.tenants:
            return
        after = 0
        while True:
            rows = await self._store.list_audit(filt, EXPORT_PAGE, after)
            if not rows:
                return
            yield b"".join(orjson.dumps(audit_out(r).model_dump(mode="json")) + b"\n" for r in rows)
            if len(rows) < EXPORT_PAGE:
                return
            after = rows[-1].seq

    async def head(self) -> AuditHead:
        """The chain head (platform administrators: the route table says so)."""
        head = await self._store.audit_head()
        found = head or Checkpoint(0, "0" * 64)
        return AuditHead(seq=found.seq, hash=found.hash)


def _cursor(after: str | None) -> int:
    if after is None or after == "":
        return 0
    try:
        value = int(after)
    except ValueError:
        raise InvalidRequestError("after must be a cursor from a previous page", code="invalid_cursor") from None
    if value < 0:
        raise InvalidRequestError("after must be a cursor from a previous page", code="invalid_cursor")
    return value
