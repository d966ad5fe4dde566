"""The task lifecycle as a transition table with named guard rules.

    pending --admit--> admitted --node starts it--> starting --started--> running --exit 0--> succeeded
       |                  |                    |                     |
       |                  +--------------------+----------+----------+--> failed | timed_out
       |                                                  |
       +--> cancelled | timed_out (queue)        cancel: --+--> cancelling --exit--> cancelled
    (an ended attempt that may retry goes back to pending with a backoff)

Terminal states are final. Every move is checked here; services never set a state without asking.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from taskplane.domain.task import Task, TaskState
from taskplane.errors import InvalidTransitionError

P, A, S, R, C = (TaskState.PENDING, TaskState.ADMITTED, TaskState.STARTING, TaskState.RUNNING, TaskState.CANCELLING)
OK, FAIL, CANC, TOUT = TaskState.SUCCEEDED, TaskState.FAILED, TaskState.CANCELLED, TaskState.TIMED_OUT

TRANSITIONS: dict[TaskState, frozenset[TaskState]] = {
    P: frozenset({A, CANC, TOUT, FAIL}),
    A: frozenset({S, P, C, CANC, FAIL, TOUT}),
    S: frozenset({R, P, FAIL, C, CANC, TOUT, OK}),
    R: frozenset({OK, FAIL, TOUT, P, C}),
    C: frozenset({CANC}),
    OK: frozenset(),
    FAIL: frozenset(),
    CANC: frozenset(),
    TOUT: frozenset(),
}


@dataclass(frozen=True, slots=True)
class Rule:
    """A named guard: ``check`` returns an explanation when the move is refused, else ``None``."""

    name: str
    check: Callable[[Task, TaskState], str | None]


def _terminal_is_final(task: Task, target: TaskState) -> str | None:
    return f"task is already {task.state.value}" if task.state.terminal else None


def _listed_in_table(task: Task, target: TaskState) -> str | None:
    if target in TRANSITIONS[task.state]:
        return None
    return f"a task cannot go from {task.state.value} to {target.value}"


def _cancel_requested_ends_cancelled(task: Task, target: TaskState) -> str | None:
    # Once a cancel is in flight, the only way out is cancelled: a late exit must not overwrite it.
    if task.state is TaskState.CANCELLING and target is not TaskState.CANCELLED:
        return "a cancelling task can only become cancelled"
    return None


RULES: tuple[Rule, ...] = (
    Rule("terminal_is_final", _terminal_is_final),
    Rule("cancel_requested_ends_cancelled", _cancel_requested_ends_cancelled),
    Rule("listed_in_table", _listed_in_table),
)


def refusal(task: Task, target: TaskState) -> str | None:
    """The first rule that refuses moving ``task`` to ``target``, as ``"rule: why"``, or ``None``."""
    for rule in RULES:
        why = rule.check(task, target)
        if why is not None:
            return f"{rule.name}: {why}"
    return None


def can_transition(task: Task, target: TaskState) -> bool:
    """True when every rule allows the move."""
    return refusal(task, target) is None


def check_transition(task: Task, target: TaskState) -> None:
    """Raise ``InvalidTransitionError`` (409) when a rule refuses the move."""
    why = refusal(task, target)
    if why is not None:
        raise InvalidTransitionError(
            f"task {task.id} is {task.state.value}; cannot move to {target.value} ({why})",
            state=task.state.value,
        )
