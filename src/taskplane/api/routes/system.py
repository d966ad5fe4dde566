"""Capacity, health, readiness and metrics."""

from __future__ import annotations

from fastapi import APIRouter
from starlette.responses import Response

from taskplane.api.deps import PlatformDep, TasksDep
from taskplane.api.errors import problem
from taskplane.errors import UnavailableError
from taskplane.wire import CapacityOut

router = APIRouter()


@router.get("/platform/capacity", response_model=CapacityOut, tags=["capacity"])
async def capacity(tasks: TasksDep) -> Response:
    """This platform's nodes with total, allocated and free resources."""
    return Response(tasks.capacity().model_dump_json(), media_type="application/json")


@router.get("/healthz", tags=["health"])
async def healthz() -> dict[str, str]:
    """Alive: the process answers."""
    return {"status": "ok"}


@router.get("/readyz", tags=["health"])
async def readyz(platform: PlatformDep) -> Response:
    """Ready: the database answers and the engine runs."""
    try:
        await platform.check_ready()
    except UnavailableError as exc:
        return problem(503, exc.code, exc.title, exc.detail)
    return Response(b'{"status":"ready"}', media_type="application/json")
