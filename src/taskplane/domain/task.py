"""Tasks, attempts and their value objects."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime

from taskplane.domain.resources import Resources


class TaskState(enum.StrEnum):
    """Where a task is in its lifecycle (see ``lifecycle.py`` for the allowed moves)."""

    PENDING = "pending"
    ADMITTED = "admitted"
    STARTING = "starting"
    RUNNING = "running"
    CANCELLING = "cancelling"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    TIMED_OUT = "timed_out"

    @property
    def terminal(self) -> bool:
        """Terminal states are final: no transition leaves them."""
        return self in TERMINAL_STATES

    @property
    def live(self) -> bool:
        """States in which an attempt may be running and holds resources."""
        return self in LIVE_STATES


TERMINAL_STATES = frozenset({TaskState.SUCCEEDED, TaskState.FAILED, TaskState.CANCELLED, TaskState.TIMED_OUT})
LIVE_STATES = frozenset({TaskState.ADMITTED, TaskState.STARTING, TaskState.RUNNING, TaskState.CANCELLING})


class FailureClass(enum.StrEnum):
    """Why an attempt did not succeed. Retries are decided by class."""

    USER = "user"  # non-zero exit or a signal the task did not get from us
    INFRA = "infra"  # OOM-killed, spawn error, lost, node failure
    TIMEOUT = "timeout"  # run timeout or deadline reached
    PREEMPTED = "preempted"  # taken off its node to make room
    CANCELLED = "cancelled"  # a caller asked


class AttemptState(enum.StrEnum):
    """The state of one attempt (one run of a task)."""

    STARTING = "starting"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"

    @property
    def terminal(self) -> bool:
        """An ended attempt."""
        return self in (AttemptState.SUCCEEDED, AttemptState.FAILED)


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How often and when to retry. ``max_attempts`` counts the first run; infra failures do not use it up."""

    max_attempts: int = 1
    backoff_initial: float = 1.0
    backoff_max: float = 300.0
    backoff_multiplier: float = 2.0
    jitter: float = 0.2  # +/- fraction of the delay
    retry_on: frozenset[FailureClass] = frozenset({FailureClass.USER, FailureClass.INFRA})
    max_infra_attempts: int = 3  # infra failures retry on their own budget


@dataclass(frozen=True, slots=True)
class Timeouts:
    """Limits in seconds. ``None`` means no limit."""

    queue: float | None = None  # time pending before the task times out
    run: float | None = None  # time one attempt may run
    deadline: datetime | None = None  # absolute end for the whole task, across attempts


@dataclass(frozen=True, slots=True)
class Mount:
    """A host path mounted into a container (needs the tenant's ``allow_host_mounts``)."""

    source: str
    target: str
    read_only: bool = True


@dataclass(frozen=True, slots=True)
class HostAccess:
    """What a container task asks of its host. Empty by default; each field needs the tenant's policy."""

    privileged: bool = False
    host_network: bool = False
    host_pid: bool = False
    network: bool = False
    mounts: tuple[Mount, ...] = ()
    read_only_root: bool = False  # restricts, so any tenant may ask for it
    user: str | None = None  # e.g. "1000:1000"; restricts, so any tenant may ask for it


NO_HOST_ACCESS = HostAccess()


@dataclass(frozen=True, slots=True)
class TaskSpec:
    """What a caller asked for. Validated on construction by ``services``; immutable afterwards."""

    command: tuple[str, ...]
    shell: bool = False
    env: Mapping[str, str] = field(default_factory=dict)
    workdir: str | None = None
    image: str | None = None
    resources: Resources = Resources()
    priority: int = 0
    tenant: str = "default"
    labels: Mapping[str, str] = field(default_factory=dict)
    timeouts: Timeouts = Timeouts()
    retry: RetryPolicy = RetryPolicy()
    name: str | None = None
    pool: str = "default"  # resolved at submission: the named pool, or the tenant's first allowed pool
    node_selector: Mapping[str, str] = field(default_factory=dict)  # node labels the task needs
    reservation: str | None = None  # run inside this reservation's held capacity
    simulated_duration: float | None = None  # on the simulated executor: how long the task "runs"
    host: HostAccess = NO_HOST_ACCESS  # container options; checked against the tenant's policy at submit
    owner: str | None = None  # the principal that submitted it (set by the server, never by the caller)

    def argv(self) -> tuple[str, ...]:
        """The argv to execute: the command itself, or ``/bin/sh -c`` around it when ``shell`` is set."""
        if self.shell:
            return ("/bin/sh", "-c", " ".join(self.command))
        return self.command


@dataclass(frozen=True, slots=True)
class PendingReason:
    """Why a task is not running, machine readable."""

    code: str  # no_capacity, quota_exhausted, never_fits, preempting, waiting_for_reservation, backoff, ...
    message: str
    resource: str | None = None
    until: datetime | None = None  # end of a backoff


@dataclass(frozen=True, slots=True)
class Attempt:
    """One run of a task. ``number`` starts at 1 and doubles as a fencing token."""

    task_id: str
    number: int
    state: AttemptState
    node: str
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    pid: int | None = None
    exit_code: int | None = None
    signal: int | None = None
    failure_class: FailureClass | None = None
    message: str | None = None
    peak_memory: int | None = None
    cpu_seconds: float | None = None
    log_truncated: bool = False


@dataclass(frozen=True, slots=True)
class Task:
    """A task as stored: its spec plus lifecycle fields."""

    id: str
    spec: TaskSpec
    state: TaskState
    created_at: datetime
    updated_at: datetime
    seq: int = 0
    idempotency_key: str | None = None
    attempts: int = 0  # the number of the latest attempt (0 = never started)
    infra_failures: int = 0
    skipped_attempts: int = 0  # numbers used up by launches that never ran (taken back from a node's queue)
    not_before: datetime | None = None  # backoff: do not start before this time
    pending_reason: PendingReason | None = None
    failure_class: FailureClass | None = None
    exit_code: int | None = None
    message: str | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    cancel_requested: bool = False
