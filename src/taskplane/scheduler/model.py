"""What a scheduling cycle reads (a snapshot, the pending queues, a policy) and what it returns (a plan).

Times are plain floats (seconds since the epoch) passed in by the caller: the scheduler reads no clock.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from taskplane.domain.pool import PlacementStrategy
from taskplane.domain.resources import Resources
from taskplane.domain.task import PendingReason
from taskplane.domain.tenant import Quota

Selector = tuple[tuple[str, str], ...]
"""A node selector as sorted ``(label, value)`` pairs."""


@dataclass(frozen=True, slots=True)
class NodeView:
    """One node now: size, what is allocated on it (running tasks and held reservation slots), labels."""

    name: str
    pool: str
    total: Resources
    allocated: Resources
    tasks: int
    max_tasks: int
    labels: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class RunningView:
    """A task holding capacity on a node (for preemption and backfill)."""

    task_id: str
    tenant: str
    pool: str
    node: str
    priority: int
    resources: Resources
    started_at: float
    expected_end: float | None = None  # start + run timeout, when the task declared one
    reservation: str | None = None  # runs inside a reservation's slot (never preempted for capacity)
    terminating: bool = False  # a stop (preemption, cancel, timeout) is already on its way


@dataclass(frozen=True, slots=True)
class TenantView:
    """A tenant's quota, weight and what it uses now (running tasks plus held reservations)."""

    name: str
    quota: Quota
    weight: float
    usage: Resources
    running: int
    borrowing: bool = True


@dataclass(frozen=True, slots=True)
class SlotView:
    """One slot of an active reservation: its node and what its tasks already use of it."""

    node: str
    used: Resources
    tasks: int


@dataclass(frozen=True, slots=True)
class ReservationView:
    """An active reservation: per-slot size and each slot's use."""

    id: str
    tenant: str
    pool: str
    resources: Resources
    slots: tuple[SlotView, ...]


@dataclass(frozen=True, slots=True)
class PoolView:
    """A pool's placement strategy."""

    name: str
    placement: PlacementStrategy = PlacementStrategy.BINPACK


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Everything the cycle reads about capacity and usage."""

    pools: Mapping[str, PoolView]
    nodes: Iterable[NodeView]
    tenants: Mapping[str, TenantView]
    running_on: Mapping[str, Iterable[RunningView]] = field(default_factory=dict)  # node -> tasks holding room
    reservations: Mapping[str, ReservationView] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Candidate:
    """A pending task, or (``count`` > 0) a pending reservation to admit as one gang."""

    id: str
    tenant: str
    pool: str
    priority: int
    seq: int  # arrival order
    resources: Resources
    selector: Selector = ()
    reservation: str | None = None  # the task runs inside this reservation
    run_timeout: float | None = None
    count: int = 0  # > 0: a reservation of ``count`` slots of ``resources``


@dataclass(frozen=True, slots=True)
class Policy:
    """Knobs of the cycle."""

    max_placements: int = 10_000
    backfill: bool = True  # smaller tasks may run ahead of a blocked head when they do not delay it
    preemption: bool = True
    max_preemptions: int = 16  # heads that may preempt per cycle
    max_blocked_per_pool: int = 64  # blocked candidates examined per pool before the pool is closed this cycle
    fair_share: bool = True  # False: priority then arrival order across tenants
    first_fit: bool = False  # True: the first node (in snapshot order) that fits, ignoring the pool's strategy


@dataclass(frozen=True, slots=True)
class Placement:
    """Run task ``id`` on ``node``. ``borrowed``: beyond the tenant's nominal quota (reclaimable)."""

    id: str
    node: str
    borrowed: bool = False
    reservation: str | None = None


@dataclass(frozen=True, slots=True)
class Preemption:
    """Stop running task ``victim`` to make room for ``for_id`` on ``node``."""

    victim: str
    for_id: str
    node: str
    reason: str  # "priority" or "reclaim"


@dataclass(frozen=True, slots=True)
class Admission:
    """A reservation admitted as a whole: slot i on ``nodes[i]``."""

    id: str
    nodes: tuple[str, ...]


@dataclass(slots=True)
class Plan:
    """The outcome of one cycle."""

    placements: list[Placement] = field(default_factory=list)
    preemptions: list[Preemption] = field(default_factory=list)
    admissions: list[Admission] = field(default_factory=list)
    blocked: dict[str, PendingReason] = field(default_factory=dict)  # examined, not placed, and why
    parked: dict[str, PendingReason] = field(default_factory=dict)  # can never run as things are configured
    eta: dict[str, float] = field(default_factory=dict)  # estimated start of blocked heads, where known
    examined: int = 0
