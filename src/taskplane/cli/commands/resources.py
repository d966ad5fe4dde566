"""``resources``, ``reserve``, ``release``, ``reservations`` and ``usage``."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

import typer

from taskplane.cli import render, render_admin
from taskplane.cli.context import JsonFlag, cli_context
from taskplane.cli.flags import parse_amounts, parse_rfc3339, validated
from taskplane.domain.quantities import parse_duration
from taskplane.errors import InvalidRequestError
from taskplane.wire import ReservationOut, ReserveRequest

_FLAG_OF_FIELD = {
    "tenant": "--tenant",
    "pool": "--pool",
    "resources.cpu": "--cpu",
    "resources.memory": "--memory",
    "resources.gpu": "--gpu",
    "resources.extended": "--extended",
    "count": "--count",
    "duration": "--duration",
    "ttl": "--ttl",
    "priority": "--priority",
}


def _show(ctx: typer.Context, reservation: ReservationOut, as_json: bool) -> None:
    if as_json or cli_context(ctx).json:
        render.emit_json(reservation)
    else:
        render.console().print(render_admin.reservation_details(reservation, datetime.now(UTC)))


def resources(ctx: typer.Context, as_json: JsonFlag = False) -> None:
    """Show each pool and node: free / total, allocated to tasks, reserved, task slots."""
    options = cli_context(ctx)
    with options.client() as tp:
        report = tp.resources()
    if as_json or options.json:
        render.emit_json(report)
    else:
        render.console().print(render_admin.resources_table(report))


def reserve(
    ctx: typer.Context,
    tenant: Annotated[str, typer.Option(help="Tenant to hold the capacity for.")] = "default",
    pool: Annotated[str | None, typer.Option(help="Pool (default: the tenant's first pool).")] = None,
    cpu: Annotated[str | None, typer.Option(help="CPU per slot: 2, 500m.")] = None,
    memory: Annotated[str | None, typer.Option(help="Memory per slot: 4Gi.")] = None,
    gpu: Annotated[int | None, typer.Option(min=0, help="GPUs per slot.")] = None,
    extended: Annotated[
        list[str] | None, typer.Option("--extended", help="Extended resource per slot NAME=N; repeatable.")
    ] = None,
    count: Annotated[int, typer.Option(min=1, max=1000, help="Number of slots, held all at once.")] = 1,
    duration: Annotated[str | None, typer.Option(help="How long it is held once active: 2h.")] = None,
    ttl: Annotated[str | None, typer.Option(help="When it ends, from now, active or not: 1h.")] = None,
    priority: Annotated[int, typer.Option(min=-1000, max=1000, help="Priority against other work.")] = 0,
    as_json: JsonFlag = False,
) -> None:
    """Reserve COUNT slots of the given size in a pool, all or none, for a duration or until a TTL."""
    for value, flag in ((duration, "--duration"), (ttl, "--ttl")):
        if value is not None:
            try:
                parse_duration(value, field=flag.lstrip("-"))
            except InvalidRequestError as exc:
                raise typer.BadParameter(exc.detail, param_hint=f"'{flag}'") from exc
    slot: dict[str, Any] = {k: v for k, v in (("cpu", cpu), ("memory", memory), ("gpu", gpu)) if v is not None}
    if extended:
        slot["extended"] = parse_amounts(extended, "--extended")
    fields: dict[str, Any] = {"tenant": tenant, "resources": slot, "count": count, "priority": priority}
    fields.update({k: v for k, v in (("pool", pool), ("duration", duration), ("ttl", ttl)) if v is not None})
    request = validated(ReserveRequest, fields, _FLAG_OF_FIELD)
    with cli_context(ctx).client() as tp:
        _show(ctx, tp.reserve(request), as_json)


def release(
    ctx: typer.Context, reservation_id: Annotated[str, typer.Argument(metavar="ID")], as_json: JsonFlag = False
) -> None:
    """Release a reservation: its capacity is free again and its tasks' slots end."""
    with cli_context(ctx).client() as tp:
        released = tp.release(reservation_id)
    if as_json or cli_context(ctx).json:
        render.emit_json(released)
    else:
        typer.echo(f"{released.id} {released.state}")


def reservations(
    ctx: typer.Context,
    reservation_id: Annotated[str | None, typer.Argument(metavar="[ID]", help="Show this one in full.")] = None,
    tenant: Annotated[str | None, typer.Option(help="Only this tenant's.")] = None,
    live: Annotated[bool, typer.Option("--live", help="Only pending and active ones.")] = False,
    as_json: JsonFlag = False,
) -> None:
    """List reservations, oldest first, or show one."""
    options = cli_context(ctx)
    with options.client() as tp:
        if reservation_id is not None:
            _show(ctx, tp.get_reservation(reservation_id), as_json)
            return
        items = tp.list_reservations(tenant, live)
    if as_json or options.json:
        render.emit_json(items)
    elif items:
        render.console().print(render_admin.reservation_table(items, datetime.now(UTC)))
    else:
        render.error("no reservations")


def usage(
    ctx: typer.Context,
    window: Annotated[str | None, typer.Option(help="Window ending now (or starting at --start): 1h, 7d.")] = None,
    start: Annotated[str | None, typer.Option(help="Window start, RFC 3339.")] = None,
    end: Annotated[str | None, typer.Option(help="Window end, RFC 3339 (default: now).")] = None,
    as_json: JsonFlag = False,
) -> None:
    """Show requested, allocated and measured use per tenant and pool over a window (default: the last hour)."""
    options = cli_context(ctx)
    if window is not None:
        try:
            parse_duration(window, field="window")
        except InvalidRequestError as exc:
            raise typer.BadParameter(exc.detail, param_hint="'--window'") from exc
    with options.client() as tp:
        report = tp.usage(window, parse_rfc3339(start, "--start"), parse_rfc3339(end, "--end"))
    if as_json or options.json:
        render.emit_json(report)
        return
    out = render.console()
    out.print(f"{report.start.astimezone(UTC):%Y-%m-%d %H:%M:%S}Z .. {report.end.astimezone(UTC):%Y-%m-%d %H:%M:%S}Z")
    if report.items:
        out.print(render_admin.usage_table(report))
    else:
        render.error("no usage in this window")
