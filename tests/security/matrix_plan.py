"""The RBAC matrix: every route of the table x every caller x every object, and the answer each case must get.

    ROUTES (api/permissions.py) + the app's OpenAPI --plan_routes--> RoutePlan per route (or a problem:
                                                                     "add a case")
    RoutePlan x Who x Target --materialize (fresh object for a mutation)--> request --> Result
                             --expect(rule, bindings, object's tenant)------------> Expectation

The expectation is computed from the route's ``Rule`` and the caller's bindings alone (``compute_grants`` over
the built-in roles), never from what the server answered. A new route joins the matrix by itself: its path
parameter's object kind follows from its resource; a route needing a body or a required query parameter the
matrix cannot build is reported, so that the matrix fails until someone adds a case here.

State keys and leases live in a tenant's own namespace: a request acts in the caller's only tenant, or in the
one it names with ``tenant=`` (403 unless the permission is held there, whether or not that tenant exists).
Their targets are: the object of ta, of tb (found in the tenant the request acts in, or not at all), the same
with ``tenant=`` naming its tenant, a missing one, and a missing one in a tenant that does not exist. A key of
another tenant is simply not there: GET answers 404, PUT creates the key in the caller's own tenant and DELETE
answers ``deleted: 0`` (``test_rbac_matrix`` checks that the other tenant's key was left alone).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import httpx

from taskplane.api.permissions import MUTATING, ROUTES, Rule
from taskplane.domain.access import ALL_TENANTS, BUILTIN_ROLES, Resource, compute_grants
from tests.security.matrix_world import (
    NOWHERE,
    TENANTS,
    Body,
    Who,
    World,
    batch_body,
    binding_body,
    lease_body,
    missing_id,
    reservation_body,
    role_body,
    state_value,
    task_body,
    tenant_body,
    token_body,
    txn_body,
)

_PARAM = re.compile(r"\{([^}]+)\}")
_CONVERTER = re.compile(r"\{(\w+):\w+\}")  # "{key:path}" in the route table is "{key}" in the OpenAPI document

# The object a path parameter names, by the route's resource.
KIND_OF_RESOURCE: dict[str, str] = {
    Resource.TASKS: "task",
    Resource.LOGS: "task",
    Resource.RESERVATIONS: "reservation",
    Resource.TOKENS: "token",
    Resource.ROLEBINDINGS: "binding",
    Resource.TENANTS: "tenant",
    Resource.ROLES: "role",
    Resource.STATE: "key",
    Resource.LEASES: "lease",
}
OWNED_KINDS = frozenset({"task", "reservation", "token", "binding"})  # objects that live in one tenant
PLATFORM_WIDE_KINDS = frozenset({"token", "binding"})  # ... or in "*", every tenant at once
NAMESPACED_KINDS = frozenset({"key", "lease"})  # found only in the tenant a request acts in
# Routes of these resources act in the caller's only tenant, or in the one named by the `tenant=` query parameter.
TENANT_QUERY_RESOURCES = frozenset({Resource.STATE, Resource.LEASES})
# Routes that answer 2xx whether their object exists or not: a PUT creates the key, a DELETE deletes 0 or 1.
UPSERTS = frozenset({("PUT", "/platform/state/{key:path}"), ("DELETE", "/platform/state/{key:path}")})


@dataclass(frozen=True, slots=True)
class BodyCase:
    """How to build a route's request body; ``names_tenant``: the body names the tenant it acts in."""

    build: Body
    names_tenant: bool = False
    grants_role: str | None = None  # the role the created key or binding carries (no escalation)


