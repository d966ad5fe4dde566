"""The engine: the one loop that owns every live task's state (scheduler + dispatcher + timers).

    submissions --+                                   +--> executor.start (at once)
    cancels ------+--> inbox --> step() --> batch ----+
    executor -----+                           |       +--> committer: ONE transaction for every step since
    timers -------+                           |            the last commit (group commit), THEN acks,
                                              v            stops, API replies, waiters
        1. take executor events (started, exited) and decide retries (domain.outcome)
        2. take cancel requests
        3. fire due timers (queue timeout, run timeout, deadline, end of backoff)
        4. schedule: place queued tasks on free capacity (pure scheduler.schedule)

Durability rules, so a ``kill -9`` at any point can be reconciled on restart (``start``):
- an exit is acknowledged to the executor only after it is committed, so the executor replays it until then;
- API replies (cancel) and waiters are answered only after the commit;
- starts go out before their commit, to keep the fsync off the start path. That is safe because the
  executor journals every start before it spawns and reports it after a restart: an attempt the database
  never recorded is adopted (``_adopt``), and one the database recorded but the executor never saw is
  ``lost`` and retried on the infra budget. Executor sessions are fenced by an epoch, so a dead server's
  late start cannot run after a new server took over.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections import Counter
from collections.abc import Coroutine, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any, Protocol

from taskplane.domain.audit import AuditEntry
from taskplane.domain.lifecycle import check_transition
from taskplane.domain.outcome import AttemptOutcome, StopReason, classify, describe, next_step
from taskplane.domain.pool import Pool
from taskplane.domain.reservation import Reservation, ReservationState
from taskplane.domain.resources import Resources
from taskplane.domain.task import (
    Attempt,
    AttemptState,
    FailureClass,
    PendingReason,
    Task,
    TaskState,
)
from taskplane.domain.tenant import DEFAULT_TENANT, Tenant, default_tenant
from taskplane.errors import (
    ConflictError,
    InternalError,
    InvalidTransitionError,
    NotFoundError,
    TaskplaneError,
    UnavailableError,
)
from taskplane.scheduler import Candidate, Plan, Policy, schedule
from taskplane.services.ledger import Ledger, NodeUsage, PoolUsage, TenantCounts
from taskplane.services.ports import (
    AdminStore,
    ChangeSet,
    Clock,
    Executor,
    ExecutorEvent,
    Exited,
    Launch,
    NodeResized,
    Started,
    TaskEvent,
    TaskStore,
)
from taskplane.services.queue import QueueKey, QueueSet, ReadyQueue, TimerHeap, candidate_of

log = logging.getLogger("taskplane.engine")

AttemptKey = tuple[str, int]
GANG_LANE = "#reservations"

__all__ = ["Engine", "EngineConfig", "EngineStore", "LiveView", "NodeUsage", "PoolUsage", "TenantCounts"]


class EngineStore(TaskStore, AdminStore, Protocol):
    """The storage the engine needs: tasks, plus tenants and reservations."""


@dataclass(frozen=True, slots=True)
class EngineConfig:
    """The engine's knobs."""

    kill_grace: float = 10.0
    node_queue: int = 4  # launches handed to a node beyond its free capacity, started there as slots free up
    base_env: Mapping[str, str] | None = None  # variables every task gets (PATH, LANG, ...)
    db_retry_max: float = 5.0
    policy: Policy = Policy(max_placements=1000)


@dataclass(frozen=True, slots=True)
class LiveView:
    """What the engine knows of a task beyond its stored row."""

    reason: PendingReason | None
    queue_position: int | None  # within its tenant and pool
    eta: datetime | None = None  # estimated start, where run timeouts allow one


class _Batch:
    """Everything decided since the last commit: the rows to write and what to do once they are durable."""

    def __init__(self) -> None:
        self.tasks: dict[str, Task] = {}
        self.new_attempts: dict[AttemptKey, Attempt] = {}
        self.attempts: dict[AttemptKey, Attempt] = {}
        self.events: list[TaskEvent] = []
        self.reservations: dict[str, Reservation] = {}
        self.acks: list[AttemptKey] = []
        self.stops: list[AttemptKey] = []
        self.replies: list[tuple[asyncio.Future[Task], Task | TaskplaneError]] = []
        self.released: list[tuple[asyncio.Future[Reservation | None], Reservation | None]] = []
        self.finished: list[str] = []
        self.audit: list[AuditEntry] = []  # records of the API requests answered by this batch

    def __bool__(self) -> bool:
        return bool(
            self.audit
            or self.tasks
            or self.new_attempts
            or self.attempts
            or self.events
            or self.reservations
            or self.acks
            or self.stops
        )

    def has_work(self) -> bool:
        """Anything to commit or to do after a commit."""
        return bool(self) or bool(self.replies or self.released or self.finished)

    def put_task(self, task: Task) -> None:
        self.tasks[task.id] = task

    def put_attempt(self, att: Attempt, *, new: bool = False) -> None:
        key = (att.task_id, att.number)
        if new or key in self.new_attempts:
            self.new_attempts[key] = att
        else:
            self.attempts[key] = att

    def changes(self) -> ChangeSet:
        return ChangeSet(
            tasks=list(self.tasks.values()),
            new_attempts=list(self.new_attempts.values()),
            attempts=list(self.attempts.values()),
            events=self.events,
            reservations=list(self.reservations.values()),
            audit=self.audit,
        )


def _epoch(dt: datetime) -> float:
    return dt.timestamp()


