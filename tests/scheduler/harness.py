"""A scheduler harness after Nomad's ``scheduler/tests/testing.go``: seed state with builders, run a cycle,
read the plan, apply it, and run many cycles with completions to check properties that span cycles.

    h = Harness(cluster().pool("p", nodes=2, cpu="8", memory="32Gi"), tenant("a").quota(cpu="4"), tenant("b"))
    h.running(task("b").cpu("8").priority(0), on="p-0")
    h.submit(task("a").cpu("2").priority(5))
    plan = h.step()          # schedule(snapshot, queues, policy, now), then apply the plan to the state

The harness state is a small model of the engine's ledger: running tasks hold room on their node and count
against their tenant's quota, except inside a reservation where they use the reservation's slot; active
reservations hold their slots on their nodes and count against their tenant's quota as a whole. Applying a plan
starts placements, marks preemption victims as terminating (they hold their room until they stop), turns
admitted reservations active and drops parked tasks from the queues. Every ``step`` checks the plan with
``tests.scheduler.invariants`` unless the harness is built with ``check=False``.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import Self

from taskplane.domain.pool import PlacementStrategy
from taskplane.domain.quantities import parse_bytes, parse_millicpu
from taskplane.domain.resources import Resources, extended_of
from taskplane.domain.tenant import Quota
from taskplane.scheduler import (
    Candidate,
    NodeView,
    Plan,
    Policy,
    PoolView,
    ReservationView,
    RunningView,
    SlotView,
    Snapshot,
    TenantView,
    schedule,
)
from tests.scheduler.invariants import assert_step_sound

GI = 1 << 30
GANG_LANE = "#reservations"
QueueKey = tuple[str, str, str]


def cpu(amount: str | float) -> int:
    """Millicores from a quantity: ``"8"``, ``"500m"``, ``1.5``."""
    return parse_millicpu(amount)


def memory(amount: str | int) -> int:
    """Bytes from a quantity: ``"32Gi"``, ``"256Mi"``."""
    return parse_bytes(amount)


def resources(
    cpu_: str | float = 0, memory_: str | int = 0, gpu: int = 0, extended: dict[str, int] | None = None
) -> Resources:
    return Resources(cpu(cpu_), memory(memory_), gpu, extended_of(extended or {}))


# ---------------------------------------------------------------------------------------------- cluster


@dataclass(frozen=True, slots=True)
class NodeSpec:
    name: str
    pool: str
    total: Resources
    max_tasks: int
    labels: dict[str, str]


class ClusterBuilder:
    """Pools of nodes: ``cluster().pool("p", nodes=3, cpu="8", memory="32Gi", labels={"zone": "a"})``."""

    def __init__(self) -> None:
        self.pools: dict[str, PoolView] = {}
        self.nodes: list[NodeSpec] = []

    def pool(
        self,
        name: str,
        nodes: int = 1,
        cpu: str | float = "4",
        memory: str | int = "16Gi",
        gpu: int = 0,
        extended: dict[str, int] | None = None,
        labels: dict[str, str] | None = None,
        max_tasks: int = 110,
        placement: PlacementStrategy | str = PlacementStrategy.BINPACK,
    ) -> Self:
        """Add ``nodes`` nodes named ``<pool>-<i>`` (numbering goes on when a pool is named again)."""
        strategy = PlacementStrategy(placement)
        if name not in self.pools:
            self.pools[name] = PoolView(name, strategy)
        first = sum(1 for n in self.nodes if n.pool == name)
        size = resources(cpu, memory, gpu, extended)
        for i in range(first, first + nodes):
            self.nodes.append(NodeSpec(f"{name}-{i}", name, size, max_tasks, dict(labels or {})))
        return self

    def empty_pool(self, name: str) -> Self:
        self.pools[name] = PoolView(name)
        return self


def cluster() -> ClusterBuilder:
    return ClusterBuilder()


# ---------------------------------------------------------------------------------------------- tenants


class TenantBuilder:
    """``tenant("a").quota(cpu="4", memory="8Gi").weight(2).no_borrowing()``."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.quota_: Quota = Quota()
        self.weight_ = 1.0
        self.borrowing_ = True

    def quota(
        self,
        cpu: str | float | None = None,
        memory: str | int | None = None,
        gpu: int | None = None,
        max_running: int | None = None,
    ) -> Self:
        self.quota_ = Quota(
            None if cpu is None else parse_millicpu(cpu),
            None if memory is None else parse_bytes(memory),
            gpu,
            max_running,
        )
        return self

    def weight(self, weight: float) -> Self:
        self.weight_ = weight
        return self

    def no_borrowing(self) -> Self:
        self.borrowing_ = False
        return self