BODIES: dict[tuple[str, str], BodyCase] = {
    ("POST", "/platform/tasks"): BodyCase(task_body, names_tenant=True),
    ("POST", "/platform/tasks/batch"): BodyCase(batch_body, names_tenant=True),
    ("POST", "/platform/resources/reserve"): BodyCase(reservation_body, names_tenant=True),
    ("POST", "/platform/admin/tenants"): BodyCase(tenant_body),
    ("PATCH", "/platform/admin/tenants/{name}"): BodyCase(lambda tenant, tag, serial: {"weight": 2}),
    ("POST", "/platform/admin/tokens"): BodyCase(token_body, names_tenant=True, grants_role="viewer"),
    ("POST", "/platform/admin/roles"): BodyCase(role_body),
    ("POST", "/platform/admin/rolebindings"): BodyCase(binding_body, names_tenant=True, grants_role="viewer"),
    ("PUT", "/platform/state/{key:path}"): BodyCase(state_value),  # the raw JSON value
    ("POST", "/platform/state/transaction"): BodyCase(txn_body),
    ("POST", "/platform/leases"): BodyCase(lease_body),
}

# Query parameters a route needs (or must have, to answer at once).
QUERIES: dict[tuple[str, str], dict[str, str]] = {
    ("GET", "/platform/tasks/{task_id}/wait"): {"timeout": "0"},
}

ADD_A_CASE = "add a case to tests/security/matrix_plan.py (BODIES, QUERIES or KIND_OF_RESOURCE)"


@dataclass(frozen=True, slots=True)
class RoutePlan:
    """How the matrix exercises one route."""

    method: str
    path: str
    rule: Rule
    kind: str | None  # the object kind its path parameter names
    body: BodyCase | None
    query: Mapping[str, str]

    @property
    def mutating(self) -> bool:
        """True for POST, PUT, PATCH and DELETE."""
        return self.method in MUTATING

    @property
    def tenant_query(self) -> bool:
        """True when the route acts in the tenant named by ``tenant=`` (default: the caller's only tenant)."""
        return self.rule.resource in TENANT_QUERY_RESOURCES

    @property
    def upsert(self) -> bool:
        """True when the route answers 2xx whether its object exists or not."""
        return (self.method, self.path) in UPSERTS

    def __str__(self) -> str:
        return f"{self.method} {self.path}"


def plan_routes(
    openapi: Mapping[str, Any], routes: Mapping[tuple[str, str], Rule] = ROUTES
) -> tuple[list[RoutePlan], list[str]]:
    """A plan for each route of ``routes``, and why each route the matrix cannot exercise is left out."""
    plans: list[RoutePlan] = []
    problems: list[str] = []
    for (method, path), rule in sorted(routes.items(), key=lambda item: (item[0][1], item[0][0])):
        documented = openapi.get("paths", {}).get(_CONVERTER.sub(r"{\1}", path), {}).get(method.lower())
        params = (documented or {}).get("parameters", [])
        query = QUERIES.get((method, path), {})
        body = BODIES.get((method, path))
        why: list[str] = []
        if documented is None and method != "GET":
            why.append("it is not in the OpenAPI document, so its body is unknown")
        if documented is not None and "requestBody" in documented and body is None:
            why.append("it takes a request body the matrix cannot build")
        needed = [p["name"] for p in params if p.get("in") == "query" and p.get("required") and p["name"] not in query]
        if needed:
            why.append(f"it needs the query parameters {needed}")
        names = _PARAM.findall(path)
        kind = KIND_OF_RESOURCE.get(rule.resource or "") if names else None
        if len(names) > 1:
            why.append(f"it has {len(names)} path parameters")
        elif names and kind is None:
            why.append(f"no object kind for the path parameter {names[0]!r} of resource {rule.resource!r}")
        if why:
            if rule.scope != "public":
                problems.append(f"{method} {path}: {'; '.join(why)}; {ADD_A_CASE}")
            continue
        plans.append(RoutePlan(method, path, rule, kind, body, query))
    return plans, problems


# ------------------------------------------------------------------------------------------ targets


@dataclass(frozen=True, slots=True)
class Target:
    """What a case acts on: an object of a kind, or the tenant a body names (``ta``, ``tb``, ``missing`` ...)."""

    label: str
    tenant: str | None  # where the object is made or found, or the tenant the body names
    exists: bool = True
    fresh: bool = False  # a new object for this case alone (the case changes or deletes it)
    names: str | None = None  # the tenant the request names (in its body, or as `tenant=`)


