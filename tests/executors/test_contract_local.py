"""The executor contract (``contract.py``) on the local executor: real processes under a real node supervisor."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from taskplane.domain.resources import Resources
from taskplane.executors.local.executor import LocalExecutor
from taskplane.executors.podman.oom import cgroup_version
from taskplane.services.ports import Launch
from tests.executors.contract import *  # noqa: F403
from tests.executors.contract import ContractTarget
from tests.executors.local_helpers import DEFAULT_ENV, Harness

pytestmark = pytest.mark.timeout(120)


def _launch(
    task_id: str,
    script: str,
    *,
    attempt: int = 1,
    env: dict[str, str] | None = None,
    memory: int = 0,
    millicpu: int = 0,
    run_timeout: float | None = None,
) -> Launch:
    return Launch(
        task_id=task_id,
        attempt=attempt,
        argv=("sh", "-c", script),
        env={**DEFAULT_ENV, **(env or {})},
        workdir=None,
        resources=Resources(millicpu=millicpu, memory=memory),
        run_timeout=run_timeout,
    )


@pytest.fixture
async def contract_target(tmp_path: Path) -> AsyncIterator[ContractTarget]:
    harness = Harness(tmp_path / "data")
    try:
        yield ContractTarget(
            name="local",
            make=lambda: LocalExecutor(harness.config()),
            launch=_launch,
            oom=cgroup_version() != "none",
        )
    finally:
        await harness.teardown()
