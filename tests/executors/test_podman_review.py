"""Review of the podman executor: failures, races and security, each with real podman and real containers."""

from __future__ import annotations

import asyncio
import contextlib
import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from taskplane.domain.outcome import classify
from taskplane.domain.task import FailureClass, HostAccess, Mount
from taskplane.errors import UnavailableError
from taskplane.executors.podman import PodmanExecutor, PodmanExecutorConfig
from taskplane.services.ports import Exited, LogStream
from tests.executors.local_helpers import Recorder
from tests.executors.podman_helpers import TIMEOUT, running
from tests.support.images import RUN_ARGS, container_launch, containers_of, podman, podman_config

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def config(tmp_path: Path, podman_instance: str) -> PodmanExecutorConfig:
    return podman_config(tmp_path, podman_instance)


def exits_of(events: Recorder, task_id: str, attempt: int = 1) -> list[Exited]:
    return [ev for ev in events.events if isinstance(ev, Exited) and (ev.task_id, ev.attempt) == (task_id, attempt)]


def label_args(instance: str, task_id: str, attempt: int = 1) -> list[str]:
    labels = [f"taskplane.instance={instance}", f"taskplane.task={task_id}", f"taskplane.attempt={attempt}"]
    return [arg for label in labels for arg in ("--label", label)]


def inspect(name: str) -> dict[str, Any]:
    done = podman("inspect", name)
    assert done.returncode == 0, done.stderr
    [data] = orjson.loads(done.stdout)
    return dict(data)


# ------------------------------------------------------------------------------------ exits, exactly once


def slow_listing_podman(directory: Path) -> Path:
    """A podman wrapper whose ``ps`` takes its snapshot, then waits while ``<dir>/hold`` exists before answering."""
    script = directory / "podman"
    script.write_text(
        "#!/bin/sh\n"
        'for a in "$@"; do\n'
        '  if [ "$a" = ps ]; then\n'
        '    out=$(podman "$@"); rc=$?\n'
        f'    if [ -e "{directory}/hold" ]; then\n'
        f'      touch "{directory}/snapshot"\n'
        f'      while [ -e "{directory}/hold" ]; do sleep 0.05; done\n'
        "    fi\n"
        '    printf "%s\\n" "$out"\n'
        f'    echo done >> "{directory}/listings"\n'
        "    exit $rc\n"
        "  fi\n"
        "done\n"
        'exec podman "$@"\n'
    )
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return script


def listings_done(directory: Path) -> int:
    path = directory / "listings"
    return len(path.read_text().splitlines()) if path.exists() else 0


async def test_an_exit_is_not_reported_again_by_a_listing_older_than_its_ack(
    tmp_path: Path, podman_instance: str, podman_image: str
) -> None:
    wrapper_dir = tmp_path / "wrapper"
    wrapper_dir.mkdir()
    binary = slow_listing_podman(wrapper_dir)
    config = podman_config(tmp_path, podman_instance, binary=str(binary), reconcile_interval=0.2)
    async with running(config) as (executor, events):
        await executor.start([container_launch(podman_image, "once", "sh", "-c", "exit 3")])
        [ended] = await events.exits("once", timeout=TIMEOUT)
        assert ended.outcome.exit_code == 3
        # A listing takes its snapshot (the exited container in it) and is slow to answer ...
        (wrapper_dir / "hold").touch()
        async with asyncio.timeout(TIMEOUT):
            while not (wrapper_dir / "snapshot").exists():
                await asyncio.sleep(0.05)
        # ... while the engine acks the exit: the container is removed.
        await executor.ack([("once", 1)])
        assert containers_of(config.instance) == []
        seen = listings_done(wrapper_dir)
        (wrapper_dir / "hold").unlink()
        async with asyncio.timeout(TIMEOUT):  # the stale listing, then two fresh ones, have been taken in
            while listings_done(wrapper_dir) < seen + 3:
                await asyncio.sleep(0.05)
        await asyncio.sleep(0.1)
        reported = exits_of(events, "once")
        events.exited.clear()  # acked already: nothing for ``running`` to ack
    assert [ev.outcome for ev in reported] == [ended.outcome], reported


