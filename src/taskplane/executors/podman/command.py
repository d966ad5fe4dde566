"""The podman command lines this executor runs, built as argv lists (never a shell), and one way to run them.

``run_argv`` is a pure function of the config and a ``Launch``: what a container may do is decided here, in one
place (no network unless asked, a non-root user by default, ``no-new-privileges``, a pids limit, the memory limit
without swap). ``PodmanCli`` runs one podman call as an asyncio subprocess with a bounded number in flight.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from taskplane.errors import UnavailableError
from taskplane.executors.podman.config import PodmanExecutorConfig
from taskplane.services.ports import Launch

LABEL_INSTANCE = "taskplane.instance"
LABEL_TENANT = "taskplane.tenant"
LABEL_TASK = "taskplane.task"
LABEL_ATTEMPT = "taskplane.attempt"

MIN_MEMORY = 6 << 20  # podman refuses a smaller --memory


def container_name(instance: str, task_id: str, attempt: int) -> str:
    """``tp-<instance>-<task_id>-<attempt>``: unique per attempt, so a second ``run`` of it fails instead of running."""
    return f"tp-{instance}-{task_id}-{attempt}"


def attempt_dir(state_dir: Path, task_id: str, attempt: int) -> Path:
    """The attempt's own directory: conmon's working directory (it writes ``oom`` there), and its raw log."""
    return state_dir / f"{task_id}.{attempt}"


def container_log_path(state_dir: Path, task_id: str, attempt: int) -> Path:
    """The file conmon writes the attempt's output to (``k8s-file`` format), even while the server is down."""
    return attempt_dir(state_dir, task_id, attempt) / "ctr.log"


def oom_mark_path(state_dir: Path, task_id: str, attempt: int) -> Path:
    """Present once an OOM kill was seen in the attempt's container (survives a server restart).

    conmon itself creates this file (``oom`` in its working directory, which is the attempt's directory because
    the executor runs ``podman run`` there) when the kernel reports an OOM in the container's cgroup, whether or
    not a server is running; the executor's own watch touches the same file.
    """
    return attempt_dir(state_dir, task_id, attempt) / "oom"


def run_argv(config: PodmanExecutorConfig, launch: Launch, state_dir: Path) -> list[str]:
    """``podman [global] run -d ... <image> <args>`` for one attempt.

    The task's argv replaces the image's entrypoint (``--entrypoint '["argv0"]'``, the JSON form so any
    ``argv[0]`` is taken literally) and its arguments follow the image: the container runs exactly that argv.
    """
    if launch.image is None:
        raise ValueError(f"attempt {launch.key} has no image")
    host = launch.host
    res = launch.resources
    argv = [config.binary, *config.global_args, "run", "-d", *config.run_args]
    argv += ["--name", container_name(config.instance, launch.task_id, launch.attempt)]
    labels = {
        **config.labels,
        LABEL_INSTANCE: config.instance,
        LABEL_TENANT: launch.tenant,
        LABEL_TASK: launch.task_id,
        LABEL_ATTEMPT: str(launch.attempt),
    }
    for key, value in labels.items():
        argv += ["--label", f"{key}={value}"]
    if host.host_network:
        argv += ["--network", "host"]
    elif not host.network:
        argv += ["--network", "none"]
    if res.millicpu > 0:
        argv += ["--cpus", f"{res.millicpu / 1000:g}"]
    if res.memory > 0:
        memory = max(res.memory, MIN_MEMORY)
        argv += ["--memory", str(memory), "--memory-swap", str(memory)]
    argv += ["--pids-limit", str(config.pids_limit)]
    user = host.user or config.default_user
    if user:
        argv += ["--user", user]
    if host.read_only_root:
        argv.append("--read-only")
    if host.privileged:
        argv.append("--privileged")
    else:
        argv += ["--security-opt", "no-new-privileges"]
    if host.host_pid:
        argv += ["--pid", "host"]
    for mount in host.mounts:
        # A read-only mount is not recursive (``bind``): ``ro`` on podman's default ``rbind`` leaves the mounts
        # under the source writable (runc 1.1 has no recursive read-only), so they are not exposed at all.
        argv += ["-v", f"{mount.source}:{mount.target}:{'ro,bind' if mount.read_only else 'rw'}"]
    # The task's environment only: podman would add the *_proxy variables of its own (the server's) environment.
    argv.append("--http-proxy=false")
    for key, value in launch.env.items():
        argv += ["--env", f"{key}={value}"]
    if launch.workdir is not None:
        argv += ["--workdir", "/" + launch.workdir.strip("/")]
    log_cap = 4 * config.log_limit_bytes + (64 << 20)  # both streams at their cap, plus the format's overhead
    argv += [
        "--log-driver",
        "k8s-file",
        "--log-opt",
        f"path={container_log_path(state_dir, launch.task_id, launch.attempt)}",
        "--log-opt",
        f"max-size={log_cap}",
        f"--pull={config.pull}",
    ]
    if launch.argv:
        argv += ["--entrypoint", json.dumps([launch.argv[0]])]
    argv.append(launch.image)
    argv += launch.argv[1:]
    return argv