def targets_of(plan: RoutePlan) -> list[Target]:
    """The targets of every case of ``plan`` (one caller's worth)."""
    missing = Target("missing", None, exists=False)
    named = [Target(t, t, names=t) for t in TENANTS] + [Target("missing", NOWHERE, exists=False, names=NOWHERE)]
    if plan.kind in NAMESPACED_KINDS:
        return [
            *(Target(t, t, fresh=plan.mutating) for t in TENANTS),
            *(Target(f"named-{t}", t, fresh=plan.mutating, names=t) for t in TENANTS),
            missing,
            Target("named-nowhere", None, exists=False, names=NOWHERE),
        ]
    if plan.kind is None and plan.tenant_query:
        return [Target("-", None), *named]
    if plan.kind in OWNED_KINDS:
        owned = [Target(t, t, fresh=plan.mutating) for t in TENANTS]
        if plan.kind in PLATFORM_WIDE_KINDS:
            owned.append(Target("platform-wide", ALL_TENANTS, fresh=plan.mutating))
        return [*owned, missing]
    if plan.kind == "tenant":
        # A tenant is its own tenant; one that a case may change or delete is a new one.
        mine = [Target("fresh", None, fresh=True)] if plan.mutating else [Target(t, t) for t in TENANTS]
        return [*mine, missing]
    if plan.kind == "role":
        return [Target("custom", None, fresh=plan.mutating), missing]
    if plan.body is not None and plan.body.names_tenant:
        return named
    return [Target("-", None)]


def acting_tenant(who: Who, target: Target) -> str | None:
    """The tenant a state or lease request acts in: the one it names, the caller's only one, or (for a caller
    bound in several tenants or in "*", which the matrix makes name it) the target's; ``None``: the default."""
    return target.names or who.tenant or target.tenant


def tenant_param(plan: RoutePlan, who: Who, target: Target) -> str | None:
    """The ``tenant=`` a case sends: the tenant the target names; a caller without one tenant names the object's."""
    if not plan.tenant_query:
        return None
    return target.names or (target.tenant if who.tenant is None else None)


# -------------------------------------------------------------------------------------- expectation


@dataclass(frozen=True, slots=True)
class Expectation:
    """The answers a case may get (``2xx``, ``401``, ``403``, ``404``) and the reason, for messages."""

    outcomes: frozenset[str]
    reason: str

    @property
    def hidden(self) -> bool:
        """True when the answer is 404 only because the object is another tenant's (an audited denial)."""
        return self.reason == HIDDEN

    @property
    def elsewhere(self) -> bool:
        """True when the answer is 404 because the object is in another tenant's namespace, not the caller's."""
        return self.reason == ELSEWHERE


HIDDEN = "another tenant's object"
ELSEWHERE = "not in the tenant it acts in"


def _is(outcomes: str, reason: str) -> Expectation:
    return Expectation(frozenset(outcomes.split("|")), reason)


def expect(plan: RoutePlan, who: Who, target: Target, tenant: str | None) -> Expectation:
    """What ``who`` must get from ``plan`` on ``target``: an object in ``tenant`` or a request naming a tenant."""
    rule, body = plan.rule, plan.body
    if rule.scope == "public":
        return _is("2xx", "public route")
    if not who.authenticates:
        return _is("401", "no valid credential")
    if rule.verb is None or rule.resource is None:
        return _is("2xx", "any valid credential")
    grants = compute_grants(who.bindings, BUILTIN_ROLES)
    verb, resource = rule.verb, rule.resource
    if rule.scope == "platform":
        if not grants.allows(verb, resource, None):
            return _is("403", f"{verb} {resource} not held platform-wide")
    elif not grants.holds_anywhere(verb, resource):
        return _is("403", f"{verb} {resource} held in no tenant")
    if target.names is not None and not grants.allows(verb, resource, target.names):
        return _is("403", f"{verb} {resource} not held in the tenant named")
    if plan.kind in NAMESPACED_KINDS:
        acting = acting_tenant(who, target)
        if plan.upsert:
            if acting not in TENANTS:
                return _is("2xx|404", "allowed, in a tenant that does not exist")
            mine = target.exists and tenant == acting
            return _is("2xx", "allowed on the object" if mine else f"allowed, in {acting} whatever exists elsewhere")
        if not target.exists:
            return _is("404", "missing object")
        if tenant != acting:
            return _is("404", ELSEWHERE)
        return _is("2xx", "allowed on the object")
    if plan.kind is not None:
        if not target.exists:
            return _is("404", "missing object")
        if rule.scope == "tenant" and not grants.allows(verb, resource, tenant):
            return _is("404", HIDDEN)
        return _is("2xx", "allowed on the object")
    if target.names is not None:
        if (
            body is not None
            and body.grants_role is not None
            and not grants.covers(BUILTIN_ROLES[body.grants_role], target.names)
        ):
            return _is("403", f"granting {body.grants_role} would escalate")
        if not target.exists:
            # Tasks and reservations need their tenant (404); keys and bindings may name one not made yet.
            return _is("2xx|404", "allowed, in a tenant that does not exist")
        return _is("2xx", "allowed in the tenant named")
    if plan.tenant_query and who.tenant is None:
        return _is("2xx|404", "allowed, in the default tenant")
    return _is("2xx", "allowed")


