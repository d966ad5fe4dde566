"""Command-line values turned into wire models, with errors that name the flag (exit code 2).

Quantities and durations are checked with the same parsers the server uses (``domain.quantities``) so a bad
``--cpu`` fails before anything is sent; the original text is what gets sent, so the server stores what the
user wrote.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import typer
from pydantic import ValidationError

from taskplane.domain.quantities import parse_bytes, parse_duration, parse_millicpu
from taskplane.errors import InvalidRequestError
from taskplane.wire import TaskSubmit

# Where a TaskSubmit field comes from on the command line, for validation messages.
_FLAG_OF_FIELD = {
    "command": "COMMAND",
    "env": "--env",
    "labels": "--label",
    "tenant": "--tenant",
    "priority": "--priority",
    "name": "--name",
    "workdir": "--workdir",
    "image": "--image",
    "resources.gpu": "--gpu",
    "resources.cpu": "--cpu",
    "resources.memory": "--memory",
    "timeouts.run": "--timeout",
    "timeouts.queue": "--queue-timeout",
    "timeouts.deadline": "--deadline",
    "retry.max_attempts": "--retries",
    "retry.backoff": "--backoff",
    "idempotency_key": "--idempotency-key",
}


def _checked(parse: Callable[..., object], value: str | None, flag: str) -> str | None:
    if value is None:
        return None
    try:
        parse(value, field=flag.lstrip("-").replace("-", " "))
    except InvalidRequestError as exc:
        raise typer.BadParameter(exc.detail, param_hint=f"'{flag}'") from exc
    return value.strip()


def parse_pairs(values: Sequence[str], flag: str) -> dict[str, str]:
    """Parse repeated ``KEY=VALUE`` flags into a dict; a later key wins."""
    pairs: dict[str, str] = {}
    for item in values:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise typer.BadParameter(f"{item!r} must look like KEY=VALUE", param_hint=f"'{flag}'")
        pairs[key] = value
    return pairs


def parse_rfc3339(value: str | None, flag: str) -> datetime | None:
    """Parse an RFC 3339 time with a zone (``2024-05-01T12:00:00Z``)."""
    if value is None:
        return None
    try:
        moment = datetime.fromisoformat(value.strip())
    except ValueError:
        moment = None
    if moment is None or moment.utcoffset() is None:
        raise typer.BadParameter(
            f"{value!r} is not an RFC 3339 time with a zone (example: 2024-05-01T12:00:00Z)", param_hint=f"'{flag}'"
        )
    return moment


@dataclass(frozen=True, slots=True)
class SubmitFlags:
    """The flags of ``taskplane submit``, as typed on the command line."""

    command: list[str]
    shell: bool = False
    cpu: str | None = None
    memory: str | None = None
    gpu: int | None = None
    timeout: str | None = None
    queue_timeout: str | None = None
    deadline: str | None = None
    retries: int | None = None
    backoff: str | None = None
    priority: int | None = None
    tenant: str | None = None
    labels: list[str] = field(default_factory=list)
    env: list[str] = field(default_factory=list)
    name: str | None = None
    workdir: str | None = None
    image: str | None = None


def build_task(flags: SubmitFlags) -> TaskSubmit:
    """Build the ``TaskSubmit`` the flags describe; only flags that were given are set.

    ``--retries N`` means N extra attempts: ``retry.max_attempts = N + 1``.
    """
    fields: dict[str, Any] = {"command": list(flags.command)}
    if flags.shell:
        fields["shell"] = True
    resources = {
        "cpu": _checked(parse_millicpu, flags.cpu, "--cpu"),
        "memory": _checked(parse_bytes, flags.memory, "--memory"),
        "gpu": flags.gpu,
    }
    timeouts = {
        "run": _checked(parse_duration, flags.timeout, "--timeout"),
        "queue": _checked(parse_duration, flags.queue_timeout, "--queue-timeout"),
        "deadline": parse_rfc3339(flags.deadline, "--deadline"),
    }
    retry = {
        "max_attempts": None if flags.retries is None else flags.retries + 1,
        "backoff": _checked(parse_duration, flags.backoff, "--backoff"),
    }
    for name, group in (("resources", resources), ("timeouts", timeouts), ("retry", retry)):
        given = {key: value for key, value in group.items() if value is not None}
        if given:
            fields[name] = given
    optional = {
        "priority": flags.priority,
        "tenant": flags.tenant,
        "name": flags.name,
        "workdir": flags.workdir,
        "image": flags.image,
    }
    fields.update({key: value for key, value in optional.items() if value is not None})
    if flags.labels:
        fields["labels"] = parse_pairs(flags.labels, "--label")
    if flags.env:
        fields["env"] = parse_pairs(flags.env, "--env")
    try:
        return TaskSubmit.model_validate(fields)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        flag = next((f for prefix, f in _FLAG_OF_FIELD.items() if where.startswith(prefix)), where)
        raise typer.BadParameter(first["msg"], param_hint=f"'{flag}'") from exc
