"""Turning a submitted ``TaskSubmit`` into a validated domain ``TaskSpec``, and checking who may submit it.

The API and the CLI get the same messages because both go through here. Two steps:

    TaskSubmit --build_spec--> TaskSpec (form: types, sizes, names, paths)   422 invalid_field / 413
               --resolve_access(directory)--> TaskSpec with its pool         404 tenant/pool/reservation_not_found,
                                                                             403 policy_forbidden,
                                                                             422 priority_not_allowed
    tasks per tenant --check_pending_limits(directory)-->                    429 pending_limit

A spec must not escape its tenant: host access (privileged, host network or PID namespace, host mounts, any
network) needs the tenant's ``TenantPolicy``, paths cannot climb out with ``..``, and ``TASKPLANE_*`` env keys
stay the platform's.

``directory`` is what the engine knows now (tenants, pools, live reservations, counts). A request larger than
every node of its pool is accepted: the scheduler parks it with reason ``never_fits``.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Protocol

import orjson

from taskplane.domain import quantities as q
from taskplane.domain.pool import DEFAULT_POOL, Pool
from taskplane.domain.reservation import Reservation
from taskplane.domain.resources import Resources, extended_of
from taskplane.domain.task import NO_HOST_ACCESS, FailureClass, HostAccess, Mount, RetryPolicy, TaskSpec, Timeouts
from taskplane.domain.tenant import Tenant
from taskplane.errors import (
    ForbiddenError,
    InvalidRequestError,
    LimitExceededError,
    NotFoundError,
    PayloadTooLargeError,
    UnschedulableError,
)
from taskplane.wire import ContainerIn, ResourcesIn, TaskSubmit

_ENV_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
RESERVED_ENV_PREFIX = "TASKPLANE_"  # the platform's own variables (TASKPLANE_TASK_ID, ...): a task cannot forge them
_LABEL_KEY = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9._/-]{0,62})$")
# The same rule as pool configuration (``config.NodeGroupSettings``), e.g. ``example.com/fpga``.
_EXTENDED_NAME = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9._/-]{0,126}[A-Za-z0-9])?$")
_BUILTIN_RESOURCES = frozenset({"cpu", "memory", "gpu"})
MAX_LABELS = 64
MAX_LABEL_VALUE = 256
MAX_EXTENDED = 1_000_000  # of one extended resource in one request
MAX_EXTENDED_NAMES = 32
MAX_NAME = 253  # pool and reservation names


class PendingCount(Protocol):
    """A tenant's live counts, as far as submission checks read them."""

    @property
    def pending(self) -> int: ...  # noqa: D102


