"""Tenant isolation: what one tenant's callers can read of another's, through lists, logs, audit, metrics and state.

Tenants ta and tb are seeded with canary strings (``matrix_world``); tb's callers then work in tb. Nothing
a caller bound in ta can read may name tb's canary, and every list shows it ta's objects only.

State keys and leases live in each tenant's own namespace: a key that exists only in tb is simply not there for
ta (GET 404 like a random key; PUT makes ta's own key of that name; DELETE deletes nothing), and no listing,
past revision, transaction or watch of ta ever carries tb's canary.
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
from tests.security.conftest import Secured
from tests.security.matrix_world import (
    NOWHERE,
    SHARED_KEY,
    TENANT_ROLES,
    TENANTS,
    World,
    audit_records,
    binding_body,
    made_key,
    missing_id,
    other,
    reservation_body,
    seed_key,
    seeded_world,
    state_value,
    task_body,
    token_body,
)

in_module_loop = pytest.mark.asyncio(loop_scope="module")


def _items(tenant_field: str) -> Callable[[World, str], list[str]]:
    return lambda world, body: [item[tenant_field] for item in json.loads(body)["items"]]


def _lines(world: World, body: str) -> list[str]:
    return [json.loads(line)["tenant"] for line in body.splitlines() if line]


def _canaries(world: World, body: str) -> list[str]:
    """State entries name no tenant: each is the tenant whose canary it carries (every key written here has one)."""
    items = [json.dumps(item) for item in json.loads(body)["items"]]
    return ["+".join(t for t in TENANTS if world.canary[t] in item) or "none" for item in items]


# The tenant of each item a list route answers with. A new list route fails the test below until it is added.
TENANTS_LISTED: dict[str, Callable[[World, str], list[str]]] = {
    "/platform/tasks": _items("tenant"),
    "/platform/resources/reservations": _items("tenant"),
    "/platform/resources/usage": _items("tenant"),
    "/platform/admin/tenants": _items("name"),
    "/platform/admin/tokens": _items("tenant"),
    "/platform/admin/rolebindings": _items("tenant"),
    "/platform/audit": _items("tenant"),
    "/platform/audit/export": _lines,
    "/platform/state": _canaries,
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
        # State: a key, a transaction and a lease holding a key, each written by the tenant's own submitter.
        submitter = world.client(world.who(f"submitter@{tenant}"))
        for response in [
            await submitter.put(f"/platform/state/work/{world.serial()}", json=state_value(tenant, canary, 0)),
            await submitter.post(
                "/platform/state/transaction",
                json={"success": [{"op": "put", "key": f"work/{world.serial()}", "value": {"note": canary}}]},
            ),
            lease := await submitter.post("/platform/leases", json={"ttl": 3600}),
            await submitter.put(
                f"/platform/state/work/{world.serial()}",
                json=state_value(tenant, canary, 0),
                params={"lease": str(lease.json()["id"])},
            ),
        ]:
            assert response.status_code in (200, 201), response.text


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
            assert set(tenants_of(world, answer.text)) == {tenant}, (path, role, tenant)
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


# ---------------------------------------------------------------------------------------------- state

WRITERS = ("submitter", "operator", "tenant-admin")  # the tenant roles that write state


def _same(first: Any, second: Any, first_word: str, second_word: str) -> bool:
    """True when the two answers have one status and the same body once each one's own word is blanked."""
    return bool(
        first.status_code == second.status_code
        and first.text.replace(first_word, "<word>") == second.text.replace(second_word, "<word>")
    )


