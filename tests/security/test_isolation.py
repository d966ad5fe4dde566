"""Tenant isolation: what one tenant's callers can read of another's, through lists, logs, audit and metrics.

Tenants ta and tb are seeded with canary strings (``matrix_world``); tb's callers then work in tb. Nothing
a caller bound in ta can read may name tb's canary, and every list shows it ta's objects only.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from taskplane.api.permissions import ROUTES
from taskplane.domain.access import BUILTIN_ROLES, Binding, Verb, compute_grants
from tests.security.matrix_world import (
    TENANT_ROLES,
    TENANTS,
    World,
    audit_records,
    binding_body,
    missing_id,
    other,
    reservation_body,
    seeded_world,
    task_body,
    token_body,
)

in_module_loop = pytest.mark.asyncio(loop_scope="module")


def _items(tenant_field: str) -> Callable[[Any], list[str]]:
    return lambda body: [item[tenant_field] for item in json.loads(body)["items"]]


def _lines(body: str) -> list[str]:
    return [json.loads(line)["tenant"] for line in body.splitlines() if line]


# The tenant of each item a list route answers with. A new list route fails the test below until it is added.
TENANTS_LISTED: dict[str, Callable[[str], list[str]]] = {
    "/platform/tasks": _items("tenant"),
    "/platform/resources/reservations": _items("tenant"),
    "/platform/resources/usage": _items("tenant"),
    "/platform/admin/tenants": _items("name"),
    "/platform/admin/tokens": _items("tenant"),
    "/platform/admin/rolebindings": _items("tenant"),
    "/platform/audit": _items("tenant"),
    "/platform/audit/export": _lines,
}
LIST_ROUTES = sorted(
    (path, rule)
    for (method, path), rule in ROUTES.items()
    if method == "GET" and rule.verb == Verb.LIST and rule.scope == "tenant"  # "any" lists hold no tenant's data
)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def world(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[World]:
    async with seeded_world(Path(tmp_path_factory.mktemp("isolation"))) as seeded:
        await _work_in_each_tenant(seeded)
        yield seeded


async def _work_in_each_tenant(world: World) -> None:
    """Each tenant's own callers write canary-carrying objects, and probe the other tenant's."""
    for tenant in TENANTS:
        await world.until_running(world.seeded[("task", tenant)])  # so that usage has a row of it
        canary = world.canary[tenant]
        writes = [
            ("submitter", "/platform/tasks", task_body),
            ("operator", "/platform/resources/reserve", reservation_body),
            ("tenant-admin", "/platform/admin/tokens", token_body),
            ("tenant-admin", "/platform/admin/rolebindings", binding_body),
        ]
        for role, path, body in writes:
            made = await world.client(world.who(f"{role}@{tenant}")).post(
                path, json=body(tenant, canary, world.serial())
            )
            assert made.status_code == 201, made.text
        prober = world.client(world.who(f"tenant-admin@{tenant}"))
        theirs = world.seeded[("task", other(tenant))]
        assert (await prober.put(f"/platform/tasks/{theirs}/cancel")).status_code == 404
        assert (await prober.post("/platform/tasks", json=task_body(other(tenant), "probe", 0))).status_code == 403


# ---------------------------------------------------------------------------------------------- lists


@in_module_loop
@pytest.mark.parametrize(("path", "rule"), LIST_ROUTES, ids=[p for p, _ in LIST_ROUTES])
async def test_every_list_shows_a_tenants_roles_only_that_tenants_objects(world: World, path: str, rule: Any) -> None:
    assert path in TENANTS_LISTED, f"add {path} to TENANTS_LISTED in tests/security/test_isolation.py"
    tenants_of = TENANTS_LISTED[path]

    for tenant in TENANTS:
        for role in TENANT_ROLES:
            answer = await world.client(world.who(f"{role}@{tenant}")).get(path)

            if not compute_grants([Binding(tenant, role)], BUILTIN_ROLES).holds_anywhere(rule.verb, rule.resource):
                assert answer.status_code == 403, (path, role, tenant)
                continue
            assert answer.status_code == 200, (path, role, tenant, answer.text)
            assert set(tenants_of(answer.text)) == {tenant}, (path, role, tenant)
            assert world.canary[other(tenant)] not in answer.text


FILTERS_ON_TB: dict[str, Callable[[World], dict[str, str]]] = {
    "/platform/resources/reservations": lambda w: {"tenant": "tb"},
    "/platform/audit": lambda w: {"tenant": "tb"},
    "/platform/tasks": lambda w: {"label": f"note={w.canary['tb']}"},
    "/platform/admin/rolebindings": lambda w: {"subject": w.made[w.seeded[("binding", "tb")]]["subject"]},
}


@in_module_loop
@pytest.mark.parametrize("path", sorted(FILTERS_ON_TB))
async def test_a_list_filter_naming_the_other_tenants_data_finds_nothing(world: World, path: str) -> None:
    filters = FILTERS_ON_TB[path](world)
    admin = await world.admin().get(path, params=filters)
    assert admin.json()["items"], "the filter should find something of tb's"

    answer = await world.client(world.who("tenant-admin@ta")).get(path, params=filters)

    assert answer.status_code == 200
    assert answer.json()["items"] == []


# ---------------------------------------------------------------------------------------------- audit


@in_module_loop
@pytest.mark.parametrize("role", ["operator", "tenant-admin"])
async def test_a_tenants_audit_readers_never_read_the_other_tenants_canary(world: World, role: str) -> None:
    everything = await world.admin().get("/platform/audit/export")
    assert world.canary["tb"] in everything.text  # it is in the log: ta's readers just must not see it
    reader = world.client(world.who(f"{role}@ta"))

    page = json.dumps(await audit_records(reader))
    export = await reader.get("/platform/audit/export")

    assert export.status_code == 200
    for text in (page, export.text):
        assert world.canary["ta"] in text
        assert world.canary["tb"] not in text


# -------------------------------------------------------------------------------------- logs, metrics


@in_module_loop
async def test_a_tasks_log_is_read_only_inside_its_tenant(world: World) -> None:
    task_id, nothing = world.seeded[("task", "tb")], missing_id("task")

    for role in TENANT_ROLES:
        mine = await world.client(world.who(f"{role}@tb")).get(f"/platform/tasks/{task_id}/logs")
        theirs = await world.client(world.who(f"{role}@ta")).get(f"/platform/tasks/{task_id}/logs")
        missing = await world.client(world.who(f"{role}@ta")).get(f"/platform/tasks/{nothing}/logs")

        assert mine.status_code == 200 and world.canary["tb"] in mine.text
        assert theirs.status_code == missing.status_code == 404
        assert theirs.text.replace(task_id, "<id>") == missing.text.replace(nothing, "<id>")


@in_module_loop
async def test_metrics_are_refused_to_every_tenant_role(world: World) -> None:
    for tenant in TENANTS:
        for role in TENANT_ROLES:
            answer = await world.client(world.who(f"{role}@{tenant}")).get("/metrics")

            assert answer.status_code == 403, (role, tenant)
            assert world.canary[other(tenant)] not in answer.text
    assert 'tenant="tb"' in (await world.admin().get("/metrics")).text  # per-tenant series exist, for admins


# --------------------------------------------------------------------------------------------- events


async def test_a_task_preempted_for_another_tenants_task_is_not_told_which_one(tmp_path: Path) -> None:
    async with seeded_world(tmp_path) as world:
        big = {"resources": {"cpu": "7", "memory": "1Mi"}}
        submit_a, submit_b = world.client(world.who("submitter@ta")), world.client(world.who("submitter@tb"))
        mine = [
            (await submit_a.post("/platform/tasks", json={**task_body("ta", world.canary["ta"], n), **big})).json()[
                "id"
            ]
            for n in (1, 2)
        ]  # one on each node, 7 of its 8 cores
        for task_id in mine:
            await world.until_running(task_id)
        urgent = {**task_body("tb", world.canary["tb"], 3), **big, "priority": 10}
        theirs = (await submit_b.post("/platform/tasks", json=urgent)).json()["id"]
        viewer = world.client(world.who("viewer@ta"))
        preempted = await _preempted_one_of(viewer, mine)

        answers = [
            await viewer.get(f"/platform/tasks/{preempted}"),
            await viewer.get(f"/platform/tasks/{preempted}/events"),
            await viewer.get(f"/platform/tasks/{preempted}/wait", params={"timeout": "0"}),
            await viewer.get("/platform/tasks"),
        ]

        leaked = [str(a.request.url) for a in answers if theirs in a.text or world.canary["tb"] in a.text]
        assert not leaked, f"tb's task {theirs} is named in ta's answers: {leaked}"


async def _preempted_one_of(client: Any, task_ids: list[str]) -> str:
    """The task among ``task_ids`` that has a ``preempting`` event (waiting a few seconds for one)."""
    for _ in range(250):
        for task_id in task_ids:
            events = (await client.get(f"/platform/tasks/{task_id}/events")).json()["items"]
            if any(e["type"] == "preempting" for e in events):
                return task_id
        await asyncio.sleep(0.02)
    raise AssertionError("tb's urgent task preempted none of ta's tasks")
