"""Schema migrations, run in code: ``upgrade_database(url)`` brings a database to the latest revision.

Alembic is configured here, without an ``alembic.ini``: the scripts ship as package data in
``taskplane/storage/migrations``. The whole upgrade is one transaction (both databases have transactional DDL),
so a failed upgrade leaves the previous schema. On PostgreSQL an advisory lock lets several servers start at
once; on SQLite ``BEGIN IMMEDIATE`` does the same. ``alembic_version`` lives in the first schema of the
connection's ``search_path``, next to the tables.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, text

from taskplane.errors import InternalError
from taskplane.storage.sql.engine import WRITE_OPTION, create_sql_engine
from taskplane.storage.sql.errors import translated

MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"
"""Where the Alembic environment and revision scripts live."""

_PG_MIGRATION_LOCK = 0x7461736B706C616E  # "taskplan": one upgrade at a time per PostgreSQL database


def alembic_config() -> Config:
    """An Alembic ``Config`` pointing at the packaged migrations (for ``command.*`` calls)."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    return config


def head_revision() -> str:
    """The revision ``upgrade_database`` brings a database to."""
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None
    return head


def upgrade_database(url: str) -> None:
    """Create or upgrade the schema of the database at ``url`` to the latest revision, in one transaction.

    Idempotent; safe to run from several processes at once. Raises ``UnavailableError`` when the database
    cannot be reached, ``InvalidRequestError`` for an unsupported URL.
    """
    base = create_sql_engine(url, pool_size=1)
    engine = base.execution_options(**{WRITE_OPTION: True})
    sqlite = base.dialect.name == "sqlite"
    try:
        with translated("migrate the database"), engine.connect() as conn:
            if sqlite:
                # Batch migrations recreate tables; with foreign keys on, dropping the old copy would cascade.
                # The pragma is a no-op inside a transaction, so it is set before BEGIN (and checked after).
                conn.connection.dbapi_connection.execute("PRAGMA foreign_keys=OFF")  # type: ignore[union-attr]
            with conn.begin():
                _upgrade(conn, postgres=not sqlite)
    finally:
        base.dispose()


def _upgrade(conn: Connection, *, postgres: bool) -> None:
    if postgres:
        conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_MIGRATION_LOCK})
    config = alembic_config()
    config.attributes["connection"] = conn
    command.upgrade(config, "head")
    if not postgres:
        broken = conn.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
        if broken:
            raise InternalError(f"migration left {len(broken)} rows violating foreign keys; rolled back")
