"""Tenants, reservations, and pool and resource columns on tasks.

Revision ID: 0002
Revises: 0001
Create Date: 2025-06-01 00:00:00

Migrations are frozen snapshots: spell out tables and columns here, never import storage/sql/tables.py.
Timestamps are BIGINT microseconds since the Unix epoch (UTC).

``tasks`` gains ``pool`` (every existing task ran in ``default``: specs had no pool before) and copies of the
requested ``millicpu``/``memory``/``gpu``, backfilled here from the spec JSON, so usage is added up in SQL.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_MICROS = sa.BigInteger()
_RESOURCES = ("millicpu", "memory", "gpu")

# Backfill of the resource copies from the spec JSON, in the database (one statement, no rows through Python).
# A spec without a key (or without "resources") requested zero, like the codec's default.
_BACKFILL = {
    "postgresql": """
        UPDATE tasks SET
            millicpu = COALESCE((spec::jsonb -> 'resources' ->> 'millicpu')::bigint, 0),
            memory = COALESCE((spec::jsonb -> 'resources' ->> 'memory')::bigint, 0),
            gpu = COALESCE((spec::jsonb -> 'resources' ->> 'gpu')::bigint, 0)
    """,
    "sqlite": """
        UPDATE tasks SET
            millicpu = COALESCE(CAST(json_extract(spec, '$.resources.millicpu') AS INTEGER), 0),
            memory = COALESCE(CAST(json_extract(spec, '$.resources.memory') AS INTEGER), 0),
            gpu = COALESCE(CAST(json_extract(spec, '$.resources.gpu') AS INTEGER), 0)
    """,
}


def upgrade() -> None:
    # SQLite adds a NOT NULL column in place when it has a default; no table rebuild.
    op.add_column("tasks", sa.Column("pool", sa.String(), nullable=False, server_default=sa.text("'default'")))
    for name in _RESOURCES:
        op.add_column("tasks", sa.Column(name, sa.BigInteger(), nullable=False, server_default=sa.text("0")))
    # Attempt numbers a task skipped (a launch taken back from a node's queue uses up its number): they are not
    # runs, so they must not count against the user's max_attempts.
    op.add_column("tasks", sa.Column("skipped_attempts", sa.Integer(), nullable=False, server_default=sa.text("0")))
    op.execute(sa.text(_BACKFILL[op.get_bind().dialect.name]))
    op.create_index("ix_tasks_tenant_pool_seq", "tasks", ["tenant", "pool", "seq"])
    op.create_index("ix_attempts_finished_at", "attempts", ["finished_at"])

    op.create_table(
        "tenants",
        sa.Column("name", sa.String(), primary_key=True),
        sa.Column("millicpu", sa.BigInteger(), nullable=True),
        sa.Column("memory", sa.BigInteger(), nullable=True),
        sa.Column("gpu", sa.BigInteger(), nullable=True),
        sa.Column("max_running", sa.Integer(), nullable=True),
        sa.Column("max_pending", sa.Integer(), nullable=True),
        sa.Column("weight", sa.Float(), nullable=False),
        sa.Column("pools", sa.Text(), nullable=True),
        sa.Column("priority_min", sa.Integer(), nullable=False),
        sa.Column("priority_max", sa.Integer(), nullable=False),
        sa.Column("borrowing", sa.Boolean(), nullable=False),
        sa.Column("created_at", _MICROS, nullable=False),
        sa.Column("updated_at", _MICROS, nullable=False),
    )

    op.create_table(
        "reservations",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("tenant", sa.String(), nullable=False),
        sa.Column("pool", sa.String(), nullable=False),
        sa.Column("resources", sa.Text(), nullable=False),
        sa.Column("count", sa.Integer(), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("priority", sa.Integer(), nullable=False),
        sa.Column("duration", sa.Float(), nullable=True),
        sa.Column("expires_at", _MICROS, nullable=True),
        sa.Column("activated_at", _MICROS, nullable=True),
        sa.Column("ended_at", _MICROS, nullable=True),
        sa.Column("created_at", _MICROS, nullable=False),
        sa.Column("updated_at", _MICROS, nullable=False),
        sa.Column("nodes", sa.Text(), nullable=False),
        sa.Column("message", sa.Text(), nullable=True),
        sa.UniqueConstraint("seq", name="uq_reservations_seq"),
    )
    op.create_index("ix_reservations_state_seq", "reservations", ["state", "seq"])
    op.create_index("ix_reservations_tenant_seq", "reservations", ["tenant", "seq"])

    meta = sa.table("meta", sa.column("key", sa.String()), sa.column("value", sa.BigInteger()))
    op.bulk_insert(meta, [{"key": "reservation_seq", "value": 0}])
    op.execute(meta.update().where(meta.c.key == "schema_generation").values(value=2))


def downgrade() -> None:
    meta = sa.table("meta", sa.column("key", sa.String()), sa.column("value", sa.BigInteger()))
    op.execute(meta.update().where(meta.c.key == "schema_generation").values(value=1))
    op.execute(meta.delete().where(meta.c.key == "reservation_seq"))
    op.drop_table("reservations")
    op.drop_table("tenants")
    op.drop_index("ix_attempts_finished_at", table_name="attempts")
    op.drop_index("ix_tasks_tenant_pool_seq", table_name="tasks")
    # Plain ALTER TABLE ... DROP COLUMN (SQLite 3.35+): unindexed columns, so no table rebuild and no cascade.
    for name in ("skipped_attempts", "gpu", "memory", "millicpu", "pool"):
        op.drop_column("tasks", name)
