"""Crash safety: kill -9 the server with 50 tasks running and 500 pending, restart it, lose nothing.

The same test runs on the embedded SQLite default and on PostgreSQL.
"""

from __future__ import annotations

import time

import httpx

from .conftest import running_server
from .helpers import wait_state

RUNNING, PENDING = 50, 500


def fetch_all(client: httpx.Client, ids: list[str]) -> dict[str, dict]:
    return {i: client.get(f"/platform/tasks/{i}").json() for i in ids}


def test_kill9_restart_adopts_running_and_runs_pending(tmp_path, backend_url):
    data = tmp_path / "data"
    settings = {"node_cpu": str(RUNNING), "node_memory": "64Gi", "kill_grace": "1"}
    with running_server(data, backend_url, **settings) as server, server.client() as client:
        # 10 exit while the server is down (exit 40+i), 40 exit after the restart (exit i % 5).
        early = [
            {"command": ["sh", "-c", f"sleep 4; exit {40 + i}"], "resources": {"cpu": 1}, "labels": {"g": "early"}}
            for i in range(10)
        ]
        late = [
            {"command": ["sh", "-c", f"sleep 9; exit {i % 5}"], "resources": {"cpu": 1}, "labels": {"g": "late"}}
            for i in range(RUNNING - 10)
        ]
        first = client.post("/platform/tasks/batch", json={"tasks": early + late}).json()["tasks"]
        running_ids = [t["id"] for t in first]
        for task_id in running_ids:
            wait_state(client, task_id, {"running"}, timeout=60)
        pending_body = [{"command": ["true"], "resources": {"cpu": 1}, "labels": {"g": "pending"}}] * PENDING
        pending_ids = [
            t["id"] for t in client.post("/platform/tasks/batch", json={"tasks": pending_body}).json()["tasks"]
        ]
        before = fetch_all(client, running_ids)
        assert all(t["state"] == "running" for t in before.values())
        pids = {i: t["attempts"][0]["pid"] for i, t in before.items()}
        assert client.get(f"/platform/tasks/{pending_ids[0]}").json()["state"] == "pending"

        server.kill9()
        time.sleep(4.5)  # the early ten exit while nobody listens
        server.start()

        for task_id in running_ids + pending_ids:
            wait_state(client, task_id, {"succeeded", "failed", "cancelled", "timed_out"}, timeout=120)
        after = fetch_all(client, running_ids + pending_ids)

    for i, task_id in enumerate(running_ids):
        task = after[task_id]
        assert task["attempt_count"] == 1, f"re-adopted task was restarted: {task}"
        [attempt] = task["attempts"]
        assert attempt["pid"] == pids[task_id], "a different process finished the task"
        expected = 40 + i if i < 10 else (i - 10) % 5
        assert attempt["exit_code"] == expected, task
        assert task["state"] == ("succeeded" if expected == 0 else "failed")
    for task_id in pending_ids:
        task = after[task_id]
        assert task["state"] == "succeeded" and task["attempt_count"] == 1, task
    # Never more than the node's capacity ran at once: check that attempts' intervals never overlap past 50.
    spans = []
    for task in after.values():
        for a in task["attempts"]:
            spans.append((a["started_at"], 1))
            spans.append((a["finished_at"], -1))
    live = peak = 0
    for _, delta in sorted(spans, key=lambda s: (s[0], s[1])):
        live += delta
        peak = max(peak, live)
    assert peak <= RUNNING


