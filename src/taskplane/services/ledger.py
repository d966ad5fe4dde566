"""The ledger: what is allocated where, kept by the engine and read by every scheduling cycle.

    pools -> nodes: total | allocated (tasks) | reserved (active reservation slots) | queued (node queue)
    tenants: usage (tasks outside reservations + whole reservations), running count
    reservations: active ones, and each slot's use by the tasks inside it
    charges: task id -> exactly what its attempt holds, so a release undoes precisely that

Everything here changes only through ``charge``/``release``/``hold``/``free``, called by the engine after it
decided a move; ``snapshot`` hands the pure scheduler a read-only view in O(nodes + tenants).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace

from taskplane.domain.pool import Node, PlacementStrategy, Pool
from taskplane.domain.reservation import Reservation
from taskplane.domain.resources import ZERO, Resources
from taskplane.domain.task import Task
from taskplane.domain.tenant import Tenant
from taskplane.scheduler import (
    NodeView,
    PoolView,
    ReservationView,
    RunningView,
    SlotView,
    Snapshot,
    TenantView,
)


@dataclass(frozen=True, slots=True)
class NodeUsage:
    """One node: ``allocated`` to tasks outside reservations, ``reserved`` by active reservations."""

    node: str
    pool: str
    total: Resources
    allocated: Resources
    reserved: Resources
    tasks: int
    max_tasks: int
    labels: Mapping[str, str] = field(default_factory=dict)

    @property
    def free(self) -> Resources:
        """What neither tasks nor reservations hold."""
        return self.total - self.allocated - self.reserved


@dataclass(frozen=True, slots=True)
class PoolUsage:
    """A pool and its nodes' usage."""

    name: str
    executor: str
    placement: PlacementStrategy
    nodes: list[NodeUsage]


@dataclass(frozen=True, slots=True)
class TenantCounts:
    """A tenant's live work."""

    pending: int
    running: int
    usage: Resources
    reservations: int


@dataclass(frozen=True, slots=True)
class Charge:
    """What one task's live attempt holds: on a node, or inside a reservation's slot, or in a node's queue."""

    task_id: str
    tenant: str
    pool: str
    node: str
    resources: Resources
    reservation: str | None = None
    slot: int | None = None
    queued: bool = False  # handed to the node's queue: counts against room and quota, not yet running


@dataclass(slots=True)
class _NodeState:
    node: Node
    allocated: Resources = ZERO
    reserved: Resources = ZERO
    queued: Resources = ZERO
    tasks: int = 0
    queued_tasks: int = 0


@dataclass(slots=True)
class _Slot:
    node: str
    used: Resources = ZERO
    tasks: int = 0


