"""``PodmanExecutorConfig``: what the podman executor needs, built by ``bootstrap`` from a pool's settings."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True, slots=True)
class PodmanExecutorConfig:
    """One machine's container engine (the podman CLI, or a Docker-compatible one) serving one pool.

    ``global_args`` go before the subcommand on every call (e.g. ``--runtime runc --cgroup-manager=cgroupfs`` on
    a cgroup v1/v2 hybrid kernel) and ``run_args`` after ``run`` (e.g. ``--ulimit nofile=1024:1024``): both are
    configuration because they depend on the host, never hard-coded. ``instance`` tells this server's containers
    from another server's on the same engine (a label on each container, and the recovery filter).
    """

    logs_dir: Path  # <logs_dir>/<task_id>.<attempt>.{stdout,stderr}: the task log store
    node_name: str
    instance: str
    binary: str = "podman"
    global_args: tuple[str, ...] = ()
    run_args: tuple[str, ...] = ()
    millicpu: int | None = None  # capacity override; default: this machine's
    memory: int | None = None
    max_tasks: int | None = None
    default_user: str | None = "65534:65534"  # when the task names none; None: the image's own user
    pull: str = "never"  # never | missing | always (offline machines: never)
    log_limit_bytes: int = 1 << 30
    labels: Mapping[str, str] = field(default_factory=dict)
