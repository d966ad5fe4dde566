"""The ledger: what is allocated where. Every write (charge, release, hold, free) must undo exactly, and the
snapshot must hand the scheduler the same arithmetic (node allocated = tasks + held slots + queued launches;
tenant usage = tasks outside reservations + whole reservations)."""

from __future__ import annotations

from dataclasses import replace

from hypothesis import given, settings
from hypothesis import strategies as st

from taskplane.domain.pool import Node, PlacementStrategy, Pool
from taskplane.domain.reservation import Reservation, ReservationState
from taskplane.domain.resources import Resources
from taskplane.domain.task import Task, Timeouts
from taskplane.domain.tenant import Quota, Tenant
from taskplane.services.ledger import Ledger
from tests.domain.builders import T0
from tests.domain.builders import task as task_builder

GI = 1 << 30
ZERO = Resources()


def cores(n: float, gi: float = 0) -> Resources:
    return Resources(round(n * 1000), round(gi * GI))


def a_ledger(nodes: int = 2, cpu: float = 8, gi: float = 32, max_tasks: int = 4) -> Ledger:
    pool = Pool(
        "p",
        "simulated",
        PlacementStrategy.SPREAD,
        tuple(Node(f"n{i}", "p", cores(cpu, gi), max_tasks, {"zone": "a"}) for i in range(nodes)),
    )
    return Ledger([(pool, "simulated")])


def a_task(
    task_id: str,
    tenant: str = "a",
    cpu: float = 1,
    gi: float = 1,
    *,
    priority: int = 0,
    reservation: str | None = None,
    run_timeout: float | None = None,
) -> Task:
    t = task_builder().id(task_id).build()
    spec = replace(
        t.spec,
        resources=cores(cpu, gi),
        tenant=tenant,
        pool="p",
        priority=priority,
        reservation=reservation,
        timeouts=Timeouts(run=run_timeout),
    )
    return replace(t, spec=spec)


def a_reservation(rid: str, nodes: tuple[str, ...], tenant: str = "a", cpu: float = 2, gi: float = 2) -> Reservation:
    return Reservation(
        rid, tenant, "p", cores(cpu, gi), len(nodes), ReservationState.ACTIVE, T0, T0, nodes=nodes, activated_at=T0
    )


def node_usage(ledger: Ledger, name: str) -> tuple[Resources, Resources, int]:
    (pool,) = ledger.pool_usage()
    (usage,) = [n for n in pool.nodes if n.node == name]
    return usage.allocated, usage.reserved, usage.tasks


def snapshot_node(ledger: Ledger, name: str, tenants: dict[str, Tenant] | None = None) -> tuple[Resources, int]:
    (view,) = [n for n in ledger.snapshot(tenants or {}).nodes if n.name == name]
    return view.allocated, view.tasks


# ------------------------------------------------------------------------------------------------ charge


def test_a_charge_holds_the_task_on_its_node_and_against_its_tenant() -> None:
    ledger = a_ledger()

    charge = ledger.charge(a_task("t1", cpu=2, gi=4), "n0", started_at=100.0)

    assert (charge.node, charge.pool, charge.tenant, charge.resources) == ("n0", "p", "a", cores(2, 4))
    assert node_usage(ledger, "n0") == (cores(2, 4), ZERO, 1)
    assert node_usage(ledger, "n1") == (ZERO, ZERO, 0)
    assert (ledger.usage("a"), ledger.running("a")) == (cores(2, 4), 1)
    assert ledger.live_usage() == {("a", "p"): cores(2, 4)}
    assert ledger.charge_of("t1") == charge


def test_charging_the_same_task_twice_holds_it_once() -> None:
    ledger = a_ledger()
    first = ledger.charge(a_task("t1"), "n0", started_at=100.0)

    again = ledger.charge(a_task("t1"), "n1", started_at=200.0)

    assert again == first
    assert node_usage(ledger, "n0") == (cores(1, 1), ZERO, 1) and node_usage(ledger, "n1")[2] == 0
    assert ledger.running("a") == 1


def test_a_release_undoes_exactly_its_charge() -> None:
    ledger = a_ledger()
    ledger.charge(a_task("t1", cpu=2), "n0", started_at=100.0)
    ledger.charge(a_task("t2", tenant="b", cpu=3), "n0", started_at=100.0)

    released = ledger.release("t1")

    assert released is not None and released.resources == cores(2, 1)
    assert node_usage(ledger, "n0") == (cores(3, 1), ZERO, 1)
    assert (ledger.usage("a"), ledger.running("a")) == (ZERO, 0)
    assert ledger.live_usage() == {("b", "p"): cores(3, 1)}
    assert ledger.release("t1") is None and ledger.release("never") is None
    assert [r.task_id for r in ledger.snapshot({}).running_on["n0"]] == ["t2"]


