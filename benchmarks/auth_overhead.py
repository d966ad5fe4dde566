"""What authentication and audit cost per request: p50/p99 of ``POST /platform/tasks`` and ``GET /platform/tasks/{id}``.

Usage: ``python benchmarks/auth_overhead.py [-n 1000] [--warmup 100] [--rounds 3] [--baseline-ref 34c61ef]``.

Three servers, measured in the same run, in alternating rounds (A, B, C, A, B, C, ...) so drift hits all alike:

* ``auth + audit``: this code as shipped (API key checked per request, an audit record committed with every
  submission);
* ``no auth, audit``: this code with ``--insecure-no-auth`` (no credential check; audit still written);
* ``baseline``: the commit before authentication and audit existed (``--baseline-ref``), from a temporary
  ``git worktree``, run with the same interpreter and packages.

Each server has one simulated pool (so no process is spawned and tasks stay running); one client sends
requests one at a time over a keep-alive connection. ``POST`` creates a task (its audit record is in the same
transaction); ``GET`` reads one of the tasks created. The first ``--warmup`` requests of each kind are not
counted. The overhead reported is ``(auth + audit) / baseline - 1`` at p50 and p99.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

from common import machine, server

REPO = Path(__file__).resolve().parent.parent
POOLS = json.dumps(
    [{"name": "default", "executor": "simulated", "nodes": [{"count": 8, "cpu": 1000, "memory": "4Ti"}]}]
)
BODY = {"command": ["true"], "simulated_duration": 86400, "resources": {"cpu": "10m", "memory": "1Mi"}}


def percentile(sorted_values: list[float], p: float) -> float:
    """Nearest-rank percentile of an ascending list."""
    rank = max(1, math.ceil(p / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


@contextlib.contextmanager
def baseline_tree(ref: str) -> Iterator[Path]:
    """A detached worktree of ``ref`` (removed afterwards)."""
    where = Path(tempfile.mkdtemp(prefix="tp-baseline-"))
    subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(where), ref], check=True,
                   capture_output=True)  # fmt: skip
    try:
        yield where
    finally:
        subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(where)], check=False,
                       capture_output=True)  # fmt: skip


@contextlib.contextmanager
def python_path(src: Path | None) -> Iterator[None]:
    """Make child processes import taskplane from ``src`` (ahead of the editable install)."""
    old = os.environ.get("PYTHONPATH")
    if src is not None:
        os.environ["PYTHONPATH"] = str(src)
    try:
        yield
    finally:
        if src is not None:
            if old is None:
                os.environ.pop("PYTHONPATH", None)
            else:
                os.environ["PYTHONPATH"] = old


def measure(n: int, warmup: int, src: Path | None, **settings: str) -> dict[str, list[float]]:
    """Seconds per POST and per GET on one fresh server."""
    out: dict[str, list[float]] = {"POST /platform/tasks": [], "GET /platform/tasks/{id}": []}
    with (
        python_path(src),
        server(None, pools=POOLS, **settings) as srv,
        httpx.Client(base_url=srv.url, timeout=60, headers=srv.headers) as c,
    ):
        ids: list[str] = []
        for i in range(warmup + n):
            t0 = time.perf_counter()
            r = c.post("/platform/tasks", json=BODY)
            elapsed = time.perf_counter() - t0
            r.raise_for_status()
            ids.append(r.json()["id"])
            if i >= warmup:
                out["POST /platform/tasks"].append(elapsed)
        for i in range(warmup + n):
            task_id = ids[i % len(ids)]
            t0 = time.perf_counter()
            r = c.get(f"/platform/tasks/{task_id}")
            elapsed = time.perf_counter() - t0
            r.raise_for_status()
            if i >= warmup:
                out["GET /platform/tasks/{id}"].append(elapsed)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-n", type=int, default=1000, help="measured requests of each kind per round")
    parser.add_argument("--warmup", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--baseline-ref", default="34c61ef", help="the commit before authentication and audit")
    args = parser.parse_args()
    configs = ["auth + audit", "no auth, audit", "baseline"]
    samples: dict[str, dict[str, list[float]]] = {c: {} for c in configs}
    with baseline_tree(args.baseline_ref) as tree:
        for _ in range(args.rounds):
            for config in configs:
                if config == "auth + audit":
                    got = measure(args.n, args.warmup, None)
                elif config == "no auth, audit":
                    got = measure(args.n, args.warmup, None, insecure_no_auth="true")
                else:
                    got = measure(args.n, args.warmup, tree / "src")
                for route, values in got.items():
                    samples[config].setdefault(route, []).extend(values)
    print(f"machine: {machine()}; database: sqlite (embedded default); baseline: {args.baseline_ref}")
    print(f"{args.rounds} rounds x {args.n} requests of each kind per server (+{args.warmup} warm-up), one client")
    print(f"{'route':<26} {'server':<16} {'p50 ms':>8} {'p99 ms':>8} {'mean ms':>8}")
    figures: dict[tuple[str, str], tuple[float, float]] = {}
    for route in samples["baseline"]:
        for config in configs:
            ordered = sorted(samples[config][route])
            p50, p99 = percentile(ordered, 50), percentile(ordered, 99)
            figures[(route, config)] = (p50, p99)
            mean = sum(ordered) / len(ordered)
            print(f"{route:<26} {config:<16} {p50 * 1e3:8.2f} {p99 * 1e3:8.2f} {mean * 1e3:8.2f}")
    print()
    for route in samples["baseline"]:
        base50, base99 = figures[(route, "baseline")]
        full50, full99 = figures[(route, "auth + audit")]
        print(
            f"{route:<26} auth + audit vs baseline: p50 {100 * (full50 / base50 - 1):+.1f}%, "
            f"p99 {100 * (full99 / base99 - 1):+.1f}% (target: p99 <= +10%)"
        )


if __name__ == "__main__":
    main()
