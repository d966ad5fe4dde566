"""Step 3 of the cycle: feasibility (pool, selector, resources, task limit) and the node the strategy picks;
and the cycle's own limits."""

from __future__ import annotations

from collections.abc import Iterator

from taskplane.scheduler import Candidate, Policy, schedule
from tests.scheduler.harness import Harness, cluster, outcome, task, tenant


def test_tasks_fill_the_pool_in_order_and_the_first_that_does_not_fit_says_what_is_short() -> None:
    h = Harness(cluster().pool("p", cpu="2", memory="8Gi"), tenant("a"))
    first, second, third = h.submit(task("a"), task("a"), task("a"))

    plan = h.step()

    assert [p.id for p in plan.placements] == [first, second]
    reason = plan.blocked[third]
    assert (reason.code, reason.resource) == ("no_capacity", "cpu")
    assert reason.message == "no room in pool p: cpu: requests 1, free 0 of 2 on p-0"


def test_a_task_larger_than_any_node_is_parked_and_does_not_hold_up_its_queue() -> None:
    h = Harness(cluster().pool("p", nodes=2, cpu="8"), tenant("a"))
    huge, small = h.submit(task("a").cpu("64"), task("a").cpu("1"))

    result = outcome(h.step())

    assert result.parked == {huge: "never_fits"}
    assert list(result.placed) == [small]
    assert huge not in h.pending  # parked tasks leave the queue


def test_a_task_naming_an_unknown_pool_is_parked() -> None:
    h = Harness(cluster().pool("p"), tenant("a"))
    lost, fine = h.submit(task("a").pool("nowhere"), task("a"))

    result = outcome(h.step())

    assert result.parked == {lost: "pool_not_found"}
    assert list(result.placed) == [fine]


def test_a_pool_without_nodes_blocks_its_tasks() -> None:
    h = Harness(cluster().pool("p").empty_pool("idle"), tenant("a"))
    (waiting,) = h.submit(task("a").pool("idle"))

    assert outcome(h.step()).blocked == {waiting: "pool_empty"}


def test_a_node_selector_picks_nodes_by_label() -> None:
    h = Harness(
        cluster().pool("p", nodes=2, labels={"zone": "a"}).pool("p", nodes=2, labels={"zone": "b"}),
        tenant("a"),
    )
    (picky,) = h.submit(task("a").selector(zone="b"))

    assert outcome(h.step()).placed[picky] in {"p-2", "p-3"}


def test_a_selector_no_node_matches_is_parked_as_never_fits() -> None:
    h = Harness(cluster().pool("p", labels={"zone": "a"}), tenant("a"))
    (picky,) = h.submit(task("a").selector(zone="c"))

    plan = h.step()

    assert plan.parked[picky].code == "never_fits"
    assert "labels {'zone': 'c'}" in plan.parked[picky].message


def test_matching_nodes_full_blocks_a_selector_task_even_when_others_have_room() -> None:
    h = Harness(
        cluster().pool("p", cpu="2", labels={"zone": "a"}).pool("p", cpu="2", labels={"zone": "b"}),
        tenant("a"),
    )
    h.running(task("a").cpu("2"), on="p-1")
    (picky,) = h.submit(task("a").selector(zone="b"))

    assert outcome(h.step()).blocked == {picky: "no_capacity"}


def test_gpus_are_a_schedulable_quantity() -> None:
    h = Harness(cluster().pool("p", nodes=2, cpu="8").pool("p", nodes=1, cpu="8", gpu=2), tenant("a"))
    one, two, three, greedy = h.submit(task("a").gpu(1), task("a").gpu(1), task("a").gpu(1), task("a").gpu(4))

    plan = h.step()

    assert {p.id: p.node for p in plan.placements} == {one: "p-2", two: "p-2"}
    assert (plan.blocked[three].code, plan.blocked[three].resource) == ("no_capacity", "gpu")
    assert plan.parked[greedy].code == "never_fits"


def test_extended_resources_are_a_schedulable_quantity() -> None:
    h = Harness(
        cluster().pool("p", cpu="8").pool("p", cpu="8", extended={"example.com/fpga": 1}),
        tenant("a"),
    )
    first, second = h.submit(task("a").extended("example.com/fpga", 1), task("a").extended("example.com/fpga", 1))

    plan = h.step()

    assert [(p.id, p.node) for p in plan.placements] == [(first, "p-1")]
    assert (plan.blocked[second].code, plan.blocked[second].resource) == ("no_capacity", "example.com/fpga")


