"""The synchronous client. Requests and responses are built in ``calls``; this module only sends them."""

from __future__ import annotations

import builtins
import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from datetime import datetime, timedelta
from types import TracebackType
from typing import Any, Self, TypeVar

import httpx

from taskplane.errors import UnavailableError
from taskplane.sdk import calls, credentials, polling, security_calls, state_calls
from taskplane.sdk.calls import Call, LogStream, TaskInput
from taskplane.sdk.problems import transport_errors
from taskplane.sdk.security_calls import RuleInput
from taskplane.sdk.state_calls import CompareInput, OpInput
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
from taskplane.wire.security import (
    AuditHead,
    AuditPage,
    AuditRecordOut,
    BindingCreate,
    BindingOut,
    RoleOut,
    TokenCreated,
    TokenOut,
    WhoAmI,
)
from taskplane.wire.state import (
    DeleteResult,
    KeyList,
    KeyValueOut,
    LeaseOut,
    LeaseRevoked,
    PutResult,
    TxnOut,
)
from taskplane.wire.state import EventOut as KeyEventOut

T = TypeVar("T")


class Client:
    """A blocking client of a taskplane server.

    ``base_url`` defaults to ``$TASKPLANE_URL``, the client config's ``url``, then ``http://127.0.0.1:8420``;
    ``token`` (sent as ``Authorization: Bearer``) to ``$TASKPLANE_TOKEN``, the client config's ``token``, then a
    local server's ``admin.token`` (``credentials`` has the details). ``timeout`` is per request, in seconds; long
    polls get their own hold time on top and streamed responses have no read timeout. Errors are
    ``taskplane.errors`` classes; an unreachable server raises ``UnavailableError``.

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
        found = credentials.resolve(base_url, token)
        self._base_url = found.url
        self._timeout = timeout
        self._http = httpx.Client(
            base_url=self._base_url,
            headers=calls.default_headers(found.token),
            timeout=timeout,
            transport=transport,
        )
        self.state = StateClient(self)

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
        with self._stream(calls.follow_task_logs(task_id, stream, attempt, offset)) as response:
            yield from response.iter_bytes()

    @contextmanager
    def _stream(self, call: Call[None], idle: float | None = None) -> Iterator[httpx.Response]:
        """Send ``call`` and hand over its response unread once its status is checked; reading errors are mapped.

        ``idle``: seconds without a byte after which the read fails (default: wait for ever).
        """
        request = calls.build_request(self._http, call, self._timeout)
        if idle is not None:
            request.extensions["timeout"] = httpx.Timeout(self._timeout, read=idle).as_dict()
        with transport_errors(self._base_url):
            response = self._http.send(request, stream=True)
        try:
            with transport_errors(self._base_url):
                if not response.is_success:
                    response.read()
                call.decode(response)
                yield response
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

    # -- identity and API keys ------------------------------------------------------------------------------

    def whoami(self) -> WhoAmI:
        """The caller as the server sees it: subject, kind, name and role bindings."""
        return self._send(security_calls.whoami())

    def create_token(
        self,
        owner: str,
        roles: Iterable[str],
        tenant: str | None = None,
        expires_in: int | timedelta | None = None,
        description: str = "",
    ) -> TokenCreated:
        """Mint an API key for ``owner`` with ``roles`` in ``tenant`` (``"*"``: platform-wide).

        ``tenant`` defaults to the caller's only tenant; ``expires_in`` (seconds, at least 60) to never. The
        returned ``token`` is the secret: it is in this response only.
        """
        seconds = int(expires_in.total_seconds()) if isinstance(expires_in, timedelta) else expires_in
        return self._send(
            security_calls.create_token(security_calls.token_request(owner, roles, tenant, seconds, description))
        )

    def list_tokens(self) -> builtins.list[TokenOut]:
        """API keys of the tenants where the caller may list them, oldest first (never their secrets)."""
        return self._send(security_calls.list_tokens()).items

    def get_token(self, token_id: str) -> TokenOut:
        """One API key."""
        return self._send(security_calls.get_token(token_id))

    def revoke_token(self, token_id: str) -> TokenOut:
        """Revoke an API key, effective at once; revoking a revoked key is fine."""
        return self._send(security_calls.revoke_token(token_id))

    # -- roles and bindings ---------------------------------------------------------------------------------

    def list_roles(self) -> builtins.list[RoleOut]:
        """Built-in roles, then custom ones, with their rules."""
        return self._send(security_calls.list_roles()).items

    def get_role(self, name: str) -> RoleOut:
        """One role."""
        return self._send(security_calls.get_role(name))

    def create_role(self, name: str, rules: Iterable[RuleInput], description: str = "") -> RoleOut:
        """Define a custom role of verbs x resources; ``"*"`` is all of either.

        tp.create_role("reader", [{"verbs": ["get", "list"], "resources": ["tasks", "logs"]}])
        """
        return self._send(security_calls.create_role(security_calls.role_request(name, rules, description)))

    def delete_role(self, name: str) -> None:
        """Delete a custom role that no binding or live key uses (``ConflictError`` otherwise)."""
        self._send(security_calls.delete_role(name))

    def bind_role(self, subject: str, tenant: str, role: str) -> BindingOut:
        """Grant ``role`` in ``tenant`` (``"*"``: everywhere) to ``subject`` (``oidc:<sub>`` or ``key:<id>``)."""
        binding = calls.coerce(BindingCreate, {"subject": subject, "tenant": tenant, "role": role}, "binding")
        return self._send(security_calls.create_binding(binding))

    def list_bindings(self, subject: str | None = None) -> builtins.list[BindingOut]:
        """Role bindings in the tenants where the caller may list them, optionally of one ``subject``."""
        return self._send(security_calls.list_bindings(subject)).items

    def unbind_role(self, binding_id: str) -> None:
        """Remove a role binding."""
        self._send(security_calls.delete_binding(binding_id))

    # -- audit ----------------------------------------------------------------------------------------------

    def audit(
        self,
        tenant: str | None = None,
        principal: str | None = None,
        action: str | None = None,
        outcome: str | None = None,
        request_id: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        after: str | None = None,
        limit: int = 100,
    ) -> AuditPage:
        """One page of audit records, oldest first; pass ``next_cursor`` back as ``after`` for the next page."""
        filters = security_calls.audit_filters(tenant, principal, action, outcome, request_id, since, until)
        return self._send(security_calls.list_audit(filters, after, limit))

    def iter_audit(
        self,
        tenant: str | None = None,
        principal: str | None = None,
        action: str | None = None,
        outcome: str | None = None,
        request_id: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        page_size: int = 100,
    ) -> Iterator[AuditRecordOut]:
        """Every matching audit record, oldest first, fetching pages as the iteration goes."""
        filters = security_calls.audit_filters(tenant, principal, action, outcome, request_id, since, until)
        after: str | None = None
        while True:
            page = self._send(security_calls.list_audit(filters, after, page_size))
            yield from page.items
            if page.next_cursor is None:
                return
            after = page.next_cursor

    def export_audit(self, since: datetime | None = None) -> Iterator[AuditRecordOut]:
        """Every audit record the caller may read, oldest first, streamed (one JSON line each on the wire).

        The request is sent when iteration starts; close the iterator to stop early.
        """
        with self._stream(security_calls.export_audit(since)) as response:
            yield from security_calls.decode_audit_lines(response.iter_lines())

    def audit_head(self) -> AuditHead:
        """The chain's last ``(seq, hash)``: keep copies elsewhere as checkpoints for ``taskplane audit verify``."""
        return self._send(security_calls.audit_head())

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


