"""Helpers shared by route modules: JSON responses of wire models, and the problem entries of OpenAPI."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel
from starlette.responses import Response

from taskplane.wire import Problem


def json_response(model: BaseModel, status: int = 200) -> Response:
    """``model`` as a JSON response (``None`` members included)."""
    return Response(model.model_dump_json(exclude_none=False), status_code=status, media_type="application/json")


def problems(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` entries: an RFC 9457 problem for each status."""
    return {status: {"model": Problem, "content": {"application/problem+json": {}}} for status in statuses}
