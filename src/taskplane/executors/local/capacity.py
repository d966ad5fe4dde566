"""What this machine offers: CPU, memory and how many tasks the supervisor can track."""

from __future__ import annotations

import os
import resource

from taskplane.executors.local.cgroups import own_cpu_limit, own_memory_limit

MAX_TASKS_CEILING = 10_000
FD_RESERVE = 512  # descriptors kept for the supervisor itself: socket, clients, journal, cgroup files


def detect_millicpu() -> int:
    """CPUs this process may run on, in millicores, lowered to its own cgroup's CPU quota if any."""
    cpus = len(os.sched_getaffinity(0)) * 1000
    quota = own_cpu_limit()
    return min(cpus, quota) if quota else cpus


def detect_memory() -> int:
    """``MemTotal`` from ``/proc/meminfo``, lowered to this process's own cgroup memory limit if any."""
    total = 0
    with open("/proc/meminfo", encoding="ascii") as fh:
        for line in fh:
            if line.startswith("MemTotal:"):
                total = int(line.split()[1]) * 1024
                break
    limit = own_memory_limit()
    return min(total, limit) if limit else total


def default_max_tasks() -> int:
    """One pidfd per task: ``min(10,000, RLIMIT_NOFILE soft - 512)``."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return MAX_TASKS_CEILING
    return max(1, min(MAX_TASKS_CEILING, soft - FD_RESERVE))
