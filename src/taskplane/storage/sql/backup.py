"""Backups of the SQL backend: state export/import as JSON lines, and SQLite's online backup.

Export (one read snapshot: SQLite's WAL snapshot, PostgreSQL ``REPEATABLE READ``):

    {"format": "taskplane-state", "version": 1, "revision": R, "entries": N[, "leases": "dropped"]}
    {"tenant": "acme", "key": "a/b", "value": <JSON>, "create_revision": 3, "mod_revision": 7, "version": 2}
    ...                                   every live entry of every tenant, ordered by (tenant, key)

Leases are not exported: a key held by a live lease is exported without it (the header then says
``"leases": "dropped"``, with ``leased_keys``); a key whose lease already expired is not live and is left out.

Import into an EMPTY state store (no entry, history row or lease, revision 0; ``ConflictError`` ``state_not_empty``
otherwise), in one write transaction: the entries with their revisions and versions, one history ``put`` row per
entry at its ``mod_revision`` (so a read at the restored revision sees them), the store revision ``R`` and the
compacted point ``R - 1``: history before ``R`` is not in the file, so reads and watches before it answer
``compacted`` rather than a wrong state, and a watch from ``R`` on works.

``backup_sqlite`` copies a live SQLite database with ``sqlite3.Connection.backup`` (one step, under one read
snapshot: a consistent copy that includes what is still in the WAL) while writers carry on.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import IO, Any

import orjson
from sqlalchemy import Connection, Engine, func, insert, or_, select, update

from taskplane.domain.audit import AuditEntry
from taskplane.domain.state import check_key
from taskplane.errors import ConflictError, InvalidRequestError
from taskplane.storage.sql import security
from taskplane.storage.sql.engine import WRITE_OPTION, is_sqlite, parse_database_url
from taskplane.storage.sql.errors import translated
from taskplane.storage.sql.tables import META_KV_COMPACTED, META_KV_REVISION, kv, kv_history, kv_leases, meta

FORMAT = "taskplane-state"
"""The ``format`` of an export's header line."""

VERSION = 1
"""The export format's version."""

_BATCH = 1000


@dataclass(frozen=True, slots=True)
class ExportSummary:
    """What an export wrote: the store revision, the entries, and how many of them lost their lease."""

    revision: int
    entries: int
    leased_keys: int


@dataclass(frozen=True, slots=True)
class ImportSummary:
    """What an import restored: the store revision and the number of entries."""

    revision: int
    entries: int


def _live_rows(now: datetime) -> Any:
    joined = kv.outerjoin(kv_leases, kv_leases.c.id == kv.c.lease_id)
    return joined, or_(kv.c.lease_id.is_(None), kv_leases.c.expires_at > now)


def export_state(engine: Engine, out: IO[bytes], now: datetime) -> ExportSummary:
    """Write the header and every entry live at ``now`` as JSON lines to ``out``, from one read snapshot."""
    snapshot = engine
    if engine.dialect.name != "sqlite":
        snapshot = engine.execution_options(isolation_level="REPEATABLE READ")
    with translated("export state"), snapshot.begin() as conn:
        revision = int(conn.execute(select(meta.c.value).where(meta.c.key == META_KV_REVISION)).scalar_one())
        joined, live = _live_rows(now)
        counts = conn.execute(select(func.count(), func.count(kv.c.lease_id)).select_from(joined).where(live)).one()
        entries, leased = int(counts[0]), int(counts[1])
        header: dict[str, Any] = {"format": FORMAT, "version": VERSION, "revision": revision, "entries": entries}
        if leased:
            header["leases"] = "dropped"
            header["leased_keys"] = leased
        out.write(orjson.dumps(header) + b"\n")
        query = (
            select(kv.c.tenant, kv.c.key, kv.c.value, kv.c.create_revision, kv.c.mod_revision, kv.c.version)
            .select_from(joined)
            .where(live)
            .order_by(kv.c.tenant, kv.c.key)
        )
        for row in conn.execution_options(yield_per=_BATCH).execute(query):
            line = {
                "tenant": row.tenant,
                "key": row.key,
                "value": orjson.Fragment(row.value),  # stored JSON text, copied as is
                "create_revision": int(row.create_revision),
                "mod_revision": int(row.mod_revision),
                "version": int(row.version),
            }
            out.write(orjson.dumps(line) + b"\n")
    return ExportSummary(revision, entries, leased)


def _bad(line: int, problem: str) -> InvalidRequestError:
    return InvalidRequestError(f"line {line}: {problem}", code="invalid_export")


def _int(record: dict[str, Any], name: str, line: int, minimum: int) -> int:
    value = record.get(name)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise _bad(line, f"{name} must be an integer >= {minimum}, got {value!r}")
    return value


