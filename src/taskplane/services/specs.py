"""Turning a submitted ``TaskSubmit`` into a validated domain ``TaskSpec``.

The API and the CLI get the same messages because both go through here. Every refusal is an
``InvalidRequestError`` (422) or ``PayloadTooLargeError`` (413) naming the field.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from datetime import datetime

import orjson

from taskplane.domain import quantities as q
from taskplane.domain.resources import Resources
from taskplane.domain.task import FailureClass, RetryPolicy, TaskSpec, Timeouts
from taskplane.errors import InvalidRequestError, PayloadTooLargeError
from taskplane.wire import TaskSubmit

_ENV_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_LABEL_KEY = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9._/-]{0,62})$")
MAX_LABELS = 64
MAX_LABEL_VALUE = 256


@dataclass(frozen=True, slots=True)
class SpecLimits:
    """Limits on submitted tasks, from configuration."""

    default_resources: Resources
    max_argv_bytes: int
    max_env_bytes: int


def _no_nul(text: str, field: str) -> None:
    if "\x00" in text:
        raise InvalidRequestError(f"{field} must not contain NUL bytes", code="invalid_field", field=field)


def _command(sub: TaskSubmit, limits: SpecLimits) -> tuple[str, ...]:
    if not sub.command:
        raise InvalidRequestError("command must be a non-empty list of strings", code="invalid_field", field="command")
    if not sub.command[0]:
        raise InvalidRequestError(
            "command[0] (the executable) must not be empty", code="invalid_field", field="command"
        )
    size = 0
    for i, arg in enumerate(sub.command):
        _no_nul(arg, f"command[{i}]")
        size += len(arg.encode()) + 1
    if size > limits.max_argv_bytes:
        raise PayloadTooLargeError(
            f"command is {size} bytes; the limit is {limits.max_argv_bytes}", code="argv_too_large", field="command"
        )
    return tuple(sub.command)


def _env(sub: TaskSubmit, limits: SpecLimits) -> dict[str, str]:
    size = 0
    for key, value in sub.env.items():
        if not _ENV_KEY.match(key):
            raise InvalidRequestError(
                f"env key {key[:64]!r} is not a valid variable name ([A-Za-z_][A-Za-z0-9_]*)",
                code="invalid_field",
                field="env",
            )
        _no_nul(value, f"env.{key}")
        size += len(key.encode()) + len(value.encode()) + 2
    if size > limits.max_env_bytes:
        raise PayloadTooLargeError(
            f"env is {size} bytes; the limit is {limits.max_env_bytes}", code="env_too_large", field="env"
        )
    return dict(sub.env)


def _workdir(sub: TaskSubmit) -> str | None:
    if sub.workdir is None:
        return None
    _no_nul(sub.workdir, "workdir")
    parts = [p for p in sub.workdir.split("/") if p not in ("", ".")]
    if sub.workdir.startswith("/") or ".." in parts:
        raise InvalidRequestError(
            "workdir must be a relative path inside the task's sandbox, without '..'",
            code="invalid_field",
            field="workdir",
        )
    return "/".join(parts) or None


def _labels(sub: TaskSubmit) -> dict[str, str]:
    if len(sub.labels) > MAX_LABELS:
        raise InvalidRequestError(f"at most {MAX_LABELS} labels", code="invalid_field", field="labels")
    for key, value in sub.labels.items():
        if not _LABEL_KEY.match(key):
            raise InvalidRequestError(
                f"label key {key[:64]!r} must be 1-63 characters of [A-Za-z0-9._/-], starting alphanumeric",
                code="invalid_field",
                field="labels",
            )
        if len(value) > MAX_LABEL_VALUE or "\x00" in value:
            raise InvalidRequestError(
                f"label {key} value must be at most {MAX_LABEL_VALUE} characters without NUL",
                code="invalid_field",
                field="labels",
            )
    return dict(sub.labels)


def _resources(sub: TaskSubmit, default: Resources) -> Resources:
    res = sub.resources
    if res is None:
        return default
    return Resources(
        millicpu=default.millicpu if res.cpu is None else q.parse_millicpu(res.cpu, field="resources.cpu"),
        memory=default.memory if res.memory is None else q.parse_bytes(res.memory, field="resources.memory"),
        gpu=0 if res.gpu is None else q.parse_count(res.gpu, field="resources.gpu", maximum=q.MAX_GPU),
    )


def _timeouts(sub: TaskSubmit, now: datetime) -> Timeouts:
    t = sub.timeouts
    if t is None:
        return Timeouts()
    if t.deadline is not None and t.deadline <= now:
        raise InvalidRequestError("timeouts.deadline is in the past", code="invalid_field", field="timeouts.deadline")
    return Timeouts(
        queue=None if t.queue is None else q.parse_duration(t.queue, field="timeouts.queue"),
        run=None if t.run is None else q.parse_duration(t.run, field="timeouts.run"),
        deadline=t.deadline,
    )


def _retry(sub: TaskSubmit) -> RetryPolicy:
    r = sub.retry
    if r is None:
        return RetryPolicy()
    initial = 1.0 if r.backoff is None else q.parse_duration(r.backoff, field="retry.backoff")
    if r.backoff_max is None:
        maximum = max(300.0, initial)  # the default cap never undercuts an explicit initial delay
    else:
        maximum = q.parse_duration(r.backoff_max, field="retry.backoff_max")
    if maximum < initial:
        raise InvalidRequestError("retry.backoff_max must be >= retry.backoff", code="invalid_field", field="retry")
    retry_on = RetryPolicy().retry_on if r.retry_on is None else frozenset(FailureClass(c) for c in r.retry_on)
    return RetryPolicy(
        max_attempts=r.max_attempts,
        backoff_initial=initial,
        backoff_max=maximum,
        backoff_multiplier=float(r.backoff_multiplier),
        jitter=float(r.jitter),
        retry_on=retry_on,
    )


def build_spec(sub: TaskSubmit, limits: SpecLimits, now: datetime) -> TaskSpec:
    """Validate a submission and build its spec, or raise a 4xx error naming the field."""
    if sub.name is not None:
        _no_nul(sub.name, "name")
    if sub.image is not None:
        _no_nul(sub.image, "image")
    return TaskSpec(
        command=_command(sub, limits),
        shell=sub.shell,
        env=_env(sub, limits),
        workdir=_workdir(sub),
        image=sub.image,
        resources=_resources(sub, limits.default_resources),
        priority=sub.priority,
        tenant=sub.tenant,
        labels=_labels(sub),
        timeouts=_timeouts(sub, now),
        retry=_retry(sub),
        name=sub.name,
    )


def request_hash(sub: TaskSubmit) -> str:
    """A fingerprint of the request (without its idempotency key) to detect a key reused for another request."""
    body = sub.model_dump(mode="json", exclude={"idempotency_key"}, exclude_defaults=True)
    return hashlib.sha256(orjson.dumps(body, option=orjson.OPT_SORT_KEYS)).hexdigest()