@in_module_loop
@pytest.mark.parametrize("role", TENANT_ROLES)
async def test_a_key_only_the_other_tenant_has_answers_like_a_random_key_now_and_at_its_revision(
    world: World, role: str
) -> None:
    client = world.client(world.who(f"{role}@ta"))
    theirs, nothing = seed_key("tb"), missing_id("key")
    written = str(world.made[made_key("tb", theirs)]["kv"]["mod_revision"])  # the revision tb wrote it at

    for params in ({}, {"revision": written}):
        found = await client.get(f"/platform/state/{theirs}", params=params)
        absent = await client.get(f"/platform/state/{nothing}", params=params)

        assert found.status_code == 404, (params, found.text)
        assert _same(found, absent, theirs, nothing), (params, found.text, absent.text)


@in_module_loop
@pytest.mark.parametrize("role", TENANT_ROLES)
async def test_naming_the_other_tenant_is_refused_exactly_like_naming_none_that_exists(world: World, role: str) -> None:
    who = world.who(f"{role}@ta")
    client = world.client(who)
    lease = world.seeded[("lease", "tb")]
    requests = [
        ("GET", "/platform/state", None),
        ("GET", f"/platform/state/{seed_key('tb')}", None),
        ("PUT", f"/platform/state/{seed_key('tb')}", state_value("tb", "probe", 0)),
        ("DELETE", f"/platform/state/{seed_key('tb')}", None),
        ("POST", "/platform/state/transaction", {"success": [{"op": "get", "key": seed_key("tb")}]}),
        ("POST", "/platform/leases", {"ttl": 60}),
        ("GET", f"/platform/leases/{lease}", None),
        ("PUT", f"/platform/leases/{lease}/keepalive", None),
        ("DELETE", f"/platform/leases/{lease}", None),
    ]

    for method, path, body in requests:
        named = await client.request(method, path, json=body, params={"tenant": "tb"})
        nowhere = await client.request(method, path, json=body, params={"tenant": NOWHERE})

        assert named.status_code == 403, (method, path, named.text)
        assert _same(named, nowhere, "'tb'", f"'{NOWHERE}'"), (method, path, named.text, nowhere.text)
    watched = await world.stream(who, "/platform/state", {"watch": "true", "from_revision": "1", "tenant": "tb"})
    assert watched.status == 403 and world.canary["tb"] not in watched.text
    assert await world.key_in("tb", seed_key("tb")) == world.made[made_key("tb", seed_key("tb"))]["kv"]
    assert await world.lease_in("tb", lease) == world.made[lease]


@in_module_loop
@pytest.mark.parametrize("role", WRITERS)
async def test_writing_a_key_name_only_the_other_tenant_has_writes_the_callers_own_key(world: World, role: str) -> None:
    client = world.client(world.who(f"{role}@ta"))
    theirs, _ = await world.fresh("key", "tb")
    before = await world.key_in("tb", theirs)
    assert before is not None
    value = state_value("ta", world.canary["ta"], world.serial())

    missed = await client.delete(f"/platform/state/{theirs}")
    stale = await client.put(f"/platform/state/{theirs}", json=value, headers={"If-Match": str(before["mod_revision"])})
    created = await client.put(f"/platform/state/{theirs}", json=value, headers={"If-None-Match": "*"})
    deleted = await client.delete(f"/platform/state/{theirs}")
    again = await client.delete(f"/platform/state/{theirs}")

    assert (missed.status_code, missed.json()["deleted"], missed.json()["prev"]) == (200, 0, None)
    assert stale.status_code == 412 and stale.json()["mod_revision"] == 0, stale.text  # absent here: revision 0
    assert created.status_code == 200, created.text  # absent here, so "create if absent" holds
    assert (created.json()["prev"], created.json()["kv"]["version"], created.json()["kv"]["value"]) == (None, 1, value)
    assert (deleted.json()["deleted"], deleted.json()["prev"]["value"]) == (1, value)
    assert again.json()["deleted"] == 0
    assert await world.key_in("tb", theirs) == before  # tb's key: same value, same revisions
    assert await world.key_in("ta", theirs) is None


