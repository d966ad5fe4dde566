"""KubernetesExecutor throughput against the in-process Kubernetes API double, and API requests per attempt.

    .venv/bin/python benchmarks/kubernetes_jobs.py                    # 2,000 launches, batches of 100
    .venv/bin/python benchmarks/kubernetes_jobs.py --launches 5000 --batch 500 --tenants 4

Two modes, both in one process (the executor and the double share one event loop, so the figures include the
double's own work: a real API server would run elsewhere):

- ``api``: the double's kubelet is off: pods are created and scheduled but never run. Measures the executor's
  create path only (``start`` of every launch, namespace setup included): Jobs created per second.
- ``cycle``: the kubelet succeeds every pod at once (no process). Measures whole attempts: create, the watch
  delivering the pod running and the Job complete, the exit, and ``ack`` deleting the Job.

Targets: >= 200 Jobs/s created against the double; <= 3 API writes per attempt (namespace setup amortized).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import machine
from tests.support.kubeapi import WRITE_METHODS, KubeApiDouble
from tests.support.kubeapi.harness import KubeRecorder, kube_config, kube_launch

from taskplane.executors.kubernetes import KubernetesExecutor


async def run(mode: str, launches: int, batch: int, tenants: int) -> dict[str, float]:
    double = KubeApiDouble(kubelet="off" if mode == "api" else "instant")
    double.bind()
    double.cluster.add_node("node-a", cpu="100000", memory="100000Gi")
    with tempfile.TemporaryDirectory(prefix="tp-kbench-") as logs:
        executor = KubernetesExecutor(kube_config(Path(logs), capacity_refresh=3600.0), client=double.client())
        rec = KubeRecorder()
        await executor.open(1, rec)
        opened = len(double.requests)
        items = [kube_launch(f"b{i:06d}", "true", tenant=f"tenant-{i % tenants}") for i in range(launches)]
        t0 = time.perf_counter()
        for i in range(0, launches, batch):
            await executor.start(items[i : i + batch])
        created = time.perf_counter() - t0
        result = {"launches": launches, "create_s": created, "jobs_per_s": launches / created}
        if mode == "cycle":
            keys = [(la.task_id, 1) for la in items]
            await rec.until(lambda: all(k in rec.exited for k in keys), timeout=600)
            await executor.ack(keys)
            total = time.perf_counter() - t0
            result.update(cycle_s=total, attempts_per_s=launches / total)
            failed = sum(1 for k in keys if rec.exited[k].outcome.exit_code != 0)
            result["failed"] = failed
        requests = double.requests[opened:]
        writes = [r for r in requests if r[0] in WRITE_METHODS]
        result.update(requests_per_attempt=len(requests) / launches, writes_per_attempt=len(writes) / launches)
        await executor.close()
        await double.shutdown()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--launches", type=int, default=2000)
    parser.add_argument("--batch", type=int, default=100, help="launches per start() call")
    parser.add_argument("--tenants", type=int, default=4)
    parser.add_argument("--mode", choices=["api", "cycle", "both"], default="both")
    args = parser.parse_args()
    modes = ["api", "cycle"] if args.mode == "both" else [args.mode]
    print(f"{machine()}; {args.launches} launches in start() batches of {args.batch}, {args.tenants} tenants")
    print(
        f"{'mode':<6} {'launches':>8} {'create s':>9} {'Jobs/s':>8} {'cycle s':>8} {'attempts/s':>10} "
        f"{'req/attempt':>11} {'writes/attempt':>14}"
    )
    for mode in modes:
        r = asyncio.run(run(mode, args.launches, args.batch, args.tenants))
        cycle = f"{r['cycle_s']:8.2f} {r['attempts_per_s']:10.0f}" if "cycle_s" in r else f"{'-':>8} {'-':>10}"
        print(
            f"{mode:<6} {r['launches']:>8.0f} {r['create_s']:9.2f} {r['jobs_per_s']:8.0f} {cycle} "
            f"{r['requests_per_attempt']:11.2f} {r['writes_per_attempt']:14.2f}"
        )


if __name__ == "__main__":
    main()
