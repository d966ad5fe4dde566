"""Human output of tenants, resources, reservations and usage (``--json`` goes through ``render.emit_json``)."""

from __future__ import annotations

from datetime import UTC, datetime

from rich.table import Table
from rich.text import Text

from taskplane.cli.render import age, human_bytes, resources, timestamp
from taskplane.domain.quantities import format_duration
from taskplane.wire import PolicyOut, QuotaOut, ReservationOut, ResourcesOut, ResourcesReport, TenantOut, UsageReport

RESERVATION_STYLES = {"pending": "yellow", "active": "green", "released": "dim", "expired": "dim"}


def _table(*columns: str, no_wrap: tuple[str, ...] = ("ID", "NAME", "NODE")) -> Table:
    table = Table(box=None, pad_edge=False, header_style="bold")
    for column in columns:
        table.add_column(column, overflow="fold", no_wrap=column in no_wrap)
    return table


def _unlimited(value: object | None) -> str:
    return "-" if value is None else str(value)


def quota(q: QuotaOut) -> str:
    """A quota in one line: ``cpu 4, memory 16Gi, gpu -, running -, pending 100`` (``-``: unlimited)."""
    return (
        f"cpu {_unlimited(q.cpu)}, memory {_unlimited(q.memory)}, gpu {_unlimited(q.gpu)}, "
        f"running {_unlimited(q.max_running)}, pending {_unlimited(q.max_pending)}"
    )


def policy(p: PolicyOut) -> str:
    """What a tenant's containers may do: ``allows host mounts, network``, or ``none (restricted)``."""
    allowed = [
        what
        for what, allows in (
            ("privileged", p.allow_privileged),
            ("host network", p.allow_host_network),
            ("host PID", p.allow_host_pid),
            ("host mounts", p.allow_host_mounts),
            ("network", p.allow_network),
        )
        if allows
    ]
    return "allows " + ", ".join(allowed) if allowed else "none (restricted)"


def tenant_table(tenants: list[TenantOut]) -> Table:
    """One row per tenant: quota, weight, pools, priorities, and what it holds now."""
    table = _table("NAME", "CPU", "MEMORY", "GPU", "MAX RUN", "MAX PEND", "WEIGHT", "POOLS", "PRIORITY", "PEND", "RUN")
    for t in tenants:
        q, status = t.quota, t.status
        table.add_row(
            t.name + (" (implicit)" if t.implicit else ""),
            _unlimited(q.cpu),
            _unlimited(q.memory),
            _unlimited(q.gpu),
            _unlimited(q.max_running),
            _unlimited(q.max_pending),
            f"{t.weight:g}",
            "all" if t.pools is None else ",".join(t.pools),
            f"{t.priority_range.min}..{t.priority_range.max}",
            "" if status is None else str(status.pending),
            "" if status is None else str(status.running),
        )
    return table


def tenant_details(t: TenantOut, now: datetime) -> Table:
    """The block ``tenants get`` shows."""
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold", no_wrap=True)
    grid.add_column(overflow="fold")
    rows: list[tuple[str, str]] = [
        ("Name", t.name + (" (implicit: not stored, no limits)" if t.implicit else "")),
        ("Quota", quota(t.quota)),
        ("Weight", f"{t.weight:g}"),
        ("Pools", "all" if t.pools is None else ", ".join(t.pools)),
        ("Priorities", f"{t.priority_range.min}..{t.priority_range.max}"),
        ("Borrowing", "yes" if t.borrowing else "no"),
        ("Policy", policy(t.policy)),
    ]
    if t.status is not None:
        rows += [
            ("Tasks", f"{t.status.pending} pending, {t.status.running} running"),
            ("In use", resources(t.status.usage)),
            ("Reservations", f"{t.status.reservations} live"),
        ]
    rows += [("Created", timestamp(t.created_at, now)), ("Updated", timestamp(t.updated_at, now))]
    for key, value in rows:
        grid.add_row(key, value)
    return grid


def _cell(res: ResourcesOut, what: str) -> str:
    if what == "cpu":
        return res.cpu
    if what == "memory":
        return human_bytes(res.memory_bytes)
    return str(res.gpu)


def _free_total(free: ResourcesOut, total: ResourcesOut, what: str) -> str:
    return f"{_cell(free, what)} / {_cell(total, what)}"


