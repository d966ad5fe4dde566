"""The Kubernetes executor against the in-process API double: Job shape, namespaces, status mapping, recovery."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from taskplane.domain.outcome import classify
from taskplane.domain.resources import Resources
from taskplane.domain.task import FailureClass, HostAccess
from taskplane.domain.tenant import Quota
from taskplane.errors import UnavailableError
from taskplane.executors.kubernetes import KubernetesExecutor
from taskplane.executors.kubernetes.names import job_name
from taskplane.executors.kubernetes.rbac import REQUIRED_RBAC
from taskplane.services.ports import LogStream, NodeResized
from tests.support.kubeapi import WRITE_METHODS
from tests.support.kubeapi.harness import INSTANCE, KubeHarness, KubeRecorder, kube_config, kube_launch

NS = "tp-acme"


# ------------------------------------------------------------------------------------------- shape


async def test_job_shape_carries_every_field(kube: KubeHarness) -> None:
    ex, _ = await kube.opened(node_selector={"pool": "k8s"}, ttl_seconds_after_finished=120)
    launch = kube_launch(
        "t1",
        "sleep 30",
        millicpu=500,
        memory=256 << 20,
        gpu=0,
        env={"A": "1"},
        run_timeout=9.5,
        host=HostAccess(read_only_root=True, user="1000:2000", network=True),
    )
    await ex.start([launch])
    job = kube.job("tp-t1-1")
    assert job is not None
    meta, spec = job["metadata"], job["spec"]
    assert meta["labels"] == {
        "taskplane.io/instance": INSTANCE,
        "taskplane.io/pool": "k8s",
        "taskplane.io/tenant": "acme",
        "taskplane.io/task": "t1",
        "taskplane.io/attempt": "1",
        "taskplane.io/network": "allowed",
    }
    assert meta["annotations"] == {"taskplane.io/task-id": "t1", "taskplane.io/owner": f"taskplane/{INSTANCE}/k8s"}
    assert spec["backoffLimit"] == 0
    assert spec["activeDeadlineSeconds"] == 10
    assert spec["ttlSecondsAfterFinished"] == 120
    pod = spec["template"]["spec"]
    assert spec["template"]["metadata"]["labels"] == meta["labels"]
    assert pod["restartPolicy"] == "Never"
    assert pod["automountServiceAccountToken"] is False
    assert pod["nodeSelector"] == {"pool": "k8s"}
    assert pod["securityContext"] == {
        "runAsNonRoot": True,
        "runAsUser": 1000,
        "runAsGroup": 2000,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    (c,) = pod["containers"]
    assert c["image"] == "busybox:1.36"
    assert c["imagePullPolicy"] == "IfNotPresent"
    assert c["command"] == ["sh", "-c", "sleep 30"]
    assert "args" not in c
    assert c["env"] == [{"name": "A", "value": "1"}]
    assert c["resources"] == {
        "requests": {"cpu": "500m", "memory": str(256 << 20)},
        "limits": {"cpu": "500m", "memory": str(256 << 20)},
    }
    assert c["securityContext"] == {
        "runAsNonRoot": True,
        "runAsUser": 1000,
        "runAsGroup": 2000,
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
        "readOnlyRootFilesystem": True,
    }


async def test_default_user_gpu_and_no_network_label(kube: KubeHarness) -> None:
    ex, _ = await kube.opened()
    await ex.start([kube_launch("t2", "true", millicpu=2000, gpu=1)])
    job = kube.job("tp-t2-1")
    assert job is not None
    c = job["spec"]["template"]["spec"]["containers"][0]
    assert c["securityContext"]["runAsUser"] == 65534
    assert "readOnlyRootFilesystem" not in c["securityContext"]
    assert c["resources"]["limits"] == {"cpu": "2", "nvidia.com/gpu": "1"}
    assert "taskplane.io/network" not in job["metadata"]["labels"]
    assert "activeDeadlineSeconds" not in job["spec"]


def test_job_names_are_valid_and_distinct() -> None:
    assert job_name("01hzy3k5q7v8w9x0abcdefghjk", 3) == "tp-01hzy3k5q7v8w9x0abcdefghjk-3"
    odd = [job_name(t, 1) for t in ("Task_One", "task-one", "TASK.one", "x" * 100)]
    assert len(set(odd)) == 4
    assert all(len(n) <= 63 and n == n.lower() for n in odd)


async def test_namespace_quota_limits_and_policies_created_once_per_tenant(kube: KubeHarness) -> None:
    ex, _ = await kube.opened()
    await ex.start([kube_launch(f"n{i}", "true") for i in range(3)])
    await ex.start([kube_launch("other", "true", tenant="beta")])
    (ns,) = [n for n in kube.double.objects("namespaces") if n["metadata"]["name"] == NS]
    labels = ns["metadata"]["labels"]
    for mode in ("enforce", "warn", "audit"):
        assert labels[f"pod-security.kubernetes.io/{mode}"] == "restricted"
    assert labels["taskplane.io/instance"] == INSTANCE
    assert [q["metadata"]["name"] for q in kube.double.objects("resourcequotas", NS)] == ["taskplane-quota"]
    (lr,) = kube.double.objects("limitranges", NS)
    assert lr["spec"]["limits"][0]["type"] == "Container"
    policies = {p["metadata"]["name"]: p["spec"] for p in kube.double.objects("networkpolicies", NS)}
    assert policies["taskplane-default-deny"] == {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}
    allow = policies["taskplane-allow-egress"]
    assert allow["podSelector"] == {"matchLabels": {"taskplane.io/network": "allowed"}}
    assert allow["policyTypes"] == ["Egress"] and allow["egress"] == [{}]
    posts = [p for m, p in kube.double.requests if m == "POST" and "/jobs" not in p]
    assert len(posts) == 10  # five objects for each of the two tenants, each created once
    assert {n["metadata"]["name"] for n in kube.double.objects("namespaces")} == {NS, "tp-beta"}


async def test_a_tenant_that_is_no_namespace_name_is_refused(kube: KubeHarness) -> None:
    ex, rec = await kube.opened(namespace_prefix="tp-" + "x" * 60)
    await ex.start([kube_launch("t1", "true")])
    (ev,) = await rec.exits("t1")
    assert ev.outcome.spawn_error is not None and "namespace" in ev.outcome.spawn_error
    assert not ev.outcome.retryable
    assert kube.double.objects("jobs") == []


# ----------------------------------------------------------------------------------------- exits


async def test_success_and_exit_code_with_logs(kube: KubeHarness) -> None:
    ex, rec = await kube.opened()
    await ex.start([kube_launch("ok", "echo out; echo err >&2"), kube_launch("bad", "echo x; exit 3")])
    ok, bad = await rec.exits("ok", "bad")
    assert ok.outcome.exit_code == 0 and classify(ok.outcome) is None
    assert bad.outcome.exit_code == 3 and classify(bad.outcome) is FailureClass.USER
    assert ok.started_at is not None
    assert ex.log_path("ok", 1, LogStream.STDOUT).read_bytes() == b"out\nerr\n"  # merged by Kubernetes
    assert ex.log_path("bad", 1, LogStream.STDOUT).read_bytes() == b"x\n"
    assert (("ok", 1) in rec.started) or ok.started_at is not None


async def test_logs_are_kept_after_the_pod_is_gone(kube: KubeHarness) -> None:
    ex, rec = await kube.opened()
    await ex.start([kube_launch("l1", "echo hello")])
    await rec.exits("l1")
    await ex.ack([("l1", 1)])
    await kube.until(lambda: kube.double.objects("pods", NS) == [] and kube.job("tp-l1-1") is None)
    assert ex.log_path("l1", 1, LogStream.STDOUT).read_bytes() == b"hello\n"


async def test_log_cap_truncates(kube: KubeHarness) -> None:
    ex, rec = await kube.opened(log_limit_bytes=10)
    await ex.start([kube_launch("big", "printf '0123456789abcdef'")])
    (ev,) = await rec.exits("big")
    assert ev.log_truncated
    assert ex.log_path("big", 1, LogStream.STDOUT).read_bytes() == b"0123456789"


async def test_env_reaches_the_container(kube: KubeHarness) -> None:
    ex, rec = await kube.opened()
    await ex.start([kube_launch("e", 'echo "$GREETING"', env={"GREETING": "hi there"})])
    await rec.exits("e")
    assert ex.log_path("e", 1, LogStream.STDOUT).read_bytes() == b"hi there\n"


async def test_oom_kill_is_infra(kube: KubeHarness) -> None:
    ex, rec = await kube.opened()
    await ex.start([kube_launch("oom", "sleep 30", memory=64 << 20)])
    await rec.starts("oom")
    pod = kube.double.pod_of(NS, "tp-oom-1")
    assert pod is not None
    kube.double.cluster.oom_kill(NS, pod["metadata"]["name"])
    (ev,) = await rec.exits("oom")
    assert ev.outcome.oom_killed and classify(ev.outcome) is FailureClass.INFRA


async def test_eviction_is_lost(kube: KubeHarness) -> None:
    ex, rec = await kube.opened()
    await ex.start([kube_launch("ev", "sleep 30")])
    await rec.starts("ev")
    pod = kube.double.pod_of(NS, "tp-ev-1")
    assert pod is not None
    kube.double.cluster.evict(NS, pod["metadata"]["name"])
    (ev,) = await rec.exits("ev")
    assert ev.outcome.lost is not None and "Evicted" in ev.outcome.lost
    assert classify(ev.outcome) is FailureClass.INFRA


async def test_deadline_exceeded_is_timeout(kube: KubeHarness) -> None:
    ex, rec = await kube.opened()
    await ex.start([kube_launch("slow", "sleep 30", run_timeout=0.5)])
    (ev,) = await rec.exits("slow")
    assert ev.outcome.deadline_exceeded and classify(ev.outcome) is FailureClass.TIMEOUT


async def test_missing_image_is_a_spawn_error_not_retryable(kube: KubeHarness) -> None:
    ex, rec = await kube.opened()
    await ex.start([kube_launch("img", "true", image="registry.example/missing:1")])
    (ev,) = await rec.exits("img")
    assert ev.outcome.spawn_error is not None and "ErrImagePull" in ev.outcome.spawn_error
    assert not ev.outcome.retryable and classify(ev.outcome) is FailureClass.INFRA
    assert ev.started_at is None


async def test_unschedulable_too_long_is_a_retryable_spawn_error(kube: KubeHarness) -> None:
    ex, rec = await kube.opened()
    await ex.start([kube_launch("huge", "true", millicpu=64_000)])
    (ev,) = await rec.exits("huge", timeout=10)
    assert ev.outcome.spawn_error is not None and "unschedulable" in ev.outcome.spawn_error
    assert ev.outcome.retryable
    await kube.until(lambda: kube.job("tp-huge-1") is None)


async def test_job_deleted_underneath_is_lost(kube: KubeHarness) -> None:
    ex, rec = await kube.opened()
    await ex.start([kube_launch("del", "sleep 30")])
    await rec.starts("del")
    kube.double.cluster.delete_job(NS, "tp-del-1", "Background", None)
    (ev,) = await rec.exits("del")
    assert ev.outcome.lost is not None and classify(ev.outcome) is FailureClass.INFRA


async def test_lost_node_fails_its_pods_and_resizes_the_pool(kube: KubeHarness) -> None:
    kube.double.cluster.add_node("node-b", cpu="2", memory="4Gi")
    ex, rec = await kube.opened()
    assert ex.capacity().total == Resources(millicpu=6000, memory=12 << 30)
    await ex.start([kube_launch("n", "sleep 30", millicpu=3000)])  # fits node-a only
    await rec.starts("n")
    kube.double.cluster.lose_node("node-a")
    (ev,) = await rec.exits("n")
    assert ev.outcome.lost is not None and "NodeLost" in ev.outcome.lost
    await rec.until(lambda: any(e.total.millicpu == 2000 for e in rec.resized))
    assert ex.capacity().total == Resources(millicpu=2000, memory=4 << 30)


async def test_capacity_counts_only_ready_matching_nodes(kube: KubeHarness) -> None:
    kube.double.cluster.add_node("gpu-1", cpu="8", memory="32Gi", gpu=2, labels={"pool": "k8s"})
    kube.double.cluster.add_node("other", cpu="16", memory="64Gi", labels={"pool": "else"})
    kube.double.cluster.add_node("down", cpu="16", memory="64Gi", labels={"pool": "k8s"}, ready=False)
    ex = kube.executor(node_selector={"pool": "k8s"})
    assert ex.nodes()[0].total == Resources()  # before open: zero-sized
    events: list[object] = []
    await ex.open(1, events.extend)
    assert ex.nodes()[0].total == Resources(millicpu=12_000, memory=40 << 30, gpu=2)
    await kube.until(lambda: bool(events))
    assert events[0] == NodeResized("k8s", Resources(millicpu=12_000, memory=40 << 30, gpu=2), 10_000)


# ------------------------------------------------------------------------------------------- stop


async def test_stop_deletes_the_job_with_foreground_propagation(kube: KubeHarness) -> None:
    ex, rec = await kube.opened()
    await ex.start([kube_launch("s", "sleep 30")])
    await rec.starts("s")
    before = len(kube.double.requests)
    await ex.stop("s", 1, grace=2)
    (ev,) = await rec.exits("s")
    assert ev.outcome.signal == signal.SIGTERM
    deletes = [p for m, p in kube.double.requests[before:] if m == "DELETE"]
    assert f"/apis/batch/v1/namespaces/{NS}/jobs/tp-s-1" in deletes
    await kube.until(lambda: kube.job("tp-s-1") is None)


async def test_stop_sends_foreground_and_grace(kube: KubeHarness, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[tuple[str | None, int | None]] = []
    real = kube.double.cluster.delete_job

    def spy(ns: str, name: str, policy: str | None, grace: int | None) -> dict[str, object]:
        seen.append((policy, grace))
        return real(ns, name, policy, grace)

    monkeypatch.setattr(kube.double.cluster, "delete_job", spy)
    ex, rec = await kube.opened()
    await ex.start([kube_launch("s2", "sleep 30")])
    await rec.starts("s2")
    await ex.stop("s2", 1, grace=3)
    await rec.exits("s2")
    assert seen[0] == ("Foreground", 3)


async def test_unqueue_of_a_pending_job_is_never_started(kube: KubeHarness) -> None:
    ex, rec = await kube.opened(unschedulable_timeout=60)
    await ex.start([kube_launch("q", "true", millicpu=64_000)])
    await kube.until(lambda: kube.double.pod_of(NS, "tp-q-1") is not None)
    await ex.unqueue("q", 1)
    (ev,) = await rec.exits("q")
    assert ev.never_started and ev.outcome.exit_code is None and ev.outcome.signal is None


# ------------------------------------------------------------------------------ watch and restart


async def test_relist_after_410_loses_no_exit(kube: KubeHarness) -> None:
    ex, rec = await kube.opened()
    await ex.start([kube_launch("w", "sleep 0.3; exit 4")])
    await rec.starts("w")
    for watcher in list(kube.double.store.watchers):  # cut the executor's streams ...
        watcher.queue.put_nowait(None)
    kube.double.store.compact()  # ... and make its revision too old: it must re-list
    (ev,) = await rec.exits("w")
    assert ev.outcome.exit_code == 4
    assert sum(1 for m, p in kube.double.requests if m == "GET" and p == "/apis/batch/v1/jobs") >= 2


async def test_recovery_after_restart(kube: KubeHarness) -> None:
    ex, rec = await kube.opened()
    await ex.start([kube_launch("done", "echo bye; exit 2"), kube_launch("run", "echo a; sleep 1; echo b")])
    await rec.exits("done")
    await rec.starts("run")
    await ex.close()
    ex2 = kube.executor()
    rec2 = KubeRecorder()
    recovered = await ex2.open(2, rec2)
    assert [(e.task_id, e.outcome.exit_code) for e in recovered.exited] == [("done", 2)]
    assert [s.task_id for s in recovered.running] == ["run"]
    (ev,) = await rec2.exits("run")
    assert ev.outcome.exit_code == 0
    assert ex2.log_path("run", 1, LogStream.STDOUT).read_bytes() == b"a\nb\n"
    await ex2.ack([("done", 1), ("run", 1)])
    ex3 = kube.executor()
    again = await ex3.open(3, KubeRecorder())
    assert again.exited == [] and again.running == []


async def test_api_writes_per_attempt(kube: KubeHarness) -> None:
    ex, rec = await kube.opened()
    n = 20
    await ex.start([kube_launch(f"w{i}", "true") for i in range(n)])
    await rec.exits(*[f"w{i}" for i in range(n)])
    await ex.ack([(f"w{i}", 1) for i in range(n)])
    writes = [r for r in kube.double.requests if r[0] in WRITE_METHODS]
    assert len(writes) / n <= 3
    assert len([r for r in writes if "/jobs" in r[1]]) == 2 * n  # a create and a delete each


async def test_unreachable_api_is_unavailable(tmp_path: Path) -> None:
    kubeconfig = tmp_path / "kubeconfig"
    from tests.support.kubeapi.server import write_kubeconfig

    write_kubeconfig(kubeconfig, "http://127.0.0.1:9")
    ex = KubernetesExecutor(kube_config(tmp_path, kubeconfig=kubeconfig))
    with pytest.raises(UnavailableError, match="unreachable"):
        await ex.open(1, lambda events: None)
    await ex.close()


async def test_start_is_idempotent_per_attempt(kube: KubeHarness) -> None:
    ex, rec = await kube.opened()
    launch = kube_launch("once", "true")
    await ex.start([launch])
    await ex.start([launch])
    await rec.exits("once")
    await ex.start([launch])  # ended, not acked: still a no-op
    posts = [p for m, p in kube.double.requests if m == "POST" and p.endswith("/jobs")]
    assert posts == [f"/apis/batch/v1/namespaces/{NS}/jobs"]


async def test_quota_comes_from_the_tenant_when_given(kube: KubeHarness, tmp_path: Path) -> None:
    quotas = {"acme": Quota(millicpu=4000, memory=8 << 30, gpu=1, max_running=5)}
    ex = KubernetesExecutor(kube_config(tmp_path), client=kube.double.client(), quota_for=quotas.get)
    kube.executors.append(ex)
    await ex.open(1, KubeRecorder())
    await ex.start([kube_launch("q1", "true")])
    (quota,) = kube.double.objects("resourcequotas", NS)
    assert quota["spec"]["hard"] == {
        "pods": "5",
        "count/jobs.batch": "10000",
        "limits.cpu": "4",
        "limits.memory": str(8 << 30),
        "requests.nvidia.com/gpu": "1",
    }


async def test_pod_startup_is_measured(kube: KubeHarness) -> None:
    def count() -> float:
        return REGISTRY.get_sample_value("taskplane_pod_startup_seconds_count", {"pool": "k8s"}) or 0.0

    before = count()
    ex, rec = await kube.opened()
    await ex.start([kube_launch("m1", "true"), kube_launch("m2", "true")])
    await rec.exits("m1", "m2")
    assert count() == before + 2


async def test_stop_before_the_container_started_is_never_started(kube: KubeHarness) -> None:
    ex, rec = await kube.opened(unschedulable_timeout=60)
    await ex.start([kube_launch("p", "true", millicpu=64_000)])
    await kube.until(lambda: kube.double.pod_of(NS, "tp-p-1") is not None)
    await ex.stop("p", 1, grace=1)
    (ev,) = await rec.exits("p")
    assert ev.never_started and ev.started_at is None


RBAC = REQUIRED_RBAC  # docs/executor-kubernetes.md, deploy/kubernetes/rbac.yaml


async def test_every_call_is_in_the_documented_rbac(kube: KubeHarness) -> None:
    ex, rec = await kube.opened()
    await ex.start([kube_launch("r1", "echo hi; exit 1"), kube_launch("r2", "sleep 30", run_timeout=60)])
    await rec.starts("r2")
    await ex.stop("r2", 1, grace=1)
    await rec.exits("r1", "r2")
    await ex.ack([("r1", 1), ("r2", 1)])
    await rec.until(lambda: bool(rec.resized))  # the capacity loop listed nodes again
    kube.double.store.compact()
    for watcher in list(kube.double.store.watchers):
        watcher.queue.put_nowait(None)
    await ex.start([kube_launch("r3", "true")])
    await rec.exits("r3")
    assert kube.double.rbac_calls() == RBAC


async def test_a_pending_job_is_recovered_as_queued(kube: KubeHarness) -> None:
    ex, _ = await kube.opened(unschedulable_timeout=60)
    await ex.start([kube_launch("wait", "true", millicpu=64_000)])
    await kube.until(lambda: kube.double.pod_of(NS, "tp-wait-1") is not None)
    await ex.close()
    ex2 = kube.executor(unschedulable_timeout=60)
    recovered = await ex2.open(2, KubeRecorder())
    assert (recovered.running, recovered.exited, recovered.queued) == ([], [], [("wait", 1)])


async def test_logs_are_complete_when_followers_run_out(kube: KubeHarness, monkeypatch: pytest.MonkeyPatch) -> None:
    import taskplane.executors.kubernetes.executor as module

    monkeypatch.setattr(module, "LOG_FOLLOWERS", 1)  # one live stream: the others are read once they ended
    ex, rec = await kube.opened()
    ids = [f"f{i}" for i in range(4)]
    await ex.start([kube_launch(t, f"echo begin {t}; sleep 0.3; echo end {t}") for t in ids])
    await rec.exits(*ids)
    for t in ids:
        assert ex.log_path(t, 1, LogStream.STDOUT).read_text() == f"begin {t}\nend {t}\n"


async def test_watches_renewed_by_the_server_lose_nothing(kube: KubeHarness, monkeypatch: pytest.MonkeyPatch) -> None:
    import taskplane.executors.kubernetes.executor as module

    monkeypatch.setattr(module, "WATCH_SECONDS", 1)  # the double ends each watch request after a second
    ex, rec = await kube.opened()
    await ex.start([kube_launch("slowpoke", "sleep 2.5; exit 6")])
    (ev,) = await rec.exits("slowpoke")
    assert ev.outcome.exit_code == 6
    watches = [p for p, q in zip(kube.double.requests, kube.double.app.queries, strict=True) if "watch=true" in q]
    assert len(watches) >= 4  # two streams, each renewed at least once
