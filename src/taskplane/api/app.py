"""The FastAPI application: routes, error handlers, limits and lifespan; no module-level app."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from fastapi import FastAPI

from taskplane import __version__
from taskplane.api import metrics
from taskplane.api.errors import install_error_handlers
from taskplane.api.limits import BodyLimitMiddleware
from taskplane.api.routes import admin, resources, system, tasks
from taskplane.services.platform import Platform


@dataclass(frozen=True, slots=True)
class ApiConfig:
    """Limits the HTTP layer enforces before any parsing."""

    max_body_bytes: int = 1 << 20
    max_batch_body_bytes: int = 64 << 20


def create_app(platform: Platform, config: ApiConfig, *, manage_lifespan: bool = True) -> FastAPI:
    """Build the app for ``platform``; with ``manage_lifespan`` the app starts and stops it."""

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        if manage_lifespan:
            await platform.start()
        try:
            yield
        finally:
            if manage_lifespan:
                await platform.stop()

    app = FastAPI(
        title="taskplane",
        version=__version__,
        summary="A workflow execution platform: queues, places and runs tasks, durably.",
        lifespan=lifespan,
    )
    app.state.platform = platform
    app.state.metrics = metrics.build_registry(platform)
    install_error_handlers(app)
    app.include_router(tasks.router)
    app.include_router(resources.router)
    app.include_router(admin.router)
    app.include_router(system.router)
    app.include_router(metrics.router)
    app.add_middleware(BodyLimitMiddleware, limit=config.max_body_bytes, batch_limit=config.max_batch_body_bytes)
    return app
