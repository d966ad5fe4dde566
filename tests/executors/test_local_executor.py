"""The local executor, end to end: a real supervisor daemon, real processes, real cgroups where usable."""

from __future__ import annotations

import asyncio
import os
import resource
import shutil
import signal
import sys
import time
from datetime import UTC
from pathlib import Path

import orjson
import pytest

from taskplane.errors import ConflictError
from taskplane.executors.local.daemon import LOST_RESTARTED, LOST_STARTING
from taskplane.executors.local.executor import shutdown_supervisor, supervisor_running
from taskplane.executors.local.layout import MAX_SOCKET_PATH, journal_path, pid_path, sandbox_dir, socket_path
from taskplane.services.ports import Exited, LogStream, Started, SupportsLogs
from tests.executors.local_helpers import Harness, launch, process_alive

pytestmark = pytest.mark.timeout(60)


def supervisor_rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


# ------------------------------------------------------------------------------------------- running


async def test_exit_codes_and_signals_are_reported(harness: Harness) -> None:
    ex, rec, recovered = await harness.open()
    assert recovered.running == [] and recovered.exited == []
    await ex.start(
        [
            launch("ok", "true"),
            launch("three", "sh", "-c", "exit 3"),
            launch("usr1", "sh", "-c", "kill -USR1 $$"),
        ]
    )
    ok, three, usr1 = await rec.exits("ok", "three", "usr1")
    assert (ok.outcome.exit_code, ok.outcome.signal) == (0, None)
    assert (three.outcome.exit_code, three.outcome.signal) == (3, None)
    assert (usr1.outcome.exit_code, usr1.outcome.signal) == (None, signal.SIGUSR1)
    started = rec.started[("ok", 1)]
    assert started.pid is not None and started.at.tzinfo is UTC
    assert ok.at.tzinfo is UTC and ok.started_at == started.at and ok.at >= started.at
    assert ok.cpu_seconds is not None and ok.cpu_seconds >= 0
    assert not ok.log_truncated and ok.outcome.spawn_error is None and ok.outcome.lost is None


async def test_argv_and_env_are_passed_exactly_without_a_shell(harness: Harness) -> None:
    ex, rec, _ = await harness.open()
    env = {"PATH": os.environ["PATH"], "GREETING": "hello world", "DOLLAR": "$HOME", "EMPTY": ""}
    argv = ("$HOME", "*", "a b", "'q'", "", "x;y|z")
    await ex.start(
        [
            launch("env", "/usr/bin/env", env=env),
            launch("argv", sys.executable, "-c", "import sys; print(repr(sys.argv[1:]))", *argv, env=env),
        ]
    )
    await rec.exits("env", "argv")
    printed = ex.log_path("env", 1, LogStream.STDOUT).read_text().splitlines()
    assert sorted(printed) == sorted(f"{k}={v}" for k, v in env.items())
    assert ex.log_path("argv", 1, LogStream.STDOUT).read_text() == repr(list(argv)) + "\n"


async def test_argv0_is_looked_up_on_the_task_path(harness: Harness, tmp_path: Path) -> None:
    bindir = tmp_path / "bin"
    bindir.mkdir()
    tool = bindir / "mytool"
    tool.write_text("#!/bin/sh\necho from-mytool\n")
    tool.chmod(0o755)
    ex, rec, _ = await harness.open()
    await ex.start([launch("t", "mytool", env={"PATH": f"{bindir}:/usr/bin:/bin"})])
    (ended,) = await rec.exits("t")
    assert ended.outcome.exit_code == 0
    assert ex.log_path("t", 1, LogStream.STDOUT).read_text() == "from-mytool\n"


async def test_workdir_is_created_inside_the_attempt_sandbox(harness: Harness) -> None:
    ex, rec, _ = await harness.open()
    await ex.start([launch("plain", "pwd"), launch("sub", "pwd", workdir="sub/dir")])
    await rec.exits("plain", "sub")
    sandbox = sandbox_dir(ex.config.work_dir, "sub", 1)
    assert ex.log_path("sub", 1, LogStream.STDOUT).read_text() == f"{sandbox / 'sub' / 'dir'}\n"
    plain = sandbox_dir(ex.config.work_dir, "plain", 1)
    assert ex.log_path("plain", 1, LogStream.STDOUT).read_text() == f"{plain}\n"


