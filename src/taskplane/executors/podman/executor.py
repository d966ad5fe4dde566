"""``PodmanExecutor``: each attempt is one container on this machine, driven through the podman CLI.

The containers themselves are the state: labelled with this platform's instance, kept after they exit until
their exit is ``ack``-ed, so a restarted server finds every running and every unreported attempt with
``podman ps -a --filter label=taskplane.instance=<instance>``. Exits arrive on one ``podman events`` stream for
all containers (no process per container); a listing on open, on every restart of that stream and every
``reconcile_interval`` catches whatever the stream missed. See ``README.md`` beside this file.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import shutil
import subprocess
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from taskplane.domain.outcome import AttemptOutcome
from taskplane.domain.resources import Resources
from taskplane.errors import InternalError, UnavailableError
from taskplane.executors.local.capacity import detect_memory, detect_millicpu
from taskplane.executors.local.layout import log_file
from taskplane.executors.outbox import EventOutbox
from taskplane.executors.podman.command import (
    LABEL_INSTANCE,
    CallResult,
    PodmanCli,
    attempt_dir,
    cli_env,
    container_log_path,
    container_name,
    oom_mark_path,
    reap,
    run_argv,
)
from taskplane.executors.podman.config import PodmanExecutorConfig
from taskplane.executors.podman.logs import LogSplitter
from taskplane.executors.podman.oom import OomWatch, cgroup_version, v1_memory_dir
from taskplane.executors.podman.status import ENDED, NEVER_STARTED, RUNNING, outcome_of, parse_died, parse_listing
from taskplane.services.ports import (
    ExecutorEvent,
    Exited,
    Launch,
    LogStream,
    NodeCapacity,
    Recovered,
    Started,
)

log = logging.getLogger("taskplane.executor.podman")

DEFAULT_MAX_TASKS = 1000  # each running container costs a conmon process and a few open files here
NOT_STARTED = "the container was created but never started (its start failed, or the server died during it)"
# podman's own exit statuses from ``run``: 125 its own error, 126 the command cannot be invoked, 127 not found.
RUN_ERROR, NOT_EXECUTABLE, NOT_FOUND = 125, 126, 127
LOST_REMOVED = "its container was removed while it ran (not by taskplane)"


@dataclass(slots=True)
class _Attempt:
    """What this process knows about one attempt's container."""

    task_id: str
    attempt: int
    name: str
    started_at: datetime | None = None
    splitter: LogSplitter | None = None
    oom: OomWatch | None = None
    oom_marked: bool = False
    exited: Exited | None = None
    starting: bool = True  # ``podman run`` in flight
    stop_grace: float | None = None  # a stop asked for while the container was being started
    died: tuple[int, datetime] | None = None  # its died event, seen before its ``podman run`` returned
    known_at: float = math.inf  # loop time its container was known to exist (a listing older says nothing)


