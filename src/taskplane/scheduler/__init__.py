"""The pure scheduler: ``schedule(snapshot, pending, policy, now) -> Plan``. No I/O, no clock."""

from taskplane.scheduler.core import schedule
from taskplane.scheduler.model import (
    Admission,
    Candidate,
    NodeView,
    Placement,
    Plan,
    Policy,
    PoolView,
    Preemption,
    ReservationView,
    RunningView,
    SlotView,
    Snapshot,
    TenantView,
)

__all__ = [
    "Admission",
    "Candidate",
    "NodeView",
    "Placement",
    "Plan",
    "Policy",
    "PoolView",
    "Preemption",
    "ReservationView",
    "RunningView",
    "SlotView",
    "Snapshot",
    "TenantView",
    "schedule",
]
