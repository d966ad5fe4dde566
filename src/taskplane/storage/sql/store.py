"""``SqlTaskStore``: the ``TaskStore`` port over SQLite and PostgreSQL with the same SQLAlchemy Core code.

    async method --run_in_executor--> worker thread --> one transaction on a sync engine --> commit
                                      (SQLite: 1 writer thread + 2 reader threads, WAL;
                                       PostgreSQL: a pool of threads and connections)

A sync engine in worker threads is a deliberate departure from the async SQLAlchemy of LIBRARIES.md: a whole
transaction costs one thread hop instead of one per statement (aiosqlite), and both databases run identical code.

Writes on SQLite begin ``IMMEDIATE`` (one writer; the lock is taken up front). Idempotency is decided by the
unique index on ``(tenant, idempotency_key)`` inside the creating transaction: a select finds stored keys, and
an insert that loses a race to a concurrent creator fails on the index, rolls back and the batch is retried,
when the select finds the winner. ``tasks.seq`` comes from a counter row in ``meta``, incremented after that
select; on PostgreSQL the counter's row lock is held until commit, so seqs are handed out in commit order.
``reservations.seq`` comes from its own counter row the same way.

The same class is the ``AdminStore`` (tenants, reservations, usage; SQL in ``admin.py``) and the
``SecurityStore`` (API keys, custom roles, bindings, the audit chain; SQL in ``security.py``): one database, one
set of threads.

Audit in the same transaction. A mutation given the audit entry of its request (``create_tasks``' ``audit``,
``ChangeSet.audit``, the ``audit`` of the admin and security mutations) chains it with
``security.append_audit`` as the last statement of its own transaction: the change and its record commit
together, or neither does (an ``IdempotencyConflictError``, a ``tenant_not_empty`` delete, a taken name write no
record). The audit head's row lock is thus the last lock taken and the shortest held. A create that lost an
idempotency race rolls back with its record and retries whole, so the committed try writes the record once; a
create answered entirely by idempotent replays still writes it (the request was answered).

    async method --> worker thread --> BEGIN; the mutation's rows; append_audit (head lock); COMMIT
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import re
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from datetime import datetime
from functools import partial
from typing import TYPE_CHECKING, Any, TypeVar

from sqlalchemy import Connection, Engine, bindparam, exists, func, literal, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.sql import ColumnElement

from taskplane.domain.access import ApiKey, RoleBinding, StoredRole
from taskplane.domain.audit import AuditEntry, AuditRecord, Checkpoint
from taskplane.domain.reservation import Reservation
from taskplane.domain.task import TERMINAL_STATES, Attempt, AttemptState, Task, TaskState
from taskplane.domain.tenant import Tenant
from taskplane.errors import (
    ConflictError,
    IdempotencyConflictError,
    InvalidRequestError,
    NotFoundError,
    UnavailableError,
)
from taskplane.services.ports import (
    AdminStore,
    AuditFilter,
    ChangeSet,
    Created,
    NewTask,
    Page,
    SecurityStore,
    TaskEvent,
    TaskFilter,
    TaskStore,
    UsageRow,
)
from taskplane.storage.sql import admin, codec, security
from taskplane.storage.sql.engine import WRITE_OPTION, create_sql_engine, is_sqlite, parse_database_url
from taskplane.storage.sql.errors import translated
from taskplane.storage.sql.tables import (
    META_EPOCH,
    META_TASK_SEQ,
    attempts,
    meta,
    task_events,
    task_labels,
    tasks,
    to_micros,
)

T = TypeVar("T")

MAX_BATCH = 1000
"""The most tasks one ``create_tasks`` call takes (one transaction, a few statements)."""

_CREATE_TRIES = 3  # a batch that lost an idempotency race is retried; the retry's select finds the winner
_SQLITE_READERS = 2
_CURSOR_RE = re.compile(r"^[A-Za-z0-9_-]{1,32}$")
_SEQ_RE = re.compile(r"^[1-9][0-9]{0,18}$")

_UNFINISHED_STATES = sorted(s.value for s in TaskState if s not in TERMINAL_STATES)
_LIVE_ATTEMPT_STATES = sorted(s.value for s in AttemptState if not s.terminal)


class _Statements:
    """Statements built once; SQLAlchemy's compiled cache then skips compiling them again."""

    def __init__(self) -> None:
        task_cols = [tasks.c[name] for name in codec.TASK_FIELDS]
        attempt_cols = [attempts.c[name] for name in codec.ATTEMPT_FIELDS]
        event_cols = [task_events.c[name] for name in codec.EVENT_FIELDS]
        self.task_columns = task_cols
        self.get_task = select(*task_cols).where(tasks.c.id == bindparam("id"))
        self.find_keys = select(*task_cols, tasks.c.request_hash).where(
            tasks.c.tenant == bindparam("tenant"), tasks.c.idempotency_key.in_(bindparam("keys", expanding=True))
        )
        self.bump_task_seq = (
            update(meta)
            .where(meta.c.key == META_TASK_SEQ)
            .values(value=meta.c.value + bindparam("n"))
            .returning(meta.c.value)
        )
        self.bump_epoch = (
            update(meta).where(meta.c.key == META_EPOCH).values(value=meta.c.value + 1).returning(meta.c.value)
        )
        self.insert_task = tasks.insert()
        self.insert_label = task_labels.insert()
        self.insert_attempt = attempts.insert()
        self.insert_event = task_events.insert()
        # Without .values(): the SET clause is the non-key names of each parameter dict (column names).
        self.update_task = tasks.update().where(tasks.c.id == bindparam(codec.TASK_UPDATE_KEY))
        self.update_attempt = attempts.update().where(
            attempts.c.task_id == bindparam(codec.ATTEMPT_UPDATE_KEYS[0]),
            attempts.c.number == bindparam(codec.ATTEMPT_UPDATE_KEYS[1]),
        )
        self.get_attempts = (
            select(*attempt_cols).where(attempts.c.task_id == bindparam("task_id")).order_by(attempts.c.number)
        )
        self.get_events = (
            select(*event_cols)
            .where(task_events.c.task_id == bindparam("task_id"))
            .order_by(task_events.c.seq)
            .limit(bindparam("limit"))
        )
        self.unfinished_tasks = select(*task_cols).where(tasks.c.state.in_(_UNFINISHED_STATES)).order_by(tasks.c.seq)
        self.live_attempts = (
            select(*attempt_cols)
            .where(attempts.c.state.in_(_LIVE_ATTEMPT_STATES))
            .order_by(attempts.c.task_id, attempts.c.number)
        )
        self.ping = select(meta.c.value).limit(1)


