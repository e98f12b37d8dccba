"""The parts that keep hundreds of tenants fair and within Graph's budgets, with their clocks injected: the
per-tenant request budget (graph/budget.py) and the scheduler's choice of the next tenants (sync/scheduler.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from entra_mcp.config import TenantSettings
from entra_mcp.graph.budget import RequestBudget, tenant_budget
from entra_mcp.mirror.store import MirrorStore
from entra_mcp.sync.scheduler import _Schedule


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_no_ten_second_window_gets_more_than_the_budget() -> None:
    clock = Clock()
    budget = RequestBudget(50, clock=clock)
    sent: list[float] = []
    for _ in range(400):  # callers as fast as they can: each sends when the budget says
        clock.now += budget.reserve()
        sent.append(clock.now)
    worst = max(sum(1 for t in sent if start <= t < start + 10.0) for start in sent)
    assert worst <= 50
    assert sent[-1] - sent[0] < 400 / 50 * 10 * 1.1  # and it is not much slower than the budget allows


def test_a_batch_reserves_its_items_and_callers_queue_in_order() -> None:
    clock = Clock()
    budget = RequestBudget(100, clock=clock)
    assert budget.reserve(10) == 0  # the burst share (a tenth) goes at once
    first = budget.reserve(20)
    second = budget.reserve(1)
    assert 0 < first < second  # the later caller waits behind the earlier one: nobody starves


def test_one_budget_per_tenant_shared_by_its_clients() -> None:
    a = tenant_budget("t1\0id1", 600)
    assert tenant_budget("t1\0id1", 600) is a and tenant_budget("t2\0id2", 600) is not a


def _tenants(n: int) -> list[TenantSettings]:
    return [TenantSettings(name=f"t{i}", tenant_id=f"t{i}.example", client_id="c", client_secret_env="X") for i in range(n)]


def test_the_tenant_due_longest_goes_first_and_running_ones_are_skipped(tmp_path: Path) -> None:
    clock = Clock()
    store = MirrorStore(tmp_path)
    try:
        schedule = _Schedule(_tenants(6), store, initial_delay=0.0, clock=clock)
    finally:
        store.close()
    assert schedule.ready(3) == ["t0", "t1", "t2"]  # all due at start: at most the limit, in a stable order
    schedule.running |= {"t0", "t1", "t2"}
    assert schedule.ready(3) == ["t3", "t4", "t5"]
    schedule.running.clear()
    schedule.due.update({"t0": 200.0, "t1": 150.0, "t2": 90.0, "t3": 95.0, "t4": 300.0, "t5": 99.0})
    assert schedule.ready(10) == ["t2", "t3", "t5"]  # due ones only, the longest overdue first
    clock.now = 160.0
    assert schedule.ready(2) == ["t2", "t3"]
    assert schedule.next_due_in() == 0.0
    schedule.due = {"t4": 300.0}
    assert schedule.next_due_in() == 140.0


def test_first_runs_of_many_tenants_spread_over_the_jitter_window_oldest_mirror_first(tmp_path: Path) -> None:
    import random

    from entra_mcp.mirror.snapshot import AreaStatus

    clock = Clock()
    store = MirrorStore(tmp_path)
    try:
        for name in ("t7", "t3"):  # two tenants with mirrors (t7 the older), the others never synced
            with store.writer(name) as w:
                w.commit_full("users", {"users": {}}, delta_link=None, status=AreaStatus(enabled=True))
        tenants = _tenants(40)
        spread = _Schedule(tenants, store, initial_delay=5.0, clock=clock, jitter=60.0, slots=4, rnd=random.Random(7).random)
        again = _Schedule(tenants, store, initial_delay=5.0, clock=clock, jitter=60.0, slots=4, rnd=random.Random(7).random)
        few = _Schedule(_tenants(4), store, initial_delay=5.0, clock=clock, jitter=60.0, slots=4, rnd=random.Random(7).random)
    finally:
        store.close()
    assert spread.due == again.due  # deterministic under a seed
    offsets = sorted(at - 105.0 for at in spread.due.values())
    assert 0 <= offsets[0] and offsets[-1] < 60.0 and offsets[-1] - offsets[0] > 30.0  # within the window, spread over it
    assert len(set(offsets)) == 40
    by_due = sorted(spread.due, key=spread.due.__getitem__)
    assert by_due[-2:] == ["t7", "t3"]  # never-synced tenants first, then the oldest mirror: the order of fairness holds
    assert [n for n in by_due if n not in ("t3", "t7")] == [f"t{i}" for i in range(40) if i not in (3, 7)]
    assert set(few.due.values()) == {105.0}  # no more tenants than slots: nothing to spread, all start at once
    clock.now = 105.0 + offsets[4] + 0.001
    assert spread.ready(10) == by_due[:5]  # only those whose jittered time has come, in their order
    assert spread.next_due_in() == 0.0


def test_a_429_slows_that_tenant_only_and_it_recovers_after_a_quiet_minute() -> None:
    clock = Clock()
    throttled, other = RequestBudget(100, clock=clock), RequestBudget(100, clock=clock)
    throttled.throttled(retry_after=5.0)
    assert throttled.reserve() >= 5.0  # every client of the tenant waits out Retry-After
    assert other.reserve() == 0.0  # another tenant goes on at once
    clock.now += 30.0
    slow = [throttled.reserve() for _ in range(50)][-1]
    clock.now += 120.0  # a quiet minute: the full rate again (the same 50 requests queue half as long)
    fast = [throttled.reserve() for _ in range(50)][-1]
    assert slow == pytest.approx(2 * fast, rel=0.05)


def test_serve_raises_its_open_files_limit_for_many_tenants() -> None:
    """Each tenant's mirror keeps database files open: serve lifts the soft limit to the hard one at start."""
    import resource
    import subprocess
    import sys

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 512:
        pytest.skip("the hard limit of open files is too low here to lower the soft one below it")

    def lower() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))

    code = ("import resource; from entra_mcp.commands.serve import raise_open_files_limit; raise_open_files_limit(200); "
            "print(resource.getrlimit(resource.RLIMIT_NOFILE)[0])")
    out = subprocess.run([sys.executable, "-c", code], preexec_fn=lower, capture_output=True, text=True, timeout=60)
    assert int(out.stdout.strip()) == (hard if hard != resource.RLIM_INFINITY else 1_048_576), out.stderr
