"""The executor contract: what every ``Executor`` does, written once and run against each implementation.

A test module runs the suite by importing it and providing the target::

    from tests.executors.contract import *  # noqa: F403

    @pytest.fixture
    async def contract_target(...) -> AsyncIterator[ContractTarget]:
        yield ContractTarget(name="podman", make=..., launch=..., oom=True)
        ... # clean up: nothing may outlive the test

``make`` builds a NEW executor over the same state each time it is called (a restarted server), and ``launch``
builds a ``Launch`` running ``sh -c <script>`` on that executor. Every test acks the exits it saw, so a target
whose cleanup asserts that nothing is left over checks ``ack`` too.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import signal
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from taskplane.domain.outcome import classify
from taskplane.domain.task import FailureClass
from taskplane.services.ports import Executor, Launch, LogStream, Recovered, Started, SupportsLogs
from tests.executors.local_helpers import Recorder

__all__ = [
    "ContractTarget",
    "test_env_reaches_the_task",
    "test_exit_code_is_a_user_failure",
    "test_exit_while_closed_is_recovered_until_acked",
    "test_exit_zero_is_success",
    "test_nodes_are_named_and_sized",
    "test_oom_kill_is_an_infra_failure",
    "test_output_lands_in_the_log_files",
    "test_running_attempt_is_recovered_by_a_new_executor",
    "test_start_is_idempotent_per_attempt",
    "test_stop_kills_a_task_ignoring_term_after_the_grace",
    "test_stop_lets_a_task_exit_on_term",
]

TIMEOUT = 30.0  # seconds to wait for an event: generous, a loaded CI machine starts containers slowly
_epochs = itertools.count(1)


@dataclass
class ContractTarget:
    """One executor under test."""

    name: str
    make: Callable[[], Executor]  # a NEW executor instance over the same state (a restarted server)
    launch: Callable[..., Launch]  # launch(task_id, script, *, attempt=1, env=None, memory=0, millicpu=0,
    #                                       run_timeout=None) -> a Launch running `sh -c script`
    oom: bool  # the target really enforces memory limits (the OOM test runs)


@dataclass
class Opened:
    """An open executor with the recorder of its events and what ``open`` recovered."""

    executor: Executor
    events: Recorder
    recovered: Recovered

    async def ack_all(self) -> None:
        """Ack every exit this executor reported or recovered."""
        keys = {*self.events.exited, *((e.task_id, e.attempt) for e in self.recovered.exited)}
        if keys:
            await self.executor.ack(sorted(keys))


@contextlib.asynccontextmanager
async def opened(target: ContractTarget, *, ack: bool = True) -> AsyncIterator[Opened]:
    """A fresh executor from ``target.make()``, open; on the way out its exits are acked and it is closed."""
    executor = target.make()
    events = Recorder()
    recovered = await executor.open(next(_epochs), events)
    session = Opened(executor, events, recovered)
    try:
        yield session
        if ack:
            await session.ack_all()
    finally:
        await executor.close()


async def read_log(executor: Executor, task_id: str, stream: LogStream, *, until: str = "") -> str:
    """One stream's file (waiting, while it is being copied, until it contains ``until``)."""
    assert isinstance(executor, SupportsLogs)
    path: Path = executor.log_path(task_id, 1, stream)
    async with asyncio.timeout(TIMEOUT):
        while True:
            text = path.read_text() if path.exists() else ""
            if until in text:
                return text
            await asyncio.sleep(0.05)


async def wait_ready(session: Opened, task_id: str) -> None:
    """Until the task has printed ``ready`` (its traps are set), or a moment for targets without logs."""
    await session.events.starts(task_id, timeout=TIMEOUT)
    if isinstance(session.executor, SupportsLogs):
        await read_log(session.executor, task_id, LogStream.STDOUT, until="ready")
    else:
        await asyncio.sleep(1.0)


