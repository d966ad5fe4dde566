"""Migration 0004 on a database holding data written at 0003: the state tables arrive empty, at revision 0."""

from __future__ import annotations

import pytest
from alembic import command
from sqlalchemy import Engine, text

from taskplane.domain.state import KeyValue, Op, OpKind, Txn
from taskplane.storage import create_task_store, upgrade_database
from taskplane.storage.sql.engine import WRITE_OPTION, create_sql_engine
from taskplane.storage.sql.kv import SqlKVStore
from taskplane.storage.sql.migrate import alembic_config
from tests.storage.conftest import entry, tenant
from tests.storage.kv_contract import NOW


def _migrate_to(engine: Engine, revision: str, *, down: bool = False) -> None:
    with engine.begin() as conn:
        config = alembic_config()
        config.attributes["connection"] = conn
        (command.downgrade if down else command.upgrade)(config, revision)


def _generation(url: str) -> int:
    engine = create_sql_engine(url)
    try:
        with engine.connect() as conn:
            return int(conn.execute(text("SELECT value FROM meta WHERE key = 'schema_generation'")).scalar_one())
    finally:
        engine.dispose()


@pytest.fixture
def old_db(empty_url: str) -> str:
    """A database at revision 0003."""
    engine = create_sql_engine(empty_url).execution_options(**{WRITE_OPTION: True})
    try:
        _migrate_to(engine, "0003")
    finally:
        engine.dispose()
    return empty_url


async def test_upgrading_a_0003_database_keeps_its_data_and_starts_the_state_store_empty(old_db: str) -> None:
    tasks = create_task_store(old_db)
    try:
        await tasks.create_tenant(tenant("acme"), entry("tenants.create", None))
    finally:
        await tasks.close()
    upgrade_database(old_db)
    assert _generation(old_db) == 4

    kv = SqlKVStore(old_db)
    try:
        assert await kv.revision() == 0
        result = await kv.txn("acme", Txn(success=[Op(OpKind.PUT, "k", {"v": 1})]), NOW)
        assert result.revision == 1
        assert await kv.get("acme", "k", NOW) == KeyValue("k", {"v": 1}, 1, 1, 1)
        assert (await kv.grant_lease("acme", 5, NOW)).id == 1
    finally:
        await kv.close()
    tasks = create_task_store(old_db)
    try:
        assert await tasks.get_tenant("acme") is not None
    finally:
        await tasks.close()


async def test_downgrading_to_0003_drops_the_state_tables(old_db: str) -> None:
    upgrade_database(old_db)
    kv = SqlKVStore(old_db)
    try:
        await kv.txn("acme", Txn(success=[Op(OpKind.PUT, "k", 1)]), NOW)
    finally:
        await kv.close()
    engine = create_sql_engine(old_db).execution_options(**{WRITE_OPTION: True})
    try:
        _migrate_to(engine, "0003", down=True)
        with engine.connect() as conn:
            keys = set(conn.execute(text("SELECT key FROM meta")).scalars())
            assert not keys & {"kv_revision", "kv_compacted"}
    finally:
        engine.dispose()
    assert _generation(old_db) == 3
    upgrade_database(old_db)
    kv = SqlKVStore(old_db)
    try:
        assert await kv.revision() == 0
        assert await kv.get("acme", "k", NOW) is None
    finally:
        await kv.close()
