"""Hypothesis strategies: random clusters, tenants, running work, reservations, queues and policies.

Strategies are built once at import and draw plain tuples (indices are taken modulo the lists they pick from):
building strategies inside a draw loop costs more than the scheduler itself.
"""

from __future__ import annotations

from hypothesis import strategies as st

from taskplane.domain.resources import Resources
from taskplane.scheduler import Policy
from tests.scheduler.harness import (
    ClusterBuilder,
    Harness,
    ReservationBuilder,
    TaskBuilder,
    cluster,
    reservation,
    task,
    tenant,
)

CPUS = ["0", "250m", "500m", "1", "2", "3", "4", "8"]
MEMORIES = ["0", "256Mi", "1Gi", "2Gi", "4Gi"]
TENANTS = ["a", "b", "c", "d"]

_index = st.integers(0, 255)
_request = st.tuples(
    st.sampled_from(CPUS), st.sampled_from(MEMORIES), st.sampled_from([0, 0, 0, 1, 2]), st.integers(0, 9)
)
_node_group = st.tuples(
    st.integers(1, 2),
    st.sampled_from(["2", "4", "8"]),
    st.sampled_from(["4Gi", "8Gi"]),
    st.sampled_from([0, 0, 1, 2]),
    st.sampled_from([False, False, True]),
    st.sampled_from("ab"),
    st.integers(1, 6),
)
_pool = st.tuples(st.sampled_from(["binpack", "spread"]), st.lists(_node_group, min_size=1, max_size=3))
_tenant = st.tuples(
    st.sampled_from([0.5, 1, 2, 3]),
    st.booleans(),
    st.sampled_from([None, "1", "2", "4", "8"]),
    st.sampled_from([None, "1Gi", "4Gi", "8Gi"]),
    st.sampled_from([None, 0, 1]),
    st.sampled_from([None, None, 1, 2, 4]),
    st.booleans(),
)
_reservation = st.tuples(_index, _index, _request, st.integers(1, 2), _index, _index)
_running = st.tuples(
    _index,  # tenant
    st.integers(-2, 2),  # priority
    _request,
    st.sampled_from([None, 5.0, 20.0, 60.0]),  # run timeout
    _index,  # pool
    _index,  # node
    st.integers(0, 3),  # 0: inside one of its tenant's reservations
    st.sampled_from([0, 0, 10, 30]),  # started this long ago (often together: equal expected ends)
    st.integers(0, 7),  # 0: terminating (a stop is on its way)
)
_pending = st.tuples(
    st.integers(0, 40),  # tenant (0: a tenant that does not exist)
    st.integers(0, 40),  # pool (0: a pool that does not exist)
    st.integers(-2, 2),  # priority
    _request,
    st.integers(0, 5),  # 0: a reservation to admit
    st.integers(1, 3),  # its slots
    st.sampled_from([None, 1.0, 5.0, 30.0, 120.0]),  # run timeout
    st.sampled_from([None, 1.0, 3.0, 10.0]),  # how long it really runs
    st.sampled_from([None, None, None, "a", "b", "c"]),  # zone selector
    st.integers(0, 3),  # 0: names a reservation
    _index,
)

policies = st.builds(
    Policy,
    max_placements=st.integers(1, 30),
    backfill=st.booleans(),
    preemption=st.booleans(),
    max_preemptions=st.integers(1, 3),
    max_blocked_per_pool=st.integers(1, 6),
    fair_share=st.booleans(),
    first_fit=st.sampled_from([False, False, False, True]),
)


def _sized(b: TaskBuilder | ReservationBuilder, request: tuple[str, str, int, int]) -> None:
    cpu, memory, gpu, fpga = request
    b.cpu(cpu).memory(memory).gpu(gpu)
    if isinstance(b, TaskBuilder) and fpga == 0:
        b.extended("example.com/fpga", 1)


def _fits(h: Harness, node: str, res: Resources, extra_tasks: int = 1) -> bool:
    used = h.node_totals()[node]
    spec = h.nodes[node]
    return res.fits_in(spec.total - used.allocated) and used.tasks + extra_tasks <= spec.max_tasks


