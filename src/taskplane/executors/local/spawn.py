"""Turning one launch into one process: validation, sandbox, argv[0] lookup, then ``os.posix_spawn``.

The child gets its own session and process group, stdin from /dev/null, stdout and stderr opened straight onto
the attempt's log files by the spawn's file actions (the supervisor keeps no descriptor per task but a pidfd).
Three process-wide settings are switched around the spawn only, which is safe because the supervisor is one
thread: the working directory, ``RLIMIT_FSIZE`` (the output cap: with SIGXFSZ ignored, writes past it fail with
EFBIG) and the memory cgroup (the child is born under its attempt's memory limit; on v1 it is moved into its cpu
cgroup right after the spawn, see ``cgroups.Cgroups.place``).
"""

from __future__ import annotations

import errno
import logging
import os
import resource
import signal
import stat
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from taskplane.executors.local.cgroups import Cgroups, TaskCgroup
from taskplane.executors.local.layout import check_task_id, check_workdir, log_file, sandbox_path

# Deterministic: the same launch fails the same way on a retry.
NON_RETRYABLE = frozenset(
    {
        errno.ENOENT,
        errno.EACCES,
        errno.ENOEXEC,
        errno.ENOTDIR,
        errno.EISDIR,
        errno.ELOOP,
        errno.ENAMETOOLONG,
        errno.E2BIG,
        errno.EPERM,
        errno.EINVAL,
    }
)

# Signals the supervisor (or Python itself: SIGPIPE) changed, reset to default in the child. SIGXFSZ stays
# ignored on purpose: that is what turns the output cap into EFBIG instead of a killed task.
RESET_SIGNALS = (signal.SIGPIPE, signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD, signal.SIGUSR1)

log = logging.getLogger("taskplane.supervisor")

_OUT_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_APPEND
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


class SpawnError(Exception):
    """A launch that could not become a process; ``message`` goes into ``AttemptOutcome.spawn_error``."""

    def __init__(self, message: str, *, retryable: bool) -> None:
        super().__init__(message)
        self.message = message
        self.retryable = retryable


@dataclass(frozen=True, slots=True)
class Prepared:
    """A validated launch."""

    task_id: str
    attempt: int
    key: str  # ``<task_id>.<attempt>``
    argv: list[str]
    env: dict[str, str]
    workdir: str | None
    millicpu: int
    memory: int
    gpu: int = 0

    @property
    def best_effort(self) -> bool:
        """No cpu or memory request: no cgroup either (a gpu request is accounted, not enforced)."""
        return self.millicpu <= 0 and self.memory <= 0


def _is_str_list(value: object) -> bool:
    return isinstance(value, list) and all(isinstance(item, str) for item in value)


def prepare(launch: Mapping[str, Any]) -> Prepared:
    """Check a wire launch (see ``executor.launch_to_wire``); raises a non-retryable ``SpawnError``."""
    task_id = launch.get("task_id")
    problem = check_task_id(task_id)
    attempt = launch.get("attempt")
    if problem is None and (not isinstance(attempt, int) or isinstance(attempt, bool) or attempt < 0):
        problem = f"invalid attempt number {attempt!r}"
    if problem is not None:
        raise SpawnError(problem, retryable=False)
    assert isinstance(task_id, str) and isinstance(attempt, int)
    if launch.get("image"):
        raise SpawnError(f"the local executor cannot run image {launch['image']!r}", retryable=False)
    argv = launch.get("argv")
    if not _is_str_list(argv) or not argv:
        raise SpawnError("argv must be a non-empty list of strings", retryable=False)
    env = launch.get("env") or {}
    if not isinstance(env, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in env.items()):
        raise SpawnError("env must map strings to strings", retryable=False)
    workdir = launch.get("workdir")
    problem = check_workdir(workdir)
    if problem is not None:
        raise SpawnError(problem, retryable=False)
    try:
        millicpu, memory, gpu = (max(0, int(launch.get(name) or 0)) for name in ("millicpu", "memory", "gpu"))
    except (TypeError, ValueError) as exc:
        raise SpawnError(f"invalid resources: {exc}", retryable=False) from exc
    return Prepared(task_id, attempt, f"{task_id}.{attempt}", argv, env, workdir, millicpu, memory, gpu)


