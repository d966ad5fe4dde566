"""Concurrency: N best-effort ``sleep`` tasks running at once; time to all running, and the platform's own memory.

Usage: ``python benchmarks/concurrency.py [--tasks 2000] [--sleep 120] [--cancel] [--database-url URL]``.

N ``sleep 120`` tasks with ``resources: {cpu: 0, memory: 0}`` (best-effort: they count only against
``max_tasks``, set to N+100) are submitted over HTTP in batches of 1,000. Timed from just before the first
batch is sent until ``/platform/capacity`` reports N live tasks, then until a full ``?state=running`` listing
holds all N (a live task may still be admitted or starting; ``running`` means its process was reported
started). The server-side figure is the latest ``started_at`` of the N minus the wall-clock time of the first
submit; a sample of tasks' ``/events`` is checked for a ``running`` event.

With all N running: RSS and PSS (``/proc/<pid>/smaps_rollup``) of the server process and of the node supervisor,
not of the tasks, also per task (total, and growth over the idle server / N), and both processes' open fds.

Afterwards every task is cancelled over HTTP with ``--cancel`` (timed until none is live), or otherwise left to
the teardown (server stopped, supervisor and its task process groups SIGKILLed). Then the task pids are checked
to be gone and ``pgrep -c -x sleep`` is compared with its count before the run (other users' ``sleep``
processes count there too). With ``--database-url`` a fresh PostgreSQL schema is used and dropped afterwards.
"""

from __future__ import annotations

import argparse
import os
import random
import subprocess
import time
from datetime import datetime

import httpx

from common import fresh_database, machine, memory_kib, server, supervisor_pid

MIB = 1024


def count_sleeps() -> int:
    """``pgrep -c -x sleep``: every process named ``sleep`` on the machine, whoever started it."""
    out = subprocess.run(["pgrep", "-c", "-x", "sleep"], capture_output=True, text=True, check=False)
    return int(out.stdout.strip() or 0)


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def alive(pid: int, command: bytes) -> bool:
    """Whether ``pid`` still exists (zombies included) and runs ``command`` (guards against pid reuse)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            cmdline = fh.read()
        with open(f"/proc/{pid}/stat") as fh:
            zombie = fh.read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return False
    return zombie or cmdline == command


def children(parent: int) -> list[int]:
    """Pids whose parent is ``parent`` (from ``/proc/<pid>/stat``)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as fh:
                    if int(fh.read().rsplit(")", 1)[1].split()[1]) == parent:
                        found.append(int(entry))
            except OSError:
                continue
    return found


def tasks_in(c: httpx.Client, state: str) -> list[dict]:
    """Every task in ``state``, following the cursor."""
    items: list[dict] = []
    cursor = None
    while True:
        params: dict[str, str | int] = {"state": state, "limit": 1000}
        if cursor:
            params["cursor"] = cursor
        resp = c.get("/platform/tasks", params=params)
        resp.raise_for_status()
        page = resp.json()
        items += page["items"]
        cursor = page["next_cursor"]
        if not cursor:
            return items


def platform_memory(server_pid: int, sup_pid: int | None) -> dict[str, tuple[int, int]]:
    mem = {"server": memory_kib(server_pid)}
    if sup_pid is not None:
        mem["supervisor"] = memory_kib(sup_pid)
    return mem


