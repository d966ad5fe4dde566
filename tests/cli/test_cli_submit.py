"""``taskplane submit``: flags become the right TaskSubmit; --wait exits with the task's code."""

from __future__ import annotations

import json
from collections.abc import Callable

import httpx
import pytest
from typer.testing import Result

from tests.sdk.fakes import FakeApi, problem, task_json

Run = Callable[..., Result]


@pytest.fixture
def accepts(api: FakeApi) -> FakeApi:
    api.on("POST", "/platform/tasks", httpx.Response(201, json=task_json("t-42")))
    return api


def sent(api: FakeApi) -> dict[str, object]:
    return json.loads(api.requests[0].content)


def test_resources_and_timeout_flags(run: Run, accepts: FakeApi) -> None:
    result = run("submit", "--cpu", "500m", "--memory", "256Mi", "--timeout", "30s", "--", "python", "-c", "print(1)")

    assert result.exit_code == 0, result.output
    assert result.stdout == "t-42\n"
    assert sent(accepts) == {
        "command": ["python", "-c", "print(1)"],
        "resources": {"cpu": "500m", "memory": "256Mi"},
        "timeouts": {"run": "30s"},
    }


def test_every_flag(run: Run, accepts: FakeApi) -> None:
    result = run(
        "submit",
        "--gpu", "1",
        "--queue-timeout", "5m",
        "--deadline", "2030-01-01T00:00:00Z",
        "--retries", "3",
        "--backoff", "2s",
        "--priority", "10",
        "--tenant", "team-a",
        "--label", "a=b",
        "--label", "c=d=e",
        "--env", "X=1",
        "--env", "EMPTY=",
        "--name", "nightly",
        "--workdir", "build",
        "--image", "python:3.12",
        "--shell",
        "--idempotency-key", "nightly-2030-01-01",
        "--",
        "make test | tee out",
    )  # fmt: skip

    assert result.exit_code == 0, result.output
    assert sent(accepts) == {
        "command": ["make test | tee out"],
        "shell": True,
        "resources": {"gpu": 1},
        "timeouts": {"queue": "5m", "deadline": "2030-01-01T00:00:00Z"},
        "retry": {"max_attempts": 4, "backoff": "2s"},
        "priority": 10,
        "tenant": "team-a",
        "labels": {"a": "b", "c": "d=e"},
        "env": {"X": "1", "EMPTY": ""},
        "name": "nightly",
        "workdir": "build",
        "image": "python:3.12",
    }
    assert accepts.requests[0].headers["idempotency-key"] == "nightly-2030-01-01"


# -- container options ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "container"),
    [
        (["--privileged"], {"privileged": True}),
        (["--host-network"], {"host_network": True}),
        (["--host-pid"], {"host_pid": True}),
        (["--network"], {"network": True}),
        (["--read-only-root"], {"read_only_root": True}),
        (["--user", "1000"], {"user": "1000"}),
        (["--user", "1000:100"], {"user": "1000:100"}),
        (["--user", "nobody"], {"user": "nobody"}),
        (["--mount", "/srv/data:/data"], {"mounts": [{"source": "/srv/data", "target": "/data", "read_only": True}]}),
        (
            ["--mount", "/srv/data:/data:ro"],
            {"mounts": [{"source": "/srv/data", "target": "/data", "read_only": True}]},
        ),
        (["--mount", "/tmp/out:/out:rw"], {"mounts": [{"source": "/tmp/out", "target": "/out", "read_only": False}]}),
    ],
)
def test_each_container_flag_is_sent_alone(
    run: Run, accepts: FakeApi, args: list[str], container: dict[str, object]
) -> None:
    result = run("submit", "--image", "alpine:3", *args, "--", "true")

    assert result.exit_code == 0, result.output
    assert sent(accepts) == {"command": ["true"], "image": "alpine:3", "container": container}


