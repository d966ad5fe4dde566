"""``/platform/audit``: the hash-chained audit log, its JSON-lines export, and its head."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import StreamingResponse
from starlette.responses import Response

from taskplane.api.deps import CallerDep
from taskplane.api.routes.common import json_response, problems
from taskplane.services.platform import Platform
from taskplane.services.security import AuditService
from taskplane.wire.security import AuditHead, AuditPage

router = APIRouter(prefix="/platform/audit", tags=["audit"])


async def get_audit(request: Request) -> AuditService:
    """The audit service of the platform this app serves."""
    platform: Platform = request.app.state.platform
    return platform.audit


AuditDep = Annotated[AuditService, Depends(get_audit)]
Text = Annotated[str | None, Query(max_length=256)]


@router.get("", response_model=AuditPage, responses=problems(422))
async def list_audit(
    service: AuditDep,
    caller: CallerDep,
    tenant: Text = None,
    principal: Text = None,
    action: Text = None,
    outcome: Text = None,
    request_id: Text = None,
    since: datetime | None = None,
    until: datetime | None = None,
    after: Annotated[str | None, Query(max_length=32, description="next_cursor of the previous page")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> Response:
    """Audit records you may read (your tenants'; all of them platform-wide), oldest first."""
    page = await service.list(
        caller, tenant=tenant, principal=principal, action=action, outcome=outcome, since=since, until=until,
        request_id=request_id, after=after, limit=limit,
    )  # fmt: skip
    return json_response(page)


@router.get("/export", response_class=StreamingResponse, responses={200: {"content": {"application/x-ndjson": {}}}})
async def export_audit(service: AuditDep, caller: CallerDep, since: datetime | None = None) -> StreamingResponse:
    """Every record you may read as JSON lines, oldest first (feed it to ``taskplane audit verify``)."""
    return StreamingResponse(service.export(caller, since=since), media_type="application/x-ndjson")


@router.get("/head", response_model=AuditHead)
async def audit_head(service: AuditDep) -> Response:
    """The chain's last ``(seq, hash)``: keep copies outside the database as checkpoints."""
    return json_response(await service.head())
