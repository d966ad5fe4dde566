"""Human and JSON output of the CLI. Human output goes through rich with markup off (names are user data)."""

from __future__ import annotations

import os
import shlex
import sys
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

import orjson
import typer
from pydantic import BaseModel
from rich.console import Console
from rich.table import Table
from rich.text import Text

from taskplane.domain.quantities import format_duration
from taskplane.wire import CapacityOut, ContainerOut, ResourcesOut, TaskOut

STATE_STYLES = {
    "pending": "yellow",
    "admitted": "yellow",
    "starting": "cyan",
    "running": "cyan",
    "cancelling": "magenta",
    "succeeded": "green",
    "failed": "red",
    "timed_out": "red",
    "cancelled": "dim",
}


def console(*, stderr: bool = False) -> Console:
    """Return a console for stdout (or stderr); wide when not a terminal, so piped tables are not squeezed."""
    out = Console(stderr=stderr, markup=False, highlight=False, emoji=False)
    if not out.is_terminal and "COLUMNS" not in os.environ:
        out.width = 200
    return out


def emit_json(value: BaseModel | Sequence[BaseModel] | dict[str, Any]) -> None:
    """Print ``value`` as indented JSON on stdout."""
    if isinstance(value, BaseModel):
        data: Any = value.model_dump(mode="json")
    elif isinstance(value, dict):
        data = value
    else:
        data = [item.model_dump(mode="json") for item in value]
    sys.stdout.write(orjson.dumps(data, option=orjson.OPT_INDENT_2).decode() + "\n")


def error(message: str) -> None:
    """Print one line on stderr."""
    typer.echo(message, err=True)


def state_text(state: str) -> Text:
    """Return the state, coloured."""
    return Text(state, style=STATE_STYLES.get(state, ""))


def age(moment: datetime | None, now: datetime) -> str:
    """Format how long ago ``moment`` was, kubectl style: ``12s``, ``5m``, ``3h``, ``2d``."""
    if moment is None:
        return "-"
    seconds = max(0, int((now - moment).total_seconds()))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def elapsed(start: datetime | None, end: datetime | None) -> str:
    """Format the time from ``start`` to ``end``: ``850ms``, ``3.2s``, ``5m3s``; ``-`` when unknown."""
    if start is None or end is None:
        return "-"
    seconds = max(0.0, (end - start).total_seconds())
    if seconds < 60:
        return f"{round(seconds * 1000)}ms" if seconds < 1 else f"{seconds:.1f}s"
    return format_duration(round(seconds))


def until(moment: datetime, now: datetime) -> str:
    """Format a future time in UTC with how far off it is: ``2024-05-01 12:00:00Z (in 5m)``."""
    if moment <= now:
        return f"{moment.astimezone(UTC):%Y-%m-%d %H:%M:%S}Z (now)"
    return f"{moment.astimezone(UTC):%Y-%m-%d %H:%M:%S}Z (in {age(now, moment)})"


def timestamp(moment: datetime | None, now: datetime) -> str:
    """Format a time in UTC with its age: ``2024-05-01 12:00:00Z (5m ago)``."""
    if moment is None:
        return "-"
    return f"{moment.astimezone(UTC):%Y-%m-%d %H:%M:%S}Z ({age(moment, now)} ago)"


def reason(task: TaskOut) -> str:
    """Say in a few words why the task is where it is (pending reason, or how it ended)."""
    if task.pending_reason is not None:
        text = task.pending_reason.code
        if task.pending_reason.resource:
            text += f"({task.pending_reason.resource})"
        return text
    if task.state in ("failed", "timed_out", "cancelled"):
        return _failure(task.failure_class, task.message)
    return ""


def _failure(failure_class: str | None, message: str | None) -> str:
    parts = [part for part in (failure_class, message) if part]
    return ": ".join(dict.fromkeys(parts))  # "cancelled: cancelled" says it once