def read_export(lines: Iterable[bytes]) -> tuple[int, Iterator[dict[str, Any]]]:
    """Check the header of an export; its revision and an iterator of checked kv rows (errors name the line)."""
    numbered = enumerate((line for line in lines if line.strip()), start=1)
    try:
        _, first = next(numbered)
    except StopIteration:
        raise _bad(1, "the file is empty: no taskplane-state header") from None
    header = _decode(first, 1)
    if header.get("format") != FORMAT:
        raise _bad(1, f"not a taskplane state export (format {header.get('format')!r})")
    if header.get("version") != VERSION:
        raise _bad(1, f"unsupported export version {header.get('version')!r} (this taskplane reads {VERSION})")
    revision = _int(header, "revision", 1, 0)

    def rows() -> Iterator[dict[str, Any]]:
        for n, raw in numbered:
            record = _decode(raw, n)
            tenant, key = record.get("tenant"), record.get("key")
            if not isinstance(tenant, str) or not tenant:
                raise _bad(n, "tenant must be a non-empty string")
            problem = check_key(key) if isinstance(key, str) else "a key is a string"
            if problem is not None:
                raise _bad(n, problem)
            if "value" not in record:
                raise _bad(n, "value is missing")
            create = _int(record, "create_revision", n, 1)
            mod = _int(record, "mod_revision", n, create)
            if mod > revision:
                raise _bad(n, f"mod_revision {mod} is after the export's revision {revision}")
            version = _int(record, "version", n, 1)
            yield {
                "tenant": tenant,
                "key": key,
                "value": orjson.dumps(record["value"]).decode(),
                "create_revision": create,
                "mod_revision": mod,
                "version": version,
            }

    return revision, rows()


def _decode(raw: bytes, line: int) -> dict[str, Any]:
    try:
        record = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise _bad(line, f"not JSON: {exc}") from None
    if not isinstance(record, dict):
        raise _bad(line, "not a JSON object")
    return record


def import_state(engine: Engine, lines: Iterable[bytes], audit: AuditEntry | None = None) -> ImportSummary:
    """Restore an export into an empty state store, in one write transaction; ``audit`` chained last.

    ``ConflictError`` (``state_not_empty``) when the store holds any entry, history, lease or revision;
    ``InvalidRequestError`` (``invalid_export``) naming the line of a bad record: nothing is written.
    """
    revision, rows = read_export(lines)
    with translated("import state"), engine.execution_options(**{WRITE_OPTION: True}).begin() as conn:
        current = int(
            conn.execute(select(meta.c.value).where(meta.c.key == META_KV_REVISION).with_for_update()).scalar_one()
        )
        _check_empty(conn, current)
        count = 0
        batch: list[dict[str, Any]] = []
        for row in rows:
            batch.append(row)
            if len(batch) >= _BATCH:
                _insert(conn, batch)
                count += len(batch)
                batch = []
        if batch:
            _insert(conn, batch)
            count += len(batch)
        conn.execute(update(meta).where(meta.c.key == META_KV_REVISION).values(value=revision))
        conn.execute(update(meta).where(meta.c.key == META_KV_COMPACTED).values(value=max(revision - 1, 0)))
        if audit is not None:
            security.append_audit(conn, security.SecurityStatements(), [audit])
    return ImportSummary(revision, count)


def _check_empty(conn: Connection, current: int) -> None:
    held = [
        name
        for name, table in (("entries", kv), ("history", kv_history), ("leases", kv_leases))
        if conn.execute(select(func.count()).select_from(select(table).limit(1).subquery())).scalar_one()
    ]
    if current or held:
        what = ", ".join(held) or "history"
        raise ConflictError(
            f"the state store is not empty (revision {current}; it holds {what}): import only into a fresh database",
            code="state_not_empty",
        )


def _insert(conn: Connection, batch: list[dict[str, Any]]) -> None:
    conn.execute(insert(kv), [{**row, "lease_id": None} for row in batch])
    conn.execute(
        insert(kv_history),
        [
            {
                "tenant": row["tenant"],
                "key": row["key"],
                "revision": row["mod_revision"],
                "type": "put",
                "value": row["value"],
                "create_revision": row["create_revision"],
                "version": row["version"],
                "lease_id": None,
                "cause": "",
            }
            for row in batch
        ],
    )


def sqlite_path(url: str) -> Path:
    """The database file of a SQLite URL; ``InvalidRequestError`` (``not_sqlite``) for another database."""
    parsed = parse_database_url(url)
    if not is_sqlite(parsed) or not parsed.database:
        raise InvalidRequestError(
            "the online backup copies a SQLite database; for PostgreSQL use pg_basebackup with WAL archiving "
            "(docs/operations.md, Backups)",
            code="not_sqlite",
        )
    return Path(parsed.database)


def backup_sqlite(url: str, dest: Path, *, timeout: float = 30.0) -> Path:
    """Copy the live SQLite database of ``url`` to ``dest`` (which must not exist) with the online backup API.

    The copy is one consistent snapshot, including changes still in the WAL; writers are not stopped. It is
    written to ``dest``'s directory under a temporary name and renamed into place, so ``dest`` is never partial.
    """
    source = sqlite_path(url)
    if not source.is_file():
        raise InvalidRequestError(f"there is no database at {source}", code="database_not_found")
    if dest.exists():
        raise ConflictError(f"{dest} exists: give a new file name", code="backup_exists")
    dest.parent.mkdir(parents=True, exist_ok=True)
    partial = dest.with_name(f".{dest.name}.partial-{os.getpid()}")
    src = sqlite3.connect(source, timeout=timeout)  # reads only; opened read-write so the WAL index is shared
    try:
        dst = sqlite3.connect(partial)
        try:
            src.backup(dst)  # pages=-1: one step under one read snapshot
            dst.execute("PRAGMA journal_mode=DELETE")  # a self-contained file: no -wal beside it
        finally:
            dst.close()
        os.replace(partial, dest)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    finally:
        src.close()
    return dest
