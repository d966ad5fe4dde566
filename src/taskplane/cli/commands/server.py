"""``server`` and ``db upgrade``: the commands that run on the server's machine.

``taskplane.bootstrap`` is imported inside the commands, so client commands start without loading the server.
"""

from __future__ import annotations

import sys
import tomllib
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlsplit, urlunsplit

import typer
from pydantic import ValidationError

from taskplane.cli import render
from taskplane.config import Settings, load_settings

ConfigOption = Annotated[
    Path | None,
    typer.Option(
        "--config",
        exists=True,
        dir_okay=False,
        help="TOML settings file (default: $TASKPLANE_CONFIG).",
    ),
]
DataDirOption = Annotated[Path | None, typer.Option(help="Where the database, logs and work dirs live.")]
DatabaseUrlOption = Annotated[
    str | None, typer.Option(help="SQLAlchemy URL (default: SQLite in the data dir).", envvar=None)
]

db_app = typer.Typer(help="Database maintenance.")

_SECURITY = "Security"


def settings_from(config: Path | None, **overrides: Any) -> Settings:
    """Load settings (file < environment < flags), reporting a bad file or value as a usage error."""
    try:
        return load_settings(config, **overrides)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "settings"
        raise typer.BadParameter(f"{where}: {first['msg']}", param_hint="settings") from exc
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise typer.BadParameter(f"cannot read the config file: {exc}", param_hint="'--config'") from exc


