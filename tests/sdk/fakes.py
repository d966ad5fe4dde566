"""A scripted stand-in for the HTTP API: routes answer with wire-model JSON and every request is recorded."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

from taskplane.wire import ReservationOut, ResourcesReport, TaskOut, TenantOut, UsageReport

Handler = Callable[[httpx.Request], httpx.Response]


def task_json(task_id: str = "t-1", state: str = "pending", **overrides: Any) -> dict[str, Any]:
    """A TaskOut as the server would send it (validated through the wire model)."""
    resources = {"cpu": "1", "memory": "256Mi", "gpu": 0, "millicpu": 1000, "memory_bytes": 268435456}
    body: dict[str, Any] = {
        "id": task_id,
        "tenant": "default",
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


def problem(status: int, code: str, detail: str, **members: Any) -> httpx.Response:
    body = {"type": "about:blank", "title": code, "status": status, "detail": detail, "code": code, **members}
    return httpx.Response(status, content=json.dumps(body), headers={"Content-Type": "application/problem+json"})


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
