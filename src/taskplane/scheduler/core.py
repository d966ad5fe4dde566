r"""One scheduling cycle, readable top to bottom (after Kueue's ``schedule()`` and Nomad's scheduler).

    Snapshot (nodes, tenants' usage,        pending queues, one per (tenant, pool[, reservation]),
    running tasks, active reservations)     each in priority then FIFO order, read lazily
                 \                          /
                  +------> schedule() <----+
                               |
    1. order   the queues' heads in a heap: heads within their tenant's quota before heads that would borrow
               (borrowed room is reclaimable, so it never goes first), then priority (high first), then weighted
               dominant-resource share of the tenant (low first, recomputed as the cycle places work), then
               arrival order
    2. admit   tenant limits: max_running, then the nominal quota; beyond it only by borrowing idle capacity
               (``Placement.borrowed``), which a tenant under its own quota may reclaim by preemption
    3. place   feasibility (pool, selector, resources, task limit, the blocked head's shadow node), then score:
               binpack (least free CPU that fits) or spread (most free CPU)
    4. preempt when the head fits nowhere: lower-priority work, or borrowed work when the head's tenant is
               within its quota; only on a node where it makes the head fit, fewest victims first
    5. backfill a blocked head keeps a shadow node: later, smaller tasks may still run elsewhere, and on that
               node only if their run timeout ends before the head's estimated start
    6. emit    a Plan: placements, preemptions, reservation admissions, and a reason for every task examined
               and not placed (``parked`` ones can never run as configured)

Cost: each examined candidate costs O(log tenants) for the heap plus a bisect into the pool's node index, so
a cycle costs O(placements + blocked), independent of the queue depth. A pool is closed for the rest of the
cycle after ``policy.max_blocked_per_pool`` blocked candidates; a request that dominates one that already
found no room fails without a scan.
"""

from __future__ import annotations

import heapq
from bisect import bisect_left, insort
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

from taskplane.domain.pool import PlacementStrategy
from taskplane.domain.resources import Resources, format_amount
from taskplane.domain.task import PendingReason
from taskplane.domain.tenant import UNLIMITED, Quota
from taskplane.scheduler.model import (
    Admission,
    Candidate,
    NodeView,
    Placement,
    Plan,
    Policy,
    Preemption,
    RunningView,
    Snapshot,
    TenantView,
)

_PREEMPTION_NODES = 32  # nodes examined for victims per preempting head: the ones closest to fitting it
_FAILED_MEMORY = 8  # requests that found no room, remembered per pool for the dominance shortcut


# ------------------------------------------------------------------------------------------ cycle state


@dataclass(slots=True)
class _Node:
    view: NodeView
    free: Resources
    tasks: int

    def key(self) -> tuple[int, int, str]:
        return (self.free.millicpu, self.free.memory, self.view.name)


@dataclass(slots=True)
class _Pool:
    """A pool's nodes during the cycle, indexed by free CPU for bisecting."""

    name: str
    placement: PlacementStrategy
    nodes: list[_Node] = field(default_factory=list)
    keys: list[tuple[int, int, str]] = field(default_factory=list)  # nodes with a task slot left, sorted
    shapes: list[tuple[Resources, Mapping[str, str]]] = field(default_factory=list)  # distinct (size, labels)
    shadow: str | None = None  # node held for the blocked head
    shadow_until: float | None = None  # the head's estimated start on it (None: unknown, nobody backfills there)
    blocked: int = 0
    closed: bool = False
    failed: list[Resources] = field(default_factory=list)


@dataclass(slots=True)
class _Tenant:
    view: TenantView
    usage: Resources
    running: int


def _dominant_share(usage: Resources, totals: Resources, weight: float) -> float:
    share = 0.0
    if totals.millicpu:
        share = usage.millicpu / totals.millicpu
    if totals.memory:
        share = max(share, usage.memory / totals.memory)
    if totals.gpu:
        share = max(share, usage.gpu / totals.gpu)
    return share / weight


