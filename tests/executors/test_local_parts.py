"""The local executor's pure parts: journal replay and compaction, paths, cgroup parsing, pid identity."""

from __future__ import annotations

import os
from pathlib import Path

import orjson
import pytest

from taskplane.executors.local.cgroups import (
    CgroupsV2,
    Mount,
    TaskCgroup,
    cgroup_dir,
    parse_mountinfo,
    parse_proc_cgroup,
)
from taskplane.executors.local.config import LocalExecutorConfig
from taskplane.executors.local.journal import Journal, replay
from taskplane.executors.local.layout import MAX_SOCKET_PATH, check_task_id, check_workdir, socket_path
from taskplane.executors.local.spawn import SpawnError, boot_clock, prepare, resolve_executable, same_process


def line(**rec: object) -> bytes:
    return orjson.dumps(rec)


def start(task_id: str, attempt: int = 1, pid: int = 100) -> bytes:
    return line(t="start", task_id=task_id, attempt=attempt, pid=pid, at=1.0, boot=[1.0, 1.1])


def exit_(task_id: str, attempt: int = 1, code: int = 0) -> bytes:
    return line(t="exit", task_id=task_id, attempt=attempt, at=2.0, exit_code=code)


# ------------------------------------------------------------------------------------------- journal


def test_replay_folds_starts_exits_acks_and_epochs() -> None:
    state = replay(
        [
            line(t="epoch", epoch=3),
            line(t="intent", items=[["a", 1], ["b", 1], ["c", 1], ["d", 1]]),
            start("a"),
            start("b"),
            start("c"),
            exit_("a", code=7),
            exit_("b"),
            line(t="ack", keys=[["b", 1]]),
            line(t="epoch", epoch=2),  # never goes back
        ]
    )
    assert state.epoch == 3
    assert set(state.live) == {"c.1"}
    assert set(state.exited) == {"a.1"} and state.exited["a.1"]["exit_code"] == 7
    assert state.intents == {"d.1": ("d", 1)}


def test_replay_tracks_the_queue_until_an_intent_start_or_exit() -> None:
    state = replay(
        [
            line(t="queue", items=[["a", 1], ["b", 1], ["c", 1], ["d", 1], ["e", 1]]),
            line(t="intent", items=[["a", 1]]),
            line(t="intent", items=[["b", 1]]),
            start("b"),
            line(t="exit", task_id="c", attempt=1, at=2.0, never_started=True),  # stopped while queued
        ]
    )
    assert list(state.queued) == ["d.1", "e.1"]
    assert state.intents == {"a.1": ("a", 1)} and set(state.live) == {"b.1"} and set(state.exited) == {"c.1"}


def test_compaction_keeps_the_queue(tmp_path: Path) -> None:
    path = tmp_path / "journal.jsonl"
    journal = Journal(path)
    journal.open()
    journal.append(line(t="queue", items=[["x", 1], ["y", 2]]) + b"\n")
    journal.compact(journal.load())
    journal.close()
    assert list(Journal(path).load().queued.values()) == [("x", 1), ("y", 2)]


def test_replay_skips_a_torn_last_line() -> None:
    state = replay([start("a"), exit_("a"), b'{"t":"exit","task_id":"b","att'])
    assert set(state.exited) == {"a.1"} and not state.live


def test_compaction_keeps_only_live_and_unacked(tmp_path: Path) -> None:
    path = tmp_path / "journal.jsonl"
    journal = Journal(path, compact_bytes=1)
    journal.open()
    data = b"".join(rec + b"\n" for rec in [start("a"), start("b"), exit_("a"), line(t="ack", keys=[["a", 1]])])
    journal.append(data)
    assert journal.wants_compaction()
    state = journal.load()
    state.epoch = 9
    journal.compact(state)
    lines = path.read_bytes().splitlines()
    assert [orjson.loads(x)["t"] for x in lines] == ["epoch", "start"]
    journal.append(exit_("b") + b"\n")  # appends go to the new file
    journal.close()
    again = Journal(path).load()
    assert again.epoch == 9 and not again.live and set(again.exited) == {"b.1"}


# --------------------------------------------------------------------------------------------- paths


def test_socket_path_stays_in_the_state_dir_when_it_fits(tmp_path: Path) -> None:
    assert socket_path(Path("/var/lib/tp")) == Path("/var/lib/tp/supervisor.sock")
    long_dir = Path("/var/lib") / ("x" * 120)
    fallback = socket_path(long_dir)
    assert len(os.fsencode(str(fallback))) <= MAX_SOCKET_PATH
    assert fallback.parent == Path(f"/tmp/taskplane-{os.getuid()}")
    assert socket_path(long_dir) == fallback != socket_path(Path("/var/lib") / ("y" * 120))


@pytest.mark.parametrize(
    ("workdir", "ok"),
    [(None, True), ("a", True), ("a/b/c", True), ("./a", True), ("/abs", False), ("..", False), ("a/../b", False)],
)
def test_workdir_must_stay_inside_the_sandbox(workdir: str | None, ok: bool) -> None:
    assert (check_workdir(workdir) is None) is ok


