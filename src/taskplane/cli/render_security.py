"""Human output of the caller's identity, API keys, roles, bindings and audit records (``--json``: ``emit_json``)."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime

from rich.table import Table
from rich.text import Text

from taskplane.cli.render import age, timestamp, until
from taskplane.sdk.credentials import Credentials
from taskplane.wire.security import AuditRecordOut, BindingOut, RoleOut, RuleOut, TokenOut, WhoAmI

TOKEN_STYLES = {"active": "green", "expired": "dim", "revoked": "red"}
OUTCOME_STYLES = {"success": "green", "rejected": "yellow", "denied": "red", "unauthenticated": "red", "error": "red"}


def _table(*columns: str, no_wrap: tuple[str, ...] = ("ID", "NAME", "SEQ")) -> Table:
    table = Table(box=None, pad_edge=False, header_style="bold")
    for column in columns:
        table.add_column(column, overflow="fold", no_wrap=column in no_wrap)
    return table


def _grid(rows: Iterable[tuple[str, str | Text]]) -> Table:
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold", no_wrap=True)
    grid.add_column(overflow="fold")
    for key, value in rows:
        grid.add_row(key, value)
    return grid


def _utc(moment: datetime | None) -> str:
    return "-" if moment is None else f"{moment.astimezone(UTC):%Y-%m-%d %H:%M:%S}Z"


def whoami_details(me: WhoAmI, found: Credentials) -> Table:
    """The block ``whoami`` shows: who the server says the caller is, and where the token came from."""
    bindings = ", ".join(f"{b.role} in {'every tenant' if b.tenant == '*' else b.tenant}" for b in me.bindings)
    return _grid(
        [
            ("Subject", me.subject),
            ("Kind", me.kind),
            ("Name", me.name),
            ("Roles", bindings or "-"),
            ("Server", found.url),
            ("Token from", found.source),
        ]
    )


def _expires(moment: datetime | None, now: datetime) -> str:
    if moment is None:
        return "never"
    return until(moment, now) if moment > now else timestamp(moment, now)


def _state(token: TokenOut) -> Text:
    return Text(token.state, style=TOKEN_STYLES.get(token.state, ""))


def token_table(tokens: list[TokenOut], now: datetime) -> Table:
    """One row per API key."""
    table = _table("ID", "OWNER", "TENANT", "ROLES", "STATE", "EXPIRES", "LAST USED", "DESCRIPTION")
    for t in tokens:
        table.add_row(
            t.id,
            t.owner,
            t.tenant,
            ",".join(t.roles),
            _state(t),
            "never" if t.expires_at is None else _utc(t.expires_at),
            "never" if t.last_used_at is None else f"{age(t.last_used_at, now)} ago",
            t.description,
        )
    return table


def token_details(t: TokenOut, now: datetime) -> Table:
    """The block ``tokens get`` and ``tokens create`` show (never a secret)."""
    rows: list[tuple[str, str | Text]] = [
        ("ID", t.id),
        ("Subject", f"key:{t.id}"),
        ("Owner", t.owner),
        ("Tenant", "every tenant (*)" if t.tenant == "*" else t.tenant),
        ("Roles", ", ".join(t.roles)),
        ("State", _state(t)),
        ("Expires", _expires(t.expires_at, now)),
        ("Created", f"{timestamp(t.created_at, now)} by {t.created_by}"),
        ("Last used", "never" if t.last_used_at is None else timestamp(t.last_used_at, now)),
    ]
    if t.revoked_at is not None:
        rows.append(("Revoked", timestamp(t.revoked_at, now)))
    if t.description:
        rows.append(("Description", t.description))
    return _grid(rows)


def rules(items: Iterable[RuleOut]) -> list[str]:
    """A role's (verb, resource) pairs as ``--rule`` writes them: ``get,list:logs,tasks``, one per verb set."""
    verbs_of: dict[str, list[str]] = {}
    for rule in items:
        verbs_of.setdefault(rule.resource, []).append(rule.verb)
    resources_of: dict[tuple[str, ...], list[str]] = {}
    for resource, verbs in verbs_of.items():
        resources_of.setdefault(tuple(sorted(set(verbs))), []).append(resource)
    return [f"{','.join(verbs)}:{','.join(sorted(resources))}" for verbs, resources in sorted(resources_of.items())]


def role_table(roles: list[RoleOut]) -> Table:
    """One row per role; RULES as ``--rule`` writes them."""
    table = _table("NAME", "BUILT-IN", "RULES", "DESCRIPTION")
    for r in roles:
        table.add_row(r.name, "yes" if r.builtin else "no", " ".join(rules(r.rules)), r.description)
    return table


def role_details(r: RoleOut, now: datetime) -> Table:
    """The block ``roles get`` and ``roles create`` show: one line per verb set."""
    rows: list[tuple[str, str | Text]] = [
        ("Name", r.name),
        ("Built-in", "yes" if r.builtin else "no"),
        ("Description", r.description or "-"),
        ("Rules", "\n".join(rules(r.rules)) or "-"),
    ]
    if r.created_at is not None:
        rows.append(("Created", f"{timestamp(r.created_at, now)}" + (f" by {r.created_by}" if r.created_by else "")))
    return _grid(rows)


def binding_table(bindings: list[BindingOut], now: datetime) -> Table:
    """One row per role binding."""
    table = _table("ID", "SUBJECT", "TENANT", "ROLE", "AGE", "CREATED BY")
    for b in bindings:
        table.add_row(b.id, b.subject, b.tenant, b.role, age(b.created_at, now), b.created_by)
    return table


def audit_table(records: list[AuditRecordOut]) -> Table:
    """One row per audit record, oldest first."""
    table = _table("SEQ", "TIME", "PRINCIPAL", "TENANT", "ACTION", "RESOURCE", "OUTCOME", "STATUS", "SOURCE")
    for r in records:
        table.add_row(
            str(r.seq),
            _utc(r.at),
            r.principal,
            r.tenant or "-",
            r.action,
            r.resource,
            Text(r.outcome, style=OUTCOME_STYLES.get(r.outcome, "")),
            "" if r.status is None else str(r.status),
            r.source,
        )
    return table
