"""``SqlKVStore``: the state API's ``KVStore`` port over SQLite and PostgreSQL with SQLAlchemy Core.

    async method --run_in_executor--> worker thread --> one database transaction --> commit
                                      (SQLite: 1 group-commit writer thread, ``storage.sql.group_commit``:
                                       the writes queued meanwhile share one BEGIN IMMEDIATE ... COMMIT, each in
                                       a SAVEPOINT; point reads on the event loop thread, other reads on 2
                                       reader threads; WAL.  PostgreSQL: a pool of threads and connections)

    a write (txn with writes, lease grant/keepalive/revoke, expiry, compaction):
        SELECT value FROM meta WHERE key = 'kv_revision' FOR UPDATE     every writer queues here (PostgreSQL)
        [expire the leases due at ``now``: one revision each]           so no later revision shows them
        compares and ops on the live rows (one SELECT for every named key), in order, in memory
        DELETE/INSERT the changed kv rows; INSERT kv_history rows; UPDATE kv_revision; append_audit (last)
        COMMIT

Linearizable. Every mutation is one database transaction that first locks the revision counter row (PostgreSQL
holds it to commit; SQLite has one writer, ``BEGIN IMMEDIATE``), so writers are serialized in revision order
and each reads the state every earlier writer committed. Reads are single snapshots of committed state
(SQLite's WAL snapshot; PostgreSQL ``REPEATABLE READ``), the revision read in the same snapshot. A transaction
whose branches hold no write and that carries no audit entry runs as such a read.

History. ``kv_history`` holds a row for every changed key at every revision, the current values included, so a
read at a past revision never needs ``kv``: the state at ``R`` is, per key, the newest row with revision
``<= R`` that is a put. Events are the same rows in (revision, key) order. Compaction to ``keep_from`` drops
rows older than it except each key's newest such put (its state at ``keep_from - 1``), so reads at
``keep_from`` and later stay exact; it records ``kv_compacted = keep_from - 1``.

Leases. A key whose lease expired at the caller's ``now`` is missing for every read and compare (a join on
``kv_leases``). A writer first records the expiry of leases due at its ``now`` (a revision each, history cause
``lease_expired``; at most ``INLINE_EXPIRY_LIMIT``), so no revision committed after a lease's expiry holds its
keys and a past read never resurrects one; ``expire_leases`` does the same for the sweeper. Lease ids are never
reused, so an expired lease is gone for good (keepalive: ``lease_not_found``).

Within a transaction. Ops apply in order to an in-memory overlay of the touched keys (a get sees the
transaction's own earlier writes); at commit only keys whose entry changed are written, one history row each,
all at one revision. A key created and deleted inside the same transaction changes nothing (no row, and no
revision if nothing else changed, although the put's ``OpResult`` showed the revision it would have had).
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import partial
from typing import IO, TYPE_CHECKING, Any, TypeVar

import orjson
from sqlalchemy import Connection, Engine, Select, bindparam, delete, exists, insert, or_, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.sql import ColumnElement

from taskplane.domain.audit import AuditEntry
from taskplane.domain.state import (
    Event,
    EventType,
    KeyValue,
    KVPage,
    Lease,
    OpKind,
    OpResult,
    Txn,
    TxnResult,
    apply_ops,
    evaluate,
)
from taskplane.errors import (
    CompactedError,
    InvalidRequestError,
    NotFoundError,
    UnavailableError,
)
from taskplane.services.ports import KVLimits, KVStore
from taskplane.storage.kv_checks import check_txn, checked_key, checked_prefix, encode_value
from taskplane.storage.sql import backup, security
from taskplane.storage.sql.engine import WRITE_OPTION, create_sql_engine, is_sqlite, parse_database_url
from taskplane.storage.sql.errors import translated
from taskplane.storage.sql.group_commit import GroupCommitWriter
from taskplane.storage.sql.tables import META_KV_COMPACTED, META_KV_REVISION, kv, kv_history, kv_leases, meta

T = TypeVar("T")

INLINE_EXPIRY_LIMIT = 1000
"""The most due leases a writer expires before its own change (the sweeper takes the rest)."""

CAUSE_EXPIRED = "lease_expired"
"""``Event.cause`` of a delete recorded because the key's lease expired."""

