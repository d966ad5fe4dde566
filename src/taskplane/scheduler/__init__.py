"""The pure scheduler: ``schedule(snapshot, pending, now) -> Plan``. No I/O, no clock."""

from taskplane.scheduler.core import Candidate, NodeSnapshot, Placement, Plan, schedule

__all__ = ["Candidate", "NodeSnapshot", "Placement", "Plan", "schedule"]
