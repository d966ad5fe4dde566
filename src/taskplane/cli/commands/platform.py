"""``capacity``: what the platform has, uses and has free."""

from __future__ import annotations

import typer

from taskplane.cli import render
from taskplane.cli.context import JsonFlag, cli_context


def capacity(ctx: typer.Context, as_json: JsonFlag = False) -> None:
    """Show capacity per node (free / total) and in total."""
    options = cli_context(ctx)
    with options.client() as tp:
        found = tp.capacity()
    if as_json or options.json:
        render.emit_json(found)
        return
    out = render.console()
    out.print(render.capacity_table(found))
    out.print(f"{found.running_tasks} running, {found.pending_tasks} pending")
