"""Latency: submit-to-running for single ``sleep 0.05`` tasks, one at a time, on an otherwise idle server.

Usage: ``python benchmarks/latency.py [-n 200] [--warmup 5] [--poll 0.001] [--database-url URL]``.

Each task (default resources) is sent as one ``POST /platform/tasks``; the client then polls
``GET /platform/tasks/{id}``, sleeping 1 ms (``--poll``) between requests, until the task shows ``running`` or
has already ended (the wait endpoint returns only once a task has ended, so it cannot time ``running``). The
next task is submitted only after this one has ended, so every measurement starts from an idle server. Two
figures per task:

* server: the ``running`` event's ``at`` minus the ``created`` event's ``at`` (``/events``, both server clock);
  the ``created -> starting`` and ``starting -> running`` parts are reported too;
* client: from just before the POST is sent until the first GET whose response shows ``running``. This
  includes HTTP round trips and up to one poll interval (the sleep plus one GET).

The first ``--warmup`` tasks are run the same way but not counted. With ``--database-url`` a fresh PostgreSQL
schema is created for the run and dropped afterwards.
"""

from __future__ import annotations

import argparse
import math
import time
from datetime import datetime

import httpx

from common import fresh_database, machine, server

TERMINAL = {"succeeded", "failed", "cancelled", "timed_out"}


def percentile(sorted_values: list[float], p: float) -> float:
    """Nearest-rank percentile of an ascending list."""
    rank = max(1, math.ceil(p / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


def one_task(c: httpx.Client, poll: float) -> tuple[float, dict[str, float], bool]:
    """Run one task; (client seconds, server seconds by span, whether a GET saw ``running``)."""
    started = time.perf_counter()
    resp = c.post("/platform/tasks", json={"command": ["sleep", "0.05"]})
    resp.raise_for_status()
    task_id = resp.json()["id"]
    state = resp.json()["state"]
    while state != "running" and state not in TERMINAL:
        time.sleep(poll)
        state = c.get(f"/platform/tasks/{task_id}").json()["state"]
    client = time.perf_counter() - started
    seen_running = state == "running"
    # Let it end before the next one, so each submission meets an idle server.
    while state not in TERMINAL:
        state = c.get(f"/platform/tasks/{task_id}/wait", params={"timeout": 30}).json()["state"]
    at: dict[str, datetime] = {}
    for event in c.get(f"/platform/tasks/{task_id}/events").json()["items"]:
        at.setdefault(event["type"], datetime.fromisoformat(event["at"]))
    assert state == "succeeded", f"task {task_id} ended {state}"
    spans = {
        "created -> running": (at["running"] - at["created"]).total_seconds(),
        "created -> starting": (at["starting"] - at["created"]).total_seconds(),
        "starting -> running": (at["running"] - at["starting"]).total_seconds(),
    }
    return client, spans, seen_running


def run(n: int, warmup: int, poll: float, database_url: str | None) -> tuple[dict[str, list[float]], int]:
    samples: dict[str, list[float]] = {
        "server created -> running": [],
        "  created -> starting": [],
        "  starting -> running": [],
        "client POST -> GET running": [],
    }
    missed = 0
    with (
        fresh_database(database_url) as url,
        server(url, node_cpu="2", node_memory="8Gi") as srv,
        httpx.Client(base_url=srv.url, timeout=60, headers=srv.headers) as c,
    ):
        for i in range(warmup + n):
            client, spans, seen_running = one_task(c, poll)
            if i < warmup:
                continue
            missed += not seen_running
            samples["server created -> running"].append(spans["created -> running"])
            samples["  created -> starting"].append(spans["created -> starting"])
            samples["  starting -> running"].append(spans["starting -> running"])
            samples["client POST -> GET running"].append(client)
    return samples, missed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-n", "--tasks", type=int, default=200, help="measured tasks (default 200)")
    parser.add_argument("--warmup", type=int, default=5, help="tasks run first and not counted (default 5)")
    parser.add_argument("--poll", type=float, default=0.001, help="client sleep between GETs, seconds (default 0.001)")
    parser.add_argument("--database-url", default=None)
    args = parser.parse_args()
    samples, missed = run(args.tasks, args.warmup, args.poll, args.database_url)
    print(f"machine: {machine()}; database: {args.database_url or 'sqlite (embedded default)'}")
    print(f"tasks: {args.tasks} sequential `sleep 0.05` (+{args.warmup} warm-up), GET every {args.poll * 1000:g} ms")
    print(f"{'latency (ms)':<30} {'p50':>8} {'p90':>8} {'p99':>8} {'max':>8} {'mean':>8}")
    for label, values in samples.items():
        ordered = sorted(values)
        figures = [percentile(ordered, p) for p in (50, 90, 99)] + [ordered[-1], sum(ordered) / len(ordered)]
        print(f"{label:<30} " + " ".join(f"{v * 1000:8.2f}" for v in figures))
    if missed:
        print(f"note: for {missed} task(s) no GET saw `running` (first seen already ended); client figure is then late")


if __name__ == "__main__":
    main()
