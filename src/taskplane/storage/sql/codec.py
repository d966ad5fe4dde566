"""Domain values to rows and JSON, and back. No SQL here: rows are plain dicts and positional tuples.

The spec is stored whole as JSON (``tasks.spec``); tenant, priority, name, pool and the requested
millicpu/memory/gpu are copied into columns only to filter, sort and add up on. Decoding tolerates missing keys
(taking the dataclass defaults), so fields added to the spec later read old rows without a data migration.
Fields added since (``host``, ``owner``) are written only when they differ from their defaults.

An audit record's ``detail`` is written with the standard library's ``json`` and the options of
``domain.audit.canonical`` (``default=str``), not orjson: what is read back must hash exactly as what was
hashed, and orjson renders some values (datetimes) differently from ``str``.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

import orjson

from taskplane.domain.access import ApiKey, Role, RoleBinding, StoredRole
from taskplane.domain.audit import AuditEntry, AuditRecord
from taskplane.domain.reservation import Reservation, ReservationState
from taskplane.domain.resources import Resources, extended_of
from taskplane.domain.task import (
    NO_HOST_ACCESS,
    Attempt,
    AttemptState,
    FailureClass,
    HostAccess,
    Mount,
    PendingReason,
    RetryPolicy,
    Task,
    TaskSpec,
    TaskState,
    Timeouts,
)
from taskplane.domain.tenant import DEFAULT_POLICY, Quota, Tenant, TenantPolicy
from taskplane.services.ports import TaskEvent
from taskplane.storage.sql.tables import from_micros, to_micros

_DUMPS_OPTIONS = orjson.OPT_NON_STR_KEYS

TASK_FIELDS: tuple[str, ...] = (
    "id",
    "seq",
    "state",
    "idempotency_key",
    "spec",
    "attempts",
    "infra_failures",
    "not_before",
    "pending_reason",
    "failure_class",
    "exit_code",
    "message",
    "cancel_requested",
    "created_at",
    "updated_at",
    "started_at",
    "finished_at",
    "skipped_attempts",
)
"""Columns of ``tasks`` that ``task_from_row`` reads, in this order."""

ATTEMPT_FIELDS: tuple[str, ...] = (
    "task_id",
    "number",
    "state",
    "node",
    "created_at",
    "started_at",
    "finished_at",
    "pid",
    "exit_code",
    "signal",
    "failure_class",
    "message",
    "peak_memory",
    "cpu_seconds",
    "log_truncated",
)
"""Columns of ``attempts`` that ``attempt_from_row`` reads, in this order (the ``Attempt`` field order)."""

EVENT_FIELDS: tuple[str, ...] = ("seq", "task_id", "at", "type", "from_state", "to_state", "attempt", "data")
"""Columns of ``task_events`` that ``event_from_row`` reads, in this order."""

TENANT_FIELDS: tuple[str, ...] = (
    "name",
    "millicpu",
    "memory",
    "gpu",
    "max_running",
    "max_pending",
    "weight",
    "pools",
    "priority_min",
    "priority_max",
    "borrowing",
    "created_at",
    "updated_at",
    "policy",
)
"""Columns of ``tenants`` that ``tenant_from_row`` reads, in this order."""

RESERVATION_FIELDS: tuple[str, ...] = (
    "id",
    "seq",
    "tenant",
    "pool",
    "resources",
    "count",
    "state",
    "priority",
    "duration",
    "expires_at",
    "activated_at",
    "ended_at",
    "created_at",
    "updated_at",
    "nodes",
    "message",
)
"""Columns of ``reservations`` that ``reservation_from_row`` reads, in this order."""

API_KEY_FIELDS: tuple[str, ...] = (
    "id",
    "secret_hash",
    "owner",
    "tenant",
    "roles",
    "created_at",
    "created_by",
    "expires_at",
    "revoked_at",
    "last_used_at",
    "description",
)
"""Columns of ``api_keys`` that ``api_key_from_row`` reads, in this order (the ``ApiKey`` field order)."""

ROLE_FIELDS: tuple[str, ...] = ("name", "rules", "description", "created_at", "created_by")
"""Columns of ``roles`` that ``role_from_row`` reads, in this order."""

BINDING_FIELDS: tuple[str, ...] = ("id", "subject", "tenant", "role", "created_at", "created_by")
"""Columns of ``role_bindings`` that ``binding_from_row`` reads, in this order (the ``RoleBinding`` field order)."""

AUDIT_FIELDS: tuple[str, ...] = (
    "seq",
    "at",
    "request_id",
    "principal",
    "tenant",
    "action",
    "resource",
    "outcome",
    "status",
    "source",
    "detail",
    "prev_hash",
    "hash",
)
"""Columns of ``audit_log`` that ``audit_from_row`` reads, in this order."""


# ----------------------------------------------------------------------------------------- datetimes


def _iso(value: datetime | None) -> str | None:
    # Through to_micros so naive values are refused here exactly as in timestamp columns.
    return None if value is None else from_micros(to_micros(value)).isoformat()


def _from_iso(value: str | None) -> datetime | None:
    return None if value is None else datetime.fromisoformat(value)


# ---------------------------------------------------------------------------------------------- spec


def spec_to_json(spec: TaskSpec) -> str:
    """The JSON text of a whole ``TaskSpec``."""
    retry = spec.retry
    timeouts = spec.timeouts
    res = spec.resources
    doc = {
        "command": list(spec.command),
        "shell": spec.shell,
        "env": dict(spec.env),
        "workdir": spec.workdir,
        "image": spec.image,
        "resources": resources_to_doc(res),
        "priority": spec.priority,
        "tenant": spec.tenant,
        "labels": dict(spec.labels),
        "timeouts": {"queue": timeouts.queue, "run": timeouts.run, "deadline": _iso(timeouts.deadline)},
        "retry": {
            "max_attempts": retry.max_attempts,
            "backoff_initial": retry.backoff_initial,
            "backoff_max": retry.backoff_max,
            "backoff_multiplier": retry.backoff_multiplier,
            "jitter": retry.jitter,
            "retry_on": sorted(retry.retry_on),
            "max_infra_attempts": retry.max_infra_attempts,
        },
        "name": spec.name,
        "pool": spec.pool,
        "node_selector": dict(spec.node_selector),
        "reservation": spec.reservation,
        "simulated_duration": spec.simulated_duration,
    }
    if spec.host != NO_HOST_ACCESS:
        doc["host"] = _host_to_doc(spec.host)
    if spec.owner is not None:
        doc["owner"] = spec.owner
    return orjson.dumps(doc, option=_DUMPS_OPTIONS).decode()


def spec_from_json(text: str | bytes) -> TaskSpec:
    """The ``TaskSpec`` of JSON written by ``spec_to_json``."""
    doc: dict[str, Any] = orjson.loads(text)
    res = doc.get("resources") or {}
    timeouts = doc.get("timeouts") or {}
    retry = doc.get("retry")
    host = doc.get("host")
    queue, run, deadline = timeouts.get("queue"), timeouts.get("run"), timeouts.get("deadline")
    return TaskSpec(
        command=tuple(doc["command"]),
        shell=doc.get("shell", False),
        env=doc.get("env") or {},
        workdir=doc.get("workdir"),
        image=doc.get("image"),
        resources=resources_from_doc(res),
        priority=doc.get("priority", 0),
        tenant=doc.get("tenant", "default"),
        labels=doc.get("labels") or {},
        timeouts=_NO_TIMEOUTS
        if queue is None and run is None and deadline is None
        else Timeouts(queue=queue, run=run, deadline=_from_iso(deadline)),
        retry=_retry_from_doc(retry) if retry else _DEFAULT_RETRY,
        name=doc.get("name"),
        pool=doc.get("pool", "default"),
        node_selector=doc.get("node_selector") or {},
        reservation=doc.get("reservation"),
        simulated_duration=doc.get("simulated_duration"),
        host=_host_from_doc(host) if host else NO_HOST_ACCESS,
        owner=doc.get("owner"),
    )


def _host_to_doc(host: HostAccess) -> dict[str, Any]:
    # Only what differs from the defaults: most tasks ask for nothing, the rest for one or two things.
    doc: dict[str, Any] = {}
    for name in ("privileged", "host_network", "host_pid", "network", "read_only_root"):
        if getattr(host, name):
            doc[name] = True
    if host.user is not None:
        doc["user"] = host.user
    if host.mounts:
        doc["mounts"] = [{"source": m.source, "target": m.target, "read_only": m.read_only} for m in host.mounts]
    return doc


def _host_from_doc(doc: Mapping[str, Any]) -> HostAccess:
    return HostAccess(
        privileged=doc.get("privileged", False),
        host_network=doc.get("host_network", False),
        host_pid=doc.get("host_pid", False),
        network=doc.get("network", False),
        mounts=tuple(Mount(m["source"], m["target"], m.get("read_only", True)) for m in doc.get("mounts", ())),
        read_only_root=doc.get("read_only_root", False),
        user=doc.get("user"),
    )


def resources_to_doc(res: Resources) -> dict[str, Any]:
    """The JSON document of a resource vector; ``extended`` only when there is any (keeps most rows small)."""
    doc: dict[str, Any] = {"millicpu": res.millicpu, "memory": res.memory, "gpu": res.gpu}
    if res.extended:
        doc["extended"] = dict(res.extended)
    return doc


def resources_from_doc(doc: Mapping[str, Any]) -> Resources:
    """The ``Resources`` of a document from ``resources_to_doc``; missing quantities are zero."""
    extended = doc.get("extended")
    return Resources(
        int(doc.get("millicpu", 0)),
        int(doc.get("memory", 0)),
        int(doc.get("gpu", 0)),
        extended_of({str(k): int(v) for k, v in extended.items()}) if extended else (),
    )


_NO_TIMEOUTS = Timeouts()
_DEFAULT_RETRY = RetryPolicy()
_FAILURE_CLASSES = {c.value: c for c in FailureClass}
_TASK_STATES = {s.value: s for s in TaskState}
_ATTEMPT_STATES = {s.value: s for s in AttemptState}
_RESERVATION_STATES = {s.value: s for s in ReservationState}


def _retry_from_doc(doc: Mapping[str, Any]) -> RetryPolicy:
    # Most tasks share a handful of policies: decode each once (loading a million tasks at start-up matters).
    default = _DEFAULT_RETRY
    retry_on = doc.get("retry_on")
    return _retry_policy(
        doc.get("max_attempts", default.max_attempts),
        doc.get("backoff_initial", default.backoff_initial),
        doc.get("backoff_max", default.backoff_max),
        doc.get("backoff_multiplier", default.backoff_multiplier),
        doc.get("jitter", default.jitter),
        None if retry_on is None else tuple(retry_on),
        doc.get("max_infra_attempts", default.max_infra_attempts),
    )


@functools.lru_cache(maxsize=1024, typed=True)
def _retry_policy(
    max_attempts: int,
    backoff_initial: float,
    backoff_max: float,
    backoff_multiplier: float,
    jitter: float,
    retry_on: tuple[str, ...] | None,
    max_infra_attempts: int,
) -> RetryPolicy:
    return RetryPolicy(
        max_attempts=max_attempts,
        backoff_initial=backoff_initial,
        backoff_max=backoff_max,
        backoff_multiplier=backoff_multiplier,
        jitter=jitter,
        retry_on=_DEFAULT_RETRY.retry_on if retry_on is None else frozenset(_FAILURE_CLASSES[c] for c in retry_on),
        max_infra_attempts=max_infra_attempts,
    )


# ------------------------------------------------------------------------------------ pending reason


def reason_to_json(reason: PendingReason | None) -> str | None:
    """The JSON text of a ``PendingReason`` (``None`` stays ``None``)."""
    if reason is None:
        return None
    doc = {"code": reason.code, "message": reason.message, "resource": reason.resource, "until": _iso(reason.until)}
    return orjson.dumps(doc).decode()


def reason_from_json(text: str | bytes | None) -> PendingReason | None:
    """The ``PendingReason`` of JSON written by ``reason_to_json``."""
    if text is None:
        return None
    doc: dict[str, Any] = orjson.loads(text)
    return PendingReason(
        code=doc["code"],
        message=doc.get("message", ""),
        resource=doc.get("resource"),
        until=_from_iso(doc.get("until")),
    )


# --------------------------------------------------------------------------------------------- tasks


def task_insert_row(task: Task, seq: int, request_hash: str | None) -> dict[str, Any]:
    """The full ``tasks`` row of a new task with its store-assigned ``seq``."""
    spec = task.spec
    return {
        "id": task.id,
        "seq": seq,
        "tenant": spec.tenant,
        "state": task.state.value,
        "priority": spec.priority,
        "name": spec.name,
        "idempotency_key": task.idempotency_key,
        "request_hash": request_hash,
        "spec": spec_to_json(spec),
        "attempts": task.attempts,
        "infra_failures": task.infra_failures,
        "skipped_attempts": task.skipped_attempts,
        "not_before": task.not_before,
        "pending_reason": reason_to_json(task.pending_reason),
        "failure_class": None if task.failure_class is None else task.failure_class.value,
        "exit_code": task.exit_code,
        "message": task.message,
        "cancel_requested": task.cancel_requested,
        "created_at": task.created_at,
        "updated_at": task.updated_at,
        "started_at": task.started_at,
        "finished_at": task.finished_at,
        "pool": spec.pool,
        "millicpu": spec.resources.millicpu,
        "memory": spec.resources.memory,
        "gpu": spec.resources.gpu,
    }


TASK_UPDATE_KEY = "b_id"
"""The bind name of the task id in ``task_update_params`` (column names are taken by the SET clause)."""


def task_update_params(task: Task) -> dict[str, Any]:
    """The lifecycle columns of a task, keyed for the UPDATE by id.

    The spec and what is copied from it (tenant, priority, name, labels, pool, resources), the idempotency key,
    ``created_at`` and ``seq`` are written once, at creation.
    """
    return {
        TASK_UPDATE_KEY: task.id,
        "state": task.state.value,
        "attempts": task.attempts,
        "infra_failures": task.infra_failures,
        "skipped_attempts": task.skipped_attempts,
        "not_before": task.not_before,
        "pending_reason": reason_to_json(task.pending_reason),
        "failure_class": None if task.failure_class is None else task.failure_class.value,
        "exit_code": task.exit_code,
        "message": task.message,
        "cancel_requested": task.cancel_requested,
        "updated_at": task.updated_at,
        "started_at": task.started_at,
        "finished_at": task.finished_at,
    }


def task_from_row(row: Sequence[Any]) -> Task:
    """A ``Task`` from a row of the ``TASK_FIELDS`` columns (timestamps already decoded by the column type)."""
    failure = row[9]
    return Task(
        id=row[0],
        seq=row[1],
        state=_TASK_STATES[row[2]],
        idempotency_key=row[3],
        spec=spec_from_json(row[4]),
        attempts=row[5],
        infra_failures=row[6],
        not_before=row[7],
        pending_reason=reason_from_json(row[8]),
        failure_class=None if failure is None else _FAILURE_CLASSES[failure],
        exit_code=row[10],
        message=row[11],
        cancel_requested=bool(row[12]),
        created_at=row[13],
        updated_at=row[14],
        started_at=row[15],
        finished_at=row[16],
        skipped_attempts=row[17],
    )


# ------------------------------------------------------------------------------------------ attempts


def attempt_insert_row(attempt: Attempt) -> dict[str, Any]:
    """The full ``attempts`` row of an attempt."""
    return {
        "task_id": attempt.task_id,
        "number": attempt.number,
        "state": attempt.state.value,
        "node": attempt.node,
        "pid": attempt.pid,
        "created_at": attempt.created_at,
        "started_at": attempt.started_at,
        "finished_at": attempt.finished_at,
        "exit_code": attempt.exit_code,
        "signal": attempt.signal,
        "failure_class": None if attempt.failure_class is None else attempt.failure_class.value,
        "message": attempt.message,
        "peak_memory": attempt.peak_memory,
        "cpu_seconds": attempt.cpu_seconds,
        "log_truncated": attempt.log_truncated,
    }


ATTEMPT_UPDATE_KEYS = ("b_task_id", "b_number")
"""The bind names of an attempt's key in ``attempt_update_params``."""


