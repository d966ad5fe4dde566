"""The ``KVStore`` contract: written once, run against every backend (SQL today; Redis can reuse it).

A test module imports ``*`` from here and provides a ``kv`` fixture yielding a fresh, empty store with
``KVLimits(max_value_bytes=1024, max_ops=8)``; ``concurrent`` tests also need the fixture to be safe to share
between tasks (every store is).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from taskplane.domain.state import (
    Compare,
    CompareOp,
    CompareTarget,
    EventType,
    KeyValue,
    Op,
    OpKind,
    Txn,
    TxnResult,
)
from taskplane.errors import CompactedError, InvalidRequestError, NotFoundError, PayloadTooLargeError
from taskplane.services.ports import KVLimits, KVStore

NOW = datetime(2026, 6, 1, 12, 0, 0, tzinfo=UTC)
LIMITS = KVLimits(max_value_bytes=1024, max_ops=8, max_txn_bytes=4096)


def later(seconds: float) -> datetime:
    return NOW + timedelta(seconds=seconds)


async def put(kv: KVStore, key: str, value: Any, *, tenant: str = "a", lease: int | None = None) -> TxnResult:
    return await kv.txn(tenant, Txn(success=[Op(OpKind.PUT, key, value, lease)]), NOW)


def cmp(key: str, target: str, op: str, operand: Any) -> Compare:
    return Compare(key, CompareTarget(target), CompareOp(op), operand)


def keys_of(items: Sequence[KeyValue]) -> list[str]:
    return [item.key for item in items]


# ------------------------------------------------------------------------------------ puts and gets


async def test_a_put_creates_then_updates_with_versions_and_revisions(kv: KVStore) -> None:
    assert await kv.revision() == 0
    first = await put(kv, "jobs/1", {"n": 1})
    assert first.succeeded and first.revision == 1
    assert first.results[0].kv == KeyValue("jobs/1", {"n": 1}, 1, 1, 1)
    assert first.results[0].prev is None
    await put(kv, "other", "x")
    second = await put(kv, "jobs/1", [1, "two", None, True, 2.5])
    assert second.revision == 3
    assert second.results[0].prev == KeyValue("jobs/1", {"n": 1}, 1, 1, 1)
    assert await kv.get("a", "jobs/1", NOW) == KeyValue("jobs/1", [1, "two", None, True, 2.5], 1, 3, 2)
    assert await kv.get("a", "missing", NOW) is None
    assert await kv.revision() == 3


async def test_a_delete_removes_and_a_new_put_starts_a_new_life(kv: KVStore) -> None:
    await put(kv, "k", 1)
    await put(kv, "k", 2)
    deleted = await kv.txn("a", Txn(success=[Op(OpKind.DELETE, "k")]), NOW)
    assert deleted.revision == 3
    assert deleted.results[0].deleted == 1 and deleted.results[0].prev == KeyValue("k", 2, 1, 2, 2)
    assert await kv.get("a", "k", NOW) is None
    again = await put(kv, "k", 3)
    assert again.results[0].kv == KeyValue("k", 3, 4, 4, 1)


async def test_deleting_a_missing_key_writes_nothing(kv: KVStore) -> None:
    await put(kv, "k", 1)
    result = await kv.txn("a", Txn(success=[Op(OpKind.DELETE, "nope")]), NOW)
    assert result.revision == 1 and result.results[0].deleted == 0 and result.results[0].prev is None
    assert await kv.revision() == 1
    assert [e.revision for e in await kv.events("a", "", 1, 100)] == [1]


async def test_a_branch_without_writes_keeps_the_revision(kv: KVStore) -> None:
    await put(kv, "k", 1)
    txn = Txn([cmp("k", "value", "equal", 2)], success=[Op(OpKind.PUT, "k", 3)], failure=[Op(OpKind.GET, "k")])
    result = await kv.txn("a", txn, NOW)
    assert not result.succeeded and result.revision == 1
    assert result.results[0].kv == KeyValue("k", 1, 1, 1, 1)
    only_gets = await kv.txn("a", Txn(success=[Op(OpKind.GET, "k"), Op(OpKind.GET, "x")]), NOW)
    assert only_gets.revision == 1 and [r.kv is None for r in only_gets.results] == [False, True]
    assert await kv.revision() == 1


# --------------------------------------------------------------------------------------- compares


@pytest.mark.parametrize(
    ("compare", "holds"),
    [
        (cmp("k", "value", "equal", {"v": 1}), True),
        (cmp("k", "value", "equal", {"v": 2}), False),
        (cmp("k", "value", "not_equal", {"v": 2}), True),
        (cmp("k", "value", "greater", 0), False),  # an object and a number do not order: the compare fails
        (cmp("k", "version", "equal", 2), True),
        (cmp("k", "version", "greater", 1), True),
        (cmp("k", "version", "less", 2), False),
        (cmp("k", "mod_revision", "equal", 3), True),
        (cmp("k", "mod_revision", "less", 3), False),
        (cmp("k", "create_revision", "equal", 1), True),
        (cmp("k", "create_revision", "not_equal", 1), False),
        (cmp("k", "exists", "equal", True), True),
        (cmp("nope", "exists", "equal", False), True),
        (cmp("nope", "version", "equal", 0), True),
        (cmp("nope", "mod_revision", "equal", 0), True),
        (cmp("nope", "create_revision", "less", 1), True),
        (cmp("nope", "value", "equal", None), False),  # etcd: a value compare on a missing key fails
        (cmp("nope", "value", "not_equal", 1), False),
    ],
)
async def test_compares_pick_the_branch(kv: KVStore, compare: Compare, holds: bool) -> None:
    await put(kv, "k", {"v": 0})
    await put(kv, "other", 0)
    await put(kv, "k", {"v": 1})  # k: create 1, mod 3, version 2
    txn = Txn([compare], success=[Op(OpKind.PUT, "won", "s")], failure=[Op(OpKind.PUT, "lost", "f")])
    result = await kv.txn("a", txn, NOW)
    assert result.succeeded is holds
    assert result.revision == 4
    assert (await kv.get("a", "won", NOW) is not None) is holds
    assert (await kv.get("a", "lost", NOW) is not None) is not holds


async def test_cas_on_mod_revision_lets_one_of_two_writers_win(kv: KVStore) -> None:
    base = (await put(kv, "k", 0)).revision
    cas = Txn([cmp("k", "mod_revision", "equal", base)], success=[Op(OpKind.PUT, "k", 1)])
    assert (await kv.txn("a", cas, NOW)).succeeded
    assert not (await kv.txn("a", cas, NOW)).succeeded
    found = await kv.get("a", "k", NOW)
    assert found is not None and found.value == 1


# --------------------------------------------------------------------------- inside a transaction


async def test_ops_run_in_order_and_a_get_sees_the_transactions_own_writes(kv: KVStore) -> None:
    await put(kv, "k", "old")
    txn = Txn(
        success=[
            Op(OpKind.GET, "k"),
            Op(OpKind.PUT, "k", "new"),
            Op(OpKind.GET, "k"),
            Op(OpKind.PUT, "n", 1),
            Op(OpKind.DELETE, "k"),
            Op(OpKind.GET, "k"),
            Op(OpKind.GET, "n"),
        ]
    )
    result = await kv.txn("a", txn, NOW)
    assert result.revision == 2
    got = [r.kv for r in result.results]
    assert got[0] == KeyValue("k", "old", 1, 1, 1)
    assert got[2] == KeyValue("k", "new", 1, 2, 2)
    assert got[5] is None
    assert got[6] == KeyValue("n", 1, 2, 2, 1)
    assert result.results[4].prev == KeyValue("k", "new", 1, 2, 2)
    # One revision, one event per changed key (its final state).
    events = await kv.events("a", "", 2, 100)
    assert [(e.revision, e.type, e.key) for e in events] == [(2, EventType.DELETE, "k"), (2, EventType.PUT, "n")]


async def test_a_failing_lease_in_the_success_branch_writes_nothing(kv: KVStore) -> None:
    await put(kv, "k", 1)
    txn = Txn(success=[Op(OpKind.PUT, "k", 2), Op(OpKind.DELETE, "x"), Op(OpKind.PUT, "j", 3, lease=999_999)])
    with pytest.raises(NotFoundError) as caught:
        await kv.txn("a", txn, NOW)
    assert caught.value.code == "lease_not_found"
    assert await kv.get("a", "k", NOW) == KeyValue("k", 1, 1, 1, 1)
    assert await kv.get("a", "j", NOW) is None
    assert await kv.revision() == 1


async def test_delete_prefix_deletes_the_keys_under_it_in_one_revision(kv: KVStore) -> None:
    for key in ("jobs/1", "jobs/2", "jobs2", "job", "x/jobs/1"):
        await put(kv, key, key)
    result = await kv.txn("a", Txn(success=[Op(OpKind.DELETE_PREFIX, "jobs/")]), NOW)
    assert result.revision == 6 and result.results[0].deleted == 2
    assert keys_of((await kv.range("a", "", NOW, 100)).items) == ["job", "jobs2", "x/jobs/1"]
    events = await kv.events("a", "", 6, 100)
    assert [(e.type, e.key) for e in events] == [(EventType.DELETE, "jobs/1"), (EventType.DELETE, "jobs/2")]
    everything = await kv.txn("a", Txn(success=[Op(OpKind.PUT, "new", 1), Op(OpKind.DELETE_PREFIX, "")]), NOW)
    assert everything.results[1].deleted == 4
    assert (await kv.range("a", "", NOW, 100)).items == ()


# ------------------------------------------------------------------------------------------ tenants


async def test_tenants_never_see_each_others_keys(kv: KVStore) -> None:
    await put(kv, "shared", "a's", tenant="a")
    await put(kv, "shared", "b's", tenant="b")
    await put(kv, "only-b", 1, tenant="b")
    a_entry = await kv.get("a", "shared", NOW)
    b_entry = await kv.get("b", "shared", NOW)
    assert a_entry is not None and a_entry.value == "a's" and a_entry.version == 1
    assert b_entry is not None and b_entry.value == "b's" and b_entry.version == 1
    assert keys_of((await kv.range("a", "", NOW, 100)).items) == ["shared"]
    assert [e.key for e in await kv.events("a", "", 1, 100)] == ["shared"]
    await kv.txn("a", Txn(success=[Op(OpKind.DELETE_PREFIX, "")]), NOW)
    assert keys_of((await kv.range("b", "", NOW, 100)).items) == ["only-b", "shared"]
    b_lease = await kv.grant_lease("b", 10, NOW)
    with pytest.raises(NotFoundError):
        await put(kv, "k", 1, tenant="a", lease=b_lease.id)
    with pytest.raises(NotFoundError):
        await kv.keepalive("a", b_lease.id, NOW)
    with pytest.raises(NotFoundError):
        await kv.revoke_lease("a", b_lease.id, NOW)
    assert await kv.get_lease("a", b_lease.id, NOW) is None


# ------------------------------------------------------------------------------------------ listing


async def test_range_lists_in_code_point_order_with_pages(kv: KVStore) -> None:
    names = ["b", "a/2", "a/10", "a/1", "A", "a/é", "a/z", "a/\U0001f600", "ab"]
    for name in names:
        await put(kv, name, name)
    page = await kv.range("a", "a/", NOW, 2)
    assert keys_of(page.items) == ["a/1", "a/10"] and page.next_key == "a/10" and page.revision == len(names)
    rest: list[str] = []
    after: str | None = page.next_key
    while after is not None:
        page = await kv.range("a", "a/", NOW, 2, after=after)
        rest += keys_of(page.items)
        after = page.next_key
    assert rest == ["a/2", "a/z", "a/é", "a/\U0001f600"]
    assert keys_of((await kv.range("a", "", NOW, 100)).items) == sorted(names)
    assert keys_of((await kv.range("a", "a", NOW, 100)).items) == sorted(n for n in names if n.startswith("a"))


# ------------------------------------------------------------------------------------------- leases


async def test_an_expired_key_is_missing_before_the_sweeper_runs(kv: KVStore) -> None:
    lease = await kv.grant_lease("a", 10, NOW)
    assert lease.expires_at == later(10) and lease.ttl == 10
    await put(kv, "held", 1, lease=lease.id)
    await put(kv, "free", 2)
    held = await kv.get("a", "held", later(9))
    assert held is not None and held.lease == lease.id
    assert await kv.get("a", "held", later(10)) is None
    assert keys_of((await kv.range("a", "", later(11), 100)).items) == ["free"]
    exists = Txn([cmp("held", "exists", "equal", True)], success=[Op(OpKind.GET, "free")])
    assert not (await kv.txn("a", exists, later(11))).succeeded
    assert await kv.get_lease("a", lease.id, later(11)) is None


async def test_the_sweeper_records_the_expiry_and_the_key_never_comes_back(kv: KVStore) -> None:
    lease = await kv.grant_lease("a", 5, NOW)
    await kv.txn("a", Txn(success=[Op(OpKind.PUT, "x", 1, lease.id), Op(OpKind.PUT, "y", 2, lease.id)]), NOW)
    other = await kv.grant_lease("a", 100, NOW)
    await put(kv, "z", 3, lease=other.id)
    assert await kv.expire_leases(later(4)) == 0
    assert await kv.expire_leases(later(6)) == 1
    assert await kv.revision() == 3
    events = await kv.events("a", "", 3, 100)
    assert [(e.revision, e.type, e.key, e.cause) for e in events] == [
        (3, EventType.DELETE, "x", "lease_expired"),
        (3, EventType.DELETE, "y", "lease_expired"),
    ]
    with pytest.raises(NotFoundError) as caught:
        await kv.keepalive("a", lease.id, later(6))
    assert caught.value.code == "lease_not_found"
    with pytest.raises(NotFoundError):
        await put(kv, "x", 1, lease=lease.id)
    # Still gone at any later time and at every revision after the expiry.
    assert await kv.get("a", "x", NOW) is None
    assert await kv.get("a", "x", NOW, revision=3) is None
    assert await kv.get("a", "z", later(6)) is not None
    assert await kv.expire_leases(later(6)) == 0


async def test_a_write_records_due_expiries_before_its_own_revision(kv: KVStore) -> None:
    lease = await kv.grant_lease("a", 5, NOW)
    await put(kv, "x", 1, lease=lease.id)
    result = await kv.txn("a", Txn(success=[Op(OpKind.PUT, "y", 1)]), later(6))
    assert result.revision == 3
    events = await kv.events("a", "", 2, 100)
    assert [(e.revision, e.type, e.key, e.cause) for e in events] == [
        (2, EventType.DELETE, "x", "lease_expired"),
        (3, EventType.PUT, "y", ""),
    ]
    assert await kv.get("a", "x", NOW, revision=3) is None  # no revision after the expiry shows the key


async def test_keepalive_extends_and_a_put_can_detach_a_key(kv: KVStore) -> None:
    lease = await kv.grant_lease("a", 10, NOW)
    await put(kv, "x", 1, lease=lease.id)
    await put(kv, "y", 1, lease=lease.id)
    renewed = await kv.keepalive("a", lease.id, later(8))
    assert renewed.expires_at == later(18) and renewed.keys == ("x", "y")
    assert await kv.get("a", "x", later(15)) is not None
    await put(kv, "y", 2)  # no lease: detached
    live = await kv.get_lease("a", lease.id, later(15))
    assert live is not None and live.keys == ("x",)
    assert await kv.expire_leases(later(19)) == 1
    assert await kv.get("a", "x", later(19)) is None
    assert await kv.get("a", "y", later(19)) == KeyValue("y", 2, 2, 3, 2)


async def test_revoke_deletes_the_keys_in_one_revision(kv: KVStore) -> None:
    lease = await kv.grant_lease("a", 10, NOW)
    await kv.txn("a", Txn(success=[Op(OpKind.PUT, "x", 1, lease.id), Op(OpKind.PUT, "y", 2, lease.id)]), NOW)
    assert await kv.revoke_lease("a", lease.id, later(1)) == 2
    assert (await kv.range("a", "", NOW, 10)).items == ()
    events = await kv.events("a", "", 2, 100)
    assert [(e.type, e.key, e.cause) for e in events] == [(EventType.DELETE, "x", ""), (EventType.DELETE, "y", "")]
    with pytest.raises(NotFoundError):
        await kv.revoke_lease("a", lease.id, later(1))
    empty = await kv.grant_lease("a", 10, NOW)
    assert await kv.revoke_lease("a", empty.id, NOW) == 2  # no keys: no revision


@pytest.mark.parametrize("ttl", [0, -1, float("nan"), float("inf")])
async def test_a_lease_needs_a_positive_ttl(kv: KVStore, ttl: float) -> None:
    with pytest.raises(InvalidRequestError) as caught:
        await kv.grant_lease("a", ttl, NOW)
    assert caught.value.code == "invalid_ttl"


# ---------------------------------------------------------------------------------- past revisions


async def test_reads_at_a_past_revision_see_the_state_then(kv: KVStore) -> None:
    await put(kv, "a/1", "v1")  # 1
    await put(kv, "a/2", "v1")  # 2
    await put(kv, "a/1", "v2")  # 3
    await kv.txn("a", Txn(success=[Op(OpKind.DELETE, "a/2")]), NOW)  # 4
    await put(kv, "b", 1, tenant="b")  # 5
    assert await kv.get("a", "a/1", NOW, revision=1) == KeyValue("a/1", "v1", 1, 1, 1)
    assert await kv.get("a", "a/1", NOW, revision=3) == KeyValue("a/1", "v2", 1, 3, 2)
    assert await kv.get("a", "a/2", NOW, revision=3) == KeyValue("a/2", "v1", 2, 2, 1)
    assert await kv.get("a", "a/2", NOW, revision=4) is None
    at2 = await kv.range("a", "a/", NOW, 10, revision=2)
    assert at2.revision == 2 and [(i.key, i.value) for i in at2.items] == [("a/1", "v1"), ("a/2", "v1")]
    page = await kv.range("a", "", NOW, 1, revision=3)
    assert keys_of(page.items) == ["a/1"] and page.next_key == "a/1"
    assert keys_of((await kv.range("a", "", NOW, 1, after="a/1", revision=3)).items) == ["a/2"]
    assert keys_of((await kv.range("a", "", NOW, 10, revision=5)).items) == ["a/1"]
    with pytest.raises(InvalidRequestError) as caught:
        await kv.get("a", "a/1", NOW, revision=6)
    assert caught.value.code == "future_revision"


async def test_compaction_keeps_exact_reads_from_the_kept_revision_on(kv: KVStore) -> None:
    await put(kv, "k", 1)  # 1
    await put(kv, "gone", 1)  # 2
    await put(kv, "k", 2)  # 3
    await kv.txn("a", Txn(success=[Op(OpKind.DELETE, "gone")]), NOW)  # 4
    await put(kv, "late", 1)  # 5
    assert await kv.compact(5) == 5
    for revision in (1, 4):
        with pytest.raises(CompactedError) as caught:
            await kv.get("a", "k", NOW, revision=revision)
        assert caught.value.extra["oldest_revision"] == 5
    with pytest.raises(CompactedError):
        await kv.events("a", "", 4, 10)
    assert keys_of((await kv.range("a", "", NOW, 10, revision=5)).items) == ["k", "late"]
    assert await kv.get("a", "k", NOW, revision=5) == KeyValue("k", 2, 1, 3, 2)
    assert [e.revision for e in await kv.events("a", "", 5, 10)] == [5]
    await put(kv, "k", 3)  # 6
    assert await kv.get("a", "k", NOW, revision=5) == KeyValue("k", 2, 1, 3, 2)
    assert await kv.compact(3) == 5  # never backwards
    assert await kv.compact(100) == 7  # never past the current revision
    assert await kv.get("a", "k", NOW, revision=6) == KeyValue("k", 3, 1, 6, 3)


# ------------------------------------------------------------------------------------------- events


async def test_events_come_in_revision_then_key_order_under_a_prefix(kv: KVStore) -> None:
    assert await kv.events("a", "", 1, 10) == []
    await kv.txn("a", Txn(success=[Op(OpKind.PUT, "p/b", 1), Op(OpKind.PUT, "p/a", 1), Op(OpKind.PUT, "q", 1)]), NOW)
    await put(kv, "p/a", 2)
    await kv.txn("a", Txn(success=[Op(OpKind.DELETE, "p/b")]), NOW)
    events = await kv.events("a", "p/", 1, 100)
    assert [(e.revision, e.type, e.key) for e in events] == [
        (1, EventType.PUT, "p/a"),
        (1, EventType.PUT, "p/b"),
        (2, EventType.PUT, "p/a"),
        (3, EventType.DELETE, "p/b"),
    ]
    assert events[2].kv == KeyValue("p/a", 2, 1, 2, 2)
    assert events[3].kv is not None and events[3].kv.key == "p/b" and events[3].kv.mod_revision == 3
    assert [e.revision for e in await kv.events("a", "p/", 2, 100)] == [2, 3]
    assert await kv.events("a", "p/", 4, 100) == []  # the next revision: nothing yet, no error


async def test_a_limit_never_splits_a_revision(kv: KVStore) -> None:
    await kv.txn("a", Txn(success=[Op(OpKind.PUT, f"k{i}", i) for i in range(5)]), NOW)
    await put(kv, "z", 1)
    first = await kv.events("a", "", 1, 2)
    assert [e.key for e in first] == ["k0", "k1", "k2", "k3", "k4"]
    assert [e.revision for e in await kv.events("a", "", first[-1].revision + 1, 2)] == [2]


async def test_events_from_before_the_first_revision_are_compacted(kv: KVStore) -> None:
    with pytest.raises(CompactedError) as caught:
        await kv.events("a", "", 0, 10)
    assert caught.value.extra["oldest_revision"] == 1


# ---------------------------------------------------------------------------------- limits and input


@pytest.mark.parametrize("key", ["", "/a", "a/", "a//b", "a/../b", "./a", "a\x00b", "k" * 513])
async def test_bad_keys_are_refused(kv: KVStore, key: str) -> None:
    for call in (
        put(kv, key, 1),
        kv.get("a", key, NOW),
        kv.txn("a", Txn([cmp(key, "exists", "equal", True)]), NOW),
    ):
        with pytest.raises(InvalidRequestError) as caught:
            await call
        assert caught.value.code == "invalid_key"
    assert await kv.revision() == 0


async def test_values_and_transactions_have_limits(kv: KVStore) -> None:
    with pytest.raises(PayloadTooLargeError) as too_large:
        await put(kv, "k", "x" * 1100)
    assert too_large.value.code == "value_too_large"
    with pytest.raises(InvalidRequestError) as not_json:
        await put(kv, "k", {1, 2})
    assert not_json.value.code == "invalid_value"
    for txn in (
        Txn(success=[Op(OpKind.PUT, f"k{i}", i) for i in range(9)]),
        Txn(failure=[Op(OpKind.GET, "k")] * 9),
        Txn([cmp("k", "exists", "equal", False)] * 9),
    ):
        with pytest.raises(InvalidRequestError) as too_many:
            await kv.txn("a", txn, NOW)
        assert too_many.value.code == "too_many_ops"
    with pytest.raises(PayloadTooLargeError) as txn_too_large:
        await kv.txn("a", Txn(success=[Op(OpKind.PUT, f"k{i}", "x" * 1000) for i in range(5)]), NOW)
    assert txn_too_large.value.code == "txn_too_large"
    assert await kv.revision() == 0


# -------------------------------------------------------------------------------------- concurrency


async def test_concurrent_cas_increments_lose_no_update(kv: KVStore) -> None:
    await put(kv, "counter", 0)
    successes: list[int] = []

    async def client(rounds: int) -> None:
        for _ in range(rounds):
            while True:
                found = await kv.get("a", "counter", NOW)
                assert found is not None
                txn = Txn(
                    [cmp("counter", "mod_revision", "equal", found.mod_revision)],
                    success=[Op(OpKind.PUT, "counter", found.value + 1)],
                )
                result = await kv.txn("a", txn, NOW)
                if result.succeeded:
                    successes.append(result.revision)
                    break

    await asyncio.gather(*(client(10) for _ in range(8)))
    final = await kv.get("a", "counter", NOW)
    assert final is not None and final.value == len(successes) == 80
    assert len(set(successes)) == len(successes)
    assert final.mod_revision == max(successes) == await kv.revision() == 81
    events = await kv.events("a", "counter", 2, 1000)
    assert [e.revision for e in events] == sorted(successes)
    assert [e.kv.value for e in events if e.kv is not None] == list(range(1, 81))
