"""Task ids: ULIDs (48-bit millisecond time + 80 random bits), lowercase Crockford base32, sortable by time."""

from __future__ import annotations

import os
from datetime import datetime

_ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz"


def new_task_id(now: datetime) -> str:
    """A 26-character id that sorts by creation time."""
    value = (int(now.timestamp() * 1000) << 80) | int.from_bytes(os.urandom(10), "big")
    chars = []
    for _ in range(26):
        chars.append(_ALPHABET[value & 31])
        value >>= 5
    return "".join(reversed(chars))


def new_reservation_id(now: datetime) -> str:
    """A reservation id: ``rsv-`` and a ULID, so it never reads like a task id."""
    return "rsv-" + new_task_id(now)


def new_binding_id(now: datetime) -> str:
    """A role binding id: ``rb-`` and a ULID."""
    return "rb-" + new_task_id(now)


def new_request_id(now: datetime) -> str:
    """A request id: ``req-``, the time in milliseconds (hex, so ids sort by time) and 64 random bits."""
    return f"req-{int(now.timestamp() * 1000):012x}{os.urandom(8).hex()}"
