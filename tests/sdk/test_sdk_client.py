"""The blocking client: request shapes, decoding, cursors, the wait loop and log streaming."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta, timezone

import httpx
import pytest

from taskplane.errors import InternalError, InvalidRequestError, NotFoundError, UnavailableError
from taskplane.sdk import Client, WaitTimeoutError
from taskplane.wire import ResourcesIn, TaskSubmit, TimeoutsIn
from tests.sdk.fakes import FakeApi, problem, task_json


def client(api: FakeApi, **kwargs: object) -> Client:
    return Client("http://tp.test", transport=api.transport, **kwargs)  # type: ignore[arg-type]


# -- submit ---------------------------------------------------------------------------------------------------


def test_submit_from_keywords_sends_only_what_was_given(api: FakeApi) -> None:
    api.on("POST", "/platform/tasks", httpx.Response(201, json=task_json("t-9")))

    task = client(api).submit(command=["python", "-c", "print(1)"], resources={"cpu": "500m", "memory": "256Mi"})

    assert task.id == "t-9"
    assert api.last.method == "POST"
    assert api.last.headers["content-type"] == "application/json"
    assert json.loads(api.last.content) == {
        "command": ["python", "-c", "print(1)"],
        "resources": {"cpu": "500m", "memory": "256Mi"},
    }
    assert "idempotency-key" not in api.last.headers


def test_submit_a_model_with_an_idempotency_key(api: FakeApi) -> None:
    api.on("POST", "/platform/tasks", httpx.Response(200, json=task_json("t-1")))
    spec = TaskSubmit(command=["sleep", "1"], resources=ResourcesIn(cpu=2), timeouts=TimeoutsIn(run="30s"))

    client(api).submit(spec, idempotency_key="build-42")

    assert api.last.headers["idempotency-key"] == "build-42"
    assert json.loads(api.last.content) == {
        "command": ["sleep", "1"],
        "resources": {"cpu": 2},
        "timeouts": {"run": "30s"},
    }


def test_submit_refuses_a_model_and_keywords_together(api: FakeApi) -> None:
    with pytest.raises(TypeError):
        client(api).submit(TaskSubmit(command=["true"]), command=["false"])


def test_submit_validates_before_sending(api: FakeApi) -> None:
    with pytest.raises(InvalidRequestError) as info:
        client(api).submit(command="echo hi")

    assert "command" in info.value.detail
    assert info.value.extra["errors"][0]["loc"] == ("command",)
    assert api.requests == []


def test_submit_refuses_two_different_idempotency_keys(api: FakeApi) -> None:
    with pytest.raises(InvalidRequestError, match="idempotency_key"):
        client(api).submit(TaskSubmit(command=["true"], idempotency_key="b"), idempotency_key="a")
    assert api.requests == []


def test_submit_batch_sends_every_task_in_order(api: FakeApi) -> None:
    result = {"tasks": [task_json("a"), task_json("b")], "created": [True, False]}
    api.on("POST", "/platform/tasks/batch", httpx.Response(201, json=result))

    out = client(api).submit_batch([TaskSubmit(command=["a"]), {"command": ["b"], "priority": 5}])

    assert [t.id for t in out.tasks] == ["a", "b"]
    assert out.created == [True, False]
    assert json.loads(api.last.content) == {"tasks": [{"command": ["a"]}, {"command": ["b"], "priority": 5}]}


# -- headers and configuration --------------------------------------------------------------------------------


def test_token_and_url_come_from_the_environment(api: FakeApi, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TASKPLANE_URL", "http://from-env:9000/")
    monkeypatch.setenv("TASKPLANE_TOKEN", "s3cret")
    api.on("GET", "/platform/tasks/t-1", httpx.Response(200, json=task_json()))

    tp = Client(transport=api.transport)
    tp.get("t-1")

    assert tp.base_url == "http://from-env:9000"
    assert str(api.last.url) == "http://from-env:9000/platform/tasks/t-1"
    assert api.last.headers["authorization"] == "Bearer s3cret"
    assert api.last.headers["user-agent"].startswith("taskplane-sdk/")


def test_no_authorization_header_without_a_token(api: FakeApi) -> None:
    api.on("GET", "/platform/tasks/t-1", httpx.Response(200, json=task_json()))
    client(api).get("t-1")
    assert "authorization" not in api.last.headers


def test_explicit_token_wins(api: FakeApi, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TASKPLANE_TOKEN", "from-env")
    api.on("GET", "/platform/tasks/t-1", httpx.Response(200, json=task_json()))
    client(api, token="explicit").get("t-1")
    assert api.last.headers["authorization"] == "Bearer explicit"


# -- reading tasks ---------------------------------------------------------------------------------------------


def test_task_ids_are_escaped_into_one_path_segment(api: FakeApi) -> None:
    api.on("GET", "/platform/tasks/a%2F..%2Fb", httpx.Response(200, json=task_json("a/../b")))
    assert client(api).get("a/../b").id == "a/../b"


def test_an_empty_task_id_is_refused(api: FakeApi) -> None:
    with pytest.raises(InvalidRequestError):
        client(api).get("")
    assert api.requests == []


def test_list_sends_filters_as_repeated_parameters(api: FakeApi) -> None:
    api.on("GET", "/platform/tasks", httpx.Response(200, json={"items": [task_json()], "next_cursor": "c2"}))
    after = datetime(2024, 5, 1, 14, 0, tzinfo=timezone(timedelta(hours=2)))

    page = client(api).list(
        state=["pending", "running"],
        labels={"team": "data", "env": "prod"},
        created_after=after,
        limit=10,
        cursor="c1",
    )

    assert page.next_cursor == "c2"
    assert api.last.url.params.multi_items() == [
        ("state", "pending"),
        ("state", "running"),
        ("label", "team=data"),
        ("label", "env=prod"),
        ("created_after", "2024-05-01T12:00:00Z"),
        ("limit", "10"),
        ("cursor", "c1"),
    ]


def test_list_accepts_one_state_and_label_strings(api: FakeApi) -> None:
    api.on("GET", "/platform/tasks", httpx.Response(200, json={"items": []}))
    client(api).list(state="failed", labels=["a=b"], created_before=datetime(2024, 1, 1, tzinfo=UTC))
    assert api.last.url.params.multi_items() == [
        ("state", "failed"),
        ("label", "a=b"),
        ("created_before", "2024-01-01T00:00:00Z"),
        ("limit", "100"),
    ]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"created_after": datetime(2024, 1, 1)}, "timezone-aware"),
        ({"labels": ["novalue"]}, "key=value"),
    ],
)
def test_list_refuses_bad_filters(api: FakeApi, kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(InvalidRequestError, match=message):
        client(api).list(**kwargs)  # type: ignore[arg-type]
    assert api.requests == []


def test_iter_tasks_follows_cursors_to_the_end(api: FakeApi) -> None:
    pages = {
        None: {"items": [task_json("t-5"), task_json("t-4")], "next_cursor": "p2"},
        "p2": {"items": [task_json("t-3"), task_json("t-2")], "next_cursor": "p3"},
        "p3": {"items": [task_json("t-1")], "next_cursor": None},
    }
    api.on("GET", "/platform/tasks", lambda r: httpx.Response(200, json=pages[r.url.params.get("cursor")]))

    ids = [t.id for t in client(api).iter_tasks(state="pending", page_size=2)]

    assert ids == ["t-5", "t-4", "t-3", "t-2", "t-1"]
    assert [r.url.params.get("cursor") for r in api.requests] == [None, "p2", "p3"]
    assert all(r.url.params["limit"] == "2" and r.url.params["state"] == "pending" for r in api.requests)


def test_iter_tasks_fetches_lazily(api: FakeApi) -> None:
    api.on("GET", "/platform/tasks", httpx.Response(200, json={"items": [task_json("a")], "next_cursor": "more"}))
    first = next(iter(client(api).iter_tasks()))
    assert first.id == "a"
    assert len(api.requests) == 1


def test_cancel_puts_and_returns_the_task(api: FakeApi) -> None:
    api.on("PUT", "/platform/tasks/t-1/cancel", httpx.Response(202, json=task_json(state="cancelling")))
    assert client(api).cancel("t-1").state == "cancelling"


def test_events_are_decoded(api: FakeApi) -> None:
    items = [
        {"seq": 1, "at": "2024-05-01T12:00:00Z", "type": "created", "to_state": "pending"},
        {"seq": 2, "at": "2024-05-01T12:00:01Z", "type": "transition", "from_state": "pending", "to_state": "admitted"},
    ]
    api.on("GET", "/platform/tasks/t-1/events", httpx.Response(200, json={"items": items}))

    events = client(api).events("t-1")

    assert [e.to_state for e in events] == ["pending", "admitted"]
    assert events[1].at == datetime(2024, 5, 1, 12, 0, 1, tzinfo=UTC)


def test_capacity_and_health(api: FakeApi) -> None:
    res = {"cpu": "4", "memory": "8Gi", "gpu": 0, "millicpu": 4000, "memory_bytes": 8 << 30}
    node = {
        "node": "n1",
        "executor": "local",
        "total": res,
        "allocated": res,
        "free": res,
        "running_tasks": 2,
        "max_tasks": 100,
        "cgroups": "v2",
    }
    body = {"nodes": [node], "total": res, "allocated": res, "free": res, "pending_tasks": 3, "running_tasks": 2}
    api.on("GET", "/platform/capacity", httpx.Response(200, json=body))
    api.on("GET", "/healthz", httpx.Response(200, json={"status": "ok"}))
    api.on("GET", "/readyz", httpx.Response(200, text="ready"))

    tp = client(api)
    assert tp.capacity().nodes[0].node == "n1"
    assert tp.health() == {"status": "ok"}
    assert tp.ready() == {"status": "ready"}


def test_a_2xx_body_that_does_not_fit_the_model_is_an_internal_error(api: FakeApi) -> None:
    api.on("GET", "/platform/tasks/t-1", httpx.Response(200, json={"id": "t-1"}))
    with pytest.raises(InternalError, match="cannot read"):
        client(api).get("t-1")


# -- wait ------------------------------------------------------------------------------------------------------


def test_wait_repeats_the_long_poll_until_the_task_ends(api: FakeApi) -> None:
    api.on(
        "GET",
        "/platform/tasks/t-1/wait",
        [
            httpx.Response(200, json=task_json(state="pending")),
            httpx.Response(200, json=task_json(state="running")),
            httpx.Response(200, json=task_json(state="succeeded", exit_code=0)),
        ],
    )

    task = client(api, timeout=5.0).wait("t-1")

    assert task.state == "succeeded"
    assert [r.url.params["timeout"] for r in api.requests] == ["60", "60", "60"]
    # The read timeout covers the time the server may hold the request.
    assert api.last.extensions["timeout"]["read"] == 65.0


def test_wait_polls_no_longer_than_its_own_timeout(api: FakeApi) -> None:
    api.on("GET", "/platform/tasks/t-1/wait", httpx.Response(200, json=task_json(state="succeeded")))
    client(api).wait("t-1", timeout=2.5)
    assert api.last.url.params["timeout"] == "3"


def test_wait_raises_timeout_error_with_the_last_state(api: FakeApi) -> None:
    def slow_running(request: httpx.Request) -> httpx.Response:
        time.sleep(0.02)
        return httpx.Response(200, json=task_json(state="running"))

    api.on("GET", "/platform/tasks/t-1/wait", slow_running)

    with pytest.raises(TimeoutError) as info:
        client(api).wait("t-1", timeout=0.01)

    assert isinstance(info.value, WaitTimeoutError)
    assert info.value.task.state == "running"
    assert "still running" in str(info.value)
    assert len(api.requests) == 1


def test_wait_with_zero_timeout_checks_once(api: FakeApi) -> None:
    api.on("GET", "/platform/tasks/t-1/wait", httpx.Response(200, json=task_json(state="pending")))
    with pytest.raises(WaitTimeoutError):
        client(api).wait("t-1", timeout=0)
    assert api.last.url.params["timeout"] == "0"


def test_wait_refuses_a_negative_timeout(api: FakeApi) -> None:
    with pytest.raises(ValueError, match="non-negative"):
        client(api).wait("t-1", timeout=-1)


# -- logs ------------------------------------------------------------------------------------------------------


def test_logs_returns_the_bytes_written_so_far(api: FakeApi) -> None:
    api.on("GET", "/platform/tasks/t-1/logs", httpx.Response(200, content=b"\x00binary\xff\n"))

    data = client(api).logs("t-1", stream="stderr", attempt=2, offset=10)

    assert data == b"\x00binary\xff\n"
    assert api.last.url.params.multi_items() == [
        ("stream", "stderr"),
        ("follow", "false"),
        ("attempt", "2"),
        ("offset", "10"),
    ]


def test_follow_logs_yields_chunks_as_they_arrive(api: FakeApi) -> None:
    api.on("GET", "/platform/tasks/t-1/logs", lambda r: httpx.Response(200, content=iter([b"one\n", b"two\n", b"3"])))

    chunks = list(client(api).follow_logs("t-1"))

    assert chunks == [b"one\n", b"two\n", b"3"]
    assert api.last.url.params.multi_items() == [("stream", "stdout"), ("follow", "true")]
    assert api.last.extensions["timeout"]["read"] is None


def test_follow_logs_sends_nothing_until_iterated(api: FakeApi) -> None:
    client(api).follow_logs("t-1")
    assert api.requests == []


def test_follow_logs_of_a_missing_task_raises_not_found(api: FakeApi) -> None:
    api.on("GET", "/platform/tasks/nope/logs", problem(404, "not_found", "task nope not found"))
    with pytest.raises(NotFoundError, match="task nope not found"):
        next(iter(client(api).follow_logs("nope")))


def test_follow_logs_cut_mid_stream_is_unavailable(api: FakeApi) -> None:
    def broken() -> object:
        yield b"partial"
        raise httpx.ReadError("connection reset")

    api.on("GET", "/platform/tasks/t-1/logs", lambda r: httpx.Response(200, content=broken()))  # type: ignore[arg-type]
    received: list[bytes] = []
    with pytest.raises(UnavailableError, match=r"http://tp\.test"):
        received.extend(client(api).follow_logs("t-1"))
    assert received == [b"partial"]


def test_context_manager_closes_the_pool(api: FakeApi) -> None:
    with client(api) as tp:
        pass
    with pytest.raises(RuntimeError):
        tp.get("t-1")
