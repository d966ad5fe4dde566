"""``taskplane_pod_startup_seconds``: from a Job's creation to its container running, per pool.

On prometheus_client's default registry (the API's ``/metrics`` registry must register ``POD_STARTUP`` to serve
it: see ``docs/executor-kubernetes.md``). Import-light on purpose: only prometheus_client.
"""

from __future__ import annotations

from prometheus_client import Histogram

POD_STARTUP = Histogram(
    "taskplane_pod_startup_seconds",
    "Seconds from creating an attempt's Job to its container running (Kubernetes executor)",
    ["pool"],
    buckets=(0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600),
)
