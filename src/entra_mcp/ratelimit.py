"""Token buckets per key (a caller of /mcp, a client address on /auth/login), in memory, of bounded size.

`Limiter` is what the callers need (`admit`); `RateLimiter` counts in this process, sharedstore/counters.py's
`SharedRateLimiter` counts in Redis for all replicas together (and falls back to a `RateLimiter` while Redis is down).
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol


class Limiter(Protocol):
    per_minute: int

    def admit(self, key: str) -> int | None:
        """Spend one request of `key`: None when allowed, else the seconds to wait before the next one."""

    async def admit_async(self, key: str) -> int | None:
        """`admit` for the event loop: never blocks it (a shared limiter awaits Redis)."""


@dataclass
class _Bucket:
    tokens: float
    updated: float


class RateLimiter:
    """`per_minute` requests per key, in bursts of up to `per_minute`. The least recently seen keys are forgotten
    beyond `max_keys` (a forgotten key starts with a full bucket), so memory stays bounded whoever calls."""

    def __init__(self, per_minute: int, *, max_keys: int = 50_000, clock: Callable[[], float] = time.monotonic) -> None:
        if per_minute < 1:
            raise ValueError("per_minute must be at least 1")
        self.per_minute = per_minute
        self.rate = per_minute / 60.0
        self.max_keys = max_keys
        self._clock = clock
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()

    def admit(self, key: str) -> int | None:
        """Spend one request of `key`: None when allowed, else the seconds to wait before the next one."""
        now = self._clock()
        b = self._buckets.get(key)
        if b is None:
            b = self._buckets[key] = _Bucket(float(self.per_minute), now)
            while len(self._buckets) > self.max_keys:
                self._buckets.popitem(last=False)
        self._buckets.move_to_end(key)
        b.tokens = min(float(self.per_minute), b.tokens + (now - b.updated) * self.rate)
        b.updated = now
        if b.tokens >= 1.0:
            b.tokens -= 1.0
            return None
        return max(1, math.ceil((1.0 - b.tokens) / self.rate))

    async def admit_async(self, key: str) -> int | None:
        return self.admit(key)  # in memory: nothing to wait for


__all__ = ["Limiter", "RateLimiter"]
