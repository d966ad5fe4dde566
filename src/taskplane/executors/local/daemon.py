"""The node supervisor's state machine: clients, attempts, journal and events, in one asyncio thread.

``supervisor.py`` is the process around it (command line, lock, pidfile, log). Per task it holds one pidfd and
about 1.7 KiB (measured by ``benchmarks/supervisor_cost.py``)::

    client --start--> validate -> FIFO queue --(head fits next to what runs)--> journal intent
                  -> posix_spawn (cwd, RLIMIT_FSIZE, cgroup switched around it)
                  -> pidfd_open -> loop.add_reader -> journal start -> event
    pidfd readable -> wait4 (status, rusage) -> cgroup peak/OOM, back to the pool -> journal exit -> event
                  -> start the queue's heads that fit now (same loop iteration: no round trip to the server)

The queue is strict FIFO: a head that does not fit (resources summed over running attempts against the node's
capacity from the latest ``hello``, and ``max_tasks``) holds back everything behind it. Best-effort launches
(no request) count only against ``max_tasks``. Launches themselves are never journaled, only their keys: a
restarted supervisor reports the attempts that were still queued as exited, ``never_started`` and ``lost``.

A restarted supervisor replays the journal: unacknowledged exits are reported again; attempts that were
running are watched through pidfds (no longer its children, their status is unknowable) and reported as lost
when they end. Fencing: requests carrying an epoch lower than the highest seen are refused.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import resource
import select
import signal
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from taskplane.executors.local import layout, protocol
from taskplane.executors.local.cgroups import Cgroups, TaskCgroup, detect
from taskplane.executors.local.journal import Journal, JournalState, Record, encode_record
from taskplane.executors.local.spawn import Prepared, Spawner, SpawnError, boot_clock, prepare, same_process

log = logging.getLogger("taskplane.supervisor")

LOST_RESTARTED = "supervisor restarted; exit status unknown"
LOST_STARTING = "supervisor died while starting the attempt; it may have run"
LOST_QUEUED = "supervisor restarted while the attempt waited in the node's queue; it never ran"
MAX_CLIENT_BUFFER = 64 << 20  # a client this far behind is dropped; it reconnects and gets a snapshot
CGROUP_RMDIR_TRIES = 10


@dataclass(frozen=True, slots=True)
class Options:
    """The supervisor's settings (its command line)."""

    state_dir: Path
    logs_dir: Path
    work_dir: Path
    log_limit: int = 64 << 20
    cgroups: str = "auto"
    idle_exit: float = 300.0
    max_tasks: int = 10_000
    child_nofile: int | None = None  # RLIMIT_NOFILE soft limit for tasks (the supervisor raises its own)


@dataclass(slots=True, eq=False)
class Live:
    """A running attempt: our child, or one adopted from a previous supervisor (watch-only)."""

    key: str  # ``<task_id>.<attempt>``
    task_id: str
    attempt: int
    pid: int
    pidfd: int
    record: Record  # its journal start record
    child: bool
    cgroup: TaskCgroup | None
    millicpu: int = 0  # what it holds of the node's capacity
    memory: int = 0
    gpu: int = 0
    stopping: bool = False
    kill_at: float | None = None
    kill_timer: asyncio.TimerHandle | None = None


@dataclass(slots=True, eq=False)
class Conn:
    """One client connection."""

    writer: asyncio.StreamWriter
    epoch: int | None = None
    out: list[bytes] = field(default_factory=list)  # replies (and events) sent together at the next flush


def _signal_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _exit_record(task_id: Any, attempt: Any, at: float, **fields: Any) -> Record:
    rec: Record = {
        "t": "exit",
        "task_id": task_id,
        "attempt": attempt,
        "at": at,
        "started_at": None,
        "exit_code": None,
        "signal": None,
        "oom_killed": False,
        "spawn_error": None,
        "lost": None,
        "retryable": True,
        "peak_memory": None,
        "cpu_seconds": None,
        "log_truncated": False,
    }
    rec.update(fields)
    return rec


