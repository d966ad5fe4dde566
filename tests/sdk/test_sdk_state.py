"""``client.state`` through both clients: request shapes, conditional writes, transactions, leases, watch resume."""

from __future__ import annotations

import json
from contextlib import closing
from datetime import timedelta
from itertools import islice

import httpx
import pytest

from taskplane.errors import (
    CompactedError,
    ForbiddenError,
    InvalidRequestError,
    NotFoundError,
    PreconditionFailedError,
    UnavailableError,
)
from taskplane.sdk import AsyncClient, Client, Compare, Op
from taskplane.sdk.state_calls import SseMessage, WatchCursor, key_path, reconnect_delay, sse_messages
from tests.sdk.fakes import FakeApi, dropped_sse, kv_json, lease_json, problem, sse, state_event


def client(api: FakeApi) -> Client:
    return Client("http://tp.test", transport=api.transport, token="tok")


def async_client(api: FakeApi) -> AsyncClient:
    return AsyncClient("http://tp.test", transport=api.transport, token="tok")


def body(request: httpx.Request) -> object:
    return json.loads(request.content)


def query(request: httpx.Request) -> dict[str, str]:
    return dict(request.url.params)


def put_result(key: str = "jobs/a", revision: int = 8) -> dict[str, object]:
    return {"revision": revision, "kv": kv_json(key, mod_revision=revision), "prev": None}


# -- keys -----------------------------------------------------------------------------------------------------


def test_keys_with_slashes_are_sent_as_path_segments_each_escaped() -> None:
    assert key_path("jobs/a b/ü?#%") == "/platform/state/jobs/a%20b/%C3%BC%3F%23%25"
    assert key_path("watch") == "/platform/state/watch"


@pytest.mark.parametrize("key", ["", "a/../b", "./a", "a//b", "/a", "a/", "a\0b"])
def test_keys_the_server_would_refuse_are_refused_before_sending(api: FakeApi, key: str) -> None:
    with pytest.raises(InvalidRequestError) as info:
        client(api).state.get(key)

    assert info.value.code == "invalid_key"
    assert api.requests == []


def test_get_decodes_the_entry_and_sends_revision_and_tenant(api: FakeApi) -> None:
    api.on("GET", "/platform/state/jobs/a", httpx.Response(200, json=kv_json(value=[1, "two"])))

    entry = client(api).state.get("jobs/a", revision=5, tenant="team-a")

    assert (entry.key, entry.value, entry.mod_revision) == ("jobs/a", [1, "two"], 7)
    assert query(api.last) == {"revision": "5", "tenant": "team-a"}


def test_get_of_a_missing_key_is_not_found(api: FakeApi) -> None:
    api.on("GET", "/platform/state/nope", problem(404, "not_found", "key nope not found"))

    with pytest.raises(NotFoundError, match="key nope not found"):
        client(api).state.get("nope")


def test_put_sends_the_value_as_the_json_body(api: FakeApi) -> None:
    api.on("PUT", "/platform/state/jobs/a", httpx.Response(200, json=put_result()))

    result = client(api).state.put("jobs/a", {"step": 2, "note": "é"})

    assert result.revision == 8
    assert body(api.last) == {"step": 2, "note": "é"}
    assert api.last.headers["content-type"] == "application/json"
    assert "if-match" not in api.last.headers and "if-none-match" not in api.last.headers


@pytest.mark.parametrize("value", ["text", 3, None, [1, 2], True])
def test_put_takes_any_json_value(api: FakeApi, value: object) -> None:
    api.on("PUT", "/platform/state/k", httpx.Response(200, json=put_result("k")))

    client(api).state.put("k", value)

    assert body(api.last) == value


def test_put_if_match_sends_the_revision_and_maps_412(api: FakeApi) -> None:
    api.on(
        "PUT",
        "/platform/state/jobs/a",
        problem(412, "precondition_failed", "jobs/a is at mod_revision 9, not 7", mod_revision=9),
    )

    with pytest.raises(PreconditionFailedError) as info:
        client(api).state.put("jobs/a", 1, if_match=7)

    assert api.last.headers["if-match"] == "7"
    assert info.value.extra["mod_revision"] == 9


