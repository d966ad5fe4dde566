"""Tenants end to end (``/platform/admin/tenants``), and the submission checks they drive, over plain HTTP.

The server has two pools: ``default`` (this machine, local executor) and ``sim`` (three simulated nodes).
Every refusal is checked for its status, its problem ``code`` and that nothing changed afterwards.
"""

from __future__ import annotations

import itertools

import pytest

from .helpers import assert_problem, submit, wait_state

TENANTS = "/platform/admin/tenants"
_names = itertools.count()


@pytest.fixture
def client(pooled_server):
    with pooled_server.client() as c:
        yield c


@pytest.fixture
def name() -> str:
    return f"team-{next(_names)}"


def create(client, **body):
    resp = client.post(TENANTS, json=body)
    assert resp.status_code == 201, resp.text
    return resp.json()


def tenants(client) -> dict[str, dict]:
    resp = client.get(TENANTS)
    assert resp.status_code == 200, resp.text
    return {t["name"]: {k: v for k, v in t.items() if k != "status"} for t in resp.json()["items"]}


def task_count(client) -> int:
    return len(client.get("/platform/tasks", params={"limit": 1000}).json()["items"])


# -- the tenant records -------------------------------------------------------------------------------------------


def test_create_get_list_update_delete(client, name):
    made = create(
        client,
        name=name,
        quota={"cpu": "4", "memory": "16Gi", "gpu": 1, "max_running": 10, "max_pending": 100},
        weight=2.5,
        pools=["sim", "default"],
        priority_range={"min": -5, "max": 50},
        borrowing=False,
    )
    assert made["quota"] == {
        "cpu": "4",
        "memory": "16Gi",
        "gpu": 1,
        "millicpu": 4000,
        "memory_bytes": 16 << 30,
        "max_running": 10,
        "max_pending": 100,
    }
    assert (made["weight"], made["pools"], made["borrowing"], made["implicit"]) == (
        2.5,
        ["sim", "default"],
        False,
        False,
    )
    assert made["priority_range"] == {"min": -5, "max": 50}
    assert made["status"] == {
        "pending": 0,
        "running": 0,
        "usage": made["status"]["usage"],
        "reservations": 0,
    }
    assert client.get(f"{TENANTS}/{name}").json()["quota"] == made["quota"]
    assert name in tenants(client)

    # A merge patch: members left out keep their values, null goes back to the default.
    patched = client.patch(f"{TENANTS}/{name}", json={"quota": {"cpu": None, "max_pending": 5}, "pools": None})
    assert patched.status_code == 200, patched.text
    body = patched.json()
    assert body["quota"]["cpu"] is None and body["quota"]["memory"] == "16Gi" and body["quota"]["max_pending"] == 5
    assert body["pools"] is None and body["weight"] == 2.5 and body["borrowing"] is False
    patched = client.patch(
        f"{TENANTS}/{name}",
        json={"priority_range": {"max": 7}},
        headers={"content-type": "application/merge-patch+json"},
    )
    assert patched.status_code == 200, patched.text
    assert patched.json()["priority_range"] == {"min": -5, "max": 7}
    assert client.patch(f"{TENANTS}/{name}", json={"quota": None}).json()["quota"]["memory"] is None

    assert client.delete(f"{TENANTS}/{name}").status_code == 204
    assert_problem(client.get(f"{TENANTS}/{name}"), 404, "tenant_not_found")
    assert name not in tenants(client)
    assert_problem(client.delete(f"{TENANTS}/{name}"), 404, "tenant_not_found")
    assert_problem(client.patch(f"{TENANTS}/{name}", json={"weight": 2}), 404, "tenant_not_found")


def test_default_tenant_is_implicit_patchable_and_protected(client):
    listed = tenants(client)["default"]
    assert listed["pools"] is None and listed["priority_range"] == {"min": -1000, "max": 1000}
    got = client.get(f"{TENANTS}/default")
    assert got.status_code == 200
    assert_problem(client.post(TENANTS, json={"name": "default"}), 409, "tenant_exists")
    assert_problem(client.delete(f"{TENANTS}/default"), 409, "tenant_protected")

    patched = client.patch(f"{TENANTS}/default", json={"weight": 3})
    assert patched.status_code == 200, patched.text
    assert patched.json()["weight"] == 3 and patched.json()["implicit"] is False
    assert client.get(f"{TENANTS}/default").json()["weight"] == 3
    restored = client.patch(f"{TENANTS}/default", json={"weight": None})
    assert restored.json()["weight"] == 1
    assert_problem(client.delete(f"{TENANTS}/default"), 409, "tenant_protected")


def test_a_taken_name_is_a_conflict(client, name):
    create(client, name=name, weight=2)
    before = tenants(client)
    assert_problem(client.post(TENANTS, json={"name": name, "weight": 9}), 409, "tenant_exists")
    assert tenants(client) == before


