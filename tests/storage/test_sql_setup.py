"""Engines, URLs, migrations and unreachable databases: the SQL store's setup, outside the port's contract."""

from __future__ import annotations

from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import event, inspect, text

from taskplane.errors import InvalidRequestError, UnavailableError
from taskplane.storage import create_task_store, upgrade_database
from taskplane.storage.sql.engine import WRITE_OPTION, create_sql_engine
from taskplane.storage.sql.migrate import alembic_config, head_revision
from taskplane.storage.sql.tables import metadata

# ---------------------------------------------------------------------------------------------- migrations


def test_the_migrations_build_exactly_the_tables_module(store_url: str) -> None:
    engine = create_sql_engine(store_url)
    try:
        with engine.connect() as conn:
            context = MigrationContext.configure(conn, opts={"compare_type": True})
            assert compare_metadata(context, metadata) == []
            assert context.get_current_revision() == head_revision()
    finally:
        engine.dispose()


def test_downgrade_to_nothing_then_upgrade_again(store_url: str) -> None:
    engine = create_sql_engine(store_url).execution_options(**{WRITE_OPTION: True})
    try:
        with engine.begin() as conn:
            config = alembic_config()
            config.attributes["connection"] = conn
            command.downgrade(config, "base")
        with engine.connect() as conn:
            assert set(inspect(conn).get_table_names()) <= {"alembic_version"}
    finally:
        engine.dispose()

    upgrade_database(store_url)
    upgrade_database(store_url)


def test_the_sqlite_file_and_its_directory_are_created(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "er" / "taskplane.db"

    upgrade_database(f"sqlite:///{path}")

    assert path.is_file()


# -------------------------------------------------------------------------------------------------- sqlite


def test_sqlite_connections_are_durable_and_strict(tmp_path: Path) -> None:
    engine = create_sql_engine(f"sqlite:///{tmp_path}/x.db")
    try:
        with engine.connect() as conn:
            pragmas = {name: conn.exec_driver_sql(f"PRAGMA {name}").scalar() for name in _PRAGMAS}
    finally:
        engine.dispose()
    assert pragmas == _PRAGMAS


_PRAGMAS = {"journal_mode": "wal", "synchronous": 2, "busy_timeout": 5000, "foreign_keys": 1}


def test_sqlite_writes_begin_immediate_and_reads_deferred(tmp_path: Path) -> None:
    engine = create_sql_engine(f"sqlite:///{tmp_path}/x.db")
    seen: list[str] = []
    event.listen(engine, "before_cursor_execute", lambda _c, _cur, sql, *_: seen.append(sql))
    try:
        with engine.begin() as conn:
            conn.execute(text("SELECT 1"))
        with engine.execution_options(**{WRITE_OPTION: True}).begin() as conn:
            conn.execute(text("SELECT 1"))
    finally:
        engine.dispose()
    assert [s for s in seen if s.startswith("BEGIN")] == ["BEGIN", "BEGIN IMMEDIATE"]


# --------------------------------------------------------------------------------------------- unreachable


async def test_an_unreachable_postgres_is_unavailable() -> None:
    url = "postgresql+psycopg://postgres@127.0.0.1:1/test?connect_timeout=2"
    s = create_task_store(url)
    try:
        with pytest.raises(UnavailableError):
            await s.ping()
    finally:
        await s.close()
    with pytest.raises(UnavailableError):
        upgrade_database(url)


async def test_an_unopenable_sqlite_file_is_unavailable(tmp_path: Path) -> None:
    s = create_task_store(f"sqlite:///{tmp_path}")  # a directory, not a file
    try:
        with pytest.raises(UnavailableError):
            await s.ping()
    finally:
        await s.close()


async def test_an_unmigrated_database_fails_ping(tmp_path: Path) -> None:
    s = create_task_store(f"sqlite:///{tmp_path}/empty.db")
    try:
        with pytest.raises(UnavailableError):
            await s.ping()
    finally:
        await s.close()


@pytest.mark.parametrize(
    "url", ["sqlite://", "sqlite:///:memory:", "mysql://x@y/z", "nonsense", "sqlite+aiosqlite:///x"]
)
def test_unsupported_urls_are_refused(url: str) -> None:
    with pytest.raises(InvalidRequestError) as info:
        create_task_store(url)
    assert info.value.code == "invalid_database_url"


def test_plain_postgresql_urls_mean_psycopg() -> None:
    engine = create_sql_engine("postgresql://u@127.0.0.1:1/db")
    try:
        assert engine.url.drivername == "postgresql+psycopg"
    finally:
        engine.dispose()
