"""What an ended attempt means: its failure class, and whether and when the task runs again."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime, timedelta

from taskplane.domain.task import FailureClass, RetryPolicy, Task, TaskState


class StopReason(enum.StrEnum):
    """Why taskplane itself stopped an attempt."""

    CANCEL = "cancel"
    TIMEOUT = "timeout"
    DEADLINE = "deadline"
    PREEMPT = "preempt"


@dataclass(frozen=True, slots=True)
class AttemptOutcome:
    """The raw facts an executor reports about an ended attempt."""

    exit_code: int | None = None
    signal: int | None = None
    oom_killed: bool = False
    spawn_error: str | None = None
    lost: str | None = None  # the attempt vanished; the text says how
    stop_reason: StopReason | None = None
    retryable: bool = True  # False for deterministic infra errors (executable not found, not executable)
    deadline_exceeded: bool = False  # the executor's own run-time limit ended it (Kubernetes activeDeadlineSeconds)


def classify(outcome: AttemptOutcome) -> FailureClass | None:
    """The failure class of an ended attempt, or ``None`` for success. Order matters: first match wins."""
    if outcome.stop_reason is StopReason.CANCEL:
        return FailureClass.CANCELLED
    if outcome.stop_reason in (StopReason.TIMEOUT, StopReason.DEADLINE) or outcome.deadline_exceeded:
        return FailureClass.TIMEOUT
    if outcome.stop_reason is StopReason.PREEMPT:
        return FailureClass.PREEMPTED
    if outcome.spawn_error is not None or outcome.lost is not None or outcome.oom_killed:
        return FailureClass.INFRA
    if outcome.exit_code == 0 and outcome.signal is None:
        return None
    return FailureClass.USER


def describe(outcome: AttemptOutcome, failure: FailureClass | None) -> str:
    """A one-line human explanation of an outcome."""
    if outcome.spawn_error is not None:
        return f"could not start: {outcome.spawn_error}"
    if outcome.lost is not None:
        return f"attempt lost: {outcome.lost}"
    if outcome.oom_killed:
        return "killed by the kernel: out of memory (memory limit reached)"
    if outcome.stop_reason is StopReason.CANCEL:
        return "cancelled"
    if outcome.stop_reason is StopReason.TIMEOUT:
        return "run timeout reached"
    if outcome.deadline_exceeded:
        return "run timeout reached (ended by the executor)"
    if outcome.stop_reason is StopReason.DEADLINE:
        return "deadline reached"
    if outcome.stop_reason is StopReason.PREEMPT:
        return "preempted"
    if outcome.signal is not None:
        return f"killed by signal {outcome.signal}"
    if failure is None:
        return "exited 0"
    return f"exited {outcome.exit_code}"


def backoff_delay(policy: RetryPolicy, retry_number: int, random_fraction: float) -> float:
    """Exponential backoff with jitter for the ``retry_number``-th retry (1-based).

    ``random_fraction`` in [0, 1) is passed in so the function stays pure and testable.
    """
    base = policy.backoff_initial * policy.backoff_multiplier ** max(0, retry_number - 1)
    base = min(base, policy.backoff_max)
    jitter = base * policy.jitter * (2.0 * random_fraction - 1.0)
    return max(0.0, min(policy.backoff_max, base + jitter))


@dataclass(frozen=True, slots=True)
class NextStep:
    """What happens to the task after an attempt ended."""

    state: TaskState
    failure_class: FailureClass | None
    not_before: datetime | None = None
    counts_as_infra: bool = False


def next_step(
    task: Task,
    failure: FailureClass | None,
    now: datetime,
    random_fraction: float,
    *,
    retryable: bool = True,
    infra_budget: bool = True,
) -> NextStep:
    """Decide the task's next state from its ended attempt's failure class and its retry policy.

    ``infra_budget=False`` makes an infra failure count against the user's ``max_attempts`` instead of the
    separate infra budget: for failures the task itself likely caused again (an OOM kill at its own limit).
    """
    if task.state is TaskState.CANCELLING or failure is FailureClass.CANCELLED:
        return NextStep(TaskState.CANCELLED, FailureClass.CANCELLED)
    if failure is None:
        return NextStep(TaskState.SUCCEEDED, None)
    policy = task.spec.retry
    is_infra = failure is FailureClass.PREEMPTED or (failure is FailureClass.INFRA and infra_budget)
    deadline = task.spec.timeouts.deadline
    final = TaskState.TIMED_OUT if failure is FailureClass.TIMEOUT else TaskState.FAILED
    if deadline is not None and now >= deadline:
        return NextStep(TaskState.TIMED_OUT, failure, counts_as_infra=is_infra)
    if failure is FailureClass.PREEMPTED:
        retry = True  # preemption never uses the user's budget
    elif failure is FailureClass.INFRA and infra_budget:
        retry = retryable and failure in policy.retry_on and task.infra_failures + 1 < policy.max_infra_attempts
    else:
        user_attempts = task.attempts - task.infra_failures - task.skipped_attempts
        retry = retryable and failure in policy.retry_on and user_attempts < policy.max_attempts
    if not retry:
        return NextStep(final, failure, counts_as_infra=is_infra)
    retry_number = task.attempts
    # A preempted task did nothing wrong: it queues again at once (it still waits for room like anyone).
    delay = 0.0 if failure is FailureClass.PREEMPTED else backoff_delay(policy, retry_number, random_fraction)
    return NextStep(TaskState.PENDING, failure, now + timedelta(seconds=delay), counts_as_infra=is_infra)