def _dominates(request: Resources, failed: Resources) -> bool:
    """True when ``request`` needs at least as much of everything as ``failed`` did."""
    return (
        request.millicpu >= failed.millicpu
        and request.memory >= failed.memory
        and request.gpu >= failed.gpu
        and failed.fits_in(request)
    )


def _matches(labels: Mapping[str, str], selector: Sequence[tuple[str, str]]) -> bool:
    return all(labels.get(k) == v for k, v in selector)


class _Cycle:
    """The mutable state of one cycle. Only ``schedule`` creates one; nothing outside sees it."""

    def __init__(self, snapshot: Snapshot, policy: Policy, now: float) -> None:
        self.policy = policy
        self.now = now
        self.plan = Plan()
        self.nodes: dict[str, _Node] = {}
        self.pools: dict[str, _Pool] = {}
        totals = Resources()
        for name, view in snapshot.pools.items():
            self.pools[name] = _Pool(name, view.placement)
        for nv in snapshot.nodes:
            node = _Node(nv, nv.total - nv.allocated, nv.tasks)
            self.nodes[nv.name] = node
            pool = self.pools.get(nv.pool)
            if pool is None:
                continue
            pool.nodes.append(node)
            if node.tasks < nv.max_tasks:
                pool.keys.append(node.key())
            shape = (nv.total, nv.labels)
            if shape not in pool.shapes:
                pool.shapes.append(shape)
            totals = totals + nv.total
        for pool in self.pools.values():
            pool.keys.sort()
        self.totals = totals
        self.tenants = {name: _Tenant(view, view.usage, view.running) for name, view in snapshot.tenants.items()}
        self.running_on = snapshot.running_on
        self.reservations = snapshot.reservations
        self.slot_used: dict[tuple[str, int], tuple[Resources, int]] = {}
        self.preempting = 0
        self.victims: set[str] = set()

    # ---------------------------------------------------------------------------------------- shares

    def share(self, tenant: str) -> float:
        state = self.tenants.get(tenant)
        if state is None or not self.policy.fair_share:
            return 0.0
        return _dominant_share(state.usage, self.totals, state.view.weight)

    def borrows(self, cand: Candidate) -> bool:
        """True when placing ``cand`` now would take its (borrowing) tenant beyond its nominal quota."""
        state = self.tenants.get(cand.tenant)
        if state is None or not state.view.borrowing or cand.count or cand.reservation is not None:
            return False
        return state.view.quota.exceeded_by(state.usage + cand.resources) is not None

    # ----------------------------------------------------------------------------------- node index

    def _take(self, pool: _Pool, node: _Node, request: Resources, *, task: bool = True) -> None:
        """Allocate ``request`` on ``node`` (a task, or with ``task=False`` a reservation slot), keeping the index."""
        if node.tasks < node.view.max_tasks:
            del pool.keys[bisect_left(pool.keys, node.key())]
        node.free = node.free - request
        node.tasks += 1 if task else 0
        if node.tasks < node.view.max_tasks:
            insort(pool.keys, node.key())

    def _give_back(self, pool: _Pool, node: _Node, request: Resources, *, task: bool = True) -> None:
        if node.tasks < node.view.max_tasks:
            del pool.keys[bisect_left(pool.keys, node.key())]
        node.free = node.free + request
        node.tasks -= 1 if task else 0
        if node.tasks < node.view.max_tasks:
            insort(pool.keys, node.key())

    def _usable(self, pool: _Pool, node: _Node, cand: Candidate) -> bool:
        if node.view.name == pool.shadow:
            until = pool.shadow_until
            timeout = cand.run_timeout
            if until is None or timeout is None or self.now + timeout > until:
                return False
        return cand.resources.fits_in(node.free) and (not cand.selector or _matches(node.view.labels, cand.selector))

    def find_node(self, pool: _Pool, cand: Candidate) -> _Node | None:
        """The node the pool's strategy picks for ``cand``, or ``None`` when none fits now."""
        request = cand.resources
        if self.policy.first_fit:
            for node in pool.nodes:
                if node.tasks < node.view.max_tasks and self._usable(pool, node, cand):
                    return node
            return None
        keys = pool.keys
        if not keys or request.millicpu > keys[-1][0]:
            return None
        start = bisect_left(keys, (request.millicpu, -1, ""))
        order: Iterable[int] = (
            range(start, len(keys))
            if pool.placement is PlacementStrategy.BINPACK
            else range(len(keys) - 1, start - 1, -1)
        )
        nodes = self.nodes
        for i in order:
            _, memory, name = keys[i]
            if memory < request.memory:
                continue
            node = nodes[name]
            if self._usable(pool, node, cand):
                return node
        return None

    def can_ever_fit(self, pool: _Pool, cand: Candidate) -> bool:
        return any(
            cand.resources.fits_in(total) and (not cand.selector or _matches(labels, cand.selector))
            for total, labels in pool.shapes
        )

    # ------------------------------------------------------------------------------------- reasons

    def capacity_reason(self, pool: _Pool, cand: Candidate) -> PendingReason:
        """Why ``cand`` fits nowhere now, told against the pool's roomiest node it could ever use."""
        roomiest = [self.nodes[k[2]] for k in reversed(pool.keys[-8:])] if pool.keys else pool.nodes[:8]
        best = next((n for n in roomiest if not cand.selector or _matches(n.view.labels, cand.selector)), None)
        if best is None:
            return PendingReason("no_capacity", f"no node of pool {pool.name} has room", resource="tasks")
        short = cand.resources.shortfall(best.free)
        if not short:
            if best.view.name == pool.shadow and best.tasks < best.view.max_tasks:
                return PendingReason(
                    "backfill_blocked",
                    f"node {best.view.name} is held for a blocked higher-priority task; "
                    "declare a run timeout that ends before that task starts to use it",
                )
            return PendingReason(
                "task_limit", f"node {best.view.name} runs its limit of {best.view.max_tasks} tasks", resource="tasks"
            )
        what = short[0]
        need, free, total = cand.resources.amount(what), best.free.amount(what), best.view.total.amount(what)
        return PendingReason(
            "no_capacity",
            f"no room in pool {pool.name}: {what}: requests {format_amount(what, need)}, "
            f"free {format_amount(what, max(free, 0))} of {format_amount(what, total)} on {best.view.name}",
            resource=what,
        )

    # ------------------------------------------------------------------------------------ the steps

    def admit(self, cand: Candidate, request: Resources) -> tuple[bool, PendingReason | None, bool]:
        """Quota: (admitted, reason if not, borrowed)."""
        state = self.tenants.get(cand.tenant)
        if state is None:
            return False, PendingReason("tenant_not_found", f"tenant {cand.tenant} does not exist"), False
        quota = state.view.quota
        if quota.max_running is not None and cand.count == 0 and state.running >= quota.max_running:
            return (
                False,
                PendingReason(
                    "quota_exhausted",
                    f"tenant {cand.tenant} runs its limit of {quota.max_running} tasks",
                    resource="tasks",
                ),
                False,
            )
        if quota is UNLIMITED:
            return True, None, False
        over = quota.exceeded_by(state.usage + request)
        if over is None:
            return True, None, False
        if state.view.borrowing and cand.count == 0:
            return True, None, True
        return False, _quota_reason(cand.tenant, quota, state.usage, request, over), False

    def charge(self, cand: Candidate, request: Resources) -> None:
        state = self.tenants[cand.tenant]
        state.usage = state.usage + request
        state.running += 1 if cand.count == 0 else 0

    def place_in_reservation(self, cand: Candidate) -> bool:
        assert cand.reservation is not None
        res = self.reservations.get(cand.reservation)
        if res is None:
            self.block(
                cand, PendingReason("waiting_for_reservation", f"reservation {cand.reservation} is not active yet")
            )
            return False
        for i, slot in enumerate(res.slots):
            used, tasks = self.slot_used.get((res.id, i), (slot.used, slot.tasks))
            node = self.nodes.get(slot.node)
            if node is None or node.tasks >= node.view.max_tasks:
                continue
            if cand.resources.fits_in(res.resources - used):
                self.slot_used[(res.id, i)] = (used + cand.resources, tasks + 1)
                pool = self.pools.get(node.view.pool)
                if pool is not None:
                    self._take(pool, node, Resources())  # the slot's resources are allocated already
                state = self.tenants.get(cand.tenant)
                if state is not None:
                    state.running += 1
                self.plan.placements.append(Placement(cand.id, slot.node, reservation=res.id))
                return True
        self.block(
            cand,
            PendingReason(
                "reservation_full",
                f"reservation {res.id} has no slot with {cand.resources.describe()} free",
                resource="reservation",
            ),
        )
        return False

    def admit_gang(self, pool: _Pool, cand: Candidate) -> bool:
        """A reservation: every slot placed at once, or none."""
        total = cand.resources.scale(cand.count)
        ok, reason, _ = self.admit(cand, total)
        if not ok:
            assert reason is not None
            self.block(cand, reason)
            return False
        taken: list[_Node] = []
        for _ in range(cand.count):
            node = self.find_node(pool, cand)
            if node is None:
                break
            self._take(pool, node, cand.resources, task=False)
            taken.append(node)
        if len(taken) < cand.count:
            reason = self.capacity_reason(pool, cand)
            for node in taken:
                self._give_back(pool, node, cand.resources, task=False)
            if not self.can_ever_fit(pool, cand):
                self.park(cand, _never_fits(pool.name, cand))
                return False
            self.block(
                cand,
                PendingReason(
                    reason.code,
                    f"{len(taken)} of {cand.count} slots fit now; a reservation is held all or nothing. "
                    + reason.message,
                    resource=reason.resource,
                ),
            )
            return False
        self.charge(cand, total)
        self.plan.admissions.append(Admission(cand.id, tuple(node.view.name for node in taken)))
        return True

    def block(self, cand: Candidate, reason: PendingReason) -> None:
        self.plan.blocked[cand.id] = reason

    def park(self, cand: Candidate, reason: PendingReason) -> None:
        self.plan.parked[cand.id] = reason

    def try_preempt(self, pool: _Pool, cand: Candidate) -> PendingReason | None:
        """Make room for ``cand`` by stopping other work; a reason when it waits for that, else ``None``."""
        if not self.policy.preemption:
            return None
        state = self.tenants[cand.tenant]
        quota = state.view.quota
        within_quota = quota is UNLIMITED or quota.exceeded_by(state.usage + cand.resources) is None
        borrowers = {
            name
            for name, t in self.tenants.items()
            if name != cand.tenant and t.view.quota is not UNLIMITED and t.view.quota.exceeded_by(t.usage) is not None
        }
        candidates = [self.nodes[k[2]] for k in reversed(pool.keys[-_PREEMPTION_NODES:])] if pool.keys else []
        if len(candidates) < _PREEMPTION_NODES:
            seen = {n.view.name for n in candidates}
            candidates += [n for n in pool.nodes if n.view.name not in seen][: _PREEMPTION_NODES - len(candidates)]
        best: tuple[tuple[int, int], _Node, list[tuple[RunningView, str]]] | None = None
        for node in candidates:
            if not cand.resources.fits_in(node.view.total):
                continue
            if cand.selector and not _matches(node.view.labels, cand.selector):
                continue
            running = self.running_on.get(node.view.name, ())
            # Already stopping enough there (an earlier cycle preempted for this head): wait, do not stop more.
            stopping = Resources()
            stopping_count = 0
            for run in running:
                if (run.terminating or run.task_id in self.victims) and run.reservation is None:
                    stopping = stopping + run.resources
                    stopping_count += 1
            if stopping_count and cand.resources.fits_in(node.free + stopping):
                pool.shadow, pool.shadow_until = node.view.name, None
                return PendingReason(
                    "preempting", f"waiting for {stopping_count} preempted task(s) to stop on {node.view.name}"
                )
            if self.preempting >= self.policy.max_preemptions:
                continue
            eligible: list[tuple[int, int, float, RunningView, str]] = []
            for run in running:
                if run.terminating or run.reservation is not None or run.task_id in self.victims:
                    continue
                mine_or_borrowed = run.tenant == cand.tenant or run.tenant in borrowers
                if run.priority < cand.priority and (within_quota or mine_or_borrowed):
                    eligible.append(
                        (0 if run.tenant in borrowers else 1, run.priority, -run.started_at, run, "priority")
                    )
                elif within_quota and run.tenant in borrowers:
                    eligible.append((0, run.priority, -run.started_at, run, "reclaim"))
            if not eligible:
                continue
            eligible.sort(key=lambda e: (e[0], e[1], e[2]))
            free = node.free + stopping
            chosen: list[tuple[RunningView, str]] = []
            taken: dict[str, Resources] = {}
            for _, _, _, run, why in eligible:
                if cand.resources.fits_in(free) and node.tasks - len(chosen) < node.view.max_tasks:
                    break
                if run.tenant in borrowers and (why == "reclaim" or not within_quota):
                    owner = self.tenants[run.tenant]
                    if owner.view.quota.exceeded_by(owner.usage - taken.get(run.tenant, Resources())) is None:
                        continue  # only the room it borrowed
                    taken[run.tenant] = taken.get(run.tenant, Resources()) + run.resources
                free = free + run.resources
                chosen.append((run, why))
            for pick in reversed(chosen[:]):  # spare the victims the head fits without
                rest = free - pick[0].resources
                if cand.resources.fits_in(rest) and node.tasks - len(chosen) + 1 < node.view.max_tasks:
                    free = rest
                    chosen.remove(pick)
            if not cand.resources.fits_in(free) or node.tasks - len(chosen) >= node.view.max_tasks:
                continue
            score = (len(chosen), sum(r.priority for r, _ in chosen))
            if best is None or score < best[0]:
                best = (score, node, chosen)
        if best is None:
            return None
        _, node, chosen = best
        self.preempting += 1
        for run, why in chosen:
            self.victims.add(run.task_id)
            self.plan.preemptions.append(Preemption(run.task_id, cand.id, node.view.name, why))
        kind = "reclaim" if any(why == "reclaim" for _, why in chosen) else "priority"
        pool.shadow, pool.shadow_until = node.view.name, None
        return PendingReason(
            "preempting", f"preempting {len(chosen)} task(s) ({kind}) on {node.view.name} to make room"
        )

    def hold_shadow(self, pool: _Pool, cand: Candidate) -> float | None:
        """Keep the node ``cand`` will fit on soonest for it; return its estimated start (None when unknown)."""
        if pool.shadow is not None:
            return None
        best: tuple[float, _Node] | None = None
        fallback: _Node | None = None
        roomiest = [self.nodes[k[2]] for k in reversed(pool.keys[-_PREEMPTION_NODES:])] if pool.keys else pool.nodes
        for node in roomiest:
            if not cand.resources.fits_in(node.view.total):
                continue
            if cand.selector and not _matches(node.view.labels, cand.selector):
                continue
            fallback = fallback or node
            ends = sorted(
                (
                    (run.expected_end, run.resources)
                    for run in self.running_on.get(node.view.name, ())
                    if run.expected_end is not None
                ),
                key=lambda end: end[0],
            )
            free = node.free
            for end, res in ends:
                free = free + res
                if cand.resources.fits_in(free):
                    if best is None or end < best[0]:
                        best = (end, node)
                    break
        if best is not None:
            pool.shadow, pool.shadow_until = best[1].view.name, best[0]
            return best[0]
        if fallback is not None:
            pool.shadow, pool.shadow_until = fallback.view.name, None
        return None

    # -------------------------------------------------------------------------------------- one head

    def consider(self, cand: Candidate) -> bool:
        """Try one head. True when its queue may go on to the next task this cycle."""
        pool = self.pools.get(cand.pool)
        if pool is None:
            self.park(cand, PendingReason("pool_not_found", f"pool {cand.pool} is not configured"))
            return True
        if cand.reservation is not None:
            return self.place_in_reservation(cand)
        if pool.closed:
            return False
        if not pool.nodes:
            self.block(cand, PendingReason("pool_empty", f"pool {cand.pool} has no nodes"))
            return False
        if cand.count:
            ok = self.admit_gang(pool, cand)
            return ok or cand.id in self.plan.parked
        ok, reason, borrowed = self.admit(cand, cand.resources)
        if not ok:
            assert reason is not None
            state = self.tenants.get(cand.tenant)
            quota = state.view.quota if state is not None else UNLIMITED
            if state is not None and reason.resource != "tasks" and quota.exceeded_by(cand.resources) is not None:
                self.park(cand, reason)  # larger than the whole quota: only a quota change helps
                return True
            self.block(cand, reason)
            return False
        # A request at least as large as one that found no room fails without a scan, unless it may use the
        # shadow node (which the earlier one may not have been allowed to).
        dominated = any(_dominates(cand.resources, f) for f in pool.failed)
        may_use_shadow = pool.shadow_until is not None and cand.run_timeout is not None
        node = self.find_node(pool, cand) if not dominated or may_use_shadow else None
        if node is not None:
            self._take(pool, node, cand.resources)
            self.charge(cand, cand.resources)
            self.plan.placements.append(Placement(cand.id, node.view.name, borrowed=borrowed))
            return True
        if not self.can_ever_fit(pool, cand):
            self.park(cand, _never_fits(pool.name, cand))
            return True
        if not cand.selector and not dominated:
            pool.failed.append(cand.resources)
            del pool.failed[:-_FAILED_MEMORY]
        waiting = self.try_preempt(pool, cand) if pool.shadow is None else None
        if waiting is None:
            waiting = self.capacity_reason(pool, cand)
            eta = self.hold_shadow(pool, cand)
            if eta is not None:
                self.plan.eta[cand.id] = eta
        self.block(cand, waiting)
        pool.blocked += 1
        if not self.policy.backfill or pool.blocked >= self.policy.max_blocked_per_pool:
            pool.closed = True
        return self.policy.backfill


