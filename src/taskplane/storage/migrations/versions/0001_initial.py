"""Initial schema: tasks, task_labels, attempts, task_events (the outbox), meta.

Revision ID: 0001
Revises:
Create Date: 2025-01-01 00:00:00

Migrations are frozen snapshots: spell out tables and columns here, never import storage/sql/tables.py.
Timestamps are BIGINT microseconds since the Unix epoch (UTC).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_MICROS = sa.BigInteger()


def upgrade() -> None:
    op.create_table(
        "tasks",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("tenant", sa.String(), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("priority", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(), nullable=True),
        sa.Column("idempotency_key", sa.String(), nullable=True),
        sa.Column("request_hash", sa.String(), nullable=True),
        sa.Column("spec", sa.Text(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("infra_failures", sa.Integer(), nullable=False),
        sa.Column("not_before", _MICROS, nullable=True),
        sa.Column("pending_reason", sa.Text(), nullable=True),
        sa.Column("failure_class", sa.String(16), nullable=True),
        sa.Column("exit_code", sa.Integer(), nullable=True),
        sa.Column("message", sa.Text(), nullable=True),
        sa.Column("cancel_requested", sa.Boolean(), nullable=False),
        sa.Column("created_at", _MICROS, nullable=False),
        sa.Column("updated_at", _MICROS, nullable=False),
        sa.Column("started_at", _MICROS, nullable=True),
        sa.Column("finished_at", _MICROS, nullable=True),
        sa.UniqueConstraint("seq", name="uq_tasks_seq"),
        sa.UniqueConstraint("tenant", "idempotency_key", name="uq_tasks_tenant_idempotency_key"),
    )
    op.create_index("ix_tasks_state_seq", "tasks", ["state", "seq"])
    op.create_index("ix_tasks_tenant_seq", "tasks", ["tenant", "seq"])
    op.create_index("ix_tasks_created_at", "tasks", ["created_at"])

    op.create_table(
        "task_labels",
        sa.Column("task_id", sa.String(32), sa.ForeignKey("tasks.id", ondelete="CASCADE"), nullable=False),
        sa.Column("key", sa.String(), nullable=False),
        sa.Column("value", sa.String(), nullable=False),
        sa.PrimaryKeyConstraint("task_id", "key", name="pk_task_labels"),
    )
    op.create_index("ix_task_labels_key_value_task", "task_labels", ["key", "value", "task_id"])

    op.create_table(
        "attempts",
        sa.Column("task_id", sa.String(32), sa.ForeignKey("tasks.id", ondelete="CASCADE"), nullable=False),
        sa.Column("number", sa.Integer(), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("node", sa.String(), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=True),
        sa.Column("created_at", _MICROS, nullable=False),
        sa.Column("started_at", _MICROS, nullable=True),
        sa.Column("finished_at", _MICROS, nullable=True),
        sa.Column("exit_code", sa.Integer(), nullable=True),
        sa.Column("signal", sa.Integer(), nullable=True),
        sa.Column("failure_class", sa.String(16), nullable=True),
        sa.Column("message", sa.Text(), nullable=True),
        sa.Column("peak_memory", sa.BigInteger(), nullable=True),
        sa.Column("cpu_seconds", sa.Float(), nullable=True),
        sa.Column("log_truncated", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("task_id", "number", name="pk_attempts"),
    )
    op.create_index("ix_attempts_state", "attempts", ["state"])

    op.create_table(
        "task_events",
        sa.Column("seq", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True, autoincrement=True),
        sa.Column("task_id", sa.String(32), sa.ForeignKey("tasks.id", ondelete="CASCADE"), nullable=False),
        sa.Column("at", _MICROS, nullable=False),
        sa.Column("type", sa.String(32), nullable=False),
        sa.Column("from_state", sa.String(16), nullable=True),
        sa.Column("to_state", sa.String(16), nullable=True),
        sa.Column("attempt", sa.Integer(), nullable=True),
        sa.Column("data", sa.Text(), nullable=False),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_task_events_task_seq", "task_events", ["task_id", "seq"])

    meta = op.create_table(
        "meta",
        sa.Column("key", sa.String(64), primary_key=True),
        sa.Column("value", sa.BigInteger(), nullable=False),
    )
    op.bulk_insert(
        meta,
        [
            {"key": "task_seq", "value": 0},
            {"key": "epoch", "value": 0},
            {"key": "schema_generation", "value": 1},
        ],
    )


def downgrade() -> None:
    for table in ("meta", "task_events", "attempts", "task_labels", "tasks"):
        op.drop_table(table)