BAD_TENANTS = [
    pytest.param({"name": "Bad_Name"}, "invalid_field", "name", id="name-not-a-dns-label"),
    pytest.param({"name": "x" * 64}, "invalid_field", "name", id="name-too-long"),
    pytest.param({"quota": {"cpu": -1}}, "invalid_field", "quota.cpu", id="cpu-negative"),
    pytest.param({"quota": {"cpu": "lots"}}, "invalid_field", "quota.cpu", id="cpu-garbage"),
    pytest.param({"quota": {"memory": "-1Gi"}}, "invalid_field", "quota.memory", id="memory-negative"),
    pytest.param({"quota": {"memory": "9Ei"}}, "invalid_field", "quota.memory", id="memory-absurd"),
    pytest.param({"quota": {"gpu": -1}}, "invalid_field", "quota.gpu", id="gpu-negative"),
    pytest.param({"quota": {"max_running": -1}}, "invalid_field", "quota.max_running", id="max-running-negative"),
    pytest.param({"quota": {"max_pending": 10**12}}, "invalid_field", "quota.max_pending", id="max-pending-absurd"),
    pytest.param({"weight": 0}, "invalid_field", "weight", id="weight-zero"),
    pytest.param({"weight": -2}, "invalid_field", "weight", id="weight-negative"),
    pytest.param({"weight": 1001}, "invalid_field", "weight", id="weight-absurd"),
    pytest.param({"pools": []}, "invalid_field", "pools", id="pools-empty"),
    pytest.param({"pools": ["sim", "nowhere"]}, "unknown_pool", "pools", id="pool-unknown"),
    pytest.param({"priority_range": {"min": 10, "max": 1}}, "invalid_field", "priority_range", id="range-inverted"),
    pytest.param({"priority_range": {"min": -1001}}, "invalid_field", "priority_range", id="range-below"),
    pytest.param({"priority_range": {"max": 5000}}, "invalid_field", "priority_range", id="range-above"),
]


@pytest.mark.parametrize(("body", "code", "field"), BAD_TENANTS)
def test_bad_tenant_is_refused_and_nothing_is_stored(client, name, body, code, field):
    before = tenants(client)
    problem = assert_problem(client.post(TENANTS, json={"name": name, **body}), 422, code)
    assert problem["field"] == field
    assert tenants(client) == before


@pytest.mark.parametrize(
    "body",
    [{"name": "ok", "quota": {"cpu": True}}, {"name": "ok", "surprise": 1}, {"name": 5}, {"name": "ok", "weight": "2"}],
)
def test_schema_errors_are_422(client, body):
    before = tenants(client)
    assert_problem(client.post(TENANTS, json=body), 422, "invalid_request")
    assert tenants(client) == before


@pytest.mark.parametrize(("body", "code", "field"), [b for b in BAD_TENANTS if "name" not in b.values[0]])
def test_bad_update_changes_nothing(client, name, body, code, field):
    create(client, name=name, quota={"cpu": "2"}, weight=2, priority_range={"min": 0, "max": 10})
    before = client.get(f"{TENANTS}/{name}").json()
    problem = assert_problem(client.patch(f"{TENANTS}/{name}", json=body), 422, code)
    assert problem["field"] == field
    assert client.get(f"{TENANTS}/{name}").json() == before


# -- deleting -----------------------------------------------------------------------------------------------------


def test_a_tenant_with_live_tasks_cannot_be_deleted(client, name):
    create(client, name=name, quota={"max_running": 0})  # nothing of it ever runs: its task stays pending
    task = submit(client, ["true"], tenant=name)
    assert wait_state(client, task["id"], {"pending"})["pending_reason"] is not None
    problem = assert_problem(client.delete(f"{TENANTS}/{name}"), 409, "tenant_not_empty")
    assert problem["pending"] == 1
    assert client.get(f"{TENANTS}/{name}").status_code == 200

    client.put(f"/platform/tasks/{task['id']}/cancel")
    wait_state(client, task["id"], {"cancelled"})
    assert client.delete(f"{TENANTS}/{name}").status_code == 204


def test_a_tenant_with_a_live_reservation_cannot_be_deleted(client, name):
    create(client, name=name)
    made = client.post(
        "/platform/resources/reserve", json={"tenant": name, "pool": "sim", "resources": {"cpu": 1}, "ttl": "1h"}
    )
    assert made.status_code == 201, made.text
    assert_problem(client.delete(f"{TENANTS}/{name}"), 409, "tenant_not_empty")
    assert client.delete(f"/platform/resources/{made.json()['id']}").status_code == 200
    assert client.delete(f"{TENANTS}/{name}").status_code == 204


# -- submission checks --------------------------------------------------------------------------------------------