@pytest.mark.parametrize("workdir", ["/etc", "../escape", "a/../../b"])
async def test_unsafe_workdir_is_a_permanent_spawn_error(harness: Harness, workdir: str) -> None:
    ex, rec, _ = await harness.open()
    await ex.start([launch("t", "pwd", workdir=workdir)])
    (ended,) = await rec.exits("t")
    assert ended.outcome.spawn_error is not None and "workdir" in ended.outcome.spawn_error
    assert ended.outcome.retryable is False
    assert ("t", 1) not in rec.started


async def test_stdout_and_stderr_go_to_their_files(harness: Harness) -> None:
    ex, rec, _ = await harness.open()
    assert isinstance(ex, SupportsLogs)
    await ex.start([launch("t", "sh", "-c", "echo out; echo err >&2; echo out2")])
    await rec.exits("t")
    assert ex.log_path("t", 1, LogStream.STDOUT).read_text() == "out\nout2\n"
    assert ex.log_path("t", 1, LogStream.STDERR).read_text() == "err\n"
    assert ex.log_path("t", 1, LogStream.STDOUT) == ex.config.logs_dir / "t.1.stdout"
    assert sandbox_dir(ex.config.work_dir, "t", 1) == ex.config.work_dir / "t.1"


async def test_a_logs_dir_removed_under_the_supervisor_is_made_again(harness: Harness) -> None:
    ex, rec, _ = await harness.open()
    shutil.rmtree(ex.config.logs_dir)
    await ex.start([launch("t", "echo", "back")])
    (ended,) = await rec.exits("t")
    assert ended.outcome.exit_code == 0 and ended.outcome.spawn_error is None
    assert ex.log_path("t", 1, LogStream.STDOUT).read_text() == "back\n"


async def test_output_flood_is_capped_and_the_supervisor_stays_flat(harness: Harness) -> None:
    cap = 1 << 20
    ex, rec, _ = await harness.open(harness.config(log_limit_bytes=cap))
    assert ex.supervisor_pid is not None
    await ex.start([launch("warmup", "true")])
    await rec.exits("warmup")
    before = supervisor_rss(ex.supervisor_pid)
    await ex.start(
        [
            launch("zeros", "head", "-c", str(200 << 20), "/dev/zero"),
            launch("yes", "sh", "-c", "yes >&2"),
            launch("small", "echo", "fits"),
        ]
    )
    zeros, yes, small = await rec.exits("zeros", "yes", "small", timeout=30)
    assert zeros.log_truncated and yes.log_truncated and not small.log_truncated
    assert ex.log_path("zeros", 1, LogStream.STDOUT).stat().st_size == cap
    assert ex.log_path("yes", 1, LogStream.STDERR).stat().st_size == cap
    # The writes past the cap failed with EFBIG (SIGXFSZ is ignored): the tasks ended on their own.
    assert zeros.outcome.signal is None and zeros.outcome.exit_code != 0
    assert b"too large" in ex.log_path("zeros", 1, LogStream.STDERR).read_bytes()
    assert supervisor_rss(ex.supervisor_pid) - before < 4 << 20


async def test_spawn_errors(harness: Harness, tmp_path: Path) -> None:
    not_executable = tmp_path / "script.sh"
    not_executable.write_text("#!/bin/sh\necho hi\n")
    ex, rec, _ = await harness.open()
    await ex.start(
        [
            launch("missing", "no-such-binary-xyz"),
            launch("denied", str(not_executable)),
            launch("image", "true", image="alpine:3"),
            launch("bad/id", "true"),
        ]
    )
    missing, denied, image, bad = await rec.exits("missing", "denied", "image", "bad/id")
    assert missing.outcome.spawn_error == "No such file or directory: 'no-such-binary-xyz'"
    assert denied.outcome.spawn_error == f"Permission denied: '{not_executable}'"
    assert image.outcome.spawn_error is not None and "image" in image.outcome.spawn_error
    assert bad.outcome.spawn_error is not None and "task id" in bad.outcome.spawn_error
    for ended in (missing, denied, image, bad):
        assert ended.outcome.retryable is False
        assert ended.started_at is None
    assert not rec.started


