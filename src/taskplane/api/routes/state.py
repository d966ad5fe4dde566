"""``/platform/state`` (keys, listing, watch, transactions) and ``/platform/leases``.

Keys may contain ``/``: the key routes take the rest of the path. ``POST /platform/state/transaction`` is the
only POST under ``/platform/state``, and keys are never POSTed, so a key named ``transaction`` (or ``watch``)
is an ordinary key for GET, PUT and DELETE.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Header, Query, Request
from fastapi.responses import StreamingResponse
from starlette.responses import Response

from taskplane.api.deps import CallerDep
from taskplane.api.routes.common import json_response, problems
from taskplane.services.platform import Platform
from taskplane.services.state import StateService
from taskplane.wire.state import (
    DeleteResult,
    KeyList,
    KeyValueOut,
    LeaseCreate,
    LeaseOut,
    LeaseRevoked,
    PutResult,
    TxnIn,
    TxnOut,
)

router = APIRouter(tags=["state"])

SSE_HEADERS = {"Cache-Control": "no-store", "X-Accel-Buffering": "no"}


async def get_state(request: Request) -> StateService:
    """The state service of the platform this app serves."""
    platform: Platform = request.app.state.platform
    return platform.state


StateDep = Annotated[StateService, Depends(get_state)]
TenantQuery = Annotated[str | None, Query(max_length=63, description="default: your only tenant")]
RevisionQuery = Annotated[int | None, Query(ge=1, le=2**62)]


def _sse(body: object) -> StreamingResponse:
    return StreamingResponse(body, media_type="text/event-stream", headers=SSE_HEADERS)  # type: ignore[arg-type]


@router.get("/platform/state", response_model=KeyList, responses=problems(403, 410, 422))
async def list_keys(
    service: StateDep,
    caller: CallerDep,
    prefix: Annotated[str, Query(max_length=512)] = "",
    tenant: TenantQuery = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    after: Annotated[str | None, Query(max_length=512)] = None,
    revision: RevisionQuery = None,
    watch: bool = False,
    from_revision: RevisionQuery = None,
) -> Response:
    """Keys under ``prefix`` in key order (``revision``: as they were then), or a watch.

    With ``watch=true``: a stream of changes (Server-Sent Events) from ``from_revision`` (default: from now on).
    """
    if watch:
        return _sse(await service.open_watch(caller, prefix, tenant, from_revision, exact=False))
    return json_response(await service.list_keys(caller, prefix, tenant, limit, after, revision))


@router.post("/platform/state/transaction", response_model=TxnOut, responses=problems(403, 404, 413, 422))
async def transaction(body: TxnIn, service: StateDep, caller: CallerDep, tenant: TenantQuery = None) -> Response:
    """Compares, then the success ops if all hold, else the failure ops; atomically, at one revision."""
    return json_response(await service.txn(caller, body, tenant))


@router.get("/platform/state/{key:path}", response_model=KeyValueOut, responses=problems(403, 404, 410, 422))
async def get_key(
    key: str,
    service: StateDep,
    caller: CallerDep,
    tenant: TenantQuery = None,
    revision: RevisionQuery = None,
    watch: bool = False,
    from_revision: RevisionQuery = None,
) -> Response:
    """One key with its revisions (``ETag``: its mod_revision), or with ``watch=true`` its changes as SSE."""
    if watch:
        return _sse(await service.open_watch(caller, key, tenant, from_revision, exact=True))
    found = await service.get(caller, key, tenant, revision)
    response = json_response(found)
    response.headers["ETag"] = f'"{found.mod_revision}"'
    return response


@router.put("/platform/state/{key:path}", response_model=PutResult, responses=problems(403, 404, 412, 413, 422))
async def put_key(
    key: str,
    request: Request,
    service: StateDep,
    caller: CallerDep,
    tenant: TenantQuery = None,
    lease: Annotated[int | None, Query(ge=1, le=2**62)] = None,
    ttl: Annotated[float | None, Query()] = None,
    if_match: Annotated[str | None, Header(max_length=64)] = None,
    if_none_match: Annotated[str | None, Header(max_length=64)] = None,
) -> Response:
    """Write a JSON value, conditionally with ``If-Match: <mod_revision>`` or ``If-None-Match: *``.

    A condition that does not hold answers 412 ``precondition_failed``. ``lease`` attaches the key to a lease;
    ``ttl`` makes a lease for it.
    """
    result = await service.put(
        caller, key, await request.body(), tenant, if_match=if_match, if_none_match=if_none_match, lease=lease, ttl=ttl
    )
    response = json_response(result)
    response.headers["ETag"] = f'"{result.kv.mod_revision}"'
    return response


@router.delete("/platform/state/{key:path}", response_model=DeleteResult, responses=problems(403, 412, 422))
async def delete_key(
    key: str,
    service: StateDep,
    caller: CallerDep,
    tenant: TenantQuery = None,
    if_match: Annotated[str | None, Header(max_length=64)] = None,
) -> Response:
    """Delete a key (``If-Match``: only if unchanged); deleting a missing key answers ``deleted: 0``."""
    return json_response(await service.delete(caller, key, tenant, if_match=if_match))


@router.post("/platform/leases", response_model=LeaseOut, status_code=201, responses=problems(403, 422))
async def grant_lease(body: LeaseCreate, service: StateDep, caller: CallerDep, tenant: TenantQuery = None) -> Response:
    """A lease of ``ttl`` seconds; keys put with it vanish when it expires."""
    return json_response(await service.grant(caller, float(body.ttl), tenant), 201)


@router.get("/platform/leases/{lease_id}", response_model=LeaseOut, responses=problems(404))
async def get_lease(lease_id: int, service: StateDep, caller: CallerDep, tenant: TenantQuery = None) -> Response:
    """A live lease and its keys."""
    return json_response(await service.get_lease(caller, lease_id, tenant))


@router.put("/platform/leases/{lease_id}/keepalive", response_model=LeaseOut, responses=problems(404))
async def keepalive(lease_id: int, service: StateDep, caller: CallerDep, tenant: TenantQuery = None) -> Response:
    """Renew a live lease for another ``ttl`` (404 ``lease_not_found`` once expired: its keys are gone)."""
    return json_response(await service.keepalive(caller, lease_id, tenant))


@router.delete("/platform/leases/{lease_id}", response_model=LeaseRevoked, responses=problems(404))
async def revoke_lease(lease_id: int, service: StateDep, caller: CallerDep, tenant: TenantQuery = None) -> Response:
    """End a lease now; its keys are deleted."""
    return json_response(await service.revoke(caller, lease_id, tenant))