def test_every_container_flag(run: Run, accepts: FakeApi) -> None:
    result = run(
        "submit", "--image", "alpine:3",
        "--privileged", "--host-network", "--host-pid", "--network", "--read-only-root", "--user", "1000:1000",
        "--mount", "/srv/data:/data", "--mount", "/tmp/out:/out:rw",
        "--", "true",
    )  # fmt: skip

    assert result.exit_code == 0, result.output
    assert sent(accepts)["container"] == {
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


def test_no_container_flag_sends_no_container(run: Run, accepts: FakeApi) -> None:
    result = run("submit", "--image", "alpine:3", "--", "true")

    assert result.exit_code == 0, result.output
    assert "container" not in sent(accepts)


@pytest.mark.parametrize(
    ("args", "flag"),
    [
        (["--privileged"], "--privileged"),
        (["--network", "--host-pid"], "--host-pid"),
        (["--mount", "/a:/b"], "--mount"),
        (["--user", "1000"], "--user"),
    ],
)
def test_container_flags_need_an_image(run: Run, api: FakeApi, args: list[str], flag: str) -> None:
    result = run("submit", *args, "--", "true")

    assert result.exit_code == 2, result.output
    assert f"Invalid value for '{flag}': container options need --image" in result.stderr
    assert api.requests == []


@pytest.mark.parametrize(
    ("args", "flag"),
    [
        (["--mount", "/srv/data"], "--mount"),
        (["--mount", ":/data"], "--mount"),
        (["--mount", "/srv/data:"], "--mount"),
        (["--mount", "/srv/data:/data:rx"], "--mount"),
        (["--mount", "/a:/b:ro:rw"], "--mount"),
        (["--user", "1000:"], "--user"),
        (["--user", "Root User"], "--user"),
        (["--mount", "/a:/b"] * 33, "--mount"),
    ],
)
def test_bad_container_flags(run: Run, api: FakeApi, args: list[str], flag: str) -> None:
    result = run("submit", "--image", "alpine:3", *args, "--", "true")

    assert result.exit_code == 2, result.output
    assert len(result.stderr.splitlines()) == 1, result.stderr
    assert f"Invalid value for '{flag}'" in result.stderr
    assert api.requests == []


def test_policy_refusal_is_one_line(run: Run, api: FakeApi) -> None:
    refusal = problem(
        403,
        "policy_forbidden",
        "tenant team-a's policy does not allow container.privileged",
        field="container.privileged",
    )
    api.on("POST", "/platform/tasks", refusal)

    result = run("submit", "--tenant", "team-a", "--image", "alpine:3", "--privileged", "--", "true")

    assert result.exit_code == 1
    assert result.stderr == (
        "taskplane: error: tenant team-a's policy does not allow container.privileged [policy_forbidden]\n"
    )


def test_options_end_at_the_command(run: Run, accepts: FakeApi) -> None:
    result = run("submit", "--cpu", "1", "grep", "-r", "--wait", "x")

    assert result.exit_code == 0, result.output
    assert sent(accepts)["command"] == ["grep", "-r", "--wait", "x"]
    assert len(accepts.requests) == 1  # --wait belonged to the command


def test_json_output_is_the_task(run: Run, accepts: FakeApi) -> None:
    for args in (("--json", "submit", "true"), ("submit", "--json", "true")):
        result = run(*args)
        assert result.exit_code == 0, result.output
        assert json.loads(result.stdout)["id"] == "t-42"


def test_url_and_token_flags_reach_the_client(run: Run, accepts: FakeApi) -> None:
    accepts.on("POST", "/platform/tasks", httpx.Response(201, json=task_json("t-1")))
    result = run("--url", "http://elsewhere:1234", "--token", "tok", "submit", "true")
    assert result.exit_code == 0, result.output
    assert str(accepts.last.url) == "http://elsewhere:1234/platform/tasks"
    assert accepts.last.headers["authorization"] == "Bearer tok"


def test_url_and_token_from_the_environment(run: Run, accepts: FakeApi) -> None:
    result = run("submit", "true", env={"TASKPLANE_URL": "http://env:1", "TASKPLANE_TOKEN": "t0k"})
    assert result.exit_code == 0, result.output
    assert str(accepts.last.url) == "http://env:1/platform/tasks"
    assert accepts.last.headers["authorization"] == "Bearer t0k"


@pytest.mark.parametrize(
    ("args", "flag"),
    [
        (["--cpu", "abc"], "--cpu"),
        (["--cpu", "-1"], "--cpu"),
        (["--memory", "12Q"], "--memory"),
        (["--timeout", "0"], "--timeout"),
        (["--timeout", "soon"], "--timeout"),
        (["--queue-timeout", "5 minutes"], "--queue-timeout"),
        (["--backoff", "x"], "--backoff"),
        (["--deadline", "2030-01-01T00:00:00"], "--deadline"),
        (["--deadline", "tomorrow"], "--deadline"),
        (["--label", "novalue"], "--label"),
        (["--env", "=1"], "--env"),
        (["--tenant", "Bad_Tenant"], "--tenant"),
        (["--retries", "-1"], "--retries"),
        (["--retries", "100"], "--retries"),
        (["--priority", "5000"], "--priority"),
        (["--gpu", "two"], "--gpu"),
        (["--no-such-flag"], "--no-such-flag"),
    ],
)
def test_bad_flags_are_one_line_usage_errors(run: Run, api: FakeApi, args: list[str], flag: str) -> None:
    result = run("submit", *args, "--", "true")

    assert result.exit_code == 2
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("taskplane submit: error: ")
    assert flag in lines[0]
    assert "Traceback" not in result.stderr
    assert api.requests == []


def test_missing_command_is_a_usage_error(run: Run, api: FakeApi) -> None:
    result = run("submit", "--cpu", "1")
    assert result.exit_code == 2
    assert result.stderr.startswith("taskplane submit: error: Missing argument")
    assert api.requests == []


def test_api_refusal_is_one_line_and_exit_1(run: Run, api: FakeApi) -> None:
    api.on("POST", "/platform/tasks", problem(422, "unschedulable", "cpu 64 is more than any node has (8)"))

    result = run("submit", "--cpu", "64", "true")

    assert result.exit_code == 1
    assert result.stderr == "taskplane: error: cpu 64 is more than any node has (8) [unschedulable]\n"


# -- --wait -----------------------------------------------------------------------------------------------------


def _attempt(signal: int | None) -> dict[str, object]:
    return {"number": 1, "state": "failed", "node": "n1", "created_at": "2024-05-01T12:00:00Z", "signal": signal}


@pytest.mark.parametrize(
    ("final", "code"),
    [
        ({"state": "succeeded", "exit_code": 0}, 0),
        ({"state": "failed", "exit_code": 3, "failure_class": "user"}, 3),
        ({"state": "failed", "exit_code": None, "failure_class": "infra", "attempts": []}, 1),
        ({"state": "failed", "exit_code": None, "attempts": [_attempt(9)]}, 137),
        ({"state": "timed_out", "failure_class": "timeout"}, 124),
        ({"state": "cancelled", "failure_class": "cancelled"}, 130),
    ],
)
def test_wait_exits_with_the_task_code(run: Run, accepts: FakeApi, final: dict[str, object], code: int) -> None:
    accepts.on(
        "GET",
        "/platform/tasks/t-42/wait",
        [httpx.Response(200, json=task_json("t-42", "running")), httpx.Response(200, json=task_json("t-42", **final))],
    )

    result = run("submit", "--wait", "--", "sh", "-c", "exit 3")

    assert result.exit_code == code, result.output
    assert result.stdout.startswith(f"t-42 {final['state']}")
    assert result.stderr == "submitted t-42; waiting for it to end\n"


def test_wait_reads_attempts_to_find_a_signal(run: Run, accepts: FakeApi) -> None:
    accepts.on("GET", "/platform/tasks/t-42/wait", httpx.Response(200, json=task_json("t-42", "failed")))
    accepts.on(
        "GET", "/platform/tasks/t-42", httpx.Response(200, json=task_json("t-42", "failed", attempts=[_attempt(15)]))
    )

    result = run("submit", "--wait", "true")

    assert result.exit_code == 128 + 15
    assert [r.url.path for r in accepts.requests][-1] == "/platform/tasks/t-42"


def test_wait_json_prints_the_final_task_only(run: Run, accepts: FakeApi) -> None:
    accepts.on("GET", "/platform/tasks/t-42/wait", httpx.Response(200, json=task_json("t-42", "failed", exit_code=2)))

    result = run("--json", "submit", "--wait", "false")

    assert result.exit_code == 2
    assert json.loads(result.stdout)["exit_code"] == 2
    assert result.stderr == ""