# ---------------------------------------------------------------------------------------------- stop


async def test_stop_sends_term_then_kills_the_whole_group_after_grace(harness: Harness) -> None:
    ex, rec, _ = await harness.open()
    script = 'trap "" TERM; sleep 300 & echo $! > child.pid; wait; wait'
    await ex.start([launch("stubborn", "sh", "-c", script)])
    (started,) = await rec.starts("stubborn")
    harness.track(started.pid)
    child_pid_file = sandbox_dir(ex.config.work_dir, "stubborn", 1) / "child.pid"
    async with asyncio.timeout(5):
        while not child_pid_file.exists() or not child_pid_file.read_text().strip():
            await asyncio.sleep(0.01)
    child = int(child_pid_file.read_text())
    assert process_alive(child)
    t0 = time.monotonic()
    await ex.stop("stubborn", 1, grace=0.5)
    await ex.stop("stubborn", 1, grace=30)  # idempotent; a longer grace does not postpone the kill
    (ended,) = await rec.exits("stubborn")
    assert ended.outcome.signal == signal.SIGKILL
    assert time.monotonic() - t0 >= 0.45
    async with asyncio.timeout(5):
        while process_alive(child):
            await asyncio.sleep(0.01)


async def test_stop_of_a_task_that_obeys_term_is_prompt(harness: Harness) -> None:
    ex, rec, _ = await harness.open()
    await ex.start([launch("sleeper", "sleep", "300")])
    await rec.starts("sleeper")
    t0 = time.monotonic()
    await ex.stop("sleeper", 1, grace=20)
    (ended,) = await rec.exits("sleeper")
    assert ended.outcome.signal == signal.SIGTERM
    assert time.monotonic() - t0 < 5


async def test_stop_kills_the_group_members_left_behind_by_the_leader(harness: Harness) -> None:
    ex, rec, _ = await harness.open()
    # The leader dies on TERM at once; its child ignores TERM and must still go.
    script = '(trap "" TERM; exec sleep 300) & echo $! > child.pid; wait'
    await ex.start([launch("leader", "sh", "-c", script)])
    await rec.starts("leader")
    pid_file = sandbox_dir(ex.config.work_dir, "leader", 1) / "child.pid"
    async with asyncio.timeout(5):
        while not pid_file.exists() or not pid_file.read_text().strip():
            await asyncio.sleep(0.01)
    child = int(pid_file.read_text())
    harness.track(child)
    await ex.stop("leader", 1, grace=30)
    (ended,) = await rec.exits("leader")
    assert ended.outcome.signal == signal.SIGTERM
    async with asyncio.timeout(5):
        while process_alive(child):
            await asyncio.sleep(0.01)


async def test_stop_of_unknown_or_ended_attempts_is_a_no_op(harness: Harness) -> None:
    ex, rec, _ = await harness.open()
    await ex.stop("never-started", 1, grace=1)
    await ex.start([launch("quick", "true")])
    await rec.exits("quick")
    await ex.stop("quick", 1, grace=0)
    await ex.ack([("quick", 1)])
    await ex.stop("quick", 1, grace=0)


# ------------------------------------------------------------------------------------------- cgroups