class StateClient:
    """``Client.state``: the tenant's versioned key-value store (``/platform/state``) and its leases.

    Every write returns the store-wide revision it made; ``if_match`` (a mod_revision) and ``create_only`` make
    a write conditional (``PreconditionFailedError`` when the condition fails); ``watch`` streams the changes.
    ``tenant`` defaults to the caller's only tenant.

        with Client() as tp:
            tp.state.put("jobs/a", {"step": 1}, create_only=True)
            entry = tp.state.get("jobs/a")
            tp.state.put("jobs/a", {"step": 2}, if_match=entry.mod_revision)
            for event in tp.state.watch("jobs/"):
                print(event.revision, event.type, event.key)
    """

    def __init__(self, client: Client) -> None:
        self._client = client

    def get(self, key: str, revision: int | None = None, tenant: str | None = None) -> KeyValueOut:
        """The entry of ``key`` (as of ``revision``); ``NotFoundError`` when there is none."""
        return self._client._send(state_calls.get_key(key, revision, tenant))

    def put(
        self,
        key: str,
        value: Any,
        *,
        if_match: int | None = None,
        create_only: bool = False,
        lease: int | None = None,
        ttl: float | timedelta | None = None,
        tenant: str | None = None,
    ) -> PutResult:
        """Write a JSON ``value``: only if unchanged since ``if_match``, or only if new (``create_only``).

        ``lease`` attaches the key to a lease; ``ttl`` (seconds) gives it a lease of its own.
        """
        call = state_calls.put_key(
            key, value, if_match=if_match, create_only=create_only, lease=lease, ttl=ttl, tenant=tenant
        )
        return self._client._send(call)

    def delete(self, key: str, if_match: int | None = None, tenant: str | None = None) -> DeleteResult:
        """Delete ``key`` (only if unchanged since ``if_match``); ``deleted`` is 0 when it did not exist."""
        return self._client._send(state_calls.delete_key(key, if_match, tenant))

    def list(
        self,
        prefix: str = "",
        limit: int = 100,
        after: str | None = None,
        revision: int | None = None,
        tenant: str | None = None,
    ) -> KeyList:
        """One page of the entries under ``prefix`` in key order; pass ``next_key`` back as ``after``."""
        return self._client._send(state_calls.list_keys(prefix, limit, after, revision, tenant))

    def iter(
        self, prefix: str = "", page_size: int = 100, revision: int | None = None, tenant: str | None = None
    ) -> Iterator[KeyValueOut]:
        """Every entry under ``prefix`` in key order, all pages read at the first page's revision.

        ``CompactedError`` when that revision is compacted before the last page is read.
        """
        after: str | None = None
        while True:
            page = self._client._send(state_calls.list_keys(prefix, page_size, after, revision, tenant))
            yield from page.items
            if page.next_key is None:
                return
            after, revision = page.next_key, page.revision

    def txn(
        self,
        compare: Iterable[CompareInput] = (),
        success: Iterable[OpInput] = (),
        failure: Iterable[OpInput] = (),
        tenant: str | None = None,
    ) -> TxnOut:
        """If every compare holds, the ``success`` ops, else the ``failure`` ops; atomically, at one revision.

        tp.state.txn(
            compare=[Compare.mod_revision("acct/a", "==", 7)],
            success=[Op.put("acct/a", 90), Op.put("acct/b", 110)],
            failure=[Op.get("acct/a")],
        )
        """
        return self._client._send(state_calls.txn(state_calls.txn_request(compare, success, failure), tenant))

    def watch(
        self,
        prefix: str = "",
        *,
        key: str | None = None,
        from_revision: int | None = None,
        tenant: str | None = None,
        retries: int = 5,
    ) -> Iterator[KeyEventOut]:
        """The changes of ``key``, or of the keys under ``prefix``, from ``from_revision`` (default: from now on).

        Never ends by itself: when the stream ends or drops it is reopened from the revision after the last
        one seen, so each revision comes once and in order. ``CompactedError`` when the server no longer keeps
        the revision to resume from; ``UnavailableError`` after ``retries`` reconnects in a row brought nothing.
        The request is sent when iteration starts; close the iterator to stop.
        """
        cursor = state_calls.WatchCursor(from_revision)
        failures = 0
        while True:
            call = state_calls.watch(prefix, key, cursor.next_revision, tenant)
            heard, error = False, None
            try:
                with self._client._stream(call, idle=state_calls.WATCH_IDLE_SECONDS) as response:
                    for message in state_calls.sse_messages(response.iter_lines()):
                        heard = True
                        event = cursor.accept(message)
                        if event is not None:
                            yield event
            except UnavailableError as exc:
                error = exc
            failures = 0 if heard else failures + 1
            if failures > retries:
                raise error or UnavailableError(f"the watch stream ended {failures} times in a row without a word")
            time.sleep(state_calls.reconnect_delay(failures))

    # -- leases ---------------------------------------------------------------------------------------------

    def lease(self, ttl: float | timedelta, tenant: str | None = None) -> LeaseOut:
        """A new lease of ``ttl`` seconds; keys put with it vanish when it expires."""
        return self._client._send(state_calls.grant_lease(ttl, tenant))

    def keepalive(self, lease_id: int, tenant: str | None = None) -> LeaseOut:
        """Renew a live lease for another ``ttl``; ``NotFoundError`` once it expired (its keys are gone)."""
        return self._client._send(state_calls.keepalive(lease_id, tenant))

    def revoke_lease(self, lease_id: int, tenant: str | None = None) -> LeaseRevoked:
        """End a lease now; its keys are deleted at the returned revision."""
        return self._client._send(state_calls.revoke_lease(lease_id, tenant))

    def get_lease(self, lease_id: int, tenant: str | None = None) -> LeaseOut:
        """A live lease and its keys."""
        return self._client._send(state_calls.get_lease(lease_id, tenant))