def _never_fits(pool: str, cand: Candidate) -> PendingReason:
    where = f"pool {pool}" + (f" with labels {dict(cand.selector)}" if cand.selector else "")
    what = f"{cand.count} x " if cand.count else ""
    return PendingReason("never_fits", f"requests {what}{cand.resources.describe()}; no node of {where} is that large")


def _quota_reason(tenant: str, quota: Quota, usage: Resources, request: Resources, over: str) -> PendingReason:
    limit = quota.limit(over)
    assert limit is not None
    used = usage.amount(over)
    return PendingReason(
        "quota_exhausted",
        f"quota_exhausted: {over} {format_amount(over, used)} of {format_amount(over, limit)} used "
        f"(tenant {tenant}); the task requests {format_amount(over, request.amount(over))}",
        resource=over,
    )


# -------------------------------------------------------------------------------------------- entry


def schedule(
    snapshot: Snapshot,
    pending: Iterable[Iterable[Candidate]],
    policy: Policy,
    now: float,
) -> Plan:
    """One cycle: see the module docstring. ``pending`` is a collection of queues, each in queue order."""
    cycle = _Cycle(snapshot, policy, now)
    heads: list[Iterator[Candidate]] = []
    current: list[Candidate] = []
    heap: list[tuple[bool, int, float, int, int]] = []

    def advance(index: int) -> None:
        nxt = next(heads[index], None)
        if nxt is None:
            return
        current[index] = nxt
        heapq.heappush(heap, (cycle.borrows(nxt), -nxt.priority, cycle.share(nxt.tenant), nxt.seq, index))

    for queue in pending:
        it = iter(queue)
        first = next(it, None)
        if first is None:
            continue
        heads.append(it)
        current.append(first)
        heapq.heappush(
            heap, (cycle.borrows(first), -first.priority, cycle.share(first.tenant), first.seq, len(heads) - 1)
        )

    plan = cycle.plan
    while heap and len(plan.placements) < policy.max_placements:
        borrows, negative, share, seq, index = heapq.heappop(heap)
        cand = current[index]
        fresh, fresh_borrows = cycle.share(cand.tenant), cycle.borrows(cand)
        if fresh != share or fresh_borrows != borrows:  # the tenant got work since this entry was pushed: re-rank
            heapq.heappush(heap, (fresh_borrows, negative, fresh, seq, index))
            continue
        plan.examined += 1
        if cycle.consider(cand):
            advance(index)
    return plan