async def test_memory_limit_is_enforced_and_oom_is_classified(harness: Harness) -> None:
    ex, rec, _ = await harness.open()
    if ex.capacity().cgroups == "none":
        pytest.skip(f"cgroups are not usable here: {ex.capacity().warnings}")
    hog = "x = b'x' * (256 << 20); print(len(x))"
    await ex.start(
        [
            launch("hog", sys.executable, "-c", hog, memory=64 << 20, millicpu=500),
            launch("fits", sys.executable, "-c", "x = b'x' * (8 << 20)", memory=128 << 20, millicpu=250),
            launch("where", "cat", "/proc/self/cgroup", memory=32 << 20),
        ]
    )
    hog_exit, fits, where = await rec.exits("hog", "fits", "where", timeout=20)
    assert hog_exit.outcome.oom_killed and hog_exit.outcome.signal == signal.SIGKILL
    assert hog_exit.peak_memory is not None and hog_exit.peak_memory <= 64 << 20
    assert not fits.outcome.oom_killed and fits.outcome.exit_code == 0
    assert fits.peak_memory is not None and fits.peak_memory >= 8 << 20
    assert "taskplane-" in ex.log_path("where", 1, LogStream.STDOUT).read_text()
    assert where.outcome.exit_code == 0


def memory_cgroup_of(text: str) -> str:
    """The memory cgroup path in a task's /proc/self/cgroup (v1)."""
    return next(line.split(":", 2)[2] for line in text.splitlines() if ":memory:" in line)


async def test_task_cgroups_are_pooled_and_reset_between_attempts(harness: Harness) -> None:
    ex, rec, _ = await harness.open(harness.config(max_tasks=1))  # one at a time: each reuses the same slot
    if ex.capacity().cgroups != "v1":
        pytest.skip("checks v1 files")
    show = "grep :memory: /proc/self/cgroup; cat /sys/fs/cgroup/memory$(grep :memory: /proc/self/cgroup | cut -d: -f3)"
    hog = "x = b'x' * (256 << 20)"
    await ex.start(
        [
            launch("big", sys.executable, "-c", "x = b'x' * (48 << 20)", memory=128 << 20, millicpu=100),
            launch("oom", sys.executable, "-c", hog, memory=32 << 20, millicpu=100),
            launch("small", "sh", "-c", f"{show}/memory.limit_in_bytes", memory=16 << 20, millicpu=100),
            launch("shares", "sh", "-c", show.replace("memory", "cpu") + "/cpu.shares", millicpu=2000),
        ]
    )
    big, oom, small, shares = await rec.exits("big", "oom", "small", "shares", timeout=20)
    assert shares.outcome.exit_code == 0
    assert big.peak_memory is not None and big.peak_memory >= 48 << 20 and not big.outcome.oom_killed
    assert oom.outcome.oom_killed
    # The same cgroup again: its peak was reset, the earlier OOM kill is not this attempt's, the limit is new.
    assert not small.outcome.oom_killed and small.outcome.exit_code == 0
    assert small.peak_memory is not None and small.peak_memory < 16 << 20
    group, limit = ex.log_path("small", 1, LogStream.STDOUT).read_text().split()
    assert int(limit) == 16 << 20 and "/slot-" in group
    assert "/slot-" in ex.log_path("shares", 1, LogStream.STDOUT).read_text()
    assert ex.log_path("shares", 1, LogStream.STDOUT).read_text().split()[-1] == "2048"
    # One slot served them all (plus, at most, one the OOM-killed attempt left busy for a moment).
    subtree = Path(f"/sys/fs/cgroup/memory{memory_cgroup_of(group)}").parent
    assert len([d for d in subtree.iterdir() if d.is_dir() and d.name.startswith("slot-")]) <= 2
    await ex.close()
    assert await asyncio.to_thread(shutdown_supervisor, ex.config.state_dir)
    assert not subtree.exists()  # the pool is removed when the supervisor exits


async def test_best_effort_tasks_get_no_cgroup(harness: Harness) -> None:
    ex, rec, _ = await harness.open()
    await ex.start([launch("be", "cat", "/proc/self/cgroup")])
    await rec.exits("be")
    assert "taskplane-" not in ex.log_path("be", 1, LogStream.STDOUT).read_text()


