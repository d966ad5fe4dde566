"""The task API as data: each operation is a ``Call`` (the parts of a request and the decoder of its response).

Both clients build their requests here and decode responses here, so the sync and async clients differ only
in how they send::

    Client.get(id) ------+                                             +--> httpx.Client.send
                         +--> get_task(id) -> Call --> build_request --+                        --> call.decode
    AsyncClient.get(id) -+                                             +--> httpx.AsyncClient.send

No I/O happens in this module. Keys, roles, bindings and the audit log are in ``security_calls``, built the same
way; where the server and the token come from is ``credentials``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Generic, Literal, TypeVar
from urllib.parse import quote

import httpx
from pydantic import BaseModel, ValidationError

from taskplane import __version__
from taskplane.errors import InternalError, InvalidRequestError
from taskplane.sdk.problems import raise_for_problem
from taskplane.wire import (
    BatchSubmit,
    BatchSubmitResult,
    CapacityOut,
    EventOut,
    ReservationList,
    ReservationOut,
    ReserveRequest,
    ResourcesReport,
    TaskList,
    TaskOut,
    TaskSubmit,
    TenantCreate,
    TenantList,
    TenantOut,
    TenantUpdate,
    UsageReport,
)

LogStream = Literal["stdout", "stderr"]
TaskInput = TaskSubmit | Mapping[str, Any]

T = TypeVar("T")
M = TypeVar("M", bound=BaseModel)


@dataclass(frozen=True, slots=True)
class Call(Generic[T]):
    """One request of the API and how to read its response.

    ``hold`` is how long the server may hold the request before answering (a long poll), added to the read
    timeout. ``stream`` marks a response read incrementally: it gets no read timeout and ``decode`` only
    checks the status (the caller reads the body).
    """

    method: str
    path: str
    decode: Callable[[httpx.Response], T]
    params: tuple[tuple[str, str], ...] = ()
    body: bytes | None = None
    headers: tuple[tuple[str, str], ...] = ()
    hold: float = 0.0
    stream: bool = False


def default_headers(token: str | None) -> dict[str, str]:
    """Headers sent on every request; ``token``, when there is one, as ``Authorization: Bearer``."""
    headers = {"User-Agent": f"taskplane-sdk/{__version__}", "Accept": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    return headers


def build_request(http: httpx.Client | httpx.AsyncClient, call: Call[Any], timeout: float) -> httpx.Request:
    """Build the ``httpx`` request for ``call``, with timeouts derived from the client's base ``timeout``."""
    headers = dict(call.headers)
    if call.body is not None:
        headers["Content-Type"] = "application/json"
    request_timeout = httpx.Timeout(timeout, read=None) if call.stream else httpx.Timeout(timeout + call.hold)
    return http.build_request(
        call.method,
        call.path,
        params=list(call.params),
        content=call.body,
        headers=headers,
        timeout=request_timeout,
    )


# -- decoders -------------------------------------------------------------------------------------------------


def decode_model(model: type[M]) -> Callable[[httpx.Response], M]:
    """A decoder of ``model`` from a 2xx response; another status raises its mapped error."""

    def decode(response: httpx.Response) -> M:
        raise_for_problem(response)
        try:
            return model.model_validate_json(response.content)
        except ValidationError as exc:
            raise InternalError(
                f"the server at {response.request.url} sent a {model.__name__} this client cannot read "
                f"({exc.error_count()} invalid fields; are client and server versions compatible?)"
            ) from exc

    return decode


class _EventList(BaseModel):
    items: list[EventOut]


def _decode_events(response: httpx.Response) -> list[EventOut]:
    return decode_model(_EventList)(response).items


def _decode_bytes(response: httpx.Response) -> bytes:
    raise_for_problem(response)
    return response.content


def decode_empty(response: httpx.Response) -> None:
    """The decoder of a response without a body (204)."""
    raise_for_problem(response)


