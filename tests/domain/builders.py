"""Builders that read like specifications: ``task().cpu(2).retries(3).build()``."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime

from taskplane.domain.resources import Resources
from taskplane.domain.task import FailureClass, RetryPolicy, Task, TaskSpec, TaskState, Timeouts

T0 = datetime(2026, 1, 1, tzinfo=UTC)


class TaskBuilder:
    def __init__(self) -> None:
        self._spec = TaskSpec(command=("true",), resources=Resources(1000, 256 << 20))
        self._task = Task(id="t1", spec=self._spec, state=TaskState.PENDING, created_at=T0, updated_at=T0)

    def id(self, task_id: str) -> TaskBuilder:
        self._task = replace(self._task, id=task_id)
        return self

    def cpu(self, cores: float) -> TaskBuilder:
        self._spec = replace(self._spec, resources=replace(self._spec.resources, millicpu=int(cores * 1000)))
        return self

    def memory(self, amount: int) -> TaskBuilder:
        self._spec = replace(self._spec, resources=replace(self._spec.resources, memory=amount))
        return self

    def best_effort(self) -> TaskBuilder:
        self._spec = replace(self._spec, resources=Resources())
        return self

    def retries(self, extra: int, *on: FailureClass) -> TaskBuilder:
        policy = RetryPolicy(max_attempts=extra + 1, jitter=0.0)
        if on:
            policy = replace(policy, retry_on=frozenset(on))
        self._spec = replace(self._spec, retry=policy)
        return self

    def deadline(self, at: datetime) -> TaskBuilder:
        self._spec = replace(self._spec, timeouts=Timeouts(deadline=at))
        return self

    def state(self, state: TaskState, attempts: int = 0, infra: int = 0) -> TaskBuilder:
        self._task = replace(self._task, state=state, attempts=attempts, infra_failures=infra)
        return self

    def build(self) -> Task:
        return replace(self._task, spec=self._spec)


def task() -> TaskBuilder:
    return TaskBuilder()
