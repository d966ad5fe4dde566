"""The ``taskplane`` command: global options, the commands, and errors as one line on stderr.

    argv --> OneLineErrorsGroup.main --> root callback: --url --token --json  ->  CliContext (ctx.obj)
                    |                --> command: flags -> wire model -> sdk call -> render (rich or --json)
                    |                    (CliContext fills in what --url/--token leave open: sdk.credentials)
                    +-- usage error (click)      -> "taskplane submit: error: ..."  exit 2
                    +-- API error (TaskplaneError) -> "taskplane: error: ... [code]"  exit 1

Exit codes are listed in ``exit_codes``. ``create_app`` takes the client factories so tests can run every
command against an in-memory transport.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Annotated, Any

import httpx
import typer
from typer.core import TyperGroup

from taskplane import __version__
from taskplane.cli import exit_codes, render
from taskplane.cli.commands import (
    audit,
    login,
    platform,
    resources,
    roles,
    server,
    simulate,
    state,
    tasks,
    tenants,
    tokens,
    wait,
)
from taskplane.cli.context import AsyncClientFactory, CliContext, ClientFactory
from taskplane.errors import TaskplaneError, UnauthenticatedError
from taskplane.sdk import AsyncClient, Client


def _one_line(text: str) -> str:
    return " ".join(line.strip() for line in text.splitlines() if line.strip())


def usage_error_message(exc: typer.TyperException) -> str:
    """Format a command-line error as one line naming the command."""
    ctx = getattr(exc, "ctx", None)
    path = ctx.command_path if ctx is not None else "taskplane"
    message = f"{path}: error: {_one_line(exc.format_message())}"
    if exc.exit_code == exit_codes.USAGE:
        message += f" (see '{path} --help')"
    return message


def api_error_message(exc: TaskplaneError) -> str:
    """Format an API error as one line with its stable code."""
    message = f"taskplane: error: {_one_line(exc.detail)} [{exc.code}]"
    if isinstance(exc.__cause__, httpx.TransportError):
        message += " (is the server running? set --url or TASKPLANE_URL)"
    elif isinstance(exc, UnauthenticatedError):
        message += " (run 'taskplane login', or set --token or TASKPLANE_TOKEN)"
    return message


class OneLineErrorsGroup(TyperGroup):
    """The root group: runs click in non-standalone mode and reports every expected error as one line."""

    def main(
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        windows_expand_args: bool = True,
        **extra: Any,
    ) -> Any:
        """Run the command line; exit (or, not standalone, return) with the exit code."""
        try:
            result = super().main(args, prog_name, complete_var, False, windows_expand_args, **extra)
            code = result if isinstance(result, int) else exit_codes.OK
        except typer.TyperException as exc:  # click's UsageError, BadParameter, FileError...
            render.error(usage_error_message(exc))
            code = exc.exit_code
        except TaskplaneError as exc:
            render.error(api_error_message(exc))
            code = exit_codes.API_ERROR
        except typer.Abort:
            render.error("taskplane: aborted")
            code = exit_codes.API_ERROR
        if not standalone_mode:
            return code
        sys.exit(code)


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"taskplane {__version__}")
        raise typer.Exit()


def create_app(
    make_client: ClientFactory = Client,
    make_async_client: AsyncClientFactory = AsyncClient,
) -> typer.Typer:
    """Build the ``taskplane`` command; clients come from the given factories."""
    app = typer.Typer(
        name="taskplane",
        cls=OneLineErrorsGroup,
        help="Submit, watch and manage taskplane tasks; run the taskplane server.",
        add_completion=False,
        pretty_exceptions_enable=False,
        context_settings={"help_option_names": ["-h", "--help"]},
    )

    @app.callback()
    def root(
        ctx: typer.Context,
        url: Annotated[
            str | None, typer.Option(envvar="TASKPLANE_URL", help="Server URL (default http://127.0.0.1:8420).")
        ] = None,
        token: Annotated[
            str | None,
            typer.Option(envvar="TASKPLANE_TOKEN", help="API token (default: the one 'taskplane login' saved)."),
        ] = None,
        as_json: Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")] = False,
        version: Annotated[
            bool, typer.Option("--version", callback=_print_version, is_eager=True, help="Print the version.")
        ] = False,
    ) -> None:
        """Submit, watch and manage taskplane tasks; run the taskplane server."""
        ctx.obj = CliContext(
            url=url,
            token=token,
            json=as_json,
            make_client=make_client,
            make_async_client=make_async_client,
        )

    app.command("submit", context_settings={"allow_interspersed_args": False})(tasks.submit)
    app.command("get")(tasks.get)
    app.command("list")(tasks.list_tasks)
    app.command("cancel")(tasks.cancel)
    app.command("logs")(tasks.logs)
    app.command("wait")(wait.wait)
    app.command("capacity")(platform.capacity)
    app.command("resources")(resources.resources)
    app.command("reserve")(resources.reserve)
    app.command("release")(resources.release)
    app.command("reservations")(resources.reservations)
    app.command("usage")(resources.usage)
    app.command("simulate")(simulate.simulate)
    app.add_typer(tenants.app, name="tenants")
    app.command("login")(login.login)
    app.command("whoami")(login.whoami)
    app.add_typer(tokens.app, name="tokens")
    app.add_typer(roles.app, name="roles")
    app.add_typer(audit.app, name="audit")
    app.add_typer(state.app, name="state")
    app.command("server")(server.server)
    app.add_typer(server.db_app, name="db")
    return app


def main() -> None:
    """Entry point of the ``taskplane`` script."""
    create_app()()