def attempt_update_params(attempt: Attempt) -> dict[str, Any]:
    """Every column of an attempt but its key and ``created_at``, keyed for the UPDATE by (task_id, number)."""
    return {
        "b_task_id": attempt.task_id,
        "b_number": attempt.number,
        "state": attempt.state.value,
        "node": attempt.node,
        "pid": attempt.pid,
        "started_at": attempt.started_at,
        "finished_at": attempt.finished_at,
        "exit_code": attempt.exit_code,
        "signal": attempt.signal,
        "failure_class": None if attempt.failure_class is None else attempt.failure_class.value,
        "message": attempt.message,
        "peak_memory": attempt.peak_memory,
        "cpu_seconds": attempt.cpu_seconds,
        "log_truncated": attempt.log_truncated,
    }


def attempt_from_row(row: Sequence[Any]) -> Attempt:
    """An ``Attempt`` from a row of the ``ATTEMPT_FIELDS`` columns."""
    failure = row[10]
    return Attempt(
        task_id=row[0],
        number=row[1],
        state=_ATTEMPT_STATES[row[2]],
        node=row[3],
        created_at=row[4],
        started_at=row[5],
        finished_at=row[6],
        pid=row[7],
        exit_code=row[8],
        signal=row[9],
        failure_class=None if failure is None else _FAILURE_CLASSES[failure],
        message=row[11],
        peak_memory=row[12],
        cpu_seconds=row[13],
        log_truncated=bool(row[14]),
    )


