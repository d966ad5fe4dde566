"""The state API: live entries (kv), their history (kv_history), leases (kv_leases), revision counters in meta.

Revision ID: 0004
Revises: 0003
Create Date: 2027-01-01 00:00:00

Migrations are frozen snapshots: spell out tables and columns here, never import storage/sql/tables.py.
Timestamps are BIGINT microseconds since the Unix epoch (UTC). Keys use the "C" collation on PostgreSQL so
they sort by code point, as SQLite's BINARY collation (and Python) do. ``meta`` gets ``kv_revision`` (the
store-wide revision, 0: no write yet) and ``kv_compacted`` (0: nothing compacted).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_MICROS = sa.BigInteger()
_KEY = sa.String().with_variant(sa.String(collation="C"), "postgresql")
_META_KEYS = ("kv_revision", "kv_compacted")


def upgrade() -> None:
    op.create_table(
        "kv",
        sa.Column("tenant", sa.String(), nullable=False),
        sa.Column("key", _KEY, nullable=False),
        sa.Column("value", sa.Text(), nullable=False),
        sa.Column("create_revision", sa.BigInteger(), nullable=False),
        sa.Column("mod_revision", sa.BigInteger(), nullable=False),
        sa.Column("version", sa.BigInteger(), nullable=False),
        sa.Column("lease_id", sa.BigInteger(), nullable=True),
        sa.PrimaryKeyConstraint("tenant", "key", name="pk_kv"),
    )
    op.create_index("ix_kv_lease_id", "kv", ["lease_id"])

    op.create_table(
        "kv_history",
        sa.Column("tenant", sa.String(), nullable=False),
        sa.Column("key", _KEY, nullable=False),
        sa.Column("revision", sa.BigInteger(), nullable=False),
        sa.Column("type", sa.String(8), nullable=False),
        sa.Column("value", sa.Text(), nullable=True),
        sa.Column("create_revision", sa.BigInteger(), nullable=False),
        sa.Column("version", sa.BigInteger(), nullable=False),
        sa.Column("lease_id", sa.BigInteger(), nullable=True),
        sa.Column("cause", sa.String(32), nullable=False),
        sa.PrimaryKeyConstraint("tenant", "key", "revision", name="pk_kv_history"),
    )
    op.create_index("ix_kv_history_tenant_revision", "kv_history", ["tenant", "revision"])

    op.create_table(
        "kv_leases",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True, autoincrement=True),
        sa.Column("tenant", sa.String(), nullable=False),
        sa.Column("ttl", sa.Float(), nullable=False),
        sa.Column("expires_at", _MICROS, nullable=False),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_kv_leases_expires_at", "kv_leases", ["expires_at"])

    meta = sa.table("meta", sa.column("key", sa.String()), sa.column("value", sa.BigInteger()))
    op.bulk_insert(meta, [{"key": key, "value": 0} for key in _META_KEYS])
    op.execute(meta.update().where(meta.c.key == "schema_generation").values(value=4))


def downgrade() -> None:
    meta = sa.table("meta", sa.column("key", sa.String()), sa.column("value", sa.BigInteger()))
    op.execute(meta.update().where(meta.c.key == "schema_generation").values(value=3))
    op.execute(meta.delete().where(meta.c.key.in_(_META_KEYS)))
    for table in ("kv_leases", "kv_history", "kv"):
        op.drop_table(table)
