"""The bank test: transfers between accounts, each a compare-and-swap transaction, from concurrent clients.

Whatever interleaving the store allows, money is neither made nor lost: every all-account read (one range, one
snapshot) sums to the opening total, and at the end each successful transfer is accounted for exactly.
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

ACCOUNTS = 8
OPENING = 100
CLIENTS = 8
TRANSFERS_PER_CLIENT = 25
TENANT = "bank"


@pytest.fixture
async def kv(store_url: str) -> AsyncIterator[SqlKVStore]:
    store = SqlKVStore(store_url, KVLimits())
    yield store
    await store.close()


def now() -> datetime:
    return datetime.now(UTC)


async def transfer(kv: SqlKVStore, rng: random.Random) -> int:
    """Move a random amount between two random accounts; retry lost races. Returns the amount moved."""
    while True:
        a, b = rng.sample(range(ACCOUNTS), 2)
        src, dst = f"acct/{a}", f"acct/{b}"
        read = await kv.txn(TENANT, Txn(success=[Op(OpKind.GET, src), Op(OpKind.GET, dst)]), now())
        sk, dk = read.results[0].kv, read.results[1].kv
        assert sk is not None and dk is not None
        amount = min(sk.value, rng.randint(1, 10))
        if amount == 0:
            return 0
        moved = await kv.txn(
            TENANT,
            Txn(
                compares=[
                    Compare(src, CompareTarget.MOD_REVISION, CompareOp.EQUAL, sk.mod_revision),
                    Compare(dst, CompareTarget.MOD_REVISION, CompareOp.EQUAL, dk.mod_revision),
                ],
                success=[Op(OpKind.PUT, src, sk.value - amount), Op(OpKind.PUT, dst, dk.value + amount)],
            ),
            now(),
        )
        if moved.succeeded:
            return amount


async def test_concurrent_transfers_never_make_or_lose_money(kv: SqlKVStore) -> None:
    opening = Txn(success=[Op(OpKind.PUT, f"acct/{i}", OPENING) for i in range(ACCOUNTS)])
    await kv.txn(TENANT, opening, now())
    total = ACCOUNTS * OPENING
    sums: list[int] = []
    done = asyncio.Event()

    async def auditor() -> None:
        while not done.is_set():
            page = await kv.range(TENANT, "acct/", now(), 100)
            assert len(page.items) == ACCOUNTS
            sums.append(sum(item.value for item in page.items))
            await asyncio.sleep(0)

    async def client(seed: int) -> int:
        """How many transfers moved money (each is one revision)."""
        rng = random.Random(seed)
        return sum([await transfer(kv, rng) > 0 for _ in range(TRANSFERS_PER_CLIENT)])

    watcher = asyncio.create_task(auditor())
    moved = await asyncio.gather(*(client(seed) for seed in range(CLIENTS)))
    done.set()
    await watcher
    assert sums, "the auditor read at least once"
    assert set(sums) == {total}, f"an all-account read saw {sorted(set(sums) - {total})}"
    final = await kv.range(TENANT, "acct/", now(), 100)
    assert sum(item.value for item in final.items) == total
    assert all(item.value >= 0 for item in final.items)
    # Every transfer that moved money is one revision of two puts (the opening was one more revision).
    history = await kv.events(TENANT, "acct/", 1, 100_000)
    per_revision: dict[int, int] = {}
    for event in history:
        per_revision[event.revision] = per_revision.get(event.revision, 0) + 1
    assert len(per_revision) == 1 + sum(moved)
    assert sorted(per_revision.values())[:-1] == [2] * sum(moved)  # the opening revision has all 8 puts
