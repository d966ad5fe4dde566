"""The one error tree of taskplane.

Every error a caller can see is a ``TaskplaneError`` with a stable ``code``; the HTTP layer maps the class
to a status (``api/errors.py``) and the SDK maps the ``code`` back to the class. Adapters translate library
errors into these with ``raise ... from exc``; nothing matches on message text.

    TaskplaneError
    +-- InvalidRequestError          (400/422) bad input, with optional field ``errors``
    |   +-- MalformedRequestError    (400) body is not JSON
    |   +-- PayloadTooLargeError     (413)
    |   +-- UnschedulableError       (422) the request can never fit this platform
    +-- UnauthenticatedError         (401) no, bad, expired or revoked credentials
    +-- ForbiddenError               (403) authenticated, but no role grants the action
    +-- NotFoundError                (404) missing, or another tenant's (the two look the same)
    +-- CompactedError               (410) a revision older than the kept history (member ``oldest_revision``)
    +-- ConflictError                (409)
    |   +-- InvalidTransitionError   (409) e.g. cancelling a finished task
    |   +-- IdempotencyConflictError (409) same key, different request
    |   +-- PreconditionFailedError  (412) an If-Match / If-None-Match that does not hold (state API)
    +-- LimitExceededError           (429) a tenant's hard limit is reached (e.g. ``pending_limit``); retry later
    |   +-- RateLimitedError         (429) too many requests or failed logins; ``retry_after`` seconds
    +-- UnavailableError             (503) database or executor unreachable
    +-- InternalError                (500) a bug; never raised on purpose for bad input
"""

from __future__ import annotations

from typing import Any, ClassVar


class TaskplaneError(Exception):
    """Base of every taskplane error; ``code`` is stable and machine readable."""

    code: ClassVar[str] = "error"
    title: ClassVar[str] = "Error"

    status: int | None = None  # set by the SDK from the HTTP response
    problem: dict[str, Any] | None = None  # the problem document, when raised by the SDK

    def __init__(self, detail: str, *, code: str | None = None, **extra: Any) -> None:
        super().__init__(detail)
        self.detail = detail
        if code is not None:
            self.code = code  # type: ignore[misc]
        self.extra: dict[str, Any] = extra


class InvalidRequestError(TaskplaneError):
    """The request is well-formed JSON but its content is not acceptable."""

    code = "invalid_request"
    title = "Invalid request"


class MalformedRequestError(InvalidRequestError):
    """The request body could not be parsed at all."""

    code = "malformed_request"
    title = "Malformed request"


class PayloadTooLargeError(InvalidRequestError):
    """The request body, an argv or an env is larger than the configured limit."""

    code = "payload_too_large"
    title = "Payload too large"


class UnschedulableError(InvalidRequestError):
    """The task's resource request can never fit any node of this platform."""

    code = "unschedulable"
    title = "Task can never be scheduled"


class UnauthenticatedError(TaskplaneError):
    """The request carries no credentials, or ones that are malformed, wrong, expired or revoked."""

    code = "unauthenticated"
    title = "Authentication required"


class ForbiddenError(TaskplaneError):
    """The caller is known, but none of its roles grants this action here."""

    code = "forbidden"
    title = "Forbidden"


class NotFoundError(TaskplaneError):
    """The object does not exist (or is not visible to the caller)."""

    code = "not_found"
    title = "Not found"


class CompactedError(TaskplaneError):
    """A read or watch from a revision the store no longer keeps; retry from ``oldest_revision``."""

    code = "compacted"
    title = "Revision compacted"


class ConflictError(TaskplaneError):
    """The request conflicts with the current state of the object."""

    code = "conflict"
    title = "Conflict"


class InvalidTransitionError(ConflictError):
    """A lifecycle transition that the state machine does not allow."""

    code = "invalid_state"
    title = "Invalid state for this operation"


class IdempotencyConflictError(ConflictError):
    """An idempotency key reused with a different request body."""

    code = "idempotency_key_reused"
    title = "Idempotency key reused with a different request"


class PreconditionFailedError(ConflictError):
    """A conditional write (``If-Match``, ``If-None-Match``) whose condition does not hold; nothing was written."""

    code = "precondition_failed"
    title = "Precondition failed"


class LimitExceededError(TaskplaneError):
    """A hard limit (a tenant's ``max_pending``) is reached; the same request may succeed later."""

    code = "limit_exceeded"
    title = "Limit reached"


class RateLimitedError(LimitExceededError):
    """Too many requests (per tenant) or failed authentications (per principal or address); retry later."""

    code = "rate_limited"
    title = "Too many requests"

    def __init__(self, detail: str, *, retry_after: float, **extra: Any) -> None:
        super().__init__(detail, retry_after=max(1, int(retry_after + 0.999)), **extra)
        self.retry_after = max(1, int(retry_after + 0.999))


class UnavailableError(TaskplaneError):
    """A dependency (database, executor) is not reachable right now."""

    code = "unavailable"
    title = "Service unavailable"


class InternalError(TaskplaneError):
    """An unexpected failure inside taskplane."""

    code = "internal"
    title = "Internal error"


ERRORS_BY_CODE: dict[str, type[TaskplaneError]] = {
    cls.code: cls
    for cls in (
        TaskplaneError,
        InvalidRequestError,
        MalformedRequestError,
        PayloadTooLargeError,
        UnschedulableError,
        UnauthenticatedError,
        ForbiddenError,
        NotFoundError,
        CompactedError,
        ConflictError,
        InvalidTransitionError,
        IdempotencyConflictError,
        PreconditionFailedError,
        LimitExceededError,
        RateLimitedError,
        UnavailableError,
        InternalError,
    )
}
