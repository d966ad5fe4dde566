"""``tenants create|update|get|list|delete``: tenants, their quotas, weights, pools, priority ranges and policies."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

import typer

from taskplane.cli import render, render_admin
from taskplane.cli.context import JsonFlag, cli_context
from taskplane.cli.flags import TenantFlags, tenant_fields, validated
from taskplane.wire import TenantCreate, TenantOut, TenantUpdate

app = typer.Typer(
    name="tenants",
    help="Create, change, show and delete tenants (quota, fair-share weight, pools, priorities, host access).",
)

_QUOTA = "Quota ('unlimited' lifts a limit)"
_POLICY = "Scheduling"
_HOST = "Host access of container tasks (default: none)"

_FLAG_OF_FIELD = {
    "name": "NAME",
    "quota.cpu": "--cpu",
    "quota.memory": "--memory",
    "quota.gpu": "--gpu",
    "quota.max_running": "--max-running",
    "quota.max_pending": "--max-pending",
    "weight": "--weight",
    "pools": "--pool",
    "priority_range.min": "--priority-min",
    "priority_range.max": "--priority-max",
    "borrowing": "--borrowing",
}

Name = Annotated[str, typer.Argument(metavar="NAME", help="Tenant name (a DNS label).")]
Cpu = Annotated[str | None, typer.Option(help="CPU cores: 16, 0.5, 500m.", rich_help_panel=_QUOTA)]
Memory = Annotated[str | None, typer.Option(help="Memory: 64Gi.", rich_help_panel=_QUOTA)]
Gpu = Annotated[str | None, typer.Option(help="GPUs.", rich_help_panel=_QUOTA)]
MaxRunning = Annotated[str | None, typer.Option(help="Tasks running at once.", rich_help_panel=_QUOTA)]
MaxPending = Annotated[str | None, typer.Option(help="Tasks waiting at once.", rich_help_panel=_QUOTA)]
Weight = Annotated[float | None, typer.Option(help="Fair-share weight, > 0 and <= 1000.", rich_help_panel=_POLICY)]
Pools = Annotated[list[str] | None, typer.Option("--pool", help="Allowed pool; repeatable.", rich_help_panel=_POLICY)]
AllPools = Annotated[bool, typer.Option("--all-pools", help="Allow every pool.", rich_help_panel=_POLICY)]
PriorityMin = Annotated[int | None, typer.Option(help="Lowest allowed priority.", rich_help_panel=_POLICY)]
PriorityMax = Annotated[int | None, typer.Option(help="Highest allowed priority.", rich_help_panel=_POLICY)]
Borrowing = Annotated[
    bool | None,
    typer.Option("--borrowing/--no-borrowing", help="May use idle capacity beyond its quota.", rich_help_panel=_POLICY),
]
AllowPrivileged = Annotated[
    bool | None,
    typer.Option(
        "--allow-privileged/--no-allow-privileged", help="May run privileged containers.", rich_help_panel=_HOST
    ),
]
AllowHostNetwork = Annotated[
    bool | None,
    typer.Option(
        "--allow-host-network/--no-allow-host-network", help="May use the host's network.", rich_help_panel=_HOST
    ),
]
AllowHostPid = Annotated[
    bool | None,
    typer.Option(
        "--allow-host-pid/--no-allow-host-pid", help="May use the host's PID namespace.", rich_help_panel=_HOST
    ),
]
AllowHostMounts = Annotated[
    bool | None,
    typer.Option(
        "--allow-host-mounts/--no-allow-host-mounts", help="May mount host paths (--mount).", rich_help_panel=_HOST
    ),
]
AllowNetwork = Annotated[
    bool | None,
    typer.Option("--allow-network/--no-allow-network", help="May have any network (--network).", rich_help_panel=_HOST),
]
Restricted = Annotated[
    bool,
    typer.Option("--restricted", help="Allow no host access (resets every --allow-*).", rich_help_panel=_HOST),
]


def _show(ctx: typer.Context, tenant: TenantOut, as_json: bool) -> None:
    if as_json or cli_context(ctx).json:
        render.emit_json(tenant)
    else:
        render.console().print(render_admin.tenant_details(tenant, datetime.now(UTC)))


@app.command("create")
def create(
    ctx: typer.Context,
    name: Name,
    cpu: Cpu = None,
    memory: Memory = None,
    gpu: Gpu = None,
    max_running: MaxRunning = None,
    max_pending: MaxPending = None,
    weight: Weight = None,
    pool: Pools = None,
    all_pools: AllPools = False,
    priority_min: PriorityMin = None,
    priority_max: PriorityMax = None,
    borrowing: Borrowing = None,
    allow_privileged: AllowPrivileged = None,
    allow_host_network: AllowHostNetwork = None,
    allow_host_pid: AllowHostPid = None,
    allow_host_mounts: AllowHostMounts = None,
    allow_network: AllowNetwork = None,
    restricted: Restricted = False,
    as_json: JsonFlag = False,
) -> None:
    """Create a tenant. Limits not given are unlimited; every pool and priority is allowed unless narrowed.

    Container tasks get no host access (no network either) unless an --allow-* option grants it.
    """
    flags = TenantFlags(
        cpu=cpu,
        memory=memory,
        gpu=gpu,
        max_running=max_running,
        max_pending=max_pending,
        weight=weight,
        pools=pool or [],
        all_pools=all_pools,
        priority_min=priority_min,
        priority_max=priority_max,
        borrowing=borrowing,
        allow_privileged=allow_privileged,
        allow_host_network=allow_host_network,
        allow_host_pid=allow_host_pid,
        allow_host_mounts=allow_host_mounts,
        allow_network=allow_network,
        restricted=restricted,
    )
    body = validated(TenantCreate, {"name": name, **tenant_fields(flags)}, _FLAG_OF_FIELD)
    with cli_context(ctx).client() as tp:
        _show(ctx, tp.create_tenant(body), as_json)


@app.command("update")
def update(
    ctx: typer.Context,
    name: Name,
    cpu: Cpu = None,
    memory: Memory = None,
    gpu: Gpu = None,
    max_running: MaxRunning = None,
    max_pending: MaxPending = None,
    weight: Weight = None,
    pool: Pools = None,
    all_pools: AllPools = False,
    priority_min: PriorityMin = None,
    priority_max: PriorityMax = None,
    borrowing: Borrowing = None,
    allow_privileged: AllowPrivileged = None,
    allow_host_network: AllowHostNetwork = None,
    allow_host_pid: AllowHostPid = None,
    allow_host_mounts: AllowHostMounts = None,
    allow_network: AllowNetwork = None,
    restricted: Restricted = False,
    as_json: JsonFlag = False,
) -> None:
    """Change only the settings given: taskplane tenants update team-a --cpu 32 --max-pending unlimited.

    --allow-X/--no-allow-X change one permission and keep the others; --restricted withdraws them all.
    """
    flags = TenantFlags(
        cpu=cpu,
        memory=memory,
        gpu=gpu,
        max_running=max_running,
        max_pending=max_pending,
        weight=weight,
        pools=pool or [],
        all_pools=all_pools,
        priority_min=priority_min,
        priority_max=priority_max,
        borrowing=borrowing,
        allow_privileged=allow_privileged,
        allow_host_network=allow_host_network,
        allow_host_pid=allow_host_pid,
        allow_host_mounts=allow_host_mounts,
        allow_network=allow_network,
        restricted=restricted,
    )
    fields = tenant_fields(flags)
    if not fields:
        raise typer.BadParameter("give at least one setting to change", param_hint="'NAME'")
    patch = validated(TenantUpdate, fields, _FLAG_OF_FIELD)
    with cli_context(ctx).client() as tp:
        _show(ctx, tp.update_tenant(name, patch), as_json)


@app.command("get")
def get(ctx: typer.Context, name: Name, as_json: JsonFlag = False) -> None:
    """Show one tenant: its settings and what it holds now."""
    with cli_context(ctx).client() as tp:
        _show(ctx, tp.get_tenant(name), as_json)


@app.command("list")
def list_tenants(ctx: typer.Context, as_json: JsonFlag = False) -> None:
    """List tenants with their quotas ('-' is unlimited) and pending and running tasks."""
    options = cli_context(ctx)
    with options.client() as tp:
        tenants = tp.list_tenants()
    if as_json or options.json:
        render.emit_json(tenants)
    else:
        render.console().print(render_admin.tenant_table(tenants))


@app.command("delete")
def delete(ctx: typer.Context, name: Name) -> None:
    """Delete a tenant that has no pending or running task and no live reservation."""
    with cli_context(ctx).client() as tp:
        tp.delete_tenant(name)
    render.error(f"deleted tenant {name}")
