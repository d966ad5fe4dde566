"""SimulatedExecutor: the Executor port over a SimCluster, on real time scaled by ``speed``."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator
from datetime import timedelta

import pytest

from taskplane.domain.outcome import classify
from taskplane.domain.resources import Resources
from taskplane.domain.task import FailureClass
from taskplane.errors import InvalidRequestError, UnavailableError
from taskplane.executors.simulated import SimNode, SimulatedExecutor, SimulatedExecutorConfig
from taskplane.services.ports import Executor, ExecutorEvent, Exited, Launch, Started

pytestmark = pytest.mark.timeout(30)

GI = 1 << 30
NODES = (
    SimNode("sim-0", Resources(4000, 8 * GI), 10, {"zone": "a"}),
    SimNode("sim-1", Resources(8000, 16 * GI, 1), 10, {"zone": "b"}),
)


class Recorder:
    """Collects event batches; ``exits`` waits until the given attempts have exited."""

    def __init__(self) -> None:
        self.events: list[ExecutorEvent] = []
        self.exited: dict[str, Exited] = {}
        self.started: dict[str, Started] = {}
        self.changed = asyncio.Event()

    def __call__(self, events: list[ExecutorEvent]) -> None:
        self.events.extend(events)
        for e in events:
            if isinstance(e, Exited):
                self.exited[f"{e.task_id}.{e.attempt}"] = e
            else:
                self.started[f"{e.task_id}.{e.attempt}"] = e
        self.changed.set()

    async def exits(self, *keys: str, timeout: float = 10.0) -> list[Exited]:
        async with asyncio.timeout(timeout):
            while not all(k in self.exited for k in keys):
                self.changed.clear()
                await self.changed.wait()
        return [self.exited[k] for k in keys]


def launch(
    task_id: str, *, cpu: int = 1000, memory: int = GI, gpu: int = 0, node: str | None = "sim-0", duration: float = 1.0
) -> Launch:
    return Launch(task_id, 1, ("true",), {}, None, Resources(cpu, memory, gpu), node=node, simulated_duration=duration)


@pytest.fixture
async def opened() -> AsyncIterator[tuple[SimulatedExecutor, Recorder]]:
    ex = SimulatedExecutor(SimulatedExecutorConfig(NODES, speed=100.0))
    rec = Recorder()
    recovered = await ex.open(1, rec)
    assert recovered.running == [] and recovered.exited == [] and recovered.queued == []
    try:
        yield ex, rec
    finally:
        await ex.close()


def test_it_is_an_executor() -> None:
    ex: Executor = SimulatedExecutor(SimulatedExecutorConfig(NODES))
    assert ex.name == "simulated"


async def test_start_reports_started_at_once_and_exited_0_after_the_duration_in_virtual_time(
    opened: tuple[SimulatedExecutor, Recorder],
) -> None:
    ex, rec = opened
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    await ex.start([launch("a", cpu=1500, memory=2 * GI, duration=20.0)])  # 20 virtual s = 0.2 real s at 100x
    assert rec.events == []  # delivered from the loop, after the call
    await asyncio.sleep(0)
    [started] = rec.events
    assert isinstance(started, Started) and (started.task_id, started.attempt, started.pid) == ("a", 1, None)
    assert ex.cluster.allocated("sim-0") == Resources(1500, 2 * GI)

    [exited] = await rec.exits("a.1")
    assert loop.time() - t0 >= 0.2 - 0.01
    assert (exited.outcome.exit_code, exited.outcome.signal, exited.outcome.spawn_error) == (0, None, None)
    assert classify(exited.outcome) is None and not exited.never_started
    assert exited.started_at == started.at and exited.at - started.at == timedelta(seconds=0.2)
    assert exited.peak_memory == 2 * GI and exited.cpu_seconds == pytest.approx(1.5 * 0.2)
    assert ex.cluster.allocated("sim-0") == Resources() and len(ex.cluster) == 0


async def test_attempts_end_in_duration_order_through_one_timer(opened: tuple[SimulatedExecutor, Recorder]) -> None:
    ex, rec = opened
    no_duration = Launch("none", 1, ("true",), {}, None, Resources(), node="sim-1")  # simulated_duration None: 0
    await ex.start([launch("slow", duration=30.0), launch("zero", duration=0.0), launch("mid", duration=10.0)])
    await ex.start([no_duration])
    await rec.exits("slow.1", "zero.1", "mid.1", "none.1")
    order = [e.task_id for e in rec.events if isinstance(e, Exited)]
    assert order.index("zero") < order.index("mid") < order.index("slow")
    assert ex._timer is None  # nothing left to wait for: no timer stays armed


async def test_ten_thousand_running_attempts() -> None:
    nodes = tuple(SimNode(f"big-{i}", Resources(100_000, 100 * GI), 1000) for i in range(10))
    ex = SimulatedExecutor(SimulatedExecutorConfig(nodes, speed=1000.0))
    rec = Recorder()
    await ex.open(1, rec)
    try:
        launches = [
            launch(f"t{i}", cpu=10, memory=1 << 20, node=f"big-{i % 10}", duration=i % 97) for i in range(10_000)
        ]
        await ex.start(launches)
        assert len(ex.cluster) == 10_000 and len(asyncio.all_tasks()) == 1  # no task per attempt
        await rec.exits(*(f"t{i}.1" for i in range(10_000)))
        assert len(rec.started) == 10_000 and len(ex.cluster) == 0
    finally:
        await ex.close()


async def test_stop_ends_a_running_attempt_at_once_as_killed_by_sigterm(
    opened: tuple[SimulatedExecutor, Recorder],
) -> None:
    ex, rec = opened
    await ex.start([launch("long", duration=1e6)])
    await asyncio.sleep(0.01)
    await ex.stop("long", 1, grace=10.0)
    [exited] = await rec.exits("long.1", timeout=1.0)
    assert (exited.outcome.exit_code, exited.outcome.signal) == (None, signal.SIGTERM)
    assert exited.outcome.stop_reason is None  # the engine fills it in
    assert exited.started_at is not None and exited.cpu_seconds is not None and exited.cpu_seconds > 0
    assert ex.cluster.allocated("sim-0") == Resources()
    await ex.stop("long", 1, grace=10.0)  # already ended: nothing more happens
    await ex.stop("unknown", 3, grace=10.0)
    await asyncio.sleep(0.01)
    assert len(rec.exited) == 1 and len([e for e in rec.events if isinstance(e, Exited)]) == 1


async def test_a_launch_that_does_not_fit_is_refused_as_an_infra_spawn_error(
    opened: tuple[SimulatedExecutor, Recorder],
) -> None:
    ex, rec = opened
    await ex.start(
        [
            launch("fills", cpu=4000, duration=1e6),
            launch("no-room", cpu=1000),  # sim-0 is full now: may fit later, retryable
            launch("too-big", cpu=64_000, node="sim-1"),  # never fits sim-1
            launch("nowhere", node="sim-9"),
        ]
    )
    no_room, too_big, nowhere = await rec.exits("no-room.1", "too-big.1", "nowhere.1")
    for exited in (no_room, too_big, nowhere):
        assert exited.outcome.spawn_error and classify(exited.outcome) is FailureClass.INFRA
        assert not exited.never_started and exited.started_at is None
        assert exited.outcome.exit_code is None and exited.cpu_seconds is None
    assert no_room.outcome.retryable and not too_big.outcome.retryable
    assert "sim-9" in (nowhere.outcome.spawn_error or "")
    assert set(rec.started) == {"fills.1"}


async def test_a_launch_without_a_node_goes_to_the_first_node_it_fits(
    opened: tuple[SimulatedExecutor, Recorder],
) -> None:
    ex, rec = opened
    await ex.start([launch("gpu", gpu=1, node=None, duration=1e6), launch("huge", cpu=100_000, node=None)])
    [huge] = await rec.exits("huge.1")
    assert huge.outcome.spawn_error and "no node has room" in huge.outcome.spawn_error
    running = ex.cluster.get("gpu.1")
    assert running is not None and running.node == "sim-1"


async def test_start_is_idempotent_per_attempt_until_acked(opened: tuple[SimulatedExecutor, Recorder]) -> None:
    ex, rec = opened
    await ex.start([launch("a", duration=1e6), launch("b", duration=0)])
    await rec.exits("b.1")
    await ex.start([launch("a", duration=1e6), launch("b", duration=0)])
    await asyncio.sleep(0.02)
    assert len([e for e in rec.events if isinstance(e, Started)]) == 2
    assert len([e for e in rec.events if isinstance(e, Exited)]) == 1
    await ex.ack([("b", 1)])
    await ex.unqueue("a", 1)  # no node queue: a no-op, the attempt keeps running
    assert "a.1" in ex.cluster


async def test_nodes_and_capacity_describe_the_simulated_nodes() -> None:
    ex = SimulatedExecutor(SimulatedExecutorConfig(NODES))
    nodes = ex.nodes()
    assert [n.node for n in nodes] == ["sim-0", "sim-1"]
    assert nodes[1].total == Resources(8000, 16 * GI, 1) and nodes[1].max_tasks == 10
    assert all(n.cgroups == "simulated" and n.warnings == () for n in nodes)
    assert nodes[0].labels == {"zone": "a"}
    assert ex.capacity() == nodes[0]


async def test_calls_before_open_or_after_close_are_refused_and_close_stops_delivery() -> None:
    ex = SimulatedExecutor(SimulatedExecutorConfig(NODES, speed=100.0))
    with pytest.raises(UnavailableError):
        await ex.start([launch("a")])
    rec = Recorder()
    await ex.open(1, rec)
    await ex.start([launch("a", duration=5.0)])
    await ex.close()
    await asyncio.sleep(0.1)
    assert rec.events == []
    with pytest.raises(UnavailableError):
        await ex.stop("a", 1, 1.0)


def test_config_needs_nodes_and_a_positive_speed() -> None:
    with pytest.raises(InvalidRequestError, match="at least one node"):
        SimulatedExecutorConfig(())
    for speed in (0.0, -1.0, float("inf"), float("nan")):
        with pytest.raises(InvalidRequestError, match="speed"):
            SimulatedExecutorConfig(NODES, speed)
