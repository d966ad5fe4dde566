"""Database errors translated into the taskplane error tree, at this adapter (after httpx's transports).

Every public method of the store runs its transaction inside ``translated(action)``:

    sqlalchemy / driver error                  taskplane error
    ------------------------------------------ ---------------------------------------------------
    OperationalError, InterfaceError,          UnavailableError   database unreachable, locked, restarting
    DisconnectionError, pool TimeoutError
    IntegrityError                             ConflictError      (the store handles idempotency itself)
    DataError                                  InvalidRequestError  a value the column cannot hold
    a TaskplaneError raised by a column type   re-raised as is    e.g. a naive datetime
    anything else                              InternalError
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import exc as sa_exc

from taskplane.errors import (
    ConflictError,
    InternalError,
    InvalidRequestError,
    TaskplaneError,
    UnavailableError,
)


def translate(exc: sa_exc.SQLAlchemyError, action: str) -> TaskplaneError:
    """The taskplane error for a SQLAlchemy error raised while doing ``action`` (e.g. "create tasks")."""
    if isinstance(exc, sa_exc.StatementError):
        orig = exc.orig
        if isinstance(orig, TaskplaneError):
            return orig
        if isinstance(exc, sa_exc.OperationalError | sa_exc.InterfaceError):
            return UnavailableError(f"database unavailable ({action}): {orig}")
        if isinstance(exc, sa_exc.IntegrityError):
            return ConflictError(f"{action}: conflicts with stored data: {orig}")
        if isinstance(exc, sa_exc.DataError):
            return InvalidRequestError(f"{action}: a value does not fit its column: {orig}")
        return InternalError(f"database error ({action}): {orig}")
    if isinstance(exc, sa_exc.DisconnectionError | sa_exc.TimeoutError):
        return UnavailableError(f"database unavailable ({action}): {exc}")
    return InternalError(f"database error ({action}): {exc}")


@contextmanager
def translated(action: str) -> Iterator[None]:
    """Run a block, turning SQLAlchemy errors into taskplane errors with ``raise ... from exc``."""
    try:
        yield
    except sa_exc.SQLAlchemyError as exc:
        raise translate(exc, action) from exc
