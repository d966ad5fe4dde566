"""``state get|put|del|ls|watch|txn`` and ``state lease grant|keepalive|revoke|get``: the key-value store.

Values are JSON on the command line and on stdout, so ``taskplane state get KEY | jq`` and
``jq ... | taskplane state put KEY -`` work. A write whose condition fails (``--if-match``, ``--create``) is
refused with ``precondition_failed`` and exit 1, like a missing key (``not_found``)::

    state put KEY VALUE --if-match N --> PUT /platform/state/KEY (If-Match: N) --> "put KEY at revision R"
                                                                                 +-> 412 precondition_failed, exit 1
    state watch PREFIX ----------------> client.state.watch (reopened from the next revision after a drop)
                                             --> one line per event until Ctrl-C (exit 130)
"""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer

from taskplane.cli import exit_codes, render, render_state
from taskplane.cli.context import JsonFlag, cli_context
from taskplane.domain.quantities import parse_duration
from taskplane.errors import InvalidRequestError
from taskplane.sdk.state_calls import txn_request
from taskplane.wire.state import KeyList, LeaseOut, TxnIn

app = typer.Typer(name="state", help="Read, write, list, watch and transact on the versioned key-value store.")
lease_app = typer.Typer(name="lease", help="Leases: keys put with one vanish when it expires.")
app.add_typer(lease_app, name="lease")

Key = Annotated[str, typer.Argument(metavar="KEY", help="The key: a path such as jobs/build-42/step.")]
Tenant = Annotated[str | None, typer.Option(help="Tenant whose keys (default: your only tenant).")]
IfMatch = Annotated[
    int | None, typer.Option("--if-match", min=1, help="Only if the key's MOD_REV is still N (else exit 1).")
]
Revision = Annotated[int | None, typer.Option(min=1, help="Read as of this revision.")]
LeaseId = Annotated[int, typer.Argument(metavar="ID", min=1, help="The lease's id.")]


def _stdin_or(text: str) -> str:
    return sys.stdin.read() if text == "-" else text


def parse_value(text: str) -> Any:
    """``VALUE``: JSON (``'"text"'``, ``42``, ``'{"a": 1}'``); ``-`` reads it from stdin."""
    source = _stdin_or(text)
    try:
        return json.loads(source)
    except ValueError as exc:
        raise typer.BadParameter(
            f"not JSON ({exc}); quote a string as JSON, e.g. '\"text\"'", param_hint="'VALUE'"
        ) from exc


def parse_ttl(value: str, flag: str) -> float:
    """A TTL: seconds (``30``) or a duration (``30s``, ``5m``, ``1h``)."""
    try:
        return parse_duration(value, field=flag.lstrip("-") or "ttl")
    except InvalidRequestError as exc:
        raise typer.BadParameter(exc.detail, param_hint=f"'{flag}'") from exc


def parse_txn(text: str) -> TxnIn:
    """``state txn FILE``: a JSON object of ``compare``, ``success`` and ``failure`` lists, checked here."""
    try:
        raw = json.loads(text)
    except ValueError as exc:
        raise typer.BadParameter(f"not JSON ({exc})", param_hint="'FILE'") from exc
    parts = ("compare", "success", "failure")
    if not isinstance(raw, dict) or set(raw) - set(parts):
        raise typer.BadParameter("must be a JSON object of compare, success and failure", param_hint="'FILE'")
    lists = [raw.get(part, []) for part in parts]
    if not all(isinstance(items, list) and all(isinstance(i, dict) for i in items) for items in lists):
        raise typer.BadParameter("compare, success and failure must be lists of objects", param_hint="'FILE'")
    try:
        return txn_request(*lists)
    except InvalidRequestError as exc:
        raise typer.BadParameter(exc.detail, param_hint="'FILE'") from exc


def _json(ctx: typer.Context, as_json: bool) -> bool:
    return as_json or cli_context(ctx).json


# -- keys -----------------------------------------------------------------------------------------------------


@app.command("get")
def get(
    ctx: typer.Context, key: Key, revision: Revision = None, tenant: Tenant = None, as_json: JsonFlag = False
) -> None:
    """Print a key's value as JSON (--json: the entry with its revisions, version and lease). Exit 1 if missing."""
    with cli_context(ctx).client() as tp:
        entry = tp.state.get(key, revision, tenant)
    if _json(ctx, as_json):
        render.emit_json(entry)
    else:
        render_state.emit_value(entry.value)


