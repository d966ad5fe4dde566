"""``/platform/resources`` end to end: capacity per pool and node, reservations, usage, over plain HTTP.

The server has two pools: ``default`` (this machine, 4 cores) and ``sim``: two 4-core nodes gpu-0 and gpu-1 with a
GPU and an FPGA each in zone a, one 8-core node big-0 in zone b (16 cores).
"""

from __future__ import annotations

import itertools
import time
from datetime import UTC, datetime, timedelta

import pytest

from .helpers import assert_problem, submit, wait_done, wait_state

RESERVE = "/platform/resources/reserve"
_names = itertools.count()


@pytest.fixture
def client(pooled_server):
    with pooled_server.client() as c:
        yield c


@pytest.fixture
def tenant(client) -> str:
    name = f"res-{next(_names)}"
    resp = client.post("/platform/admin/tenants", json={"name": name})
    assert resp.status_code == 201, resp.text
    return name


def reserve(client, **body):
    resp = client.post(RESERVE, json=body)
    assert resp.status_code == 201, resp.text
    return resp.json()


def wait_reservation(client, rid: str, states: set[str], timeout: float = 20.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        got = client.get(f"/platform/resources/{rid}").json()
        if got["state"] in states:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"reservation {rid} still {got['state']}, wanted {states}: {got}")
        time.sleep(0.05)


def reservation_ids(client) -> list[str]:
    return [r["id"] for r in client.get("/platform/resources/reservations").json()["items"]]


def sim_pool(client) -> dict:
    report = client.get("/platform/resources").json()
    return next(p for p in report["pools"] if p["name"] == "sim")


# -- capacity -----------------------------------------------------------------------------------------------------


def test_resources_per_pool_and_node(client):
    report = client.get("/platform/resources").json()
    assert [p["name"] for p in report["pools"]] == ["default", "sim"]
    default, sim = report["pools"]
    assert default["executor"] == "local" and default["total"]["millicpu"] == 4000
    assert sim["executor"] == "simulated" and sim["placement"] == "binpack"
    nodes = {n["node"]: n for n in sim["nodes"]}
    assert set(nodes) == {"gpu-0", "gpu-1", "big-0"}
    assert nodes["gpu-0"]["labels"]["zone"] == "a" and nodes["gpu-0"]["total"]["gpu"] == 1
    assert nodes["gpu-0"]["total"]["extended"] == {"example.com/fpga": 1}
    assert sim["total"]["millicpu"] == 16000
    assert report["total"]["millicpu"] == 20000
    for node in sim["nodes"]:
        free = node["total"]["millicpu"] - node["allocated"]["millicpu"] - node["reserved"]["millicpu"]
        assert node["free"]["millicpu"] == max(0, free)


# -- reservations -------------------------------------------------------------------------------------------------


def test_reserve_hold_use_and_release(client, tenant):
    made = reserve(client, tenant=tenant, pool="sim", resources={"cpu": 2, "memory": "2Gi"}, count=3, duration="1h")
    assert made["state"] in ("pending", "active")
    assert (made["tenant"], made["pool"], made["count"], made["duration"]) == (tenant, "sim", 3, 3600.0)
    assert made["total"]["millicpu"] == 6000 and made["resources"]["memory"] == "2Gi"

    active = wait_reservation(client, made["id"], {"active"})
    assert len(active["nodes"]) == 3 and active["activated_at"] and active["expires_at"]
    assert sim_pool(client)["reserved"]["millicpu"] == 6000
    assert made["id"] in reservation_ids(client)
    live = client.get("/platform/resources/reservations", params={"tenant": tenant, "live": "true"}).json()["items"]
    assert [r["id"] for r in live] == [made["id"]]
    assert client.get(f"/platform/admin/tenants/{tenant}").json()["status"]["reservations"] == 1

    # A task naming the reservation runs in its pool, inside its slots.
    task = submit(
        client, ["true"], tenant=tenant, reservation=made["id"], resources={"cpu": 1}, simulated_duration="1s"
    )
    assert task["pool"] == "sim" and task["reservation"] == made["id"]
    done = wait_done(client, task["id"])
    assert done["state"] == "succeeded", done
    assert done["attempts"][0]["node"] in active["nodes"]

    released = client.delete(f"/platform/resources/{made['id']}")
    assert released.status_code == 200, released.text
    assert released.json()["state"] == "released" and released.json()["ended_at"]
    assert client.get(f"/platform/resources/{made['id']}").json()["state"] == "released"
    assert sim_pool(client)["reserved"]["millicpu"] == 0
    problem = assert_problem(client.delete(f"/platform/resources/{made['id']}"), 409, "reservation_ended")
    assert problem["state"] == "released"
    assert_problem(
        client.post("/platform/tasks", json={"command": ["true"], "tenant": tenant, "reservation": made["id"]}),
        404,
        "reservation_not_found",
    )


