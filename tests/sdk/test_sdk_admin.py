"""Tenants, resources, reservations and usage through both clients: request shapes, decoding, errors."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import httpx
import pytest

from taskplane.errors import ConflictError, InvalidRequestError, LimitExceededError, NotFoundError
from taskplane.sdk import AsyncClient, Client
from taskplane.wire import TenantUpdate
from tests.sdk.fakes import (
    FakeApi,
    problem,
    reservation_json,
    resources_report_json,
    task_json,
    tenant_json,
    usage_json,
)


def client(api: FakeApi) -> Client:
    return Client("http://tp.test", transport=api.transport)


def body(api: FakeApi) -> object:
    return json.loads(api.last.content)


# -- tenants ------------------------------------------------------------------------------------------------------


def test_create_tenant_sends_only_what_was_given(api: FakeApi) -> None:
    api.on("POST", "/platform/admin/tenants", httpx.Response(201, json=tenant_json("team-a")))

    tenant = client(api).create_tenant(name="team-a", quota={"cpu": "4", "memory": "16Gi"}, weight=2)

    assert tenant.name == "team-a" and tenant.quota.millicpu == 4000 and tenant.status is not None
    assert body(api) == {"name": "team-a", "quota": {"cpu": "4", "memory": "16Gi"}, "weight": 2}


def test_create_tenant_validates_before_sending(api: FakeApi) -> None:
    with pytest.raises(InvalidRequestError, match="quota"):
        client(api).create_tenant({"name": "x", "quota": {"gpu": "two"}})
    with pytest.raises(TypeError):
        client(api).create_tenant({"name": "x"}, weight=2)
    assert api.requests == []


def test_update_tenant_is_a_merge_patch_with_nulls(api: FakeApi) -> None:
    api.on("PATCH", "/platform/admin/tenants/team-a", httpx.Response(200, json=tenant_json("team-a")))

    client(api).update_tenant("team-a", quota={"cpu": None, "max_pending": 10}, pools=None)

    assert api.last.method == "PATCH"
    assert body(api) == {"quota": {"cpu": None, "max_pending": 10}, "pools": None}
    client(api).update_tenant("team-a", TenantUpdate(weight=3))
    assert body(api) == {"weight": 3}


def test_get_list_and_delete_tenants(api: FakeApi) -> None:
    api.on("GET", "/platform/admin/tenants/a%2Fb", problem(404, "tenant_not_found", "tenant 'a/b' not found"))
    api.on("GET", "/platform/admin/tenants", httpx.Response(200, json={"items": [tenant_json("a"), tenant_json("b")]}))
    api.on("DELETE", "/platform/admin/tenants/a", httpx.Response(204))
    api.on("DELETE", "/platform/admin/tenants/b", problem(409, "tenant_not_empty", "it has tasks", pending=3))

    tp = client(api)
    assert [t.name for t in tp.list_tenants()] == ["a", "b"]
    with pytest.raises(NotFoundError) as missing:
        tp.get_tenant("a/b")  # escaped: no name reaches another route
    assert missing.value.code == "tenant_not_found"
    assert tp.delete_tenant("a") is None
    with pytest.raises(ConflictError) as busy:
        tp.delete_tenant("b")
    assert busy.value.code == "tenant_not_empty" and busy.value.extra["pending"] == 3


def test_pending_limit_is_a_limit_exceeded_error(api: FakeApi) -> None:
    api.on("POST", "/platform/tasks", problem(429, "pending_limit", "too many pending", limit=2))
    with pytest.raises(LimitExceededError) as info:
        client(api).submit(command=["true"], tenant="team-a")
    assert info.value.status == 429 and info.value.code == "pending_limit"


def test_submit_sends_placement_fields(api: FakeApi) -> None:
    api.on("POST", "/platform/tasks", httpx.Response(201, json=task_json("t-1", pool="gpu", reservation="rsv-1")))

    task = client(api).submit(
        command=["true"],
        pool="gpu",
        node_selector={"zone": "a"},
        reservation="rsv-1",
        simulated_duration="30s",
        resources={"gpu": 1, "extended": {"example.com/fpga": 1}},
    )

    assert task.pool == "gpu" and task.reservation == "rsv-1"
    assert body(api) == {
        "command": ["true"],
        "pool": "gpu",
        "node_selector": {"zone": "a"},
        "reservation": "rsv-1",
        "simulated_duration": "30s",
        "resources": {"gpu": 1, "extended": {"example.com/fpga": 1}},
    }


# -- resources ----------------------------------------------------------------------------------------------------


def test_resources_report(api: FakeApi) -> None:
    api.on("GET", "/platform/resources", httpx.Response(200, json=resources_report_json()))
    report = client(api).resources()
    assert [n.node for n in report.pools[0].nodes] == ["sim-0", "sim-1"]
    assert report.reserved.millicpu == 4000


def test_reserve_release_and_read(api: FakeApi) -> None:
    api.on("POST", "/platform/resources/reserve", httpx.Response(201, json=reservation_json("rsv-1")))
    api.on("GET", "/platform/resources/rsv-1", httpx.Response(200, json=reservation_json("rsv-1", "active")))
    api.on("DELETE", "/platform/resources/rsv-1", httpx.Response(200, json=reservation_json("rsv-1", "released")))
    api.on("DELETE", "/platform/resources/rsv-2", problem(409, "reservation_ended", "ended", state="expired"))
    api.on("GET", "/platform/resources/reservations", httpx.Response(200, json={"items": [reservation_json()]}))
    tp = client(api)

    made = tp.reserve(tenant="team-a", resources={"cpu": 2, "memory": "4Gi"}, count=2, ttl="1h")
    assert made.state == "pending"
    assert body(api) == {"tenant": "team-a", "resources": {"cpu": 2, "memory": "4Gi"}, "count": 2, "ttl": "1h"}
    assert tp.get_reservation("rsv-1").state == "active"
    assert tp.release("rsv-1").state == "released"
    with pytest.raises(ConflictError) as ended:
        tp.release("rsv-2")
    assert ended.value.code == "reservation_ended"
    assert [r.id for r in tp.list_reservations("team-a", live=True)] == ["rsv-1"]
    assert api.last.url.params.multi_items() == [("tenant", "team-a"), ("live", "true")]


def test_reservation_ids_cannot_reach_other_routes(api: FakeApi) -> None:
    for bad in ("usage", "reservations", "reserve", ""):
        with pytest.raises(InvalidRequestError):
            client(api).release(bad)
    assert api.requests == []


def test_usage_window_and_range(api: FakeApi) -> None:
    api.on("GET", "/platform/resources/usage", httpx.Response(200, json=usage_json()))
    tp = client(api)

    report = tp.usage(window="1h")
    assert report.items[0].utilization_percent == 12.5
    assert api.last.url.params.multi_items() == [("window", "1h")]
    tp.usage(start=datetime(2024, 5, 1, 11, tzinfo=UTC), end=datetime(2024, 5, 1, 12, tzinfo=UTC))
    assert api.last.url.params.multi_items() == [("start", "2024-05-01T11:00:00Z"), ("end", "2024-05-01T12:00:00Z")]
    with pytest.raises(InvalidRequestError, match="timezone"):
        tp.usage(start=datetime(2024, 5, 1, 11))


# -- async --------------------------------------------------------------------------------------------------------


async def test_async_client_has_the_same_calls(api: FakeApi) -> None:
    api.on("POST", "/platform/admin/tenants", httpx.Response(201, json=tenant_json("team-a")))
    api.on("PATCH", "/platform/admin/tenants/team-a", httpx.Response(200, json=tenant_json("team-a", weight=3)))
    api.on("GET", "/platform/admin/tenants", httpx.Response(200, json={"items": [tenant_json("team-a")]}))
    api.on("DELETE", "/platform/admin/tenants/team-a", httpx.Response(204))
    api.on("GET", "/platform/resources", httpx.Response(200, json=resources_report_json()))
    api.on("POST", "/platform/resources/reserve", httpx.Response(201, json=reservation_json("rsv-1")))
    api.on("DELETE", "/platform/resources/rsv-1", httpx.Response(200, json=reservation_json("rsv-1", "released")))
    api.on("GET", "/platform/resources/usage", httpx.Response(200, json=usage_json()))

    async with AsyncClient("http://tp.test", transport=api.transport) as tp:
        assert (await tp.create_tenant(name="team-a")).name == "team-a"
        assert (await tp.update_tenant("team-a", weight=3)).weight == 3
        assert [t.name for t in await tp.list_tenants()] == ["team-a"]
        await tp.delete_tenant("team-a")
        assert (await tp.resources()).pools[0].name == "sim"
        assert (await tp.reserve(resources={"cpu": 1}, ttl=60)).id == "rsv-1"
        assert (await tp.release("rsv-1")).state == "released"
        assert (await tp.usage("2h")).window_seconds == 3600.0
    assert [(r.method, r.url.path) for r in api.requests][-2:] == [
        ("DELETE", "/platform/resources/rsv-1"),
        ("GET", "/platform/resources/usage"),
    ]
