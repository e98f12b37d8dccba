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
        self.waited = 0.0  # seconds callers were asked to wait, for the stats

    def reserve(self, n: int = 1) -> float:
        """Take `n` requests' worth now; the seconds the caller must wait before sending them (0: go ahead)."""
        with self._lock:
            now = self._clock()
            self._tokens = min(self.capacity, self._tokens + (now - self._stamp) * self.rate)
            self._stamp = now
            self._tokens -= n
            wait = 0.0 if self._tokens >= 0 else -self._tokens / self.rate
            self.waited += wait
            return wait


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
