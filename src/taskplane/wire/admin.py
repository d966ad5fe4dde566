"""Wire models for tenants (``/platform/admin/tenants``).

Quota quantities take the task forms (``"4"``, ``"500m"``, ``"16Gi"``); ``null`` means unlimited. Ranges and
names are checked in ``services.tenants`` so every refusal names its field with a stable code.

Updates follow JSON merge patch (RFC 7396): a member left out keeps its value, a member set to ``null`` goes
back to its default (unlimited quota, every pool, the full priority range, weight 1, borrowing on, a policy
allowing no host access), and ``quota``, ``priority_range`` and ``policy`` merge member by member.
"""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr

from taskplane.wire.base import InModel
from taskplane.wire.tasks import Quantity, ResourcesOut

_OUT = ConfigDict(extra="ignore", frozen=True)


class QuotaIn(InModel):
    """A tenant's nominal quota; a missing or ``null`` member is unlimited (on update: see the module)."""

    cpu: Quantity | None = Field(default=None, description="cores: 4, 0.5, or '500m'")
    memory: Quantity | None = Field(default=None, description="bytes, or '16Gi'")
    gpu: StrictInt | None = None
    max_running: StrictInt | None = Field(default=None, description="tasks running at once")
    max_pending: StrictInt | None = Field(default=None, description="tasks waiting at once (429 beyond)")


class PriorityRangeIn(InModel):
    """The priorities a tenant's tasks and reservations may use, both ends included."""

    min: StrictInt | None = None
    max: StrictInt | None = None


class PolicyIn(InModel):
    """What the tenant's container tasks may ask of the host; a missing or ``null`` member is ``false``."""

    allow_privileged: StrictBool | None = None
    allow_host_network: StrictBool | None = None
    allow_host_pid: StrictBool | None = None
    allow_host_mounts: StrictBool | None = None
    allow_network: StrictBool | None = Field(default=None, description="containers get no network without it")


class TenantCreate(InModel):
    """A tenant to create."""

    name: StrictStr = Field(description="a DNS label: ^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
    quota: QuotaIn | None = None
    weight: StrictInt | StrictFloat = Field(default=1.0, description="fair-share weight, > 0 and <= 1000")
    pools: list[StrictStr] | None = Field(default=None, description="allowed pools; null = every pool")
    priority_range: PriorityRangeIn | None = None
    borrowing: StrictBool = Field(default=True, description="may use idle capacity beyond its quota")
    policy: PolicyIn | None = Field(default=None, description="host access of container tasks; default: none")


class TenantUpdate(InModel):
    """A merge patch of a tenant: only the members sent change."""

    quota: QuotaIn | None = None
    weight: StrictInt | StrictFloat | None = None
    pools: list[StrictStr] | None = None
    priority_range: PriorityRangeIn | None = None
    borrowing: StrictBool | None = None
    policy: PolicyIn | None = None


class QuotaOut(BaseModel):
    """A quota in human and integer form; ``null`` is unlimited."""

    model_config = _OUT

    cpu: str | None = None
    memory: str | None = None
    gpu: int | None = None
    millicpu: int | None = None
    memory_bytes: int | None = None
    max_running: int | None = None
    max_pending: int | None = None


class PriorityRangeOut(BaseModel):
    """Allowed priorities, both ends included."""

    model_config = _OUT

    min: int
    max: int


class PolicyOut(BaseModel):
    """What the tenant's container tasks may ask of the host."""

    model_config = _OUT

    allow_privileged: bool
    allow_host_network: bool
    allow_host_pid: bool
    allow_host_mounts: bool
    allow_network: bool


class TenantStatusOut(BaseModel):
    """What a tenant holds now: tasks, the resources of its running tasks and held reservations."""

    model_config = _OUT

    pending: int
    running: int
    usage: ResourcesOut
    reservations: int


class TenantOut(BaseModel):
    """A tenant as the API reports it. ``implicit``: the ``default`` tenant, never stored or changed yet."""

    model_config = _OUT

    name: str
    quota: QuotaOut
    weight: float
    pools: list[str] | None = None
    priority_range: PriorityRangeOut
    borrowing: bool
    policy: PolicyOut
    implicit: bool = False
    created_at: datetime | None = None
    updated_at: datetime | None = None
    status: TenantStatusOut | None = None


class TenantList(BaseModel):
    """Every tenant, by name (``default`` included)."""

    model_config = _OUT

    items: list[TenantOut]
