"""The pool's aggregate size: the allocatable of its Ready nodes, summed (pure)."""

from __future__ import annotations

from collections.abc import Iterable

from lightkube.resources.core_v1 import Node

from taskplane.domain.quantities import parse_bytes, parse_millicpu
from taskplane.domain.resources import Resources
from taskplane.errors import InvalidRequestError

GPU = "nvidia.com/gpu"


def is_ready(node: Node) -> bool:
    """The node's ``Ready`` condition is ``True`` (and it is not cordoned)."""
    if node.spec is not None and node.spec.unschedulable:
        return False
    conds = (node.status.conditions if node.status else None) or []
    return any(c.type == "Ready" and c.status == "True" for c in conds)


def compute_capacity(nodes: Iterable[Node]) -> Resources:
    """cpu, memory and ``nvidia.com/gpu`` allocatable of the Ready, schedulable ``nodes``, summed.

    A quantity taskplane cannot parse (an exotic suffix) counts as zero rather than failing the listing.
    """
    total = Resources()
    for node in nodes:
        if not is_ready(node):
            continue
        alloc = (node.status.allocatable if node.status else None) or {}
        try:
            cpu = parse_millicpu(alloc["cpu"]) if "cpu" in alloc else 0
            memory = parse_bytes(alloc["memory"]) if "memory" in alloc else 0
            gpu = int(alloc.get(GPU, "0"))
        except (InvalidRequestError, ValueError):
            continue
        total = total + Resources(millicpu=cpu, memory=memory, gpu=gpu)
    return total