def _decode_json_object(response: httpx.Response) -> dict[str, Any]:
    raise_for_problem(response)
    try:
        body = response.json()
    except ValueError:
        return {"status": response.text.strip()}
    return body if isinstance(body, dict) else {"status": body}


# -- argument checks ------------------------------------------------------------------------------------------


def task_path(task_id: str, suffix: str = "") -> str:
    """``/platform/tasks/{id}{suffix}`` with the id escaped, so no id can reach another route."""
    if not isinstance(task_id, str) or not task_id:
        raise InvalidRequestError("a task id must be a non-empty string")
    return f"/platform/tasks/{quote(task_id, safe='')}{suffix}"


def named_path(prefix: str, name: str, what: str) -> str:
    """``{prefix}/{name}`` with ``name`` escaped into one segment; ``what`` names it in the error."""
    if not isinstance(name, str) or not name:
        raise InvalidRequestError(f"a {what} must be a non-empty string")
    return f"{prefix}/{quote(name, safe='')}"


def either(value: M | Mapping[str, Any] | None, fields: Mapping[str, Any]) -> M | Mapping[str, Any]:
    """The model or mapping given, or else the keyword ``fields``; both at once is a ``TypeError``."""
    if value is not None and fields:
        raise TypeError("pass a model or mapping, or keyword fields, not both")
    return value if value is not None else fields


def coerce(model: type[M], value: M | Mapping[str, Any], what: str) -> M:
    """Validate ``value`` as ``model`` before anything is sent; errors are ``InvalidRequestError``."""
    if isinstance(value, model):
        return value
    try:
        return model.model_validate(dict(value))
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or what
        raise InvalidRequestError(
            f"invalid {what}: {where}: {first['msg']}",
            errors=exc.errors(include_url=False, include_context=False),
        ) from exc


def coerce_task(task: TaskInput | None, fields: Mapping[str, Any]) -> TaskSubmit:
    """Make a ``TaskSubmit`` from a model, a mapping, or keyword ``fields`` (exactly one of them).

    Invalid fields raise ``InvalidRequestError`` with pydantic's ``errors`` before anything is sent.
    """
    if task is not None and fields:
        raise TypeError("pass a task or keyword fields, not both")
    if isinstance(task, TaskSubmit):
        return task
    try:
        return TaskSubmit.model_validate(dict(task if task is not None else fields))
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "task"
        raise InvalidRequestError(
            f"invalid task: {where}: {first['msg']}",
            errors=exc.errors(include_url=False, include_context=False),
        ) from exc


def rfc3339(value: datetime, *, field: str) -> str:
    """Format a timezone-aware datetime as an RFC 3339 UTC string; naive datetimes are refused."""
    if value.tzinfo is None or value.utcoffset() is None:
        raise InvalidRequestError(f"{field} must be timezone-aware")
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def list_filters(
    state: str | Iterable[str] | None = None,
    labels: Mapping[str, str] | Iterable[str] | None = None,
    created_after: datetime | None = None,
    created_before: datetime | None = None,
) -> tuple[tuple[str, str], ...]:
    """Query parameters selecting tasks. ``labels`` is a mapping or ``"key=value"`` strings (all must match)."""
    params: list[tuple[str, str]] = []
    states = [state] if isinstance(state, str) else list(state or ())
    params.extend(("state", str(s)) for s in states)
    pairs = [f"{k}={v}" for k, v in labels.items()] if isinstance(labels, Mapping) else list(labels or ())
    for pair in pairs:
        if "=" not in pair or pair.startswith("="):
            raise InvalidRequestError(f"label selector {pair!r} must look like key=value")
        params.append(("label", pair))
    if created_after is not None:
        params.append(("created_after", rfc3339(created_after, field="created_after")))
    if created_before is not None:
        params.append(("created_before", rfc3339(created_before, field="created_before")))
    return tuple(params)


# -- the calls ------------------------------------------------------------------------------------------------


