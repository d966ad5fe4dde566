"""``get``, ``list``, ``cancel``, ``logs`` and ``capacity`` against the scripted API."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from typer.testing import Result

from tests.sdk.fakes import FakeApi, problem, task_json

Run = Callable[..., Result]


def ago(**delta: float) -> str:
    return (datetime.now(UTC) - timedelta(**delta)).isoformat()


def _row(out: str, key: str) -> str:
    """The value of the ``key`` line of a ``get`` block."""
    line = next(line for line in out.splitlines() if line.startswith(key + " "))
    return line.removeprefix(key).strip()


# -- get ----------------------------------------------------------------------------------------------------------


def test_get_shows_state_reason_and_attempts(run: Run, api: FakeApi) -> None:
    attempt = {
        "number": 1,
        "state": "failed",
        "node": "node-a",
        "created_at": ago(minutes=5),
        "started_at": ago(minutes=5),
        "finished_at": ago(minutes=4),
        "exit_code": 3,
        "failure_class": "user",
        "message": "exited with 3",
    }
    reason = {"code": "backoff_until", "message": "retrying after a failure", "until": ago(seconds=-30)}
    task = task_json(
        "t-1",
        "pending",
        name="nightly [build]",
        command=["python", "-c", "print('hi there')"],
        labels={"team": "data"},
        pending_reason=reason,
        queue_position=2,
        attempt_count=1,
        attempts=[attempt],
        created_at=ago(minutes=6),
    )
    api.on("GET", "/platform/tasks/t-1", httpx.Response(200, json=task))

    result = run("get", "t-1")

    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "nightly [build]" in out  # user text is not read as rich markup
    assert "pending" in out
    assert "backoff_until: retrying after a failure" in out
    assert "Queue position  2" in out
    assert "python -c 'print('\"'\"'hi there'\"'\"')'" in out
    assert "team=data" in out
    assert "Attempts" in out
    assert "node-a" in out
    assert "exited with 3" in out
    assert "6m ago" in out


def test_get_json(run: Run, api: FakeApi) -> None:
    api.on("GET", "/platform/tasks/t-1", httpx.Response(200, json=task_json("t-1", "running")))
    result = run("get", "--json", "t-1")
    assert result.exit_code == 0
    assert json.loads(result.stdout)["state"] == "running"


def test_get_shows_the_owner(run: Run, api: FakeApi) -> None:
    api.on("GET", "/platform/tasks/t-1", httpx.Response(200, json=task_json("t-1", owner="oidc:alice")))
    api.on("GET", "/platform/tasks/t-2", httpx.Response(200, json=task_json("t-2", owner=None)))

    shown = run("get", "t-1")
    assert shown.exit_code == 0, shown.output
    assert _row(shown.stdout, "Owner") == "oidc:alice"
    assert _row(run("get", "t-2").stdout, "Owner") == "-"


def test_get_shows_container_options(run: Run, api: FakeApi) -> None:
    container = {
        "privileged": True,
        "host_network": True,
        "host_pid": True,
        "network": True,
        "read_only_root": True,
        "user": "1000:1000",
        "mounts": [
            {"source": "/srv/data", "target": "/data", "read_only": True},
            {"source": "/tmp/out", "target": "/out", "read_only": False},
        ],
    }
    api.on(
        "GET", "/platform/tasks/t-1", httpx.Response(200, json=task_json("t-1", image="alpine:3", container=container))
    )

    result = run("get", "t-1")

    assert result.exit_code == 0, result.output
    assert _row(result.stdout, "Image") == "alpine:3"
    assert _row(result.stdout, "Container") == (
        "network, privileged, host network, host PID, read-only root, user 1000:1000"
    )
    assert _row(result.stdout, "Mounts") == "/srv/data:/data:ro, /tmp/out:/out:rw"
    assert json.loads(run("get", "--json", "t-1").stdout)["container"] == container


def test_get_container_without_network_or_mounts(run: Run, api: FakeApi) -> None:
    task = task_json("t-1", image="alpine:3", container={"read_only_root": True})
    api.on("GET", "/platform/tasks/t-1", httpx.Response(200, json=task))

    result = run("get", "t-1")

    assert result.exit_code == 0, result.output
    assert _row(result.stdout, "Container") == "no network, read-only root"
    assert "Mounts" not in result.stdout


def test_get_without_container_options_shows_none(run: Run, api: FakeApi) -> None:
    api.on("GET", "/platform/tasks/t-1", httpx.Response(200, json=task_json("t-1")))

    result = run("get", "t-1")

    assert result.exit_code == 0, result.output
    assert "Container" not in result.stdout and "Mounts" not in result.stdout


def test_get_missing_task(run: Run, api: FakeApi) -> None:
    api.on("GET", "/platform/tasks/nope", problem(404, "not_found", "task nope not found"))

    result = run("get", "nope")

    assert result.exit_code == 1
    assert result.stdout == ""
    assert result.stderr == "taskplane: error: task nope not found [not_found]\n"


def test_unreachable_server_says_where_it_looked() -> None:
    from typer.testing import CliRunner

    from taskplane.cli.main import create_app

    result = CliRunner().invoke(create_app(), ["--url", "http://127.0.0.1:1", "get", "t-1"])

    assert result.exit_code == 1
    assert result.stderr.startswith("taskplane: error: cannot reach the taskplane server at http://127.0.0.1:1")
    assert "TASKPLANE_URL" in result.stderr
    assert len(result.stderr.splitlines()) == 1


# -- list ---------------------------------------------------------------------------------------------------------


def test_list_table_and_filters(run: Run, api: FakeApi) -> None:
    items = [
        task_json(
            "t-3", "failed", name="etl", exit_code=2, failure_class="user", attempt_count=2, created_at=ago(hours=3)
        ),
        task_json("t-2", "pending", pending_reason={"code": "quota_exhausted", "message": "", "resource": "cpu"}),
    ]
    api.on("GET", "/platform/tasks", httpx.Response(200, json={"items": items, "next_cursor": "next"}))

    result = run("list", "--state", "failed", "--state", "pending", "--label", "team=data", "--limit", "2")

    assert result.exit_code == 0, result.output
    assert api.last.url.params.multi_items() == [
        ("state", "failed"),
        ("state", "pending"),
        ("label", "team=data"),
        ("limit", "2"),
    ]
    header, first, second = result.stdout.splitlines()
    assert header.split() == ["ID", "NAME", "STATE", "POOL", "AGE", "ATTEMPTS", "EXIT", "REASON"]
    assert first.split() == ["t-3", "etl", "failed", "default", "3h", "2", "2", "user"]
    assert second.split()[0] == "t-2"
    assert "quota_exhausted(cpu)" in second
    assert "--cursor next" in result.stderr


def test_list_all_follows_cursors(run: Run, api: FakeApi) -> None:
    pages = {
        None: {"items": [task_json("t-2")], "next_cursor": "p2"},
        "p2": {"items": [task_json("t-1")], "next_cursor": None},
    }
    api.on("GET", "/platform/tasks", lambda r: httpx.Response(200, json=pages[r.url.params.get("cursor")]))

    result = run("--json", "list", "--all")

    assert result.exit_code == 0, result.output
    body = json.loads(result.stdout)
    assert [t["id"] for t in body["items"]] == ["t-2", "t-1"]
    assert body["next_cursor"] is None


def test_list_rejects_an_unknown_state(run: Run, api: FakeApi) -> None:
    result = run("list", "--state", "sleeping")
    assert result.exit_code == 2
    assert "--state" in result.stderr
    assert api.requests == []


def test_list_nothing(run: Run, api: FakeApi) -> None:
    api.on("GET", "/platform/tasks", httpx.Response(200, json={"items": [], "next_cursor": None}))
    result = run("list")
    assert result.exit_code == 0
    assert result.stdout == ""
    assert result.stderr == "no tasks\n"


# -- cancel -------------------------------------------------------------------------------------------------------


def test_cancel_many_reports_each(run: Run, api: FakeApi) -> None:
    api.on("PUT", "/platform/tasks/t-1/cancel", httpx.Response(202, json=task_json("t-1", "cancelling")))
    api.on(
        "PUT",
        "/platform/tasks/t-2/cancel",
        problem(409, "invalid_state", "task is already succeeded", state="succeeded"),
    )
    api.on("PUT", "/platform/tasks/t-3/cancel", httpx.Response(202, json=task_json("t-3", "cancelled")))

    result = run("cancel", "t-1", "t-2", "t-3")

    assert result.exit_code == 1
    assert result.stdout == "t-1 cancelling\nt-3 cancelled\n"
    assert result.stderr == "t-2: task is already succeeded [invalid_state]\n"


def test_cancel_json(run: Run, api: FakeApi) -> None:
    api.on("PUT", "/platform/tasks/t-1/cancel", httpx.Response(202, json=task_json("t-1", "cancelling")))
    result = run("cancel", "--json", "t-1")
    assert result.exit_code == 0
    assert [t["state"] for t in json.loads(result.stdout)] == ["cancelling"]


# -- logs ---------------------------------------------------------------------------------------------------------


def test_logs_writes_raw_bytes(run: Run, api: FakeApi) -> None:
    api.on("GET", "/platform/tasks/t-1/logs", httpx.Response(200, content=b"caf\xc3\xa9 \xff\x00\n"))

    result = run("logs", "t-1", "--stderr", "--attempt", "2")

    assert result.exit_code == 0
    assert result.stdout_bytes == b"caf\xc3\xa9 \xff\x00\n"
    assert api.last.url.params.multi_items() == [("stream", "stderr"), ("follow", "false"), ("attempt", "2")]


def test_logs_follow_streams_until_the_end(run: Run, api: FakeApi) -> None:
    def chunks() -> Iterator[bytes]:
        yield b"line 1\n"
        yield b"line 2\n"

    api.on("GET", "/platform/tasks/t-1/logs", lambda r: httpx.Response(200, content=chunks()))

    result = run("logs", "-f", "t-1")

    assert result.exit_code == 0
    assert result.stdout_bytes == b"line 1\nline 2\n"
    assert api.last.url.params["follow"] == "true"


def test_logs_of_a_missing_task(run: Run, api: FakeApi) -> None:
    api.on("GET", "/platform/tasks/x/logs", problem(404, "not_found", "task x not found"))
    result = run("logs", "-f", "x")
    assert result.exit_code == 1
    assert result.stderr == "taskplane: error: task x not found [not_found]\n"


# -- capacity -----------------------------------------------------------------------------------------------------


@pytest.fixture
def capacity(api: FakeApi) -> dict[str, object]:
    def res(cpu: int, gib: int) -> dict[str, object]:
        return {
            "cpu": str(cpu),
            "memory": f"{gib}Gi",
            "gpu": 0,
            "millicpu": cpu * 1000,
            "memory_bytes": gib << 30,
            "extended": {},
        }

    node = {
        "node": "node-a",
        "executor": "local",
        "total": res(8, 16),
        "allocated": res(2, 4),
        "free": res(6, 12),
        "running_tasks": 2,
        "max_tasks": 512,
        "cgroups": "none",
        "warnings": ["cgroups unavailable: memory limits are not enforced"],
    }
    body = {
        "nodes": [node],
        "total": res(8, 16),
        "allocated": res(2, 4),
        "free": res(6, 12),
        "pending_tasks": 5,
        "running_tasks": 2,
    }
    api.on("GET", "/platform/capacity", httpx.Response(200, json=body))
    return body


def test_capacity_table(run: Run, capacity: dict[str, object]) -> None:
    result = run("capacity")

    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].split()[:2] == ["NODE", "EXECUTOR"]
    assert "node-a" in lines[1] and "6 / 8" in lines[1] and "12Gi / 16Gi" in lines[1] and "2 / 512" in lines[1]
    assert "memory limits are not enforced" in lines[1]
    assert any(line.startswith("total") for line in lines)
    assert lines[-1] == "2 running, 5 pending"


def test_capacity_json(run: Run, capacity: dict[str, object]) -> None:
    result = run("capacity", "--json")
    assert json.loads(result.stdout) == capacity


def test_version(run: Run) -> None:
    result = run("--version")
    assert result.exit_code == 0
    assert result.stdout.startswith("taskplane ")


def test_human_bytes() -> None:
    from taskplane.cli.render import human_bytes

    assert [human_bytes(n) for n in (100, 1536, 256 << 20, 24683656 << 10, 3 << 40)] == [
        "100",
        "1.5Ki",
        "256Mi",
        "23.5Gi",
        "3Ti",
    ]


def test_a_cancelled_task_says_why_once(run: Run, api: FakeApi) -> None:
    task = task_json("t-1", "cancelled", failure_class="cancelled", message="cancelled")
    api.on("GET", "/platform/tasks", httpx.Response(200, json={"items": [task]}))
    result = run("list")
    assert result.stdout.splitlines()[1].split()[-1] == "cancelled"
    assert "cancelled: cancelled" not in result.stdout
