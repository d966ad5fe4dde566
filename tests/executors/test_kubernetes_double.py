"""The Kubernetes API double answers as the API reference says, for what it covers (through lightkube)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from lightkube import ApiError, AsyncClient
from lightkube.models.batch_v1 import JobSpec
from lightkube.models.core_v1 import Container, PodSpec, PodTemplateSpec
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.batch_v1 import Job
from lightkube.resources.core_v1 import Namespace, Pod
from lightkube.types import CascadeType

from tests.support.kubeapi import KubeApiDouble


@pytest.fixture
async def api() -> AsyncIterator[tuple[KubeApiDouble, AsyncClient]]:
    double = KubeApiDouble()
    double.bind()
    double.cluster.add_node("n1", cpu="2", memory="4Gi")
    client = double.client()
    await client.create(Namespace(metadata=ObjectMeta(name="ns")))
    try:
        yield double, client
    finally:
        await client.close()
        await double.shutdown()


def a_job(name: str, script: str = "true", *, image: str = "busybox:1.36", deadline: int | None = None) -> Job:
    pod = PodSpec(restartPolicy="Never", containers=[Container(name="c", image=image, command=["sh", "-c", script])])
    spec = JobSpec(template=PodTemplateSpec(metadata=ObjectMeta(labels={"app": "x"}), spec=pod))
    spec.activeDeadlineSeconds = deadline
    return Job(metadata=ObjectMeta(name=name, namespace="ns", labels={"app": "x"}), spec=spec)


async def _status(coro: Any) -> tuple[int, str]:
    with pytest.raises(ApiError) as info:
        await coro
    return info.value.status.code or 0, info.value.status.reason or ""


async def test_errors_are_status_objects(api: tuple[KubeApiDouble, AsyncClient]) -> None:
    _, client = api
    await client.create(a_job("j1"))
    assert await _status(client.create(a_job("j1"))) == (409, "AlreadyExists")
    assert await _status(client.get(Job, "nope", namespace="ns")) == (404, "NotFound")
    assert await _status(client.create(a_job("Bad_Name"))) == (422, "Invalid")
    assert await _status(client.create(a_job("x" * 64))) == (422, "Invalid")
    assert await _status(client.create(Namespace(metadata=ObjectMeta(name="UPPER")))) == (422, "Invalid")
    elsewhere = a_job("j2")
    assert elsewhere.metadata is not None
    elsewhere.metadata.namespace = "missing"
    assert await _status(client.create(elsewhere)) == (404, "NotFound")


async def test_resource_versions_increase_and_watches_replay(api: tuple[KubeApiDouble, AsyncClient]) -> None:
    _, client = api
    listing = client.list(Job, namespace="*")
    assert [j async for j in listing] == []
    rv = listing.resourceVersion
    created = await client.create(a_job("w1", "exit 2"))
    assert created.metadata is not None and int(created.metadata.resourceVersion or 0) > int(rv)
    seen: list[tuple[str, str | None]] = []
    async for type_, job in client.watch(Job, namespace="*", labels={"app": "x"}, resource_version=rv):
        conds = (job.status.conditions if job.status else None) or []
        seen.append((type_, conds[0].reason if conds else None))
        if conds:
            break
    assert seen[0] == ("ADDED", None)
    assert seen[-1] == ("MODIFIED", "BackoffLimitExceeded")


async def test_compacted_history_is_410_gone(api: tuple[KubeApiDouble, AsyncClient]) -> None:
    double, client = api
    listing = client.list(Pod, namespace="*")
    _ = [p async for p in listing]
    await client.create(a_job("g1"))
    double.store.compact()
    with pytest.raises(ApiError) as info:
        async for _event in client.watch(Pod, namespace="*", resource_version=listing.resourceVersion):
            pass
    assert info.value.status.code == 410


async def test_deadline_and_foreground_delete(api: tuple[KubeApiDouble, AsyncClient]) -> None:
    double, client = api
    await client.create(a_job("d1", "sleep 30", deadline=1))
    async for _, job in client.watch(Job, namespace="ns", labels={"app": "x"}):
        conds = (job.status.conditions if job.status else None) or []
        if conds:
            assert (conds[0].type, conds[0].reason) == ("Failed", "DeadlineExceeded")
            break
    await client.create(a_job("f1", "sleep 30"))
    async for _, pod in client.watch(Pod, namespace="ns", labels={"job-name": "f1"}):
        if pod.status is not None and pod.status.phase == "Running":
            break
    await client.delete(Job, "f1", namespace="ns", cascade=CascadeType.FOREGROUND, grace_period=0)
    held = await client.get(Job, "f1", namespace="ns")  # kept while its pod terminates
    assert held.metadata is not None and held.metadata.finalizers == ["foregroundDeletion"]
    async for type_, job in client.watch(Job, namespace="ns", labels={"app": "x"}):
        if type_ == "DELETED" and job.metadata is not None and job.metadata.name == "f1":
            break
    assert double.pod_of("ns", "f1") is None


async def test_unschedulable_and_image_pull(api: tuple[KubeApiDouble, AsyncClient]) -> None:
    double, client = api
    big = a_job("big")
    assert big.spec is not None and big.spec.template.spec is not None
    big.spec.template.spec.containers[0].resources = {"requests": {"cpu": "3"}}  # type: ignore[assignment]
    await client.create(big)
    await client.create(a_job("img", image="nowhere/missing:1"))
    reasons: dict[str, str] = {}
    async for _, pod in client.watch(Pod, namespace="ns", labels={"app": "x"}):
        assert pod.metadata is not None and pod.status is not None
        job = (pod.metadata.labels or {})["job-name"]
        for cond in pod.status.conditions or []:
            if cond.type == "PodScheduled" and cond.status == "False":
                reasons[job] = cond.reason or ""
        for cs in pod.status.containerStatuses or []:
            if cs.state is not None and cs.state.waiting is not None and cs.state.waiting.reason != "ContainerCreating":
                reasons[job] = cs.state.waiting.reason or ""
        if reasons.get("big") == "Unschedulable" and reasons.get("img") == "ImagePullBackOff":
            break
    assert double.writes() == [
        ("POST", "/api/v1/namespaces"),
        ("POST", "/apis/batch/v1/namespaces/ns/jobs"),
        ("POST", "/apis/batch/v1/namespaces/ns/jobs"),
    ]
