"""Step 1 of the cycle: priority first, then weighted dominant-resource share across tenants, FIFO within."""

from __future__ import annotations

from taskplane.scheduler import Policy
from tests.scheduler.harness import Harness, cluster, outcome, task, tenant


def test_a_higher_priority_task_goes_first_whatever_its_arrival_or_tenant() -> None:
    h = Harness(cluster().pool("p", nodes=1, cpu="2"), tenant("a"), tenant("b"))
    low, high = h.submit(task("a").cpu("2").priority(0), task("b").cpu("2").priority(5))

    result = outcome(h.step())

    assert list(result.placed) == [high]
    assert result.blocked == {low: "no_capacity"}


def test_at_equal_priority_tenants_share_by_weight() -> None:
    h = Harness(cluster().pool("p", nodes=1, cpu="12", memory="48Gi"), tenant("a").weight(1), tenant("b").weight(2))
    h.submit(*[task("a").cpu("1") for _ in range(12)])
    h.submit(*[task("b").cpu("1") for _ in range(12)])

    h.step()

    assert (len(h.running_ids("a")), len(h.running_ids("b"))) == (4, 8)


def test_fair_share_compares_each_tenants_dominant_resource() -> None:
    # a holds half the memory but little cpu; b holds a quarter of the cpu: a's dominant share is larger.
    h = Harness(cluster().pool("p", nodes=1, cpu="8", memory="32Gi", max_tasks=3), tenant("a"), tenant("b"))
    h.running(task("a").cpu("1").memory("16Gi"), on="p-0")
    h.running(task("b").cpu("2").memory("1Gi"), on="p-0")
    first, second = h.submit(task("a").cpu("1"), task("b").cpu("1"))

    result = outcome(h.step())

    assert list(result.placed) == [second]
    assert result.blocked == {first: "task_limit"}


def test_a_heavier_weight_lets_a_tenant_hold_more_before_others_go_first() -> None:
    h = Harness(cluster().pool("p", nodes=1, cpu="8", max_tasks=5), tenant("a").weight(4), tenant("b"))
    for _ in range(3):
        h.running(task("a").cpu("1"), on="p-0")
    h.running(task("b").cpu("1"), on="p-0")
    b_task, a_task = h.submit(task("b").cpu("1"), task("a").cpu("1"))

    result = outcome(h.step())

    assert list(result.placed) == [a_task]  # a: 3/8 / 4 < b: 1/8 / 1
    assert result.blocked == {b_task: "task_limit"}


def test_within_a_tenant_tasks_of_equal_priority_run_in_arrival_order() -> None:
    h = Harness(cluster().pool("p", nodes=1, cpu="2"), tenant("a"))
    first, second, third = h.submit(task("a"), task("a"), task("a"))

    result = outcome(h.step())

    assert list(result.placed) == [first, second]
    assert result.blocked == {third: "no_capacity"}


def test_without_fair_share_equal_priorities_go_in_arrival_order_across_tenants() -> None:
    h = Harness(
        cluster().pool("p", nodes=1, cpu="3", max_tasks=10),
        tenant("a"),
        tenant("b").weight(100),
        policy=Policy(fair_share=False),
    )
    a1, a2, a3 = h.submit(task("a"), task("a"), task("a"))
    (b1,) = h.submit(task("b"))

    result = outcome(h.step())

    assert list(result.placed) == [a1, a2, a3]
    assert result.blocked == {b1: "no_capacity"}
