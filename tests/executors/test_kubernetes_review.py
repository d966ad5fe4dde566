"""Review tests for the Kubernetes executor: correctness under failure (watch gaps, lag, ambiguous writes, stops)."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Awaitable, Callable
from typing import Any

import httpx2
import pytest

from taskplane.domain.outcome import classify
from taskplane.domain.resources import Resources
from taskplane.domain.task import FailureClass
from taskplane.services.ports import Exited, LogStream, Started
from tests.support.kubeapi import KubeApiDouble
from tests.support.kubeapi.harness import KubeHarness, KubeRecorder, kube_launch
from tests.support.kubeapi.transport import StreamingASGITransport

NS = "tp-acme"
JOBS = "/apis/batch/v1/jobs"
PODS = "/api/v1/pods"


class WatchGate:
    """Holds watch requests on some paths (the executor's stream is cut and cannot reconnect) until opened."""

    def __init__(self, double: KubeApiDouble, paths: set[str]) -> None:
        self.open = asyncio.Event()
        self.paths = paths
        self.held = 0
        inner = double.app.app

        async def app(scope: Any, receive: Callable[[], Awaitable[Any]], send: Any) -> None:
            query = scope.get("query_string", b"")
            if scope["type"] == "http" and scope["path"] in self.paths and b"watch=true" in query:
                self.held += 1
                await self.open.wait()
            await inner(scope, receive, send)

        double.app.app = app  # type: ignore[assignment]

    @staticmethod
    def cut(double: KubeApiDouble, kind: str | None = None) -> None:
        """End the open watch streams (of ``kind``: ``jobs``/``pods``, or all)."""
        for watcher in list(double.store.watchers):
            if kind is None or watcher.kind == kind:
                watcher.queue.put_nowait(None)


def _lists(double: KubeApiDouble, path: str) -> int:
    return sum(
        1
        for (m, p), q in zip(double.requests, double.app.queries, strict=True)
        if m == "GET" and p == path and "watch=true" not in q
    )


# ------------------------------------------------------------------------------------ watch gaps


async def test_a_job_created_and_deleted_during_a_watch_gap_still_exits(kube: KubeHarness) -> None:
    """The create's answer says the Job exists: a re-list that no longer finds it must report it gone."""
    ex, rec = await kube.opened()
    gate = WatchGate(kube.double, {JOBS, PODS})
    WatchGate.cut(kube.double)
    await kube.until(lambda: gate.held >= 2)  # both streams are trying to reconnect
    await ex.start([kube_launch("gap", "sleep 30")])
    assert kube.job("tp-gap-1") is not None
    kube.double.cluster.delete_job(NS, "tp-gap-1", "Background", None)  # someone else deletes it
    kube.double.store.compact()  # the executor's revision is gone: it must re-list
    lists = _lists(kube.double, JOBS)
    gate.open.set()
    await kube.until(lambda: _lists(kube.double, JOBS) > lists)
    (ev,) = await rec.exits("gap", timeout=10)
    assert ev.outcome.lost is not None and classify(ev.outcome) is FailureClass.INFRA


async def test_a_lagging_pod_watch_gives_started_before_exited_and_the_whole_log(kube: KubeHarness) -> None:
    """The Job ends before any pod event arrived: Started must precede Exited, and the log must be copied."""
    ex, rec = await kube.opened()
    gate = WatchGate(kube.double, {PODS})
    WatchGate.cut(kube.double, "pods")
    await kube.until(lambda: gate.held >= 1)
    await ex.start([kube_launch("lag", "echo hello; exit 3")])
    (ev,) = await rec.exits("lag")
    assert ev.outcome.exit_code == 3
    log_file = ex.log_path("lag", 1, LogStream.STDOUT)
    assert log_file.exists() and log_file.read_bytes() == b"hello\n"  # complete when the exit is reported
    gate.open.set()
    # The pod stream replays what it missed, in order: once a later attempt's Started came through it, the
    # lagging attempt's pod events were handled.
    await ex.start([kube_launch("probe", "true")])
    await rec.starts("probe")
    kinds = [type(e).__name__ for e in rec.events if (e.task_id, e.attempt) == ("lag", 1)]
    assert kinds == ["Started", "Exited"]


# ------------------------------------------------------------------------------------- creating


async def test_a_create_whose_answer_was_lost_is_not_an_orphan(kube: KubeHarness, monkeypatch: Any) -> None:
    """The POST committed but the answer never came (timeout): the Job runs, so it must be the attempt."""
    real = StreamingASGITransport.handle_async_request
    failed: list[str] = []

    async def flaky(self: StreamingASGITransport, request: httpx2.Request) -> httpx2.Response:
        response = await real(self, request)
        if request.method == "POST" and request.url.path.endswith("/jobs") and not failed:
            failed.append(request.url.path)
            await response.aclose()
            raise httpx2.ReadTimeout("the answer was lost", request=request)
        return response

    monkeypatch.setattr(StreamingASGITransport, "handle_async_request", flaky)
    ex, rec = await kube.opened()
    await ex.start([kube_launch("amb", "echo ran; exit 0")])
    assert failed  # the first create's answer was lost, after the Job was created
    (ev,) = await rec.exits("amb")
    if ev.outcome.spawn_error is None:  # adopted: the attempt is the Job that ran
        assert ev.outcome.exit_code == 0
    else:  # refused: then no Job of that attempt may be left running its task
        await kube.until(lambda: kube.job("tp-amb-1") is None)


async def test_start_after_a_restart_adopts_the_existing_job(kube: KubeHarness) -> None:
    ex, rec = await kube.opened()
    launch = kube_launch("again", "sleep 0.5; exit 5")
    await ex.start([launch])
    await rec.starts("again")
    await ex.close()
    ex2, rec2 = await kube.opened()
    await ex2.start([launch])  # the engine re-sends the launch: 409 / known, never a failure
    (ev,) = await rec2.exits("again")
    assert ev.outcome.exit_code == 5 and ev.outcome.spawn_error is None
    posts = [p for m, p in kube.double.requests if m == "POST" and p.endswith("/jobs")]
    assert len(posts) == 1


# ---------------------------------------------------------------------------------- deletions


async def test_foreground_delete_by_someone_else_is_lost_not_a_user_exit(kube: KubeHarness) -> None:
    ex, rec = await kube.opened()
    await ex.start([kube_launch("fg", "sleep 30")])
    await rec.starts("fg")
    kube.double.cluster.delete_job(NS, "tp-fg-1", "Foreground", None)  # kubectl delete --cascade=foreground
    (ev,) = await rec.exits("fg")
    assert ev.outcome.lost is not None, ev.outcome
    assert classify(ev.outcome) is FailureClass.INFRA


# -------------------------------------------------------------------------------------- stops


async def test_stop_twice_after_end_and_after_ack_report_one_exit(kube: KubeHarness) -> None:
    ex, rec = await kube.opened()
    await ex.start([kube_launch("s", "sleep 30"), kube_launch("e", "exit 2")])
    await rec.starts("s")
    await ex.stop("s", 1, grace=1)
    await ex.stop("s", 1, grace=1)
    (es, ee) = await rec.exits("s", "e")
    await ex.stop("e", 1, grace=1)  # already ended: nothing to do, its exit stands
    await ex.ack([("s", 1), ("e", 1)])
    await ex.stop("s", 1, grace=1)  # after ack: no-op
    await kube.until(lambda: kube.job("tp-s-1") is None and kube.job("tp-e-1") is None)
    assert es.outcome.signal is not None and ee.outcome.exit_code == 2
    exits = [e for e in rec.events if isinstance(e, Exited)]
    assert sorted((e.task_id, e.attempt) for e in exits) == [("e", 1), ("s", 1)]


async def test_stop_of_a_pending_job_then_restart_reports_nothing_twice(kube: KubeHarness) -> None:
    ex, rec = await kube.opened(unschedulable_timeout=60)
    await ex.start([kube_launch("p", "true", millicpu=64_000)])
    await kube.until(lambda: kube.double.pod_of(NS, "tp-p-1") is not None)
    await ex.stop("p", 1, grace=0)
    (ev,) = await rec.exits("p")
    assert ev.never_started
    await ex.close()
    _, rec2 = await kube.opened(unschedulable_timeout=60)
    assert kube.job("tp-p-1") is None
    assert not rec2.exited


# ----------------------------------------------------------------------------------- restarts


async def test_an_exit_while_closed_is_recovered_once(kube: KubeHarness) -> None:
    ex, rec = await kube.opened()
    await ex.start([kube_launch("c", "echo a; sleep 0.5; echo b; exit 7")])
    await rec.starts("c")
    await ex.close()
    await kube.until(lambda: (kube.job("tp-c-1") or {}).get("status", {}).get("failed") == 1)
    ex2 = kube.executor()
    rec2 = KubeRecorder()
    recovered = await ex2.open(2, rec2)
    assert [(e.task_id, e.outcome.exit_code) for e in recovered.exited] == [("c", 7)]
    assert ex2.log_path("c", 1, LogStream.STDOUT).read_bytes() == b"a\nb\n"
    await kube.until(lambda: len(kube.double.store.watchers) >= 2)
    WatchGate.cut(kube.double)  # a reconnect must not repeat the exit the recovery reported
    kube.double.cluster.add_node("node-z")  # the revision moves on ...
    kube.double.store.compact()  # ... and the executor's is gone: 410, re-list
    lists = _lists(kube.double, JOBS)
    await kube.until(lambda: _lists(kube.double, JOBS) > lists)
    await ex2.ack([("c", 1)])
    await kube.until(lambda: kube.job("tp-c-1") is None)
    assert not rec2.exited


async def test_a_truncated_log_stays_truncated_and_unduplicated_after_restart(kube: KubeHarness) -> None:
    ex, rec = await kube.opened(log_limit_bytes=10)
    await ex.start([kube_launch("big", "printf '0123456789abcdef'")])
    (ev,) = await rec.exits("big")
    assert ev.log_truncated
    await ex.close()
    ex2 = kube.executor(log_limit_bytes=10)
    recovered = await ex2.open(2, KubeRecorder())
    (again,) = recovered.exited
    assert again.log_truncated
    assert ex2.log_path("big", 1, LogStream.STDOUT).read_bytes() == b"0123456789"


# ----------------------------------------------------------------------------------- capacity


async def test_capacity_follows_cordon_and_readiness_of_matching_nodes_only(kube: KubeHarness) -> None:
    store = kube.double.store
    kube.double.cluster.add_node("node-b", cpu="2", memory="4Gi", labels={"pool": "k8s"})
    kube.double.cluster.add_node("other", cpu="8", memory="8Gi", labels={"pool": "else"})
    ex, rec = await kube.opened(node_selector={"pool": "k8s"})
    full = Resources(millicpu=6000, memory=12 << 30)
    assert ex.capacity().total == full
    store.patch("nodes", "", "node-b", {"spec": {"unschedulable": True}})  # cordoned
    await rec.until(lambda: bool(rec.resized) and rec.resized[-1].total == Resources(millicpu=4000, memory=8 << 30))
    store.patch("nodes", "", "node-b", {"spec": {"unschedulable": None}})  # uncordoned
    await rec.until(lambda: rec.resized[-1].total == full)
    store.patch("nodes", "", "node-a", {"status": {"conditions": [{"type": "Ready", "status": "False"}]}})
    await rec.until(lambda: rec.resized[-1].total == Resources(millicpu=2000, memory=4 << 30))
    store.patch("nodes", "", "node-a", {"status": {"conditions": [{"type": "Ready", "status": "True"}]}})
    await rec.until(lambda: rec.resized[-1].total == full)
    seen = len(rec.resized)
    store.patch("nodes", "", "other", {"spec": {"unschedulable": True}})  # not in the pool: no event
    lists = sum(1 for m, p in kube.double.requests if m == "GET" and p == "/api/v1/nodes")
    await kube.until(lambda: sum(1 for m, p in kube.double.requests if m == "GET" and p == "/api/v1/nodes") > lists + 2)
    assert len(rec.resized) == seen
    assert all(isinstance(e, Started | Exited) for e in rec.events)


# --------------------------------------------------------------------------------------- logs


async def test_a_follow_that_ends_while_the_container_runs_is_resumed(kube: KubeHarness, monkeypatch: Any) -> None:
    """A log stream can end cleanly before its container does (kubelet restart): the copy must go on."""
    import taskplane.executors.kubernetes.logs as logs_module

    # How long a clean end may precede the container's end being seen (the pod watch lags the log): the
    # container below runs on for longer than that after its log stream is cut.
    monkeypatch.setattr(logs_module, "RESUME_AFTER", 0.2, raising=False)
    ex, rec = await kube.opened()
    await ex.start([kube_launch("cut", "echo a; sleep 1; echo b")])
    path = ex.log_path("cut", 1, LogStream.STDOUT)
    await kube.until(lambda: path.exists() and path.read_bytes() == b"a\n")
    pod = kube.double.pod_of(NS, "tp-cut-1")
    assert pod is not None
    kube.double.cluster.logs[(NS, pod["metadata"]["name"])].cut()
    (ev,) = await rec.exits("cut")
    assert ev.outcome.exit_code == 0
    assert path.read_bytes() == b"a\nb\n"


async def test_pod_deleted_by_someone_else_is_lost_not_a_user_exit(kube: KubeHarness) -> None:
    ex, rec = await kube.opened()
    await ex.start([kube_launch("pd", "sleep 30")])
    await rec.starts("pd")
    pod = kube.double.pod_of(NS, "tp-pd-1")
    assert pod is not None
    kube.double.cluster.delete_pod(NS, pod["metadata"]["name"], None)  # kubectl delete pod: SIGTERM, exit 143
    (ev,) = await rec.exits("pd")
    assert ev.outcome.lost is not None, ev.outcome
    assert classify(ev.outcome) is FailureClass.INFRA


async def test_deadline_exceeded_stays_a_timeout_when_its_pod_is_deleted(kube: KubeHarness) -> None:
    ex, rec = await kube.opened()
    await ex.start([kube_launch("dl", "sleep 30", run_timeout=1)])
    (ev,) = await rec.exits("dl")
    assert ev.outcome.deadline_exceeded and classify(ev.outcome) is FailureClass.TIMEOUT


# ----------------------------------------------------------------------------- stop during start


class RequestGate:
    """Holds the requests ``wanted`` picks (method, path) until ``open`` is set; counts them in ``held``."""

    def __init__(self, double: KubeApiDouble, wanted: Callable[[str, str], bool]) -> None:
        self.open = asyncio.Event()
        self.held = 0
        inner = double.app.app

        async def app(scope: Any, receive: Callable[[], Awaitable[Any]], send: Any) -> None:
            if scope["type"] == "http" and wanted(scope["method"], scope["path"]):
                self.held += 1
                await self.open.wait()
            await inner(scope, receive, send)

        double.app.app = app  # type: ignore[assignment]


@pytest.mark.parametrize("during", ["namespace setup", "job create"])
async def test_a_stop_while_the_start_is_under_way_is_not_lost(kube: KubeHarness, during: str) -> None:
    """The engine starts in the background: a cancel can reach ``stop`` before the Job exists."""
    ex, rec = await kube.opened()
    if during == "namespace setup":
        gate = RequestGate(kube.double, lambda m, p: m == "GET" and p == f"/api/v1/namespaces/{NS}")
    else:
        gate = RequestGate(kube.double, lambda m, p: m == "POST" and p == f"/apis/batch/v1/namespaces/{NS}/jobs")
    starting = asyncio.get_running_loop().create_task(ex.start([kube_launch("early", "sleep 30")]))
    await kube.until(lambda: gate.held >= 1)
    await ex.stop("early", 1, grace=1)  # cancelled before its Job exists
    gate.open.set()
    await starting
    (ev,) = await rec.exits("early")
    assert ev.never_started and ev.outcome.exit_code is None, ev
    await kube.until(lambda: kube.job("tp-early-1") is None)


# ------------------------------------------------------------------------------------ status


async def test_a_command_missing_from_the_image_is_a_spawn_error_not_a_user_exit(kube: KubeHarness) -> None:
    """containerd: terminated reason StartError, exit 128, startedAt 1970: nothing ran (as podman's 127)."""
    ex, rec = await kube.opened()
    launch = dataclasses.replace(kube_launch("nocmd", "true"), argv=("/no/such/command",))
    await ex.start([launch])
    (ev,) = await rec.exits("nocmd")
    assert ev.outcome.spawn_error is not None and not ev.outcome.retryable, ev.outcome
    assert ev.started_at is None and ("nocmd", 1) not in rec.started
