"""The double's controllers: a Job controller, a scheduler, a fake kubelet that runs containers as processes.

Reactions are scheduled with ``loop.call_soon`` from the store's listener, never inside the write that caused
them, so clients see events in the order a real cluster produces them (Job ADDED, then Pod ADDED, ...).

- **Job controller**: one Pod per Job (``backoffLimit`` is taken as 0: a failed pod fails the Job), status
  ``startTime``/``active``/``succeeded``/``failed``, conditions ``Complete`` / ``Failed`` (``BackoffLimitExceeded``,
  ``DeadlineExceeded`` from ``activeDeadlineSeconds``, whose pods are then deleted), ``ttlSecondsAfterFinished``,
  delete with ``propagationPolicy`` Foreground (finalizer until the pods are gone), Background or Orphan.
- **Scheduler**: binds a pod to the first Ready node matching its ``nodeSelector`` whose allocatable fits the
  pod's requests next to what is bound there; otherwise ``PodScheduled=False, reason=Unschedulable`` and a retry
  whenever a pod ends or a node changes.
- **Kubelet** (``kubelet="process"``; ``"instant"`` succeeds every pod at once without a process, ``"off"``
  leaves scheduled pods Pending, for measuring the API path alone): images outside ``known_images`` wait in
  ``ErrImagePull`` then ``ImagePullBackOff``; others run ``command + args`` as a local process (``env``
  honoured, the host's ``PATH`` added when the container sets none; no image filesystem, user or limits),
  stdout and stderr merged into one log; a deleted pod gets SIGTERM, then SIGKILL after its grace period.
- **Faults**: ``evict``, ``oom_kill``, ``lose_node``, and ``Store.compact`` (410 Gone for older watches).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Callable
from typing import Any

from taskplane.domain.quantities import parse_bytes, parse_millicpu
from tests.support.kubeapi.pods import PodLog, node_ready, requests_of, terminal
from tests.support.kubeapi.store import Obj, Store, matches, now_iso

DEFAULT_IMAGES = frozenset({"busybox", "busybox:1.36", "docker.io/library/busybox:1.36", "alpine:3.20"})


class Cluster:
    """Controllers over a ``Store``; bound to the running loop by ``bind``."""

    def __init__(
        self, store: Store, *, kubelet: str = "process", known_images: frozenset[str] = DEFAULT_IMAGES
    ) -> None:
        """``kubelet``: ``process`` (run containers), ``instant`` (succeed at once, no process) or ``off``."""
        self.store = store
        self.kubelet = kubelet
        self.known_images = known_images
        self.logs: dict[tuple[str, str], PodLog] = {}
        self._procs: dict[tuple[str, str], asyncio.subprocess.Process] = {}
        self._oom: set[tuple[str, str]] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._timers: list[asyncio.TimerHandle] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._bound: dict[tuple[str, str], tuple[str, tuple[int, int, int]]] = {}  # live pod -> node, requests
        self._used: dict[str, list[int]] = {}  # node -> requests bound to it (live pods)
        self._unscheduled: set[tuple[str, str]] = set()
        self._nodes: set[str] = set()
        self._job_pods: dict[tuple[str, str], set[str]] = {}  # (namespace, job) -> pod names
        store.listeners.append(self._on_change)

    def bind(self) -> None:
        """Attach to the running loop (controllers react from there)."""
        self._loop = asyncio.get_running_loop()

    async def shutdown(self) -> None:
        """Kill every container process and cancel timers and kubelet tasks."""
        for timer in self._timers:
            timer.cancel()
        procs = list(self._procs.values())
        for proc in procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(TimeoutError):  # reaped here, so no transport outlives the loop
            await asyncio.wait_for(asyncio.gather(*(p.wait() for p in procs)), 5.0)
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(BaseException):
                await task
        self.store.close_watches()

    # ------------------------------------------------------------------------------------- plumbing

    def _soon(self, fn: Callable[..., None], *args: Any) -> None:
        assert self._loop is not None, "Cluster.bind() was not called"
        self._loop.call_soon(fn, *args)

    def _later(self, delay: float, fn: Callable[..., None], *args: Any) -> None:
        assert self._loop is not None
        self._timers.append(self._loop.call_later(delay, fn, *args))

    def _spawn(self, coro: Any) -> None:
        assert self._loop is not None
        task = self._loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _on_change(self, kind: str, type_: str, obj: Obj) -> None:
        meta = obj["metadata"]
        ns, name = meta.get("namespace", ""), meta["name"]
        if kind == "pods":
            self._index(type_, ns, name, obj)
        if kind == "jobs" and type_ == "ADDED":
            self._soon(self._start_job, ns, name)
        elif kind == "pods" and type_ == "ADDED":
            self._soon(self._schedule, ns, name)
        elif kind == "pods" and (type_ == "DELETED" or terminal(obj)):
            self._soon(self._pod_ended, ns, name, obj if type_ == "DELETED" else None)
            self._soon(self._retry_pending)
        elif kind == "nodes":
            (self._nodes.discard if type_ == "DELETED" else self._nodes.add)(name)
            self._soon(self._retry_pending)

    def _index(self, type_: str, ns: str, name: str, pod: Obj) -> None:
        job = pod["metadata"].get("labels", {}).get("job-name")
        pods = self._job_pods.setdefault((ns, job), set()) if job else None
        if type_ == "DELETED":
            if pods is not None:
                pods.discard(name)
                if not pods:
                    self._job_pods.pop((ns, job), None)
        elif pods is not None:
            pods.add(name)
        if type_ == "DELETED" or terminal(pod):
            self._unscheduled.discard((ns, name))
            bound = self._bound.pop((ns, name), None)
            if bound is not None:
                used = self._used[bound[0]]
                for i, v in enumerate(bound[1]):
                    used[i] -= v

    # ------------------------------------------------------------------------------------ jobs

    def _start_job(self, ns: str, name: str) -> None:
        job = self.store.peek("jobs", ns, name)
        if job is None or job["metadata"].get("deletionTimestamp"):
            return
        template = job["spec"]["template"]
        labels = {**(template.get("metadata", {}).get("labels") or {}), "job-name": name}
        labels["batch.kubernetes.io/job-name"] = name
        pod: Obj = {
            "metadata": {
                "generateName": f"{name}-",
                "labels": labels,
                "annotations": dict(template.get("metadata", {}).get("annotations") or {}),
                "ownerReferences": [
                    {
                        "apiVersion": "batch/v1",
                        "kind": "Job",
                        "name": name,
                        "uid": job["metadata"]["uid"],
                        "controller": True,
                        "blockOwnerDeletion": True,
                    }
                ],
            },
            "spec": dict(template["spec"]),
            "status": {"phase": "Pending"},
        }
        self.store.create("pods", ns, pod)
        job["status"] = {"startTime": now_iso(), "active": 1}
        self.store.update("jobs", job)
        deadline = job["spec"].get("activeDeadlineSeconds")
        if deadline is not None:
            self._later(float(deadline), self._deadline, ns, name, job["metadata"]["uid"])

    def _pods_of(self, ns: str, job: str) -> list[Obj]:
        found = (self.store.peek("pods", ns, name) for name in sorted(self._job_pods.get((ns, job), ())))
        return [p for p in found if p is not None]

    def _finish(self, job: Obj, cond: str, reason: str, message: str) -> None:
        status = job.setdefault("status", {})
        status["active"] = 0
        status.setdefault("conditions", []).append(
            {
                "type": cond,
                "status": "True",
                "reason": reason,
                "message": message,
                "lastTransitionTime": now_iso(),
                "lastProbeTime": now_iso(),
            }
        )
        if cond == "Complete":
            status["succeeded"], status["completionTime"] = 1, now_iso()
        else:
            status["failed"] = 1
        self.store.update("jobs", job)
        ttl = job["spec"].get("ttlSecondsAfterFinished")
        if ttl is not None:
            meta = job["metadata"]
            self._later(float(ttl), self._ttl_expired, meta["namespace"], meta["name"], meta["uid"])

    @staticmethod
    def finished(job: Obj) -> bool:
        """True once the Job has a ``Complete`` or ``Failed`` condition."""
        conds = job.get("status", {}).get("conditions") or []
        return any(c["type"] in ("Complete", "Failed") and c["status"] == "True" for c in conds)

    def _deadline(self, ns: str, name: str, uid: str) -> None:
        job = self.store.peek("jobs", ns, name)
        if job is None or job["metadata"]["uid"] != uid or self.finished(job):
            return
        self._finish(job, "Failed", "DeadlineExceeded", "Job was active longer than specified deadline")
        for pod in self._pods_of(ns, name):
            self.delete_pod(ns, pod["metadata"]["name"], None)

    def _ttl_expired(self, ns: str, name: str, uid: str) -> None:
        job = self.store.peek("jobs", ns, name)
        if job is not None and job["metadata"]["uid"] == uid:
            self.delete_job(ns, name, "Background", None)

    def _pod_ended(self, ns: str, pod_name: str, removed: Obj | None = None) -> None:
        """A pod ended or was removed: its Job finishes (a removed pod that had not succeeded counts as failed,
        as the Job controller's tracking finalizers make it, also while the Job itself is being deleted)."""
        pod = self.store.peek("pods", ns, pod_name) or removed
        job_name = None if pod is None else pod["metadata"]["labels"].get("job-name")
        if pod is None or job_name is None or (removed is None and not terminal(pod)):
            return
        job = self.store.peek("jobs", ns, job_name)
        if job is None or self.finished(job):
            return
        if pod["status"]["phase"] == "Succeeded":
            self._finish(job, "Complete", "Completed", "Reached expected number of succeeded pods")
        else:
            self._finish(job, "Failed", "BackoffLimitExceeded", "Job has reached the specified backoff limit")

    def delete_job(self, ns: str, name: str, policy: str | None, grace: int | None) -> Obj:
        """Delete a Job with ``propagationPolicy`` (batch/v1 default: Orphan).

        ``grace`` applies to the Job object only, as in Kubernetes: its pods get their own grace period.
        """
        job = self.store.get("jobs", ns, name)
        pods = self._pods_of(ns, name)
        if policy in (None, "Orphan"):  # batch/v1's default when the caller names none
            return self.store.remove("jobs", ns, name) or job
        for pod in pods:  # the garbage collector deletes dependents with their own grace period, not the Job's
            self.delete_pod(ns, pod["metadata"]["name"], None)
        if policy == "Foreground" and self._pods_of(ns, name):
            stored = self.store.objects[("jobs", ns, name)]
            stored["metadata"]["deletionTimestamp"] = now_iso()
            stored["metadata"]["finalizers"] = ["foregroundDeletion"]
            return self.store.update("jobs", stored)
        return self.store.remove("jobs", ns, name) or job

    def _collect_foreground(self, ns: str, job_name: str) -> None:
        job = self.store.peek("jobs", ns, job_name)
        if job is not None and job["metadata"].get("deletionTimestamp") and not self._pods_of(ns, job_name):
            self.store.remove("jobs", ns, job_name)

    # ------------------------------------------------------------------------------------ pods

    def delete_pod(self, ns: str, name: str, grace: int | None) -> Obj | None:
        """Graceful delete: SIGTERM now, SIGKILL after ``grace`` (default the pod's), removed once it ended."""
        pod = self.store.peek("pods", ns, name)
        if pod is None:
            return None
        proc = self._procs.get((ns, name))
        if proc is None or proc.returncode is not None:
            return self._remove_pod(ns, name)
        if not pod["metadata"].get("deletionTimestamp"):
            pod["metadata"]["deletionTimestamp"] = now_iso()
            self.store.update("pods", pod)
        seconds = grace if grace is not None else int(pod["spec"].get("terminationGracePeriodSeconds", 30))
        self._signal(proc, signal.SIGTERM if seconds > 0 else signal.SIGKILL)
        if seconds > 0:
            self._later(float(seconds), self._signal, proc, signal.SIGKILL)
        return self.store.get("pods", ns, name)

    def _remove_pod(self, ns: str, name: str) -> Obj | None:
        pod = self.store.remove("pods", ns, name)
        job_name = None if pod is None else pod["metadata"].get("labels", {}).get("job-name")
        if job_name is not None:
            self._soon(self._collect_foreground, ns, job_name)
        return pod

    @staticmethod
    def _signal(proc: asyncio.subprocess.Process, sig: int) -> None:
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, sig)

    def _schedule(self, ns: str, name: str) -> None:
        pod = self.store.peek("pods", ns, name)
        if pod is None or pod["spec"].get("nodeName") or terminal(pod):
            return
        node = self._fit(pod)
        status = pod.setdefault("status", {})
        if node is None:
            self._unscheduled.add((ns, name))
            cond = {
                "type": "PodScheduled",
                "status": "False",
                "reason": "Unschedulable",
                "message": "0/N nodes are available: insufficient resources or no matching node",
            }
            if status.get("conditions") != [cond]:
                status["conditions"] = [cond]
                self.store.update("pods", pod)
            return
        pod["spec"]["nodeName"] = node
        self._bind(ns, name, pod, node)
        status["conditions"] = [{"type": "PodScheduled", "status": "True"}]
        c = pod["spec"]["containers"][0]
        status["containerStatuses"] = [
            {
                "name": c["name"],
                "image": c["image"],
                "imageID": "",
                "ready": False,
                "restartCount": 0,
                "state": {"waiting": {"reason": "ContainerCreating"}},
            }
        ]
        self.store.update("pods", pod)
        if self.kubelet == "process":
            self._spawn(self._run(ns, name))
        elif self.kubelet == "instant":
            self._soon(self._instant, ns, name)

    def _fit(self, pod: Obj) -> str | None:
        want = requests_of(pod)
        selector = pod["spec"].get("nodeSelector") or {}
        for name in sorted(self._nodes):
            node = self.store.objects[("nodes", "", name)]
            if not node_ready(node) or not matches(node, selector):
                continue
            alloc = node["status"]["allocatable"]
            total = (parse_millicpu(alloc["cpu"]), parse_bytes(alloc["memory"]), int(alloc.get("nvidia.com/gpu", 0)))
            have = self._used.get(name, [0, 0, 0])
            if all(have[i] + want[i] <= total[i] for i in range(3)):
                return name
        return None

    def _bind(self, ns: str, name: str, pod: Obj, node: str) -> None:
        want = requests_of(pod)
        self._bound[(ns, name)] = (node, want)
        used = self._used.setdefault(node, [0, 0, 0])
        for i, v in enumerate(want):
            used[i] += v
        self._unscheduled.discard((ns, name))

    def _retry_pending(self) -> None:
        for ns, name in sorted(self._unscheduled):
            self._schedule(ns, name)

    # ---------------------------------------------------------------------------------- kubelet

    def _set_state(self, pod: Obj, phase: str, state: Obj, **extra: Any) -> None:
        pod["status"]["phase"] = phase
        pod["status"].update(extra)
        cs = pod["status"]["containerStatuses"][0]
        cs["state"] = state
        cs["ready"] = "running" in state
        self.store.update("pods", pod)

    def _instant(self, ns: str, name: str) -> None:
        pod = self.store.peek("pods", ns, name)
        if pod is None:
            return
        self.logs[(ns, name)] = log = PodLog()
        log.finish()
        when = now_iso()
        self._set_state(pod, "Running", {"running": {"startedAt": when}}, startTime=when)
        term = {"exitCode": 0, "reason": "Completed", "startedAt": when, "finishedAt": when}
        self._set_state(pod, "Succeeded", {"terminated": term})

    async def _run(self, ns: str, name: str) -> None:
        pod = self.store.peek("pods", ns, name)
        if pod is None:
            return
        c = pod["spec"]["containers"][0]
        if c["image"] not in self.known_images:
            msg = f'failed to pull image "{c["image"]}": not found'
            self._set_state(pod, "Pending", {"waiting": {"reason": "ErrImagePull", "message": msg}})
            await asyncio.sleep(0.05)
            if self.store.peek("pods", ns, name) is pod:
                self._set_state(pod, "Pending", {"waiting": {"reason": "ImagePullBackOff", "message": msg}})
            return
        env = {e["name"]: e.get("value", "") for e in c.get("env") or []}
        env.setdefault("PATH", os.environ.get("PATH", os.defpath))
        argv = [*(c.get("command") or []), *(c.get("args") or [])]
        log = self.logs.setdefault((ns, name), PodLog())
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                env=env,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                start_new_session=True,
            )
        except OSError as exc:
            log.finish()
            when = now_iso()
            # containerd's answer: the container never ran, its startedAt is the zero time
            term = {
                "exitCode": 128,
                "reason": "StartError",
                "message": f"failed to create containerd task: {exc}",
                "startedAt": "1970-01-01T00:00:00Z",
                "finishedAt": when,
            }
            self._set_state(pod, "Failed", {"terminated": term})
            return
        self._procs[(ns, name)] = proc
        started = now_iso()
        self._set_state(pod, "Running", {"running": {"startedAt": started}}, startTime=started)
        assert proc.stdout is not None and proc.stderr is not None

        async def pump(pipe: asyncio.StreamReader, stream: str) -> None:
            while chunk := await pipe.read(65536):
                log.append(chunk, stream)

        await asyncio.gather(pump(proc.stdout, "Stdout"), pump(proc.stderr, "Stderr"))
        rc = await proc.wait()
        log.finish()
        self._procs.pop((ns, name), None)
        if self.store.peek("pods", ns, name) is not pod or terminal(pod):
            return  # evicted or lost meanwhile: that status stands
        code = rc if rc >= 0 else 128 - rc
        reason = "Completed" if code == 0 else "Error"
        if (ns, name) in self._oom:
            code, reason = 137, "OOMKilled"
        term = {"exitCode": code, "reason": reason, "startedAt": started, "finishedAt": now_iso()}
        self._set_state(pod, "Succeeded" if code == 0 else "Failed", {"terminated": term})
        if pod["metadata"].get("deletionTimestamp"):
            self._remove_pod(ns, name)

    # ----------------------------------------------------------------------------------- faults

    def add_node(
        self,
        name: str,
        *,
        cpu: str = "4",
        memory: str = "16Gi",
        gpu: int = 0,
        labels: dict[str, str] | None = None,
        ready: bool = True,
    ) -> Obj:
        """Register a node with this allocatable."""
        alloc = {"cpu": cpu, "memory": memory, "pods": "110"}
        if gpu:
            alloc["nvidia.com/gpu"] = str(gpu)
        node: Obj = {
            "metadata": {"name": name, "labels": dict(labels or {})},
            "status": {
                "allocatable": alloc,
                "capacity": dict(alloc),
                "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
            },
        }
        return self.store.create("nodes", "", node)

    def _pod_named(self, ns: str, name: str) -> Obj:
        pod = self.store.peek("pods", ns, name)
        assert pod is not None, f"no pod {ns}/{name}"
        return pod

    def evict(self, ns: str, name: str) -> None:
        """The kubelet evicts the pod (node pressure): Failed, reason Evicted, its process killed."""
        self._fail(
            self._pod_named(ns, name), "Evicted", "The node was low on resource: memory.", "TerminationByKubelet"
        )

    def oom_kill(self, ns: str, name: str) -> None:
        """The container goes over its memory limit: SIGKILL, terminated reason OOMKilled, exit code 137."""
        proc = self._procs.get((ns, name))
        assert proc is not None, f"pod {ns}/{name} has no running container"
        self._oom.add((ns, name))
        self._signal(proc, signal.SIGKILL)

    def lose_node(self, node_name: str) -> None:
        """The node stops reporting: Ready=Unknown, and its pods fail (reason NodeLost) with their processes."""
        node = self.store.peek("nodes", "", node_name)
        assert node is not None
        node["status"]["conditions"] = [{"type": "Ready", "status": "Unknown", "reason": "NodeStatusUnknown"}]
        self.store.update("nodes", node)
        for (k, _, _), pod in list(self.store.objects.items()):
            if k == "pods" and pod["spec"].get("nodeName") == node_name and not terminal(pod):
                self._fail(
                    pod,
                    "NodeLost",
                    f"node {node_name} which was running the pod is unresponsive",
                    "DeletionByTaintManager",
                )

    def _fail(self, pod: Obj, reason: str, message: str, disruption: str) -> None:
        meta = pod["metadata"]
        proc = self._procs.get((meta["namespace"], meta["name"]))
        if proc is not None:
            self._signal(proc, signal.SIGKILL)
        status = pod.setdefault("status", {})
        status.update(phase="Failed", reason=reason, message=message)
        status.setdefault("conditions", []).append({"type": "DisruptionTarget", "status": "True", "reason": disruption})
        for cs in status.get("containerStatuses") or []:
            cs["state"] = {"terminated": {"exitCode": 137, "reason": "Error", "finishedAt": now_iso()}}
        self.store.update("pods", pod)