# -------------------------------------------------------------------------------------------- events


def event_insert_row(event: TaskEvent) -> dict[str, Any]:
    """The ``task_events`` row of an event; its ``seq`` is assigned by the database."""
    return {
        "task_id": event.task_id,
        "at": event.at,
        "type": event.type,
        "from_state": None if event.from_state is None else event.from_state.value,
        "to_state": None if event.to_state is None else event.to_state.value,
        "attempt": event.attempt,
        "data": orjson.dumps(event.data, option=_DUMPS_OPTIONS).decode(),
    }


def event_from_row(row: Sequence[Any]) -> TaskEvent:
    """A ``TaskEvent`` from a row of the ``EVENT_FIELDS`` columns."""
    from_state, to_state = row[4], row[5]
    return TaskEvent(
        seq=row[0],
        task_id=row[1],
        at=row[2],
        type=row[3],
        from_state=None if from_state is None else _TASK_STATES[from_state],
        to_state=None if to_state is None else _TASK_STATES[to_state],
        attempt=row[6],
        data=orjson.loads(row[7]),
    )


# ------------------------------------------------------------------------------------------- tenants


def tenant_row(tenant: Tenant) -> dict[str, Any]:
    """The full ``tenants`` row of a tenant."""
    quota = tenant.quota
    return {
        "name": tenant.name,
        "millicpu": quota.millicpu,
        "memory": quota.memory,
        "gpu": quota.gpu,
        "max_running": quota.max_running,
        "max_pending": quota.max_pending,
        "weight": tenant.weight,
        "pools": None if tenant.pools is None else orjson.dumps(list(tenant.pools)).decode(),
        "priority_min": tenant.priority_min,
        "priority_max": tenant.priority_max,
        "borrowing": tenant.borrowing,
        "created_at": tenant.created_at,
        "updated_at": tenant.updated_at,
        "policy": policy_to_json(tenant.policy),
    }


