"""The task API end to end against a real server (SQLite, local executor), driven by plain httpx."""

from __future__ import annotations

import time

import httpx
import pytest

from .helpers import assert_problem, submit, wait_done, wait_state


@pytest.fixture
def client(server):
    with server.client() as c:
        yield c


def events(client, task_id):
    return [e["type"] for e in client.get(f"/platform/tasks/{task_id}/events").json()["items"]]


def test_runs_a_command_and_keeps_its_output(client):
    task = submit(client, ["sh", "-c", "echo out; echo err >&2; exit 3"], labels={"suite": "e2e"})
    done = wait_done(client, task["id"])
    assert done["state"] == "failed" and done["exit_code"] == 3 and done["failure_class"] == "user"
    [attempt] = done["attempts"]
    assert attempt["exit_code"] == 3 and attempt["started_at"] and attempt["finished_at"] and attempt["pid"]
    assert client.get(f"/platform/tasks/{task['id']}/logs").content == b"out\n"
    assert client.get(f"/platform/tasks/{task['id']}/logs", params={"stream": "stderr"}).content == b"err\n"
    assert events(client, task["id"])[:4] == ["created", "admitted", "starting", "running"]


def test_argv_is_not_interpreted_by_a_shell(client):
    task = submit(client, ["echo", "$HOME", "a b", ";", "rm", "-rf", "/"])
    assert wait_done(client, task["id"])["state"] == "succeeded"
    assert client.get(f"/platform/tasks/{task['id']}/logs").content == b"$HOME a b ; rm -rf /\n"


def test_shell_when_asked(client):
    task = submit(client, ["echo $((6*7)) | tr 4 X"], shell=True)
    wait_done(client, task["id"])
    assert client.get(f"/platform/tasks/{task['id']}/logs").content == b"X2\n"


def test_env_and_workdir(client):
    task = submit(
        client, ["sh", "-c", 'echo "$GREETING $TASKPLANE_TASK_ID"; pwd'], env={"GREETING": "hi"}, workdir="sub/dir"
    )
    wait_done(client, task["id"])
    out = client.get(f"/platform/tasks/{task['id']}/logs").text.splitlines()
    assert out[0] == f"hi {task['id']}"
    assert out[1].endswith("/sub/dir")


def test_cancel_running_is_observable_cancelling_then_cancelled(client):
    task = submit(client, ["sleep", "60"])
    wait_state(client, task["id"], {"running"})
    resp = client.put(f"/platform/tasks/{task['id']}/cancel")
    assert resp.status_code == 202 and resp.json()["state"] in ("cancelling", "cancelled")
    again = client.put(f"/platform/tasks/{task['id']}/cancel")  # idempotent
    assert again.status_code == 202
    done = wait_done(client, task["id"])
    assert done["state"] == "cancelled" and done["failure_class"] == "cancelled"
    assert done["attempts"][0]["signal"] == 15
    kinds = events(client, task["id"])
    assert kinds.index("cancelling") < kinds.index("cancelled")
    assert client.put(f"/platform/tasks/{task['id']}/cancel").status_code == 202


def test_cancel_ignoring_sigterm_is_killed_after_grace(client):
    task = submit(client, ["sh", "-c", "trap '' TERM; sleep 60 & wait"])
    wait_state(client, task["id"], {"running"})
    time.sleep(0.2)
    started = time.monotonic()
    client.put(f"/platform/tasks/{task['id']}/cancel")
    done = wait_done(client, task["id"])
    assert done["state"] == "cancelled"
    assert done["attempts"][0]["signal"] == 9
    assert time.monotonic() - started >= 1.5  # the server's grace is 2s


def test_run_timeout(client):
    task = submit(client, ["sleep", "30"], timeouts={"run": "500ms"})
    done = wait_done(client, task["id"])
    assert done["state"] == "timed_out" and done["failure_class"] == "timeout"


def test_queue_timeout_and_pending_reason(client):
    hog = submit(client, ["sleep", "30"], resources={"cpu": 4})
    wait_state(client, hog["id"], {"running"})
    waiting = submit(client, ["true"], resources={"cpu": 2}, timeouts={"queue": "1s"})
    view = client.get(f"/platform/tasks/{waiting['id']}").json()
    assert view["state"] == "pending"
    # Blocked on cpu, or already next in line in the node's own queue; either way first in line.
    assert view["pending_reason"]["code"] in ("no_capacity", "queued", "node_queue"), view
    assert view["queue_position"] == 0
    done = wait_done(client, waiting["id"])
    assert done["state"] == "timed_out" and "queue timeout" in done["message"]
    client.put(f"/platform/tasks/{hog['id']}/cancel")
    wait_done(client, hog["id"])


def test_cancel_pending(client):
    hog = submit(client, ["sleep", "30"], resources={"cpu": 4})
    wait_state(client, hog["id"], {"running"})
    queued = submit(client, ["true"], resources={"cpu": 1})
    resp = client.put(f"/platform/tasks/{queued['id']}/cancel")
    assert resp.json()["state"] == "cancelled"
    assert client.get(f"/platform/tasks/{queued['id']}").json()["attempt_count"] == 0
    client.put(f"/platform/tasks/{hog['id']}/cancel")
    wait_done(client, hog["id"])


def test_retries_by_failure_class_with_backoff(client):
    task = submit(client, ["sh", "-c", "exit 7"], retry={"max_attempts": 3, "backoff": "100ms", "jitter": 0})
    done = wait_done(client, task["id"])
    assert done["state"] == "failed" and done["attempt_count"] == 3
    assert [a["exit_code"] for a in done["attempts"]] == [7, 7, 7]
    assert events(client, task["id"]).count("retrying") == 2
    starts = [a["started_at"] for a in done["attempts"]]
    assert starts == sorted(starts)