def submit_task(task: TaskSubmit, idempotency_key: str | None = None) -> Call[TaskOut]:
    """``POST /platform/tasks`` (201 created, 200 when the idempotency key was seen before)."""
    if idempotency_key is not None and task.idempotency_key not in (None, idempotency_key):
        raise InvalidRequestError("idempotency_key differs from the task's own idempotency_key")
    headers = (("Idempotency-Key", idempotency_key),) if idempotency_key is not None else ()
    body = task.model_dump_json(exclude_unset=True).encode()
    return Call("POST", "/platform/tasks", decode_model(TaskOut), body=body, headers=headers)


def submit_batch(tasks: Iterable[TaskInput]) -> Call[BatchSubmitResult]:
    """``POST /platform/tasks/batch``: all tasks are created in one transaction, or none."""
    batch = BatchSubmit(tasks=[coerce_task(task, {}) for task in tasks])
    body = batch.model_dump_json(exclude_unset=True).encode()
    return Call("POST", "/platform/tasks/batch", decode_model(BatchSubmitResult), body=body)


def get_task(task_id: str) -> Call[TaskOut]:
    """``GET /platform/tasks/{id}``, attempts included."""
    return Call("GET", task_path(task_id), decode_model(TaskOut))


def list_tasks(filters: tuple[tuple[str, str], ...], limit: int = 100, cursor: str | None = None) -> Call[TaskList]:
    """``GET /platform/tasks``: one page, newest first."""
    params = (*filters, ("limit", str(limit)))
    if cursor is not None:
        params = (*params, ("cursor", cursor))
    return Call("GET", "/platform/tasks", decode_model(TaskList), params=params)


def cancel_task(task_id: str) -> Call[TaskOut]:
    """``PUT /platform/tasks/{id}/cancel`` (202: now cancelling or cancelled)."""
    return Call("PUT", task_path(task_id, "/cancel"), decode_model(TaskOut))


def task_events(task_id: str) -> Call[list[EventOut]]:
    """``GET /platform/tasks/{id}/events``, oldest first."""
    return Call("GET", task_path(task_id, "/events"), _decode_events)


def wait_task(task_id: str, poll_seconds: int) -> Call[TaskOut]:
    """``GET /platform/tasks/{id}/wait``: answers when the task is terminal or after ``poll_seconds``."""
    return Call(
        "GET",
        task_path(task_id, "/wait"),
        decode_model(TaskOut),
        params=(("timeout", str(poll_seconds)),),
        hold=float(poll_seconds),
    )


def _logs_params(stream: LogStream, attempt: int | None, offset: int, *, follow: bool) -> tuple[tuple[str, str], ...]:
    params: list[tuple[str, str]] = [("stream", stream), ("follow", "true" if follow else "false")]
    if attempt is not None:
        params.append(("attempt", str(attempt)))
    if offset:
        params.append(("offset", str(offset)))
    return tuple(params)


def task_logs(task_id: str, stream: LogStream = "stdout", attempt: int | None = None, offset: int = 0) -> Call[bytes]:
    """``GET /platform/tasks/{id}/logs``: what the attempt (default: the latest) has written so far."""
    params = _logs_params(stream, attempt, offset, follow=False)
    return Call("GET", task_path(task_id, "/logs"), _decode_bytes, params=params, headers=(("Accept", "*/*"),))


def follow_task_logs(
    task_id: str, stream: LogStream = "stdout", attempt: int | None = None, offset: int = 0
) -> Call[None]:
    """``GET /platform/tasks/{id}/logs?follow=true``: a response that streams until the task ends."""
    params = _logs_params(stream, attempt, offset, follow=True)
    return Call(
        "GET",
        task_path(task_id, "/logs"),
        raise_for_problem,
        params=params,
        headers=(("Accept", "*/*"),),
        stream=True,
    )


def capacity() -> Call[CapacityOut]:
    """``GET /platform/capacity``."""
    return Call("GET", "/platform/capacity", decode_model(CapacityOut))