# ---------------------------------------------------------------------------------------------- snapshot


def test_the_snapshot_shows_nodes_tenants_and_running_tasks_as_the_scheduler_reads_them() -> None:
    ledger = a_ledger()
    ledger.charge(a_task("t1", cpu=2, priority=7, run_timeout=60), "n0", started_at=100.0)
    tenants = {"a": Tenant("a", Quota(millicpu=4000), weight=2.0, borrowing=False), "b": Tenant("b")}

    snap = ledger.snapshot(tenants)

    assert snap.pools["p"].placement is PlacementStrategy.SPREAD
    n0 = next(n for n in snap.nodes if n.name == "n0")
    assert (n0.pool, n0.total, n0.allocated, n0.tasks, n0.max_tasks) == ("p", cores(8, 32), cores(2, 1), 1, 4)
    assert dict(n0.labels) == {"zone": "a"}
    a = snap.tenants["a"]
    assert (a.quota, a.weight, a.usage, a.running, a.borrowing) == (Quota(millicpu=4000), 2.0, cores(2, 1), 1, False)
    assert (snap.tenants["b"].usage, snap.tenants["b"].running) == (ZERO, 0)
    (run,) = snap.running_on["n0"]
    assert (run.task_id, run.tenant, run.priority, run.resources) == ("t1", "a", 7, cores(2, 1))
    assert (run.started_at, run.expected_end, run.reservation, run.terminating) == (100.0, 160.0, None, False)
    assert list(snap.running_on["n1"]) == []


def test_started_moves_the_expected_end_and_keeps_a_stop_in_flight() -> None:
    ledger = a_ledger()
    t = a_task("t1", run_timeout=30)
    ledger.charge(t, "n0", started_at=100.0)
    ledger.terminating("t1")

    ledger.started(t, 150.0)

    (run,) = ledger.snapshot({}).running_on["n0"]
    assert (run.started_at, run.expected_end, run.terminating) == (150.0, 180.0, True)


def test_a_task_without_a_run_timeout_has_no_expected_end() -> None:
    ledger = a_ledger()
    ledger.charge(a_task("t1"), "n0", started_at=100.0)

    (run,) = ledger.snapshot({}).running_on["n0"]
    assert run.expected_end is None


# ----------------------------------------------------------------------------------------- node queues


def test_a_queued_launch_holds_room_and_quota_but_is_not_running_yet() -> None:
    ledger = a_ledger()

    ledger.charge(a_task("q1", cpu=2), "n0", started_at=100.0, queued=True)

    assert snapshot_node(ledger, "n0") == (cores(2, 1), 1)
    assert node_usage(ledger, "n0") == (ZERO, ZERO, 0)  # not allocated on the node yet
    assert (ledger.usage("a"), ledger.running("a")) == (cores(2, 1), 1)
    assert ledger.live_usage() == {}
    assert list(ledger.snapshot({}).running_on["n0"]) == []


def test_a_queued_launch_that_starts_moves_onto_the_node() -> None:
    ledger = a_ledger()
    t = a_task("q1", cpu=2)
    ledger.charge(t, "n0", started_at=100.0, queued=True)

    charge = ledger.charge(t, "n0", started_at=120.0)

    assert not charge.queued
    assert snapshot_node(ledger, "n0") == (cores(2, 1), 1)
    assert node_usage(ledger, "n0") == (cores(2, 1), ZERO, 1)
    assert (ledger.usage("a"), ledger.running("a")) == (cores(2, 1), 1)
    assert ledger.live_usage() == {("a", "p"): cores(2, 1)}
    assert [r.started_at for r in ledger.snapshot({}).running_on["n0"]] == [120.0]


def test_a_queued_launch_taken_back_releases_everything() -> None:
    ledger = a_ledger()
    ledger.charge(a_task("q1"), "n0", started_at=100.0, queued=True)

    ledger.release("q1")

    assert snapshot_node(ledger, "n0") == (ZERO, 0)
    assert (ledger.usage("a"), ledger.running("a")) == (ZERO, 0)


# ---------------------------------------------------------------------------------------- reservations


def test_a_held_reservation_takes_its_slots_room_and_its_tenants_quota() -> None:
    ledger = a_ledger()

    ledger.hold(a_reservation("r1", ("n0", "n0", "n1"), cpu=2, gi=2))

    assert node_usage(ledger, "n0") == (ZERO, cores(4, 4), 0)
    assert node_usage(ledger, "n1") == (ZERO, cores(2, 2), 0)
    assert snapshot_node(ledger, "n0") == (cores(4, 4), 0)
    assert (ledger.usage("a"), ledger.running("a")) == (cores(6, 6), 0)
    view = ledger.snapshot({}).reservations["r1"]
    assert (view.tenant, view.pool, view.resources) == ("a", "p", cores(2, 2))
    assert [(s.node, s.used, s.tasks) for s in view.slots] == [("n0", ZERO, 0), ("n0", ZERO, 0), ("n1", ZERO, 0)]