_SQLITE_READERS = 2
_PUT = "put"
_DELETE = "delete"
_KV_COLUMNS = (kv.c.key, kv.c.value, kv.c.create_revision, kv.c.mod_revision, kv.c.version, kv.c.lease_id)
_HISTORY_COLUMNS = (
    kv_history.c.revision,
    kv_history.c.key,
    kv_history.c.type,
    kv_history.c.value,
    kv_history.c.create_revision,
    kv_history.c.version,
    kv_history.c.lease_id,
    kv_history.c.cause,
)


def _live() -> ColumnElement[bool]:
    """A ``kv`` row (joined to its lease) that is not hidden by an expired lease at ``:now``."""
    return or_(kv.c.lease_id.is_(None), kv_leases.c.expires_at > bindparam("now", type_=kv_leases.c.expires_at.type))


def _live_select() -> Select[Any]:
    joined = kv.outerjoin(kv_leases, kv_leases.c.id == kv.c.lease_id)
    return select(*_KV_COLUMNS).select_from(joined).where(kv.c.tenant == bindparam("tenant"), _live())


class KVStatements:
    """Statements built once; SQLAlchemy's compiled cache then skips compiling them again."""

    def upsert_kv(self, dialect: str) -> Any:
        """``INSERT INTO kv ... ON CONFLICT (tenant, key) DO UPDATE``: one statement where a delete + insert was two."""
        stmt = self._upserts.get(dialect)
        if stmt is None:
            dml: Any = sqlite_insert(kv) if dialect == "sqlite" else pg_insert(kv)
            stmt = dml.on_conflict_do_update(
                index_elements=[kv.c.tenant, kv.c.key],
                set_={c: dml.excluded[c] for c in ("value", "create_revision", "mod_revision", "version", "lease_id")},
            )
            self._upserts[dialect] = stmt
        return stmt

    def __init__(self) -> None:
        self.lock_revision = select(meta.c.value).where(meta.c.key == META_KV_REVISION).with_for_update()
        self.read_counters = select(meta.c.key, meta.c.value).where(
            meta.c.key.in_([META_KV_REVISION, META_KV_COMPACTED])
        )
        self.read_revision = select(meta.c.value).where(meta.c.key == META_KV_REVISION)
        self.set_revision = update(meta).where(meta.c.key == META_KV_REVISION).values(value=bindparam("rev"))
        self.set_compacted = update(meta).where(meta.c.key == META_KV_COMPACTED).values(value=bindparam("rev"))
        self.get_keys = _live_select().where(kv.c.key.in_(bindparam("keys", expanding=True)))
        self.get_key = _live_select().where(kv.c.key == bindparam("key"))  # no IN list to expand at each call
        self.delete_keys = delete(kv).where(
            kv.c.tenant == bindparam("tenant"), kv.c.key.in_(bindparam("keys", expanding=True))
        )
        self.delete_key = delete(kv).where(kv.c.tenant == bindparam("tenant"), kv.c.key == bindparam("key"))
        self.insert_kv = insert(kv)
        self._upserts: dict[str, Any] = {}
        self.insert_history = insert(kv_history)
        self.get_lease = select(kv_leases.c.id, kv_leases.c.tenant, kv_leases.c.ttl, kv_leases.c.expires_at).where(
            kv_leases.c.id == bindparam("id")
        )
        self.lease_keys = select(*_KV_COLUMNS, kv.c.tenant).where(kv.c.lease_id == bindparam("id")).order_by(kv.c.key)
        self.delete_lease_keys = delete(kv).where(kv.c.lease_id == bindparam("id"))
        self.delete_lease = delete(kv_leases).where(kv_leases.c.id == bindparam("id"))
        self.due_leases = (
            select(kv_leases.c.id)
            .where(kv_leases.c.expires_at <= bindparam("now", type_=kv_leases.c.expires_at.type))
            .order_by(kv_leases.c.expires_at, kv_leases.c.id)
            .limit(bindparam("limit"))
        )
        self.insert_lease = insert(kv_leases).returning(kv_leases.c.id)
        self.renew_lease = (
            update(kv_leases)
            .where(kv_leases.c.id == bindparam("lease_id"))
            .values(expires_at=bindparam("expires_at", type_=kv_leases.c.expires_at.type))
        )
        newer = kv_history.alias("newer")
        # The newest row of the key at or before :rev (correlated: one index probe per key).
        self.newest_at = (
            select(newer.c.revision)
            .where(
                newer.c.tenant == kv_history.c.tenant,
                newer.c.key == kv_history.c.key,
                newer.c.revision <= bindparam("rev"),
            )
            .order_by(newer.c.revision.desc())
            .limit(1)
            .scalar_subquery()
        )
        # Rows below the compaction point that a newer row below it supersedes (or tombstones, superseded by
        # the key's absence). Evaluated over the rows before the DELETE, as SQL says.
        superseded = exists(
            select(newer.c.revision).where(
                newer.c.tenant == kv_history.c.tenant,
                newer.c.key == kv_history.c.key,
                newer.c.revision > kv_history.c.revision,
                newer.c.revision <= bindparam("rev"),
            )
        )
        self.compact = delete(kv_history).where(
            kv_history.c.revision <= bindparam("rev"), or_(kv_history.c.type == _DELETE, superseded)
        )
        self.ping = select(meta.c.value).where(meta.c.key == META_KV_REVISION)


