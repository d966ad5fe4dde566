"""``KubernetesExecutor``: the ``Executor`` port over a cluster's API, one ``batch/v1`` Job per attempt.

Writes: per tenant, once per process, whichever of its namespace, quota, limit range and two network policies
are missing (read first); per attempt, the Job's create and its delete at ``ack`` (plus the pod's delete on
``stop``, so the grace period is the one asked for). Everything else is read: watches on this instance's Jobs and
Pods across namespaces, from the revision of an initial list, re-listed (and reconciled) on 410 Gone or a
broken stream. See ``README.md`` here for the pipeline and ``status.py`` for the status mapping.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Callable, Coroutine, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from lightkube import AsyncClient
from lightkube.resources.batch_v1 import Job
from lightkube.resources.core_v1 import Node, Pod
from lightkube.types import CascadeType

from taskplane.domain.outcome import AttemptOutcome
from taskplane.domain.resources import Resources
from taskplane.domain.tenant import Quota
from taskplane.errors import UnavailableError
from taskplane.executors.kubernetes import manifests, names
from taskplane.executors.kubernetes.api import API_ERRORS, connect, status_code
from taskplane.executors.kubernetes.capacity import compute_capacity
from taskplane.executors.kubernetes.config import KubernetesExecutorConfig
from taskplane.executors.kubernetes.logs import AttemptLogs
from taskplane.executors.kubernetes.metrics import POD_STARTUP
from taskplane.executors.kubernetes.status import compute_outcome, container, disruption, job_condition, unschedulable
from taskplane.executors.kubernetes.tenancy import Tenancy
from taskplane.executors.kubernetes.tracking import Attempt, AttemptKey, key_of_job
from taskplane.executors.outbox import EventOutbox
from taskplane.services.ports import (
    ExecutorEvent,
    Exited,
    Launch,
    LogStream,
    NodeCapacity,
    NodeResized,
    Recovered,
    Started,
)

log = logging.getLogger("taskplane.executor.kubernetes")

CGROUPS = "kubernetes"  # ``NodeCapacity.cgroups``: limits are the kubelet's business
CREATE_CONCURRENCY = 32
CREATE_TRIES = 3  # a create without an answer (or a 5xx/429) is sent again: 201, or 409 when the first one landed
LOG_WAIT = 5.0  # seconds an exit waits for its log copy to catch up
LOG_FOLLOWERS = 64  # live log streams at once: each holds one of the client's 100 pooled connections
WATCH_SECONDS = 290  # the server ends each watch request after this; lightkube resumes it from the last revision


def _utc() -> datetime:
    return datetime.now(UTC)


def _created(att: Attempt) -> datetime:
    meta = att.job.metadata if att.job is not None else None
    return (meta.creationTimestamp if meta is not None else None) or datetime.min.replace(tzinfo=UTC)


class KubernetesExecutor:
    """Runs attempts as Jobs; taskplane admits (quota, priority, fair share), the kube-scheduler places."""

    name = "kubernetes"

    def __init__(
        self,
        config: KubernetesExecutorConfig,
        *,
        client: AsyncClient | None = None,
        quota_for: Callable[[str], Quota | None] | None = None,
    ) -> None:
        """An executor for one pool.

        ``client``: an injected lightkube client (tests serve the API double through its transport);
        ``quota_for``: the tenant's quota for its namespace's ResourceQuota (``None``: pods only).
        """
        if not names.valid_label_value(config.instance) or not names.valid_label_value(config.pool):
            raise UnavailableError(f"instance {config.instance!r} and pool {config.pool!r} must be label values")
        self.config = config
        self._client = client
        self._own_client = client is None
        self._tenancy = Tenancy(config, self._need_client, quota_for)
        self._selector: dict[str, Any] = dict(manifests.selector(config))
        self._attempts: dict[AttemptKey, Attempt] = {}
        self._by_job: dict[tuple[str, str], AttemptKey] = {}
        self._exits: dict[AttemptKey, Exited] = {}
        self._creating: set[AttemptKey] = set()  # in ``_create``, before their Job is known to exist
        self._early_stops: set[AttemptKey] = set()  # stopped while being created (before their Attempt existed)
        self._total = Resources()
        self._outbox = EventOutbox()
        self._tasks: set[asyncio.Task[None]] = set()
        self._log_gate = asyncio.Semaphore(LOG_FOLLOWERS)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False

    # --------------------------------------------------------------------------------------- the port

    async def open(self, epoch: int, on_events: Callable[[list[ExecutorEvent]], None]) -> Recovered:
        """List nodes, Jobs and Pods; report this instance's attempts; start watching.

        ``epoch`` is not used: the API server is the single source of truth and Jobs are idempotent by name.
        """
        self._loop = asyncio.get_running_loop()
        self._outbox.open(self._loop, on_events)
        client = self._client = self._client or connect(self.config.kubeconfig, self.config.context)
        try:
            await self._refresh_capacity()
            jobs = client.list(Job, namespace="*", labels=self._selector)
            job_items = [j async for j in jobs]
            pods = client.list(Pod, namespace="*", labels=self._selector)
            pod_items = [p async for p in pods]
        except API_ERRORS as exc:
            raise UnavailableError(f"the Kubernetes API ({self._server()}) is unreachable: {exc}") from exc
        for job in job_items:
            self._on_job("ADDED", job, recovering=True)
        for pod in pod_items:
            self._on_pod("ADDED", pod, recovering=True)
        recovered = await self._recover()
        self._spawn(self._watch(Job, jobs.resourceVersion), "watch-jobs")
        self._spawn(self._watch(Pod, pods.resourceVersion), "watch-pods")
        self._spawn(self._capacity_loop(), "capacity")
        self._emit(NodeResized(self.config.node_name, self._total, self.config.max_tasks))
        return recovered

    async def start(self, launches: Sequence[Launch]) -> None:
        """Create a Job per launch (idempotent per attempt: a Job already there is adopted)."""
        fresh = [la for la in launches if (la.task_id, la.attempt) not in self._attempts]
        fresh = [la for la in fresh if (la.task_id, la.attempt) not in self._exits]
        gate = asyncio.Semaphore(CREATE_CONCURRENCY)

        async def one(launch: Launch) -> None:
            async with gate:
                await self._create(launch)

        await asyncio.gather(*(one(la) for la in fresh))

    async def stop(self, task_id: str, attempt: int, grace: float) -> None:
        """Delete the pod with ``grace`` and the Job with ``propagationPolicy=Foreground``."""
        att = self._attempts.get((task_id, attempt))
        if att is None and (task_id, attempt) in self._creating:
            self._early_stops.add((task_id, attempt))  # its create sees it: no Job, or the Job deleted at once
            return
        if att is None or att.ending or att.deleted:
            return
        att.stopping = True
        seconds = max(0, math.ceil(grace))
        client = self._need_client()
        with contextlib.suppress(*API_ERRORS):
            if att.pod_name is not None and att.started_at is not None:
                await client.delete(Pod, att.pod_name, namespace=att.namespace, grace_period=seconds)
        await self._delete_job(att, CascadeType.FOREGROUND, seconds)

    async def unqueue(self, task_id: str, attempt: int) -> None:
        """Delete the Job of an attempt whose container has not started (reported ``never_started``)."""
        att = self._attempts.get((task_id, attempt))
        if att is None and (task_id, attempt) in self._creating:
            self._early_stops.add((task_id, attempt))
            return
        if att is None or att.started_at is not None or att.ending or att.deleted:
            return
        att.stopping = True
        await self._delete_job(att, CascadeType.BACKGROUND, 0)

    async def ack(self, keys: Sequence[tuple[str, int]]) -> None:
        """Forget these exits and delete their Jobs (Background: the pods go too; the logs are copied already)."""
        doomed = []
        for key in keys:
            self._exits.pop(key, None)
            att = self._attempts.pop(key, None)
            if att is not None:
                self._by_job.pop((att.namespace, att.job_name), None)
                att.cancel_timer()
                if not att.deleted:
                    doomed.append(att)
        await asyncio.gather(*(self._delete_job(att, CascadeType.BACKGROUND, None) for att in doomed))

    def capacity(self) -> NodeCapacity:
        """The pool's one aggregate node: the allocatable of the Ready nodes matching ``node_selector``."""
        return NodeCapacity(self.config.node_name, self._total, self.config.max_tasks, CGROUPS)

    def nodes(self) -> list[NodeCapacity]:
        """One aggregate node (zero-sized before ``open``; ``NodeResized`` tells the engine its real size)."""
        return [self.capacity()]

    def log_path(self, task_id: str, attempt: int, stream: LogStream) -> Path:
        """``<logs_dir>/<task_id>.<attempt>.<stream>`` (stderr stays empty unless ``split_log_streams``)."""
        return self.config.logs_dir / f"{task_id}.{attempt}.{stream.value}"

    async def close(self) -> None:
        """Stop watching; Jobs keep running and a new instance recovers them. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._outbox.close()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(BaseException):
                await task
        for att in self._attempts.values():
            att.cancel_timer()
        if self._own_client and self._client is not None:
            await self._client.close()

    # -------------------------------------------------------------------------------------- creating

    async def _create(self, launch: Launch) -> None:
        key = (launch.task_id, launch.attempt)
        self._creating.add(key)
        try:
            await self._create_job(launch, key)
        finally:
            self._creating.discard(key)
            self._early_stops.discard(key)

    async def _create_job(self, launch: Launch, key: AttemptKey) -> None:
        try:
            ns = await self._tenancy.namespace(launch.tenant)
            job = manifests.job(self.config, launch, ns)
        except manifests.LaunchRefusedError as exc:
            self._refuse(launch, str(exc), retryable=False)
            return
        except API_ERRORS as exc:
            self._refuse(launch, f"cannot prepare namespace: {exc}", retryable=True)
            return
        assert job.metadata is not None and job.metadata.name is not None
        if key in self._early_stops:  # stopped before its Job was created: it never will be
            exited = Exited(launch.task_id, launch.attempt, _utc(), AttemptOutcome(), never_started=True)
            self._exits[key] = exited
            self._emit(exited)
            return
        att = Attempt(launch.task_id, launch.attempt, ns, job.metadata.name, created=time.monotonic())
        self._attempts[key] = att
        self._by_job[(ns, att.job_name)] = key
        for tries in range(1, CREATE_TRIES + 1):
            try:
                created = await self._need_client().create(job)
            except API_ERRORS as exc:
                code = status_code(exc)
                if code == 409:  # created by an earlier call or process (or a try whose answer was lost): adopted
                    if att.stopping and not att.deleted:
                        await self._delete_job(att, CascadeType.FOREGROUND, 0)
                    return
                ambiguous = code is None or code >= 500  # the Job may exist although no answer said so
                if (ambiguous or code == 429) and tries < CREATE_TRIES and not att.stopping:
                    await asyncio.sleep(0.2 * tries)  # the same name again: 201, or 409 if it was created
                    continue
                self._attempts.pop(key, None)
                self._by_job.pop((ns, att.job_name), None)
                if ambiguous:  # never leave a Job running for an attempt reported as not started
                    await self._delete_job(att, CascadeType.BACKGROUND, 0)
                if code == 404:
                    self._tenancy.forget(launch.tenant)  # deleted underneath: set up again next time
                self._refuse(launch, f"Job create failed: {exc}", retryable=code not in (400, 422))
                return
            if att.job is None:  # known from the answer: a re-list that misses it means it was deleted
                att.job = created
            if att.stopping and not att.deleted:  # stopped while the create was under way: its delete found nothing
                await self._delete_job(att, CascadeType.FOREGROUND, 0)
            return

    def _refuse(self, launch: Launch, reason: str, *, retryable: bool) -> None:
        outcome = AttemptOutcome(spawn_error=reason, retryable=retryable)
        exited = Exited(launch.task_id, launch.attempt, _utc(), outcome)
        self._exits[(launch.task_id, launch.attempt)] = exited
        self._emit(exited)

    async def _delete_job(self, att: Attempt, cascade: CascadeType, grace: int | None) -> None:
        try:
            await self._need_client().delete(
                Job, att.job_name, namespace=att.namespace, cascade=cascade, grace_period=grace
            )
        except API_ERRORS as exc:
            if status_code(exc) != 404:
                log.warning("deleting Job %s/%s failed: %s", att.namespace, att.job_name, exc)

    # -------------------------------------------------------------------------------------- watching

    async def _watch(self, res: type[Job] | type[Pod], rv: str | None) -> None:
        handle = self._on_job if res is Job else self._on_pod
        delay = 0.1
        while not self._closed:
            try:
                if rv is None:
                    rv = await self._relist(res)
                stream = self._need_client().watch(
                    res, namespace="*", labels=self._selector, resource_version=rv, server_timeout=WATCH_SECONDS
                )
                async for type_, obj in stream:
                    delay = 0.1
                    if obj.metadata is not None and obj.metadata.resourceVersion:
                        rv = obj.metadata.resourceVersion
                    handle(type_, obj)  # type: ignore[arg-type]
            except asyncio.CancelledError:
                raise
            except API_ERRORS as exc:
                if status_code(exc) == 410:
                    log.info("%s watch expired (410 Gone): re-listing", res.__name__)
                    rv = None
                    continue
                log.warning("%s watch broke: %s; resuming in %.1fs", res.__name__, exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
            except Exception:
                log.exception("%s watch failed; re-listing", res.__name__)
                rv = None
                await asyncio.sleep(delay)

    async def _relist(self, res: type[Job] | type[Pod]) -> str:
        """List and reconcile: what changed while nobody watched is applied, what vanished is DELETED."""
        # Only what was known before listing may be taken for vanished: a Job created (or a pod read) while the
        # list was under way is missing from it without being gone.
        known = {k for k, a in self._attempts.items() if (a.job if res is Job else a.pod) is not None}
        listing = self._need_client().list(res, namespace="*", labels=self._selector)
        items = [o async for o in listing]
        seen = set()
        for obj in items:
            key = key_of_job(obj) if isinstance(obj, Job) else self._key_of_pod(obj)
            seen.add(key)
            if isinstance(obj, Job):
                self._on_job("MODIFIED", obj)
            else:
                self._on_pod("MODIFIED", obj)
        for key, att in list(self._attempts.items()):
            if key in seen or key not in known:
                continue
            if res is Job and att.job is not None and not att.deleted:
                self._on_job("DELETED", att.job)
            elif res is Pod and att.pod is not None and not att.pod_gone:
                self._on_pod("DELETED", att.pod)
        return listing.resourceVersion

    def _key_of_pod(self, pod: Pod) -> AttemptKey | None:
        meta = pod.metadata
        if meta is None or meta.namespace is None:
            return None
        job = (meta.labels or {}).get("job-name") or (meta.labels or {}).get("batch.kubernetes.io/job-name")
        return self._by_job.get((meta.namespace, job or ""))

    def _on_job(self, type_: str, job: Job, *, recovering: bool = False) -> None:
        key = key_of_job(job)
        if key is None:
            return
        att = self._attempts.get(key)
        if att is None:
            if type_ == "DELETED" or not recovering or job.metadata is None:
                return  # not ours any more (acked), or made by another process with our labels
            att = Attempt.from_job(job)
            self._attempts[key] = att
            self._by_job[(att.namespace, att.job_name)] = key
        att.job = job
        if type_ == "DELETED":
            att.deleted = True
        doomed = type_ == "DELETED" or (job.metadata is not None and job.metadata.deletionTimestamp is not None)
        if doomed and not att.stopping and not att.ending and job_condition(job) is None:
            att.taken = True  # deleted by someone else while it ran: its pod's exit (SIGTERM) is no verdict
        if not recovering:
            self._check(att)

    def _on_pod(self, type_: str, pod: Pod, *, recovering: bool = False) -> None:
        key = self._key_of_pod(pod)
        att = None if key is None else self._attempts.get(key)
        if att is None or pod.metadata is None:
            return
        att.pod, att.pod_name = pod, pod.metadata.name
        att.pod_gone = type_ == "DELETED"
        running = container(pod).exit_code is None and (att.job is None or job_condition(att.job) is None)
        if pod.metadata.deletionTimestamp is not None and running and not att.stopping and not att.ending:
            att.taken = True  # deleted by someone else (kubectl delete pod) while it ran
        since = self._saw_start(att, emit=not recovering)
        if since is not None and att.logs is None and not att.pod_gone:
            self._follow_logs(att)
        self._track_unschedulable(att, pod)
        if not recovering:
            self._check(att)

    def _saw_start(self, att: Attempt, *, emit: bool) -> datetime | None:
        """When the attempt's container started, as its pod says; the first time, ``Started`` (``emit``).

        A container seen only once it ended still started: its Started comes before its Exited.
        """
        view = container(att.pod)
        since = view.running_since or view.started_at
        if since is not None and att.started_at is None:
            att.started_at = since
            if att.created is not None:
                POD_STARTUP.labels(self.config.pool).observe(max(0.0, time.monotonic() - att.created))
            if emit:
                self._emit(Started(att.task_id, att.attempt, since))
        return since

    async def _read_pod(self, att: Attempt) -> None:
        """Read the attempt's pod once (its watch is another stream than the Job's and may lag)."""
        with contextlib.suppress(*API_ERRORS):
            by_job: dict[str, Any] = {"job-name": att.job_name}
            pods = self._need_client().list(Pod, namespace=att.namespace, labels=by_job)
            fresh = [p async for p in pods]
            if fresh:
                att.pod = fresh[0]
                if att.pod_name is None and fresh[0].metadata is not None:
                    att.pod_name = fresh[0].metadata.name

    def _track_unschedulable(self, att: Attempt, pod: Pod) -> None:
        if unschedulable(pod) is None:
            att.cancel_timer()
            return
        if att.timer is not None or self._loop is None:
            return
        created = pod.metadata.creationTimestamp if pod.metadata else None
        waited = 0.0 if created is None else max(0.0, (_utc() - created).total_seconds())
        delay = max(0.0, self.config.unschedulable_timeout - waited)
        att.timer = self._loop.call_later(delay, self._unschedulable_expired, (att.task_id, att.attempt))

    def _unschedulable_expired(self, key: AttemptKey) -> None:
        att = self._attempts.get(key)
        if att is None or att.ending or att.deleted:
            return
        att.timer = None
        message = unschedulable(att.pod)
        if message is None:
            return
        outcome = AttemptOutcome(spawn_error=f"unschedulable for {self.config.unschedulable_timeout:g}s: {message}")
        att.ending = True
        self._spawn(self._delete_job(att, CascadeType.BACKGROUND, 0), "delete-unschedulable")
        self._spawn(self._finish(att, outcome, decided=True), "finish")

    # --------------------------------------------------------------------------------------- ending

    @staticmethod
    def _outcome(att: Attempt) -> AttemptOutcome | None:
        outcome = compute_outcome(att.job, att.pod, stopping=att.stopping, deleted=att.deleted)
        if outcome is None or not att.taken or att.stopping or outcome.deadline_exceeded or outcome.oom_killed:
            return outcome
        if outcome.signal is not None or (outcome.exit_code or 0) != 0:  # a success stands, a kill is no verdict
            return AttemptOutcome(lost="its Job or pod was deleted by someone else")
        return outcome

    def _check(self, att: Attempt) -> None:
        if att.ending:
            return
        outcome = self._outcome(att)
        if outcome is not None:
            att.ending = True
            self._spawn(self._finish(att, outcome), "finish")

    async def _finish(self, att: Attempt, outcome: AttemptOutcome, *, decided: bool = False) -> None:
        exited = await self._ended(att, outcome, live=True, decided=decided)
        if (exited.task_id, exited.attempt) in self._attempts:
            self._exits[(exited.task_id, exited.attempt)] = exited
            self._emit(exited)

    async def _ended(self, att: Attempt, outcome: AttemptOutcome, *, live: bool, decided: bool = False) -> Exited:
        """The ``Exited`` of an ended attempt, once its log copy finished, from the freshest pod state.

        ``outcome`` was computed when the end was noticed; the pod may have moved on since (its watch is another
        stream than the Job's), so the outcome is computed again, after reading a pod that still looks stale,
        unless the executor ``decided`` it (an unschedulable timeout).
        """
        cond = None if att.job is None or decided else job_condition(att.job)
        if att.pod is None and cond is not None and not att.deleted:
            await self._read_pod(att)  # no pod event came yet: without it, no Started and no log
        self._saw_start(att, emit=live)
        if att.logs is None and att.started_at is not None:
            att.logs = self._logs_of(att)  # ended before a live copy began (or found ended after a restart)
        if att.logs is not None:
            pod = None if att.pod_gone else att.pod_name
            await att.logs.complete(att.namespace, pod, LOG_WAIT if live else 0.5, LOG_WAIT)
        stale = container(att.pod).exit_code is None and disruption(att.pod) is None
        if cond is not None and cond[1] != "DeadlineExceeded" and stale and not att.deleted:
            await self._read_pod(att)  # the pod watch lags the Job's: read the pod once
            self._saw_start(att, emit=live)
        if not decided:
            outcome = self._outcome(att) or outcome
        view = container(att.pod)
        started = att.started_at or view.started_at
        never = started is None and att.stopping and outcome.exit_code is None and outcome.lost is None
        if never:
            outcome = AttemptOutcome()
        truncated = att.logs is not None and att.logs.truncated
        at = view.finished_at or _utc()
        return Exited(
            att.task_id, att.attempt, at, outcome, started_at=started, never_started=never, log_truncated=truncated
        )

    async def _recover(self) -> Recovered:
        running: list[Started] = []
        exited: list[Exited] = []
        queued: list[tuple[str, int]] = []  # Jobs whose container has not started, oldest first
        for key, att in sorted(self._attempts.items(), key=lambda kv: (_created(kv[1]), kv[0])):
            outcome = self._outcome(att)
            if outcome is not None:
                att.ending = True
                self._exits[key] = await self._ended(att, outcome, live=False)
                exited.append(self._exits[key])
            elif att.started_at is not None:
                running.append(Started(att.task_id, att.attempt, att.started_at))
            else:
                queued.append(key)
        return Recovered(running=running, exited=exited, queued=queued)

    # ------------------------------------------------------------------------------------------ logs

    def _logs_of(self, att: Attempt) -> AttemptLogs:
        out = self.log_path(att.task_id, att.attempt, LogStream.STDOUT)
        err = self.log_path(att.task_id, att.attempt, LogStream.STDERR)
        split = self.config.split_log_streams
        return AttemptLogs(self._need_client(), out, err, self.config.log_limit_bytes, split=split)

    def _follow_logs(self, att: Attempt) -> None:
        logs = att.logs = self._logs_of(att)
        if att.pod_name is not None:

            def ended() -> bool:
                view = container(att.pod)
                return att.ending or att.pod_gone or view.exit_code is not None or disruption(att.pod) is not None

            follows = logs.follows(att.namespace, att.pod_name, lambda: att.pod_gone, self._log_gate, ended)
            logs.tasks = [self._spawn(f, "logs") for f in follows]

    # -------------------------------------------------------------------------------------- capacity

    async def _refresh_capacity(self) -> bool:
        """List the matching nodes; True when the pool's size changed."""
        selector: dict[str, Any] = dict(self.config.node_selector)
        listing = self._need_client().list(Node, labels=selector or None)
        total = compute_capacity([n async for n in listing])
        changed, self._total = total != self._total, total
        return changed

    async def _capacity_loop(self) -> None:
        while not self._closed:
            await asyncio.sleep(self.config.capacity_refresh)
            try:
                if await self._refresh_capacity():
                    self._emit(NodeResized(self.config.node_name, self._total, self.config.max_tasks))
            except API_ERRORS as exc:
                log.warning("listing nodes failed: %s", exc)

    # ------------------------------------------------------------------------------------- internals

    def _server(self) -> str:
        try:
            return str(self._need_client().config.cluster.server)
        except Exception:
            return "unknown server"

    def _need_client(self) -> AsyncClient:
        if self._client is None:
            raise UnavailableError("the Kubernetes executor is not open")
        return self._client

    def _spawn(self, coro: Coroutine[Any, Any, None], what: str) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(coro, name=f"kubernetes-{what}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _emit(self, event: ExecutorEvent) -> None:
        self._outbox.emit(event)
