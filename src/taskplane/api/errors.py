"""Errors to RFC 9457 problem responses: one status table keyed by the error class."""

from __future__ import annotations

import logging
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from taskplane.errors import (
    CompactedError,
    ConflictError,
    ForbiddenError,
    IdempotencyConflictError,
    InternalError,
    InvalidRequestError,
    InvalidTransitionError,
    LimitExceededError,
    MalformedRequestError,
    NotFoundError,
    PayloadTooLargeError,
    PreconditionFailedError,
    RateLimitedError,
    TaskplaneError,
    UnauthenticatedError,
    UnavailableError,
    UnschedulableError,
)

log = logging.getLogger("taskplane.api")

PROBLEM_JSON = "application/problem+json"

STATUS: dict[type[TaskplaneError], int] = {
    TaskplaneError: 500,
    InvalidRequestError: 422,
    MalformedRequestError: 400,
    PayloadTooLargeError: 413,
    UnschedulableError: 422,
    UnauthenticatedError: 401,
    ForbiddenError: 403,
    NotFoundError: 404,
    CompactedError: 410,
    ConflictError: 409,
    InvalidTransitionError: 409,
    IdempotencyConflictError: 409,
    PreconditionFailedError: 412,
    LimitExceededError: 429,
    RateLimitedError: 429,
    UnavailableError: 503,
    InternalError: 500,
}

_HTTP_CODES = {400: "bad_request", 404: "not_found", 405: "method_not_allowed", 406: "not_acceptable"}


def status_for(exc: TaskplaneError) -> int:
    """The HTTP status of an error: the nearest class in the table."""
    for cls in type(exc).__mro__:
        if cls in STATUS:
            return STATUS[cls]
    return 500


def problem(
    status: int, code: str, title: str, detail: str, *, headers: dict[str, str] | None = None, **extra: Any
) -> Response:
    """An ``application/problem+json`` response."""
    body = {"type": "about:blank", "title": title, "status": status, "detail": detail, "code": code, **extra}
    return Response(orjson.dumps(body), status_code=status, media_type=PROBLEM_JSON, headers=headers)


def error_response(exc: TaskplaneError) -> Response:
    """The problem response of a taskplane error, with ``Retry-After`` / ``WWW-Authenticate`` where they apply."""
    status = status_for(exc)
    extra = {k: v for k, v in exc.extra.items() if k not in ("type", "title", "status", "detail", "code", "headers")}
    headers: dict[str, str] = {}
    if isinstance(exc, RateLimitedError):
        headers["Retry-After"] = str(exc.retry_after)
    elif isinstance(exc, UnauthenticatedError):
        headers["WWW-Authenticate"] = 'Bearer realm="taskplane"'
    return problem(status, exc.code, exc.title, exc.detail, headers=headers or None, **extra)


def _taskplane_error(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, TaskplaneError)
    if status_for(exc) >= 500:
        log.error("request failed: %s", exc)
    return error_response(exc)


def _validation_error(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    errors = []
    for err in exc.errors():
        if err.get("type") == "json_invalid":
            ctx = err.get("ctx") or {}
            return problem(
                400, "malformed_request", "Malformed request", f"body is not valid JSON: {ctx.get('error', '')}"
            )
        loc = [str(p) for p in err.get("loc", ())]
        # Never echo the input back: it may be huge or secret.
        errors.append({"loc": loc, "msg": str(err.get("msg", "")), "type": str(err.get("type", ""))})
    first = errors[0] if errors else {"loc": [], "msg": "invalid request"}
    where = ".".join(p for p in first["loc"] if p != "body") or "body"
    detail = f"{where}: {first['msg']}" + (f" (and {len(errors) - 1} more)" if len(errors) > 1 else "")
    return problem(422, "invalid_request", "Invalid request", detail, errors=errors)


def _http_error(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    code = _HTTP_CODES.get(exc.status_code, f"http_{exc.status_code}")
    return problem(exc.status_code, code, code.replace("_", " ").capitalize(), str(exc.detail))


def _unexpected(_: Request, exc: Exception) -> Response:
    log.exception("unhandled error", exc_info=exc)
    return problem(500, "internal", "Internal error", "an unexpected error occurred; see the server log")


def install_error_handlers(app: FastAPI) -> None:
    """Route every error through the problem responses above."""
    app.add_exception_handler(TaskplaneError, _taskplane_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected)
