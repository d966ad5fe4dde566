"""Parsing and formatting of resource quantities and durations (``500m``, ``256Mi``, ``30s``)."""

from __future__ import annotations

import math
import re

from taskplane.errors import InvalidRequestError

# Bounds that reject absurd values early: a single task may not ask for more than this, whatever the node.
MAX_MILLICPU = 1_000_000 * 1000  # one million cores
MAX_MEMORY_BYTES = 1 << 60  # one exbibyte
MAX_GPU = 1024
MAX_DURATION_SECONDS = 366 * 24 * 3600.0

_BINARY = {"Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30, "Ti": 1 << 40, "Pi": 1 << 50, "Ei": 1 << 60}
_DECIMAL = {"k": 10**3, "K": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15, "E": 10**18}
_MEMORY_RE = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*([KMGTPE]i|[kKMGTPE]|B)?\s*$")
_CPU_RE = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*(m)?\s*$")
_DURATION_RE = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ms|s|m|h|d)")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def _reject_bool(value: object, what: str) -> None:
    if isinstance(value, bool):
        raise InvalidRequestError(f"{what} must be a number or a quantity string, not a boolean")


def parse_millicpu(value: object, *, field: str = "cpu") -> int:
    """Parse a CPU quantity into integer millicores: ``2``, ``0.5``, ``"500m"``, ``"1.5"``."""
    _reject_bool(value, field)
    if isinstance(value, int):
        millis = value * 1000
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise InvalidRequestError(f"{field} must be finite")
        millis = round(value * 1000)
        if value > 0 and millis == 0:
            raise InvalidRequestError(f"{field} {value} is below the 1m resolution")
    elif isinstance(value, str):
        match = _CPU_RE.match(value)
        if match is None:
            raise InvalidRequestError(f"{field} {value!r} is not a CPU quantity (examples: 2, 0.5, '500m')")
        number, milli = match.groups()
        scaled = float(number) if milli else float(number) * 1000
        millis = round(scaled)
        if scaled > 0 and millis == 0:
            raise InvalidRequestError(f"{field} {value!r} is below the 1m resolution")
    else:
        raise InvalidRequestError(f"{field} must be a number or a quantity string")
    if millis < 0:
        raise InvalidRequestError(f"{field} must not be negative")
    if millis > MAX_MILLICPU:
        raise InvalidRequestError(f"{field} {value!r} is beyond any machine ({MAX_MILLICPU // 1000} cores at most)")
    return millis


def parse_bytes(value: object, *, field: str = "memory") -> int:
    """Parse a memory quantity into bytes: ``268435456``, ``"256Mi"``, ``"1G"``, ``"1.5Gi"``."""
    _reject_bool(value, field)
    if isinstance(value, int):
        amount = value
    elif isinstance(value, float):
        if not math.isfinite(value) or value != int(value) or abs(value) > MAX_MEMORY_BYTES:
            raise InvalidRequestError(
                f"{field} {value!r} must be a whole number of bytes (at most 1Ei) or a quantity like '256Mi'"
            )
        amount = int(value)
    elif isinstance(value, str):
        match = _MEMORY_RE.match(value)
        if match is None:
            raise InvalidRequestError(
                f"{field} {value!r} is not a memory quantity (examples: 268435456, '256Mi', '1G')"
            )
        number, unit = match.groups()
        factor = 1 if unit in (None, "B") else _BINARY.get(unit) or _DECIMAL[unit]
        amount = round(float(number) * factor) if "." in number else int(number) * factor
    else:
        raise InvalidRequestError(f"{field} must be a number of bytes or a quantity string")
    if amount < 0:
        raise InvalidRequestError(f"{field} must not be negative")
    if amount > MAX_MEMORY_BYTES:
        raise InvalidRequestError(f"{field} {value!r} is beyond any machine (1Ei at most)")
    return amount


def parse_count(value: object, *, field: str, maximum: int) -> int:
    """Parse a whole, non-negative count such as a GPU number."""
    _reject_bool(value, field)
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if not isinstance(value, int):
        raise InvalidRequestError(f"{field} must be a whole number")
    if value < 0:
        raise InvalidRequestError(f"{field} must not be negative")
    if value > maximum:
        raise InvalidRequestError(f"{field} {value} is beyond any machine ({maximum} at most)")
    return value


def parse_duration(value: object, *, field: str = "timeout") -> float:
    """Parse a positive duration into seconds: ``30``, ``1.5``, ``"30s"``, ``"5m"``, ``"1h30m"``, ``"250ms"``."""
    _reject_bool(value, field)
    if isinstance(value, (int, float)):
        seconds = float(value)
    elif isinstance(value, str):
        text = value.strip()
        try:
            seconds = float(text)
        except ValueError:
            pos = 0
            seconds = 0.0
            for match in _DURATION_RE.finditer(text):
                if match.start() != pos:
                    break
                seconds += float(match.group(1)) * _DURATION_UNITS[match.group(2)]
                pos = match.end()
            if pos != len(text) or not text:
                raise InvalidRequestError(
                    f"{field} {value!r} is not a duration (examples: 30, '30s', '5m', '1h30m')"
                ) from None
    else:
        raise InvalidRequestError(f"{field} must be a number of seconds or a duration string")
    if not math.isfinite(seconds) or seconds <= 0:
        raise InvalidRequestError(f"{field} must be greater than zero")
    if seconds > MAX_DURATION_SECONDS:
        raise InvalidRequestError(f"{field} must be at most 366 days")
    return seconds


def format_millicpu(millis: int) -> str:
    """Format millicores the way Kubernetes does: ``500m``, ``2``."""
    return str(millis // 1000) if millis % 1000 == 0 else f"{millis}m"


def format_bytes(amount: int) -> str:
    """Format bytes in the largest binary unit it reaches: ``256Mi``, ``1.5Gi`` (exact unless a decimal shows)."""
    for unit, factor in sorted(_BINARY.items(), key=lambda kv: -kv[1]):
        if amount >= factor:
            if amount % factor == 0:
                return f"{amount // factor}{unit}"
            return f"{amount / factor:.1f}{unit}"
    return str(amount)


def format_duration(seconds: float) -> str:
    """Format seconds compactly: ``30s``, ``5m``, ``1h30m``, ``250ms``."""
    if seconds < 1:
        return f"{round(seconds * 1000)}ms"
    whole = int(seconds)
    if whole != seconds:
        return f"{seconds:g}s"
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if whole >= size:
            parts.append(f"{whole // size}{unit}")
            whole %= size
    return "".join(parts)