def test_a_412_without_a_known_code_is_still_a_precondition_failure(api: FakeApi) -> None:
    api.on("PUT", "/platform/state/k", httpx.Response(412, text="precondition failed"))

    with pytest.raises(PreconditionFailedError):
        client(api).state.put("k", 1, create_only=True)

    assert api.last.headers["if-none-match"] == "*"


def test_put_with_a_ttl_or_a_lease(api: FakeApi) -> None:
    api.on("PUT", "/platform/state/k", httpx.Response(200, json=put_result("k")))

    client(api).state.put("k", 1, ttl=timedelta(seconds=30), tenant="team-a")
    assert query(api.last) == {"tenant": "team-a", "ttl": "30.0"}

    client(api).state.put("k", 1, lease=42)
    assert query(api.last) == {"lease": "42"}


@pytest.mark.parametrize(
    "options",
    [{"if_match": 3, "create_only": True}, {"lease": 1, "ttl": 5}, {"ttl": 0}, {"if_match": 0}, {"lease": True}],
)
def test_put_refuses_contradictory_or_bad_options(api: FakeApi, options: dict[str, object]) -> None:
    with pytest.raises(InvalidRequestError):
        client(api).state.put("k", 1, **options)  # type: ignore[arg-type]

    assert api.requests == []


def test_put_refuses_a_value_that_is_not_json(api: FakeApi) -> None:
    with pytest.raises(InvalidRequestError, match="not JSON"):
        client(api).state.put("k", {1, 2})
    with pytest.raises(InvalidRequestError, match="not JSON"):
        client(api).state.put("k", float("nan"))


def test_delete_with_if_match(api: FakeApi) -> None:
    api.on("DELETE", "/platform/state/jobs/a", httpx.Response(200, json={"revision": 9, "deleted": 1}))

    result = client(api).state.delete("jobs/a", if_match=8)

    assert (result.revision, result.deleted) == (9, 1)
    assert api.last.headers["if-match"] == "8"


def test_a_key_named_like_a_route_is_an_ordinary_key(api: FakeApi) -> None:
    api.on("DELETE", "/platform/state/transaction", httpx.Response(200, json={"revision": 9, "deleted": 0}))

    assert client(api).state.delete("transaction").deleted == 0


# -- listing --------------------------------------------------------------------------------------------------


def test_list_sends_prefix_limit_after_and_revision(api: FakeApi) -> None:
    page = {"items": [kv_json("jobs/a")], "revision": 12, "next_key": "jobs/a"}
    api.on("GET", "/platform/state", httpx.Response(200, json=page))

    found = client(api).state.list("jobs/", limit=1, after="jobs/0", revision=11)

    assert (len(found.items), found.next_key, found.revision) == (1, "jobs/a", 12)
    assert query(api.last) == {"prefix": "jobs/", "limit": "1", "after": "jobs/0", "revision": "11"}


def test_iter_reads_every_page_at_the_first_pages_revision(api: FakeApi) -> None:
    api.on(
        "GET",
        "/platform/state",
        [
            httpx.Response(200, json={"items": [kv_json("a"), kv_json("b")], "revision": 20, "next_key": "b"}),
            httpx.Response(200, json={"items": [kv_json("c")], "revision": 20, "next_key": None}),
        ],
    )

    keys = [entry.key for entry in client(api).state.iter(page_size=2)]

    assert keys == ["a", "b", "c"]
    assert "revision" not in query(api.requests[0])
    assert query(api.requests[1]) == {"prefix": "", "limit": "2", "after": "b", "revision": "20"}


def test_a_listing_at_a_compacted_revision(api: FakeApi) -> None:
    api.on("GET", "/platform/state", problem(410, "compacted", "revision 3 is compacted", oldest_revision=10))

    with pytest.raises(CompactedError) as info:
        client(api).state.list(revision=3)

    assert info.value.extra["oldest_revision"] == 10


