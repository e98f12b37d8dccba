"""Cooperative pacing of long computations in worker threads, so one caller's heavy answers give way to everyone else.

Tool answers run in worker threads (server/limits.py WorkLanes), but Python's GIL lets only one thread run at a time:
a heavy answer (a 19,000-character ticket text) holds it against the event loop (/healthz, every request's I/O) and
against other callers' answers, which then wait up to the switch interval at every step. Pacing cuts a long answer
into slices of `slice_seconds` of CPU. At the end of a slice (`checkpoint()`, called from the inner loops of the
expensive answers) the computation sleeps, releasing the GIL, when
- others were running during the slice (this thread got noticeably less CPU than wall time): it gives way for
  `pause_seconds`, so waiting work is served first; or
- its caller has used more than its CPU share (`CpuBudget`: a token bucket of CPU seconds refilled at `share`
  seconds per second, with a burst of `burst_seconds`): it sleeps until the bucket is back at zero (at most
  MAX_PAUSE per checkpoint).
On an idle server neither happens and a heavy answer runs at full speed; short answers never reach a slice's end.
This module is a leaf: identity/ calls `checkpoint()` (a no-op outside a paced computation), server/ sets the pacer.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar

MAX_PAUSE = 0.05  # the longest one checkpoint sleeps (a caller deep in debt waits again at the next one)
COARSE = 32  # the weight of a checkpoint after a step of ~0.1 ms or more (a regex over a long text): clocks read at once
# The clocks are read once the checkpoints' weights add up to COARSE: a checkpoint in a loop of microsecond steps
# (weight 1) must cost next to nothing.


class CpuBudget:
    """CPU seconds a caller may use: refilled at `share` per wall second, at most `burst` held."""

    def __init__(self, share: float, burst: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.share = share
        self.burst = burst
        self._clock = clock
        self._tokens = burst
        self._at = clock()
        self._lock = threading.Lock()

    def _refill(self) -> None:
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._at) * self.share)
        self._at = now

    def spend(self, seconds: float) -> None:
        with self._lock:
            self._refill()
            self._tokens -= seconds

    def debt(self) -> float:
        """Wall seconds until the bucket is back at zero (0 when it is not in debt)."""
        with self._lock:
            self._refill()
            return 0.0 if self._tokens >= 0 else -self._tokens / self.share


class Pacer:
    """The pacing of one computation (one tool answer) in the current thread; see the module doc."""

    def __init__(self, budget: CpuBudget | None, *, slice_seconds: float = 0.002, pause_seconds: float = 0.005) -> None:
        self.budget = budget
        self.slice_seconds = slice_seconds
        self.pause_seconds = pause_seconds
        self.paused = 0.0  # seconds slept, for the log and the tests
        self._n = 0
        self._cpu = time.thread_time()
        self._wall = time.perf_counter()
        self._started_cpu = self._cpu

    def tick(self, weight: int = 1) -> None:
        self._n += weight
        if self._n < COARSE:
            return
        self._n = 0
        cpu = time.thread_time()
        used = cpu - self._cpu
        if used < self.slice_seconds:
            return
        wall = time.perf_counter()
        pause = self.pause_seconds if (wall - self._wall) - used > used / 4 else 0.0  # others ran meanwhile
        if self.budget is not None:
            self.budget.spend(used)
            pause = max(pause, min(self.budget.debt(), MAX_PAUSE))
        if pause > 0:
            time.sleep(pause)  # releases the GIL: the loop and other callers' answers run
            self.paused += pause
        self._cpu = time.thread_time()
        self._wall = time.perf_counter()

    def finish(self) -> None:
        """Charge the CPU used since the last slice to the caller's budget."""
        if self.budget is not None:
            self.budget.spend(max(0.0, time.thread_time() - self._cpu))


# A context variable, not threading.local: read in ~50 ns (a checkpoint sits in loops of microsecond steps). Worker
# threads run each answer in a copy of the caller's context, so a pacer set there is that answer's alone.
_PACER: ContextVar[Pacer | None] = ContextVar("entra_mcp_pacer", default=None)


def checkpoint(weight: int = 1) -> None:
    """A place where a long computation may give way (no-op unless the thread runs a paced computation). `weight`:
    1 in a loop of microsecond steps, COARSE after a step of a tenth of a millisecond or more."""
    pacer = _PACER.get()
    if pacer is not None:
        pacer.tick(weight)


def charge(seconds: float) -> None:
    """Charge CPU spent elsewhere on this computation's behalf (an answer computed in a worker process) to its
    caller's budget (no-op outside a paced computation)."""
    pacer = _PACER.get()
    if pacer is not None and pacer.budget is not None:
        pacer.budget.spend(seconds)


@contextmanager
def paced(pacer: Pacer | None) -> Iterator[Pacer | None]:
    """Run the block with `pacer` as this thread's pacer (None: unpaced), charging its caller at the end."""
    token = _PACER.set(pacer)
    try:
        yield pacer
    finally:
        _PACER.reset(token)
        if pacer is not None:
            pacer.finish()


__all__ = ["COARSE", "CpuBudget", "MAX_PAUSE", "Pacer", "charge", "checkpoint", "paced"]
