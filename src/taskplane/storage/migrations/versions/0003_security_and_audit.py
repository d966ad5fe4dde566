"""API keys, custom roles, role bindings, the audit chain and its head; a host-access policy on tenants.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01 00:00:00

Migrations are frozen snapshots: spell out tables and columns here, never import storage/sql/tables.py.
Timestamps are BIGINT microseconds since the Unix epoch (UTC).

``tenants.policy`` is NULL for every existing tenant: the default policy (no host access). Task specs need no
change: the codec reads a spec without ``host`` or ``owner`` with their defaults. ``audit_head`` gets its one
row here (seq 0, the genesis hash), so the first appender already has a row to lock.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_MICROS = sa.BigInteger()
_GENESIS_HASH = "0" * 64


def upgrade() -> None:
    op.add_column("tenants", sa.Column("policy", sa.Text(), nullable=True))

    op.create_table(
        "api_keys",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("secret_hash", sa.String(), nullable=False),
        sa.Column("owner", sa.String(), nullable=False),
        sa.Column("tenant", sa.String(), nullable=False),
        sa.Column("roles", sa.Text(), nullable=False),
        sa.Column("created_at", _MICROS, nullable=False),
        sa.Column("created_by", sa.String(), nullable=False),
        sa.Column("expires_at", _MICROS, nullable=True),
        sa.Column("revoked_at", _MICROS, nullable=True),
        sa.Column("last_used_at", _MICROS, nullable=True),
        sa.Column("description", sa.Text(), nullable=False),
    )
    op.create_index("ix_api_keys_tenant", "api_keys", ["tenant"])

    op.create_table(
        "roles",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("rules", sa.Text(), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("created_at", _MICROS, nullable=False),
        sa.Column("created_by", sa.String(), nullable=False),
    )

    op.create_table(
        "role_bindings",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("subject", sa.String(), nullable=False),
        sa.Column("tenant", sa.String(), nullable=False),
        sa.Column("role", sa.String(64), nullable=False),
        sa.Column("created_at", _MICROS, nullable=False),
        sa.Column("created_by", sa.String(), nullable=False),
        sa.UniqueConstraint("subject", "tenant", "role", name="uq_role_bindings_subject_tenant_role"),
    )
    op.create_index("ix_role_bindings_subject", "role_bindings", ["subject"])
    op.create_index("ix_role_bindings_tenant", "role_bindings", ["tenant"])

    op.create_table(
        "audit_log",
        sa.Column("seq", sa.BigInteger(), primary_key=True, autoincrement=False),
        sa.Column("at", _MICROS, nullable=False),
        sa.Column("request_id", sa.String(), nullable=False),
        sa.Column("principal", sa.String(), nullable=False),
        sa.Column("tenant", sa.String(), nullable=True),
        sa.Column("action", sa.String(), nullable=False),
        sa.Column("resource", sa.Text(), nullable=False),
        sa.Column("outcome", sa.String(32), nullable=False),
        sa.Column("status", sa.Integer(), nullable=True),
        sa.Column("source", sa.String(), nullable=False),
        sa.Column("detail", sa.Text(), nullable=False),
        sa.Column("prev_hash", sa.String(64), nullable=False),
        sa.Column("hash", sa.String(64), nullable=False),
    )
    op.create_index("ix_audit_log_tenant_seq", "audit_log", ["tenant", "seq"])
    op.create_index("ix_audit_log_request_id", "audit_log", ["request_id"])
    op.create_index("ix_audit_log_principal_seq", "audit_log", ["principal", "seq"])

    head = op.create_table(
        "audit_head",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("hash", sa.String(64), nullable=False),
        sa.CheckConstraint("id = 1", name="ck_audit_head_single_row"),
    )
    op.bulk_insert(head, [{"id": 1, "seq": 0, "hash": _GENESIS_HASH}])

    meta = sa.table("meta", sa.column("key", sa.String()), sa.column("value", sa.BigInteger()))
    op.execute(meta.update().where(meta.c.key == "schema_generation").values(value=3))


def downgrade() -> None:
    meta = sa.table("meta", sa.column("key", sa.String()), sa.column("value", sa.BigInteger()))
    op.execute(meta.update().where(meta.c.key == "schema_generation").values(value=2))
    for table in ("audit_head", "audit_log", "role_bindings", "roles", "api_keys"):
        op.drop_table(table)
    # Plain ALTER TABLE ... DROP COLUMN (SQLite 3.35+): an unindexed column, so no table rebuild.
    op.drop_column("tenants", "policy")
