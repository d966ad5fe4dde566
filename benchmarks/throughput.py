"""Throughput: 2,000 ``true`` tasks, concurrency 2, submitted over HTTP, until all are recorded succeeded.

Reported as a ratio to the process-creation floor ``seq 2000 | xargs -P2 -n1 sh -c true`` measured in the
same run. Usage: ``python benchmarks/throughput.py [--tasks 2000] [--database-url URL]``.
"""

from __future__ import annotations

import argparse
import time

import httpx

from common import cpu_seconds, floor_seconds, fresh_database, machine, server, supervisor_pid


def count_succeeded(c: httpx.Client) -> int:
    done, cursor = 0, None
    while True:
        params: dict[str, str | int] = {"state": "succeeded", "limit": 1000}
        if cursor:
            params["cursor"] = cursor
        page = c.get("/platform/tasks", params=params).json()
        done += len(page["items"])
        cursor = page["next_cursor"]
        if not cursor:
            return done


def run(tasks: int, database_url: str | None) -> dict[str, float]:
    floor = floor_seconds(tasks)
    # Default requests (1 cpu each) on a 2-cpu node: exactly two run at once.
    with (
        fresh_database(database_url) as url,
        server(url, node_cpu="2", node_memory="8Gi") as srv,
        httpx.Client(base_url=srv.url, timeout=60, headers=srv.headers) as c,
    ):
        sup = supervisor_pid(srv)
        assert srv.proc is not None and sup is not None
        cpu_before = (cpu_seconds(srv.proc.pid), cpu_seconds(sup))
        started = time.perf_counter()
        ids: list[str] = []
        for offset in range(0, tasks, 1000):
            body = {"tasks": [{"command": ["true"]}] * min(1000, tasks - offset)}
            resp = c.post("/platform/tasks/batch", json=body)
            resp.raise_for_status()
            ids += [t["id"] for t in resp.json()["tasks"]]
        submitted = time.perf_counter() - started
        while True:
            cap = c.get("/platform/capacity").json()
            if cap["pending_tasks"] == 0 and cap["running_tasks"] == 0:
                break
            time.sleep(0.01)
        # The engine's counts run ahead of the database by one group commit: the clock stops only when every
        # task is durably recorded as succeeded (the listing reads the database).
        while (done := count_succeeded(c)) < tasks:
            time.sleep(0.01)
        elapsed = time.perf_counter() - started
        server_cpu = cpu_seconds(srv.proc.pid) - cpu_before[0]
        supervisor_cpu = cpu_seconds(sup) - cpu_before[1]
        assert done == tasks, f"{done} of {tasks} succeeded"
    return {
        "tasks": tasks,
        "floor_s": floor,
        "floor_tasks_per_s": tasks / floor,
        "taskplane_s": elapsed,
        "taskplane_tasks_per_s": tasks / elapsed,
        "submit_s": submitted,
        "ratio_to_floor": floor / elapsed,
        "server_cpu_ms_per_task": server_cpu / tasks * 1000,
        "supervisor_cpu_ms_per_task": supervisor_cpu / tasks * 1000,
        "floor_wall_ms_per_task_per_slot": floor / tasks * 2 * 1000,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tasks", type=int, default=2000)
    parser.add_argument("--database-url", default=None)
    args = parser.parse_args()
    result = run(args.tasks, args.database_url)
    print(f"machine: {machine()}; database: {args.database_url or 'sqlite (embedded default)'}")
    for key, value in result.items():
        print(f"{key:>24}: {value:.3f}" if isinstance(value, float) else f"{key:>24}: {value}")


if __name__ == "__main__":
    main()
