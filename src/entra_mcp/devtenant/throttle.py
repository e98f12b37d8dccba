"""Microsoft's identity throttling: a token bucket of resource units per (application, tenant).

Limits by tenant size (users): < 50 -> 3,500, 50-500 -> 5,000, > 500 -> 8,000 resource units per 10 seconds.
Request costs: GET users 2, applications 2, groups/{id}/members 3, transitiveMembers 5, anything else 1; `$select`
-1, `$expand` +1, `$top` below 20 -1 (never below 1). The clock is a parameter so tests need not sleep.

`step_s` (a test bed knob, the control API's `throttle_step_ms`; 0: off) makes each bucket's clock move with its
requests instead of the wall clock: every request moves it on by `step_s`; after a refusal it follows the wall clock
until the end of the Retry-After it gave (the refill the refused requests asked for), and no further. How often a
run is throttled then follows from its requests and its waits, not from how fast the machine sends them (a loaded
machine sends them slower, and the wall clock refills the bucket meanwhile).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Callable

WINDOW_S = 10.0


def limit_for(user_count: int) -> int:
    """Resource units per 10 s for a tenant of `user_count` users."""
    if user_count < 50:
        return 3500
    if user_count <= 500:
        return 5000
    return 8000


def request_cost(route: str, *, select: bool, expand: bool, top: int | None) -> int:
    """Resource units of one request; `route` is the route pattern, e.g. "users", "groups/{id}/members"."""
    if route.endswith("/transitiveMembers"):
        cost = 5
    elif route.endswith("/members"):
        cost = 3
    elif route.split("/", 1)[0] in ("users", "applications"):
        cost = 2
    else:
        cost = 1
    if select:
        cost -= 1
    if expand:
        cost += 1
    if top is not None and top < 20:
        cost -= 1
    return max(1, cost)


@dataclass
class Decision:
    allowed: bool
    cost: int
    retry_after_s: float  # 0 when allowed
    remaining: float


class _Bucket:
    __slots__ = ("tokens", "stamp", "resume")

    def __init__(self, tokens: float, stamp: float) -> None:
        self.tokens = tokens
        self.stamp = stamp
        # with step_s, after a refusal: (end of its Retry-After, then) in bucket time, and the wall time of then
        self.resume: tuple[float, float, float] | None = None


class ResourceUnitThrottle:
    """One bucket per (app id, tenant id), refilled continuously at limit/10 s up to `limit`."""

    def __init__(self, *, now: Callable[[], float] = time.monotonic) -> None:
        self._now = now
        self._lock = threading.Lock()
        self._buckets: dict[tuple[str, str], _Bucket] = {}
        # test bed knobs: resource units per 10 s for every bucket instead of Microsoft's tenant-size limit (0: off);
        # the buckets' clock moved by the requests, this many seconds each (0: the wall clock; see the module doc)
        self.limit_override = 0
        self.step_s = 0.0

    def charge(self, app_id: str, tenant_id: str, cost: int, limit: int) -> Decision:
        real = self._now()
        limit = self.limit_override or limit
        rate = limit / WINDOW_S
        step = self.step_s
        with self._lock:
            b = self._buckets.get((app_id, tenant_id))
            if b is None:
                b = self._buckets[(app_id, tenant_id)] = _Bucket(float(limit), 0.0 if step else real)
            now = real
            if step:
                now = b.stamp + step
                if b.resume is not None:  # refused lately: the wall clock's time since, up to the Retry-After's end
                    end, then, then_real = b.resume
                    waited = then + (real - then_real)
                    now = max(now, min(end, waited))
                    if waited >= end:
                        b.resume = None
            b.tokens = min(float(limit), b.tokens + (now - b.stamp) * rate)
            b.stamp = now
            if b.tokens >= cost:
                b.tokens -= cost
                return Decision(True, cost, 0.0, b.tokens)
            wait = (cost - b.tokens) / rate
            if step:
                b.resume = (now + wait, now, real) if b.resume is None else (max(b.resume[0], now + wait), *b.resume[1:])
            return Decision(False, cost, wait, b.tokens)

    def reset(self) -> None:
        with self._lock:
            self._buckets.clear()
