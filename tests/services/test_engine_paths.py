"""The multi-pool engine and its ledger on the subtle paths: hand-offs to a node's queue, take-backs, cancels
racing starts, preemption, reservations ending under their tasks, routing to each pool's executor, restarts.

The ledger's books must balance on every path (no hold leaked or counted twice).

Two harnesses:
- a scripted one-node executor named ``local`` (so the engine uses its node queue / hand-offs) whose events the
  test emits by hand, for deterministic races;
- the simulated executor (as in ``test_engine_scheduling.py``) for end-to-end scheduling paths.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import pytest

from taskplane.domain.outcome import AttemptOutcome
from taskplane.domain.pool import Node, Pool
from taskplane.domain.reservation import Reservation, ReservationState
from taskplane.domain.resources import Resources
from taskplane.domain.task import RetryPolicy, Task, TaskSpec, TaskState, Timeouts
from taskplane.domain.tenant import Quota, Tenant
from taskplane.executors.simulated import SimNode, SimulatedExecutor, SimulatedExecutorConfig
from taskplane.services.clock import SystemClock
from taskplane.services.engine import Engine, EngineConfig
from taskplane.services.ports import (
    ExecutorEvent,
    Exited,
    Launch,
    NewTask,
    NodeCapacity,
    Recovered,
    Started,
    TaskEvent,
)
from taskplane.storage.sql.migrate import upgrade_database
from taskplane.storage.sql.store import SqlTaskStore, create_task_store

GI = 1 << 30
MEM = 256 << 20
_ids = itertools.count()


# ------------------------------------------------------------------------------------------ harness


class ScriptedExecutor:
    """A one-node executor that only records calls; the test emits its events."""

    def __init__(self, name: str = "local", node: str = "n0", cpu: int = 4000) -> None:
        self.name = name
        self.node = node
        self.total = Resources(cpu, 8 * GI)
        self.launches: list[Launch] = []
        self.stops: list[tuple[str, int]] = []
        self.unqueues: list[tuple[str, int]] = []
        self.acks: list[tuple[str, int]] = []
        self._on_events: Callable[[list[ExecutorEvent]], None] | None = None

    async def open(self, epoch: int, on_events: Callable[[list[ExecutorEvent]], None]) -> Recovered:
        self._on_events = on_events
        return Recovered(running=[], exited=[])

    async def start(self, launches: Sequence[Launch]) -> None:
        self.launches.extend(launches)

    async def stop(self, task_id: str, attempt: int, grace: float) -> None:
        self.stops.append((task_id, attempt))

    async def unqueue(self, task_id: str, attempt: int) -> None:
        self.unqueues.append((task_id, attempt))

    async def ack(self, keys: Sequence[tuple[str, int]]) -> None:
        self.acks.extend(keys)

    def capacity(self) -> NodeCapacity:
        return NodeCapacity(self.node, self.total, 100, "none")

    def nodes(self) -> list[NodeCapacity]:
        return [self.capacity()]

    async def close(self) -> None:
        pass

    def emit(self, *events: ExecutorEvent) -> None:
        assert self._on_events is not None
        self._on_events(list(events))

    def launched(self, task_id: str) -> list[int]:
        return [launch.attempt for launch in self.launches if launch.task_id == task_id]


def now() -> datetime:
    return datetime.now(UTC)


def started(task_id: str, attempt: int) -> Started:
    return Started(task_id, attempt, now(), pid=1000 + attempt)


def exited(task_id: str, attempt: int, code: int | None = 0, **kw: object) -> Exited:
    return Exited(task_id, attempt, now(), AttemptOutcome(exit_code=code), started_at=now(), **kw)  # type: ignore[arg-type]


def sim_pool(name: str = "sim", nodes: int = 1, cpu: int = 4000) -> tuple[Pool, SimulatedExecutor]:
    sims = tuple(SimNode(f"{name}-{i}", Resources(cpu, 8 * GI), 100) for i in range(nodes))
    pool = Pool(name, "simulated", nodes=tuple(Node(n.name, name, n.total, n.max_tasks) for n in sims))
    return pool, SimulatedExecutor(SimulatedExecutorConfig(sims, speed=1000.0))


class H:
    def __init__(self, store: SqlTaskStore, engine: Engine, fake: ScriptedExecutor | None) -> None:
        self.store = store
        self.engine = engine
        self.fake = fake

    async def submit(
        self,
        cpu: int = 4000,
        *,
        tenant: str = "default",
        priority: int = 0,
        pool: str = "default",
        retries: int = 0,
        duration: float = 1000.0,
        reservation: str | None = None,
    ) -> Task:
        t = now()
        spec = TaskSpec(
            command=("true",),
            resources=Resources(cpu, MEM),
            priority=priority,
            tenant=tenant,
            pool=pool,
            reservation=reservation,
            simulated_duration=duration,
            timeouts=Timeouts(),
            retry=RetryPolicy(max_attempts=retries + 1, jitter=0.0, backoff_initial=0.0),
        )
        task = Task(id=f"r{next(_ids):06d}", spec=spec, state=TaskState.PENDING, created_at=t, updated_at=t)
        created = await self.store.create_tasks([NewTask(task)], [TaskEvent(task.id, t, "created", None, task.state)])
        self.engine.submitted([created[0].task])
        return created[0].task

    async def reserve(self, cpu: int, count: int, pool: str = "sim", tenant: str = "default") -> Reservation:
        t = now()
        res = Reservation(
            id=f"rsv-{next(_ids):06d}",
            tenant=tenant,
            pool=pool,
            resources=Resources(cpu, MEM),
            count=count,
            state=ReservationState.PENDING,
            created_at=t,
            updated_at=t,
        )
        stored = await self.store.create_reservation(res)
        self.engine.reservation_created(stored)
        return stored

    async def set_tenant(self, tenant: Tenant) -> None:
        t = now()
        stored = await self.store.create_tenant(replace(tenant, created_at=t, updated_at=t))
        self.engine.set_tenant(stored)

    async def until(self, check: Callable[[], object], timeout: float = 5.0) -> None:
        deadline = asyncio.get_running_loop().time() + timeout
        while not check():
            assert asyncio.get_running_loop().time() < deadline, "condition not reached in time"
            await asyncio.sleep(0.01)

    async def settle(self) -> None:
        """Let the engine step and commit what it decided."""
        await asyncio.sleep(0.05)

    def state(self, task: Task) -> TaskState | None:
        held = self.engine._tasks.get(task.id)
        return None if held is None else held.state

    async def stored(self, task: Task) -> Task:
        row = await self.store.get_task(task.id)
        assert row is not None
        return row

    async def stored_as(self, task: Task, state: TaskState, timeout: float = 5.0) -> None:
        """Wait until the task's committed row is in ``state``: the engine lets go of an ended task when it
        decides, and its committer writes the row a moment later."""
        deadline = asyncio.get_running_loop().time() + timeout
        while (row := await self.stored(task)).state is not state:
            assert asyncio.get_running_loop().time() < deadline, f"stored as {row.state}, not {state}"
            await asyncio.sleep(0.01)

    def usage(self, tenant: str = "default") -> Resources:
        return self.engine.tenant_counts(tenant).usage

    def ledger_running(self, tenant: str = "default") -> int:
        return self.engine._ledger.running(tenant)


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqlTaskStore]:
    url = f"sqlite:///{tmp_path / 'review.db'}"
    upgrade_database(url)
    s = create_task_store(url)
    yield s
    await s.close()


@pytest.fixture
async def local(store: SqlTaskStore) -> AsyncIterator[H]:
    """One pool ``default`` with one 4-core node served by a scripted executor named ``local``."""
    fake = ScriptedExecutor()
    pool = Pool("default", "local", nodes=(Node("n0", "default", fake.total, 100),))
    engine = Engine(store, [(pool, fake)], SystemClock(), EngineConfig(kill_grace=0.1))
    await engine.start()
    yield H(store, engine, fake)
    await engine.close()


@pytest.fixture
async def sim(store: SqlTaskStore) -> AsyncIterator[H]:
    """One simulated pool ``sim`` with one 4-core node."""
    engine = Engine(store, [sim_pool()], SystemClock(), EngineConfig(kill_grace=0.1))
    await engine.start()
    yield H(store, engine, None)
    await engine.close()


ZERO = Resources()


async def hog_and_handoff(h: H, *, retries: int = 0, priority: int = 0) -> tuple[Task, Task]:
    """A running 4-core hog (priority 100, never preempted) and a 4-core task handed to the node's queue."""
    fake = h.fake
    assert fake is not None
    hog = await h.submit(priority=100)
    await h.until(lambda: fake.launched(hog.id) == [1])
    fake.emit(started(hog.id, 1))
    await h.until(lambda: h.state(hog) is TaskState.RUNNING)
    waiting = await h.submit(priority=priority, retries=retries)
    await h.until(lambda: fake.launched(waiting.id) == [1])  # handed off: launched while still pending
    assert h.state(waiting) is TaskState.PENDING
    view = h.engine.view(waiting.id)
    assert view is not None and view.reason is not None and view.reason.code == "node_queue"
    return hog, waiting


