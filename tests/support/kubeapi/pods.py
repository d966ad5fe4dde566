"""Pod-side helpers of the double: a container's log buffer, a pod's requests and phase, a node's readiness."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from taskplane.domain.quantities import parse_bytes, parse_millicpu
from tests.support.kubeapi.store import Obj


@dataclass
class PodLog:
    """A container's output, appended as it comes: merged (``All``) and per stream; followers wait on ``changed``."""

    data: bytearray = field(default_factory=bytearray)
    streams: dict[str, bytearray] = field(default_factory=lambda: {"Stdout": bytearray(), "Stderr": bytearray()})
    done: bool = False
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    cuts: int = 0  # ``cut`` calls: live follows end (cleanly) when it changes

    def append(self, chunk: bytes, stream: str = "Stdout") -> None:
        """Add output of one stream and wake followers."""
        self.data += chunk
        self.streams[stream] += chunk
        self.changed.set()

    def view(self, stream: str | None) -> bytearray:
        """The merged log (``All`` or ``None``) or one stream's."""
        return self.data if stream in (None, "All") else self.streams[stream]

    def cut(self) -> None:
        """End the live ``follow`` streams cleanly while the container runs (a kubelet restart, a proxy)."""
        self.cuts += 1
        self.changed.set()

    def finish(self) -> None:
        """The container ended: followers drain and stop."""
        self.done = True
        self.changed.set()


def requests_of(pod: Obj) -> tuple[int, int, int]:
    """The pod's (millicpu, memory, gpu) requests, summed over its containers."""
    cpu = mem = gpu = 0
    for c in pod["spec"]["containers"]:
        req = (c.get("resources") or {}).get("requests") or {}
        cpu += parse_millicpu(req["cpu"]) if "cpu" in req else 0
        mem += parse_bytes(req["memory"]) if "memory" in req else 0
        gpu += int(req.get("nvidia.com/gpu", 0))
    return cpu, mem, gpu


def terminal(pod: Obj) -> bool:
    """The pod reached ``Succeeded`` or ``Failed``."""
    return pod.get("status", {}).get("phase") in ("Succeeded", "Failed")


def node_ready(node: Obj) -> bool:
    """True when the node's ``Ready`` condition is ``True``."""
    conds = node.get("status", {}).get("conditions") or []
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conds)
