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
from collections.abc import Coroutine, Iterator, Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from taskplane.domain.lifecycle import check_transition
from taskplane.domain.outcome import AttemptOutcome, StopReason, classify, describe, next_step
from taskplane.domain.resources import ZERO, Resources
from taskplane.domain.task import (
    Attempt,
    AttemptState,
    FailureClass,
    PendingReason,
    Task,
    TaskState,
)
from taskplane.errors import (
    ConflictError,
    InternalError,
    InvalidTransitionError,
    NotFoundError,
    TaskplaneError,
    UnavailableError,
)
from taskplane.scheduler import Candidate, NodeSnapshot, schedule
from taskplane.services.ports import (
    ChangeSet,
    Clock,
    Executor,
    ExecutorEvent,
    Exited,
    Launch,
    NodeCapacity,
    Started,
    TaskEvent,
    TaskStore,
)
from taskplane.services.queue import ReadyQueue, TimerHeap

log = logging.getLogger("taskplane.engine")

AttemptKey = tuple[str, int]


@dataclass(frozen=True, slots=True)
class EngineConfig:
    """The engine's knobs."""

    kill_grace: float = 10.0
    max_placements_per_step: int = 1000
    node_queue: int = 4  # launches handed to a node beyond its free capacity, started there as slots free up
    base_env: Mapping[str, str] | None = None  # variables every task gets (PATH, LANG, ...)
    db_retry_max: float = 5.0


@dataclass(frozen=True, slots=True)
class LiveView:
    """What the engine knows of a task beyond its stored row."""

    reason: PendingReason | None
    queue_position: int | None


class _Batch:
    """Everything decided since the last commit: the rows to write and what to do once they are durable."""

    def __init__(self) -> None:
        self.tasks: dict[str, Task] = {}
        self.new_attempts: dict[AttemptKey, Attempt] = {}
        self.attempts: dict[AttemptKey, Attempt] = {}
        self.events: list[TaskEvent] = []
        self.acks: list[AttemptKey] = []
        self.stops: list[AttemptKey] = []
        self.replies: list[tuple[asyncio.Future[Task], Task | TaskplaneError]] = []
        self.finished: list[str] = []

    def __bool__(self) -> bool:
        return bool(self.tasks or self.new_attempts or self.attempts or self.events or self.acks or self.stops)

    def has_work(self) -> bool:
        """Anything to commit or to do after a commit."""
        return bool(self) or bool(self.replies or self.finished)

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
        )


def _epoch(dt: datetime) -> float:
    return dt.timestamp()


