"""OOM kills in a container's memory cgroup, seen while the cgroup still exists.

Why not podman's ``OOMKilled``: on a cgroup v1 (or v1/v2 hybrid) kernel it stays false after a kill, and the
container's cgroup is removed by podman's cleanup within milliseconds of the exit, before anyone could read it.
So the executor watches each running container's cgroup instead: cgroup v1 signals an eventfd registered through
``cgroup.event_control`` on ``memory.oom_control`` when the cgroup runs out of memory (and once more when the
cgroup is removed). On a wake-up while the cgroup is still there, ``oom_kill`` is read; a wake-up of a removed
cgroup ends the watch. A re-adopted container's earlier OOM kills are read when its watch begins. (conmon keeps
its own record, a file ``oom`` in its working directory: the executor reads that too.) Peak memory is sampled
(``memory.max_usage_in_bytes``) on each wake-up and whenever the executor asks: a lower bound of the true peak.

On cgroup v2 podman's own ``OOMKilled`` is right (conmon watches ``memory.events``), and that is what the
executor reads there.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Callable
from pathlib import Path

V1_MEMORY_ROOT = Path("/sys/fs/cgroup/memory")
V2_ROOT = Path("/sys/fs/cgroup")


def cgroup_version() -> str:
    """``"v2"`` on a unified hierarchy, ``"v1"`` where a v1 memory controller is mounted, else ``"none"``."""
    if (V2_ROOT / "cgroup.controllers").exists():
        return "v2"
    if (V1_MEMORY_ROOT / "memory.limit_in_bytes").exists():
        return "v1"
    return "none"


def v1_memory_dir(cgroup_path: str) -> Path:
    """A container's v1 memory cgroup directory from podman's ``State.CgroupPath`` (``/libpod_parent/libpod-<id>``)."""
    return V1_MEMORY_ROOT / cgroup_path.lstrip("/")


def _read_oom_kill(fd: int) -> int | None:
    """``oom_kill`` from an open ``memory.oom_control``; ``None`` once the cgroup is gone."""
    try:
        text = os.pread(fd, 4096, 0).decode()
    except OSError:
        return None
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name == "oom_kill":
            return int(value)
    return 0


class OomWatch:
    """Watches one container's v1 memory cgroup; ``oom_killed`` and ``peak`` hold what it saw."""

    def __init__(self, loop: asyncio.AbstractEventLoop, cgroup_dir: Path, on_oom: Callable[[], None]) -> None:
        """Register an eventfd on ``cgroup_dir``'s ``memory.oom_control``; ``OSError`` when that is impossible."""
        self.cgroup_dir = cgroup_dir
        self.oom_killed = False
        self.peak: int | None = None
        self._loop = loop
        self._on_oom = on_oom
        self._control = os.open(cgroup_dir / "memory.oom_control", os.O_RDONLY | os.O_CLOEXEC)
        self._event = -1
        try:
            self._event = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
            with open(cgroup_dir / "cgroup.event_control", "w", encoding="ascii") as fh:
                fh.write(f"{self._event} {self._control}")
            loop.add_reader(self._event, self._wake)
        except BaseException:
            self._release()
            raise
        self.check()  # an OOM kill before the watch began (a re-adopted container) counts too

    def check(self) -> bool:
        """Read ``oom_kill`` and the peak now; whether the cgroup still exists."""
        kills = _read_oom_kill(self._control)
        if kills is None:
            return False
        if kills > 0 and not self.oom_killed:
            self.oom_killed = True
            self._on_oom()
        with contextlib.suppress(OSError, ValueError):
            self.peak = max(self.peak or 0, int((self.cgroup_dir / "memory.max_usage_in_bytes").read_text()))
        return True

    def close(self) -> None:
        """Stop watching (the cgroup may already be gone)."""
        self._release()

    def _wake(self) -> None:
        with contextlib.suppress(OSError):
            os.eventfd_read(self._event)
        if not self.check():
            self._release()  # the removal wake-up: nothing more will come
        elif not self.oom_killed:
            # Only an OOM (or the removal) signals this eventfd: the kill may not be counted yet when we read.
            self.oom_killed = True
            self._on_oom()

    def _release(self) -> None:
        if self._event >= 0:
            self._loop.remove_reader(self._event)
            os.close(self._event)
            self._event = -1
        if self._control >= 0:
            os.close(self._control)
            self._control = -1
