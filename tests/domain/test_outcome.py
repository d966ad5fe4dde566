from datetime import timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from taskplane.domain.outcome import AttemptOutcome, StopReason, backoff_delay, classify, describe, next_step
from taskplane.domain.task import FailureClass, RetryPolicy, TaskState

from .builders import T0, task


@pytest.mark.parametrize(
    ("outcome", "expected"),
    [
        (AttemptOutcome(exit_code=0), None),
        (AttemptOutcome(exit_code=3), FailureClass.USER),
        (AttemptOutcome(signal=9), FailureClass.USER),
        (AttemptOutcome(signal=9, oom_killed=True), FailureClass.INFRA),
        (AttemptOutcome(spawn_error="No such file or directory"), FailureClass.INFRA),
        (AttemptOutcome(lost="vanished"), FailureClass.INFRA),
        (AttemptOutcome(exit_code=0, stop_reason=StopReason.CANCEL), FailureClass.CANCELLED),
        (AttemptOutcome(signal=15, stop_reason=StopReason.TIMEOUT), FailureClass.TIMEOUT),
        (AttemptOutcome(signal=15, stop_reason=StopReason.PREEMPT), FailureClass.PREEMPTED),
    ],
)
def test_classify(outcome, expected):
    assert classify(outcome) is expected
    assert describe(outcome, expected)


def test_user_failure_retries_until_budget_then_fails():
    t = task().retries(2).state(TaskState.RUNNING, attempts=1).build()
    step = next_step(t, FailureClass.USER, T0, 0.5)
    assert step.state is TaskState.PENDING and step.not_before == T0 + timedelta(seconds=1)
    last = task().retries(2).state(TaskState.RUNNING, attempts=3).build()
    assert next_step(last, FailureClass.USER, T0, 0.5).state is TaskState.FAILED


def test_infra_failures_do_not_use_the_user_budget():
    t = task().retries(0).state(TaskState.RUNNING, attempts=1).build()
    assert next_step(t, FailureClass.INFRA, T0, 0.5).state is TaskState.PENDING
    assert next_step(t, FailureClass.USER, T0, 0.5).state is TaskState.FAILED
    # after two infra failures, the user still has their one attempt
    t2 = task().retries(0).state(TaskState.RUNNING, attempts=3, infra=2).build()
    assert next_step(t2, FailureClass.USER, T0, 0.5).state is TaskState.FAILED
    assert next_step(t2, FailureClass.INFRA, T0, 0.5).state is TaskState.FAILED  # infra budget (3) spent


def test_deterministic_spawn_errors_do_not_retry():
    t = task().state(TaskState.STARTING, attempts=1).build()
    assert next_step(t, FailureClass.INFRA, T0, 0.5, retryable=False).state is TaskState.FAILED


def test_timeout_ends_timed_out_unless_retried_on_timeout():
    t = task().state(TaskState.RUNNING, attempts=1).build()
    assert next_step(t, FailureClass.TIMEOUT, T0, 0.5).state is TaskState.TIMED_OUT
    t2 = task().retries(1, FailureClass.TIMEOUT).state(TaskState.RUNNING, attempts=1).build()
    assert next_step(t2, FailureClass.TIMEOUT, T0, 0.5).state is TaskState.PENDING


def test_deadline_passed_ends_timed_out():
    t = task().retries(5).deadline(T0).state(TaskState.RUNNING, attempts=1).build()
    assert next_step(t, FailureClass.USER, T0, 0.5).state is TaskState.TIMED_OUT


def test_cancelling_ends_cancelled_whatever_the_exit():
    t = task().state(TaskState.CANCELLING, attempts=1).build()
    assert next_step(t, None, T0, 0.5).state is TaskState.CANCELLED


@given(st.integers(min_value=1, max_value=50), st.floats(min_value=0, max_value=0.999))
def test_backoff_is_bounded_and_grows(n, r):
    policy = RetryPolicy(backoff_initial=1.0, backoff_max=60.0, backoff_multiplier=2.0, jitter=0.2)
    d = backoff_delay(policy, n, r)
    assert 0 <= d <= 60.0
    base = min(60.0, 2.0 ** (n - 1))
    assert base * 0.8 - 1e-9 <= d <= min(60.0, base * 1.2) + 1e-9


def test_oom_counts_against_the_user_budget():
    once = task().state(TaskState.RUNNING, attempts=1).build()
    assert next_step(once, FailureClass.INFRA, T0, 0.5, infra_budget=False).state is TaskState.FAILED
    twice = task().retries(1).state(TaskState.RUNNING, attempts=1).build()
    step = next_step(twice, FailureClass.INFRA, T0, 0.5, infra_budget=False)
    assert step.state is TaskState.PENDING and not step.counts_as_infra
