"""Human output of the state store: entries, watch events, transaction results, leases (``--json``: ``emit_json``)."""

from __future__ import annotations

import sys
from collections.abc import Iterable
from datetime import datetime
from typing import Any

import orjson
from rich.table import Table
from rich.text import Text

from taskplane.cli.render import until
from taskplane.wire.state import EventOut, KeyValueOut, LeaseOut, OpResultOut, TxnOut

VALUE_WIDTH = 60
EVENT_STYLES = {"put": "green", "delete": "red"}


def compact(value: Any) -> str:
    """A JSON value on one line, keys in the order they came."""
    return orjson.dumps(value).decode()


def truncated(text: str, width: int = VALUE_WIDTH) -> str:
    """``text`` cut to ``width`` characters, ending in ``...`` when cut."""
    return text if len(text) <= width else text[: width - 3] + "..."


def emit_value(value: Any) -> None:
    """Print a value as indented JSON on stdout (what ``state get`` prints, for ``jq`` and friends)."""
    sys.stdout.write(orjson.dumps(value, option=orjson.OPT_INDENT_2).decode() + "\n")


def emit_json_line(value: Any) -> None:
    """Print one JSON line on stdout and flush it (``state watch --json``)."""
    sys.stdout.write(orjson.dumps(value).decode() + "\n")
    sys.stdout.flush()


def kv_table(items: Iterable[KeyValueOut]) -> Table:
    """One row per entry, its value cut to fit."""
    table = Table(box=None, pad_edge=False, header_style="bold")
    for column in ("KEY", "VERSION", "MOD_REV", "LEASE", "VALUE"):
        table.add_column(column, overflow="fold", no_wrap=column == "VALUE")
    for kv in items:
        lease = "-" if kv.lease is None else str(kv.lease)
        table.add_row(kv.key, str(kv.version), str(kv.mod_revision), lease, truncated(compact(kv.value)))
    return table


def event_line(event: EventOut) -> Text:
    """``12 put jobs/a {"step":1}`` or ``13 delete jobs/a`` (``(lease expired)`` and the like when there is a cause)."""
    line = Text(f"{event.revision} ")
    line.append(event.type, style=EVENT_STYLES.get(event.type, ""))
    line.append(f" {event.key}")
    if event.type == "put" and event.kv is not None:
        line.append(f" {compact(event.kv.value)}")
    if event.cause:
        line.append(f" ({event.cause})", style="dim")
    return line


def _result(result: OpResultOut) -> str:
    if result.op == "get":
        return "not found" if result.kv is None else truncated(compact(result.kv.value))
    if result.op == "put":
        return "-" if result.kv is None else f"mod_revision {result.kv.mod_revision}, version {result.kv.version}"
    return f"deleted {result.deleted}"


def txn_summary(result: TxnOut) -> Text:
    """Which branch ran, at which revision."""
    if result.succeeded:
        return Text(f"succeeded: the success ops ran at revision {result.revision}", style="green")
    return Text(f"compare failed: the failure ops ran at revision {result.revision}", style="yellow")


def txn_table(result: TxnOut) -> Table:
    """One row per op of the branch that ran."""
    table = Table(box=None, pad_edge=False, header_style="bold")
    for column in ("OP", "KEY", "RESULT"):
        table.add_column(column, overflow="fold")
    for item in result.results:
        table.add_row(item.op, item.key, _result(item))
    return table


def lease_details(lease: LeaseOut, now: datetime) -> Table:
    """The block ``state lease`` shows."""
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold", no_wrap=True)
    grid.add_column(overflow="fold")
    ttl = f"{lease.ttl:g}s"
    for key, value in (
        ("ID", str(lease.id)),
        ("TTL", ttl),
        ("Expires", until(lease.expires_at, now)),
        ("Keys", ", ".join(lease.keys) or "-"),
    ):
        grid.add_row(key, value)
    return grid
