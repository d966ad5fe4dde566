"""Step 2 of the cycle: tenant limits, nominal quota, borrowing idle capacity and reclaiming it."""

from __future__ import annotations

from taskplane.scheduler import Policy
from tests.scheduler.harness import Harness, cluster, outcome, task, tenant


def test_a_task_beyond_a_non_borrowing_quota_waits_and_says_by_how_much() -> None:
    h = Harness(cluster().pool("p", memory="64Gi"), tenant("a").quota(memory="4Gi").no_borrowing())
    h.running(task("a").memory("3.5Gi"), on="p-0")
    (waiting,) = h.submit(task("a").memory("1Gi"))

    plan = h.step()

    reason = plan.blocked[waiting]
    assert (reason.code, reason.resource) == ("quota_exhausted", "memory")
    assert reason.message.startswith("quota_exhausted: memory 3.5Gi of 4Gi used")
    assert not plan.placements


def test_a_quota_blocked_head_holds_back_the_rest_of_its_tenants_queue_but_not_other_tenants() -> None:
    h = Harness(cluster().pool("p", cpu="16"), tenant("a").quota(cpu="2").no_borrowing(), tenant("b"))
    h.running(task("a").cpu("1"), on="p-0")
    big, small = h.submit(task("a").cpu("2"), task("a").cpu("1"))
    (other,) = h.submit(task("b").cpu("4"))

    result = outcome(h.step())

    assert result.blocked == {big: "quota_exhausted"}
    assert small not in result.placed and small not in result.blocked
    assert list(result.placed) == [other]


def test_a_task_larger_than_the_whole_quota_is_parked() -> None:
    h = Harness(cluster().pool("p", cpu="16"), tenant("a").quota(cpu="2").no_borrowing())
    huge, fits = h.submit(task("a").cpu("3"), task("a").cpu("1"))

    plan = h.step()

    assert plan.parked[huge].code == "quota_exhausted"
    assert [p.id for p in plan.placements] == [fits]


def test_max_running_is_a_hard_limit_even_for_a_borrowing_tenant() -> None:
    h = Harness(cluster().pool("p", cpu="16"), tenant("a").quota(cpu="1", max_running=2))
    h.running(task("a"), on="p-0")
    second, third = h.submit(task("a"), task("a"))

    plan = h.step()

    assert [p.id for p in plan.placements] == [second]
    assert (plan.blocked[third].code, plan.blocked[third].resource) == ("quota_exhausted", "tasks")


def test_a_borrowing_tenant_runs_beyond_its_quota_on_idle_capacity_and_the_excess_is_marked_borrowed() -> None:
    h = Harness(cluster().pool("p", cpu="8"), tenant("a").quota(cpu="2"))
    ids = h.submit(*[task("a").cpu("1") for _ in range(4)])

    plan = h.step()

    assert [(p.id, p.borrowed) for p in plan.placements] == [
        (ids[0], False),
        (ids[1], False),
        (ids[2], True),
        (ids[3], True),
    ]


def test_a_non_borrowing_tenant_stops_at_its_quota_on_idle_capacity() -> None:
    h = Harness(cluster().pool("p", cpu="8"), tenant("a").quota(cpu="2").no_borrowing())
    ids = h.submit(*[task("a").cpu("1") for _ in range(4)])

    result = outcome(h.step())

    assert list(result.placed) == ids[:2]
    assert result.blocked == {ids[2]: "quota_exhausted"}


def test_a_tenant_under_its_quota_reclaims_borrowed_room_even_from_higher_priority_work() -> None:
    h = Harness(cluster().pool("p", cpu="8"), tenant("a").quota(cpu="4"), tenant("b").quota(cpu="4"))
    borrowed = [h.running(task("b").cpu("1").priority(9), on="p-0", started_at=900.0 + i) for i in range(8)]
    (owner,) = h.submit(task("a").cpu("2").priority(0))

    plan = h.step()

    assert {(p.reason, p.for_id, p.node) for p in plan.preemptions} == {("reclaim", owner, "p-0")}
    assert len(plan.preemptions) == 2
    assert {p.victim for p in plan.preemptions} <= set(borrowed[4:])  # the newest go first
    assert plan.blocked[owner].code == "preempting"

    h.advance(1)  # the victims stop
    assert [p.id for p in h.step().placements] == [owner]


def test_reclaim_takes_only_borrowed_room() -> None:
    # b borrows 2 of its 6 cpu; a (within its quota) asks for 4: taking 4 from b would cut into b's own quota.
    h = Harness(cluster().pool("p", cpu="6"), tenant("a").quota(cpu="4"), tenant("b").quota(cpu="4"))
    for i in range(6):
        h.running(task("b").cpu("1").priority(9), on="p-0", started_at=900.0 + i)
    (owner,) = h.submit(task("a").cpu("4"))

    plan = h.step()

    assert not plan.preemptions
    assert plan.blocked[owner].code == "no_capacity"


def test_a_tenant_over_its_own_quota_does_not_reclaim() -> None:
    h = Harness(cluster().pool("p", cpu="8"), tenant("a").quota(cpu="1"), tenant("b").quota(cpu="4"))
    for _ in range(8):
        h.running(task("b").cpu("1").priority(9), on="p-0")
    (head,) = h.submit(task("a").cpu("2"))

    plan = h.step()

    assert not plan.preemptions
    assert plan.blocked[head].code == "no_capacity"


def test_work_within_its_tenants_quota_is_never_reclaimed() -> None:
    h = Harness(cluster().pool("p", cpu="8"), tenant("a").quota(cpu="4"), tenant("b").quota(cpu="8"))
    for _ in range(8):
        h.running(task("b").cpu("1").priority(9), on="p-0")
    (head,) = h.submit(task("a").cpu("2"))

    plan = h.step()

    assert not plan.preemptions
    assert plan.blocked[head].code == "no_capacity"


def test_a_task_that_must_borrow_does_not_preempt_another_tenants_work_within_its_quota() -> None:
    # Otherwise b, back under its quota, reclaims the room from a's borrowed task, which preempts b again...
    h = Harness(cluster().pool("p", cpu="4"), tenant("a").quota(cpu="1"), tenant("b").quota(cpu="4"))
    h.running(task("b").cpu("4").priority(0).named("b-work"), on="p-0")
    (head,) = h.submit(task("a").cpu("4").priority(5))

    plans = [h.step(), *h.cycles(6)]

    assert not [p for plan in plans for p in plan.preemptions]
    assert plans[0].blocked[head].code == "no_capacity"


def test_unknown_tenants_wait_with_a_reason() -> None:
    h = Harness(cluster().pool("p"), tenant("a"), policy=Policy())
    (ghost,) = h.submit(task("nobody"))

    assert h.step().blocked[ghost].code == "tenant_not_found"


def test_reclaimed_room_goes_to_the_tenant_that_reclaimed_it() -> None:
    # a borrowed b's idle quota at a higher priority; b's own work takes it back and keeps it.
    h = Harness(cluster().pool("p", cpu="4"), tenant("a").quota(cpu="1"), tenant("b").quota(cpu="4"))
    borrowed = h.running(task("a").cpu("4").priority(5), on="p-0")
    (owner,) = h.submit(task("b").cpu("4").priority(0))

    first = h.step()
    later = h.cycles(4)

    assert [(p.victim, p.reason) for p in first.preemptions] == [(borrowed, "reclaim")]
    assert [p.id for p in later[0].placements] == [owner]
    assert not [p for plan in later for p in plan.preemptions]
    assert h.running_ids("b") == [owner] and borrowed in h.pending