# ------------------------------------------------------------------------------- bugs (fail today)


async def test_cancel_of_handed_off_launch_that_the_node_started_releases_its_queued_hold(local: H) -> None:
    """engine.py ``_on_started``: ``_take_back`` forgets the hand-off but the ledger's queued charge is only
    dropped on the ``_on_exited`` take-back path. When the node starts a handed-off launch just as the task is
    cancelled (Started arrives after the cancel), the Started takes it back, the Exited finds nothing to take
    back, and the queued hold stays forever: node room, tenant usage and max_running count leak."""
    fake = local.fake
    assert fake is not None
    hog, waiting = await hog_and_handoff(local)
    assert local.usage() == Resources(8000, 2 * MEM)  # hog + queued hold
    cancelled = await local.engine.cancel(waiting.id)
    assert cancelled is not None and cancelled.state is TaskState.CANCELLED
    await local.until(lambda: (waiting.id, 1) in fake.stops)
    # The node had already started it from its queue before the stop arrived; then the stop killed it.
    fake.emit(started(waiting.id, 1))
    await local.settle()
    fake.emit(exited(waiting.id, 1, code=None))
    await local.until(lambda: (waiting.id, 1) in fake.acks)
    # the hog ends too: nothing is live any more
    fake.emit(exited(hog.id, 1, code=0))
    await local.until(lambda: (hog.id, 1) in fake.acks)
    assert local.engine.counts() == {}
    assert local.engine._ledger.charge_of(waiting.id) is None
    assert local.usage() == ZERO
    assert local.ledger_running() == 0


