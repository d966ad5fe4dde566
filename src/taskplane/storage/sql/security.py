"""The ``SecurityStore`` half of ``SqlTaskStore``: the SQL of API keys, custom roles, bindings and the audit chain.

Each function is the body of one transaction, as in ``admin.py``: ``SqlTaskStore`` opens it (on its worker
threads, inside ``translated``) and hands over the connection. Nothing here commits or picks a thread.

    SqlTaskStore.create_binding --> _write("create a role binding", conn -> security.create_binding(conn, sql, b)
                                                                             then append_audit(conn, sql, [entry]))

The audit chain. Every transaction that writes a record calls ``append_audit`` as its *last* statement:

    SELECT seq, hash FROM audit_head FOR UPDATE     the one head row; PostgreSQL holds its lock until commit
    compute_chain(seq, hash, entries)               domain.audit: seq + 1, ..., each hash over the previous
    INSERT INTO audit_log ...; UPDATE audit_head    the new head is the last record

The head lock serializes appenders, so records commit in ``seq`` order (a reader paging by ``after_seq`` never
skips one committed later) and the chain has no gap or fork. Taken last, after every row lock the mutation
needed, it is held for the shortest time and never waited on while holding it (no lock-order deadlock with
the counters or rows a mutation locks first). SQLite begins writes ``IMMEDIATE`` (one writer at a time) and
drops ``FOR UPDATE``.

References by name. Keys and bindings name roles that are built in (code) or rows of ``roles``; no foreign key
can say that. A custom role's row is locked ``FOR SHARE`` by whoever creates a key or binding naming it, and
``FOR UPDATE`` by ``delete_role`` before it looks for users: a role is never deleted while a new user of it
commits, and nothing is bound to a role that is gone (it would come back to life with a new role of that name).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime

import orjson
from sqlalchemy import Connection, bindparam, delete, exists, literal, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.sql import ColumnElement

from taskplane.domain.access import BUILTIN_ROLES, ApiKey, RoleBinding, StoredRole
from taskplane.domain.audit import AuditEntry, AuditRecord, Checkpoint, compute_chain
from taskplane.errors import ConflictError, InternalError, NotFoundError
from taskplane.services.ports import AuditFilter
from taskplane.storage.sql import codec
from taskplane.storage.sql.tables import AUDIT_HEAD_ID, api_keys, audit_head, audit_log, role_bindings, roles

_LIKE_ESCAPE = "/"


def _like_literal(text: str) -> str:
    """``text`` matched literally by LIKE with ``ESCAPE '/'``."""
    return text.replace("/", "//").replace("%", "/%").replace("_", "/_")


class SecurityStatements:
    """Statements built once; SQLAlchemy's compiled cache then skips compiling them again."""

    def __init__(self) -> None:
        key_cols = [api_keys.c[name] for name in codec.API_KEY_FIELDS]
        self.api_key_columns = key_cols
        self.insert_api_key = api_keys.insert()
        self.get_api_key = select(*key_cols).where(api_keys.c.id == bindparam("id"))
        self.revoke_api_key = (
            update(api_keys)
            .where(api_keys.c.id == bindparam("b_id"), api_keys.c.revoked_at.is_(None))
            .values(revoked_at=bindparam("b_at"))
        )
        self.touch_api_key = (
            update(api_keys)
            .where(
                api_keys.c.id == bindparam("b_id"),
                or_(api_keys.c.last_used_at.is_(None), api_keys.c.last_used_at < bindparam("b_at")),
            )
            .values(last_used_at=bindparam("b_at"))
        )
        self.any_api_key = select(literal(1)).select_from(api_keys).limit(1)
        # Candidates only: LIKE on the JSON text, then the exact check on the decoded names (see delete_role).
        self.keys_naming_role = select(api_keys.c.roles).where(
            api_keys.c.revoked_at.is_(None), api_keys.c.roles.like(bindparam("pattern"), escape=_LIKE_ESCAPE)
        )

        role_cols = [roles.c[name] for name in codec.ROLE_FIELDS]
        self.insert_role = roles.insert()
        self.get_role = select(*role_cols).where(roles.c.name == bindparam("name"))
        self.list_roles = select(*role_cols).order_by(roles.c.name)
        self.lock_role = select(roles.c.name).where(roles.c.name == bindparam("name")).with_for_update()
        self.share_roles = (
            select(roles.c.name)
            .where(roles.c.name.in_(bindparam("names", expanding=True)))
            .order_by(roles.c.name)
            .with_for_update(read=True)
        )
        self.delete_role = delete(roles).where(roles.c.name == bindparam("name"))
        self.role_bound = select(exists(select(literal(1)).where(role_bindings.c.role == bindparam("name"))))

        binding_cols = [role_bindings.c[name] for name in codec.BINDING_FIELDS]
        self.binding_columns = binding_cols
        self.insert_binding = role_bindings.insert()
        self.delete_binding = (
            delete(role_bindings).where(role_bindings.c.id == bindparam("id")).returning(*binding_cols)
        )

        self.audit_columns = [audit_log.c[name] for name in codec.AUDIT_FIELDS]
        self.lock_audit_head = (
            select(audit_head.c.seq, audit_head.c.hash).where(audit_head.c.id == AUDIT_HEAD_ID).with_for_update()
        )
        self.read_audit_head = select(audit_head.c.seq, audit_head.c.hash).where(audit_head.c.id == AUDIT_HEAD_ID)
        self.insert_audit = audit_log.insert()
        # Without .values(): the SET clause is the names of the parameter dict (seq, hash).
        self.move_audit_head = update(audit_head).where(audit_head.c.id == AUDIT_HEAD_ID)
        # Moves the head only from the expected (seq, hash): a guess that is right saves the locking read.
        self.advance_audit_head = (
            update(audit_head)
            .where(
                audit_head.c.id == AUDIT_HEAD_ID,
                audit_head.c.seq == bindparam("old_seq"),
                audit_head.c.hash == bindparam("old_hash"),
            )
            .values(seq=bindparam("new_seq"), hash=bindparam("new_hash"))
        )
        # The head this process last wrote: a guess only (another writer, or a rolled-back commit, makes it
        # stale, and the conditional update above then falls back to the locking read).
        self.head_guess: tuple[int, str] | None = None