async def test_capacity_reports_node_limits(harness: Harness) -> None:
    ex, _, _ = await harness.open(harness.config(node_name="node-a", millicpu=1500, memory=1 << 30, max_tasks=7))
    cap = ex.capacity()
    assert (cap.node, cap.total.millicpu, cap.total.memory, cap.max_tasks) == ("node-a", 1500, 1 << 30, 7)
    assert cap.cgroups in ("v1", "v2", "none")
    assert (cap.cgroups == "none") == bool(cap.warnings)
    detected = (await harness.open(harness.config(data_dir=harness.data_dir / "other")))[0].capacity()
    assert detected.total.millicpu >= 1000 and detected.total.memory > 0 and 1 <= detected.max_tasks <= 10_000


# ------------------------------------------------------------------------------------------ recovery


async def test_a_new_server_learns_true_exit_codes_of_tasks_that_ended_while_it_was_down(harness: Harness) -> None:
    old, _, _ = await harness.open()
    await old.start(
        [
            launch("seven", "sh", "-c", "exit 7"),
            launch("later", "sh", "-c", "sleep 0.3; exit 0"),
            launch("long", "sleep", "300"),
        ]
    )
    await old.close()  # the server "dies": nothing acked, nobody listening
    await asyncio.sleep(1.0)

    new, rec, recovered = await harness.open()
    exited = {ev.task_id: ev for ev in recovered.exited}
    assert exited["seven"].outcome.exit_code == 7
    assert exited["later"].outcome.exit_code == 0
    assert [ev.task_id for ev in recovered.running] == ["long"]
    harness.track(recovered.running[0].pid)
    assert process_alive(recovered.running[0].pid or 0)

    await new.ack([("seven", 1), ("later", 1)])
    await new.close()
    newest, rec, recovered = await harness.open()
    assert recovered.exited == []
    assert [ev.task_id for ev in recovered.running] == ["long"]
    await newest.stop("long", 1, grace=1)
    (ended,) = await rec.exits("long")
    assert ended.outcome.signal == signal.SIGTERM


async def test_a_stale_epoch_cannot_start_or_connect(harness: Harness) -> None:
    stale, _, _ = await harness.open(epoch=5)
    fresh, rec, _ = await harness.open(epoch=6)
    with pytest.raises(ConflictError) as caught:
        await stale.start([launch("ghost", "true")])
    assert caught.value.code == "executor_fenced"
    with pytest.raises(ConflictError):
        await harness.open(epoch=4)
    await fresh.start([launch("real", "true")])
    await rec.exits("real")
    assert ("ghost", 1) not in rec.started and ("ghost", 1) not in rec.exited
    assert not fresh.log_path("ghost", 1, LogStream.STDOUT).exists()


async def test_start_is_idempotent_per_attempt(harness: Harness) -> None:
    ex, rec, _ = await harness.open()
    once = launch("once", "echo", "ran")
    await ex.start([once, once])
    await ex.start([once])
    await rec.exits("once")
    await ex.start([once])  # exited but not acked yet: still known
    await ex.start([launch("once", "echo", "again", attempt=2)])
    await rec.exits("once", attempt=2)
    assert ex.log_path("once", 1, LogStream.STDOUT).read_text() == "ran\n"
    assert [type(ev) for ev in rec.events if ev.attempt == 1] == [Started, Exited]


async def test_killed_supervisor_leaves_tasks_running_and_its_successor_reports_them_lost(
    harness: Harness,
) -> None:
    ex, rec, _ = await harness.open()
    await ex.start([launch("a", "sleep", "300"), launch("b", "sleep", "300")])
    a, b = await rec.starts("a", "b")
    harness.track(a.pid, b.pid)
    assert a.pid and b.pid
    await ex.close()
    first = ex.supervisor_pid
    assert first is not None
    os.kill(first, signal.SIGKILL)
    async with asyncio.timeout(5):
        while process_alive(first):
            await asyncio.sleep(0.01)
    assert process_alive(a.pid) and process_alive(b.pid)
    os.kill(b.pid, signal.SIGKILL)  # ends while no supervisor watches
    async with asyncio.timeout(5):
        while process_alive(b.pid):
            await asyncio.sleep(0.01)

    new, rec, recovered = await harness.open()
    assert new.supervisor_pid != first
    assert [ev.task_id for ev in recovered.running] == ["a"]
    assert [(ev.task_id, ev.outcome.lost) for ev in recovered.exited] == [("b", LOST_RESTARTED)]
    os.kill(a.pid, signal.SIGKILL)
    (lost,) = await rec.exits("a")
    assert lost.outcome.lost == LOST_RESTARTED and lost.started_at == a.at