def tenant(name: str) -> TenantBuilder:
    return TenantBuilder(name)


# ------------------------------------------------------------------------------------- tasks, gangs


class TaskBuilder:
    """``task("a").cpu("1").memory("1Gi").priority(5)``: a task of tenant ``a`` (1 cpu and 1Gi by default)."""

    def __init__(self, tenant: str) -> None:
        self.tenant = tenant
        self.id_: str | None = None
        self.pool_: str | None = None
        self.priority_ = 0
        self.resources_ = Resources(1000, GI)
        self.selector_: dict[str, str] = {}
        self.reservation_: str | None = None
        self.timeout_: float | None = None
        self.lasts_: float | None = None

    def named(self, task_id: str) -> Self:
        self.id_ = task_id
        return self

    def pool(self, name: str) -> Self:
        self.pool_ = name
        return self

    def priority(self, priority: int) -> Self:
        self.priority_ = priority
        return self

    def cpu(self, amount: str | float) -> Self:
        self.resources_ = replace(self.resources_, millicpu=parse_millicpu(amount))
        return self

    def memory(self, amount: str | int) -> Self:
        self.resources_ = replace(self.resources_, memory=parse_bytes(amount))
        return self

    def gpu(self, count: int) -> Self:
        self.resources_ = replace(self.resources_, gpu=count)
        return self

    def extended(self, name: str, amount: int) -> Self:
        values = dict(self.resources_.extended)
        values[name] = amount
        self.resources_ = replace(self.resources_, extended=extended_of(values))
        return self

    def best_effort(self) -> Self:
        self.resources_ = Resources()
        return self

    def selector(self, **labels: str) -> Self:
        self.selector_ = dict(labels)
        return self

    def reservation(self, reservation_id: str) -> Self:
        self.reservation_ = reservation_id
        return self

    def timeout(self, seconds: float) -> Self:
        """The declared run timeout (what backfill and ``eta`` read)."""
        self.timeout_ = seconds
        return self

    def lasts(self, seconds: float) -> Self:
        """How long the task really runs once placed (the harness ends it then); default: its timeout."""
        self.lasts_ = seconds
        return self


def task(tenant: str = "a") -> TaskBuilder:
    return TaskBuilder(tenant)


class ReservationBuilder:
    """``reservation("a").slots(2).cpu("4").memory("8Gi")``: ``count`` slots of one size, all or nothing."""

    def __init__(self, tenant: str) -> None:
        self.tenant = tenant
        self.id_: str | None = None
        self.pool_: str | None = None
        self.priority_ = 0
        self.count = 1
        self.resources_ = Resources(1000, GI)

    def named(self, reservation_id: str) -> Self:
        self.id_ = reservation_id
        return self

    def pool(self, name: str) -> Self:
        self.pool_ = name
        return self

    def priority(self, priority: int) -> Self:
        self.priority_ = priority
        return self

    def slots(self, count: int) -> Self:
        self.count = count
        return self

    def cpu(self, amount: str | float) -> Self:
        self.resources_ = replace(self.resources_, millicpu=parse_millicpu(amount))
        return self

    def memory(self, amount: str | int) -> Self:
        self.resources_ = replace(self.resources_, memory=parse_bytes(amount))
        return self

    def gpu(self, count: int) -> Self:
        self.resources_ = replace(self.resources_, gpu=count)
        return self


def reservation(tenant: str = "a") -> ReservationBuilder:
    return ReservationBuilder(tenant)


# ------------------------------------------------------------------------------------------ the state


@dataclass(slots=True)
class Pending:
    candidate: Candidate
    lasts: float | None = None


@dataclass(slots=True)
class Running:
    id: str
    tenant: str
    pool: str
    node: str
    priority: int
    resources: Resources
    started_at: float
    expected_end: float | None
    ends_at: float | None  # when the harness ends it (None: runs until stopped)
    reservation: str | None = None
    slot: int | None = None
    terminating: bool = False
    borrowed: bool = False
    retry: Pending | None = None  # what goes back to the queue when it is preempted


@dataclass(slots=True)
class Slot:
    node: str
    used: Resources = Resources()
    tasks: int = 0


@dataclass(slots=True)
class Active:
    id: str
    tenant: str
    pool: str
    resources: Resources
    slots: list[Slot]

    @property
    def total(self) -> Resources:
        return self.resources.scale(len(self.slots))


