"""``/platform/tasks``: submit, read, list, cancel, wait, events, logs."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Header, Query
from fastapi.responses import StreamingResponse
from pydantic import BaseModel
from starlette.responses import Response

from taskplane.api.deps import CallerDep, TasksDep
from taskplane.services.ports import LogStream
from taskplane.wire import BatchSubmit, BatchSubmitResult, EventOut, Problem, TaskList, TaskOut, TaskSubmit

router = APIRouter(prefix="/platform/tasks", tags=["tasks"])

PROBLEMS: dict[int | str, dict[str, Any]] = {
    status: {"model": Problem, "content": {"application/problem+json": {}}} for status in (400, 404, 409, 413, 422, 503)
}


def _json(model: BaseModel, status: int = 200) -> Response:
    return Response(model.model_dump_json(exclude_none=False), status_code=status, media_type="application/json")


class EventList(BaseModel):
    """A task's events."""

    items: list[EventOut]


@router.post("", response_model=TaskOut, status_code=201, responses=PROBLEMS)
async def submit_task(
    body: TaskSubmit,
    tasks: TasksDep,
    caller: CallerDep,
    idempotency_key: Annotated[str | None, Header(max_length=256)] = None,
) -> Response:
    """Submit one task. With an ``Idempotency-Key``, a repeat returns the first task (200)."""
    task, created = await tasks.submit(caller, body, idempotency_key)
    return _json(task, 201 if created else 200)


@router.post("/batch", response_model=BatchSubmitResult, status_code=201, responses=PROBLEMS)
async def submit_batch(body: BatchSubmit, tasks: TasksDep, caller: CallerDep) -> Response:
    """Submit up to 1,000 tasks in one transaction: all are created or none."""
    return _json(await tasks.submit_batch(caller, body), 201)


@router.get("", response_model=TaskList, responses=PROBLEMS)
async def list_tasks(
    tasks: TasksDep,
    caller: CallerDep,
    state: Annotated[list[str], Query()] = [],  # noqa: B006 - FastAPI reads the default, never mutates it
    label: Annotated[list[str], Query(description="key=value; repeat for AND")] = [],  # noqa: B006
    created_after: datetime | None = None,
    created_before: datetime | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    cursor: Annotated[str | None, Query(max_length=256)] = None,
) -> Response:
    """Tasks, newest first, filtered by state, labels and creation time; cursor-paginated."""
    page = await tasks.list_tasks(
        caller,
        states=state,
        labels=label,
        created_after=created_after,
        created_before=created_before,
        limit=limit,
        cursor=cursor,
    )
    return _json(page)


@router.get("/{task_id}", response_model=TaskOut, responses=PROBLEMS)
async def get_task(task_id: str, tasks: TasksDep, caller: CallerDep) -> Response:
    """One task with its attempts, and why it is pending when it is."""
    return _json(await tasks.get(caller, task_id))


@router.put("/{task_id}/cancel", response_model=TaskOut, status_code=202, responses=PROBLEMS)
async def cancel_task(task_id: str, tasks: TasksDep, caller: CallerDep) -> Response:
    """Cancel a pending or running task (idempotent). A task that already ended otherwise is a 409."""
    return _json(await tasks.cancel(caller, task_id), 202)


@router.get("/{task_id}/wait", response_model=TaskOut, responses=PROBLEMS)
async def wait_task(
    task_id: str, tasks: TasksDep, caller: CallerDep, timeout: Annotated[float, Query(ge=0, le=60)] = 30.0
) -> Response:
    """Long poll: the task once it has ended, or as it is after ``timeout`` seconds."""
    return _json(await tasks.wait(caller, task_id, timeout))


@router.get("/{task_id}/events", response_model=EventList, responses=PROBLEMS)
async def task_events(task_id: str, tasks: TasksDep, caller: CallerDep) -> Response:
    """Every recorded transition of the task, oldest first."""
    return _json(EventList(items=await tasks.events(caller, task_id)))


@router.get(
    "/{task_id}/logs",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/plain": {}}}, **PROBLEMS},
)
async def task_logs(
    task_id: str,
    tasks: TasksDep,
    caller: CallerDep,
    stream: LogStream = LogStream.STDOUT,
    attempt: Annotated[int | None, Query(ge=1)] = None,
    follow: bool = False,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> StreamingResponse:
    """An attempt's stdout or stderr (default: the latest attempt); ``follow`` streams until it ends."""
    body = await tasks.open_logs(caller, task_id, stream, attempt, follow, offset)
    return StreamingResponse(
        body, media_type="text/plain; charset=utf-8", headers={"X-Content-Type-Options": "nosniff"}
    )
