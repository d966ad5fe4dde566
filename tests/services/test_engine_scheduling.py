"""The engine running the scheduler over pools of simulated nodes, with a real SQLite store.

The simulated executor runs at 1,000 virtual seconds per real second, so a task with a simulated duration of
50 s takes 50 ms. Each test drives the engine through its public calls and reads the results from the store.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from taskplane.domain.pool import Node, Pool
from taskplane.domain.reservation import Reservation, ReservationState
from taskplane.domain.resources import Resources
from taskplane.domain.task import FailureClass, RetryPolicy, Task, TaskSpec, TaskState, Timeouts
from taskplane.domain.tenant import Quota, Tenant
from taskplane.executors.simulated import SimNode, SimulatedExecutor, SimulatedExecutorConfig
from taskplane.services.clock import SystemClock
from taskplane.services.engine import Engine, EngineConfig
from taskplane.services.ports import NewTask, TaskEvent
from taskplane.storage.sql.migrate import upgrade_database
from taskplane.storage.sql.store import SqlTaskStore, create_task_store

GI = 1 << 30
_ids = itertools.count()


def sim_pool(name: str = "sim", nodes: int = 2, cpu: int = 4000, memory: int = 8 * GI, speed: float = 1000.0):
    sims = tuple(SimNode(f"{name}-{i}", Resources(cpu, memory), 100) for i in range(nodes))
    pool = Pool(name, "simulated", nodes=tuple(Node(n.name, name, n.total, n.max_tasks) for n in sims))
    return pool, SimulatedExecutor(SimulatedExecutorConfig(sims, speed=speed))


class Harness:
    def __init__(self, store: SqlTaskStore, make_engine: Callable[[], Engine]) -> None:
        self.store = store
        self.make_engine = make_engine
        self.engine = make_engine()

    async def restart(self) -> None:
        await self.engine.close()
        self.engine = self.make_engine()
        await self.engine.start()

    async def submit(
        self,
        tenant: str = "default",
        cpu: int = 1000,
        duration: float = 0.05,
        priority: int = 0,
        pool: str = "sim",
        reservation: str | None = None,
        run_timeout: float | None = None,
        retries: int = 0,
    ) -> Task:
        now = datetime.now(UTC)
        spec = TaskSpec(
            command=("true",),
            resources=Resources(cpu, 256 << 20),
            priority=priority,
            tenant=tenant,
            pool=pool,
            reservation=reservation,
            simulated_duration=duration,
            timeouts=Timeouts(run=run_timeout),
            retry=RetryPolicy(max_attempts=retries + 1, jitter=0.0),
        )
        task = Task(id=f"t{next(_ids):06d}", spec=spec, state=TaskState.PENDING, created_at=now, updated_at=now)
        event = TaskEvent(task.id, now, "created", None, TaskState.PENDING)
        created = await self.store.create_tasks([NewTask(task)], [event])
        self.engine.submitted([created[0].task])
        return created[0].task

    async def reserve(self, tenant: str, cpu: int, count: int, duration: float | None = None) -> Reservation:
        now = datetime.now(UTC)
        res = Reservation(
            id=f"rsv-{next(_ids):06d}",
            tenant=tenant,
            pool="sim",
            resources=Resources(cpu, 256 << 20),
            count=count,
            state=ReservationState.PENDING,
            created_at=now,
            updated_at=now,
            duration=duration,
        )
        stored = await self.store.create_reservation(res)
        self.engine.reservation_created(stored)
        return stored

    async def until(self, check: Callable[[], object], timeout: float = 10.0) -> None:
        deadline = asyncio.get_running_loop().time() + timeout
        while not check():
            assert asyncio.get_running_loop().time() < deadline, "condition not reached in time"
            await asyncio.sleep(0.01)

    async def finished(self, task: Task, timeout: float = 10.0) -> Task:
        await self.engine.wait_terminal(task.id, timeout)
        stored = await self.store.get_task(task.id)
        assert stored is not None and stored.state.terminal, stored
        return stored


@pytest.fixture
async def harness(tmp_path: Path) -> AsyncIterator[Harness]:
    url = f"sqlite:///{tmp_path / 'engine.db'}"
    upgrade_database(url)
    store = create_task_store(url)

    def make() -> Engine:
        # A fresh executor each time, as after a server restart: the simulation lives in memory only.
        return Engine(store, [sim_pool()], SystemClock(), EngineConfig(kill_grace=0.1))

    h = Harness(store, make)
    await h.engine.start()
    yield h
    await h.engine.close()
    await store.close()


def reason_code(h: Harness, task: Task) -> str | None:
    view = h.engine.view(task.id)
    return None if view is None or view.reason is None else view.reason.code


async def set_tenant(h: Harness, tenant: Tenant) -> None:
    now = datetime.now(UTC)
    tenant = await h.store.create_tenant(replace(tenant, created_at=now, updated_at=now))
    h.engine.set_tenant(tenant)


async def test_tasks_spread_over_the_pool_and_finish(harness: Harness) -> None:
    tasks = [await harness.submit(cpu=2000, duration=200.0) for _ in range(6)]
    done = [await harness.finished(t) for t in tasks]
    assert {t.state for t in done} == {TaskState.SUCCEEDED}
    nodes = {(await harness.store.get_attempts(t.id))[0].node for t in tasks}
    assert nodes == {"sim-0", "sim-1"}  # 4 cores each: two 2-core tasks per node at a time


async def test_quota_holds_a_tenant_back_with_a_reason(harness: Harness) -> None:
    await set_tenant(harness, Tenant("a", Quota(millicpu=2000), borrowing=False))
    first = await harness.submit("a", cpu=2000, duration=1000.0)
    second = await harness.submit("a", cpu=1000, duration=0.01)
    await harness.until(lambda: reason_code(harness, second) == "quota_exhausted")
    view = harness.engine.view(second.id)
    assert view is not None and view.reason is not None
    assert view.reason.resource == "cpu"
    assert "cpu 2 of 2 used" in view.reason.message
    assert view.queue_position == 0
    assert (await harness.finished(first)).state is TaskState.SUCCEEDED
    assert (await harness.finished(second)).state is TaskState.SUCCEEDED


async def test_higher_priority_preempts_and_the_victim_retries_without_its_budget(harness: Harness) -> None:
    low = [await harness.submit(cpu=4000, duration=1000.0, priority=0) for _ in range(2)]  # fills both nodes
    await harness.until(lambda: harness.engine.counts().get("running", 0) == 2)
    urgent = await harness.submit(cpu=4000, duration=0.01, priority=10)
    assert (await harness.finished(urgent)).state is TaskState.SUCCEEDED
    attempts = [await harness.store.get_attempts(t.id) for t in low]
    preempted = [a for a in attempts if a[0].failure_class is FailureClass.PREEMPTED]
    assert len(preempted) == 1  # one victim made room: never more than the head needs
    victim = next(t for t, a in zip(low, attempts, strict=True) if a[0].failure_class is FailureClass.PREEMPTED)
    events = [e.type for e in await harness.store.get_events(victim.id)]
    assert "preempting" in events and "retrying" in events
    await harness.until(lambda: harness.engine.counts().get("running", 0) == 2)  # the victim runs again
    stored = await harness.store.get_task(victim.id)
    assert stored is not None and stored.state is TaskState.RUNNING and stored.attempts >= 2
    assert stored.infra_failures >= 1  # preemption counts on the infra side, not the user's max_attempts=1


async def test_reservation_is_admitted_whole_and_runs_its_tasks(harness: Harness) -> None:
    res = await harness.reserve("default", cpu=3000, count=2)
    await harness.until(lambda: (r := harness.engine.reservation(res.id)) is not None and r.state.value == "active")
    active = harness.engine.reservation(res.id)
    assert active is not None and sorted(active.nodes) == ["sim-0", "sim-1"]
    usage = {n.node: n for p in harness.engine.pools() for n in p.nodes}
    assert usage["sim-0"].reserved == Resources(3000, 256 << 20)
    # Room left outside the reservation: 1 core per node. A 2-core task does not fit outside it...
    outside = await harness.submit(cpu=2000, duration=0.01)
    await harness.until(lambda: reason_code(harness, outside) == "no_capacity")
    # ...but runs inside it.
    inside = await harness.submit(cpu=2000, duration=0.01, reservation=res.id)
    assert (await harness.finished(inside)).state is TaskState.SUCCEEDED
    released = await harness.engine.release(res.id)
    assert released is not None and released.state is ReservationState.RELEASED
    assert (await harness.finished(outside)).state is TaskState.SUCCEEDED
    stored = await harness.store.get_reservation(res.id)
    assert stored is not None and stored.state is ReservationState.RELEASED


async def test_a_reservation_too_large_for_free_room_waits_all_or_nothing(harness: Harness) -> None:
    hog = await harness.submit(cpu=2000, duration=1000.0, priority=100)
    await harness.until(lambda: harness.engine.counts().get("running", 0) == 1)
    res = await harness.reserve("default", cpu=4000, count=2)  # needs both nodes whole
    await asyncio.sleep(0.1)
    live = harness.engine.reservation(res.id)
    assert live is not None and live.state is ReservationState.PENDING
    usage = {n.node: n for p in harness.engine.pools() for n in p.nodes}
    assert all(n.reserved == Resources() for n in usage.values())  # no slot held while it waits
    await harness.engine.cancel(hog.id)
    await harness.until(lambda: (r := harness.engine.reservation(res.id)) is not None and r.state.value == "active")


async def test_reservation_expires_by_itself(harness: Harness) -> None:
    res = await harness.reserve("default", cpu=1000, count=1, duration=0.2)
    await harness.until(lambda: harness.engine.reservation(res.id) is None, timeout=5)
    await asyncio.sleep(0.05)
    stored = await harness.store.get_reservation(res.id)
    assert stored is not None and stored.state is ReservationState.EXPIRED
    assert all(n.reserved == Resources() for p in harness.engine.pools() for n in p.nodes)


async def test_active_reservation_survives_a_restart(harness: Harness) -> None:
    res = await harness.reserve("default", cpu=3000, count=1)
    await harness.until(lambda: (r := harness.engine.reservation(res.id)) is not None and r.state.value == "active")
    await asyncio.sleep(0.05)  # let the activation commit
    await harness.restart()
    live = harness.engine.reservation(res.id)
    assert live is not None and live.state is ReservationState.ACTIVE
    reserved = sum((n.reserved.millicpu for p in harness.engine.pools() for n in p.nodes), 0)
    assert reserved == 3000


async def test_weighted_fair_share_across_backlogged_tenants(harness: Harness) -> None:
    await set_tenant(harness, Tenant("heavy", weight=3.0))
    await set_tenant(harness, Tenant("light", weight=1.0))
    # 8 cores in all, held by two hogs while both tenants queue up; then the room opens at once and each
    # task holds one core for a long time, so the 8 placements show the split.
    hogs = [await harness.submit(cpu=4000, duration=1000.0, priority=100) for _ in range(2)]
    await harness.until(lambda: harness.engine.counts().get("running", 0) == 2)
    for _ in range(20):
        await harness.submit("heavy", cpu=1000, duration=1000.0)
        await harness.submit("light", cpu=1000, duration=1000.0)
    for hog in hogs:
        await harness.engine.cancel(hog.id)
    await harness.until(lambda: harness.engine.counts().get("running", 0) == 8)
    assert harness.engine.tenant_counts("heavy").running == 6
    assert harness.engine.tenant_counts("light").running == 2


async def test_borrowed_room_is_reclaimed_for_a_tenant_within_its_quota(harness: Harness) -> None:
    await set_tenant(harness, Tenant("owner", Quota(millicpu=4000)))
    await set_tenant(harness, Tenant("borrower", Quota(millicpu=4000)))
    hogs = [await harness.submit("borrower", cpu=2000, duration=1000.0) for _ in range(4)]  # 8 cores: 4 borrowed
    await harness.until(lambda: harness.engine.tenant_counts("borrower").running == 4)
    mine = await harness.submit("owner", cpu=2000, duration=0.01)
    assert (await harness.finished(mine)).state is TaskState.SUCCEEDED
    classes = [(await harness.store.get_attempts(t.id))[0].failure_class for t in hogs]
    assert classes.count(FailureClass.PREEMPTED) == 1


async def test_node_queue_is_not_used_for_simulated_pools(harness: Harness) -> None:
    hog = await harness.submit(cpu=4000, duration=1000.0)
    await harness.submit(cpu=4000, duration=1000.0)
    waiting = await harness.submit(cpu=4000, duration=0.01)
    await harness.until(lambda: reason_code(harness, waiting) not in (None, "queued"))
    view = harness.engine.view(waiting.id)
    assert view is not None and view.reason is not None and view.reason.code == "no_capacity"
    await harness.engine.cancel(hog.id)
    assert (await harness.finished(waiting)).state is TaskState.SUCCEEDED


async def test_backfill_eta_from_run_timeouts(harness: Harness) -> None:
    for _ in range(2):
        await harness.submit(cpu=3000, duration=1000.0, run_timeout=600.0)
    await harness.until(lambda: harness.engine.counts().get("running", 0) == 2)
    big = await harness.submit(cpu=4000, duration=0.01)
    await harness.until(lambda: (v := harness.engine.view(big.id)) is not None and v.eta is not None)
    view = harness.engine.view(big.id)
    assert view is not None and view.eta is not None
    expected = datetime.now(UTC) + timedelta(seconds=600)
    assert abs((view.eta - expected).total_seconds()) < 5