async def test_a_launch_taken_back_from_the_node_queue_does_not_use_the_users_retry_budget(local: H) -> None:
    """engine.py ``_next_number``/``_on_exited``: a handed-off launch taken back for priority (``unqueue`` ->
    ``never_started``) burns an attempt number, and ``next_step`` counts user attempts as
    ``attempts - infra_failures``. The task's first real attempt is number 2, so with ``retries=1`` its first
    failure is final: the skipped number used the user's retry budget."""
    fake = local.fake
    assert fake is not None
    _hog, low = await hog_and_handoff(local, retries=1, priority=0)
    urgent = await local.submit(priority=10)
    # the urgent task goes to the node's queue too, and the low one is taken back to keep priority order
    await local.until(lambda: (low.id, 1) in fake.unqueues)
    fake.emit(Exited(low.id, 1, now(), AttemptOutcome(), never_started=True))
    await local.until(lambda: fake.launched(low.id) == [1, 2])  # handed back, behind the urgent one
    # The node starts the low task (say the urgent one was cancelled); its first real run fails with exit 1.
    await local.engine.cancel(urgent.id)
    fake.emit(started(low.id, 2))
    await local.until(lambda: local.state(low) is TaskState.RUNNING)
    fake.emit(exited(low.id, 2, code=1))
    await local.until(lambda: (low.id, 2) in fake.acks)
    row = await local.stored(low)
    # One user attempt ran, the policy allows two: it must be retried, not failed.
    assert row.state is TaskState.PENDING, (row.state, row.attempts, row.infra_failures)


async def test_a_task_retried_after_its_reservation_ended_is_cancelled(sim: H) -> None:
    """engine.py ``_end_reservation`` cancels only tasks *pending* in the reservation. A task running inside it
    keeps running (as documented), but when that attempt then ends and retries (here: it is preempted, which
    ``Ledger.free`` made possible), it returns to the reservation's lane and waits "for reservation ... not
    active yet" for ever: nothing ever cancels it or lets it run outside."""
    res = await sim.reserve(cpu=4000, count=1)
    await sim.until(lambda: (r := sim.engine.reservation(res.id)) is not None and r.state is ReservationState.ACTIVE)
    inside = await sim.submit(cpu=4000, pool="sim", reservation=res.id, retries=0)
    await sim.until(lambda: sim.state(inside) is TaskState.RUNNING)
    released = await sim.engine.release(res.id)
    assert released is not None
    assert sim.state(inside) is TaskState.RUNNING  # keeps running, charged normally
    urgent = await sim.submit(cpu=4000, pool="sim", priority=10, duration=0.01)
    await sim.until(lambda: sim.state(urgent) is None)  # preempted `inside`, ran, finished
    await sim.settle()
    await asyncio.sleep(0.3)
    # `inside` was preempted and requeued; with the node free again it must run (or end), not wait forever.
    view = sim.engine.view(inside.id)
    reason = None if view is None or view.reason is None else view.reason.code
    assert sim.state(inside) is not TaskState.PENDING, reason