@dataclass(slots=True)
class Step:
    """One applied cycle: the state it read, the queues it saw and the plan it returned."""

    before: Snapshot
    queues: dict[QueueKey, list[Candidate]]
    plan: Plan
    now: float


@dataclass(slots=True)
class Totals:
    """What a node or tenant holds, derived from running tasks and active reservations."""

    allocated: Resources = Resources()
    tasks: int = 0


class Harness:
    """Seed a cluster, queue tasks, run cycles, apply plans. See the module docstring."""

    def __init__(
        self,
        cluster: ClusterBuilder,
        *tenants: TenantBuilder,
        policy: Policy | None = None,
        now: float = 1000.0,
        check: bool = True,
    ) -> None:
        self.pools = dict(cluster.pools)
        self.nodes = {n.name: n for n in cluster.nodes}
        self.tenants = {t.name: TenantView(t.name, t.quota_, t.weight_, Resources(), 0, t.borrowing_) for t in tenants}
        self.policy = policy or Policy()
        self.now = now
        self.check = check
        self.pending: dict[str, Pending] = {}
        self.running_tasks: dict[str, Running] = {}
        self.reservations: dict[str, Active] = {}
        self.parked: dict[str, str] = {}  # id -> reason code
        self.finished: list[str] = []
        self.history: list[Step] = []
        self.preempted_for: dict[str, str] = {}  # victim -> the task it was preempted for
        self._seq = itertools.count(1)
        self._ids = itertools.count(1)

    # ------------------------------------------------------------------------------------ seeding

    def _default_pool(self) -> str:
        return next(iter(self.pools))

    def _candidate(self, b: TaskBuilder) -> Pending:
        task_id = b.id_ or f"{b.tenant}-{next(self._ids)}"
        assert task_id not in self.pending and task_id not in self.running_tasks, f"duplicate id {task_id}"
        cand = Candidate(
            task_id,
            b.tenant,
            b.pool_ or self._default_pool(),
            b.priority_,
            next(self._seq),
            b.resources_,
            tuple(sorted(b.selector_.items())),
            b.reservation_,
            b.timeout_,
        )
        return Pending(cand, b.lasts_ if b.lasts_ is not None else b.timeout_)

    def submit(self, *builders: TaskBuilder | ReservationBuilder) -> list[str]:
        """Queue tasks (and reservations to admit) in arrival order; returns their ids."""
        ids = []
        for b in builders:
            if isinstance(b, ReservationBuilder):
                rid = b.id_ or f"r-{next(self._ids)}"
                cand = Candidate(
                    rid,
                    b.tenant,
                    b.pool_ or self._default_pool(),
                    b.priority_,
                    next(self._seq),
                    b.resources_,
                    count=b.count,
                )
                self.pending[rid] = Pending(cand)
            else:
                p = self._candidate(b)
                self.pending[p.candidate.id] = p
                rid = p.candidate.id
            ids.append(rid)
        return ids

    def running(self, b: TaskBuilder, on: str, started_at: float | None = None) -> str:
        """Seed a task already running on node ``on`` (inside its reservation's slot there, when it names one)."""
        p = self._candidate(b)
        cand = p.candidate
        started = self.now if started_at is None else started_at
        run = self._start(cand, on, started, p.lasts, borrowed=False)
        return run.id

    def reserved(self, b: ReservationBuilder, nodes: Iterable[str]) -> str:
        """Seed an active reservation with one slot on each of ``nodes``."""
        rid = b.id_ or f"r-{next(self._ids)}"
        slots = [Slot(n) for n in nodes]
        self.reservations[rid] = Active(rid, b.tenant, b.pool_ or self._default_pool(), b.resources_, slots)
        return rid

    def _start(self, cand: Candidate, node: str, started: float, lasts: float | None, borrowed: bool) -> Running:
        assert node in self.nodes, f"unknown node {node}"
        slot_index = None
        if cand.reservation is not None and cand.reservation in self.reservations:
            res = self.reservations[cand.reservation]
            on_node = [i for i, s in enumerate(res.slots) if s.node == node]
            assert on_node, f"reservation {res.id} has no slot on {node}"
            fitting = [i for i in on_node if cand.resources.fits_in(res.resources - res.slots[i].used)]
            slot_index = fitting[0] if fitting else on_node[0]  # an overfull slot shows up in the invariants
            slot = res.slots[slot_index]
            slot.used = slot.used + cand.resources
            slot.tasks += 1
        run = Running(
            cand.id,
            cand.tenant,
            self.nodes[node].pool,
            node,
            cand.priority,
            cand.resources,
            started,
            None if cand.run_timeout is None else started + cand.run_timeout,
            None if lasts is None else started + lasts,
            cand.reservation if slot_index is not None else None,
            slot_index,
            borrowed=borrowed,
            retry=Pending(cand, lasts),
        )
        self.running_tasks[run.id] = run
        return run

    def __repr__(self) -> str:
        """The whole state, readable enough to rebuild a failing hypothesis example by hand."""
        lines = [f"Harness(now={self.now}, {self.policy})"]
        lines += [
            f"  node {n.name} pool={n.pool} {n.total.describe()} max_tasks={n.max_tasks} {n.labels}"
            for n in self.nodes.values()
        ]
        lines += [f"  pool {p.name} {p.placement}" for p in self.pools.values()]
        lines += [
            f"  tenant {t.name} {t.quota} weight={t.weight} borrowing={t.borrowing}" for t in self.tenants.values()
        ]
        lines += [
            f"  reservation {r.id} tenant={r.tenant} pool={r.pool} {r.resources.describe()} slots={r.slots}"
            for r in self.reservations.values()
        ]
        lines += [
            f"  running {r.id} tenant={r.tenant} node={r.node} prio={r.priority} {r.resources.describe()} "
            f"res={r.reservation} expected_end={r.expected_end} terminating={r.terminating}"
            for r in self.running_tasks.values()
        ]
        lines += [f"  pending {p.candidate}" for p in self.pending.values()]
        return "\n".join(lines)

    # -------------------------------------------------------------------------------------- reading

    def node_totals(self) -> dict[str, Totals]:
        out = {name: Totals() for name in self.nodes}
        for run in self.running_tasks.values():
            t = out[run.node]
            t.tasks += 1
            if run.reservation is None:
                t.allocated = t.allocated + run.resources
        for res in self.reservations.values():
            for slot in res.slots:
                out[slot.node].allocated = out[slot.node].allocated + res.resources
        return out

    def tenant_totals(self) -> dict[str, Totals]:
        out: dict[str, Totals] = {name: Totals() for name in self.tenants}
        for run in self.running_tasks.values():
            t = out.setdefault(run.tenant, Totals())
            t.tasks += 1
            if run.reservation is None:
                t.allocated = t.allocated + run.resources
        for res in self.reservations.values():
            t = out.setdefault(res.tenant, Totals())
            t.allocated = t.allocated + res.total
        return out

    def snapshot(self) -> Snapshot:
        nodes = self.node_totals()
        views = [
            NodeView(n.name, n.pool, n.total, nodes[n.name].allocated, nodes[n.name].tasks, n.max_tasks, n.labels)
            for n in self.nodes.values()
        ]
        tenants = self.tenant_totals()
        tenant_views = {
            name: replace(view, usage=tenants[name].allocated, running=tenants[name].tasks)
            for name, view in self.tenants.items()
        }
        running_on: dict[str, list[RunningView]] = {name: [] for name in self.nodes}
        for run in self.running_tasks.values():
            running_on[run.node].append(
                RunningView(
                    run.id,
                    run.tenant,
                    run.pool,
                    run.node,
                    run.priority,
                    run.resources,
                    run.started_at,
                    run.expected_end,
                    run.reservation,
                    run.terminating,
                )
            )
        reservations = {
            rid: ReservationView(
                rid, res.tenant, res.pool, res.resources, tuple(SlotView(s.node, s.used, s.tasks) for s in res.slots)
            )
            for rid, res in self.reservations.items()
        }
        return Snapshot(dict(self.pools), views, tenant_views, running_on, reservations)

    def queues(self) -> dict[QueueKey, list[Candidate]]:
        """One queue per (tenant, pool, lane), each in priority then arrival order (like ``QueueSet``)."""
        out: dict[QueueKey, list[Candidate]] = {}
        for p in self.pending.values():
            c = p.candidate
            lane = GANG_LANE if c.count else (c.reservation or "")
            out.setdefault((c.tenant, c.pool, lane), []).append(c)
        for queue in out.values():
            queue.sort(key=lambda c: (-c.priority, c.seq))
        return out

    def usage(self, tenant: str) -> Resources:
        return self.tenant_totals().get(tenant, Totals()).allocated

    def running_ids(self, tenant: str | None = None) -> list[str]:
        return [r.id for r in self.running_tasks.values() if tenant is None or r.tenant == tenant]

    def dominant_share(self, tenant: str) -> float:
        """The tenant's dominant share of the whole cluster (unweighted)."""
        total = Resources()
        for n in self.nodes.values():
            total = total + n.total
        used = self.usage(tenant)
        shares = [used.millicpu / total.millicpu if total.millicpu else 0.0]
        shares.append(used.memory / total.memory if total.memory else 0.0)
        shares.append(used.gpu / total.gpu if total.gpu else 0.0)
        return max(shares)

    # ------------------------------------------------------------------------------------- cycles

    def schedule(self) -> Plan:
        """One cycle on the current state, without applying it."""
        return schedule(self.snapshot(), list(self.queues().values()), self.policy, self.now)

    def step(self) -> Plan:
        """One cycle, applied; the plan is checked against the invariants first (unless ``check=False``)."""
        before = self.snapshot()
        queues = self.queues()
        plan = schedule(before, list(queues.values()), self.policy, self.now)
        self.apply(plan)
        step = Step(before, queues, plan, self.now)
        self.history.append(step)
        if self.check:
            assert_step_sound(self, step)
        return plan

    def apply(self, plan: Plan) -> None:
        """Make a plan the new state: victims terminate, reservations hold, placements run, parked leave."""
        for pre in plan.preemptions:
            victim = self.running_tasks.get(pre.victim)
            assert victim is not None, f"preempted {pre.victim}, which does not run"
            assert not victim.terminating, f"preempted {pre.victim} again while it stops"
            victim.terminating = True
            self.preempted_for[pre.victim] = pre.for_id
        for adm in plan.admissions:
            pending = self.pending.pop(adm.id, None)
            assert pending is not None and pending.candidate.count, f"admitted {adm.id}, which is not a queued gang"
            c = pending.candidate
            self.reservations[adm.id] = Active(adm.id, c.tenant, c.pool, c.resources, [Slot(n) for n in adm.nodes])
        for placement in plan.placements:
            pending = self.pending.pop(placement.id, None)
            assert pending is not None, f"placed {placement.id}, which is not queued (placed twice?)"
            assert not pending.candidate.count, f"placed the gang {placement.id} as a task"
            self._start(pending.candidate, placement.node, self.now, pending.lasts, placement.borrowed)
        for item_id, reason in plan.parked.items():
            if self.pending.pop(item_id, None) is not None:
                self.parked[item_id] = reason.code

    def end(self, *task_ids: str) -> None:
        """Tasks end (done, or stopped): their room and quota go back."""
        for task_id in task_ids:
            run = self.running_tasks.pop(task_id)
            if run.reservation is not None and run.slot is not None and run.reservation in self.reservations:
                slot = self.reservations[run.reservation].slots[run.slot]
                slot.used = slot.used - run.resources
                slot.tasks -= 1
            self.finished.append(task_id)

    def stop_terminating(self) -> list[str]:
        """Every preempted victim stops now and queues again (a preempted attempt is retried)."""
        victims = [r for r in self.running_tasks.values() if r.terminating]
        self.end(*(r.id for r in victims))
        for r in victims:
            if r.retry is not None:
                self.pending[r.id] = r.retry
        return [r.id for r in victims]

    def release(self, reservation_id: str) -> None:
        """An active reservation goes away; tasks inside it keep running on their node's own room."""
        self.reservations.pop(reservation_id)
        for run in self.running_tasks.values():
            if run.reservation == reservation_id:
                run.reservation, run.slot = None, None

    def advance(self, seconds: float) -> list[str]:
        """Move the clock; tasks whose run ends by then end, and preempted victims stop."""
        self.now += seconds
        due = [r.id for r in self.running_tasks.values() if r.ends_at is not None and r.ends_at <= self.now]
        self.end(*due)
        return due + self.stop_terminating()

    def cycles(self, count: int, every: float = 1.0, after: Callable[[Harness], None] | None = None) -> list[Plan]:
        """``count`` cycles ``every`` seconds apart, each after the tasks due by then ended."""
        plans = []
        for _ in range(count):
            self.advance(every)
            plans.append(self.step())
            if after is not None:
                after(self)
        return plans


@dataclass(slots=True)
class Outcome:
    """Where each id of a plan went (for readable assertions)."""

    placed: dict[str, str] = field(default_factory=dict)  # id -> node
    blocked: dict[str, str] = field(default_factory=dict)  # id -> code
    parked: dict[str, str] = field(default_factory=dict)
    preempted: dict[str, str] = field(default_factory=dict)  # victim -> reason


def outcome(plan: Plan) -> Outcome:
    return Outcome(
        {p.id: p.node for p in plan.placements},
        {k: v.code for k, v in plan.blocked.items()},
        {k: v.code for k, v in plan.parked.items()},
        {p.victim: p.reason for p in plan.preemptions},
    )