@dataclass(frozen=True, slots=True)
class _Checked:
    """A request checked and encoded on the caller's thread: values as JSON text by op index."""

    txn: Txn
    encoded: dict[tuple[bool, int], str]  # (success branch?, op index) -> JSON of a put's value


class SqlKVStore:
    """``KVStore`` on a SQLAlchemy sync engine (SQLite or PostgreSQL); every method is one transaction.

    Give it a database URL (it then owns its engine and disposes of it in ``close``) or an engine built by
    ``create_sql_engine`` (the caller disposes of it). The schema must exist (``upgrade_database(url)``).
    """

    def __init__(self, engine: Engine | str, limits: KVLimits | None = None, *, threads: int = 8) -> None:
        if isinstance(engine, str):
            sqlite = is_sqlite(parse_database_url(engine))
            engine = create_sql_engine(engine, pool_size=2 + _SQLITE_READERS if sqlite else threads)
            self._owns_engine = True
        else:
            self._owns_engine = False
        self._engine = engine
        self._write_engine = engine.execution_options(**{WRITE_OPTION: True})
        self._limits = limits or KVLimits()
        self._group: GroupCommitWriter | None = None
        self._inline_reads = engine.dialect.name == "sqlite"
        if engine.dialect.name == "sqlite":
            self._group = GroupCommitWriter(self._write_engine, name="taskplane-kv-write")
            self._reader = ThreadPoolExecutor(max_workers=_SQLITE_READERS, thread_name_prefix="taskplane-kv-read")
            self._writer = self._reader  # unused for writes: those go through the group writer
            self._snapshot_engine = engine  # a deferred BEGIN reads one WAL snapshot
        else:
            self._writer = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="taskplane-kv")
            self._reader = self._writer
            self._snapshot_engine = engine.execution_options(isolation_level="REPEATABLE READ")
        self._sql = KVStatements()
        self._security = security.SecurityStatements()
        self._closed = False

    @property
    def limits(self) -> KVLimits:
        """The limits this store enforces."""
        return self._limits

    # ------------------------------------------------------------------------------------- plumbing

    async def _call(self, executor: ThreadPoolExecutor, fn: Callable[[], T]) -> T:
        if self._closed:
            raise UnavailableError("the state store is closed")
        return await asyncio.get_running_loop().run_in_executor(executor, fn)

    async def _read(self, action: str, body: Callable[[Connection], T]) -> T:
        return await self._call(self._reader, partial(_in_transaction, self._snapshot_engine, action, body))

    async def _point_read(self, action: str, body: Callable[[Connection], T]) -> T:
        """A read of a few rows by primary key; on SQLite it runs on the event loop's own thread.

        A WAL read of a cached page takes microseconds, far less than the hand-off to a worker thread and back
        (which halved ``GET /platform/state/{key}`` throughput). WAL readers never wait for the writer.
        """
        if not self._inline_reads:
            return await self._read(action, body)
        if self._closed:
            raise UnavailableError("the state store is closed")
        return _in_transaction(self._snapshot_engine, action, body)

    async def _write(
        self,
        action: str,
        body: Callable[[Connection], T],
        audit: AuditEntry | None = None,
        changed: Callable[[T], bool] | None = None,
    ) -> T:
        """``body`` in one write transaction, after the revision lock; ``audit`` chained last.

        With ``changed``, the audit entry is written only when ``changed(result)`` says the request changed
        something: a request that changed nothing (a failed compare) is recorded by the HTTP gate instead, with
        its real outcome.
        """

        def locked(conn: Connection) -> T:
            result = body(conn)
            if audit is not None and (changed is None or changed(result)):
                security.append_audit(conn, self._security, [audit])
            return result

        if self._group is not None:
            if self._closed:
                raise UnavailableError("the state store is closed")
            return await self._group.write(action, locked)
        return await self._call(self._writer, partial(_in_transaction, self._write_engine, action, locked))

    # ------------------------------------------------------------------------------------------ txn

    async def txn(self, tenant: str, txn: Txn, now: datetime, audit: AuditEntry | None = None) -> TxnResult:
        """Evaluate the compares and apply one branch atomically; see ``KVStore.txn`` and the module docstring.

        Raises ``InvalidRequestError`` (``invalid_key``, ``too_many_ops``, ``invalid_op``, ``invalid_value``),
        ``PayloadTooLargeError`` (``value_too_large``, ``txn_too_large``) before touching the database, and
        ``NotFoundError`` (``lease_not_found``) when a put names a lease that is not live: nothing is written.
        """
        checked = self._check_txn(txn)
        writes = any(op.kind is not OpKind.GET for op in (*txn.success, *txn.failure))
        if not writes and audit is None:
            return await self._read("read state", partial(self._read_txn, tenant, checked, now))
        return await self._write("write state", partial(self._write_txn, tenant, checked, now), audit, _wrote)

    def _check_txn(self, txn: Txn) -> _Checked:
        return _Checked(txn, check_txn(txn, self._limits))

    def _encode(self, value: Any) -> str:
        return encode_value(value, self._limits)

    def _read_txn(self, tenant: str, checked: _Checked, now: datetime, conn: Connection) -> TxnResult:
        txn = checked.txn
        revision = _scalar(conn, self._sql.read_revision)
        keys = {c.key for c in txn.compares} | {op.key for op in (*txn.success, *txn.failure)}
        found = self._fetch(conn, tenant, keys, now)
        succeeded = all(evaluate(c, found.get(c.key)) for c in txn.compares)
        ops = txn.success if succeeded else txn.failure
        results = tuple(OpResult(OpKind.GET, op.key, kv=found.get(op.key)) for op in ops)
        return TxnResult(succeeded, revision, results)

    def _write_txn(self, tenant: str, checked: _Checked, now: datetime, conn: Connection) -> TxnResult:
        txn = checked.txn
        revision = _scalar(conn, self._sql.lock_revision)
        single = {c.key for c in txn.compares} | {
            op.key for op in (*txn.success, *txn.failure) if op.kind is not OpKind.DELETE_PREFIX
        }
        found = self._fetch(conn, tenant, single, now)
        succeeded = all(evaluate(c, found.get(c.key)) for c in txn.compares)
        ops = txn.success if succeeded else txn.failure
        if not any(op.kind is not OpKind.GET for op in ops):
            results = tuple(OpResult(OpKind.GET, op.key, kv=found.get(op.key)) for op in ops)
            return TxnResult(succeeded, revision, results)

        # Expiries due at `now` get their revisions before this change: no revision from here on holds them.
        revision, _ = self._expire(conn, now, revision, INLINE_EXPIRY_LIMIT)
        new_revision = revision + 1
        leases: dict[int, bool] = {}
        results, changes = apply_ops(
            ops,
            {k: found.get(k) for k in single},
            new_revision,
            lambda i: orjson.loads(checked.encoded[(succeeded, i)]),
            lambda lease: self._lease_usable(conn, tenant, lease, now, leases),
            lambda prefix: self._fetch_prefix(conn, tenant, prefix, now),
        )
        if not changes:
            return TxnResult(succeeded, revision, results)
        self._commit_changes(conn, tenant, new_revision, changes, cause="")
        return TxnResult(succeeded, new_revision, results)

    def _commit_changes(
        self, conn: Connection, tenant: str, revision: int, changes: dict[str, KeyValue | None], cause: str
    ) -> None:
        """Write ``changes`` (the new entry, or ``None``: deleted) at ``revision`` and move the counter."""
        sql = self._sql
        # Deleted keys go; put keys are upserted (which also overwrites a row hidden by an expired lease that the
        # sweep has not reached).
        gone = [key for key, entry in changes.items() if entry is None]
        if len(gone) == 1:
            conn.execute(sql.delete_key, {"tenant": tenant, "key": gone[0]})
        elif gone:
            conn.execute(sql.delete_keys, {"tenant": tenant, "keys": gone})
        rows: list[dict[str, Any]] = []
        history: list[dict[str, Any]] = []
        for key, entry in changes.items():
            if entry is None:
                history.append(_tombstone_row(tenant, key, revision, cause))
                continue
            text = orjson.dumps(entry.value).decode("utf-8")
            rows.append(
                {
                    "tenant": tenant,
                    "key": key,
                    "value": text,
                    "create_revision": entry.create_revision,
                    "mod_revision": entry.mod_revision,
                    "version": entry.version,
                    "lease_id": entry.lease,
                }
            )
            history.append(
                {
                    "tenant": tenant,
                    "key": key,
                    "revision": revision,
                    "type": _PUT,
                    "value": text,
                    "create_revision": entry.create_revision,
                    "version": entry.version,
                    "lease_id": entry.lease,
                    "cause": cause,
                }
            )
        if rows:
            conn.execute(sql.upsert_kv(conn.dialect.name), rows)
        conn.execute(sql.insert_history, history)
        conn.execute(sql.set_revision, {"rev": revision})

    def _lease_usable(self, conn: Connection, tenant: str, lease_id: int, now: datetime, seen: dict[int, bool]) -> bool:
        if lease_id not in seen:
            row = conn.execute(self._sql.get_lease, {"id": lease_id}).first()
            seen[lease_id] = row is not None and row.tenant == tenant and row.expires_at > now
        return seen[lease_id]

    def _fetch(self, conn: Connection, tenant: str, keys: Iterable[str], now: datetime) -> dict[str, KeyValue]:
        wanted = sorted(set(keys))
        if not wanted:
            return {}
        if len(wanted) == 1:
            rows = conn.execute(self._sql.get_key, {"tenant": tenant, "key": wanted[0], "now": now})
        else:
            rows = conn.execute(self._sql.get_keys, {"tenant": tenant, "keys": wanted, "now": now})
        return {row.key: _entry(row) for row in rows}

    def _fetch_prefix(self, conn: Connection, tenant: str, prefix: str, now: datetime) -> dict[str, KeyValue]:
        query = _live_select().where(*_key_range(kv.c.key, prefix))
        rows = conn.execute(query, {"tenant": tenant, "now": now})
        return {row.key: _entry(row) for row in rows}

    # -------------------------------------------------------------------------------------- reading

    async def get(self, tenant: str, key: str, now: datetime, revision: int | None = None) -> KeyValue | None:
        """The entry of ``key`` now, or at ``revision`` if given.

        ``InvalidRequestError`` (``future_revision``) above the current revision, ``CompactedError`` below the
        kept history. At the current revision a read is of the live state (expired leases hide their keys).
        """
        checked_key(key)
        page = await self._point_read(
            "get a key", partial(self._range, tenant, key, now, 1, None, revision, exact=True)
        )
        return page.items[0] if page.items else None

    async def range(
        self, tenant: str, prefix: str, now: datetime, limit: int, after: str | None = None, revision: int | None = None
    ) -> KVPage:
        """Entries under ``prefix`` in key order after ``after``, at most ``limit``; see ``get`` for ``revision``."""
        checked_prefix(prefix)
        if limit < 1:
            raise InvalidRequestError(f"limit must be at least 1, got {limit}", code="invalid_limit")
        return await self._read("list keys", partial(self._range, tenant, prefix, now, limit, after, revision))

    def _range(
        self,
        tenant: str,
        prefix: str,
        now: datetime,
        limit: int,
        after: str | None,
        revision: int | None,
        conn: Connection,
        *,
        exact: bool = False,
    ) -> KVPage:
        if exact and revision is None:  # one key now: one prebuilt statement, no revision counters to read
            row = conn.execute(self._sql.get_key, {"tenant": tenant, "key": prefix, "now": now}).first()
            return KVPage(() if row is None else (_entry(row),), 0, None)
        counters = {row.key: int(row.value) for row in conn.execute(self._sql.read_counters)}
        current, compacted = counters[META_KV_REVISION], counters[META_KV_COMPACTED]
        if revision is not None:
            if revision > current:
                raise InvalidRequestError(
                    f"revision {revision} is in the future (the store is at {current})", code="future_revision"
                )
            if revision < current and revision <= compacted:
                raise _compacted(revision, compacted)
        if revision is None or revision == current:
            query = _live_select()
            column = kv.c.key
        else:
            query = select(*_HISTORY_COLUMNS).where(
                kv_history.c.tenant == bindparam("tenant"),
                kv_history.c.revision == self._sql.newest_at,
                kv_history.c.type == _PUT,
            )
            column = kv_history.c.key
        conditions = [column == prefix] if exact else _key_range(column, prefix)
        if after is not None:
            conditions.append(column > after)
        query = query.where(*conditions).order_by(column).limit(limit + 1)
        rows = conn.execute(query, {"tenant": tenant, "now": now, "rev": revision}).all()
        convert = _entry if column is kv.c.key else _history_entry
        items = tuple(convert(row) for row in rows[:limit])
        next_key = items[-1].key if len(rows) > limit else None
        return KVPage(items, current if revision is None else revision, next_key)

    async def revision(self) -> int:
        """The store's current revision (0 before the first write)."""
        return await self._read("read the revision", lambda conn: _scalar(conn, self._sql.read_revision))

    async def events(self, tenant: str, prefix: str, from_revision: int, limit: int) -> list[Event]:
        """Changes under ``prefix`` from ``from_revision`` on, in (revision, key) order; whole revisions only.

        At least ``limit`` events when there are that many, and never part of a revision: a revision cut by
        ``limit`` comes whole (so a caller resuming at ``last.revision + 1`` misses nothing).
        ``CompactedError`` (``oldest_revision``) when ``from_revision`` is older than the kept history.
        """
        checked_prefix(prefix)
        if limit < 1:
            raise InvalidRequestError(f"limit must be at least 1, got {limit}", code="invalid_limit")
        return await self._read("read events", partial(self._events, tenant, prefix, from_revision, limit))

    def _events(self, tenant: str, prefix: str, from_revision: int, limit: int, conn: Connection) -> list[Event]:
        compacted = _scalar(conn, select(meta.c.value).where(meta.c.key == META_KV_COMPACTED))
        if from_revision <= compacted:
            raise _compacted(from_revision, compacted)
        base = select(*_HISTORY_COLUMNS).where(kv_history.c.tenant == tenant, *_key_range(kv_history.c.key, prefix))
        rows: list[Any] = list(
            conn.execute(
                base.where(kv_history.c.revision >= from_revision)
                .order_by(kv_history.c.revision, kv_history.c.key)
                .limit(limit)
            )
        )
        if len(rows) == limit:
            last = rows[-1]
            rest = base.where(kv_history.c.revision == last.revision, kv_history.c.key > last.key)
            rows.extend(conn.execute(rest.order_by(kv_history.c.key)))
        return [_event(row) for row in rows]

    # --------------------------------------------------------------------------------------- leases

    async def grant_lease(self, tenant: str, ttl: float, now: datetime, audit: AuditEntry | None = None) -> Lease:
        """A new lease expiring at ``now + ttl``; ``InvalidRequestError`` (``invalid_ttl``) unless ttl > 0."""
        expires_at = now + _ttl(ttl)

        def body(conn: Connection) -> Lease:
            lease_id = conn.execute(
                self._sql.insert_lease, {"tenant": tenant, "ttl": float(ttl), "expires_at": expires_at}
            ).scalar_one()
            return Lease(int(lease_id), tenant, float(ttl), expires_at)

        return await self._write("grant a lease", body, audit)

    async def keepalive(self, tenant: str, lease_id: int, now: datetime, audit: AuditEntry | None = None) -> Lease:
        """Push a live lease's expiry to ``now + ttl``; ``NotFoundError`` (``lease_not_found``) otherwise."""

        def body(conn: Connection) -> Lease:
            _scalar(conn, self._sql.lock_revision)  # not between a sweeper's choice of a lease and its deletion
            row = self._live_lease(conn, tenant, lease_id, now)
            expires_at = now + _ttl(row.ttl)
            conn.execute(self._sql.renew_lease, {"lease_id": lease_id, "expires_at": expires_at})
            keys = tuple(r.key for r in conn.execute(self._sql.lease_keys, {"id": lease_id}))
            return Lease(lease_id, tenant, float(row.ttl), expires_at, keys)

        return await self._write("renew a lease", body, audit)

    async def get_lease(self, tenant: str, lease_id: int, now: datetime) -> Lease | None:
        """A live lease of ``tenant`` with the keys attached to it, or ``None``."""

        def body(conn: Connection) -> Lease | None:
            row = conn.execute(self._sql.get_lease, {"id": lease_id}).first()
            if row is None or row.tenant != tenant or row.expires_at <= now:
                return None
            keys = tuple(r.key for r in conn.execute(self._sql.lease_keys, {"id": lease_id}))
            return Lease(lease_id, tenant, float(row.ttl), row.expires_at, keys)

        return await self._read("get a lease", body)

    async def revoke_lease(self, tenant: str, lease_id: int, now: datetime, audit: AuditEntry | None = None) -> int:
        """Delete a live lease and its keys (one revision, when it had keys); the store's revision after it.

        ``NotFoundError`` (``lease_not_found``) for a lease that is missing, another tenant's or expired (its
        expiry is the sweeper's to record).
        """

        def body(conn: Connection) -> int:
            revision = _scalar(conn, self._sql.lock_revision)
            self._live_lease(conn, tenant, lease_id, now)
            return self._end_lease(conn, lease_id, revision, cause="")

        return await self._write("revoke a lease", body, audit)

    async def expire_leases(self, now: datetime, limit: int = 1000) -> int:
        """End the leases expired at ``now``, oldest expiry first, ``limit`` at most; how many ended.

        Each lease with keys: one revision deleting them (history cause ``lease_expired``), and the lease.
        """
        if limit < 1:
            return 0

        def body(conn: Connection) -> int:
            revision = _scalar(conn, self._sql.lock_revision)
            return self._expire(conn, now, revision, limit)[1]

        return await self._write("expire leases", body)

    def _live_lease(self, conn: Connection, tenant: str, lease_id: int, now: datetime) -> Any:
        row: Any = conn.execute(self._sql.get_lease, {"id": lease_id}).first()
        if row is None or row.tenant != tenant or row.expires_at <= now:
            raise NotFoundError(f"lease {lease_id} not found", code="lease_not_found")
        return row

    def _expire(self, conn: Connection, now: datetime, revision: int, limit: int) -> tuple[int, int]:
        """Expire up to ``limit`` leases due at ``now`` (the revision lock held); (revision after, leases ended)."""
        due = conn.execute(self._sql.due_leases, {"now": now, "limit": limit}).scalars().all()
        for lease_id in due:
            revision = self._end_lease(conn, int(lease_id), revision, cause=CAUSE_EXPIRED)
        return revision, len(due)

    def _end_lease(self, conn: Connection, lease_id: int, revision: int, cause: str) -> int:
        """Delete a lease and its keys; one new revision when it had keys. The revision after it."""
        sql = self._sql
        rows = conn.execute(sql.lease_keys, {"id": lease_id}).all()
        conn.execute(sql.delete_lease, {"id": lease_id})
        if not rows:
            return revision
        revision += 1
        conn.execute(sql.delete_lease_keys, {"id": lease_id})
        conn.execute(sql.insert_history, [_tombstone_row(r.tenant, r.key, revision, cause) for r in rows])
        conn.execute(sql.set_revision, {"rev": revision})
        return revision

    # ----------------------------------------------------------------------------------- compaction

    async def compact(self, keep_from: int) -> int:
        """Drop history older than ``keep_from``; the oldest revision still readable after it.

        Each key's newest row below ``keep_from`` stays when it is a put (the key's state then). The compacted
        point never moves backwards nor past the current revision.
        """

        def body(conn: Connection) -> int:
            current = _scalar(conn, self._sql.lock_revision)
            compacted = _scalar(conn, select(meta.c.value).where(meta.c.key == META_KV_COMPACTED))
            target = min(keep_from - 1, current)
            if target <= compacted:
                return compacted + 1
            conn.execute(self._sql.compact, {"rev": target})
            conn.execute(self._sql.set_compacted, {"rev": target})
            return target + 1

        return await self._write("compact state history", body)

    async def purge_tenant(self, tenant: str) -> None:
        """Remove every key, lease and history row of ``tenant`` (it was deleted; nothing of it may outlive it)."""

        def body(conn: Connection) -> None:
            for table in (kv, kv_history, kv_leases):
                conn.execute(delete(table).where(table.c.tenant == tenant))

        await self._write("purge a tenant's state", body)

    # ------------------------------------------------------------------------------ export/import

    async def export_entries(self, out: IO[bytes], now: datetime) -> backup.ExportSummary:
        """Every tenant's entries live at ``now`` as JSON lines to ``out``, one snapshot (``storage.sql.backup``)."""
        return await self._call(self._reader, partial(backup.export_state, self._engine, out, now))

    async def import_entries(self, lines: Iterable[bytes], audit: AuditEntry | None = None) -> backup.ImportSummary:
        """Restore an export into this empty store, in one transaction (``storage.sql.backup.import_state``)."""
        call = partial(backup.import_state, self._engine, lines, audit)
        if self._group is not None:
            if self._closed:
                raise UnavailableError("the state store is closed")
            return await self._group.run("import state", call)
        return await self._call(self._writer, call)

    # ---------------------------------------------------------------------------------- lifecycle

    async def ping(self) -> None:
        """Raise ``UnavailableError`` unless the database answers and holds the state tables."""
        await self._read("ping", lambda conn: _scalar(conn, self._sql.ping))

    async def close(self) -> None:
        """Finish queued calls, then release threads (and the engine, if this store created it)."""
        if self._closed:
            return
        self._closed = True
        await asyncio.to_thread(self._shutdown)

    def _shutdown(self) -> None:
        if self._group is not None:
            self._group.close()
        self._writer.shutdown(wait=True)
        if self._reader is not self._writer:
            self._reader.shutdown(wait=True)
        if self._owns_engine:
            self._engine.dispose()