# ------------------------------------------------------------------------ guards (pass today)


async def test_handoff_started_by_the_node_moves_its_hold_without_double_counting(local: H) -> None:
    fake = local.fake
    assert fake is not None
    hog, waiting = await hog_and_handoff(local)
    assert local.ledger_running() == 2
    fake.emit(exited(hog.id, 1, code=0))
    await local.until(lambda: (hog.id, 1) in fake.acks)
    assert local.usage() == Resources(4000, MEM)  # only the queued hold
    fake.emit(started(waiting.id, 1))
    await local.until(lambda: local.state(waiting) is TaskState.RUNNING)
    assert local.usage() == Resources(4000, MEM)
    assert local.ledger_running() == 1
    node = local.engine.pools()[0].nodes[0]
    assert node.allocated == Resources(4000, MEM) and node.tasks == 1
    fake.emit(exited(waiting.id, 1, code=0))
    await local.until(lambda: local.state(waiting) is None)
    assert local.usage() == ZERO and local.ledger_running() == 0
    await local.stored_as(waiting, TaskState.SUCCEEDED)


async def test_handoff_exit_without_a_started_event_is_recorded_and_released(local: H) -> None:
    fake = local.fake
    assert fake is not None
    hog, waiting = await hog_and_handoff(local)
    fake.emit(exited(hog.id, 1, code=0))
    fake.emit(exited(waiting.id, 1, code=0))  # started and ended between two looks
    await local.until(lambda: local.state(waiting) is None)
    assert local.usage() == ZERO and local.ledger_running() == 0
    await local.stored_as(waiting, TaskState.SUCCEEDED)


async def test_cancel_of_handed_off_launch_stopped_in_the_queue_releases_its_hold(local: H) -> None:
    fake = local.fake
    assert fake is not None
    _hog, waiting = await hog_and_handoff(local)
    await local.engine.cancel(waiting.id)
    await local.until(lambda: (waiting.id, 1) in fake.stops)
    fake.emit(Exited(waiting.id, 1, now(), AttemptOutcome(), never_started=True))
    await local.until(lambda: (waiting.id, 1) in fake.acks)
    assert local.usage() == Resources(4000, MEM)  # the hog only
    assert local.ledger_running() == 1
    await local.stored_as(waiting, TaskState.CANCELLED)


async def test_taken_back_handoff_is_queued_again_and_its_hold_dropped(local: H) -> None:
    fake = local.fake
    assert fake is not None
    _hog, low = await hog_and_handoff(local, priority=0)
    await local.submit(priority=10)
    await local.until(lambda: (low.id, 1) in fake.unqueues)
    fake.emit(Exited(low.id, 1, now(), AttemptOutcome(), never_started=True))
    await local.until(lambda: fake.launched(low.id) == [1, 2])
    # hog + urgent + low, each 4 cores: two queued holds, no double count from the taken-back one
    assert local.usage() == Resources(12000, 3 * MEM)
    assert local.ledger_running() == 3


async def test_preempted_victim_retries_on_its_current_attempt_without_the_user_budget(local: H) -> None:
    fake = local.fake
    assert fake is not None
    victim = await local.submit(priority=0, retries=0)
    await local.until(lambda: fake.launched(victim.id) == [1])
    fake.emit(started(victim.id, 1))
    await local.until(lambda: local.state(victim) is TaskState.RUNNING)
    urgent = await local.submit(priority=10)
    await local.until(lambda: (victim.id, 1) in fake.stops)
    assert fake.launched(urgent.id) == []  # no hand-off while it waits for its victim
    fake.emit(exited(victim.id, 1, code=None))
    await local.until(lambda: fake.launched(urgent.id) == [1])
    row = await local.stored(victim)
    assert row.state is TaskState.PENDING and row.attempts == 1 and row.infra_failures == 1
    assert row.failure_class is not None and row.failure_class.value == "preempted"