async def test_a_container_reported_as_never_started_cannot_start_later(
    config: PodmanExecutorConfig, podman_image: str
) -> None:
    # A server killed during ``podman run``: the container is created, and the orphaned ``podman run`` may still
    # start it after the new server has reported the attempt as never started (and the engine retried it).
    name = f"tp-{config.instance}-orphan-1"
    labels = label_args(config.instance, "orphan")
    created = podman("create", "--pull=never", *RUN_ARGS, "--name", name, *labels, podman_image, "sleep", "60")
    assert created.returncode == 0, created.stderr
    async with running(config) as (_, events):
        [ended] = await events.exits("orphan", timeout=TIMEOUT)
        assert ended.outcome.spawn_error is not None and ended.outcome.retryable
        # The orphaned ``podman run`` now gets to start it: the attempt reported as never started must not run.
        started = podman("start", name)
        state = podman("ps", "-a", "--filter", f"name={name}", "--format", "{{.State}}").stdout.decode().strip()
    assert started.returncode != 0 and state == "", (started, state)


async def test_a_stop_during_a_start_that_adopts_an_existing_container_stops_it(
    config: PodmanExecutorConfig, podman_image: str
) -> None:
    name = f"tp-{config.instance}-adopt-1"
    labels = label_args(config.instance, "adopt")
    async with running(config) as (executor, events):
        # Another server of this instance started the attempt a moment ago (blocking: no listing sees it first).
        done = podman("run", "-d", *RUN_ARGS, "--name", name, *labels, podman_image, "sleep", "60")
        assert done.returncode == 0, done.stderr
        await executor.start([container_launch(podman_image, "adopt", "sleep", "60")])
        await executor.stop("adopt", 1, grace=0)  # while its ``podman run`` (which will find the name taken) runs
        try:
            [ended] = await events.exits("adopt", timeout=20)
        finally:
            podman("rm", "-f", "-t", "0", name)
    assert ended.outcome.signal is not None, ended


async def test_stop_twice_after_the_exit_and_after_the_ack_reports_one_exit(
    config: PodmanExecutorConfig, podman_image: str
) -> None:
    async with running(config) as (executor, events):
        await executor.start([container_launch(podman_image, "st", "sleep", "60")])
        await events.starts("st", timeout=TIMEOUT)
        await executor.stop("st", 1, grace=0)
        await executor.stop("st", 1, grace=0)
        [ended] = await events.exits("st", timeout=TIMEOUT)
        await executor.stop("st", 1, grace=0)
        await executor.ack([("st", 1)])
        await executor.stop("st", 1, grace=0)
        await executor.stop("nope", 1, grace=0)
        await asyncio.sleep(2.5)  # two listings
        reported = exits_of(events, "st")
        events.exited.clear()
    assert ended.outcome.signal == 9 and classify(ended.outcome) is FailureClass.USER
    assert reported == [ended]


async def test_stop_sends_term_first_then_kill_after_the_grace(config: PodmanExecutorConfig, podman_image: str) -> None:
    polite = "trap 'echo term; exit 0' TERM; echo up; while true; do sleep 0.1; done"
    stubborn = "trap 'echo ignored' TERM; echo up; while true; do sleep 0.1; done"
    async with running(config) as (executor, events):
        await executor.start(
            [
                container_launch(podman_image, "polite", "sh", "-c", polite),
                container_launch(podman_image, "stubborn", "sh", "-c", stubborn),
            ]
        )
        for task in ("polite", "stubborn"):
            path = executor.log_path(task, 1, LogStream.STDOUT)
            async with asyncio.timeout(TIMEOUT):
                while "up" not in (path.read_text() if path.exists() else ""):
                    await asyncio.sleep(0.05)
        await executor.stop("polite", 1, grace=10)
        await executor.stop("stubborn", 1, grace=1)
        polite_end, stubborn_end = await events.exits("polite", "stubborn", timeout=TIMEOUT)
        polite_out = executor.log_path("polite", 1, LogStream.STDOUT).read_text()
        stubborn_out = executor.log_path("stubborn", 1, LogStream.STDOUT).read_text()
    assert polite_end.outcome.exit_code == 0 and polite_out == "up\nterm\n"
    assert stubborn_end.outcome.signal == 9 and stubborn_out == "up\nignored\n"