class Directory(Protocol):
    """What submission checks read: the engine's tenants, pools, live reservations and per-tenant counts."""

    def tenant(self, name: str) -> Tenant | None:
        """A tenant (``default`` always exists), or ``None``."""
        ...

    def pool(self, name: str) -> Pool | None:
        """A pool with its nodes, or ``None``."""
        ...

    def reservation(self, reservation_id: str) -> Reservation | None:
        """A pending or active reservation, or ``None``."""
        ...

    def pool_names(self) -> list[str]:
        """The configured pools, in configuration order."""
        ...

    def tenant_counts(self, name: str) -> PendingCount:
        """The tenant's live counts; only ``pending`` is read here."""
        ...


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
        if key.startswith(RESERVED_ENV_PREFIX):
            raise InvalidRequestError(
                f"env key {key[:64]!r} is reserved: {RESERVED_ENV_PREFIX}* variables are set by the platform",
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


def _absolute_path(path: str, field: str) -> str:
    """``path`` normalised (no empty or ``.`` segments); it must be absolute, without ``..`` or NUL."""
    _no_nul(path, field)
    parts = [p for p in path.split("/") if p not in ("", ".")]
    if not path.startswith("/") or ".." in parts:
        raise InvalidRequestError(f"{field} must be an absolute path without '..'", code="invalid_field", field=field)
    if any(c in path for c in ":,\n"):  # a container runtime's mount syntax separates fields with these
        raise InvalidRequestError(f"{field} must not contain ':', ',' or a newline", code="invalid_field", field=field)
    return "/" + "/".join(parts)


def _mounts(container: ContainerIn) -> tuple[Mount, ...]:
    mounts: list[Mount] = []
    targets: set[str] = set()
    for i, given in enumerate(container.mounts):
        field = f"container.mounts[{i}]"
        source = _absolute_path(given.source, f"{field}.source")
        target = _absolute_path(given.target, f"{field}.target")
        if target == "/":
            raise InvalidRequestError(
                f"{field}.target must not be '/' (the container's root)", code="invalid_field", field=f"{field}.target"
            )
        if target in targets:
            raise InvalidRequestError(
                f"{field}.target {target!r} is mounted twice", code="invalid_field", field=f"{field}.target"
            )
        targets.add(target)
        mounts.append(Mount(source, target, given.read_only))
    return tuple(mounts)


def _host(sub: TaskSubmit) -> HostAccess:
    container = sub.container
    if container is None:
        return NO_HOST_ACCESS
    if sub.image is None:
        raise InvalidRequestError("container options need an image", code="invalid_field", field="container")
    return HostAccess(
        privileged=container.privileged,
        host_network=container.host_network,
        host_pid=container.host_pid,
        network=container.network,
        mounts=_mounts(container),
        read_only_root=container.read_only_root,
        user=container.user,
    )


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


def _extended(values: Mapping[str, int] | None, field: str) -> dict[str, int]:
    if not values:
        return {}
    if len(values) > MAX_EXTENDED_NAMES:
        raise InvalidRequestError(f"at most {MAX_EXTENDED_NAMES} extended resources", code="invalid_field", field=field)
    out: dict[str, int] = {}
    for name, amount in values.items():
        if name in _BUILTIN_RESOURCES or not _EXTENDED_NAME.match(name):
            raise InvalidRequestError(
                f"extended resource name {name[:64]!r} must be 1-128 of [A-Za-z0-9._/-] (like 'example.com/fpga'), "
                "not cpu, memory or gpu",
                code="invalid_field",
                field=field,
            )
        out[name] = q.parse_count(amount, field=f"{field}.{name}", maximum=MAX_EXTENDED)
    return out


def parse_resources(res: ResourcesIn | None, default: Resources, field: str = "resources") -> Resources:
    """Resources from their wire form; members not given take ``default`` (GPUs and extended: none)."""
    if res is None:
        return default
    return Resources(
        millicpu=default.millicpu if res.cpu is None else q.parse_millicpu(res.cpu, field=f"{field}.cpu"),
        memory=default.memory if res.memory is None else q.parse_bytes(res.memory, field=f"{field}.memory"),
        gpu=0 if res.gpu is None else q.parse_count(res.gpu, field=f"{field}.gpu", maximum=q.MAX_GPU),
        extended=extended_of(_extended(res.extended, f"{field}.extended")),
    )


@contextmanager
def naming(field: str) -> Iterator[None]:
    """Refusals inside the block become 422 ``invalid_field`` naming ``field`` (unless they name one already)."""
    try:
        yield
    except InvalidRequestError as exc:
        if "field" in exc.extra:
            raise
        raise InvalidRequestError(exc.detail, code="invalid_field", field=field) from exc


def check_name(value: str, field: str) -> str:
    """A pool or reservation name: 1-253 printable characters (whether it exists is checked later)."""
    if not value or len(value) > MAX_NAME or not value.isprintable() or value.strip() != value:
        raise InvalidRequestError(
            f"{field} must be 1-{MAX_NAME} printable characters without surrounding spaces",
            code="invalid_field",
            field=field,
        )
    return value


def _node_selector(sub: TaskSubmit) -> dict[str, str]:
    if len(sub.node_selector) > MAX_LABELS:
        raise InvalidRequestError(
            f"at most {MAX_LABELS} node selector labels", code="invalid_field", field="node_selector"
        )
    for key, value in sub.node_selector.items():
        if not _LABEL_KEY.match(key):
            raise InvalidRequestError(
                f"node selector key {key[:64]!r} must be 1-63 characters of [A-Za-z0-9._/-], starting alphanumeric",
                code="invalid_field",
                field="node_selector",
            )
        if len(value) > MAX_LABEL_VALUE or "\x00" in value:
            raise InvalidRequestError(
                f"node selector {key} value must be at most {MAX_LABEL_VALUE} characters without NUL",
                code="invalid_field",
                field="node_selector",
            )
    return dict(sub.node_selector)


def _timeouts(sub: TaskSubmit, now: datetime) -> Timeouts:
    t = sub.timeouts
    if t is None:
        return Timeouts()
    if t.deadline is not None:
        try:
            t.deadline.astimezone(UTC)
        except OverflowError:
            raise InvalidRequestError(
                "timeouts.deadline is out of range", code="invalid_field", field="timeouts.deadline"
            ) from None
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


# An OCI image reference (the distribution spec's grammar): [host[:port]/]path[:tag][@algorithm:hex]. Anything
# else, spaces and shell metacharacters included, is refused before it reaches a container runtime.
_IMAGE_REFERENCE = re.compile(
    r"^(?:(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])(?:\.(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9]))*"
    r"(?::[0-9]+)?/)?"
    r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*"
    r"(?::[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?"
    r"(?:@[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,})?$"
)
MAX_IMAGE_REFERENCE = 512
CONTAINER_EXECUTORS = frozenset({"podman", "kubernetes"})
"""Executors that run ``image`` tasks (and only those)."""


def check_image(image: str) -> None:
    """422 ``invalid_image`` unless ``image`` is an OCI image reference (``registry:5000/team/app:1.2@sha256:...``)."""
    if len(image) > MAX_IMAGE_REFERENCE or not _IMAGE_REFERENCE.match(image):
        raise InvalidRequestError(
            f"image {image[:100]!r} is not an image reference (expected [registry[:port]/]name[:tag][@digest], "
            "lower-case name, no spaces or shell characters)",
            code="invalid_image",
            field="image",
        )


def _is_root(user: str) -> bool:
    name = user.split(":", 1)[0].strip()
    return name in ("root", "") or (name.isdigit() and int(name) == 0)


def check_runtime(spec: TaskSpec, pool: Pool, tenant: Tenant) -> None:
    """The pool's executor can run what the spec asks: an image on container executors only, and back.

    422 ``image_not_supported`` (an image on a process executor), ``image_required`` (a command without an image
    on a container executor), ``host_access_not_supported`` (host access on Kubernetes, whose tenant namespaces
    enforce the restricted Pod Security Standard); 403 ``policy_forbidden`` for user root in a container
    unless the tenant may run privileged containers (root in a rootful container is root on the host).
    """
    containers = pool.executor in CONTAINER_EXECUTORS
    if spec.image is not None and not containers:
        raise InvalidRequestError(
            f"pool {pool.name!r} runs processes ({pool.executor} executor), not container images; omit 'image' "
            "or submit to a pool served by a container executor",
            code="image_not_supported",
            field="image",
            pool=pool.name,
        )
    if spec.image is None and containers:
        raise InvalidRequestError(
            f"pool {pool.name!r} runs containers ({pool.executor} executor): 'image' is required",
            code="image_required",
            field="image",
            pool=pool.name,
        )
    if not containers:
        return
    host = spec.host
    if pool.executor == "kubernetes":
        asked = [
            name
            for name, on in (
                ("privileged", host.privileged),
                ("host_network", host.host_network),
                ("host_pid", host.host_pid),
                ("mounts", bool(host.mounts)),
            )
            if on
        ]
        if asked:
            raise InvalidRequestError(
                f"pool {pool.name!r} runs Kubernetes pods under the restricted Pod Security Standard: "
                f"container.{asked[0]} is not available there",
                code="host_access_not_supported",
                field=f"container.{asked[0]}",
                pool=pool.name,
            )
    if pool.executor == "kubernetes" and host.user is not None and not host.user.replace(":", "", 1).isdigit():
        raise InvalidRequestError(
            f"pool {pool.name!r} runs Kubernetes pods, whose runAsUser is numeric: container.user {host.user!r} "
            "must be a uid or uid:gid",
            code="host_access_not_supported",
            field="container.user",
            pool=pool.name,
        )
    if host.user is not None and _is_root(host.user):
        if pool.executor == "kubernetes":
            raise InvalidRequestError(
                f"pool {pool.name!r} runs pods as non-root (restricted Pod Security Standard): "
                f"container.user {host.user!r} is root",
                code="host_access_not_supported",
                field="container.user",
                pool=pool.name,
            )
        if not tenant.policy.allow_privileged:
            raise ForbiddenError(
                f"tenant {tenant.name}'s policy does not allow container.user {host.user!r} (root in a container "
                "is root on the host; it needs allow_privileged)",
                code="policy_forbidden",
                field="container.user",
                tenant=tenant.name,
            )


def build_spec(sub: TaskSubmit, limits: SpecLimits, now: datetime) -> TaskSpec:
    """Validate a submission and build its spec, or raise a 4xx error naming the field."""
    if sub.name is not None:
        _no_nul(sub.name, "name")
    if sub.image is not None:
        check_image(sub.image)
    simulated = sub.simulated_duration
    return TaskSpec(
        command=_command(sub, limits),
        shell=sub.shell,
        env=_env(sub, limits),
        workdir=_workdir(sub),
        image=sub.image,
        resources=parse_resources(sub.resources, limits.default_resources),
        priority=sub.priority,
        tenant=sub.tenant,
        labels=_labels(sub),
        timeouts=_timeouts(sub, now),
        retry=_retry(sub),
        name=sub.name,
        pool=DEFAULT_POOL if sub.pool is None else check_name(sub.pool, "pool"),
        node_selector=_node_selector(sub),
        reservation=None if sub.reservation is None else check_name(sub.reservation, "reservation"),
        simulated_duration=None if simulated is None else q.parse_duration(simulated, field="simulated_duration"),
        host=_host(sub),
    )


def default_pool(tenant: Tenant, directory: Directory) -> str:
    """Where a tenant's work goes when no pool is named.

    Its first allowed pool, else ``default``, else the first configured pool.
    """
    if tenant.pools:
        return tenant.pools[0]
    names = directory.pool_names()
    return DEFAULT_POOL if DEFAULT_POOL in names or not names else names[0]


def find_tenant(directory: Directory, name: str) -> Tenant:
    """The tenant, or 404 ``tenant_not_found``."""
    tenant = directory.tenant(name)
    if tenant is None:
        raise NotFoundError(f"tenant {name!r} not found", code="tenant_not_found", field="tenant")
    return tenant


def find_pool(directory: Directory, tenant: Tenant, name: str) -> Pool:
    """A pool the tenant may use, or 404 ``pool_not_found`` (a pool it may not use looks missing)."""
    pool = directory.pool(name)
    if pool is None or not tenant.may_use_pool(name):
        raise NotFoundError(f"pool {name!r} not found", code="pool_not_found", field="pool")
    return pool


def check_priority(tenant: Tenant, priority: int) -> None:
    """422 ``priority_not_allowed`` when ``priority`` is outside the tenant's range."""
    if not tenant.allows_priority(priority):
        raise InvalidRequestError(
            f"priority {priority} is outside tenant {tenant.name}'s range {tenant.priority_min}..{tenant.priority_max}",
            code="priority_not_allowed",
            field="priority",
            min=tenant.priority_min,
            max=tenant.priority_max,
        )


def check_policy(tenant: Tenant, host: HostAccess) -> None:
    """403 ``policy_forbidden`` naming the first host access the tenant's policy does not allow."""
    refused = tenant.policy.refusal(
        privileged=host.privileged,
        host_network=host.host_network,
        host_pid=host.host_pid,
        host_mounts=bool(host.mounts),
        network=host.network,
    )
    if refused is not None:
        raise ForbiddenError(
            f"tenant {tenant.name}'s policy does not allow container.{refused}",
            code="policy_forbidden",
            field=f"container.{refused}",
            tenant=tenant.name,
        )


def check_fits(spec: TaskSpec, pool: Pool, reservation: Reservation | None) -> None:
    """422 ``unschedulable`` when the request can never fit.

    That is, larger than every node of the pool that matches its node selector, or than its reservation's
    slot. A request that merely does not fit now is accepted.
    """
    res = spec.resources
    if reservation is not None:
        if not res.fits_in(reservation.resources):
            raise UnschedulableError(
                f"the task requests {res.describe()} but each slot of reservation {reservation.id} holds "
                f"{reservation.resources.describe()}; it could never run there",
                resource=",".join(res.shortfall(reservation.resources)),
            )
        return
    nodes = [n for n in pool.nodes if n.matches(spec.node_selector)]
    if not nodes:
        raise UnschedulableError(
            f"no node of pool {pool.name} has the labels {dict(spec.node_selector)}; the task could never run",
            resource="node_selector",
        )
    if any(res.fits_in(n.total) for n in nodes):
        return
    largest = max(nodes, key=lambda n: (n.total.millicpu, n.total.memory))
    raise UnschedulableError(
        f"the task requests {res.describe()} but the largest node of pool {pool.name} ({largest.name}) has "
        f"{largest.total.describe()}; it could never run",
        resource=",".join(res.shortfall(largest.total)),
    )


def resolve_access(spec: TaskSpec, pool: str | None, directory: Directory) -> TaskSpec:
    """Check that the spec's tenant may submit it; return it with its pool resolved.

    ``pool`` is the pool the caller named, or ``None``: then the reservation's pool, else the tenant's default
    pool. A tenant, pool or reservation the caller may not use is a 404 as if it did not exist; host access the
    tenant's policy does not allow is a 403.
    """
    tenant = find_tenant(directory, spec.tenant)
    check_policy(tenant, spec.host)
    if spec.reservation is not None:
        held = directory.reservation(spec.reservation)
        if held is None or held.tenant != tenant.name or (pool is not None and held.pool != pool):
            raise NotFoundError(
                f"reservation {spec.reservation!r} not found (or not live, or not this tenant's in this pool)",
                code="reservation_not_found",
                field="reservation",
            )
        pool = held.pool
    name = pool if pool is not None else default_pool(tenant, directory)
    found = find_pool(directory, tenant, name)
    check_runtime(spec, found, tenant)
    check_priority(tenant, spec.priority)
    check_fits(spec, found, directory.reservation(spec.reservation) if spec.reservation else None)
    return spec if spec.pool == name else replace(spec, pool=name)


def check_pending_limits(
    adding: Mapping[str, int], directory: Directory, in_flight: Mapping[str, int] | None = None
) -> None:
    """429 ``pending_limit`` when adding tasks (count per tenant) would take a tenant over its ``max_pending``.

    ``in_flight`` counts tasks of other requests that passed this check and are being committed.
    """
    for name, count in adding.items():
        tenant = find_tenant(directory, name)
        limit = tenant.quota.max_pending
        if limit is None:
            continue
        pending = directory.tenant_counts(name).pending + (in_flight or {}).get(name, 0)
        if pending + count > limit:
            raise LimitExceededError(
                f"tenant {name} has {pending} pending tasks; its limit is {limit}"
                + (f" (this request adds {count})" if count > 1 else ""),
                code="pending_limit",
                tenant=name,
                limit=limit,
                pending=pending,
            )


def request_hash(sub: TaskSubmit) -> str:
    """A fingerprint of the request (without its idempotency key) to detect a key reused for another request."""
    body = sub.model_dump(mode="json", exclude={"idempotency_key"}, exclude_defaults=True)
    return hashlib.sha256(orjson.dumps(body, option=orjson.OPT_SORT_KEYS)).hexdigest()
