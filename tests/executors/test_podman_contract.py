"""The executor contract (``contract.py``) on the podman executor: real containers of the offline test image."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from taskplane.executors.podman import PodmanExecutor
from taskplane.executors.podman.oom import cgroup_version
from tests.executors.contract import *  # noqa: F403
from tests.executors.contract import ContractTarget
from tests.support.images import launcher, podman_config

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
async def contract_target(tmp_path: Path, podman_image: str, podman_instance: str) -> AsyncIterator[ContractTarget]:
    config = podman_config(tmp_path, podman_instance)
    yield ContractTarget(
        name="podman",
        make=lambda: PodmanExecutor(config),
        launch=launcher(podman_image),
        oom=cgroup_version() != "none",
    )
