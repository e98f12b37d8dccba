"""Heavy tool answers in worker processes forked from the server, so that they never hold the server's GIL.

Tool answers run in the server's worker threads (limits.py WorkLanes), and Python lets one thread run at a time: a heavy
answer (a ticket text of 19,000 characters) holds the GIL against the event loop (/healthz, every request's I/O) and
against every other caller's answer, which then wait at each switch interval. Pacing (entra_mcp/pacing.py) shortens
those waits; only another process removes them.

- `AnswerPool` forks up to `workers` processes from the server when a heavy answer is first asked for, after the
  tenant's view is loaded. A child shares the server's memory copy-on-write (the view is neither copied nor pickled),
  freezes the inherited objects out of its garbage collector at once (`gc.freeze()`: its collections never write into
  the inherited pages) and lowers its scheduling priority (NICE, and SCHED_BATCH where there is one), so that on a
  busy machine the server's own process (the event loop, light answers) gets the CPU first.
- A heavy answer is a pure function of (view, arguments) (identity/): the function (by reference) and its arguments go
  over a pipe, the answer comes back; the view never crosses.
- Each child answers from the views that were current when it was forked. When a tenant's view moves (a sync landed),
  the pool forks new children and retires the old ones after their call (at most one new generation per
  MIN_REFORK_SECONDS; meanwhile an answer on a newer view is computed in the server's thread, as without a pool).
- A child idle for IDLE_EXIT_SECONDS exits (its private pages go back to the system); one that dies while idle is
  replaced by the next call without failing it. A child acknowledges each request (ACK, an empty message) when it
  starts computing it: a child that died before acknowledging (its death not yet visible when the call was handed to
  it: killed, or exiting idle) never started the call, which goes once to a newly forked child (not to another idle
  one, which may have been killed with the first).
  A child that dies after acknowledging (killed, crashed) fails that call with a clear "retry" error and is replaced:
  the answer itself may have been the cause, so it is never computed again unasked. One that has not answered within
  `timeout` seconds is killed, its call fails with a clear error, and it is replaced. Never a hang.
- The children end with the server: `serving()` is the MCP server's lifespan (server/app.py; entered for each stdio or
  in-process connection, once for the HTTP app), and when the last one ends `close()` ends every child (an idle one at
  once, a busy one after its call) and reaps it, instead of leaving it to its idle exit.
- Fairness: each caller has at most one answer in progress (its lane, limits.py WorkLanes), callers waiting for a child
  are served in arrival order (threading.Condition wakes waiters in order), and the CPU a child spent is charged to the
  caller's CPU share (pacing.charge), so a caller over its share waits before its next call.
"""

from __future__ import annotations

import contextlib
import contextvars
import gc
import os
import signal
import threading
import time
import warnings
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from multiprocessing.connection import Connection, Pipe
from multiprocessing.reduction import ForkingPickler
from typing import Any

import anyio
import anyio.to_thread

from entra_mcp.errors import EntraMcpError, TransientError
from entra_mcp.logs import get_logger
from entra_mcp.pacing import charge

log = get_logger("server.workers")

NICE = 10  # the children's scheduling priority below the server's (0 = the same)
MIN_REFORK_SECONDS = 1.0  # at most one new generation of children per this many seconds
IDLE_EXIT_SECONDS = 60.0  # a child with no request for this long exits (a server whose heavy caller left holds none)
ACK = b""  # what a child sends when it starts computing a request (before the answer)


@dataclass(frozen=True)
class HeldView:
    """What a child holds of one tenant: the view as of (version, stamp)."""

    version: int
    stamp: int
    view: Any


@dataclass
class _Child:
    pid: int
    conn: Connection
    generation: int


def _child_main(conn: Connection, held: Mapping[str, HeldView], idle_exit: float) -> None:
    """A child's whole life: answer requests from `conn` until it closes. Never returns."""
    gc.freeze()  # O(1): the inherited objects move to the permanent generation, never traversed (written) again
    code = 0
    try:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole process group: the server decides
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        keep = conn.fileno()
        # Inherited sockets (the listening one, clients' connections) stay open while any process holds them: a
        # connection the server closes must not live on here. stdout may be the MCP wire (stdio): never written.
        os.closerange(3, keep)
        os.closerange(keep + 1, 1 << 16)
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 1)
        os.close(devnull)
        try:
            os.nice(NICE)
            # SCHED_BATCH: the scheduler treats the child as CPU-bound and lets it preempt no one on wake-up
            os.sched_setscheduler(0, os.SCHED_BATCH, os.sched_param(0))
        except (OSError, AttributeError):  # not on every platform
            pass
        while True:
            try:
                if not conn.poll(idle_exit):
                    break  # idle: give the pages it has made its own back; the next heavy answer forks anew
                request = conn.recv()
            except (EOFError, OSError):
                break
            if request is None:
                break
            conn.send_bytes(ACK)  # started: from here a death fails the call instead of handing it to another child
            reply = _answer(held, *request)
            try:
                conn.send(reply)
            except (TypeError, AttributeError, ValueError, RecursionError) as exc:  # an answer pickle cannot carry
                conn.send(("failed", f"the answer could not be sent back ({type(exc).__name__})", reply[2]))
    except BaseException:  # noqa: BLE001 - a child never unwinds into the server's code (it is a copy of it)
        code = 1
    finally:
        os._exit(code)


