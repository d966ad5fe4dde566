"""``SimulatedExecutor``: the ``Executor`` port over a ``SimCluster``, on real time scaled by ``speed``.

Virtual time is ``(loop.time() - origin) x speed``. An attempt starts at once on ``launch.node`` (or the first node
where it fits) and ends ``launch.simulated_duration`` virtual seconds later with exit code 0. One timer, re-armed
for the cluster's next end, delivers every exit: there is no asyncio task per attempt, so 10,000 running
attempts cost 10,000 heap entries and nothing else.

Timestamps are real (UTC): an attempt's ``started_at`` is the wall-clock time of its start, and its end is
``started_at + duration / speed`` exactly, however late the timer fired. The "measurements" are simulated: a
simulated attempt is taken to use exactly what it requested, so ``peak_memory`` is the requested memory and
``cpu_seconds`` the requested cores x the real seconds it ran (the same span the usage report integrates the
request over, so utilization reads 100% at any speed).

The simulation lives in this process's memory only: ``open`` always returns an empty ``Recovered``, and after a
server restart the engine marks the attempts it still had live as lost and retries them.
"""

from __future__ import annotations

import asyncio
import logging
import math
import signal
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from taskplane.domain.outcome import AttemptOutcome
from taskplane.errors import InternalError, InvalidRequestError, UnavailableError
from taskplane.executors.outbox import EventOutbox
from taskplane.executors.simulated.cluster import SimCluster, SimEnded, SimNode, SimRefusedError
from taskplane.services.ports import ExecutorEvent, Exited, Launch, NodeCapacity, Recovered, Started

log = logging.getLogger("taskplane.executor.simulated")

CGROUPS = "simulated"  # ``NodeCapacity.cgroups``: limits are bookkeeping, nothing is enforced


@dataclass(frozen=True, slots=True)
class SimulatedExecutorConfig:
    """The simulated nodes, and how many virtual seconds pass per real second."""

    nodes: tuple[SimNode, ...]
    speed: float = 1.0

    def __post_init__(self) -> None:
        """Refuse a cluster without nodes or a speed that is not a positive finite number."""
        if not self.nodes:
            raise InvalidRequestError("a simulated executor needs at least one node")
        if not (math.isfinite(self.speed) and self.speed > 0):
            raise InvalidRequestError(f"speed must be a positive number, not {self.speed!r}")


def _key(task_id: str, attempt: int) -> str:
    return f"{task_id}.{attempt}"


