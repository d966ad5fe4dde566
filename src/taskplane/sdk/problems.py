"""Turn HTTP failures into the ``taskplane.errors`` tree.

Two kinds of failure reach a client:

- a non-2xx response: its RFC 9457 problem ``code`` picks the class in ``ERRORS_BY_CODE``; a response without
  a known code falls back on its status (401, 403, 404, 409, 410 ``CompactedError``, 412
  ``PreconditionFailedError``, 413, 429, other 4xx, 5xx). A ``RateLimitedError`` gets ``retry_after``
  (seconds) from the problem, else from the ``Retry-After`` header;
- a transport failure (refused, reset, timed out): ``UnavailableError`` naming the URL, raised from the
  ``httpx`` exception.

Each raised error carries ``status`` (``None`` for transport failures), ``problem`` (the decoded body, or
``None``) and ``detail``; the problem's extension members (``errors``, ``state``...) are in ``extra``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx

from taskplane.errors import (
    ERRORS_BY_CODE,
    CompactedError,
    ConflictError,
    ForbiddenError,
    InvalidRequestError,
    LimitExceededError,
    NotFoundError,
    PayloadTooLargeError,
    PreconditionFailedError,
    RateLimitedError,
    TaskplaneError,
    UnauthenticatedError,
    UnavailableError,
)

_STANDARD_MEMBERS = frozenset({"type", "title", "status", "detail", "code", "instance"})


def error_class_for_status(status: int) -> type[TaskplaneError]:
    """Return the error class for a status when the body names no known ``code``."""
    if status == 401:
        return UnauthenticatedError
    if status == 403:
        return ForbiddenError
    if status == 404:
        return NotFoundError
    if status == 409:
        return ConflictError
    if status == 410:
        return CompactedError
    if status == 412:
        return PreconditionFailedError
    if status == 413:
        return PayloadTooLargeError
    if status == 429:
        return LimitExceededError
    if 400 <= status < 500:
        return InvalidRequestError
    return UnavailableError


def _annotated(error: TaskplaneError, status: int | None, problem: dict[str, Any] | None) -> TaskplaneError:
    # ``status`` and ``problem`` are not declared on TaskplaneError (the server shares the class), so they are
    # set on the instance.
    vars(error).update(status=status, problem=problem)
    return error


def _decode_problem(response: httpx.Response) -> dict[str, Any] | None:
    try:
        body = json.loads(response.content)
    except ValueError:
        return None
    return body if isinstance(body, dict) else None


def error_from_response(response: httpx.Response) -> TaskplaneError:
    """Return the error a non-2xx ``response`` stands for. The body must have been read."""
    status = response.status_code
    problem = _decode_problem(response)
    code = problem.get("code") if problem else None
    detail_member = problem.get("detail") if problem else None
    if isinstance(detail_member, str) and detail_member:
        detail = detail_member
    else:
        text = response.text.strip()[:500] if problem is None else ""
        detail = f"HTTP {status} {response.reason_phrase} from {response.request.url}" + (f": {text}" if text else "")
    known = isinstance(code, str) and code in ERRORS_BY_CODE
    cls = ERRORS_BY_CODE[str(code)] if known else error_class_for_status(status)
    members = {k: v for k, v in (problem or {}).items() if k not in _STANDARD_MEMBERS}
    if issubclass(cls, RateLimitedError):
        members["retry_after"] = retry_after(members.get("retry_after"), response.headers.get("Retry-After"))
    return _annotated(cls(detail, code=code if isinstance(code, str) else None, **members), status, problem)


def retry_after(member: object, header: str | None) -> float:
    """Seconds to wait before retrying: the problem's ``retry_after``, else a ``Retry-After`` of seconds, else 1.

    ``Retry-After`` may also be an HTTP date; the server never sends one, and reading it would need a clock.
    """
    if isinstance(member, int | float) and not isinstance(member, bool) and member >= 0:
        return float(member)
    try:
        seconds = float(header) if header is not None else -1.0
    except ValueError:
        seconds = -1.0
    return seconds if 0 <= seconds < float("inf") else 1.0


def raise_for_problem(response: httpx.Response) -> None:
    """Raise the mapped error when ``response`` is not a success. The body must have been read."""
    if not response.is_success:
        raise error_from_response(response)


@contextmanager
def transport_errors(base_url: str) -> Iterator[None]:
    """Map ``httpx`` transport failures inside the block to ``UnavailableError``."""
    try:
        yield
    except httpx.TimeoutException as exc:
        message = f"timed out talking to the taskplane server at {base_url} ({type(exc).__name__})"
        raise _annotated(UnavailableError(message), None, None) from exc
    except httpx.TransportError as exc:
        reason = str(exc) or type(exc).__name__
        message = f"cannot reach the taskplane server at {base_url}: {reason}"
        raise _annotated(UnavailableError(message), None, None) from exc