# -------------------------------------------------------------------------------------------- cases


@dataclass(frozen=True, slots=True)
class Result:
    """One case: what was asked, what the table says, what the server answered."""

    plan: RoutePlan
    who: Who
    target: Target
    value: str | None  # the path parameter sent
    tenant: str | None  # the tenant of the object acted on (or the one the body names)
    sent_tenant: str | None  # the `tenant=` query parameter sent
    expected: Expectation
    status: int
    text: str
    headers: httpx.Headers

    @property
    def observed(self) -> str:
        """``2xx`` or the exact status."""
        return "2xx" if 200 <= self.status < 300 else str(self.status)

    @property
    def matches(self) -> bool:
        """True when the answer is one the table allows."""
        return self.observed in self.expected.outcomes

    @property
    def acting(self) -> str | None:
        """The tenant a state or lease request acts in (``None``: the default tenant)."""
        return self.sent_tenant or self.who.tenant

    @property
    def request_id(self) -> str | None:
        """The ``X-Request-Id`` the server answered with."""
        return self.headers.get("x-request-id")

    def describe(self) -> str:
        """One line for a failure message."""
        on = self.target.label + (f" ({self.value})" if self.value else "")
        wanted = f"{'|'.join(sorted(self.expected.outcomes))} ({self.expected.reason})"
        return f"{self.plan} as {self.who.name} on {on}: expected {wanted}, got {self.status}: {self.text[:160]}"


async def run_case(world: World, plan: RoutePlan, who: Who, target: Target) -> Result:
    """Make the case's object if it needs a fresh one, send the request, and compare."""
    value: str | None = None
    tenant = target.tenant
    if plan.kind is not None:
        if not target.exists:
            value, tenant = missing_id(plan.kind), None
        elif target.fresh:
            value, tenant = await world.fresh(plan.kind, target.tenant)
        else:
            value = world.seeded[(plan.kind, target.tenant)]
    path = plan.path if value is None else _PARAM.sub(lambda _: value, plan.path)
    body = None
    if plan.body is not None:
        # What the caller writes carries the canary of the tenant written to, if it belongs there.
        written = tenant if tenant is not None else acting_tenant(who, target)
        body = plan.body.build(tenant, world.tag(who, written), world.serial())
    params = dict(plan.query)
    sent_tenant = tenant_param(plan, who, target)
    if sent_tenant is not None:
        params["tenant"] = sent_tenant
    response = await world.client(who).request(plan.method, path, json=body, params=params)
    expected = expect(plan, who, target, tenant)
    return Result(
        plan, who, target, value, tenant, sent_tenant, expected, response.status_code, response.text, response.headers
    )


async def run_matrix(world: World, plans: list[RoutePlan]) -> list[Result]:
    """Every plan x every caller x every target, one request at a time."""
    results = []
    for plan in plans:
        for who in world.callers:
            for target in targets_of(plan):
                results.append(await run_case(world, plan, who, target))
    return results