class Engine:
    """Owns live tasks: places, starts, watches, retries, times out and cancels them. See the module docstring."""

    def __init__(
        self,
        store: TaskStore,
        executor: Executor,
        clock: Clock,
        config: EngineConfig,
        rng: random.Random | None = None,
    ) -> None:
        self._store = store
        self._executor = executor
        self._clock = clock
        self._config = config
        self._rng = rng or random.Random()
        self._tasks: dict[str, Task] = {}  # every non-terminal task
        self._state_counts: Counter[TaskState] = Counter()
        self._attempts: dict[AttemptKey, Attempt] = {}  # every non-terminal attempt
        self._ready = ReadyQueue()
        self._parked: dict[str, PendingReason] = {}  # pending tasks that can never fit
        self._timers = TimerHeap()
        self._stop_reasons: dict[AttemptKey, StopReason] = {}
        self._allocated: Resources = ZERO  # what started attempts hold
        self._live_count = 0
        # Launches handed to the node's queue beyond free capacity. Their tasks stay pending (nothing is written)
        # until the node starts them; attempt numbers are reserved so a number is never sent twice.
        self._handoff: dict[AttemptKey, Resources] = {}
        self._handed: dict[str, int] = {}  # task id -> attempt number in the handoff
        self._reserved: dict[str, int] = {}  # task id -> highest attempt number ever sent
        self._unqueueing: set[AttemptKey] = set()
        self._finishing: set[str] = set()  # ended in memory, end not committed yet
        self._blocked: tuple[str, PendingReason] | None = None
        self._node: NodeCapacity | None = None
        # inbox
        self._new: list[Task] = []
        self._events: list[ExecutorEvent] = []
        self._cancels: list[tuple[str, asyncio.Future[Task]]] = []
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

    # ------------------------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Recover from the database and the executor, then run the loop."""
        tasks, attempts = await self._store.load_unfinished()
        epoch = await self._store.next_epoch()
        recovered = await self._executor.open(epoch, self._on_events)
        self._node = self._executor.capacity()
        now = self._clock.now()
        for att in attempts:
            self._attempts[(att.task_id, att.number)] = att
        for task in tasks:
            self._hold(task)
        for task in tasks:
            self._recover_task(task, now)
        seen: set[AttemptKey] = {(ev.task_id, ev.attempt) for ev in recovered.running}
        seen.update((ev.task_id, ev.attempt) for ev in recovered.exited)
        seen.update(recovered.queued)
        for task_id, number in seen:
            self._reserved[task_id] = max(number, self._reserved.get(task_id, 0))
        for key in recovered.queued:
            owner = self._tasks.get(key[0])
            if owner is not None and owner.state is TaskState.PENDING and key[1] > owner.attempts:
                self._hand_off(owner, key[1])
            elif owner is not None and owner.state.live and key[1] == owner.attempts:
                pass  # placed and recorded; the node starts it when it fits
            else:
                self._batch.stops.append(key)  # nobody wants it any more
        self._events.extend(recovered.running)
        self._events.extend(recovered.exited)
        # An attempt the database thinks is live but the executor does not know was lost.
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
            "engine recovered: %d unfinished tasks, %d live attempts, %d running and %d exited reported by %s",
            len(tasks),
            len(attempts),
            len(recovered.running),
            len(recovered.exited),
            self._executor.name,
        )
        self._committer_task = asyncio.create_task(self._committer(), name="taskplane-committer")
        self._loop_task = asyncio.create_task(self._run(), name="taskplane-engine")
        self._wake.set()

    def _recover_task(self, task: Task, now: datetime) -> None:
        key = (task.id, task.attempts)
        if task.state is TaskState.ADMITTED and key not in self._attempts:
            task = self._move(task, TaskState.PENDING, now, type_="requeued")  # admitted without an attempt
        if task.state is TaskState.PENDING:
            self._enqueue(task)
            return
        self._allocate(task.spec.resources)
        if task.state is TaskState.CANCELLING:
            self._stop_reasons[key] = StopReason.CANCEL
            self._batch.stops.append(key)
        att = self._attempts.get(key)
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
        await self._executor.close()

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

    async def cancel(self, task_id: str) -> Task | None:
        """Ask to cancel a live task; returns its new state once committed, ``None`` if the engine does not hold it."""
        if task_id not in self._tasks:
            return None
        fut: asyncio.Future[Task] = asyncio.get_running_loop().create_future()
        self._cancels.append((task_id, fut))
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
        """The engine's live view of a task: its pending reason and (if asked, O(queue)) queue position."""
        task = self._tasks.get(task_id)
        if task is None:
            return None
        number = self._handed.get(task_id)
        if task.state is TaskState.PENDING and number is not None:
            key = (task_id, number)
            at = next((i for i, k in enumerate(self._handoff) if k == key), None) if position else None
            node = self._node.node if self._node is not None else self._executor.name
            reason = PendingReason("node_queue", f"next in line on {node}: starts there as soon as a slot frees up")
            return LiveView(reason, at)
        if task.state is not TaskState.PENDING:
            return LiveView(None, None)
        if task_id in self._parked:
            return LiveView(self._parked[task_id], None)
        if task.not_before is not None and task.not_before > self._clock.now():
            return LiveView(task.pending_reason, None)
        queued = task_id in self._ready
        index = self._ready.position(task_id) if position and queued else None
        where = None if index is None else len(self._handoff) + index  # the node's queue goes first
        if self._blocked is None or not queued:
            return LiveView(PendingReason("queued", "waiting for the next scheduling cycle"), where)
        head, head_reason = self._blocked
        if head == task_id:
            return LiveView(head_reason, where)
        return LiveView(
            PendingReason("queued", f"queued behind {head} ({head_reason.message})", resource=head_reason.resource),
            where,
        )

    def capacity(self) -> tuple[NodeCapacity, Resources, int]:
        """This node's capacity, what is allocated on it, and how many tasks are live."""
        return self._node or self._executor.capacity(), self._allocated, self._live_count

    def counts(self) -> dict[str, int]:
        """Live tasks by state (for metrics and capacity)."""
        return {state.value: n for state, n in self._state_counts.items() if n}

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
                else:
                    self._on_exited(ev, now)
            except Exception:
                log.exception("engine: handling %s failed", ev)

        cancels, self._cancels = self._cancels, []
        for task_id, fut in cancels:
            try:
                batch.replies.append((fut, self._on_cancel(task_id, now)))
            except TaskplaneError as exc:
                batch.replies.append((fut, exc))
            except Exception:
                log.exception("engine: cancelling %s failed", task_id)
                batch.replies.append((fut, InternalError(f"cancelling task {task_id} failed; see the server log")))

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

    async def _start(self, launches: list[Launch]) -> None:
        """Hand launches to the executor, retrying until it takes them (it ignores attempts it already has)."""
        delay = 0.1
        while not self._closing:
            try:
                await self._executor.start(launches)
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
        if not (changes.tasks or changes.new_attempts or changes.attempts or changes.events):
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
                    await self._executor.stop(key[0], key[1], self._config.kill_grace)
                except Exception as exc:  # idempotent: try again with the next batch
                    log.warning("could not stop %s.%d (%s); will retry", key[0], key[1], exc)
                    retry_stops.append(key)
            if batch.acks:
                try:
                    await self._executor.ack(batch.acks)
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
        if task.state.terminal:
            self._tasks.pop(task.id, None)
            self._finishing.add(task.id)  # until its end is committed: waiters keep waiting
        else:
            self._tasks[task.id] = task
            self._state_counts[task.state] += 1

    def _record_attempt(self, att: Attempt, *, new: bool = False) -> None:
        key = (att.task_id, att.number)
        if att.state.terminal:
            self._attempts.pop(key, None)
        else:
            self._attempts[key] = att
        self._batch.put_attempt(att, new=new)

    def _enqueue(self, task: Task) -> None:
        now = self._clock.now()
        if task.not_before is not None and task.not_before > now:
            self._timers.add(_epoch(task.not_before), "backoff", task.id)
        elif task.pending_reason is not None and task.pending_reason.code == "never_fits":
            self._parked[task.id] = task.pending_reason
        else:
            self._ready.push(task.id, task.spec.priority)
        if task.attempts == 0 and task.spec.timeouts.queue is not None:
            self._timers.add(_epoch(task.created_at) + task.spec.timeouts.queue, "queue_timeout", task.id)
        if task.spec.timeouts.deadline is not None:
            self._timers.add(_epoch(task.spec.timeouts.deadline), "deadline", task.id)

    def _allocate(self, res: Resources) -> None:
        self._allocated = self._allocated + res
        self._live_count += 1

    def _release(self, res: Resources) -> None:
        self._allocated = self._allocated - res
        self._live_count -= 1

    def _next_number(self, task: Task) -> int:
        number = max(task.attempts, self._reserved.get(task.id, 0)) + 1
        self._reserved[task.id] = number
        return number

    def _hand_off(self, task: Task, number: int) -> None:
        """Put a pending task in the node's queue (in memory only: the task stays pending until it starts)."""
        self._ready.discard(task.id)
        self._handoff[(task.id, number)] = task.spec.resources
        self._handed[task.id] = number

    def _take_back(self, key: AttemptKey) -> bool:
        """Forget a handed-off launch; True if it was one."""
        if self._handoff.pop(key, None) is None:
            return False
        if self._handed.get(key[0]) == key[1]:
            del self._handed[key[0]]
        return True

    def _begin_attempt(self, task: Task, number: int, node: str, now: datetime, **data: Any) -> Task:
        """Move a pending task to admitted -> starting with attempt ``number`` on ``node``, allocating for it."""
        self._ready.discard(task.id)
        self._parked.pop(task.id, None)
        task = self._move(
            task, TaskState.ADMITTED, now, attempts=number, pending_reason=None, not_before=None, data={"node": node}
        )
        task = self._move(task, TaskState.STARTING, now, data={"node": node, **data})
        self._allocate(task.spec.resources)
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
        node = self._node_name()
        log.info("adopting attempt %s.%d that started before its record was committed", task_id, attempt)
        return self._begin_attempt(task, attempt, node, at, adopted=True)

    def _node_name(self) -> str:
        return self._node.node if self._node is not None else self._executor.name

    def _on_started(self, ev: Started) -> None:
        key = (ev.task_id, ev.attempt)
        task = self._tasks.get(ev.task_id)
        if key not in self._attempts and key not in self._handoff and self._adopt(ev.task_id, ev.attempt, ev.at):
            task = self._tasks.get(ev.task_id)
        if self._take_back(key) and task is not None and task.state is TaskState.PENDING:
            # The node started it from its queue: only now does the task leave pending.
            task = self._begin_attempt(task, ev.attempt, self._node_name(), ev.at, from_node_queue=True)
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
                return  # cancelled or timed out while it waited in the node's queue
            if ev.never_started:
                self._enqueue(owner)  # taken back (or lost by a restarted node): queue it here again
                return
            self._begin_attempt(owner, ev.attempt, self._node_name(), ev.started_at or ev.at, from_node_queue=True)
        if key not in self._attempts and not ev.never_started:  # no process ran: nothing to adopt
            self._adopt(ev.task_id, ev.attempt, ev.started_at or ev.at)
        att = self._attempts.get(key)
        task = self._tasks.get(ev.task_id)
        if att is None or task is None or task.attempts != ev.attempt:
            return  # already recorded (a replay after reconnect) or an orphan we stopped
        stop_reason = self._stop_reasons.pop(key, None)
        outcome = ev.outcome if ev.outcome.stop_reason is not None else replace(ev.outcome, stop_reason=stop_reason)
        self._release(task.spec.resources)
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
            self._ready.discard(task_id)
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
        return self._move(task, TaskState.CANCELLING, now, cancel_requested=True)

    def _on_timer(self, kind: str, task_id: str, attempt: int, now: datetime) -> None:
        task = self._tasks.get(task_id)
        if task is None:
            return
        if kind == "backoff":
            if task.state is TaskState.PENDING and task.not_before is not None and task.not_before <= now:
                self._ready.push(task_id, task.spec.priority)
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
                self._batch.events.append(
                    TaskEvent(task_id, now, f"{kind}_reached", task.state, task.state, task.attempts, {})
                )
            return
        else:
            return
        self._ready.discard(task_id)
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
        node = self._node or self._executor.capacity()
        if not len(self._ready):
            self._blocked = None
            return
        handed = ZERO
        for res in self._handoff.values():
            handed = handed + res
        used, count = self._allocated + handed, self._live_count + len(self._handoff)
        snapshot = [NodeSnapshot(node.node, node.total, used, count, node.max_tasks)]
        plan = schedule(snapshot, self._candidates())
        self._blocked = plan.blocked
        for task_id, reason in plan.never_fits:
            self._ready.discard(task_id)
            self._parked[task_id] = reason
            self._record(replace(self._tasks[task_id], pending_reason=reason, updated_at=now))
        for placement in plan.placements:
            task = self._tasks[placement.task_id]
            number = self._next_number(task)
            task = self._begin_attempt(task, number, placement.node, now)
            launches.append(self._launch(task, number))
        # Hand the node a few more, in queue order: it starts each the moment a slot frees, with no round trip.
        room = self._config.node_queue - len(self._handoff)
        if plan.blocked is not None and room > 0:
            ahead: list[str] = []
            for task_id in self._ready:
                if len(ahead) >= room:
                    break
                ahead.append(task_id)
            for task_id in ahead:
                task = self._tasks[task_id]
                number = self._next_number(task)
                self._hand_off(task, number)
                launches.append(self._launch(task, number))
        self._recall_for_priority()
        self._ready.compact()

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
        urgent = self._tasks[next(iter(self._ready))].spec.priority if len(self._ready) else None
        for key in reversed(self._handoff):
            owner = self._tasks.get(key[0])
            if owner is None:
                continue  # cancelled or timed out; its stop is on the way
            priority = owner.spec.priority
            if urgent is not None and priority < urgent and key not in self._unqueueing:
                self._unqueueing.add(key)
                self._background(self._unqueue(key), "unqueue")
            urgent = priority if urgent is None else max(urgent, priority)

    async def _unqueue(self, key: AttemptKey) -> None:
        try:
            await self._executor.unqueue(*key)
        finally:
            self._unqueueing.discard(key)

    def _candidates(self) -> Iterator[Candidate]:
        limit = self._config.max_placements_per_step
        tasks = self._tasks
        for count, task_id in enumerate(self._ready):
            if count >= limit:
                return
            yield Candidate(task_id, tasks[task_id].spec.resources)

    def _launch(self, task: Task, number: int) -> Launch:
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
        )
