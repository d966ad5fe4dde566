"""The SQL schema as SQLAlchemy Core tables; Alembic migrations create it (``storage/migrations``).

Timestamps are stored as integer microseconds since the Unix epoch (UTC): portable, sortable and cheap on both
SQLite and PostgreSQL. Structured values (the task spec, pending reasons, event data) are JSON text.

    tasks 1---* task_labels      labels of a task, for label filters
    tasks 1---* attempts         one row per run, key (task_id, number)
    tasks 1---* task_events      the outbox, ordered by seq
    tenants                      quotas, weights, allowed pools and priorities, host-access policy (by name;
                                 tasks.tenant refers to it without a foreign key: the implicit ``default`` tenant
                                 has no row)
    reservations                 capacity held for a tenant, ordered by seq
    meta                         counters (task_seq, reservation_seq, epoch) and schema facts

    api_keys                     keys by id: a hash of the secret, owner, tenant, roles (JSON names)
    roles                        custom roles by name (built-in ones are code, never rows)
    role_bindings                (subject, tenant, role), unique; role names a built-in or a ``roles`` row
    audit_log                    the hash chain, by seq (handed out by the appender, not the database)
    audit_head                   one row: the chain's head (seq, hash), moved in every appending transaction;
                                 its row lock serializes appenders

    kv                           the state API's live entries, key (tenant, key); lease_id names a kv_leases row
    kv_history                   one row per changed key per revision (puts and tombstones), key
                                 (tenant, key, revision): watch events and reads at a past revision
    kv_leases                    leases by id: tenant, ttl, expiry; their keys are the kv rows naming them
    meta kv_revision             the store-wide revision (its row lock serializes state writers on PostgreSQL)
    meta kv_compacted            history up to this revision is compacted (the oldest readable is one more)

Keys, bindings and roles refer to each other by name without foreign keys (built-in roles have no row); the
store checks references inside its transactions (``storage/sql/security.py``). ``audit_head`` is a table of its
own rather than rows of ``meta`` because the head's hash is text; its one row exists from the migration on
(seq 0 and the genesis hash: no record yet), so appenders always have a row to lock.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    Dialect,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.types import TypeDecorator

from taskplane.errors import InvalidRequestError

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


def to_micros(value: datetime) -> int:
    """Microseconds since the Unix epoch of a timezone-aware datetime; naive datetimes are refused."""
    if value.tzinfo is None or value.utcoffset() is None:
        raise InvalidRequestError(
            f"naive datetime {value.isoformat()}: timestamps must be timezone-aware", code="naive_datetime"
        )
    try:
        value.astimezone(UTC)  # e.g. 9999-12-31T23:59:59-23:00 has no UTC form
    except OverflowError:
        raise InvalidRequestError(
            f"{value.isoformat()} is out of range: timestamps must fall in years 1-9999 in UTC", code="out_of_range"
        ) from None
    return (value - EPOCH) // _MICROSECOND


def from_micros(value: int) -> datetime:
    """The UTC datetime of a count of microseconds since the Unix epoch."""
    return EPOCH + timedelta(microseconds=value)


class UtcMicros(TypeDecorator[datetime]):
    """A timezone-aware UTC datetime stored as BIGINT microseconds since the epoch. Naive values are refused."""

    impl = BigInteger
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> int | None:
        """Python to database: aware datetime to microseconds."""
        return None if value is None else to_micros(value)

    def process_result_value(self, value: Any | None, dialect: Dialect) -> datetime | None:
        """Database to Python: microseconds to an aware UTC datetime."""
        return None if value is None else from_micros(int(value))


# SQLite only auto-increments an INTEGER PRIMARY KEY (the rowid); PostgreSQL gets a BIGSERIAL-like identity.
AutoBigInteger = BigInteger().with_variant(Integer(), "sqlite")

metadata = MetaData()

tasks = Table(
    "tasks",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("seq", BigInteger, nullable=False),
    Column("tenant", String, nullable=False),
    Column("state", String(16), nullable=False),
    Column("priority", Integer, nullable=False),
    Column("name", String, nullable=True),
    Column("idempotency_key", String, nullable=True),
    Column("request_hash", String, nullable=True),
    Column("spec", Text, nullable=False),
    Column("attempts", Integer, nullable=False),
    Column("infra_failures", Integer, nullable=False),
    Column("skipped_attempts", Integer, nullable=False, server_default="0"),
    Column("not_before", UtcMicros, nullable=True),
    Column("pending_reason", Text, nullable=True),
    Column("failure_class", String(16), nullable=True),
    Column("exit_code", Integer, nullable=True),
    Column("message", Text, nullable=True),
    Column("cancel_requested", Boolean, nullable=False),
    Column("created_at", UtcMicros, nullable=False),
    Column("updated_at", UtcMicros, nullable=False),
    Column("started_at", UtcMicros, nullable=True),
    Column("finished_at", UtcMicros, nullable=True),
    # Copies of spec fields (written once, at creation) so usage and listing filter and add up in SQL.
    Column("pool", String, nullable=False, server_default=text("'default'")),
    Column("millicpu", BigInteger, nullable=False, server_default=text("0")),
    Column("memory", BigInteger, nullable=False, server_default=text("0")),
    Column("gpu", BigInteger, nullable=False, server_default=text("0")),
    UniqueConstraint("seq", name="uq_tasks_seq"),
    # The idempotency decision: one task per (tenant, key), forever. NULL keys never collide.
    UniqueConstraint("tenant", "idempotency_key", name="uq_tasks_tenant_idempotency_key"),
    Index("ix_tasks_state_seq", "state", "seq"),
    Index("ix_tasks_tenant_seq", "tenant", "seq"),
    Index("ix_tasks_created_at", "created_at"),
    Index("ix_tasks_tenant_pool_seq", "tenant", "pool", "seq"),
)

task_labels = Table(
    "task_labels",
    metadata,
    Column("task_id", String(32), ForeignKey("tasks.id", ondelete="CASCADE"), nullable=False),
    Column("key", String, nullable=False),
    Column("value", String, nullable=False),
    PrimaryKeyConstraint("task_id", "key", name="pk_task_labels"),
    Index("ix_task_labels_key_value_task", "key", "value", "task_id"),
)

attempts = Table(
    "attempts",
    metadata,
    Column("task_id", String(32), ForeignKey("tasks.id", ondelete="CASCADE"), nullable=False),
    Column("number", Integer, nullable=False),
    Column("state", String(16), nullable=False),
    Column("node", String, nullable=False),
    Column("pid", Integer, nullable=True),
    Column("created_at", UtcMicros, nullable=False),
    Column("started_at", UtcMicros, nullable=True),
    Column("finished_at", UtcMicros, nullable=True),
    Column("exit_code", Integer, nullable=True),
    Column("signal", Integer, nullable=True),
    Column("failure_class", String(16), nullable=True),
    Column("message", Text, nullable=True),
    Column("peak_memory", BigInteger, nullable=True),
    Column("cpu_seconds", Float, nullable=True),
    Column("log_truncated", Boolean, nullable=False),
    PrimaryKeyConstraint("task_id", "number", name="pk_attempts"),
    Index("ix_attempts_state", "state"),
    # Usage windows select attempts still running (NULL) or finished after the window's start.
    Index("ix_attempts_finished_at", "finished_at"),
)

task_events = Table(
    "task_events",
    metadata,
    Column("seq", AutoBigInteger, primary_key=True, autoincrement=True),
    Column("task_id", String(32), ForeignKey("tasks.id", ondelete="CASCADE"), nullable=False),
    Column("at", UtcMicros, nullable=False),
    Column("type", String(32), nullable=False),
    Column("from_state", String(16), nullable=True),
    Column("to_state", String(16), nullable=True),
    Column("attempt", Integer, nullable=True),
    Column("data", Text, nullable=False),
    Index("ix_task_events_task_seq", "task_id", "seq"),
    sqlite_autoincrement=True,  # never reuse a seq, even after old events are pruned
)

tenants = Table(
    "tenants",
    metadata,
    Column("name", String, primary_key=True),
    # Quota: NULL means unlimited for that quantity.
    Column("millicpu", BigInteger, nullable=True),
    Column("memory", BigInteger, nullable=True),
    Column("gpu", BigInteger, nullable=True),
    Column("max_running", Integer, nullable=True),
    Column("max_pending", Integer, nullable=True),
    Column("weight", Float, nullable=False),
    Column("pools", Text, nullable=True),  # JSON list of allowed pools; NULL = every pool
    Column("priority_min", Integer, nullable=False),
    Column("priority_max", Integer, nullable=False),
    Column("borrowing", Boolean, nullable=False),
    Column("created_at", UtcMicros, nullable=False),
    Column("updated_at", UtcMicros, nullable=False),
    Column("policy", Text, nullable=True),  # JSON of the TenantPolicy fields; NULL = the default policy
)

reservations = Table(
    "reservations",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("seq", BigInteger, nullable=False),
    Column("tenant", String, nullable=False),
    Column("pool", String, nullable=False),
    Column("resources", Text, nullable=False),  # JSON: one slot's resources
    Column("count", Integer, nullable=False),
    Column("state", String(16), nullable=False),
    Column("priority", Integer, nullable=False),
    Column("duration", Float, nullable=True),
    Column("expires_at", UtcMicros, nullable=True),
    Column("activated_at", UtcMicros, nullable=True),
    Column("ended_at", UtcMicros, nullable=True),
    Column("created_at", UtcMicros, nullable=False),
    Column("updated_at", UtcMicros, nullable=False),
    Column("nodes", Text, nullable=False),  # JSON list: the node of each slot once active
    Column("message", Text, nullable=True),
    UniqueConstraint("seq", name="uq_reservations_seq"),
    Index("ix_reservations_state_seq", "state", "seq"),
    Index("ix_reservations_tenant_seq", "tenant", "seq"),
)

api_keys = Table(
    "api_keys",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("secret_hash", String, nullable=False),
    Column("owner", String, nullable=False),
    Column("tenant", String, nullable=False),  # "*" for a platform-wide key
    Column("roles", Text, nullable=False),  # JSON list of role names
    Column("created_at", UtcMicros, nullable=False),
    Column("created_by", String, nullable=False),
    Column("expires_at", UtcMicros, nullable=True),
    Column("revoked_at", UtcMicros, nullable=True),
    Column("last_used_at", UtcMicros, nullable=True),
    Column("description", Text, nullable=False),
    Index("ix_api_keys_tenant", "tenant"),
)

roles = Table(
    "roles",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("rules", Text, nullable=False),  # JSON list of [verb, resource] pairs
    Column("description", Text, nullable=False),
    Column("created_at", UtcMicros, nullable=False),
    Column("created_by", String, nullable=False),
)

role_bindings = Table(
    "role_bindings",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("subject", String, nullable=False),
    Column("tenant", String, nullable=False),  # "*": every tenant and the platform
    Column("role", String(64), nullable=False),
    Column("created_at", UtcMicros, nullable=False),
    Column("created_by", String, nullable=False),
    UniqueConstraint("subject", "tenant", "role", name="uq_role_bindings_subject_tenant_role"),
    Index("ix_role_bindings_subject", "subject"),
    Index("ix_role_bindings_tenant", "tenant"),
)

audit_log = Table(
    "audit_log",
    metadata,
    # Assigned by the appender from audit_head, never by the database: the chain hashes it.
    Column("seq", BigInteger, primary_key=True, autoincrement=False),
    Column("at", UtcMicros, nullable=False),
    Column("request_id", String, nullable=False),
    Column("principal", String, nullable=False),
    Column("tenant", String, nullable=True),  # NULL: a platform-level record
    Column("action", String, nullable=False),
    Column("resource", Text, nullable=False),
    Column("outcome", String(32), nullable=False),
    Column("status", Integer, nullable=True),
    Column("source", String, nullable=False),
    Column("detail", Text, nullable=False),  # JSON object
    Column("prev_hash", String(64), nullable=False),
    Column("hash", String(64), nullable=False),
    Index("ix_audit_log_tenant_seq", "tenant", "seq"),
    Index("ix_audit_log_request_id", "request_id"),
    Index("ix_audit_log_principal_seq", "principal", "seq"),
)

audit_head = Table(
    "audit_head",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("seq", BigInteger, nullable=False),  # 0 before the first record
    Column("hash", String(64), nullable=False),
    CheckConstraint("id = 1", name="ck_audit_head_single_row"),
)

AUDIT_HEAD_ID = 1
"""The id of the one ``audit_head`` row."""

meta = Table(
    "meta",
    metadata,
    Column("key", String(64), primary_key=True),
    Column("value", BigInteger, nullable=False),
)

META_TASK_SEQ = "task_seq"
"""The last ``tasks.seq`` handed out."""

META_RESERVATION_SEQ = "reservation_seq"
"""The last ``reservations.seq`` handed out."""

META_EPOCH = "epoch"
"""The server epoch, a fencing token bumped by every server start."""

META_SCHEMA_GENERATION = "schema_generation"
"""The schema generation the data was written with (the number of the migration that last changed it)."""


# ---------------------------------------------------------------------------------------------- state

# Keys sort by code point on both databases (so ranges and pages agree with Python): SQLite's default BINARY
# collation compares UTF-8 bytes; PostgreSQL needs the "C" collation for the same order.
KeyString = String().with_variant(String(collation="C"), "postgresql")

kv = Table(
    "kv",
    metadata,
    Column("tenant", String, nullable=False),
    Column("key", KeyString, nullable=False),
    Column("value", Text, nullable=False),  # JSON
    Column("create_revision", BigInteger, nullable=False),
    Column("mod_revision", BigInteger, nullable=False),
    Column("version", BigInteger, nullable=False),
    Column("lease_id", BigInteger, nullable=True),
    PrimaryKeyConstraint("tenant", "key", name="pk_kv"),
    Index("ix_kv_lease_id", "lease_id"),
)

kv_history = Table(
    "kv_history",
    metadata,
    Column("tenant", String, nullable=False),
    Column("key", KeyString, nullable=False),
    Column("revision", BigInteger, nullable=False),  # the row's mod_revision (a put) or tombstone (a delete)
    Column("type", String(8), nullable=False),  # put | delete
    Column("value", Text, nullable=True),  # JSON of a put; NULL for a delete
    Column("create_revision", BigInteger, nullable=False),  # 0 for a delete
    Column("version", BigInteger, nullable=False),  # 0 for a delete
    Column("lease_id", BigInteger, nullable=True),
    Column("cause", String(32), nullable=False),  # "" for a request, "lease_expired" for an expiry
    PrimaryKeyConstraint("tenant", "key", "revision", name="pk_kv_history"),
    Index("ix_kv_history_tenant_revision", "tenant", "revision"),
)

kv_leases = Table(
    "kv_leases",
    metadata,
    Column("id", AutoBigInteger, primary_key=True, autoincrement=True),
    Column("tenant", String, nullable=False),
    Column("ttl", Float, nullable=False),
    Column("expires_at", UtcMicros, nullable=False),
    Index("ix_kv_leases_expires_at", "expires_at"),
    sqlite_autoincrement=True,  # never reuse a lease id: an old holder must not renew someone else's lease
)

META_KV_REVISION = "kv_revision"
"""The state store's current revision (0 before the first write)."""

META_KV_COMPACTED = "kv_compacted"
"""The state store's compacted revision: history up to it is gone (0: nothing compacted)."""
