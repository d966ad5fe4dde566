"""Step 4 of the cycle: preempt lower-priority work, only where it makes the head fit, fewest victims."""

from __future__ import annotations

from taskplane.scheduler import Policy
from tests.scheduler.harness import Harness, cluster, outcome, reservation, task, tenant


def test_a_blocked_head_preempts_lower_priority_work_to_make_room() -> None:
    h = Harness(cluster().pool("p", cpu="4"), tenant("a"), tenant("b"))
    low = h.running(task("b").cpu("2").priority(0), on="p-0")
    h.running(task("b").cpu("2").priority(3), on="p-0")
    (head,) = h.submit(task("a").cpu("2").priority(5))

    plan = h.step()

    assert [(p.victim, p.for_id, p.node, p.reason) for p in plan.preemptions] == [(low, head, "p-0", "priority")]
    assert plan.blocked[head].code == "preempting"


def test_work_of_equal_or_higher_priority_is_never_preempted_for_priority() -> None:
    h = Harness(cluster().pool("p", cpu="4"), tenant("a"), tenant("b"))
    h.running(task("b").cpu("2").priority(5), on="p-0")
    h.running(task("b").cpu("2").priority(7), on="p-0")
    (head,) = h.submit(task("a").cpu("2").priority(5))

    plan = h.step()

    assert not plan.preemptions
    assert plan.blocked[head].code == "no_capacity"


def test_nothing_is_preempted_when_the_victims_would_not_make_room() -> None:
    h = Harness(cluster().pool("p", cpu="4"), tenant("a"), tenant("b"))
    h.running(task("b").cpu("2").priority(0), on="p-0")
    h.running(task("b").cpu("2").priority(10), on="p-0")
    (head,) = h.submit(task("a").cpu("4").priority(5))

    plan = h.step()

    assert not plan.preemptions
    assert plan.blocked[head].code == "no_capacity"


def test_the_node_needing_the_fewest_victims_is_chosen() -> None:
    h = Harness(cluster().pool("p", nodes=2, cpu="4"), tenant("a"), tenant("b"))
    for _ in range(4):
        h.running(task("b").cpu("1").priority(0), on="p-0")
    single = h.running(task("b").cpu("4").priority(1), on="p-1")
    (head,) = h.submit(task("a").cpu("4").priority(5))

    plan = h.step()

    assert [(p.victim, p.node, p.for_id) for p in plan.preemptions] == [(single, "p-1", head)]


def test_a_victim_that_does_not_help_the_head_fit_is_spared() -> None:
    h = Harness(cluster().pool("p", cpu="4"), tenant("a"), tenant("b"))
    h.running(task("b").cpu("1").priority(0), on="p-0")
    larger = h.running(task("b").cpu("3").priority(1), on="p-0")
    (head,) = h.submit(task("a").cpu("3").priority(5))

    plan = h.step()

    assert [(p.victim, p.for_id) for p in plan.preemptions] == [(larger, head)]


def test_between_equally_many_victims_the_lower_priority_one_goes() -> None:
    h = Harness(cluster().pool("p", cpu="4"), tenant("a"), tenant("b"))
    h.running(task("b").cpu("2").priority(2), on="p-0")
    lowest = h.running(task("b").cpu("2").priority(1), on="p-0")
    h.submit(task("a").cpu("2").priority(5))

    assert [p.victim for p in h.step().preemptions] == [lowest]


def test_while_victims_stop_the_head_waits_and_no_second_round_of_victims_is_taken() -> None:
    h = Harness(cluster().pool("p", cpu="4"), tenant("a"), tenant("b"))
    for priority in range(4):
        h.running(task("b").cpu("1").priority(priority), on="p-0")
    (head,) = h.submit(task("a").cpu("2").priority(5))
    first = h.step()
    assert len(first.preemptions) == 2

    again = h.step()  # the victims have not stopped yet

    assert not again.preemptions
    assert again.blocked[head].code == "preempting"
    assert "waiting for 2 preempted task(s)" in again.blocked[head].message

    h.stop_terminating()
    assert [p.id for p in h.step().placements] == [head]