async def test_client_reconnects_and_restarts_a_killed_supervisor(harness: Harness) -> None:
    ex, rec, _ = await harness.open()
    await ex.start([launch("survivor", "sleep", "300"), launch("done", "sh", "-c", "exit 4")])
    (started,) = await rec.starts("survivor")
    await rec.exits("done")  # not acked
    harness.track(started.pid)
    first = ex.supervisor_pid
    assert first is not None
    rec.started.clear()
    rec.exited.clear()
    os.kill(first, signal.SIGKILL)
    # The snapshot of the new supervisor arrives as events: the survivor still runs, the exit is repeated.
    (again,) = await rec.starts("survivor")
    (done,) = await rec.exits("done")
    assert again.pid == started.pid and ex.supervisor_pid not in (None, first)
    assert done.outcome.exit_code == 4
    await ex.start([launch("after", "true")])
    await ex.stop("survivor", 1, grace=0)
    after, survivor = await rec.exits("after", "survivor")
    assert after.outcome.exit_code == 0
    assert survivor.outcome.lost == LOST_RESTARTED


async def test_a_reused_pid_is_not_adopted_and_an_unfinished_spawn_is_lost(harness: Harness) -> None:
    config = harness.config()
    config.state_dir.mkdir(parents=True)
    stranger = os.getpid()  # alive, but not the process the journal speaks of: it started long before
    records = [
        {"t": "epoch", "epoch": 3},
        {"t": "start", "task_id": "old", "attempt": 2, "pid": stranger, "at": 1.0, "boot": [1.0, 1.01]},
        {"t": "intent", "items": [["half", 1]]},
    ]
    journal_path(config.state_dir).write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in records))
    with pytest.raises(ConflictError):
        await harness.open(config, epoch=2)  # the journal remembers the epoch
    ex, rec, recovered = await harness.open(config, epoch=3)
    assert recovered.running == []
    lost = {ev.task_id: ev.outcome.lost for ev in recovered.exited}
    assert lost == {"old": LOST_RESTARTED, "half": LOST_STARTING}
    await ex.start([launch("half", "true")])  # known: not started again
    await ex.stop("old", 2, grace=0)  # and never signalled: it is not ours
    assert process_alive(stranger)
    await asyncio.sleep(0.1)
    assert not rec.events


async def test_one_supervisor_per_state_dir(harness: Harness) -> None:
    config = harness.config()
    executors = await asyncio.gather(*(harness.open(config) for _ in range(3)), return_exceptions=True)
    pids = {result[0].supervisor_pid for result in executors if not isinstance(result, BaseException)}
    assert len(pids) == 1
    assert int(pid_path(config.state_dir).read_text()) in pids


async def test_shutdown_waits_for_idle_unless_forced(harness: Harness) -> None:
    ex, rec, _ = await harness.open()
    await ex.start([launch("busy", "sleep", "300")])
    (started,) = await rec.starts("busy")
    harness.track(started.pid)
    state_dir = ex.config.state_dir
    await ex.close()  # an open executor would restart the supervisor at once
    assert not await asyncio.to_thread(shutdown_supervisor, state_dir, force=False)
    assert await asyncio.to_thread(shutdown_supervisor, state_dir, force=True)
    assert not process_alive(started.pid or 0)
    assert not supervisor_running(state_dir)


async def test_supervisor_exits_when_idle(harness: Harness) -> None:
    ex, rec, _ = await harness.open(harness.config(idle_exit=0.3))
    await ex.start([launch("t", "true")])
    await rec.exits("t")
    await ex.ack([("t", 1)])
    pid = ex.supervisor_pid
    assert pid is not None
    await ex.close()
    async with asyncio.timeout(10):
        while process_alive(pid):
            await asyncio.sleep(0.05)


