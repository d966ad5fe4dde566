"""The local executor's configuration: one frozen object, built once by ``bootstrap.py``."""

from __future__ import annotations

import socket
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CGROUP_MODES: tuple[str, ...] = ("auto", "v1", "v2", "none")


@dataclass(frozen=True, slots=True)
class LocalExecutorConfig:
    """Settings of ``LocalExecutor`` and of the supervisor it starts.

    ``millicpu``, ``memory`` and ``max_tasks`` override what is detected (``capacity.py``). ``log_limit_bytes``
    caps each of an attempt's stdout and stderr files (through ``RLIMIT_FSIZE``, which applies to every file the
    task writes). ``idle_exit``: the supervisor exits after this many seconds with nothing to do and no client.
    """

    state_dir: Path
    logs_dir: Path
    work_dir: Path
    node_name: str = field(default_factory=socket.gethostname)
    millicpu: int | None = None
    memory: int | None = None
    max_tasks: int | None = None
    log_limit_bytes: int = 64 << 20
    cgroups: str = "auto"  # auto | v1 | v2 | none
    python: str = field(default_factory=lambda: sys.executable)
    idle_exit: float = 300.0
    connect_timeout: float = 10.0
    request_timeout: float = 60.0

    def __post_init__(self) -> None:
        for name in ("state_dir", "logs_dir", "work_dir"):
            object.__setattr__(self, name, Path(getattr(self, name)).absolute())
        if self.cgroups not in CGROUP_MODES:
            raise ValueError(f"cgroups must be one of {', '.join(CGROUP_MODES)}, not {self.cgroups!r}")
        if self.log_limit_bytes < 1:
            raise ValueError("log_limit_bytes must be positive")
        if self.idle_exit <= 0 or self.connect_timeout <= 0 or self.request_timeout <= 0:
            raise ValueError("idle_exit, connect_timeout and request_timeout must be positive")
        if self.max_tasks is not None and self.max_tasks < 1:
            raise ValueError("max_tasks must be at least 1")

    @classmethod
    def in_data_dir(cls, data_dir: Path, **overrides: Any) -> LocalExecutorConfig:
        """The standard layout under a data dir: ``supervisor/``, ``logs/`` and ``work/``."""
        return cls(
            state_dir=data_dir / "supervisor", logs_dir=data_dir / "logs", work_dir=data_dir / "work", **overrides
        )