def _answer(held: Mapping[str, HeldView], name: str, version: int, stamp: int, fn: Callable[..., Any],
            args: tuple[Any, ...]) -> tuple[str, Any, float]:
    """("ok", answer) | ("error", (class, message, state)) | ("failed", "Type: message") | ("stale", None); and the
    CPU seconds spent."""
    tv = held.get(name)
    if tv is None or (tv.version, tv.stamp) != (version, stamp):
        return "stale", None, 0.0
    started = time.process_time()
    try:
        # A fresh context: the forking thread's (a paced lane's pacer, a call's context) is not this answer's.
        result: tuple[str, Any] = ("ok", contextvars.Context().run(fn, tv.view, *args))
    except EntraMcpError as exc:
        result = ("error", (type(exc), str(exc), dict(vars(exc))))
    except Exception as exc:  # noqa: BLE001 - reported to the server, which answers the call with an error
        result = ("failed", f"{type(exc).__name__}: {str(exc)[:300]}")
    return result[0], result[1], time.process_time() - started


def _rebuilt(kind: type[EntraMcpError], message: str, state: dict[str, Any]) -> EntraMcpError:
    """The child's EntraMcpError as the server raises it (its keyword-only fields kept)."""
    exc = kind.__new__(kind)
    Exception.__init__(exc, message)
    exc.__dict__.update(state)
    return exc


