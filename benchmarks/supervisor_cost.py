"""What the local executor's supervisor costs per task, measured through the whole ``LocalExecutor`` API.

    python benchmarks/supervisor_cost.py                      # 10,000 sleeps, 3,000 cycles of `true` (x2 modes)
    python benchmarks/supervisor_cost.py --children 2000 --cycles 1000 --cgroups

1. ``--children`` concurrent ``sleep`` tasks started in batches of 1,000: wall time until all are reported
   started, supervisor CPU per spawn, supervisor memory per tracked child, then CPU per exit when all are
   stopped at once.
2. ``--cycles`` spawn+exit+ack cycles of ``true`` with ``--concurrency`` in flight, each waiting for the
   previous exit (a round trip through the client per task): cycles/s, supervisor CPU and client CPU per cycle.
3. The same number of ``true`` tasks through the node queue, as the engine drives it: a node of
   ``--concurrency`` cpus, 1-cpu tasks, ``--ahead`` more queued on the node; exits are acked and replaced in
   batches (whatever arrived together).
   The node starts the next one itself: tasks/s, supervisor CPU and the tasks' own CPU per task.

With ``--cgroups`` the cycles and the queue are repeated with a resource request (a cgroup per task); the
queue always uses one (its tasks request 1 cpu).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

from taskplane.domain.resources import Resources
from taskplane.executors.local.config import LocalExecutorConfig
from taskplane.executors.local.executor import LocalExecutor, shutdown_supervisor
from taskplane.services.ports import ExecutorEvent, Exited, Launch, Started

TICKS = os.sysconf("SC_CLK_TCK")
ENV = {"PATH": os.environ.get("PATH", os.defpath)}


def proc_cpu(pid: int, children: bool = False) -> float:
    data = Path(f"/proc/{pid}/stat").read_bytes()
    fields = data[data.rfind(b")") + 2 :].split()
    first = 13 if children else 11  # cutime + cstime: the reaped tasks' own CPU
    return (int(fields[first]) + int(fields[first + 1])) / TICKS


def proc_rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def self_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class Waiter:
    def __init__(self) -> None:
        self.started: set[str] = set()
        self.exited: dict[str, asyncio.Future[Exited]] = {}
        self.all_started = asyncio.Event()
        self.expect_started = 0
        self.ended: asyncio.Queue[Exited] | None = None  # every exit, when set

    def future(self, key: str) -> asyncio.Future[Exited]:
        fut = self.exited.get(key)
        if fut is None:
            fut = self.exited[key] = asyncio.get_running_loop().create_future()
        return fut

    def __call__(self, events: list[ExecutorEvent]) -> None:
        for ev in events:
            key = f"{ev.task_id}.{ev.attempt}"
            if isinstance(ev, Started):
                self.started.add(key)
                if self.expect_started and len(self.started) >= self.expect_started:
                    self.all_started.set()
            else:
                if self.ended is not None:
                    self.ended.put_nowait(ev)
                fut = self.future(key)
                if not fut.done():
                    fut.set_result(ev)


async def many_children(ex: LocalExecutor, waiter: Waiter, n: int) -> None:
    pid = ex.supervisor_pid
    assert pid is not None
    rss0, cpu0, t0 = proc_rss(pid), proc_cpu(pid), time.perf_counter()
    waiter.expect_started = n
    ids = [f"sleep{i:05d}" for i in range(n)]
    for start in range(0, n, 1000):
        batch = [Launch(t, 1, ("sleep", "600"), ENV, None, Resources()) for t in ids[start : start + 1000]]
        await ex.start(batch)
    await asyncio.wait_for(waiter.all_started.wait(), 600)
    wall, cpu, rss = time.perf_counter() - t0, proc_cpu(pid) - cpu0, proc_rss(pid) - rss0
    print(f"{n} concurrent sleeps: all started in {wall:.2f}s ({n / wall:.0f} spawns/s)")
    print(f"  supervisor CPU {cpu:.2f}s = {cpu / n * 1e6:.0f} us per spawn")
    print(f"  supervisor RSS +{rss / 2**20:.1f} MiB = {rss / n / 1024:.2f} KiB per tracked child")
    cpu0, t0 = proc_cpu(pid), time.perf_counter()
    for task_id in ids:
        await ex.stop(task_id, 1, grace=0)
    await asyncio.gather(*(waiter.future(f"{t}.1") for t in ids))
    wall, cpu = time.perf_counter() - t0, proc_cpu(pid) - cpu0
    print(f"  stop+exit of all: {wall:.2f}s, supervisor CPU {cpu / n * 1e6:.0f} us per stop+exit")
    await ex.ack([(t, 1) for t in ids])


async def cycles(ex: LocalExecutor, waiter: Waiter, n: int, concurrency: int, resources: Resources, tag: str) -> None:
    pid = ex.supervisor_pid
    assert pid is not None
    counter = iter(range(n))

    async def worker() -> None:
        for i in counter:
            task_id = f"{tag}{i:06d}"
            fut = waiter.future(f"{task_id}.1")
            await ex.start([Launch(task_id, 1, ("true",), ENV, None, resources)])
            ended = await fut
            assert ended.outcome.exit_code == 0, ended
            await ex.ack([(task_id, 1)])

    cpu0, mine0, t0 = proc_cpu(pid), self_cpu(), time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    wall, cpu, mine = time.perf_counter() - t0, proc_cpu(pid) - cpu0, self_cpu() - mine0
    label = "best-effort" if resources.is_zero() else f"with cgroup ({resources.describe()})"
    print(f"{n} cycles of `true` at concurrency {concurrency}, {label}: {n / wall:.0f} cycles/s")
    print(f"  supervisor CPU {cpu / n * 1e6:.0f} us/cycle, client CPU {mine / n * 1e6:.0f} us/cycle")


async def queued(ex: LocalExecutor, waiter: Waiter, n: int, slots: int, ahead: int, tag: str) -> None:
    pid = ex.supervisor_pid
    assert pid is not None
    one_cpu = Resources(millicpu=1000, memory=64 << 20)
    waiter.ended = asyncio.Queue()
    ids = iter(range(n))

    def more(count: int) -> list[Launch]:
        return [Launch(f"{tag}{i:06d}", 1, ("true",), ENV, None, one_cpu) for i in itertools.islice(ids, count)]

    cpu0, tasks0, t0 = proc_cpu(pid), proc_cpu(pid, children=True), time.perf_counter()
    await ex.start(more(slots + ahead))
    done = 0
    while done < n:  # like an engine step: take every exit there is, ack them, send as many more
        batch = [await waiter.ended.get()]
        while not waiter.ended.empty():
            batch.append(waiter.ended.get_nowait())
        assert all(ev.outcome.exit_code == 0 for ev in batch), batch
        done += len(batch)
        launches = more(len(batch))
        if launches:
            await ex.start(launches)
        await ex.ack([(ev.task_id, ev.attempt) for ev in batch])
    wall, cpu, tasks = time.perf_counter() - t0, proc_cpu(pid) - cpu0, proc_cpu(pid, children=True) - tasks0
    waiter.ended = None
    print(f"{n} `true` through the node queue ({slots} x 1 cpu, {ahead} queued ahead): {n / wall:.0f} tasks/s")
    print(f"  supervisor CPU {cpu / n * 1e6:.0f} us/task, the tasks' own CPU {tasks / n * 1e6:.0f} us/task")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--children", type=int, default=10_000)
    parser.add_argument("--cycles", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--ahead", type=int, default=4, help="launches queued on the node beyond its capacity")
    parser.add_argument("--cgroups", action="store_true", help="also run the cycles with a cgroup per task")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="tpbench-") as tmp:
        # A node of --concurrency cpus: the queue mode's 1-cpu tasks run exactly that many at once.
        size = {"millicpu": args.concurrency * 1000, "memory": 64 << 30}
        config = LocalExecutorConfig.in_data_dir(Path(tmp), idle_exit=60, **size)
        ex = LocalExecutor(config)
        waiter = Waiter()
        try:
            await ex.open(1, waiter)
            print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, cgroups {ex.capacity().cgroups}")
            if args.children:
                await many_children(ex, waiter, args.children)
            if args.cycles:
                await cycles(ex, waiter, args.cycles, args.concurrency, Resources(), "be")
                if args.cgroups and ex.capacity().cgroups != "none":
                    res = Resources(millicpu=100, memory=64 << 20)
                    await cycles(ex, waiter, args.cycles, args.concurrency, res, "cg")
                await queued(ex, waiter, args.cycles, args.concurrency, args.ahead, "q")
        finally:
            await ex.close()
            shutdown_supervisor(config.state_dir, force=True, timeout=60)


if __name__ == "__main__":
    asyncio.run(main())
