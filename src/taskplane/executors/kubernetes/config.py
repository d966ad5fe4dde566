"""``KubernetesExecutorConfig``: what the Kubernetes executor needs, built by ``bootstrap`` from a pool's settings."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True, slots=True)
class KubernetesExecutorConfig:
    """One Kubernetes cluster (or the part of it a node selector picks) serving one pool.

    The pool is one aggregate node named ``node_name`` whose size is the allocatable of the ready nodes matching
    ``node_selector``; the kube-scheduler places pods, taskplane admits them. ``kubeconfig`` ``None``: the
    in-cluster service account when running in a pod, else ``$KUBECONFIG`` / ``~/.kube/config``.
    """

    pool: str
    node_name: str
    logs_dir: Path  # pod logs are copied to <logs_dir>/<task_id>.<attempt>.{stdout,stderr}
    instance: str  # a label on every object, telling this platform's objects from another's in one cluster
    kubeconfig: Path | None = None
    context: str | None = None
    namespace_prefix: str = "tp-"  # + tenant name: one namespace per tenant
    node_selector: Mapping[str, str] = field(default_factory=dict)
    image_pull_policy: str = "IfNotPresent"  # Always | IfNotPresent | Never
    ttl_seconds_after_finished: int = 600
    default_user: int = 65534  # runAsUser when the task names none (the restricted standard needs non-root)
    unschedulable_timeout: float = 300.0  # a pod unschedulable this long fails the attempt (infra)
    max_tasks: int = 10_000
    capacity_refresh: float = 30.0  # seconds between node re-lists (capacity)
    log_limit_bytes: int = 1 << 30  # per stream file
    # Copy stdout and stderr apart (pods/log ``stream=Stdout|Stderr``: Kubernetes 1.32+ with the
    # PodLogsQuerySplitStreams feature gate). Off: the merged log goes to the stdout file, stderr stays empty.
    split_log_streams: bool = False