class PodmanExecutor:
    """The ``Executor`` port (and ``SupportsLogs``) over podman on this machine: one node, one container per attempt."""

    name = "podman"

    def __init__(self, config: PodmanExecutorConfig) -> None:
        """An executor for ``config``; nothing runs until ``open``. A missing podman is a warning here, not a crash."""
        self.config = config
        self.state_dir = config.resolved_state_dir()
        self._cli = PodmanCli(config)
        self._cgroups = cgroup_version()
        warnings: list[str] = []
        if shutil.which(config.binary) is None:
            warnings.append(f"{config.binary!r} is not on PATH: podman pools cannot start containers")
        if self._cgroups == "none":
            warnings.append("no memory cgroup found: OOM kills are reported as signal 9, peak memory is unknown")
        self._capacity = NodeCapacity(
            node=config.node_name,
            total=Resources(
                millicpu=config.millicpu if config.millicpu is not None else detect_millicpu(),
                memory=config.memory if config.memory is not None else detect_memory(),
            ),
            max_tasks=config.max_tasks if config.max_tasks is not None else DEFAULT_MAX_TASKS,
            cgroups=self._cgroups,
            warnings=tuple(warnings),
            labels=dict(config.labels),
        )
        self._loop: asyncio.AbstractEventLoop | None = None
        self._attempts: dict[tuple[str, int], _Attempt] = {}
        self._outbox = EventOutbox()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._runs: set[asyncio.Task[None]] = set()  # ``podman run`` calls in flight
        self._removing: set[tuple[str, int]] = set()  # acked, ``podman rm`` in flight
        # acked, ``podman rm`` done at this loop time: a listing taken before then must not adopt them again
        self._removed: dict[tuple[str, int], float] = {}
        self._stoppers: list[subprocess.Popen[bytes]] = []  # ``podman stop`` calls in flight
        self._events_proc: asyncio.subprocess.Process | None = None
        self._closed = False

    # ------------------------------------------------------------------------------------------ the port

    async def open(self, epoch: int, on_events: Callable[[list[ExecutorEvent]], None]) -> Recovered:
        """Check podman answers, start watching exits, and report this instance's containers.

        ``epoch`` is not used: the container engine has no notion of a newer server. Containers are the truth,
        and ``start`` is idempotent by container name, so two servers on one instance would not run an attempt
        twice. Raises ``UnavailableError`` when podman is missing or broken.
        """
        if self._loop is not None:
            raise InternalError("PodmanExecutor.open called twice")
        version = await self._cli.call("version", "--format", "json")
        if not version.ok:
            raise UnavailableError(f"{self.config.binary} does not work here: {version.message()}")
        self.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.config.logs_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._loop = asyncio.get_running_loop()
        self._outbox.open(self._loop, on_events)
        # Watch first, then list; an exit the stream misses while it starts up is found by a later listing.
        self._spawn(self._watch_events())
        try:
            running, exited = await self._reconcile(initial=True)
        except BaseException:
            await self.close()  # no ``podman events`` left behind by an open that failed
            raise
        self._spawn(self._tick())
        return Recovered(running=running, exited=exited)

    async def start(self, launches: Sequence[Launch]) -> None:
        """Run each launch's container (``podman run -d``) in the background, ``max_concurrent_calls`` at once.

        Returns at once: ``Started`` (or a spawn error) arrives as an event. Idempotent per attempt: a key this
        executor knows (starting, running, or ended and not acked) is skipped, and a container name already taken
        adopts that container instead of running another.
        """
        self._check_open()
        for launch in launches:
            key = (launch.task_id, launch.attempt)
            if key in self._attempts or key in self._removing:
                continue
            name = container_name(self.config.instance, launch.task_id, launch.attempt)
            self._attempts[key] = _Attempt(launch.task_id, launch.attempt, name)
            run = asyncio.ensure_future(self._run(launch))
            self._runs.add(run)
            run.add_done_callback(self._runs.discard)
            run.add_done_callback(self._reaped)

    async def stop(self, task_id: str, attempt: int, grace: float) -> None:
        """``podman stop -t <grace>``: the image's stop signal (SIGTERM), SIGKILL after ``grace`` seconds.

        Returns once the stop is under way; the exit arrives as an event. A container still being started is
        stopped as soon as its ``run`` returns.
        """
        self._check_open()
        att = self._attempts.get((task_id, attempt))
        if att is None or att.exited is not None:
            return
        if att.starting:
            att.stop_grace = grace
            return
        self._stop(att, grace)

    async def unqueue(self, task_id: str, attempt: int) -> None:
        """Nothing to do: there is no node queue (the engine hands over only what fits), and started ones run on."""

    async def ack(self, keys: Sequence[tuple[str, int]]) -> None:
        """Remove the containers of these ended attempts (their stdout and stderr files stay in ``logs_dir``)."""
        names: list[str] = []
        removing: set[tuple[str, int]] = set()
        for task_id, attempt in keys:
            att = self._attempts.get((task_id, attempt))
            if att is not None and att.exited is None:
                continue  # not ended (an ack of a running attempt is a caller's mistake): keep it
            self._attempts.pop((task_id, attempt), None)
            removing.add((task_id, attempt))
            names.append(container_name(self.config.instance, task_id, attempt))
        if not names:
            return
        self._removing |= removing  # a listing meanwhile must not adopt them again
        try:
            result = await self._cli.call("rm", "-f", "--ignore", "-t", "0", *names)
        finally:
            self._removing -= removing
            removed_at = asyncio.get_running_loop().time()
            self._removed.update(dict.fromkeys(removing, removed_at))
        if not result.ok:
            # The containers stay, and the next server reports them again: from their raw logs and OOM marks,
            # which therefore stay too (without them the stream files would be re-split empty).
            log.warning("could not remove containers %s: %s", names, result.message())
            return
        for task_id, attempt in removing:
            shutil.rmtree(attempt_dir(self.state_dir, task_id, attempt), ignore_errors=True)

    def capacity(self) -> NodeCapacity:
        """This machine as one node: its CPUs and memory (or the configured overrides) and ``max_tasks``."""
        return self._capacity

    def nodes(self) -> list[NodeCapacity]:
        """The one node (``config.node_name``)."""
        return [self._capacity]

    def log_path(self, task_id: str, attempt: int, stream: LogStream) -> Path:
        """``<logs_dir>/<task_id>.<attempt>.<stream>``, filled from the container's log while it runs."""
        return Path(log_file(self.config.logs_dir, task_id, attempt, stream.value))

    async def close(self) -> None:
        """Stop watching. Containers keep running; a new executor on the same instance adopts them."""
        if self._runs:
            # A ``podman run`` killed halfway would leave a container that never started: let them finish.
            await asyncio.wait(list(self._runs), timeout=self.config.call_timeout)
        self._closed = True
        self._outbox.close()
        if self._events_proc is not None and self._events_proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self._events_proc.kill()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for att in self._attempts.values():
            self._release(att)

    # ------------------------------------------------------------------------------------- starting

    async def _run(self, launch: Launch) -> None:
        key = (launch.task_id, launch.attempt)
        att = self._attempts[key]
        for path in (self.log_path(launch.task_id, launch.attempt, s) for s in LogStream):
            path.unlink(missing_ok=True)
        workdir = attempt_dir(self.state_dir, launch.task_id, launch.attempt)
        try:
            workdir.mkdir(mode=0o700, exist_ok=True)
            result = await self._cli.exec(run_argv(self.config, launch, self.state_dir), cwd=workdir)
        except OSError as exc:
            self._refuse(att, f"cannot make {workdir}: {exc.strerror}", retryable=True)
            return
        except UnavailableError as exc:
            # ``podman run`` hung and was killed: it may have created, even started, the container. The attempt
            # is reported as not started (the engine runs it again), so its container must not run on.
            with contextlib.suppress(UnavailableError):
                await self._cli.call("rm", "-f", "--ignore", "-t", "0", att.name)
            self._refuse(att, str(exc), retryable=True)
            return
        if self._closed:
            return
        if not result.ok:
            await self._run_failed(att, launch, result)
            return
        att.starting = False
        att.known_at = asyncio.get_running_loop().time()
        att.started_at = datetime.now(UTC)
        self._follow(att)
        self._watch_oom(att, result.stdout.decode().strip())
        self._emit(Started(att.task_id, att.attempt, att.started_at))
        if att.died is not None:
            self._finish(att, *att.died)
        elif att.stop_grace is not None:
            self._stop(att, att.stop_grace)

    async def _run_failed(self, att: _Attempt, launch: Launch, result: CallResult) -> None:
        exists = await self._cli.call("container", "exists", att.name)
        if result.returncode == RUN_ERROR and exists.ok and att.exited is None:
            # The name is taken: this attempt's container exists already (a start repeated after a restart).
            # Adopt it; the next listing reports what it is doing.
            att.starting = False
            att.known_at = asyncio.get_running_loop().time()
            await self._reconcile_logged()
            if att.stop_grace is not None and att.exited is None and not self._closed:
                self._stop(att, att.stop_grace)  # a stop asked for while its ``run`` was in flight
            return
        sources = [m.source for m in launch.host.mounts]
        missing = await asyncio.to_thread(lambda: [path for path in sources if not os.path.exists(path)])
        if result.returncode in (NOT_EXECUTABLE, NOT_FOUND):
            retryable = False  # the image lacks the command: running it again fails the same way
        elif missing:  # a host path that is not there fails every run the same way
            self._refuse(att, f"mount source {missing[0]} does not exist: {result.message()}", retryable=False)
            return
        else:
            image = await self._cli.call("image", "exists", launch.image or "")
            retryable = image.ok or self.config.pull != "never"
        self._refuse(att, result.message(), retryable=retryable)

    def _refuse(self, att: _Attempt, message: str, *, retryable: bool, emit: bool = True) -> None:
        att.starting = False
        exited = Exited(
            att.task_id, att.attempt, datetime.now(UTC), AttemptOutcome(spawn_error=message, retryable=retryable)
        )
        att.exited = exited
        if emit:
            self._emit(exited)

    def _stop(self, att: _Attempt, grace: float) -> None:
        # ``podman stop`` itself sends SIGKILL once the grace is over, so it must outlive this executor (a close,
        # a crash): a process of its own session, never killed by us, polled by the tick and reaped by Python.
        argv = self._cli.argv("stop", "--ignore", "-t", str(max(0, math.ceil(grace))), att.name)
        try:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
                env=cli_env(),
            )
        except OSError as exc:
            log.warning("cannot run %s stop: %s", self.config.binary, exc)
            return
        self._stoppers.append(proc)

    # ------------------------------------------------------------------------------------------ exits

    async def _watch_events(self) -> None:
        """One ``podman events`` stream of this instance's ``died`` events; restarted (with a listing) if it ends."""
        argv = self._cli.argv(
            "events",
            "--format",
            "json",
            "--filter",
            f"label={LABEL_INSTANCE}={self.config.instance}",
            "--filter",
            "event=died",
        )
        delay = 0.1
        while not self._closed:
            try:
                proc = await asyncio.create_subprocess_exec(
                    *argv,
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=asyncio.subprocess.PIPE,
                    stderr=asyncio.subprocess.DEVNULL,
                    limit=1 << 20,
                    env=cli_env(),
                )
            except OSError as exc:
                log.warning("cannot run %s events: %s", self.config.binary, exc)
            else:
                self._events_proc = proc
                assert proc.stdout is not None
                try:
                    async for line in proc.stdout:
                        try:
                            self._on_event_line(line)
                        except Exception:  # one event's trouble must not end the stream (and every exit after)
                            log.exception("handling a podman event failed")
                        delay = 0.1
                finally:
                    await reap(proc)
            if self._closed:
                return
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)
            await self._reconcile_logged()

    def _on_event_line(self, line: bytes) -> None:
        died = parse_died(line)
        if died is None:
            return
        att = self._attempts.get(died.key)
        if att is None or att.exited is not None:
            return  # not known here: a listing adopts it
        code, at = died.exit_code, died.at or datetime.now(UTC)
        if att.starting:
            att.died = (code, at)  # reported once its ``podman run`` has returned
            return
        if self._cgroups == "v2":
            self._spawn(self._finish_v2(att, code, at))
        else:
            self._finish(att, code, at)

    async def _finish_v2(self, att: _Attempt, code: int, at: datetime) -> None:
        # On cgroup v2 podman's OOMKilled is right; read it before reporting.
        result = await self._cli.call("inspect", "--format", "{{.State.OOMKilled}}", att.name)
        if result.ok and result.stdout.strip() == b"true":
            att.oom_marked = True
        if att.exited is None:
            self._finish(att, code, at)

    def _finish(self, att: _Attempt, code: int, at: datetime, *, emit: bool = True) -> None:
        peak: int | None = None
        if att.oom is not None:
            att.oom.check()
            peak = att.oom.peak
        oom_killed = att.oom_marked or (att.oom is not None and att.oom.oom_killed)
        oom_killed = oom_killed or oom_mark_path(self.state_dir, att.task_id, att.attempt).exists()
        truncated = False
        if att.splitter is None:
            self._follow(att)
        if att.splitter is not None:
            try:
                att.splitter.close()
                truncated = att.splitter.truncated
            except OSError as exc:  # the exit matters more than its output (a full disk): report it anyway
                log.warning("cannot copy the output of %s: %s", att.name, exc)
                truncated = True
        self._release(att)
        if att.started_at is not None and at < att.started_at:
            at = att.started_at  # it ended before ``podman run`` returned: the start time we reported is later
        exited = Exited(
            att.task_id,
            att.attempt,
            at,
            outcome_of(code, oom_killed),
            started_at=att.started_at,
            peak_memory=peak,
            log_truncated=truncated,
        )
        att.exited = exited
        if emit:
            self._emit(exited)

    async def _reconcile(self, *, initial: bool = False) -> tuple[list[Started], list[Exited]]:
        """List this instance's containers and bring what this process knows in line with them.

        Returns what is running and what has ended (for ``open``); later calls emit the differences as events.
        """
        listed_at = asyncio.get_running_loop().time()
        result = await self._cli.call(
            "ps", "-a", "--no-trunc", "--filter", f"label={LABEL_INSTANCE}={self.config.instance}", "--format", "json"
        )
        if not result.ok:
            if initial:
                raise UnavailableError(f"cannot list containers: {result.message()}")
            log.warning("cannot list containers: %s", result.message())
            return [], []
        running: list[Started] = []
        exited: list[Exited] = []
        listed_keys: set[tuple[str, int]] = set()
        never_started: list[str] = []
        # Removals done before this listing began are in it (or not) already: forget them.
        self._removed = {key: at for key, at in self._removed.items() if at >= listed_at}
        for container in parse_listing(result.stdout):
            key = container.key
            listed_keys.add(key)
            att = self._attempts.get(key)
            if (att is not None and att.starting) or key in self._removing or key in self._removed:
                continue  # its ``podman run`` is in flight (it reports itself), or it is being (or was) removed
            state = container.state
            if att is None:
                name = container.name or container_name(self.config.instance, *key)
                att = _Attempt(key[0], key[1], name, starting=False, known_at=listed_at)
                self._attempts[key] = att
                adopted = True
            else:
                adopted = False
            if att.exited is not None:
                if not initial:
                    continue
            elif state in RUNNING:
                if att.started_at is None:  # found here first (after a restart, or a repeated start)
                    att.started_at = container.started_at or datetime.now(UTC)
                    self._follow(att)
                    self._watch_oom(att, container.container_id)
                    if not initial:
                        self._emit(Started(att.task_id, att.attempt, att.started_at))
                if initial:
                    running.append(Started(att.task_id, att.attempt, att.started_at))
                continue
            elif state in ENDED:
                att.started_at = att.started_at or container.started_at
                self._finish(att, container.exit_code, container.exited_at or datetime.now(UTC), emit=not initial)
            elif state in NEVER_STARTED:
                if not adopted:
                    continue  # a start still under way elsewhere, or failing: its run reports it
                # Reported as never started (the engine runs the task again): an orphaned ``podman run`` of a
                # server that died during it must not start it later, so the container goes now.
                never_started.append(att.name)
                self._refuse(att, NOT_STARTED, retryable=True, emit=not initial)
            else:
                continue
            if initial and att.exited is not None:
                exited.append(att.exited)
        if never_started:
            removed = await self._cli.call("rm", "-f", "--ignore", "-t", "0", *never_started)
            if not removed.ok:
                log.warning("could not remove containers %s: %s", never_started, removed.message())
        if not initial:
            for key, att in list(self._attempts.items()):
                gone = key not in listed_keys and key not in self._removing and att.known_at < listed_at
                if gone and not att.starting and att.exited is None:
                    self._lose(att)  # removed behind our back (``podman rm -f``): its exit status is gone
        return running, exited

    async def _reconcile_logged(self) -> None:
        """A listing from a background task: a failure is logged, and the next one tries again."""
        try:
            await self._reconcile()
        except UnavailableError as exc:
            log.warning("listing containers failed: %s", exc)
        except Exception:  # a bug here must not end the watchers
            log.exception("reconciling with the container listing failed")

    def _lose(self, att: _Attempt) -> None:
        self._release(att)
        exited = Exited(
            att.task_id, att.attempt, datetime.now(UTC), AttemptOutcome(lost=LOST_REMOVED), started_at=att.started_at
        )
        att.exited = exited
        self._emit(exited)

    async def _tick(self) -> None:
        """Copy running containers' output every ``log_poll_interval``; list everything every ``reconcile_interval``."""
        assert self._loop is not None
        next_listing = self._loop.time() + self.config.reconcile_interval
        while not self._closed:
            await asyncio.sleep(self.config.log_poll_interval)
            stopped = [proc for proc in self._stoppers if proc.poll() is not None]
            if stopped:
                self._stoppers = [proc for proc in self._stoppers if proc.returncode is None]
                self._spawn(self._reconcile_logged())  # the exits, without waiting for the event stream
            for att in list(self._attempts.values()):
                if att.splitter is not None and att.exited is None:
                    try:
                        att.splitter.poll()
                    except OSError as exc:
                        log.warning("cannot copy the output of %s: %s", att.name, exc)
            if self._loop.time() >= next_listing:
                next_listing = self._loop.time() + self.config.reconcile_interval
                for att in list(self._attempts.values()):
                    if att.oom is not None and att.exited is None:
                        att.oom.check()  # samples the peak (and any OOM kill a wake-up did not show)
                await self._reconcile_logged()

    # ------------------------------------------------------------------------------------- helpers

    def _follow(self, att: _Attempt) -> None:
        if att.splitter is not None:
            return
        paths = [self.log_path(att.task_id, att.attempt, s) for s in (LogStream.STDOUT, LogStream.STDERR)]
        try:
            att.splitter = LogSplitter(
                container_log_path(self.state_dir, att.task_id, att.attempt),
                paths[0],
                paths[1],
                self.config.log_limit_bytes,
            )
            att.splitter.poll()
        except OSError as exc:
            log.warning("cannot follow the output of %s: %s", att.name, exc)

    def _watch_oom(self, att: _Attempt, container_id: str) -> None:
        """Watch the container's memory cgroup (v1).

        Its path follows from the id under podman's two cgroup managers; otherwise ``podman inspect`` tells it
        (later, so an OOM kill in the container's first moments may go unseen).
        """
        if self._cgroups != "v1" or self._loop is None or att.exited is not None or not container_id:
            return
        for relative in (f"/libpod_parent/libpod-{container_id}", f"/machine.slice/libpod-{container_id}.scope"):
            if self._attach_oom(att, relative):
                return
        self._spawn(self._watch_oom_inspected(att, container_id))

    async def _watch_oom_inspected(self, att: _Attempt, container_id: str) -> None:
        result = await self._cli.call("inspect", "--format", "{{.State.CgroupPath}}", container_id)
        if result.ok and att.exited is None and not self._closed:
            self._attach_oom(att, result.stdout.decode().strip())

    def _attach_oom(self, att: _Attempt, cgroup_path: str) -> bool:
        assert self._loop is not None

        def mark() -> None:
            att.oom_marked = True
            with contextlib.suppress(OSError):
                oom_mark_path(self.state_dir, att.task_id, att.attempt).touch()

        try:
            att.oom = OomWatch(self._loop, v1_memory_dir(cgroup_path), mark)
        except OSError:
            return False  # not there (another cgroup manager, or the container is gone already)
        return True

    def _release(self, att: _Attempt) -> None:
        if att.oom is not None:
            att.oom.close()
            att.oom = None
        if att.splitter is not None and att.exited is None:
            try:
                att.splitter.close()
            except OSError as exc:
                log.warning("cannot copy the output of %s: %s", att.name, exc)
        att.splitter = None

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._reaped)

    def _reaped(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("podman executor task failed", exc_info=task.exception())

    def _emit(self, event: ExecutorEvent) -> None:
        self._outbox.emit(event)

    def _check_open(self) -> None:
        if self._loop is None:
            raise UnavailableError("the podman executor is not open")
        if self._closed:
            raise UnavailableError("the podman executor is closed")
