"""Wire models for tasks, capacity and problems (RFC 9457).

Input models forbid unknown fields and use strict types (``true`` is not an integer). Quantities accept the
Kubernetes forms (``"500m"``, ``"256Mi"``) or plain numbers; durations accept seconds or ``"30s"``/``"5m"``.
Semantic checks (ranges, sizes, fit, paths, the tenant's host-access policy) happen in ``services`` so the CLI
and API give the same messages. ``owner`` is output only: the server sets it from the authenticated caller.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr

from taskplane.wire.base import InModel

Quantity = StrictInt | StrictFloat | StrictStr
Duration = StrictInt | StrictFloat | StrictStr

_OUT = ConfigDict(extra="ignore", frozen=True)


class ResourcesIn(InModel):
    """Requested resources. Missing fields take the server's defaults; all zero means best-effort."""

    cpu: Quantity | None = Field(default=None, description="cores: 2, 0.5, or '500m'")
    memory: Quantity | None = Field(default=None, description="bytes, or '256Mi', '1G'")
    gpu: StrictInt | None = Field(default=None, ge=0)
    extended: dict[StrictStr, StrictInt] | None = Field(
        default=None, description="extended resources by name, e.g. {'example.com/fpga': 1}"
    )


class TimeoutsIn(InModel):
    """Time limits: ``queue`` (time pending), ``run`` (per attempt), ``deadline`` (absolute, whole task)."""

    queue: Duration | None = None
    run: Duration | None = None
    deadline: AwareDatetime | None = None


MAX_MOUNTS = 32
# A numeric uid, optionally with a gid ("1000", "1000:1000"), or a short POSIX user name ("nobody").
USER_PATTERN = r"^([0-9]{1,10}(:[0-9]{1,10})?|[a-z_][a-z0-9_-]{0,31})$"


class MountIn(InModel):
    """A host path mounted into the container; needs the tenant's ``allow_host_mounts``."""

    source: StrictStr = Field(description="absolute path on the host")
    target: StrictStr = Field(description="absolute path in the container, not '/'")
    read_only: StrictBool = True


class ContainerIn(InModel):
    """What a container task asks of its host (needs ``image``). Each capability needs the tenant's policy."""

    privileged: StrictBool = False
    host_network: StrictBool = False
    host_pid: StrictBool = False
    network: StrictBool = Field(default=False, description="any network at all; off: no network")
    mounts: list[MountIn] = Field(default_factory=list, max_length=MAX_MOUNTS)
    read_only_root: StrictBool = False
    user: StrictStr | None = Field(
        default=None, pattern=USER_PATTERN, description="uid, 'uid:gid' or a user name; default: the image's"
    )


FailureClassName = Literal["user", "infra", "timeout", "preempted"]


class RetryIn(InModel):
    """Retry policy. ``max_attempts`` counts the first run. Infra failures retry on their own budget."""

    max_attempts: StrictInt = Field(default=1, ge=1, le=100)
    backoff: Duration | None = Field(default=None, description="initial delay, default 1s")
    backoff_max: Duration | None = Field(default=None, description="largest delay, default 300s")
    backoff_multiplier: StrictInt | StrictFloat = Field(default=2.0, ge=1.0, le=10.0)
    jitter: StrictInt | StrictFloat = Field(default=0.2, ge=0.0, le=1.0)
    retry_on: list[FailureClassName] | None = Field(default=None, description="default: user, infra")


