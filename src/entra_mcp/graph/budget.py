"""Per-tenant Graph request budgets: at most N requests in any 10 seconds, for every client of one tenant together.

Graph throttles per app per tenant (docs/graph-facts-tenants.md): a service provider's one multi-tenant app has a
separate allowance in each customer tenant, so the budget is per tenant, and a 429 in one tenant slows only that
tenant (graph/client.py pauses the client that got it). The budget is a token bucket holding one tenth of the
allowance, refilled at the other nine tenths per 10 s: no 10-second window can see more than the allowance. A request
reserves its slot at once (tokens may go negative): callers queue in arrival order and none is starved.
"""

from __future__ import annotations

import threading
import time
from typing import Callable

WINDOW_SECONDS = 10.0
BURST_SHARE = 0.1  # of the allowance available at once; the rest arrives spread over the window


class RequestBudget:
    """At most `per_window` requests in any WINDOW_SECONDS. Thread-safe; the clock is injectable."""

    def __init__(self, per_window: int, *, clock: Callable[[], float] = time.monotonic) -> None:
        if per_window < 1:
            raise ValueError("per_window must be at least 1")
        self.per_window = per_window
        self.capacity = max(1.0, per_window * BURST_SHARE)
        self.rate = (per_window - self.capacity) / WINDOW_SECONDS if per_window > 1 else 1.0 / WINDOW_SECONDS
        self._clock = clock
        self._tokens = self.capacity
        self._stamp = clock()
        self._lock = threading.Lock()
        self._slow = 1.0  # share of the rate while Graph throttles this tenant (halved per 429, back after a quiet minute)
        self._slow_until = 0.0
        self.waited = 0.0  # seconds callers were asked to wait, for the stats

    def _refill(self, now: float) -> float:
        if self._slow < 1.0 and now >= self._slow_until:
            self._slow = 1.0
        rate = self.rate * self._slow
        self._tokens = min(self.capacity, self._tokens + (now - self._stamp) * rate)
        self._stamp = now
        return rate

    def reserve(self, n: int = 1) -> float:
        """Take `n` requests' worth now; the seconds the caller must wait before sending them (0: go ahead)."""
        with self._lock:
            rate = self._refill(self._clock())
            self._tokens -= n
            wait = 0.0 if self._tokens >= 0 else -self._tokens / rate
            self.waited += wait
            return wait

    def throttled(self, retry_after: float | None) -> None:
        """Graph answered 429 for this tenant: every client of the tenant waits out `retry_after` (queued behind it),
        and the tenant's rate halves (down to a tenth) until a minute passes without another 429. Other tenants'
        budgets are untouched: Graph's limits are per app per tenant."""
        with self._lock:
            now = self._clock()
            self._slow = max(0.1, self._slow / 2)
            self._slow_until = now + 60.0
            rate = self._refill(now)
            if retry_after:
                self._tokens = min(self._tokens, -retry_after * rate)


_BUDGETS: dict[str, RequestBudget] = {}
_BUDGETS_LOCK = threading.Lock()


def tenant_budget(key: str, per_window: int) -> RequestBudget:
    """The one budget of a tenant in this process (`key`: its name and tenant id), shared by all its clients."""
    with _BUDGETS_LOCK:
        budget = _BUDGETS.get(key)
        if budget is None or budget.per_window != per_window:
            budget = _BUDGETS[key] = RequestBudget(per_window)
        return budget


__all__ = ["RequestBudget", "WINDOW_SECONDS", "tenant_budget"]