class Ledger:
    """Allocations by node, tenant and reservation. See the module docstring."""

    def __init__(self, pools: Iterable[tuple[Pool, str]]) -> None:
        self.pools: dict[str, Pool] = {}
        self.executors: dict[str, str] = {}  # pool -> executor name
        self._nodes: dict[str, _NodeState] = {}
        for pool, executor in pools:
            self.pools[pool.name] = pool
            self.executors[pool.name] = executor
            for node in pool.nodes:
                self._nodes[node.name] = _NodeState(node)
        self._views = {name: PoolView(name, pool.placement) for name, pool in self.pools.items()}
        self._usage: dict[str, Resources] = {}
        self._running: Counter[str] = Counter()
        self._by_pool: dict[tuple[str, str], Resources] = {}
        self._charges: dict[str, Charge] = {}
        self._on_node: dict[str, dict[str, RunningView]] = {name: {} for name in self._nodes}
        self._reservations: dict[str, Reservation] = {}
        self._slots: dict[str, list[_Slot]] = {}

    # ----------------------------------------------------------------------------------------- reads

    def node(self, name: str) -> Node | None:
        """A node by name."""
        state = self._nodes.get(name)
        return None if state is None else state.node

    def pool_of(self, node: str) -> str | None:
        """The pool a node belongs to."""
        state = self._nodes.get(node)
        return None if state is None else state.node.pool

    def charge_of(self, task_id: str) -> Charge | None:
        """What a task holds now, if anything."""
        return self._charges.get(task_id)

    def usage(self, tenant: str) -> Resources:
        """What a tenant's work holds (tasks outside reservations, queued launches and held reservations)."""
        return self._usage.get(tenant, ZERO)

    def running(self, tenant: str) -> int:
        """A tenant's tasks holding room (running, starting, or in a node's queue)."""
        return self._running[tenant]

    def reservation(self, reservation_id: str) -> Reservation | None:
        """An active reservation."""
        return self._reservations.get(reservation_id)

    def live_usage(self) -> dict[tuple[str, str], Resources]:
        """(tenant, pool) -> what its tasks and reservations hold on nodes now (not launches in a node's queue)."""
        return {key: res for key, res in self._by_pool.items() if not res.is_zero()}

    def pool_usage(self) -> list[PoolUsage]:
        """Every pool with its nodes' totals, allocations and reservations."""
        out = []
        for name, pool in self.pools.items():
            nodes = []
            for node in pool.nodes:
                state = self._nodes[node.name]
                nodes.append(
                    NodeUsage(
                        node.name,
                        name,
                        node.total,
                        state.allocated,
                        state.reserved,
                        state.tasks,
                        node.max_tasks,
                        node.labels,
                    )
                )
            out.append(PoolUsage(name, self.executors[name], pool.placement, nodes))
        return out

    def snapshot(self, tenants: Mapping[str, Tenant]) -> Snapshot:
        """The read-only view one scheduling cycle gets."""
        nodes = [
            NodeView(
                name,
                state.node.pool,
                state.node.total,
                state.allocated + state.reserved + state.queued,
                state.tasks + state.queued_tasks,
                state.node.max_tasks,
                state.node.labels,
            )
            for name, state in self._nodes.items()
        ]
        views = {
            name: TenantView(
                name,
                tenant.quota,
                tenant.weight,
                self._usage.get(name, ZERO),
                self._running[name],
                tenant.borrowing,
            )
            for name, tenant in tenants.items()
        }
        reservations = {
            rid: ReservationView(
                rid,
                res.tenant,
                res.pool,
                res.resources,
                tuple(SlotView(slot.node, slot.used, slot.tasks) for slot in self._slots[rid]),
            )
            for rid, res in self._reservations.items()
        }
        return Snapshot(self._views, nodes, views, {n: r.values() for n, r in self._on_node.items()}, reservations)

    def check(self, task: Task, node: str, tenant: Tenant | None, reservation: str | None) -> str | None:
        """Re-check one placement against what is held now; a reason when it would over-commit, else ``None``.

        The applier calls this for every placement of a plan, so a stale or wrong plan can never put a node
        over its size or task limit, a tenant over a quota it may not borrow beyond, or a slot over its size.
        """
        state = self._nodes.get(node)
        if state is None:
            return f"node {node} is not configured"
        if state.tasks + state.queued_tasks >= state.node.max_tasks:
            return f"node {node} runs its limit of {state.node.max_tasks} tasks"
        res = task.spec.resources
        if reservation is not None:
            slots = self._slots.get(reservation)
            if slots is None or self._slot_for(reservation, node, res) is None:
                return f"reservation {reservation} has no slot on {node} with room for it"
            return None
        used = state.allocated + state.reserved + state.queued
        if not res.fits_in(state.node.total - used):
            return f"node {node} has no room for {res.describe()}"
        if tenant is not None:
            quota = tenant.quota
            if quota.max_running is not None and self._running[tenant.name] >= quota.max_running:
                return f"tenant {tenant.name} runs its limit of {quota.max_running} tasks"
            if not tenant.borrowing and quota.exceeded_by(self.usage(tenant.name) + res) is not None:
                return f"tenant {tenant.name} would exceed its quota"
        return None

    # ---------------------------------------------------------------------------------------- writes

    def resize(self, name: str, total: Resources, max_tasks: int) -> Node | None:
        """Give a node a new size (what runs there stays charged, even above the new size); the new node."""
        state = self._nodes.get(name)
        if state is None:
            return None
        state.node = replace(state.node, total=total, max_tasks=max_tasks)
        pool = self.pools[state.node.pool]
        self.pools[pool.name] = replace(pool, nodes=tuple(state.node if n.name == name else n for n in pool.nodes))
        return state.node

    def _tenant_add(self, tenant: str, pool: str, res: Resources, tasks: int, *, allocated: bool = True) -> None:
        # ``_usage`` is what counts against the quota (queued launches too); ``_by_pool`` what is allocated.
        self._usage[tenant] = self._usage.get(tenant, ZERO) + res
        if allocated:
            self._by_pool[(tenant, pool)] = self._by_pool.get((tenant, pool), ZERO) + res
        self._running[tenant] += tasks

    def charge(
        self,
        task: Task,
        node: str,
        *,
        started_at: float,
        queued: bool = False,
        terminating: bool = False,
    ) -> Charge:
        """Hold a task's resources on ``node`` (inside its reservation's slot there, when it has one)."""
        old = self._charges.get(task.id)
        if old is not None:
            if old.queued and not queued:
                return self._unqueue_charge(old, task, started_at)
            return old
        spec = task.spec
        state = self._nodes[node]
        res = spec.resources
        slot_index = self._slot_for(spec.reservation, node, res) if spec.reservation and not queued else None
        if slot_index is not None:
            assert spec.reservation is not None
            slot = self._slots[spec.reservation][slot_index]
            slot.used = slot.used + res
            slot.tasks += 1
            state.tasks += 1
            self._running[spec.tenant] += 1
            charge = Charge(task.id, spec.tenant, state.node.pool, node, res, spec.reservation, slot_index)
        elif queued:
            state.queued = state.queued + res
            state.queued_tasks += 1
            self._tenant_add(spec.tenant, state.node.pool, res, 1, allocated=False)
            charge = Charge(task.id, spec.tenant, state.node.pool, node, res, queued=True)
        else:
            state.allocated = state.allocated + res
            state.tasks += 1
            self._tenant_add(spec.tenant, state.node.pool, res, 1)
            charge = Charge(task.id, spec.tenant, state.node.pool, node, res)
        self._charges[task.id] = charge
        if not queued:
            self._add_running(task, charge, started_at, terminating)
        return charge

    def _add_running(self, task: Task, charge: Charge, started_at: float, terminating: bool) -> None:
        run = task.spec.timeouts.run
        self._on_node[charge.node][task.id] = RunningView(
            task.id,
            charge.tenant,
            charge.pool,
            charge.node,
            task.spec.priority,
            charge.resources,
            started_at,
            None if run is None else started_at + run,
            charge.reservation,
            terminating,
        )

    def _unqueue_charge(self, old: Charge, task: Task, started_at: float) -> Charge:
        """A queued launch the node started: its hold moves from the node's queue to the node."""
        state = self._nodes[old.node]
        state.queued = state.queued - old.resources
        state.queued_tasks -= 1
        state.allocated = state.allocated + old.resources
        state.tasks += 1
        key = (old.tenant, old.pool)
        self._by_pool[key] = self._by_pool.get(key, ZERO) + old.resources
        charge = replace(old, queued=False)
        self._charges[task.id] = charge
        self._add_running(task, charge, started_at, False)
        return charge

    def _slot_for(self, reservation: str, node: str, res: Resources) -> int | None:
        slots = self._slots.get(reservation)
        if slots is None:
            return None
        size = self._reservations[reservation].resources
        fits = [i for i, s in enumerate(slots) if s.node == node and res.fits_in(size - s.used)]
        return fits[0] if fits else None

    def started(self, task: Task, at: float) -> None:
        """The attempt runs now: its expected end counts from here."""
        charge = self._charges.get(task.id)
        if charge is not None and not charge.queued:
            view = self._on_node[charge.node].get(task.id)
            terminating = view.terminating if view is not None else False
            self._add_running(task, charge, at, terminating)

    def terminating(self, task_id: str) -> None:
        """A stop is on its way to this task: the scheduler waits for it instead of preempting more."""
        charge = self._charges.get(task_id)
        if charge is None:
            return
        view = self._on_node[charge.node].get(task_id)
        if view is not None and not view.terminating:
            self._on_node[charge.node][task_id] = replace(view, terminating=True)

    def release(self, task_id: str) -> Charge | None:
        """Undo a task's charge (its attempt ended or its queued launch was taken back)."""
        charge = self._charges.pop(task_id, None)
        if charge is None:
            return None
        state = self._nodes[charge.node]
        self._on_node[charge.node].pop(task_id, None)
        if charge.queued:
            state.queued = state.queued - charge.resources
            state.queued_tasks -= 1
            self._tenant_add(charge.tenant, charge.pool, ZERO - charge.resources, -1, allocated=False)
        elif charge.reservation is not None and charge.slot is not None:
            slot = self._slots[charge.reservation][charge.slot]
            slot.used = slot.used - charge.resources
            slot.tasks -= 1
            state.tasks -= 1
            self._running[charge.tenant] -= 1
        else:
            state.allocated = state.allocated - charge.resources
            state.tasks -= 1
            self._tenant_add(charge.tenant, charge.pool, ZERO - charge.resources, -1)
        return charge

    def hold(self, reservation: Reservation) -> None:
        """An active reservation: its slots hold their nodes' room and count against its tenant's quota."""
        self._reservations[reservation.id] = reservation
        self._slots[reservation.id] = [_Slot(node) for node in reservation.nodes]
        for node in reservation.nodes:
            self._nodes[node].reserved = self._nodes[node].reserved + reservation.resources
        self._tenant_add(reservation.tenant, reservation.pool, reservation.total, 0)

    def free(self, reservation_id: str) -> list[str]:
        """Let a reservation's room go. Tasks still inside it keep running, charged to their node and tenant.

        Returns those tasks' ids.
        """
        res = self._reservations.pop(reservation_id, None)
        if res is None:
            return []
        self._slots.pop(reservation_id)
        for node in res.nodes:
            self._nodes[node].reserved = self._nodes[node].reserved - res.resources
        self._tenant_add(res.tenant, res.pool, ZERO - res.total, 0)
        moved = []
        for task_id, charge in list(self._charges.items()):
            if charge.reservation != reservation_id:
                continue
            state = self._nodes[charge.node]
            state.allocated = state.allocated + charge.resources
            self._tenant_add(charge.tenant, charge.pool, charge.resources, 0)
            self._charges[task_id] = replace(charge, reservation=None, slot=None)
            view = self._on_node[charge.node].get(task_id)
            if view is not None:
                self._on_node[charge.node][task_id] = replace(view, reservation=None)
            moved.append(task_id)
        return moved
