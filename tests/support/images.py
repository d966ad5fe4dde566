"""A tiny container image built offline for the podman tests, and this machine's podman flags.

The image is a root filesystem holding ``/bin/busybox`` (the static build) and its applets as symlinks,
``podman import``-ed as ``localhost/taskplane-test:1``: no registry, ~2 MB, built once per machine (a later
session finds it). Tests needing podman skip when it is missing or broken, or fail when
``TASKPLANE_TEST_REQUIRE`` lists ``podman``.
"""

from __future__ import annotations

import functools
import io
import shutil
import subprocess
import tarfile
import tempfile
import uuid
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import orjson
import pytest

from taskplane.domain.resources import Resources
from taskplane.domain.task import NO_HOST_ACCESS, HostAccess
from taskplane.executors.podman import PodmanExecutorConfig
from taskplane.services.ports import Launch
from tests.support.services import require_service

TEST_IMAGE = "localhost/taskplane-test:1"
BUSYBOX = Path("/bin/busybox")

# Facts about this machine (a cgroup v1/v2 hybrid without systemd; root lacks CAP_SYS_RESOURCE): crun fails
# on this cgroup layout, and ulimits must stay at or under the hard limits. Other machines need none of these.
GLOBAL_ARGS: tuple[str, ...] = ("--runtime", "runc", "--cgroup-manager=cgroupfs")
RUN_ARGS: tuple[str, ...] = ("--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024")

APPLETS = (
    "sh", "echo", "sleep", "cat", "true", "false", "env", "id", "head", "tail", "dd", "ls", "ip", "nc", "wc",
    "kill", "printf", "seq", "yes", "grep", "test", "[", "touch", "mkdir", "rm", "sed", "tr", "wget", "hostname",
)  # fmt: skip


def podman(*args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[bytes]:
    """``podman <this machine's global flags> args...``, output captured."""
    return subprocess.run(["podman", *GLOBAL_ARGS, *args], capture_output=True, timeout=timeout, check=False)


def _rootfs_tar() -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:

        def add_dir(name: str, mode: int = 0o755) -> None:
            info = tarfile.TarInfo(name)
            info.type, info.mode = tarfile.DIRTYPE, mode
            tar.addfile(info)

        def add_file(name: str, data: bytes, mode: int = 0o644) -> None:
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), mode
            tar.addfile(info, io.BytesIO(data))

        for name in ("bin", "etc", "proc", "sys", "dev", "run", "var"):
            add_dir(name)
        add_dir("tmp", 0o1777)
        add_file("bin/busybox", BUSYBOX.read_bytes(), 0o755)
        for applet in APPLETS:
            info = tarfile.TarInfo(f"bin/{applet}")
            info.type, info.linkname, info.mode = tarfile.SYMTYPE, "busybox", 0o777
            tar.addfile(info)
        add_file("etc/passwd", b"root:x:0:0:root:/:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/sh\n")
        add_file("etc/group", b"root:x:0:\nnogroup:x:65534:\n")
    return buf.getvalue()


@functools.cache
def podman_problem() -> str | None:
    """Why the podman tests cannot run here (no podman, no busybox, the image does not build), or ``None``."""
    if shutil.which("podman") is None:
        return "no podman binary on PATH"
    if not BUSYBOX.exists():
        return f"no static busybox at {BUSYBOX} (apt-get install busybox-static)"
    try:
        if podman("image", "exists", TEST_IMAGE).returncode == 0:
            return None
        with tempfile.TemporaryDirectory(prefix="tp-image-") as tmp:
            tar = Path(tmp) / "rootfs.tar"
            tar.write_bytes(_rootfs_tar())
            done = podman("import", str(tar), TEST_IMAGE, timeout=120)
        if done.returncode != 0:
            return f"podman import failed: {done.stderr.decode(errors='replace').strip()}"
        probe = podman("run", "--rm", *RUN_ARGS, "--network", "none", TEST_IMAGE, "sh", "-c", "exit 3")
        if probe.returncode != 3:
            return f"podman cannot run a container here: {probe.stderr.decode(errors='replace').strip()}"
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"podman does not answer: {exc}"
    return None


@pytest.fixture(scope="session")
def podman_image() -> str:
    """The test image's reference (built on first use); skips, or fails when required, without podman."""
    problem = podman_problem()
    if problem is not None:
        require_service("podman", problem)
    return TEST_IMAGE


def containers_of(instance: str) -> list[str]:
    """Names of every container (running or not) labelled with ``instance``."""
    done = podman("ps", "-a", "--filter", f"label=taskplane.instance={instance}", "--format", "json")
    return [str(c["Names"][0]) for c in orjson.loads(done.stdout or b"[]") or []]


def remove_containers_of(instance: str) -> list[str]:
    """Force-remove every container of ``instance``; the names that were there."""
    names = containers_of(instance)
    if names:
        podman("rm", "-f", "-t", "0", *names)
    return names


def new_instance(prefix: str = "t") -> str:
    """A fresh instance name (a label value and part of container names), unique per test."""
    return f"{prefix}{uuid.uuid4().hex[:10]}"


@pytest.fixture
def podman_instance(podman_image: str) -> Iterator[str]:
    """A fresh instance for one test; asserts at teardown that the test left none of its containers behind."""
    instance = new_instance()
    yield instance
    left = remove_containers_of(instance)
    assert left == [], f"containers leaked by the test: {left}"


def podman_config(tmp_path: Path, instance: str, **overrides: Any) -> PodmanExecutorConfig:
    """An executor config for tests: this machine's flags, logs under ``tmp_path``, fast polling."""
    values: dict[str, Any] = {
        "logs_dir": tmp_path / "logs",
        "state_dir": tmp_path / "podman",
        "node_name": "podman-test",
        "instance": instance,
        "global_args": GLOBAL_ARGS,
        "run_args": RUN_ARGS,
        "reconcile_interval": 1.0,
        "log_poll_interval": 0.05,
    }
    values.update(overrides)
    return PodmanExecutorConfig(**values)


def container_launch(
    image: str,
    task_id: str,
    *argv: str,
    attempt: int = 1,
    env: Mapping[str, str] | None = None,
    memory: int = 0,
    millicpu: int = 0,
    run_timeout: float | None = None,
    host: HostAccess = NO_HOST_ACCESS,
    tenant: str = "default",
    workdir: str | None = None,
) -> Launch:
    """A launch of ``argv`` in ``image``."""
    return Launch(
        task_id=task_id,
        attempt=attempt,
        argv=argv,
        env=dict(env or {}),
        workdir=workdir,
        resources=Resources(millicpu=millicpu, memory=memory),
        image=image,
        tenant=tenant,
        host=host,
        run_timeout=run_timeout,
    )


def launcher(image: str) -> Callable[..., Launch]:
    """The contract suite's ``launch(task_id, script, ...)``: ``sh -c script`` in ``image``."""

    def launch(task_id: str, script: str, **kwargs: Any) -> Launch:
        return container_launch(image, task_id, "sh", "-c", script, **kwargs)

    return launch