class Engine:
    """Owns live tasks: places, starts, watches, retries, times out and cancels them. See the module docstring."""

    def __init__(
        self,
        store: EngineStore,
        pools: Sequence[tuple[Pool, Executor]],
        clock: Clock,
        config: EngineConfig,
        rng: random.Random | None = None,
    ) -> None:
        if not pools:
            raise ValueError("the engine needs at least one pool")
        self._store = store
        self._pools = {pool.name: pool for pool, _ in pools}
        self._executors: dict[str, Executor] = {pool.name: executor for pool, executor in pools}
        self._ledger = Ledger((pool, executor.name) for pool, executor in pools)
        # Pools whose single node keeps a FIFO queue of launches (the local executor): they get hand-offs.
        self._queue_nodes = {
            pool.nodes[0].name for pool, executor in pools if executor.name == "local" and len(pool.nodes) == 1
        }
        self._executor = pools[0][1]  # the first pool's executor: what /platform/capacity reports
        self._clock = clock
        self._config = config
        self._rng = rng or random.Random()
        self._tasks: dict[str, Task] = {}  # every non-terminal task
        self._state_counts: Counter[TaskState] = Counter()
        self._tenant_counts: Counter[tuple[str, TaskState]] = Counter()
        self._attempts: dict[AttemptKey, Attempt] = {}  # every non-terminal attempt
        self._queues = QueueSet()
        self._parked: dict[str, PendingReason] = {}  # pending tasks that can never run as configured
        self._reasons: dict[str, PendingReason] = {}  # why the last cycle left each examined task pending
        self._etas: dict[str, float] = {}
        self._timers = TimerHeap()
        self._stop_reasons: dict[AttemptKey, StopReason] = {}
        self._tenants: dict[str, Tenant] = {DEFAULT_TENANT: default_tenant()}
        self._reservations: dict[str, Reservation] = {}  # pending and active
        # Launches handed to the node's queue beyond free capacity. Their tasks stay pending (nothing is written)
        # until the node starts them; attempt numbers are reserved so a number is never sent twice.
        self._handoff: dict[AttemptKey, Resources] = {}
        self._handed: dict[str, int] = {}  # task id -> attempt number in the handoff
        self._reserved: dict[str, int] = {}  # task id -> highest attempt number ever sent
        self._unqueueing: set[AttemptKey] = set()
        self._finishing: set[str] = set()  # ended in memory, end not committed yet
        # inbox
        self._new: list[Task] = []
        self._events: list[ExecutorEvent] = []
        self._cancels: list[tuple[str, asyncio.Future[Task], AuditEntry | None]] = []
        self._releases: list[tuple[str, asyncio.Future[Reservation | None], AuditEntry | None]] = []
        self._waiters: dict[str, list[asyncio.Future[None]]] = {}
        self._wake = asyncio.Event()
        # outbox
        self._batch = _Batch()
        self._batch_ready = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._loop_task: asyncio.Task[None] | None = None
        self._committer_task: asyncio.Task[None] | None = None
        self._inflight: set[asyncio.Task[None]] = set()
        self._closing = False
        self.steps = 0
        self.commits = 0
        self.cycles = 0
        self.cycle_seconds = 0.0  # time spent in scheduling cycles (snapshot, schedule, apply)
        self.placements = 0
        self.preemptions = 0

    # ------------------------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Recover from the database and the executors, then run the loop."""
        tasks, attempts = await self._store.load_unfinished()
        for tenant in await self._store.list_tenants():
            self._tenants[tenant.name] = tenant
        reservations = await self._store.load_reservations()
        epoch = await self._store.next_epoch()
        running: list[Started] = []
        exited: list[Exited] = []
        queued: list[tuple[str, int]] = []
        for executor in self._executors.values():
            recovered = await executor.open(epoch, self._on_events)
            running.extend(recovered.running)
            exited.extend(recovered.exited)
            queued.extend(recovered.queued)
        now = self._clock.now()
        for res in reservations:
            self._recover_reservation(res, now)
        for att in attempts:
            self._attempts[(att.task_id, att.number)] = att
        for task in tasks:
            self._hold(task)
        for task in tasks:
            self._recover_task(task, now)
        seen: set[AttemptKey] = {(ev.task_id, ev.attempt) for ev in running}
        seen.update((ev.task_id, ev.attempt) for ev in exited)
        seen.update(queued)
        for task_id, number in seen:
            self._reserved[task_id] = max(number, self._reserved.get(task_id, 0))
        for key in queued:
            owner = self._tasks.get(key[0])
            if owner is not None and owner.state is TaskState.PENDING and key[1] > owner.attempts:
                node = next(iter(self._queue_nodes), None)
                if node is not None:
                    self._hand_off(owner, key[1], node)
                    continue
            if owner is not None and owner.state.live and key[1] == owner.attempts:
                continue  # placed and recorded; the node starts it when it fits
            self._batch.stops.append(key)  # nobody wants it any more
        self._events.extend(running)
        self._events.extend(exited)
        # An attempt the database thinks is live but no executor knows was lost.
        for key, att in list(self._attempts.items()):
            owner = self._tasks.get(key[0])
            if key in seen or owner is None or owner.attempts != att.number or not owner.state.live:
                continue
            if att.state is AttemptState.STARTING:  # no process ever ran: requeue, costs no retry
                outcome = AttemptOutcome(lost="never started: the node did not have it after a restart")
                self._events.append(Exited(key[0], key[1], now, outcome, never_started=True))
            else:
                self._events.append(Exited(key[0], key[1], now, AttemptOutcome(lost="the executor lost it")))
        log.info(
            "engine recovered: %d unfinished tasks, %d live attempts, %d reservations; executors report "
            "%d running and %d exited",
            len(tasks),
            len(attempts),
            len(reservations),
            len(running),
            len(exited),
        )
        self._committer_task = asyncio.create_task(self._committer(), name="taskplane-committer")
        self._loop_task = asyncio.create_task(self._run(), name="taskplane-engine")
        self._wake.set()

    def _recover_reservation(self, res: Reservation, now: datetime) -> None:
        if res.state is ReservationState.ACTIVE:
            if any(self._ledger.node(node) is None for node in res.nodes):
                gone = replace(
                    res,
                    state=ReservationState.RELEASED,
                    ended_at=now,
                    updated_at=now,
                    message="released: a node it held is no longer configured",
                )
                self._batch.reservations[res.id] = gone
                return
            self._ledger.hold(res)
        else:
            self._queues.push(res.id, (res.tenant, res.pool, GANG_LANE), res.priority)
        self._reservations[res.id] = res
        if res.expires_at is not None:
            self._timers.add(_epoch(res.expires_at), "reservation_expiry", res.id)

    def _recover_task(self, task: Task, now: datetime) -> None:
        key = (task.id, task.attempts)
        if task.state is TaskState.ADMITTED and key not in self._attempts:
            task = self._move(task, TaskState.PENDING, now, type_="requeued")  # admitted without an attempt
        if task.state is TaskState.PENDING:
            self._enqueue(task)
            return
        att = self._attempts.get(key)
        if att is not None and self._ledger.node(att.node) is not None:
            started = att.started_at or att.created_at
            self._ledger.charge(task, att.node, started_at=_epoch(started))
        if task.state is TaskState.CANCELLING:
            self._stop_reasons[key] = StopReason.CANCEL
            self._batch.stops.append(key)
            self._ledger.terminating(task.id)
        run = task.spec.timeouts.run
        if att is not None and att.started_at is not None and run is not None:
            self._timers.add(_epoch(att.started_at) + run, "run_timeout", task.id, task.attempts)
        if task.spec.timeouts.deadline is not None:
            self._timers.add(_epoch(task.spec.timeouts.deadline), "deadline", task.id)

    async def close(self) -> None:
        """Stop after committing what was decided; running tasks keep running (executor helpers survive)."""
        self._closing = True
        self._wake.set()
        if self._loop_task is not None:
            self._loop_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop_task
        if self._committer_task is not None:
            with contextlib.suppress(asyncio.TimeoutError, UnavailableError):
                await asyncio.wait_for(self._flush(), 10.0)
            self._committer_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._committer_task
        for futures in self._waiters.values():
            for fut in futures:
                if not fut.done():
                    fut.cancel()
        for executor in self._executors.values():
            with contextlib.suppress(Exception):
                await executor.close()

    async def _flush(self) -> None:
        while self._batch.has_work() or not self._idle.is_set():
            self._batch_ready.set()
            await asyncio.sleep(0.01)

    # ---------------------------------------------------------------------------------- public calls

    def submitted(self, tasks: list[Task]) -> None:
        """Tasks committed as pending by the submit service (held at once, queued by the next step)."""
        for task in tasks:
            if task.id not in self._tasks:
                self._hold(task)
        self._new.extend(tasks)
        self._wake.set()

    async def cancel(self, task_id: str, audit: AuditEntry | None = None) -> Task | None:
        """Ask to cancel a live task; returns its new state once committed, ``None`` if the engine does not hold it.

        ``audit`` is committed in the same transaction as the cancellation.
        """
        if task_id not in self._tasks:
            return None
        fut: asyncio.Future[Task] = asyncio.get_running_loop().create_future()
        self._cancels.append((task_id, fut, audit))
        self._wake.set()
        return await fut

    async def wait_terminal(self, task_id: str, timeout: float) -> None:
        """Return when the task's end is committed, or when ``timeout`` passes."""
        if task_id not in self._tasks and task_id not in self._finishing:
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(task_id, []).append(fut)
        try:
            await asyncio.wait_for(asyncio.shield(fut), timeout)
        except TimeoutError:
            pass
        finally:
            waiters = self._waiters.get(task_id)
            if waiters is not None and fut in waiters:
                waiters.remove(fut)

    def is_live(self, task_id: str, attempt: int | None = None) -> bool:
        """True while the task (and, if given, that attempt) may still produce output."""
        task = self._tasks.get(task_id)
        if task is None:
            return False
        if attempt is None:
            return True
        att = self._attempts.get((task_id, attempt))
        return att is not None and not att.state.terminal

    def view(self, task_id: str, *, position: bool = True) -> LiveView | None:
        """The engine's live view of a task: its pending reason, (if asked, O(queue)) queue position, and eta."""
        task = self._tasks.get(task_id)
        if task is None:
            return None
        number = self._handed.get(task_id)
        if task.state is TaskState.PENDING and number is not None:
            key = (task_id, number)
            at = next((i for i, k in enumerate(self._handoff) if k == key), None) if position else None
            charge = self._ledger.charge_of(task_id)
            node = charge.node if charge is not None else self._executor.name
            reason = PendingReason("node_queue", f"next in line on {node}: starts there as soon as a slot frees up")
            return LiveView(reason, at)
        if task.state is not TaskState.PENDING:
            return LiveView(None, None)
        if task_id in self._parked:
            return LiveView(self._parked[task_id], None)
        if task.not_before is not None and task.not_before > self._clock.now():
            return LiveView(task.pending_reason, None)
        queue = self._queues.key_of(task_id)
        if queue is None:
            return LiveView(PendingReason("queued", "waiting for the next scheduling cycle"), None)
        index = self._queues.position(task_id) if position else None
        ahead = sum(1 for handed in self._handoff if self._tasks_key(handed[0]) == queue)  # the node's queue is first
        where = None if index is None else index + ahead
        blocked = self._reasons.get(task_id)
        if blocked is not None:
            eta = self._etas.get(task_id)
            return LiveView(blocked, where, None if eta is None else datetime.fromtimestamp(eta, UTC))
        head = self._queues.head(queue)
        head_reason = self._reasons.get(head) if head is not None else None
        if head is None or head_reason is None:
            return LiveView(PendingReason("queued", "waiting for the next scheduling cycle"), where)
        return LiveView(
            PendingReason("queued", f"queued behind {head} ({head_reason.message})", resource=head_reason.resource),
            where,
        )

    def _tasks_key(self, task_id: str) -> QueueKey | None:
        task = self._tasks.get(task_id)
        return None if task is None else self._queue_key(task)

    def counts(self) -> dict[str, int]:
        """Live tasks by state (for metrics and capacity)."""
        return {state.value: n for state, n in self._state_counts.items() if n}

    # ----------------------------------------------------------------------- pools, tenants, reservations

    def pools(self) -> list[PoolUsage]:
        """Every pool with its nodes' totals, allocations and reservations."""
        return self._ledger.pool_usage()

    def pool(self, name: str) -> Pool | None:
        """A configured pool."""
        return self._pools.get(name)

    def pool_names(self) -> list[str]:
        """The configured pools, in configuration order."""
        return list(self._pools)

    def executor_of(self, pool: str) -> Executor | None:
        """The executor serving a pool."""
        return self._executors.get(pool)

    def tenant(self, name: str) -> Tenant | None:
        """A tenant (``default`` always exists)."""
        return self._tenants.get(name)

    def tenants(self) -> list[Tenant]:
        """Every tenant, by name."""
        return sorted(self._tenants.values(), key=lambda t: t.name)

    def set_tenant(self, tenant: Tenant) -> None:
        """A tenant was created or updated (and committed): its quota and weight apply from the next cycle."""
        self._tenants[tenant.name] = tenant
        # A quota change may let parked tasks run (or park others): let the scheduler look at them again.
        for task_id in [t for t in self._parked if self._tasks[t].spec.tenant == tenant.name]:
            self._unpark(task_id)
        self._wake.set()

    def drop_tenant(self, name: str) -> None:
        """A tenant was deleted (and committed)."""
        if name != DEFAULT_TENANT:
            self._tenants.pop(name, None)

    def tenant_counts(self, name: str) -> TenantCounts:
        """A tenant's live work."""
        counts = self._tenant_counts
        pending = counts[(name, TaskState.PENDING)]
        running = sum(counts[(name, state)] for state in (TaskState.ADMITTED, TaskState.STARTING, TaskState.RUNNING))
        running += counts[(name, TaskState.CANCELLING)]
        held = sum(1 for r in self._reservations.values() if r.tenant == name)
        return TenantCounts(pending, running, self._ledger.usage(name), held)

    def reservation(self, reservation_id: str) -> Reservation | None:
        """A live (pending or active) reservation."""
        return self._reservations.get(reservation_id)

    def reservation_created(self, reservation: Reservation) -> None:
        """A new pending reservation (committed by the caller): admit it when all of it fits."""
        if reservation.id in self._reservations:
            return
        self._reservations[reservation.id] = reservation
        key = (reservation.tenant, reservation.pool, GANG_LANE)
        self._queues.push(reservation.id, key, reservation.priority)
        if reservation.expires_at is not None:
            self._timers.add(_epoch(reservation.expires_at), "reservation_expiry", reservation.id)
        self._wake.set()

    async def release(self, reservation_id: str, audit: AuditEntry | None = None) -> Reservation | None:
        """Release a live reservation; returns its committed row, ``None`` if it is not live.

        ``audit`` is committed in the same transaction as the release.
        """
        if reservation_id not in self._reservations:
            return None
        fut: asyncio.Future[Reservation | None] = asyncio.get_running_loop().create_future()
        self._releases.append((reservation_id, fut, audit))
        self._wake.set()
        return await fut

    def live_usage(self) -> dict[tuple[str, str], Resources]:
        """(tenant, pool) -> what its tasks and reservations hold now."""
        return self._ledger.live_usage()

    # -------------------------------------------------------------------------------------- the loop

    def _on_events(self, events: list[ExecutorEvent]) -> None:
        self._events.extend(events)
        self._wake.set()

    async def _run(self) -> None:
        while not self._closing:
            due = self._timers.next_due()
            timeout = None if due is None else max(0.0, due - self._clock.now().timestamp())
            if not self._wake.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout)
            self._wake.clear()
            try:
                await self._step()
            except asyncio.CancelledError:
                raise
            except Exception:  # a bug must not stop the platform; log it loudly and keep going
                log.exception("engine step failed")
                await asyncio.sleep(0.5)

    async def _step(self) -> None:
        self.steps += 1
        now = self._clock.now()
        batch = self._batch

        new, self._new = self._new, []
        for task in new:
            held = self._tasks.get(task.id)
            if held is not None and held.state is TaskState.PENDING:
                self._enqueue(held)

        # Each item is handled on its own: a bug in one must not drop the others (their exits would go unrecorded).
        events, self._events = self._events, []
        for ev in events:
            try:
                if isinstance(ev, Started):
                    self._on_started(ev)
                elif isinstance(ev, NodeResized):
                    self._on_resized(ev)
                else:
                    self._on_exited(ev, now)
            except Exception:
                log.exception("engine: handling %s failed", ev)

        cancels, self._cancels = self._cancels, []
        for task_id, fut, audit in cancels:
            try:
                batch.replies.append((fut, self._on_cancel(task_id, now)))
                if audit is not None:
                    batch.audit.append(audit)
            except TaskplaneError as exc:
                batch.replies.append((fut, exc))
            except Exception:
                log.exception("engine: cancelling %s failed", task_id)
                batch.replies.append((fut, InternalError(f"cancelling task {task_id} failed; see the server log")))

        releases, self._releases = self._releases, []
        for reservation_id, rfut, audit in releases:
            try:
                ended = self._end_reservation(reservation_id, ReservationState.RELEASED, now)
                batch.released.append((rfut, ended))
                if ended is not None and audit is not None:
                    batch.audit.append(audit)
            except Exception:
                log.exception("engine: releasing %s failed", reservation_id)
                batch.released.append((rfut, None))

        for timer in self._timers.pop_due(now.timestamp()):
            try:
                self._on_timer(timer.kind, timer.task_id, timer.attempt, now)
            except Exception:
                log.exception("engine: timer %s failed", timer)

        launches: list[Launch] = []
        try:
            self._place(now, launches)
        finally:
            if batch.has_work():
                self._batch_ready.set()
            if launches:
                # Ahead of the commit, on purpose (see the module docstring), and without waiting for the
                # executor's reply: the next step need not wait for processes to be spawned.
                self._background(self._start(launches), "start")

    def _background(self, work: Coroutine[Any, Any, None], what: str) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._inflight.add(task)

        def done(t: asyncio.Task[None]) -> None:
            self._inflight.discard(t)
            if not t.cancelled() and t.exception() is not None:
                log.error("executor %s failed: %s", what, t.exception())

        task.add_done_callback(done)

    async def _committer(self) -> None:
        """Commit batches in order, one transaction each, and act on each once it is durable."""
        while True:
            await self._batch_ready.wait()
            self._batch_ready.clear()
            batch, self._batch = self._batch, _Batch()
            if not batch.has_work():
                continue
            self._idle.clear()
            try:
                if batch:
                    await self._commit(batch.changes())
                    self.commits += 1
                await self._after_commit(batch)
            except asyncio.CancelledError:
                raise
            except Exception:  # the committer must outlive any single failure
                log.exception("engine: acting on a committed batch failed")
            finally:
                self._idle.set()

    def _executor_of_node(self, node: str | None) -> Executor | None:
        pool = self._ledger.pool_of(node) if node is not None else None
        return None if pool is None else self._executors.get(pool)

    def _executors_of_key(self, key: AttemptKey) -> list[Executor]:
        """The executor running an attempt, or every executor when we no longer know (stops are idempotent)."""
        att = self._attempts.get(key)
        charge = self._ledger.charge_of(key[0])
        node = att.node if att is not None else charge.node if charge is not None else None
        executor = self._executor_of_node(node)
        return [executor] if executor is not None else list(self._executors.values())

    async def _start(self, launches: list[Launch]) -> None:
        """Hand launches to their pools' executors (in order, per executor)."""
        groups: dict[str, list[Launch]] = {}
        for launch in launches:
            pool = self._ledger.pool_of(launch.node) if launch.node is not None else None
            groups.setdefault(pool or next(iter(self._executors)), []).append(launch)
        await asyncio.gather(*(self._start_on(self._executors[pool], group) for pool, group in groups.items()))

    async def _start_on(self, executor: Executor, launches: list[Launch]) -> None:
        """Hand launches to an executor, retrying until it takes them (it ignores attempts it already has)."""
        delay = 0.1
        while not self._closing:
            try:
                await executor.start(launches)
                return
            except ConflictError:
                log.error("the executor is fenced by a newer server; not starting %d launches", len(launches))
                return
            except Exception as exc:
                log.warning("could not hand %d launches to the executor (%s); retrying", len(launches), exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    async def _nudge_later(self, delay: float = 1.0) -> None:
        await asyncio.sleep(delay)
        self._batch_ready.set()

    async def _commit(self, changes: ChangeSet) -> None:
        if not changes:
            return
        delay, tries = 0.05, 0
        while True:
            tries += 1
            try:
                await self._store.apply(changes)
                return
            except UnavailableError as exc:  # the database is down: keep the decisions and retry; tasks keep running
                log.warning("could not record engine step (%s); retrying in %.2fs", exc, delay)
            except ConflictError:
                if tries > 1:
                    # The connection broke during an earlier try's COMMIT, which had in fact landed: the attempts
                    # it inserted now conflict. The rows are written; nothing is lost.
                    log.warning("an earlier try of this commit had landed; carrying on")
                    return
                log.exception("the database refused an engine step; retrying in %.2fs", delay)
            except Exception:  # a bug: never drop decisions (their acks would lose exits); keep trying, loudly
                log.exception("could not record engine step; retrying in %.2fs", delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, self._config.db_retry_max)

    async def _after_commit(self, batch: _Batch) -> None:
        try:
            retry_stops: list[AttemptKey] = []
            for key in batch.stops:
                try:
                    for executor in self._executors_of_key(key):
                        await executor.stop(key[0], key[1], self._config.kill_grace)
                except Exception as exc:  # idempotent: try again with the next batch
                    log.warning("could not stop %s.%d (%s); will retry", key[0], key[1], exc)
                    retry_stops.append(key)
            if batch.acks:
                try:
                    for executor in self._executors.values():
                        await executor.ack(batch.acks)
                except Exception as exc:  # unacked exits are replayed, and replays are ignored: safe to retry
                    log.warning("could not acknowledge %d exits (%s); will retry", len(batch.acks), exc)
                    self._batch.acks.extend(batch.acks)
            self._batch.stops.extend(retry_stops)
            if retry_stops or self._batch.acks:
                self._background(self._nudge_later(), "retry")
        finally:
            for fut, result in batch.replies:
                if fut.done():
                    continue
                if isinstance(result, TaskplaneError):
                    fut.set_exception(result)
                else:
                    fut.set_result(result)
            for rfut, row in batch.released:
                if not rfut.done():
                    rfut.set_result(row)
            for task_id in batch.finished:
                self._finishing.discard(task_id)
                for waiter in self._waiters.pop(task_id, []):
                    if not waiter.done():
                        waiter.set_result(None)

    # ------------------------------------------------------------------------------------- handlers

    def _move(
        self,
        task: Task,
        target: TaskState,
        now: datetime,
        *,
        type_: str | None = None,
        data: Mapping[str, Any] | None = None,
        **fields: Any,
    ) -> Task:
        """Apply one checked transition and record it."""
        check_transition(task, target)
        moved = replace(task, state=target, updated_at=now, **fields)
        self._record(moved)
        self._batch.events.append(
            TaskEvent(
                task_id=task.id,
                at=now,
                type=type_ or target.value,
                from_state=task.state,
                to_state=target,
                attempt=moved.attempts or None,
                data=data or {},
            )
        )
        return moved

    def _record(self, task: Task) -> None:
        self._hold(task)
        self._batch.put_task(task)

    def _hold(self, task: Task) -> None:
        """Keep ``task`` as the engine's current row (dropping it once terminal), with the per-state counts."""
        old = self._tasks.get(task.id)
        if old is not None:
            self._state_counts[old.state] -= 1
            self._tenant_counts[(old.spec.tenant, old.state)] -= 1
        if task.state.terminal:
            self._tasks.pop(task.id, None)
            self._reasons.pop(task.id, None)
            self._finishing.add(task.id)  # until its end is committed: waiters keep waiting
        else:
            self._tasks[task.id] = task
            self._state_counts[task.state] += 1
            self._tenant_counts[(task.spec.tenant, task.state)] += 1

    def _record_attempt(self, att: Attempt, *, new: bool = False) -> None:
        key = (att.task_id, att.number)
        if att.state.terminal:
            self._attempts.pop(key, None)
        else:
            self._attempts[key] = att
        self._batch.put_attempt(att, new=new)

    def _queue_key(self, task: Task) -> QueueKey:
        spec = task.spec
        return (spec.tenant, spec.pool, spec.reservation or "")

    def _ready(self, task: Task) -> None:
        self._queues.push(task.id, self._queue_key(task), task.spec.priority)

    def _unpark(self, task_id: str) -> None:
        self._parked.pop(task_id, None)
        task = self._tasks.get(task_id)
        if task is not None and task.state is TaskState.PENDING:
            self._ready(task)

    def _orphaned(self, task: Task, now: datetime) -> bool:
        """A pending task of a reservation that has ended can never run: cancel it. True if it was one."""
        rid = task.spec.reservation
        if rid is None or rid in self._reservations:
            return False
        self._queues.discard(task.id)
        self._parked.pop(task.id, None)
        self._move(
            task,
            TaskState.CANCELLED,
            now,
            failure_class=FailureClass.CANCELLED,
            message=f"reservation {rid} ended before the task could run (again)",
            finished_at=now,
            pending_reason=None,
        )
        self._batch.finished.append(task.id)
        return True

    def _enqueue(self, task: Task) -> None:
        now = self._clock.now()
        if self._orphaned(task, now):
            return
        if task.not_before is not None and task.not_before > now:
            self._timers.add(_epoch(task.not_before), "backoff", task.id)
        else:
            self._ready(task)  # a stored never_fits reason is decided afresh: the pools may have changed
        if task.attempts == 0 and task.spec.timeouts.queue is not None:
            self._timers.add(_epoch(task.created_at) + task.spec.timeouts.queue, "queue_timeout", task.id)
        if task.spec.timeouts.deadline is not None:
            self._timers.add(_epoch(task.spec.timeouts.deadline), "deadline", task.id)

    def _next_number(self, task: Task) -> int:
        number = max(task.attempts, self._reserved.get(task.id, 0)) + 1
        self._reserved[task.id] = number
        return number

    def _hand_off(self, task: Task, number: int, node: str) -> None:
        """Put a pending task in the node's queue (in memory only: the task stays pending until it starts)."""
        self._queues.discard(task.id)
        self._reasons.pop(task.id, None)
        self._handoff[(task.id, number)] = task.spec.resources
        self._handed[task.id] = number
        self._ledger.charge(task, node, started_at=self._clock.now().timestamp(), queued=True)

    def _take_back(self, key: AttemptKey) -> bool:
        """Forget a handed-off launch; True if it was one. Its queued hold stays until the caller decides."""
        if self._handoff.pop(key, None) is None:
            return False
        if self._handed.get(key[0]) == key[1]:
            del self._handed[key[0]]
        return True

    def _drop_queued_hold(self, task_id: str) -> None:
        charge = self._ledger.charge_of(task_id)
        if charge is not None and charge.queued:
            self._ledger.release(task_id)

    def _begin_attempt(self, task: Task, number: int, node: str, now: datetime, **data: Any) -> Task:
        """Move a pending task to admitted -> starting with attempt ``number`` on ``node``, allocating for it."""
        self._queues.discard(task.id)
        self._parked.pop(task.id, None)
        self._reasons.pop(task.id, None)
        skipped = task.skipped_attempts + max(0, number - task.attempts - 1)  # numbers of launches that never ran
        task = self._move(
            task,
            TaskState.ADMITTED,
            now,
            attempts=number,
            skipped_attempts=skipped,
            pending_reason=None,
            not_before=None,
            data={"node": node},
        )
        task = self._move(task, TaskState.STARTING, now, data={"node": node, **data})
        self._ledger.charge(task, node, started_at=now.timestamp())
        self._record_attempt(
            Attempt(task_id=task.id, number=number, state=AttemptState.STARTING, node=node, created_at=now),
            new=True,
        )
        return task

    def _adopt(self, task_id: str, attempt: int, at: datetime) -> Task | None:
        """An attempt the executor ran whose start was never committed (the server died in between): adopt it."""
        task = self._tasks.get(task_id)
        if task is None or task.state is not TaskState.PENDING or attempt <= task.attempts:
            return None
        node = self._node_name(task)
        log.info("adopting attempt %s.%d that started before its record was committed", task_id, attempt)
        return self._begin_attempt(task, attempt, node, at, adopted=True)

    def _node_name(self, task: Task) -> str:
        """The node an attempt we did not place runs on: its queued hold's node, else the task's pool's first."""
        charge = self._ledger.charge_of(task.id)
        if charge is not None:
            return charge.node
        pool = self._pools.get(task.spec.pool)
        if pool is not None and pool.nodes:
            return pool.nodes[0].name
        return next(iter(self._queue_nodes), self._executor.capacity().node)

    def _on_resized(self, ev: NodeResized) -> None:
        node = self._ledger.resize(ev.node, ev.total, ev.max_tasks)
        if node is None:
            log.warning("engine: an executor resized unknown node %s", ev.node)
            return
        self._pools[node.pool] = self._ledger.pools[node.pool]
        log.info("node %s resized: %s, at most %d tasks", ev.node, ev.total.describe(), ev.max_tasks)
        for task_id in [t for t in self._parked if self._tasks[t].spec.pool == node.pool]:
            self._unpark(task_id)  # never_fits may no longer hold (or now hold): look again

    def _on_started(self, ev: Started) -> None:
        key = (ev.task_id, ev.attempt)
        task = self._tasks.get(ev.task_id)
        if key not in self._attempts and key not in self._handoff and self._adopt(ev.task_id, ev.attempt, ev.at):
            task = self._tasks.get(ev.task_id)
        if self._take_back(key):
            if task is not None and task.state is TaskState.PENDING:
                # The node started it from its queue: only now does the task leave pending.
                task = self._begin_attempt(task, ev.attempt, self._node_name(task), ev.at, from_node_queue=True)
            else:
                self._drop_queued_hold(ev.task_id)  # cancelled or timed out while queued; its stop is on the way
        att = self._attempts.get(key)
        if att is None or task is None or task.attempts != ev.attempt:
            if att is None and (task is None or task.attempts != ev.attempt):
                # Running but unknown to us (an orphan): stop it, and ack its exit when it comes.
                log.warning("executor runs unknown attempt %s.%d; stopping it", ev.task_id, ev.attempt)
                self._batch.stops.append(key)
            return
        if att.state is AttemptState.STARTING:
            att = replace(att, state=AttemptState.RUNNING, started_at=ev.at, pid=ev.pid)
            self._record_attempt(att)
            self._ledger.started(task, ev.at.timestamp())
            run = task.spec.timeouts.run
            if run is not None:
                self._timers.add(_epoch(ev.at) + run, "run_timeout", task.id, ev.attempt)
        if task.state is TaskState.STARTING:
            self._move(task, TaskState.RUNNING, ev.at, started_at=task.started_at or ev.at, data={"pid": ev.pid})

    def _on_exited(self, ev: Exited, now: datetime) -> None:
        key = (ev.task_id, ev.attempt)
        self._batch.acks.append(key)
        if self._take_back(key):
            owner = self._tasks.get(ev.task_id)
            if owner is None or owner.state is not TaskState.PENDING:
                self._drop_queued_hold(ev.task_id)
                return  # cancelled or timed out while it waited in the node's queue
            if ev.never_started:
                self._drop_queued_hold(ev.task_id)
                self._enqueue(owner)  # taken back (or lost by a restarted node): queue it here again
                return
            node = self._node_name(owner)
            self._begin_attempt(owner, ev.attempt, node, ev.started_at or ev.at, from_node_queue=True)
        if key not in self._attempts and not ev.never_started:  # no process ran: nothing to adopt
            self._adopt(ev.task_id, ev.attempt, ev.started_at or ev.at)
        att = self._attempts.get(key)
        task = self._tasks.get(ev.task_id)
        if att is None or task is None or task.attempts != ev.attempt:
            return  # already recorded (a replay after reconnect) or an orphan we stopped
        stop_reason = self._stop_reasons.pop(key, None)
        outcome = ev.outcome if ev.outcome.stop_reason is not None else replace(ev.outcome, stop_reason=stop_reason)
        self._ledger.release(task.id)
        if ev.never_started and outcome.stop_reason is None:
            self._requeue(task, att, outcome, ev.at)
            return
        failure = classify(outcome)
        message = describe(outcome, failure)
        self._record_attempt(
            replace(
                att,
                state=AttemptState.SUCCEEDED if failure is None else AttemptState.FAILED,
                started_at=att.started_at or ev.started_at,
                finished_at=ev.at,
                exit_code=outcome.exit_code,
                signal=outcome.signal,
                failure_class=failure,
                message=message,
                peak_memory=ev.peak_memory,
                cpu_seconds=ev.cpu_seconds,
                log_truncated=ev.log_truncated,
            )
        )
        nxt = next_step(
            task,
            failure,
            now,
            self._rng.random(),
            retryable=outcome.retryable,
            infra_budget=not outcome.oom_killed,  # an OOM kill at the task's own limit would likely recur
        )
        data: dict[str, Any] = {"exit_code": outcome.exit_code, "signal": outcome.signal, "message": message}
        if failure is not None:
            data["failure_class"] = failure.value
        common: dict[str, Any] = {
            "failure_class": nxt.failure_class,
            "exit_code": outcome.exit_code,
            "message": message,
            "infra_failures": task.infra_failures + (1 if nxt.counts_as_infra else 0),
        }
        if nxt.state is TaskState.PENDING:
            assert nxt.not_before is not None
            delay = (nxt.not_before - now).total_seconds()
            reason = PendingReason(
                "backoff", f"retrying after {message}; next attempt in {delay:.1f}s", until=nxt.not_before
            )
            task = self._move(
                task,
                TaskState.PENDING,
                now,
                type_="retrying",
                data={**data, "retry_in": round(delay, 3)},
                not_before=nxt.not_before,
                pending_reason=reason,
                **common,
            )
            self._enqueue(task)
            return
        self._move(task, nxt.state, now, data=data, finished_at=now, pending_reason=None, **common)
        self._batch.finished.append(task.id)

    def _requeue(self, task: Task, att: Attempt, outcome: AttemptOutcome, at: datetime) -> None:
        """An attempt that never ran (lost from a node's queue): back to the queue, no retry used."""
        message = describe(outcome, FailureClass.INFRA)
        self._record_attempt(
            replace(att, state=AttemptState.FAILED, finished_at=at, failure_class=FailureClass.INFRA, message=message)
        )
        reason = PendingReason("requeued", f"attempt {att.number} never started ({message}); queued again")
        if task.state is TaskState.CANCELLING:
            self._move(task, TaskState.CANCELLED, at, finished_at=at, failure_class=FailureClass.CANCELLED)
            self._batch.finished.append(task.id)
            return
        task = self._move(
            task,
            TaskState.PENDING,
            at,
            type_="requeued",
            data={"message": message},
            pending_reason=reason,
            infra_failures=task.infra_failures + 1,  # not one of the user's attempts
        )
        self._enqueue(task)

    def _on_cancel(self, task_id: str, now: datetime) -> Task:
        task = self._tasks.get(task_id)
        if task is None:
            raise NotFoundError(f"task {task_id} is not live")  # the service answers from the database
        if task.state is TaskState.CANCELLING:
            return task
        if task.state is TaskState.PENDING:
            self._queues.discard(task_id)
            self._parked.pop(task_id, None)
            self._recall(task_id)
            self._batch.finished.append(task_id)
            return self._move(
                task,
                TaskState.CANCELLED,
                now,
                cancel_requested=True,
                failure_class=FailureClass.CANCELLED,
                message="cancelled before it started",
                finished_at=now,
                pending_reason=None,
            )
        if not task.state.live:  # pragma: no cover - only live and pending tasks are held
            raise InvalidTransitionError(f"task {task_id} is {task.state.value}", state=task.state.value)
        key = (task_id, task.attempts)
        self._stop_reasons[key] = StopReason.CANCEL
        self._batch.stops.append(key)
        self._ledger.terminating(task_id)
        return self._move(task, TaskState.CANCELLING, now, cancel_requested=True)

    def _on_timer(self, kind: str, task_id: str, attempt: int, now: datetime) -> None:
        if kind == "reservation_expiry":
            res = self._reservations.get(task_id)
            if res is not None and res.expires_at is not None and res.expires_at <= now:
                self._end_reservation(task_id, ReservationState.EXPIRED, now)
            return
        task = self._tasks.get(task_id)
        if task is None:
            return
        if kind == "backoff":
            due = task.state is TaskState.PENDING and task.not_before is not None and task.not_before <= now
            if due and not self._orphaned(task, now):
                self._ready(task)
            return
        pending = task.state is TaskState.PENDING
        if kind == "queue_timeout" and pending and task.attempts == 0:
            message = f"queue timeout reached: not started within {task.spec.timeouts.queue:g}s"
        elif kind == "deadline" and pending:
            message = "deadline reached before the task could run again" if task.attempts else "deadline reached"
        elif kind in ("run_timeout", "deadline") and task.state in (TaskState.STARTING, TaskState.RUNNING):
            key = (task_id, task.attempts)
            if kind == "run_timeout" and attempt != task.attempts:
                return
            if key not in self._stop_reasons:
                self._stop_reasons[key] = StopReason.TIMEOUT if kind == "run_timeout" else StopReason.DEADLINE
                self._batch.stops.append(key)
                self._ledger.terminating(task_id)
                self._batch.events.append(
                    TaskEvent(task_id, now, f"{kind}_reached", task.state, task.state, task.attempts, {})
                )
            return
        else:
            return
        self._queues.discard(task_id)
        self._parked.pop(task_id, None)
        self._recall(task_id)
        self._move(
            task,
            TaskState.TIMED_OUT,
            now,
            failure_class=FailureClass.TIMEOUT,
            message=message,
            finished_at=now,
            pending_reason=None,
        )
        self._batch.finished.append(task_id)

    def _place(self, now: datetime, launches: list[Launch]) -> None:
        """One scheduling cycle (pure ``scheduler.schedule``), then apply its plan."""
        if not len(self._queues):
            self._reasons.clear()
            self._etas.clear()
            return
        queues = self._queues.queues()
        tenants = dict(self._tenants)
        for (tenant, _, _), _queue in queues:
            if tenant not in tenants:  # tasks of a tenant from before tenants were records: no quota
                tenants[tenant] = Tenant(tenant)
        began = self._clock.monotonic()
        snapshot = self._ledger.snapshot(tenants)
        plan = schedule(snapshot, [self._lane(key, queue) for key, queue in queues], self._config.policy, _epoch(now))
        self._apply_plan(plan, now, launches)
        self._queues.compact()
        if len(plan.placements) >= self._config.policy.max_placements:
            self._wake.set()  # the cycle stopped at its cap, not for want of room: run another at once
        self.cycles += 1
        self.cycle_seconds += self._clock.monotonic() - began

    def _apply_plan(self, plan: Plan, now: datetime, launches: list[Launch]) -> None:
        """Apply a plan, re-checking each step against the ledger and skipping any that went stale."""
        self._reasons = plan.blocked
        self._etas = plan.eta
        for item_id, reason in plan.parked.items():
            self._queues.discard(item_id)
            res = self._reservations.get(item_id)
            if res is not None:
                self._end_reservation(item_id, ReservationState.RELEASED, now, message=reason.message)
                continue
            task = self._tasks.get(item_id)
            if task is None:
                continue
            self._parked[item_id] = reason
            self._record(replace(task, pending_reason=reason, updated_at=now))
        for pre in plan.preemptions:
            victim = self._tasks.get(pre.victim)
            if victim is None or victim.state not in (TaskState.STARTING, TaskState.RUNNING):
                continue  # ended or already stopping since the snapshot
            key = (victim.id, victim.attempts)
            if key in self._stop_reasons:
                continue
            self._stop_reasons[key] = StopReason.PREEMPT
            self._batch.stops.append(key)
            self.preemptions += 1
            self._ledger.terminating(victim.id)
            data: dict[str, Any] = {"node": pre.node, "reason": pre.reason}
            beneficiary = self._tasks.get(pre.for_id) or self._reservations.get(pre.for_id)
            owner = beneficiary.spec.tenant if isinstance(beneficiary, Task) else getattr(beneficiary, "tenant", None)
            if owner == victim.spec.tenant:
                data["for_task"] = pre.for_id  # another tenant's task or reservation is never named to this one
            self._batch.events.append(
                TaskEvent(victim.id, now, "preempting", victim.state, victim.state, victim.attempts, data)
            )
        for adm in plan.admissions:
            self._admit_reservation(adm.id, adm.nodes, now)
        for placement in plan.placements:
            task = self._tasks.get(placement.id)
            if task is None or task.state is not TaskState.PENDING or placement.id not in self._queues:
                continue
            stale = self._ledger.check(task, placement.node, self._tenants.get(task.spec.tenant), placement.reservation)
            if stale is not None:
                log.warning("skipping a stale placement of %s on %s: %s", task.id, placement.node, stale)
                continue
            number = self._next_number(task)
            extra: dict[str, Any] = {"borrowed": True} if placement.borrowed else {}
            if placement.reservation is not None:
                extra["reservation"] = placement.reservation
            task = self._begin_attempt(task, number, placement.node, now, **extra)
            launches.append(self._launch(task, number, placement.node))
            self.placements += 1
        self._hand_off_blocked(plan, launches)
        self._recall_for_priority()

    def _hand_off_blocked(self, plan: Plan, launches: list[Launch]) -> None:
        """Hand a node with a queue a few blocked tasks, in the cycle's order.

        Each starts there the moment a slot frees, with no round trip. Only tasks blocked on the node's room
        (never on quota) go.
        """
        room = self._config.node_queue - len(self._handoff)
        if room <= 0 or not self._queue_nodes:
            return
        for task_id, reason in list(plan.blocked.items()):
            if room <= 0:
                break
            if reason.code not in ("no_capacity", "task_limit"):
                continue
            task = self._tasks.get(task_id)
            if task is None or task.spec.reservation is not None or task_id not in self._queues:
                continue
            pool = self._pools.get(task.spec.pool)
            if pool is None or len(pool.nodes) != 1 or pool.nodes[0].name not in self._queue_nodes:
                continue
            if not task.spec.resources.fits_in(pool.nodes[0].total) or not self._within_quota(task):
                continue
            number = self._next_number(task)
            self._hand_off(task, number, pool.nodes[0].name)
            launches.append(self._launch(task, number, pool.nodes[0].name))
            room -= 1

    def _within_quota(self, task: Task) -> bool:
        tenant = self._tenants.get(task.spec.tenant)
        if tenant is None:
            return True
        quota = tenant.quota
        if quota.max_running is not None and self._ledger.running(tenant.name) >= quota.max_running:
            return False
        return tenant.borrowing or quota.exceeded_by(self._ledger.usage(tenant.name) + task.spec.resources) is None

    def _lane(self, key: QueueKey, queue: ReadyQueue) -> Iterator[Candidate]:
        """A queue's members as scheduler candidates, made only as the cycle reaches them."""
        if key[2] == GANG_LANE:
            reservations = self._reservations
            for item_id in queue:
                res = reservations[item_id]
                yield Candidate(res.id, res.tenant, res.pool, res.priority, res.seq, res.resources, count=res.count)
            return
        tasks = self._tasks
        for item_id in queue:
            yield candidate_of(tasks[item_id])

    # ---------------------------------------------------------------------------------- reservations

    def _admit_reservation(self, reservation_id: str, nodes: tuple[str, ...], now: datetime) -> None:
        res = self._reservations.get(reservation_id)
        if res is None or res.state is not ReservationState.PENDING or reservation_id not in self._queues:
            return
        if any(self._ledger.node(node) is None for node in nodes):
            return
        self._queues.discard(reservation_id)
        expires = res.expires_at
        if res.duration is not None:
            end = datetime.fromtimestamp(_epoch(now) + res.duration, UTC)
            expires = end if expires is None else min(expires, end)
        active = replace(
            res,
            state=ReservationState.ACTIVE,
            nodes=nodes,
            activated_at=now,
            updated_at=now,
            expires_at=expires,
            message=None,
        )
        self._reservations[res.id] = active
        self._ledger.hold(active)
        self._batch.reservations[res.id] = active
        if expires is not None and expires != res.expires_at:
            self._timers.add(_epoch(expires), "reservation_expiry", res.id)
        self._wake.set()  # tasks waiting for it can run in the next cycle

    def _end_reservation(
        self, reservation_id: str, state: ReservationState, now: datetime, message: str | None = None
    ) -> Reservation | None:
        """Release or expire a live reservation.

        Tasks running inside it keep running (charged normally); tasks still waiting to run inside it are
        cancelled, since what they were to run in is gone.
        """
        res = self._reservations.pop(reservation_id, None)
        if res is None:
            return None
        self._queues.discard(reservation_id)
        self._ledger.free(reservation_id)
        default = "released" if state is ReservationState.RELEASED else "expired"
        ended = replace(res, state=state, ended_at=now, updated_at=now, message=message or default)
        self._batch.reservations[res.id] = ended
        for task in [t for t in self._tasks.values() if t.spec.reservation == reservation_id]:
            if task.state is not TaskState.PENDING:
                continue
            self._queues.discard(task.id)
            self._parked.pop(task.id, None)
            self._recall(task.id)
            self._move(
                task,
                TaskState.CANCELLED,
                now,
                failure_class=FailureClass.CANCELLED,
                message=f"reservation {reservation_id} was {state.value} before the task could run",
                finished_at=now,
                pending_reason=None,
            )
            self._batch.finished.append(task.id)
        self._wake.set()
        return ended

    def _recall(self, task_id: str) -> None:
        """Take a task's launch back from the node's queue (it may already have started: then stop it)."""
        number = self._handed.get(task_id)
        if number is not None:
            self._batch.stops.append((task_id, number))

    def _recall_for_priority(self) -> None:
        """Keep the node's queue in priority order.

        A handed-off launch with a more urgent task behind it (later in the node's queue, or at the head of the
        ready queue) is taken back, queued here again and handed back behind the urgent one: priority wins
        over the few launches the node holds ahead.
        """
        if not self._handoff:
            return
        urgent = self._most_urgent_local()
        for key in reversed(self._handoff):
            owner = self._tasks.get(key[0])
            if owner is None:
                continue  # cancelled or timed out; its stop is on the way
            priority = owner.spec.priority
            if urgent is not None and priority < urgent and key not in self._unqueueing:
                self._unqueueing.add(key)
                self._background(self._unqueue(key), "unqueue")
            urgent = priority if urgent is None else max(urgent, priority)

    def _most_urgent_local(self) -> int | None:
        """The highest priority waiting at the head of any queue of a node-queue pool."""
        best: int | None = None
        for (_, pool, lane), _queue in self._queues.queues():
            if lane:
                continue
            nodes = self._pools[pool].nodes if pool in self._pools else ()
            if len(nodes) != 1 or nodes[0].name not in self._queue_nodes:
                continue
            head = self._queues.head((_, pool, lane))
            task = self._tasks.get(head) if head is not None else None
            if task is not None and (best is None or task.spec.priority > best):
                best = task.spec.priority
        return best

    async def _unqueue(self, key: AttemptKey) -> None:
        try:
            for executor in self._executors_of_key(key):
                await executor.unqueue(*key)
        finally:
            self._unqueueing.discard(key)

    def _launch(self, task: Task, number: int, node: str) -> Launch:
        env = dict(self._config.base_env or {})
        env.update({"TASKPLANE_TASK_ID": task.id, "TASKPLANE_ATTEMPT": str(number)})
        env.update(task.spec.env)
        return Launch(
            task_id=task.id,
            attempt=number,
            argv=task.spec.argv(),
            env=env,
            workdir=task.spec.workdir,
            resources=task.spec.resources,
            image=task.spec.image,
            node=node,
            simulated_duration=task.spec.simulated_duration,
            tenant=task.spec.tenant,
            host=task.spec.host,
            run_timeout=task.spec.timeouts.run,
        )
