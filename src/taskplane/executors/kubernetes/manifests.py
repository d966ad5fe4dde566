"""The objects the Kubernetes executor creates, as typed lightkube models: pure functions of config and launch.

Per tenant namespace (once): the ``Namespace`` (restricted pod security, the instance label), a
``ResourceQuota``, a ``LimitRange``, a default-deny ``NetworkPolicy`` and an egress-allow one selecting pods
labelled ``taskplane.io/network=allowed``. Per attempt: one ``Job`` (see ``job``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from lightkube.models.batch_v1 import JobSpec
from lightkube.models.core_v1 import (
    Capabilities,
    Container,
    EmptyDirVolumeSource,
    EnvVar,
    LimitRangeItem,
    LimitRangeSpec,
    PodSecurityContext,
    PodSpec,
    PodTemplateSpec,
    ResourceQuotaSpec,
    ResourceRequirements,
    SeccompProfile,
    SecurityContext,
    Volume,
    VolumeMount,
)
from lightkube.models.meta_v1 import LabelSelector, ObjectMeta
from lightkube.models.networking_v1 import NetworkPolicyEgressRule, NetworkPolicySpec
from lightkube.resources.batch_v1 import Job
from lightkube.resources.core_v1 import LimitRange, Namespace, ResourceQuota
from lightkube.resources.networking_v1 import NetworkPolicy

from taskplane.domain.resources import Resources
from taskplane.domain.tenant import Quota
from taskplane.executors.kubernetes import names
from taskplane.executors.kubernetes.config import KubernetesExecutorConfig
from taskplane.services.ports import Launch

GPU_RESOURCE = "nvidia.com/gpu"
SANDBOX = "/work"  # an emptyDir: the attempt's writable working directory, even with a read-only root
# A LimitRange default for launches without a request (best-effort): the quota counts limits, and a pod
# without any would be refused by a ResourceQuota on limits.*.
DEFAULT_LIMITS = {"cpu": "1", "memory": "512Mi"}
DEFAULT_REQUESTS = {"cpu": "10m", "memory": "64Mi"}
PSS_LABELS = {
    "pod-security.kubernetes.io/enforce": "restricted",
    "pod-security.kubernetes.io/warn": "restricted",
    "pod-security.kubernetes.io/audit": "restricted",
}


class LaunchRefusedError(Exception):
    """A launch that cannot become a valid Job (reported as a non-retryable spawn error)."""


def _millicpu(millis: int) -> str:
    return f"{millis // 1000}" if millis % 1000 == 0 else f"{millis}m"


def quantities(res: Resources) -> dict[str, str]:
    """Kubernetes resource quantities of a taskplane request (requests = limits)."""
    out: dict[str, str] = {}
    if res.millicpu:
        out["cpu"] = _millicpu(res.millicpu)
    if res.memory:
        out["memory"] = str(res.memory)
    if res.gpu:
        out[GPU_RESOURCE] = str(res.gpu)
    for name, amount in res.extended:
        out[name] = str(amount)
    return out


def owner(config: KubernetesExecutorConfig) -> str:
    """The owner annotation value: ``taskplane/<instance>/<pool>``."""
    return f"taskplane/{config.instance}/{config.pool}"


def namespace(config: KubernetesExecutorConfig, name: str, tenant: str) -> Namespace:
    """The tenant's namespace: restricted pod security enforced, warned and audited."""
    labels = {**PSS_LABELS, names.LABEL_INSTANCE: config.instance, names.LABEL_TENANT: names.label_value(tenant)}
    return Namespace(metadata=ObjectMeta(name=name, labels=labels, annotations={names.ANNOTATION_OWNER: owner(config)}))


def _meta(config: KubernetesExecutorConfig, name: str, ns: str) -> ObjectMeta:
    return ObjectMeta(name=name, namespace=ns, labels={names.LABEL_INSTANCE: config.instance})


def resource_quota(config: KubernetesExecutorConfig, ns: str, quota: Quota | None) -> ResourceQuota:
    """The namespace's hard limits: at most ``max_tasks`` pods, and the tenant's quota when known.

    taskplane admits against the quota first (with borrowing), so this is a backstop against anything else
    creating pods in the namespace, not the admission mechanism.
    """
    hard = {"pods": str(config.max_tasks), "count/jobs.batch": str(config.max_tasks)}
    if quota is not None:
        if quota.millicpu is not None:
            hard["limits.cpu"] = _millicpu(quota.millicpu)
        if quota.memory is not None:
            hard["limits.memory"] = str(quota.memory)
        if quota.gpu is not None:
            hard[f"requests.{GPU_RESOURCE}"] = str(quota.gpu)
        if quota.max_running is not None:
            hard["pods"] = str(quota.max_running)
    return ResourceQuota(metadata=_meta(config, names.QUOTA_NAME, ns), spec=ResourceQuotaSpec(hard=hard))


def limit_range(config: KubernetesExecutorConfig, ns: str) -> LimitRange:
    """Defaults for containers without requests (best-effort launches), so a limits quota can count them."""
    item = LimitRangeItem(type="Container", default=dict(DEFAULT_LIMITS), defaultRequest=dict(DEFAULT_REQUESTS))
    return LimitRange(metadata=_meta(config, names.LIMIT_RANGE_NAME, ns), spec=LimitRangeSpec(limits=[item]))


