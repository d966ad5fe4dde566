"""``audit list|export|head|verify``: read the hash-chained audit log and prove it was not changed.

``verify`` rebuilds the chain's records from JSON lines and runs the server's own check
(``domain.audit.verify_chain``)::

    --file EXPORT.jsonl ----------------------------+
    or the server: head first, then the export -----+--> verify_records(records, checkpoints) --> ok  (exit 0)
    --checkpoint SEQ:HASH (copies kept elsewhere) --+                                         --> break (exit 1)

The server's head is read before the export and checked as a checkpoint, so records written while the export
streams do not look like a truncated log.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, TextIO

import typer

from taskplane.cli import exit_codes, render, render_security
from taskplane.cli.context import JsonFlag, cli_context
from taskplane.cli.flags import parse_moment
from taskplane.domain.audit import Checkpoint
from taskplane.errors import InternalError
from taskplane.sdk.audit_chain import ChainReport, verify_records
from taskplane.sdk.security_calls import decode_audit_lines
from taskplane.wire.security import AuditPage

app = typer.Typer(name="audit", help="Read, export and verify the tamper-evident audit log.")

_HASH = re.compile(r"^[0-9a-f]{64}$")

Since = Annotated[str | None, typer.Option(help="From this time: RFC 3339, or a duration ago (24h).")]


def parse_checkpoint(value: str) -> Checkpoint:
    """``--checkpoint SEQ:HASH``, as ``audit head`` prints it (``SEQ HASH`` is taken too)."""
    seq, _, digest = value.strip().replace(" ", ":", 1).partition(":")
    digest = digest.strip().lower()
    if not seq.isdigit() or int(seq) < 1 or not _HASH.match(digest):
        raise typer.BadParameter(
            f"{value!r} must look like SEQ:HASH (a record number and its 64-hex-digit hash)",
            param_hint="'--checkpoint'",
        )
    return Checkpoint(int(seq), digest)


@app.command("list")
def list_audit(
    ctx: typer.Context,
    tenant: Annotated[str | None, typer.Option(help="Only records in this tenant.")] = None,
    principal: Annotated[str | None, typer.Option(help="Only this subject's: key:<id>, oidc:<sub>.")] = None,
    action: Annotated[str | None, typer.Option(help="Only this action: tasks.create, tokens.revoke...")] = None,
    outcome: Annotated[
        str | None, typer.Option(help="success, rejected, denied, unauthenticated, throttled or error.")
    ] = None,
    request_id: Annotated[str | None, typer.Option(help="Only this request's.")] = None,
    since: Since = None,
    until: Annotated[str | None, typer.Option(help="Up to this time: RFC 3339, or a duration ago.")] = None,
    limit: Annotated[int, typer.Option(min=1, max=1000, help="Records per page.")] = 100,
    all_pages: Annotated[bool, typer.Option("--all", help="Follow the pages to the last record.")] = False,
    after: Annotated[str | None, typer.Option(help="Start after this cursor (a next_cursor from --json).")] = None,
    as_json: JsonFlag = False,
) -> None:
    """List audit records you may read, oldest first."""
    options = cli_context(ctx)
    now = datetime.now(UTC)
    filters: dict[str, Any] = {
        "tenant": tenant,
        "principal": principal,
        "action": action,
        "outcome": outcome,
        "request_id": request_id,
        "since": parse_moment(since, "--since", now),
        "until": parse_moment(until, "--until", now),
    }
    with options.client() as tp:
        if all_pages:
            page = AuditPage(items=list(tp.iter_audit(**filters, page_size=limit)), next_cursor=None)
        else:
            page = tp.audit(**filters, after=after, limit=limit)
    if as_json or options.json:
        render.emit_json(page)
        return
    if page.items:
        render.console().print(render_security.audit_table(page.items))
    else:
        render.error("no audit records")
    if page.next_cursor is not None:
        render.error(f"more records exist: use --all, or --after {page.next_cursor}")


def _write(lines: Iterable[str], sink: TextIO) -> int:
    count = 0
    for line in lines:
        sink.write(line)
        count += 1
    return count


def _write_lines(lines: Iterable[str], output: Path | None) -> int:
    """Write ``lines`` to stdout, or to ``output`` (mode 0600, replaced only once the export is complete)."""
    if output is None:
        return _write(lines, sys.stdout)
    # Audit records name people, addresses and objects: the file is its owner's only. A failed export leaves an
    # earlier file as it was.
    partial = output.with_name(f".{output.name}.partial")
    try:
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    except OSError as exc:
        raise typer.BadParameter(f"cannot write {output}: {exc.strerror}", param_hint="'--output'") from exc
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as sink:
            count = _write(lines, sink)
        os.replace(partial, output)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    return count


@app.command("export")
def export(
    ctx: typer.Context,
    since: Since = None,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", dir_okay=False, help="Write to this file (default: stdout).")
    ] = None,
) -> None:
    """Write every record you may read as JSON lines, oldest first (the input of 'audit verify --file')."""
    options = cli_context(ctx)
    moment = parse_moment(since, "--since", datetime.now(UTC))
    with options.client() as tp:
        count = _write_lines((record.model_dump_json() + "\n" for record in tp.export_audit(moment)), output)
    if output is not None:
        render.error(f"exported {count} audit records to {output}")


@app.command("head")
def head(ctx: typer.Context, as_json: JsonFlag = False) -> None:
    """Print the chain's last record as SEQ HASH: keep copies elsewhere, then pass them to verify --checkpoint."""
    options = cli_context(ctx)
    with options.client() as tp:
        found = tp.audit_head()
    if as_json or options.json:
        render.emit_json(found)
    else:
        typer.echo(f"{found.seq} {found.hash}")


