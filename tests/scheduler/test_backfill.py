"""Step 5 of the cycle: a blocked head keeps a shadow node; later tasks run around it, or on it only when their
run timeout ends before the head's estimated start (its ``eta``)."""

from __future__ import annotations

from taskplane.scheduler import Policy
from tests.scheduler.harness import Harness, cluster, outcome, task, tenant

NOW = 1000.0


def blocked_head() -> tuple[Harness, str]:
    """p-0 frees 4 cpu at NOW+100 (a declared timeout); p-1 is full with no end in sight; the head needs 4."""
    h = Harness(cluster().pool("p", nodes=2, cpu="4"), tenant("a"), tenant("b"), tenant("c"), now=NOW)
    h.running(task("b").cpu("3").priority(10).timeout(100), on="p-0")
    h.running(task("b").cpu("4").priority(10), on="p-1")
    (head,) = h.submit(task("a").cpu("4").priority(5))
    return h, head


def test_the_blocked_head_gets_an_eta_from_the_running_tasks_expected_ends() -> None:
    h, head = blocked_head()

    plan = h.step()

    assert plan.blocked[head].code == "no_capacity"
    assert plan.eta == {head: NOW + 100}


def test_a_small_task_that_ends_before_the_heads_eta_runs_on_the_shadow_node() -> None:
    h, head = blocked_head()
    (short,) = h.submit(task("c").cpu("1").timeout(50))

    result = outcome(h.step())

    assert result.placed == {short: "p-0"}
    assert result.blocked == {head: "no_capacity"}


def test_a_small_task_without_a_run_timeout_does_not_run_on_the_shadow_node() -> None:
    h, head = blocked_head()
    (open_ended,) = h.submit(task("c").cpu("1"))

    plan = h.step()

    assert not plan.placements
    assert plan.blocked[open_ended].code == "backfill_blocked"
    assert plan.blocked[head].code == "no_capacity"


def test_a_small_task_whose_timeout_ends_after_the_heads_eta_does_not_run_on_the_shadow_node() -> None:
    h, head = blocked_head()
    (too_long,) = h.submit(task("c").cpu("1").timeout(150))

    assert outcome(h.step()).blocked == {head: "no_capacity", too_long: "backfill_blocked"}


def test_a_small_task_that_fits_on_another_node_runs_there_without_a_timeout() -> None:
    h = Harness(cluster().pool("p", nodes=2, cpu="4"), tenant("a"), tenant("b"), tenant("c"), now=NOW)
    h.running(task("b").cpu("3").priority(10).timeout(100), on="p-0")
    h.running(task("b").cpu("3").priority(10), on="p-1")
    (head,) = h.submit(task("a").cpu("4").priority(5))
    (small,) = h.submit(task("c").cpu("1"))

    result = outcome(h.step())

    assert result.placed == {small: "p-1"}
    assert result.blocked == {head: "no_capacity"}


def test_later_tasks_of_the_heads_own_queue_may_backfill_too() -> None:
    h, head = blocked_head()
    (small,) = h.submit(task("a").cpu("1").priority(5).timeout(10))

    result = outcome(h.step())

    assert result.placed == {small: "p-0"} and result.blocked == {head: "no_capacity"}


def test_the_eta_is_the_earliest_node_on_which_the_head_would_fit() -> None:
    h = Harness(cluster().pool("p", nodes=2, cpu="8"), tenant("a"), tenant("b"), now=NOW)
    h.running(task("b").cpu("2").priority(10).timeout(50), on="p-0")
    h.running(task("b").cpu("4").priority(10).timeout(100), on="p-0")
    h.running(task("b").cpu("2").priority(10).timeout(400), on="p-0")
    h.running(task("b").cpu("8").priority(10).timeout(300), on="p-1")
    (head,) = h.submit(task("a").cpu("6").priority(5))

    assert h.step().eta == {head: NOW + 100}


def test_tasks_ending_at_the_same_time_give_an_eta() -> None:
    h = Harness(cluster().pool("p", cpu="8"), tenant("a"), tenant("b"), now=NOW)
    h.running(task("b").cpu("2").priority(10).timeout(60), on="p-0")
    h.running(task("b").cpu("6").priority(10).timeout(60), on="p-0")
    (head,) = h.submit(task("a").cpu("8").priority(5))

    assert h.step().eta == {head: NOW + 60}


def test_no_eta_when_no_running_task_declared_a_timeout() -> None:
    h = Harness(cluster().pool("p", cpu="4"), tenant("a"), tenant("b"), now=NOW)
    h.running(task("b").cpu("4").priority(10), on="p-0")
    (head,) = h.submit(task("a").cpu("4"))

    plan = h.step()

    assert plan.blocked[head].code == "no_capacity" and plan.eta == {}


def test_without_backfill_nothing_runs_behind_a_blocked_head() -> None:
    h, head = blocked_head()
    h.policy = Policy(backfill=False)
    (short,) = h.submit(task("c").cpu("1").timeout(1))

    result = outcome(h.step())

    assert short not in result.placed and short not in result.blocked
    assert result.blocked == {head: "no_capacity"}