@in_module_loop
async def test_the_same_key_name_holds_each_tenants_own_value(world: World) -> None:
    for tenant in TENANTS:
        for role in TENANT_ROLES:
            answer = await world.client(world.who(f"{role}@{tenant}")).get(f"/platform/state/{SHARED_KEY}")

            assert answer.status_code == 200, (role, tenant, answer.text)
            assert world.canary[tenant] in answer.text
            assert world.canary[other(tenant)] not in answer.text


@in_module_loop
async def test_a_transaction_compares_reads_and_deletes_only_in_the_callers_namespace(world: World) -> None:
    client = world.client(world.who("submitter@ta"))
    theirs = seed_key("tb")
    kv = world.made[made_key("tb", theirs)]["kv"]
    compares = [
        {"key": theirs, "target": "exists", "op": "equal", "value": True},
        {"key": theirs, "target": "version", "op": "equal", "value": kv["version"]},
        {"key": theirs, "target": "create_revision", "op": "equal", "value": kv["create_revision"]},
        {"key": theirs, "target": "mod_revision", "op": "equal", "value": kv["mod_revision"]},
    ]
    failure = [
        {"op": "get", "key": theirs},
        {"op": "get", "key": SHARED_KEY},
        {"op": "delete_prefix", "key": "seed/tb/"},
        {"op": "delete", "key": theirs},
    ]

    for compare in compares:
        answer = await client.post(
            "/platform/state/transaction",
            json={"compare": [compare], "success": [{"op": "get", "key": theirs}], "failure": failure},
        )

        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert body["succeeded"] is False, compare  # tb's key is not in ta: every compare on it fails
        got, shared, prefix, single = body["results"]
        assert got["kv"] is None and world.canary["ta"] in json.dumps(shared["kv"])
        assert (prefix["deleted"], single["deleted"]) == (0, 0)
        assert world.canary["tb"] not in answer.text
    assert await world.key_in("tb", theirs) == kv


@in_module_loop
async def test_a_key_cannot_be_put_on_another_tenants_lease(world: World) -> None:
    client = world.client(world.who("submitter@ta"))
    theirs, nothing = world.seeded[("lease", "tb")], missing_id("lease")
    key = f"attach/{world.serial()}"
    value = state_value("ta", world.canary["ta"], 0)

    for lease in (theirs, nothing):
        put = await client.put(f"/platform/state/{key}", json=value, params={"lease": lease})
        txn = await client.post(
            "/platform/state/transaction",
            json={"success": [{"op": "put", "key": key, "value": value, "lease": int(lease)}]},
        )
        assert put.status_code == txn.status_code == 404, (put.text, txn.text)
        assert put.json()["code"] == txn.json()["code"] == "lease_not_found"
        if lease == theirs:
            found_put, found_txn = put, txn
        else:
            assert _same(found_put, put, theirs, nothing) and _same(found_txn, txn, theirs, nothing)
    assert await world.key_in("ta", key) is None
    assert await world.lease_in("tb", theirs) == world.made[theirs]


@in_module_loop
async def test_a_listing_now_and_at_every_past_revision_shows_only_the_callers_keys(world: World) -> None:
    client = world.client(world.who("viewer@ta"))
    now = await client.get("/platform/state", params={"limit": "1000"})
    assert now.status_code == 200 and world.canary["ta"] in now.text

    leaks = []
    for revision in range(1, now.json()["revision"] + 1):
        page = await client.get("/platform/state", params={"revision": str(revision), "limit": "1000"})
        assert page.status_code == 200, page.text
        if any(world.canary["ta"] not in json.dumps(item) for item in page.json()["items"]):
            leaks.append(f"revision {revision}: {page.text[:300]}")
    theirs = await client.get("/platform/state", params={"prefix": "seed/tb/"})

    assert not leaks, "\n".join(leaks)
    assert theirs.status_code == 200 and theirs.json()["items"] == []


def _events(text: str) -> list[dict[str, Any]]:
    """The ``data:`` of each Server-Sent Event in ``text``."""
    return [json.loads(line[len("data: ") :]) for line in text.splitlines() if line.startswith("data: ")]


