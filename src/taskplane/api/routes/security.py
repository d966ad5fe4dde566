"""``/platform/admin/tokens``, ``/platform/admin/roles``, ``/platform/admin/rolebindings``, ``/platform/whoami``."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request
from starlette.responses import Response

from taskplane.api.deps import CallerDep
from taskplane.api.routes.common import json_response, problems
from taskplane.services.platform import Platform
from taskplane.services.security import SecurityService
from taskplane.wire.security import (
    BindingCreate,
    BindingList,
    BindingOut,
    RoleCreate,
    RoleList,
    RoleOut,
    TokenCreate,
    TokenCreated,
    TokenList,
    TokenOut,
    WhoAmI,
)

router = APIRouter(tags=["security"])


async def get_security(request: Request) -> SecurityService:
    """The security service of the platform this app serves."""
    platform: Platform = request.app.state.platform
    return platform.security


SecurityDep = Annotated[SecurityService, Depends(get_security)]


@router.get("/platform/whoami", response_model=WhoAmI)
async def whoami(service: SecurityDep, caller: CallerDep) -> Response:
    """The caller as the server sees it: subject, kind and role bindings."""
    return json_response(service.whoami(caller))


@router.post("/platform/admin/tokens", response_model=TokenCreated, status_code=201, responses=problems(403, 404, 422))
async def create_token(body: TokenCreate, service: SecurityDep, caller: CallerDep) -> Response:
    """Mint an API key. Its ``token`` is in this response only; you cannot grant roles you do not hold."""
    return json_response(await service.create_token(caller, body), 201)


@router.get("/platform/admin/tokens", response_model=TokenList)
async def list_tokens(service: SecurityDep, caller: CallerDep) -> Response:
    """API keys of the tenants where you may list them (never their secrets)."""
    return json_response(await service.list_tokens(caller))


@router.get("/platform/admin/tokens/{token_id}", response_model=TokenOut, responses=problems(404))
async def get_token(token_id: str, service: SecurityDep, caller: CallerDep) -> Response:
    """One API key."""
    return json_response(await service.get_token(caller, token_id))


@router.delete("/platform/admin/tokens/{token_id}", response_model=TokenOut, responses=problems(404))
async def revoke_token(token_id: str, service: SecurityDep, caller: CallerDep) -> Response:
    """Revoke an API key, effective at once (idempotent)."""
    return json_response(await service.revoke_token(caller, token_id))


@router.post("/platform/admin/roles", response_model=RoleOut, status_code=201, responses=problems(409, 422))
async def create_role(body: RoleCreate, service: SecurityDep, caller: CallerDep) -> Response:
    """Define a custom role of verbs x resources."""
    return json_response(await service.create_role(caller, body), 201)


@router.get("/platform/admin/roles", response_model=RoleList)
async def list_roles(service: SecurityDep) -> Response:
    """Built-in and custom roles with their rules."""
    return json_response(await service.list_roles())


@router.get("/platform/admin/roles/{name}", response_model=RoleOut, responses=problems(404))
async def get_role(name: str, service: SecurityDep) -> Response:
    """One role."""
    return json_response(await service.get_role(name))


@router.delete("/platform/admin/roles/{name}", status_code=204, responses=problems(404, 409, 422))
async def delete_role(name: str, service: SecurityDep, caller: CallerDep) -> Response:
    """Delete a custom role that no binding or live key uses (409 ``role_in_use``)."""
    await service.delete_role(caller, name)
    return Response(status_code=204)


@router.post(
    "/platform/admin/rolebindings", response_model=BindingOut, status_code=201, responses=problems(403, 409, 422)
)
async def create_binding(body: BindingCreate, service: SecurityDep, caller: CallerDep) -> Response:
    """Bind a role to a subject (``oidc:<sub>``, ``key:<id>``) in a tenant; no escalation."""
    return json_response(await service.create_binding(caller, body), 201)


@router.get("/platform/admin/rolebindings", response_model=BindingList)
async def list_bindings(
    service: SecurityDep,
    caller: CallerDep,
    subject: Annotated[str | None, Query(max_length=256)] = None,
) -> Response:
    """Role bindings in the tenants where you may list them."""
    return json_response(await service.list_bindings(caller, subject))


@router.delete("/platform/admin/rolebindings/{binding_id}", status_code=204, responses=problems(404))
async def delete_binding(binding_id: str, service: SecurityDep, caller: CallerDep) -> Response:
    """Remove a role binding."""
    await service.delete_binding(caller, binding_id)
    return Response(status_code=204)
