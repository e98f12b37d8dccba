"""Pacing of long tool answers (entra_mcp/pacing.py): the CPU share per caller on an injected clock, and a paced
computation that gives way when another thread wants the GIL or its caller is over its share. The answer workers
(server/workers.py AnswerPool): heavy answers in forked processes that see the server's view, errors carried back,
a killed or hung worker replaced with a clear error, a new view version served by a new generation of workers.
End to end (a heavy caller against /healthz and another caller over HTTP): tests/test_hostile_http_bounds.py;
figures: bench/bench_hostile_load.py."""

from __future__ import annotations

import os
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import anyio
import pytest

from entra_mcp.errors import NotFoundError, TransientError
from entra_mcp.pacing import COARSE, CpuBudget, Pacer, checkpoint, paced
from entra_mcp.server.limits import WorkLanes
from entra_mcp.server.workers import NICE, AnswerPool


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


# ---------------------------------------------------------------- answer workers (server/workers.py)


@dataclass(frozen=True)
class _TV:  # what the pool reads of views.py's TenantView
    name: str
    version: int
    view: Any
    stamp: int = 0


def _where(view: Any, tag: str) -> tuple[int, Any, str]:
    return os.getpid(), view["marker"], tag


def _not_found(view: Any, name: str) -> None:
    raise NotFoundError(f"no user {name!r} in this tenant", suggestions=["adele@contoso.example"])


def _stall(view: Any, started: str, seconds: float) -> int:
    Path(started).write_text(str(os.getpid()))  # the call is in the worker now
    time.sleep(seconds)
    return os.getpid()


def _wait(predicate: Any, seconds: float = 20) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return Path(f"/proc/{pid}/stat").read_text().split(") ")[1].startswith("Z")


@pytest.fixture
def pool() -> Iterator[AnswerPool]:
    pool = AnswerPool(workers=2, timeout=20, min_refork_seconds=0)
    yield pool
    pool.close()


def test_a_heavy_answer_is_computed_in_a_worker_that_sees_the_servers_view(pool: AnswerPool) -> None:
    tv = _TV("contoso", 3, {"marker": object.__repr__(pool)})  # a value only this process's memory holds
    pid, marker, tag = pool.compute(tv, _where, "t1")
    assert pid != os.getpid() and pid in pool.pids()
    assert os.getpriority(os.PRIO_PROCESS, pid) == min(19, os.getpriority(os.PRIO_PROCESS, 0) + NICE)  # yields the CPU
    assert (marker, tag) == (tv.view["marker"], "t1")
    assert pool.compute(tv, _where, "t2")[0] == pid  # the same worker answers again: no fork per call
    with pytest.raises(NotFoundError) as caught:
        pool.compute(tv, _not_found, "zed")
    assert "no user 'zed'" in str(caught.value) and caught.value.suggestions == ["adele@contoso.example"]


def test_a_worker_killed_in_a_call_fails_that_call_clearly_and_is_replaced(pool: AnswerPool, tmp_path: Path) -> None:
    tv = _TV("contoso", 1, {"marker": 1})
    started = tmp_path / "started"
    outcome: list[Any] = []

    def call() -> None:
        try:
            outcome.append(pool.compute(tv, _stall, str(started), 60))
        except TransientError as exc:
            outcome.append(exc)

    caller = threading.Thread(target=call)
    caller.start()
    _wait(lambda: started.exists() and started.read_text() != "")  # written, not only created
    victim = int(started.read_text())
    os.kill(victim, signal.SIGKILL)
    caller.join(20)
    assert not caller.is_alive()
    assert isinstance(outcome[0], TransientError) and "killed by signal 9" in str(outcome[0]), outcome
    assert "retry" in str(outcome[0])
    pid = pool.compute(tv, _where, "after")[0]
    assert pid != victim and victim not in pool.pids() and pool.replaced == 1
    assert pool.redispatched == 0  # it had started the answer (which may be what killed it): never computed again


def _stopped(pid: int) -> bool:
    return Path(f"/proc/{pid}/stat").read_text().split(") ")[1].startswith(("T", "t"))