def tenant_from_row(row: Sequence[Any]) -> Tenant:
    """A ``Tenant`` from a row of the ``TENANT_FIELDS`` columns."""
    pools = row[7]
    return Tenant(
        name=row[0],
        quota=Quota(millicpu=row[1], memory=row[2], gpu=row[3], max_running=row[4], max_pending=row[5]),
        weight=float(row[6]),
        pools=None if pools is None else tuple(orjson.loads(pools)),
        priority_min=row[8],
        priority_max=row[9],
        borrowing=bool(row[10]),
        created_at=row[11],
        updated_at=row[12],
        policy=policy_from_json(row[13]),
    )


_POLICY_FIELDS = ("allow_privileged", "allow_host_network", "allow_host_pid", "allow_host_mounts", "allow_network")


def policy_to_json(policy: TenantPolicy) -> str | None:
    """The JSON text of a tenant's host-access policy; ``None`` for the default one."""
    if policy == DEFAULT_POLICY:
        return None
    return orjson.dumps({name: getattr(policy, name) for name in _POLICY_FIELDS}).decode()


def policy_from_json(text: str | bytes | None) -> TenantPolicy:
    """The ``TenantPolicy`` of JSON written by ``policy_to_json``; missing fields (and ``None``) are defaults."""
    if text is None:
        return DEFAULT_POLICY
    doc: dict[str, Any] = orjson.loads(text)
    return TenantPolicy(**{name: bool(doc[name]) for name in _POLICY_FIELDS if name in doc})