class TaskSubmit(InModel):
    """A task to run."""

    command: list[StrictStr] = Field(description="argv; executed without a shell unless shell is true")
    shell: StrictBool = False
    env: dict[StrictStr, StrictStr] = Field(default_factory=dict)
    workdir: StrictStr | None = Field(default=None, description="relative to the task's sandbox")
    image: StrictStr | None = None
    resources: ResourcesIn | None = None
    priority: StrictInt = Field(default=0, ge=-1000, le=1000)
    tenant: Annotated[str, Field(pattern=r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")] = "default"
    labels: dict[StrictStr, StrictStr] = Field(default_factory=dict)
    name: StrictStr | None = Field(default=None, max_length=256)
    timeouts: TimeoutsIn | None = None
    retry: RetryIn | None = None
    idempotency_key: StrictStr | None = Field(default=None, min_length=1, max_length=256)
    pool: StrictStr | None = Field(default=None, description="default: the tenant's first allowed pool")
    node_selector: dict[StrictStr, StrictStr] = Field(default_factory=dict, description="node labels required")
    reservation: StrictStr | None = Field(default=None, description="run inside this reservation")
    simulated_duration: Duration | None = Field(default=None, description="run time on the simulated executor")
    container: ContainerIn | None = Field(default=None, description="host access of a container task")


class BatchSubmit(InModel):
    """Up to ``max_batch`` (default 1,000) tasks created in one transaction."""

    tasks: list[TaskSubmit]


class ResourcesOut(BaseModel):
    """Resources in both human (``cpu``, ``memory``) and integer (``millicpu``, ``memory_bytes``) form."""

    model_config = _OUT

    cpu: str
    memory: str
    gpu: int
    millicpu: int
    memory_bytes: int
    extended: dict[str, int] = Field(default_factory=dict)


class MountOut(BaseModel):
    """A host path mounted into the container."""

    model_config = _OUT

    source: str
    target: str
    read_only: bool


class ContainerOut(BaseModel):
    """The container options a task was submitted with."""

    model_config = _OUT

    privileged: bool = False
    host_network: bool = False
    host_pid: bool = False
    network: bool = False
    mounts: list[MountOut] = Field(default_factory=list)
    read_only_root: bool = False
    user: str | None = None


class PendingReasonOut(BaseModel):
    """Why a task is not running."""

    model_config = _OUT

    code: str
    message: str
    resource: str | None = None
    until: datetime | None = None


class AttemptOut(BaseModel):
    """One run of a task."""

    model_config = _OUT

    number: int
    state: str
    node: str
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    pid: int | None = None
    exit_code: int | None = None
    signal: int | None = None
    failure_class: str | None = None
    message: str | None = None
    peak_memory: int | None = None
    cpu_seconds: float | None = None
    log_truncated: bool = False


class EventOut(BaseModel):
    """A recorded transition of a task."""

    model_config = _OUT

    seq: int
    at: datetime
    type: str
    from_state: str | None = None
    to_state: str | None = None
    attempt: int | None = None
    data: dict[str, Any] = Field(default_factory=dict)


class TaskOut(BaseModel):
    """A task as the API reports it."""

    model_config = _OUT

    id: str
    name: str | None = None
    tenant: str
    state: str
    priority: int
    command: list[str]
    shell: bool
    env: dict[str, str]
    workdir: str | None = None
    image: str | None = None
    resources: ResourcesOut
    labels: dict[str, str]
    timeouts: dict[str, Any]
    retry: dict[str, Any]
    idempotency_key: str | None = None
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    attempt_count: int = 0
    exit_code: int | None = None
    failure_class: str | None = None
    message: str | None = None
    pending_reason: PendingReasonOut | None = None
    queue_position: int | None = None
    eta: datetime | None = None
    pool: str = "default"
    node_selector: dict[str, str] = Field(default_factory=dict)
    reservation: str | None = None
    simulated_duration: float | None = None
    cancel_requested: bool = False
    owner: str | None = Field(default=None, description="who submitted it (set by the server)")
    container: ContainerOut | None = Field(default=None, description="null: no container options")
    attempts: list[AttemptOut] | None = None


class BatchSubmitResult(BaseModel):
    """The created (or, for reused idempotency keys, existing) tasks, in request order."""

    model_config = _OUT

    tasks: list[TaskOut]
    created: list[bool]


class TaskList(BaseModel):
    """A page of tasks, newest first."""

    model_config = _OUT

    items: list[TaskOut]
    next_cursor: str | None = None


class NodeCapacityOut(BaseModel):
    """One node's capacity."""

    model_config = _OUT

    node: str
    executor: str
    total: ResourcesOut
    allocated: ResourcesOut
    free: ResourcesOut
    running_tasks: int
    max_tasks: int
    cgroups: str
    warnings: list[str] = Field(default_factory=list)


class CapacityOut(BaseModel):
    """Capacity of the platform: per node and summed."""

    model_config = _OUT

    nodes: list[NodeCapacityOut]
    total: ResourcesOut
    allocated: ResourcesOut
    free: ResourcesOut
    pending_tasks: int
    running_tasks: int


class Problem(BaseModel):
    """An RFC 9457 problem document with a stable ``code``."""

    model_config = ConfigDict(extra="allow", frozen=True)

    type: str = "about:blank"
    title: str
    status: int
    detail: str
    code: str
    instance: str | None = None
    errors: list[dict[str, Any]] | None = None
