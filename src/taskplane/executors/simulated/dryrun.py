r"""Policy dry runs: a workload replayed on simulated pools through the engine's own scheduling path.

    workload: Submission(at, tenant, pool, resources, priority, duration, run_timeout, selector)
        |                                         (virtual seconds; sorted by ``at``, ties kept in order)
        v
    DryRun.run, until nothing is queued, running or still to come:
        1. clock -> the next submit or end (with ``tick``: rounded up to a multiple of it)
        2. ends due      SimCluster.advance -> Ledger.release               (done, or stopped at its run timeout)
        3. submits due   Task(pending) -> QueueSet[(tenant, pool, "")]
        4. cycles until one moves nothing, each timed (snapshot + schedule + apply):
               Ledger.snapshot -> scheduler.schedule -> apply the Plan as the engine does:
                   parked     -> out of the queue (it can never run as configured)
                   preemption -> SimCluster.stop, Ledger.release, back to the end of its queue
                   placement  -> Ledger.check (stale: skipped), Ledger.charge, SimCluster.start
        5. integrate over time: allocation of each resource, each tenant's dominant share
        |
        v
    DryRunReport: per tenant placements, waits (mean, p50, p99), dominant share against its weighted fair
                  share; utilization while the queue is non-empty; preemptions; scheduler CPU and wall time

It holds what the engine holds for a live task: a domain ``Task`` per task (dropped when it ends) in the
``QueueSet``, and the ``Ledger``'s charges, so its memory figures stand for the engine's scheduling state.
Where it differs from the engine: no store, events or attempt records; a stop (preemption, run timeout) takes
effect at once, with no grace period; a placement runs at once (no ``starting`` phase, no node queue); no
reservations; no retries (the engine's default retry policy). Preempted tasks go back to their queue and start
over, as the engine requeues them.

Cost per step: one cycle is O(nodes + tenants) for the snapshot plus O(placements + blocked) in the scheduler;
ends and starts are O(log running). Stepping from event to event costs a cycle per distinct end time, so
a long workload on many nodes runs faster with a ``tick`` (the engine coalesces events into steps the same way).
"""

from __future__ import annotations

import math
import time
from array import array
from collections import deque
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from taskplane.domain.pool import Pool
from taskplane.domain.resources import Resources
from taskplane.domain.task import PendingReason, Task, TaskSpec, TaskState, Timeouts
from taskplane.domain.tenant import DEFAULT_TENANT, Tenant
from taskplane.executors.simulated.cluster import SimCluster, SimNode
from taskplane.scheduler import Candidate, Plan, Policy, schedule
from taskplane.services.ledger import Ledger
from taskplane.services.queue import QueueSet, ReadyQueue, candidate_of

__all__ = ["CycleResult", "DryRun", "DryRunReport", "ShareSample", "Submission", "TenantReport", "TraceEvent"]

DEFAULT_POLICY = Policy(max_placements=1000)
"""The server's policy (``bootstrap.build_platform`` with the default settings)."""

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_COMMAND = ("dry-run",)
_NO_TIMEOUTS = Timeouts()
_MAX_SAMPLES = 100  # share samples kept; past it, every other one is dropped and the interval doubles
_FIRST_SAMPLE_INTERVAL = 0.001


@dataclass(frozen=True, slots=True)
class Submission:
    """One task of a workload: submitted at ``at`` (virtual seconds), it runs for ``duration`` once placed.

    A ``run_timeout`` shorter than ``duration`` stops it at the timeout (reported as timed out); the scheduler
    also uses it for backfill, as the engine does. ``id`` defaults to a generated, zero-padded one.
    """

    at: float
    tenant: str = DEFAULT_TENANT
    pool: str = "default"
    resources: Resources = Resources()
    priority: int = 0
    duration: float = 0.0
    run_timeout: float | None = None
    selector: Mapping[str, str] = field(default_factory=dict)
    id: str | None = None


@dataclass(frozen=True, slots=True)
class CycleResult:
    """What one scheduling cycle did."""

    placed: int
    preempted: int
    parked: int
    skipped: int  # placements the ledger's re-check refused (stale)
    churned: int = 0  # placements of tasks preempted at this same instant: room their preemption freed, taken back


