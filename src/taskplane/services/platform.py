"""The assembled platform: the services the edge calls, and their start and stop."""

from __future__ import annotations

from dataclasses import dataclass

from taskplane.errors import UnavailableError
from taskplane.services.auth import AuthService
from taskplane.services.engine import Engine
from taskplane.services.ports import Clock, Executor, TaskStore
from taskplane.services.resources import ResourceService
from taskplane.services.security import AuditService, SecurityService
from taskplane.services.tasks import TaskService
from taskplane.services.tenants import TenantService


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
    started: bool = False

    async def start(self) -> None:
        """Recover and start the engine (which connects the executor)."""
        await self.engine.start()
        self.started = True

    async def stop(self) -> None:
        """Stop the engine and close the store; running tasks keep running."""
        if self.started:
            await self.engine.close()
            await self.auth.flush_usage()
            self.started = False
        await self.store.close()

    async def check_ready(self) -> None:
        """Raise ``UnavailableError`` when the database cannot be reached or the engine is not running."""
        if not self.started:
            raise UnavailableError("the engine has not started")
        await self.store.ping()
