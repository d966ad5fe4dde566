"""The node supervisor process: one per state dir, parent of every task, so tasks outlive the server.

Started by ``LocalExecutor.open()``, detached::

    python -m taskplane.executors.local.supervisor --state-dir DIR [--logs-dir DIR] [--work-dir DIR]
        [--log-limit-bytes N] [--cgroups auto|v1|v2|none] [--idle-exit SECONDS] [--max-tasks N] [--daemonize]

It takes an exclusive flock on ``<state_dir>/supervisor.lock`` (a second one exits at once), writes its pidfile,
sends its output to ``supervisor.log`` and runs ``daemon.Supervisor`` until idle, asked to shut down, or SIGTERM
(tasks keep running then; the next supervisor reports them as lost when they end).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import fcntl
import logging
import os
import resource
import sys
from pathlib import Path

from taskplane.executors.local import layout
from taskplane.executors.local.daemon import LOST_RESTARTED, LOST_STARTING, Options, Supervisor

__all__ = ["LOST_RESTARTED", "LOST_STARTING", "Options", "Supervisor", "main"]

log = logging.getLogger("taskplane.supervisor")


def _parse(argv: list[str] | None) -> tuple[Options, bool]:
    parser = argparse.ArgumentParser(prog="taskplane-supervisor", description=__doc__.splitlines()[0])
    parser.add_argument("--state-dir", type=Path, required=True)
    parser.add_argument("--logs-dir", type=Path)
    parser.add_argument("--work-dir", type=Path)
    parser.add_argument("--log-limit-bytes", type=int, default=64 << 20)
    parser.add_argument("--cgroups", choices=("auto", "v1", "v2", "none"), default="auto")
    parser.add_argument("--idle-exit", type=float, default=300.0)
    parser.add_argument("--max-tasks", type=int, default=10_000)
    parser.add_argument("--daemonize", action="store_true", help="fork and let the parent exit at once")
    args = parser.parse_args(argv)
    state = args.state_dir.absolute()
    opts = Options(
        state_dir=state,
        logs_dir=(args.logs_dir or state / "logs").absolute(),
        work_dir=(args.work_dir or state / "work").absolute(),
        log_limit=args.log_limit_bytes,
        cgroups=args.cgroups,
        idle_exit=args.idle_exit,
        max_tasks=args.max_tasks,
    )
    return opts, bool(args.daemonize)


def _redirect_log(state_dir: Path) -> None:
    path = layout.supervisor_log_path(state_dir)
    with contextlib.suppress(OSError):
        if path.stat().st_size > 10 << 20:
            path.replace(path.with_name(path.name + ".1"))
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    os.close(devnull)


def main(argv: list[str] | None = None) -> int:
    """Entry point: lock the state dir (one supervisor each), write the pidfile, serve."""
    opts, daemonize = _parse(argv)
    if daemonize and os.fork() > 0:
        os._exit(0)  # the server reaps this parent at once; the daemon is reparented to init
    opts.state_dir.mkdir(parents=True, exist_ok=True)
    lock_fd = os.open(layout.lock_path(opts.state_dir), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        print("another supervisor holds this state dir", file=sys.stderr)
        return 0
    _redirect_log(opts.state_dir)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    os.chdir(opts.state_dir)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            opts = dataclasses.replace(opts, child_nofile=soft)
    pid_file = layout.pid_path(opts.state_dir)
    tmp = pid_file.with_name(pid_file.name + ".tmp")
    tmp.write_text(f"{os.getpid()}\n")
    tmp.replace(pid_file)
    try:
        asyncio.run(Supervisor(opts).run())
    except Exception:
        log.exception("supervisor crashed")
        return 1
    finally:
        os.close(lock_fd)
    return 0


if __name__ == "__main__":
    sys.exit(main())
