"""``NodeResized``: an executor whose node changes size (a Kubernetes pool's Ready nodes) resizes it in the engine."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from taskplane.domain.pool import Node, Pool
from taskplane.domain.resources import Resources
from taskplane.domain.task import TaskState
from taskplane.services.clock import SystemClock
from taskplane.services.engine import Engine, EngineConfig
from taskplane.services.ports import NodeResized
from taskplane.storage.sql.migrate import upgrade_database
from taskplane.storage.sql.store import create_task_store
from tests.services.test_engine_paths import GI, H, ScriptedExecutor, exited, started


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[H]:
    """One pool ``default`` whose one aggregate node starts empty, served by a scripted ``kubernetes`` executor."""
    url = f"sqlite:///{tmp_path / 'resize.db'}"
    upgrade_database(url)
    store = create_task_store(url)
    fake = ScriptedExecutor(name="kubernetes", node="k8s", cpu=0)
    pool = Pool("default", "kubernetes", nodes=(Node("k8s", "default", Resources(), 100),))
    engine = Engine(store, [(pool, fake)], SystemClock(), EngineConfig(kill_grace=0.1))
    await engine.start()
    yield H(store, engine, fake)
    await engine.close()
    await store.close()


async def test_a_task_waits_for_room_and_runs_once_the_node_grows(cluster: H) -> None:
    fake = cluster.fake
    assert fake is not None
    task = await cluster.submit(cpu=2000)
    await cluster.settle()
    assert fake.launched(task.id) == []
    view = cluster.engine.view(task.id)
    assert view is not None and view.reason is not None and view.reason.code == "never_fits"

    fake.emit(NodeResized("k8s", Resources(4000, 8 * GI), 100))
    await cluster.until(lambda: fake.launched(task.id) == [1])
    pool = cluster.engine.pool("default")
    assert pool is not None and pool.nodes[0].total == Resources(4000, 8 * GI)
    fake.emit(started(task.id, 1))
    await cluster.until(lambda: cluster.state(task) is TaskState.RUNNING)

    # The node shrinks under a running task: the task keeps its charge, nothing new fits.
    fake.emit(NodeResized("k8s", Resources(1000, 8 * GI), 100))
    second = await cluster.submit(cpu=1000)
    await cluster.settle()
    assert fake.launched(second.id) == []
    assert cluster.usage() == Resources(2000, 256 << 20)

    fake.emit(exited(task.id, 1, code=0))
    await cluster.until(lambda: fake.launched(second.id) == [1])  # room again at the new size


async def test_an_unknown_node_is_ignored(cluster: H) -> None:
    fake = cluster.fake
    assert fake is not None
    fake.emit(NodeResized("elsewhere", Resources(4000, 8 * GI), 100))
    await cluster.settle()
    pool = cluster.engine.pool("default")
    assert pool is not None and [n.name for n in pool.nodes] == ["k8s"] and pool.nodes[0].total == Resources()