def test_a_task_inside_a_reservation_uses_its_slot_not_the_node_or_the_quota_again() -> None:
    ledger = a_ledger()
    ledger.hold(a_reservation("r1", ("n0", "n0"), cpu=2, gi=2))

    first = ledger.charge(a_task("t1", cpu=2, gi=1, reservation="r1"), "n0", started_at=100.0)
    second = ledger.charge(a_task("t2", cpu=1, gi=1, reservation="r1"), "n0", started_at=100.0)

    assert (first.reservation, first.slot, second.slot) == ("r1", 0, 1)  # the first slot is full of cpu
    assert snapshot_node(ledger, "n0") == (cores(4, 4), 2)  # the slots' room, two more tasks
    assert (ledger.usage("a"), ledger.running("a")) == (cores(4, 4), 2)
    view = ledger.snapshot({}).reservations["r1"]
    assert [(s.used, s.tasks) for s in view.slots] == [(cores(2, 1), 1), (cores(1, 1), 1)]
    assert {r.reservation for r in ledger.snapshot({}).running_on["n0"]} == {"r1"}

    ledger.release("t1")
    assert [(s.used, s.tasks) for s in ledger.snapshot({}).reservations["r1"].slots] == [(ZERO, 0), (cores(1, 1), 1)]
    assert (ledger.usage("a"), ledger.running("a")) == (cores(4, 4), 1)


def test_a_task_naming_a_reservation_without_a_slot_on_its_node_is_charged_to_the_node() -> None:
    ledger = a_ledger()
    ledger.hold(a_reservation("r1", ("n0",)))

    charge = ledger.charge(a_task("t1", reservation="r1"), "n1", started_at=100.0)

    assert (charge.reservation, charge.slot) == (None, None)
    assert node_usage(ledger, "n1") == (cores(1, 1), ZERO, 1)
    assert ledger.usage("a") == cores(2, 2) + cores(1, 1)


def test_freeing_a_reservation_gives_back_its_room_and_moves_the_tasks_inside_onto_their_nodes() -> None:
    ledger = a_ledger()
    ledger.hold(a_reservation("r1", ("n0", "n1"), cpu=2, gi=2))
    ledger.charge(a_task("t1", cpu=1, gi=1, reservation="r1"), "n1", started_at=100.0)

    moved = ledger.free("r1")

    assert moved == ["t1"]
    assert ledger.reservation("r1") is None and "r1" not in ledger.snapshot({}).reservations
    assert node_usage(ledger, "n0") == (ZERO, ZERO, 0)
    assert node_usage(ledger, "n1") == (cores(1, 1), ZERO, 1)
    assert (ledger.usage("a"), ledger.running("a")) == (cores(1, 1), 1)
    assert [r.reservation for r in ledger.snapshot({}).running_on["n1"]] == [None]

    ledger.release("t1")
    assert node_usage(ledger, "n1") == (ZERO, ZERO, 0)
    assert (ledger.usage("a"), ledger.running("a"), ledger.live_usage()) == (ZERO, 0, {})
    assert ledger.free("r1") == []


# ---------------------------------------------------------------------------------------------- re-check


def test_check_refuses_placements_that_would_over_commit() -> None:
    ledger = a_ledger(nodes=1, cpu=4, gi=8, max_tasks=2)
    strict = Tenant("a", Quota(millicpu=3000), borrowing=False)
    ledger.charge(a_task("t1", cpu=2), "n0", started_at=100.0)

    assert ledger.check(a_task("t2", cpu=1), "n0", strict, None) is None
    assert ledger.check(a_task("t2", cpu=1), "nowhere", strict, None) == "node nowhere is not configured"
    assert "no room" in (ledger.check(a_task("t2", cpu=3), "n0", None, None) or "")
    assert "exceed its quota" in (ledger.check(a_task("t2", cpu=2), "n0", strict, None) or "")
    assert ledger.check(a_task("t2", cpu=2), "n0", replace(strict, borrowing=True), None) is None
    capped = Tenant("a", Quota(max_running=1))
    assert "limit of 1 tasks" in (ledger.check(a_task("t2", cpu=1), "n0", capped, None) or "")

    ledger.charge(a_task("t3", tenant="b", cpu=1), "n0", started_at=100.0)
    assert "limit of 2 tasks" in (ledger.check(a_task("t2", cpu=0), "n0", None, None) or "")