# ---------------------------------------------------------------------------------------------------- logs


async def test_binary_large_and_unterminated_output_is_copied_exactly(
    config: PodmanExecutorConfig, podman_image: str
) -> None:
    script = (
        r"printf '\000\001\377\r\033[1m\n\n'; seq 1 150000 >&2; printf 'a%.0s' $(seq 1 20000); "
        r"printf 'no newline at the end' >&2"
    )
    async with running(config) as (executor, events):
        await executor.start([container_launch(podman_image, "bytes", "sh", "-c", script)])
        [ended] = await events.exits("bytes", timeout=TIMEOUT)
        out = executor.log_path("bytes", 1, LogStream.STDOUT).read_bytes()
        err = executor.log_path("bytes", 1, LogStream.STDERR).read_bytes()
    assert ended.outcome.exit_code == 0 and not ended.log_truncated
    assert out == b"\x00\x01\xff\r\x1b[1m\n\n" + b"a" * 20000
    assert err == "".join(f"{i}\n" for i in range(1, 150001)).encode() + b"no newline at the end"


async def test_output_across_a_restart_mid_run_is_neither_lost_nor_doubled(
    config: PodmanExecutorConfig, podman_image: str
) -> None:
    script = "for i in $(seq 1 40); do echo out$i; echo err$i >&2; sleep 0.05; done"
    async with running(config) as (executor, events):
        await executor.start([container_launch(podman_image, "mid", "sh", "-c", script)])
        path = executor.log_path("mid", 1, LogStream.STDOUT)
        async with asyncio.timeout(TIMEOUT):
            while "out5\n" not in (path.read_text() if path.exists() else ""):
                await asyncio.sleep(0.02)
    async with running(config) as (executor, events):
        [ended] = await events.exits("mid", timeout=TIMEOUT)
        out = executor.log_path("mid", 1, LogStream.STDOUT).read_text()
        err = executor.log_path("mid", 1, LogStream.STDERR).read_text()
    assert ended.outcome.exit_code == 0
    assert out == "".join(f"out{i}\n" for i in range(1, 41))
    assert err == "".join(f"err{i}\n" for i in range(1, 41))


async def test_stderr_cap_is_enforced_independently(tmp_path: Path, podman_instance: str, podman_image: str) -> None:
    config = podman_config(tmp_path, podman_instance, log_limit_bytes=1000)
    async with running(config) as (executor, events):
        await executor.start([container_launch(podman_image, "cap", "sh", "-c", "echo hi; yes | head -c 100000 >&2")])
        [ended] = await events.exits("cap", timeout=TIMEOUT)
        out = executor.log_path("cap", 1, LogStream.STDOUT).read_bytes()
        err = executor.log_path("cap", 1, LogStream.STDERR).read_bytes()
    assert ended.log_truncated and out == b"hi\n" and err == b"y\n" * 500


# ------------------------------------------------------------------------------------------------ security


async def test_argv_env_and_workdir_cannot_inject_podman_options(
    config: PodmanExecutorConfig, podman_image: str
) -> None:
    argv = ("--privileged", "-v", "/:/host", "--network=host", "-e", "X=1")
    env = {"A": "x\nB=y --privileged", "C": "==", "D": "-e E=1"}
    script = 'printf "<%s>" "$@"; printf "\\n[%s][%s][%s][%s]\\n" "$A" "$C" "$D" "${E-unset}"; pwd; ls /host'
    async with running(config) as (executor, events):
        await executor.start(
            [container_launch(podman_image, "inj", "sh", "-c", script, "sh", *argv, env=env, workdir="-w/..//tmp")]
        )
        [ended] = await events.exits("inj", timeout=TIMEOUT)
        out = executor.log_path("inj", 1, LogStream.STDOUT).read_text()
        data_privileged = None
        with contextlib.suppress(AssertionError):
            data_privileged = inspect(f"tp-{config.instance}-inj-1")["HostConfig"]["Privileged"]
    lines = out.splitlines()
    assert lines[0] == "".join(f"<{a}>" for a in argv)
    assert lines[1:3] == ["[x", "B=y --privileged][==][-e E=1][unset]"]
    assert lines[3] == "/tmp"  # "-w/.." is a directory name, ".." resolves inside the container
    assert ended.outcome.exit_code != 0  # no /host
    assert data_privileged in (None, False)


