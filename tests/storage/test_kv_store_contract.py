"""The ``KVStore`` contract (``kv_contract``) on ``SqlKVStore`` over SQLite and PostgreSQL; SQL-only extras."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from sqlalchemy import text

from taskplane.domain.audit import verify_chain
from taskplane.domain.state import Op, OpKind, Txn
from taskplane.errors import NotFoundError
from taskplane.services.ports import AuditFilter
from taskplane.storage import create_task_store
from taskplane.storage.sql.engine import create_sql_engine
from taskplane.storage.sql.kv import SqlKVStore, prefix_end
from tests.storage.conftest import entry
from tests.storage.kv_contract import *  # noqa: F403 - the contract's tests run here
from tests.storage.kv_contract import LIMITS, NOW, put


@pytest.fixture
async def kv(store_url: str) -> AsyncIterator[SqlKVStore]:
    store = SqlKVStore(store_url, LIMITS)
    yield store
    await store.close()


def test_prefix_end_is_the_first_string_past_the_prefix() -> None:
    assert prefix_end("") is None
    assert prefix_end("ab") == "ac"
    assert prefix_end("a\U0010ffff") == "b"
    assert prefix_end("\U0010ffff") is None
    assert prefix_end("a\ud7ff") == "a\ue000"


async def test_the_audit_entry_commits_with_the_change(store_url: str) -> None:
    store = SqlKVStore(store_url, LIMITS)
    try:
        await store.txn("a", Txn(success=[Op(OpKind.PUT, "k", 1)]), NOW, entry("state.put", "a"))
        lease = await store.grant_lease("a", 10, NOW, entry("leases.create", "a"))
        with pytest.raises(NotFoundError):
            await store.txn("a", Txn(success=[Op(OpKind.PUT, "k", 2, 999)]), NOW, entry("state.put", "a"))
        await store.revoke_lease("a", lease.id, NOW, entry("leases.revoke", "a"))
    finally:
        await store.close()
    tasks = create_task_store(store_url)
    try:
        records = await tasks.list_audit(AuditFilter(), 10)
        assert [r.entry.action for r in records] == ["state.put", "leases.create", "leases.revoke"]
        assert verify_chain(records, await tasks.audit_head()) == (3, None)
    finally:
        await tasks.close()


async def test_a_store_on_a_shared_engine_leaves_the_engine_open(store_url: str) -> None:
    engine = create_sql_engine(store_url)
    try:
        store = SqlKVStore(engine, LIMITS)
        await put(store, "k", 1)
        await store.ping()
        await store.close()
        with engine.connect() as conn:
            assert conn.execute(text("SELECT count(*) FROM kv_history")).scalar_one() == 1
    finally:
        engine.dispose()