def run(tasks: int, sleep: float, cancel: bool, database_url: str | None) -> dict[str, float | int | str]:
    result: dict[str, float | int | str] = {"tasks": tasks, "sleep_processes_before": count_sleeps()}
    command = ["sleep", f"{sleep:g}"]
    cmdline = "\0".join(command).encode() + b"\0"
    pids: list[int] = []
    settings = {"node_cpu": "2", "node_memory": "1Ti", "max_tasks_per_node": str(tasks + 100)}
    with (
        fresh_database(database_url) as url,
        server(url, **settings) as srv,
        httpx.Client(base_url=srv.url, timeout=120, headers=srv.headers) as c,
    ):
        assert srv.proc is not None
        server_pid = srv.proc.pid
        idle = platform_memory(server_pid, supervisor_pid(srv))

        deadline = time.monotonic() + sleep * 0.9  # the first sleeps must not end before the last one starts
        started, wall_started = time.perf_counter(), time.time()
        ids: list[str] = []
        task = {"command": command, "resources": {"cpu": 0, "memory": 0}}
        for offset in range(0, tasks, 1000):
            resp = c.post("/platform/tasks/batch", json={"tasks": [task] * min(1000, tasks - offset)})
            resp.raise_for_status()
            ids += [t["id"] for t in resp.json()["tasks"]]
        result["submit_s"] = time.perf_counter() - started

        while (cap := c.get("/platform/capacity").json())["running_tasks"] < tasks:
            if time.monotonic() > deadline:
                raise RuntimeError(f"not all live in time: {cap['running_tasks']} live, {cap['pending_tasks']} pending")
            time.sleep(0.01)
        result["all_live_s (capacity)"] = time.perf_counter() - started
        while len(running := tasks_in(c, "running")) < tasks:
            if time.monotonic() > deadline:
                raise RuntimeError(f"not all running in time: {len(running)} of {tasks}")
            time.sleep(0.05)
        result["all_running_s (listing)"] = time.perf_counter() - started
        assert {t["id"] for t in running} == set(ids), "the running tasks are not the submitted ones"
        last_start = max(datetime.fromisoformat(t["started_at"]).timestamp() for t in running)
        result["all_running_s (server)"] = last_start - wall_started
        last = max(running, key=lambda t: t["started_at"])
        for t in [last, *random.sample(running, min(20, tasks))]:
            events = c.get(f"/platform/tasks/{t['id']}/events").json()["items"]
            assert "running" in {e["type"] for e in events}, f"task {t['id']} has no running event"
        cap = c.get("/platform/capacity").json()
        result["capacity pending / live"] = f"{cap['pending_tasks']} / {cap['running_tasks']}"
        sup_pid = supervisor_pid(srv)
        assert sup_pid is not None, "no supervisor pid file"
        pids = [pid for pid in children(sup_pid) if alive(pid, cmdline)]
        assert len(pids) == tasks, f"the supervisor parents {len(pids)} `{' '.join(command)}` processes, not {tasks}"
        for t in random.sample(running, min(20, tasks)):
            pid = c.get(f"/platform/tasks/{t['id']}").json()["attempts"][-1]["pid"]
            assert pid in pids, f"task {t['id']} reports pid {pid}, not a child of the supervisor"
        loaded = platform_memory(server_pid, sup_pid)
        for name, (rss, pss) in loaded.items():
            idle_pss = idle.get(name, (0, 0))[1]
            result[f"{name}_rss_mib"] = rss / MIB
            result[f"{name}_pss_mib"] = pss / MIB
            result[f"{name}_pss_idle_mib"] = idle_pss / MIB if name in idle else "n/a (not running yet)"
        pss_total = sum(pss for _, pss in loaded.values())
        pss_idle = sum(pss for _, pss in idle.values())
        result["platform_pss_mib"] = pss_total / MIB
        result["platform_pss_per_task_kib"] = pss_total / tasks
        result["platform_pss_growth_per_task_kib"] = (pss_total - pss_idle) / tasks
        result["server_fds"] = open_fds(server_pid)
        result["supervisor_fds"] = open_fds(sup_pid)
        result["sleep_processes_during"] = count_sleeps()

        if cancel:
            cancelling = time.perf_counter()
            for task_id in ids:
                c.put(f"/platform/tasks/{task_id}/cancel").raise_for_status()
            result["cancel_requests_s"] = time.perf_counter() - cancelling
            while (cap := c.get("/platform/capacity").json())["running_tasks"] > 0:
                time.sleep(0.01)
            result["cancel_until_none_live_s"] = time.perf_counter() - cancelling
            result["cancelled"] = len(tasks_in(c, "cancelled"))

    # Teardown done: the server is stopped, the supervisor and its task process groups are killed.
    gone_by = time.monotonic() + 10
    while (left := [pid for pid in pids if alive(pid, cmdline)]) and time.monotonic() < gone_by:
        time.sleep(0.1)
    result["task_processes_left"] = len(left)
    result["sleep_processes_after"] = count_sleeps()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=2000)
    parser.add_argument("--sleep", type=float, default=120, help="seconds each task sleeps (default 120)")
    parser.add_argument("--cancel", action="store_true", help="cancel every task over HTTP before teardown")
    parser.add_argument("--database-url", default=None)
    args = parser.parse_args()
    result = run(args.tasks, args.sleep, args.cancel, args.database_url)
    print(f"machine: {machine()}; database: {args.database_url or 'sqlite (embedded default)'}")
    for key, value in result.items():
        print(f"{key:>34}: {value:.3f}" if isinstance(value, float) else f"{key:>34}: {value}")


if __name__ == "__main__":
    main()
