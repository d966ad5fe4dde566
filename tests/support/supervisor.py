"""Tear down a local executor supervisor and every task it runs, so no test leaks processes."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path


def _pids_of_tasks(supervisor_pid: int) -> list[int]:
    children = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == supervisor_pid:
            children.append(int(entry))
    return children


def kill_supervisor(state_dir: Path) -> None:
    """SIGKILL every task process group the supervisor parents, then the supervisor itself."""
    pidfile = state_dir / "supervisor.pid"
    try:
        pid = int(pidfile.read_text().strip())
    except (OSError, ValueError):
        return
    for child in _pids_of_tasks(pid):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(child, signal.SIGKILL)  # tasks lead their own process group
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    # A zombie still answers kill(pid, 0): wait until the process is gone or no longer running.
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/stat") as fh:
                state = fh.read().rsplit(")", 1)[1].split()[0]
        except OSError:
            return
        if state in ("Z", "X"):
            return
        time.sleep(0.02)
