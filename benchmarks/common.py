"""Shared helpers for the benchmark scripts: a server in a child process, memory readings, timing."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.support.server import ServerProcess
from tests.support.services import scoped_schema
from tests.support.supervisor import kill_supervisor


@contextlib.contextmanager
def server(database_url: str | None = None, **settings: str) -> Iterator[ServerProcess]:
    # Under the repository, on the same disk as a default data dir (~/.local/share): a churned /tmp can make
    # file creation 10-30x slower here, which would measure the disk's history rather than taskplane.
    scratch = Path(__file__).resolve().parent / ".data"
    scratch.mkdir(exist_ok=True)
    data = Path(tempfile.mkdtemp(prefix="tp-bench-", dir=scratch))
    srv = ServerProcess(data, database_url, **settings)
    try:
        srv.start()
        yield srv
    finally:
        srv.stop()
        kill_supervisor(data / "supervisor")
        shutil.rmtree(data, ignore_errors=True)


@contextlib.contextmanager
def fresh_database(url: str | None) -> Iterator[str | None]:
    """``url`` scoped to a new, randomly named PostgreSQL schema (dropped afterwards); ``None`` stays ``None``."""
    if url is None:
        yield None
        return
    with scoped_schema(url, "tp_bench") as scoped:
        yield scoped


def supervisor_pid(srv: ServerProcess) -> int | None:
    try:
        return int((srv.data_dir / "supervisor" / "supervisor.pid").read_text().strip())
    except (OSError, ValueError):
        return None


def memory_kib(pid: int) -> tuple[int, int]:
    """(RSS, PSS) of one process in KiB, from /proc/<pid>/smaps_rollup."""
    rss = pss = 0
    with open(f"/proc/{pid}/smaps_rollup") as fh:
        for line in fh:
            if line.startswith("Rss:"):
                rss = int(line.split()[1])
            elif line.startswith("Pss:"):
                pss = int(line.split()[1])
    return rss, pss


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a process has used (from /proc/<pid>/stat)."""
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


def floor_seconds(n: int = 2000) -> float:
    """The process-creation floor: ``seq N | xargs -P2 -n1 sh -c true``."""
    started = time.perf_counter()
    subprocess.run(f"seq {n} | xargs -P2 -n1 sh -c true", shell=True, check=True)
    return time.perf_counter() - started


def machine() -> str:
    return f"{os.cpu_count()} cores, Python {sys.version.split()[0]}, {os.uname().release}"