def test_pool_defaults_to_the_tenants_first_pool(client, name):
    create(client, name=name, pools=["sim"])
    task = submit(client, ["true"], tenant=name, simulated_duration="1s")
    assert task["pool"] == "sim"
    assert submit(client, ["true"])["pool"] == "default"


def test_submission_refusals_store_nothing(client, name):
    other = f"{name}-other"
    create(client, name=name, pools=["sim"], priority_range={"min": 0, "max": 10})
    create(client, name=other)
    mine = client.post(
        "/platform/resources/reserve", json={"tenant": name, "resources": {"cpu": 1, "memory": "1Gi"}, "ttl": "1h"}
    )
    theirs = client.post(
        "/platform/resources/reserve",
        json={"tenant": other, "pool": "sim", "resources": {"cpu": 1, "memory": "1Gi"}, "ttl": "1h"},
    )
    assert mine.status_code == theirs.status_code == 201
    refusals = [
        ({"tenant": "nobody"}, 404, "tenant_not_found"),
        ({"tenant": name, "pool": "nowhere"}, 404, "pool_not_found"),
        ({"tenant": name, "pool": "default"}, 404, "pool_not_found"),  # exists, not allowed: looks missing
        ({"tenant": name, "priority": 11}, 422, "priority_not_allowed"),
        ({"tenant": name, "priority": -1}, 422, "priority_not_allowed"),
        ({"tenant": name, "reservation": "rsv-nope"}, 404, "reservation_not_found"),
        ({"tenant": name, "reservation": theirs.json()["id"]}, 404, "reservation_not_found"),
        ({"tenant": other, "reservation": theirs.json()["id"], "pool": "default"}, 404, "reservation_not_found"),
        ({"tenant": name, "resources": {"extended": {"cpu": 1}}}, 422, "invalid_field"),
        ({"tenant": name, "node_selector": {"bad key!": "x"}}, 422, "invalid_field"),
    ]
    before = task_count(client)
    for fields, status, code in refusals:
        assert_problem(client.post("/platform/tasks", json={"command": ["true"], **fields}), status, code)
    batch = {"tasks": [{"command": ["true"], "tenant": name}, {"command": ["true"], "tenant": "nobody"}]}
    problem = assert_problem(client.post("/platform/tasks/batch", json=batch), 404, "tenant_not_found")
    assert problem["index"] == 1
    assert task_count(client) == before

    inside = submit(client, ["true"], tenant=name, reservation=mine.json()["id"], simulated_duration="1s")
    assert (inside["pool"], inside["reservation"]) == ("sim", mine.json()["id"])
    for reservation in (mine, theirs):
        client.delete(f"/platform/resources/{reservation.json()['id']}")


def test_pending_limit(client, name):
    create(client, name=name, quota={"max_running": 0, "max_pending": 2})
    first = [submit(client, ["true"], tenant=name) for _ in range(2)]
    before = task_count(client)
    problem = assert_problem(
        client.post("/platform/tasks", json={"command": ["true"], "tenant": name}), 429, "pending_limit"
    )
    assert (problem["limit"], problem["pending"]) == (2, 2)
    batch = {"tasks": [{"command": ["true"]}, {"command": ["true"], "tenant": name}]}
    assert_problem(client.post("/platform/tasks/batch", json=batch), 429, "pending_limit")
    assert task_count(client) == before

    client.patch(f"{TENANTS}/{name}", json={"quota": {"max_pending": None}})
    third = submit(client, ["true"], tenant=name)
    for task in [*first, third]:
        client.put(f"/platform/tasks/{task['id']}/cancel")


def test_a_task_that_can_never_fit_its_pool_is_refused(client):
    before = task_count(client)
    too_big = {"command": ["true"], "pool": "sim", "resources": {"cpu": 1000}}
    assert_problem(client.post("/platform/tasks", json=too_big), 422, "unschedulable")
    no_such_labels = {"command": ["true"], "pool": "sim", "node_selector": {"zone": "nowhere"}}
    assert_problem(client.post("/platform/tasks", json=no_such_labels), 422, "unschedulable")
    assert task_count(client) == before


def test_get_reports_pool_selector_reservation_and_queue_fields(client, name):
    create(client, name=name, quota={"max_running": 0})
    task = submit(
        client,
        ["true"],
        tenant=name,
        pool="sim",
        node_selector={"zone": "b"},
        resources={"cpu": 1, "extended": {"example.com/fpga": 0}},
        simulated_duration="2s",
    )
    got = client.get(f"/platform/tasks/{task['id']}").json()
    assert got["pool"] == "sim" and got["node_selector"] == {"zone": "b"} and got["simulated_duration"] == 2.0
    assert got["resources"]["extended"] == {}
    assert got["pending_reason"]["code"] and got["queue_position"] == 0
    assert "eta" in got
    client.put(f"/platform/tasks/{task['id']}/cancel")
