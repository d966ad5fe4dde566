"""Histories of 8 concurrent clients on a few hot keys of the SQL state store are linearizable.

Each client runs get / put / delete / compare-and-swap / two-key transactions against the store (SQLite and
PostgreSQL) and records what it asked and saw, with call and return times; the Wing-Gong / Lowe checker in
``tests/support/linearizability.py`` (first shown to catch known-bad histories in tests/state) then searches
for a legal order.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest

from taskplane.domain.state import Compare, CompareOp, CompareTarget, Op, OpKind, Txn
from taskplane.services.ports import KVLimits
from taskplane.storage.sql.kv import SqlKVStore
from tests.support.linearizability import (
    Cas,
    CasOutcome,
    Delete,
    Deleted,
    Get,
    HistoryRecorder,
    Put,
    Written,
    check,
    seen,
    txn_outcome,
)

CLIENTS = 8
OPS_PER_CLIENT = 40
KEYS = ["hot/a", "hot/b", "hot/c"]
TENANT = "lin"


@pytest.fixture
async def kv(store_url: str) -> AsyncIterator[SqlKVStore]:
    store = SqlKVStore(store_url, KVLimits())
    yield store
    await store.close()


def now() -> datetime:
    return datetime.now(UTC)


async def run_client(kv: SqlKVStore, recorder: HistoryRecorder, client: int) -> None:
    rng = random.Random(client)
    for i in range(OPS_PER_CLIENT):
        key = rng.choice(KEYS)
        value = f"c{client}-{i}"
        kind = rng.choices(["get", "put", "delete", "cas", "txn"], weights=[4, 3, 1, 3, 2])[0]
        if kind == "get":
            call = recorder.invoke(client, Get(key))
            call.done(seen(await kv.get(TENANT, key, now())))
        elif kind == "put":
            call = recorder.invoke(client, Put(key, value))
            result = await kv.txn(TENANT, Txn(success=[Op(OpKind.PUT, key, value)]), now())
            call.done(Written(result.revision))
        elif kind == "delete":
            call = recorder.invoke(client, Delete(key))
            result = await kv.txn(TENANT, Txn(success=[Op(OpKind.DELETE, key)]), now())
            count = result.results[0].deleted
            call.done(Deleted(count, result.revision if count else None))
        elif kind == "cas":
            current = await kv.get(TENANT, key, now())
            expected = current.mod_revision if current is not None else 0
            call = recorder.invoke(client, Cas(key, value, expected))
            compare = (
                Compare(key, CompareTarget.MOD_REVISION, CompareOp.EQUAL, expected)
                if current is not None
                else Compare(key, CompareTarget.EXISTS, CompareOp.EQUAL, False)
            )
            result = await kv.txn(TENANT, Txn([compare], success=[Op(OpKind.PUT, key, value)]), now())
            call.done(CasOutcome(result.succeeded, result.revision if result.succeeded else None))
        else:
            other = rng.choice([k for k in KEYS if k != key])
            current = await kv.get(TENANT, key, now())
            version = current.version if current is not None else 0
            txn = Txn(
                [Compare(key, CompareTarget.VERSION, CompareOp.EQUAL, version)],
                success=[Op(OpKind.PUT, key, value), Op(OpKind.PUT, other, value), Op(OpKind.GET, key)],
                failure=[Op(OpKind.GET, key), Op(OpKind.GET, other)],
            )
            call = recorder.invoke(client, txn)
            call.done(txn_outcome(await kv.txn(TENANT, txn, now())))


async def test_concurrent_histories_are_linearizable(kv: SqlKVStore) -> None:
    recorder = HistoryRecorder()
    await asyncio.gather(*(run_client(kv, recorder, c) for c in range(CLIENTS)))
    history = recorder.history()
    assert len(history) == CLIENTS * OPS_PER_CLIENT
    result = check(history)
    assert result.ok, str(result)


class StaleReads:
    """A store whose plain gets answer from a copy taken when it first saw each key (a caching bug)."""

    def __init__(self, inner: SqlKVStore) -> None:
        self._inner = inner
        self._copies: dict[str, object] = {}

    async def get(self, tenant: str, key: str, at: datetime) -> object:
        if key not in self._copies:
            self._copies[key] = await self._inner.get(tenant, key, at)
        return self._copies[key]

    def __getattr__(self, name: str) -> object:
        return getattr(self._inner, name)


async def test_the_run_catches_a_store_with_stale_reads(kv: SqlKVStore) -> None:
    recorder = HistoryRecorder()
    broken = StaleReads(kv)
    await asyncio.gather(*(run_client(broken, recorder, c) for c in range(CLIENTS)))  # type: ignore[arg-type]
    result = check(recorder.history())
    assert not result.ok
