"""The peak resident memory of this process while a block runs, sampled on a thread (psutil).

    with PeakRSS() as rss:
        work()
    rss.peak  # bytes, at least the RSS at entry
"""

from __future__ import annotations

import threading
from types import TracebackType

import psutil


class PeakRSS:
    def __init__(self, every: float = 0.01) -> None:
        self.every = every
        self.me = psutil.Process()
        self.before = self.peak = self.me.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(self.every):
            self.peak = max(self.peak, self.me.memory_info().rss)

    def __enter__(self) -> "PeakRSS":
        self.before = self.peak = self.me.memory_info().rss
        self._thread.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self._stop.set()
        self._thread.join(timeout=1)
        self.peak = max(self.peak, self.me.memory_info().rss)