class Supervisor:
    """The daemon's state and its event-loop callbacks."""

    def __init__(self, opts: Options) -> None:
        self.opts = opts
        self.journal = Journal(layout.journal_path(opts.state_dir))
        self.epoch = 0
        self.live: dict[str, Live] = {}
        self.exited: dict[str, Record] = {}
        # The node's queue: launches in arrival order (stopped ones are skipped when they reach the head).
        self.queue: deque[Prepared] = deque()
        self.queued: dict[str, Prepared] = {}
        # Capacity (the latest hello's; no resource limit before one) and what running attempts hold of it.
        self.max_tasks = opts.max_tasks
        self.total: tuple[int, int, int] | None = None  # millicpu, memory, gpu
        self.used_millicpu = self.used_memory = self.used_gpu = 0
        self.conns: set[Conn] = set()
        self.current: Conn | None = None
        self.cgroups: Cgroups = Cgroups()
        self.spawner: Spawner | None = None
        self._journal_buf: list[bytes] = []
        self._events: list[Record] = []
        self._dirty: set[Conn] = set()
        self._flush_scheduled = False
        self._idle_since: float | None = None
        self._draining = False
        self._done: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The running loop (set by ``run``)."""
        assert self._loop is not None
        return self._loop

    # ------------------------------------------------------------------------------------------ lifecycle

    async def run(self) -> None:
        """Recover, listen, serve until idle, asked to shut down, or SIGTERM."""
        self._loop = asyncio.get_running_loop()
        self._done = asyncio.Event()
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # children inherit SIG_IGN: EFBIG past the output cap
        for sig in (signal.SIGTERM, signal.SIGINT):
            self.loop.add_signal_handler(sig, self._on_terminate)
        opts = self.opts
        self.cgroups = detect(opts.cgroups, f"taskplane-{layout.state_hash(opts.state_dir)}")
        for warning in self.cgroups.warnings:
            log.warning("%s", warning)
        self.spawner = Spawner(
            opts.logs_dir, opts.work_dir, opts.log_limit, opts.state_dir, self.cgroups, opts.child_nofile
        )
        self._recover()
        sock = layout.socket_path(opts.state_dir)
        sock.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        server = await asyncio.start_unix_server(self._serve, path=str(sock), limit=protocol.READ_LIMIT)
        os.chmod(sock, 0o600)
        layout.addr_path(opts.state_dir).write_text(f"{sock}\n")
        log.info(
            "supervisor %d listening on %s (cgroups %s, %d running, %d unacked)",
            os.getpid(),
            sock,
            self.cgroups.version,
            len(self.live),
            len(self.exited),
        )
        self._idle_tick()
        try:
            await self._done.wait()
        finally:
            self._flush()
            server.close()
            for conn in list(self.conns):
                conn.writer.close()
            with contextlib.suppress(OSError):
                sock.unlink()
            with contextlib.suppress(OSError):
                layout.pid_path(opts.state_dir).unlink()
            with contextlib.suppress(OSError):
                self.journal.compact(self._journal_state())
            self.journal.close()
            self.cgroups.close()
            await asyncio.sleep(0)  # let transports write what they hold
            log.info("supervisor %d exiting (%d tasks still running)", os.getpid(), len(self.live))

    def _recover(self) -> None:
        state = self.journal.load()
        self.journal.open()
        self.epoch = state.epoch
        self.exited = state.exited
        now = time.time()
        for task_id, attempt in state.intents.values():
            rec = _exit_record(task_id, attempt, now, lost=LOST_STARTING)
            self.exited[protocol.attempt_key(task_id, attempt)] = rec
        for task_id, attempt in state.queued.values():  # only their keys were journaled: they cannot run now
            rec = _exit_record(task_id, attempt, now, lost=LOST_QUEUED, never_started=True)
            self.exited[protocol.attempt_key(task_id, attempt)] = rec
        for key, rec in state.live.items():
            pid, boot = int(rec["pid"]), rec.get("boot") or [0.0, 0.0]
            try:
                pidfd = os.pidfd_open(pid)
            except OSError:
                self.exited[key] = self._lost_record(rec, now)
                continue
            if not same_process(pid, (boot[0], boot[1])):  # the pid now belongs to someone else
                os.close(pidfd)
                self.exited[key] = self._lost_record(rec, now)
                continue
            # A journal from before resources were recorded: the attempt counts as one task holding nothing.
            res = rec.get("res")
            if not (isinstance(res, list) and len(res) == 3 and all(isinstance(v, int) for v in res)):
                res = [0, 0, 0]
            name = rec.get("cg")
            cg = self.cgroups.find(name if isinstance(name, str) else key)  # named by attempt key before pooling
            live = Live(key, rec["task_id"], rec["attempt"], pid, pidfd, rec, False, cg, *res)
            self._add_live(live)
            self.loop.add_reader(pidfd, self._on_ready, live)
        self.cgroups.sweep({live.cgroup.name for live in self.live.values() if live.cgroup is not None})
        self.journal.compact(self._journal_state())

    def _lost_record(self, start: Record, now: float) -> Record:
        truncated = self._truncated(start["task_id"], start["attempt"])
        return _exit_record(
            start["task_id"],
            start["attempt"],
            now,
            started_at=start.get("at"),
            lost=LOST_RESTARTED,
            log_truncated=truncated,
        )

    def _journal_state(self) -> JournalState:
        queued = {key: (p.task_id, p.attempt) for key, p in self.queued.items()}
        return JournalState(self.epoch, {k: v.record for k, v in self.live.items()}, self.exited, queued=queued)

    def _on_terminate(self) -> None:
        """SIGTERM/SIGINT: exit now when nothing runs; else once the running tasks have ended.

        Exiting under running tasks would orphan them and lose their exit statuses (a restarted supervisor can
        only report them lost, and lost attempts are retried). SIGKILL, or ``shutdown`` with force, stops now.
        """
        assert self._done is not None
        if not self.live:
            self._done.set()
            return
        self._draining = True
        log.warning("asked to exit with %d tasks running: exiting once they have ended", len(self.live))

    def _idle_tick(self) -> None:
        now = time.monotonic()
        if self._draining and not self.live:
            log.info("the running tasks have ended: exiting as asked")
            assert self._done is not None
            self._done.set()
            return
        if self.live or self.exited or self.queued or self.conns:
            self._idle_since = None
        elif self._idle_since is None:
            self._idle_since = now
        elif now - self._idle_since >= self.opts.idle_exit:
            log.info("idle for %.0fs: exiting", self.opts.idle_exit)
            assert self._done is not None
            self._done.set()
            return
        self.loop.call_later(min(1.0, self.opts.idle_exit / 4), self._idle_tick)

    # ----------------------------------------------------------------------------------------- clients

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = Conn(writer)
        self.conns.add(conn)
        try:
            while not writer.is_closing():
                line = await reader.readline()
                if not line:
                    break
                try:
                    msg = protocol.decode(line)
                except ValueError:
                    self._reply(conn, None, ok=False, code=protocol.BAD_REQUEST, detail="not a JSON object")
                    continue
                try:
                    self._handle(conn, msg)
                except Exception:  # a bug: keep serving everyone else
                    log.exception("failed to handle %s", msg.get("op"))
                    self._reply(conn, msg.get("id"), ok=False, code=protocol.BAD_REQUEST, detail="internal error")
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError):
            pass
        finally:
            self.conns.discard(conn)
            self._dirty.discard(conn)
            if self.current is conn:
                self.current = None
                self._events.clear()
            writer.close()

    def _reply(self, conn: Conn, msg_id: Any, **fields: Any) -> None:
        """Queue a reply: it leaves with the iteration's journal write and events (one send, after the journal)."""
        conn.out.append(protocol.encode({"op": protocol.REPLY, "id": msg_id, **fields}))
        self._dirty.add(conn)
        self._schedule_flush()

    def _send(self, conn: Conn) -> None:
        if conn.out and not conn.writer.is_closing():
            conn.writer.write(b"".join(conn.out))
            if conn.writer.transport.get_write_buffer_size() > MAX_CLIENT_BUFFER:
                log.warning("client is not reading; dropping its connection")
                conn.writer.close()
        conn.out.clear()
        self._dirty.discard(conn)

    def _fenced(self, conn: Conn, msg: dict[str, Any]) -> bool:
        epoch = msg.get("epoch")
        if isinstance(epoch, int) and epoch >= self.epoch:
            return False
        detail = f"epoch {epoch} is older than {self.epoch}: a newer server owns this node"
        self._reply(conn, msg.get("id"), ok=False, code=protocol.STALE_EPOCH, detail=detail)
        return True

    def _handle(self, conn: Conn, msg: dict[str, Any]) -> None:
        op, msg_id = msg.get("op"), msg.get("id")
        try:
            if op == protocol.HELLO:
                self._hello(conn, msg)
            elif op in (protocol.START, protocol.STOP, protocol.UNQUEUE, protocol.ACK):
                if self._fenced(conn, msg):
                    return
                if op == protocol.START:
                    self._start(msg.get("launches") or [])
                elif op == protocol.STOP:
                    self._stop(protocol.attempt_key(msg["task_id"], msg["attempt"]), float(msg.get("grace", 0)))
                elif op == protocol.UNQUEUE:
                    self._unqueue(protocol.attempt_key(msg["task_id"], msg["attempt"]))
                else:
                    self._ack(msg.get("keys") or [])
                self._reply(conn, msg_id, ok=True)
            elif op == protocol.SHUTDOWN:
                self._shutdown(conn, msg)
            else:
                self._reply(conn, msg_id, ok=False, code=protocol.BAD_REQUEST, detail=f"unknown op {op!r}")
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            self._reply(conn, msg_id, ok=False, code=protocol.BAD_REQUEST, detail=f"malformed {op}: {exc!r}")

    def _hello(self, conn: Conn, msg: dict[str, Any]) -> None:
        if self._fenced(conn, msg):
            self._send(conn)
            conn.writer.close()
            return
        epoch = int(msg["epoch"])
        capacity = msg.get("capacity")
        if capacity is not None:
            self._set_capacity(capacity)
        if epoch > self.epoch:
            self.epoch = epoch
            self._write_journal(encode_record({"t": "epoch", "epoch": epoch}))
        conn.epoch = epoch
        previous, self.current = self.current, conn
        self._events.clear()  # the snapshot below covers them
        self._reply(
            conn,
            msg.get("id"),
            ok=True,
            pid=os.getpid(),
            epoch=self.epoch,
            cgroups=self.cgroups.version,
            warnings=list(self.cgroups.warnings),
            running=[live.record for live in self.live.values()],
            exited=list(self.exited.values()),
            queued=[[p.task_id, p.attempt] for p in self.queue if self.queued.get(p.key) is p],
            config={
                "logs_dir": str(self.opts.logs_dir),
                "work_dir": str(self.opts.work_dir),
                "log_limit": self.opts.log_limit,
            },
        )
        if previous is not None and previous is not conn:
            self._send(previous)
            previous.writer.close()
        self._pump()  # the capacity may have grown

    def _set_capacity(self, capacity: Any) -> None:
        """``{"millicpu", "memory", "gpu", "max_tasks"}``: the node size the server schedules against."""
        if not isinstance(capacity, dict):
            raise TypeError("capacity must be an object")
        values: list[int] = []
        for name in ("millicpu", "memory", "gpu", "max_tasks"):
            value = capacity.get(name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"capacity needs non-negative integers: {capacity!r}")
            values.append(value)
        self.total = (values[0], values[1], values[2])
        self.max_tasks = max(1, values[3])

    def _shutdown(self, conn: Conn, msg: dict[str, Any]) -> None:
        if (self.live or self.queued) and not msg.get("force"):
            detail = f"{len(self.live)} tasks are running, {len(self.queued)} queued"
            self._reply(conn, msg.get("id"), ok=False, code=protocol.BUSY, detail=detail)
            return
        now = time.time()
        for key, p in list(self.queued.items()):  # first, or an exit below would start them
            self._finish(key, _exit_record(p.task_id, p.attempt, now, never_started=True))
        self.queued.clear()
        self.queue.clear()
        for live in list(self.live.values()):
            _signal_group(live.pid, signal.SIGKILL)
        for live in list(self.live.values()):
            if not live.child:  # not ours to wait for: give it a moment to go
                poller = select.poll()
                poller.register(live.pidfd, select.POLLIN)
                poller.poll(5000)
            self._on_ready(live, block=True)
        self._reply(conn, msg.get("id"), ok=True, pid=os.getpid())
        self._flush()
        assert self._done is not None
        self._done.set()

    # ----------------------------------------------------------------------------------------- attempts

    def _start(self, launches: list[dict[str, Any]]) -> None:
        """Queue the launches in order (idempotent per attempt), then start the heads that fit."""
        now = time.time()
        fresh: list[Prepared] = []
        for launch in launches:
            if not isinstance(launch, dict):
                log.warning("ignoring a launch that is not an object: %.200r", launch)
                continue
            task_id, attempt = launch.get("task_id"), launch.get("attempt")
            key = f"{task_id}.{attempt}"
            if key in self.live or key in self.exited or key in self.queued:
                continue  # idempotent: a known attempt is never started twice
            try:
                p = prepare(launch)
            except SpawnError as exc:
                self._finish(key, _exit_record(task_id, attempt, now, spawn_error=exc.message, retryable=False))
                continue
            self.queue.append(p)
            self.queued[key] = p
            fresh.append(p)
        if fresh:
            self._pump(fresh)

    def _fits(self, p: Prepared, millicpu: int, memory: int, gpu: int, count: int) -> bool:
        """Whether ``p`` fits next to attempts holding (millicpu, memory, gpu) and ``count`` tasks."""
        if count >= self.max_tasks:
            return False
        total = self.total
        if total is None or (p.millicpu == 0 and p.memory == 0 and p.gpu == 0):
            return True  # no capacity known yet, or best-effort: only max_tasks applies
        return millicpu + p.millicpu <= total[0] and memory + p.memory <= total[1] and gpu + p.gpu <= total[2]

    def _pump(self, fresh: list[Prepared] | None = None) -> None:
        """Start the queue's heads while they fit (strict FIFO: a head that does not fit holds the rest back).

        ``fresh``: launches just queued by ``start``; those that stay queued get a ``queue`` record.
        """
        queue, queued = self.queue, self.queued
        while True:
            batch: list[Prepared] = []
            millicpu, memory, gpu = self.used_millicpu, self.used_memory, self.used_gpu
            count = len(self.live)
            while queue:
                p = queue[0]
                if queued.get(p.key) is not p:  # stopped while queued
                    queue.popleft()
                    continue
                if not self._fits(p, millicpu, memory, gpu, count):
                    if not self._fits(p, 0, 0, 0, 0):  # larger than the whole node: it would block it for good
                        queue.popleft()
                        del queued[p.key]
                        self._finish(p.key, self._too_large(p))
                        continue
                    break
                queue.popleft()
                del queued[p.key]
                batch.append(p)
                millicpu, memory, gpu, count = millicpu + p.millicpu, memory + p.memory, gpu + p.gpu, count + 1
            records: list[bytes] = []
            if fresh:
                waiting = [[p.task_id, p.attempt] for p in fresh if queued.get(p.key) is p]
                if waiting:
                    records.append(encode_record({"t": "queue", "items": waiting}))
                fresh = None
            if not batch:
                self._journal_buf.extend(records)
                if records:
                    self._schedule_flush()
                return
            # Durable before any process exists: if we die mid-batch, the next supervisor reports these as lost.
            records.append(encode_record({"t": "intent", "items": [[p.task_id, p.attempt] for p in batch]}))
            self._journal_now(records)
            for p in batch:
                self._spawn(p)
            # A spawn that failed left room: look again.

    def _too_large(self, p: Prepared) -> Record:
        total = self.total or (0, 0, 0)
        error = (
            f"requests cpu={p.millicpu}m memory={p.memory} gpu={p.gpu}, more than this node has "
            f"(cpu={total[0]}m memory={total[1]} gpu={total[2]})"
        )
        return _exit_record(p.task_id, p.attempt, time.time(), spawn_error=error, retryable=False)

    def _add_live(self, live: Live) -> None:
        self.live[live.key] = live
        self.used_millicpu += live.millicpu
        self.used_memory += live.memory
        self.used_gpu += live.gpu

    def _remove_live(self, live: Live) -> None:
        del self.live[live.key]
        self.used_millicpu -= live.millicpu
        self.used_memory -= live.memory
        self.used_gpu -= live.gpu

    def _spawn(self, p: Prepared) -> None:
        assert self.spawner is not None
        before = boot_clock()
        try:
            pid, cg = self.spawner.spawn(p)
        except SpawnError as exc:
            failed = _exit_record(p.task_id, p.attempt, time.time(), spawn_error=exc.message, retryable=exc.retryable)
            self._finish(p.key, failed)
            return
        now = time.time()
        try:
            pidfd = os.pidfd_open(pid)
        except OSError as exc:  # e.g. EMFILE: a child we cannot watch must not run
            _signal_group(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            if cg is not None:
                self._release_cgroup(cg, 0)
            error = f"cannot watch the process: {exc.strerror}"
            self._finish(p.key, _exit_record(p.task_id, p.attempt, now, spawn_error=error))
            return
        rec: Record = {"t": "start", "task_id": p.task_id, "attempt": p.attempt, "pid": pid, "at": now}
        rec["boot"] = [before, boot_clock()]  # when the pid was born: tells it from a later reuse
        if p.millicpu or p.memory or p.gpu:
            rec["res"] = [p.millicpu, p.memory, p.gpu]  # what it holds, for a restarted supervisor
        if cg is not None:
            rec["cg"] = cg.name
        live = Live(p.key, p.task_id, p.attempt, pid, pidfd, rec, True, cg, p.millicpu, p.memory, p.gpu)
        self._add_live(live)
        self.loop.add_reader(pidfd, self._on_ready, live)
        self._emit(rec)

    def _on_ready(self, live: Live, block: bool = False) -> None:
        """The pidfd of ``live`` is readable: the process ended."""
        if self.live.get(live.key) is not live:
            return
        if live.stopping:  # a cancelled task's stragglers die with it; the zombie leader still pins the pgid
            _signal_group(live.pid, signal.SIGKILL)
        now = time.time()
        fields: dict[str, Any] = {"started_at": live.record.get("at")}
        if live.child:
            try:
                pid, status, usage = os.wait4(live.pid, 0 if block else os.WNOHANG)
            except ChildProcessError:
                fields["lost"] = "the process vanished before it could be waited for"
            else:
                if pid == 0:
                    return
                if os.WIFSIGNALED(status):
                    fields["signal"] = os.WTERMSIG(status)
                else:
                    fields["exit_code"] = os.waitstatus_to_exitcode(status)
                fields["cpu_seconds"] = usage.ru_utime + usage.ru_stime
                # posix_spawn's vfork child execs from OUR address space, and exec folds that mm's high-water
                # mark into the child's ru_maxrss: a figure at or below our own peak may be ours, not the task's.
                if usage.ru_maxrss > resource.getrusage(resource.RUSAGE_SELF).ru_maxrss:
                    fields["peak_memory"] = usage.ru_maxrss * 1024
        else:
            fields["lost"] = LOST_RESTARTED
        self.loop.remove_reader(live.pidfd)
        os.close(live.pidfd)
        if live.kill_timer is not None:
            live.kill_timer.cancel()
        if live.cgroup is not None:
            peak, oom = self.cgroups.usage(live.cgroup)
            if peak is not None and live.child:
                fields["peak_memory"] = peak
            fields["oom_killed"] = oom
            self._release_cgroup(live.cgroup, 0)
        fields["log_truncated"] = self._truncated(live.task_id, live.attempt)
        self._remove_live(live)
        self._finish(live.key, _exit_record(live.task_id, live.attempt, now, **fields))
        if self.queue:
            self._pump()  # the next task starts now, without a round trip through the server

    def _truncated(self, task_id: str, attempt: int) -> bool:
        assert self.spawner is not None
        for path in self.spawner.log_files(task_id, attempt):
            with contextlib.suppress(OSError):
                if os.stat(path).st_size >= self.opts.log_limit:
                    return True
        return False

    def _release_cgroup(self, cg: TaskCgroup, tries: int) -> None:
        """To the pool (or removed) once empty: the rest of a task's group may still be on its way out."""
        if self.cgroups.release(cg):
            return
        if tries + 1 >= CGROUP_RMDIR_TRIES:
            log.warning("cgroup %s is still busy; leaving it for the next supervisor", cg.name)
            return
        self.loop.call_later(0.05 * 2**tries, self._release_cgroup, cg, tries + 1)

    def _finish(self, key: str, rec: Record) -> None:
        self.exited[key] = rec
        self._emit(rec)

    def _unqueue(self, key: str) -> bool:
        """Take a launch out of the queue, if it is still there: it exits ``never_started``."""
        waiting = self.queued.pop(key, None)
        if waiting is None:
            return False  # started already, ended, or unknown: nothing to take back
        self._finish(key, _exit_record(waiting.task_id, waiting.attempt, time.time(), never_started=True))
        self._pump()  # it may have been the head holding the others back
        return True

    def _stop(self, key: str, grace: float) -> None:
        if self._unqueue(key):  # never started: it leaves the queue (its deque entry is skipped later)
            return
        live = self.live.get(key)
        if live is None:
            return  # unknown or already ended: nothing to do
        if grace <= 0:
            live.stopping = True
            _signal_group(live.pid, signal.SIGKILL)
            return
        if not live.stopping:
            live.stopping = True
            _signal_group(live.pid, signal.SIGTERM)
        kill_at = self.loop.time() + grace
        if live.kill_at is None or kill_at < live.kill_at:
            if live.kill_timer is not None:
                live.kill_timer.cancel()
            live.kill_at = kill_at
            live.kill_timer = self.loop.call_at(kill_at, self._kill, live)

    def _kill(self, live: Live) -> None:
        if self.live.get(live.key) is live:
            _signal_group(live.pid, signal.SIGKILL)

    def _ack(self, keys: list[list[Any]]) -> None:
        acked = [[task_id, attempt] for task_id, attempt in keys]
        for task_id, attempt in acked:
            self.exited.pop(protocol.attempt_key(task_id, attempt), None)
        if acked:
            self._journal_buf.append(encode_record({"t": "ack", "keys": acked}))
            self._schedule_flush()

    # ------------------------------------------------------------------------------- journal and events

    def _emit(self, rec: Record) -> None:
        self._journal_buf.append(encode_record(rec))
        if self.current is not None:
            self._events.append(rec)
        self._schedule_flush()

    def _schedule_flush(self) -> None:
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self.loop.call_soon(self._flush)

    def _write_journal(self, data: bytes) -> None:
        try:
            self.journal.append(data)
        except OSError:
            log.exception("cannot write the journal")

    def _journal_now(self, records: list[bytes]) -> None:
        """Write the buffered records and ``records`` at once (in that order), before acting on them."""
        buf = self._journal_buf
        buf.extend(records)
        data = b"".join(buf)
        buf.clear()
        self._write_journal(data)

    def _flush(self) -> None:
        """Once per loop iteration: one journal write, then one send per client (journal first: durable order)."""
        self._flush_scheduled = False
        if self._journal_buf:
            data = b"".join(self._journal_buf)
            self._journal_buf.clear()
            self._write_journal(data)
            if self.journal.wants_compaction():
                try:
                    self.journal.compact(self._journal_state())
                except OSError:
                    log.exception("cannot compact the journal")
        if self._events and self.current is not None:
            self.current.out.append(protocol.encode({"op": protocol.EVENTS, "events": self._events}))
            self._dirty.add(self.current)
        self._events = []
        for conn in list(self._dirty):
            self._send(conn)
