"""The ``AdminStore`` half of ``SqlTaskStore``: the SQL of tenants, reservations and usage.

Each function is the body of one transaction: ``SqlTaskStore`` opens it (on its worker threads, inside
``translated``) and hands over the connection, exactly as for tasks. Nothing here commits or picks a thread.

    SqlTaskStore.create_tenant --> _write("create a tenant", conn -> admin.create_tenant(conn, sql, tenant))
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from sqlalchemy import (
    BigInteger,
    Connection,
    Float,
    Select,
    bindparam,
    case,
    cast,
    delete,
    exists,
    func,
    literal,
    or_,
    select,
    type_coerce,
    update,
)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.sql import ColumnElement

from taskplane.domain.reservation import Reservation, ReservationState
from taskplane.domain.task import TERMINAL_STATES, TaskState
from taskplane.domain.tenant import Tenant
from taskplane.errors import ConflictError, NotFoundError
from taskplane.services.ports import UsageRow
from taskplane.storage.sql import codec
from taskplane.storage.sql.tables import (
    META_RESERVATION_SEQ,
    META_TASK_SEQ,
    attempts,
    meta,
    reservations,
    tasks,
    tenants,
)

_UNFINISHED_STATES = sorted(s.value for s in TaskState if s not in TERMINAL_STATES)
_LIVE_RESERVATION_STATES = sorted(s.value for s in ReservationState if not s.terminal)
_TENANT_KEY = "b_name"
_TENANT_WRITE_ONCE = ("name", "created_at")


class AdminStatements:
    """Statements built once; SQLAlchemy's compiled cache then skips compiling them again."""

    def __init__(self) -> None:
        tenant_cols = [tenants.c[name] for name in codec.TENANT_FIELDS]
        self.get_tenant = select(*tenant_cols).where(tenants.c.name == bindparam("name"))
        self.list_tenants = select(*tenant_cols).order_by(tenants.c.name)
        self.insert_tenant = tenants.insert()
        # Without .values(): the SET clause is the non-key names of the parameter dict.
        self.update_tenant = tenants.update().where(tenants.c.name == bindparam(_TENANT_KEY))
        self.delete_tenant = delete(tenants).where(tenants.c.name == bindparam("name"))
        # The counters every insert of a task or reservation increments: see delete_tenant.
        self.lock_creators = (
            select(meta.c.value)
            .where(meta.c.key.in_([META_RESERVATION_SEQ, META_TASK_SEQ]))
            .order_by(meta.c.key)
            .with_for_update()
        )
        self.tenant_busy = select(
            exists(select(literal(1)).where(tasks.c.tenant == bindparam("name"), tasks.c.state.in_(_UNFINISHED_STATES)))
            | exists(
                select(literal(1)).where(
                    reservations.c.tenant == bindparam("name"), reservations.c.state.in_(_LIVE_RESERVATION_STATES)
                )
            )
        )

        self.reservation_columns = [reservations.c[name] for name in codec.RESERVATION_FIELDS]
        self.get_reservation = select(*self.reservation_columns).where(reservations.c.id == bindparam("id"))
        self.live_reservations = (
            select(*self.reservation_columns)
            .where(reservations.c.state.in_(_LIVE_RESERVATION_STATES))
            .order_by(reservations.c.seq)
        )
        self.find_reservations = select(reservations.c.id).where(
            reservations.c.id.in_(bindparam("ids", expanding=True))
        )
        self.bump_reservation_seq = (
            update(meta)
            .where(meta.c.key == META_RESERVATION_SEQ)
            .values(value=meta.c.value + bindparam("n"))
            .returning(meta.c.value)
        )
        self.insert_reservation = reservations.insert()
        self.update_reservation = reservations.update().where(
            reservations.c.id == bindparam(codec.RESERVATION_UPDATE_KEY)
        )
        self.usage = usage_statement()


# ------------------------------------------------------------------------------------------- tenants


def list_tenants(conn: Connection, sql: AdminStatements) -> list[Tenant]:
    """Every stored tenant, by name."""
    return [codec.tenant_from_row(r) for r in conn.execute(sql.list_tenants)]


def get_tenant(conn: Connection, sql: AdminStatements, name: str) -> Tenant | None:
    """One tenant, or ``None``."""
    row = conn.execute(sql.get_tenant, {"name": name}).first()
    return None if row is None else codec.tenant_from_row(row)