class SimulatedExecutor:
    """Runs attempts on simulated nodes: each one occupies its request for its ``simulated_duration``."""

    name = "simulated"

    def __init__(self, config: SimulatedExecutorConfig, *, wall: Callable[[], float] = time.time) -> None:
        """An executor over ``config.nodes``; ``wall`` gives the real time (epoch seconds) for timestamps."""
        self.config = config
        self.cluster = SimCluster(config.nodes)
        self._wall = wall
        self._speed = config.speed
        self._capacities = [
            NodeCapacity(n.name, n.total, n.max_tasks, CGROUPS, labels=dict(n.labels)) for n in config.nodes
        ]
        self._loop: asyncio.AbstractEventLoop | None = None
        self._origin = 0.0  # loop.time() at virtual time 0
        self._wall_origin = 0.0  # wall time at virtual time 0
        self._attempts: dict[str, tuple[str, int, float]] = {}  # running key -> (task_id, attempt, real start)
        self._exits: dict[tuple[str, int], Exited] = {}  # ended, not acked yet: a repeated start is a no-op
        self._outbox = EventOutbox()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = math.inf  # the virtual time the timer is set for
        self._closed = False

    # ------------------------------------------------------------------------------------ the port

    async def open(self, epoch: int, on_events: Callable[[list[ExecutorEvent]], None]) -> Recovered:
        """Start the virtual clock at 0. Nothing survives a restart, so nothing is recovered.

        ``epoch`` is not used: there is no node process that a newer server could take over.
        """
        if self._loop is not None:
            raise InternalError("SimulatedExecutor.open called twice")
        self._loop = asyncio.get_running_loop()
        self._outbox.open(self._loop, on_events)
        self._origin = self._loop.time()
        self._wall_origin = self._wall()
        return Recovered(running=[], exited=[])

    async def start(self, launches: Sequence[Launch]) -> None:
        """Start each launch at once on its node; one that does not fit is refused (an infra ``spawn_error``).

        Idempotent per attempt: a launch already running, or ended and not acked, is ignored.
        """
        self._check_open()
        now = self.virtual_now()
        for launch in launches:
            key = launch.key
            if key in self.cluster or (launch.task_id, launch.attempt) in self._exits:
                continue
            node = launch.node if launch.node is not None else self.cluster.first_fit(launch.resources)
            duration = launch.simulated_duration or 0.0
            try:
                if node is None:
                    raise SimRefusedError(key, f"requests {launch.resources.describe()}; no node has room for it")
                run = self.cluster.start(key, node, launch.resources, max(0.0, duration), now)
            except SimRefusedError as exc:
                self._refuse(launch, exc, now)
                continue
            self._attempts[key] = (launch.task_id, launch.attempt, self._real(run.started_at))
            self._emit(Started(launch.task_id, launch.attempt, self._utc(run.started_at)))
        self._rearm()

    async def stop(self, task_id: str, attempt: int, grace: float) -> None:
        """End a running attempt at once, as killed by SIGTERM (a simulated task obeys it with no delay)."""
        self._check_open()
        ended = self.cluster.stop(_key(task_id, attempt), self.virtual_now())
        if ended is not None:
            self._ended(ended)
            self._rearm()

    async def unqueue(self, task_id: str, attempt: int) -> None:
        """Nothing to do: a launch starts or is refused at once, so no node queue holds one."""

    async def ack(self, keys: Sequence[tuple[str, int]]) -> None:
        """Forget these exits (a later ``start`` of the same attempt would run it again)."""
        for key in keys:
            self._exits.pop(key, None)

    def capacity(self) -> NodeCapacity:
        """The first node."""
        return self._capacities[0]

    def nodes(self) -> list[NodeCapacity]:
        """Every simulated node, in configuration order (``cgroups`` is ``"simulated"``)."""
        return list(self._capacities)

    async def close(self) -> None:
        """Stop the clock and deliver nothing more. Running attempts vanish with the process's memory."""
        self._closed = True
        self._outbox.close()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    # ------------------------------------------------------------------------------------- virtual time

    def virtual_now(self) -> float:
        """Virtual seconds since ``open``."""
        assert self._loop is not None
        return (self._loop.time() - self._origin) * self._speed

    def _real(self, virtual: float) -> float:
        return self._wall_origin + virtual / self._speed

    def _utc(self, virtual: float) -> datetime:
        return datetime.fromtimestamp(self._real(virtual), tz=UTC)

    # ---------------------------------------------------------------------------------------- internals

    def _check_open(self) -> None:
        if self._loop is None:
            raise UnavailableError("the simulated executor is not open")
        if self._closed:
            raise UnavailableError("the simulated executor is closed")

    def _refuse(self, launch: Launch, exc: SimRefusedError, now: float) -> None:
        # Not the task's fault (the placement was stale or wrong): a spawn error classes it ``infra``. It is a
        # real refusal, not a launch taken back from a queue, so ``never_started`` stays false.
        outcome = AttemptOutcome(spawn_error=exc.reason, retryable=not exc.permanent)
        exited = Exited(launch.task_id, launch.attempt, self._utc(now), outcome)
        self._exits[(launch.task_id, launch.attempt)] = exited
        self._emit(exited)

    def _ended(self, ended: SimEnded) -> None:
        task_id, attempt, real_start = self._attempts.pop(ended.key)
        real_end = self._real(ended.ended_at)
        if ended.stopped:
            outcome = AttemptOutcome(signal=int(signal.SIGTERM))
        else:
            outcome = AttemptOutcome(exit_code=ended.exit_code)
        cores = ended.resources.millicpu / 1000
        exited = Exited(
            task_id,
            attempt,
            datetime.fromtimestamp(real_end, tz=UTC),
            outcome,
            started_at=datetime.fromtimestamp(real_start, tz=UTC),
            peak_memory=ended.resources.memory,
            cpu_seconds=cores * max(0.0, real_end - real_start),
        )
        self._exits[(task_id, attempt)] = exited
        self._emit(exited)

    def _emit(self, event: ExecutorEvent) -> None:
        # Batched and delivered from the loop, never from inside ``start``/``stop`` (``EventOutbox``).
        self._outbox.emit(event)

    def _rearm(self) -> None:
        """Keep one timer set for the cluster's next end."""
        if self._closed or self._loop is None:
            return
        next_end = self.cluster.next_end()
        if next_end is None:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
                self._timer_at = math.inf
            return
        if self._timer is not None and self._timer_at <= next_end:
            return  # it fires no later than needed, and re-arms then
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = next_end
        self._timer = self._loop.call_at(self._origin + next_end / self._speed, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        # The loop may run a timer a clock tick early; the virtual time it was set for has come by definition.
        now = max(self.virtual_now(), self._timer_at)
        self._timer_at = math.inf
        for ended in self.cluster.advance(now):
            self._ended(ended)
        self._rearm()