# -------------------------------------------------------------------------------------- reservations


def reservation_row(reservation: Reservation, seq: int) -> dict[str, Any]:
    """The full ``reservations`` row of a reservation with its store-assigned ``seq``."""
    row = reservation_update_params(reservation)
    del row[RESERVATION_UPDATE_KEY]
    row.update(id=reservation.id, seq=seq, created_at=reservation.created_at)
    return row


RESERVATION_UPDATE_KEY = "b_id"
"""The bind name of the reservation id in ``reservation_update_params``."""


def reservation_update_params(reservation: Reservation) -> dict[str, Any]:
    """Every column of a reservation but its id, ``seq`` and ``created_at``, keyed for the UPDATE by id."""
    return {
        RESERVATION_UPDATE_KEY: reservation.id,
        "tenant": reservation.tenant,
        "pool": reservation.pool,
        "resources": orjson.dumps(resources_to_doc(reservation.resources)).decode(),
        "count": reservation.count,
        "state": reservation.state.value,
        "priority": reservation.priority,
        "duration": reservation.duration,
        "expires_at": reservation.expires_at,
        "activated_at": reservation.activated_at,
        "ended_at": reservation.ended_at,
        "updated_at": reservation.updated_at,
        "nodes": orjson.dumps(list(reservation.nodes)).decode(),
        "message": reservation.message,
    }