def test_a_call_handed_to_a_worker_that_died_before_starting_it_goes_to_a_new_worker(tmp_path: Path) -> None:
    """The worker is stopped (SIGSTOP), the call is handed to it (its death cannot be seen yet), then it is killed:
    it never acknowledged the request, so the call is answered by a new worker instead of failing."""
    pool = AnswerPool(workers=1, timeout=20, min_refork_seconds=0)
    try:
        tv = _TV("contoso", 1, {"marker": 1})
        victim = pool.compute(tv, _where, "first")[0]
        os.kill(victim, signal.SIGSTOP)
        _wait(lambda: _stopped(victim))
        outcome: list[Any] = []

        def call() -> None:
            try:
                outcome.append(pool.compute(tv, _where, "second"))
            except TransientError as exc:
                outcome.append(exc)

        caller = threading.Thread(target=call)
        caller.start()
        _wait(lambda: pool.sent == 2)  # the request is in the stopped worker's pipe
        os.kill(victim, signal.SIGKILL)
        caller.join(20)
        assert not caller.is_alive()
        assert isinstance(outcome[0], tuple), outcome
        pid, marker, tag = outcome[0]
        assert pid not in (victim, os.getpid()) and (marker, tag) == (1, "second")
        assert pool.redispatched == 1 and pool.sent == 3 and victim not in pool.pids()
    finally:
        pool.close()


class _DiesOnArrival:
    """An argument whose unpickling ends the worker before it acknowledges the request."""

    def __reduce__(self) -> tuple[Any, ...]:
        return os._exit, (3,)


def test_a_call_is_handed_to_another_worker_once_only(pool: AnswerPool) -> None:
    tv = _TV("contoso", 1, {"marker": 1})
    with pytest.raises(TransientError, match=r"stopped before starting it \(it exited\).*retry the call"):
        pool.compute(tv, _here, _DiesOnArrival())
    assert pool.sent == 2 and pool.redispatched == 1 and pool.forks == 2
    assert pool.compute(tv, _here, "text") not in (os.getpid(), 0)  # a new worker answers the next call


def test_a_hung_worker_is_stopped_at_the_time_out_and_replaced(tmp_path: Path) -> None:
    pool = AnswerPool(workers=1, timeout=20, min_refork_seconds=0)
    try:
        tv = _TV("contoso", 1, {"marker": 1})
        hung = pool.compute(tv, _where, "started")[0]  # forked and answering (a loaded machine may take seconds)
        pool.timeout = 1
        with pytest.raises(TransientError, match="longer than 1 s"):
            pool.compute(tv, _stall, str(tmp_path / "started"), 60)
        assert _gone(hung)
        pool.timeout = 20
        assert pool.compute(tv, _where, "after")[0] not in (hung, os.getpid())
    finally:
        pool.close()


def test_a_worker_that_died_idle_is_replaced_without_failing_a_call(pool: AnswerPool) -> None:
    tv = _TV("contoso", 1, {"marker": 1})
    first = pool.compute(tv, _where, "a")[0]
    os.kill(first, signal.SIGKILL)
    _wait(lambda: _gone(first))
    assert pool.compute(tv, _where, "b")[0] != first


def test_an_idle_worker_exits_and_the_next_heavy_answer_forks_anew() -> None:
    pool = AnswerPool(workers=1, timeout=20, min_refork_seconds=0, idle_exit_seconds=0.2)
    try:
        tv = _TV("contoso", 1, {"marker": 1})
        first = pool.compute(tv, _where, "a")[0]
        _wait(lambda: _gone(first))
        assert pool.compute(tv, _where, "b")[0] not in (first, os.getpid())
    finally:
        pool.close()