@pytest.mark.parametrize(
    ("task_id", "ok"),
    [("01hx7k2m", True), ("a.b-c_d", True), ("", False), ("..", False), (".hidden", False), ("a/b", False)],
)
def test_task_ids_must_be_safe_directory_names(task_id: str, ok: bool) -> None:
    assert (check_task_id(task_id) is None) is ok


def test_config_validates_and_makes_paths_absolute() -> None:
    cfg = LocalExecutorConfig.in_data_dir(Path("rel"))
    assert cfg.state_dir.is_absolute() and cfg.state_dir.name == "supervisor"
    with pytest.raises(ValueError, match="cgroups"):
        LocalExecutorConfig.in_data_dir(Path("/x"), cgroups="v3")
    with pytest.raises(ValueError, match="log_limit"):
        LocalExecutorConfig.in_data_dir(Path("/x"), log_limit_bytes=0)


# -------------------------------------------------------------------------------------------- launch


def test_prepare_rejects_malformed_launches_permanently() -> None:
    good = {"task_id": "t", "attempt": 1, "argv": ["true"], "env": {}}
    assert prepare(good).key == "t.1"
    for bad in (
        {**good, "argv": []},
        {**good, "argv": "true"},
        {**good, "env": {"A": 1}},
        {**good, "attempt": -1},
        {**good, "attempt": True},
        {**good, "task_id": "../x"},
    ):
        with pytest.raises(SpawnError) as caught:
            prepare(bad)
        assert caught.value.retryable is False


def test_argv0_resolution_uses_the_tasks_path(tmp_path: Path) -> None:
    tool = tmp_path / "tool"
    tool.write_text("#!/bin/sh\n")
    tool.chmod(0o755)
    (tmp_path / "plain").write_text("not executable")
    env = {"PATH": f"/nonexistent:{tmp_path}"}
    assert resolve_executable("tool", env) == f"{tmp_path}/tool"
    assert resolve_executable("plain", env) is None
    assert resolve_executable("./x", env) == "./x"
    assert resolve_executable("sh", {}) is not None  # os.defpath


def test_pid_identity_is_the_start_time_window() -> None:
    before = boot_clock()
    pid = os.posix_spawn("/bin/sleep", ["sleep", "5"], {})
    after = boot_clock()
    try:
        assert same_process(pid, (before, after))
        assert not same_process(pid, (before - 60, after - 60))  # a pid reused later started later
        assert not same_process(pid, (before + 60, after + 60))
    finally:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
    assert not same_process(pid, (before, after))


# ------------------------------------------------------------------------------------------- cgroups


def test_parse_proc_cgroup_v1_and_v2() -> None:
    v1, v2 = parse_proc_cgroup("4:memory:/a/b\n1:cpu,cpuacct:/\n0::/user.slice\n")
    assert v1 == {"memory": "/a/b", "cpu": "/", "cpuacct": "/"}
    assert v2 == "/user.slice"


def test_parse_mountinfo_and_cgroup_dirs() -> None:
    text = (
        "31 23 0:28 / /sys/fs/cgroup rw - tmpfs tmpfs rw\n"
        "32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct\n"
        "35 31 0:32 /docker/abc /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n"
        "41 31 0:38 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw\n"
    )
    v1, v2 = parse_mountinfo(text)
    assert v1["cpu"] == v1["cpuacct"] == Mount(Path("/sys/fs/cgroup/cpu,cpuacct"), "/")
    assert v2 == Mount(Path("/sys/fs/cgroup/unified"), "/")
    # A container that sees its own cgroup as the mount's root.
    assert cgroup_dir(v1["memory"], "/docker/abc/sub") == Path("/sys/fs/cgroup/memory/sub")
    assert cgroup_dir(v1["memory"], "/docker/abc") == Path("/sys/fs/cgroup/memory")
    assert cgroup_dir(v1["cpu"], "/x/y") == Path("/sys/fs/cgroup/cpu,cpuacct/x/y")


class ScriptedV2(CgroupsV2):
    """A v2 driver whose kernel counters are scripted: the pool's bookkeeping without a cgroup2 mount."""

    def __init__(self, readings: list[tuple[int | None, int | None]]) -> None:
        super().__init__(Path("/nonexistent/own"), "taskplane-test")
        self.readings = readings

    def _counters(self, cg: TaskCgroup) -> tuple[int | None, int | None]:
        return self.readings.pop(0)


def test_a_reused_cgroup_reports_only_its_own_oom_kills_and_peak() -> None:
    # (memory.peak, oom_kill) at the end of three uses of one slot, v2 (whose peak cannot be reset).
    driver = ScriptedV2([(100, 0), (300, 1), (200, 1)])
    cg = TaskCgroup("slot-0", ("/x/slot-0",), "/x/slot-0", ("/x/slot-0/cgroup.procs",))
    assert driver.usage(cg) == (100, False)  # a fresh slot: its peak is this use's
    assert driver.usage(cg) == (300, True)  # raised the high-water mark; the counter moved
    assert driver.usage(cg) == (None, False)  # below an earlier use's peak: unknown; the old kill is not its
