"""Token buckets by key, in memory: request rates per tenant and failed authentications per principal and address.

Each server process keeps its own buckets: with N API replicas behind a balancer, a client gets up to N times
the configured rate. The map is bounded (oldest keys forgotten first), so a flood of distinct keys costs memory
only up to ``max_keys``.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(slots=True)
class _Bucket:
    tokens: float
    at: float


class RateLimiter:
    """``rate`` tokens per second per key, up to ``burst`` saved; ``take`` spends one."""

    def __init__(self, rate: float, burst: float, monotonic: Callable[[], float], *, max_keys: int = 100_000) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("a rate limiter needs rate > 0 and burst >= 1")
        self.rate = rate
        self.burst = burst
        self._now = monotonic
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()
        self._max_keys = max_keys

    def _bucket(self, key: str) -> _Bucket:
        now = self._now()
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = _Bucket(self.burst, now)
            self._buckets[key] = bucket
            if len(self._buckets) > self._max_keys:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(key)
            bucket.tokens = min(self.burst, bucket.tokens + (now - bucket.at) * self.rate)
            bucket.at = now
        return bucket

    def take(self, key: str, cost: float = 1.0) -> float | None:
        """Spend ``cost`` tokens of ``key``; ``None`` when allowed, else the seconds until it would be."""
        bucket = self._bucket(key)
        if bucket.tokens >= cost:
            bucket.tokens -= cost
            return None
        return (cost - bucket.tokens) / self.rate

    def blocked(self, key: str) -> float | None:
        """Without spending: ``None`` when ``key`` has a token left, else the seconds until it has one."""
        if key not in self._buckets:
            return None
        bucket = self._bucket(key)
        return None if bucket.tokens >= 1.0 else (1.0 - bucket.tokens) / self.rate

    def __len__(self) -> int:
        return len(self._buckets)
