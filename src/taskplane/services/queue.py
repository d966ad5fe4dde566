"""The ready queue and the timer heap the engine keeps in memory (rebuilt from the database on start)."""

from __future__ import annotations

import heapq
import itertools
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field

from taskplane.domain.task import Task
from taskplane.scheduler import Candidate


class ReadyQueue:
    """Pending task ids eligible to run now, in priority (high first) then arrival order.

    Removal is lazy: ``discard`` forgets membership and iteration skips the stale entry, so cancelling a
    queued task and placing the head are both O(1) amortised, and a scheduling cycle that places k tasks
    costs O(k) whatever the queue length. Each push gets a fresh token, so a task discarded and pushed again
    is yielded once, from its new place.
    """

    def __init__(self) -> None:
        self._lanes: dict[int, deque[tuple[str, int]]] = {}
        self._order: list[int] = []  # priorities, highest first
        self._members: dict[str, int] = {}  # task id -> token of its live entry
        self._tokens = itertools.count()

    def __len__(self) -> int:
        return len(self._members)

    def __contains__(self, task_id: object) -> bool:
        return task_id in self._members

    def push(self, task_id: str, priority: int) -> None:
        """Queue a task at the back of its priority lane (no-op when already queued)."""
        if task_id in self._members:
            return
        lane = self._lanes.get(priority)
        if lane is None:
            lane = self._lanes[priority] = deque()
            self._order = sorted(self._lanes, reverse=True)
        token = next(self._tokens)
        lane.append((task_id, token))
        self._members[task_id] = token

    def discard(self, task_id: str) -> None:
        """Forget a task (placed, cancelled, timed out); its lane entry is dropped lazily."""
        self._members.pop(task_id, None)

    def __iter__(self) -> Iterator[str]:
        """Members in queue order. Do not push or discard while iterating."""
        members = self._members
        for priority in self._order:
            for task_id, token in self._lanes[priority]:
                if members.get(task_id) == token:
                    yield task_id

    def compact(self) -> None:
        """Drop stale entries from the front of each lane (call after a cycle)."""
        members = self._members
        for priority in list(self._order):
            lane = self._lanes[priority]
            while lane and members.get(lane[0][0]) != lane[0][1]:
                lane.popleft()
            if not lane:
                del self._lanes[priority]
        self._order = sorted(self._lanes, reverse=True)

    def position(self, task_id: str) -> int | None:
        """0-based position in the queue, or ``None`` when not queued. O(queue length)."""
        if task_id not in self._members:
            return None
        for index, member in enumerate(self):
            if member == task_id:
                return index
        return None  # pragma: no cover - member is always found


@dataclass(order=True, frozen=True, slots=True)
class Timer:
    """Something to do for a task at a time (epoch seconds); ``attempt`` 0 means "not tied to an attempt"."""

    at: float
    order: int
    kind: str = field(compare=False)  # queue_timeout, run_timeout, deadline, backoff
    task_id: str = field(compare=False)
    attempt: int = field(compare=False, default=0)


class TimerHeap:
    """Timers by due time. Stale timers are not removed; the engine checks them when they fire."""

    def __init__(self) -> None:
        self._heap: list[Timer] = []
        self._counter = itertools.count()

    def __len__(self) -> int:
        return len(self._heap)

    def add(self, at: float, kind: str, task_id: str, attempt: int = 0) -> None:
        """Schedule a timer."""
        heapq.heappush(self._heap, Timer(at, next(self._counter), kind, task_id, attempt))

    def next_due(self) -> float | None:
        """When the earliest timer fires, or ``None``."""
        return self._heap[0].at if self._heap else None

    def pop_due(self, now: float) -> list[Timer]:
        """Remove and return every timer due at ``now``."""
        due = []
        while self._heap and self._heap[0].at <= now:
            due.append(heapq.heappop(self._heap))
        return due


QueueKey = tuple[str, str, str]
"""(tenant, pool, lane): the lane is ``""`` for ordinary tasks, a reservation id for tasks that run inside it,
and ``"#reservations"`` for reservations waiting to be admitted."""


class QueueSet:
    """One ``ReadyQueue`` per (tenant, pool, lane): what the scheduler reads, one lazy iterator per queue."""

    def __init__(self) -> None:
        self._queues: dict[QueueKey, ReadyQueue] = {}
        self._where: dict[str, QueueKey] = {}

    def __len__(self) -> int:
        return len(self._where)

    def __contains__(self, item_id: object) -> bool:
        return item_id in self._where

    def push(self, item_id: str, key: QueueKey, priority: int) -> None:
        """Queue an item at the back of its priority lane in queue ``key`` (no-op when already queued)."""
        if item_id in self._where:
            return
        queue = self._queues.get(key)
        if queue is None:
            queue = self._queues[key] = ReadyQueue()
        queue.push(item_id, priority)
        self._where[item_id] = key

    def discard(self, item_id: str) -> None:
        """Forget an item (placed, cancelled, timed out)."""
        key = self._where.pop(item_id, None)
        if key is not None:
            self._queues[key].discard(item_id)

    def key_of(self, item_id: str) -> QueueKey | None:
        """The queue an item waits in."""
        return self._where.get(item_id)

    def queues(self) -> list[tuple[QueueKey, ReadyQueue]]:
        """The non-empty queues."""
        return [(key, q) for key, q in self._queues.items() if len(q)]

    def head(self, key: QueueKey) -> str | None:
        """The first item of a queue."""
        queue = self._queues.get(key)
        return None if queue is None else next(iter(queue), None)

    def position(self, item_id: str) -> int | None:
        """0-based position within its own queue (its tenant and pool). O(that queue's length)."""
        key = self._where.get(item_id)
        return None if key is None else self._queues[key].position(item_id)

    def compact(self) -> None:
        """Drop stale entries and empty queues (call after a cycle)."""
        for key, queue in list(self._queues.items()):
            queue.compact()
            if not len(queue):
                del self._queues[key]


def candidate_of(task: Task) -> Candidate:
    """A queued task as the scheduler sees it (built only when a cycle reaches it)."""
    spec = task.spec
    selector = tuple(sorted(spec.node_selector.items())) if spec.node_selector else ()
    return Candidate(
        task.id,
        spec.tenant,
        spec.pool,
        spec.priority,
        task.seq,
        spec.resources,
        selector,
        spec.reservation,
        spec.timeouts.run,
    )