# -- transactions ---------------------------------------------------------------------------------------------


def txn_out(succeeded: bool = True) -> dict[str, object]:
    results = [{"op": "put", "key": "acct/a", "kv": kv_json("acct/a", 90, mod_revision=21)}]
    return {"succeeded": succeeded, "revision": 21, "results": results}


def test_txn_from_builders(api: FakeApi) -> None:
    api.on("POST", "/platform/state/transaction", httpx.Response(200, json=txn_out()))

    result = client(api).state.txn(
        compare=[Compare.mod_revision("acct/a", "==", 7), Compare.exists("acct/b", False), Compare.value("x", ">", 1)],
        success=[Op.put("acct/a", 90, lease=3), Op.delete_prefix("tmp/")],
        failure=[Op.get("acct/a"), Op.delete("x")],
        tenant="team-a",
    )

    assert result.succeeded and result.results[0].kv is not None and result.results[0].kv.value == 90
    assert query(api.last) == {"tenant": "team-a"}
    assert body(api.last) == {
        "compare": [
            {"key": "acct/a", "target": "mod_revision", "op": "equal", "value": 7},
            {"key": "acct/b", "target": "exists", "op": "equal", "value": False},
            {"key": "x", "target": "value", "op": "greater", "value": 1},
        ],
        "success": [
            {"op": "put", "key": "acct/a", "value": 90, "lease": 3},
            {"op": "delete_prefix", "key": "tmp/"},
        ],
        "failure": [{"op": "get", "key": "acct/a"}, {"op": "delete", "key": "x"}],
    }


def test_txn_from_dicts(api: FakeApi) -> None:
    api.on("POST", "/platform/state/transaction", httpx.Response(200, json=txn_out(False)))

    result = client(api).state.txn(
        compare=[{"key": "a", "target": "version", "value": 0}], success=[{"op": "put", "key": "a", "value": 1}]
    )

    assert not result.succeeded
    sent = body(api.last)
    assert isinstance(sent, dict)
    assert sent["compare"] == [{"key": "a", "target": "version", "value": 0}]  # op: equal by default
    assert sent["failure"] == []


def test_a_null_value_is_sent_as_null(api: FakeApi) -> None:
    api.on("POST", "/platform/state/transaction", httpx.Response(200, json=txn_out()))

    client(api).state.txn(compare=[Compare.value("a", "!=", None)], success=[Op.put("a", None)])

    assert body(api.last) == {
        "compare": [{"key": "a", "target": "value", "op": "not_equal", "value": None}],
        "success": [{"op": "put", "key": "a", "value": None}],
        "failure": [],
    }


def test_txn_refuses_unknown_ops_before_sending(api: FakeApi) -> None:
    with pytest.raises(InvalidRequestError, match="op"):
        client(api).state.txn(success=[{"op": "upsert", "key": "a"}])
    with pytest.raises(InvalidRequestError, match="target"):
        client(api).state.txn(compare=[{"key": "a", "target": "size", "value": 1}])

    assert api.requests == []


# -- leases ---------------------------------------------------------------------------------------------------


def test_leases(api: FakeApi) -> None:
    api.on("POST", "/platform/leases", httpx.Response(201, json=lease_json(42)))
    api.on("PUT", "/platform/leases/42/keepalive", httpx.Response(200, json=lease_json(42)))
    api.on("GET", "/platform/leases/42", httpx.Response(200, json=lease_json(42)))
    api.on("DELETE", "/platform/leases/42", httpx.Response(200, json={"revision": 30}))
    tp = client(api)

    granted = tp.state.lease(30)
    assert (granted.id, granted.keys) == (42, ["jobs/a"])
    assert body(api.last) == {"ttl": 30.0}
    assert tp.state.keepalive(42).id == 42
    assert tp.state.get_lease(42).ttl == 30.0
    assert tp.state.revoke_lease(42).revision == 30