def resolve_executable(argv0: str, env: Mapping[str, str]) -> str | None:
    """``argv0`` itself when it has a slash, else its first match on the task's own ``PATH``.

    A lean ``shutil.which``: one ``stat`` and one ``access`` per candidate. As with execvp, relative entries
    are relative to the current directory, which is the sandbox at spawn time.
    """
    if "/" in argv0:
        return argv0
    for entry in env.get("PATH", os.defpath).split(os.pathsep):
        candidate = f"{entry or '.'}/{argv0}"
        try:
            mode = os.stat(candidate).st_mode
        except OSError:
            continue
        if stat.S_ISREG(mode) and os.access(candidate, os.X_OK):
            return candidate
    return None


def _mkdir(path: str) -> None:
    """``mkdir -p``, for a directory whose parent usually exists (an ext4 mkdir: ~35-50 us)."""
    try:
        os.mkdir(path)
    except FileExistsError:
        pass
    except FileNotFoundError:
        os.makedirs(path, exist_ok=True)


def boot_clock() -> float:
    """Seconds since boot (``CLOCK_BOOTTIME``), the clock of a process's start time in ``/proc/<pid>/stat``."""
    return time.clock_gettime(time.CLOCK_BOOTTIME)


def same_process(pid: int, spawned_between: tuple[float, float]) -> bool:
    """Whether ``pid`` is still the process we spawned between two ``boot_clock`` readings.

    Its start time (field 22 of ``/proc/<pid>/stat``, clock ticks since boot, rounded down) must fall in that
    window: a pid reused later started later. Reading the start time right after each spawn would cost up to
    200 us of CPU while the child is still inside exec; this costs two clock reads per spawn.
    """
    ticks = start_ticks(pid)
    if ticks is None:
        return False
    started = ticks / CLOCK_TICKS
    before, after = spawned_between
    return before - 2.0 / CLOCK_TICKS <= started <= after + 1.0 / CLOCK_TICKS


