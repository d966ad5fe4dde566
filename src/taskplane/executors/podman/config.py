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
    state_dir: Path | None = None  # container log files, OOM marks; default: <logs_dir>/../podman/<instance>
    pids_limit: int = 4096  # --pids-limit of every container (a fork bomb stops there)
    log_poll_interval: float = 0.2  # seconds between reads of running containers' log files
    reconcile_interval: float = 5.0  # seconds between full listings (catches exits the event stream missed)
    max_concurrent_calls: int = 8  # podman processes this executor runs at once (each costs ~50-100 ms of CPU)
    call_timeout: float = 120.0  # a podman call taking longer is treated as a failure

    def resolved_state_dir(self) -> Path:
        """Where this executor keeps its own files: ``state_dir``, or ``<logs_dir>/../podman/<instance>``."""
        if self.state_dir is not None:
            return self.state_dir
        return self.logs_dir.parent / "podman" / self.instance