@in_module_loop
@pytest.mark.parametrize("role", TENANT_ROLES)
async def test_a_watch_from_revision_1_streams_only_the_callers_changes(world: World, role: str) -> None:
    who = world.who(f"{role}@ta")
    since = {"watch": "true", "from_revision": "1"}

    everything, theirs, shared = await asyncio.gather(
        world.stream(who, "/platform/state", since),
        world.stream(who, f"/platform/state/{seed_key('tb')}", since),
        world.stream(who, f"/platform/state/{SHARED_KEY}", since),
    )

    for streamed in (everything, theirs, shared):
        assert streamed.status == 200, streamed.text
        assert streamed.headers["content-type"].startswith("text/event-stream")
        assert world.canary["tb"] not in streamed.text
    puts = [e for e in _events(everything.text) if e["type"] == "put"]
    assert puts and all(world.canary["ta"] in json.dumps(e["kv"]) for e in puts)
    assert {e["key"] for e in puts} >= {seed_key("ta"), SHARED_KEY}
    assert _events(theirs.text) == []
    assert [e["key"] for e in _events(shared.text)] == [SHARED_KEY]


@in_module_loop
async def test_a_live_watch_gets_the_callers_new_changes_and_none_of_the_other_tenants(world: World) -> None:
    start = (await world.admin().get("/platform/state", params={"tenant": "ta"})).json()["revision"] + 1
    since = {"watch": "true", "prefix": "live/", "from_revision": str(start)}  # from now on, whenever it opens
    watching = asyncio.create_task(world.stream(world.who("viewer@ta"), "/platform/state", since, quiet=1.0))
    await asyncio.sleep(0.1)  # the writes come while it watches (or, at worst, before it reads from `start`)
    for tenant in ("tb", "ta", "tb"):
        await world.put_key(tenant, f"live/{world.serial()}")

    streamed = await watching

    assert streamed.status == 200
    assert [e["kv"]["value"]["note"] for e in _events(streamed.text)] == [world.canary["ta"]]


async def test_a_tenant_made_again_under_a_deleted_tenants_name_reads_none_of_the_old_tenants_state(
    secured: Secured,
) -> None:
    # The old tenant's keys and leases must go with it (or keep it from being deleted, like a live reservation):
    # the next tenant to get the name is somebody else, and must start with an empty namespace.
    admin, old = secured.admin(), {"tenant": "tc"}
    assert (await admin.post("/platform/admin/tenants", json={"name": "tc"})).status_code == 201
    lease = (await admin.post("/platform/leases", json={"ttl": 3600}, params=old)).json()["id"]
    for key, params in (("old/secret", old), ("old/held", {**old, "lease": str(lease)})):
        assert (await admin.put(f"/platform/state/{key}", json="old-owner", params=params)).status_code == 200

    deleted = await admin.delete("/platform/admin/tenants/tc")
    if deleted.status_code == 409:
        return  # refused while it holds state: nothing can be inherited
    assert deleted.status_code == 204, deleted.text
    assert (await admin.post("/platform/admin/tenants", json={"name": "tc"})).status_code == 201
    key = await admin.post("/platform/admin/tokens", json={"owner": "new", "tenant": "tc", "roles": ["viewer"]})
    newcomer = secured.client(key.json()["token"])

    inherited = [
        f"{answer.request.url}: {answer.text[:200]}"
        for answer in [
            await newcomer.get("/platform/state/old/secret"),
            await newcomer.get("/platform/state/old/held"),
            await newcomer.get(f"/platform/leases/{lease}"),
        ]
        if answer.status_code != 404
    ]
    listed = await newcomer.get("/platform/state")
    if listed.json()["items"]:
        inherited.append(f"{listed.request.url}: {listed.text[:300]}")
    assert not inherited, "the new tenant tc inherits the deleted tenant's state:\n" + "\n".join(inherited)


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
