"""``submit``, ``get``, ``list``, ``cancel`` and ``logs``."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

import typer

from taskplane.cli import exit_codes, render
from taskplane.cli.context import JsonFlag, cli_context
from taskplane.cli.flags import SubmitFlags, build_task
from taskplane.domain.task import TaskState
from taskplane.errors import TaskplaneError
from taskplane.sdk import Client
from taskplane.sdk.calls import LogStream
from taskplane.wire import TaskList, TaskOut

_SPEC = "Task spec"
_POLICY = "Timeouts and retries"
_PLACE = "Placement"
_HOST = "Container (with --image; each needs the tenant's policy)"


def submit(
    ctx: typer.Context,
    command: Annotated[list[str], typer.Argument(help="The command and its arguments (put them after --).")],
    cpu: Annotated[str | None, typer.Option(help="CPU: 2, 0.5 or 500m.", rich_help_panel=_SPEC)] = None,
    memory: Annotated[str | None, typer.Option(help="Memory: 256Mi, 1G or bytes.", rich_help_panel=_SPEC)] = None,
    gpu: Annotated[int | None, typer.Option(min=0, help="Number of GPUs.", rich_help_panel=_SPEC)] = None,
    timeout: Annotated[
        str | None, typer.Option(help="Run timeout per attempt: 30s, 5m, 1h30m.", rich_help_panel=_POLICY)
    ] = None,
    queue_timeout: Annotated[
        str | None, typer.Option(help="Give up if still pending after this long.", rich_help_panel=_POLICY)
    ] = None,
    deadline: Annotated[
        str | None, typer.Option(help="Absolute deadline, RFC 3339: 2024-05-01T12:00:00Z.", rich_help_panel=_POLICY)
    ] = None,
    retries: Annotated[
        int | None, typer.Option(min=0, max=99, help="Extra attempts after a failure.", rich_help_panel=_POLICY)
    ] = None,
    backoff: Annotated[
        str | None, typer.Option(help="First delay between attempts: 1s, 10s.", rich_help_panel=_POLICY)
    ] = None,
    priority: Annotated[
        int | None, typer.Option(min=-1000, max=1000, help="Higher runs first.", rich_help_panel=_SPEC)
    ] = None,
    tenant: Annotated[str | None, typer.Option(help="Tenant (default: default).", rich_help_panel=_SPEC)] = None,
    label: Annotated[
        list[str] | None, typer.Option("--label", help="KEY=VALUE, repeatable.", rich_help_panel=_SPEC)
    ] = None,
    env: Annotated[
        list[str] | None, typer.Option("--env", help="KEY=VALUE, repeatable.", rich_help_panel=_SPEC)
    ] = None,
    name: Annotated[str | None, typer.Option(help="A name to recognise the task by.", rich_help_panel=_SPEC)] = None,
    workdir: Annotated[
        str | None, typer.Option(help="Working directory, relative to the task's sandbox.", rich_help_panel=_SPEC)
    ] = None,
    image: Annotated[
        str | None, typer.Option(help="Container image (podman and Kubernetes executors).", rich_help_panel=_SPEC)
    ] = None,
    shell: Annotated[bool, typer.Option("--shell", help="Run COMMAND through sh -c.", rich_help_panel=_SPEC)] = False,
    privileged: Annotated[
        bool, typer.Option("--privileged", help="Run the container privileged.", rich_help_panel=_HOST)
    ] = False,
    host_network: Annotated[
        bool, typer.Option("--host-network", help="Use the host's network namespace.", rich_help_panel=_HOST)
    ] = False,
    host_pid: Annotated[
        bool, typer.Option("--host-pid", help="Use the host's PID namespace.", rich_help_panel=_HOST)
    ] = False,
    network: Annotated[
        bool, typer.Option("--network", help="Give the container a network (default: none).", rich_help_panel=_HOST)
    ] = False,
    mount: Annotated[
        list[str] | None,
        typer.Option(
            "--mount",
            metavar="SRC:DST[:ro|rw]",
            help="Mount a host path, read-only unless :rw; repeatable.",
            rich_help_panel=_HOST,
        ),
    ] = None,
    read_only_root: Annotated[
        bool, typer.Option("--read-only-root", help="Mount the image's root read-only.", rich_help_panel=_HOST)
    ] = False,
    user: Annotated[
        str | None,
        typer.Option(
            metavar="UID[:GID]", help="Run as this uid (or user name); default: the image's.", rich_help_panel=_HOST
        ),
    ] = None,
    extended: Annotated[
        list[str] | None,
        typer.Option(
            "--extended", help="Extended resource NAME=N (example.com/fpga=1), repeatable.", rich_help_panel=_PLACE
        ),
    ] = None,
    pool: Annotated[
        str | None, typer.Option(help="Pool to run in (default: the tenant's first pool).", rich_help_panel=_PLACE)
    ] = None,
    selector: Annotated[
        list[str] | None, typer.Option("--selector", help="Node label KEY=VALUE, repeatable.", rich_help_panel=_PLACE)
    ] = None,
    reservation: Annotated[
        str | None, typer.Option(help="Run inside this reservation (its pool).", rich_help_panel=_PLACE)
    ] = None,
    simulated_duration: Annotated[
        str | None, typer.Option(help="Run time on the simulated executor: 30s, 5m.", rich_help_panel=_PLACE)
    ] = None,
    idempotency_key: Annotated[str | None, typer.Option(help="Submitting twice with one key creates one task.")] = None,
    wait: Annotated[bool, typer.Option("--wait", help="Wait for the task to end and exit with its exit code.")] = False,
    as_json: JsonFlag = False,
) -> None:
    """Submit a task and print its id.

    Options come before the command; everything from the first non-option word (or after --) is the command:
    taskplane submit --cpu 500m --memory 256Mi --timeout 30s -- python -c "print(1)"

    With --wait the command exits with the task's exit code; 124 when it timed out, 130 when it was cancelled,
    128+N when killed by signal N, 1 when it failed without an exit code.
    """
    options = cli_context(ctx)
    as_json = as_json or options.json
    flags = SubmitFlags(
        command=command,
        shell=shell,
        cpu=cpu,
        memory=memory,
        gpu=gpu,
        timeout=timeout,
        queue_timeout=queue_timeout,
        deadline=deadline,
        retries=retries,
        backoff=backoff,
        priority=priority,
        tenant=tenant,
        labels=label or [],
        env=env or [],
        name=name,
        workdir=workdir,
        image=image,
        pool=pool,
        selector=selector or [],
        reservation=reservation,
        extended=extended or [],
        simulated_duration=simulated_duration,
        privileged=privileged,
        host_network=host_network,
        host_pid=host_pid,
        network=network,
        mounts=mount or [],
        read_only_root=read_only_root,
        user=user,
    )
    task = build_task(flags)
    with options.client() as tp:
        created = tp.submit(task, idempotency_key=idempotency_key)
        if not wait:
            if as_json:
                render.emit_json(created)
            else:
                typer.echo(created.id)
            return
        if not as_json:
            render.error(f"submitted {created.id}; waiting for it to end")
        final = _wait_to_end(tp, created)
    if as_json:
        render.emit_json(final)
    else:
        typer.echo(render.final_line(final))
    raise typer.Exit(exit_codes.exit_code_for(final))


def _wait_to_end(tp: Client, task: TaskOut) -> TaskOut:
    try:
        final = tp.wait(task.id)
    except KeyboardInterrupt:
        render.error(f"stopped waiting; task {task.id} keeps running (stop it with: taskplane cancel {task.id})")
        raise typer.Exit(exit_codes.CANCELLED) from None
    if final.state == "failed" and final.exit_code is None and final.attempts is None:
        final = tp.get(final.id)  # the attempts tell whether a signal ended it
    return final


def get(ctx: typer.Context, task_id: Annotated[str, typer.Argument(metavar="ID")], as_json: JsonFlag = False) -> None:
    """Show one task: its state, owner, why it is pending, container options and attempts."""
    options = cli_context(ctx)
    with options.client() as tp:
        task = tp.get(task_id)
    if as_json or options.json:
        render.emit_json(task)
    else:
        render.print_task(render.console(), task, datetime.now(UTC))


def list_tasks(
    ctx: typer.Context,
    state: Annotated[list[TaskState] | None, typer.Option("--state", help="Only this state; repeatable.")] = None,
    label: Annotated[list[str] | None, typer.Option("--label", help="KEY=VALUE that must match; repeatable.")] = None,
    limit: Annotated[int, typer.Option(min=1, max=1000, help="Tasks per page.")] = 50,
    all_pages: Annotated[bool, typer.Option("--all", help="Follow the pages to the last task.")] = False,
    cursor: Annotated[str | None, typer.Option(help="Start at this page (a next_cursor from --json).")] = None,
    as_json: JsonFlag = False,
) -> None:
    """List tasks, newest first."""
    options = cli_context(ctx)
    states = [s.value for s in state or []]
    labels = label or []
    with options.client() as tp:
        if all_pages:
            page = TaskList(items=list(tp.iter_tasks(states, labels, page_size=limit)), next_cursor=None)
        else:
            page = tp.list(states, labels, limit=limit, cursor=cursor)
    if as_json or options.json:
        render.emit_json(page)
        return
    out = render.console()
    if page.items:
        out.print(render.task_table(page.items, datetime.now(UTC)))
    else:
        render.error("no tasks")
    if page.next_cursor is not None:
        render.error(f"more tasks exist: use --all, or --cursor {page.next_cursor}")


def cancel(
    ctx: typer.Context,
    task_ids: Annotated[list[str], typer.Argument(metavar="ID...", help="Tasks to cancel.")],
    as_json: JsonFlag = False,
) -> None:
    """Cancel tasks. Exits 1 if any could not be cancelled (already finished, not found...)."""
    options = cli_context(ctx)
    as_json = as_json or options.json
    done: list[TaskOut] = []
    failed = False
    with options.client() as tp:
        for task_id in dict.fromkeys(task_ids):
            try:
                task = tp.cancel(task_id)
            except TaskplaneError as exc:
                failed = True
                render.error(f"{task_id}: {exc.detail} [{exc.code}]")
                continue
            done.append(task)
            if not as_json:
                typer.echo(f"{task.id} {task.state}")
    if as_json:
        render.emit_json(done)
    if failed:
        raise typer.Exit(exit_codes.API_ERROR)


def logs(
    ctx: typer.Context,
    task_id: Annotated[str, typer.Argument(metavar="ID")],
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep printing until the task ends.")] = False,
    stderr: Annotated[bool, typer.Option("--stderr", help="Show stderr instead of stdout.")] = False,
    attempt: Annotated[int | None, typer.Option(min=1, help="Attempt number (default: the latest).")] = None,
) -> None:
    """Print a task's output, byte for byte (ignores --json)."""
    options = cli_context(ctx)
    sink = typer.get_binary_stream("stdout")
    stream: LogStream = "stderr" if stderr else "stdout"
    with options.client() as tp:
        if follow:
            for chunk in tp.follow_logs(task_id, stream, attempt):
                sink.write(chunk)
                sink.flush()
        else:
            sink.write(tp.logs(task_id, stream, attempt))
            sink.flush()
