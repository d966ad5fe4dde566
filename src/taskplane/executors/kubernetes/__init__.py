"""The Kubernetes executor: one ``batch/v1`` Job per attempt in the tenant's namespace (``README.md`` here)."""

from taskplane.executors.kubernetes.config import KubernetesExecutorConfig
from taskplane.executors.kubernetes.executor import KubernetesExecutor

__all__ = ["KubernetesExecutor", "KubernetesExecutorConfig"]
