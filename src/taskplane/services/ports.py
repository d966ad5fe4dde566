"""Ports: the small protocols services use to reach storage, executors and time.

Each port has one contract suite in ``tests/contract`` that every implementation passes.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from taskplane.domain.access import ApiKey, RoleBinding, StoredRole
from taskplane.domain.audit import AuditEntry, AuditRecord, Checkpoint
from taskplane.domain.outcome import AttemptOutcome
from taskplane.domain.reservation import Reservation
from taskplane.domain.resources import Resources
from taskplane.domain.state import Event, KeyValue, KVPage, Lease, Txn, TxnResult
from taskplane.domain.task import NO_HOST_ACCESS, Attempt, HostAccess, Task, TaskState
from taskplane.domain.tenant import Tenant

# ---------------------------------------------------------------------------------------------- time


class Clock(Protocol):
    """Where services get the time; tests pass a fake one."""

    def now(self) -> datetime:
        """The current time, timezone-aware UTC."""
        ...

    def monotonic(self) -> float:
        """Seconds from an arbitrary origin that never goes backwards."""
        ...


# ------------------------------------------------------------------------------------------- storage


@dataclass(frozen=True, slots=True)
class TaskEvent:
    """One recorded transition or fact about a task (the outbox row)."""

    task_id: str
    at: datetime
    type: str  # created, admitted, starting, running, exited, retrying, cancel_requested, succeeded, ...
    from_state: TaskState | None = None
    to_state: TaskState | None = None
    attempt: int | None = None
    data: Mapping[str, Any] = field(default_factory=dict)
    seq: int = 0  # assigned by the store


@dataclass(frozen=True, slots=True)
class NewTask:
    """A task to create, with the fingerprint of its request for idempotency checks."""

    task: Task
    request_hash: str | None = None


@dataclass(frozen=True, slots=True)
class Created:
    """The result of creating one task: the stored task, and whether this call created it."""

    task: Task
    created: bool


@dataclass(frozen=True, slots=True)
class TaskFilter:
    """Filters for listing tasks. All given filters must match."""

    states: frozenset[TaskState] = frozenset()
    labels: Mapping[str, str] = field(default_factory=dict)
    created_after: datetime | None = None
    created_before: datetime | None = None
    tenant: str | None = None
    tenants: frozenset[str] | None = None  # only these tenants' tasks (None: every tenant)


@dataclass(frozen=True, slots=True)
class Page:
    """One page of tasks and the cursor for the next one (``None`` at the end)."""

    items: list[Task]
    next_cursor: str | None


@dataclass(slots=True)
class ChangeSet:
    """Everything one engine step writes, committed in a single transaction."""

    tasks: list[Task] = field(default_factory=list)  # full new rows of tasks that changed
    new_attempts: list[Attempt] = field(default_factory=list)
    attempts: list[Attempt] = field(default_factory=list)  # full new rows of attempts that changed
    events: list[TaskEvent] = field(default_factory=list)
    reservations: list[Reservation] = field(default_factory=list)  # full new rows of reservations that changed
    audit: list[AuditEntry] = field(default_factory=list)  # records of the requests these changes answer

    def __bool__(self) -> bool:
        return bool(self.tasks or self.new_attempts or self.attempts or self.events or self.reservations or self.audit)


class TaskStore(Protocol):
    """Durable task, attempt and event storage. Every method is one transaction."""

    async def create_tasks(
        self, new: Sequence[NewTask], events: Sequence[TaskEvent], audit: AuditEntry | None = None
    ) -> list[Created]:
        """Insert tasks (all or nothing) with their events, and ``audit`` chained in the same transaction.

        A task whose ``(tenant, idempotency_key)`` exists already is not inserted: its stored row is returned
        with ``created=False``, or ``IdempotencyConflictError`` is raised when its request hash differs. The
        unique index decides, inside the transaction. Events of tasks not created are not written.
        """
        ...

    async def get_task(self, task_id: str) -> Task | None:
        """One task, or ``None``."""
        ...

    async def get_attempts(self, task_id: str) -> list[Attempt]:
        """A task's attempts, oldest first."""
        ...

    async def get_events(self, task_id: str, limit: int = 1000) -> list[TaskEvent]:
        """A task's events, oldest first."""
        ...

    async def list_tasks(self, filt: TaskFilter, limit: int, cursor: str | None) -> Page:
        """Tasks matching ``filt``, newest first, ``limit`` at most; ``cursor`` from a previous page."""
        ...

    async def apply(self, changes: ChangeSet) -> None:
        """Write a change set in one transaction (task rows are updated by id, attempts by (task_id, number))."""
        ...

    async def load_unfinished(self) -> tuple[list[Task], list[Attempt]]:
        """All non-terminal tasks (oldest first) and all non-terminal attempts: the engine's state after a restart."""
        ...

    async def load_reservations(self) -> list[Reservation]:
        """All pending and active reservations, oldest first."""
        ...

    async def next_epoch(self) -> int:
        """Increment and return the server epoch, a fencing token for executor sessions."""
        ...

    async def ping(self) -> None:
        """Raise ``UnavailableError`` when the database cannot be reached."""
        ...

    async def close(self) -> None:
        """Release connections."""
        ...


