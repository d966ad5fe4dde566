"""Bad input: each a 4xx problem JSON with a clear message, nothing stored, the server unharmed."""

from __future__ import annotations

import pytest

from .helpers import assert_problem, submit, wait_done


@pytest.fixture
def client(server):
    with server.client() as c:
        yield c


def task_count(client) -> int:
    total, cursor = 0, None
    while True:
        page = client.get("/platform/tasks", params={"limit": 1000, **({"cursor": cursor} if cursor else {})}).json()
        total += len(page["items"])
        cursor = page["next_cursor"]
        if not cursor:
            return total


@pytest.fixture
def nothing_stored(client):
    before = task_count(client)
    yield
    assert task_count(client) == before, "a refused request stored a task"
    assert client.get("/healthz").status_code == 200


BAD_BODIES = [
    pytest.param({"command": ["true"], "surprise": 1}, "invalid_request", id="unknown-field"),
    pytest.param({"command": "true"}, "invalid_request", id="command-not-a-list"),
    pytest.param({"command": []}, "invalid_field", id="command-empty"),
    pytest.param({"command": [""]}, "invalid_field", id="executable-empty"),
    pytest.param({"command": [1, 2]}, "invalid_request", id="command-not-strings"),
    pytest.param({}, "invalid_request", id="command-missing"),
    pytest.param({"command": ["true"], "priority": True}, "invalid_request", id="bool-for-int"),
    pytest.param({"command": ["true"], "priority": "5"}, "invalid_request", id="string-for-int"),
    pytest.param({"command": ["true"], "resources": {"cpu": -1}}, "invalid_request", id="cpu-negative"),
    pytest.param({"command": ["true"], "resources": {"memory": 1e30}}, "invalid_request", id="memory-absurd"),
    pytest.param({"command": ["true"], "resources": {"memory": "lots"}}, "invalid_request", id="memory-garbage"),
    pytest.param({"command": ["true"], "resources": {"cpu": True}}, "invalid_request", id="cpu-bool"),
    pytest.param({"command": ["true"], "resources": {"cpu": 64}}, "unschedulable", id="never-fits-cpu"),
    pytest.param({"command": ["true"], "resources": {"memory": "512Gi"}}, "unschedulable", id="never-fits-memory"),
    pytest.param({"command": ["true"], "timeouts": {"run": 0}}, "invalid_request", id="timeout-zero"),
    pytest.param({"command": ["true"], "timeouts": {"run": -5}}, "invalid_request", id="timeout-negative"),
    pytest.param({"command": ["true"], "timeouts": {"queue": "soon"}}, "invalid_request", id="timeout-garbage"),
    pytest.param(
        {"command": ["true"], "timeouts": {"deadline": "2001-01-01T00:00:00Z"}}, "invalid_field", id="deadline-past"
    ),
    pytest.param({"command": ["true"], "env": {"BAD-NAME": "x"}}, "invalid_field", id="env-key"),
    pytest.param({"command": ["tr\u0000ue"]}, "invalid_field", id="nul-in-argv"),
    pytest.param({"command": ["true"], "workdir": "../../etc"}, "invalid_field", id="workdir-escape"),
    pytest.param({"command": ["true"], "workdir": "/etc"}, "invalid_field", id="workdir-absolute"),
    pytest.param({"command": ["true"], "image": "busybox"}, "image_not_supported", id="image-on-local"),
    pytest.param({"command": ["true"], "retry": {"max_attempts": 0}}, "invalid_request", id="retry-zero"),
    pytest.param({"command": ["true"], "tenant": "Not A Tenant"}, "invalid_request", id="tenant-pattern"),
]


@pytest.mark.parametrize(("body", "code"), BAD_BODIES)
def test_bad_task_is_refused(client, nothing_stored, body, code):
    assert_problem(client.post("/platform/tasks", json=body), 422, code)


def test_malformed_json_is_400(client, nothing_stored):
    resp = client.post("/platform/tasks", content=b'{"command": ["true"', headers={"content-type": "application/json"})
    assert_problem(resp, 400, "malformed_request")


def test_huge_argv_is_refused(client, nothing_stored):
    resp = client.post("/platform/tasks", json={"command": ["echo", "x" * (1 << 20)]})
    assert_problem(resp, 413, "payload_too_large")
    resp = client.post("/platform/tasks", json={"command": ["echo"] + ["y" * 1000] * 200})
    assert_problem(resp, 413, "argv_too_large")


def test_huge_env_is_refused(client, nothing_stored):
    env = {f"K{i}": "v" * 1000 for i in range(300)}
    assert_problem(client.post("/platform/tasks", json={"command": ["true"], "env": env}), 413, "env_too_large")


def test_body_over_limit_is_413_even_chunked(client, nothing_stored):
    def chunks():
        yield b'{"command": ["echo", "'
        for _ in range(2048):
            yield b"z" * 1024
        yield b'"]}'

    resp = client.post("/platform/tasks", content=chunks(), headers={"content-type": "application/json"})
    assert_problem(resp, 413, "payload_too_large")


def test_batch_over_limit(client, nothing_stored):
    resp = client.post("/platform/tasks/batch", json={"tasks": [{"command": ["true"]}] * 1001})
    assert_problem(resp, 413, "batch_too_large")


def test_batch_with_one_bad_task_stores_nothing(client, nothing_stored):
    tasks = [{"command": ["true"]}] * 5 + [{"command": ["true"], "resources": {"cpu": -1}}]
    body = assert_problem(client.post("/platform/tasks/batch", json={"tasks": tasks}), 422)
    assert "tasks[5]" in body["detail"]


def test_unknown_task_is_404(client):
    assert_problem(client.get("/platform/tasks/nope"), 404, "not_found")
    assert_problem(client.put("/platform/tasks/nope/cancel"), 404, "not_found")
    assert_problem(client.get("/platform/tasks/nope/logs"), 404, "not_found")
    assert_problem(client.get("/platform/nothing-here"), 404)


def test_cancel_finished_task_is_409_with_state(client):
    task = submit(client, ["true"])
    assert wait_done(client, task["id"])["state"] == "succeeded"
    body = assert_problem(client.put(f"/platform/tasks/{task['id']}/cancel"), 409, "invalid_state")
    assert body["state"] == "succeeded"


def test_bad_list_filters(client):
    assert_problem(client.get("/platform/tasks", params={"state": "sleeping"}), 422)
    assert_problem(client.get("/platform/tasks", params={"label": "novalue"}), 422)
    assert_problem(client.get("/platform/tasks", params={"cursor": "!!!"}), 422)
    assert_problem(client.get("/platform/tasks", params={"limit": 0}), 422)


def test_missing_executable_fails_as_infra_with_the_os_error(client):
    task = submit(client, ["/definitely/not/here"])
    done = wait_done(client, task["id"])
    assert done["state"] == "failed"
    assert done["failure_class"] == "infra"
    assert "No such file" in done["message"]
    assert done["attempt_count"] == 1  # a deterministic spawn error is not retried
