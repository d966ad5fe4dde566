"""``/platform/resources``: capacity per pool and node, reservations (reserve, read, release), usage."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request
from starlette.responses import Response

from taskplane.api.deps import CallerDep
from taskplane.api.routes.common import json_response, problems
from taskplane.services.platform import Platform
from taskplane.services.resources import ResourceService
from taskplane.wire import ReservationList, ReservationOut, ReserveRequest, ResourcesReport, UsageReport

router = APIRouter(prefix="/platform/resources", tags=["resources"])


async def get_resources(request: Request) -> ResourceService:
    """The resource service of the platform this app serves."""
    platform: Platform = request.app.state.platform
    return platform.resources


ResourcesDep = Annotated[ResourceService, Depends(get_resources)]


@router.get("", response_model=ResourcesReport)
async def resources(service: ResourcesDep) -> Response:
    """Per pool and node: total, allocated (running tasks), reserved (held reservations) and free."""
    return json_response(service.resources())


@router.post("/reserve", response_model=ReservationOut, status_code=201, responses=problems(400, 404, 422))
async def reserve(body: ReserveRequest, service: ResourcesDep, caller: CallerDep) -> Response:
    """Reserve ``count`` slots of ``resources`` in a pool for a tenant: held all at once, or not at all."""
    return json_response(await service.reserve(caller, body), 201)


@router.get("/reservations", response_model=ReservationList, responses=problems(422))
async def list_reservations(
    service: ResourcesDep,
    caller: CallerDep,
    tenant: Annotated[str | None, Query(max_length=63)] = None,
    live: Annotated[bool, Query(description="only pending and active ones")] = False,
) -> Response:
    """Reservations, oldest first."""
    return json_response(await service.list_reservations(caller, tenant, live))


@router.get("/usage", response_model=UsageReport, responses=problems(422))
async def usage(
    service: ResourcesDep,
    caller: CallerDep,
    window: Annotated[str | None, Query(max_length=32, description="e.g. 1h, 30m, 7d")] = None,
    start: datetime | None = None,
    end: datetime | None = None,
) -> Response:
    """Per tenant and pool over a window: requested, allocated now, measured, utilization."""
    return json_response(await service.usage(caller, window, start, end))


@router.get("/{reservation_id}", response_model=ReservationOut, responses=problems(404))
async def get_reservation(reservation_id: str, service: ResourcesDep, caller: CallerDep) -> Response:
    """One reservation, live or ended."""
    return json_response(await service.get_reservation(caller, reservation_id))


@router.delete("/{reservation_id}", response_model=ReservationOut, responses=problems(404, 409))
async def release(reservation_id: str, service: ResourcesDep, caller: CallerDep) -> Response:
    """Release a reservation (409 ``reservation_ended`` when it already ended)."""
    return json_response(await service.release(caller, reservation_id))
