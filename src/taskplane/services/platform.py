"""The assembled platform: the services the edge calls, and their start and stop."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field

from taskplane.errors import UnavailableError
from taskplane.services.auth import AuthService
from taskplane.services.engine import Engine
from taskplane.services.ports import Clock, Executor, KVStore, TaskStore
from taskplane.services.resources import ResourceService
from taskplane.services.security import AuditService, SecurityService
from taskplane.services.state import StateService
from taskplane.services.tasks import TaskService
from taskplane.services.tenants import TenantService

log = logging.getLogger("taskplane.platform")


@dataclass(frozen=True, slots=True)
class Housekeeping:
    """How often the state store's leases are swept and its history compacted."""

    sweep_seconds: float = 1.0
    compact_seconds: float = 60.0
    history_revisions: int = 100_000  # revisions of history kept for reads at a revision and resumed watches


@dataclass(slots=True)
class Platform:
    """What ``bootstrap`` builds and the API, CLI and tests drive."""

    tasks: TaskService
    engine: Engine
    store: TaskStore
    executor: Executor  # the first pool's
    tenants: TenantService
    resources: ResourceService
    auth: AuthService
    security: SecurityService
    audit: AuditService
    clock: Clock
    state: StateService
    kv: KVStore
    housekeeping: Housekeeping = Housekeeping()
    started: bool = False
    _sweeper: asyncio.Task[None] | None = field(default=None, repr=False)

    async def start(self) -> None:
        """Recover and start the engine (which connects the executor) and the state store's sweeper."""
        await self.engine.start()
        self._sweeper = asyncio.get_running_loop().create_task(self._housekeeping())
        self.started = True

    async def stop(self) -> None:
        """Stop the engine and close the stores; running tasks keep running."""
        if self.started:
            if self._sweeper is not None:
                self._sweeper.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._sweeper
            await self.engine.close()
            await self.auth.flush_usage()
            self.started = False
        await self.kv.close()
        await self.store.close()

    async def check_ready(self) -> None:
        """Raise ``UnavailableError`` when the database cannot be reached or the engine is not running."""
        if not self.started:
            raise UnavailableError("the engine has not started")
        await self.store.ping()

    async def _housekeeping(self) -> None:
        """Sweep expired leases every ``sweep_seconds``; compact history every ``compact_seconds``."""
        keep = self.housekeeping
        last_compaction = self.clock.monotonic()
        while True:
            await asyncio.sleep(keep.sweep_seconds)
            try:
                await self.state.sweep()
                if self.clock.monotonic() - last_compaction >= keep.compact_seconds:
                    last_compaction = self.clock.monotonic()
                    current = await self.kv.revision()
                    if current > keep.history_revisions:
                        await self.kv.compact(current - keep.history_revisions)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the next round tries again; reads hide expired keys meanwhile
                log.warning("state housekeeping failed: %s", exc)