def _mount_tmpfs(path: Path) -> bool:
    if os.geteuid() != 0:
        return False
    done = subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(path)], capture_output=True, check=False)
    return done.returncode == 0


@pytest.fixture
def dir_with_submount(tmp_path: Path) -> Iterator[Path]:
    source = tmp_path / "share"
    sub = source / "sub"
    sub.mkdir(parents=True)
    (source / "file").write_text("top\n")
    if not _mount_tmpfs(sub):
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        yield source
    finally:
        subprocess.run(["umount", "-l", str(sub)], capture_output=True, check=False)


async def test_a_read_only_mount_exposes_no_writable_submount(
    config: PodmanExecutorConfig, podman_image: str, dir_with_submount: Path
) -> None:
    host = HostAccess(user="0:0", mounts=(Mount(str(dir_with_submount), "/m"),))
    script = "cat /m/file; touch /m/top || echo top-ro; touch /m/sub/x || echo sub-ro"
    async with running(config) as (executor, events):
        await executor.start([container_launch(podman_image, "ro", "sh", "-c", script, host=host)])
        [ended] = await events.exits("ro", timeout=TIMEOUT)
        out = executor.log_path("ro", 1, LogStream.STDOUT).read_text()
    assert out == "top\ntop-ro\nsub-ro\n", out
    assert not (dir_with_submount / "sub" / "x").exists()
    assert ended.outcome.exit_code == 0


async def test_a_writable_mount_when_asked(config: PodmanExecutorConfig, podman_image: str, tmp_path: Path) -> None:
    share = tmp_path / "rw"
    share.mkdir()
    host = HostAccess(user="0:0", mounts=(Mount(str(share), "/m", read_only=False),))
    async with running(config) as (executor, events):
        await executor.start([container_launch(podman_image, "rw", "sh", "-c", "echo hi > /m/x", host=host)])
        [ended] = await events.exits("rw", timeout=TIMEOUT)
    assert ended.outcome.exit_code == 0 and (share / "x").read_text() == "hi\n"


async def test_default_container_is_unprivileged(config: PodmanExecutorConfig, podman_image: str) -> None:
    script = "id -u; grep -E '^(CapEff|NoNewPrivs)' /proc/self/status; ls /sys/class/net"
    async with running(config) as (executor, events):
        await executor.start([container_launch(podman_image, "unpriv", "sh", "-c", script)])
        [ended] = await events.exits("unpriv", timeout=TIMEOUT)
        host_config = inspect(f"tp-{config.instance}-unpriv-1")["HostConfig"]
        out = executor.log_path("unpriv", 1, LogStream.STDOUT).read_text().split()
    assert ended.outcome.exit_code == 0
    assert out[0] == "65534"
    assert out[out.index("CapEff:") + 1] == "0000000000000000"
    assert out[out.index("NoNewPrivs:") + 1] == "1"
    assert out[out.index("NoNewPrivs:") + 2 :] == ["lo"]
    assert host_config["Privileged"] is False and host_config["NetworkMode"] == "none"


async def test_privileged_only_when_asked(config: PodmanExecutorConfig, podman_image: str) -> None:
    async with running(config) as (executor, events):
        await executor.start(
            [container_launch(podman_image, "priv", "true", host=HostAccess(privileged=True, user="0:0"))]
        )
        await events.exits("priv", timeout=TIMEOUT)
        assert inspect(f"tp-{config.instance}-priv-1")["HostConfig"]["Privileged"] is True


# ------------------------------------------------------------------------------------------ limits and OOM


async def test_limits_are_applied_and_a_watched_oom_kill_is_infra(
    config: PodmanExecutorConfig, podman_image: str
) -> None:
    script = "sleep 1; head -c 536870912 /dev/zero | tail > /dev/null"
    async with running(config) as (executor, events):
        await executor.start([container_launch(podman_image, "oom", "sh", "-c", script, memory=32 << 20, millicpu=250)])
        await events.starts("oom", timeout=TIMEOUT)
        host_config = inspect(f"tp-{config.instance}-oom-1")["HostConfig"]
        [ended] = await events.exits("oom", timeout=TIMEOUT)
    assert host_config["Memory"] == 32 << 20 and host_config["MemorySwap"] == 32 << 20
    assert host_config["NanoCpus"] == 250_000_000 and host_config["PidsLimit"] == config.pids_limit
    assert ended.outcome.oom_killed and classify(ended.outcome) is FailureClass.INFRA