# ------------------------------------------------------------------------------------------- helpers


def _in_transaction(engine: Engine, action: str, body: Callable[[Connection], T]) -> T:
    with translated(action), engine.begin() as conn:
        return body(conn)


def _scalar(conn: Connection, query: Select[Any]) -> int:
    return int(conn.execute(query).scalar_one())


def _ttl(ttl: float) -> timedelta:
    if isinstance(ttl, bool) or not isinstance(ttl, int | float) or not math.isfinite(ttl) or ttl <= 0:
        raise InvalidRequestError(f"a lease's ttl is a number of seconds > 0, got {ttl!r}", code="invalid_ttl")
    try:
        return timedelta(seconds=ttl)
    except OverflowError:
        raise InvalidRequestError(f"ttl {ttl} is too large", code="invalid_ttl") from None


def _compacted(revision: int, compacted: int) -> CompactedError:
    oldest = compacted + 1
    return CompactedError(
        f"revision {revision} is compacted; the oldest revision kept is {oldest}", oldest_revision=oldest
    )


def prefix_end(prefix: str) -> str | None:
    """The smallest string above every string starting with ``prefix`` (code point order), or ``None``.

    ``None`` when there is none: ``prefix`` is empty or all U+10FFFF.
    """
    chars = list(prefix)
    while chars:
        point = ord(chars[-1])
        if point < 0x10FFFF:
            point += 1
            if 0xD800 <= point <= 0xDFFF:  # surrogates cannot be stored: skip to the next scalar value
                point = 0xE000
            chars[-1] = chr(point)
            return "".join(chars)
        chars.pop()
    return None


