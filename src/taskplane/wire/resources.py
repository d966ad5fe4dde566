"""Wire models for ``/platform/resources``: capacity per pool and node, reservations, usage over a window."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr

from taskplane.wire.base import InModel
from taskplane.wire.tasks import Duration, ResourcesIn, ResourcesOut

_OUT = ConfigDict(extra="ignore", frozen=True)


class NodeUsageOut(BaseModel):
    """One node: ``allocated`` to running tasks outside reservations, ``reserved`` by held reservations.

    ``free = total - allocated - reserved`` (never below zero).
    """

    model_config = _OUT

    node: str
    pool: str
    total: ResourcesOut
    allocated: ResourcesOut
    reserved: ResourcesOut
    free: ResourcesOut
    tasks: int
    max_tasks: int
    labels: dict[str, str] = Field(default_factory=dict)


class PoolUsageOut(BaseModel):
    """One pool: its nodes and their sums."""

    model_config = _OUT

    name: str
    executor: str
    placement: str
    nodes: list[NodeUsageOut]
    total: ResourcesOut
    allocated: ResourcesOut
    reserved: ResourcesOut
    free: ResourcesOut


class ResourcesReport(BaseModel):
    """``GET /platform/resources``: every pool, and the sums over all of them."""

    model_config = _OUT

    pools: list[PoolUsageOut]
    total: ResourcesOut
    allocated: ResourcesOut
    reserved: ResourcesOut
    free: ResourcesOut


class ReserveRequest(InModel):
    """Hold ``count`` slots of ``resources`` in ``pool`` for ``tenant``, all or none.

    ``duration`` runs from when the reservation becomes active; ``ttl`` from now. At least one is required;
    with both, the earlier end wins.
    """

    tenant: StrictStr = "default"
    pool: StrictStr | None = Field(default=None, description="default: the tenant's first allowed pool")
    resources: ResourcesIn
    count: StrictInt = Field(default=1, description="slots, 1..1000")
    duration: Duration | None = None
    ttl: Duration | None = None
    priority: StrictInt = 0


class ReservationOut(BaseModel):
    """A reservation: ``pending`` until every slot fits at once, ``active`` while held, then ended."""

    model_config = _OUT

    id: str
    tenant: str
    pool: str
    state: str
    resources: ResourcesOut  # one slot
    count: int
    total: ResourcesOut  # every slot
    priority: int
    nodes: list[str] = Field(default_factory=list)  # the node of each slot once active
    duration: float | None = None
    expires_at: datetime | None = None
    created_at: datetime
    updated_at: datetime
    activated_at: datetime | None = None
    ended_at: datetime | None = None
    message: str | None = None


class ReservationList(BaseModel):
    """Reservations, oldest first."""

    model_config = _OUT

    items: list[ReservationOut]


class RequestedOut(BaseModel):
    """Resources requested over the window: each attempt's request times its time inside the window."""

    model_config = _OUT

    cpu_seconds: float
    memory_byte_seconds: float
    gpu_seconds: float


class MeasuredOut(BaseModel):
    """What executors measured, for attempts that ended inside the window."""

    model_config = _OUT

    cpu_seconds: float | None = None
    peak_memory: int | None = None


class UsageRowOut(BaseModel):
    """One tenant in one pool over the window (see ``docs/api.md`` for each figure)."""

    model_config = _OUT

    tenant: str
    pool: str
    attempts: int
    requested: RequestedOut
    allocated: ResourcesOut
    measured: MeasuredOut
    pool_cpu_seconds: float
    utilization_percent: float | None = None


class UsageReport(BaseModel):
    """``GET /platform/resources/usage``: per tenant and pool over ``[start, end)``."""

    model_config = _OUT

    start: datetime
    end: datetime
    window_seconds: float
    items: list[UsageRowOut]