async def test_reservation_release_with_a_task_inside_keeps_the_books(sim: H) -> None:
    res = await sim.reserve(cpu=3000, count=1)
    await sim.until(lambda: (r := sim.engine.reservation(res.id)) is not None and r.state is ReservationState.ACTIVE)
    inside = await sim.submit(cpu=2000, pool="sim", reservation=res.id, duration=300.0)
    await sim.until(lambda: sim.state(inside) is TaskState.RUNNING)
    assert sim.usage() == Resources(3000, MEM)  # the reservation, not the task inside it
    await sim.engine.release(res.id)
    assert sim.usage() == Resources(2000, MEM)  # now the task, charged normally
    node = sim.engine.pools()[0].nodes[0]
    assert node.reserved == ZERO and node.allocated == Resources(2000, MEM) and node.tasks == 1
    await sim.until(lambda: sim.state(inside) is None)
    node = sim.engine.pools()[0].nodes[0]
    assert sim.usage() == ZERO and node.allocated == ZERO and node.tasks == 0


async def test_max_running_counts_tasks_inside_a_reservation(sim: H) -> None:
    """docs/scheduling.md: tasks inside a reservation count toward max_running (they are never held back by it)."""
    await sim.set_tenant(Tenant("a", Quota(max_running=1)))
    res = await sim.reserve(cpu=1000, count=1, tenant="a")
    await sim.until(lambda: (r := sim.engine.reservation(res.id)) is not None and r.state is ReservationState.ACTIVE)
    inside = await sim.submit(cpu=1000, tenant="a", pool="sim", reservation=res.id)
    await sim.until(lambda: sim.state(inside) is TaskState.RUNNING)
    outside = await sim.submit(cpu=1000, tenant="a", pool="sim", duration=0.01)
    await sim.settle()
    view = sim.engine.view(outside.id)
    assert view is not None and view.reason is not None and view.reason.code == "quota_exhausted", view
    assert view.reason.resource == "tasks"


@pytest.fixture
async def mixed(store: SqlTaskStore) -> AsyncIterator[H]:
    """Two pools: ``default`` (scripted ``local`` executor) and ``sim`` (simulated, one node)."""
    fake = ScriptedExecutor()
    pool = Pool("default", "local", nodes=(Node("n0", "default", fake.total, 100),))
    engine = Engine(store, [(pool, fake), sim_pool()], SystemClock(), EngineConfig(kill_grace=0.1))
    await engine.start()
    yield H(store, engine, fake)
    await engine.close()


async def test_start_and_stop_go_to_the_pool_s_own_executor(mixed: H) -> None:
    fake = mixed.fake
    assert fake is not None
    task = await mixed.submit(cpu=1000, pool="sim", duration=10_000.0)
    await mixed.until(lambda: mixed.state(task) is TaskState.RUNNING)
    assert fake.launches == []
    cancelled = await mixed.engine.cancel(task.id)
    assert cancelled is not None and cancelled.state is TaskState.CANCELLING
    await mixed.until(lambda: mixed.state(task) is None)
    assert fake.stops == []  # the stop went to the simulated executor only
    await mixed.stored_as(task, TaskState.CANCELLED)
    assert mixed.usage() == ZERO


async def test_restart_adopts_the_running_attempt_and_re_hands_the_queued_launch(store: SqlTaskStore) -> None:
    fake = ScriptedExecutor()
    pool = Pool("default", "local", nodes=(Node("n0", "default", fake.total, 100),))
    engine = Engine(store, [(pool, fake)], SystemClock(), EngineConfig(kill_grace=0.1))
    await engine.start()
    h = H(store, engine, fake)
    hog, waiting = await hog_and_handoff(h)
    await engine.close()
    # A new server: the node still runs the hog and still holds the queued launch.
    fake2 = ScriptedExecutor()

    async def open_(epoch: int, on_events: Callable[[list[ExecutorEvent]], None]) -> Recovered:
        fake2._on_events = on_events
        return Recovered(running=[started(hog.id, 1)], exited=[], queued=[(waiting.id, 1)])

    fake2.open = open_  # type: ignore[method-assign]
    engine2 = Engine(store, [(pool, fake2)], SystemClock(), EngineConfig(kill_grace=0.1))
    await engine2.start()
    h2 = H(store, engine2, fake2)
    try:
        await h2.settle()
        assert h2.state(hog) is TaskState.RUNNING and h2.state(waiting) is TaskState.PENDING
        assert fake2.stops == [] and h2.usage() == Resources(8000, 2 * MEM) and h2.ledger_running() == 2
        fake2.emit(exited(hog.id, 1, code=0), started(waiting.id, 1))
        await h2.until(lambda: h2.state(waiting) is TaskState.RUNNING)
        assert h2.usage() == Resources(4000, MEM) and h2.ledger_running() == 1
        assert fake2.launched(waiting.id) == []  # never sent twice
    finally:
        await engine2.close()