def test_pool_defaults_to_the_tenants_first_pool(client):
    name = f"res-{next(_names)}"
    client.post("/platform/admin/tenants", json={"name": name, "pools": ["sim"]})
    made = reserve(client, tenant=name, resources={"gpu": 1}, count=2, ttl="1h")
    assert made["pool"] == "sim"
    active = wait_reservation(client, made["id"], {"active"})
    assert sorted(active["nodes"]) == ["gpu-0", "gpu-1"]  # the only nodes with a GPU
    client.delete(f"/platform/resources/{made['id']}")


def test_ttl_expiry_releases_itself(client, tenant):
    made = reserve(client, tenant=tenant, pool="sim", resources={"cpu": 1}, ttl="1s")
    ended = wait_reservation(client, made["id"], {"expired"})
    assert ended["ended_at"]
    assert_problem(client.delete(f"/platform/resources/{made['id']}"), 409, "reservation_ended")


def test_missing_reservations_are_404(client):
    assert_problem(client.get("/platform/resources/rsv-missing"), 404, "reservation_not_found")
    assert_problem(client.delete("/platform/resources/rsv-missing"), 404, "reservation_not_found")


BAD_RESERVATIONS = [
    pytest.param({"tenant": "nobody"}, 404, "tenant_not_found", id="tenant-missing"),
    pytest.param({"pool": "nowhere"}, 404, "pool_not_found", id="pool-missing"),
    pytest.param({"tenant": "$narrow", "pool": "default"}, 404, "pool_not_found", id="pool-not-allowed"),
    pytest.param({"tenant": "$narrow", "priority": 50}, 422, "priority_not_allowed", id="priority-outside-range"),
    pytest.param({"resources": {"cpu": 9}}, 422, "reservation_too_large", id="slot-larger-than-any-node"),
    pytest.param({"resources": {"gpu": 2}}, 422, "reservation_too_large", id="two-gpus-per-slot"),
    pytest.param({"resources": {"cpu": 4}, "count": 5}, 422, "reservation_too_large", id="more-than-the-pool"),
    pytest.param({"resources": {"extended": {"example.com/fpga": 1}}, "count": 3}, 422, "reservation_too_large",
                 id="more-fpgas-than-the-pool"),
    pytest.param({"tenant": "$narrow", "resources": {"cpu": 3}}, 422, "exceeds_quota", id="over-quota-no-borrowing"),
    pytest.param({"count": 0}, 422, "invalid_field", id="count-zero"),
    pytest.param({"count": 1001}, 422, "invalid_field", id="count-absurd"),
    pytest.param({"resources": {}}, 422, "invalid_field", id="nothing-reserved"),
    pytest.param({"resources": {"cpu": -1}}, 422, "invalid_field", id="cpu-negative"),
    pytest.param({"resources": {"memory": "1e30"}}, 422, "invalid_field", id="memory-garbage"),
    pytest.param({"ttl": None}, 422, "invalid_field", id="no-duration-nor-ttl"),
    pytest.param({"ttl": -5}, 422, "invalid_field", id="ttl-negative"),
    pytest.param({"ttl": "400d"}, 422, "invalid_field", id="ttl-absurd"),
    pytest.param({"duration": "soon"}, 422, "invalid_field", id="duration-garbage"),
    pytest.param({"surprise": 1}, 422, "invalid_request", id="unknown-field"),
    pytest.param({"count": "2"}, 422, "invalid_request", id="count-a-string"),
]  # fmt: skip


