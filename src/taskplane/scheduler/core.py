r"""One scheduling cycle, readable top to bottom.

    snapshot (nodes: total, allocated, task count)      pending candidates, already in queue order
                     \\                                  /   (priority high->low, then FIFO by seq)
                      +----------> schedule() <--------+
                                      |
        1. skip candidates that can never fit any node (they get reason ``never_fits``)
        2. take candidates in order; place each on the node with the least free room that fits it
           (bin packing); best-effort (zero-request) tasks count only against ``max_tasks``
        3. stop at the first candidate that fits nowhere now: it is the blocked head, and everything
           behind it waits (strict priority/FIFO; backfill arrives with the full scheduler)
                                      |
                                      v
                     Plan(placements, blocked head + reason, never_fits)

``pending`` is consumed lazily, so a cycle costs O(placements), not O(queue length).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from taskplane.domain.resources import Resources
from taskplane.domain.task import PendingReason


@dataclass(frozen=True, slots=True)
class NodeSnapshot:
    """What one node has and what is already allocated on it."""

    name: str
    total: Resources
    allocated: Resources
    tasks: int
    max_tasks: int

    @property
    def free(self) -> Resources:
        """Unallocated resources."""
        return self.total - self.allocated


@dataclass(frozen=True, slots=True)
class Candidate:
    """A task waiting to be placed."""

    task_id: str
    resources: Resources


@dataclass(frozen=True, slots=True)
class Placement:
    """Run ``task_id`` on ``node``."""

    task_id: str
    node: str


@dataclass(frozen=True, slots=True)
class Plan:
    """The outcome of one cycle."""

    placements: list[Placement] = field(default_factory=list)
    blocked: tuple[str, PendingReason] | None = None  # the head that fits nowhere now
    never_fits: list[tuple[str, PendingReason]] = field(default_factory=list)


def _can_ever_fit(resources: Resources, nodes: Sequence[NodeSnapshot]) -> bool:
    return any(resources.fits_in(node.total) for node in nodes)


def _blocked_reason(resources: Resources, nodes: Sequence[NodeSnapshot]) -> PendingReason:
    # Report the node that comes closest: the one short of the fewest quantities.
    best: tuple[int, NodeSnapshot, list[str]] | None = None
    for node in nodes:
        short = ["tasks"] if node.tasks >= node.max_tasks else resources.shortfall(node.free)
        if best is None or len(short) < best[0]:
            best = (len(short), node, short)
    if best is None:
        return PendingReason("no_nodes", "no node is available")
    _, node, short = best
    if short == ["tasks"]:
        return PendingReason(
            "task_limit", f"node {node.name} runs its limit of {node.max_tasks} tasks", resource="tasks"
        )
    first = short[0]
    free, total = node.free, node.total
    detail = {
        "cpu": f"cpu: requests {resources.millicpu}m, free {free.millicpu}m of {total.millicpu}m",
        "memory": f"memory: requests {resources.memory} bytes, free {free.memory} of {total.memory}",
        "gpu": f"gpu: requests {resources.gpu}, free {free.gpu} of {total.gpu}",
    }[first]
    return PendingReason("no_capacity", f"waiting for capacity on {node.name}: {detail}", resource=first)


def schedule(nodes: Sequence[NodeSnapshot], pending: Iterable[Candidate]) -> Plan:
    """Place pending candidates (given in queue order) onto nodes; see the module docstring."""
    free = {node.name: node.free for node in nodes}
    count = {node.name: node.tasks for node in nodes}
    limit = {node.name: node.max_tasks for node in nodes}
    plan = Plan()
    for cand in pending:
        # 1. a request larger than every node never runs; it must not block the queue
        if not _can_ever_fit(cand.resources, nodes):
            plan.never_fits.append(
                (
                    cand.task_id,
                    PendingReason("never_fits", f"requests {cand.resources.describe()}; no node is that large"),
                )
            )
            continue
        # 2. bin packing: the fitting node with the least free room left
        best: str | None = None
        for node in nodes:
            name = node.name
            if count[name] >= limit[name] or not cand.resources.fits_in(free[name]):
                continue
            if best is None or (free[name].millicpu, free[name].memory) < (free[best].millicpu, free[best].memory):
                best = name
        if best is None:
            # 3. strict order: the head waits and so does everyone behind it
            current = [NodeSnapshot(n.name, n.total, n.total - free[n.name], count[n.name], n.max_tasks) for n in nodes]
            return Plan(plan.placements, (cand.task_id, _blocked_reason(cand.resources, current)), plan.never_fits)
        free[best] = free[best] - cand.resources
        count[best] += 1
        plan.placements.append(Placement(cand.task_id, best))
    return plan
