"""``SimCluster``: nodes that exist only as numbers, and attempts that end at a declared virtual time.

Pure bookkeeping: no asyncio, no clock. Every call takes the virtual time ``now`` (float seconds, never going
backwards) from its caller, so the same class drives ``SimulatedExecutor`` (virtual time = real time x speed) and a
benchmark harness that jumps its clock from one end to the next (``next_end``).

Cost: ``start`` and each ended attempt are O(log n) (a heap of end times); ``stop`` is O(1) (its heap entry is left
behind and skipped, and the heap is rebuilt once stale entries outnumber live ones); fitting a launch on a named
node is O(1 + extended resources). Only ``first_fit`` (a launch that names no node) scans the nodes.
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

from taskplane.domain.resources import Resources, extended_of


class SimRefusedError(ValueError):
    """A launch the cluster cannot start: unknown node, not enough free capacity, or a key already running.

    ``reason`` is a one-line explanation; ``permanent`` is true when the request can never fit the node (it is
    larger than the whole node, or the node does not exist), so retrying on the same node is pointless.
    """

    def __init__(self, key: str, reason: str, *, permanent: bool = False) -> None:
        super().__init__(f"{key}: {reason}")
        self.key = key
        self.reason = reason
        self.permanent = permanent


@dataclass(frozen=True, slots=True)
class SimNode:
    """One simulated node: its size, its task limit and its labels."""

    name: str
    total: Resources
    max_tasks: int
    labels: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class SimRunning:
    """An attempt running on the cluster. ``ends_at`` is ``math.inf`` for one that runs until stopped."""

    key: str
    node: str
    resources: Resources
    started_at: float
    ends_at: float


@dataclass(frozen=True, slots=True)
class SimEnded:
    """An attempt that ended: at its declared end (``exit_code`` 0) or stopped (``stopped``, no exit code)."""

    key: str
    node: str
    resources: Resources
    started_at: float
    ended_at: float
    exit_code: int | None
    stopped: bool


@dataclass(slots=True)
class _Run:
    key: str
    node: int
    resources: Resources
    started_at: float
    ends_at: float
    seq: int  # tells this run's heap entry from a stale one left by an earlier run of the same key


class SimCluster:
    """Simulated nodes and the attempts running on them, on a virtual clock supplied by the caller."""

    def __init__(self, nodes: list[SimNode] | tuple[SimNode, ...]) -> None:
        """A cluster of ``nodes`` (names must be unique), all empty."""
        self._nodes = tuple(nodes)
        self._index: dict[str, int] = {}
        for i, node in enumerate(self._nodes):
            if node.name in self._index:
                raise ValueError(f"node name {node.name!r} is used twice")
            if node.max_tasks < 0 or not node.total.nonnegative():
                raise ValueError(f"node {node.name!r} has a negative size")
            self._index[node.name] = i
        n = len(self._nodes)
        # Allocation per node as plain ints in parallel lists: the fit test runs once per launch, and building
        # ``Resources`` objects there would dominate the cost at 100,000 attempts.
        self._cpu = [0] * n
        self._mem = [0] * n
        self._gpu = [0] * n
        self._ext: list[dict[str, int] | None] = [None] * n
        self._tasks = [0] * n
        self._running: dict[str, _Run] = {}
        self._heap: list[tuple[float, int, str]] = []  # (ends_at, seq, key); seq also orders equal end times
        self._stale = 0
        self._seq = itertools.count()

    # ------------------------------------------------------------------------------------------ reading

    @property
    def nodes(self) -> tuple[SimNode, ...]:
        """The nodes, in configuration order."""
        return self._nodes

    def node(self, name: str) -> SimNode | None:
        """One node by name, or ``None``."""
        i = self._index.get(name)
        return None if i is None else self._nodes[i]

    def __len__(self) -> int:
        """The number of running attempts."""
        return len(self._running)

    def __contains__(self, key: object) -> bool:
        """True while the attempt ``key`` runs."""
        return key in self._running

    def get(self, key: str) -> SimRunning | None:
        """The running attempt ``key``, or ``None``."""
        run = self._running.get(key)
        return None if run is None else self._public(run)

    def running(self) -> Iterator[SimRunning]:
        """Every running attempt, in start order."""
        return (self._public(run) for run in self._running.values())

    def allocated(self, name: str) -> Resources:
        """What the attempts running on node ``name`` hold (``KeyError`` for an unknown node)."""
        i = self._index[name]
        ext = self._ext[i]
        return Resources(self._cpu[i], self._mem[i], self._gpu[i], extended_of(ext) if ext else ())

    def free(self, name: str) -> Resources:
        """The node's total minus what runs on it (``KeyError`` for an unknown node)."""
        return self._nodes[self._index[name]].total - self.allocated(name)

    def task_count(self, name: str) -> int:
        """How many attempts run on node ``name`` (``KeyError`` for an unknown node)."""
        return self._tasks[self._index[name]]

    def next_end(self) -> float | None:
        """The earliest virtual time at which a running attempt ends, or ``None`` when none will by itself."""
        heap = self._heap
        while heap:
            ends_at, seq, key = heap[0]
            run = self._running.get(key)
            if run is not None and run.seq == seq:
                return ends_at
            heapq.heappop(heap)
            self._stale -= 1
        return None

    def fits(self, name: str, resources: Resources) -> bool:
        """True when ``resources`` fit next to what runs on node ``name`` now (``False`` for an unknown node)."""
        i = self._index.get(name)
        return i is not None and self._fits(i, resources)

    def first_fit(self, resources: Resources) -> str | None:
        """The first node, in configuration order, where ``resources`` fit now; ``None`` when none has room.

        A scan of every node: for launches that name no node. The scheduler names one.
        """
        for i, node in enumerate(self._nodes):
            if self._fits(i, resources):
                return node.name
        return None

    # ---------------------------------------------------------------------------------------- changing

    def start(self, key: str, node: str, resources: Resources, duration: float, now: float) -> SimRunning:
        """Start attempt ``key`` on ``node`` at ``now``; it ends by itself at ``now + duration``.

        ``duration`` is ``math.inf`` for an attempt that runs until stopped. Raises ``SimRefusedError`` (and
        changes nothing) when ``key`` already runs, the node is unknown, or the request does not fit the node's
        free capacity and task limit.
        """
        if not duration >= 0:  # also rejects NaN
            raise ValueError(f"{key}: duration must be zero or more, not {duration!r}")
        if key in self._running:
            raise SimRefusedError(key, "already running")
        i = self._index.get(node)
        if i is None:
            raise SimRefusedError(key, f"no simulated node named {node!r}", permanent=True)
        if not self._fits(i, resources):
            raise self._refusal(key, i, resources)
        self._cpu[i] += resources.millicpu
        self._mem[i] += resources.memory
        self._gpu[i] += resources.gpu
        if resources.extended:
            ext = self._ext[i]
            if ext is None:
                ext = self._ext[i] = {}
            for name, amount in resources.extended:
                ext[name] = ext.get(name, 0) + amount
        self._tasks[i] += 1
        seq = next(self._seq)
        run = _Run(key, i, resources, now, now + duration, seq)
        self._running[key] = run
        if not math.isinf(run.ends_at):
            heapq.heappush(self._heap, (run.ends_at, seq, key))
        return self._public(run)

    def stop(self, key: str, now: float) -> SimEnded | None:
        """End the running attempt ``key`` at ``now`` (``stopped``); ``None`` when it does not run."""
        run = self._running.get(key)
        if run is None:
            return None
        self._release(run)
        if not math.isinf(run.ends_at):
            self._stale += 1
            if self._stale > 1024 and self._stale > len(self._heap) // 2:
                self._compact()
        return SimEnded(key, self._nodes[run.node].name, run.resources, run.started_at, now, None, True)

    def advance(self, now: float) -> list[SimEnded]:
        """End every attempt whose end time is at most ``now``, in end order (ties: start order).

        Each one's ``ended_at`` is its own end time, not ``now``: a caller that advances late loses no precision.
        """
        heap = self._heap
        ended: list[SimEnded] = []
        while heap and heap[0][0] <= now:
            ends_at, seq, key = heapq.heappop(heap)
            run = self._running.get(key)
            if run is None or run.seq != seq:
                self._stale -= 1
                continue
            self._release(run)
            ended.append(SimEnded(key, self._nodes[run.node].name, run.resources, run.started_at, ends_at, 0, False))
        return ended

    # ---------------------------------------------------------------------------------------- internals

    def _fits(self, i: int, r: Resources) -> bool:
        total = self._nodes[i].total
        if self._tasks[i] >= self._nodes[i].max_tasks:
            return False
        if (
            self._cpu[i] + r.millicpu > total.millicpu
            or self._mem[i] + r.memory > total.memory
            or self._gpu[i] + r.gpu > total.gpu
        ):
            return False
        if r.extended:
            used = self._ext[i] or {}
            have = dict(total.extended)
            return all(used.get(name, 0) + amount <= have.get(name, 0) for name, amount in r.extended)
        return True

    def _refusal(self, key: str, i: int, r: Resources) -> SimRefusedError:
        node = self._nodes[i]
        too_large = r.shortfall(node.total)
        if too_large:
            reason = f"requests {r.describe()}, more than node {node.name!r} has ({node.total.describe()})"
            return SimRefusedError(key, reason, permanent=True)
        if self._tasks[i] >= node.max_tasks:
            return SimRefusedError(key, f"node {node.name!r} already runs its limit of {node.max_tasks} tasks")
        short = ", ".join(r.shortfall(self.free(node.name)))
        reason = f"requests {r.describe()}; node {node.name!r} has too little free {short} (free: "
        return SimRefusedError(key, reason + f"{self.free(node.name).describe()})")

    def _release(self, run: _Run) -> None:
        del self._running[run.key]
        i, r = run.node, run.resources
        self._cpu[i] -= r.millicpu
        self._mem[i] -= r.memory
        self._gpu[i] -= r.gpu
        if r.extended:
            ext = self._ext[i]
            assert ext is not None
            for name, amount in r.extended:
                left = ext[name] - amount
                if left:
                    ext[name] = left
                else:
                    del ext[name]
        self._tasks[i] -= 1

    def _compact(self) -> None:
        running = self._running
        self._heap = [
            entry for entry in self._heap if (run := running.get(entry[2])) is not None and run.seq == entry[1]
        ]
        heapq.heapify(self._heap)
        self._stale = 0

    def _public(self, run: _Run) -> SimRunning:
        return SimRunning(run.key, self._nodes[run.node].name, run.resources, run.started_at, run.ends_at)