def events_of(recorder: Recorder, task_id: str) -> list[str]:
    """The kinds of events of attempt 1 of ``task_id``, in order."""
    return [type(ev).__name__ for ev in recorder.events if (ev.task_id, ev.attempt) == (task_id, 1)]


# --------------------------------------------------------------------------------------------- tests


async def test_exit_zero_is_success(contract_target: ContractTarget) -> None:
    async with opened(contract_target) as s:
        await s.executor.start([contract_target.launch("ok", "exit 0")])
        [ended] = await s.events.exits("ok", timeout=TIMEOUT)
        assert events_of(s.events, "ok") == ["Started", "Exited"]
        assert (ended.outcome.exit_code, ended.outcome.signal) == (0, None)
        assert classify(ended.outcome) is None
        started = s.events.started[("ok", 1)]
        assert ended.at >= started.at and ended.at.tzinfo is not None


async def test_exit_code_is_a_user_failure(contract_target: ContractTarget) -> None:
    async with opened(contract_target) as s:
        await s.executor.start([contract_target.launch("three", "exit 3")])
        [ended] = await s.events.exits("three", timeout=TIMEOUT)
        assert (ended.outcome.exit_code, ended.outcome.signal) == (3, None)
        assert ended.outcome.spawn_error is None and not ended.outcome.oom_killed
        assert classify(ended.outcome) is FailureClass.USER


async def test_output_lands_in_the_log_files(contract_target: ContractTarget) -> None:
    async with opened(contract_target) as s:
        if not isinstance(s.executor, SupportsLogs):
            pytest.skip(f"the {contract_target.name} executor keeps no logs")
        script = "echo out; echo err >&2; printf 'no newline'; echo second line"
        await s.executor.start([contract_target.launch("logs", script)])
        await s.events.exits("logs", timeout=TIMEOUT)
        assert await read_log(s.executor, "logs", LogStream.STDOUT) == "out\nno newlinesecond line\n"
        assert await read_log(s.executor, "logs", LogStream.STDERR) == "err\n"


async def test_env_reaches_the_task(contract_target: ContractTarget) -> None:
    check = 'test "$GREETING" = "hello world" && test "$DOLLAR" = \'$HOME\''
    env = {"GREETING": "hello world", "DOLLAR": "$HOME"}
    async with opened(contract_target) as s:
        await s.executor.start(
            [
                contract_target.launch("with", check, env=env),
                contract_target.launch("without", check, env={"GREETING": "bye"}),
            ]
        )
        with_env, without = await s.events.exits("with", "without", timeout=TIMEOUT)
        assert with_env.outcome.exit_code == 0
        assert without.outcome.exit_code == 1  # the check itself can fail


async def test_stop_lets_a_task_exit_on_term(contract_target: ContractTarget) -> None:
    script = "trap 'exit 7' TERM; echo ready; while :; do sleep 0.1; done"
    async with opened(contract_target) as s:
        await s.executor.start([contract_target.launch("trap", script)])
        await wait_ready(s, "trap")
        await s.executor.stop("trap", 1, grace=10.0)
        [ended] = await s.events.exits("trap", timeout=TIMEOUT)
        assert (ended.outcome.exit_code, ended.outcome.signal) == (7, None)


async def test_stop_kills_a_task_ignoring_term_after_the_grace(contract_target: ContractTarget) -> None:
    script = "trap '' TERM; echo ready; while :; do sleep 0.1; done"
    async with opened(contract_target) as s:
        await s.executor.start([contract_target.launch("stubborn", script)])
        await wait_ready(s, "stubborn")
        await s.executor.stop("stubborn", 1, grace=1.0)
        [ended] = await s.events.exits("stubborn", timeout=TIMEOUT)
        assert (ended.outcome.exit_code, ended.outcome.signal) == (None, signal.SIGKILL)
        assert classify(ended.outcome) is FailureClass.USER  # the engine adds the stop reason, not the executor


