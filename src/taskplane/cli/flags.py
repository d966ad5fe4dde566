"""Command-line values turned into wire models, with errors that name the flag (exit code 2).

Quantities and durations are checked with the same parsers the server uses (``domain.quantities``) so a bad
``--cpu`` fails before anything is sent; the original text is what gets sent, so the server stores what the
user wrote.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, TypeVar

import typer
from pydantic import BaseModel, ValidationError

from taskplane.domain.quantities import parse_bytes, parse_duration, parse_millicpu
from taskplane.errors import InvalidRequestError
from taskplane.wire import TaskSubmit
from taskplane.wire.tasks import USER_PATTERN

M = TypeVar("M", bound=BaseModel)

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
    "resources.extended": "--extended",
    "pool": "--pool",
    "node_selector": "--selector",
    "reservation": "--reservation",
    "simulated_duration": "--simulated-duration",
    "resources.cpu": "--cpu",
    "resources.memory": "--memory",
    "timeouts.run": "--timeout",
    "timeouts.queue": "--queue-timeout",
    "timeouts.deadline": "--deadline",
    "retry.max_attempts": "--retries",
    "retry.backoff": "--backoff",
    "idempotency_key": "--idempotency-key",
    "container.mounts": "--mount",
    "container.user": "--user",
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


def parse_amounts(values: Sequence[str], flag: str) -> dict[str, int]:
    """Parse repeated ``NAME=N`` flags (whole numbers >= 0) into a dict; a later name wins."""
    amounts: dict[str, int] = {}
    for name, text in parse_pairs(values, flag).items():
        try:
            amount = int(text)
        except ValueError:
            amount = -1
        if amount < 0:
            raise typer.BadParameter(f"{name}={text!r}: the amount must be a whole number >= 0", param_hint=f"'{flag}'")
        amounts[name] = amount
    return amounts


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


def parse_moment(value: str | None, flag: str, now: datetime) -> datetime | None:
    """Parse a time: RFC 3339 with a zone, or a duration before ``now`` (``24h``: a day ago)."""
    if value is None:
        return None
    try:
        return now - timedelta(seconds=parse_duration(value, field=flag.lstrip("-")))
    except InvalidRequestError:
        pass
    try:
        return parse_rfc3339(value, flag)
    except typer.BadParameter:
        raise typer.BadParameter(
            f"{value!r} is neither an RFC 3339 time with a zone (2024-05-01T12:00:00Z) nor a duration ago (24h)",
            param_hint=f"'{flag}'",
        ) from None


def parse_rule(value: str, flag: str = "--rule") -> dict[str, list[str]]:
    """Parse ``VERBS:RESOURCES`` (comma lists, ``*`` for all) into a rule: ``get,list:tasks,logs``."""
    verbs_text, sep, resources_text = value.partition(":")
    verbs = [verb.strip() for verb in verbs_text.split(",") if verb.strip()]
    resources = [resource.strip() for resource in resources_text.split(",") if resource.strip()]
    if not sep or not verbs or not resources:
        raise typer.BadParameter(
            f"{value!r} must look like VERBS:RESOURCES, e.g. get,list:tasks,logs", param_hint=f"'{flag}'"
        )
    return {"verbs": verbs, "resources": resources}


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
    pool: str | None = None
    selector: list[str] = field(default_factory=list)
    reservation: str | None = None
    extended: list[str] = field(default_factory=list)
    simulated_duration: str | None = None
    privileged: bool = False
    host_network: bool = False
    host_pid: bool = False
    network: bool = False
    mounts: list[str] = field(default_factory=list)
    read_only_root: bool = False
    user: str | None = None


_MOUNT_MODES = {"ro": True, "rw": False}


def parse_mount(value: str, flag: str = "--mount") -> dict[str, Any]:
    """Parse ``SRC:DST[:ro|rw]`` (read-only unless ``rw``) into a mount; the server checks the paths."""
    parts = value.split(":")
    mode = parts.pop() if len(parts) == 3 else "ro"
    if len(parts) != 2 or not all(parts) or mode not in _MOUNT_MODES:
        raise typer.BadParameter(
            f"{value!r} must look like SOURCE:TARGET[:ro|rw], e.g. /srv/data:/data:ro", param_hint=f"'{flag}'"
        )
    source, target = parts
    return {"source": source, "target": target, "read_only": _MOUNT_MODES[mode]}


def _container(flags: SubmitFlags) -> dict[str, Any]:
    """The ``container`` members the flags set (only those given); they need ``--image``."""
    switches = {
        "--privileged": ("privileged", flags.privileged),
        "--host-network": ("host_network", flags.host_network),
        "--host-pid": ("host_pid", flags.host_pid),
        "--network": ("network", flags.network),
        "--read-only-root": ("read_only_root", flags.read_only_root),
    }
    container: dict[str, Any] = {key: True for key, on in switches.values() if on}
    given = [flag for flag, (_, on) in switches.items() if on]
    if flags.mounts:
        container["mounts"] = [parse_mount(item) for item in flags.mounts]
        given.append("--mount")
    if flags.user is not None:
        if re.fullmatch(USER_PATTERN, flags.user) is None:
            raise typer.BadParameter(
                f"{flags.user!r} is not a uid, uid:gid or user name (examples: 1000, 1000:1000, nobody)",
                param_hint="'--user'",
            )
        container["user"] = flags.user
        given.append("--user")
    if given and flags.image is None:
        # The server refuses it too; saying so here names the flag and sends nothing.
        raise typer.BadParameter("container options need --image", param_hint=f"'{given[0]}'")
    return container


def build_task(flags: SubmitFlags) -> TaskSubmit:
    """Build the ``TaskSubmit`` the flags describe; only flags that were given are set.

    ``--retries N`` means N extra attempts: ``retry.max_attempts = N + 1``. Container options (``--privileged``,
    ``--mount``...) are sent as ``container`` only when one is given, and need ``--image``.
    """
    fields: dict[str, Any] = {"command": list(flags.command)}
    if flags.shell:
        fields["shell"] = True
    resources = {
        "cpu": _checked(parse_millicpu, flags.cpu, "--cpu"),
        "memory": _checked(parse_bytes, flags.memory, "--memory"),
        "gpu": flags.gpu,
        "extended": parse_amounts(flags.extended, "--extended") or None,
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
        "pool": flags.pool,
        "reservation": flags.reservation,
        "simulated_duration": _checked(parse_duration, flags.simulated_duration, "--simulated-duration"),
    }
    fields.update({key: value for key, value in optional.items() if value is not None})
    if flags.labels:
        fields["labels"] = parse_pairs(flags.labels, "--label")
    if flags.env:
        fields["env"] = parse_pairs(flags.env, "--env")
    if flags.selector:
        fields["node_selector"] = parse_pairs(flags.selector, "--selector")
    container = _container(flags)
    if container:
        fields["container"] = container
    return validated(TaskSubmit, fields, _FLAG_OF_FIELD)


UNLIMITED_WORDS = frozenset({"unlimited", "none", "null"})


@dataclass(frozen=True, slots=True)
class TenantFlags:
    """The flags of ``taskplane tenants create|update``; ``None`` = not given. Quotas take ``unlimited``."""

    cpu: str | None = None
    memory: str | None = None
    gpu: str | None = None
    max_running: str | None = None
    max_pending: str | None = None
    weight: float | None = None
    pools: list[str] = field(default_factory=list)
    all_pools: bool = False
    priority_min: int | None = None
    priority_max: int | None = None
    borrowing: bool | None = None
    allow_privileged: bool | None = None
    allow_host_network: bool | None = None
    allow_host_pid: bool | None = None
    allow_host_mounts: bool | None = None
    allow_network: bool | None = None
    restricted: bool = False


def _quota_value(parse: Callable[[str, str], object], value: str | None, flag: str) -> tuple[bool, object]:
    if value is None:
        return False, None
    if value.strip().lower() in UNLIMITED_WORDS:
        return True, None
    try:
        return True, parse(value.strip(), flag)
    except InvalidRequestError as exc:
        raise typer.BadParameter(exc.detail, param_hint=f"'{flag}'") from exc
    except ValueError:
        raise typer.BadParameter(f"{value!r} is not a whole number or 'unlimited'", param_hint=f"'{flag}'") from None


def _quantity(parse: Callable[..., object]) -> Callable[[str, str], object]:
    def check(value: str, flag: str) -> object:
        parse(value, field=flag.lstrip("-"))
        return value

    return check


def _whole(value: str, _flag: str) -> object:
    return int(value)


def tenant_fields(flags: TenantFlags) -> dict[str, Any]:
    """The JSON members the flags set (a merge patch for ``update``, a body without ``name`` for ``create``)."""
    body: dict[str, Any] = {}
    quota: dict[str, Any] = {}
    for key, parse, value, flag in (
        ("cpu", _quantity(parse_millicpu), flags.cpu, "--cpu"),
        ("memory", _quantity(parse_bytes), flags.memory, "--memory"),
        ("gpu", _whole, flags.gpu, "--gpu"),
        ("max_running", _whole, flags.max_running, "--max-running"),
        ("max_pending", _whole, flags.max_pending, "--max-pending"),
    ):
        given, parsed = _quota_value(parse, value, flag)
        if given:
            quota[key] = parsed
    if quota:
        body["quota"] = quota
    if flags.weight is not None:
        body["weight"] = flags.weight
    if flags.all_pools and flags.pools:
        raise typer.BadParameter("give --pool or --all-pools, not both", param_hint="'--all-pools'")
    if flags.all_pools:
        body["pools"] = None
    elif flags.pools:
        body["pools"] = list(flags.pools)
    priority = {k: v for k, v in (("min", flags.priority_min), ("max", flags.priority_max)) if v is not None}
    if priority:
        body["priority_range"] = priority
    if flags.borrowing is not None:
        body["borrowing"] = flags.borrowing
    policy = _policy(flags)
    if policy or flags.restricted:
        body["policy"] = policy or None
    return body


def _policy(flags: TenantFlags) -> dict[str, bool]:
    """The ``policy`` members the ``--allow-*`` flags set; ``--restricted`` (sent as ``null``) excludes them."""
    members = {
        "allow_privileged": flags.allow_privileged,
        "allow_host_network": flags.allow_host_network,
        "allow_host_pid": flags.allow_host_pid,
        "allow_host_mounts": flags.allow_host_mounts,
        "allow_network": flags.allow_network,
    }
    policy = {key: value for key, value in members.items() if value is not None}
    if policy and flags.restricted:
        raise typer.BadParameter("give --allow-* options or --restricted, not both", param_hint="'--restricted'")
    return policy


def validated(model: type[M], fields: dict[str, Any], flags_of: dict[str, str]) -> M:
    """``fields`` as ``model``, or a usage error naming the flag of the first invalid field."""
    try:
        return model.model_validate(fields)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        flag = next((f for prefix, f in flags_of.items() if where.startswith(prefix)), where)
        raise typer.BadParameter(first["msg"], param_hint=f"'{flag}'") from exc
