"""The podman executor beyond the contract: what a container may do, what podman sees, and how failures read."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import orjson
import pytest

from taskplane.domain.outcome import classify
from taskplane.domain.task import FailureClass, HostAccess, Mount
from taskplane.errors import UnavailableError
from taskplane.executors.podman import PodmanExecutor, PodmanExecutorConfig
from taskplane.services.ports import LogStream
from tests.executors.local_helpers import Recorder
from tests.executors.podman_helpers import TIMEOUT, running
from tests.support.images import (
    RUN_ARGS,
    container_launch,
    containers_of,
    podman,
    podman_config,
)

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def config(tmp_path: Path, podman_instance: str) -> PodmanExecutorConfig:
    return podman_config(tmp_path, podman_instance)


async def output_of(config: PodmanExecutorConfig, image: str, *argv: str, **kwargs: Any) -> tuple[int | None, str]:
    """Run one container to its end: (exit code, stdout)."""
    async with running(config) as (executor, events):
        await executor.start([container_launch(image, "t", *argv, **kwargs)])
        [ended] = await events.exits("t", timeout=TIMEOUT)
        return ended.outcome.exit_code, executor.log_path("t", 1, LogStream.STDOUT).read_text()


def inspect(name: str) -> dict[str, Any]:
    done = podman("inspect", name)
    assert done.returncode == 0, done.stderr
    [data] = orjson.loads(done.stdout)
    return dict(data)


# ----------------------------------------------------------------------------------- what podman sees


async def test_name_labels_and_limits_are_on_the_container(config: PodmanExecutorConfig, podman_image: str) -> None:
    async with running(config) as (executor, events):
        launch = container_launch(
            podman_image, "lbl", "sh", "-c", "sleep 30", tenant="acme", attempt=2, millicpu=500, memory=64 << 20
        )
        await executor.start([launch])
        await events.starts("lbl", attempt=2, timeout=TIMEOUT)
        name = f"tp-{config.instance}-lbl-2"
        data = inspect(name)
        await executor.stop("lbl", 2, grace=0)
        await events.exits("lbl", attempt=2, timeout=TIMEOUT)
    assert data["Name"] == name
    labels = data["Config"]["Labels"]
    assert labels["taskplane.instance"] == config.instance
    assert (labels["taskplane.tenant"], labels["taskplane.task"], labels["taskplane.attempt"]) == ("acme", "lbl", "2")
    host = data["HostConfig"]
    assert host["NanoCpus"] == 500_000_000
    assert host["Memory"] == 64 << 20
    assert host["PidsLimit"] == config.pids_limit
    assert host["NetworkMode"] == "none"
    assert "no-new-privileges" in host["SecurityOpt"]
    assert data["Config"]["User"] == "65534:65534"
    assert containers_of(config.instance) == []  # acked: removed


async def test_no_network_unless_asked(config: PodmanExecutorConfig, podman_image: str) -> None:
    _, isolated = await output_of(config, podman_image, "cat", "/proc/net/dev")
    _, networked = await output_of(config, podman_image, "cat", "/proc/net/dev", host=HostAccess(network=True))
    interfaces = [line.split(":")[0].strip() for line in isolated.splitlines()[2:]]
    assert interfaces == ["lo"]
    assert len(networked.splitlines()[2:]) > 1  # lo and the container's own interface


def interfaces(proc_net_dev: str) -> set[str]:
    return {line.split(":")[0].strip() for line in proc_net_dev.splitlines()[2:]}


async def test_host_network_when_asked(config: PodmanExecutorConfig, podman_image: str) -> None:
    before = interfaces(Path("/proc/net/dev").read_text())
    _, seen = await output_of(config, podman_image, "cat", "/proc/net/dev", host=HostAccess(host_network=True))
    after = interfaces(Path("/proc/net/dev").read_text())
    # Other containers' veth pairs (and podman's bridge) come and go on the host meanwhile: compare the rest.
    stable = {name for name in before & after if not name.startswith(("veth", "podman"))}
    assert stable - {"lo"}, "this host has an interface besides lo"
    assert stable <= interfaces(seen)


async def test_default_user_is_not_root_and_a_task_user_is_honoured(
    config: PodmanExecutorConfig,
    podman_image: str,
) -> None:
    _, default = await output_of(config, podman_image, "id", "-u")
    _, chosen = await output_of(config, podman_image, "id", "-u", host=HostAccess(user="1000:1000"))
    assert (default, chosen) == ("65534\n", "1000\n")


async def test_read_only_root_when_asked(config: PodmanExecutorConfig, podman_image: str) -> None:
    writable, _ = await output_of(config, podman_image, "touch", "/marker", host=HostAccess(user="0:0"))
    read_only, _ = await output_of(
        config, podman_image, "touch", "/marker", host=HostAccess(user="0:0", read_only_root=True)
    )
    assert (writable, read_only) == (0, 1)


async def test_argv_is_passed_exactly_without_a_shell(config: PodmanExecutorConfig, podman_image: str) -> None:
    argv = ("$HOME", "*", "a b", "'q'", "", "x;y|z", "[")
    _, printed = await output_of(config, podman_image, "printf", "<%s>\n", *argv)
    assert printed.splitlines() == [f"<{a}>" for a in argv]


# -------------------------------------------------------------------------------------------- failures


async def test_missing_image_is_a_non_retryable_spawn_error(config: PodmanExecutorConfig) -> None:
    async with running(config) as (executor, events):
        await executor.start([container_launch("localhost/taskplane-no-such-image:0", "gone", "true")])
        [ended] = await events.exits("gone", timeout=TIMEOUT)
    assert ("gone", 1) not in events.started
    assert ended.outcome.spawn_error is not None and "taskplane-no-such-image" in ended.outcome.spawn_error
    assert ended.outcome.retryable is False
    assert classify(ended.outcome) is FailureClass.INFRA


async def test_a_missing_mount_source_is_a_non_retryable_spawn_error(
    config: PodmanExecutorConfig, podman_image: str, tmp_path: Path
) -> None:
    missing = str(tmp_path / "not-there")
    host = HostAccess(mounts=(Mount(missing, "/data"),))
    async with running(config) as (executor, events):
        await executor.start([container_launch(podman_image, "nomount", "true", host=host)])
        [ended] = await events.exits("nomount", timeout=TIMEOUT)
    assert ("nomount", 1) not in events.started
    assert ended.outcome.spawn_error is not None and missing in ended.outcome.spawn_error
    assert ended.outcome.retryable is False
    assert containers_of(config.instance) == []


async def test_missing_command_is_a_non_retryable_spawn_error(
    config: PodmanExecutorConfig,
    podman_image: str,
) -> None:
    async with running(config) as (executor, events):
        await executor.start([container_launch(podman_image, "nocmd", "/no/such/command")])
        [ended] = await events.exits("nocmd", timeout=TIMEOUT)
    assert ended.outcome.spawn_error is not None and ended.outcome.retryable is False
    assert classify(ended.outcome) is FailureClass.INFRA
    assert containers_of(config.instance) == []  # the created container went with the ack


async def test_a_missing_podman_is_a_warning_then_unavailable_on_open(tmp_path: Path) -> None:
    config = PodmanExecutorConfig(logs_dir=tmp_path / "logs", node_name="n", instance="x", binary="/no/podman")
    executor = PodmanExecutor(config)
    assert any("/no/podman" in warning for warning in executor.capacity().warnings)
    with pytest.raises(UnavailableError, match="/no/podman"):
        await executor.open(1, Recorder())


async def test_a_broken_podman_is_unavailable_on_open(tmp_path: Path) -> None:
    config = PodmanExecutorConfig(logs_dir=tmp_path / "logs", node_name="n", instance="x", binary="false")
    with pytest.raises(UnavailableError):
        await PodmanExecutor(config).open(1, Recorder())


# ------------------------------------------------------------------------------------------------ logs


async def test_output_is_capped_and_reported_truncated(tmp_path: Path, podman_instance: str, podman_image: str) -> None:
    config = podman_config(tmp_path, podman_instance, log_limit_bytes=100)
    async with running(config) as (executor, events):
        await executor.start([container_launch(podman_image, "loud", "sh", "-c", "seq 1000; echo small >&2")])
        [ended] = await events.exits("loud", timeout=TIMEOUT)
        out = executor.log_path("loud", 1, LogStream.STDOUT).read_bytes()
        err = executor.log_path("loud", 1, LogStream.STDERR).read_bytes()
    assert ended.log_truncated
    assert out == "".join(f"{i}\n" for i in range(1, 1001)).encode()[:100]
    assert err == b"small\n"


async def test_output_written_while_no_server_listens_is_kept(
    config: PodmanExecutorConfig,
    podman_image: str,
) -> None:
    script = "echo before; sleep 2; echo during; echo oops >&2; sleep 1; echo after"
    async with running(config) as (executor, events):
        await executor.start([container_launch(podman_image, "talk", "sh", "-c", script)])
        await events.starts("talk", timeout=TIMEOUT)
        path = executor.log_path("talk", 1, LogStream.STDOUT)
        async with asyncio.timeout(TIMEOUT):
            while "before" not in (path.read_text() if path.exists() else ""):
                await asyncio.sleep(0.05)
    # closed: "during" is written by conmon alone
    await asyncio.sleep(2.2)
    async with running(config) as (executor, events):
        [ended] = await events.exits("talk", timeout=TIMEOUT)
        assert ended.outcome.exit_code == 0
        assert path.read_text() == "before\nduring\nafter\n"
        assert executor.log_path("talk", 1, LogStream.STDERR).read_text() == "oops\n"


async def test_logs_can_be_followed_while_the_container_runs(
    config: PodmanExecutorConfig,
    podman_image: str,
) -> None:
    async with running(config) as (executor, events):
        await executor.start([container_launch(podman_image, "f", "sh", "-c", "echo one; sleep 60; echo two")])
        path = executor.log_path("f", 1, LogStream.STDOUT)
        async with asyncio.timeout(TIMEOUT):
            while "one" not in (path.read_text() if path.exists() else ""):
                await asyncio.sleep(0.05)
        assert ("f", 1) not in events.exited
        await executor.stop("f", 1, grace=0)
        await events.exits("f", timeout=TIMEOUT)
        assert path.read_text() == "one\n"


# ---------------------------------------------------------------------------------- starts and restarts


async def test_many_starts_at_once_are_all_reported(config: PodmanExecutorConfig, podman_image: str) -> None:
    ids = [f"m{i}" for i in range(12)]
    async with running(config) as (executor, events):
        await executor.start([container_launch(podman_image, i, "sh", "-c", f"exit {n}") for n, i in enumerate(ids)])
        ended = await events.exits(*ids, timeout=60)
    assert [e.outcome.exit_code for e in ended] == list(range(12))
    assert containers_of(config.instance) == []


async def test_stop_during_the_start_stops_the_container(config: PodmanExecutorConfig, podman_image: str) -> None:
    async with running(config) as (executor, events):
        await executor.start([container_launch(podman_image, "early", "sleep", "60")])
        await executor.stop("early", 1, grace=0)  # before its ``podman run`` returned
        [ended] = await events.exits("early", timeout=TIMEOUT)
    assert ended.outcome.signal is not None and ended.outcome.exit_code is None


async def test_exits_missed_by_the_event_stream_are_found_by_listing(
    config: PodmanExecutorConfig,
    podman_image: str,
) -> None:
    async with running(config) as (executor, events):
        await executor.start([container_launch(podman_image, "quiet", "sh", "-c", "sleep 1; exit 6")])
        await events.starts("quiet", timeout=TIMEOUT)
        proc = executor._events_proc
        assert proc is not None
        proc.kill()
        [ended] = await events.exits("quiet", timeout=TIMEOUT)
    assert ended.outcome.exit_code == 6


async def test_a_container_that_never_started_is_reported_on_open(
    config: PodmanExecutorConfig,
    podman_image: str,
) -> None:
    # What a server killed between podman's create and start leaves behind.
    labels = [f"taskplane.instance={config.instance}", "taskplane.task=stuck", "taskplane.attempt=1"]
    name = f"tp-{config.instance}-stuck-1"
    created = podman("create", "--name", name, *[a for lb in labels for a in ("--label", lb)], podman_image, "true")
    assert created.returncode == 0, created.stderr
    executor = PodmanExecutor(config)
    try:
        recovered = await executor.open(1, Recorder())
        [ended] = recovered.exited
        assert (ended.task_id, ended.attempt, recovered.running) == ("stuck", 1, [])
        assert ended.outcome.spawn_error is not None and ended.outcome.retryable
        await executor.ack([("stuck", 1)])
    finally:
        await executor.close()
    assert containers_of(config.instance) == []


async def test_oom_kill_while_no_server_watched_is_reported_after_readoption(
    config: PodmanExecutorConfig,
    podman_image: str,
) -> None:
    script = "sleep 1; (head -c 536870912 /dev/zero | tail > /dev/null); echo after; sleep 2"
    async with running(config) as (executor, events):
        await executor.start([container_launch(podman_image, "hog", "sh", "-c", script, memory=32 << 20)])
        await events.starts("hog", timeout=TIMEOUT)
    await asyncio.sleep(2.0)  # the kill happens now, unwatched
    async with running(config) as (executor, events):
        [ended] = await events.exits("hog", timeout=TIMEOUT)
    # Usually only tail is killed and the shell goes on to exit 0; under memory pressure the kernel may pick the
    # shell too. Either way the attempt was OOM-killed.
    assert ended.outcome.oom_killed, ended
    assert classify(ended.outcome) is FailureClass.INFRA


async def test_peak_memory_is_sampled(config: PodmanExecutorConfig, podman_image: str) -> None:
    script = "head -c 25000000 /dev/zero | tail > /dev/null; sleep 3"
    async with running(config) as (executor, events):
        await executor.start([container_launch(podman_image, "peak", "sh", "-c", script, memory=128 << 20)])
        [ended] = await events.exits("peak", timeout=TIMEOUT)
    assert ended.peak_memory is not None and ended.peak_memory >= 25_000_000
    assert not ended.outcome.oom_killed


async def test_a_container_removed_behind_our_back_is_lost(config: PodmanExecutorConfig, podman_image: str) -> None:
    async with running(config) as (executor, events):
        await executor.start([container_launch(podman_image, "victim", "sleep", "60")])
        await events.starts("victim", timeout=TIMEOUT)
        removed = podman("rm", "-f", "-t", "0", f"tp-{config.instance}-victim-1")
        assert removed.returncode == 0, removed.stderr
        [ended] = await events.exits("victim", timeout=TIMEOUT)
    # Its died event may win the race (an exit by SIGKILL) or the listing (the container is gone): never silence.
    assert ended.outcome.lost is not None or ended.outcome.signal is not None
    assert classify(ended.outcome) in (FailureClass.INFRA, FailureClass.USER)


async def test_a_start_whose_container_exists_adopts_it(config: PodmanExecutorConfig, podman_image: str) -> None:
    async with running(config) as (executor, events):
        # Another server of this instance started the attempt a moment ago (its container has our name).
        labels = [f"taskplane.instance={config.instance}", "taskplane.task=dup", "taskplane.attempt=1"]
        name = f"tp-{config.instance}-dup-1"
        label_args = [a for lb in labels for a in ("--label", lb)]
        done = podman("run", "-d", *RUN_ARGS, "--name", name, *label_args, podman_image, "sh", "-c", "sleep 2; exit 12")
        assert done.returncode == 0, done.stderr
        await executor.start([container_launch(podman_image, "dup", "sh", "-c", "exit 0")])
        [ended] = await events.exits("dup", timeout=TIMEOUT)
        assert [type(ev).__name__ for ev in events.events] == ["Started", "Exited"]
    assert ended.outcome.exit_code == 12  # the existing container's run, not a second one


async def test_oom_kill_of_a_container_that_ended_unwatched_is_reported(
    config: PodmanExecutorConfig,
    podman_image: str,
) -> None:
    script = "sleep 1; head -c 536870912 /dev/zero | tail > /dev/null"
    async with running(config) as (executor, events):
        await executor.start([container_launch(podman_image, "gone", "sh", "-c", script, memory=32 << 20)])
        await events.starts("gone", timeout=TIMEOUT)
    # No executor runs while it is killed and exits: conmon's own record is all there is.
    async with asyncio.timeout(TIMEOUT):
        while "Exited" not in podman("ps", "-a", "--filter", f"name=tp-{config.instance}-gone-1").stdout.decode():
            await asyncio.sleep(0.2)
    async with running(config) as (executor, events):
        [ended] = await events.exits("gone", timeout=TIMEOUT)
    assert ended.outcome.oom_killed, ended
    assert classify(ended.outcome) is FailureClass.INFRA