async def test_long_state_dir_falls_back_to_a_short_socket_path(harness: Harness) -> None:
    deep = harness.data_dir / ("d" * 60) / ("e" * 60)
    config = harness.config(data_dir=deep)
    sock = socket_path(config.state_dir)
    assert len(os.fsencode(str(sock))) <= MAX_SOCKET_PATH and str(sock).startswith("/tmp/")
    ex, rec, _ = await harness.open(config)
    await ex.start([launch("t", "true")])
    (ended,) = await rec.exits("t")
    assert ended.outcome.exit_code == 0
    assert (config.state_dir / "supervisor.addr").read_text().strip() == str(sock)


# --------------------------------------------------------------------------------------------- scale


async def test_a_thousand_concurrent_sleeps(harness: Harness) -> None:
    ex, rec, _ = await harness.open()
    ids = [f"s{i:04d}" for i in range(1000)]
    await ex.start([launch(task_id, "sleep", "5") for task_id in ids])
    await rec.starts(*ids, timeout=30)
    harness.track(*(ev.pid for ev in rec.started.values()))
    ended = await rec.exits(*ids, timeout=40)
    assert all(ev.outcome.exit_code == 0 for ev in ended)
    # All 1,000 were running at once: the last one started before the first one ended.
    assert max(ev.at for ev in rec.started.values()) < min(ev.at for ev in ended)
    await ex.ack([(task_id, 1) for task_id in ids])


async def test_a_running_supervisor_keeps_its_settings_and_says_so(harness: Harness) -> None:
    first, _, _ = await harness.open(harness.config(log_limit_bytes=1 << 20))
    second, _, _ = await harness.open(harness.config(log_limit_bytes=2 << 20))
    assert second.supervisor_pid == first.supervisor_pid
    assert any("log_limit=1048576" in w for w in second.capacity().warnings)


async def test_tasks_get_default_signals_but_sigxfsz_ignored_and_the_original_fd_limit(harness: Harness) -> None:
    ex, rec, _ = await harness.open(harness.config(log_limit_bytes=1 << 20))
    await ex.start([launch("status", "grep", "-E", "^Sig(Ign|Blk):", "/proc/self/status")])
    await ex.start([launch("limits", "sh", "-c", "ulimit -n; ulimit -f")])
    await rec.exits("status", "limits")
    status = dict(line.split(":\t") for line in ex.log_path("status", 1, LogStream.STDOUT).read_text().splitlines())
    assert int(status["SigBlk"], 16) == 0
    # SIGXFSZ stays ignored: the output cap works through EFBIG. glibc's posix_spawn also leaves its two
    # internal signals (32, 33) ignored; glibc programs re-install them at start and nothing else uses them.
    glibc_internal = (1 << 31) | (1 << 32)
    assert int(status["SigIgn"], 16) & ~glibc_internal == 1 << (signal.SIGXFSZ - 1)
    nofile, fsize = ex.log_path("limits", 1, LogStream.STDOUT).read_text().split()
    assert int(nofile) == resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    assert int(fsize) * 512 == 1 << 20  # sh reports 512-byte blocks


async def test_sigterm_to_the_supervisor_waits_for_running_tasks_so_their_exits_are_kept(harness: Harness) -> None:
    ex, rec, _ = await harness.open()
    await ex.start([launch("a", "sh", "-c", "sleep 0.7; exit 7")])
    (a,) = await rec.starts("a")
    harness.track(a.pid)
    await ex.close()
    first = ex.supervisor_pid
    assert first is not None
    os.kill(first, signal.SIGTERM)
    await asyncio.sleep(0.3)
    assert process_alive(first), "the supervisor left a running task behind"
    async with asyncio.timeout(10):
        while process_alive(first):
            await asyncio.sleep(0.02)
    _, rec, recovered = await harness.open()
    assert [(ev.task_id, ev.outcome.exit_code, ev.outcome.lost) for ev in recovered.exited] == [("a", 7, None)]