def test_kill9_keeps_tenants_reservations_and_quotas(tmp_path, backend_url):
    data = tmp_path / "data"
    settings = {"node_cpu": "4", "node_memory": "8Gi", "kill_grace": "1"}
    with running_server(data, backend_url, **settings) as server, server.client() as client:
        created = client.post(
            "/platform/admin/tenants",
            json={"name": "team", "quota": {"cpu": "2"}, "borrowing": False, "weight": 2},
        )
        assert created.status_code == 201, created.text
        held = client.post(
            "/platform/resources/reserve",
            json={
                "tenant": "team",
                "pool": "default",
                "resources": {"cpu": "1", "memory": "64Mi"},
                "count": 1,
                "duration": "1h",
            },
        )
        assert held.status_code == 201, held.text
        rid = held.json()["id"]
        deadline = time.monotonic() + 20
        while client.get(f"/platform/resources/{rid}").json()["state"] != "active":
            assert time.monotonic() < deadline, client.get(f"/platform/resources/{rid}").json()
            time.sleep(0.05)
        # Quota 2 cores, 1 held by the reservation: one 1-core task at a time outside it.
        body = {"command": ["sleep", "1"], "tenant": "team", "resources": {"cpu": 1, "memory": "64Mi"}}
        ids = [t["id"] for t in client.post("/platform/tasks/batch", json={"tasks": [body] * 4}).json()["tasks"]]
        wait_state(client, ids[0], {"running"}, timeout=30)

        server.kill9()
        server.start()

        tenant = client.get("/platform/admin/tenants/team").json()
        assert tenant["weight"] == 2 and tenant["borrowing"] is False
        assert client.get(f"/platform/resources/{rid}").json()["state"] == "active"
        for task_id in ids:
            wait_state(client, task_id, {"succeeded", "failed", "cancelled", "timed_out"}, timeout=60)
        after = fetch_all(client, ids)
        released = client.delete(f"/platform/resources/{rid}")
        assert released.status_code == 200 and released.json()["state"] == "released"

    assert all(t["state"] == "succeeded" for t in after.values()), after
    spans = []
    for task in after.values():
        for a in task["attempts"]:
            if a["started_at"] and a["finished_at"]:
                spans.append((a["started_at"], 1))
                spans.append((a["finished_at"], -1))
    live = peak = 0
    for _, delta in sorted(spans, key=lambda s: (s[0], s[1])):
        live += delta
        peak = max(peak, live)
    assert peak == 1, "the tenant's quota held across the restart: one task at a time outside the reservation"


def test_kill9_keeps_keys_revocations_roles_bindings_and_their_audit_records(tmp_path, backend_url):
    data = tmp_path / "data"
    with running_server(data, backend_url, node_cpu="2", node_memory="4Gi") as server, server.client() as admin:
        assert admin.post("/platform/admin/tenants", json={"name": "team"}).status_code == 201
        made = admin.post("/platform/admin/tokens", json={"owner": "ci", "tenant": "team", "roles": ["submitter"]})
        assert made.status_code == 201, made.text
        kept, kept_id = made.json()["token"], made.json()["id"]
        doomed = admin.post("/platform/admin/tokens", json={"owner": "old", "tenant": "team", "roles": ["viewer"]})
        doomed_token, doomed_id = doomed.json()["token"], doomed.json()["id"]
        assert admin.delete(f"/platform/admin/tokens/{doomed_id}").status_code == 200
        role = {"name": "reader", "rules": [{"verbs": ["get", "list"], "resources": ["tasks"]}]}
        assert admin.post("/platform/admin/roles", json=role).status_code == 201
        bound = admin.post(
            "/platform/admin/rolebindings", json={"subject": "oidc:alice", "tenant": "team", "role": "reader"}
        )
        assert bound.status_code == 201, bound.text
        acknowledged = [r.headers["x-request-id"] for r in (made, doomed, bound)]

        server.kill9()
        server.start()

        with server.client(token=kept) as ci, server.client(token=doomed_token) as old:
            assert ci.post("/platform/tasks", json={"command": ["true"]}).status_code == 201
            assert old.get("/platform/tasks").status_code == 401
        assert admin.get(f"/platform/admin/tokens/{kept_id}").json()["state"] == "active"
        assert admin.get(f"/platform/admin/tokens/{doomed_id}").json()["state"] == "revoked"
        assert admin.get("/platform/admin/roles/reader").status_code == 200
        subjects = [b["subject"] for b in admin.get("/platform/admin/rolebindings").json()["items"]]
        assert subjects == ["oidc:alice"]
        for request_id in acknowledged:
            records = admin.get("/platform/audit", params={"request_id": request_id}).json()["items"]
            assert len(records) == 1, (request_id, records)
