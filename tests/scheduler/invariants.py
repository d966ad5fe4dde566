"""What every applied cycle must hold, whatever the cluster, tenants, queues and policy.

The harness checks these after every ``step``; the hypothesis suite drives it with random states. Each check
names the rule it guards, so a failure reads as the broken promise.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Mapping
from typing import TYPE_CHECKING

from taskplane.domain.resources import Resources
from taskplane.scheduler import Candidate, RunningView

if TYPE_CHECKING:
    from tests.scheduler.harness import Harness, Step

BLOCKED_CODES = {
    "no_capacity",
    "task_limit",
    "backfill_blocked",
    "quota_exhausted",
    "preempting",
    "waiting_for_reservation",
    "reservation_full",
    "pool_empty",
    "tenant_not_found",
}
PARKED_CODES = {"never_fits", "pool_not_found", "quota_exhausted"}


def _matches(labels: Mapping[str, str], cand: Candidate) -> bool:
    return all(labels.get(k) == v for k, v in cand.selector)


def assert_step_sound(h: Harness, step: Step) -> None:
    """Check one applied cycle: ``step.before`` is the state it read, ``h`` the state after its plan."""
    plan, before = step.plan, step.before
    cands = {c.id: c for queue in step.queues.values() for c in queue}
    running_before: dict[str, RunningView] = {r.task_id: r for runs in before.running_on.values() for r in runs}
    nodes_before = {n.name: n for n in before.nodes}

    # -- every id has at most one outcome, and only queued ids have one
    placed = [p.id for p in plan.placements]
    admitted = [a.id for a in plan.admissions]
    assert len(placed) == len(set(placed)), f"a task placed twice: {Counter(placed).most_common(1)}"
    assert len(admitted) == len(set(admitted)), "a reservation admitted twice"
    outcomes = [set(placed), set(admitted), set(plan.blocked), set(plan.parked)]
    for i, ids in enumerate(outcomes):
        assert ids <= cands.keys(), f"an outcome for ids never queued: {ids - cands.keys()}"
        for others in outcomes[i + 1 :]:
            assert not ids & others, f"ids with two outcomes: {ids & others}"
    assert set(plan.eta) <= set(plan.blocked), "an eta for a task that is not blocked"
    assert {r.code for r in plan.blocked.values()} <= BLOCKED_CODES, plan.blocked
    assert {r.code for r in plan.parked.values()} <= PARKED_CODES, plan.parked
    assert len(plan.placements) <= h.policy.max_placements

    # -- placements and admissions go where the candidate may run
    for p in plan.placements:
        c = cands[p.id]
        assert not c.count, f"gang {c.id} placed as a task"
        view = nodes_before[p.node]
        assert view.pool == c.pool, f"{c.id} of pool {c.pool} placed on {p.node} of pool {view.pool}"
        if c.reservation is not None:
            held = before.reservations.get(c.reservation)
            assert held is not None, f"{c.id} placed inside {c.reservation}, which is not active"
            assert p.reservation == c.reservation
            assert p.node in {s.node for s in held.slots}, f"{c.id} placed outside its reservation's slots"
        else:
            assert p.reservation is None
            assert _matches(view.labels, c), f"{c.id} placed on {p.node} against its selector"
        assert not p.borrowed or before.tenants[c.tenant].borrowing, f"{c.id} borrowed for a non-borrowing tenant"
    for a in plan.admissions:
        c = cands[a.id]
        assert c.count, f"task {c.id} admitted as a reservation"
        assert len(a.nodes) == c.count, f"reservation {c.id} admitted with {len(a.nodes)} of {c.count} slots"
        assert all(nodes_before[n].pool == c.pool for n in a.nodes), f"reservation {c.id} outside its pool"

    # -- no node over its size or task limit, no slot over its size
    touched = {p.node for p in plan.placements} | {n for a in plan.admissions for n in a.nodes}
    totals = h.node_totals()
    for name in touched:
        node = h.nodes[name]
        used = totals[name]
        assert used.allocated.fits_in(node.total), (
            f"node {name} over capacity: {used.allocated.describe()} of {node.total.describe()}"
        )
        assert used.tasks <= node.max_tasks, f"node {name} runs {used.tasks} of {node.max_tasks} tasks"
    for rid in {p.reservation for p in plan.placements if p.reservation}:
        res = h.reservations[rid]
        for i, slot in enumerate(res.slots):
            assert slot.used.fits_in(res.resources), f"slot {i} of {rid} over its size: {slot.used.describe()}"

    # -- quotas: never beyond the nominal quota except by borrowing; reservations never borrow
    regular: dict[str, list[Candidate]] = defaultdict(list)
    unborrowed: dict[str, Resources] = {}
    for p in plan.placements:
        c = cands[p.id]
        if c.reservation is None:
            regular[c.tenant].append(c)
            if not p.borrowed:
                unborrowed[c.tenant] = unborrowed.get(c.tenant, Resources()) + c.resources
    gangs: dict[str, Resources] = {}
    for a in plan.admissions:
        c = cands[a.id]
        gangs[c.tenant] = gangs.get(c.tenant, Resources()) + c.resources.scale(c.count)
    for name in regular.keys() | gangs.keys():
        owner = before.tenants.get(name)
        assert owner is not None, f"work placed for tenant {name}, which does not exist"
        quota = owner.quota
        after = h.usage(name)
        if not owner.borrowing:
            assert quota.exceeded_by(after) is None, f"non-borrowing tenant {name} over quota: {after.describe()}"
        if name in unborrowed:
            assert quota.exceeded_by(owner.usage + unborrowed[name]) is None, f"{name}: over quota, borrowed=False"
        if name in gangs:
            assert quota.exceeded_by(owner.usage + gangs[name]) is None, f"{name}: a reservation admitted over quota"
        if regular[name] and quota.max_running is not None:
            assert owner.running + len(regular[name]) <= quota.max_running, f"{name} runs beyond max_running"

    # -- within a queue, nothing after the first task without an outcome was looked at
    decided = set(placed) | set(admitted) | set(plan.blocked) | set(plan.parked)
    for key, queue in step.queues.items():
        first_open = next((i for i, c in enumerate(queue) if c.id not in decided), len(queue))
        later = [c.id for c in queue[first_open + 1 :] if c.id in decided]
        assert not later, f"queue {key}: {later} decided while {queue[first_open].id} ahead of them was not"

    # -- preemption: only for a blocked head, only victims it may take, only where they make it fit
    assert h.policy.preemption or not plan.preemptions, "preempted with preemption off"
    victims = [p.victim for p in plan.preemptions]
    assert len(victims) == len(set(victims)), "a victim preempted twice"
    heads = {p.for_id for p in plan.preemptions}
    assert len(heads) <= h.policy.max_preemptions
    waiting_heads = {h.preempted_for.get(r.task_id) for r in running_before.values() if r.terminating}
    earlier = {(p.victim, p.for_id) for past in h.history[:-1] for p in past.plan.preemptions}
    by_head: dict[str, list[RunningView]] = defaultdict(list)
    for pre in plan.preemptions:
        head = cands[pre.for_id]
        victim = running_before.get(pre.victim)
        assert victim is not None, f"victim {pre.victim} was not running"
        assert not victim.terminating, f"victim {pre.victim} was already stopping"
        assert victim.reservation is None, f"victim {pre.victim} runs inside a reservation"
        assert victim.node == pre.node and victim.pool == head.pool
        assert plan.blocked.get(head.id) is not None and plan.blocked[head.id].code == "preempting", head.id
        assert head.id not in waiting_heads, f"a second round of victims for {head.id} while the first still stops"
        assert (victim.task_id, head.id) not in earlier, f"{head.id} preempts {victim.task_id} again (churn)"
        if pre.reason == "priority":
            assert victim.priority < head.priority, f"{pre.victim} (priority {victim.priority}) for {head.id}"
        else:
            assert pre.reason == "reclaim", pre.reason
            owner = before.tenants[victim.tenant]
            assert victim.tenant != head.tenant, "reclaimed from the head's own tenant"
            assert owner.quota.exceeded_by(owner.usage) is not None, f"reclaimed from {victim.tenant}, not borrowing"
        by_head[head.id].append(victim)
    for head_id, taken in by_head.items():
        head = cands[head_id]
        assert len({v.node for v in taken}) == 1, f"victims for {head_id} on several nodes"
        name = taken[0].node
        node, used = h.nodes[name], totals[name]
        stopping = [r for r in running_before.values() if r.node == name and r.terminating and r.reservation is None]
        freed = Resources()
        for v in taken + stopping:
            freed = freed + v.resources
        assert _matches(node.labels, head), f"preempted on {name}, which {head_id}'s selector excludes"
        assert head.resources.fits_in(node.total - used.allocated + freed), f"victims on {name} do not fit {head_id}"
        assert used.tasks - len(taken) - len(stopping) < node.max_tasks, f"no task slot on {name} for {head_id}"
