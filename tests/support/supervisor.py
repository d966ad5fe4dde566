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


def remove_cgroups(state_dir: Path) -> None:
    """Remove the (empty) cgroup subtree a SIGKILLed supervisor of ``state_dir`` left below our own cgroups."""
    from taskplane.executors.local.layout import state_hash

    name = f"taskplane-{state_hash(state_dir)}"
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return
    for line in lines:
        _, controllers, path = line.split(":", 2)
        for controller in controllers.split(",") if controllers else ["unified"]:
            top = Path("/sys/fs/cgroup") / controller.removeprefix("name=") / path.lstrip("/") / name
            if not top.is_dir():
                continue
            for child in sorted(top.iterdir()):
                if child.is_dir():
                    with contextlib.suppress(OSError):
                        child.rmdir()
            with contextlib.suppress(OSError):
                top.rmdir()


def kill_supervisor(state_dir: Path) -> None:
    """SIGKILL every task process group the supervisor parents, then the supervisor; remove its cgroups."""
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
            break
        if state in ("Z", "X"):
            break
        time.sleep(0.02)
    remove_cgroups(state_dir)
