"""A scripted stand-in for the HTTP API: routes answer with wire-model JSON and every request is recorded."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx

from taskplane.domain.audit import GENESIS_HASH, AuditEntry, AuditRecord, compute_chain
from taskplane.wire import ReservationOut, ResourcesReport, TaskOut, TenantOut, UsageReport
from taskplane.wire.security import AuditRecordOut, BindingOut, RoleOut, TokenCreated, TokenOut, WhoAmI
from taskplane.wire.state import KeyValueOut, LeaseOut

Handler = Callable[[httpx.Request], httpx.Response]


def task_json(task_id: str = "t-1", state: str = "pending", **overrides: Any) -> dict[str, Any]:
    """A TaskOut as the server would send it (validated through the wire model)."""
    resources = {"cpu": "1", "memory": "256Mi", "gpu": 0, "millicpu": 1000, "memory_bytes": 268435456}
    body: dict[str, Any] = {
        "id": task_id,
        "tenant": "default",
        "owner": "key:0a1b2c3d4e5f",
        "state": state,
        "priority": 0,
        "command": ["true"],
        "shell": False,
        "env": {},
        "resources": resources,
        "labels": {},
        "timeouts": {},
        "retry": {"max_attempts": 1},
        "created_at": "2024-05-01T12:00:00Z",
        "updated_at": "2024-05-01T12:00:00Z",
    }
    body.update(overrides)
    return TaskOut.model_validate(body).model_dump(mode="json")


def resources_json(cpu: int = 1, gib: int = 1, **extended: int) -> dict[str, Any]:
    return {
        "cpu": str(cpu),
        "memory": f"{gib}Gi",
        "gpu": 0,
        "millicpu": cpu * 1000,
        "memory_bytes": gib << 30,
        "extended": extended,
    }


def tenant_json(name: str = "team-a", **overrides: Any) -> dict[str, Any]:
    """A TenantOut as the server would send it."""
    body: dict[str, Any] = {
        "name": name,
        "quota": {"cpu": "4", "memory": "16Gi", "millicpu": 4000, "memory_bytes": 16 << 30, "max_pending": 100},
        "weight": 2.0,
        "pools": ["default"],
        "priority_range": {"min": -10, "max": 10},
        "borrowing": True,
        "policy": {
            "allow_privileged": False,
            "allow_host_network": False,
            "allow_host_pid": False,
            "allow_host_mounts": False,
            "allow_network": False,
        },
        "created_at": "2024-05-01T12:00:00Z",
        "updated_at": "2024-05-01T12:00:00Z",
        "status": {"pending": 3, "running": 1, "usage": resources_json(1, 1), "reservations": 0},
    }
    body.update(overrides)
    return TenantOut.model_validate(body).model_dump(mode="json")


def reservation_json(rid: str = "rsv-1", state: str = "pending", **overrides: Any) -> dict[str, Any]:
    """A ReservationOut as the server would send it."""
    body: dict[str, Any] = {
        "id": rid,
        "tenant": "team-a",
        "pool": "default",
        "state": state,
        "resources": resources_json(2, 4),
        "count": 2,
        "total": resources_json(4, 8),
        "priority": 0,
        "nodes": [],
        "expires_at": "2024-05-01T13:00:00Z",
        "created_at": "2024-05-01T12:00:00Z",
        "updated_at": "2024-05-01T12:00:00Z",
    }
    body.update(overrides)
    return ReservationOut.model_validate(body).model_dump(mode="json")


def resources_report_json() -> dict[str, Any]:
    """A ResourcesReport of one pool with two nodes."""
    nodes = [
        {
            "node": f"sim-{i}",
            "pool": "sim",
            "total": resources_json(8, 16),
            "allocated": resources_json(2, 4),
            "reserved": resources_json(2, 4),
            "free": resources_json(4, 8),
            "tasks": 1,
            "max_tasks": 100,
            "labels": {"zone": "a"},
        }
        for i in range(2)
    ]
    pool = {
        "name": "sim",
        "executor": "simulated",
        "placement": "binpack",
        "nodes": nodes,
        "total": resources_json(16, 32),
        "allocated": resources_json(4, 8),
        "reserved": resources_json(4, 8),
        "free": resources_json(8, 16),
    }
    body = {key: pool[key] for key in ("total", "allocated", "reserved", "free")}
    return ResourcesReport.model_validate({"pools": [pool], **body}).model_dump(mode="json")


def usage_json() -> dict[str, Any]:
    """A UsageReport over one hour with one row."""
    row = {
        "tenant": "team-a",
        "pool": "sim",
        "attempts": 4,
        "requested": {"cpu_seconds": 7200.0, "memory_byte_seconds": float(3600 << 30), "gpu_seconds": 0.0},
        "allocated": resources_json(2, 4),
        "measured": {"cpu_seconds": 3600.0, "peak_memory": 1 << 30},
        "pool_cpu_seconds": 57600.0,
        "utilization_percent": 12.5,
    }
    body = {
        "start": "2024-05-01T11:00:00Z",
        "end": "2024-05-01T12:00:00Z",
        "window_seconds": 3600.0,
        "items": [row],
    }
    return UsageReport.model_validate(body).model_dump(mode="json")


def token_json(token_id: str = "0a1b2c3d4e5f", **overrides: Any) -> dict[str, Any]:
    """A TokenOut as the server would send it; pass ``token=...`` for a TokenCreated."""
    body: dict[str, Any] = {
        "id": token_id,
        "owner": "ci",
        "tenant": "team-a",
        "roles": ["developer"],
        "created_at": "2024-05-01T12:00:00Z",
        "created_by": "key:000000000000",
        "expires_at": None,
        "revoked_at": None,
        "last_used_at": None,
        "description": "",
        "state": "active",
    }
    body.update(overrides)
    model = TokenCreated if "token" in body else TokenOut
    return model.model_validate(body).model_dump(mode="json")


def role_json(name: str = "reader", **overrides: Any) -> dict[str, Any]:
    """A RoleOut: a custom role that may get and list tasks and logs."""
    pairs = [("get", "tasks"), ("list", "tasks"), ("get", "logs"), ("list", "logs")]
    body: dict[str, Any] = {
        "name": name,
        "builtin": False,
        "description": "read only",
        "rules": [{"verb": verb, "resource": resource} for verb, resource in pairs],
        "created_at": "2024-05-01T12:00:00Z",
        "created_by": "key:000000000000",
    }
    body.update(overrides)
    return RoleOut.model_validate(body).model_dump(mode="json")


def binding_json(binding_id: str = "rb-1", **overrides: Any) -> dict[str, Any]:
    """A BindingOut granting ``reader`` in ``team-a`` to an OIDC subject."""
    body: dict[str, Any] = {
        "id": binding_id,
        "subject": "oidc:alice",
        "tenant": "team-a",
        "role": "reader",
        "created_at": "2024-05-01T12:00:00Z",
        "created_by": "key:000000000000",
    }
    body.update(overrides)
    return BindingOut.model_validate(body).model_dump(mode="json")


def whoami_json(**overrides: Any) -> dict[str, Any]:
    """A WhoAmI of the platform-admin key."""
    body: dict[str, Any] = {
        "subject": "key:000000000000",
        "kind": "key",
        "name": "platform-admin",
        "bindings": [{"tenant": "*", "role": "platform-admin"}, {"tenant": "team-a", "role": "developer"}],
    }
    body.update(overrides)
    return WhoAmI.model_validate(body).model_dump(mode="json")


def audit_chain(count: int = 5) -> list[AuditRecord]:
    """A real hash chain of ``count`` records (``compute_chain`` from genesis), times with microseconds."""
    start = datetime(2024, 5, 1, 12, 0, 0, 123456, tzinfo=UTC)
    entries = [
        AuditEntry(
            at=start + timedelta(seconds=i, microseconds=i),
            request_id=f"req-{i}",
            principal="key:0a1b2c3d4e5f" if i % 2 else "oidc:alice",
            tenant=None if i == 0 else "team-a",
            action="tasks.create" if i % 2 else "tokens.revoke",
            resource=f"tasks/t-{i}",
            outcome="success" if i % 3 else "denied",
            status=201 if i % 3 else 403,
            source="10.0.0.7",
            detail={"n": i, "labels": {"team": "data"}, "note": "é"},
        )
        for i in range(count)
    ]
    return compute_chain(0, GENESIS_HASH, entries)


def audit_json(record: AuditRecord) -> dict[str, Any]:
    """An AuditRecordOut of a domain record, as ``/platform/audit`` sends it."""
    entry = record.entry
    body = {
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
        "detail": dict(entry.detail),
        "prev_hash": record.prev_hash,
        "hash": record.hash,
    }
    return AuditRecordOut.model_validate(body).model_dump(mode="json")


def ndjson(records: list[AuditRecord]) -> bytes:
    """An audit export: one JSON line per record."""
    return b"".join(json.dumps(audit_json(r)).encode() + b"\n" for r in records)


def kv_json(key: str = "jobs/a", value: Any = None, mod_revision: int = 7, **overrides: Any) -> dict[str, Any]:
    """A KeyValueOut as the state API sends it."""
    body: dict[str, Any] = {
        "key": key,
        "value": {"step": 1} if value is None else value,
        "create_revision": 3,
        "mod_revision": mod_revision,
        "version": 2,
        "lease": None,
    }
    body.update(overrides)
    return KeyValueOut.model_validate(body).model_dump(mode="json")


def lease_json(lease_id: int = 42, **overrides: Any) -> dict[str, Any]:
    """A LeaseOut of a 30-second lease with one key."""
    body: dict[str, Any] = {"id": lease_id, "ttl": 30.0, "expires_at": "2024-05-01T12:00:30Z", "keys": ["jobs/a"]}
    body.update(overrides)
    return LeaseOut.model_validate(body).model_dump(mode="json")


def state_event(revision: int, key: str = "jobs/a", kind: str = "put", value: Any = None) -> bytes:
    """One watch event as the server streams it: ``id``, ``event`` and the ``EventOut`` as ``data``."""
    kv = kv_json(key, value if value is not None else {"rev": revision}, mod_revision=revision)
    data = {"revision": revision, "type": kind, "key": key, "kv": kv if kind == "put" else None, "cause": ""}
    return f"id: {revision}\nevent: {kind}\ndata: {json.dumps(data)}\n\n".encode()


def sse(*chunks: bytes, start: int | None = None) -> httpx.Response:
    """A watch response: the server's opening comment (from ``start``), then the given events, then the end."""
    opening = f": watching from revision {start}\n\n".encode() if start is not None else b""
    return httpx.Response(200, content=opening + b"".join(chunks), headers={"Content-Type": "text/event-stream"})