def create_tenant(conn: Connection, sql: AdminStatements, tenant: Tenant) -> Tenant:
    """Insert; ``ConflictError`` (``tenant_exists``) when the name is taken. Timestamps must be set."""
    try:
        # The primary key decides, inside the transaction: no check-then-insert race.
        conn.execute(sql.insert_tenant, codec.tenant_row(tenant))
    except IntegrityError as exc:
        raise ConflictError(f"tenant {tenant.name!r} exists already", code="tenant_exists") from exc
    return _read_tenant(conn, sql, tenant.name)


def update_tenant(conn: Connection, sql: AdminStatements, tenant: Tenant) -> Tenant:
    """Replace every column but ``created_at``; ``NotFoundError`` (``tenant_not_found``) when missing."""
    params = {k: v for k, v in codec.tenant_row(tenant).items() if k not in _TENANT_WRITE_ONCE}
    params[_TENANT_KEY] = tenant.name
    if conn.execute(sql.update_tenant, params).rowcount == 0:
        raise tenant_not_found(tenant.name)
    return _read_tenant(conn, sql, tenant.name)


def delete_tenant(conn: Connection, sql: AdminStatements, name: str) -> None:
    """Delete an idle tenant: ``ConflictError`` (``tenant_not_empty``) or ``NotFoundError`` (``tenant_not_found``)."""
    # Every insert of a task or reservation bumps one of these counters and holds its row lock until commit.
    # Locking both first means no task or reservation of this tenant commits between the check below and the
    # delete (PostgreSQL; SQLite runs one writer at a time anyway, and drops FOR UPDATE).
    conn.execute(sql.lock_creators).all()
    if conn.execute(sql.get_tenant, {"name": name}).first() is None:
        raise tenant_not_found(name)
    if conn.execute(sql.tenant_busy, {"name": name}).scalar_one():
        raise ConflictError(f"tenant {name!r} still has unfinished tasks or live reservations", code="tenant_not_empty")
    conn.execute(sql.delete_tenant, {"name": name})


def tenant_not_found(name: str) -> NotFoundError:
    """The error for a tenant that is not stored."""
    return NotFoundError(f"no tenant {name!r}", code="tenant_not_found")


def _read_tenant(conn: Connection, sql: AdminStatements, name: str) -> Tenant:
    tenant = get_tenant(conn, sql, name)
    if tenant is None:
        raise tenant_not_found(name)
    return tenant


# -------------------------------------------------------------------------------------- reservations


def create_reservation(conn: Connection, sql: AdminStatements, reservation: Reservation) -> Reservation:
    """Insert with the next ``seq``; ``ConflictError`` (``reservation_exists``) when the id is taken."""
    seq = int(conn.execute(sql.bump_reservation_seq, {"n": 1}).scalar_one())
    try:
        conn.execute(sql.insert_reservation, codec.reservation_row(reservation, seq))
    except IntegrityError as exc:
        raise ConflictError(f"reservation {reservation.id!r} exists already", code="reservation_exists") from exc
    return replace(reservation, seq=seq)


def upsert_reservations(conn: Connection, sql: AdminStatements, items: list[Reservation]) -> None:
    """Update the stored ones by id (``seq`` and ``created_at`` kept), insert the others with new seqs.

    ``items`` must have distinct ids; sorted by id, concurrent writers lock shared rows in one order.
    """
    # A select, then an UPDATE and an INSERT: a new row needs its seq from the counter, which a portable
    # INSERT ... ON CONFLICT could not hand out to the inserted rows only.
    stored = set(conn.execute(sql.find_reservations, {"ids": [r.id for r in items]}).scalars())
    updates = [codec.reservation_update_params(r) for r in items if r.id in stored]
    fresh = [r for r in items if r.id not in stored]
    if updates:
        conn.execute(sql.update_reservation, updates)
    if fresh:
        last = int(conn.execute(sql.bump_reservation_seq, {"n": len(fresh)}).scalar_one())
        first = last - len(fresh) + 1
        conn.execute(sql.insert_reservation, [codec.reservation_row(r, first + i) for i, r in enumerate(fresh)])


def get_reservation(conn: Connection, sql: AdminStatements, reservation_id: str) -> Reservation | None:
    """One reservation, or ``None``."""
    row = conn.execute(sql.get_reservation, {"id": reservation_id}).first()
    return None if row is None else codec.reservation_from_row(row)