def test_an_expired_lease_is_not_found(api: FakeApi) -> None:
    api.on("PUT", "/platform/leases/42/keepalive", problem(404, "lease_not_found", "lease 42 not found"))

    with pytest.raises(NotFoundError):
        client(api).state.keepalive(42)


# -- the SSE decoding -----------------------------------------------------------------------------------------


def test_sse_messages_follow_the_event_stream_rules() -> None:
    lines = [": hello", "", "id: 5", "event: put", "data: {", "data: }", "", "retry: 10", "", "id: 6", "data: x"]

    messages = list(sse_messages(lines))

    assert messages == [
        SseMessage(comment="hello"),
        SseMessage(event="put", data="{\n}", id="5"),
    ]  # the block cut off after "data: x" is never dispatched


def test_the_cursor_drops_events_it_has_seen_and_learns_the_start() -> None:
    cursor = WatchCursor()
    assert cursor.accept(SseMessage(comment="watching from revision 17")) is None
    assert cursor.next_revision == 17

    first = state_event(17).decode().split("data: ")[1].strip()
    assert cursor.accept(SseMessage(data=first)) is not None
    assert cursor.accept(SseMessage(data=first)) is None  # resent after a reconnect
    assert cursor.next_revision == 18


def test_reconnect_delays_back_off() -> None:
    assert [reconnect_delay(n) for n in range(7)] == [0.0, 0.25, 0.5, 1.0, 2.0, 4.0, 5.0]


# -- watch ----------------------------------------------------------------------------------------------------


def test_watch_a_prefix_streams_events(api: FakeApi) -> None:
    api.on("GET", "/platform/state", sse(state_event(5), state_event(6, "jobs/b", "delete"), start=5))

    with closing(client(api).state.watch("jobs/", from_revision=5, tenant="team-a")) as events:
        got = list(islice(events, 2))

    assert [(e.revision, e.type, e.key) for e in got] == [(5, "put", "jobs/a"), (6, "delete", "jobs/b")]
    assert got[0].kv is not None and got[0].kv.value == {"rev": 5}
    assert query(api.requests[0]) == {"prefix": "jobs/", "watch": "true", "from_revision": "5", "tenant": "team-a"}
    assert api.requests[0].headers["accept"] == "text/event-stream"


def test_watch_one_key(api: FakeApi) -> None:
    api.on("GET", "/platform/state/jobs/a", sse(state_event(9), start=9))

    with closing(client(api).state.watch(key="jobs/a")) as events:
        assert next(events).revision == 9

    assert query(api.last) == {"watch": "true"}


def test_watch_resumes_after_the_stream_ends_from_the_next_revision(api: FakeApi) -> None:
    api.on(
        "GET",
        "/platform/state",
        [
            sse(state_event(5), state_event(6), start=5),  # the server went away after revision 6
            sse(state_event(6), state_event(7), start=7),  # a resent 6 is dropped
        ],
    )

    with closing(client(api).state.watch("jobs/", from_revision=5)) as events:
        revisions = [e.revision for e in islice(events, 3)]

    assert revisions == [5, 6, 7]
    assert query(api.requests[1])["from_revision"] == "7"


def test_watch_resumes_after_the_connection_drops_mid_event(api: FakeApi) -> None:
    half = state_event(11)[:30]
    api.on(
        "GET",
        "/platform/state",
        [dropped_sse(state_event(10), half), sse(state_event(11), state_event(12), start=11)],
    )

    with closing(client(api).state.watch(from_revision=10)) as events:
        revisions = [e.revision for e in islice(events, 3)]

    assert revisions == [10, 11, 12]
    assert query(api.requests[1])["from_revision"] == "11"


def test_watch_from_now_resumes_from_where_the_server_started(api: FakeApi) -> None:
    api.on("GET", "/platform/state", [dropped_sse(b": watching from revision 40\n\n"), sse(state_event(40), start=40)])

    with closing(client(api).state.watch()) as events:
        assert next(events).revision == 40

    assert "from_revision" not in query(api.requests[0])
    assert query(api.requests[1])["from_revision"] == "40"