@app.command("put")
def put(
    ctx: typer.Context,
    key: Key,
    value: Annotated[str, typer.Argument(metavar="VALUE", help="The value as JSON; '-' reads it from stdin.")],
    if_match: IfMatch = None,
    create: Annotated[bool, typer.Option("--create", help="Only if the key does not exist yet (else exit 1).")] = False,
    ttl: Annotated[str | None, typer.Option(help="Delete the key after this long: 30s, 5m, or seconds.")] = None,
    lease: Annotated[int | None, typer.Option(min=1, help="Attach the key to this lease.")] = None,
    tenant: Tenant = None,
    as_json: JsonFlag = False,
) -> None:
    """Write a key; prints the revision of the write."""
    if if_match is not None and create:
        raise typer.BadParameter("--if-match and --create exclude each other", param_hint="'--create'")
    if ttl is not None and lease is not None:
        raise typer.BadParameter("--ttl and --lease exclude each other", param_hint="'--ttl'")
    seconds = None if ttl is None else parse_ttl(ttl, "--ttl")
    body = parse_value(value)
    with cli_context(ctx).client() as tp:
        result = tp.state.put(key, body, if_match=if_match, create_only=create, lease=lease, ttl=seconds, tenant=tenant)
    if _json(ctx, as_json):
        render.emit_json(result)
        return
    lease_note = "" if result.kv.lease is None else f", lease {result.kv.lease}"
    typer.echo(f"put {result.kv.key} at revision {result.revision} (version {result.kv.version}{lease_note})")


@app.command("del")
def delete(
    ctx: typer.Context, key: Key, if_match: IfMatch = None, tenant: Tenant = None, as_json: JsonFlag = False
) -> None:
    """Delete a key. A key that does not exist is not an error (deleted 0)."""
    with cli_context(ctx).client() as tp:
        result = tp.state.delete(key, if_match, tenant)
    if _json(ctx, as_json):
        render.emit_json(result)
    elif result.deleted:
        typer.echo(f"deleted {key} at revision {result.revision}")
    else:
        render.error(f"{key} did not exist (revision {result.revision})")


@app.command("ls")
def list_keys(
    ctx: typer.Context,
    prefix: Annotated[str, typer.Argument(metavar="[PREFIX]", help="Only keys starting with this.")] = "",
    all_pages: Annotated[bool, typer.Option("--all", help="Follow the pages to the last key.")] = False,
    revision: Revision = None,
    limit: Annotated[int, typer.Option(min=1, max=1000, help="Keys per page.")] = 100,
    after: Annotated[str | None, typer.Option(help="Start after this key (a next_key from --json).")] = None,
    tenant: Tenant = None,
    as_json: JsonFlag = False,
) -> None:
    """List keys in key order: KEY, VERSION, MOD_REV, LEASE and the value (cut to fit)."""
    with cli_context(ctx).client() as tp:
        page = tp.state.list(prefix, limit, after, revision, tenant)
        items = list(page.items)
        while all_pages and page.next_key is not None:  # every page at the first page's revision
            page = tp.state.list(prefix, limit, page.next_key, page.revision, tenant)
            items.extend(page.items)
    found = KeyList(items=items, revision=page.revision, next_key=page.next_key)
    if _json(ctx, as_json):
        render.emit_json(found)
        return
    if found.items:
        render.console().print(render_state.kv_table(found.items))
    else:
        render.error(f"no keys{f' under {prefix}' if prefix else ''} at revision {found.revision}")
    if found.next_key is not None:
        render.error(f"more keys exist: use --all, or --after {found.next_key}")


