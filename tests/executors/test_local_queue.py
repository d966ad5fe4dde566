"""The node queue of the local executor: FIFO starts as capacity frees up, on the supervisor, with no round trip."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess

import orjson
import pytest

from taskplane.executors.local.daemon import LOST_QUEUED, LOST_RESTARTED
from taskplane.executors.local.layout import journal_path
from taskplane.executors.local.spawn import boot_clock, start_ticks
from taskplane.services.ports import Exited, Started
from tests.executors.local_helpers import Harness, Recorder, launch, process_alive

pytestmark = pytest.mark.timeout(60)

CPU = 1000  # one core per task in most tests below


def order(rec: Recorder) -> list[tuple[str, str]]:
    """The events as ("start"|"exit", task_id), in arrival order."""
    return [("start" if isinstance(ev, Started) else "exit", ev.task_id) for ev in rec.events]


def peak_running(rec: Recorder) -> int:
    live = peak = 0
    for ev in rec.events:
        if isinstance(ev, Started):
            live += 1
        elif ev.started_at is not None:
            live -= 1
        peak = max(peak, live)
    return peak


async def wait_dead(pid: int) -> None:
    async with asyncio.timeout(5):
        while process_alive(pid):
            await asyncio.sleep(0.01)


async def test_launches_start_in_fifo_order_as_capacity_frees(harness: Harness) -> None:
    ex, rec, _ = await harness.open(harness.config(millicpu=2 * CPU, memory=1 << 30))
    ids = [f"t{i}" for i in range(6)]
    await ex.start([launch(t, "sleep", "0.1", millicpu=CPU) for t in ids])
    ended = await rec.exits(*ids, timeout=20)
    assert all(ev.outcome.exit_code == 0 and not ev.never_started for ev in ended)
    starts = [task_id for kind, task_id in order(rec) if kind == "start"]
    assert starts == ids
    assert peak_running(rec) == 2
    # t2 could only start once t0 or t1 had ended.
    assert rec.started[("t2", 1)].at >= min(rec.exited[("t0", 1)].at, rec.exited[("t1", 1)].at)


async def test_a_head_that_does_not_fit_holds_back_the_queue(harness: Harness) -> None:
    ex, rec, _ = await harness.open(harness.config(millicpu=2 * CPU, memory=1 << 30))
    await ex.start(
        [
            launch("running", "sleep", "300", millicpu=CPU),
            launch("big", "true", millicpu=2 * CPU),  # waits for the whole node
            launch("small", "true", millicpu=CPU // 2),  # would fit now, but is behind "big"
            launch("besteffort", "true"),  # so would a best-effort one
        ]
    )
    (running,) = await rec.starts("running")
    harness.track(running.pid)
    await asyncio.sleep(0.5)
    assert set(rec.started) == {("running", 1)} and not rec.exited
    await ex.stop("running", 1, grace=0)
    await rec.exits("running", "big", "small", "besteffort")
    starts = [task_id for kind, task_id in order(rec) if kind == "start"]
    assert starts == ["running", "big", "small", "besteffort"]
    assert order(rec).index(("exit", "big")) < order(rec).index(("start", "small"))


async def test_the_next_task_starts_on_an_exit_without_any_client_message(harness: Harness) -> None:
    ex, rec, _ = await harness.open(harness.config(millicpu=CPU, memory=1 << 30))
    requests: list[str] = []
    send = ex._request

    async def counted(op: str, **fields: object) -> dict[str, object]:
        requests.append(op)
        return await send(op, **fields)

    ex._request = counted  # type: ignore[method-assign]
    await ex.start([launch("first", "sleep", "0.3", millicpu=CPU), launch("second", "true", millicpu=CPU)])
    await rec.starts("first")
    assert ("second", 1) not in rec.started
    (second,) = await rec.starts("second")
    (first,) = await rec.exits("first")
    assert requests == ["start"]  # one start for both: the second was started by the node itself
    assert order(rec).index(("exit", "first")) < order(rec).index(("start", "second"))
    assert first.at <= second.at
    (done,) = await rec.exits("second")
    assert done.outcome.exit_code == 0


async def test_stopping_a_queued_attempt_reports_it_never_started(harness: Harness) -> None:
    ex, rec, _ = await harness.open(harness.config(max_tasks=1))
    await ex.start([launch("busy", "sleep", "300"), launch("waiting", "true"), launch("after", "true")])
    (busy,) = await rec.starts("busy")
    harness.track(busy.pid)
    await ex.stop("waiting", 1, grace=5)
    (stopped,) = await rec.exits("waiting")
    assert stopped.never_started and stopped.started_at is None
    assert (stopped.outcome.exit_code, stopped.outcome.signal, stopped.outcome.lost) == (None, None, None)
    await ex.start([launch("waiting", "true")])  # known until acked: not queued again
    await ex.stop("busy", 1, grace=0)
    await rec.exits("busy", "after")
    assert ("waiting", 1) not in rec.started
    assert [task_id for kind, task_id in order(rec) if kind == "start"] == ["busy", "after"]


async def test_max_tasks_queues_best_effort_launches(harness: Harness) -> None:
    ex, rec, _ = await harness.open(harness.config(max_tasks=2))
    ids = [f"b{i}" for i in range(7)]
    await ex.start([launch(t, "sleep", "0.05") for t in ids])
    ended = await rec.exits(*ids, timeout=20)
    assert all(ev.outcome.exit_code == 0 for ev in ended)
    assert peak_running(rec) == 2
    assert [task_id for kind, task_id in order(rec) if kind == "start"] == ids


async def test_a_larger_launch_than_the_node_is_refused_instead_of_blocking_it(harness: Harness) -> None:
    ex, rec, _ = await harness.open(harness.config(millicpu=CPU, memory=1 << 30))
    await ex.start(
        [launch("huge", "true", millicpu=4 * CPU), launch("gpu", "true", gpu=1), launch("fine", "true", millicpu=CPU)]
    )
    huge, gpu_exit, fine = await rec.exits("huge", "gpu", "fine")
    assert huge.outcome.spawn_error is not None and "more than this node has" in huge.outcome.spawn_error
    assert gpu_exit.outcome.spawn_error is not None and huge.outcome.retryable is False
    assert fine.outcome.exit_code == 0


async def test_capacity_comes_from_the_latest_hello(harness: Harness) -> None:
    small = harness.config(millicpu=1500, memory=1 << 30)
    ex, rec, _ = await harness.open(small)
    await ex.start([launch("one", "sleep", "300", millicpu=CPU), launch("two", "sleep", "300", millicpu=CPU)])
    (one,) = await rec.starts("one")
    harness.track(one.pid)
    await asyncio.sleep(0.3)
    assert ("two", 1) not in rec.started  # 2000m > 1500m
    await ex.close()
    # A new server with a larger node: its hello's capacity applies at once, and "two" starts from the queue.
    bigger, rec, recovered = await harness.open(harness.config(millicpu=2000, memory=1 << 30))
    assert recovered.queued == [("two", 1)]
    (two,) = await rec.starts("two")
    harness.track(two.pid)
    await bigger.stop("one", 1, grace=0)
    await bigger.stop("two", 1, grace=0)
    await rec.exits("one", "two")


async def test_a_reconnecting_server_finds_the_queue_and_it_keeps_draining(harness: Harness) -> None:
    ex, _, recovered = await harness.open(harness.config(max_tasks=1))
    assert recovered.queued == []
    await ex.start([launch("head", "sleep", "300"), launch("q1", "true"), launch("q2", "true")])
    await ex.close()  # the server goes away; the supervisor keeps the queue

    new, rec, recovered = await harness.open(harness.config(max_tasks=1))
    assert [ev.task_id for ev in recovered.running] == ["head"]
    assert recovered.queued == [("q1", 1), ("q2", 1)]
    assert recovered.exited == []
    harness.track(recovered.running[0].pid)
    await new.start([launch("q1", "true")])  # still known: not queued twice
    await new.stop("head", 1, grace=0)
    await rec.exits("head", "q1", "q2")
    assert [task_id for kind, task_id in order(rec) if kind == "start"] == ["q1", "q2"]


async def test_a_killed_supervisor_reports_its_queue_as_never_started_and_lost(harness: Harness) -> None:
    config = harness.config(millicpu=CPU, memory=1 << 30)
    ex, rec, _ = await harness.open(config)
    await ex.start(
        [
            launch("holder", "sleep", "300", millicpu=CPU),
            launch("queued1", "true", millicpu=CPU),
            launch("queued2", "true"),
        ]
    )
    (holder,) = await rec.starts("holder")
    harness.track(holder.pid)
    await ex.close()
    first = ex.supervisor_pid
    assert first is not None
    os.kill(first, signal.SIGKILL)
    await wait_dead(first)

    new, rec, recovered = await harness.open(config)
    assert new.supervisor_pid != first
    assert [ev.task_id for ev in recovered.running] == ["holder"]
    assert recovered.queued == []
    lost = {ev.task_id: ev for ev in recovered.exited}
    assert set(lost) == {"queued1", "queued2"}
    for ev in lost.values():
        assert ev.never_started and ev.outcome.lost == LOST_QUEUED and ev.started_at is None
        assert ev.outcome.exit_code is None and ev.outcome.signal is None
    # The restarted supervisor knows what "holder" holds: a new 1-cpu launch waits for it.
    await new.start([launch("next", "true", millicpu=CPU)])
    await asyncio.sleep(0.3)
    assert ("next", 1) not in rec.started
    os.kill(holder.pid or 0, signal.SIGKILL)
    ended, nxt = await rec.exits("holder", "next")
    assert ended.outcome.lost == LOST_RESTARTED and nxt.outcome.exit_code == 0


async def test_a_client_whose_supervisor_is_killed_gets_its_queue_back_as_lost_events(harness: Harness) -> None:
    ex, rec, _ = await harness.open(harness.config(max_tasks=1))
    await ex.start([launch("head", "sleep", "300"), launch("behind", "true")])
    (head,) = await rec.starts("head")
    harness.track(head.pid)
    first = ex.supervisor_pid
    assert first is not None
    os.kill(first, signal.SIGKILL)
    (behind,) = await rec.exits("behind")  # delivered by the reconnect, with no request from us
    assert behind.never_started and behind.outcome.lost == LOST_QUEUED
    await ex.stop("head", 1, grace=0)
    await rec.exits("head")


async def test_an_adopted_attempt_from_an_old_journal_holds_one_task_and_no_resources(harness: Harness) -> None:
    config = harness.config(millicpu=CPU, memory=1 << 30, max_tasks=2)
    config.state_dir.mkdir(parents=True)
    before = boot_clock()
    orphan = subprocess.Popen(["sleep", "300"], start_new_session=True)
    after = boot_clock()
    harness.track(orphan.pid)
    assert start_ticks(orphan.pid) is not None
    records = [
        {"t": "epoch", "epoch": 1},
        # Written by a supervisor that did not record resources: no "res".
        {"t": "start", "task_id": "orphan", "attempt": 1, "pid": orphan.pid, "at": 1.0, "boot": [before, after]},
    ]
    journal_path(config.state_dir).write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in records))
    ex, rec, recovered = await harness.open(config, epoch=2)
    assert [ev.task_id for ev in recovered.running] == ["orphan"]
    # It holds no cpu: a full-node launch starts next to it. It is one task: a third one waits (max_tasks=2).
    await ex.start([launch("cpu", "sleep", "300", millicpu=CPU), launch("third", "true")])
    (cpu,) = await rec.starts("cpu")
    harness.track(cpu.pid)
    await asyncio.sleep(0.3)
    assert ("third", 1) not in rec.started
    orphan.kill()
    orphan.wait()
    ended, third = await rec.exits("orphan", "third")
    assert ended.outcome.lost == LOST_RESTARTED and third.outcome.exit_code == 0
    await ex.stop("cpu", 1, grace=0)
    await rec.exits("cpu")
    assert isinstance(third, Exited)


async def test_unqueue_takes_back_only_what_has_not_started(harness: Harness) -> None:
    ex, rec, _ = await harness.open(harness.config(max_tasks=1))
    await ex.start([launch("running", "sleep", "300"), launch("waiting", "true"), launch("last", "true")])
    (running,) = await rec.starts("running")
    harness.track(running.pid)
    await ex.unqueue("running", 1)  # started: left alone
    await ex.unqueue("waiting", 1)
    await ex.unqueue("nobody", 1)
    (taken,) = await rec.exits("waiting")
    assert taken.never_started and taken.outcome.lost is None and taken.outcome.exit_code is None
    await asyncio.sleep(0.2)
    assert process_alive(running.pid or 0) and ("running", 1) not in rec.exited
    await ex.stop("running", 1, grace=0)
    await rec.exits("running", "last")
    assert ("waiting", 1) not in rec.started
