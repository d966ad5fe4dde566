"""Run every benchmark of the foundation issue in turn (``make bench``); figures go in docs/benchmarks.md.

Usage: ``python benchmarks/run_all.py [--database-url URL]``. Each script can also run on its own.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--database-url", default=None)
    args = parser.parse_args()
    extra = ["--database-url", args.database_url] if args.database_url else []
    runs = [
        ["throughput.py"],
        ["latency.py"],
        ["concurrency.py", "--tasks", "2000"],
        ["concurrency.py", "--tasks", "10000"],
        ["supervisor_cost.py"],
        ["scheduler.py"],
        ["auth_overhead.py"],
        ["state.py"],
        ["podman_start.py"],
        ["kubernetes_jobs.py"],
    ]
    # Their own fixed set-ups (state.py's --database-url is for taskplane's state store: passed like the others).
    no_database = {"supervisor_cost.py", "scheduler.py", "auth_overhead.py", "podman_start.py", "kubernetes_jobs.py"}
    for run in runs:
        command = [sys.executable, str(HERE / run[0]), *run[1:]]
        if run[0] not in no_database:
            command += extra
        print(f"\n$ {' '.join(command[1:])}", flush=True)
        subprocess.run(command, check=True)


if __name__ == "__main__":
    main()
