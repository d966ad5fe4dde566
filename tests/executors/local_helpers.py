"""Helpers for the local executor tests: a launch builder, an event recorder, a harness that kills everything."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from taskplane.domain.resources import Resources
from taskplane.executors.local.config import LocalExecutorConfig
from taskplane.executors.local.executor import LocalExecutor, shutdown_supervisor
from taskplane.executors.local.layout import journal_path, pid_path
from taskplane.services.ports import ExecutorEvent, Exited, Launch, NodeResized, Started

DEFAULT_ENV = {"PATH": os.environ.get("PATH", os.defpath)}


def launch(
    task_id: str,
    *argv: str,
    attempt: int = 1,
    env: dict[str, str] | None = None,
    workdir: str | None = None,
    millicpu: int = 0,
    memory: int = 0,
    gpu: int = 0,
    image: str | None = None,
) -> Launch:
    """A launch builder: ``launch("t1", "sh", "-c", "exit 3", memory=64 << 20)``."""
    return Launch(
        task_id=task_id,
        attempt=attempt,
        argv=argv,
        env=DEFAULT_ENV if env is None else env,
        workdir=workdir,
        resources=Resources(millicpu=millicpu, memory=memory, gpu=gpu),
        image=image,
    )


class Recorder:
    """Collects executor events by attempt key and lets a test wait for them."""

    def __init__(self) -> None:
        self.events: list[ExecutorEvent] = []
        self.started: dict[tuple[str, int], Started] = {}
        self.exited: dict[tuple[str, int], Exited] = {}
        self._changed = asyncio.Event()

    def __call__(self, events: list[ExecutorEvent]) -> None:
        for ev in events:
            if isinstance(ev, NodeResized):  # a node's size, not an attempt's event
                continue
            self.events.append(ev)
            key = (ev.task_id, ev.attempt)
            if isinstance(ev, Started):
                self.started[key] = ev
            else:
                self.exited[key] = ev
        self._changed.set()

    async def until(self, predicate: Callable[[], bool], timeout: float = 10.0) -> None:
        async with asyncio.timeout(timeout):
            while not predicate():
                self._changed.clear()
                await self._changed.wait()

    async def exits(self, *task_ids: str, attempt: int = 1, timeout: float = 10.0) -> list[Exited]:
        keys = [(task_id, attempt) for task_id in task_ids]
        await self.until(lambda: all(k in self.exited for k in keys), timeout)
        return [self.exited[k] for k in keys]

    async def starts(self, *task_ids: str, attempt: int = 1, timeout: float = 10.0) -> list[Started]:
        keys = [(task_id, attempt) for task_id in task_ids]
        await self.until(lambda: all(k in self.started for k in keys), timeout)
        return [self.started[k] for k in keys]


def process_alive(pid: int) -> bool:
    """True while ``pid`` runs; zombies (nobody reaps orphans on this machine) count as dead."""
    try:
        data = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return False
    return data[data.rfind(b")") + 2 : data.rfind(b")") + 3] not in (b"Z", b"X")


def _kill_everything(state_dir: Path, pids: set[int]) -> None:
    """Force the supervisor down (it SIGKILLs its tasks); then SIGKILL whatever might remain."""
    shutdown_supervisor(state_dir, force=True, timeout=15.0)
    with contextlib.suppress(OSError, ValueError):
        sup = int(pid_path(state_dir).read_text())
        if process_alive(sup):
            os.kill(sup, signal.SIGKILL)
    with contextlib.suppress(OSError):
        for line in journal_path(state_dir).read_bytes().splitlines():
            with contextlib.suppress(ValueError, KeyError, TypeError):
                rec = orjson.loads(line)
                if rec.get("t") == "start":
                    pids.add(int(rec["pid"]))
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)


class Harness:
    """Builds executors over one data dir and tears everything down afterwards."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.state_dirs: set[Path] = set()
        self.executors: list[LocalExecutor] = []
        self.pids: set[int] = set()
        self._epoch = 0

    def config(self, **overrides: Any) -> LocalExecutorConfig:
        overrides.setdefault("idle_exit", 120.0)
        overrides.setdefault("connect_timeout", 15.0)
        data_dir = overrides.pop("data_dir", self.data_dir)
        cfg = LocalExecutorConfig.in_data_dir(data_dir, **overrides)
        self.state_dirs.add(cfg.state_dir)
        return cfg

    def next_epoch(self) -> int:
        self._epoch += 1
        return self._epoch

    async def open(
        self, config: LocalExecutorConfig | None = None, epoch: int | None = None
    ) -> tuple[LocalExecutor, Recorder, Any]:
        ex = LocalExecutor(config or self.config())
        self.state_dirs.add(ex.config.state_dir)
        rec = Recorder()
        recovered = await ex.open(self.next_epoch() if epoch is None else epoch, rec)
        self.executors.append(ex)
        return ex, rec, recovered

    def track(self, *pids: int | None) -> None:
        self.pids.update(pid for pid in pids if pid is not None)

    async def teardown(self) -> None:
        for ex in self.executors:
            with contextlib.suppress(Exception):
                await ex.close()
        for state_dir in self.state_dirs:
            await asyncio.to_thread(_kill_everything, state_dir, self.pids)