def _key_range(column: ColumnElement[str], prefix: str) -> list[ColumnElement[bool]]:
    """Index-friendly ``column starts with prefix``: ``prefix <= column < prefix_end(prefix)``."""
    if not prefix:
        return []
    end = prefix_end(prefix)
    conditions = [column >= prefix]
    if end is not None:
        conditions.append(column < end)
    return conditions


def _entry(row: Any) -> KeyValue:
    return KeyValue(
        key=row.key,
        value=orjson.loads(row.value),
        create_revision=int(row.create_revision),
        mod_revision=int(row.mod_revision),
        version=int(row.version),
        lease=None if row.lease_id is None else int(row.lease_id),
    )


def _history_entry(row: Any) -> KeyValue:
    return KeyValue(
        key=row.key,
        value=orjson.loads(row.value),
        create_revision=int(row.create_revision),
        mod_revision=int(row.revision),
        version=int(row.version),
        lease=None if row.lease_id is None else int(row.lease_id),
    )


def _event(row: Any) -> Event:
    revision = int(row.revision)
    if row.type == _PUT:
        return Event(revision, EventType.PUT, row.key, _history_entry(row), row.cause)
    # A tombstone carries the key and the deleting revision only.
    return Event(revision, EventType.DELETE, row.key, KeyValue(row.key, None, 0, revision, 0), row.cause)


def _tombstone_row(tenant: str, key: str, revision: int, cause: str) -> dict[str, Any]:
    return {
        "tenant": tenant,
        "key": key,
        "revision": revision,
        "type": _DELETE,
        "value": None,
        "create_revision": 0,
        "version": 0,
        "lease_id": None,
        "cause": cause,
    }


if TYPE_CHECKING:

    def _implements_the_port(store: SqlKVStore) -> KVStore:
        return store  # mypy checks that SqlKVStore matches the KVStore protocol


def _wrote(result: TxnResult) -> bool:
    """True when the branch that ran changed a key (a put, or a delete that found something)."""
    return any(r.kind is OpKind.PUT or r.deleted > 0 for r in result.results)
