"""``login`` and ``whoami``: save a server and token for later commands, and ask the server who you are."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from taskplane.cli import render, render_security
from taskplane.cli.context import JsonFlag, cli_context
from taskplane.errors import InvalidRequestError
from taskplane.sdk import credentials
from taskplane.sdk.credentials import ClientConfig


def _read_token() -> str:
    """The token typed at a hidden prompt on a terminal, else the first line of stdin (``... | taskplane login``)."""
    if sys.stdin.isatty():
        return str(typer.prompt("Token", hide_input=True, err=True))
    return sys.stdin.readline()


def login(
    ctx: typer.Context,
    url: Annotated[
        str | None, typer.Option(help="Server URL (default: the global --url, TASKPLANE_URL, or the saved one).")
    ] = None,
    token: Annotated[
        str | None, typer.Option(help="API token (default: read from stdin, or a hidden prompt on a terminal).")
    ] = None,
) -> None:
    """Check a token with the server, then save it and the URL in the client config file (mode 0600)."""
    options = cli_context(ctx)
    secret = (token if token is not None else _read_token()).strip()
    if not secret:
        raise typer.BadParameter("no token given", param_hint="'--token'")
    try:
        server = credentials.resolve_url(url or options.url)
    except InvalidRequestError:  # an unreadable client config: the one this login replaces
        server = credentials.resolve_url(url or options.url, ClientConfig())
    with options.make_client(server, token=secret) as tp:
        me = tp.whoami()
    path = credentials.save_client_config(ClientConfig(url=server, token=secret))
    render.error(f"logged in to {server} as {me.subject} ({me.name}); saved to {path}")


def whoami(ctx: typer.Context, as_json: JsonFlag = False) -> None:
    """Show who the server says you are, your roles, and where the token came from."""
    options = cli_context(ctx)
    found = options.credentials()
    with options.make_client(found.url, token=found.token) as tp:
        me = tp.whoami()
    if as_json or options.json:
        render.emit_json(me)
    else:
        render.console().print(render_security.whoami_details(me, found))
