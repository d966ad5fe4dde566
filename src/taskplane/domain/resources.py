"""Resource vectors: integer millicores, bytes, GPUs, and named extended resources (``example.com/fpga``)."""

from __future__ import annotations

from dataclasses import dataclass

from taskplane.domain.quantities import format_bytes, format_millicpu

Extended = tuple[tuple[str, int], ...]
"""Extended resources as sorted ``(name, amount)`` pairs with no zero amounts (hashable, canonical)."""


def _merge(a: Extended, b: Extended, sign: int) -> Extended:
    if not b:
        return a
    out = dict(a)
    for name, amount in b:
        out[name] = out.get(name, 0) + sign * amount
    return tuple(sorted((k, v) for k, v in out.items() if v))


def extended_of(values: dict[str, int]) -> Extended:
    """The canonical form of a mapping of extended resources."""
    return tuple(sorted((k, v) for k, v in values.items() if v))


@dataclass(frozen=True, slots=True)
class Resources:
    """A resource vector. All quantities are integers; zero everywhere means best-effort."""

    millicpu: int = 0
    memory: int = 0
    gpu: int = 0
    extended: Extended = ()

    def __add__(self, other: Resources) -> Resources:
        ext = self.extended if not other.extended else _merge(self.extended, other.extended, 1)
        return Resources(self.millicpu + other.millicpu, self.memory + other.memory, self.gpu + other.gpu, ext)

    def __sub__(self, other: Resources) -> Resources:
        ext = self.extended if not other.extended else _merge(self.extended, other.extended, -1)
        return Resources(self.millicpu - other.millicpu, self.memory - other.memory, self.gpu - other.gpu, ext)

    def scale(self, factor: int) -> Resources:
        """This vector times a whole number (``count`` slots of a reservation)."""
        ext = tuple((k, v * factor) for k, v in self.extended)
        return Resources(self.millicpu * factor, self.memory * factor, self.gpu * factor, ext if factor else ())

    def fits_in(self, free: Resources) -> bool:
        """True when every quantity is at most the one in ``free``."""
        if self.millicpu > free.millicpu or self.memory > free.memory or self.gpu > free.gpu:
            return False
        if self.extended:
            have = dict(free.extended)
            return all(amount <= have.get(name, 0) for name, amount in self.extended)
        return True

    def is_zero(self) -> bool:
        """A zero request: the task is best-effort and bounded only by the per-node task limit."""
        return self.millicpu == 0 and self.memory == 0 and self.gpu == 0 and not self.extended

    def nonnegative(self) -> bool:
        """No quantity is below zero."""
        return self.millicpu >= 0 and self.memory >= 0 and self.gpu >= 0 and all(v >= 0 for _, v in self.extended)

    def shortfall(self, free: Resources) -> list[str]:
        """Names of the quantities that do not fit in ``free``, in a fixed order."""
        names = []
        if self.millicpu > free.millicpu:
            names.append("cpu")
        if self.memory > free.memory:
            names.append("memory")
        if self.gpu > free.gpu:
            names.append("gpu")
        if self.extended:
            have = dict(free.extended)
            names.extend(name for name, amount in self.extended if amount > have.get(name, 0))
        return names

    def amount(self, name: str) -> int:
        """One quantity by name: ``cpu`` (millicores), ``memory``, ``gpu`` or an extended resource."""
        if name == "cpu":
            return self.millicpu
        if name == "memory":
            return self.memory
        if name == "gpu":
            return self.gpu
        return dict(self.extended).get(name, 0)

    def describe(self) -> str:
        """Human form, e.g. ``cpu=500m memory=256Mi``."""
        text = f"cpu={format_millicpu(self.millicpu)} memory={format_bytes(self.memory)}"
        text += f" gpu={self.gpu}" if self.gpu else ""
        return text + "".join(f" {name}={amount}" for name, amount in self.extended)


def format_amount(name: str, amount: int) -> str:
    """One quantity in human form: ``3.5Gi`` for memory, ``1500m`` for cpu, a count otherwise."""
    if name == "cpu":
        return format_millicpu(amount)
    if name == "memory":
        return format_bytes(amount)
    return str(amount)


ZERO = Resources()
