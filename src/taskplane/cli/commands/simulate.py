r"""``simulate``: a capacity-planning and policy dry run on simulated pools, offline (no server needed).

    --pools pools.toml|.json ---> [[pools]] as in the server's config file (simulated pools, node groups)
    --tenants tenants.json -----> a list of tenant bodies, as POST /platform/admin/tenants takes them
    --workload workload.jsonl --> one task per line (``count`` repeats it): at, tenant, pool, cpu, memory, gpu,
                                  priority, duration, run_timeout, selector
                 |  each file checked in full first: a bad one is a usage error (exit 2), nothing runs
                 v
    DryRun(pools, tenants, policy).run(workload)    (executors/simulated/dryrun.py; the engine's scheduling path)
                 |
                 v
    report: rich tables, or --json

The dry-run machinery is imported inside the command, so other commands start without loading it.
"""

from __future__ import annotations

import enum
import math
import tomllib
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import orjson
import typer
from pydantic import BaseModel, ConfigDict, Field, StrictFloat, StrictInt, StrictStr, ValidationError
from rich.table import Table

from taskplane.cli import render
from taskplane.cli.context import JsonFlag, cli_context
from taskplane.config import PoolSettings
from taskplane.domain import quantities as q
from taskplane.domain.pool import Node, PlacementStrategy, Pool
from taskplane.domain.resources import Resources, extended_of
from taskplane.domain.tenant import DEFAULT_TENANT, TENANT_NAME, Tenant
from taskplane.errors import TaskplaneError

if TYPE_CHECKING:
    from taskplane.executors.simulated.dryrun import DryRunReport, Submission

MAX_WORKLOAD_TASKS = 10_000_000
MAX_COUNT = 1_000_000
DEFAULT_CPU = 1000  # the server's default request (settings ``default_cpu`` / ``default_memory``)
DEFAULT_MEMORY = 256 << 20
_SPARK = "▁▂▃▄▅▆▇█"
_SPARK_WIDTH = 24


class PolicyName(enum.StrEnum):
    """``--policy``: a placement strategy for every pool, or the first-fit FIFO baseline."""

    BINPACK = "binpack"
    SPREAD = "spread"
    FIRST_FIT = "first-fit"


# ------------------------------------------------------------------------------------------- file formats


class _PoolsFile(BaseModel):
    """``pools = [...]`` (TOML ``[[pools]]``); other top-level keys are ignored, so a server config file works."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    pools: list[PoolSettings] = Field(min_length=1)


class WorkloadLine(BaseModel):
    """One line of the workload file: ``count`` tasks submitted at ``at`` seconds from the start."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    at: StrictInt | StrictFloat | StrictStr = 0
    tenant: StrictStr = DEFAULT_TENANT
    pool: StrictStr | None = None  # default: the tenant's first allowed pool, else "default"
    cpu: StrictInt | StrictFloat | StrictStr | None = None  # default 1
    memory: StrictInt | StrictFloat | StrictStr | None = None  # default 256Mi
    gpu: StrictInt = 0
    priority: StrictInt = 0
    duration: StrictInt | StrictFloat | StrictStr = 0
    run_timeout: StrictInt | StrictFloat | StrictStr | None = None
    selector: dict[StrictStr, StrictStr] = Field(default_factory=dict)
    count: StrictInt = Field(default=1, ge=1, le=MAX_COUNT)
    id: StrictStr | None = None


class _Directory:
    """What ``apply_tenant_fields`` asks of the engine, answered from the pools file (no tasks exist yet)."""

    def __init__(self, pools: dict[str, Pool]) -> None:
        self._pools = pools

    def pool(self, name: str) -> Pool | None:
        return self._pools.get(name)

    def set_tenant(self, tenant: Tenant) -> None:
        return None

    def drop_tenant(self, name: str) -> None:
        return None

    def tenant_counts(self, name: str) -> Any:
        raise NotImplementedError  # never asked while validating


def _bad(option: str, message: str) -> typer.BadParameter:
    return typer.BadParameter(message, param_hint=f"'{option}'")


def _first_error(exc: ValidationError) -> str:
    first = exc.errors()[0]
    where = ".".join(str(part) for part in first["loc"])
    return f"{where}: {first['msg']}" if where else first["msg"]


