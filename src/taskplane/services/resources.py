"""Resource use cases (``/platform/resources``): capacity per pool and node, reservations, usage over a window.

    reserve: validate (tenant, pool, priority, sizes, quota) --> AdminStore.create_reservation (pending)
             --> engine.reservation_created --> the scheduler holds every slot at once, or none, later
    release: engine.release (commits ``released``) | stored and ended: 409 | missing: 404

Reading a reservation prefers the engine's live view (state, nodes) over the stored row.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Protocol

from taskplane.domain import quantities as q
from taskplane.domain.access import Resource, Verb
from taskplane.domain.audit import AuditEntry
from taskplane.domain.pool import Node, Pool
from taskplane.domain.reservation import Reservation, ReservationState
from taskplane.domain.resources import ZERO, Resources
from taskplane.domain.tenant import Tenant
from taskplane.errors import ConflictError, InvalidRequestError, NotFoundError, UnavailableError
from taskplane.services.access import Caller
from taskplane.services.ports import AdminStore, Clock, UsageRow
from taskplane.services.specs import (
    Directory,
    check_name,
    check_priority,
    default_pool,
    find_pool,
    find_tenant,
    naming,
    parse_resources,
)
from taskplane.services.views import reservation_out, resources_out
from taskplane.wire import (
    MeasuredOut,
    NodeUsageOut,
    PoolUsageOut,
    RequestedOut,
    ReservationList,
    ReservationOut,
    ReserveRequest,
    ResourcesReport,
    UsageReport,
    UsageRowOut,
)

MAX_SLOTS = 1000
DEFAULT_USAGE_WINDOW = 3600.0


class NodeUsageView(Protocol):
    """One node now (the engine's ``NodeUsage``)."""

    @property
    def node(self) -> str: ...  # noqa: D102
    @property
    def pool(self) -> str: ...  # noqa: D102
    @property
    def total(self) -> Resources: ...  # noqa: D102
    @property
    def allocated(self) -> Resources: ...  # noqa: D102
    @property
    def reserved(self) -> Resources: ...  # noqa: D102
    @property
    def tasks(self) -> int: ...  # noqa: D102
    @property
    def max_tasks(self) -> int: ...  # noqa: D102
    @property
    def labels(self) -> Mapping[str, str]: ...  # noqa: D102


class PoolUsageView(Protocol):
    """One pool now (the engine's ``PoolUsage``)."""

    @property
    def name(self) -> str: ...  # noqa: D102
    @property
    def executor(self) -> str: ...  # noqa: D102
    @property
    def placement(self) -> str: ...  # noqa: D102
    @property
    def nodes(self) -> Sequence[NodeUsageView]: ...  # noqa: D102


class ResourceDirectory(Directory, Protocol):
    """The engine's side of resources: pools now, live reservations, what tenants hold."""

    def pools(self) -> Sequence[PoolUsageView]:
        """Every pool with each node's total, allocated and reserved resources."""
        ...

    def reservation_created(self, reservation: Reservation) -> None:
        """A new pending reservation was committed."""
        ...

    async def release(self, reservation_id: str, audit: AuditEntry | None = None) -> Reservation | None:
        """Commit ``released`` for a live reservation; ``None`` when it is not live."""
        ...

    def live_usage(self) -> Mapping[tuple[str, str], Resources]:
        """Resources allocated now per (tenant, pool)."""
        ...


def _clamp(res: Resources) -> Resources:
    """``res`` with negative quantities raised to zero (free capacity never shows below zero)."""
    ext = tuple((k, v) for k, v in res.extended if v > 0)
    return Resources(max(0, res.millicpu), max(0, res.memory), max(0, res.gpu), ext)


def slots_on(node: Node, slot: Resources) -> int:
    """How many ``slot``s an empty ``node`` holds."""
    fits = []
    for name, amount in (("cpu", slot.millicpu), ("memory", slot.memory), ("gpu", slot.gpu), *slot.extended):
        if amount > 0:
            fits.append(node.total.amount(name) // amount)
    return min(fits) if fits else 0


def _node_out(n: NodeUsageView) -> NodeUsageOut:
    free = _clamp(n.total - n.allocated - n.reserved)
    return NodeUsageOut(
        node=n.node,
        pool=n.pool,
        total=resources_out(n.total),
        allocated=resources_out(n.allocated),
        reserved=resources_out(n.reserved),
        free=resources_out(free),
        tasks=n.tasks,
        max_tasks=n.max_tasks,
        labels=dict(n.labels),
    )


def _sums(nodes: Sequence[NodeUsageView]) -> tuple[Resources, Resources, Resources, Resources]:
    total = allocated = reserved = free = ZERO
    for n in nodes:
        total += n.total
        allocated += n.allocated
        reserved += n.reserved
        free += _clamp(n.total - n.allocated - n.reserved)
    return total, allocated, reserved, free


def _slot(body: ReserveRequest) -> Resources:
    with naming("resources"):
        slot = parse_resources(body.resources, ZERO)
    if slot.is_zero():
        raise InvalidRequestError(
            "resources must request some cpu, memory, gpu or extended resource", code="invalid_field", field="resources"
        )
    if not 1 <= body.count <= MAX_SLOTS:
        raise InvalidRequestError(f"count must be between 1 and {MAX_SLOTS}", code="invalid_field", field="count")
    return slot


def _lifetime(body: ReserveRequest) -> tuple[float | None, float | None]:
    with naming("duration"):
        duration = None if body.duration is None else q.parse_duration(body.duration, field="duration")
    with naming("ttl"):
        ttl = None if body.ttl is None else q.parse_duration(body.ttl, field="ttl")
    if duration is None and ttl is None:
        raise InvalidRequestError(
            "give duration (held that long once active) or ttl (ends that long from now), or both",
            code="invalid_field",
            field="duration",
        )
    return duration, ttl


def check_fits(pool: Pool, slot: Resources, count: int) -> None:
    """422 ``reservation_too_large`` when ``pool`` could not hold ``count`` slots even with nothing running."""
    fits = sum(slots_on(node, slot) for node in pool.nodes)
    if fits >= count:
        return
    largest = max((node.total for node in pool.nodes), key=lambda r: (r.millicpu, r.memory), default=ZERO)
    raise InvalidRequestError(
        f"pool {pool.name} can hold at most {fits} slots of {slot.describe()} even when empty; {count} were asked",
        code="reservation_too_large",
        field="count" if fits else "resources",
        resource=",".join(slot.shortfall(largest)) or None,
        fits=fits,
    )


def check_quota(tenant: Tenant, total: Resources) -> None:
    """422 ``exceeds_quota`` when a reservation would hold more than its tenant's nominal quota.

    Reservations are guarantees, so they never borrow (borrowed room can be reclaimed): one larger than the
    quota could never be admitted.
    """
    over = tenant.quota.exceeded_by(total)
    if over is not None:
        raise InvalidRequestError(
            f"the reservation holds {total.describe()}, over tenant {tenant.name}'s {over} quota "
            "(reservations never borrow beyond it)",
            code="exceeds_quota",
            field="resources",
            resource=over,
        )


class ResourceService:
    """Capacity, reservations and usage behind ``/platform/resources``."""

    def __init__(
        self, store: AdminStore, engine: ResourceDirectory, clock: Clock, id_factory: Callable[[datetime], str]
    ) -> None:
        self._store = store
        self._engine = engine
        self._clock = clock
        self._new_id = id_factory

    # -------------------------------------------------------------------------------------------- capacity

    def resources(self) -> ResourcesReport:
        """Every pool and node: total, allocated (running tasks), reserved (held reservations), free."""
        pools = []
        every: list[NodeUsageView] = []
        for p in self._engine.pools():
            total, allocated, reserved, free = _sums(p.nodes)
            every.extend(p.nodes)
            pools.append(
                PoolUsageOut(
                    name=p.name,
                    executor=p.executor,
                    placement=str(p.placement),
                    nodes=[_node_out(n) for n in p.nodes],
                    total=resources_out(total),
                    allocated=resources_out(allocated),
                    reserved=resources_out(reserved),
                    free=resources_out(free),
                )
            )
        total, allocated, reserved, free = _sums(every)
        return ResourcesReport(
            pools=pools,
            total=resources_out(total),
            allocated=resources_out(allocated),
            reserved=resources_out(reserved),
            free=resources_out(free),
        )

    # ---------------------------------------------------------------------------------------- reservations

    async def reserve(self, caller: Caller, body: ReserveRequest) -> ReservationOut:
        """Create a ``pending`` reservation; the scheduler holds all its slots at once when they fit."""
        now = self._clock.now()
        name = body.tenant if "tenant" in body.model_fields_set else caller.default_tenant(body.tenant)
        caller.check_target(Verb.CREATE, Resource.RESERVATIONS, name)
        tenant = find_tenant(self._engine, name)
        name = default_pool(tenant, self._engine) if body.pool is None else check_name(body.pool, "pool")
        pool = find_pool(self._engine, tenant, name)
        check_priority(tenant, body.priority)
        slot = _slot(body)
        duration, ttl = _lifetime(body)
        check_fits(pool, slot, body.count)
        check_quota(tenant, slot.scale(body.count))
        reservation = Reservation(
            id=self._new_id(now),
            tenant=tenant.name,
            pool=pool.name,
            resources=slot,
            count=body.count,
            state=ReservationState.PENDING,
            created_at=now,
            updated_at=now,
            priority=body.priority,
            duration=duration,
            expires_at=None if ttl is None else now + timedelta(seconds=ttl),
        )
        audit = caller.entry(now, "reservations.create", f"reservations/{reservation.id}", tenant.name)
        stored = await self._store.create_reservation(reservation, audit)
        caller.audited = True
        self._engine.reservation_created(stored)
        return reservation_out(self._engine.reservation(stored.id) or stored)

    async def get_reservation(self, caller: Caller, reservation_id: str) -> ReservationOut:
        """A reservation, live or ended; 404 ``reservation_not_found`` (also for another tenant's)."""
        live = self._engine.reservation(reservation_id)
        if live is not None:
            caller.check_object(Verb.GET, Resource.RESERVATIONS, live.tenant, _missing(reservation_id))
            return reservation_out(live)
        return reservation_out(await self._stored(caller, Verb.GET, reservation_id))

    async def _stored(self, caller: Caller, verb: str, reservation_id: str) -> Reservation:
        found = await self._store.get_reservation(reservation_id)
        if found is None:
            raise _missing(reservation_id)
        caller.check_object(verb, Resource.RESERVATIONS, found.tenant, _missing(reservation_id))
        return found

    async def list_reservations(self, caller: Caller, tenant: str | None = None, live: bool = False) -> ReservationList:
        """Reservations, oldest first (of one tenant; only pending and active ones with ``live``)."""
        visible = caller.visible(Verb.LIST, Resource.RESERVATIONS)
        stored = await self._store.list_reservations(tenant, live)
        if visible is not None:
            stored = [r for r in stored if r.tenant in visible]
        return ReservationList(items=[reservation_out(self._engine.reservation(r.id) or r) for r in stored])

    async def release(self, caller: Caller, reservation_id: str) -> ReservationOut:
        """Release a live reservation; 409 ``reservation_ended`` when it already ended, 404 when missing."""
        held = self._engine.reservation(reservation_id)
        owner = held.tenant if held is not None else (await self._stored(caller, Verb.DELETE, reservation_id)).tenant
        caller.check_object(Verb.DELETE, Resource.RESERVATIONS, owner, _missing(reservation_id))
        audit = caller.entry(self._clock.now(), "reservations.release", f"reservations/{reservation_id}", owner)
        released = await self._engine.release(reservation_id, audit)
        if released is not None:
            caller.audited = True
            return reservation_out(released)
        stored = await self._stored(caller, Verb.DELETE, reservation_id)
        if stored.state.terminal:
            raise ConflictError(
                f"reservation {reservation_id} already ended ({stored.state.value})",
                code="reservation_ended",
                state=stored.state.value,
            )
        raise UnavailableError(f"reservation {reservation_id} is not held by the engine yet; try again")

    # ----------------------------------------------------------------------------------------------- usage

    def _window(self, window: str | None, start: datetime | None, end: datetime | None) -> tuple[datetime, datetime]:
        for name, moment in (("start", start), ("end", end)):
            if moment is not None and moment.utcoffset() is None:
                raise InvalidRequestError(f"{name} must carry a time zone", code="naive_datetime", field=name)
        if window is not None and start is not None and end is not None:
            raise InvalidRequestError(
                "give window, or start and end, not all three", code="invalid_field", field="window"
            )
        with naming("window"):
            seconds = DEFAULT_USAGE_WINDOW if window is None else q.parse_duration(window, field="window")
        until = end or self._clock.now()
        if start is None:
            start = until - timedelta(seconds=seconds)
        elif window is not None:
            until = start + timedelta(seconds=seconds)
        if start >= until:
            raise InvalidRequestError("start must be before end", code="invalid_field", field="start")
        if (until - start).total_seconds() > q.MAX_DURATION_SECONDS:
            raise InvalidRequestError("the window is at most 366 days", code="invalid_field", field="window")
        return start, until

    async def usage(
        self, caller: Caller, window: str | None = None, start: datetime | None = None, end: datetime | None = None
    ) -> UsageReport:
        """Per tenant and pool over the window: requested, allocated now, measured, utilization.

        ``window`` alone ends now; ``start`` alone (or with ``window``) sets the beginning; default: the last hour.
        """
        start, end = self._window(window, start, end)
        seconds = (end - start).total_seconds()
        rows = {(r.tenant, r.pool): r for r in await self._store.usage(start, end)}
        live = self._engine.live_usage()
        cores = {p.name: _sums(p.nodes)[0].millicpu / 1000 for p in self._engine.pools()}
        items = []
        visible = caller.visible(Verb.LIST, Resource.USAGE)
        for tenant, pool in sorted(set(rows) | set(live)):
            if visible is not None and tenant not in visible:
                continue
            row = rows.get((tenant, pool)) or UsageRow(tenant, pool, 0, 0.0, 0.0, 0.0, None, None)
            capacity = cores.get(pool, 0.0) * seconds
            items.append(
                UsageRowOut(
                    tenant=tenant,
                    pool=pool,
                    attempts=row.attempts,
                    requested=RequestedOut(
                        cpu_seconds=row.cpu_seconds,
                        memory_byte_seconds=row.memory_byte_seconds,
                        gpu_seconds=row.gpu_seconds,
                    ),
                    allocated=resources_out(live.get((tenant, pool), ZERO)),
                    measured=MeasuredOut(cpu_seconds=row.used_cpu_seconds, peak_memory=row.peak_memory),
                    pool_cpu_seconds=capacity,
                    utilization_percent=round(100 * row.cpu_seconds / capacity, 3) if capacity > 0 else None,
                )
            )
        return UsageReport(start=start, end=end, window_seconds=seconds, items=items)


def _missing(reservation_id: str) -> NotFoundError:
    """What a missing reservation, and another tenant's, both answer."""
    return NotFoundError(f"reservation {reservation_id[:64]!r} not found", code="reservation_not_found")
