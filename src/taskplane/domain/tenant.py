"""Tenants: who submits, under which quota, with which fair-share weight, pools and priorities."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime

from taskplane.domain.resources import Resources

DEFAULT_TENANT = "default"
"""The tenant every task belongs to when none is named; it exists without configuration and has no quota."""

TENANT_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
"""Tenant names are DNS labels (they become Kubernetes namespaces later)."""

PRIORITY_MIN = -1000
PRIORITY_MAX = 1000


@dataclass(frozen=True, slots=True)
class Quota:
    """A tenant's nominal quota. ``None`` means unlimited for that quantity.

    ``cpu``/``memory``/``gpu`` bound what the tenant's running tasks and held reservations request.
    With ``Tenant.borrowing`` the tenant may go beyond them on capacity nobody else uses; that borrowed work is
    preempted when a tenant under its own quota needs the room back. ``max_running`` and ``max_pending`` are
    hard limits (never borrowed).
    """

    millicpu: int | None = None
    memory: int | None = None
    gpu: int | None = None
    max_running: int | None = None
    max_pending: int | None = None

    def nominal(self) -> tuple[int | None, int | None, int | None]:
        """The (millicpu, memory, gpu) ceiling."""
        return (self.millicpu, self.memory, self.gpu)

    def exceeded_by(self, usage: Resources) -> str | None:
        """The first resource ``usage`` goes over, or ``None`` when it is within the nominal quota."""
        if self.millicpu is not None and usage.millicpu > self.millicpu:
            return "cpu"
        if self.memory is not None and usage.memory > self.memory:
            return "memory"
        if self.gpu is not None and usage.gpu > self.gpu:
            return "gpu"
        return None

    def limit(self, name: str) -> int | None:
        """The nominal limit of ``cpu``, ``memory`` or ``gpu``."""
        return {"cpu": self.millicpu, "memory": self.memory, "gpu": self.gpu}.get(name)


UNLIMITED = Quota()


@dataclass(frozen=True, slots=True)
class TenantPolicy:
    """What a tenant's tasks may ask of the host. All off by default (Kubernetes' ``restricted`` standard).

    The container and Kubernetes executors honour these fields; submission refuses a task asking for one its
    tenant is not allowed (``policy_forbidden``).
    """

    allow_privileged: bool = False
    allow_host_network: bool = False
    allow_host_pid: bool = False
    allow_host_mounts: bool = False
    allow_network: bool = False  # containers get no network at all unless this is set

    def refusal(
        self, privileged: bool, host_network: bool, host_pid: bool, host_mounts: bool, network: bool
    ) -> str | None:
        """The first asked-for capability this policy does not allow, or ``None``."""
        for asked, allowed, what in (
            (privileged, self.allow_privileged, "privileged"),
            (host_network, self.allow_host_network, "host_network"),
            (host_pid, self.allow_host_pid, "host_pid"),
            (host_mounts, self.allow_host_mounts, "mounts"),
            (network, self.allow_network, "network"),
        ):
            if asked and not allowed:
                return what
        return None


DEFAULT_POLICY = TenantPolicy()


@dataclass(frozen=True, slots=True)
class Tenant:
    """A tenant record (``/platform/admin/tenants``)."""

    name: str
    quota: Quota = UNLIMITED
    weight: float = 1.0  # fair-share weight: a tenant of weight 2 gets twice the dominant share of one of weight 1
    pools: tuple[str, ...] | None = None  # allowed pools; None = all
    priority_min: int = PRIORITY_MIN
    priority_max: int = PRIORITY_MAX
    borrowing: bool = True  # may use idle capacity beyond its quota (reclaimable by preemption)
    policy: TenantPolicy = DEFAULT_POLICY
    created_at: datetime | None = None
    updated_at: datetime | None = None

    def may_use_pool(self, pool: str) -> bool:
        """True when the tenant may run tasks in ``pool``."""
        return self.pools is None or pool in self.pools

    def allows_priority(self, priority: int) -> bool:
        """True when ``priority`` is inside the tenant's allowed range."""
        return self.priority_min <= priority <= self.priority_max


def default_tenant() -> Tenant:
    """The implicit default tenant: no quota, weight 1, every pool and priority."""
    return Tenant(DEFAULT_TENANT)