def deny_all(config: KubernetesExecutorConfig, ns: str) -> NetworkPolicy:
    """Every pod of the namespace: no ingress, no egress."""
    spec = NetworkPolicySpec(podSelector=LabelSelector(), policyTypes=["Ingress", "Egress"])
    return NetworkPolicy(metadata=_meta(config, names.POLICY_DENY_ALL, ns), spec=spec)


def allow_egress(config: KubernetesExecutorConfig, ns: str) -> NetworkPolicy:
    """Pods labelled ``taskplane.io/network=allowed`` (tasks whose tenant allows network): any egress."""
    selector = LabelSelector(matchLabels={names.LABEL_NETWORK: "allowed"})
    spec = NetworkPolicySpec(podSelector=selector, policyTypes=["Egress"], egress=[NetworkPolicyEgressRule()])
    return NetworkPolicy(metadata=_meta(config, names.POLICY_ALLOW_EGRESS, ns), spec=spec)


def _user(launch: Launch, default: int) -> tuple[int, int | None]:
    raw = launch.host.user
    if raw is None:
        return default, None
    user, _, group = raw.partition(":")
    if not user.isdigit() or (group and not group.isdigit()):
        raise LaunchRefusedError(f"user {raw!r}: Kubernetes needs a numeric uid[:gid]")
    uid, gid = int(user), int(group) if group else None
    if uid == 0:
        raise LaunchRefusedError("the restricted pod security standard refuses uid 0")
    return uid, gid


def labels_of(config: KubernetesExecutorConfig, launch: Launch) -> dict[str, str]:
    """The labels of an attempt's Job and pod."""
    labels = {
        names.LABEL_INSTANCE: config.instance,
        names.LABEL_POOL: config.pool,
        names.LABEL_TENANT: names.label_value(launch.tenant),
        names.LABEL_TASK: names.label_value(launch.task_id),
        names.LABEL_ATTEMPT: str(launch.attempt),
    }
    if launch.host.network:
        labels[names.LABEL_NETWORK] = "allowed"
    return labels


def job(config: KubernetesExecutorConfig, launch: Launch, ns: str) -> Job:
    """The attempt's Job: one pod, no retries, restricted security context, requests = limits."""
    if not launch.argv:
        raise LaunchRefusedError("empty command")
    if launch.image is None:
        raise LaunchRefusedError("a Kubernetes task needs an image")
    uid, gid = _user(launch, config.default_user)
    labels = labels_of(config, launch)
    annotations = {names.ANNOTATION_TASK_ID: launch.task_id, names.ANNOTATION_OWNER: owner(config)}
    seccomp = SeccompProfile(type="RuntimeDefault")
    amounts = quantities(launch.resources)
    workdir = SANDBOX if not launch.workdir else f"{SANDBOX}/{launch.workdir}"
    container = Container(
        name=names.CONTAINER_NAME,
        image=launch.image,
        imagePullPolicy=config.image_pull_policy,
        command=list(launch.argv),
        env=[EnvVar(name=k, value=v) for k, v in sorted(launch.env.items())] or None,
        workingDir=workdir,
        resources=ResourceRequirements(requests=dict(amounts), limits=dict(amounts)) if amounts else None,
        securityContext=SecurityContext(
            runAsNonRoot=True,
            runAsUser=uid,
            runAsGroup=gid,
            allowPrivilegeEscalation=False,
            capabilities=Capabilities(drop=["ALL"]),
            seccompProfile=seccomp,
            readOnlyRootFilesystem=True if launch.host.read_only_root else None,
        ),
        volumeMounts=[VolumeMount(name="sandbox", mountPath=SANDBOX)],
    )
    pod = PodSpec(
        containers=[container],
        restartPolicy="Never",
        automountServiceAccountToken=False,
        enableServiceLinks=False,
        nodeSelector=dict(config.node_selector) or None,
        securityContext=PodSecurityContext(runAsNonRoot=True, runAsUser=uid, runAsGroup=gid, seccompProfile=seccomp),
        volumes=[Volume(name="sandbox", emptyDir=EmptyDirVolumeSource())],
    )
    deadline = None if launch.run_timeout is None else max(1, math.ceil(launch.run_timeout))
    return Job(
        metadata=ObjectMeta(
            name=names.job_name(launch.task_id, launch.attempt), namespace=ns, labels=labels, annotations=annotations
        ),
        spec=JobSpec(
            backoffLimit=0,
            activeDeadlineSeconds=deadline,
            ttlSecondsAfterFinished=config.ttl_seconds_after_finished,
            template=PodTemplateSpec(metadata=ObjectMeta(labels=labels, annotations=annotations), spec=pod),
        ),
    )


def selector(config: KubernetesExecutorConfig) -> Mapping[str, str]:
    """The label selector of every object this executor instance owns."""
    return {names.LABEL_INSTANCE: config.instance, names.LABEL_POOL: config.pool}