def redact(url: str) -> str:
    """Hide the password of a database URL."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


def server(
    host: Annotated[str | None, typer.Option(help="Address to listen on (default 127.0.0.1).")] = None,
    port: Annotated[int | None, typer.Option(min=0, max=65535, help="Port to listen on (default 8420).")] = None,
    data_dir: DataDirOption = None,
    database_url: DatabaseUrlOption = None,
    node_name: Annotated[str | None, typer.Option(help="This node's name (default: the host name).")] = None,
    node_cpu: Annotated[str | None, typer.Option(help="CPU to offer instead of the detected one: 4, 3500m.")] = None,
    node_memory: Annotated[str | None, typer.Option(help="Memory to offer instead of the detected: 8Gi.")] = None,
    log_level: Annotated[str | None, typer.Option(help="debug, info, warning or error.")] = None,
    insecure_no_auth: Annotated[
        bool,
        typer.Option(
            "--insecure-no-auth",
            help="No authentication: every local process is a platform admin. Loopback only; for experiments.",
            rich_help_panel=_SECURITY,
        ),
    ] = False,
    tls_cert: Annotated[
        Path | None,
        typer.Option(
            exists=True, dir_okay=False, help="Serve HTTPS with this PEM certificate.", rich_help_panel=_SECURITY
        ),
    ] = None,
    tls_key: Annotated[
        Path | None,
        typer.Option(exists=True, dir_okay=False, help="The certificate's PEM private key.", rich_help_panel=_SECURITY),
    ] = None,
    config: ConfigOption = None,
) -> None:
    """Run the taskplane server (API, scheduler and executor) in the foreground.

    On its first start it creates the platform-admin API key and leaves it, mode 0600, in <data dir>/admin.token;
    client commands on this machine use it when nothing else gives a token.
    """
    settings = settings_from(
        config,
        host=host,
        port=port,
        data_dir=data_dir,
        database_url=database_url,
        node_name=node_name,
        node_cpu=node_cpu,
        node_memory=node_memory,
        log_level=log_level,
        insecure_no_auth=True if insecure_no_auth else None,  # not given: the file or environment decides
        tls_cert=tls_cert,
        tls_key=tls_key,
    )
    from taskplane.bootstrap import serve

    serve(settings)


@db_app.command("upgrade")
def db_upgrade(
    data_dir: DataDirOption = None, database_url: DatabaseUrlOption = None, config: ConfigOption = None
) -> None:
    """Apply every pending migration to the database."""
    settings = settings_from(config, data_dir=data_dir, database_url=database_url)
    from taskplane.bootstrap import upgrade_database

    upgrade_database(settings)
    render.error(f"database is up to date: {redact(settings.resolved_database_url())}")


@db_app.command("admin-token")
def db_admin_token(
    data_dir: DataDirOption = None, database_url: DatabaseUrlOption = None, config: ConfigOption = None
) -> None:
    """Mint a new platform-admin API key directly in the database and store it (0600) as <data dir>/admin.token.

    For recovery when every admin key is lost: it needs the database and the server's pepper, so it runs on
    the server's machine. The key is audited like any other.
    """
    settings = settings_from(config, data_dir=data_dir, database_url=database_url)
    from taskplane.bootstrap import mint_admin_token

    path = mint_admin_token(settings)
    render.error(f"a new platform-admin key is in {path} (mode 0600); the CLI on this machine uses it")


@db_app.command("state-export")
def db_state_export(
    output: Annotated[
        Path | None, typer.Option("--output", "-o", dir_okay=False, help="Write here (default: standard output).")
    ] = None,
    data_dir: DataDirOption = None,
    database_url: DatabaseUrlOption = None,
    config: ConfigOption = None,
) -> None:
    """Export every tenant's state entries as JSON lines with their revisions, straight from the database.

    One consistent snapshot, safe while the server runs. Leases are not exported (a leased key is written
    without its lease). Restore with 'taskplane db state-import'.
    """
    settings = settings_from(config, data_dir=data_dir, database_url=database_url)
    from taskplane.bootstrap import export_state

    if output is None:
        summary = export_state(settings, sys.stdout.buffer)
        sys.stdout.flush()
    else:
        partial = output.with_name(f".{output.name}.partial")
        try:
            with partial.open("wb") as out:
                summary = export_state(settings, out)
            partial.replace(output)
        finally:
            partial.unlink(missing_ok=True)
    dropped = f"; {summary.leased_keys} leased keys exported without their lease" if summary.leased_keys else ""
    render.error(f"exported {summary.entries} entries at revision {summary.revision}{dropped}")


@db_app.command("state-import")
def db_state_import(
    file: Annotated[Path, typer.Argument(help="An export of 'taskplane db state-export'; '-' reads standard input.")],
    data_dir: DataDirOption = None,
    database_url: DatabaseUrlOption = None,
    config: ConfigOption = None,
) -> None:
    """Restore a state export into a database whose state store is empty (all or nothing, one transaction).

    Entries keep their revisions and versions, and the store its revision; history before that revision is
    not restored (reads and watches from before it answer 'compacted').
    """
    settings = settings_from(config, data_dir=data_dir, database_url=database_url)
    from taskplane.bootstrap import import_state

    if str(file) == "-":
        summary = import_state(settings, sys.stdin.buffer, "-")
    else:
        try:
            with file.open("rb") as lines:
                summary = import_state(settings, lines, str(file))
        except OSError as exc:
            raise typer.BadParameter(f"cannot read {file}: {exc.strerror}", param_hint="FILE") from exc
    render.error(f"imported {summary.entries} entries; the state store is at revision {summary.revision}")


@db_app.command("backup")
def db_backup(
    file: Annotated[Path, typer.Argument(dir_okay=False, help="The copy to create (must not exist).")],
    data_dir: DataDirOption = None,
    database_url: DatabaseUrlOption = None,
    config: ConfigOption = None,
) -> None:
    """Copy the SQLite database with SQLite's online backup API: consistent, while the server runs.

    To restore: stop the server, replace taskplane.db with the copy, delete taskplane.db-wal and
    taskplane.db-shm, start the server. PostgreSQL: see the Backups section of docs/operations.md.
    """
    settings = settings_from(config, data_dir=data_dir, database_url=database_url)
    from taskplane.bootstrap import backup_database

    path = backup_database(settings, file)
    render.error(f"backed up {redact(settings.resolved_database_url())} to {path}")
