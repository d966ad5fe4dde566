"""Resource vectors: integer millicores, bytes, GPUs."""

from __future__ import annotations

from dataclasses import dataclass

from taskplane.domain.quantities import format_bytes, format_millicpu


@dataclass(frozen=True, slots=True)
class Resources:
    """A resource vector. All quantities are integers; zero everywhere means best-effort."""

    millicpu: int = 0
    memory: int = 0
    gpu: int = 0

    def __add__(self, other: Resources) -> Resources:
        return Resources(self.millicpu + other.millicpu, self.memory + other.memory, self.gpu + other.gpu)

    def __sub__(self, other: Resources) -> Resources:
        return Resources(self.millicpu - other.millicpu, self.memory - other.memory, self.gpu - other.gpu)

    def fits_in(self, free: Resources) -> bool:
        """True when every quantity is at most the one in ``free``."""
        return self.millicpu <= free.millicpu and self.memory <= free.memory and self.gpu <= free.gpu

    def is_zero(self) -> bool:
        """A zero request: the task is best-effort and bounded only by the per-node task limit."""
        return self.millicpu == 0 and self.memory == 0 and self.gpu == 0

    def shortfall(self, free: Resources) -> list[str]:
        """Names of the quantities that do not fit in ``free``, in a fixed order."""
        names = []
        if self.millicpu > free.millicpu:
            names.append("cpu")
        if self.memory > free.memory:
            names.append("memory")
        if self.gpu > free.gpu:
            names.append("gpu")
        return names

    def describe(self) -> str:
        """Human form, e.g. ``cpu=500m memory=256Mi``."""
        text = f"cpu={format_millicpu(self.millicpu)} memory={format_bytes(self.memory)}"
        return text + (f" gpu={self.gpu}" if self.gpu else "")


ZERO = Resources()
