"""The asyncio client sends the same requests and raises the same errors as the blocking one."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import httpx
import pytest

from taskplane.errors import InvalidTransitionError, NotFoundError, UnavailableError
from taskplane.sdk import AsyncClient, WaitTimeoutError
from tests.sdk.fakes import FakeApi, problem, task_json


def client(api: FakeApi) -> AsyncClient:
    return AsyncClient("http://tp.test", transport=api.transport, token="tok")


async def test_submit_and_get(api: FakeApi) -> None:
    api.on("POST", "/platform/tasks", httpx.Response(201, json=task_json("t-7")))
    api.on("GET", "/platform/tasks/t-7", httpx.Response(200, json=task_json("t-7", state="running")))

    async with client(api) as tp:
        created = await tp.submit(command=["echo", "hi"], labels={"a": "b"}, idempotency_key="k1")
        fetched = await tp.get(created.id)

    assert fetched.state == "running"
    first = api.requests[0]
    assert json.loads(first.content) == {"command": ["echo", "hi"], "labels": {"a": "b"}}
    assert first.headers["idempotency-key"] == "k1"
    assert first.headers["authorization"] == "Bearer tok"


async def test_errors_map_by_code(api: FakeApi) -> None:
    api.on("PUT", "/platform/tasks/t-1/cancel", problem(409, "invalid_state", "task is already failed", state="failed"))

    async with client(api) as tp:
        with pytest.raises(InvalidTransitionError) as info:
            await tp.cancel("t-1")

    assert info.value.extra["state"] == "failed"


async def test_unreachable_server() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    async with AsyncClient("http://down.test", transport=httpx.MockTransport(refuse)) as tp:
        with pytest.raises(UnavailableError, match=r"http://down\.test: refused"):
            await tp.capacity()


async def test_iter_tasks_follows_cursors(api: FakeApi) -> None:
    pages = {
        None: {"items": [task_json("b")], "next_cursor": "x"},
        "x": {"items": [task_json("a")], "next_cursor": None},
    }
    api.on("GET", "/platform/tasks", lambda r: httpx.Response(200, json=pages[r.url.params.get("cursor")]))

    async with client(api) as tp:
        ids = [task.id async for task in tp.iter_tasks(labels={"k": "v"})]

    assert ids == ["b", "a"]
    assert [r.url.params.get("label") for r in api.requests] == ["k=v", "k=v"]


async def test_wait_loops_until_terminal(api: FakeApi) -> None:
    api.on(
        "GET",
        "/platform/tasks/t-1/wait",
        [httpx.Response(200, json=task_json(state="running")), httpx.Response(200, json=task_json(state="failed"))],
    )

    async with client(api) as tp:
        task = await tp.wait("t-1", timeout=600)

    assert task.state == "failed"
    assert [r.url.params["timeout"] for r in api.requests] == ["60", "60"]


async def test_wait_times_out(api: FakeApi) -> None:
    api.on("GET", "/platform/tasks/t-1/wait", httpx.Response(200, json=task_json(state="pending")))

    async with client(api) as tp:
        with pytest.raises(WaitTimeoutError) as info:
            await tp.wait("t-1", timeout=0)

    assert info.value.task.state == "pending"


async def test_follow_logs_streams(api: FakeApi) -> None:
    async def body() -> AsyncIterator[bytes]:
        for chunk in (b"a", b"b\n", b"c"):
            yield chunk

    api.on("GET", "/platform/tasks/t-1/logs", lambda r: httpx.Response(200, content=body()))

    async with client(api) as tp:
        chunks = [chunk async for chunk in tp.follow_logs("t-1", stream="stderr", attempt=1)]
        with pytest.raises(NotFoundError):
            [chunk async for chunk in tp.follow_logs("missing")]

    assert chunks == [b"a", b"b\n", b"c"]
    assert api.requests[0].url.params.multi_items() == [("stream", "stderr"), ("follow", "true"), ("attempt", "1")]


async def test_logs_events_capacity_health(api: FakeApi) -> None:
    api.on("GET", "/platform/tasks/t-1/logs", httpx.Response(200, content=b"out"))
    api.on("GET", "/platform/tasks/t-1/events", httpx.Response(200, json={"items": []}))
    api.on("GET", "/healthz", httpx.Response(200, json={"status": "ok"}))
    api.on("POST", "/platform/tasks/batch", httpx.Response(201, json={"tasks": [task_json()], "created": [True]}))
    api.on("GET", "/platform/tasks", httpx.Response(200, json={"items": [], "next_cursor": None}))

    async with client(api) as tp:
        assert await tp.logs("t-1") == b"out"
        assert await tp.events("t-1") == []
        assert await tp.health() == {"status": "ok"}
        assert (await tp.submit_batch([{"command": ["x"]}])).created == [True]
        assert (await tp.list(state="running")).items == []