# ------------------------------------------------------------------------------------------ api keys


def create_api_key(conn: Connection, sql: SecurityStatements, key: ApiKey) -> ApiKey:
    """Insert; ``ConflictError`` (``token_exists``) when the id is taken, ``NotFoundError`` for an unknown role."""
    _share_roles(conn, sql, key.roles)
    try:
        conn.execute(sql.insert_api_key, codec.api_key_row(key))
    except IntegrityError as exc:
        raise ConflictError(f"API key {key.id!r} exists already", code="token_exists") from exc
    return key


def get_api_key(conn: Connection, sql: SecurityStatements, key_id: str) -> ApiKey | None:
    """One key (revoked and expired ones included), or ``None``."""
    row = conn.execute(sql.get_api_key, {"id": key_id}).first()
    return None if row is None else codec.api_key_from_row(row)


def list_api_keys(conn: Connection, sql: SecurityStatements, tenants: frozenset[str] | None) -> list[ApiKey]:
    """Keys, oldest first (by ``created_at``, then id); only those of ``tenants`` when given."""
    if tenants is not None and not tenants:
        return []
    stmt = select(*sql.api_key_columns).order_by(api_keys.c.created_at, api_keys.c.id)
    if tenants is not None:
        stmt = stmt.where(api_keys.c.tenant.in_(sorted(tenants)))
    return [codec.api_key_from_row(r) for r in conn.execute(stmt)]


def revoke_api_key(conn: Connection, sql: SecurityStatements, key_id: str, at: datetime) -> ApiKey | None:
    """Set ``revoked_at`` unless set already (the first revocation is kept); ``None`` when there is no such key."""
    conn.execute(sql.revoke_api_key, {"b_id": key_id, "b_at": at})
    return get_api_key(conn, sql, key_id)


def touch_api_keys(conn: Connection, sql: SecurityStatements, used: Mapping[str, datetime]) -> None:
    """Move ``last_used_at`` forward (never back) for the given keys; unknown ids are ignored."""
    # In id order, so two concurrent touches lock shared rows in one order.
    params = [{"b_id": key_id, "b_at": used[key_id]} for key_id in sorted(used)]
    if params:
        conn.execute(sql.touch_api_key, params)


