"""The status mapping (``status.compute_outcome``) as a table: what a Job and its pod say -> the attempt's outcome."""

from __future__ import annotations

import signal
from typing import Any

import pytest
from lightkube.resources.batch_v1 import Job
from lightkube.resources.core_v1 import Pod

from taskplane.domain.outcome import AttemptOutcome
from taskplane.executors.kubernetes.status import compute_outcome

T = "2026-01-01T00:00:00Z"


def job(condition: str | None = None, reason: str | None = None) -> Job:
    conds = [{"type": condition, "status": "True", "reason": reason}] if condition else []
    made = Job.from_dict({"metadata": {"name": "j"}, "spec": {"template": {}}, "status": {"conditions": conds}})
    assert isinstance(made, Job)
    return made


def pod(state: dict[str, Any] | None = None, **status: Any) -> Pod:
    statuses = (
        []
        if state is None
        else [{"name": "task", "image": "i", "imageID": "", "ready": False, "restartCount": 0, "state": state}]
    )
    made = Pod.from_dict({"metadata": {"name": "p"}, "status": {"containerStatuses": statuses, **status}})
    assert isinstance(made, Pod)
    return made


def ended(code: int, reason: str = "Error") -> dict[str, Any]:
    return {"terminated": {"exitCode": code, "reason": reason, "startedAt": T, "finishedAt": T}}


RUNNING = {"running": {"startedAt": T}}


@pytest.mark.parametrize(
    ("the_job", "the_pod", "stopping", "deleted", "outcome"),
    [
        (job(), pod(RUNNING), False, False, None),
        (job(), pod({"waiting": {"reason": "ContainerCreating"}}), False, False, None),
        (job("Complete", "Completed"), pod(ended(0, "Completed")), False, False, AttemptOutcome(exit_code=0)),
        (job("Complete", "Completed"), None, False, False, AttemptOutcome(exit_code=0)),
        (job("Failed", "BackoffLimitExceeded"), pod(ended(3)), False, False, AttemptOutcome(exit_code=3)),
        (job("Failed", "BackoffLimitExceeded"), pod(ended(137)), False, False, AttemptOutcome(exit_code=137)),
        (job(), pod(ended(143)), True, True, AttemptOutcome(signal=signal.SIGTERM)),
        (job(), pod(ended(7)), True, True, AttemptOutcome(exit_code=7)),
        (job(), pod(RUNNING), True, True, AttemptOutcome(signal=signal.SIGTERM)),
        (job(), pod(ended(143)), False, True, AttemptOutcome(lost="its Job was deleted by someone else")),
        (
            job("Failed", "BackoffLimitExceeded"),
            pod(ended(137, "OOMKilled")),
            False,
            False,
            AttemptOutcome(oom_killed=True, signal=signal.SIGKILL),
        ),
        (
            job("Failed", "DeadlineExceeded"),
            pod(ended(143)),
            False,
            False,
            AttemptOutcome(deadline_exceeded=True, exit_code=143),
        ),
        (
            job("Failed", "BackoffLimitExceeded"),
            pod(ended(137), phase="Failed", reason="Evicted", message="low on memory"),
            False,
            False,
            AttemptOutcome(lost="pod Evicted: low on memory"),
        ),
        (
            job(),
            pod({"waiting": {"reason": "ImagePullBackOff", "message": "not found"}}),
            False,
            False,
            AttemptOutcome(spawn_error="ImagePullBackOff: not found", retryable=False),
        ),
        (
            job(),
            pod({"waiting": {"reason": "CreateContainerConfigError"}}),
            False,
            False,
            AttemptOutcome(spawn_error="CreateContainerConfigError", retryable=False),
        ),
    ],
    ids=[
        "running",
        "creating",
        "complete",
        "complete-pod-gone",
        "exit-3",
        "exit-137-not-stopping",
        "stopped-sigterm",
        "stopped-trapped",
        "stopped-pod-not-seen-ending",
        "deleted-by-someone",
        "oom",
        "deadline",
        "evicted",
        "image-pull",
        "config-error",
    ],
)
def test_outcome_of(
    the_job: Job, the_pod: Pod | None, stopping: bool, deleted: bool, outcome: AttemptOutcome | None
) -> None:
    assert compute_outcome(the_job, the_pod, stopping=stopping, deleted=deleted) == outcome
