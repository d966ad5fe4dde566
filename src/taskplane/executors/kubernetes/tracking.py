"""What the executor remembers of one attempt between watch events (mutable, owned by the executor's loop)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import datetime

from lightkube.resources.batch_v1 import Job
from lightkube.resources.core_v1 import Pod

from taskplane.executors.kubernetes import names
from taskplane.executors.kubernetes.logs import AttemptLogs

AttemptKey = tuple[str, int]


def key_of_job(job: Job) -> AttemptKey | None:
    """``(task_id, attempt)`` from a Job's annotation and label, or ``None`` when it is not one of ours."""
    meta = job.metadata
    if meta is None:
        return None
    task_id = (meta.annotations or {}).get(names.ANNOTATION_TASK_ID)
    attempt = (meta.labels or {}).get(names.LABEL_ATTEMPT, "")
    if task_id is None or not attempt.isdigit():
        return None
    return task_id, int(attempt)


@dataclass(eq=False)
class Attempt:
    """One attempt's Job and pod as last seen, and what the executor did about it."""

    task_id: str
    attempt: int
    namespace: str
    job_name: str
    created: float | None = None  # time.monotonic() of this process's create call (startup latency)
    job: Job | None = None
    pod: Pod | None = None
    pod_name: str | None = None
    pod_gone: bool = False
    started_at: datetime | None = None
    stopping: bool = False  # taskplane asked it to stop (or unqueued it)
    deleted: bool = False  # its Job is gone
    taken: bool = False  # its Job or pod was deleted, not by taskplane, while it ran: a kill then is lost, not user
    ending: bool = False  # its Exited is being prepared or was sent
    timer: asyncio.TimerHandle | None = None  # unschedulable timeout
    logs: AttemptLogs | None = None  # its log copies, once its container started

    @classmethod
    def from_job(cls, job: Job) -> Attempt:
        """An attempt found in the cluster (recovery): no creation time of ours."""
        key = key_of_job(job)
        assert key is not None and job.metadata is not None
        return cls(key[0], key[1], job.metadata.namespace or "", job.metadata.name or "", job=job)

    def cancel_timer(self) -> None:
        """Forget the unschedulable timeout (the pod was placed, or the attempt is over)."""
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