def resources(res: ResourcesOut) -> str:
    """Format resources compactly: ``cpu 500m, memory 256Mi, gpu 1, example.com/fpga 1``."""
    text = f"cpu {res.cpu}, memory {res.memory}"
    text += f", gpu {res.gpu}" if res.gpu else ""
    return text + "".join(f", {name} {amount}" for name, amount in sorted(res.extended.items()))


def container(c: ContainerOut) -> str:
    """A task's container options in one line: ``no network, privileged, read-only root, user 1000``."""
    switches = (
        ("privileged", c.privileged),
        ("host network", c.host_network),
        ("host PID", c.host_pid),
        ("read-only root", c.read_only_root),
    )
    parts = ["network" if c.network else "no network"] + [what for what, on in switches if on]
    return ", ".join(parts + ([f"user {c.user}"] if c.user else []))


def final_line(task: TaskOut) -> str:
    """Return the one-line summary of a finished task: ``<id> failed (exit 3) after 1.2s: user: ...``."""
    line = f"{task.id} {task.state}"
    if task.exit_code is not None:
        line += f" (exit {task.exit_code})"
    if task.started_at is not None and task.finished_at is not None:
        line += f" after {elapsed(task.started_at, task.finished_at)}"
    why = reason(task)
    return line + (f": {why}" if why and task.state != "succeeded" else "")


def task_table(tasks: Iterable[TaskOut], now: datetime) -> Table:
    """Tabulate tasks as ``list`` shows them."""
    table = Table(box=None, pad_edge=False, header_style="bold")
    for column in ("ID", "NAME", "STATE", "POOL", "AGE", "ATTEMPTS", "EXIT", "REASON"):
        table.add_column(column, no_wrap=column in ("ID", "STATE"), overflow="fold")
    for task in tasks:
        table.add_row(
            task.id,
            task.name or "",
            state_text(task.state),
            task.pool,
            age(task.created_at, now),
            str(task.attempt_count),
            "" if task.exit_code is None else str(task.exit_code),
            reason(task),
        )
    return table


def _details(task: TaskOut, now: datetime) -> Table:
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold", no_wrap=True)
    grid.add_column(overflow="fold")
    rows: list[tuple[str, str | Text]] = [
        ("ID", task.id),
        ("Name", task.name or "-"),
        ("Tenant", task.tenant),
        ("Owner", task.owner or "-"),
        ("State", state_text(task.state + (" (cancel requested)" if task.cancel_requested else ""))),
    ]
    if task.pending_reason is not None:
        why = f"{task.pending_reason.code}: {task.pending_reason.message}"
        if task.pending_reason.until is not None:
            why += f" (until {timestamp(task.pending_reason.until, now)})"
        rows.append(("Pending", why))
    if task.queue_position is not None:
        rows.append(("Queue position", str(task.queue_position)))
    if task.eta is not None:
        rows.append(("Estimated start", until(task.eta, now)))
    rows += [
        ("Pool", task.pool),
        ("Priority", str(task.priority)),
        ("Command", ("sh -c " if task.shell else "") + shlex.join(task.command)),
    ]
    if task.image:
        rows.append(("Image", task.image))
    if task.container is not None:
        rows.append(("Container", container(task.container)))
        if task.container.mounts:
            mounts = (f"{m.source}:{m.target}:{'ro' if m.read_only else 'rw'}" for m in task.container.mounts)
            rows.append(("Mounts", ", ".join(mounts)))
    if task.workdir:
        rows.append(("Workdir", task.workdir))
    rows.append(("Resources", resources(task.resources)))
    if task.node_selector:
        rows.append(("Node selector", ", ".join(f"{k}={v}" for k, v in sorted(task.node_selector.items()))))
    if task.reservation:
        rows.append(("Reservation", task.reservation))
    if task.simulated_duration is not None:
        rows.append(("Simulated duration", format_duration(task.simulated_duration)))
    if task.labels:
        rows.append(("Labels", ", ".join(f"{k}={v}" for k, v in sorted(task.labels.items()))))
    if task.env:
        rows.append(("Env", ", ".join(sorted(task.env))))
    if task.timeouts:
        rows.append(("Timeouts", ", ".join(f"{k}={v}" for k, v in task.timeouts.items() if v is not None) or "-"))
    if task.retry:
        rows.append(("Retry", ", ".join(f"{k}={v}" for k, v in task.retry.items() if v is not None) or "-"))
    if task.idempotency_key:
        rows.append(("Idempotency key", task.idempotency_key))
    rows += [
        ("Created", timestamp(task.created_at, now)),
        ("Started", timestamp(task.started_at, now)),
        ("Finished", timestamp(task.finished_at, now)),
    ]
    if task.exit_code is not None:
        rows.append(("Exit code", str(task.exit_code)))
    if task.failure_class:
        rows.append(("Failure", _failure(task.failure_class, task.message)))
    elif task.message:
        rows.append(("Message", task.message))
    for key, value in rows:
        grid.add_row(key, value)
    return grid


