"""Pools and nodes: named groups of nodes, each pool served by one executor."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field

from taskplane.domain.resources import Resources

DEFAULT_POOL = "default"


class PlacementStrategy(enum.StrEnum):
    """How a pool picks a node among those that fit."""

    BINPACK = "binpack"  # most allocated first: fills nodes, keeps whole nodes free for large tasks
    SPREAD = "spread"  # least allocated first: spreads load


@dataclass(frozen=True, slots=True)
class Node:
    """One node: its size, task limit and labels."""

    name: str
    pool: str
    total: Resources
    max_tasks: int
    labels: Mapping[str, str] = field(default_factory=dict)

    def matches(self, selector: Mapping[str, str]) -> bool:
        """True when every ``selector`` label is set to the same value on this node."""
        labels = self.labels
        return all(labels.get(k) == v for k, v in selector.items())


@dataclass(frozen=True, slots=True)
class Pool:
    """A pool of nodes, served by one executor."""

    name: str
    executor: str  # local, simulated, ...
    placement: PlacementStrategy = PlacementStrategy.BINPACK
    nodes: tuple[Node, ...] = ()

    def total(self) -> Resources:
        """The sum of the nodes' sizes."""
        out = Resources()
        for node in self.nodes:
            out = out + node.total
        return out
