"""``LocalExecutor``: the server's side of the local executor, a client of the node supervisor.

It never forks tasks itself. ``open`` connects to the supervisor of its state dir (starting one when none
runs), says hello with the server's fencing epoch and the node's capacity (``capacity()``: the supervisor starts
queued launches against it), and returns what the supervisor knows (``Recovered``: running, queued, exited); a
reader task then hands every ``events`` batch to ``on_events``. When the connection drops (the supervisor was
killed), it reconnects, restarting the supervisor, and delivers the new snapshot as events: the engine
de-duplicates by attempt. Requests (``start``, ``stop``, ``ack``) are idempotent, so one in flight when the
connection drops is sent again on the next connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import itertools
import logging
import os
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from taskplane.domain.outcome import AttemptOutcome
from taskplane.domain.resources import Resources
from taskplane.errors import ConflictError, InternalError, UnavailableError
from taskplane.executors.local import layout, protocol
from taskplane.executors.local.capacity import default_max_tasks, detect_memory, detect_millicpu
from taskplane.executors.local.config import LocalExecutorConfig
from taskplane.services.ports import (
    ExecutorEvent,
    Exited,
    Launch,
    LogStream,
    NodeCapacity,
    Recovered,
    Started,
)

log = logging.getLogger("taskplane.executor.local")

FENCED = "executor_fenced"


class _Disconnected(Exception):
    """The connection a request was sent on is gone; the request may be sent again."""


def _utc(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, tz=UTC)


def launch_to_wire(launch: Launch) -> dict[str, Any]:
    """A ``Launch`` as the supervisor's ``start`` expects it."""
    return {
        "task_id": launch.task_id,
        "attempt": launch.attempt,
        "argv": list(launch.argv),
        "env": dict(launch.env),
        "workdir": launch.workdir,
        "millicpu": launch.resources.millicpu,
        "memory": launch.resources.memory,
        "gpu": launch.resources.gpu,
        "image": launch.image,
    }


def started_from_wire(rec: dict[str, Any]) -> Started:
    """A supervisor start record as ``Started``."""
    return Started(rec["task_id"], rec["attempt"], _utc(rec["at"]), rec.get("pid"))


def exited_from_wire(rec: dict[str, Any]) -> Exited:
    """A supervisor exit record as ``Exited``."""
    outcome = AttemptOutcome(
        exit_code=rec.get("exit_code"),
        signal=rec.get("signal"),
        oom_killed=bool(rec.get("oom_killed")),
        spawn_error=rec.get("spawn_error"),
        lost=rec.get("lost"),
        retryable=bool(rec.get("retryable", True)),
    )
    started_at = rec.get("started_at")
    return Exited(
        rec["task_id"],
        rec["attempt"],
        _utc(rec["at"]),
        outcome,
        started_at=None if started_at is None else _utc(started_at),
        never_started=bool(rec.get("never_started")),
        peak_memory=rec.get("peak_memory"),
        cpu_seconds=rec.get("cpu_seconds"),
        log_truncated=bool(rec.get("log_truncated")),
    )


def event_from_wire(rec: dict[str, Any]) -> ExecutorEvent:
    """A supervisor record (start or exit) as an executor event."""
    return exited_from_wire(rec) if rec.get("t") == "exit" else started_from_wire(rec)