def _cluster(pools: list[tuple[str, list[tuple[int, str, str, int, bool, str, int]]]]) -> ClusterBuilder:
    c = cluster()
    for p, (placement, groups) in enumerate(pools):
        for nodes, cpu, memory, gpu, fpga, zone, max_tasks in groups:
            extended = {"example.com/fpga": 1} if fpga else {}
            c.pool(f"p{p}", nodes, cpu, memory, gpu, extended, {"zone": zone}, max_tasks, placement)
    return c


@st.composite
def harnesses(draw: st.DrawFn, policy: Policy | None = None) -> Harness:
    """A consistent random state: running work and active reservations fit their nodes; queues hold anything."""
    c = _cluster(draw(st.lists(_pool, min_size=1, max_size=2)))
    tenant_specs = draw(st.lists(_tenant, min_size=1, max_size=len(TENANTS)))
    ts = []
    for name, (weight, has_quota, cpu, memory, gpu, max_running, borrowing) in zip(TENANTS, tenant_specs, strict=False):
        t = tenant(name).weight(weight)
        if has_quota:
            t.quota(cpu=cpu, memory=memory, gpu=gpu, max_running=max_running)
        if not borrowing:
            t.no_borrowing()
        ts.append(t)
    h = Harness(c, *ts, policy=policy or draw(policies), now=1000.0)
    names = [t.name for t in ts]
    pools = list(h.pools)
    nodes_of = {p: [n.name for n in h.nodes.values() if n.pool == p] for p in pools}

    for i, (who, pool_i, request, count, node_a, node_b) in enumerate(draw(st.lists(_reservation, max_size=2))):
        pool = pools[pool_i % len(pools)]
        r = reservation(names[who % len(names)]).named(f"r{i}").pool(pool)
        _sized(r, request)
        slots = [nodes_of[pool][n % len(nodes_of[pool])] for n in (node_a, node_b)[:count]]
        if all(_fits(h, n, r.resources_.scale(slots.count(n)), extra_tasks=0) for n in slots):
            h.reserved(r, slots)

    for who, priority, request, timeout, pool_i, node_i, inside, ago, stopping in draw(st.lists(_running, max_size=12)):
        b = task(names[who % len(names)]).priority(priority)
        _sized(b, request)
        if timeout is not None:
            b.timeout(timeout)
        own = [r for r in h.reservations.values() if r.tenant == b.tenant]
        if own and inside == 0:
            res = own[node_i % len(own)]
            slot = res.slots[node_i % len(res.slots)]
            b.pool(res.pool).reservation(res.id)
            if not (b.resources_.fits_in(res.resources - slot.used) and _fits(h, slot.node, Resources())):
                continue
            node = slot.node
        else:
            pool = pools[pool_i % len(pools)]
            node = nodes_of[pool][node_i % len(nodes_of[pool])]
            b.pool(pool)
            if not _fits(h, node, b.resources_):
                continue
        run_id = h.running(b, on=node, started_at=h.now - ago)
        h.running_tasks[run_id].terminating = stopping == 0

    for spec in draw(st.lists(_pending, max_size=16)):
        who_i, pool_i, priority, request, gang, slots, timeout, lasts, zone, names_res, pick = spec
        who = names[who_i % len(names)] if who_i else "ghost"
        pool = pools[pool_i % len(pools)] if pool_i else "nowhere"
        if gang == 0:
            r = reservation(who).pool(pool).priority(priority).slots(slots)
            _sized(r, request)
            h.submit(r)
            continue
        b = task(who).pool(pool).priority(priority)
        _sized(b, request)
        if timeout is not None:
            b.timeout(timeout)
        if lasts is not None:
            b.lasts(lasts)
        if zone is not None:
            b.selector(zone=zone)
        if names_res == 0:
            own = [r for r in h.reservations.values() if r.tenant == who]
            if own and pick % 4:
                res = own[pick % len(own)]
                b.reservation(res.id).pool(res.pool)
            else:
                b.reservation("r-missing")
        h.submit(b)
    return h
