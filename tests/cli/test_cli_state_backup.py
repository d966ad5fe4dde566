"""``db state-export``, ``db state-import`` and ``db backup`` against real SQLite databases."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable
from pathlib import Path

import orjson
from typer.testing import Result

from taskplane.domain.state import KeyValue
from taskplane.storage import upgrade_database
from taskplane.storage.sql.kv import SqlKVStore
from tests.storage.kv_contract import LIMITS, NOW, put

Run = Callable[..., Result]


def database(data_dir: Path) -> str:
    return f"sqlite:///{data_dir / 'taskplane.db'}"


async def write(url: str) -> int:
    kv = SqlKVStore(url, LIMITS)
    try:
        await put(kv, "jobs/1", {"n": 1})
        await put(kv, "jobs/1", {"n": 2})
        await put(kv, "cfg", "x", tenant="b")
        return await kv.revision()
    finally:
        await kv.close()


async def read(url: str) -> tuple[int, list[KeyValue], list[KeyValue]]:
    kv = SqlKVStore(url, LIMITS)
    try:
        a = list((await kv.range("a", "", NOW, 100)).items)
        b = list((await kv.range("b", "", NOW, 100)).items)
        return await kv.revision(), a, b
    finally:
        await kv.close()


def test_state_export_then_import_into_a_fresh_data_dir(run: Run, tmp_path: Path) -> None:
    old, new = tmp_path / "old", tmp_path / "new"
    upgrade_database(database(old))
    revision = asyncio.run(write(database(old)))
    dump = tmp_path / "state.jsonl"

    exported = run("db", "state-export", "-o", str(dump), "--data-dir", str(old))
    assert exported.exit_code == 0, exported.output
    assert exported.stderr == f"exported 2 entries at revision {revision}\n"
    assert orjson.loads(dump.read_bytes().splitlines()[0])["revision"] == revision

    to_stdout = run("db", "state-export", "--data-dir", str(old))
    assert to_stdout.exit_code == 0 and to_stdout.stdout_bytes == dump.read_bytes()

    imported = run("db", "state-import", str(dump), "--data-dir", str(new))
    assert imported.exit_code == 0, imported.output
    assert imported.stderr == f"imported 2 entries; the state store is at revision {revision}\n"
    assert asyncio.run(read(database(new))) == asyncio.run(read(database(old)))
    with sqlite3.connect(new / "taskplane.db") as conn:
        audited = conn.execute("SELECT principal, action FROM audit_log WHERE action = 'state.import'").fetchall()
    assert len(audited) == 1

    again = run("db", "state-import", str(dump), "--data-dir", str(new))
    assert again.exit_code == 1
    assert "state store is not empty" in again.stderr and "state_not_empty" in again.stderr


def test_state_import_reads_standard_input(run: Run, tmp_path: Path) -> None:
    old, new = tmp_path / "old", tmp_path / "new"
    upgrade_database(database(old))
    asyncio.run(write(database(old)))
    exported = run("db", "state-export", "--data-dir", str(old))
    imported = run("db", "state-import", "-", "--data-dir", str(new), stdin=exported.stdout)
    assert imported.exit_code == 0, imported.output
    assert asyncio.run(read(database(new)))[1] == [KeyValue("jobs/1", {"n": 2}, 1, 2, 2)]


def test_state_import_of_a_missing_file_is_a_usage_error(run: Run, tmp_path: Path) -> None:
    result = run("db", "state-import", str(tmp_path / "nope.jsonl"), "--data-dir", str(tmp_path))
    assert result.exit_code == 2 and "cannot read" in result.stderr


def test_db_backup_copies_the_live_database(run: Run, tmp_path: Path) -> None:
    data = tmp_path / "data"
    upgrade_database(database(data))
    revision = asyncio.run(write(database(data)))
    copy = tmp_path / "backup.db"
    result = run("db", "backup", str(copy), "--data-dir", str(data))
    assert result.exit_code == 0, result.output
    assert result.stderr == f"backed up {database(data)} to {copy}\n"
    assert asyncio.run(read(f"sqlite:///{copy}")) == asyncio.run(read(database(data)))
    assert asyncio.run(read(f"sqlite:///{copy}"))[0] == revision

    again = run("db", "backup", str(copy), "--data-dir", str(data))
    assert again.exit_code == 1 and "backup_exists" in again.stderr


def test_db_backup_of_postgresql_points_at_the_docs(run: Run, tmp_path: Path) -> None:
    result = run("db", "backup", str(tmp_path / "x.db"), "--database-url", "postgresql+psycopg://u:pw@db/tp")
    assert result.exit_code == 1 and "pg_basebackup" in result.stderr and "not_sqlite" in result.stderr
