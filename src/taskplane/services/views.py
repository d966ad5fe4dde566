"""Domain objects to wire models (what the API returns)."""

from __future__ import annotations

from datetime import datetime

from taskplane.domain.quantities import format_bytes, format_millicpu
from taskplane.domain.reservation import Reservation
from taskplane.domain.resources import Resources
from taskplane.domain.task import NO_HOST_ACCESS, Attempt, HostAccess, PendingReason, Task
from taskplane.domain.tenant import Tenant, TenantPolicy
from taskplane.services.ports import TaskEvent
from taskplane.wire import (
    AttemptOut,
    ContainerOut,
    EventOut,
    MountOut,
    PendingReasonOut,
    PolicyOut,
    PriorityRangeOut,
    QuotaOut,
    ReservationOut,
    ResourcesOut,
    TaskOut,
    TenantOut,
    TenantStatusOut,
)


def resources_out(res: Resources) -> ResourcesOut:
    """Both the human and the integer form of a resource vector."""
    return ResourcesOut(
        cpu=format_millicpu(res.millicpu),
        memory=format_bytes(res.memory),
        gpu=res.gpu,
        millicpu=res.millicpu,
        memory_bytes=res.memory,
        extended=dict(res.extended),
    )


def reason_out(reason: PendingReason | None) -> PendingReasonOut | None:
    """The wire form of a pending reason."""
    if reason is None:
        return None
    return PendingReasonOut(code=reason.code, message=reason.message, resource=reason.resource, until=reason.until)


def attempt_out(a: Attempt) -> AttemptOut:
    """The wire form of an attempt."""
    return AttemptOut(
        number=a.number,
        state=a.state.value,
        node=a.node,
        created_at=a.created_at,
        started_at=a.started_at,
        finished_at=a.finished_at,
        pid=a.pid,
        exit_code=a.exit_code,
        signal=a.signal,
        failure_class=None if a.failure_class is None else a.failure_class.value,
        message=a.message,
        peak_memory=a.peak_memory,
        cpu_seconds=a.cpu_seconds,
        log_truncated=a.log_truncated,
    )


def event_out(e: TaskEvent) -> EventOut:
    """The wire form of a task event."""
    return EventOut(
        seq=e.seq,
        at=e.at,
        type=e.type,
        from_state=None if e.from_state is None else e.from_state.value,
        to_state=None if e.to_state is None else e.to_state.value,
        attempt=e.attempt,
        data=dict(e.data),
    )


def container_out(host: HostAccess) -> ContainerOut | None:
    """The container options of a task; ``None`` when it asked for none."""
    if host == NO_HOST_ACCESS:
        return None
    return ContainerOut(
        privileged=host.privileged,
        host_network=host.host_network,
        host_pid=host.host_pid,
        network=host.network,
        mounts=[MountOut(source=m.source, target=m.target, read_only=m.read_only) for m in host.mounts],
        read_only_root=host.read_only_root,
        user=host.user,
    )


def policy_out(policy: TenantPolicy) -> PolicyOut:
    """The wire form of a tenant's host-access policy."""
    return PolicyOut(
        allow_privileged=policy.allow_privileged,
        allow_host_network=policy.allow_host_network,
        allow_host_pid=policy.allow_host_pid,
        allow_host_mounts=policy.allow_host_mounts,
        allow_network=policy.allow_network,
    )


def task_out(
    task: Task,
    attempts: list[Attempt] | None = None,
    *,
    reason: PendingReason | None = None,
    queue_position: int | None = None,
    eta: datetime | None = None,
) -> TaskOut:
    """The wire form of a task; ``reason`` overrides the stored pending reason with a live one."""
    spec = task.spec
    t = spec.timeouts
    r = spec.retry
    return TaskOut(
        id=task.id,
        name=spec.name,
        tenant=spec.tenant,
        state=task.state.value,
        priority=spec.priority,
        command=list(spec.command),
        shell=spec.shell,
        env=dict(spec.env),
        workdir=spec.workdir,
        image=spec.image,
        resources=resources_out(spec.resources),
        labels=dict(spec.labels),
        timeouts={"queue": t.queue, "run": t.run, "deadline": None if t.deadline is None else t.deadline.isoformat()},
        retry={
            "max_attempts": r.max_attempts,
            "backoff": r.backoff_initial,
            "backoff_max": r.backoff_max,
            "backoff_multiplier": r.backoff_multiplier,
            "jitter": r.jitter,
            "retry_on": sorted(c.value for c in r.retry_on),
        },
        idempotency_key=task.idempotency_key,
        created_at=task.created_at,
        updated_at=task.updated_at,
        started_at=task.started_at,
        finished_at=task.finished_at,
        attempt_count=task.attempts,
        exit_code=task.exit_code,
        failure_class=None if task.failure_class is None else task.failure_class.value,
        message=task.message,
        pending_reason=reason_out(reason or task.pending_reason) if not task.state.terminal else None,
        queue_position=queue_position,
        eta=eta,
        pool=spec.pool,
        node_selector=dict(spec.node_selector),
        reservation=spec.reservation,
        simulated_duration=spec.simulated_duration,
        cancel_requested=task.cancel_requested,
        owner=spec.owner,
        container=container_out(spec.host),
        attempts=None if attempts is None else [attempt_out(a) for a in attempts],
    )


def tenant_out(tenant: Tenant, *, implicit: bool = False, status: TenantStatusOut | None = None) -> TenantOut:
    """The wire form of a tenant; ``implicit`` for the ``default`` tenant while it is not stored."""
    quota = tenant.quota
    return TenantOut(
        name=tenant.name,
        quota=QuotaOut(
            cpu=None if quota.millicpu is None else format_millicpu(quota.millicpu),
            memory=None if quota.memory is None else format_bytes(quota.memory),
            gpu=quota.gpu,
            millicpu=quota.millicpu,
            memory_bytes=quota.memory,
            max_running=quota.max_running,
            max_pending=quota.max_pending,
        ),
        weight=tenant.weight,
        pools=None if tenant.pools is None else list(tenant.pools),
        priority_range=PriorityRangeOut(min=tenant.priority_min, max=tenant.priority_max),
        borrowing=tenant.borrowing,
        policy=policy_out(tenant.policy),
        implicit=implicit,
        created_at=tenant.created_at,
        updated_at=tenant.updated_at,
        status=status,
    )


def reservation_out(r: Reservation) -> ReservationOut:
    """The wire form of a reservation."""
    return ReservationOut(
        id=r.id,
        tenant=r.tenant,
        pool=r.pool,
        state=r.state.value,
        resources=resources_out(r.resources),
        count=r.count,
        total=resources_out(r.total),
        priority=r.priority,
        nodes=list(r.nodes),
        duration=r.duration,
        expires_at=r.expires_at,
        created_at=r.created_at,
        updated_at=r.updated_at,
        activated_at=r.activated_at,
        ended_at=r.ended_at,
        message=r.message,
    )