def has_api_keys(conn: Connection, sql: SecurityStatements) -> bool:
    """True when any key is stored (keys are revoked, never deleted: once created, always True)."""
    return conn.execute(sql.any_api_key).first() is not None


# --------------------------------------------------------------------------------------------- roles


def create_role(conn: Connection, sql: SecurityStatements, role: StoredRole) -> StoredRole:
    """Insert; ``ConflictError`` (``role_exists``) when the name is taken."""
    try:
        conn.execute(sql.insert_role, codec.role_row(role))
    except IntegrityError as exc:
        raise ConflictError(f"role {role.role.name!r} exists already", code="role_exists") from exc
    return role


def get_role(conn: Connection, sql: SecurityStatements, name: str) -> StoredRole | None:
    """One custom role, or ``None``."""
    row = conn.execute(sql.get_role, {"name": name}).first()
    return None if row is None else codec.role_from_row(row)


def list_roles(conn: Connection, sql: SecurityStatements) -> list[StoredRole]:
    """Every custom role, by name."""
    return [codec.role_from_row(r) for r in conn.execute(sql.list_roles)]


def delete_role(conn: Connection, sql: SecurityStatements, name: str) -> None:
    """Delete an unused custom role.

    ``NotFoundError`` (``role_not_found``) when there is no such row; ``ConflictError`` (``role_in_use``) while a
    binding or a key that is not revoked names it.
    """
    # The row lock waits for creators of keys and bindings naming the role (they hold it FOR SHARE) to commit,
    # and keeps new ones out until this transaction ends: the checks below see every user.
    if conn.execute(sql.lock_role, {"name": name}).first() is None:
        raise role_not_found(name)
    if conn.execute(sql.role_bound, {"name": name}).scalar_one():
        raise role_in_use(name, "a role binding")
    # LIKE finds the keys whose JSON text holds the quoted name; decoding makes the match exact.
    pattern = f"%{_like_literal(orjson.dumps(name).decode())}%"
    for (names,) in conn.execute(sql.keys_naming_role, {"pattern": pattern}):
        if name in codec.roles_from_json(names):
            raise role_in_use(name, "an API key that is not revoked")
    conn.execute(sql.delete_role, {"name": name})


def role_not_found(name: str) -> NotFoundError:
    """The error for a role that is neither built in nor stored."""
    return NotFoundError(f"no role {name!r}", code="role_not_found")


def role_in_use(name: str, user: str) -> ConflictError:
    """The error for deleting a role something still refers to."""
    return ConflictError(f"role {name!r} is still used by {user}", code="role_in_use")


def _share_roles(conn: Connection, sql: SecurityStatements, names: Iterable[str]) -> None:
    """Lock the rows of the custom roles among ``names`` FOR SHARE; ``NotFoundError`` for a name with no role."""
    custom = sorted({name for name in names if name not in BUILTIN_ROLES})
    if not custom:
        return
    found = set(conn.execute(sql.share_roles, {"names": custom}).scalars())
    for name in custom:
        if name not in found:
            raise role_not_found(name)


# ------------------------------------------------------------------------------------------ bindings


def create_binding(conn: Connection, sql: SecurityStatements, binding: RoleBinding) -> RoleBinding:
    """Insert; ``ConflictError`` (``binding_exists``) when ``(subject, tenant, role)`` is bound or the id taken.

    ``NotFoundError`` (``role_not_found``) when the role is neither built in nor stored.
    """
    _share_roles(conn, sql, (binding.role,))
    try:
        # The unique constraint decides, inside the transaction: no check-then-insert race.
        conn.execute(sql.insert_binding, codec.binding_row(binding))
    except IntegrityError as exc:
        raise ConflictError(
            f"{binding.subject!r} is bound to {binding.role!r} in {binding.tenant!r} already", code="binding_exists"
        ) from exc
    return binding


def list_bindings(
    conn: Connection, sql: SecurityStatements, subject: str | None, tenants: frozenset[str] | None
) -> list[RoleBinding]:
    """Bindings, oldest first (by ``created_at``, then id), of ``subject`` and in ``tenants`` when given."""
    if tenants is not None and not tenants:
        return []
    conditions: list[ColumnElement[bool]] = []
    if subject is not None:
        conditions.append(role_bindings.c.subject == subject)
    if tenants is not None:
        conditions.append(role_bindings.c.tenant.in_(sorted(tenants)))
    stmt = select(*sql.binding_columns).where(*conditions).order_by(role_bindings.c.created_at, role_bindings.c.id)
    return [codec.binding_from_row(r) for r in conn.execute(stmt)]


