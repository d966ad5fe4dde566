"""The synchronous client. Requests and responses are built in ``calls``; this module only sends them."""

from __future__ import annotations

import builtins
import time
from collections.abc import Iterable, Iterator, Mapping
from datetime import datetime
from types import TracebackType
from typing import Any, Self, TypeVar

import httpx

from taskplane.sdk import calls, polling
from taskplane.sdk.calls import Call, LogStream, TaskInput
from taskplane.sdk.problems import transport_errors
from taskplane.wire import (
    BatchSubmitResult,
    CapacityOut,
    EventOut,
    ReservationOut,
    ReserveRequest,
    ResourcesReport,
    TaskList,
    TaskOut,
    TenantCreate,
    TenantOut,
    TenantUpdate,
    UsageReport,
)

T = TypeVar("T")


class Client:
    """A blocking client of a taskplane server.

    ``base_url`` defaults to ``$TASKPLANE_URL`` then ``http://127.0.0.1:8420``; ``token`` to
    ``$TASKPLANE_TOKEN`` (sent as ``Authorization: Bearer``). ``timeout`` is per request, in seconds; long polls
    get their own hold time on top and followed logs have no read timeout. Errors are ``taskplane.errors``
    classes; an unreachable server raises ``UnavailableError``.

        with Client() as tp:
            task = tp.submit(command=["python", "-c", "print(1)"], resources={"cpu": "500m"})
            print(tp.wait(task.id).state)
    """

    def __init__(
        self,
        base_url: str | None = None,
        *,
        token: str | None = None,
        timeout: float = 30.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self._base_url = calls.resolve_base_url(base_url)
        self._timeout = timeout
        self._http = httpx.Client(
            base_url=self._base_url,
            headers=calls.default_headers(token),
            timeout=timeout,
            transport=transport,
        )

    @property
    def base_url(self) -> str:
        """The server this client talks to."""
        return self._base_url

    def __repr__(self) -> str:
        return f"Client({self._base_url!r})"

    def _send(self, call: Call[T]) -> T:
        with transport_errors(self._base_url):
            response = self._http.send(calls.build_request(self._http, call, self._timeout))
        return call.decode(response)

    # -- tasks ----------------------------------------------------------------------------------------------

    def submit(self, task: TaskInput | None = None, /, *, idempotency_key: str | None = None, **fields: Any) -> TaskOut:
        """Submit one task, given as a ``TaskSubmit``, a mapping, or keyword fields of ``TaskSubmit``.

        With ``idempotency_key`` (sent as the ``Idempotency-Key`` header) a repeated call returns the task the
        first call created.
        """
        return self._send(calls.submit_task(calls.coerce_task(task, fields), idempotency_key))

    def submit_batch(self, tasks: Iterable[TaskInput]) -> BatchSubmitResult:
        """Submit up to the server's ``max_batch`` (default 1,000) tasks in one transaction."""
        return self._send(calls.submit_batch(tasks))

    def get(self, task_id: str) -> TaskOut:
        """One task, with its attempts."""
        return self._send(calls.get_task(task_id))

    def list(
        self,
        state: str | Iterable[str] | None = None,
        labels: Mapping[str, str] | Iterable[str] | None = None,
        created_after: datetime | None = None,
        created_before: datetime | None = None,
        limit: int = 100,
        cursor: str | None = None,
    ) -> TaskList:
        """One page of tasks, newest first; pass ``next_cursor`` back as ``cursor`` for the next page."""
        filters = calls.list_filters(state, labels, created_after, created_before)
        return self._send(calls.list_tasks(filters, limit, cursor))

    def iter_tasks(
        self,
        state: str | Iterable[str] | None = None,
        labels: Mapping[str, str] | Iterable[str] | None = None,
        created_after: datetime | None = None,
        created_before: datetime | None = None,
        page_size: int = 100,
    ) -> Iterator[TaskOut]:
        """Every matching task, newest first, fetching pages as the iteration goes."""
        filters = calls.list_filters(state, labels, created_after, created_before)
        cursor: str | None = None
        while True:
            page = self._send(calls.list_tasks(filters, page_size, cursor))
            yield from page.items
            if page.next_cursor is None:
                return
            cursor = page.next_cursor

    def cancel(self, task_id: str) -> TaskOut:
        """Ask for a task to be cancelled; returns it ``cancelling`` or ``cancelled``.

        Raises ``InvalidTransitionError`` when the task has already ended otherwise.
        """
        return self._send(calls.cancel_task(task_id))

    def events(self, task_id: str) -> builtins.list[EventOut]:
        """Return the recorded transitions of a task, oldest first."""
        return self._send(calls.task_events(task_id))

    def wait(self, task_id: str, timeout: float | None = None) -> TaskOut:
        """Block until the task ends and return it; raise ``WaitTimeoutError`` after ``timeout`` seconds."""
        deadline = polling.deadline_after(timeout, time.monotonic())
        while True:
            task = self._send(calls.wait_task(task_id, polling.poll_seconds(deadline, time.monotonic())))
            if polling.is_terminal(task):
                return task
            if polling.expired(deadline, time.monotonic()):
                raise polling.WaitTimeoutError(task, timeout or 0.0)

    def logs(self, task_id: str, stream: LogStream = "stdout", attempt: int | None = None, offset: int = 0) -> bytes:
        """Return what an attempt (default: the latest) has written to ``stream`` so far, from byte ``offset``."""
        return self._send(calls.task_logs(task_id, stream, attempt, offset))

    def follow_logs(
        self, task_id: str, stream: LogStream = "stdout", attempt: int | None = None, offset: int = 0
    ) -> Iterator[bytes]:
        """Chunks of ``stream`` as they are written, until the task ends (``tail -f``).

        The request is sent when iteration starts; close the iterator to stop early.
        """
        call = calls.follow_task_logs(task_id, stream, attempt, offset)
        with transport_errors(self._base_url):
            response = self._http.send(calls.build_request(self._http, call, self._timeout), stream=True)
        try:
            with transport_errors(self._base_url):
                if not response.is_success:
                    response.read()
                call.decode(response)
                yield from response.iter_bytes()
        finally:
            response.close()

    # -- platform -------------------------------------------------------------------------------------------

    def capacity(self) -> CapacityOut:
        """Capacity per node and in total, with pending and running counts."""
        return self._send(calls.capacity())

    def health(self) -> dict[str, Any]:
        """``/healthz``: raises ``UnavailableError`` when the server does not answer."""
        return self._send(calls.probe("/healthz"))

    def ready(self) -> dict[str, Any]:
        """``/readyz``: raises ``UnavailableError`` when the server is up but not ready."""
        return self._send(calls.probe("/readyz"))

    # -- tenants --------------------------------------------------------------------------------------------

    def create_tenant(self, tenant: TenantCreate | Mapping[str, Any] | None = None, /, **fields: Any) -> TenantOut:
        """Create a tenant, given as a ``TenantCreate``, a mapping, or keyword fields (``name``, ``quota``...).

        tp.create_tenant(name="analytics", quota={"cpu": "16", "memory": "64Gi"}, weight=2)
        """
        return self._send(calls.create_tenant(calls.coerce(TenantCreate, calls.either(tenant, fields), "tenant")))

    def update_tenant(
        self, name: str, patch: TenantUpdate | Mapping[str, Any] | None = None, /, **fields: Any
    ) -> TenantOut:
        """Change only the members given (JSON merge patch); ``None`` resets one, e.g. ``quota={"cpu": None}``."""
        return self._send(calls.update_tenant(name, calls.coerce(TenantUpdate, calls.either(patch, fields), "patch")))

    def get_tenant(self, name: str) -> TenantOut:
        """One tenant with what it holds now."""
        return self._send(calls.get_tenant(name))

    def list_tenants(self) -> builtins.list[TenantOut]:
        """Every tenant by name, ``default`` included."""
        return (self._send(calls.list_tenants())).items

    def delete_tenant(self, name: str) -> None:
        """Delete a tenant with no live task or reservation (``ConflictError`` otherwise)."""
        self._send(calls.delete_tenant(name))

    # -- resources ------------------------------------------------------------------------------------------

    def resources(self) -> ResourcesReport:
        """Per pool and node: total, allocated, reserved and free resources."""
        return self._send(calls.resources())

    def reserve(self, request: ReserveRequest | Mapping[str, Any] | None = None, /, **fields: Any) -> ReservationOut:
        """Reserve ``count`` slots of ``resources`` in a pool for a tenant, all or none.

        tp.reserve(tenant="analytics", pool="default", resources={"cpu": 2, "memory": "4Gi"}, count=4, ttl="1h")
        """
        return self._send(calls.reserve(calls.coerce(ReserveRequest, calls.either(request, fields), "reservation")))

    def release(self, reservation_id: str) -> ReservationOut:
        """Release a reservation; ``ConflictError`` (``reservation_ended``) when it already ended."""
        return self._send(calls.release(reservation_id))

    def get_reservation(self, reservation_id: str) -> ReservationOut:
        """One reservation, live or ended."""
        return self._send(calls.get_reservation(reservation_id))

    def list_reservations(self, tenant: str | None = None, live: bool = False) -> builtins.list[ReservationOut]:
        """Reservations, oldest first; ``live`` keeps only pending and active ones."""
        return (self._send(calls.list_reservations(tenant, live))).items

    def usage(
        self, window: str | None = None, start: datetime | None = None, end: datetime | None = None
    ) -> UsageReport:
        """Per tenant and pool over ``window`` (``"1h"``, ending now) or ``start``..``end``; default the last hour."""
        return self._send(calls.usage(window, start, end))

    # -- lifetime -------------------------------------------------------------------------------------------

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
