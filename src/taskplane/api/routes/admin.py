"""``/platform/admin/tenants``: create, list, read, update (JSON merge patch) and delete tenants."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request
from starlette.responses import Response

from taskplane.api.deps import CallerDep
from taskplane.api.routes.common import json_response, problems
from taskplane.services.platform import Platform
from taskplane.services.tenants import TenantService
from taskplane.wire import TenantCreate, TenantList, TenantOut, TenantUpdate

router = APIRouter(prefix="/platform/admin/tenants", tags=["admin"])


async def get_tenants(request: Request) -> TenantService:
    """The tenant service of the platform this app serves."""
    platform: Platform = request.app.state.platform
    return platform.tenants


TenantsDep = Annotated[TenantService, Depends(get_tenants)]


@router.post("", response_model=TenantOut, status_code=201, responses=problems(400, 409, 422))
async def create_tenant(body: TenantCreate, tenants: TenantsDep, caller: CallerDep) -> Response:
    """Create a tenant with its quota, weight, pools and priority range (409 ``tenant_exists``)."""
    return json_response(await tenants.create(caller, body), 201)


@router.get("", response_model=TenantList)
async def list_tenants(tenants: TenantsDep, caller: CallerDep) -> Response:
    """Every tenant by name, the implicit ``default`` included, with what each holds now."""
    return json_response(await tenants.list(caller))


@router.get("/{name}", response_model=TenantOut, responses=problems(404))
async def get_tenant(name: str, tenants: TenantsDep, caller: CallerDep) -> Response:
    """One tenant with its pending and running tasks, usage and live reservations."""
    return json_response(await tenants.get(caller, name))


@router.patch("/{name}", response_model=TenantOut, responses=problems(400, 404, 422))
async def update_tenant(name: str, body: TenantUpdate, tenants: TenantsDep, caller: CallerDep) -> Response:
    """Change the members sent (JSON merge patch: ``null`` resets one to its default, e.g. an unlimited quota)."""
    return json_response(await tenants.update(caller, name, body))


@router.delete("/{name}", status_code=204, responses=problems(404, 409))
async def delete_tenant(name: str, tenants: TenantsDep, caller: CallerDep) -> Response:
    """Delete a tenant with no live task or reservation (409 ``tenant_not_empty``, ``tenant_protected``)."""
    await tenants.delete(caller, name)
    return Response(status_code=204)
