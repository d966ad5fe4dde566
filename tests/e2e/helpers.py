from __future__ import annotations

import time
from typing import Any

import httpx

TERMINAL = {"succeeded", "failed", "cancelled", "timed_out"}


def submit(client: httpx.Client, command: list[str], **fields: Any) -> dict[str, Any]:
    resp = client.post("/platform/tasks", json={"command": command, **fields})
    assert resp.status_code == 201, resp.text
    return resp.json()


def wait_state(client: httpx.Client, task_id: str, states: set[str], timeout: float = 30.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        task = client.get(f"/platform/tasks/{task_id}").json()
        if task["state"] in states:
            return task
        if time.monotonic() > deadline:
            raise AssertionError(f"task {task_id} still {task['state']} after {timeout}s, wanted {states}: {task}")
        time.sleep(0.05)


def wait_done(client: httpx.Client, task_id: str, timeout: float = 30.0) -> dict[str, Any]:
    return wait_state(client, task_id, TERMINAL, timeout)


def assert_problem(resp: httpx.Response, status: int, code: str | None = None) -> dict[str, Any]:
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"].startswith("application/problem+json"), resp.headers
    body = resp.json()
    assert body["status"] == status and body["title"] and body["detail"] and body["code"], body
    if code is not None:
        assert body["code"] == code, body
    return body