async def test_start_is_idempotent_per_attempt(contract_target: ContractTarget) -> None:
    async with opened(contract_target) as s:
        launch = contract_target.launch("once", "echo ran; sleep 0.5")
        await s.executor.start([launch])
        await s.executor.start([launch])
        await s.events.exits("once", timeout=TIMEOUT)
        await s.executor.start([launch])  # ended, not acked yet: still the same attempt
        await asyncio.sleep(1.0)  # room for a wrong second run to report itself
        assert events_of(s.events, "once") == ["Started", "Exited"]
        if isinstance(s.executor, SupportsLogs):
            assert await read_log(s.executor, "once", LogStream.STDOUT) == "ran\n"


async def test_running_attempt_is_recovered_by_a_new_executor(contract_target: ContractTarget) -> None:
    async with opened(contract_target, ack=False) as first:
        await first.executor.start([contract_target.launch("long", "echo ready; sleep 5; exit 5")])
        await first.events.starts("long", timeout=TIMEOUT)
    async with opened(contract_target) as second:
        assert [(r.task_id, r.attempt) for r in second.recovered.running] == [("long", 1)]
        assert second.recovered.exited == []
        [ended] = await second.events.exits("long", timeout=TIMEOUT)
        assert (ended.outcome.exit_code, ended.outcome.signal) == (5, None)
        assert not [ev for ev in second.events.events if isinstance(ev, Started)]  # not run again


async def test_exit_while_closed_is_recovered_until_acked(contract_target: ContractTarget) -> None:
    async with opened(contract_target, ack=False) as first:
        await first.executor.start([contract_target.launch("early", "sleep 1; exit 4")])
        await first.events.starts("early", timeout=TIMEOUT)
    await asyncio.sleep(1.5)  # it ends while no executor listens
    async with asyncio.timeout(TIMEOUT):  # (on a slow machine, it may take longer: look until it has ended)
        while True:
            async with opened(contract_target, ack=False) as probe:
                if probe.recovered.exited or probe.events.exited:
                    break
            await asyncio.sleep(0.5)
    for _ in range(2):  # reported on every reopen until acked
        async with opened(contract_target, ack=False) as again:
            assert again.recovered.running == []
            [ended] = again.recovered.exited
            assert (ended.task_id, ended.attempt) == ("early", 1)
            assert (ended.outcome.exit_code, ended.outcome.signal) == (4, None)
    async with opened(contract_target) as acking:
        assert [(e.task_id, e.attempt) for e in acking.recovered.exited] == [("early", 1)]
    async with opened(contract_target) as after:
        assert after.recovered.exited == [] and after.recovered.running == []


async def test_oom_kill_is_an_infra_failure(contract_target: ContractTarget) -> None:
    if not contract_target.oom:
        pytest.skip(f"the {contract_target.name} target does not enforce memory limits")
    # tail keeps the whole last "line" in memory: 512 MiB of zeros without a newline exceed 32 MiB.
    script = "head -c 536870912 /dev/zero | tail > /dev/null"
    async with opened(contract_target) as s:
        await s.executor.start([contract_target.launch("hog", script, memory=32 << 20)])
        [ended] = await s.events.exits("hog", timeout=TIMEOUT)
        assert ended.outcome.oom_killed, ended
        assert classify(ended.outcome) is FailureClass.INFRA


async def test_nodes_are_named_and_sized(contract_target: ContractTarget) -> None:
    async with opened(contract_target) as s:
        nodes = s.executor.nodes()
        assert nodes, "an executor runs attempts somewhere"
        names = [n.node for n in nodes]
        assert len(set(names)) == len(names) and all(names)
        for node in nodes:
            assert node.total.millicpu > 0 and node.total.memory > 0 and node.max_tasks > 0
            assert node.cgroups in ("v1", "v2", "none", "simulated", "kubernetes")
        assert s.executor.capacity().node == names[0]