@app.command("watch")
def watch(
    ctx: typer.Context,
    prefix: Annotated[str, typer.Argument(metavar="[PREFIX]", help="Watch the keys under this (default: all).")] = "",
    key: Annotated[str | None, typer.Option(help="Watch this one key instead of a prefix.")] = None,
    from_revision: Annotated[
        int | None, typer.Option(min=1, help="Start at this revision (default: changes from now on).")
    ] = None,
    tenant: Tenant = None,
    as_json: JsonFlag = False,
) -> None:
    """Print each change as it happens (REVISION TYPE KEY VALUE; --json: JSON lines) until Ctrl-C.

    Reconnects by itself after a dropped connection, from the revision after the last one printed. Exits 1 when
    the server no longer keeps the revision to resume from (compacted).
    """
    if key is not None and prefix:
        raise typer.BadParameter("give a PREFIX or --key, not both", param_hint="'--key'")
    lines = _json(ctx, as_json)
    out = render.console()
    try:
        with cli_context(ctx).client() as tp:
            for event in tp.state.watch(prefix, key=key, from_revision=from_revision, tenant=tenant):
                if lines:
                    render_state.emit_json_line(event.model_dump(mode="json"))
                else:
                    out.print(render_state.event_line(event), soft_wrap=True)
                    out.file.flush()
    except KeyboardInterrupt:
        raise typer.Exit(exit_codes.CANCELLED) from None


@app.command("txn")
def txn(
    ctx: typer.Context,
    file: Annotated[
        Path, typer.Argument(metavar="FILE", dir_okay=False, help="JSON of compare, success, failure ('-': stdin).")
    ],
    tenant: Tenant = None,
    as_json: JsonFlag = False,
) -> None:
    """Run a transaction: if every compare holds, the success ops, else the failure ops; prints which ran.

    FILE: {"compare": [{"key", "target", "op", "value"}], "success": [{"op", "key", "value"}], "failure": [...]}.
    """
    try:
        text = sys.stdin.read() if str(file) == "-" else file.read_text(encoding="utf-8")
    except OSError as exc:
        raise typer.BadParameter(f"cannot read {file}: {exc.strerror}", param_hint="'FILE'") from exc
    request = parse_txn(text)
    with cli_context(ctx).client() as tp:
        result = tp.state.txn(request.compare, request.success, request.failure, tenant)
    if _json(ctx, as_json):
        render.emit_json(result)
        return
    out = render.console()
    out.print(render_state.txn_summary(result))
    if result.results:
        out.print(render_state.txn_table(result))


# -- leases ---------------------------------------------------------------------------------------------------


def _show_lease(ctx: typer.Context, lease: LeaseOut, as_json: bool) -> None:
    if _json(ctx, as_json):
        render.emit_json(lease)
    else:
        render.console().print(render_state.lease_details(lease, datetime.now(UTC)))


@lease_app.command("grant")
def grant(
    ctx: typer.Context,
    ttl: Annotated[str, typer.Argument(metavar="TTL", help="How long it lives unless kept alive: 30s, 5m, seconds.")],
    tenant: Tenant = None,
    as_json: JsonFlag = False,
) -> None:
    """Create a lease; put keys with --lease ID, and keep it alive before it expires."""
    seconds = parse_ttl(ttl, "TTL")
    with cli_context(ctx).client() as tp:
        _show_lease(ctx, tp.state.lease(seconds, tenant), as_json)


@lease_app.command("keepalive")
def keepalive(ctx: typer.Context, lease_id: LeaseId, tenant: Tenant = None, as_json: JsonFlag = False) -> None:
    """Renew a lease for another TTL (exit 1 once it expired: its keys are gone)."""
    with cli_context(ctx).client() as tp:
        _show_lease(ctx, tp.state.keepalive(lease_id, tenant), as_json)


@lease_app.command("get")
def get_lease(ctx: typer.Context, lease_id: LeaseId, tenant: Tenant = None, as_json: JsonFlag = False) -> None:
    """Show a live lease and its keys."""
    with cli_context(ctx).client() as tp:
        _show_lease(ctx, tp.state.get_lease(lease_id, tenant), as_json)


@lease_app.command("revoke")
def revoke(ctx: typer.Context, lease_id: LeaseId, tenant: Tenant = None, as_json: JsonFlag = False) -> None:
    """End a lease now; its keys are deleted."""
    with cli_context(ctx).client() as tp:
        result = tp.state.revoke_lease(lease_id, tenant)
    if _json(ctx, as_json):
        render.emit_json(result)
    else:
        typer.echo(f"revoked lease {lease_id} at revision {result.revision}")