def reservation_from_row(row: Sequence[Any]) -> Reservation:
    """A ``Reservation`` from a row of the ``RESERVATION_FIELDS`` columns."""
    return Reservation(
        id=row[0],
        seq=row[1],
        tenant=row[2],
        pool=row[3],
        resources=resources_from_doc(orjson.loads(row[4])),
        count=row[5],
        state=_RESERVATION_STATES[row[6]],
        priority=row[7],
        duration=row[8],
        expires_at=row[9],
        activated_at=row[10],
        ended_at=row[11],
        created_at=row[12],
        updated_at=row[13],
        nodes=tuple(orjson.loads(row[14])),
        message=row[15],
    )


# ------------------------------------------------------------------------------------------ api keys


def api_key_row(key: ApiKey) -> dict[str, Any]:
    """The full ``api_keys`` row of a key."""
    return {
        "id": key.id,
        "secret_hash": key.secret_hash,
        "owner": key.owner,
        "tenant": key.tenant,
        "roles": roles_to_json(key.roles),
        "created_at": key.created_at,
        "created_by": key.created_by,
        "expires_at": key.expires_at,
        "revoked_at": key.revoked_at,
        "last_used_at": key.last_used_at,
        "description": key.description,
    }


def roles_to_json(names: Sequence[str]) -> str:
    """The JSON text of a key's role names, in their order."""
    return orjson.dumps(list(names)).decode()


