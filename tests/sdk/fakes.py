"""A scripted stand-in for the HTTP API: routes answer with wire-model JSON and every request is recorded."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

from taskplane.wire import TaskOut

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
