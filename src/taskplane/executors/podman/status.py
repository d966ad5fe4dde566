"""What podman says about containers, parsed: ``died`` events, ``ps -a`` listings, exit statuses. No I/O.

The attempt a container belongs to comes from its labels (``taskplane.task``, ``taskplane.attempt``), never
from its name; a container without them is not ours and is skipped.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

import orjson

from taskplane.domain.outcome import AttemptOutcome
from taskplane.executors.podman.command import LABEL_ATTEMPT, LABEL_TASK

MAX_SIGNAL = 64
RUNNING = frozenset({"running", "paused", "stopping"})
ENDED = frozenset({"exited", "stopped"})
NEVER_STARTED = frozenset({"created", "configured", "initialized"})

AttemptKey = tuple[str, int]


def outcome_of(exit_code: int, oom_killed: bool) -> AttemptOutcome:
    """An exit status as an outcome: the runtime reports a death by signal ``n`` as ``128 + n``."""
    if 128 < exit_code <= 128 + MAX_SIGNAL:
        return AttemptOutcome(signal=exit_code - 128, oom_killed=oom_killed)
    return AttemptOutcome(exit_code=exit_code, oom_killed=oom_killed)


def parse_time(text: str | None) -> datetime | None:
    """The time of a podman event (RFC 3339 with nanoseconds) as an aware datetime, to the microsecond."""
    if not text:
        return None
    head, dot, tail = text.partition(".")
    if dot:
        digits = "".join(c for c in tail if c.isdigit())
        zone = tail[len(digits) :]
        text = f"{head}.{digits[:6]}{zone}"
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None


def _epoch(value: object) -> datetime | None:
    """Podman's seconds since the epoch (``ps`` uses a large negative number for "never")."""
    if isinstance(value, int | float) and value > 0:
        return datetime.fromtimestamp(value, tz=UTC)
    return None


def _key(labels: object) -> AttemptKey | None:
    if not isinstance(labels, dict):
        return None
    try:
        return str(labels[LABEL_TASK]), int(labels[LABEL_ATTEMPT])
    except (KeyError, ValueError, TypeError):
        return None


@dataclass(frozen=True, slots=True)
class Died:
    """One ``died`` event of a container of ours."""

    key: AttemptKey
    exit_code: int
    at: datetime | None


def parse_died(line: bytes) -> Died | None:
    """A line of ``podman events --format json``; ``None`` for anything but a died event of an attempt."""
    try:
        event = orjson.loads(line)
        key = _key(event.get("Attributes"))
        # podman leaves ``ContainerExitCode`` out of a died event when it is 0 (``omitempty``).
        code = int(event.get("ContainerExitCode") or 0)
    except (ValueError, KeyError, TypeError, AttributeError):
        return None
    if event.get("Status", "died") != "died":
        return None
    if key is None:
        return None
    return Died(key, code, parse_time(event.get("Time")))


@dataclass(frozen=True, slots=True)
class Listed:
    """One container of ours in a ``podman ps -a --format json`` listing."""

    key: AttemptKey
    name: str
    container_id: str
    state: str
    exit_code: int
    started_at: datetime | None
    exited_at: datetime | None


def parse_listing(data: bytes) -> list[Listed]:
    """The containers with attempt labels in a ``ps`` listing (malformed output reads as an empty list)."""
    try:
        containers = orjson.loads(data or b"[]") or []
    except ValueError:
        return []
    listed: list[Listed] = []
    for container in containers if isinstance(containers, list) else []:
        if not isinstance(container, dict):
            continue
        key = _key(container.get("Labels"))
        if key is None:
            continue
        names = container.get("Names") or [""]
        try:
            exit_code = int(container.get("ExitCode") or 0)
        except (ValueError, TypeError):
            exit_code = 0
        listed.append(
            Listed(
                key=key,
                name=str(names[0]),
                container_id=str(container.get("Id", "")),
                state=str(container.get("State", "")),
                exit_code=exit_code,
                started_at=_epoch(container.get("StartedAt")),
                exited_at=_epoch(container.get("ExitedAt")),
            )
        )
    return listed