def _read(path: Path, option: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise _bad(option, f"cannot read {path}: {exc.strerror or exc}") from exc


def load_pools(path: Path) -> list[Pool]:
    """Simulated pools from a TOML (``[[pools]]``) or JSON (a list, or ``{"pools": [...]}``) file."""
    raw = _read(path, "--pools")
    try:
        if path.suffix.lower() == ".json":
            data = orjson.loads(raw)
            data = {"pools": data} if isinstance(data, list) else data
        else:
            data = tomllib.loads(raw.decode())
    except (orjson.JSONDecodeError, tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise _bad("--pools", f"{path} is not valid {'JSON' if path.suffix == '.json' else 'TOML'}: {exc}") from exc
    if isinstance(data, dict) and isinstance(data.get("pools"), list):
        # The executor may be left out here: every pool of a dry run is simulated.
        data["pools"] = [{"executor": "simulated", **p} if isinstance(p, dict) else p for p in data["pools"]]
    try:
        parsed = _PoolsFile.model_validate(data)
    except ValidationError as exc:
        raise _bad("--pools", f"{path}: {_first_error(exc)}") from exc
    pools: list[Pool] = []
    seen: set[str] = set()
    for i, settings in enumerate(parsed.pools):
        if settings.executor != "simulated":
            raise _bad("--pools", f"{path}: pool {settings.name!r} is {settings.executor}; a dry run needs node groups")
        if settings.name in seen:
            raise _bad("--pools", f"{path}: the pool name {settings.name!r} is used twice")
        seen.add(settings.name)
        nodes: list[Node] = []
        for j, group in enumerate(settings.nodes):
            at = f"pools[{i}].nodes[{j}]"
            try:
                total = Resources(
                    q.parse_millicpu(group.cpu, field=f"{at}.cpu"),
                    q.parse_bytes(group.memory, field=f"{at}.memory"),
                    group.gpu,
                    extended_of(group.extended),
                )
            except TaskplaneError as exc:
                raise _bad("--pools", f"{path}: {exc.detail}") from exc
            labels = {**settings.labels, **group.labels}
            nodes.extend(Node(name, settings.name, total, group.max_tasks, labels) for name in settings.node_names(j))
        pools.append(Pool(settings.name, "simulated", PlacementStrategy(settings.placement), tuple(nodes)))
    names = [node.name for pool in pools for node in pool.nodes]
    if len(set(names)) != len(names):
        raise _bad("--pools", f"{path}: two node groups give their nodes the same names; set name_prefix")
    return pools


def load_tenants(path: Path, pools: list[Pool]) -> list[Tenant]:
    """Tenants from a JSON list (or ``{"tenants": [...]}``) of bodies of ``POST /platform/admin/tenants``."""
    from taskplane.services.tenants import apply_tenant_fields
    from taskplane.wire import TenantCreate

    try:
        data = orjson.loads(_read(path, "--tenants"))
    except orjson.JSONDecodeError as exc:
        raise _bad("--tenants", f"{path} is not valid JSON: {exc}") from exc
    if isinstance(data, dict) and "tenants" in data:
        data = data["tenants"]
    if not isinstance(data, list):
        raise _bad("--tenants", f"{path}: expected a JSON list of tenants")
    directory = _Directory({pool.name: pool for pool in pools})
    tenants: dict[str, Tenant] = {}
    for i, item in enumerate(data):
        try:
            body = TenantCreate.model_validate(item)
        except ValidationError as exc:
            raise _bad("--tenants", f"{path}: tenants[{i}].{_first_error(exc)}") from exc
        if not TENANT_NAME.match(body.name):
            raise _bad("--tenants", f"{path}: tenants[{i}]: {body.name[:64]!r} is not a DNS label")
        if body.name in tenants:
            raise _bad("--tenants", f"{path}: tenant {body.name!r} is listed twice")
        try:
            tenants[body.name] = apply_tenant_fields(Tenant(body.name), body, directory)
        except TaskplaneError as exc:
            raise _bad("--tenants", f"{path}: tenants[{i}] ({body.name}): {exc.detail}") from exc
    return list(tenants.values())


def _seconds(value: int | float | str, field: str, *, zero: bool) -> float:
    if zero and not isinstance(value, bool) and value in (0, "0"):
        return 0.0
    return q.parse_duration(value, field=field)


def _submissions(line: WorkloadLine, tenants: dict[str, Tenant], pools: dict[str, Pool]) -> list[Submission]:
    from taskplane.executors.simulated.dryrun import Submission

    tenant = tenants.get(line.tenant)
    if tenant is None:
        raise ValueError(f"tenant {line.tenant!r} is not in the tenants file")
    pool = line.pool or (tenant.pools[0] if tenant.pools else "default")
    if pool not in pools:
        raise ValueError(f"pool {pool!r} is not in the pools file")
    if not tenant.may_use_pool(pool):
        raise ValueError(f"tenant {tenant.name!r} may not use pool {pool!r}")
    if not tenant.allows_priority(line.priority):
        raise ValueError(
            f"priority {line.priority} is outside the range {tenant.priority_min}..{tenant.priority_max} "
            f"of tenant {tenant.name!r}"
        )
    if line.id is not None and line.count > 1:
        raise ValueError("'id' names one task; leave it out when 'count' is more than 1")
    resources = Resources(
        DEFAULT_CPU if line.cpu is None else q.parse_millicpu(line.cpu, field="cpu"),
        DEFAULT_MEMORY if line.memory is None else q.parse_bytes(line.memory, field="memory"),
        q.parse_count(line.gpu, field="gpu", maximum=q.MAX_GPU),
    )
    timeout = None if line.run_timeout is None else _seconds(line.run_timeout, "run_timeout", zero=False)
    one = Submission(
        at=_seconds(line.at, "at", zero=True),
        tenant=tenant.name,
        pool=pool,
        resources=resources,
        priority=line.priority,
        duration=_seconds(line.duration, "duration", zero=True),
        run_timeout=timeout,
        selector=line.selector,
        id=line.id,
    )
    return [one] * line.count


def load_workload(path: Path, tenants: list[Tenant], pools: list[Pool]) -> list[Submission]:
    """Every task of a JSON-lines workload file, checked against the tenants and pools (blank lines skipped)."""
    by_name = {DEFAULT_TENANT: Tenant(DEFAULT_TENANT), **{t.name: t for t in tenants}}
    by_pool = {pool.name: pool for pool in pools}
    out: list[Submission] = []
    ids: set[str] = set()
    try:
        fh = path.open("rb")
    except OSError as exc:
        raise _bad("--workload", f"cannot read {path}: {exc.strerror or exc}") from exc
    with fh:
        for number, raw in enumerate(fh, start=1):
            if not raw.strip():
                continue
            where = f"{path}, line {number}"
            try:
                line = WorkloadLine.model_validate_json(raw)
                subs = _submissions(line, by_name, by_pool)
            except ValidationError as exc:
                raise _bad("--workload", f"{where}: {_first_error(exc)}") from exc
            except TaskplaneError as exc:
                raise _bad("--workload", f"{where}: {exc.detail}") from exc
            except ValueError as exc:
                raise _bad("--workload", f"{where}: {exc}") from exc
            if line.id is not None:
                if line.id in ids:
                    raise _bad("--workload", f"{where}: the id {line.id!r} is used twice")
                ids.add(line.id)
            out.extend(subs)
            if len(out) > MAX_WORKLOAD_TASKS:
                raise _bad("--workload", f"{where}: more than {MAX_WORKLOAD_TASKS} tasks")
    return out


# ------------------------------------------------------------------------------------------------- output


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds == 0:
        return "0s"
    if seconds < 1:
        return f"{seconds * 1000:.0f}ms"
    if seconds < 60:
        return f"{seconds:.1f}".removesuffix(".0") + "s"
    return q.format_duration(round(seconds))


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.1f}%"


def _spark(values: list[float], top: float) -> str:
    if not values or top <= 0:
        return ""
    step = max(1, math.ceil(len(values) / _SPARK_WIDTH))
    points = [sum(chunk) / len(chunk) for chunk in (values[i : i + step] for i in range(0, len(values), step))]
    return "".join(_SPARK[min(len(_SPARK) - 1, int(v / top * len(_SPARK)))] for v in points)


def _summary(report: DryRunReport) -> Table:
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold", no_wrap=True)
    grid.add_column()
    grid.add_row(
        "virtual time",
        f"{_duration(report.ended - report.started)} (queue non-empty for {_duration(report.queued_seconds)})",
    )
    grid.add_row(
        "tasks",
        f"{report.submitted} submitted, {report.placements} placements, {report.finished} finished, "
        f"{report.timed_out} timed out, {report.preemptions} preempted, {report.pending} still pending, "
        f"{report.parked} never fit",
    )
    if report.churned:
        grid.add_row(
            "churn",
            f"{report.churned} preempted tasks took their room back at once (preemptions that freed room for no one)",
        )
    while_queued = ", ".join(f"{name} {_percent(v)}" for name, v in report.utilization.items())
    overall = ", ".join(f"{name} {_percent(v)}" for name, v in report.utilization_overall.items())
    grid.add_row("utilization", f"{while_queued or '-'} while the queue was non-empty (overall: {overall or '-'})")
    if report.bottleneck is not None:
        grid.add_row("bottleneck", report.bottleneck)
    rate = report.placements / report.scheduler_wall_seconds if report.scheduler_wall_seconds > 0 else 0.0
    grid.add_row(
        "scheduler",
        f"{report.cycles} cycles, {report.scheduler_cpu_seconds:.3f}s CPU, {report.scheduler_wall_seconds:.3f}s "
        f"wall ({rate:,.0f} placements/s)",
    )
    return grid


def _tenant_table(report: DryRunReport) -> Table:
    table = Table(box=None, pad_edge=False, header_style="bold")
    for column in (
        "TENANT",
        "WEIGHT",
        "SUBMITTED",
        "PLACED",
        "DONE",
        "PREEMPTED",
        "PENDING",
        "WAIT MEAN",
        "P50",
        "P99",
        "SHARE",
        "BACKLOGGED",
        "FAIR",
        "SHARE OVER TIME",
    ):
        table.add_column(column, overflow="fold", no_wrap=column == "SHARE OVER TIME")
    series = {t.tenant: [s.shares.get(t.tenant, 0.0) for s in report.shares] for t in report.tenants}
    top = max((v for values in series.values() for v in values), default=0.0)
    for t in report.tenants:
        table.add_row(
            t.tenant,
            f"{t.weight:g}",
            str(t.submitted),
            str(t.placements),
            str(t.finished + t.timed_out),
            str(t.preempted),
            str(t.pending + t.parked),
            _duration(t.wait_mean),
            _duration(t.wait_p50),
            _duration(t.wait_p99),
            _percent(t.share_while_queued),
            _percent(t.share_all_backlogged),
            _percent(t.fair_share),
            _spark(series[t.tenant], top),
        )
    return table


# ------------------------------------------------------------------------------------------------ command

PoolsOption = Annotated[
    Path, typer.Option("--pools", dir_okay=False, help="Pools: TOML (pools tables, as in the server config) or JSON.")
]
TenantsOption = Annotated[
    Path | None,
    typer.Option("--tenants", dir_okay=False, help="Tenants: a JSON list of tenant bodies (default: none)."),
]
WorkloadOption = Annotated[
    Path, typer.Option("--workload", dir_okay=False, help="Workload: JSON lines, one task (x count) per line.")
]
PolicyOption = Annotated[
    PolicyName | None,
    typer.Option(
        "--policy",
        case_sensitive=False,
        help="binpack or spread for every pool (default: each pool's own), or first-fit: the FIFO baseline.",
    ),
]
TickOption = Annotated[
    str,
    typer.Option(
        "--tick", help="Step the clock in ticks (e.g. 1s): faster on large workloads; 0 = from event to event."
    ),
]


def _tick(value: str) -> float:
    if value.strip() in ("0", "0s", ""):
        return 0.0
    try:
        return q.parse_duration(value, field="--tick")
    except TaskplaneError as exc:
        raise _bad("--tick", exc.detail) from exc


def simulate(
    ctx: typer.Context,
    pools: PoolsOption,
    workload: WorkloadOption,
    tenants: TenantsOption = None,
    policy: PolicyOption = None,
    tick: TickOption = "0",
    as_json: JsonFlag = False,
) -> None:
    """Dry-run a workload on simulated pools: placements, waits, fair share, utilization (no server needed).

    For capacity planning and comparing policies; see docs/scheduling.md, "Dry runs".
    """
    from taskplane.executors.simulated.dryrun import DEFAULT_POLICY, DryRun

    options = cli_context(ctx)
    step = _tick(tick)
    found_pools = load_pools(pools)
    found_tenants = load_tenants(tenants, found_pools) if tenants is not None else []
    submissions = load_workload(workload, found_tenants, found_pools)
    run_policy = DEFAULT_POLICY
    if policy is PolicyName.FIRST_FIT:
        run_policy = replace(DEFAULT_POLICY, first_fit=True, fair_share=False, backfill=False)
    elif policy is not None:
        strategy = PlacementStrategy(policy.value)
        found_pools = [replace(pool, placement=strategy) for pool in found_pools]
    dry = DryRun(found_pools, found_tenants, run_policy, tick=step)
    try:
        report = dry.run(submissions)
    except ValueError as exc:  # a generated id met one given in the workload
        raise _bad("--workload", str(exc)) from exc
    if as_json or options.json:
        render.emit_json(report.as_dict())
        return
    out = render.console()
    out.print(_summary(report))
    out.print()
    out.print(_tenant_table(report))