@dataclass(frozen=True, slots=True)
class UsageRow:
    """What one tenant's attempts in one pool requested and used over a window.

    ``*_seconds`` integrate the request over the part of each attempt inside the window (an attempt still
    running counts up to the window's end). ``used_cpu_seconds`` sums what executors measured, for attempts
    that ended inside the window; ``None`` when no executor measured any.
    """

    tenant: str
    pool: str
    attempts: int
    cpu_seconds: float  # requested cores x seconds
    memory_byte_seconds: float
    gpu_seconds: float
    used_cpu_seconds: float | None
    peak_memory: int | None  # the largest measured peak among those attempts


class AdminStore(Protocol):
    """Tenants and reservations. Every method is one transaction; ``audit``, when given, is chained in it."""

    async def list_tenants(self) -> list[Tenant]:
        """Every stored tenant, by name. The implicit ``default`` tenant is listed only once stored."""
        ...

    async def get_tenant(self, name: str) -> Tenant | None:
        """One tenant, or ``None``."""
        ...

    async def create_tenant(self, tenant: Tenant, audit: AuditEntry | None = None) -> Tenant:
        """Insert; ``ConflictError`` (code ``tenant_exists``) when the name is taken."""
        ...

    async def update_tenant(self, tenant: Tenant, audit: AuditEntry | None = None) -> Tenant:
        """Replace the stored row by name; ``NotFoundError`` (code ``tenant_not_found``) when missing."""
        ...

    async def delete_tenant(self, name: str, audit: AuditEntry | None = None, at: datetime | None = None) -> None:
        """Delete; ``ConflictError`` (code ``tenant_not_empty``) when it has a non-terminal task or reservation.

        Its API keys are revoked at ``at`` (default ``audit.at``) and its role bindings deleted, in the same
        transaction.

        The check and the delete are one transaction. ``NotFoundError`` (``tenant_not_found``) when missing.
        """
        ...

    async def create_reservation(self, reservation: Reservation, audit: AuditEntry | None = None) -> Reservation:
        """Insert a new reservation; the returned row carries its ``seq``."""
        ...

    async def get_reservation(self, reservation_id: str) -> Reservation | None:
        """One reservation, or ``None``."""
        ...

    async def list_reservations(self, tenant: str | None = None, live_only: bool = False) -> list[Reservation]:
        """Reservations (of one tenant if given; only pending/active if ``live_only``), oldest first."""
        ...

    async def usage(self, start: datetime, end: datetime) -> list[UsageRow]:
        """Per tenant and pool, what attempts overlapping ``[start, end)`` requested and used."""
        ...


# ------------------------------------------------------------------------------------------ security