def roles_from_json(text: str | bytes) -> tuple[str, ...]:
    """The role names of JSON written by ``roles_to_json``."""
    return tuple(orjson.loads(text))


def api_key_from_row(row: Sequence[Any]) -> ApiKey:
    """An ``ApiKey`` from a row of the ``API_KEY_FIELDS`` columns."""
    return ApiKey(
        id=row[0],
        secret_hash=row[1],
        owner=row[2],
        tenant=row[3],
        roles=roles_from_json(row[4]),
        created_at=row[5],
        created_by=row[6],
        expires_at=row[7],
        revoked_at=row[8],
        last_used_at=row[9],
        description=row[10],
    )


# --------------------------------------------------------------------------------- roles and bindings


def role_row(stored: StoredRole) -> dict[str, Any]:
    """The full ``roles`` row of a custom role; its rules as a sorted list of ``[verb, resource]`` pairs."""
    role = stored.role
    return {
        "name": role.name,
        "rules": orjson.dumps(sorted([verb, resource] for verb, resource in role.rules)).decode(),
        "description": role.description,
        "created_at": stored.created_at,
        "created_by": stored.created_by,
    }


def role_from_row(row: Sequence[Any]) -> StoredRole:
    """A ``StoredRole`` from a row of the ``ROLE_FIELDS`` columns."""
    rules = frozenset((str(verb), str(resource)) for verb, resource in orjson.loads(row[1]))
    return StoredRole(Role(name=row[0], rules=rules, description=row[2]), created_at=row[3], created_by=row[4])


def binding_row(binding: RoleBinding) -> dict[str, Any]:
    """The full ``role_bindings`` row of a binding."""
    return {name: getattr(binding, name) for name in BINDING_FIELDS}


def binding_from_row(row: Sequence[Any]) -> RoleBinding:
    """A ``RoleBinding`` from a row of the ``BINDING_FIELDS`` columns."""
    return RoleBinding(id=row[0], subject=row[1], tenant=row[2], role=row[3], created_at=row[4], created_by=row[5])


# --------------------------------------------------------------------------------------------- audit


def audit_row(record: AuditRecord) -> dict[str, Any]:
    """The full ``audit_log`` row of a chained record."""
    entry = record.entry
    return {
        "seq": record.seq,
        "at": entry.at,
        "request_id": entry.request_id,
        "principal": entry.principal,
        "tenant": entry.tenant,
        "action": entry.action,
        "resource": entry.resource,
        "outcome": entry.outcome,
        "status": entry.status,
        "source": entry.source,
        # The options of domain.audit.canonical: the detail read back hashes as the one written (see above).
        "detail": json.dumps(
            dict(entry.detail), sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str
        ),
        "prev_hash": record.prev_hash,
        "hash": record.hash,
    }


def audit_from_row(row: Sequence[Any]) -> AuditRecord:
    """An ``AuditRecord`` from a row of the ``AUDIT_FIELDS`` columns."""
    entry = AuditEntry(
        at=row[1],
        request_id=row[2],
        principal=row[3],
        tenant=row[4],
        action=row[5],
        resource=row[6],
        outcome=row[7],
        status=row[8],
        source=row[9],
        detail=json.loads(row[10]),
    )
    return AuditRecord(seq=row[0], entry=entry, prev_hash=row[11], hash=row[12])
