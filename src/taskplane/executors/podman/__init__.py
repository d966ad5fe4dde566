"""The podman executor: a task's image runs in a container on this machine (``README.md`` beside this file)."""

from taskplane.executors.podman.config import PodmanExecutorConfig
from taskplane.executors.podman.executor import PodmanExecutor

__all__ = ["PodmanExecutor", "PodmanExecutorConfig"]
