"""The FastAPI application: routes, error handlers, limits and lifespan; no module-level app."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from fastapi import FastAPI
from fastapi.routing import APIRoute
from starlette.routing import BaseRoute, Route

from taskplane import __version__
from taskplane.api import metrics
from taskplane.api.errors import install_error_handlers
from taskplane.api.limits import BodyLimitMiddleware
from taskplane.api.permissions import check_routes
from taskplane.api.routes import admin, audit, resources, security, state, system, tasks
from taskplane.api.security import GateConfig, SecurityMiddleware
from taskplane.services.platform import Platform


@dataclass(frozen=True, slots=True)
class ApiConfig:
    """Limits the HTTP layer enforces before any parsing."""

    max_body_bytes: int = 1 << 20
    max_batch_body_bytes: int = 64 << 20
    gate: GateConfig = GateConfig()


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
        docs_url=None,  # the Swagger and ReDoc pages load scripts from a CDN: not offline, not under our CSP
        redoc_url=None,
    )
    app.state.platform = platform
    app.state.metrics = metrics.build_registry(platform)
    install_error_handlers(app)
    routers = [tasks.router, resources.router, admin.router, security.router, audit.router, state.router, system.router]
    for router in [*routers, metrics.router]:
        app.include_router(router)
    # The routes as the security gate matches them: the routers' own (FastAPI includes routers lazily, so
    # app.routes holds wrappers) and the app's (/openapi.json). Each must have a rule; HEAD shares its GET's.
    routes: list[BaseRoute] = [r for router in [*routers, metrics.router] for r in router.routes]
    routes += [r for r in app.routes if isinstance(r, Route)]
    check_routes(
        [(m, r.path) for r in routes if isinstance(r, Route | APIRoute) for m in r.methods or () if m != "HEAD"]
    )
    app.add_middleware(BodyLimitMiddleware, limit=config.max_body_bytes, batch_limit=config.max_batch_body_bytes)
    # Added last, so it runs first: nothing (not even the body limit) answers an unauthenticated caller.
    app.add_middleware(
        SecurityMiddleware,
        routes=routes,
        auth=platform.auth,
        audit=platform.audit,
        now=platform.clock.now,
        monotonic=platform.clock.monotonic,
        config=config.gate,
    )
    return app