def _file_lines(path: Path) -> Iterator[str]:
    if str(path) == "-":
        yield from sys.stdin
        return
    try:
        with path.open(encoding="utf-8") as fh:
            yield from fh
    except OSError as exc:
        raise typer.BadParameter(f"cannot read {path}: {exc.strerror}", param_hint="'--file'") from exc


def _report(report: ChainReport, as_json: bool) -> None:
    broken = report.broken
    if as_json:
        render.emit_json(
            {
                "ok": report.ok,
                "records": report.count,
                "head": {"seq": report.last.seq, "hash": report.last.hash},
                "break": None if broken is None else {"kind": broken.kind, "seq": broken.seq, "detail": broken.detail},
            }
        )
    elif broken is None:
        typer.echo(f"ok: {report.count} records, head {report.last.seq} {report.last.hash}")
    else:
        typer.echo(f"broken: {broken.kind} at record {broken.seq}: {broken.detail}")
        render.error(f"{report.count} records hold before it; the last is {report.last.seq} {report.last.hash}")


@app.command("verify")
def verify(
    ctx: typer.Context,
    file: Annotated[
        Path | None,
        typer.Option("--file", dir_okay=False, help="Check this export ('-': stdin) instead of the server's."),
    ] = None,
    checkpoint: Annotated[
        list[str] | None, typer.Option("--checkpoint", help="SEQ:HASH from an earlier 'audit head'; repeatable.")
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """Check the audit chain: every record, the order, and that nothing was cut off. Exits 1 on a break.

    Without --file, fetches the head and a full export from the server (needs platform-wide audit access); with
    --file, checks the file alone against the checkpoints given.
    """
    options = cli_context(ctx)
    points = [parse_checkpoint(item) for item in checkpoint or []]
    if file is not None:
        try:
            report = verify_records(decode_audit_lines(_file_lines(file)), None, points)
        except InternalError as exc:  # a line that is not a record: the file is no export, or was damaged
            render.error(f"{file}: {exc.detail}")
            raise typer.Exit(exit_codes.CHAIN_BROKEN) from exc
    else:
        with options.client() as tp:
            found = tp.audit_head()
            report = verify_records(tp.export_audit(), None, [Checkpoint(found.seq, found.hash), *points])
    _report(report, as_json or options.json)
    if not report.ok:
        raise typer.Exit(exit_codes.CHAIN_BROKEN)