def probe(path: Literal["/healthz", "/readyz"]) -> Call[dict[str, Any]]:
    """``GET /healthz`` (alive) or ``GET /readyz`` (database reachable, executors healthy)."""
    return Call("GET", path, _decode_json_object)


# -- tenants --------------------------------------------------------------------------------------------------

TENANTS = "/platform/admin/tenants"


def create_tenant(tenant: TenantCreate) -> Call[TenantOut]:
    """``POST /platform/admin/tenants`` (201; 409 ``tenant_exists``)."""
    body = tenant.model_dump_json(exclude_unset=True).encode()
    return Call("POST", TENANTS, decode_model(TenantOut), body=body)


def update_tenant(name: str, patch: TenantUpdate) -> Call[TenantOut]:
    """``PATCH /platform/admin/tenants/{name}``: only the members set on ``patch`` are sent (``None`` as null)."""
    body = patch.model_dump_json(exclude_unset=True).encode()
    return Call("PATCH", named_path(TENANTS, name, "tenant name"), decode_model(TenantOut), body=body)


def get_tenant(name: str) -> Call[TenantOut]:
    """``GET /platform/admin/tenants/{name}``."""
    return Call("GET", named_path(TENANTS, name, "tenant name"), decode_model(TenantOut))


def list_tenants() -> Call[TenantList]:
    """``GET /platform/admin/tenants``."""
    return Call("GET", TENANTS, decode_model(TenantList))


def delete_tenant(name: str) -> Call[None]:
    """``DELETE /platform/admin/tenants/{name}`` (204; 409 ``tenant_not_empty`` or ``tenant_protected``)."""
    return Call("DELETE", named_path(TENANTS, name, "tenant name"), decode_empty)


# -- resources ------------------------------------------------------------------------------------------------

RESOURCES = "/platform/resources"


def resources() -> Call[ResourcesReport]:
    """``GET /platform/resources``: per pool and node, total, allocated, reserved and free."""
    return Call("GET", RESOURCES, decode_model(ResourcesReport))


def reserve(request: ReserveRequest) -> Call[ReservationOut]:
    """``POST /platform/resources/reserve`` (201, the reservation ``pending`` or already ``active``)."""
    body = request.model_dump_json(exclude_unset=True).encode()
    return Call("POST", f"{RESOURCES}/reserve", decode_model(ReservationOut), body=body)


def _reservation_path(reservation_id: str) -> str:
    path = named_path(RESOURCES, reservation_id, "reservation id")
    if reservation_id in ("reserve", "reservations", "usage"):
        raise InvalidRequestError(f"{reservation_id!r} is not a reservation id")
    return path


def release(reservation_id: str) -> Call[ReservationOut]:
    """``DELETE /platform/resources/{id}``: the released reservation (409 ``reservation_ended``)."""
    return Call("DELETE", _reservation_path(reservation_id), decode_model(ReservationOut))


def get_reservation(reservation_id: str) -> Call[ReservationOut]:
    """``GET /platform/resources/{id}``."""
    return Call("GET", _reservation_path(reservation_id), decode_model(ReservationOut))


def list_reservations(tenant: str | None = None, live: bool = False) -> Call[ReservationList]:
    """``GET /platform/resources/reservations``, oldest first."""
    params: list[tuple[str, str]] = []
    if tenant is not None:
        params.append(("tenant", tenant))
    if live:
        params.append(("live", "true"))
    return Call("GET", f"{RESOURCES}/reservations", decode_model(ReservationList), params=tuple(params))


def usage(window: str | None = None, start: datetime | None = None, end: datetime | None = None) -> Call[UsageReport]:
    """``GET /platform/resources/usage``: ``window`` (``"1h"``) ending now, or ``start``/``end``."""
    params: list[tuple[str, str]] = []
    if window is not None:
        params.append(("window", window))
    if start is not None:
        params.append(("start", rfc3339(start, field="start")))
    if end is not None:
        params.append(("end", rfc3339(end, field="end")))
    return Call("GET", f"{RESOURCES}/usage", decode_model(UsageReport), params=tuple(params))