def test_check_measures_a_task_inside_a_reservation_against_its_slot() -> None:
    ledger = a_ledger(nodes=2, cpu=4, gi=8)
    ledger.hold(a_reservation("r1", ("n0",), cpu=4, gi=4))  # n0 is full
    ledger.charge(a_task("t1", cpu=3, reservation="r1"), "n0", started_at=100.0)

    assert ledger.check(a_task("t2", cpu=1, reservation="r1"), "n0", None, "r1") is None
    assert ledger.check(a_task("t2", cpu=2, reservation="r1"), "n0", None, "r1") is not None
    assert ledger.check(a_task("t2", cpu=1, reservation="r1"), "n1", None, "r1") is not None
    assert ledger.check(a_task("t2", cpu=1, reservation="r9"), "n0", None, "r9") is not None


# ------------------------------------------------------------------------------------- any sequence


ops = st.lists(
    st.tuples(
        st.sampled_from(["charge", "queue", "start", "release", "hold", "free", "terminating"]),
        st.integers(0, 7),  # task or reservation number
        st.sampled_from(["a", "b"]),
        st.integers(0, 2),  # node
        st.sampled_from([0.5, 1.0, 2.0]),  # cpu
        st.booleans(),  # inside reservation r<number % 3>
    ),
    max_size=40,
)


@settings(max_examples=150, deadline=None)
@given(ops)
def test_any_sequence_of_writes_keeps_the_books_balanced(
    sequence: list[tuple[str, int, str, int, float, bool]],
) -> None:
    ledger = a_ledger(nodes=3, cpu=64, gi=256, max_tasks=1000)
    tasks: dict[str, Task] = {}
    for op, number, tenant, node_i, cpu, inside in sequence:
        node = f"n{node_i}"
        rid = f"r{number % 3}"
        if op in ("charge", "queue", "start"):
            t = tasks.get(f"t{number}") or a_task(
                f"t{number}", tenant, cpu, 1, reservation=rid if inside and op != "queue" else None
            )
            tasks[t.id] = t
            old = ledger.charge_of(t.id)
            ledger.charge(t, old.node if old else node, started_at=1.0, queued=op == "queue")
        elif op == "release":
            ledger.release(f"t{number}")
        elif op == "hold" and ledger.reservation(rid) is None:
            ledger.hold(a_reservation(rid, (node, f"n{(node_i + 1) % 3}"), tenant=tenant, cpu=cpu, gi=1))
        elif op == "free":
            ledger.free(rid)
        elif op == "terminating":
            ledger.terminating(f"t{number}")
        _assert_balanced(ledger)

    for task_id in list(tasks):
        ledger.release(task_id)
    for rid in ("r0", "r1", "r2"):
        ledger.free(rid)
    snap = ledger.snapshot({"a": Tenant("a"), "b": Tenant("b")})
    assert all((n.allocated, n.tasks) == (ZERO, 0) for n in snap.nodes)
    assert all((t.usage, t.running) == (ZERO, 0) for t in snap.tenants.values())
    assert ledger.live_usage() == {}


def _assert_balanced(ledger: Ledger) -> None:
    """Nodes, tenants and slots agree with the sum of the charges and held reservations."""
    charges = [c for c in (ledger.charge_of(f"t{i}") for i in range(8)) if c is not None]
    held = [r for r in (ledger.reservation(f"r{i}") for i in range(3)) if r is not None]
    snap = ledger.snapshot({"a": Tenant("a"), "b": Tenant("b")})
    for view in snap.nodes:
        expected = ZERO
        for c in charges:
            if c.node == view.name and c.reservation is None:
                expected = expected + c.resources
        for r in held:
            expected = expected + r.resources.scale(r.nodes.count(view.name))
        assert view.allocated == expected, view.name
        assert view.tasks == sum(1 for c in charges if c.node == view.name)
        running = {r.task_id for r in snap.running_on[view.name]}
        assert running == {c.task_id for c in charges if c.node == view.name and not c.queued}
    for name, tenant in snap.tenants.items():
        usage = ZERO
        for c in charges:
            if c.tenant == name and c.reservation is None:
                usage = usage + c.resources
        for r in held:
            if r.tenant == name:
                usage = usage + r.total
        assert tenant.usage == usage, name
        assert tenant.running == sum(1 for c in charges if c.tenant == name)
    for rid, res in snap.reservations.items():
        for i, slot in enumerate(res.slots):
            inside = [c for c in charges if c.reservation == rid and c.slot == i]
            used = ZERO
            for c in inside:
                used = used + c.resources
            assert (slot.used, slot.tasks) == (used, len(inside))
            assert slot.used.fits_in(res.resources)