def list_reservations(conn: Connection, sql: AdminStatements, tenant: str | None, live_only: bool) -> list[Reservation]:
    """Reservations (of ``tenant`` if given; only pending and active ones if ``live_only``), by seq."""
    conditions: list[ColumnElement[bool]] = []
    if tenant is not None:
        conditions.append(reservations.c.tenant == tenant)
    if live_only:
        conditions.append(reservations.c.state.in_(_LIVE_RESERVATION_STATES))
    stmt = select(*sql.reservation_columns).where(*conditions).order_by(reservations.c.seq)
    return [codec.reservation_from_row(r) for r in conn.execute(stmt)]


def live_reservations(conn: Connection, sql: AdminStatements) -> list[Reservation]:
    """Pending and active reservations, by seq."""
    return [codec.reservation_from_row(r) for r in conn.execute(sql.live_reservations)]


# --------------------------------------------------------------------------------------------- usage


def usage(conn: Connection, sql: AdminStatements, start_us: int, end_us: int) -> list[UsageRow]:
    """Usage per (tenant, pool) over ``[start_us, end_us)`` (microseconds since the epoch); see ``usage_statement``."""
    rows = conn.execute(sql.usage, {"start": start_us, "end": end_us}).all()
    return [
        UsageRow(
            tenant=r.tenant,
            pool=r.pool,
            attempts=int(r.attempts),
            cpu_seconds=float(r.cpu_seconds),
            memory_byte_seconds=float(r.memory_byte_seconds),
            gpu_seconds=float(r.gpu_seconds),
            used_cpu_seconds=None if r.used_cpu_seconds is None else float(r.used_cpu_seconds),
            peak_memory=None if r.peak_memory is None else int(r.peak_memory),
        )
        for r in rows
    ]


def usage_statement() -> Select[Any]:
    """The usage query, with bind parameters ``start`` and ``end`` in microseconds (the window's bounds).

    An attempt counts when it started before ``end`` and is still running or finished after ``start``; one that
    never started counts nothing. An inner select clips each attempt to the window (seconds inside it); the outer
    one sums request times seconds in double precision (millicpu times microseconds overflows BIGINT within a
    day), per the task's tenant and pool. Measured CPU counts for attempts finished in ``(start, end]``: over
    consecutive windows each measurement lands in exactly one, the one holding the attempt's last instant.
    """
    lo = bindparam("start", type_=BigInteger)
    hi = bindparam("end", type_=BigInteger)
    # The raw microseconds: arithmetic on them must not go through UtcMicros' datetime conversion.
    began = type_coerce(attempts.c.started_at, BigInteger)
    ended = type_coerce(attempts.c.finished_at, BigInteger)
    clipped_start = case((began < lo, lo), else_=began)
    clipped_end = case((or_(ended.is_(None), ended > hi), hi), else_=ended)
    # Clamped at zero: an attempt whose recorded end precedes its start counts no time.
    seconds = case((clipped_end > clipped_start, cast(clipped_end - clipped_start, Float) / 1e6), else_=0.0)
    inside = (
        select(
            tasks.c.tenant,
            tasks.c.pool,
            cast(tasks.c.millicpu, Float).label("millicpu"),
            cast(tasks.c.memory, Float).label("memory"),
            cast(tasks.c.gpu, Float).label("gpu"),
            seconds.label("seconds"),
            case((ended <= hi, attempts.c.cpu_seconds)).label("used"),  # "ended > lo" holds already
            attempts.c.peak_memory,
        )
        .select_from(attempts.join(tasks, tasks.c.id == attempts.c.task_id))
        # A NULL started_at fails "began < hi". ix_attempts_finished_at serves the second condition.
        .where(began < hi, or_(ended.is_(None), ended > lo))
        .subquery("inside")
    )
    return (
        select(
            inside.c.tenant,
            inside.c.pool,
            func.count().label("attempts"),
            func.sum(inside.c.millicpu * inside.c.seconds / 1000.0).label("cpu_seconds"),
            func.sum(inside.c.memory * inside.c.seconds).label("memory_byte_seconds"),
            func.sum(inside.c.gpu * inside.c.seconds).label("gpu_seconds"),
            func.sum(inside.c.used).label("used_cpu_seconds"),
            func.max(inside.c.peak_memory).label("peak_memory"),
        )
        .group_by(inside.c.tenant, inside.c.pool)
        .order_by(inside.c.tenant, inside.c.pool)
    )
