"""The RBAC matrix: every route of the permission table, asked by every kind of caller, about every object.

    callers: anonymous, malformed, unknown key, wrong secret, expired key, revoked key,
             viewer / submitter / operator / tenant-admin keys of ta and of tb, the platform admin
    objects: ta's, tb's, a missing one (a fresh one per case when the route changes it)

The answer each case must get is computed from the route's rule and the caller's bindings alone
(``matrix_plan.expect``); the run then holds every answer to the other tenant's canaries and every request
to its audit record.
"""

from __future__ import annotations

import json
import re
from collections import Counter, defaultdict
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from taskplane.api.permissions import MUTATING, ROUTES, Rule
from taskplane.domain.audit import AuditEntry, AuditRecord, Checkpoint, verify_chain
from tests.security.matrix_plan import NAMESPACED_KINDS, Result, plan_routes, run_matrix, targets_of
from tests.security.matrix_world import NOWHERE, TENANTS, World, audit_records, made_key, other, seeded_world

in_module_loop = pytest.mark.asyncio(loop_scope="module")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def world(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[World]:
    async with seeded_world(Path(tmp_path_factory.mktemp("rbac-matrix"))) as seeded:
        yield seeded


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def matrix(world: World) -> list[Result]:
    plans, _ = plan_routes(world.secured.app.openapi())
    return await run_matrix(world, plans)


# ------------------------------------------------------------------------------------ the route table


@in_module_loop
async def test_every_route_of_the_table_is_in_the_matrix(world: World) -> None:
    plans, problems = plan_routes(world.secured.app.openapi())

    assert problems == []
    assert {(p.method, p.path) for p in plans} == set(ROUTES)


def test_a_route_the_matrix_cannot_exercise_is_reported_with_a_request_for_a_case() -> None:
    openapi = {
        "paths": {
            "/platform/things": {"post": {"requestBody": {"content": {}}}},
            "/platform/gadgets/{gadget_id}": {"get": {}},
            "/platform/search": {"get": {"parameters": [{"name": "q", "in": "query", "required": True}]}},
            "/hello": {"post": {"requestBody": {"content": {}}}},
        }
    }
    routes = {
        ("POST", "/platform/things"): Rule("tenant", "create", "tasks"),
        ("GET", "/platform/gadgets/{gadget_id}"): Rule("tenant", "get", "metrics"),
        ("GET", "/platform/search"): Rule("any", "list", "tasks"),
        ("POST", "/hello"): Rule("public"),
    }

    plans, problems = plan_routes(openapi, routes)

    assert plans == []  # public routes it cannot build are left out quietly; the rest are reported
    assert [p.split(":")[0] for p in problems] == [
        "GET /platform/gadgets/{gadget_id}",
        "GET /platform/search",
        "POST /platform/things",
    ]
    assert all("add a case to tests/security/matrix_plan.py" in p for p in problems)


# -------------------------------------------------------------------------------------------- answers


@in_module_loop
async def test_every_caller_gets_what_the_permission_table_says_on_every_object(
    world: World, matrix: list[Result]
) -> None:
    plans, _ = plan_routes(world.secured.app.openapi())
    assert len(matrix) == sum(len(targets_of(p)) for p in plans) * len(world.callers)

    mismatches = [r.describe() for r in matrix if not r.matches]

    assert not mismatches, f"{len(mismatches)} of {len(matrix)} cases differ from the table:\n" + "\n".join(mismatches)


@in_module_loop
async def test_the_matrix_sees_every_kind_of_answer(matrix: list[Result]) -> None:
    seen = Counter(r.expected.reason for r in matrix)

    for reason in ("no valid credential", "missing object", "another tenant's object", "allowed on the object"):
        assert seen[reason] > 0, reason
    assert any(r.expected.elsewhere for r in matrix)
    assert {o for r in matrix for o in r.expected.outcomes} >= {"2xx", "401", "403", "404"}


@in_module_loop
async def test_another_tenants_object_answers_exactly_like_a_missing_one(matrix: list[Result]) -> None:
    missing = {(str(r.plan), r.who.name): r for r in matrix if r.plan.kind is not None and r.target.label == "missing"}
    hidden = [r for r in matrix if (r.expected.hidden or r.expected.elsewhere) and r.status == 404]
    assert hidden

    differences = []
    for found in hidden:
        absent = missing[(str(found.plan), found.who.name)]
        if (absent.status, _scrubbed(absent), _headers(absent)) != (404, _scrubbed(found), _headers(found)):
            differences.append(
                f"{found.plan} as {found.who.name}: {found.target.label}'s object answered {_scrubbed(found)} "
                f"{_headers(found)}, a missing one {absent.status} {_scrubbed(absent)} {_headers(absent)}"
            )

    assert not differences, "\n".join(differences)


@in_module_loop
async def test_naming_another_tenant_in_a_body_answers_exactly_like_naming_none_that_exists(
    matrix: list[Result],
) -> None:
    # A body naming a tenant, or a state or lease request naming one with `tenant=`.
    nowhere = {(str(r.plan), r.who.name): r for r in matrix if r.target.names == NOWHERE}
    refused = [r for r in matrix if r.target.names in TENANTS and r.status == 403]
    assert refused
    assert {r.plan.kind for r in refused} >= {None, *NAMESPACED_KINDS}

    differences = []
    for found in refused:
        absent = nowhere[(str(found.plan), found.who.name)]
        mine, theirs = _scrubbed(found, found.target.names), _scrubbed(absent, absent.target.names)
        if (absent.status, theirs, _headers(absent)) != (403, mine, _headers(found)):
            differences.append(
                f"{found.plan} as {found.who.name}: naming {found.target.label} answered {found.status} {mine}, "
                f"naming no tenant that exists {absent.status} {theirs}"
            )

    assert not differences, "\n".join(differences)


def _scrubbed(result: Result, word: str | None = None) -> str:
    """The body with ``word`` (default: the path's id), which the caller sent, blanked out wherever it stands."""
    word = word or result.value
    if not word:
        return result.text
    return re.sub(rf"(?<![\w-]){re.escape(word)}(?![\w-])", "<id>", result.text)


def _headers(result: Result) -> dict[str, str]:
    varying = {"x-request-id", "content-length"}
    return {k: v for k, v in result.headers.items() if k not in varying}


# ------------------------------------------------------------------------------------------- canaries


@in_module_loop
async def test_no_answer_to_a_tenants_caller_carries_the_other_tenants_canary(
    world: World, matrix: list[Result]
) -> None:
    leaks = []
    for r in matrix:
        if r.who.tenant not in TENANTS:
            continue
        canary = world.canary[other(r.who.tenant)]
        places = [name for name, text in [("body", r.text), *r.headers.items()] if canary in text]
        if places:
            leaks.append(f"{r.plan} as {r.who.name} on {r.target.label}: {canary} in {places}: {r.text[:200]}")

    assert not leaks, "\n".join(leaks)


@in_module_loop
async def test_each_tenants_canary_does_reach_its_own_callers(world: World, matrix: list[Result]) -> None:
    # Without this, the test above could pass because the canaries were never served at all.
    for tenant in TENANTS:
        served = {str(r.plan) for r in matrix if r.who.tenant == tenant and world.canary[tenant] in r.text}
        assert served >= {
            "GET /platform/tasks",
            "GET /platform/tasks/{task_id}",
            "GET /platform/tasks/{task_id}/logs",
            "GET /platform/admin/tokens",
            "GET /platform/admin/rolebindings",
            "GET /platform/state",
            "GET /platform/state/{key:path}",
            "POST /platform/state/transaction",
            "GET /platform/leases/{lease_id}",
            "PUT /platform/leases/{lease_id}/keepalive",
        }, tenant


@in_module_loop
async def test_after_the_run_a_tenants_audit_readers_read_no_canary_of_the_other_tenant(
    world: World, matrix: list[Result]
) -> None:
    for tenant in TENANTS:
        for role in ("operator", "tenant-admin"):
            reader = world.client(world.who(f"{role}@{tenant}"))

            readable = json.dumps(await audit_records(reader)) + (await reader.get("/platform/audit/export")).text

            assert world.canary[tenant] in readable, (role, tenant)
            assert world.canary[other(tenant)] not in readable, (role, tenant)


# ------------------------------------------------------------------------------------- state, leases


KEY_PATH = "/platform/state/{key:path}"
LEASE_PATHS = ("/platform/leases/{lease_id}", "/platform/leases/{lease_id}/keepalive")


@in_module_loop
async def test_a_key_write_acts_in_the_tenant_it_names_or_the_callers_own_and_nowhere_else(
    world: World, matrix: list[Result]
) -> None:
    # A key of ta or tb (made for this case alone) changes only through a 2xx request acting in its tenant;
    # a PUT of another tenant's key name creates the key in the caller's tenant, a DELETE of one deletes nothing.
    writes = [r for r in matrix if r.plan.path == KEY_PATH and r.plan.mutating]
    assert {r.expected.reason for r in writes} >= {"allowed on the object", "allowed, in ta whatever exists elsewhere"}

    problems = []
    for r in writes:
        answer = json.loads(r.text) if r.observed == "2xx" else None
        mine = r.target.exists and r.tenant == r.acting
        if answer is not None:
            if r.plan.method == "DELETE" and answer["deleted"] != int(mine):
                problems.append(f"{r.describe()}: deleted {answer['deleted']}, want {int(mine)}")
            if r.plan.method == "PUT" and (answer["prev"] is not None) != mine:
                problems.append(f"{r.describe()}: prev {answer['prev']}, want {'one' if mine else 'none'}")
            if r.plan.method == "PUT" and r.acting in TENANTS and await world.key_in(r.acting, r.value or "") is None:
                problems.append(f"{r.describe()}: the key is not in {r.acting}, the tenant the request acted in")
        if not r.target.exists or r.tenant is None or (answer is not None and mine):
            continue
        made = world.made[made_key(r.tenant, r.value or "")]["kv"]
        now = await world.key_in(r.tenant, r.value or "")
        if now != made:
            problems.append(f"{r.describe()}: {r.tenant}'s key changed from {made} to {now}")

    assert not problems, "\n".join(problems)


@in_module_loop
async def test_a_lease_changes_only_through_a_request_acting_in_its_tenant(world: World, matrix: list[Result]) -> None:
    cases = [r for r in matrix if r.plan.path in LEASE_PATHS and r.plan.mutating and r.target.exists]
    assert cases

    problems = []
    for r in cases:
        assert r.tenant is not None and r.value is not None
        if r.observed == "2xx" and r.tenant == r.acting:
            continue
        made, now = world.made[r.value], await world.lease_in(r.tenant, r.value)
        if now is None or (now["expires_at"], now["keys"]) != (made["expires_at"], made["keys"]):
            problems.append(f"{r.describe()}: {r.tenant}'s lease was {made}, is {now}")

    assert not problems, "\n".join(problems)


@in_module_loop
async def test_a_transaction_compares_and_reads_only_the_tenant_it_acts_in(world: World, matrix: list[Result]) -> None:
    # The body compares `seed/tb/config` exists and reads the seeded key names of both tenants.
    done = [r for r in matrix if r.plan.path == "/platform/state/transaction" and r.observed == "2xx"]
    assert {r.acting for r in done} >= set(TENANTS)

    problems = []
    for r in done:
        answer = json.loads(r.text)
        read = {op["key"]: op["kv"] for op in answer["results"] if op["op"] == "get"}
        for key, kv in read.items():
            owner = {t for t in TENANTS if key == f"seed/{t}/config"} or set(TENANTS)
            there = r.acting in owner
            if (kv is not None) != there or (kv is not None and world.canary[r.acting or ""] not in json.dumps(kv)):
                problems.append(f"{r.describe()}: read {key} as {kv}")
        if answer["succeeded"] != (r.acting == "tb"):
            problems.append(f"{r.describe()}: the compare on tb's key held: {answer['succeeded']}")

    assert not problems, "\n".join(problems)


# ---------------------------------------------------------------------------------------------- audit


@in_module_loop
async def test_every_mutation_and_every_refusal_has_exactly_one_audit_record(
    world: World, matrix: list[Result]
) -> None:
    exchanges = list(world.exchanges)
    hidden = {r.request_id for r in matrix if r.expected.hidden and r.status == 404}
    by_request: defaultdict[str, list[dict[str, Any]]] = defaultdict(list)
    for record in await audit_records(world.admin()):
        by_request[record["request_id"]].append(record)

    problems = []
    for ex in exchanges:
        if ex.request_id is None:
            problems.append(f"{ex.method} {ex.path} as {ex.who} ({ex.status}): no X-Request-Id")
            continue
        outcome = _audited_outcome(ex.method, ex.status, ex.request_id in hidden)
        if outcome is None:
            continue
        found = by_request.get(ex.request_id, [])
        if [(r["outcome"], r["status"] in (None, ex.status)) for r in found] != [(outcome, True)]:
            summary = [(r["outcome"], r["status"], r["action"]) for r in found]
            problems.append(f"{ex.method} {ex.path} as {ex.who} ({ex.status}): want one {outcome} record, {summary}")
    twice = sorted(rid for rid, found in by_request.items() if len(found) > 1)

    assert len(exchanges) > 1000
    assert not problems, f"{len(problems)} requests without their one record:\n" + "\n".join(problems)
    assert not twice, f"request ids with several records: {twice}"


def _audited_outcome(method: str, status: int, hidden: bool) -> str | None:
    """The outcome of the one record a request must have (docs/security.md, Audit log), or None."""
    if status == 401:
        return "unauthenticated"
    if status == 403 or hidden:
        return "denied"
    if method in MUTATING:
        return "success" if status < 400 else "rejected" if status < 500 else "error"
    return None


@in_module_loop
async def test_the_audit_chain_of_the_whole_run_verifies_up_to_its_head(world: World, matrix: list[Result]) -> None:
    admin = world.admin()
    records = [_record(r) for r in await audit_records(admin)]
    head = (await admin.get("/platform/audit/head")).json()

    checked, broken = verify_chain(records, Checkpoint(head["seq"], head["hash"]))

    assert broken is None
    assert checked == len(records) == head["seq"]


def _record(doc: dict[str, Any]) -> AuditRecord:
    """An audit record as the API shows it, back in the form the chain was computed over."""
    entry = AuditEntry(
        at=datetime.fromisoformat(doc["at"]),
        request_id=doc["request_id"],
        principal=doc["principal"],
        tenant=doc["tenant"],
        action=doc["action"],
        resource=doc["resource"],
        outcome=doc["outcome"],
        status=doc["status"],
        source=doc["source"],
        detail=doc["detail"],
    )
    return AuditRecord(doc["seq"], entry, doc["prev_hash"], doc["hash"])
