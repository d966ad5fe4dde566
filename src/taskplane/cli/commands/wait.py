"""``wait ID...``: long-poll many tasks at once (asyncio, bounded concurrency) behind one progress bar."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from taskplane.cli import exit_codes, render
from taskplane.cli.context import JsonFlag, cli_context
from taskplane.errors import TaskplaneError
from taskplane.sdk import AsyncClient, WaitTimeoutError
from taskplane.wire import TaskOut

MAX_CONCURRENT_WAITS = 64


@dataclass(frozen=True, slots=True)
class Outcome:
    """How waiting for one task ended: its last known state, or an error."""

    task_id: str
    task: TaskOut | None = None
    error: str | None = None
    gave_up: bool = False

    @property
    def succeeded(self) -> bool:
        """Tell whether the task ended successfully."""
        return self.task is not None and not self.gave_up and self.task.state == "succeeded"


async def _wait_one(tp: AsyncClient, task_id: str, deadline: float | None, gate: asyncio.Semaphore) -> Outcome:
    async with gate:
        remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
        try:
            return Outcome(task_id, task=await tp.wait(task_id, timeout=remaining))
        except WaitTimeoutError as exc:
            return Outcome(task_id, task=exc.task, gave_up=True)
        except TaskplaneError as exc:
            return Outcome(task_id, error=f"{exc.detail} [{exc.code}]")


async def wait_all(
    tp: AsyncClient, task_ids: list[str], timeout: float | None, on_done: Callable[[Outcome], None]
) -> list[Outcome]:
    """Wait for every task (at most ``MAX_CONCURRENT_WAITS`` long polls at once); results in ``task_ids`` order."""
    gate = asyncio.Semaphore(MAX_CONCURRENT_WAITS)
    deadline = None if timeout is None else time.monotonic() + timeout

    async def one(task_id: str) -> Outcome:
        outcome = await _wait_one(tp, task_id, deadline, gate)
        on_done(outcome)
        return outcome

    async with tp:
        return list(await asyncio.gather(*(one(task_id) for task_id in task_ids)))


def wait(
    ctx: typer.Context,
    task_ids: Annotated[list[str], typer.Argument(metavar="ID...", help="Tasks to wait for.")],
    timeout: Annotated[
        float | None, typer.Option(min=0, help="Give up after this many seconds (default: never).")
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """Wait for tasks to end. Exits 0 if all succeeded, else 1 (also when --timeout passes first)."""
    options = cli_context(ctx)
    as_json = as_json or options.json
    ids = list(dict.fromkeys(task_ids))
    err = render.console(stderr=True)
    counts = {"succeeded": 0, "other": 0}
    with Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err,
        transient=True,
        disable=not err.is_terminal,
    ) as progress:
        bar = progress.add_task("waiting", total=len(ids))

        def on_done(outcome: Outcome) -> None:
            counts["succeeded" if outcome.succeeded else "other"] += 1
            text = f"waiting: {counts['succeeded']} succeeded, {counts['other']} not"
            progress.update(bar, advance=1, description=text)

        outcomes = asyncio.run(wait_all(options.async_client(), ids, timeout, on_done))

    for outcome in outcomes:
        if outcome.error is not None:
            render.error(f"{outcome.task_id}: {outcome.error}")
        elif outcome.gave_up and not as_json and outcome.task is not None:
            typer.echo(f"{outcome.task_id} still {outcome.task.state} (gave up waiting)")
        elif not as_json and outcome.task is not None:
            typer.echo(render.final_line(outcome.task))
    if as_json:
        render.emit_json([outcome.task for outcome in outcomes if outcome.task is not None])
    if not all(outcome.succeeded for outcome in outcomes):
        raise typer.Exit(exit_codes.TASK_FAILED)
