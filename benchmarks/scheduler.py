"""The scheduler on 1,000 simulated nodes and 50 tenants: throughput, utilization, fairness, memory.

    .venv/bin/python benchmarks/scheduler.py            # the full run (about 17 minutes on the development VM)
    .venv/bin/python benchmarks/scheduler.py --quick    # smaller counts: a few minutes
    .venv/bin/python benchmarks/scheduler.py --only throughput,memory --out /tmp/s.json

Everything runs through ``executors/simulated/dryrun.DryRun``: the engine's ``QueueSet``, ``Ledger``,
``scheduler.schedule`` and plan application, on a ``SimCluster`` of virtual nodes and a virtual clock, holding
one domain ``Task`` per task as the engine does. No server, store or executor I/O.

Cluster: 1,000 nodes, 50% 8-core, 35% 16-core, 15% 64-core, 4 GiB per core (19,200 cores, 75 TiB). Tenants:
50, weights 1/2/3/4 in turn, each with a nominal cpu and memory quota equal to its weighted share of the
cluster, borrowing on. Requests: 60% small (0.5-1 core), 30% medium (2-4), 10% large (8-16), 2 or 4 GiB per
core; durations Pareto(alpha 1.5) x 20 s, capped at 1 h (mean about 57 s). Policy: the server's (binpack,
fair share, backfill, preemption, 1,000 placements per cycle).

- throughput: placements per second of the scheduling path (snapshot + schedule + apply, timed around each
  cycle) in steady state: the cluster is full, each round the clock moves until 500 tasks have ended, the queue
  is topped up to its depth (1,000 / 100,000 / 1,000,000), and cycles place what fits.
- utilization: a backlog submitted at once and run to the end; the allocated share of each resource while
  the queue is non-empty (ends counted at their exact time), under the default policy and under the first-fit
  FIFO baseline ``Policy(first_fit=True, fair_share=False, backfill=False)``.
- fairness: every tenant kept backlogged (each queue topped up), dominant shares averaged over the window after
  a warm-up; compared with each tenant's weighted fair share of what is allocated, and of the whole cluster.
- memory: RSS of this process before and after 1,000,000 tasks are queued in the scheduler's structures.

Prints a table and writes the figures as JSON (``benchmarks/results/scheduler.json`` by default).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import random
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from common import machine, memory_kib
from taskplane.domain.pool import Node, Pool
from taskplane.domain.resources import Resources
from taskplane.domain.tenant import Quota, Tenant
from taskplane.executors.simulated.dryrun import DEFAULT_POLICY, DryRun, DryRunReport, Submission
from taskplane.scheduler import Policy

GI = 1 << 30
NODES = 1000
TENANTS = 50
POOL = "default"
FIRST_FIT = replace(DEFAULT_POLICY, first_fit=True, fair_share=False, backfill=False)
RESULTS = Path(__file__).resolve().parent / "results" / "scheduler.json"


# ------------------------------------------------------------------------------------------- the set-up


def cluster() -> Pool:
    nodes = []
    for i in range(NODES):
        slot = i % 20
        cores = 8 if slot < 10 else 16 if slot < 17 else 64
        nodes.append(Node(f"node-{i:04d}", POOL, Resources(cores * 1000, cores * 4 * GI), 256))
    return Pool(POOL, "simulated", nodes=tuple(nodes))


def tenants(pool: Pool) -> list[Tenant]:
    weights = [1 + i % 4 for i in range(TENANTS)]
    total = pool.total()
    out = []
    for i, weight in enumerate(weights):
        share = weight / sum(weights)
        quota = Quota(millicpu=int(total.millicpu * share), memory=int(total.memory * share))
        out.append(Tenant(f"tenant-{i:02d}", quota=quota, weight=weight))
    return out


class Workload:
    """Random tasks of the mix in the module docstring, each with its own ``Resources`` (as the store gives)."""

    def __init__(self, names: list[str], seed: int = 1) -> None:
        self.rng = random.Random(seed)
        self.names = names

    def task(self, tenant: str | None = None, at: float = 0.0) -> Submission:
        rng = self.rng
        kind = rng.random()
        if kind < 0.6:
            cpu = rng.choice((500, 1000))
        elif kind < 0.9:
            cpu = rng.choice((2000, 4000))
        else:
            cpu = rng.choice((8000, 16000))
        memory = cpu * rng.choice((2, 4)) * GI // 1000
        duration = min(3600.0, 20.0 * rng.paretovariate(1.5))
        return Submission(at, tenant or rng.choice(self.names), POOL, Resources(cpu, memory), duration=duration)


def rss_mib() -> float:
    return memory_kib(os.getpid())[0] / 1024


def fill(dry: DryRun, depth: int, make: Callable[[], Submission]) -> None:
    """Queue tasks and place them until the cluster is full and ``depth`` tasks still wait."""
    while True:
        while dry.queued < depth:
            dry.submit(make())
        dry.settle()
        if dry.queued >= depth:
            return


def advance_until_ended(dry: DryRun, count: int) -> None:
    ended = 0
    while ended < count:
        end = dry.next_end()
        if end is None:
            return
        ended += dry.advance(end)


# ----------------------------------------------------------------------------------------------- phases


class GcTimer:
    """Time spent in the cyclic garbage collector, and how many full (generation 2) collections ran."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self.full = 0
        self._start = 0.0
        gc.callbacks.append(self._callback)

    def _callback(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._start = time.perf_counter()
        else:
            self.seconds += time.perf_counter() - self._start
            self.full += info["generation"] == 2

    def close(self) -> None:
        gc.callbacks.remove(self._callback)


def throughput(depth: int, placements: int, batch: int = 500, freeze: bool = False) -> dict[str, Any]:
    pool = cluster()
    names = tenants(pool)
    work = Workload([t.name for t in names], seed=depth)
    dry = DryRun([pool], names)
    started = time.perf_counter()
    fill(dry, depth, work.task)
    filled = time.perf_counter() - started
    before = dry.report()
    rounds = 0
    timer = GcTimer()
    window = time.perf_counter()
    while dry.placements - before.placements < placements:
        advance_until_ended(dry, batch)
        while dry.queued < depth:
            dry.submit(work.task())
        if freeze:
            gc.freeze()  # what the engine could do after taking in a batch: the queued tasks are long-lived
        dry.settle()
        rounds += 1
    window = time.perf_counter() - window
    timer.close()
    after = dry.report()
    placed = after.placements - before.placements
    wall = after.scheduler_wall_seconds - before.scheduler_wall_seconds
    cpu = after.scheduler_cpu_seconds - before.scheduler_cpu_seconds
    split = {k: after.scheduler_split[k] - before.scheduler_split[k] for k in after.scheduler_split}
    return {
        "depth": depth,
        "placements": placed,
        "cycles": after.cycles - before.cycles,
        "rounds": rounds,
        "placements_per_s": placed / wall,
        "placements_per_cpu_s": placed / cpu,
        "us_per_placement": {k: v / placed * 1e6 for k, v in split.items()},
        "gc_s_in_window": timer.seconds,
        "gc_full_collections_in_window": timer.full,
        "window_s": window,
        "gc_frozen": freeze,
        "running": dry.running,
        "queued_after": dry.queued,
        "fill_s": filled,
        "rss_mib": rss_mib(),
    }


def utilization(tasks: int, policy: Policy, tick: float) -> dict[str, Any]:
    pool = cluster()
    names = tenants(pool)
    work = Workload([t.name for t in names], seed=7)
    dry = DryRun([pool], names, policy, tick=tick)
    started = time.perf_counter()
    report = dry.run([work.task() for _ in range(tasks)])
    return {
        "tasks": tasks,
        "tick_s": tick,
        "utilization_while_queued": dict(report.utilization),
        "bottleneck": report.bottleneck,
        "bottleneck_utilization": report.utilization[report.bottleneck] if report.bottleneck else None,
        "utilization_overall": dict(report.utilization_overall),
        "queued_virtual_s": report.queued_seconds,
        "makespan_virtual_s": report.ended - report.started,
        "preemptions": report.preemptions,
        "churned": report.churned,
        "wait_p50_s": _pooled(report, "wait_p50"),
        "wait_p99_s": _pooled(report, "wait_p99"),
        "placements_per_s": report.placements / report.scheduler_wall_seconds,
        "run_s": time.perf_counter() - started,
    }


def _pooled(report: DryRunReport, field: str) -> float | None:
    """The median over tenants of a per-tenant wait figure."""
    values = sorted(v for t in report.tenants if (v := getattr(t, field)) is not None)
    return values[len(values) // 2] if values else None


def fairness(warmup: float, window: float, backlog: int, tick: float) -> dict[str, Any]:
    pool = cluster()
    names = tenants(pool)
    work = Workload([t.name for t in names], seed=11)
    dry = DryRun([pool], names, tick=tick)

    def top_up() -> None:
        for t in names:
            while dry.queued_of(t.name) < backlog:
                dry.submit(work.task(t.name))

    def run_until(end: float) -> None:
        while dry.now < end:
            top_up()
            dry.settle()
            nxt = dry.next_end()
            dry.advance(end if nxt is None else min(nxt, end))

    run_until(warmup)
    first = dry.report()
    run_until(warmup + window)
    top_up()
    last = dry.report()
    span = last.all_backlogged_seconds - first.all_backlogged_seconds
    weights = sum(t.weight for t in names)
    rows = []
    for a, b in zip(first.tenants, last.tenants, strict=True):
        assert a.tenant == b.tenant and a.share_all_backlogged is not None and b.share_all_backlogged is not None
        share = (
            b.share_all_backlogged * last.all_backlogged_seconds - a.share_all_backlogged * first.all_backlogged_seconds
        ) / span
        rows.append({"tenant": b.tenant, "weight": b.weight, "share": share})
    allocated = sum(r["share"] for r in rows)
    for r in rows:
        r["fair_of_allocated"] = r["weight"] / weights * allocated
        r["fair_of_cluster"] = r["weight"] / weights
        r["deviation"] = (r["share"] - r["fair_of_allocated"]) / r["fair_of_allocated"]
        r["deviation_of_cluster"] = (r["share"] - r["fair_of_cluster"]) / r["fair_of_cluster"]
    worst = max(rows, key=lambda r: abs(r["deviation"]))
    worst_cluster = max(rows, key=lambda r: abs(r["deviation_of_cluster"]))
    return {
        "warmup_virtual_s": warmup,
        "window_virtual_s": span,
        "backlog_per_tenant": backlog,
        "tick_s": tick,
        "allocated_dominant_share_sum": allocated,
        "max_relative_deviation": abs(worst["deviation"]),
        "max_absolute_deviation": max(abs(r["share"] - r["fair_of_allocated"]) for r in rows),
        "worst_tenant": worst["tenant"],
        "max_relative_deviation_of_cluster": abs(worst_cluster["deviation_of_cluster"]),
        "max_absolute_deviation_of_cluster": max(abs(r["share"] - r["fair_of_cluster"]) for r in rows),
        "preemptions": last.preemptions - first.preemptions,
        "churned": last.churned - first.churned,
        "tenants": rows,
    }


def memory(tasks: int) -> dict[str, Any]:
    gc.collect()
    baseline = rss_mib()
    pool = cluster()
    names = tenants(pool)
    work = Workload([t.name for t in names], seed=3)
    dry = DryRun([pool], names)
    gc.collect()
    empty = rss_mib()
    started = time.perf_counter()
    for _ in range(tasks):
        dry.submit(work.task())
    submitted = time.perf_counter() - started
    gc.collect()
    full = rss_mib()
    queued = dry.queued
    cycle_started = time.perf_counter()
    dry.cycle()  # one cycle with the whole queue behind it: fills the empty cluster up to 1,000 placements
    first_cycle = time.perf_counter() - cycle_started
    return {
        "tasks": queued,
        "rss_before_mib": baseline,
        "rss_empty_dry_run_mib": empty,
        "rss_queued_mib": full,
        "increase_mib": full - empty,
        "bytes_per_queued_task": (full - empty) * 1024 * 1024 / tasks,
        "submit_s": submitted,
        "first_cycle_s": first_cycle,
    }


# ------------------------------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smaller counts (a few minutes)")
    parser.add_argument("--only", default="memory,throughput,utilization,fairness", help="phases, comma-separated")
    parser.add_argument("--out", type=Path, default=RESULTS, help=f"JSON results (default {RESULTS})")
    parser.add_argument("--placements", type=int, default=None, help="placements measured per depth")
    parser.add_argument("--gc-freeze", action="store_true", help="throughput: gc.freeze() after each refill")
    args = parser.parse_args()
    phases = set(args.only.split(","))
    quick = args.quick
    depths = (1_000, 100_000, 1_000_000)
    results: dict[str, Any] = {"machine": machine(), "quick": quick, "command": " ".join(sys.argv)}

    if "memory" in phases:  # first: a fresh process, so the baseline is not inflated by earlier phases
        results["memory"] = memory(100_000 if quick else 1_000_000)
        m = results["memory"]
        print(
            f"memory: {m['tasks']:,} queued: RSS {m['rss_queued_mib']:,.0f} MiB, +{m['increase_mib']:,.0f} MiB over "
            f"the empty dry run ({m['bytes_per_queued_task']:,.0f} B/task); baseline {m['rss_before_mib']:,.0f} MiB",
            flush=True,
        )
        gc.collect()
    if "throughput" in phases:
        rows = []
        for depth in depths:
            row = throughput(depth, args.placements or (20_000 if quick else 300_000), freeze=args.gc_freeze)
            rows.append(row)
            split = ", ".join(f"{k} {v:.1f}" for k, v in row["us_per_placement"].items())
            print(
                f"throughput at depth {depth:>9,}: {row['placements_per_s']:>8,.0f} placements/s "
                f"({row['placements_per_cpu_s']:,.0f}/CPU-s; us/placement: {split}); {row['running']:,} running, "
                f"GC {row['gc_s_in_window']:.1f}s of {row['window_s']:.1f}s "
                f"({row['gc_full_collections_in_window']} full); "
                f"fill {row['fill_s']:.1f}s, RSS {row['rss_mib']:,.0f} MiB",
                flush=True,
            )
            gc.collect()
        results["throughput"] = {
            "rows": rows,
            "ratio_1m_to_1k": rows[-1]["placements_per_s"] / rows[0]["placements_per_s"],
        }
    if "utilization" in phases:
        count = 30_000 if quick else 200_000
        results["utilization"] = {
            "default": utilization(count, DEFAULT_POLICY, tick=0.25),
            "first_fit_fifo": utilization(count, FIRST_FIT, tick=0.25),
        }
        for name, u in results["utilization"].items():
            print(
                f"utilization ({name}): {u['bottleneck']} {u['bottleneck_utilization']:.2%} while queued "
                f"({', '.join(f'{k} {v:.2%}' for k, v in u['utilization_while_queued'].items())}); makespan "
                f"{u['makespan_virtual_s']:,.0f}s virtual; {u['preemptions']} preemptions ({u['churned']} churned); "
                f"{u['run_s']:.0f}s",
                flush=True,
            )
    if "fairness" in phases:
        f = fairness(warmup=600.0, window=1200.0 if quick else 3600.0, backlog=100, tick=0.5)
        results["fairness"] = f
        print(
            f"fairness: max deviation from weighted fair share of what is allocated {f['max_relative_deviation']:.2%} "
            f"relative ({f['worst_tenant']}), {f['max_absolute_deviation']:.4f} absolute; of the whole cluster "
            f"{f['max_relative_deviation_of_cluster']:.2%} / {f['max_absolute_deviation_of_cluster']:.4f}; "
            f"{f['window_virtual_s']:,.0f}s virtual window, {f['preemptions']} preemptions",
            flush=True,
        )

    print()
    print(f"machine: {machine()}")
    print(table(results))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nwritten: {args.out}")


def table(results: dict[str, Any]) -> str:
    lines = [f"{'figure':<58} {'result':>16}  {'target':<12} met?"]

    def row(name: str, value: str, target: str = "", met: bool | None = None) -> None:
        mark = "" if met is None else "yes" if met else "NO"
        lines.append(f"{name:<58} {value:>16}  {target:<12} {mark}")

    if "throughput" in results:
        for r in results["throughput"]["rows"]:
            rate = r["placements_per_s"]
            row(f"placements/s, {r['depth']:,} queued", f"{rate:,.0f}", ">= 10,000", rate >= 10_000)
        ratio = results["throughput"]["ratio_1m_to_1k"]
        row("rate at deepest / rate at 1,000 queued", f"{ratio:.2f}", ">= 0.8", ratio >= 0.8)
    if "utilization" in results:
        for name, u in results["utilization"].items():
            value = u["bottleneck_utilization"] or 0.0
            label = f"utilization of {u['bottleneck']} while queued ({name})"
            row(
                label,
                f"{value:.1%}",
                ">= 95%" if name == "default" else "",
                value >= 0.95 if name == "default" else None,
            )
    if "fairness" in results:
        f = results["fairness"]
        dev = f["max_relative_deviation"]
        row("fairness: max |share - fair| / fair (of allocated)", f"{dev:.1%}", "<= 5%", dev <= 0.05)
        row("fairness: max |share - fair| (absolute)", f"{f['max_absolute_deviation']:.4f}")
        row("fairness: max relative deviation (of whole cluster)", f"{f['max_relative_deviation_of_cluster']:.1%}")
    if "memory" in results:
        m = results["memory"]
        gib = m["rss_queued_mib"] / 1024
        row(f"RSS with {m['tasks']:,} queued", f"{gib:.2f} GiB", "<= 2 GB", m["rss_queued_mib"] * 1024 * 1024 <= 2e9)
        row("  increase over the empty dry run", f"{m['increase_mib'] / 1024:.2f} GiB")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