def delete_binding(conn: Connection, sql: SecurityStatements, binding_id: str) -> RoleBinding | None:
    """Delete and return the row; ``None`` when there is no such binding."""
    row = conn.execute(sql.delete_binding, {"id": binding_id}).first()
    return None if row is None else codec.binding_from_row(row)


# --------------------------------------------------------------------------------------------- audit


def append_audit(conn: Connection, sql: SecurityStatements, entries: Sequence[AuditEntry]) -> list[AuditRecord]:
    """Chain ``entries`` after the head and move the head. Call it last in its transaction (module docstring)."""
    if not entries:
        return []
    records: list[AuditRecord] | None = None
    guess = sql.head_guess
    if guess is not None:
        records = compute_chain(guess[0], guess[1], entries)
        moved = conn.execute(
            sql.advance_audit_head,
            {"old_seq": guess[0], "old_hash": guess[1], "new_seq": records[-1].seq, "new_hash": records[-1].hash},
        ).rowcount
        if moved != 1:
            records = None
    if records is None:
        head = conn.execute(sql.lock_audit_head).first()
        if head is None:
            # Migration 0003 writes the row and nothing deletes it: without it the chain cannot be trusted.
            raise InternalError("the audit_head row is missing: the audit chain cannot be extended")
        records = compute_chain(int(head.seq), head.hash, entries)
        conn.execute(sql.move_audit_head, {"seq": records[-1].seq, "hash": records[-1].hash})
    conn.execute(sql.insert_audit, [codec.audit_row(r) for r in records])
    sql.head_guess = (records[-1].seq, records[-1].hash)
    return records


def list_audit(
    conn: Connection, sql: SecurityStatements, filt: AuditFilter, limit: int, after_seq: int
) -> list[AuditRecord]:
    """Records with ``seq > after_seq`` matching ``filt``, by seq, ``limit`` at most.

    ``tenants``: ``None`` for every record, else records of those tenants only (platform records, whose tenant
    is NULL, never match a set). ``action`` is exact, or a prefix when it ends with ``"."``. ``since`` is
    inclusive and ``until`` exclusive, on ``at``.
    """
    if filt.tenants is not None and not filt.tenants:
        return []
    conditions: list[ColumnElement[bool]] = [audit_log.c.seq > after_seq]
    if filt.tenants is not None:
        conditions.append(audit_log.c.tenant.in_(sorted(filt.tenants)))
    if filt.principal is not None:
        conditions.append(audit_log.c.principal == filt.principal)
    if filt.action is not None:
        if filt.action.endswith("."):
            conditions.append(audit_log.c.action.startswith(filt.action, autoescape=True))
        else:
            conditions.append(audit_log.c.action == filt.action)
    if filt.outcome is not None:
        conditions.append(audit_log.c.outcome == filt.outcome)
    if filt.since is not None:
        conditions.append(audit_log.c.at >= filt.since)
    if filt.until is not None:
        conditions.append(audit_log.c.at < filt.until)
    if filt.request_id is not None:
        conditions.append(audit_log.c.request_id == filt.request_id)
    stmt = select(*sql.audit_columns).where(*conditions).order_by(audit_log.c.seq).limit(limit)
    return [codec.audit_from_row(r) for r in conn.execute(stmt)]


def read_audit_head(conn: Connection, sql: SecurityStatements) -> Checkpoint | None:
    """The last record's ``(seq, hash)``; ``None`` before the first record."""
    row = conn.execute(sql.read_audit_head).first()
    if row is None or row.seq == 0:
        return None
    return Checkpoint(int(row.seq), row.hash)


def forget_tenant(conn: Connection, sql: SecurityStatements, tenant: str, at: datetime) -> None:
    """Revoke every key of ``tenant`` and delete its role bindings (a deleted tenant leaves no live grant)."""
    conn.execute(
        update(api_keys).where(api_keys.c.tenant == tenant, api_keys.c.revoked_at.is_(None)).values(revoked_at=at)
    )
    conn.execute(delete(role_bindings).where(role_bindings.c.tenant == tenant))
