"""Helpers for the Kubernetes executor tests: a launch builder and a harness over the in-process API double."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

from taskplane.domain.resources import Resources
from taskplane.domain.task import NO_HOST_ACCESS, HostAccess
from taskplane.executors.kubernetes import KubernetesExecutor, KubernetesExecutorConfig
from taskplane.services.ports import ExecutorEvent, Launch, NodeResized
from tests.executors.local_helpers import Recorder
from tests.support.kubeapi import KubeApiDouble

IMAGE = "busybox:1.36"
INSTANCE = "tp-test"


def kube_launch(
    task_id: str,
    script: str,
    *,
    attempt: int = 1,
    tenant: str = "acme",
    env: dict[str, str] | None = None,
    millicpu: int = 0,
    memory: int = 0,
    gpu: int = 0,
    image: str = IMAGE,
    run_timeout: float | None = None,
    host: HostAccess = NO_HOST_ACCESS,
) -> Launch:
    """A launch running ``sh -c script`` in ``image``."""
    return Launch(
        task_id=task_id,
        attempt=attempt,
        argv=("sh", "-c", script),
        env=env or {},
        workdir=None,
        resources=Resources(millicpu=millicpu, memory=memory, gpu=gpu),
        image=image,
        tenant=tenant,
        host=host,
        run_timeout=run_timeout,
    )


def kube_config(logs_dir: Path, **overrides: Any) -> KubernetesExecutorConfig:
    """An executor config for the double (fast capacity refresh, short unschedulable timeout)."""
    values: dict[str, Any] = {
        "pool": "k8s",
        "node_name": "k8s",
        "logs_dir": logs_dir,
        "instance": INSTANCE,
        "capacity_refresh": 0.1,
        "unschedulable_timeout": 0.5,
    }
    values.update(overrides)
    return KubernetesExecutorConfig(**values)


class KubeRecorder(Recorder):
    """A ``Recorder`` that also keeps ``NodeResized`` events (in ``resized``)."""

    def __init__(self) -> None:
        super().__init__()
        self.resized: list[NodeResized] = []

    def __call__(self, events: list[ExecutorEvent]) -> None:
        self.resized.extend(e for e in events if isinstance(e, NodeResized))
        super().__call__([e for e in events if not isinstance(e, NodeResized)])
        self._changed.set()


class KubeHarness:
    """A double with one node, and executors over it that the teardown closes."""

    def __init__(self, double: KubeApiDouble, logs_dir: Path) -> None:
        self.double = double
        self.logs_dir = logs_dir
        self.executors: list[KubernetesExecutor] = []

    def executor(self, **overrides: Any) -> KubernetesExecutor:
        """A new executor (a restarted server) over the same double."""
        ex = KubernetesExecutor(kube_config(self.logs_dir, **overrides), client=self.double.client())
        self.executors.append(ex)
        return ex

    async def opened(self, **overrides: Any) -> tuple[KubernetesExecutor, KubeRecorder]:
        """A new executor, opened, with a recorder of its events."""
        ex = self.executor(**overrides)
        rec = KubeRecorder()
        await ex.open(1, rec)
        return ex, rec

    async def until(self, predicate: Callable[[], bool], timeout: float = 10.0) -> None:
        """Poll the double's state until ``predicate`` holds."""
        async with asyncio.timeout(timeout):
            while not predicate():
                await asyncio.sleep(0.01)

    def job(self, name: str, namespace: str = "tp-acme") -> dict[str, Any] | None:
        """A Job as stored by the double, or ``None``."""
        found = [j for j in self.double.objects("jobs", namespace) if j["metadata"]["name"] == name]
        return found[0] if found else None

    async def teardown(self) -> None:
        """Close every executor and stop the double (its container processes die)."""
        for ex in self.executors:
            await ex.close()
        await self.double.shutdown()
