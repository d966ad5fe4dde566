"""Container tasks end to end: a real server with a podman pool, over HTTP, through a kill -9 and a restart.

The server has two pools: ``default`` (local processes) and ``containers`` (podman on this machine, with this
machine's flags from ``tests/support/images.py``). Every container of the server's instance is removed at the end,
and none may be left running by the tests themselves.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.images import GLOBAL_ARGS, RUN_ARGS, containers_of, remove_containers_of
from tests.support.server import ServerProcess

from .conftest import running_server
from .helpers import assert_problem, submit, wait_done, wait_state

pytestmark = [pytest.mark.timeout(180), pytest.mark.slow]

POOLS = [
    {"name": "default", "executor": "local"},
    {
        "name": "containers",
        "executor": "podman",
        "podman": {"global_args": list(GLOBAL_ARGS), "run_args": list(RUN_ARGS), "cpu": "4", "memory": "8Gi"},
    },
]


@pytest.fixture(scope="module")
def instance() -> str:
    return f"e2e{uuid.uuid4().hex[:10]}"


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("podman-e2e")


@pytest.fixture(scope="module")
def server(data_dir: Path, instance: str, podman_image: str) -> Iterator[ServerProcess]:
    try:
        with running_server(data_dir, kill_grace="2", log_limit="1Mi", instance=instance, pools=json.dumps(POOLS)) as s:
            yield s
    finally:
        remove_containers_of(instance)


def test_container_task_succeeds_with_its_logs(server: ServerProcess, podman_image: str) -> None:
    with server.client() as client:
        task = submit(
            client,
            ["sh", "-c", 'echo "hello $WHO"; echo warn >&2; id -u'],
            image=podman_image,
            pool="containers",
            env={"WHO": "container"},
        )
        done = wait_done(client, task["id"], timeout=60)
        assert done["state"] == "succeeded", done
        logs = client.get(f"/platform/tasks/{task['id']}/logs")
        assert logs.content == b"hello container\n65534\n"
        assert client.get(f"/platform/tasks/{task['id']}/logs", params={"stream": "stderr"}).content == b"warn\n"


def test_container_exit_code_is_a_failure(server: ServerProcess, podman_image: str) -> None:
    with server.client() as client:
        task = submit(client, ["sh", "-c", "exit 3"], image=podman_image, pool="containers")
        done = wait_done(client, task["id"], timeout=60)
        assert done["state"] == "failed" and done["attempts"][-1]["exit_code"] == 3, done


def test_kill9_restart_readopts_a_running_container(server: ServerProcess, podman_image: str, instance: str) -> None:
    with server.client() as client:
        task = submit(
            client, ["sh", "-c", "echo begun; sleep 6; echo ended; exit 9"], image=podman_image, pool="containers"
        )
        wait_state(client, task["id"], {"running"}, timeout=60)
        server.kill9()
        assert containers_of(instance)  # the container outlives the server
        server.start()
        done = wait_done(client, task["id"], timeout=90)
        assert done["attempt_count"] == 1, f"re-run instead of re-adopted: {done}"
        assert done["state"] == "failed" and done["attempts"][0]["exit_code"] == 9, done
        assert client.get(f"/platform/tasks/{task['id']}/logs").content == b"begun\nended\n"


def test_image_with_a_shell_payload_is_refused(server: ServerProcess) -> None:
    with server.client() as client:
        resp = client.post(
            "/platform/tasks", json={"command": ["true"], "image": "busybox; rm -rf /", "pool": "containers"}
        )
        assert_problem(resp, 422, "invalid_image")


def test_image_on_the_local_pool_is_refused(server: ServerProcess, podman_image: str) -> None:
    with server.client() as client:
        resp = client.post("/platform/tasks", json={"command": ["true"], "image": podman_image, "pool": "default"})
        assert_problem(resp, 422, "image_not_supported")


def test_no_container_is_left_once_tasks_are_done(server: ServerProcess, instance: str) -> None:
    # Every earlier task has ended and its exit was recorded: the engine acked it, so its container is gone.
    with server.client() as client:
        assert client.get("/readyz").status_code == 200
    deadline = time.monotonic() + 30
    while containers_of(instance) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert containers_of(instance) == []