class DroppedStream(httpx.SyncByteStream, httpx.AsyncByteStream):
    """A response body that sends ``chunks`` and then loses the connection."""

    def __init__(self, *chunks: bytes) -> None:
        self.chunks = chunks

    def __iter__(self) -> Iterator[bytes]:
        yield from self.chunks
        raise httpx.RemoteProtocolError("peer closed connection without sending complete message body")

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for chunk in self.chunks:
            yield chunk
        raise httpx.RemoteProtocolError("peer closed connection without sending complete message body")


def dropped_sse(*chunks: bytes) -> httpx.Response:
    """A watch response whose connection drops after ``chunks``."""
    return httpx.Response(200, stream=DroppedStream(*chunks), headers={"Content-Type": "text/event-stream"})


def problem(
    status: int, code: str, detail: str, headers: dict[str, str] | None = None, **members: Any
) -> httpx.Response:
    body = {"type": "about:blank", "title": code, "status": status, "detail": detail, "code": code, **members}
    headers = {"Content-Type": "application/problem+json", **(headers or {})}
    return httpx.Response(status, content=json.dumps(body), headers=headers)


@dataclass
class FakeApi:
    """Routes keyed by ``(method, path)``; each value is a handler or a list of responses served in order."""

    routes: dict[tuple[str, str], Handler | list[httpx.Response]] = field(default_factory=dict)
    requests: list[httpx.Request] = field(default_factory=list)

    def on(self, method: str, path: str, answer: Handler | httpx.Response | list[httpx.Response]) -> None:
        self.routes[(method, path)] = [answer] if isinstance(answer, httpx.Response) else answer

    def handle(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        answer = self.routes.get((request.method, request.url.raw_path.decode().split("?")[0]))
        if answer is None:
            return problem(404, "not_found", f"no route {request.method} {request.url.path}")
        if callable(answer):
            return answer(request)
        return answer.pop(0) if len(answer) > 1 else answer[0]

    @property
    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self.handle)

    @property
    def last(self) -> httpx.Request:
        return self.requests[-1]