class AnswerPool:
    """Heavy answers computed in forked worker processes; see the module doc.

    `held`: the views the server holds now, by tenant name (views.py ViewProvider.held_views), forked with every new
    generation besides the view of the call that forks it. `compute` is called from a worker thread (it blocks on the
    child's pipe, holding no GIL)."""

    def __init__(self, *, workers: int, timeout: float, held: Callable[[], Mapping[str, Any]] | None = None,
                 min_refork_seconds: float = MIN_REFORK_SECONDS, idle_exit_seconds: float = IDLE_EXIT_SECONDS) -> None:
        self.workers = workers
        self.idle_exit_seconds = idle_exit_seconds
        self.timeout = timeout
        self.min_refork_seconds = min_refork_seconds
        self._held = held
        self._cond = threading.Condition()
        self._idle: list[_Child] = []
        self._live = 0  # children of the current generation, idle or busy
        self._generation = 0
        self._views: dict[str, tuple[int, int]] = {}  # what the current generation holds: name -> (version, stamp)
        self._forked_at = float("-inf")
        self._retired: list[int] = []  # pids of closed children not reaped yet
        self._pids: set[int] = set()  # children not reaped yet
        self.forks = 0
        self.replaced = 0  # children that died or were killed in a call
        self.sent = 0  # requests handed to children (a re-dispatched call counts twice)
        self.redispatched = 0  # calls handed again to another child: the first died before acknowledging them
        self.in_process = 0  # heavy answers computed in the server's thread (a view newer than the children's)
        self._users = 0  # servers running with this pool (serving)

    # ------------------------------------------------------------------ the server's side

    def compute(self, tv: Any, fn: Callable[..., Any], *args: Any) -> Any:
        """fn(tv.view, *args) in a child; what fn raises (EntraMcpError) is raised here. A child that died before
        acknowledging the request is replaced and the request handed once to another; TransientError when the child
        died computing it, did not answer in time (it is replaced), or the second child died before acknowledging too."""
        child = self._take(tv)
        if child is None:
            self.in_process += 1
            return fn(tv.view, *args)
        try:
            request = ForkingPickler.dumps((tv.name, tv.version, tv.stamp, fn, args))
        except Exception:  # noqa: BLE001 - arguments pickle cannot carry (none of ours): answered here
            self._give_back(child, alive=True)
            self.in_process += 1
            return fn(tv.view, *args)
        deadline = time.monotonic() + self.timeout
        try:
            status, payload, cpu = self._ask(child, request, deadline)
        except _NotStarted as first:
            self.redispatched += 1
            log.warning("answer worker %d ended before starting the call (%s); another one computes it",
                        first.pid, first.how)
            child = self._take(tv, fresh=True)  # a new child: the others may have been killed with the first
            if child is None:
                self.in_process += 1
                return fn(tv.view, *args)
            try:
                status, payload, cpu = self._ask(child, request, deadline)
            except _NotStarted as second:
                log.warning("answer worker %d ended before starting the call too (%s)", second.pid, second.how)
                raise TransientError(
                    f"two processes asked to compute this answer stopped before starting it ({second.how}); they "
                    "have been replaced: retry the call") from None
        charge(cpu)
        if status == "ok":
            return payload
        if status == "error":
            raise _rebuilt(*payload)
        if status == "stale":  # cannot happen while generations follow the views; answered here all the same
            self.in_process += 1
            return fn(tv.view, *args)
        raise RuntimeError(payload)  # what the same failure raises in the server's thread: the SDK's tool error

    def _ask(self, child: _Child, request: memoryview, deadline: float) -> tuple[str, Any, float]:
        """Send `request` to `child` and return its reply; the child goes back to the pool, or is replaced when it
        died. _NotStarted: it died before acknowledging the request."""
        ok = False
        try:
            try:
                child.conn.send_bytes(request)
                self.sent += 1
                self._wait(child, deadline)
                child.conn.recv_bytes()  # ACK: the child has started computing it
            except (EOFError, OSError, ValueError):
                raise _NotStarted(child.pid, self._ended(child)) from None
            self._wait(child, deadline)
            try:
                reply: tuple[str, Any, float] = ForkingPickler.loads(child.conn.recv_bytes())
            except (EOFError, OSError) as exc:
                raise self._lost(child, "stopped while computing it") from exc
            ok = True
            return reply
        finally:
            self._give_back(child, alive=ok)

    def _wait(self, child: _Child, deadline: float) -> None:
        """Until the child's next message (or the end of its pipe); at the deadline it is killed: TransientError."""
        if not child.conn.poll(max(0.0, deadline - time.monotonic())):
            self._kill(child)
            raise TransientError(
                f"the answer took longer than {self.timeout:g} s and was stopped; narrow the input (a shorter "
                "text) or retry later (server.answer_timeout_seconds)")

    def close(self, timeout: float = 5.0) -> None:
        """End every child and reap it: an idle one at once (it exits when its pipe closes), a busy one when its call
        is over (it is retired then). One still running after `timeout` seconds is killed (a call it was computing
        fails with a "retry" error). The pool stays usable: the next heavy answer forks anew."""
        with self._cond:
            children, self._idle = self._idle, []
            self._generation += 1
            self._live = 0
            self._views = {}
            for child in children:
                self._retire(child)
        deadline = time.monotonic() + timeout
        while True:
            with self._cond:
                self._reap()
                left = set(self._pids)
            if not left or time.monotonic() >= deadline:
                break
            time.sleep(0.01)
        for pid in left:
            _signal(pid, signal.SIGKILL)
        with self._cond:
            self._reap(block=True)  # a busy child killed here is reaped by the thread of its call

    @contextlib.asynccontextmanager
    async def serving(self) -> AsyncIterator[dict[str, Any]]:
        """Around each use of the pool by a running server: the MCP server's lifespan (entered for each stdio or
        in-process connection, once for the HTTP app). When the last one ends the children are ended (close): a
        server that stops leaves no worker behind, and a later connection forks anew."""
        self._users += 1
        try:
            yield {}
        finally:
            self._users -= 1
            if self._users == 0:
                with anyio.CancelScope(shield=True):
                    await anyio.to_thread.run_sync(self.close)

    def pids(self) -> list[int]:
        """The children alive now (idle and busy), for tests and benchmarks."""
        with self._cond:
            return sorted(self._pids)

    # ------------------------------------------------------------------ children

    def _take(self, tv: Any, *, fresh: bool = False) -> _Child | None:
        """An idle child of a generation holding `tv`'s view (forking one when there is room); None: compute here.
        `fresh`: a newly forked child (an idle one is retired to make room)."""
        deadline = time.monotonic() + self.timeout
        with self._cond:
            self._reap()
            if self._views.get(tv.name) != (tv.version, tv.stamp):
                if time.monotonic() - self._forked_at < self.min_refork_seconds:
                    return None
                self._new_generation(tv)
            while True:
                if fresh and self._idle and self._live >= self.workers:
                    self._live -= 1
                    self._retire(self._idle.pop(0))
                while self._idle and not fresh:
                    child = self._idle.pop(0)
                    if not child.conn.poll(0):  # an idle child's pipe is readable only at its end: it died idle
                        return child
                    self._live -= 1
                    self._retire(child)
                    log.info("answer worker %d ended while idle; a new one replaces it", child.pid)
                if self._live < self.workers:
                    child = self._fork(tv)
                    self._live += 1
                    return child
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TransientError("every answer worker is busy; retry shortly")
                self._cond.wait(left)
                if self._views.get(tv.name) != (tv.version, tv.stamp):
                    return None  # a newer generation started meanwhile, for another view: answer here

    def _new_generation(self, tv: Any) -> None:
        self._generation += 1
        for child in self._idle:
            self._retire(child)
        self._idle = []
        self._live = 0
        views = {name: (v.version, v.stamp) for name, v in (self._held() if self._held else {}).items()
                 if getattr(v, "view", None) is not None}
        views[tv.name] = (tv.version, tv.stamp)
        self._views = views
        self._forked_at = time.monotonic()

    def _fork(self, tv: Any) -> _Child:
        held = {name: HeldView(v.version, v.stamp, v.view)
                for name, v in (self._held() if self._held else {}).items()
                if getattr(v, "view", None) is not None and self._views.get(name) == (v.version, v.stamp)}
        held[tv.name] = HeldView(tv.version, tv.stamp, tv.view)
        ours, theirs = Pipe(duplex=True)
        with warnings.catch_warnings():
            # Python 3.12+ warns about fork() in a process with threads: the child runs only _child_main, which takes
            # no lock another thread could have held (no logging, no store, no pacing budget).
            warnings.simplefilter("ignore", DeprecationWarning)
            pid = os.fork()
        if pid == 0:
            ours.close()
            _child_main(theirs, held, self.idle_exit_seconds)
        theirs.close()
        self.forks += 1
        self._pids.add(pid)
        log.info("answer worker %d started (generation %d)", pid, self._generation)
        return _Child(pid, ours, self._generation)

    def _give_back(self, child: _Child, *, alive: bool) -> None:
        with self._cond:
            self._reap()
            if alive and child.generation == self._generation:
                self._idle.append(child)
            elif alive:
                self._retire(child)
            elif child.generation == self._generation:
                self._live -= 1  # dead or killed: the next call forks its replacement
            self._cond.notify()

    def _lost(self, child: _Child, what: str) -> TransientError:
        how = self._ended(child)
        log.warning("answer worker %d %s (%s); a new one replaces it", child.pid, what, how)
        return TransientError(f"the process computing this answer {what} ({how}); it has been replaced: retry the call")

    def _ended(self, child: _Child) -> str:
        """Reap a child whose end of the pipe is closed (killing it when it is stuck on the way out); how it ended."""
        self.replaced += 1
        deadline = time.monotonic() + 1  # its end of the pipe is closed: it is exiting, or stuck on the way out
        status = self._reap_one(child.pid, block=False)
        while status is None and time.monotonic() < deadline:
            time.sleep(0.005)
            status = self._reap_one(child.pid, block=False)
        if status is None:
            _signal(child.pid, signal.SIGKILL)
            status = self._reap_one(child.pid, block=True)
        child.conn.close()
        return (f"killed by signal {os.WTERMSIG(status)}" if status is not None and os.WIFSIGNALED(status)
                else "it exited")

    def _kill(self, child: _Child) -> None:
        self.replaced += 1
        log.warning("answer worker %d did not answer within %g s: killed, a new one replaces it", child.pid, self.timeout)
        _signal(child.pid, signal.SIGKILL)
        self._reap_one(child.pid, block=True)
        child.conn.close()

    def _retire(self, child: _Child) -> None:
        child.conn.close()  # the child exits at the end of its pipe
        self._retired.append(child.pid)

    def _reap(self, block: bool = False) -> None:
        self._retired = [pid for pid in self._retired if self._reap_one(pid, block=block) is None]

    def _reap_one(self, pid: int, *, block: bool) -> int | None:
        """The child's wait status once it has ended (None while it runs)."""
        try:
            done, status = os.waitpid(pid, 0 if block else os.WNOHANG)
        except ChildProcessError:
            self._pids.discard(pid)
            return 0
        if done == 0:
            return None
        self._pids.discard(pid)
        return status


class _NotStarted(Exception):
    """The child ended before acknowledging the request (reaped; `how` it ended)."""

    def __init__(self, pid: int, how: str) -> None:
        super().__init__(pid, how)
        self.pid = pid
        self.how = how


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


__all__ = ["AnswerPool", "HeldView", "IDLE_EXIT_SECONDS", "MIN_REFORK_SECONDS", "NICE"]
