"""Where the local executor keeps things: one function per path, shared by the server side and the supervisor.

The tree::

    <state_dir>/supervisor.sock    Unix socket (or /tmp/taskplane-<uid>/<hash>.sock when that path is too long)
    <state_dir>/supervisor.addr    the socket path actually used, for humans
    <state_dir>/supervisor.pid     pid of the live supervisor
    <state_dir>/supervisor.lock    flock held by the live supervisor: one per state dir
    <state_dir>/supervisor.log     its own log
    <state_dir>/journal.jsonl      started / exited / acked attempts, replayed by a restarted supervisor
    <logs_dir>/<task_id>.<attempt>.stdout|.stderr  an attempt's output
    <work_dir>/<task_id>.<attempt>[/<workdir>]     the attempt's sandbox (its working directory)

Flat, named by the attempt key: one mkdir per attempt on the spawn path (inode allocation is the costliest step
of a spawn after the exec itself). The path functions return strings: the supervisor builds them on every
spawn, and ``LocalExecutor.log_path`` reads logs through the same function.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path, PurePosixPath

# sun_path is 108 bytes including the terminating NUL.
MAX_SOCKET_PATH = 107

_TASK_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


def state_hash(state_dir: Path) -> str:
    """A short stable name for a state dir (for the fallback socket and the cgroup subtree)."""
    return hashlib.sha256(os.fsencode(str(state_dir.absolute()))).hexdigest()[:12]


def socket_path(state_dir: Path) -> Path:
    """The supervisor's socket: in the state dir, or under /tmp when that path would not fit in ``sun_path``."""
    preferred = state_dir.absolute() / "supervisor.sock"
    if len(os.fsencode(str(preferred))) <= MAX_SOCKET_PATH:
        return preferred
    return Path("/tmp") / f"taskplane-{os.getuid()}" / f"{state_hash(state_dir)}.sock"  # noqa: S108 - 0700 dir


def pid_path(state_dir: Path) -> Path:
    """The supervisor's pidfile."""
    return state_dir / "supervisor.pid"


def lock_path(state_dir: Path) -> Path:
    """The file the live supervisor holds an exclusive flock on."""
    return state_dir / "supervisor.lock"


def supervisor_log_path(state_dir: Path) -> Path:
    """The supervisor's own log file."""
    return state_dir / "supervisor.log"


def addr_path(state_dir: Path) -> Path:
    """Records the socket path in use (it may be the /tmp fallback)."""
    return state_dir / "supervisor.addr"


def journal_path(state_dir: Path) -> Path:
    """The supervisor's journal of attempts."""
    return state_dir / "journal.jsonl"


def log_file(logs_dir: str | Path, task_id: str, attempt: int, stream: str) -> str:
    """One stream (``stdout`` or ``stderr``) of one attempt: ``<logs_dir>/<task_id>.<attempt>.<stream>``."""
    return f"{logs_dir}/{task_id}.{attempt}.{stream}"


def sandbox_path(work_dir: str | Path, task_id: str, attempt: int) -> str:
    """The attempt's own working directory: ``<work_dir>/<task_id>.<attempt>`` (the attempt key)."""
    return f"{work_dir}/{task_id}.{attempt}"


def sandbox_dir(work_dir: Path, task_id: str, attempt: int) -> Path:
    """``sandbox_path`` as a ``Path``."""
    return Path(sandbox_path(work_dir, task_id, attempt))


def check_task_id(task_id: object) -> str | None:
    """Why ``task_id`` cannot name directories, or ``None`` when it can."""
    if not isinstance(task_id, str) or not _TASK_ID_RE.match(task_id):
        return f"invalid task id {task_id!r}: letters, digits, '_', '.', '-' only, starting with a letter or digit"
    return None


def check_workdir(workdir: object) -> str | None:
    """Why ``workdir`` is not a safe path relative to the sandbox, or ``None`` when it is."""
    if workdir is None:
        return None
    if not isinstance(workdir, str) or "\0" in workdir:
        return f"invalid workdir {workdir!r}"
    path = PurePosixPath(workdir)
    if path.is_absolute():
        return f"workdir {workdir!r} must be relative to the task's sandbox"
    if ".." in path.parts:
        return f"workdir {workdir!r} must not contain '..'"
    return None