def test_close_ends_an_idle_worker_at_once_and_a_busy_one_after_its_call(tmp_path: Path) -> None:
    """What the server's lifespan calls when it ends (server/app.py): every worker ended and reaped, the call in
    progress answered first; the pool forks anew for a later heavy answer."""
    pool = AnswerPool(workers=2, timeout=20, min_refork_seconds=0)
    try:
        tv = _TV("contoso", 1, {"marker": 1})
        started = tmp_path / "started"
        outcome: list[Any] = []
        caller = threading.Thread(target=lambda: outcome.append(pool.compute(tv, _stall, str(started), 1.0)))
        caller.start()
        _wait(started.exists)
        busy = int(started.read_text())
        idle = pool.compute(tv, _where, "a")[0]  # the other worker, idle after this
        assert idle not in (busy, os.getpid())
        pool.close()
        caller.join(20)
        assert outcome == [busy], "the call in progress was answered"
        assert pool.pids() == [] and not Path(f"/proc/{idle}").exists() and not Path(f"/proc/{busy}").exists()
        assert pool.compute(tv, _where, "b")[0] not in (idle, busy, os.getpid())
    finally:
        pool.close()


def test_a_new_view_version_is_answered_by_a_new_generation_of_workers(pool: AnswerPool) -> None:
    old = pool.compute(_TV("contoso", 1, {"marker": "v1"}), _where, "a")
    new = pool.compute(_TV("contoso", 2, {"marker": "v2"}), _where, "b")
    assert old[1] == "v1" and new[1] == "v2" and new[0] != old[0]
    _wait(lambda: _gone(old[0]))  # the old generation's worker ended with its pipe
    pool.compute(_TV("contoso", 2, {"marker": "v2"}), _where, "c")
    assert old[0] not in pool.pids()


def test_a_caller_is_charged_the_cpu_its_answer_used_in_a_worker(pool: AnswerPool) -> None:
    budget = CpuBudget(share=0.01, burst=0.0)
    with paced(Pacer(budget)):
        pool.compute(_TV("contoso", 1, {"marker": 1}), _spin, 0.02)
    assert budget.debt() > 1  # ~0.02 s of CPU at a hundredth of a CPU: ~2 s owed (the bucket holds nothing: burst 0)


def _spin(view: Any, seconds: float) -> None:
    end = time.process_time() + seconds
    while time.process_time() < end:
        sum(range(50))


def _here(view: Any, thing: Any) -> int:
    return os.getpid()


def test_arguments_a_worker_cannot_receive_are_answered_in_the_server(pool: AnswerPool) -> None:
    tv = _TV("contoso", 1, {"marker": 1})
    assert pool.compute(tv, _here, lambda: None) == os.getpid() and pool.in_process == 1
    assert pool.compute(tv, _here, "text") != os.getpid()  # the worker it took back still answers
    assert len(pool.pids()) == 1


def _hold(view: Any, release: str) -> int:
    while not Path(release).exists():  # a heavy answer that ends when the test says so
        time.sleep(0.01)
    return os.getpid()


def test_callers_waiting_for_the_workers_leave_the_light_calls_threads_free(tmp_path: Path) -> None:
    """Six callers' heavy answers hold both workers and wait for them (more callers than WorkLanes' 4 threads for
    light calls); another caller's light call is answered meanwhile."""
    pool = AnswerPool(workers=2, timeout=20, min_refork_seconds=0)
    lanes = WorkLanes(workers=4)
    tv = _TV("contoso", 1, {"marker": 1})
    release = tmp_path / "release"
    done: list[str] = []

    async def heavy(i: int) -> None:
        await lanes.run(f"heavy-{i}", lambda: pool.compute(tv, _hold, str(release)), heavy=True)
        done.append("heavy")

    async def main() -> None:
        with anyio.fail_after(60):
            async with anyio.create_task_group() as tg:
                for i in range(6):
                    tg.start_soon(heavy, i)
                while len(pool.pids()) < 2:  # both workers busy, four callers waiting for one
                    await anyio.sleep(0.01)
                with anyio.fail_after(20):
                    assert await lanes.run("light", lambda: 42) == 42
                done.append("light")
                release.touch()

    try:
        anyio.run(main)
    finally:
        pool.close()
    assert done[0] == "light" and done.count("heavy") == 6, done
