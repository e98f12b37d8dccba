"""Faults the emulator injects on demand (CLI flags at start, or the control API at run time).

One FaultPlan per emulator; the Graph routes and the login host both read it. Counters are consumed as faults fire,
so "3 throttled responses" means exactly three.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field


@dataclass
class FaultPlan:
    latency_ms: float = 0.0  # added to every Graph and login response
    throttle_next: int = 0  # the next N Graph requests get 429 (Retry-After alternates integer and decimal forms)
    throttle_retry_after: float = 1.0  # seconds announced in Retry-After for injected 429s
    error_next: int = 0  # the next N Graph requests get 503 (odd ones) / 504 (even ones)
    drop_next: int = 0  # the next N Graph responses are cut: the connection closes mid-body
    token_lifetime_s: int = 3599  # lifetime of access tokens issued from now on
    expire_delta_tokens: bool = False  # delta links issued before this was set are refused (410 / syncStateNotFound)
    throttling_enabled: bool = True  # the resource-unit token bucket (Microsoft's limits); off for benchmarks' peers
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def take(self, name: str) -> bool:
        """Consume one unit of a counted fault; True when it fires."""
        with self.lock:
            n = getattr(self, name)
            if n > 0:
                setattr(self, name, n - 1)
                return True
            return False