@dataclass(frozen=True, slots=True)
class AuditFilter:
    """Which audit records to list: every given field must match (``tenants``: any of them)."""

    tenants: frozenset[str] | None = None  # None: every tenant and the platform-level records
    principal: str | None = None
    action: str | None = None  # exact, or a prefix ending in "." (``tasks.``)
    outcome: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    request_id: str | None = None


class SecurityStore(Protocol):
    """API keys, custom roles, role bindings and the audit chain. Every method is one transaction.

    Mutations take the ``audit`` entry of the request they answer and chain it in the same transaction: the
    change and its record commit together or not at all.
    """

    async def create_api_key(self, key: ApiKey, audit: AuditEntry | None = None) -> ApiKey:
        """Insert; ``ConflictError`` (``token_exists``) when the id is taken."""
        ...

    async def get_api_key(self, key_id: str) -> ApiKey | None:
        """One key (revoked and expired ones included), or ``None``."""
        ...

    async def list_api_keys(self, tenants: frozenset[str] | None = None) -> list[ApiKey]:
        """Keys, oldest first; only those whose tenant is in ``tenants`` when given."""
        ...

    async def revoke_api_key(self, key_id: str, at: datetime, audit: AuditEntry | None = None) -> ApiKey | None:
        """Set ``revoked_at`` (kept if already set) and return the row; ``None`` when there is no such key."""
        ...

    async def touch_api_keys(self, used: Mapping[str, datetime]) -> None:
        """Record last-used times (only ever moved forward). Not audited: reads are not mutations."""
        ...

    async def has_api_keys(self) -> bool:
        """True once any key was ever created (the first start creates the admin key only when False)."""
        ...

    async def create_role(self, role: StoredRole, audit: AuditEntry | None = None) -> StoredRole:
        """Insert a custom role; ``ConflictError`` (``role_exists``) when the name is taken."""
        ...

    async def get_role(self, name: str) -> StoredRole | None:
        """One custom role, or ``None``."""
        ...

    async def list_roles(self) -> list[StoredRole]:
        """Every custom role, by name."""
        ...

    async def delete_role(self, name: str, audit: AuditEntry | None = None) -> None:
        """Delete a custom role.

        ``NotFoundError`` (``role_not_found``) when missing, ``ConflictError`` (``role_in_use``) while a binding
        or a live key refers to it (checked in the same transaction).
        """
        ...

    async def create_binding(self, binding: RoleBinding, audit: AuditEntry | None = None) -> RoleBinding:
        """Insert; ``ConflictError`` (``binding_exists``) when ``(subject, tenant, role)`` is bound already."""
        ...

    async def list_bindings(
        self, subject: str | None = None, tenants: frozenset[str] | None = None
    ) -> list[RoleBinding]:
        """Bindings, oldest first, of ``subject`` and in ``tenants`` when given."""
        ...

    async def delete_binding(self, binding_id: str, audit: AuditEntry | None = None) -> RoleBinding | None:
        """Delete and return the row; ``None`` when there is no such binding."""
        ...

    async def append_audit(self, entries: Sequence[AuditEntry]) -> list[AuditRecord]:
        """Chain ``entries`` in a transaction of their own (requests that changed nothing, denials)."""
        ...

    async def list_audit(self, filt: AuditFilter, limit: int, after_seq: int = 0) -> list[AuditRecord]:
        """Records with ``seq > after_seq`` matching ``filt``, oldest first, at most ``limit``."""
        ...

    async def audit_head(self) -> Checkpoint | None:
        """The last record's ``(seq, hash)``, as stored beside the chain; ``None`` before the first record."""
        ...


# --------------------------------------------------------------------------------------------- state


@dataclass(frozen=True, slots=True)
class KVLimits:
    """Sizes a ``KVStore`` enforces (services check them first; the store checks again)."""

    max_value_bytes: int = 1 << 20
    max_ops: int = 128
    max_txn_bytes: int = 4 << 20