def start_ticks(pid: int) -> int | None:
    """Field 22 of ``/proc/<pid>/stat`` (start time in clock ticks since boot): tells a pid from its reuse."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            data = fh.read()
    except OSError:
        return None
    # comm (field 2) may hold spaces and parentheses: split after the last ')', which leaves field 3 first.
    fields = data[data.rfind(b")") + 2 :].split()
    try:
        return int(fields[19])
    except (IndexError, ValueError):
        return None


class Spawner:
    """Spawns prepared launches with their sandbox, log files, output cap and cgroup."""

    def __init__(
        self,
        logs_dir: Path,
        work_dir: Path,
        log_limit: int,
        home: Path,
        cgroups: Cgroups,
        child_nofile: int | None = None,
    ) -> None:
        # Strings, not Paths, on the hot path: pathlib costs ~90 us per spawn here.
        self._logs = str(logs_dir)
        os.makedirs(self._logs, exist_ok=True)  # the log files are opened straight in it, by the spawn
        self._work = str(work_dir)
        self.log_limit = log_limit
        self._home = str(home)
        self._cgroups = cgroups
        # The supervisor raises its own descriptor limit (one pidfd per task); children get the original one.
        self._child_nofile = child_nofile

    def log_files(self, task_id: str, attempt: int) -> tuple[str, str]:
        """The attempt's stdout and stderr files (``layout.log_file``)."""
        return log_file(self._logs, task_id, attempt, "stdout"), log_file(self._logs, task_id, attempt, "stderr")

    def spawn(self, p: Prepared) -> tuple[int, TaskCgroup | None]:
        """Start ``p``; returns (pid, cgroup). Raises ``SpawnError``."""
        try:
            cwd = sandbox_path(self._work, p.task_id, p.attempt)
            _mkdir(cwd)
            if p.workdir:
                cwd = f"{cwd}/{p.workdir}"
                os.makedirs(cwd, exist_ok=True)
        except OSError as exc:
            raise SpawnError(f"cannot prepare the sandbox: {exc.strerror}", retryable=True) from exc
        cg: TaskCgroup | None = None
        if not p.best_effort:
            try:
                cg = self._cgroups.acquire(p.millicpu, p.memory)
            except OSError as exc:
                raise SpawnError(f"cannot create the cgroup: {exc.strerror}", retryable=True) from exc
        try:
            pid = self._spawn_in(p, cwd, cg)
        except BaseException:
            if cg is not None:
                self._cgroups.release(cg)
            raise
        if cg is not None:
            try:
                self._cgroups.place(cg, pid)
            except OSError as exc:  # ESRCH: it is gone already; anything else costs it only its cpu weight
                if exc.errno != errno.ESRCH:
                    log.warning("cannot move %s into its cpu cgroup: %s", p.key, exc.strerror)
        return pid, cg

    def _leave(self) -> None:
        # Never raise here: that would lose the pid of a child already spawned.
        for attempt in range(3):
            try:
                self._cgroups.leave()
                return
            except OSError:
                if attempt == 2:
                    log.exception("cannot move the supervisor back to its own cgroup")

    @staticmethod
    def _posix_spawn(path: str, p: Prepared, actions: list[tuple[Any, ...]]) -> int:
        return os.posix_spawn(
            path, p.argv, p.env, file_actions=actions, setsid=True, setsigmask=(), setsigdef=RESET_SIGNALS
        )

    def _spawn_in(self, p: Prepared, cwd: str, cg: TaskCgroup | None) -> int:
        stdout, stderr = self.log_files(p.task_id, p.attempt)
        actions = [
            (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
            (os.POSIX_SPAWN_OPEN, 1, stdout, _OUT_FLAGS, 0o644),
            (os.POSIX_SPAWN_OPEN, 2, stderr, _OUT_FLAGS, 0o644),
        ]
        soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
        cap = self.log_limit if hard == resource.RLIM_INFINITY else min(self.log_limit, hard)
        nofile_soft, nofile_hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        child_nofile = self._child_nofile if self._child_nofile is not None else nofile_soft
        try:
            os.chdir(cwd)
        except OSError as exc:
            raise SpawnError(f"cannot enter the sandbox: {exc.strerror}", retryable=True) from exc
        try:
            path = resolve_executable(p.argv[0], p.env)
            if path is None:
                raise SpawnError(f"{os.strerror(errno.ENOENT)}: {p.argv[0]!r}", retryable=False)
            if cg is not None:
                try:
                    self._cgroups.join(cg)
                except OSError as exc:
                    raise SpawnError(f"cannot join the cgroup: {exc.strerror}", retryable=True) from exc
            try:
                resource.setrlimit(resource.RLIMIT_FSIZE, (cap, hard))
                if child_nofile != nofile_soft:
                    resource.setrlimit(resource.RLIMIT_NOFILE, (child_nofile, nofile_hard))
                try:
                    try:
                        return self._posix_spawn(path, p, actions)
                    except FileNotFoundError:
                        if os.path.isdir(self._logs):
                            raise
                        os.makedirs(self._logs, exist_ok=True)  # removed under our feet: once more
                        return self._posix_spawn(path, p, actions)
                finally:
                    resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
                    if child_nofile != nofile_soft:
                        resource.setrlimit(resource.RLIMIT_NOFILE, (nofile_soft, nofile_hard))
            except OSError as exc:
                retryable = exc.errno not in NON_RETRYABLE
                raise SpawnError(f"{exc.strerror or exc}: {p.argv[0]!r}", retryable=retryable) from exc
            except ValueError as exc:  # NUL bytes or '=' in env keys
                raise SpawnError(f"invalid argv or env: {exc}", retryable=False) from exc
            finally:
                if cg is not None:
                    self._leave()
        finally:
            os.chdir(self._home)