class SqlTaskStore:
    """``TaskStore`` on a SQLAlchemy sync engine (SQLite or PostgreSQL); every method is one transaction.

    Build it with ``create_task_store(url)``; the schema must exist (``upgrade_database(url)``). The store owns
    the engine and disposes of it in ``close``. A call whose caller is cancelled may still commit.
    """

    def __init__(self, engine: Engine, *, threads: int = 8) -> None:
        self._engine = engine
        self._write_engine = engine.execution_options(**{WRITE_OPTION: True})
        self._sqlite = engine.dialect.name == "sqlite"
        if self._sqlite:
            # One writer (SQLite has one write lock); WAL lets a couple of readers run beside it.
            self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="taskplane-sql-write")
            self._reader = ThreadPoolExecutor(max_workers=_SQLITE_READERS, thread_name_prefix="taskplane-sql-read")
            self._snapshot_engine = engine  # a deferred BEGIN already reads one snapshot
        else:
            self._writer = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="taskplane-sql")
            self._reader = self._writer
            self._snapshot_engine = engine.execution_options(isolation_level="REPEATABLE READ")
        self._sql = _Statements()
        self._admin = admin.AdminStatements()
        self._security = security.SecurityStatements()
        self._closed = False

    @property
    def dialect(self) -> str:
        """``sqlite`` or ``postgresql``."""
        return self._engine.dialect.name

    # ------------------------------------------------------------------------------------- plumbing

    async def _call(self, executor: ThreadPoolExecutor, fn: Callable[[], T]) -> T:
        if self._closed:
            raise UnavailableError("the task store is closed")
        return await asyncio.get_running_loop().run_in_executor(executor, fn)

    async def _read(self, action: str, body: Callable[[Connection], T]) -> T:
        """Run ``body`` in one read transaction on a reader thread."""
        return await self._call(self._reader, partial(self._in_transaction, self._engine, action, body))

    async def _write(self, action: str, body: Callable[[Connection], T], audit: AuditEntry | None = None) -> T:
        """Run ``body`` in one write transaction on the writer thread(s); then chain ``audit``, last, in it."""
        if audit is not None:
            body = partial(self._audited, body, [audit])
        return await self._call(self._writer, partial(self._in_transaction, self._write_engine, action, body))

    def _audited(self, body: Callable[[Connection], T], entries: list[AuditEntry], conn: Connection) -> T:
        result = body(conn)
        security.append_audit(conn, self._security, entries)
        return result

    @staticmethod
    def _in_transaction(engine: Engine, action: str, body: Callable[[Connection], T]) -> T:
        with translated(action), engine.begin() as conn:
            return body(conn)

    # ------------------------------------------------------------------------------------- creating

    async def create_tasks(
        self, new: Sequence[NewTask], events: Sequence[TaskEvent], audit: AuditEntry | None = None
    ) -> list[Created]:
        """Insert tasks (all or nothing) with their events and ``audit``; see ``TaskStore.create_tasks``.

        Results are in input order. A key repeated within the batch maps to its first task (``created=False``)
        or raises ``IdempotencyConflictError`` when the request hashes differ. At most ``MAX_BATCH`` tasks.
        ``audit`` is chained in the same transaction, also when every task was an idempotent replay.
        """
        if len(new) > MAX_BATCH:
            raise InvalidRequestError(f"at most {MAX_BATCH} tasks per batch, got {len(new)}", code="batch_too_large")
        if not new and not events and audit is None:
            return []
        entries = [] if audit is None else [audit]
        return await self._call(self._writer, partial(self._create_tasks, list(new), list(events), entries))

    def _create_tasks(self, new: list[NewTask], events: list[TaskEvent], audit: list[AuditEntry]) -> list[Created]:
        keyed = any(n.task.idempotency_key is not None for n in new)
        with translated("create tasks"):
            for attempt in range(1, _CREATE_TRIES + 1):
                try:
                    # A try that fails rolls back with its audit record: only the committed one writes it.
                    with self._write_engine.begin() as conn:
                        created = self._create_in(conn, new, events)
                        security.append_audit(conn, self._security, audit)
                        return created
                except IntegrityError as exc:
                    # Lost a race on the idempotency index: the retry's select sees the winner. Without keys,
                    # or after the last try, it is a plain conflict (e.g. a task id that exists already).
                    if not keyed or attempt == _CREATE_TRIES:
                        raise ConflictError(f"create tasks: conflicts with stored data: {exc.orig}") from exc
        raise AssertionError("unreachable")

    def _create_in(self, conn: Connection, new: list[NewTask], events: list[TaskEvent]) -> list[Created]:
        stored = self._find_keys(conn, new)
        results: list[Created | None] = [None] * len(new)
        first_in_batch: dict[tuple[str, str], int] = {}
        repeats: list[tuple[int, int]] = []  # (index, index of the first task with the same key)
        fresh: list[int] = []
        for i, item in enumerate(new):
            key = item.task.idempotency_key
            if key is None:
                fresh.append(i)
                continue
            scoped = (item.task.spec.tenant, key)
            if scoped in stored:
                task, request_hash = stored[scoped]
                _check_same_request(key, request_hash, item.request_hash)
                results[i] = Created(task, created=False)
            elif scoped in first_in_batch:
                first = first_in_batch[scoped]
                _check_same_request(key, new[first].request_hash, item.request_hash)
                repeats.append((i, first))
            else:
                first_in_batch[scoped] = i
                fresh.append(i)

        if fresh:
            # The counter row is locked from here to commit (PostgreSQL): seqs follow commit order.
            last = conn.execute(self._sql.bump_task_seq, {"n": len(fresh)}).scalar_one()
            seq = last - len(fresh)
            rows: list[dict[str, Any]] = []
            labels: list[dict[str, str]] = []
            for i in fresh:
                seq += 1
                item = new[i]
                rows.append(codec.task_insert_row(item.task, seq, item.request_hash))
                results[i] = Created(replace(item.task, seq=seq), created=True)
                labels.extend({"task_id": item.task.id, "key": k, "value": v} for k, v in item.task.spec.labels.items())
            conn.execute(self._sql.insert_task, rows)
            if labels:
                conn.execute(self._sql.insert_label, labels)
        for i, first in repeats:
            winner = results[first]
            assert winner is not None
            results[i] = Created(winner.task, created=False)

        skipped = {new[i].task.id for i, r in enumerate(results) if r is not None and not r.created}
        event_rows = [codec.event_insert_row(e) for e in events if e.task_id not in skipped]
        if event_rows:
            conn.execute(self._sql.insert_event, event_rows)
        return [r for r in results if r is not None]

    def _find_keys(self, conn: Connection, new: list[NewTask]) -> dict[tuple[str, str], tuple[Task, str | None]]:
        by_tenant: dict[str, set[str]] = {}
        for item in new:
            if item.task.idempotency_key is not None:
                by_tenant.setdefault(item.task.spec.tenant, set()).add(item.task.idempotency_key)
        found: dict[tuple[str, str], tuple[Task, str | None]] = {}
        for tenant, keys in by_tenant.items():
            for row in conn.execute(self._sql.find_keys, {"tenant": tenant, "keys": sorted(keys)}):
                task = codec.task_from_row(row)
                assert task.idempotency_key is not None
                found[(tenant, task.idempotency_key)] = (task, row[-1])
        return found

    # ------------------------------------------------------------------------------------- applying

    async def apply(self, changes: ChangeSet) -> None:
        """Write a change set in one transaction: task rows by id, attempts by (task_id, number), events.

        Reservations are upserted by id: a new one gets its ``seq``; of an id repeated in one change set, the
        last row wins; ``seq`` and ``created_at`` of a stored one are kept. ``changes.audit`` is chained last.

        Only lifecycle columns of a task are updated: its spec, labels, idempotency key, ``created_at`` and
        ``seq`` are written once. Raises ``NotFoundError`` (and writes nothing) when a task or attempt to
        update does not exist, ``ConflictError`` when a new attempt's number is taken.
        """
        if not changes:
            return
        # A shallow copy taken on the caller's thread: the caller may reuse its lists while the worker writes.
        snapshot = ChangeSet(
            list(changes.tasks),
            list(changes.new_attempts),
            list(changes.attempts),
            list(changes.events),
            list(changes.reservations),
            list(changes.audit),
        )
        await self._call(self._writer, partial(self._apply, snapshot))

    def _apply(self, changes: ChangeSet) -> None:
        sql = self._sql
        # Rows in key order, so two concurrent change sets lock shared rows in the same order (no deadlock).
        task_params = [codec.task_update_params(t) for t in sorted(changes.tasks, key=_task_key)]
        new_attempt_rows = [codec.attempt_insert_row(a) for a in changes.new_attempts]
        attempt_params = [codec.attempt_update_params(a) for a in sorted(changes.attempts, key=_attempt_key)]
        event_rows = [codec.event_insert_row(e) for e in changes.events]
        latest = {r.id: r for r in changes.reservations}
        reservation_list = [latest[k] for k in sorted(latest)]
        with translated("apply changes"), self._write_engine.begin() as conn:
            if task_params:
                updated = conn.execute(sql.update_task, task_params).rowcount
                if updated != len(task_params):
                    raise NotFoundError(f"apply: {len(task_params) - updated} of the tasks to update do not exist")
            if new_attempt_rows:
                conn.execute(sql.insert_attempt, new_attempt_rows)
            if attempt_params:
                updated = conn.execute(sql.update_attempt, attempt_params).rowcount
                if updated != len(attempt_params):
                    raise NotFoundError(
                        f"apply: {len(attempt_params) - updated} of the attempts to update do not exist"
                    )
            if event_rows:
                conn.execute(sql.insert_event, event_rows)
            if reservation_list:
                admin.upsert_reservations(conn, self._admin, reservation_list)
            # Last: the audit head's lock is taken after every row lock above (see the module docstring).
            security.append_audit(conn, self._security, changes.audit)

    # -------------------------------------------------------------------------------------- reading

    async def get_task(self, task_id: str) -> Task | None:
        """One task, or ``None``."""
        return await self._call(self._reader, partial(self._get_task, task_id))

    def _get_task(self, task_id: str) -> Task | None:
        with translated("get a task"), self._engine.begin() as conn:
            row = conn.execute(self._sql.get_task, {"id": task_id}).first()
        return None if row is None else codec.task_from_row(row)

    async def get_attempts(self, task_id: str) -> list[Attempt]:
        """A task's attempts, oldest first."""
        return await self._call(self._reader, partial(self._get_attempts, task_id))

    def _get_attempts(self, task_id: str) -> list[Attempt]:
        with translated("get attempts"), self._engine.begin() as conn:
            return [codec.attempt_from_row(r) for r in conn.execute(self._sql.get_attempts, {"task_id": task_id})]

    async def get_events(self, task_id: str, limit: int = 1000) -> list[TaskEvent]:
        """A task's events, oldest first, ``limit`` at most."""
        if limit < 1:
            return []
        return await self._call(self._reader, partial(self._get_events, task_id, limit))

    def _get_events(self, task_id: str, limit: int) -> list[TaskEvent]:
        with translated("get events"), self._engine.begin() as conn:
            rows = conn.execute(self._sql.get_events, {"task_id": task_id, "limit": limit})
            return [codec.event_from_row(r) for r in rows]

    async def list_tasks(self, filt: TaskFilter, limit: int, cursor: str | None) -> Page:
        """Tasks matching ``filt``, newest first (by seq), ``limit`` at most; ``cursor`` from a previous page.

        ``created_after`` is inclusive and ``created_before`` exclusive. A malformed cursor raises
        ``InvalidRequestError`` with code ``invalid_cursor``.
        """
        if limit < 1:
            raise InvalidRequestError(f"limit must be at least 1, got {limit}", code="invalid_limit")
        before_seq = None if cursor is None else decode_cursor(cursor)
        return await self._call(self._reader, partial(self._list_tasks, filt, limit, before_seq))

    def _list_tasks(self, filt: TaskFilter, limit: int, before_seq: int | None) -> Page:
        conditions: list[ColumnElement[bool]] = []
        if filt.states:
            conditions.append(tasks.c.state.in_(sorted(s.value for s in filt.states)))
        if filt.tenant is not None:
            conditions.append(tasks.c.tenant == filt.tenant)
        if filt.tenants is not None:
            conditions.append(tasks.c.tenant.in_(sorted(filt.tenants)))
        if filt.created_after is not None:
            conditions.append(tasks.c.created_at >= filt.created_after)
        if filt.created_before is not None:
            conditions.append(tasks.c.created_at < filt.created_before)
        for key, value in sorted(filt.labels.items()):
            conditions.append(
                exists(
                    select(literal(1)).where(
                        task_labels.c.task_id == tasks.c.id, task_labels.c.key == key, task_labels.c.value == value
                    )
                )
            )
        if before_seq is not None:
            conditions.append(tasks.c.seq < before_seq)
        stmt = select(*self._sql.task_columns).where(*conditions).order_by(tasks.c.seq.desc()).limit(limit + 1)
        with translated("list tasks"), self._engine.begin() as conn:
            rows = conn.execute(stmt).all()
        items = [codec.task_from_row(r) for r in rows[:limit]]
        more = len(rows) > limit
        return Page(items=items, next_cursor=encode_cursor(items[-1].seq) if more else None)

    async def load_unfinished(self) -> tuple[list[Task], list[Attempt]]:
        """All non-terminal tasks (oldest first) and all non-terminal attempts, read from one snapshot."""
        return await self._call(self._reader, self._load_unfinished)

    def _load_unfinished(self) -> tuple[list[Task], list[Attempt]]:
        with translated("load unfinished tasks"), self._snapshot_engine.begin() as conn:
            task_list = [codec.task_from_row(r) for r in conn.execute(self._sql.unfinished_tasks).all()]
            attempt_list = [codec.attempt_from_row(r) for r in conn.execute(self._sql.live_attempts).all()]
        return task_list, attempt_list

    async def load_reservations(self) -> list[Reservation]:
        """All pending and active reservations, oldest (lowest seq) first."""
        return await self._read("load reservations", lambda conn: admin.live_reservations(conn, self._admin))

    # --------------------------------------------------------------------------------------- tenants

    async def list_tenants(self) -> list[Tenant]:
        """Every stored tenant, by name (the implicit ``default`` only once stored)."""
        return await self._read("list tenants", lambda conn: admin.list_tenants(conn, self._admin))

    async def get_tenant(self, name: str) -> Tenant | None:
        """One tenant, or ``None``."""
        return await self._read("get a tenant", lambda conn: admin.get_tenant(conn, self._admin, name))

    async def create_tenant(self, tenant: Tenant, audit: AuditEntry | None = None) -> Tenant:
        """Insert a tenant (and chain ``audit``) and return it as stored.

        ``created_at`` and ``updated_at`` must be set (services own the clock), else ``InvalidRequestError``
        (``missing_timestamp``). ``ConflictError`` (``tenant_exists``) when the name is taken.
        """
        if tenant.created_at is None or tenant.updated_at is None:
            raise InvalidRequestError(
                f"tenant {tenant.name!r}: created_at and updated_at are required", code="missing_timestamp"
            )
        return await self._write("create a tenant", lambda conn: admin.create_tenant(conn, self._admin, tenant), audit)

    async def update_tenant(self, tenant: Tenant, audit: AuditEntry | None = None) -> Tenant:
        """Replace the stored tenant of ``tenant.name`` (and chain ``audit``) and return it as stored.

        ``created_at`` is kept from the stored row (written once); ``updated_at`` must be set, else
        ``InvalidRequestError`` (``missing_timestamp``). ``NotFoundError`` (``tenant_not_found``) when missing.
        """
        if tenant.updated_at is None:
            raise InvalidRequestError(f"tenant {tenant.name!r}: updated_at is required", code="missing_timestamp")
        return await self._write("update a tenant", lambda conn: admin.update_tenant(conn, self._admin, tenant), audit)

    async def delete_tenant(self, name: str, audit: AuditEntry | None = None, at: datetime | None = None) -> None:
        """Delete a tenant (and chain ``audit``), checking in the same transaction that it is idle.

        In the same transaction its API keys are revoked (at ``at``, default ``audit.at``) and its role bindings
        deleted, so no grant outlives it (or wakes up if the name is used again). ``ConflictError``
        (``tenant_not_empty``) while it has a task that is not terminal or a pending or active reservation;
        ``NotFoundError`` (``tenant_not_found``) when there is no such tenant.
        """
        when = at or (audit.at if audit is not None else None)

        def body(conn: Connection) -> None:
            admin.delete_tenant(conn, self._admin, name)
            if when is not None:
                security.forget_tenant(conn, self._security, name, when)

        await self._write("delete a tenant", body, audit)

    # ---------------------------------------------------------------------------------- reservations

    async def create_reservation(self, reservation: Reservation, audit: AuditEntry | None = None) -> Reservation:
        """Insert a new reservation (and chain ``audit``); the returned row carries its ``seq``.

        ``ConflictError`` (``reservation_exists``) when the id is taken.
        """
        return await self._write(
            "create a reservation", lambda conn: admin.create_reservation(conn, self._admin, reservation), audit
        )

    async def get_reservation(self, reservation_id: str) -> Reservation | None:
        """One reservation, or ``None``."""
        return await self._read(
            "get a reservation", lambda conn: admin.get_reservation(conn, self._admin, reservation_id)
        )

    async def list_reservations(self, tenant: str | None = None, live_only: bool = False) -> list[Reservation]:
        """Reservations (of ``tenant`` if given; only pending and active ones if ``live_only``), oldest first."""
        return await self._read(
            "list reservations", lambda conn: admin.list_reservations(conn, self._admin, tenant, live_only)
        )

    # ----------------------------------------------------------------------------------------- usage

    async def usage(self, start: datetime, end: datetime) -> list[UsageRow]:
        """Per (tenant, pool), by tenant then pool: what attempts overlapping ``[start, end)`` requested and used.

        A running attempt counts up to ``end``; measured CPU is that of attempts finished in ``(start, end]``
        (see ``admin.usage_statement``). ``InvalidRequestError``: ``naive_datetime``, or ``invalid_window``
        unless ``start < end``.
        """
        start_us, end_us = to_micros(start), to_micros(end)
        if start_us >= end_us:
            raise InvalidRequestError("the usage window must end after it starts", code="invalid_window")
        return await self._read("compute usage", lambda conn: admin.usage(conn, self._admin, start_us, end_us))

    # -------------------------------------------------------------------------------------- api keys

    async def create_api_key(self, key: ApiKey, audit: AuditEntry | None = None) -> ApiKey:
        """Insert a key (and chain ``audit``).

        ``ConflictError`` (``token_exists``) when the id is taken; ``NotFoundError`` (``role_not_found``) when
        one of its roles is neither built in nor stored.
        """
        return await self._write(
            "create an API key", lambda conn: security.create_api_key(conn, self._security, key), audit
        )

    async def get_api_key(self, key_id: str) -> ApiKey | None:
        """One key (revoked and expired ones included), or ``None``."""
        return await self._read("get an API key", lambda conn: security.get_api_key(conn, self._security, key_id))

    async def list_api_keys(self, tenants: frozenset[str] | None = None) -> list[ApiKey]:
        """Keys, oldest first; only those whose tenant is in ``tenants`` when given."""
        return await self._read("list API keys", lambda conn: security.list_api_keys(conn, self._security, tenants))

    async def revoke_api_key(self, key_id: str, at: datetime, audit: AuditEntry | None = None) -> ApiKey | None:
        """Set ``revoked_at`` (the first one is kept) and return the row; ``None`` when there is no such key.

        ``audit`` is chained when the key exists (also when it was revoked already); ``None`` records nothing.
        """
        return await self._write(
            "revoke an API key", partial(self._revoke_api_key, key_id, at, [] if audit is None else [audit])
        )

    def _revoke_api_key(self, key_id: str, at: datetime, audit: list[AuditEntry], conn: Connection) -> ApiKey | None:
        key = security.revoke_api_key(conn, self._security, key_id, at)
        if key is not None:
            security.append_audit(conn, self._security, audit)
        return key

    async def touch_api_keys(self, used: Mapping[str, datetime]) -> None:
        """Move keys' ``last_used_at`` forward (never back); unknown ids are ignored. Not audited."""
        if not used:
            return
        snapshot = dict(used)
        await self._write("record API key use", lambda conn: security.touch_api_keys(conn, self._security, snapshot))

    async def has_api_keys(self) -> bool:
        """True once any key was created (keys are revoked, never deleted)."""
        return await self._read("look for API keys", lambda conn: security.has_api_keys(conn, self._security))

    # ----------------------------------------------------------------------------------------- roles

    async def create_role(self, role: StoredRole, audit: AuditEntry | None = None) -> StoredRole:
        """Insert a custom role (and chain ``audit``); ``ConflictError`` (``role_exists``) when the name is taken."""
        return await self._write("create a role", lambda conn: security.create_role(conn, self._security, role), audit)

    async def get_role(self, name: str) -> StoredRole | None:
        """One custom role, or ``None``."""
        return await self._read("get a role", lambda conn: security.get_role(conn, self._security, name))

    async def list_roles(self) -> list[StoredRole]:
        """Every custom role, by name."""
        return await self._read("list roles", lambda conn: security.list_roles(conn, self._security))

    async def delete_role(self, name: str, audit: AuditEntry | None = None) -> None:
        """Delete a custom role (and chain ``audit``), checking its users in the same transaction.

        ``NotFoundError`` (``role_not_found``) when missing; ``ConflictError`` (``role_in_use``) while a binding
        or a key that is not revoked names it.
        """
        await self._write("delete a role", lambda conn: security.delete_role(conn, self._security, name), audit)

    # -------------------------------------------------------------------------------------- bindings

    async def create_binding(self, binding: RoleBinding, audit: AuditEntry | None = None) -> RoleBinding:
        """Insert a binding (and chain ``audit``).

        ``ConflictError`` (``binding_exists``) when ``(subject, tenant, role)`` is bound already (or the id is
        taken); ``NotFoundError`` (``role_not_found``) when the role is neither built in nor stored.
        """
        return await self._write(
            "create a role binding", lambda conn: security.create_binding(conn, self._security, binding), audit
        )

    async def list_bindings(
        self, subject: str | None = None, tenants: frozenset[str] | None = None
    ) -> list[RoleBinding]:
        """Bindings, oldest first, of ``subject`` and in ``tenants`` when given."""
        return await self._read(
            "list role bindings", lambda conn: security.list_bindings(conn, self._security, subject, tenants)
        )

    async def delete_binding(self, binding_id: str, audit: AuditEntry | None = None) -> RoleBinding | None:
        """Delete and return the row; ``None`` when there is no such binding.

        ``audit`` is chained when a row was deleted; ``None`` records nothing.
        """
        return await self._write(
            "delete a role binding", partial(self._delete_binding, binding_id, [] if audit is None else [audit])
        )

    def _delete_binding(self, binding_id: str, audit: list[AuditEntry], conn: Connection) -> RoleBinding | None:
        binding = security.delete_binding(conn, self._security, binding_id)
        if binding is not None:
            security.append_audit(conn, self._security, audit)
        return binding

    # ----------------------------------------------------------------------------------------- audit

    async def append_audit(self, entries: Sequence[AuditEntry]) -> list[AuditRecord]:
        """Chain ``entries`` in a transaction of their own (requests that changed nothing, denials)."""
        if not entries:
            return []
        snapshot = list(entries)
        return await self._write(
            "append audit records", lambda conn: security.append_audit(conn, self._security, snapshot)
        )

    async def list_audit(self, filt: AuditFilter, limit: int, after_seq: int = 0) -> list[AuditRecord]:
        """Records with ``seq > after_seq`` matching ``filt``, oldest first, ``limit`` at most.

        See ``security.list_audit`` for the filter's meaning. Records commit in seq order, so paging by the
        last seq seen never skips one. ``InvalidRequestError`` (``invalid_limit``) unless ``limit >= 1``.
        """
        if limit < 1:
            raise InvalidRequestError(f"limit must be at least 1, got {limit}", code="invalid_limit")
        return await self._read(
            "list audit records", lambda conn: security.list_audit(conn, self._security, filt, limit, after_seq)
        )

    async def audit_head(self) -> Checkpoint | None:
        """The last record's ``(seq, hash)`` as stored beside the chain; ``None`` before the first record."""
        return await self._read("read the audit head", lambda conn: security.read_audit_head(conn, self._security))

    # ---------------------------------------------------------------------------------- server facts

    async def next_epoch(self) -> int:
        """Increment and return the server epoch (a fencing token for executor sessions)."""
        return await self._call(self._writer, self._next_epoch)

    def _next_epoch(self) -> int:
        with translated("bump the epoch"), self._write_engine.begin() as conn:
            return int(conn.execute(self._sql.bump_epoch).scalar_one())

    async def ping(self) -> None:
        """Raise ``UnavailableError`` unless the database answers and holds the schema."""
        await self._call(self._reader, self._ping)

    def _ping(self) -> None:
        with translated("ping"), self._engine.begin() as conn:
            conn.execute(self._sql.ping).all()

    async def count_tasks(self) -> int:
        """How many tasks are stored (for metrics and tests)."""
        return await self._call(self._reader, self._count_tasks)

    def _count_tasks(self) -> int:
        with translated("count tasks"), self._engine.begin() as conn:
            return int(conn.execute(select(func.count()).select_from(tasks)).scalar_one())

    async def close(self) -> None:
        """Finish queued calls, then release threads and connections. Later calls raise ``UnavailableError``."""
        if self._closed:
            return
        self._closed = True
        await asyncio.to_thread(self._shutdown)

    def _shutdown(self) -> None:
        self._writer.shutdown(wait=True)
        self._reader.shutdown(wait=True)
        self._engine.dispose()


