"""The local executor: tasks as processes on this machine, parented by a supervisor daemon.

``LocalExecutor`` (the server side) talks newline-delimited JSON over a Unix socket to one supervisor per data
directory (``supervisor.py``), which spawns, watches, stops and journals the tasks.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from taskplane.executors.local.config import LocalExecutorConfig
    from taskplane.executors.local.executor import LocalExecutor

__all__ = ["LocalExecutor", "LocalExecutorConfig"]


def __getattr__(name: str) -> Any:
    # Lazy, so that ``python -m taskplane.executors.local.supervisor`` does not import the server-side modules.
    if name == "LocalExecutor":
        from taskplane.executors.local.executor import LocalExecutor

        return LocalExecutor
    if name == "LocalExecutorConfig":
        from taskplane.executors.local.config import LocalExecutorConfig

        return LocalExecutorConfig
    raise AttributeError(name)