def test_priority_then_fifo(client):
    hog = submit(client, ["sleep", "30"], resources={"cpu": 4}, priority=10)  # above both: never preempted
    wait_state(client, hog["id"], {"running"})
    low = submit(client, ["true"], resources={"cpu": 4}, priority=1)
    high = submit(client, ["true"], resources={"cpu": 4}, priority=9)
    # The low one was next in line on the node; the high one takes its place there.
    deadline = time.monotonic() + 10
    while True:
        positions = [client.get(f"/platform/tasks/{t['id']}").json()["queue_position"] for t in (high, low)]
        if positions == [0, 1] or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert positions == [0, 1]
    client.put(f"/platform/tasks/{hog['id']}/cancel")
    h, lo = wait_done(client, high["id"]), wait_done(client, low["id"])
    assert h["attempts"][0]["started_at"] <= lo["attempts"][0]["started_at"]


def test_idempotency_key(client):
    body = {"command": ["true"], "labels": {"k": "idem"}}
    first = client.post("/platform/tasks", json=body, headers={"Idempotency-Key": "abc-1"})
    second = client.post("/platform/tasks", json=body, headers={"Idempotency-Key": "abc-1"})
    assert first.status_code == 201 and second.status_code == 200
    assert first.json()["id"] == second.json()["id"]
    other = client.post("/platform/tasks", json={"command": ["false"]}, headers={"Idempotency-Key": "abc-1"})
    assert_problem(other, 409, "idempotency_key_reused")


def test_batch_and_list_filters_and_pagination(client):
    tasks = [
        {"command": ["true"], "labels": {"batch": "b1", "n": str(i)}, "resources": {"cpu": 0, "memory": 0}}
        for i in range(25)
    ]
    resp = client.post("/platform/tasks/batch", json={"tasks": tasks})
    assert resp.status_code == 201
    ids = [t["id"] for t in resp.json()["tasks"]]
    assert len(set(ids)) == 25 and all(resp.json()["created"])
    for task_id in ids:
        wait_done(client, task_id)
    seen, cursor = [], None
    while True:
        params = {"label": "batch=b1", "limit": 7, "state": "succeeded"}
        if cursor:
            params["cursor"] = cursor
        page = client.get("/platform/tasks", params=params).json()
        seen += [t["id"] for t in page["items"]]
        cursor = page["next_cursor"]
        if not cursor:
            break
    assert sorted(seen) == sorted(ids) and len(seen) == 25
    assert seen == list(reversed(ids))  # newest first: the batch was stored in order
    one = client.get("/platform/tasks", params={"label": ["batch=b1", "n=3"]}).json()["items"]
    assert [t["labels"]["n"] for t in one] == ["3"]


def test_follow_logs_streams_until_the_end(client):
    task = submit(client, ["sh", "-c", "for i in 1 2 3; do echo line$i; sleep 0.2; done"])
    with client.stream("GET", f"/platform/tasks/{task['id']}/logs", params={"follow": "true"}) as resp:
        body = b"".join(resp.iter_bytes())
    assert body == b"line1\nline2\nline3\n"


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith("VmRSS:"))


def test_output_flood_is_capped_and_marked(server, client):
    before = rss_kib(server.proc.pid)
    task = submit(client, ["sh", "-c", "yes flood | head -c 50000000; echo done"])
    done = wait_done(client, task["id"], timeout=60)
    attempt = done["attempts"][0]
    assert attempt["log_truncated"] is True
    with client.stream("GET", f"/platform/tasks/{task['id']}/logs") as resp:
        size = sum(len(chunk) for chunk in resp.iter_bytes())
    assert 0 < size <= 1 << 20
    # 50 MB went through the task; the server neither held it nor grew by anything like it.
    assert rss_kib(server.proc.pid) - before < 20 * 1024


def test_wait_long_poll(client):
    task = submit(client, ["sleep", "0.3"])
    done = client.get(f"/platform/tasks/{task['id']}/wait", params={"timeout": 10}).json()
    assert done["state"] == "succeeded"


def test_capacity(client):
    cap = client.get("/platform/capacity").json()
    assert cap["total"]["millicpu"] == 4000 and cap["total"]["memory_bytes"] == 8 << 30
    node = cap["nodes"][0]
    assert node["free"]["millicpu"] == node["total"]["millicpu"] - node["allocated"]["millicpu"]


def test_health_openapi_metrics(client):
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").status_code == 200
    spec = client.get("/openapi.json").json()
    assert "/platform/tasks" in spec["paths"] and "/platform/capacity" in spec["paths"]
    assert "taskplane_tasks" in client.get("/metrics").text


def test_default_resources_apply(client):
    task = submit(client, ["true"])
    assert task["resources"]["millicpu"] == 1000 and task["resources"]["memory"] == "256Mi"
    best_effort = submit(client, ["true"], resources={"cpu": 0, "memory": 0})
    assert best_effort["resources"]["millicpu"] == 0


def test_a_plain_http_client_can_drive_it(server):
    # No SDK, no session: one-shot httpx calls only, as an outside client would.
    resp = httpx.post(server.url + "/platform/tasks", json={"command": ["echo", "plain"]}, headers=server.headers)
    task_id = resp.json()["id"]
    done = httpx.get(
        server.url + f"/platform/tasks/{task_id}/wait", params={"timeout": 10}, headers=server.headers
    ).json()
    assert done["state"] == "succeeded"