def resources_table(report: ResourcesReport) -> Table:
    """One row per node (free / total, allocated, reserved), a row per pool, then the total."""
    table = _table(
        "POOL", "NODE", "CPU FREE/TOTAL", "MEM FREE/TOTAL", "GPU FREE/TOTAL", "ALLOC CPU", "RESERVED CPU", "TASKS"
    )
    for pool in report.pools:
        for n in pool.nodes:
            table.add_row(
                pool.name,
                n.node,
                _free_total(n.free, n.total, "cpu"),
                _free_total(n.free, n.total, "memory"),
                _free_total(n.free, n.total, "gpu"),
                n.allocated.cpu,
                n.reserved.cpu,
                f"{n.tasks} / {n.max_tasks}",
            )
        table.add_row(
            Text(pool.name, style="bold"),
            Text(f"({len(pool.nodes)} nodes, {pool.executor})", style="bold"),
            _free_total(pool.free, pool.total, "cpu"),
            _free_total(pool.free, pool.total, "memory"),
            _free_total(pool.free, pool.total, "gpu"),
            pool.allocated.cpu,
            pool.reserved.cpu,
            "",
        )
        table.add_section()
    table.add_row(
        Text("total", style="bold"),
        "",
        _free_total(report.free, report.total, "cpu"),
        _free_total(report.free, report.total, "memory"),
        _free_total(report.free, report.total, "gpu"),
        report.allocated.cpu,
        report.reserved.cpu,
        "",
    )
    return table


def _ends(r: ReservationOut, now: datetime) -> str:
    if r.ended_at is not None:
        return f"ended {age(r.ended_at, now)} ago"
    if r.expires_at is not None:
        return f"{r.expires_at.astimezone(UTC):%Y-%m-%d %H:%M:%S}Z"
    if r.duration is not None:
        return f"{format_duration(r.duration)} after start"
    return "-"


def reservation_table(items: list[ReservationOut], now: datetime) -> Table:
    """One row per reservation."""
    table = _table("ID", "TENANT", "POOL", "STATE", "SLOTS", "EACH", "NODES", "ENDS", "MESSAGE")
    for r in items:
        table.add_row(
            r.id,
            r.tenant,
            r.pool,
            Text(r.state, style=RESERVATION_STYLES.get(r.state, "")),
            str(r.count),
            resources(r.resources),
            ",".join(dict.fromkeys(r.nodes)) or "-",
            _ends(r, now),
            r.message or "",
        )
    return table


def reservation_details(r: ReservationOut, now: datetime) -> Table:
    """The block ``reserve``, ``release`` and ``reservations ID`` show."""
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold", no_wrap=True)
    grid.add_column(overflow="fold")
    rows: list[tuple[str, str | Text]] = [
        ("ID", r.id),
        ("State", Text(r.state, style=RESERVATION_STYLES.get(r.state, ""))),
        ("Tenant", r.tenant),
        ("Pool", r.pool),
        ("Slots", f"{r.count} x {resources(r.resources)}"),
        ("Total", resources(r.total)),
        ("Priority", str(r.priority)),
        ("Nodes", ", ".join(r.nodes) or "-"),
        ("Duration", "-" if r.duration is None else format_duration(r.duration)),
        ("Ends", _ends(r, now)),
        ("Created", timestamp(r.created_at, now)),
        ("Activated", timestamp(r.activated_at, now)),
    ]
    if r.ended_at is not None:
        rows.append(("Ended", timestamp(r.ended_at, now)))
    if r.message:
        rows.append(("Message", r.message))
    for key, value in rows:
        grid.add_row(key, value)
    return grid


def usage_table(report: UsageReport) -> Table:
    """One row per tenant and pool over the report's window."""
    table = _table(
        "TENANT", "POOL", "ATTEMPTS", "CPU-H REQ", "MEM GiB-H REQ", "GPU-H REQ", "CPU NOW", "CPU-H USED", "UTIL %"
    )
    for row in report.items:
        used = row.measured.cpu_seconds
        table.add_row(
            row.tenant,
            row.pool,
            str(row.attempts),
            f"{row.requested.cpu_seconds / 3600:.2f}",
            f"{row.requested.memory_byte_seconds / 3600 / (1 << 30):.2f}",
            f"{row.requested.gpu_seconds / 3600:.2f}",
            row.allocated.cpu,
            "-" if used is None else f"{used / 3600:.2f}",
            "-" if row.utilization_percent is None else f"{row.utilization_percent:.1f}",
        )
    return table
