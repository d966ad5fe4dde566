"""Reservations: admitted as a gang (every slot at once or none), then used by the tasks that name them."""

from __future__ import annotations

from taskplane.scheduler import Policy
from tests.scheduler.harness import Harness, cluster, outcome, reservation, task, tenant


def test_a_reservation_is_admitted_with_all_its_slots_at_once() -> None:
    h = Harness(cluster().pool("p", nodes=3, cpu="4"), tenant("a"))
    (rid,) = h.submit(reservation("a").slots(3).cpu("4"))

    plan = h.step()

    assert [(a.id, sorted(a.nodes)) for a in plan.admissions] == [(rid, ["p-0", "p-1", "p-2"])]
    assert h.usage("a").millicpu == 12_000


def test_a_reservation_that_does_not_fit_whole_holds_nothing() -> None:
    h = Harness(cluster().pool("p", nodes=3, cpu="4"), tenant("a"), tenant("b"))
    h.running(task("b").cpu("1"), on="p-2")
    rid, after = h.submit(reservation("a").slots(3).cpu("4"), task("b").cpu("4"))

    plan = h.step()

    assert not plan.admissions
    assert plan.blocked[rid].code == "no_capacity"
    assert "2 of 3 slots fit now" in plan.blocked[rid].message
    assert [p.id for p in plan.placements] == [after]  # the two free nodes were not held


def test_several_slots_may_share_a_node() -> None:
    h = Harness(cluster().pool("p", nodes=2, cpu="8"), tenant("a"))
    h.running(task("a").cpu("4"), on="p-1")
    h.submit(reservation("a").slots(3).cpu("4"))

    (admission,) = h.step().admissions

    assert sorted(admission.nodes) == ["p-0", "p-0", "p-1"]


def test_a_reservation_counts_against_its_tenants_quota_and_never_borrows() -> None:
    h = Harness(cluster().pool("p", nodes=4, cpu="4"), tenant("a").quota(cpu="4"))
    (rid,) = h.submit(reservation("a").slots(2).cpu("4"))

    plan = h.step()

    assert not plan.admissions
    assert plan.blocked[rid].code == "quota_exhausted"


def test_a_reservation_slot_larger_than_any_node_is_parked() -> None:
    h = Harness(cluster().pool("p", cpu="4"), tenant("a"))
    (rid,) = h.submit(reservation("a").slots(1).cpu("8"))

    assert outcome(h.step()).parked == {rid: "never_fits"}


def test_tasks_inside_a_reservation_use_its_slots_not_the_quota_or_the_nodes_room() -> None:
    h = Harness(cluster().pool("p", cpu="4"), tenant("a").quota(cpu="4").no_borrowing(), tenant("b"))
    rid = h.reserved(reservation("a").cpu("4").memory("4Gi").named("r1"), nodes=["p-0"])  # the node, a's quota
    inside = h.submit(task("a").cpu("2").reservation(rid), task("a").cpu("2").reservation(rid))
    (outside,) = h.submit(task("a").cpu("1"))

    plan = h.step()

    assert [(p.id, p.node, p.reservation) for p in plan.placements] == [(t, "p-0", rid) for t in inside]
    assert plan.blocked[outside].code == "quota_exhausted"
    assert h.usage("a").millicpu == 4000  # the reservation, not the tasks inside it


def test_a_full_reservation_blocks_its_next_task() -> None:
    h = Harness(cluster().pool("p", cpu="8"), tenant("a"))
    rid = h.reserved(reservation("a").cpu("4").named("r1"), nodes=["p-0"])
    h.running(task("a").cpu("3").reservation(rid), on="p-0")
    (waiting,) = h.submit(task("a").cpu("2").reservation(rid))

    plan = h.step()

    assert plan.blocked[waiting].code == "reservation_full"
    assert not plan.placements  # 4 cpu are free on the node, but not in the reservation


def test_a_task_naming_a_reservation_not_yet_active_waits_for_it() -> None:
    h = Harness(cluster().pool("p", cpu="8"), tenant("a"))
    (waiting,) = h.submit(task("a").reservation("r-later"))

    assert outcome(h.step()).blocked == {waiting: "waiting_for_reservation"}


def test_a_reservation_admitted_in_one_cycle_is_used_in_the_next() -> None:
    h = Harness(cluster().pool("p", nodes=2, cpu="4"), tenant("a"))
    (rid,) = h.submit(reservation("a").slots(2).cpu("4").named("r1"))
    (inside,) = h.submit(task("a").cpu("4").reservation(rid))

    first = outcome(h.step())
    second = outcome(h.step())

    assert first.blocked == {inside: "waiting_for_reservation"}
    assert second.placed == {inside: "p-0"} or second.placed == {inside: "p-1"}


def test_tasks_inside_a_reservation_run_even_when_their_pool_is_congested() -> None:
    h = Harness(
        cluster().pool("p", nodes=2, cpu="4"),
        tenant("a"),
        tenant("b"),
        policy=Policy(max_blocked_per_pool=2, preemption=False),
    )
    rid = h.reserved(reservation("a").cpu("4").named("r1"), nodes=["p-0"])
    h.running(task("b").cpu("4"), on="p-1")
    h.submit(*[task("b").cpu("2").priority(1) for _ in range(3)])
    (inside,) = h.submit(task("a").cpu("2").reservation(rid))

    assert outcome(h.step()).placed == {inside: "p-0"}