# ---------------------------------------------------------------------------------------------------- leaks


def _children() -> list[str]:
    me = str(os.getpid())
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            if fields[1] == me and fields[0] != "Z":
                found.append((entry / "cmdline").read_bytes().replace(b"\0", b" ").decode())
    return found


async def test_nothing_is_left_after_ack_and_close(config: PodmanExecutorConfig, podman_image: str) -> None:
    before = _children()
    async with running(config) as (executor, events):
        await executor.start(
            [
                container_launch(podman_image, "leak", "sh", "-c", "echo hi; exit 1"),
                container_launch(podman_image, "nocmd", "/no/such/command"),
                container_launch("localhost/taskplane-no-such-image:0", "noimg", "true"),
            ]
        )
        await events.exits("leak", "nocmd", "noimg", timeout=TIMEOUT)
    assert containers_of(config.instance) == []
    assert config.state_dir is not None and list(config.state_dir.iterdir()) == []
    assert sorted(p.name for p in config.logs_dir.iterdir()) == ["leak.1.stderr", "leak.1.stdout"]
    assert _children() == before


def failing_rm_podman(directory: Path) -> Path:
    """A podman wrapper whose ``rm`` fails (storage trouble, a timeout, a server killed in the middle of an ack)."""
    script = directory / "podman"
    script.write_text(
        "#!/bin/sh\n"
        'for a in "$@"; do [ "$a" = rm ] && { echo "Error: rm failed" >&2; exit 125; }; done\n'
        'exec podman "$@"\n'
    )
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return script


async def test_an_ack_whose_removal_failed_keeps_the_attempt_logs_and_outcome(
    tmp_path: Path, podman_instance: str, podman_image: str
) -> None:
    wrapper_dir = tmp_path / "wrapper"
    wrapper_dir.mkdir()
    broken = podman_config(tmp_path, podman_instance, binary=str(failing_rm_podman(wrapper_dir)))
    async with running(broken) as (executor, events):
        await executor.start([container_launch(podman_image, "keep", "sh", "-c", "echo hi; echo ho >&2; exit 4")])
        [first] = await events.exits("keep", timeout=TIMEOUT)
        await executor.ack([("keep", 1)])  # podman rm fails: the container stays
        events.exited.clear()
    assert containers_of(podman_instance) != []
    # The next server finds the exited container again and reports it: with the same outcome and output.
    async with running(podman_config(tmp_path, podman_instance)) as (executor, events):
        [again] = await events.exits("keep", timeout=TIMEOUT)
        out = executor.log_path("keep", 1, LogStream.STDOUT).read_text()
        err = executor.log_path("keep", 1, LogStream.STDERR).read_text()
    assert again.outcome == first.outcome
    assert (out, err) == ("hi\n", "ho\n")