def test_the_room_of_stopping_victims_is_not_given_to_anyone_else() -> None:
    h = Harness(cluster().pool("p", cpu="4"), tenant("a"), tenant("b"), tenant("c"))
    h.running(task("b").cpu("4").priority(0), on="p-0")
    (head,) = h.submit(task("a").cpu("4").priority(5))
    h.step()
    (other,) = h.submit(task("c").cpu("1").priority(0).timeout(1))

    result = outcome(h.step())

    assert result.blocked[head] == "preempting" and other not in result.placed


def test_no_preemption_when_the_policy_turns_it_off() -> None:
    h = Harness(cluster().pool("p", cpu="4"), tenant("a"), tenant("b"), policy=Policy(preemption=False))
    h.running(task("b").cpu("4").priority(0), on="p-0")
    (head,) = h.submit(task("a").cpu("4").priority(5))

    plan = h.step()

    assert not plan.preemptions and plan.blocked[head].code == "no_capacity"


def test_tasks_inside_a_reservation_are_never_preempted() -> None:
    h = Harness(cluster().pool("p", cpu="4"), tenant("a"), tenant("b"))
    rid = h.reserved(reservation("b").cpu("4").named("rb"), nodes=["p-0"])
    h.running(task("b").cpu("4").priority(0).reservation(rid), on="p-0")
    (head,) = h.submit(task("a").cpu("4").priority(5))

    plan = h.step()

    assert not plan.preemptions and plan.blocked[head].code == "no_capacity"


def test_preemption_respects_the_heads_node_selector() -> None:
    h = Harness(
        cluster().pool("p", cpu="4", labels={"zone": "a"}).pool("p", cpu="4", labels={"zone": "b"}),
        tenant("a"),
        tenant("b"),
    )
    h.running(task("b").cpu("4").priority(0), on="p-0")
    on_b = h.running(task("b").cpu("4").priority(1), on="p-1")
    h.submit(task("a").cpu("4").priority(5).selector(zone="b"))

    assert [(p.victim, p.node) for p in h.step().preemptions] == [(on_b, "p-1")]


def test_at_most_max_preemptions_heads_preempt_per_cycle() -> None:
    h = Harness(
        cluster().pool("p", cpu="4").pool("q", cpu="4"), tenant("a"), tenant("b"), policy=Policy(max_preemptions=1)
    )
    h.running(task("b").cpu("4").priority(0).pool("p"), on="p-0")
    h.running(task("b").cpu("4").priority(0).pool("q"), on="q-0")
    first, second = h.submit(task("a").cpu("4").priority(6).pool("p"), task("a").cpu("4").priority(5).pool("q"))

    result = outcome(h.step())

    assert {p.for_id for p in h.history[-1].plan.preemptions} == {first}
    assert result.blocked == {first: "preempting", second: "no_capacity"}


def test_a_preempted_victim_gives_its_room_to_the_head_once_it_stops() -> None:
    h = Harness(cluster().pool("p", cpu="4"), tenant("a"), tenant("b"))
    victim = h.running(task("b").cpu("4").priority(0), on="p-0")
    (head,) = h.submit(task("a").cpu("4").priority(5))

    h.step()
    stopped = h.advance(1)
    placed = h.step().placements

    assert stopped == [victim]
    assert [(p.id, p.node) for p in placed] == [(head, "p-0")]


def test_a_stopping_task_inside_a_reservation_frees_no_room_outside_it() -> None:
    h = Harness(cluster().pool("p", cpu="4"), tenant("a"), tenant("b"))
    rid = h.reserved(reservation("b").cpu("2").named("rb"), nodes=["p-0"])
    inside = h.running(task("b").cpu("2").reservation(rid), on="p-0")
    h.running_tasks[inside].terminating = True  # cancelled; its slot stays held by the reservation
    h.running(task("b").cpu("2").priority(0), on="p-0")
    (head,) = h.submit(task("a").cpu("4").priority(5))

    plan = h.step()

    assert not plan.preemptions  # stopping the other task would leave 2 of the 4 cpu the head needs
    assert plan.blocked[head].code == "no_capacity"
