"""State export/import (``storage.sql.backup``) on SQLite and PostgreSQL, and SQLite's online backup."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from taskplane.domain.state import KeyValue, Op, OpKind, Txn
from taskplane.errors import CompactedError, ConflictError, InvalidRequestError
from taskplane.storage import create_task_store, upgrade_database
from taskplane.storage.sql.backup import backup_sqlite
from taskplane.storage.sql.kv import SqlKVStore
from tests.storage.conftest import created_event, task
from tests.storage.kv_contract import LIMITS, NOW, later, put
from tests.support.services import postgres_schema


@pytest.fixture
def fresh_url(store_url: str, tmp_path: Path) -> Iterator[str]:
    """A second migrated, empty database on the same backend as ``store_url``."""
    if store_url.startswith("sqlite"):
        url = f"sqlite:///{tmp_path / 'fresh' / 'taskplane.db'}"
        upgrade_database(url)
        yield url
        return
    with postgres_schema() as url:
        upgrade_database(url)
        yield url


async def fill(kv: SqlKVStore) -> None:
    """Two tenants, updates, a delete, a key created again, a leased key, a compacted history."""
    await put(kv, "jobs/1", {"n": 1})
    await put(kv, "jobs/2", [1, "two", None, True, 2.5])
    await put(kv, "jobs/1", {"n": 2})
    await put(kv, "cfg", "x", tenant="b")
    await kv.txn("a", Txn(success=[Op(OpKind.DELETE, "jobs/2")]), NOW)
    await put(kv, "jobs/2", "again")
    lease = await kv.grant_lease("a", 60, NOW)
    await put(kv, "held", 1, lease=lease.id)
    await put(kv, "ünï/🙂", {"deep": {"a": [1.5, -2]}}, tenant="b")
    await kv.compact(4)


async def snapshot(kv: SqlKVStore) -> dict[str, list[KeyValue]]:
    return {t: list((await kv.range(t, "", NOW, 1000)).items) for t in ("a", "b")}


def without_lease(entries: dict[str, list[KeyValue]]) -> dict[str, list[KeyValue]]:
    return {
        t: [KeyValue(e.key, e.value, e.create_revision, e.mod_revision, e.version) for e in v]
        for t, v in entries.items()
    }


async def test_export_then_import_restores_entries_and_revisions(store_url: str, fresh_url: str) -> None:
    source = SqlKVStore(store_url, LIMITS)
    target = SqlKVStore(fresh_url, LIMITS)
    try:
        await fill(source)
        revision = await source.revision()
        before = await snapshot(source)
        out = io.BytesIO()
        summary = await source.export_entries(out, NOW)
        lines = out.getvalue().splitlines()
        header = orjson.loads(lines[0])
        assert header == {
            "format": "taskplane-state",
            "version": 1,
            "revision": revision,
            "entries": 5,
            "leases": "dropped",
            "leased_keys": 1,
        }
        assert (summary.revision, summary.entries, summary.leased_keys) == (revision, 5, 1)
        assert orjson.loads(lines[1]) == {
            "tenant": "a",
            "key": "held",
            "value": 1,
            "create_revision": 7,
            "mod_revision": 7,
            "version": 1,
        }

        restored = await target.import_entries(lines)
        assert (restored.revision, restored.entries) == (revision, 5)
        assert await target.revision() == revision
        assert await snapshot(target) == without_lease(before)
        assert await target.get("a", "jobs/1", NOW) == KeyValue("jobs/1", {"n": 2}, 1, 3, 2)
        assert await target.get("a", "jobs/2", NOW, revision=revision) == KeyValue("jobs/2", "again", 6, 6, 1)
        # Reads at the restored revision come from history; older ones are compacted, never wrong.
        page = await target.range("b", "", NOW, 10, revision=revision)
        assert [e.key for e in page.items] == ["cfg", "ünï/🙂"]
        with pytest.raises(CompactedError):
            await target.get("a", "jobs/1", NOW, revision=revision - 1)
        # A watch from the restored revision on sees later writes, and the store continues from there.
        after = await put(target, "jobs/3", 3)
        assert after.revision == revision + 1
        events = await target.events("a", "", revision, 100)
        assert [(e.revision, e.key) for e in events] == [(revision + 1, "jobs/3")]
        events = await target.events("b", "", revision, 100)
        assert [(e.revision, e.key, e.kv.version) for e in events] == [(revision, "ünï/🙂", 1)]
        # The lease was dropped: the key stays after the old lease's expiry.
        assert await target.get("a", "held", later(3600)) == KeyValue("held", 1, 7, 7, 1)

        # A second import into the now non-empty store is refused, and changes nothing.
        with pytest.raises(ConflictError) as refused:
            await target.import_entries(lines)
        assert refused.value.code == "state_not_empty"
        assert await target.revision() == revision + 1
    finally:
        await source.close()
        await target.close()


async def test_an_empty_store_exports_and_imports(store_url: str, fresh_url: str) -> None:
    source = SqlKVStore(store_url, LIMITS)
    target = SqlKVStore(fresh_url, LIMITS)
    try:
        out = io.BytesIO()
        await source.export_entries(out, NOW)
        assert orjson.loads(out.getvalue()) == {"format": "taskplane-state", "version": 1, "revision": 0, "entries": 0}
        await target.import_entries(out.getvalue().splitlines())
        assert await target.revision() == 0
        assert (await put(target, "k", 1)).revision == 1
    finally:
        await source.close()
        await target.close()


@pytest.mark.parametrize(
    ("lines", "problem"),
    [
        ([], "empty"),
        ([b'{"format": "other", "version": 1, "revision": 1}'], "not a taskplane state export"),
        ([b'{"format": "taskplane-state", "version": 2, "revision": 1}'], "unsupported export version"),
        ([b'{"format": "taskplane-state", "version": 1, "revision": 1}', b"{nope"], "line 2: not JSON"),
        (
            [
                b'{"format": "taskplane-state", "version": 1, "revision": 1}',
                b'{"tenant": "a", "key": "k", "value": 1, "create_revision": 1, "mod_revision": 2, "version": 1}',
            ],
            "after the export's revision",
        ),
        (
            [
                b'{"format": "taskplane-state", "version": 1, "revision": 1}',
                b'{"tenant": "a", "key": "/k", "value": 1, "create_revision": 1, "mod_revision": 1, "version": 1}',
            ],
            "line 2",
        ),
    ],
)
async def test_a_bad_export_is_refused_and_nothing_is_written(store_url: str, lines: list[bytes], problem: str) -> None:
    kv = SqlKVStore(store_url, LIMITS)
    try:
        with pytest.raises(InvalidRequestError, match=problem):
            await kv.import_entries(lines)
        assert await kv.revision() == 0
        assert (await kv.range("a", "", NOW, 10)).items == ()
    finally:
        await kv.close()


async def test_an_import_with_a_bad_line_late_in_the_file_writes_nothing(store_url: str) -> None:
    good = b'{"tenant": "a", "key": "k%d", "value": 1, "create_revision": 1, "mod_revision": 1, "version": 1}'
    lines = [b'{"format": "taskplane-state", "version": 1, "revision": 1}']
    lines += [good.replace(b"%d", str(i).encode()) for i in range(2500)]
    lines.append(b'{"tenant": "a", "key": "k0", "value": 1, "create_revision": 1, "mod_revision": 1, "version": 0}')
    kv = SqlKVStore(store_url, LIMITS)
    try:
        with pytest.raises(InvalidRequestError, match="line 2502: version"):
            await kv.import_entries(lines)
        assert await kv.revision() == 0
        assert (await kv.range("a", "", NOW, 10)).items == ()
    finally:
        await kv.close()


async def test_the_sqlite_online_backup_holds_the_state_at_backup_time(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'data' / 'taskplane.db'}"
    upgrade_database(url)
    kv = SqlKVStore(url, LIMITS)
    tasks = create_task_store(url)
    try:
        await fill(kv)
        first = task().tenant("a").new()
        await tasks.create_tasks([first], [created_event(first.task)])
        revision = await kv.revision()
        at_backup = await snapshot(kv)

        copy = backup_sqlite(url, tmp_path / "backups" / "tp.db")  # both stores still open

        await put(kv, "jobs/1", "after")
        await put(kv, "late", 1, tenant="b")
        second = task().tenant("a").new()
        await tasks.create_tasks([second], [created_event(second.task)])
    finally:
        await kv.close()
        await tasks.close()

    assert not copy.with_name("tp.db-wal").exists()
    restored_url = f"sqlite:///{copy}"
    restored = SqlKVStore(restored_url, LIMITS)
    restored_tasks = create_task_store(restored_url)
    try:
        assert await restored.revision() == revision
        assert await snapshot(restored) == at_backup
        assert await restored.get("a", "jobs/1", NOW, revision=revision - 1) is not None  # history came too
        assert await restored_tasks.get_task(first.task.id) is not None
        assert await restored_tasks.get_task(second.task.id) is None
    finally:
        await restored.close()
        await restored_tasks.close()


def test_the_backup_refuses_an_existing_file_and_postgresql(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'taskplane.db'}"
    upgrade_database(url)
    existing = tmp_path / "exists.db"
    existing.write_bytes(b"keep")
    with pytest.raises(ConflictError, match="exists"):
        backup_sqlite(url, existing)
    assert existing.read_bytes() == b"keep"
    with pytest.raises(InvalidRequestError) as not_sqlite:
        backup_sqlite("postgresql+psycopg://u@db/tp", tmp_path / "x.db")
    assert not_sqlite.value.code == "not_sqlite"
    with pytest.raises(InvalidRequestError) as missing:
        backup_sqlite(f"sqlite:///{tmp_path / 'none.db'}", tmp_path / "y.db")
    assert missing.value.code == "database_not_found"