async def test_podman_calls_do_not_inherit_the_servers_settings(
    config: PodmanExecutorConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TASKPLANE_DATABASE_URL", "postgresql://user:secret@db/taskplane")
    async with running(config) as (executor, _):
        proc = executor._events_proc
        assert proc is not None
        environ = Path(f"/proc/{proc.pid}/environ").read_bytes().split(b"\0")
    assert not [var for var in environ if var.startswith(b"TASKPLANE_")]


async def test_an_open_that_fails_leaves_no_podman_process(tmp_path: Path, podman_instance: str) -> None:
    wrapper_dir = tmp_path / "wrapper"
    wrapper_dir.mkdir()
    script = wrapper_dir / "podman"
    script.write_text('#!/bin/sh\nfor a in "$@"; do [ "$a" = ps ] && exit 125; done\nexec podman "$@"\n')
    script.chmod(0o755)
    before = _children()
    executor = PodmanExecutor(podman_config(tmp_path, podman_instance, binary=str(script)))
    try:
        with pytest.raises(UnavailableError):
            await executor.open(1, Recorder())
        await asyncio.sleep(0.5)  # what a failed open started has had time to run
        left = [cmd for cmd in _children() if cmd not in before]
    finally:
        await executor.close()
    assert left == []


SERVER = """
import asyncio, sys
from pathlib import Path
from taskplane.executors.podman import PodmanExecutor
from tests.support.images import container_launch, podman_config

async def main() -> None:
    config = podman_config(Path(sys.argv[1]), sys.argv[2])
    executor = PodmanExecutor(config)
    await executor.open(1, lambda events: None)
    await executor.start([container_launch(sys.argv[3], "k9", "sh", "-c", "echo ran; sleep 1; exit 5")])
    await asyncio.sleep(float(sys.argv[4]))
    print("starting", flush=True)
    await asyncio.sleep(60)

asyncio.run(main())
"""


def _orphaned_runs(name: str, flag: str = "--name") -> list[int]:
    """Processes with ``flag value`` in their command line (the killed server's podman children)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if f"{flag}\0{name}\0".encode() in (entry / "cmdline").read_bytes():
                    pids.append(int(entry.name))
    return pids


@pytest.mark.parametrize("delay", [0.0, 0.1])
async def test_a_server_killed_during_a_start_neither_loses_nor_doubles_the_attempt(
    tmp_path: Path, podman_instance: str, podman_image: str, delay: float
) -> None:
    config = podman_config(tmp_path, podman_instance)
    name = f"tp-{podman_instance}-k9"
    server = subprocess.Popen(
        [sys.executable, "-c", SERVER, str(tmp_path), podman_instance, podman_image, str(delay)],
        stdout=subprocess.PIPE,
        cwd=Path(__file__).parents[2],
    )
    assert server.stdout is not None
    assert server.stdout.readline() == b"starting\n"
    server.kill()  # kill -9 while its ``podman run`` is (probably) under way; that ``podman run`` runs on
    server.wait()
    try:
        async with running(config) as (executor, events):
            async with asyncio.timeout(TIMEOUT):  # the orphaned ``podman run`` has ended
                while _orphaned_runs(f"{name}-1"):
                    await asyncio.sleep(0.05)
            [ended] = await events.exits("k9", timeout=TIMEOUT)
            out = executor.log_path("k9", 1, LogStream.STDOUT)
            log = out.read_text() if out.exists() else ""
            left = containers_of(podman_instance)
    finally:  # the killed server's ``podman events`` (it would end at its next event: there may be none)
        for pid in _orphaned_runs(f"label=taskplane.instance={podman_instance}", flag="--filter"):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, 9)
    if ended.outcome.spawn_error is not None:  # reported as never started: it must not have run, nor run later
        assert ended.outcome.retryable and left == [] and log == "", (left, log)
    else:
        assert ("k9", 1) in events.started and ended.outcome.exit_code == 5 and log == "ran\n"
    assert exits_of(events, "k9") == [ended]


async def test_a_successful_exit_arrives_on_the_event_stream(
    tmp_path: Path, podman_instance: str, podman_image: str
) -> None:
    # podman leaves ``ContainerExitCode`` out of a died event when it is 0. No listing runs here after open.
    config = podman_config(tmp_path, podman_instance, reconcile_interval=3600.0)
    async with running(config) as (executor, events):
        await executor.start([container_launch(podman_image, "ok", "sh", "-c", "sleep 1; exit 0")])
        await events.starts("ok", timeout=TIMEOUT)
        [ended] = await events.exits("ok", timeout=TIMEOUT)
    assert ended.outcome.exit_code == 0 and classify(ended.outcome) is None


async def test_a_start_that_timed_out_does_not_leave_its_container_running(
    tmp_path: Path, podman_instance: str, podman_image: str
) -> None:
    # ``podman run`` started the container, then hung (a loaded machine): the executor gives up on it after
    # ``call_timeout`` and reports a (retryable) spawn error, so the engine runs the attempt again.
    wrapper_dir = tmp_path / "wrapper"
    wrapper_dir.mkdir()
    script = wrapper_dir / "podman"
    script.write_text(
        '#!/bin/sh\nfor a in "$@"; do [ "$a" = run ] && { podman "$@" && exec sleep 60; exit 125; }; done\n'
        'exec podman "$@"\n'
    )
    script.chmod(0o755)
    config = podman_config(tmp_path, podman_instance, binary=str(script), call_timeout=3.0)
    async with running(config) as (executor, events):
        await executor.start([container_launch(podman_image, "hung", "sh", "-c", "echo ran; sleep 60")])
        [ended] = await events.exits("hung", timeout=TIMEOUT)
        left = containers_of(podman_instance)
    assert ended.outcome.spawn_error is not None and ended.outcome.retryable
    assert left == [], "an attempt reported as not started still has its container"


async def test_starts_stops_a_dead_stream_and_a_restart_report_each_exit_once(
    config: PodmanExecutorConfig, podman_image: str
) -> None:
    quick = [f"q{i}" for i in range(4)]
    slow = [f"s{i}" for i in range(4)]
    launches = [container_launch(podman_image, t, "sh", "-c", f"sleep 0.5; exit {i + 1}") for i, t in enumerate(quick)]
    launches += [container_launch(podman_image, t, "sleep", "60") for t in slow]
    first = PodmanExecutor(config)
    await first.open(1, Recorder())
    try:
        await first.start(launches)
        for task in slow:
            await first.stop(task, 1, grace=0)  # during their starts
        await asyncio.sleep(0.3)
        if first._events_proc is not None:
            first._events_proc.kill()
    finally:
        await first.close()
    async with running(config) as (_, events):
        ended = await events.exits(*quick, *slow, timeout=TIMEOUT)
        await asyncio.sleep(1.5)  # a listing more
        counts = {t: len(exits_of(events, t)) for t in quick + slow}
        starts = [ev for ev in events.events if not isinstance(ev, Exited)]
    assert [e.outcome.exit_code for e in ended[:4]] == [1, 2, 3, 4]
    assert all(e.outcome.signal is not None for e in ended[4:]), ended[4:]
    assert set(counts.values()) == {1}, counts
    assert len(starts) == len({(s.task_id, s.attempt) for s in starts})


async def test_the_servers_proxy_settings_do_not_reach_the_task(
    config: PodmanExecutorConfig, podman_image: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # podman copies the *_proxy variables of its own environment into containers unless told not to.
    monkeypatch.setenv("HTTPS_PROXY", "http://user:secret@proxy.internal:3128")
    monkeypatch.setenv("no_proxy", "internal")
    async with running(config) as (executor, events):
        await executor.start([container_launch(podman_image, "px", "env", env={"MINE": "1"})])
        [ended] = await events.exits("px", timeout=TIMEOUT)
        seen = executor.log_path("px", 1, LogStream.STDOUT).read_text().splitlines()
    names = sorted(line.split("=", 1)[0] for line in seen)
    assert ended.outcome.exit_code == 0
    assert names == ["HOME", "HOSTNAME", "MINE", "PATH", "TERM", "container"], seen


@pytest.fixture
def full_logs_dir(tmp_path: Path) -> Iterator[Path]:
    logs = tmp_path / "full-logs"
    logs.mkdir()
    if os.geteuid() != 0:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(logs)], capture_output=True, check=False
    )
    if done.returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    try:
        yield logs
    finally:
        subprocess.run(["umount", "-l", str(logs)], capture_output=True, check=False)


async def test_an_exit_is_reported_when_its_output_cannot_be_stored(
    tmp_path: Path, podman_instance: str, podman_image: str, full_logs_dir: Path
) -> None:
    # No periodic listing: the event stream alone must carry both exits.
    config = podman_config(
        tmp_path, podman_instance, logs_dir=full_logs_dir, reconcile_interval=3600.0, log_poll_interval=5.0
    )
    async with running(config) as (executor, events):
        await executor.start([container_launch(podman_image, "full", "sh", "-c", "seq 1 100000; exit 2")])
        [ended] = await events.exits("full", timeout=TIMEOUT)
        await executor.start([container_launch(podman_image, "after", "sh", "-c", "sleep 1; exit 3")])
        [after] = await events.exits("after", timeout=TIMEOUT)
    assert (ended.outcome.exit_code, after.outcome.exit_code) == (2, 3)
    assert ended.log_truncated  # its stream files are incomplete