def _attempts(task: TaskOut) -> Table:
    table = Table(box=None, pad_edge=False, header_style="bold", title="Attempts", title_justify="left")
    for column in ("#", "STATE", "NODE", "STARTED", "DURATION", "EXIT", "SIGNAL", "CLASS", "PEAK MEM", "MESSAGE"):
        table.add_column(column, overflow="fold")
    for attempt in task.attempts or []:
        table.add_row(
            str(attempt.number),
            state_text(attempt.state),
            attempt.node,
            "-" if attempt.started_at is None else f"{attempt.started_at.astimezone(UTC):%H:%M:%S}Z",
            elapsed(attempt.started_at, attempt.finished_at),
            "" if attempt.exit_code is None else str(attempt.exit_code),
            "" if attempt.signal is None else str(attempt.signal),
            attempt.failure_class or "",
            "" if attempt.peak_memory is None else human_bytes(attempt.peak_memory),
            (attempt.message or "") + (" (log truncated)" if attempt.log_truncated else ""),
        )
    return table


def print_task(out: Console, task: TaskOut, now: datetime) -> None:
    """Print the readable block ``get`` shows: details, then the attempts table."""
    out.print(_details(task, now))
    if task.attempts:
        out.print()
        out.print(_attempts(task))


def human_bytes(amount: int) -> str:
    """Format bytes for reading, to one decimal: ``23.5Gi``, ``512Mi``, ``100``."""
    for unit, size in (("Ti", 1 << 40), ("Gi", 1 << 30), ("Mi", 1 << 20), ("Ki", 1 << 10)):
        if amount >= size:
            return f"{amount / size:.1f}".removesuffix(".0") + unit
    return str(amount)


def _usage(total: ResourcesOut, free: ResourcesOut, what: str) -> str:
    if what == "cpu":
        return f"{free.cpu} / {total.cpu}"
    if what == "memory":
        return f"{human_bytes(free.memory_bytes)} / {human_bytes(total.memory_bytes)}"
    return f"{free.gpu} / {total.gpu}"


def capacity_table(capacity: CapacityOut) -> Table:
    """Tabulate capacity: one row per node (free / total), then the total."""
    table = Table(box=None, pad_edge=False, header_style="bold")
    for column in ("NODE", "EXECUTOR", "CPU FREE/TOTAL", "MEMORY FREE/TOTAL", "GPU", "TASKS", "CGROUPS", "WARNINGS"):
        table.add_column(column, overflow="fold")
    for node in capacity.nodes:
        table.add_row(
            node.node,
            node.executor,
            _usage(node.total, node.free, "cpu"),
            _usage(node.total, node.free, "memory"),
            _usage(node.total, node.free, "gpu"),
            f"{node.running_tasks} / {node.max_tasks}",
            node.cgroups,
            Text("; ".join(node.warnings), style="yellow"),
        )
    table.add_section()
    table.add_row(
        Text("total", style="bold"),
        "",
        _usage(capacity.total, capacity.free, "cpu"),
        _usage(capacity.total, capacity.free, "memory"),
        _usage(capacity.total, capacity.free, "gpu"),
        str(capacity.running_tasks),
        "",
        "",
    )
    return table
