"""The arithmetic of waiting for a task, shared by both clients (which bring their own clock and transport).

``wait`` repeats the server's long poll (at most ``MAX_POLL_SECONDS`` per request) until the task is terminal
or the caller's overall timeout passes::

    deadline = deadline_after(timeout, now)
    loop: task = send(wait_task(id, poll_seconds(deadline, now)))
          terminal(task)        -> return task
          expired(deadline,now) -> raise WaitTimeoutError(task)
"""

from __future__ import annotations

import math

from taskplane.domain.task import TERMINAL_STATES
from taskplane.wire import TaskOut

MAX_POLL_SECONDS = 60
"""The longest the server holds one ``/wait`` request."""

_TERMINAL = frozenset(state.value for state in TERMINAL_STATES)


class WaitTimeoutError(TimeoutError):
    """``wait`` gave up before the task ended; ``task`` is its last known state."""

    def __init__(self, task: TaskOut, timeout: float) -> None:
        super().__init__(f"task {task.id} is still {task.state} after waiting {timeout:g}s")
        self.task = task
        self.timeout = timeout


def is_terminal(task: TaskOut) -> bool:
    """Tell whether the task has ended (succeeded, failed, cancelled or timed out)."""
    return task.state in _TERMINAL


def deadline_after(timeout: float | None, now: float) -> float | None:
    """Return the monotonic instant at which waiting stops, or ``None`` to wait forever."""
    if timeout is None:
        return None
    if not math.isfinite(timeout) or timeout < 0:
        raise ValueError("timeout must be a non-negative number of seconds")
    return now + timeout


def poll_seconds(deadline: float | None, now: float) -> int:
    """How long the next long poll may last: whole seconds, never past the deadline by a second or more."""
    if deadline is None:
        return MAX_POLL_SECONDS
    return max(0, min(MAX_POLL_SECONDS, math.ceil(deadline - now)))


def expired(deadline: float | None, now: float) -> bool:
    """Tell whether the deadline has passed."""
    return deadline is not None and now >= deadline
