"""The simulated executor: nodes that exist only as numbers; attempts "run" for a declared virtual duration.

``SimCluster`` (``cluster.py``) is the pure bookkeeping, also used by benchmark harnesses on a virtual clock;
``SimulatedExecutor`` (``executor.py``) puts it behind the ``Executor`` port on real time scaled by a speed.
"""

from __future__ import annotations

from taskplane.executors.simulated.cluster import SimCluster, SimEnded, SimNode, SimRefusedError, SimRunning
from taskplane.executors.simulated.executor import SimulatedExecutor, SimulatedExecutorConfig

__all__ = [
    "SimCluster",
    "SimEnded",
    "SimNode",
    "SimRefusedError",
    "SimRunning",
    "SimulatedExecutor",
    "SimulatedExecutorConfig",
]
