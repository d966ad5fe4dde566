"""What a Job and its pod say about an attempt: pure functions from lightkube objects to taskplane facts.

The Job's conditions decide *that* an attempt ended (``Complete``/``Failed``, or the Job being deleted); the
pod's status says *how*. Pending pods are inspected for failures that would otherwise wait forever (image
pulls, container config errors, unschedulable pods: the last only after a timeout, decided by the executor).

| Kubernetes says                                           | taskplane outcome                                 |
|-----------------------------------------------------------|---------------------------------------------------|
| Job ``Complete``                                          | ``exit_code=0``                                   |
| container terminated ``exitCode=n`` (Job ``Failed``)      | ``exit_code=n``                                   |
| ... ``n = 128+s`` while taskplane stopped it              | ``signal=s`` (``exit_code`` None)                 |
| container terminated reason ``OOMKilled``                 | ``oom_killed`` (infra), ``signal=9``              |
| pod ``Evicted`` / ``NodeLost`` / ``DisruptionTarget``     | ``lost`` (infra)                                  |
| Job ``Failed`` reason ``DeadlineExceeded``                | ``deadline_exceeded`` (timeout)                   |
| waiting ``ErrImagePull``/``ImagePullBackOff``/``InvalidImageName``, | ``spawn_error``, not retryable     |
| ``CreateContainerConfigError``/``CreateContainerError``,  |                                                   |
| terminated ``StartError``/``ContainerCannotRun``           |                                                   |
| ``PodScheduled=False, Unschedulable`` past the timeout    | ``spawn_error``, retryable (decided by executor)  |
| Job deleted by someone else                               | ``lost``                                          |
"""

from __future__ import annotations

import signal as signals
from dataclasses import dataclass
from datetime import datetime

from lightkube.resources.batch_v1 import Job
from lightkube.resources.core_v1 import Pod

from taskplane.domain.outcome import AttemptOutcome

SPAWN_ERRORS = frozenset(
    {
        "ErrImagePull",
        "ImagePullBackOff",
        "InvalidImageName",
        "CreateContainerConfigError",
        "CreateContainerError",
        "ErrImageNeverPull",
    }
)
# A container the runtime could not start (command missing from the image, not executable): terminated with
# exit code 128 and a zero startedAt, having run nothing. Running it again fails the same way.
START_ERRORS = frozenset({"StartError", "ContainerCannotRun"})
DISRUPTIONS = frozenset({"Evicted", "NodeLost", "NodeShutdown", "Shutdown", "Terminated", "UnexpectedAdmissionError"})
_SIGNALS = {int(s) for s in signals.Signals}


@dataclass(frozen=True, slots=True)
class ContainerView:
    """The task container's state, flattened."""

    running_since: datetime | None = None
    exit_code: int | None = None
    reason: str | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    waiting: str | None = None
    message: str | None = None


def container(pod: Pod | None) -> ContainerView:
    """The first container's state of ``pod`` (an empty view when there is none yet)."""
    statuses = [] if pod is None or pod.status is None else pod.status.containerStatuses or []
    if not statuses or statuses[0].state is None:
        return ContainerView()
    state = statuses[0].state
    if state.terminated is not None:
        t = state.terminated
        started = None if t.reason in START_ERRORS else t.startedAt  # 1970-01-01: it never ran
        return ContainerView(None, t.exitCode, t.reason, started, t.finishedAt, message=t.message)
    if state.running is not None:
        return ContainerView(running_since=state.running.startedAt)
    if state.waiting is not None:
        return ContainerView(waiting=state.waiting.reason, message=state.waiting.message)
    return ContainerView()


def job_condition(job: Job) -> tuple[str, str | None] | None:
    """``("Complete"|"Failed", reason)`` once the Job finished, else ``None``."""
    for cond in (job.status.conditions if job.status else None) or []:
        if cond.type in ("Complete", "Failed") and cond.status == "True":
            return cond.type, cond.reason
    return None


def unschedulable(pod: Pod | None) -> str | None:
    """The scheduler's message when the pod cannot be placed (``PodScheduled=False, Unschedulable``)."""
    for cond in (pod.status.conditions if pod is not None and pod.status else None) or []:
        if cond.type == "PodScheduled" and cond.status == "False" and cond.reason == "Unschedulable":
            return cond.message or "unschedulable"
    return None


def disruption(pod: Pod | None) -> str | None:
    """Why the pod was taken away from under its container (eviction, node loss), or ``None``."""
    if pod is None or pod.status is None:
        return None
    if pod.status.reason in DISRUPTIONS:
        return f"pod {pod.status.reason}: {pod.status.message or ''}".rstrip(": ")
    for cond in pod.status.conditions or []:
        if cond.type == "DisruptionTarget" and cond.status == "True":
            return f"pod disrupted: {cond.reason or ''} {cond.message or ''}".strip()
    return None


def spawn_failure(pod: Pod | None) -> AttemptOutcome | None:
    """A pending pod's container that cannot be created (image pull, bad config): a non-retryable spawn error."""
    view = container(pod)
    if view.waiting in SPAWN_ERRORS:
        return AttemptOutcome(spawn_error=f"{view.waiting}: {view.message or ''}".rstrip(": "), retryable=False)
    return None


def _from_exit(code: int, stopping: bool) -> AttemptOutcome:
    if stopping and code > 128 and code - 128 in _SIGNALS:
        return AttemptOutcome(signal=code - 128)
    return AttemptOutcome(exit_code=code)


def compute_outcome(job: Job | None, pod: Pod | None, *, stopping: bool, deleted: bool) -> AttemptOutcome | None:
    """The attempt's outcome, or ``None`` while it has not ended.

    ``stopping``: taskplane asked to stop it (exit codes 128+s read as signal s). ``deleted``: the Job is gone.
    """
    cond = None if job is None else job_condition(job)
    if cond is None and not deleted:
        return spawn_failure(pod)
    view = container(pod)
    if cond is not None and cond[1] == "DeadlineExceeded":
        return AttemptOutcome(deadline_exceeded=True, exit_code=view.exit_code)
    lost = disruption(pod)
    if lost is not None:
        return AttemptOutcome(lost=lost)
    if deleted and cond is None and not stopping:  # its pod was killed with it: that exit code is no verdict
        return AttemptOutcome(lost="its Job was deleted by someone else")
    if view.reason == "OOMKilled":
        return AttemptOutcome(oom_killed=True, signal=int(signals.SIGKILL))
    if view.reason in START_ERRORS:
        return AttemptOutcome(spawn_error=f"{view.reason}: {view.message or ''}".rstrip(": "), retryable=False)
    if view.exit_code is not None:
        return _from_exit(view.exit_code, stopping)
    if cond is not None and cond[0] == "Complete":
        return AttemptOutcome(exit_code=0)
    if deleted and stopping:
        return AttemptOutcome(signal=int(signals.SIGTERM))
    failed = spawn_failure(pod)
    if failed is not None:
        return failed
    if deleted:
        return AttemptOutcome(lost="its Job was deleted by someone else")
    return AttemptOutcome(lost=f"Job failed ({cond[1] if cond else 'unknown'}) and its pod's status is gone")
