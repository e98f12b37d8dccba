"""Pacing of long tool answers (entra_mcp/pacing.py): the CPU share per caller on an injected clock, and a paced
computation that gives way when another thread wants the GIL or its caller is over its share. End to end (a heavy
caller against /healthz and another caller over HTTP): tests/test_hostile_http_bounds.py; figures:
bench/bench_hostile_load.py."""

from __future__ import annotations

import threading
import time

from entra_mcp.pacing import COARSE, CpuBudget, Pacer, checkpoint, paced


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _burn(seconds: float) -> None:
    """CPU work with a checkpoint every few microseconds, like the ticket-text loops."""
    end = time.thread_time() + seconds
    while time.thread_time() < end:
        sum(range(50))
        checkpoint()


def test_a_caller_over_its_share_owes_time_and_earns_it_back() -> None:
    clock = Clock()
    budget = CpuBudget(share=0.5, burst=0.2, clock=clock)
    budget.spend(0.15)
    assert budget.debt() == 0  # inside the burst
    budget.spend(0.15)  # 0.1 s past it: 0.2 s of wall time at half a CPU
    assert abs(budget.debt() - 0.2) < 1e-9
    clock.now += 0.1
    assert abs(budget.debt() - 0.1) < 1e-9
    clock.now += 10
    assert budget.debt() == 0
    budget.spend(0.2)  # the burst refills to its size, not beyond
    assert budget.debt() == 0
    budget.spend(0.01)
    assert budget.debt() > 0


def test_checkpoints_outside_a_paced_computation_charge_nobody() -> None:
    budget = CpuBudget(share=0.001, burst=0.0)
    with paced(Pacer(budget)):
        pass
    owed = budget.debt()
    _burn(0.02)  # the thread's pacer was reset when the paced block ended
    checkpoint(COARSE)
    assert budget.debt() <= owed


def test_a_caller_over_its_share_sleeps_inside_a_long_answer() -> None:
    budget = CpuBudget(share=0.2, burst=0.0)
    with paced(Pacer(budget)) as pacer:
        _burn(0.05)
    assert pacer is not None and pacer.paused > 0.05  # ~0.2 s owed for 0.05 s of CPU at a fifth of a CPU
    assert budget.debt() > 0  # and what is still owed delays its next call (server/limits.py WorkLanes)


def test_a_long_answer_gives_way_while_another_thread_wants_the_gil() -> None:
    stop = threading.Event()

    def other() -> None:  # another caller's answer, or the event loop's work
        while not stop.is_set():
            sum(range(50))

    t = threading.Thread(target=other)
    t.start()
    try:
        with paced(Pacer(None)) as pacer:  # no budget: only giving way
            _burn(0.05)
    finally:
        stop.set()
        t.join(10)
    assert pacer is not None and pacer.paused > 0