def supervisor_running(state_dir: Path) -> bool:
    """True while a supervisor (even one still starting) holds the state dir's lock.

    The probe takes the lock for a moment when it is free: a supervisor starting in that instant gives up.
    For operators and tests, never on a hot path.
    """
    try:
        fd = os.open(layout.lock_path(state_dir), os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # also releases the probe's lock
    return False


def _ask_shutdown(path: str, force: bool, timeout: float) -> dict[str, Any]:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(path)
        sock.sendall(protocol.encode({"op": protocol.SHUTDOWN, "id": 1, "force": force}))
        data = b""
        while not data.endswith(b"\n"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    return protocol.decode(data) if data else {}


def shutdown_supervisor(state_dir: Path, *, force: bool = False, timeout: float = 10.0) -> bool:
    """Ask the supervisor of ``state_dir`` to exit and wait for it (blocking; for tests and operators).

    Without ``force`` it exits only when no task runs. With ``force`` it SIGKILLs every task's process group
    first and records their exits. Returns ``True`` when no supervisor runs afterwards.
    """
    path = str(layout.socket_path(state_dir))
    deadline = time.monotonic() + timeout
    while True:
        try:
            reply = _ask_shutdown(path, force, timeout)
        except (OSError, ValueError):
            if not supervisor_running(state_dir):
                return True
            if time.monotonic() > deadline:
                return False
            time.sleep(0.02)  # starting up: not listening yet
            continue
        if not reply.get("ok"):
            return False
        break
    while supervisor_running(state_dir):  # the lock goes with the process
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


class LocalExecutor:
    """Runs attempts as local processes through the node supervisor (``Executor`` and ``SupportsLogs``)."""

    name = "local"

    def __init__(self, config: LocalExecutorConfig) -> None:
        self.config = config
        self._epoch = 0
        self._on_events: Callable[[list[ExecutorEvent]], None] = lambda events: None
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._connected = asyncio.Event()
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._ids = itertools.count(1)
        self._session: asyncio.Task[None] | None = None
        self._closed = False
        self._fenced: str | None = None
        self._cgroups = "none"
        self._warnings: tuple[str, ...] = ("the supervisor has not been reached yet",)
        self._logs_dir = config.logs_dir
        self._total: Resources | None = None
        self._spawning: asyncio.Future[None] | None = None
        self.supervisor_pid: int | None = None

    # ------------------------------------------------------------------------------------ Executor

    async def open(self, epoch: int, on_events: Callable[[list[ExecutorEvent]], None]) -> Recovered:
        """Connect (starting the supervisor if needed) under fencing ``epoch``; report what survived.

        Raises ``ConflictError`` (code ``executor_fenced``) when a server with a newer epoch took the node, and
        ``UnavailableError`` when the supervisor cannot be reached.
        """
        if self._session is not None:
            raise InternalError("LocalExecutor.open called twice")
        self._epoch = epoch
        self._on_events = on_events
        self._closed = False
        self._fenced = None
        reader, writer, reply = await self._connect_and_hello()
        self._attach(reader, writer, reply)
        self._session = asyncio.get_running_loop().create_task(self._run(reader), name="taskplane-local-executor")
        return self._recovered(reply)

    async def start(self, launches: Sequence[Launch]) -> None:
        """Send the launches to the supervisor in one message; outcomes arrive as events."""
        if launches:
            await self._request(protocol.START, launches=[launch_to_wire(launch) for launch in launches])

    async def stop(self, task_id: str, attempt: int, grace: float) -> None:
        """SIGTERM to the attempt's process group, SIGKILL after ``grace`` seconds (timed by the supervisor)."""
        await self._request(protocol.STOP, task_id=task_id, attempt=attempt, grace=max(0.0, float(grace)))

    async def unqueue(self, task_id: str, attempt: int) -> None:
        """Take the attempt back from the node's queue if it has not started (it exits ``never_started``)."""
        await self._request(protocol.UNQUEUE, task_id=task_id, attempt=attempt)

    async def ack(self, keys: Sequence[tuple[str, int]]) -> None:
        """Let the supervisor forget these exits (they are durable in the database)."""
        if keys:
            await self._request(protocol.ACK, keys=[[task_id, attempt] for task_id, attempt in keys])

    def capacity(self) -> NodeCapacity:
        """This node's size (configured, else detected), its task limit and how limits are enforced.

        The supervisor gets the same figures in every ``hello`` and starts queued launches against them.
        """
        total, max_tasks = self._size()
        return NodeCapacity(self.config.node_name, total, max_tasks, self._cgroups, self._warnings)

    def nodes(self) -> list[NodeCapacity]:
        """The one node this executor runs on: this machine."""
        return [self.capacity()]

    def _size(self) -> tuple[Resources, int]:
        if self._total is None:
            cfg = self.config
            self._total = Resources(
                millicpu=cfg.millicpu if cfg.millicpu is not None else detect_millicpu(),
                memory=cfg.memory if cfg.memory is not None else detect_memory(),
            )
        max_tasks = self.config.max_tasks if self.config.max_tasks is not None else default_max_tasks()
        return self._total, max_tasks

    async def close(self) -> None:
        """Disconnect; running attempts keep running under the supervisor."""
        self._closed = True
        if self._writer is not None:
            self._writer.close()
        if self._session is not None:
            self._session.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._session
            self._session = None
        if self._spawning is not None:
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await self._spawning
        self._detach(UnavailableError("the local executor is closed"))
        self._connected.set()  # wake waiting requests: they see the executor closed and raise

    # ----------------------------------------------------------------------------------- SupportsLogs

    def log_path(self, task_id: str, attempt: int, stream: LogStream) -> Path:
        """``<logs_dir>/<task_id>/<attempt>.<stream>`` (the supervisor's logs dir, if it runs with another)."""
        return Path(layout.log_file(self._logs_dir, task_id, attempt, LogStream(stream).value))

    # ---------------------------------------------------------------------------------------- extras

    async def shutdown_supervisor(self, *, force: bool = False) -> bool:
        """Close, then stop the supervisor (only when idle, or killing every task with ``force``)."""
        await self.close()
        return await asyncio.to_thread(shutdown_supervisor, self.config.state_dir, force=force)

    # ------------------------------------------------------------------------------------ connection

    async def _connect_and_hello(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, dict[str, Any]]:
        total, max_tasks = self._size()
        capacity = {"millicpu": total.millicpu, "memory": total.memory, "gpu": total.gpu, "max_tasks": max_tasks}
        reader, writer = await self._connect()
        try:
            writer.write(protocol.encode({"op": protocol.HELLO, "id": 0, "epoch": self._epoch, "capacity": capacity}))
            await writer.drain()
            line = await asyncio.wait_for(reader.readline(), self.config.request_timeout)
            if not line:
                raise UnavailableError("the supervisor closed the connection during hello")
            reply = protocol.decode(line)
        except BaseException:
            writer.close()
            raise
        if not reply.get("ok"):
            writer.close()
            if reply.get("code") == protocol.STALE_EPOCH:
                self._fenced = str(reply.get("detail"))
                raise ConflictError(self._fenced, code=FENCED)
            raise UnavailableError(f"the supervisor refused hello: {reply.get('detail')}")
        return reader, writer, reply

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        loop = asyncio.get_running_loop()
        path = str(layout.socket_path(self.config.state_dir))
        deadline = loop.time() + self.config.connect_timeout
        spawned = False
        delay = 0.005
        while True:
            try:
                return await asyncio.open_unix_connection(path, limit=protocol.READ_LIMIT)
            except (FileNotFoundError, ConnectionRefusedError):
                pass
            if not spawned:
                # Tracked so that ``close`` can wait for it: no supervisor appears after we are closed.
                self._spawning = asyncio.ensure_future(asyncio.to_thread(self._spawn_supervisor))
                await asyncio.shield(self._spawning)  # the thread runs on if we are cancelled; close waits
                spawned = True
            elif loop.time() > deadline:
                raise UnavailableError(
                    f"the supervisor did not listen on {path} within {self.config.connect_timeout:.0f}s; "
                    f"its log {layout.supervisor_log_path(self.config.state_dir)} ends with: {self._log_tail()}"
                )
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.1)

    def _spawn_supervisor(self) -> None:
        cfg = self.config
        for path in (cfg.state_dir, cfg.logs_dir, cfg.work_dir):
            path.mkdir(mode=0o700, parents=True, exist_ok=True)
        max_tasks = cfg.max_tasks if cfg.max_tasks is not None else default_max_tasks()
        argv = [
            cfg.python,
            "-m",
            "taskplane.executors.local.supervisor",
            "--state-dir",
            str(cfg.state_dir),
            "--logs-dir",
            str(cfg.logs_dir),
            "--work-dir",
            str(cfg.work_dir),
            "--log-limit-bytes",
            str(cfg.log_limit_bytes),
            "--cgroups",
            cfg.cgroups,
            "--idle-exit",
            str(cfg.idle_exit),
            "--max-tasks",
            str(max_tasks),
            "--daemonize",
        ]
        with open(layout.supervisor_log_path(cfg.state_dir), "ab") as log_file:
            # The daemon forks at once and this first process exits: nothing is left for us to reap.
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=log_file,
                start_new_session=True,
                cwd=cfg.state_dir,
            )
            code = proc.wait()
        if code != 0:
            raise UnavailableError(f"the supervisor failed to start (exit {code}): {self._log_tail()}")
        log.info("started the node supervisor for %s", cfg.state_dir)

    def _log_tail(self) -> str:
        try:
            with open(layout.supervisor_log_path(self.config.state_dir), "rb") as fh:
                fh.seek(0, os.SEEK_END)
                fh.seek(max(0, fh.tell() - 2000))
                return fh.read().decode(errors="replace").strip()[-2000:] or "(empty)"
        except OSError as exc:
            return f"(unreadable: {exc.strerror})"

    def _attach(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, reply: dict[str, Any]) -> None:
        self._reader, self._writer = reader, writer
        self.supervisor_pid = reply.get("pid")
        self._cgroups = str(reply.get("cgroups", "none"))
        warnings = [str(w) for w in reply.get("warnings", [])]
        running = reply.get("config") or {}
        wanted = {
            "logs_dir": str(self.config.logs_dir),
            "work_dir": str(self.config.work_dir),
            "log_limit": self.config.log_limit_bytes,
        }
        differ = [f"{k}={running[k]}" for k, v in wanted.items() if k in running and running[k] != v]
        if differ:
            # It keeps its settings while tasks run; the new ones apply once it has exited (idle) and restarts.
            warnings.append(f"the node supervisor runs with {', '.join(differ)}; new settings apply after it restarts")
        if running.get("logs_dir"):
            self._logs_dir = Path(running["logs_dir"])
        self._warnings = tuple(warnings)
        self._connected.set()

    def _detach(self, error: Exception) -> None:
        self._reader = self._writer = None
        self._connected.clear()
        pending, self._pending = self._pending, {}
        for fut in pending.values():
            if not fut.done():
                fut.set_exception(error)

    def _recovered(self, reply: dict[str, Any]) -> Recovered:
        return Recovered(
            running=[started_from_wire(rec) for rec in reply.get("running", [])],
            exited=[exited_from_wire(rec) for rec in reply.get("exited", [])],
            queued=[(str(task_id), int(attempt)) for task_id, attempt in reply.get("queued", [])],
        )

    def _deliver(self, events: list[ExecutorEvent]) -> None:
        if not events:
            return
        try:
            self._on_events(events)
        except Exception:  # the consumer's bug must not kill the connection
            log.exception("on_events failed")

    async def _run(self, reader: asyncio.StreamReader) -> None:
        """Read replies and events; on a dropped connection, reconnect and deliver the new snapshot."""
        while True:
            await self._read(reader)
            if self._writer is not None:
                self._writer.close()
            self._detach(_Disconnected())
            if self._closed:
                return
            log.warning("lost the connection to the node supervisor; reconnecting")
            delay = 0.05
            while True:
                try:
                    reader, writer, reply = await self._connect_and_hello()
                except ConflictError:
                    log.error("a newer server took this node over: %s", self._fenced)
                    self._connected.set()  # wake waiting requests: they see the fence and raise
                    return
                except (UnavailableError, OSError, TimeoutError, ValueError) as exc:
                    log.warning("cannot reach the node supervisor (%s); retrying in %.2fs", exc, delay)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 2.0)
                    continue
                break
            self._attach(reader, writer, reply)
            recovered = self._recovered(reply)
            self._deliver([*recovered.running, *recovered.exited])

    async def _read(self, reader: asyncio.StreamReader) -> None:
        try:
            while True:
                line = await reader.readline()
                if not line:
                    return
                msg = protocol.decode(line)
                op = msg.get("op")
                if op == protocol.EVENTS:
                    self._deliver([event_from_wire(rec) for rec in msg["events"]])
                elif op == protocol.REPLY:
                    fut = self._pending.pop(msg.get("id", -1), None)
                    if fut is not None and not fut.done():
                        fut.set_result(msg)
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError):
            return

    async def _request(self, op: str, **fields: Any) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.config.request_timeout
        while True:
            if self._fenced is not None:
                raise ConflictError(self._fenced, code=FENCED)
            if self._closed or self._session is None:
                raise UnavailableError("the local executor is not open")
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise UnavailableError(f"the node supervisor did not answer {op} in time")
            writer = self._writer
            if writer is None:  # reconnecting; the event is also set when fenced or closed
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._connected.wait(), remaining)
                if self._writer is None and self._fenced is None and not self._closed:
                    await asyncio.sleep(0.01)
                continue
            if writer.is_closing():  # lost, and the session has not noticed yet
                await asyncio.sleep(0.01)
                continue
            msg_id = next(self._ids)
            fut: asyncio.Future[dict[str, Any]] = loop.create_future()
            self._pending[msg_id] = fut
            try:
                writer.write(protocol.encode({"op": op, "id": msg_id, "epoch": self._epoch, **fields}))
                await writer.drain()
                reply = await asyncio.wait_for(fut, remaining)
            except (_Disconnected, ConnectionError):
                # Every request is idempotent: send it again on the next connection, once the session has it.
                if self._writer is writer:
                    await asyncio.sleep(0.01)
                continue
            except TimeoutError as exc:
                raise UnavailableError(f"the node supervisor did not answer {op} in time") from exc
            finally:
                self._pending.pop(msg_id, None)
            if reply.get("ok"):
                return reply
            if reply.get("code") == protocol.STALE_EPOCH:
                self._fenced = str(reply.get("detail"))
                raise ConflictError(self._fenced, code=FENCED)
            raise InternalError(f"the node supervisor refused {op}: {reply.get('detail')}")
