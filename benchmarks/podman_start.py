"""Container start latency: through ``PodmanExecutor`` (``start`` -> ``Started``) vs a bare ``podman run -d``.

    python benchmarks/podman_start.py                 # 40 starts of each, alternating, after 3 warm-up rounds
    python benchmarks/podman_start.py -n 100 --global-args "--runtime runc --cgroup-manager=cgroupfs" \\
        --run-args "--ulimit nofile=1024:1024 --ulimit nproc=1024:1024"

Both run the same image and command (``sleep 60``), one at a time, alternating so that the machine's drift hits
both alike. The bare start is ``podman [global] run -d [run args] --network none <image> sleep 60`` until it
returns (podman returns once the runtime has started the process, so the container is running then). The
executor's start is ``start([launch])`` until the ``Started`` event is delivered: its ``podman run`` also carries
labels, limits, the user, ``no-new-privileges`` and the ``k8s-file`` log driver. Containers are removed
between starts, outside the timed span. The image is the tests' offline busybox image (built if missing).

The overhead is ``(executor p50 - bare p50) / bare p50``; the target is at most 10%.
"""

from __future__ import annotations

import argparse
import asyncio
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.support.images import GLOBAL_ARGS, RUN_ARGS, TEST_IMAGE, podman_problem

from taskplane.domain.resources import Resources
from taskplane.executors.podman import PodmanExecutor, PodmanExecutorConfig
from taskplane.services.ports import ExecutorEvent, Launch, Started

COMMAND = ("sleep", "60")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


class Starts:
    """Delivers the ``Started`` of one awaited attempt."""

    def __init__(self) -> None:
        self.waiting: dict[tuple[str, int], asyncio.Future[float]] = {}

    def __call__(self, events: list[ExecutorEvent]) -> None:
        now = time.perf_counter()
        for ev in events:
            fut = self.waiting.pop((ev.task_id, ev.attempt), None)
            if isinstance(ev, Started) and fut is not None and not fut.done():
                fut.set_result(now)


async def run(args: argparse.Namespace) -> None:
    global_args = tuple(shlex.split(args.global_args))
    run_args = tuple(shlex.split(args.run_args))
    instance = f"bench{uuid.uuid4().hex[:8]}"
    scratch = Path(tempfile.mkdtemp(prefix="tp-podman-bench-"))
    config = PodmanExecutorConfig(
        logs_dir=scratch / "logs",
        node_name="bench",
        instance=instance,
        global_args=global_args,
        run_args=run_args,
    )
    executor = PodmanExecutor(config)
    starts = Starts()
    await executor.open(1, starts)
    loop = asyncio.get_running_loop()
    bare_argv = ["podman", *global_args, "run", "-d", *run_args, "--network", "none", TEST_IMAGE, *COMMAND]
    bare: list[float] = []
    ours: list[float] = []
    try:
        for i in range(args.warmup + args.starts):
            # bare podman
            t0 = time.perf_counter()
            done = await asyncio.to_thread(subprocess.run, bare_argv, capture_output=True, check=True)
            bare_s = time.perf_counter() - t0
            cid = done.stdout.decode().strip()
            await asyncio.to_thread(
                subprocess.run, ["podman", *global_args, "rm", "-f", "-t", "0", cid], capture_output=True, check=True
            )
            # through the executor
            key = (f"b{i}", 1)
            fut: asyncio.Future[float] = loop.create_future()
            starts.waiting[key] = fut
            launch = Launch(key[0], 1, COMMAND, {}, None, Resources(), image=TEST_IMAGE)
            t0 = time.perf_counter()
            await executor.start([launch])
            ours_s = await fut - t0
            await executor.stop(key[0], 1, grace=0)
            for _ in range(200):
                if executor._attempts[key].exited is not None:
                    break
                await asyncio.sleep(0.05)
            await executor.ack([key])
            if i >= args.warmup:
                bare.append(bare_s)
                ours.append(ours_s)
    finally:
        await executor.close()
        subprocess.run(
            ["podman", *global_args, "rm", "-f", "-t", "0", "--filter", f"label=taskplane.instance={instance}"],
            capture_output=True,
            check=False,
        )
        shutil.rmtree(scratch, ignore_errors=True)
    rows = [("bare podman run -d", bare), ("PodmanExecutor start -> Started", ours)]
    print(f"{args.starts} starts each, image {TEST_IMAGE}, command {' '.join(COMMAND)}")
    print(f"{'':34} {'p50 ms':>8} {'p99 ms':>8} {'mean ms':>8}")
    for name, values in rows:
        print(
            f"{name:34} {percentile(values, 0.5) * 1000:8.1f} {percentile(values, 0.99) * 1000:8.1f}"
            f" {statistics.fmean(values) * 1000:8.1f}"
        )
    overhead = (percentile(ours, 0.5) - percentile(bare, 0.5)) / percentile(bare, 0.5)
    print(f"platform overhead at p50: {overhead * 100:+.1f}% of the bare start (target <= 10%)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-n", "--starts", type=int, default=40, help="measured starts of each kind (default 40)")
    parser.add_argument("--warmup", type=int, default=3, help="rounds run first and not counted (default 3)")
    parser.add_argument("--global-args", default=" ".join(GLOBAL_ARGS), help="podman's global flags on this host")
    parser.add_argument("--run-args", default=" ".join(RUN_ARGS), help="flags after 'run' on this host")
    args = parser.parse_args()
    problem = podman_problem()
    if problem is not None:
        sys.exit(f"cannot benchmark podman here: {problem}")
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