def test_watch_raises_compacted_when_it_cannot_resume(api: FakeApi) -> None:
    api.on(
        "GET",
        "/platform/state",
        [
            sse(state_event(5), start=5),
            problem(410, "compacted", "revision 6 is compacted; the oldest kept is 50", oldest_revision=50),
        ],
    )

    events = client(api).state.watch(from_revision=5)
    assert next(events).revision == 5
    with pytest.raises(CompactedError) as info:
        next(events)

    assert info.value.extra["oldest_revision"] == 50


def test_watch_does_not_retry_a_refusal(api: FakeApi) -> None:
    api.on("GET", "/platform/state", problem(403, "forbidden", "no list on state"))

    with pytest.raises(ForbiddenError):
        next(client(api).state.watch())

    assert len(api.requests) == 1


def test_watch_gives_up_when_reconnects_bring_nothing(api: FakeApi) -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    api.on("GET", "/platform/state", refuse)

    with pytest.raises(UnavailableError, match="refused"):
        next(client(api).state.watch(retries=0))


def test_watch_refuses_a_prefix_and_a_key_together(api: FakeApi) -> None:
    with pytest.raises(InvalidRequestError):
        next(client(api).state.watch("jobs/", key="jobs/a"))


# -- async ----------------------------------------------------------------------------------------------------


async def test_async_get_put_delete_and_txn(api: FakeApi) -> None:
    api.on("GET", "/platform/state/jobs/a", httpx.Response(200, json=kv_json()))
    api.on("PUT", "/platform/state/jobs/a", httpx.Response(200, json=put_result()))
    api.on("DELETE", "/platform/state/jobs/a", httpx.Response(200, json={"revision": 9, "deleted": 1}))
    api.on("POST", "/platform/state/transaction", httpx.Response(200, json=txn_out()))

    async with async_client(api) as tp:
        entry = await tp.state.get("jobs/a")
        await tp.state.put("jobs/a", {"step": 2}, if_match=entry.mod_revision)
        assert api.last.headers["if-match"] == "7"
        assert (await tp.state.delete("jobs/a")).deleted == 1
        assert (await tp.state.txn(success=[Op.put("jobs/a", 1)])).succeeded


async def test_async_put_maps_412(api: FakeApi) -> None:
    api.on("PUT", "/platform/state/k", problem(412, "precondition_failed", "k exists"))

    async with async_client(api) as tp:
        with pytest.raises(PreconditionFailedError):
            await tp.state.put("k", 1, create_only=True)


async def test_async_iter_and_leases(api: FakeApi) -> None:
    api.on(
        "GET",
        "/platform/state",
        [
            httpx.Response(200, json={"items": [kv_json("a")], "revision": 4, "next_key": "a"}),
            httpx.Response(200, json={"items": [kv_json("b")], "revision": 4, "next_key": None}),
        ],
    )
    api.on("POST", "/platform/leases", httpx.Response(201, json=lease_json(7)))

    async with async_client(api) as tp:
        keys = [entry.key async for entry in tp.state.iter(page_size=1)]
        lease = await tp.state.lease(10)

    assert keys == ["a", "b"]
    assert lease.id == 7
    assert query(api.requests[1])["revision"] == "4"


async def test_async_watch_resumes_after_a_drop(api: FakeApi) -> None:
    api.on(
        "GET",
        "/platform/state/jobs/a",
        [dropped_sse(state_event(3)), sse(state_event(4), state_event(5), start=4)],
    )

    async with async_client(api) as tp:
        events = tp.state.watch(key="jobs/a", from_revision=3)
        revisions = [(await anext(events)).revision for _ in range(3)]
        await events.aclose()

    assert revisions == [3, 4, 5]
    assert query(api.requests[1]) == {"watch": "true", "from_revision": "4"}


async def test_async_watch_raises_compacted(api: FakeApi) -> None:
    api.on("GET", "/platform/state", problem(410, "compacted", "revision 1 is compacted", oldest_revision=9))

    async with async_client(api) as tp:
        with pytest.raises(CompactedError):
            await anext(tp.state.watch(from_revision=1))
