"""The route table: every route's permission, in one place.

    request --> SecurityMiddleware --match route--> ROUTES[(method, path)] --> Rule
                public        : no authentication (health probes only)
                authenticated : any valid credential
                platform      : the permission held platform-wide (a binding at "*")
                tenant        : the permission held in some tenant; the service then checks the object's tenant
                                (another tenant's object answers 404, exactly like a missing one)
                any           : the permission held in some tenant; the answer is not tenant-specific

``create_app`` refuses to start when a route has no entry here, or an entry has no route, so a route added
later cannot be served without a declared permission. ``docs/permissions.md`` is generated from this table
(``python -m taskplane.api.permissions``) and a test keeps the two equal.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from taskplane.domain.access import Resource, Verb

Scope = Literal["public", "authenticated", "platform", "tenant", "any"]


@dataclass(frozen=True, slots=True)
class Rule:
    """What a route needs."""

    scope: Scope
    verb: str | None = None
    resource: str | None = None

    def describe(self) -> str:
        """A short human form, for the generated docs."""
        if self.verb is None:
            return self.scope
        return f"{self.verb} {self.resource} ({self.scope})"


PUBLIC = Rule("public")
AUTHENTICATED = Rule("authenticated")


def _t(verb: Verb, resource: Resource) -> Rule:
    return Rule("tenant", verb, resource)


def _p(verb: Verb, resource: Resource) -> Rule:
    return Rule("platform", verb, resource)


def _a(verb: Verb, resource: Resource) -> Rule:
    return Rule("any", verb, resource)


G, L, C, U, D = Verb.GET, Verb.LIST, Verb.CREATE, Verb.UPDATE, Verb.DELETE
R = Resource

ROUTES: dict[tuple[str, str], Rule] = {
    ("GET", "/healthz"): PUBLIC,
    ("GET", "/readyz"): PUBLIC,
    ("GET", "/openapi.json"): AUTHENTICATED,
    ("GET", "/platform/whoami"): AUTHENTICATED,
    # tasks
    ("POST", "/platform/tasks"): _t(C, R.TASKS),
    ("POST", "/platform/tasks/batch"): _t(C, R.TASKS),
    ("GET", "/platform/tasks"): _t(L, R.TASKS),
    ("GET", "/platform/tasks/{task_id}"): _t(G, R.TASKS),
    ("PUT", "/platform/tasks/{task_id}/cancel"): _t(U, R.TASKS),
    ("GET", "/platform/tasks/{task_id}/wait"): _t(G, R.TASKS),
    ("GET", "/platform/tasks/{task_id}/events"): _t(G, R.TASKS),
    ("GET", "/platform/tasks/{task_id}/logs"): _t(G, R.LOGS),
    # capacity and reservations
    ("GET", "/platform/capacity"): _a(G, R.CAPACITY),
    ("GET", "/platform/resources"): _a(G, R.CAPACITY),
    ("POST", "/platform/resources/reserve"): _t(C, R.RESERVATIONS),
    ("GET", "/platform/resources/reservations"): _t(L, R.RESERVATIONS),
    ("GET", "/platform/resources/usage"): _t(L, R.USAGE),
    ("GET", "/platform/resources/{reservation_id}"): _t(G, R.RESERVATIONS),
    ("DELETE", "/platform/resources/{reservation_id}"): _t(D, R.RESERVATIONS),
    # tenants
    ("POST", "/platform/admin/tenants"): _p(C, R.TENANTS),
    ("GET", "/platform/admin/tenants"): _t(L, R.TENANTS),
    ("GET", "/platform/admin/tenants/{name}"): _t(G, R.TENANTS),
    ("PATCH", "/platform/admin/tenants/{name}"): _p(U, R.TENANTS),
    ("DELETE", "/platform/admin/tenants/{name}"): _p(D, R.TENANTS),
    # API keys
    ("POST", "/platform/admin/tokens"): _t(C, R.TOKENS),
    ("GET", "/platform/admin/tokens"): _t(L, R.TOKENS),
    ("GET", "/platform/admin/tokens/{token_id}"): _t(G, R.TOKENS),
    ("DELETE", "/platform/admin/tokens/{token_id}"): _t(D, R.TOKENS),
    # roles and bindings
    ("POST", "/platform/admin/roles"): _p(C, R.ROLES),
    ("GET", "/platform/admin/roles"): _a(L, R.ROLES),
    ("GET", "/platform/admin/roles/{name}"): _a(G, R.ROLES),
    ("DELETE", "/platform/admin/roles/{name}"): _p(D, R.ROLES),
    ("POST", "/platform/admin/rolebindings"): _t(C, R.ROLEBINDINGS),
    ("GET", "/platform/admin/rolebindings"): _t(L, R.ROLEBINDINGS),
    ("DELETE", "/platform/admin/rolebindings/{binding_id}"): _t(D, R.ROLEBINDINGS),
    # audit
    ("GET", "/platform/audit"): _t(L, R.AUDIT),
    ("GET", "/platform/audit/export"): _t(L, R.AUDIT),
    ("GET", "/platform/audit/head"): _p(G, R.AUDIT),
    # state
    ("GET", "/platform/state"): _t(L, R.STATE),
    ("POST", "/platform/state/transaction"): _t(U, R.STATE),
    ("GET", "/platform/state/{key:path}"): _t(G, R.STATE),
    ("PUT", "/platform/state/{key:path}"): _t(U, R.STATE),
    ("DELETE", "/platform/state/{key:path}"): _t(D, R.STATE),
    ("POST", "/platform/leases"): _t(C, R.LEASES),
    ("GET", "/platform/leases/{lease_id}"): _t(G, R.LEASES),
    ("PUT", "/platform/leases/{lease_id}/keepalive"): _t(U, R.LEASES),
    ("DELETE", "/platform/leases/{lease_id}"): _t(D, R.LEASES),
    # metrics
    ("GET", "/metrics"): _p(G, R.METRICS),
}

MUTATING = frozenset({"POST", "PUT", "PATCH", "DELETE"})


def check_routes(routes: list[tuple[str, str]]) -> None:
    """Raise ``RuntimeError`` unless ``routes`` (method, path) and the table name exactly the same routes."""
    served = set(routes)
    missing = sorted(served - ROUTES.keys())
    stale = sorted(ROUTES.keys() - served)
    if missing or stale:
        raise RuntimeError(
            "the route table (taskplane/api/permissions.py) does not match the app: "
            f"routes without a permission: {missing}; permissions without a route: {stale}"
        )


def markdown() -> str:
    """The table as Markdown, for ``docs/permissions.md``."""
    lines = [
        "# Route permissions",
        "",
        "Generated from `src/taskplane/api/permissions.py` by `python -m taskplane.api.permissions`;",
        "a test fails when the two differ. Scopes:",
        "",
        "- **public**: no authentication.",
        "- **authenticated**: any valid API key or bearer token.",
        "- **platform**: the permission must be held platform-wide (a role bound in tenant `*`).",
        "- **tenant**: the permission must be held in some tenant; the object must then belong to a tenant where",
        "  it is held, or the answer is `404`, exactly as for a missing object. Lists show only those tenants.",
        "- **any**: the permission must be held in some tenant; the answer is the same for everyone.",
        "",
        "| method | path | verb | resource | scope |",
        "|---|---|---|---|---|",
    ]
    for (method, path), rule in sorted(ROUTES.items(), key=lambda item: (item[0][1], item[0][0])):
        lines.append(f"| {method} | `{path}` | {rule.verb or ''} | {rule.resource or ''} | {rule.scope} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(markdown(), end="")
