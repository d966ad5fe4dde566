"""Task use cases: submit, read, list, cancel, wait, logs, capacity. One method per API route."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, replace
from datetime import datetime

from taskplane.domain.access import Resource, Verb
from taskplane.domain.resources import Resources
from taskplane.domain.task import Task, TaskState
from taskplane.errors import (
    ForbiddenError,
    InvalidRequestError,
    InvalidTransitionError,
    NotFoundError,
    PayloadTooLargeError,
    UnavailableError,
)
from taskplane.services.access import Caller
from taskplane.services.engine import Engine
from taskplane.services.ids import new_task_id
from taskplane.services.ports import Clock, Executor, LogStream, NewTask, SupportsLogs, TaskEvent, TaskFilter, TaskStore
from taskplane.services.specs import SpecLimits, build_spec, check_pending_limits, request_hash, resolve_access
from taskplane.services.views import event_out, resources_out, task_out
from taskplane.wire import (
    BatchSubmit,
    BatchSubmitResult,
    CapacityOut,
    EventOut,
    NodeCapacityOut,
    TaskList,
    TaskOut,
    TaskSubmit,
)

MAX_WAIT_SECONDS = 60.0
MAX_LIST_LIMIT = 1000
LOG_CHUNK = 64 * 1024
LOG_POLL_SECONDS = 0.1


@dataclass(frozen=True, slots=True)
class TaskServiceConfig:
    """Limits the task service enforces."""

    spec_limits: SpecLimits
    max_batch: int = 1000


class TaskService:
    """The task use cases behind the HTTP API."""

    def __init__(
        self, store: TaskStore, engine: Engine, executor: Executor, clock: Clock, config: TaskServiceConfig
    ) -> None:
        self._store = store
        self._engine = engine
        self._executor = executor
        self._clock = clock
        self._config = config
        self._in_flight: Counter[str] = Counter()  # tasks per tenant being committed (pending limit)

    # --------------------------------------------------------------------------------------- submit

    def _prepare(
        self, caller: Caller, sub: TaskSubmit, header_key: str | None, now: datetime, index: int | None
    ) -> NewTask:
        if "tenant" not in sub.model_fields_set:
            sub = sub.model_copy(update={"tenant": caller.default_tenant(sub.tenant)})
        # Before anything about the tenant is looked up: a tenant the caller holds no role in answers 403
        # whether or not it exists.
        caller.check_target(Verb.CREATE, Resource.TASKS, sub.tenant)
        key = sub.idempotency_key
        if header_key is not None:
            if key is not None and key != header_key:
                raise InvalidRequestError(
                    "the Idempotency-Key header and the idempotency_key field differ", code="invalid_field"
                )
            key = header_key
        try:
            spec = replace(build_spec(sub, self._config.spec_limits, now), owner=caller.subject)
            # A request larger than every node is accepted: the scheduler parks it with reason never_fits.
            spec = resolve_access(spec, sub.pool, self._engine)
        except (InvalidRequestError, NotFoundError, ForbiddenError) as exc:
            if index is not None:
                exc.detail = f"tasks[{index}]: {exc.detail}"
                exc.args = (exc.detail,)
                exc.extra["index"] = index
            raise
        task = Task(
            id=new_task_id(now),
            spec=spec,
            state=TaskState.PENDING,
            created_at=now,
            updated_at=now,
            idempotency_key=key,
        )
        return NewTask(task, request_hash(sub) if key is not None else None)

    async def _create(self, caller: Caller, new: Sequence[NewTask], now: datetime) -> list[tuple[Task, bool]]:
        adding = Counter(n.task.spec.tenant for n in new)
        check_pending_limits(adding, self._engine, self._in_flight)
        events = [TaskEvent(n.task.id, now, "created", None, TaskState.PENDING, None, {}) for n in new]
        # Counted until the engine holds them, so concurrent requests cannot all pass the limit at once.
        self._in_flight.update(adding)
        try:
            tenants = sorted(adding)
            audit = caller.entry(
                now,
                "tasks.create",
                f"tasks/{new[0].task.id}" if len(new) == 1 else "tasks",
                tenants[0] if len(tenants) == 1 else None,
                tasks=[n.task.id for n in new][:1000],
            )
            created = await self._store.create_tasks(new, events, audit)
            caller.audited = True
            fresh = [c.task for c in created if c.created]
            if fresh:
                self._engine.submitted(fresh)
        finally:
            self._in_flight.subtract(adding)
        return [(c.task, c.created) for c in created]

    async def submit(self, caller: Caller, sub: TaskSubmit, idempotency_key: str | None = None) -> tuple[TaskOut, bool]:
        """Create one task; returns it and whether it was created (False: an idempotent replay)."""
        now = self._clock.now()
        [(task, created)] = await self._create(caller, [self._prepare(caller, sub, idempotency_key, now, None)], now)
        return task_out(task), created

    async def submit_batch(self, caller: Caller, batch: BatchSubmit) -> BatchSubmitResult:
        """Create up to ``max_batch`` tasks in one transaction (all or nothing)."""
        if not batch.tasks:
            raise InvalidRequestError("tasks must not be empty", code="invalid_field", field="tasks")
        if len(batch.tasks) > self._config.max_batch:
            raise PayloadTooLargeError(
                f"a batch holds at most {self._config.max_batch} tasks; got {len(batch.tasks)}", code="batch_too_large"
            )
        now = self._clock.now()
        new = [self._prepare(caller, sub, None, now, i) for i, sub in enumerate(batch.tasks)]
        results = await self._create(caller, new, now)
        return BatchSubmitResult(tasks=[task_out(t) for t, _ in results], created=[c for _, c in results])

    # ----------------------------------------------------------------------------------------- read

    async def _load(self, caller: Caller, task_id: str, verb: str = Verb.GET, resource: str = Resource.TASKS) -> Task:
        """The task, if ``caller`` may ``verb`` it; another tenant's task is as missing as a missing one."""
        missing = NotFoundError(f"task {task_id[:64]} not found")
        task = await self._store.get_task(task_id)
        if task is None:
            raise missing
        caller.check_object(verb, resource, task.spec.tenant, missing)
        return task

    async def get(self, caller: Caller, task_id: str) -> TaskOut:
        """One task with its attempts, live pending reason and queue position."""
        task = await self._load(caller, task_id)
        attempts = await self._store.get_attempts(task_id)
        view = self._engine.view(task_id) if task.state is TaskState.PENDING else None
        if view is None:
            return task_out(task, attempts)
        return task_out(task, attempts, reason=view.reason, queue_position=view.queue_position, eta=view.eta)

    async def list_tasks(
        self,
        caller: Caller,
        *,
        states: Sequence[str] = (),
        labels: Sequence[str] = (),
        created_after: datetime | None = None,
        created_before: datetime | None = None,
        limit: int = 100,
        cursor: str | None = None,
    ) -> TaskList:
        """A page of tasks, newest first."""
        try:
            wanted = frozenset(TaskState(s) for s in states)
        except ValueError:
            valid = ", ".join(s.value for s in TaskState)
            raise InvalidRequestError(
                f"unknown state in {list(states)}; valid: {valid}", code="invalid_field"
            ) from None
        label_map: dict[str, str] = {}
        for item in labels:
            key, sep, value = item.partition("=")
            if not sep or not key:
                raise InvalidRequestError(f"label filter {item!r} must look like key=value", code="invalid_field")
            label_map[key] = value
        if not 1 <= limit <= MAX_LIST_LIMIT:
            raise InvalidRequestError(f"limit must be between 1 and {MAX_LIST_LIMIT}", code="invalid_field")
        visible = caller.visible(Verb.LIST, Resource.TASKS)
        if visible is not None and not visible:
            return TaskList(items=[], next_cursor=None)
        page = await self._store.list_tasks(
            TaskFilter(
                states=wanted,
                labels=label_map,
                created_after=created_after,
                created_before=created_before,
                tenants=visible,
            ),
            limit,
            cursor,
        )
        items = []
        for task in page.items:
            view = self._engine.view(task.id, position=False) if not task.state.terminal else None
            items.append(task_out(task) if view is None else task_out(task, reason=view.reason, eta=view.eta))
        return TaskList(items=items, next_cursor=page.next_cursor)

    async def events(self, caller: Caller, task_id: str) -> list[EventOut]:
        """A task's recorded transitions, oldest first."""
        await self._load(caller, task_id)
        return [event_out(e) for e in await self._store.get_events(task_id)]

    # --------------------------------------------------------------------------------------- cancel

    async def cancel(self, caller: Caller, task_id: str) -> TaskOut:
        """Cancel a pending or running task. Idempotent; a task that ended otherwise is a 409."""
        task = await self._load(caller, task_id, Verb.UPDATE)
        for _ in range(100):
            audit = caller.entry(self._clock.now(), "tasks.cancel", f"tasks/{task_id}", task.spec.tenant)
            try:
                moved = await self._engine.cancel(task_id, audit)
            except NotFoundError:
                moved = None  # it ended while the request waited for the engine
            if moved is not None:
                caller.audited = True
                return task_out(moved)
            task = await self._load(caller, task_id, Verb.UPDATE)
            if task.state in (TaskState.CANCELLED, TaskState.CANCELLING):
                return task_out(task)
            if task.state.terminal:
                raise InvalidTransitionError(
                    f"task {task_id} already ended as {task.state.value}; it cannot be cancelled",
                    state=task.state.value,
                )
            # Committed but not yet taken over by the engine (a race with submit): give it a moment.
            await asyncio.sleep(0.02)
        raise UnavailableError(f"task {task_id} is not held by the engine; try again")

    # ----------------------------------------------------------------------------------------- wait

    async def wait(self, caller: Caller, task_id: str, timeout: float) -> TaskOut:
        """The task once it has ended, or as it is when ``timeout`` seconds have passed."""
        if not 0 <= timeout <= MAX_WAIT_SECONDS:
            raise InvalidRequestError(f"timeout must be between 0 and {MAX_WAIT_SECONDS:g}", code="invalid_field")
        task = await self._load(caller, task_id)
        if not task.state.terminal and timeout > 0:
            await self._engine.wait_terminal(task_id, timeout)
        return await self.get(caller, task_id)

    # ----------------------------------------------------------------------------------------- logs

    async def open_logs(
        self, caller: Caller, task_id: str, stream: LogStream, attempt: int | None, follow: bool, offset: int
    ) -> AsyncIterator[bytes]:
        """Validate a log request (raising 4xx now) and return the byte stream to send."""
        task = await self._load(caller, task_id, Verb.GET, Resource.LOGS)
        if attempt is not None and not 1 <= attempt <= max(task.attempts, 1):
            raise NotFoundError(f"task {task_id} has no attempt {attempt} (it has {task.attempts})")
        if offset < 0:
            raise InvalidRequestError("offset must not be negative", code="invalid_field")
        executor = self._engine.executor_of(task.spec.pool) or self._executor
        if not isinstance(executor, SupportsLogs):
            raise NotFoundError(f"the {executor.name} executor keeps no logs")
        return self._stream_logs(executor, task, stream, attempt, follow, offset)

    async def _stream_logs(
        self, logs: SupportsLogs, task: Task, stream: LogStream, attempt: int | None, follow: bool, offset: int
    ) -> AsyncIterator[bytes]:
        number = attempt or task.attempts
        while number == 0 and follow and self._engine.is_live(task.id):
            await asyncio.sleep(LOG_POLL_SECONDS)  # not started yet: wait for the first attempt
            current = await self._store.get_task(task.id)
            number = current.attempts if current is not None else 0
        if number == 0:
            return
        path = logs.log_path(task.id, number, stream)
        position = offset
        while True:
            live = follow and self._engine.is_live(task.id, number)
            chunk = await asyncio.to_thread(_read_chunk, str(path), position)
            if chunk:
                position += len(chunk)
                yield chunk
                continue
            if not live:
                return
            await asyncio.sleep(LOG_POLL_SECONDS)

    # ------------------------------------------------------------------------------------- capacity

    def capacity(self) -> CapacityOut:
        """Every node of every pool: total, allocated (tasks and reservations) and free resources."""
        nodes: list[NodeCapacityOut] = []
        total = allocated = free = Resources()
        live = 0
        for pool in self._engine.pools():
            executor = self._engine.executor_of(pool.name)
            caps = {c.node: c for c in executor.nodes()} if executor is not None else {}
            for usage in pool.nodes:
                cap = caps.get(usage.node)
                held = usage.allocated + usage.reserved
                room = usage.total - held
                room = Resources(max(0, room.millicpu), max(0, room.memory), max(0, room.gpu))
                nodes.append(
                    NodeCapacityOut(
                        node=usage.node,
                        executor=pool.executor,
                        total=resources_out(usage.total),
                        allocated=resources_out(held),
                        free=resources_out(room),
                        running_tasks=usage.tasks,
                        max_tasks=usage.max_tasks,
                        cgroups=cap.cgroups if cap is not None else "none",
                        warnings=list(cap.warnings) if cap is not None else [],
                    )
                )
                total, allocated, free = total + usage.total, allocated + held, free + room
                live += usage.tasks
        counts = self._engine.counts()
        return CapacityOut(
            nodes=nodes,
            total=resources_out(total),
            allocated=resources_out(allocated),
            free=resources_out(free),
            pending_tasks=counts.get(TaskState.PENDING.value, 0),
            running_tasks=live,
        )


def _read_chunk(path: str, position: int) -> bytes:
    try:
        with open(path, "rb") as fh:
            fh.seek(position)
            return fh.read(LOG_CHUNK)
    except FileNotFoundError:
        return b""