@dataclass(frozen=True, slots=True)
class CallResult:
    """What one podman call returned."""

    returncode: int
    stdout: bytes
    stderr: bytes

    @property
    def ok(self) -> bool:
        """The call exited 0."""
        return self.returncode == 0

    def message(self) -> str:
        """The engine's own error text (its last stderr lines), for reports to the user."""
        text = self.stderr.decode(errors="replace").strip()
        lines = [line.removeprefix("Error: ") for line in text.splitlines() if line.strip()]
        return " ".join(lines[-3:])[:2000] or f"exit status {self.returncode}"


class PodmanCli:
    """Runs podman (or a compatible CLI) with the configured global arguments, a few calls at a time."""

    def __init__(self, config: PodmanExecutorConfig) -> None:
        """A runner for ``config.binary``; ``max_concurrent_calls`` bounds the podman processes in flight."""
        self.config = config
        self._slots = asyncio.Semaphore(max(1, config.max_concurrent_calls))

    def argv(self, *args: str) -> list[str]:
        """``[binary, *global_args, *args]``."""
        return [self.config.binary, *self.config.global_args, *args]

    async def call(self, *args: str) -> CallResult:
        """``podman [global] args...``; ``UnavailableError`` when the binary cannot be run or hangs."""
        return await self.exec(self.argv(*args))

    async def exec(self, argv: list[str], cwd: Path | None = None) -> CallResult:
        """Run a full argv (from ``argv`` or ``run_argv``) in ``cwd`` (default: the server's) and collect its output.

        conmon, started by ``podman run``, inherits ``cwd`` and writes files into it (``oom``).
        """
        async with self._slots:
            try:
                proc = await asyncio.create_subprocess_exec(
                    *argv,
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=asyncio.subprocess.PIPE,
                    stderr=asyncio.subprocess.PIPE,
                    env=cli_env(),
                    cwd=cwd,
                )
            except OSError as exc:
                raise UnavailableError(f"cannot run {argv[0]!r}: {exc.strerror or exc}") from exc
            try:
                async with asyncio.timeout(self.config.call_timeout):
                    out, err = await proc.communicate()
            except TimeoutError as exc:
                await reap(proc)
                raise UnavailableError(f"{argv[0]} {argv[len(self.config.global_args) + 1]} timed out") from exc
            except asyncio.CancelledError:
                await asyncio.shield(reap(proc))  # no orphaned call (and no transport outliving the loop)
                raise
            assert proc.returncode is not None
            return CallResult(proc.returncode, out, err)


async def reap(proc: asyncio.subprocess.Process) -> None:
    """Kill ``proc`` if it still runs, and collect it and its pipes (no transport may outlive the loop)."""
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
    with contextlib.suppress(OSError, ValueError):
        await proc.communicate()
    await proc.wait()


def cli_env() -> dict[str, str]:
    """This process's environment without the server's own ``TASKPLANE_*`` settings (tokens, database URLs)."""
    return {k: v for k, v in os.environ.items() if not k.startswith("TASKPLANE_")}
