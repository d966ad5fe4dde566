"""Reservations: capacity held for a tenant, all slots or none (like a gang), until released or expired."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime

from taskplane.domain.resources import Resources


class ReservationState(enum.StrEnum):
    """``pending`` until every slot fits at once, then ``active`` (held) until ``released`` or ``expired``."""

    PENDING = "pending"
    ACTIVE = "active"
    RELEASED = "released"
    EXPIRED = "expired"

    @property
    def terminal(self) -> bool:
        """Released and expired reservations hold nothing and never come back."""
        return self in (ReservationState.RELEASED, ReservationState.EXPIRED)


@dataclass(frozen=True, slots=True)
class Reservation:
    """``count`` slots of ``resources`` each, in ``pool``, held for ``tenant``.

    ``duration`` (seconds) is how long it is held once active; ``expires_at`` is the absolute end: set at
    creation from a TTL, or at activation from the duration (whichever is earlier). ``nodes`` names the node of
    each slot once active.
    """

    id: str
    tenant: str
    pool: str
    resources: Resources
    count: int
    state: ReservationState
    created_at: datetime
    updated_at: datetime
    priority: int = 0
    duration: float | None = None
    expires_at: datetime | None = None
    activated_at: datetime | None = None
    ended_at: datetime | None = None
    nodes: tuple[str, ...] = ()
    seq: int = 0
    message: str | None = None  # why it is pending, or how it ended

    @property
    def total(self) -> Resources:
        """What the whole reservation holds."""
        return self.resources.scale(self.count)
