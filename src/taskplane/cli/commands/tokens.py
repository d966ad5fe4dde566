"""``tokens create|list|get|revoke``: API keys. A new key's token is printed once, by ``create``, and never again."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Annotated, Any

import typer

from taskplane.cli import render, render_security
from taskplane.cli.context import JsonFlag, cli_context
from taskplane.cli.flags import validated
from taskplane.domain.quantities import parse_duration
from taskplane.errors import InvalidRequestError
from taskplane.wire.security import TokenCreate, TokenOut

app = typer.Typer(name="tokens", help="Create, list, show and revoke API keys.")

_FLAG_OF_FIELD = {
    "owner": "--owner",
    "roles": "--role",
    "tenant": "--tenant",
    "expires_in": "--expires-in",
    "description": "--description",
}

TokenId = Annotated[str, typer.Argument(metavar="ID", help="The key's id (the part after 'key:' in its subject).")]


def parse_expires_in(value: str | None) -> int | None:
    """``--expires-in``: seconds (``3600``) or a duration (``30d``, ``12h``), rounded up to whole seconds."""
    if value is None:
        return None
    try:
        return math.ceil(parse_duration(value, field="expires in"))
    except InvalidRequestError as exc:
        raise typer.BadParameter(exc.detail, param_hint="'--expires-in'") from exc


def _show(ctx: typer.Context, token: TokenOut, as_json: bool) -> None:
    if as_json or cli_context(ctx).json:
        render.emit_json(token)
    else:
        render.console().print(render_security.token_details(token, datetime.now(UTC)))


@app.command("create")
def create(
    ctx: typer.Context,
    owner: Annotated[str, typer.Option(help="Who will use it: a person or a service.")],
    role: Annotated[list[str], typer.Option("--role", help="Role it holds; repeatable.")],
    tenant: Annotated[
        str | None, typer.Option(help="Tenant it acts in, '*' for every tenant (default: your only tenant).")
    ] = None,
    expires_in: Annotated[str | None, typer.Option(help="Lifetime: 30d, 12h or seconds (default: never).")] = None,
    description: Annotated[str, typer.Option(help="What it is for.")] = "",
    as_json: JsonFlag = False,
) -> None:
    """Create an API key and print its token: the only time it is shown."""
    options = cli_context(ctx)
    fields: dict[str, Any] = {"owner": owner, "roles": role, "description": description}
    optional = (("tenant", tenant), ("expires_in", parse_expires_in(expires_in)))
    fields.update({key: value for key, value in optional if value is not None})
    body = validated(TokenCreate, fields, _FLAG_OF_FIELD)
    with options.client() as tp:
        created = tp.create_token(body.owner, body.roles, body.tenant, body.expires_in, body.description)
    if as_json or options.json:
        render.emit_json(created)
        return
    now = datetime.now(UTC)
    where = "every tenant" if created.tenant == "*" else f"tenant {created.tenant}"
    expires = "never expires" if created.expires_at is None else f"expires {render.until(created.expires_at, now)}"
    render.error(
        f"created API key {created.id} (subject key:{created.id}) for {created.owner}: "
        f"roles {', '.join(created.roles)} in {where}; {expires}"
    )
    render.error("Store this token now: it is shown only this once and cannot be retrieved later.")
    typer.echo(created.token)


@app.command("list")
def list_tokens(ctx: typer.Context, as_json: JsonFlag = False) -> None:
    """List API keys you may see, oldest first (never their tokens)."""
    options = cli_context(ctx)
    with options.client() as tp:
        tokens = tp.list_tokens()
    if as_json or options.json:
        render.emit_json(tokens)
    elif tokens:
        render.console().print(render_security.token_table(tokens, datetime.now(UTC)))
    else:
        render.error("no API keys")


@app.command("get")
def get(ctx: typer.Context, token_id: TokenId, as_json: JsonFlag = False) -> None:
    """Show one API key."""
    with cli_context(ctx).client() as tp:
        _show(ctx, tp.get_token(token_id), as_json)


@app.command("revoke")
def revoke(ctx: typer.Context, token_id: TokenId, as_json: JsonFlag = False) -> None:
    """Revoke an API key: every request with it fails from now on. Revoking twice is fine."""
    with cli_context(ctx).client() as tp:
        revoked = tp.revoke_token(token_id)
    if as_json or cli_context(ctx).json:
        render.emit_json(revoked)
    else:
        typer.echo(f"{revoked.id} {revoked.state}")
