"""``taskplane wait ID...``: concurrent long polls, one line per task, exit 0 only if all succeeded."""

from __future__ import annotations

import json
from collections.abc import Callable

import httpx
from typer.testing import Result

from tests.sdk.fakes import FakeApi, problem, task_json

Run = Callable[..., Result]


def test_all_succeeded(run: Run, api: FakeApi) -> None:
    api.on(
        "GET",
        "/platform/tasks/a/wait",
        [httpx.Response(200, json=task_json("a", "running")), httpx.Response(200, json=task_json("a", "succeeded"))],
    )
    api.on("GET", "/platform/tasks/b/wait", httpx.Response(200, json=task_json("b", "succeeded", exit_code=0)))

    result = run("wait", "a", "b", "a")

    assert result.exit_code == 0, result.output
    assert result.stdout == "a succeeded\nb succeeded (exit 0)\n"
    assert sorted(r.url.path for r in api.requests) == [
        "/platform/tasks/a/wait",
        "/platform/tasks/a/wait",
        "/platform/tasks/b/wait",
    ]


def test_one_failure_or_missing_task_exits_1(run: Run, api: FakeApi) -> None:
    api.on("GET", "/platform/tasks/a/wait", httpx.Response(200, json=task_json("a", "succeeded")))
    api.on("GET", "/platform/tasks/b/wait", httpx.Response(200, json=task_json("b", "failed", exit_code=7)))
    api.on("GET", "/platform/tasks/c/wait", problem(404, "not_found", "task c not found"))

    result = run("wait", "a", "b", "c")

    assert result.exit_code == 1
    assert result.stdout == "a succeeded\nb failed (exit 7)\n"
    assert result.stderr == "c: task c not found [not_found]\n"


def test_timeout_gives_up_and_exits_1(run: Run, api: FakeApi) -> None:
    api.on("GET", "/platform/tasks/a/wait", httpx.Response(200, json=task_json("a", "pending")))

    result = run("wait", "--timeout", "0", "a")

    assert result.exit_code == 1
    assert result.stdout == "a still pending (gave up waiting)\n"
    assert api.last.url.params["timeout"] == "0"


def test_json_lists_the_tasks(run: Run, api: FakeApi) -> None:
    api.on("GET", "/platform/tasks/a/wait", httpx.Response(200, json=task_json("a", "succeeded")))
    api.on("GET", "/platform/tasks/b/wait", httpx.Response(200, json=task_json("b", "cancelled")))

    result = run("wait", "--json", "a", "b")

    assert result.exit_code == 1
    assert [(t["id"], t["state"]) for t in json.loads(result.stdout)] == [("a", "succeeded"), ("b", "cancelled")]