@dataclass(frozen=True, slots=True)
class TraceEvent:
    """One move of a traced dry run: ``placed``, ``preempted``, ``ended``, ``timed_out`` or ``parked``."""

    at: float
    kind: str
    task: str
    node: str | None = None


@dataclass(frozen=True, slots=True)
class TenantReport:
    """One tenant's outcome.

    ``wait_*`` are over placements: the time from entering the queue (submission, or requeue after a
    preemption) to being placed, in virtual seconds; p50/p99 by nearest rank. ``share_while_queued`` is the
    tenant's dominant share (its largest share of any resource of all pools together), averaged over the time the
    queue was non-empty; ``share_all_backlogged`` over the time every tenant that had submitted work had some
    queued (``None`` when that never happened). ``fair_share`` is its weight over the sum of the weights of the
    tenants that submitted work.
    """

    tenant: str
    weight: float
    submitted: int
    placements: int
    finished: int
    timed_out: int
    preempted: int
    pending: int  # still queued at the end (nothing left to free room for it, or a quota it may not borrow past)
    parked: int  # can never run as configured (larger than every node, unknown pool, over its whole quota)
    wait_mean: float | None
    wait_p50: float | None
    wait_p99: float | None
    share_while_queued: float
    share_all_backlogged: float | None
    fair_share: float


@dataclass(frozen=True, slots=True)
class ShareSample:
    """Every tenant's dominant share at one virtual time."""

    at: float
    shares: Mapping[str, float]


@dataclass(frozen=True, slots=True)
class DryRunReport:
    """The outcome of a dry run. Times are virtual seconds except the ``scheduler_*`` figures (real ones)."""

    started: float
    ended: float
    submitted: int
    placements: int
    finished: int
    timed_out: int
    preemptions: int
    pending: int
    parked: int
    skipped: int
    churned: int  # preempted tasks placed again at the same instant (the preemption bought nothing)
    queued_seconds: float  # virtual time during which the queue was non-empty
    all_backlogged_seconds: float
    utilization: Mapping[str, float]  # resource -> mean allocated share of the total while the queue was non-empty
    utilization_overall: Mapping[str, float]  # the same over the whole run
    bottleneck: str | None  # the resource with the highest utilization while queued
    tenants: tuple[TenantReport, ...]
    shares: tuple[ShareSample, ...]
    cycles: int
    scheduler_cpu_seconds: float  # process CPU time in snapshot + schedule + apply
    scheduler_wall_seconds: float
    scheduler_split: Mapping[str, float]  # wall seconds in each: snapshot, schedule, apply

    def as_dict(self) -> dict[str, Any]:
        """The report as plain JSON-ready values."""
        out: dict[str, Any] = {f.name: getattr(self, f.name) for f in fields(self)}
        out["utilization"] = dict(self.utilization)
        out["utilization_overall"] = dict(self.utilization_overall)
        out["scheduler_split"] = dict(self.scheduler_split)
        out["tenants"] = [{f.name: getattr(t, f.name) for f in fields(t)} for t in self.tenants]
        out["shares"] = [{"at": s.at, "shares": dict(s.shares)} for s in self.shares]
        out["placements_per_scheduler_second"] = (
            self.placements / self.scheduler_wall_seconds if self.scheduler_wall_seconds > 0 else None
        )
        return out


@dataclass(slots=True)
class _TenantStats:
    submitted: int = 0
    placements: int = 0
    finished: int = 0
    timed_out: int = 0
    preempted: int = 0
    queued: int = 0
    parked: int = 0
    waits: array[float] = field(default_factory=lambda: array("d"))
    share: float = 0.0  # dominant share now
    queued_mark: float = 0.0  # the run's queued clock when ``share`` was last integrated
    backlog_mark: float = 0.0
    share_queued: float = 0.0  # integral of the share over queued time
    share_backlogged: float = 0.0