class KVStore(Protocol):
    """The state API's store: per-tenant keys, store-wide revisions, leases, history. Each call is atomic.

    Mutations take the ``audit`` entry of the request and commit it with the change (same transaction on SQL);
    a ``txn`` whose branch changed no key writes no record (the caller records such a request itself).
    ``now`` is the caller's clock: a key whose lease expired before ``now`` is missing for every read and
    compare, even before ``expire_leases`` records its deletion. Values are JSON-compatible Python values.
    """

    async def txn(self, tenant: str, txn: Txn, now: datetime, audit: AuditEntry | None = None) -> TxnResult:
        """Evaluate the compares and apply one branch atomically; writes bump the revision once.

        A put naming a lease that is missing, another tenant's, or expired raises ``NotFoundError``
        (``lease_not_found``) and nothing is written. A branch without writes leaves the revision as it is.
        """
        ...

    async def get(self, tenant: str, key: str, now: datetime, revision: int | None = None) -> KeyValue | None:
        """The entry of ``key`` (at ``revision`` if given: ``CompactedError`` below the kept history)."""
        ...

    async def range(
        self, tenant: str, prefix: str, now: datetime, limit: int, after: str | None = None, revision: int | None = None
    ) -> KVPage:
        """Entries whose key starts with ``prefix``, in key order, after the key ``after``, at most ``limit``."""
        ...

    async def grant_lease(self, tenant: str, ttl: float, now: datetime, audit: AuditEntry | None = None) -> Lease:
        """A new lease expiring at ``now + ttl``."""
        ...

    async def keepalive(self, tenant: str, lease_id: int, now: datetime, audit: AuditEntry | None = None) -> Lease:
        """Push the lease's expiry to ``now + ttl``; ``NotFoundError`` (``lease_not_found``) once expired."""
        ...

    async def get_lease(self, tenant: str, lease_id: int, now: datetime) -> Lease | None:
        """A live lease with the keys attached to it, or ``None``."""
        ...

    async def revoke_lease(self, tenant: str, lease_id: int, now: datetime, audit: AuditEntry | None = None) -> int:
        """Delete the lease and its keys (one revision); the store's revision after it."""
        ...

    async def expire_leases(self, now: datetime, limit: int = 1000) -> int:
        """Delete the keys of leases expired at ``now`` (a delete revision each txn); how many leases ended."""
        ...

    async def events(self, tenant: str, prefix: str, from_revision: int, limit: int) -> list[Event]:
        """Changes of the tenant's keys under ``prefix`` with revision >= ``from_revision``, in order.

        ``CompactedError`` (member ``oldest_revision``) when ``from_revision`` is older than the kept history.
        """
        ...

    async def revision(self) -> int:
        """The store's current revision (0 before the first write)."""
        ...

    async def compact(self, keep_from: int) -> int:
        """Drop history older than revision ``keep_from``; returns the oldest revision still readable."""
        ...

    async def purge_tenant(self, tenant: str) -> None:
        """Remove every key, lease and history entry of ``tenant`` (the tenant is being deleted or made anew)."""
        ...

    async def ping(self) -> None:
        """Raise ``UnavailableError`` when the backend cannot be reached."""
        ...

    async def close(self) -> None:
        """Release connections."""
        ...


class LogStream(enum.StrEnum):
    """Which output of a task."""

    STDOUT = "stdout"
    STDERR = "stderr"


@dataclass(frozen=True, slots=True)
class Launch:
    """Everything an executor needs to start one attempt."""

    task_id: str
    attempt: int
    argv: tuple[str, ...]
    env: Mapping[str, str]
    workdir: str | None  # relative to the attempt's sandbox; validated, never absolute
    resources: Resources
    image: str | None = None
    node: str | None = None  # the node the scheduler chose (executors with one node may ignore it)
    simulated_duration: float | None = None
    tenant: str = "default"  # container executors label (and on Kubernetes namespace) by tenant
    host: HostAccess = NO_HOST_ACCESS  # what a container asks of its host, already checked against the policy
    run_timeout: float | None = None  # the task's run timeout: executors that can enforce one too may (k8s)

    @property
    def key(self) -> str:
        """The attempt's unique key, ``<task_id>.<attempt>``."""
        return f"{self.task_id}.{self.attempt}"