def test_binpack_puts_a_task_on_the_most_allocated_node_that_fits() -> None:
    h = Harness(cluster().pool("p", nodes=3, cpu="8"), tenant("a"))
    h.running(task("a").cpu("2"), on="p-0")
    h.running(task("a").cpu("5"), on="p-1")
    h.running(task("a").cpu("7.5"), on="p-2")
    (new,) = h.submit(task("a").cpu("1"))

    assert outcome(h.step()).placed == {new: "p-1"}


def test_spread_puts_a_task_on_the_least_allocated_node() -> None:
    h = Harness(cluster().pool("p", nodes=3, cpu="8", placement="spread"), tenant("a"))
    h.running(task("a").cpu("2"), on="p-0")
    h.running(task("a").cpu("5"), on="p-1")
    (new,) = h.submit(task("a").cpu("1"))

    assert outcome(h.step()).placed == {new: "p-2"}


def test_spread_places_a_batch_round_robin() -> None:
    h = Harness(cluster().pool("p", nodes=3, cpu="8", placement="spread"), tenant("a"))
    h.submit(*[task("a").cpu("1") for _ in range(6)])

    nodes = [p.node for p in h.step().placements]

    assert sorted(nodes) == ["p-0", "p-0", "p-1", "p-1", "p-2", "p-2"]


def test_first_fit_takes_the_first_node_in_order_whatever_the_strategy() -> None:
    h = Harness(cluster().pool("p", nodes=3, cpu="8"), tenant("a"), policy=Policy(first_fit=True))
    h.running(task("a").cpu("7"), on="p-0")
    h.running(task("a").cpu("5"), on="p-2")
    (new,) = h.submit(task("a").cpu("2"))

    assert outcome(h.step()).placed == {new: "p-1"}  # binpack would pick p-2


def test_a_node_runs_at_most_its_task_limit_even_best_effort_tasks() -> None:
    h = Harness(cluster().pool("p", max_tasks=3), tenant("a"))
    ids = h.submit(*[task("a").best_effort() for _ in range(5)])

    plan = h.step()

    assert [p.id for p in plan.placements] == ids[:3]
    assert plan.blocked[ids[3]].code == "task_limit"
    assert plan.blocked[ids[4]].code == "task_limit"


def test_a_cycle_stops_at_max_placements() -> None:
    h = Harness(cluster().pool("p", cpu="16"), tenant("a"), policy=Policy(max_placements=3))
    ids = h.submit(*[task("a") for _ in range(5)])

    plan = h.step()

    assert [p.id for p in plan.placements] == ids[:3]
    assert not plan.blocked and not plan.parked


def test_a_pool_closes_for_the_cycle_after_max_blocked_per_pool() -> None:
    h = Harness(
        cluster().pool("p", cpu="4").pool("q", cpu="4"),
        *[tenant(n) for n in "abcde"],
        policy=Policy(max_blocked_per_pool=2, preemption=False),
    )
    h.running(task("e").cpu("3").pool("p"), on="p-0")
    blocked = h.submit(task("a").cpu("2").pool("p").priority(3), task("b").cpu("2").pool("p").priority(2))
    (unseen,) = h.submit(task("c").cpu("1").pool("p").priority(1).timeout(1))
    (elsewhere,) = h.submit(task("d").cpu("1").pool("q"))

    result = outcome(h.step())

    assert set(result.blocked) == set(blocked)
    assert unseen not in result.placed and unseen not in result.blocked
    assert result.placed == {elsewhere: "q-0"}


def test_a_smaller_task_still_fits_after_a_larger_one_found_no_room() -> None:
    h = Harness(cluster().pool("p", nodes=3, cpu="4"), tenant("a"), tenant("b"))
    h.running(task("b").cpu("3").priority(9), on="p-0")
    h.running(task("b").cpu("2").priority(9), on="p-1")
    h.running(task("b").cpu("2").priority(9), on="p-2")
    big, small = h.submit(task("a").cpu("3"), task("a").cpu("2"))

    result = outcome(h.step())

    assert result.blocked == {big: "no_capacity"}
    assert result.placed == {small: "p-1"}  # p-2, the roomiest, is held for the blocked head


def test_a_cycle_reads_its_queues_lazily() -> None:
    h = Harness(cluster().pool("p", cpu="2"), tenant("a"), policy=Policy(max_blocked_per_pool=4))
    consumed: list[int] = []

    def endless() -> Iterator[Candidate]:
        for i in range(1_000_000):
            consumed.append(i)
            yield Candidate(f"t{i}", "a", "p", 0, i, task().resources_)

    plan = schedule(h.snapshot(), [endless()], h.policy, h.now)

    assert len(plan.placements) == 2 and len(plan.blocked) == 4
    assert len(consumed) <= 2 + 4 + 1
