"""A real taskplane server whose ``k8s`` pool talks HTTP to the Kubernetes API double on loopback.

The double's kubelet runs each pod's command as a process on this machine, so a task submitted over HTTP with
an image goes through the whole path: admission, the executor's Job, the double's Job controller and kubelet,
the watch, the log copy, and back.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.e2e.conftest import running_server
from tests.e2e.helpers import assert_problem, submit, wait_done, wait_state
from tests.support.kubeapi import KubeApiDouble
from tests.support.kubeapi.server import ServedDouble, serve_in_thread
from tests.support.server import ServerProcess


@pytest.fixture(scope="module")
def api_double(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServedDouble]:
    """The double over loopback HTTP, with one 4-core node."""
    double = KubeApiDouble()
    with serve_in_thread(double, tmp_path_factory.mktemp("kube") / "kubeconfig") as served:
        served.call(lambda: double.cluster.add_node("node-a", cpu="4", memory="8Gi"))
        yield served


@pytest.fixture(scope="module")
def kube_server(tmp_path_factory: pytest.TempPathFactory, api_double: ServedDouble) -> Iterator[ServerProcess]:
    """A server with a local ``default`` pool and a ``k8s`` pool on the double."""
    pools = [
        {"name": "default", "executor": "local"},
        {"name": "k8s", "executor": "kubernetes", "kubernetes": {"kubeconfig": str(api_double.kubeconfig)}},
    ]
    with running_server(tmp_path_factory.mktemp("server"), pools=json.dumps(pools), kill_grace="2") as s:
        yield s


def test_a_task_runs_as_a_job_and_its_logs_come_back(kube_server: ServerProcess, api_double: ServedDouble) -> None:
    with kube_server.client() as client:
        task = submit(client, ["sh", "-c", "echo hello from the pod; exit 0"], image="busybox:1.36", pool="k8s")
        done = wait_done(client, task["id"], timeout=60)
        assert done["state"] == "succeeded", done
        logs = client.get(f"/platform/tasks/{task['id']}/logs")
        assert logs.status_code == 200
        assert logs.text == "hello from the pod\n"
        metrics = client.get("/metrics")
        assert metrics.status_code == 200
        counted = re.search(r'^taskplane_pod_startup_seconds_count\{pool="k8s"\} (\S+)$', metrics.text, re.M)
        assert counted is not None and float(counted.group(1)) >= 1  # this pod's startup, served by /metrics
    jobs = api_double.call(lambda: api_double.double.objects("jobs"))
    names = {j["metadata"]["name"] for j in jobs}
    assert f"tp-{task['id']}-1" not in names  # acked: deleted
    posted = api_double.call(lambda: list(api_double.double.requests))
    assert ("POST", "/apis/batch/v1/namespaces/tp-default/jobs") in posted


def test_a_failing_task_fails_with_its_exit_code(kube_server: ServerProcess) -> None:
    with kube_server.client() as client:
        task = submit(client, ["sh", "-c", "exit 7"], image="busybox:1.36", pool="k8s", retry={"max_attempts": 1})
        done = wait_done(client, task["id"], timeout=60)
        assert done["state"] == "failed", done
        assert done["attempt_count"] == 1 and done["exit_code"] == 7 and done["failure_class"] == "user", done


@pytest.mark.parametrize(
    "container",
    [{"privileged": True}, {"host_network": True}, {"host_pid": True}, {"user": "0"}],
    ids=["privileged", "host-network", "host-pid", "root"],
)
def test_host_access_is_refused_on_kubernetes(kube_server: ServerProcess, container: dict[str, object]) -> None:
    """Even for a tenant whose policy allows it all: the namespaces enforce the restricted standard."""
    with kube_server.client() as client:
        _trusted_tenant(client)
        resp = client.post(
            "/platform/tasks",
            json={
                "command": ["true"],
                "image": "busybox:1.36",
                "pool": "k8s",
                "tenant": "trusted",
                "container": container,
            },
        )
        assert_problem(resp, 422, "host_access_not_supported")


def test_network_when_the_tenant_allows_it(kube_server: ServerProcess, api_double: ServedDouble) -> None:
    with kube_server.client() as client:
        _trusted_tenant(client)
        task = submit(
            client,
            ["true"],
            image="busybox:1.36",
            pool="k8s",
            tenant="trusted",
            container={"network": True, "user": "1000:1000"},
        )
        assert wait_done(client, task["id"], timeout=60)["state"] == "succeeded"
    posted = api_double.call(lambda: list(api_double.double.requests))
    assert ("POST", "/apis/batch/v1/namespaces/tp-trusted/jobs") in posted
    policies = api_double.call(lambda: api_double.double.objects("networkpolicies", "tp-trusted"))
    assert {p["metadata"]["name"] for p in policies} == {"taskplane-default-deny", "taskplane-allow-egress"}


def _trusted_tenant(client: httpx.Client) -> None:
    allow = {"allow_privileged": True, "allow_host_network": True, "allow_host_pid": True, "allow_network": True}
    resp = client.post("/platform/admin/tenants", json={"name": "trusted", "policy": allow})
    assert resp.status_code in (201, 409), resp.text


def test_no_api_server_means_the_server_does_not_start(tmp_path: Path) -> None:
    kubeconfig = tmp_path / "kubeconfig"
    from tests.support.kubeapi.server import write_kubeconfig

    write_kubeconfig(kubeconfig, "http://127.0.0.1:9")
    pools = [{"name": "k8s", "executor": "kubernetes", "kubernetes": {"kubeconfig": str(kubeconfig)}}]
    server = ServerProcess(tmp_path / "data", pools=json.dumps(pools))
    with pytest.raises(RuntimeError, match="unreachable"):
        server.start(timeout=60)
    server.stop()


def test_cancel_deletes_the_job(kube_server: ServerProcess, api_double: ServedDouble) -> None:
    with kube_server.client() as client:
        task = submit(client, ["sh", "-c", "echo started; sleep 60"], image="busybox:1.36", pool="k8s")
        wait_state(client, task["id"], {"running"}, timeout=60)
        assert client.put(f"/platform/tasks/{task['id']}/cancel").status_code == 202
        done = wait_done(client, task["id"], timeout=60)
        assert done["state"] == "cancelled", done
    job = f"tp-{task['id']}-1"
    assert api_double.call(lambda: [j for j in api_double.double.objects("jobs") if j["metadata"]["name"] == job]) == []
    deletes = api_double.call(lambda: [p for m, p in api_double.double.requests if m == "DELETE"])
    assert f"/apis/batch/v1/namespaces/tp-default/jobs/{job}" in deletes