@dataclass(frozen=True, slots=True)
class Started:
    """An attempt's process is running."""

    task_id: str
    attempt: int
    at: datetime
    pid: int | None = None


@dataclass(frozen=True, slots=True)
class Exited:
    """An attempt ended (or could not start). ``outcome.stop_reason`` is filled in by the engine, not here."""

    task_id: str
    attempt: int
    at: datetime
    outcome: AttemptOutcome
    started_at: datetime | None = None
    never_started: bool = False  # stopped (or lost) while waiting in the node's queue: no process ever ran
    peak_memory: int | None = None
    cpu_seconds: float | None = None
    log_truncated: bool = False


@dataclass(frozen=True, slots=True)
class NodeResized:
    """A node's size changed (a Kubernetes pool's ready, matching nodes came or went). Its name stays."""

    node: str
    total: Resources
    max_tasks: int


ExecutorEvent = Started | Exited | NodeResized


@dataclass(frozen=True, slots=True)
class Recovered:
    """What an executor knows after (re)connecting: attempts running, queued on the node, and ended but not acked."""

    running: list[Started]
    exited: list[Exited]
    queued: list[tuple[str, int]] = field(default_factory=list)  # accepted, waiting for room, in start order


@dataclass(frozen=True, slots=True)
class NodeCapacity:
    """What one node offers."""

    node: str
    total: Resources
    max_tasks: int
    cgroups: str  # "v1", "v2" or "none": how limits are enforced ("simulated" on the simulated executor)
    warnings: tuple[str, ...] = ()
    labels: Mapping[str, str] = field(default_factory=dict)


class Executor(Protocol):
    """Runs attempts (after Nomad's driver plugin): start, stop, events, recover, capacity.

    ``open`` returns what is still running, queued, or ended while nobody listened; after that, ``on_events``
    receives batches of ``Started``/``Exited``. An ``Exited`` is repeated after a reconnect until ``ack``-ed, so
    an exit is never lost between the executor and the database. ``start`` is idempotent per attempt key.

    The node keeps a short FIFO queue: ``start`` hands over launches in order, and each one is started as soon
    as it fits the node's capacity (``capacity()``: resources and ``max_tasks``) next to what already runs. The
    engine sends at most a few launches beyond free capacity, so the next task starts the moment a slot frees,
    without a round trip through the engine. A queued launch that is stopped is reported ``Exited`` with
    ``never_started=True``.
    """

    name: str

    async def open(self, epoch: int, on_events: Callable[[list[ExecutorEvent]], None]) -> Recovered:
        """Connect (starting helpers if needed) under fencing ``epoch``; report what survived."""
        ...

    async def start(self, launches: Sequence[Launch]) -> None:
        """Start attempts. Outcomes arrive as events (a spawn error is an ``Exited`` with ``spawn_error``)."""
        ...

    async def stop(self, task_id: str, attempt: int, grace: float) -> None:
        """SIGTERM (or equivalent) to the attempt's whole process group, SIGKILL after ``grace`` seconds."""
        ...

    async def unqueue(self, task_id: str, attempt: int) -> None:
        """Take a launch back from the node's queue if it has not started (reported ``never_started``); else no-op."""
        ...

    async def ack(self, keys: Sequence[tuple[str, int]]) -> None:
        """The exits of these attempts are durably recorded; the executor may forget them."""
        ...

    def capacity(self) -> NodeCapacity:
        """This node's size and limits (the first node of a multi-node executor)."""
        ...

    def nodes(self) -> list[NodeCapacity]:
        """Every node this executor runs attempts on (one for the local executor). Names are unique."""
        ...

    async def close(self) -> None:
        """Disconnect. Running attempts keep running."""
        ...


@runtime_checkable
class SupportsLogs(Protocol):
    """An executor whose attempts' output lives in files the server can read."""

    def log_path(self, task_id: str, attempt: int, stream: LogStream) -> Path:
        """The file holding one stream of one attempt (it may not exist yet)."""
        ...