def create_task_store(url: str, *, threads: int = 8) -> SqlTaskStore:
    """A ``SqlTaskStore`` for ``sqlite:///path`` (parent directory created) or ``postgresql+psycopg://...``.

    ``threads`` sizes the PostgreSQL worker pool and its connection pool; SQLite always has one writer.
    Run ``upgrade_database(url)`` first. Nothing connects until the first call.
    """
    sqlite = is_sqlite(parse_database_url(url))
    engine = create_sql_engine(url, pool_size=1 + _SQLITE_READERS if sqlite else threads)
    return SqlTaskStore(engine, threads=threads)


def encode_cursor(seq: int) -> str:
    """The opaque cursor for "tasks older than ``seq``"."""
    return base64.urlsafe_b64encode(str(seq).encode()).rstrip(b"=").decode()


def decode_cursor(cursor: str) -> int:
    """The seq inside a cursor from ``encode_cursor``; ``InvalidRequestError`` (``invalid_cursor``) otherwise."""
    try:
        if not _CURSOR_RE.match(cursor):
            raise ValueError(cursor)
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode("ascii")
        if not _SEQ_RE.match(text):
            raise ValueError(text)
        return int(text)
    except (ValueError, binascii.Error) as exc:
        raise InvalidRequestError("malformed pagination cursor", code="invalid_cursor") from exc


def _check_same_request(key: str, stored_hash: str | None, request_hash: str | None) -> None:
    if stored_hash != request_hash:
        raise IdempotencyConflictError(
            f"idempotency key {key!r} was used before with a different request", idempotency_key=key
        )


def _task_key(task: Task) -> str:
    return task.id


def _attempt_key(attempt: Attempt) -> tuple[str, int]:
    return (attempt.task_id, attempt.number)


if TYPE_CHECKING:

    def _implements_the_port(store: SqlTaskStore) -> TaskStore:
        return store  # mypy checks that SqlTaskStore matches the TaskStore protocol

    def _implements_the_admin_port(store: SqlTaskStore) -> AdminStore:
        return store

    def _implements_the_security_port(store: SqlTaskStore) -> SecurityStore:
        return store
