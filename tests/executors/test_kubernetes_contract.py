"""The shared executor contract suite, run against the Kubernetes executor.

Two targets:

- ``double``: the in-process Kubernetes API double (its kubelet runs ``sh -c`` scripts as local processes; it
  enforces no memory limit, hence ``oom=False``);
- ``cluster``: a real cluster, when ``TASKPLANE_TEST_KUBECONFIG`` names a kubeconfig (its current context, or
  ``TASKPLANE_TEST_KUBE_CONTEXT``); pods run ``TASKPLANE_TEST_KUBE_IMAGE`` (default ``busybox:1.36``). Each run
  uses its own instance label and namespace prefix, and deletes its namespace at the end. Skipped otherwise
  (a failure instead when ``TASKPLANE_TEST_REQUIRE`` lists ``kubernetes``). The contract wants stdout and
  stderr apart: set ``TASKPLANE_TEST_KUBE_SPLIT_STREAMS=1`` on a cluster with the ``PodLogsQuerySplitStreams``
  feature gate (1.32+); without it the log test fails there, as Kubernetes merges the streams.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from lightkube import AsyncClient
from lightkube.config.kubeconfig import KubeConfig
from lightkube.resources.core_v1 import Namespace

from taskplane.executors.kubernetes import KubernetesExecutor
from taskplane.services.ports import Executor, Launch
from tests.executors.contract import *  # noqa: F403
from tests.executors.contract import ContractTarget
from tests.support.kubeapi import KubeApiDouble
from tests.support.kubeapi.harness import kube_config, kube_launch
from tests.support.services import require_service

pytestmark = pytest.mark.timeout(180)

TENANT = "contract"


def _launcher(image: str) -> Callable[..., Launch]:
    """The contract suite's ``launch(task_id, script, ...)``: ``sh -c script`` in ``image``, in tenant ``contract``."""

    def launch(task_id: str, script: str, **kwargs: Any) -> Launch:
        return kube_launch(task_id, script, tenant=TENANT, image=image, **kwargs)

    return launch


@pytest.fixture(params=["double", "cluster"])
async def contract_target(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[ContractTarget]:
    """The Kubernetes executor over the double, or over a real cluster when one is configured."""
    made: list[KubernetesExecutor] = []
    if request.param == "double":
        double = KubeApiDouble()
        double.bind()
        double.cluster.add_node("node-a", cpu="8", memory="16Gi")

        def make() -> Executor:
            ex = KubernetesExecutor(kube_config(tmp_path / "logs", split_log_streams=True), client=double.client())
            made.append(ex)
            return ex

        try:
            yield ContractTarget(name="kubernetes-double", make=make, launch=_launcher("busybox:1.36"), oom=False)
        finally:
            for ex in made:
                await ex.close()
            await double.shutdown()
        return

    kubeconfig = os.environ.get("TASKPLANE_TEST_KUBECONFIG")
    if not kubeconfig:
        require_service("kubernetes", "TASKPLANE_TEST_KUBECONFIG is not set (a kubeconfig of a test cluster)")
    assert kubeconfig is not None
    run = uuid.uuid4().hex[:6]
    overrides: dict[str, Any] = {
        "kubeconfig": Path(kubeconfig),
        "context": os.environ.get("TASKPLANE_TEST_KUBE_CONTEXT") or None,
        "instance": f"tp-contract-{run}",
        "namespace_prefix": f"tp-{run}-",
        "unschedulable_timeout": 120.0,
        "capacity_refresh": 5.0,
        "split_log_streams": os.environ.get("TASKPLANE_TEST_KUBE_SPLIT_STREAMS", "") == "1",
    }

    def make_real() -> Executor:
        ex = KubernetesExecutor(kube_config(tmp_path / "logs", **overrides))
        made.append(ex)
        return ex

    image = os.environ.get("TASKPLANE_TEST_KUBE_IMAGE", "busybox:1.36")
    try:
        yield ContractTarget(name="kubernetes-cluster", make=make_real, launch=_launcher(image), oom=True)
    finally:
        for ex in made:
            await ex.close()
        config = KubeConfig.from_file(kubeconfig).get(context_name=overrides["context"])
        client = AsyncClient(config)
        with contextlib.suppress(Exception):
            await client.delete(Namespace, f"tp-{run}-{TENANT}")
        await client.close()