@pytest.mark.parametrize(("fields", "status", "code"), BAD_RESERVATIONS)
def test_bad_reservation_is_refused_and_nothing_changes(client, fields, status, code):
    narrow = f"res-{next(_names)}"
    client.post(
        "/platform/admin/tenants",
        json={"name": narrow, "pools": ["sim"], "priority_range": {"min": 0, "max": 10}, "quota": {"cpu": 2},
              "borrowing": False},
    )  # fmt: skip
    body = {"tenant": "default", "pool": "sim", "resources": {"cpu": 1}, "count": 1, "ttl": "1h", **fields}
    if body["tenant"] == "$narrow":
        body["tenant"] = narrow
    body = {k: v for k, v in body.items() if v is not None}
    before = reservation_ids(client)
    reserved = sim_pool(client)["reserved"]
    assert_problem(client.post(RESERVE, json=body), status, code)
    assert reservation_ids(client) == before
    assert sim_pool(client)["reserved"] == reserved


# -- usage --------------------------------------------------------------------------------------------------------


def test_usage_per_tenant_and_pool(client, tenant):
    task = submit(
        client, ["true"], tenant=tenant, pool="sim", resources={"cpu": 2, "memory": "1Gi"}, simulated_duration="1s"
    )
    assert wait_done(client, task["id"])["state"] == "succeeded"

    report = client.get("/platform/resources/usage", params={"window": "1h"})
    assert report.status_code == 200, report.text
    body = report.json()
    assert body["window_seconds"] == 3600.0
    [row] = [r for r in body["items"] if r["tenant"] == tenant]
    assert row["pool"] == "sim" and row["attempts"] == 1
    assert row["requested"]["cpu_seconds"] == pytest.approx(2.0, rel=0.5)  # 2 cores for about a second
    assert row["requested"]["memory_byte_seconds"] > 0
    assert row["pool_cpu_seconds"] == 16 * 3600
    expected = 100 * row["requested"]["cpu_seconds"] / row["pool_cpu_seconds"]
    assert row["utilization_percent"] == pytest.approx(expected, abs=0.001)
    assert row["allocated"]["millicpu"] == 0  # nothing of it runs now

    end = datetime.now(UTC) + timedelta(seconds=1)
    ranged = client.get(
        "/platform/resources/usage", params={"start": (end - timedelta(hours=2)).isoformat(), "end": end.isoformat()}
    ).json()
    assert ranged["window_seconds"] == 7200.0
    assert any(r["tenant"] == tenant for r in ranged["items"])
    old = (end - timedelta(days=30)).isoformat()
    empty = client.get("/platform/resources/usage", params={"start": old, "window": "1h"}).json()
    assert all(r["tenant"] != tenant for r in empty["items"])


def test_allocated_now_counts_running_work(client, tenant):
    task = submit(client, ["true"], tenant=tenant, pool="sim", resources={"cpu": 3}, simulated_duration="30s")
    wait_state(client, task["id"], {"running"})
    rows = client.get("/platform/resources/usage").json()["items"]
    [row] = [r for r in rows if r["tenant"] == tenant]
    assert row["allocated"]["millicpu"] == 3000
    client.put(f"/platform/tasks/{task['id']}/cancel")
    wait_done(client, task["id"])


@pytest.mark.parametrize(
    ("params", "code"),
    [
        ({"window": "soon"}, "invalid_field"),
        ({"window": "0s"}, "invalid_field"),
        ({"window": "400d"}, "invalid_field"),
        ({"start": "2030-01-02T00:00:00Z", "end": "2030-01-01T00:00:00Z"}, "invalid_field"),
        ({"start": "2030-01-01T00:00:00Z", "end": "2030-01-02T00:00:00Z", "window": "1h"}, "invalid_field"),
        ({"start": "2030-01-01T00:00:00"}, "naive_datetime"),
        ({"start": "yesterday"}, "invalid_request"),
    ],
)
def test_bad_usage_windows(client, params, code):
    assert_problem(client.get("/platform/resources/usage", params=params), 422, code)