def _percentile(ordered: Sequence[float], p: float) -> float:
    """Nearest rank: the smallest value with at least ``p`` percent of the values at or below it."""
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[rank - 1]


class DryRun:
    """A simulated cluster of ``pools`` with ``tenants``, scheduled by ``policy`` on a virtual clock.

    ``run`` replays a whole workload and returns the report. The step-by-step calls (``submit``, ``advance``,
    ``cycle``, ``settle``) are for harnesses that drive the clock themselves, such as the scheduler benchmark.
    Tenants not in ``tenants`` get no quota and weight 1, as in the engine. Not thread-safe.
    """

    def __init__(
        self,
        pools: Sequence[Pool],
        tenants: Iterable[Tenant] = (),
        policy: Policy = DEFAULT_POLICY,
        *,
        tick: float = 0.0,
        trace: bool = False,
    ) -> None:
        """``tick`` > 0: the clock moves in whole ticks (ends and submits wait for the next one); 0: event to event."""
        if not tick >= 0 or math.isinf(tick):
            raise ValueError(f"tick must be zero or a finite positive number of seconds, not {tick!r}")
        self._policy = policy
        self._tick = tick
        self._ledger = Ledger((pool, "simulated") for pool in pools)
        self._cluster = SimCluster(
            [SimNode(node.name, node.total, node.max_tasks, node.labels) for pool in pools for node in pool.nodes]
        )
        self._queues = QueueSet()
        self._tasks: dict[str, Task] = {}  # every task queued or running, as the engine holds them
        self._tenants: dict[str, Tenant] = {DEFAULT_TENANT: Tenant(DEFAULT_TENANT)}
        for tenant in tenants:
            self._tenants[tenant.name] = tenant
        self._stats: dict[str, _TenantStats] = {}
        self._parked: dict[str, PendingReason] = {}
        totals = [0, 0, 0]
        for pool in pools:
            for node in pool.nodes:
                totals[0] += node.total.millicpu
                totals[1] += node.total.memory
                totals[2] += node.total.gpu
        self._totals = tuple(totals)
        self._alloc = [0, 0, 0]  # cpu, memory, gpu allocated on the cluster now
        self._alloc_queued = [0.0, 0.0, 0.0]  # integrals over queued time
        self._alloc_all = [0.0, 0.0, 0.0]
        self._now = 0.0
        self._started: float | None = None
        self._dt_now = _EPOCH
        self._seq = 0
        self._queued = 0  # tasks in the queue set (not parked)
        self._backlogged = 0  # tenants with queued tasks
        self._active_tenants = 0  # tenants that submitted anything
        self._queued_clock = 0.0
        self._preempted_now: set[str] = set()  # victims of preemptions at the current instant
        self._backlog_clock = 0.0
        self._counts = {"placements": 0, "finished": 0, "timed_out": 0, "preemptions": 0, "skipped": 0, "churned": 0}
        self._cycles = 0
        self._cpu = 0.0
        self._split = [0.0, 0.0, 0.0]  # wall seconds in snapshot, schedule, apply
        self._samples: list[tuple[float, dict[str, float]]] = []
        self._sample_every = _FIRST_SAMPLE_INTERVAL
        self.trace: list[TraceEvent] | None = [] if trace else None

    # ------------------------------------------------------------------------------------------ reading

    @property
    def now(self) -> float:
        """The virtual clock, in seconds."""
        return self._now

    @property
    def queued(self) -> int:
        """Tasks waiting in the queue (not counting parked ones)."""
        return self._queued

    @property
    def placements(self) -> int:
        """Placements so far (a task placed again after a preemption counts again)."""
        return self._counts["placements"]

    @property
    def running(self) -> int:
        """Tasks running on the simulated nodes."""
        return len(self._cluster)

    @property
    def ledger(self) -> Ledger:
        """The ledger the cycles read (for inspection)."""
        return self._ledger

    @property
    def cluster(self) -> SimCluster:
        """The simulated nodes (for inspection)."""
        return self._cluster

    def queued_of(self, tenant: str) -> int:
        """A tenant's tasks waiting in the queue."""
        stats = self._stats.get(tenant)
        return 0 if stats is None else stats.queued

    def next_end(self) -> float | None:
        """When the next running task ends by itself, or ``None``."""
        return self._cluster.next_end()

    # ----------------------------------------------------------------------------------------- workload

    def run(
        self,
        workload: Iterable[Submission],
        *,
        until: float | None = None,
        sample_interval: float | None = None,
    ) -> DryRunReport:
        """Replay ``workload`` (any order: it is sorted by ``at``) from the current clock until nothing can move.

        ``until`` stops the clock there instead (what still runs or waits is reported as such).
        ``sample_interval`` sets the spacing of the dominant-share samples (default: adaptive, at most 100
        samples over the run).
        """
        if sample_interval is not None:
            if not sample_interval > 0:
                raise ValueError("sample_interval must be greater than zero")
            self._sample_every = sample_interval
        pending = deque(sorted(workload, key=lambda s: s.at))
        while True:
            while pending and pending[0].at <= self._now:
                self.submit(pending.popleft())
            if self._queued:
                self.settle()
            upcoming = [t for t in (pending[0].at if pending else None, self._cluster.next_end()) if t is not None]
            if not upcoming or (until is not None and min(upcoming) > until):
                if until is not None and until > self._now:
                    self.advance(until)
                break
            self.advance(min(upcoming))
        return self.report()

    def submit(self, sub: Submission) -> str:
        """Queue one task now (at ``sub.at`` if that is earlier: its wait counts from then). Returns its id."""
        at = float(min(sub.at, self._now))
        if self._started is None:
            self._started = at
        self._seq += 1
        task_id = sub.id if sub.id is not None else f"sim-{self._seq:022d}"
        if task_id in self._tasks or task_id in self._parked:
            raise ValueError(f"task id {task_id!r} is used twice")
        if sub.tenant not in self._tenants:
            self._tenants[sub.tenant] = Tenant(sub.tenant)
        created = self._dt_now if at == self._now else _EPOCH + timedelta(seconds=at)
        spec = TaskSpec(
            command=_COMMAND,
            resources=sub.resources,
            priority=sub.priority,
            tenant=sub.tenant,
            pool=sub.pool,
            timeouts=_NO_TIMEOUTS if sub.run_timeout is None else Timeouts(run=sub.run_timeout),
            node_selector=dict(sub.selector) if sub.selector else {},
            simulated_duration=sub.duration,
        )
        task = Task(task_id, spec, TaskState.PENDING, created, created, seq=self._seq)
        self._tasks[task_id] = task
        stats = self._tenant_stats(sub.tenant)
        if stats.submitted == 0:
            self._active_tenants += 1
        stats.submitted += 1
        self._enqueue(task, stats)
        return task_id

    def advance(self, until: float) -> int:
        """Move the clock to ``until`` (rounded up to the tick) and end what ends by then. Returns how many ended."""
        until = float(until)
        if until < self._now:
            raise ValueError(f"the clock does not go back: {until} < {self._now}")
        if self._tick:
            until = math.ceil(until / self._tick - 1e-9) * self._tick
            until = max(until, self._now)
        queued = self._queued > 0
        self._integrate(until)
        if until > self._now:
            self._preempted_now.clear()
        self._now = until
        self._dt_now = _EPOCH + timedelta(seconds=until)
        ended = self._cluster.advance(until)
        for end in ended:
            task = self._tasks.pop(end.key)
            self._ledger.release(end.key)
            self._unallocate(task.spec.resources)
            if end.ended_at < until:  # ended between ticks: utilization counts what ran, not what the ledger held
                self._uncount(task.spec.resources, until - end.ended_at, queued)
            stats = self._stats[task.spec.tenant]
            self._update_share(task.spec.tenant, stats)
            timeout = task.spec.timeouts.run
            timed_out = timeout is not None and (task.spec.simulated_duration or 0.0) > timeout
            if timed_out:
                stats.timed_out += 1
                self._counts["timed_out"] += 1
            else:
                stats.finished += 1
                self._counts["finished"] += 1
            if self.trace is not None:
                self.trace.append(TraceEvent(end.ended_at, "timed_out" if timed_out else "ended", end.key, end.node))
        return len(ended)

    def settle(self) -> int:
        """Run cycles at the current time while one may leave work for the next. Returns the placements.

        Another cycle follows one that hit ``policy.max_placements`` (more may fit) or preempted (the room it
        freed is placed next), as the engine's next step would follow. Placing a task preempted at this same
        instant is not progress: a victim that takes back the room its own preemption freed would otherwise
        preempt and re-place forever without the clock moving (counted in ``DryRunReport.churned``).
        """
        placed = 0
        idle = 0
        while self._queued:
            result = self.cycle()
            placed += result.placed
            if not result.preempted:
                if result.placed < self._policy.max_placements:
                    break
                idle = 0
            elif result.placed > result.churned:
                idle = 0
            else:
                idle += 1
                if idle > 2:
                    break
        return placed

    def cycle(self) -> CycleResult:
        """One scheduling cycle at the current time, as the engine's ``_place``: snapshot, schedule, apply."""
        cpu = time.process_time()
        t0 = time.perf_counter()
        queues = self._queues.queues()
        snapshot = self._ledger.snapshot(self._tenants)
        t1 = time.perf_counter()
        plan = schedule(snapshot, [self._lane(queue) for _, queue in queues], self._policy, self._now)
        t2 = time.perf_counter()
        skipped = self._counts["skipped"]
        launches, victims = self._apply(plan)
        self._queues.compact()
        t3 = time.perf_counter()
        self._cpu += time.process_time() - cpu
        split = self._split
        split[0] += t1 - t0
        split[1] += t2 - t1
        split[2] += t3 - t2
        self._cycles += 1
        # What the executor and the engine's exit handling do after the cycle: not scheduler time.
        preempted = self._stop(victims)
        placed, churned = self._launch(launches)
        return CycleResult(placed, preempted, len(plan.parked), self._counts["skipped"] - skipped, churned)

    # ------------------------------------------------------------------------------------------- report

    def report(self) -> DryRunReport:
        """What happened so far."""
        self._integrate(self._now)
        for name, stats in self._stats.items():
            self._update_share(name, stats)
        queued_time, backlog_time = self._queued_clock, self._backlog_clock
        started = self._started if self._started is not None else self._now
        span = self._now - started
        names = ("cpu", "memory", "gpu")
        utilization: dict[str, float] = {}
        overall: dict[str, float] = {}
        for i, name in enumerate(names):
            if self._totals[i]:
                utilization[name] = self._alloc_queued[i] / (self._totals[i] * queued_time) if queued_time else 0.0
                overall[name] = self._alloc_all[i] / (self._totals[i] * span) if span else 0.0
        bottleneck = max(utilization, key=lambda k: utilization[k]) if utilization and queued_time else None
        weights = sum(self._tenants[name].weight for name, s in self._stats.items() if s.submitted)
        tenants = []
        for name in sorted(self._stats):
            stats = self._stats[name]
            waits = sorted(stats.waits)
            weight = self._tenants[name].weight
            tenants.append(
                TenantReport(
                    tenant=name,
                    weight=weight,
                    submitted=stats.submitted,
                    placements=stats.placements,
                    finished=stats.finished,
                    timed_out=stats.timed_out,
                    preempted=stats.preempted,
                    pending=stats.queued,
                    parked=stats.parked,
                    wait_mean=math.fsum(waits) / len(waits) if waits else None,
                    wait_p50=_percentile(waits, 50) if waits else None,
                    wait_p99=_percentile(waits, 99) if waits else None,
                    share_while_queued=stats.share_queued / queued_time if queued_time else 0.0,
                    share_all_backlogged=stats.share_backlogged / backlog_time if backlog_time else None,
                    fair_share=weight / weights if stats.submitted and weights else 0.0,
                )
            )
        counts = self._counts
        return DryRunReport(
            started=started,
            ended=self._now,
            submitted=sum(s.submitted for s in self._stats.values()),
            placements=counts["placements"],
            finished=counts["finished"],
            timed_out=counts["timed_out"],
            preemptions=counts["preemptions"],
            pending=self._queued,
            parked=len(self._parked),
            skipped=counts["skipped"],
            churned=counts["churned"],
            queued_seconds=queued_time,
            all_backlogged_seconds=backlog_time,
            utilization=utilization,
            utilization_overall=overall,
            bottleneck=bottleneck,
            tenants=tuple(tenants),
            shares=tuple(ShareSample(at, shares) for at, shares in self._samples),
            cycles=self._cycles,
            scheduler_cpu_seconds=self._cpu,
            scheduler_wall_seconds=sum(self._split),
            scheduler_split=dict(zip(("snapshot", "schedule", "apply"), self._split, strict=True)),
        )

    # ---------------------------------------------------------------------------------------- internals

    def _tenant_stats(self, tenant: str) -> _TenantStats:
        stats = self._stats.get(tenant)
        if stats is None:
            stats = self._stats[tenant] = _TenantStats(queued_mark=self._queued_clock, backlog_mark=self._backlog_clock)
        return stats

    def _enqueue(self, task: Task, stats: _TenantStats) -> None:
        spec = task.spec
        self._queues.push(task.id, (spec.tenant, spec.pool, ""), spec.priority)
        self._queued += 1
        stats.queued += 1
        if stats.queued == 1:
            self._backlogged += 1

    def _dequeue(self, task_id: str, stats: _TenantStats) -> None:
        self._queues.discard(task_id)
        self._queued -= 1
        stats.queued -= 1
        if stats.queued == 0:
            self._backlogged -= 1

    def _lane(self, queue: ReadyQueue) -> Iterator[Candidate]:
        """A queue's members as scheduler candidates, made only as the cycle reaches them (``Engine._lane``)."""
        tasks = self._tasks
        for item_id in queue:
            yield candidate_of(tasks[item_id])

    def _apply(self, plan: Plan) -> tuple[list[tuple[Task, str]], list[tuple[Task, str]]]:
        """Apply a plan as ``Engine._apply_plan`` does: the launches to start and the victims to stop."""
        now = self._now
        dt_now = self._dt_now
        tasks, ledger, trace = self._tasks, self._ledger, self.trace
        for item_id, reason in plan.parked.items():
            task = tasks.pop(item_id, None)
            if task is None:
                continue
            stats = self._stats[task.spec.tenant]
            self._dequeue(item_id, stats)
            stats.parked += 1
            self._parked[item_id] = reason
            if trace is not None:
                trace.append(TraceEvent(now, "parked", item_id))
        victims: list[tuple[Task, str]] = []
        stopping: set[str] = set()
        for pre in plan.preemptions:
            victim = tasks.get(pre.victim)
            if victim is None or victim.state is not TaskState.RUNNING or victim.id in stopping:
                continue
            stopping.add(victim.id)
            ledger.terminating(victim.id)
            victims.append((victim, pre.node))
        launches: list[tuple[Task, str]] = []
        tenants, queues = self._tenants, self._queues
        skipped = 0
        for placement in plan.placements:
            task = tasks.get(placement.id)
            if task is None or task.state is not TaskState.PENDING or placement.id not in queues:
                continue
            spec = task.spec
            if ledger.check(task, placement.node, tenants.get(spec.tenant), placement.reservation) is not None:
                skipped += 1
                continue
            self._dequeue(task.id, self._stats[spec.tenant])
            running = replace(
                task,
                state=TaskState.RUNNING,
                attempts=task.attempts + 1,
                updated_at=dt_now,
                started_at=task.started_at or dt_now,
            )
            tasks[task.id] = running
            ledger.charge(running, placement.node, started_at=now)
            launches.append((task, placement.node))  # the pending task: its updated_at is when it was queued
        self._counts["skipped"] += skipped
        return launches, victims

    def _stop(self, victims: list[tuple[Task, str]]) -> int:
        """The preempted tasks stop at once and go back to the end of their queues, as the engine requeues them."""
        now, dt_now, trace = self._now, self._dt_now, self.trace
        for victim, node in victims:
            if self._cluster.stop(victim.id, now) is not None:
                self._unallocate(victim.spec.resources)
            self._ledger.release(victim.id)
            pending = replace(victim, state=TaskState.PENDING, updated_at=dt_now)
            self._tasks[victim.id] = pending
            stats = self._stats[victim.spec.tenant]
            stats.preempted += 1
            self._preempted_now.add(victim.id)
            self._update_share(victim.spec.tenant, stats)
            self._enqueue(pending, stats)
            if trace is not None:
                trace.append(TraceEvent(now, "preempted", victim.id, node))
        self._counts["preemptions"] += len(victims)
        return len(victims)

    def _launch(self, launches: list[tuple[Task, str]]) -> tuple[int, int]:
        """Start the placed tasks on the simulated nodes; returns (placed, churned)."""
        now, dt_now, trace = self._now, self._dt_now, self.trace
        churned = 0
        for task, node in launches:
            spec = task.spec
            duration = spec.simulated_duration or 0.0
            timeout = spec.timeouts.run
            self._cluster.start(task.id, node, spec.resources, min(duration, timeout or math.inf), now)
            self._allocate(spec.resources)
            stats = self._stats[spec.tenant]
            stats.placements += 1
            stats.waits.append((dt_now - task.updated_at).total_seconds())
            self._update_share(spec.tenant, stats)
            if task.id in self._preempted_now:
                churned += 1
            if trace is not None:
                trace.append(TraceEvent(now, "placed", task.id, node))
        self._counts["placements"] += len(launches)
        self._counts["churned"] += churned
        return len(launches), churned

    def _allocate(self, res: Resources) -> None:
        alloc = self._alloc
        alloc[0] += res.millicpu
        alloc[1] += res.memory
        alloc[2] += res.gpu

    def _unallocate(self, res: Resources) -> None:
        alloc = self._alloc
        alloc[0] -= res.millicpu
        alloc[1] -= res.memory
        alloc[2] -= res.gpu

    def _uncount(self, res: Resources, seconds: float, queued: bool) -> None:
        amounts = (res.millicpu, res.memory, res.gpu)
        for i in range(3):
            self._alloc_all[i] -= amounts[i] * seconds
            if queued:
                self._alloc_queued[i] -= amounts[i] * seconds

    def _dominant_share(self, tenant: str) -> float:
        usage = self._ledger.usage(tenant)
        cpu, memory, gpu = self._totals
        share = usage.millicpu / cpu if cpu else 0.0
        if memory:
            share = max(share, usage.memory / memory)
        if gpu:
            share = max(share, usage.gpu / gpu)
        return share

    def _update_share(self, tenant: str, stats: _TenantStats) -> None:
        """Integrate the tenant's share up to now, then take its new value (call after its usage changed)."""
        stats.share_queued += stats.share * (self._queued_clock - stats.queued_mark)
        stats.share_backlogged += stats.share * (self._backlog_clock - stats.backlog_mark)
        stats.queued_mark = self._queued_clock
        stats.backlog_mark = self._backlog_clock
        stats.share = self._dominant_share(tenant)

    def _integrate(self, until: float) -> None:
        """Account for the time from now to ``until``, over which nothing changes."""
        self._sample(until)
        dt = until - self._now
        if dt <= 0:
            return
        alloc = self._alloc
        for i in range(3):
            self._alloc_all[i] += alloc[i] * dt
        if self._queued:
            self._queued_clock += dt
            for i in range(3):
                self._alloc_queued[i] += alloc[i] * dt
            if self._backlogged == self._active_tenants:
                self._backlog_clock += dt

    def _sample(self, until: float) -> None:
        """Record the shares at each sample time before ``until`` (the state holds from now until then)."""
        if self._started is None:
            return
        samples = self._samples
        while not samples or self._started + len(samples) * self._sample_every < until:
            at = self._started + len(samples) * self._sample_every  # not summed step by step: no drift
            samples.append((at, {name: stats.share for name, stats in self._stats.items()}))
            if len(samples) > _MAX_SAMPLES:
                samples[:] = samples[::2]
                self._sample_every *= 2
