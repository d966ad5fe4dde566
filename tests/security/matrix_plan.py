"""The RBAC matrix: every route of the table x every caller x every object, and the answer each case must get.

    ROUTES (api/permissions.py) + the app's OpenAPI --plan_routes--> RoutePlan per route (or a problem:
                                                                     "add a case")
    RoutePlan x Who x Target --materialize (fresh object for a mutation)--> request --> Result
                             --expect(rule, bindings, object's tenant)------------> Expectation

The expectation is computed from the route's ``Rule`` and the caller's bindings alone (``compute_grants`` over
the built-in roles), never from what the server answered. A new route joins the matrix by itself: its path
parameter's object kind follows from its resource; a route needing a body or a required query parameter the
matrix cannot build is reported, so that the matrix fails until someone adds a case here.
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
    missing_id,
    reservation_body,
    role_body,
    task_body,
    tenant_body,
    token_body,
)

_PARAM = re.compile(r"\{([^}]+)\}")

# The object a path parameter names, by the route's resource.
KIND_OF_RESOURCE: dict[str, str] = {
    Resource.TASKS: "task",
    Resource.LOGS: "task",
    Resource.RESERVATIONS: "reservation",
    Resource.TOKENS: "token",
    Resource.ROLEBINDINGS: "binding",
    Resource.TENANTS: "tenant",
    Resource.ROLES: "role",
}
OWNED_KINDS = frozenset({"task", "reservation", "token", "binding"})  # objects that live in one tenant
PLATFORM_WIDE_KINDS = frozenset({"token", "binding"})  # ... or in "*", every tenant at once


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

    def __str__(self) -> str:
        return f"{self.method} {self.path}"


def plan_routes(
    openapi: Mapping[str, Any], routes: Mapping[tuple[str, str], Rule] = ROUTES
) -> tuple[list[RoutePlan], list[str]]:
    """A plan for each route of ``routes``, and why each route the matrix cannot exercise is left out."""
    plans: list[RoutePlan] = []
    problems: list[str] = []
    for (method, path), rule in sorted(routes.items(), key=lambda item: (item[0][1], item[0][0])):
        documented = openapi.get("paths", {}).get(path, {}).get(method.lower())
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


def targets_of(plan: RoutePlan) -> list[Target]:
    """The targets of every case of ``plan`` (one caller's worth)."""
    missing = Target("missing", None, exists=False)
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
        return [Target(t, t) for t in TENANTS] + [Target("missing", NOWHERE, exists=False)]
    return [Target("-", None)]


# -------------------------------------------------------------------------------------- expectation


@dataclass(frozen=True, slots=True)
class Expectation:
    """The answers a case may get (``2xx``, ``401``, ``403``, ``404``) and the reason, for messages."""

    outcomes: frozenset[str]
    reason: str

    @property
    def hidden(self) -> bool:
        """True when the answer is 404 only because the object is another tenant's."""
        return self.reason == "another tenant's object"


def _is(outcomes: str, reason: str) -> Expectation:
    return Expectation(frozenset(outcomes.split("|")), reason)


def expect(
    rule: Rule, who: Who, *, has_object: bool, exists: bool, tenant: str | None, body: BodyCase | None
) -> Expectation:
    """What ``who`` must get from a route with ``rule`` on an object (or a body naming a tenant) in ``tenant``."""
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
    if has_object:
        if not exists:
            return _is("404", "missing object")
        if rule.scope == "tenant" and not grants.allows(verb, resource, tenant):
            return _is("404", "another tenant's object")
        return _is("2xx", "allowed on the object")
    if body is not None and body.names_tenant:
        if not grants.allows(verb, resource, tenant):
            return _is("403", f"{verb} {resource} not held in the tenant named")
        if body.grants_role is not None and not grants.covers(BUILTIN_ROLES[body.grants_role], tenant or ""):
            return _is("403", f"granting {body.grants_role} would escalate")
        if not exists:
            # Tasks and reservations need their tenant (404); keys and bindings may name one not made yet.
            return _is("2xx|404", "allowed, in a tenant that does not exist")
        return _is("2xx", "allowed in the tenant named")
    return _is("2xx", "allowed")


# -------------------------------------------------------------------------------------------- cases


@dataclass(frozen=True, slots=True)
class Result:
    """One case: what was asked, what the table says, what the server answered."""

    plan: RoutePlan
    who: Who
    target: Target
    value: str | None  # the path parameter sent
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
        body = plan.body.build(tenant, world.tag(who, tenant), world.serial())
    response = await world.client(who).request(plan.method, path, json=body, params=dict(plan.query))
    expected = expect(
        plan.rule, who, has_object=plan.kind is not None, exists=target.exists, tenant=tenant, body=plan.body
    )
    return Result(plan, who, target, value, expected, response.status_code, response.text, response.headers)


async def run_matrix(world: World, plans: list[RoutePlan]) -> list[Result]:
    """Every plan x every caller x every target, one request at a time."""
    results = []
    for plan in plans:
        for who in world.callers:
            for target in targets_of(plan):
                results.append(await run_case(world, plan, who, target))
    return results
