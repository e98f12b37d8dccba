"""Bounds on what one HTTP client can make the server hold: time, buffered bytes, sessions, requests, work.

- `request_deadline_protocol(seconds)`: uvicorn's h11 protocol where a request must arrive whole (headers AND body)
  within `seconds` of the connection starting to wait for it; otherwise the connection is closed. A client that
  dribbles a body, or stops one byte short, no longer holds a connection (and what it sent) for as long as it likes.
- `BodyBounds`: ASGI middleware that refuses a declared body over server.max_body_bytes (413) before reading any of
  it, counts the bytes of every body as the application reads them (413 past the limit, chunked bodies included) and
  keeps the bytes held by all requests still in progress under server.max_buffered_bytes (503 past it). Nothing is
  buffered here: a route that refuses a caller before reading its body (the /mcp guard) never reads it at all.
  It also keeps an unexpected exception from becoming a stack trace in the log: one line, a clean 500.
- `PrincipalLimits`: per-caller quotas for /mcp (requests per minute, open MCP sessions, calls in progress); the
  guard in server/auth.py answers 429 with Retry-After when one is exceeded.
- `WorkLanes`: tool answers computed in worker threads, one at a time per caller (server/app.py's dispatch), paced
  so that one caller's heavy answers give way to everyone else's (entra_mcp/pacing.py).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import anyio
from starlette.datastructures import Headers
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from entra_mcp.logs import get_logger
from entra_mcp.pacing import CpuBudget, Pacer, paced
from entra_mcp.ratelimit import Limiter, RateLimiter

log = get_logger("server.limits")

MAX_WAIT_FOR_SHARE = 5.0  # the longest a caller over its CPU share waits before its next call starts


# ------------------------------------------------------------------ whole-request deadline


def request_deadline_protocol(timeout: float) -> type:
    """uvicorn's h11 protocol with a deadline for each whole request (headers and body).

    The clock starts when the connection starts waiting for a request (a new connection, or the previous response
    is complete) and stops when the request's last body byte has arrived. A request not complete in time has its
    connection closed: the application, if it was reading the body, sees the client disconnect. Idle keep-alive
    connections are closed by uvicorn's own keep-alive timeout; a long answer (or an SSE stream) is not limited,
    since the request itself is complete by then.
    """
    import h11
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class RequestDeadlineH11(H11Protocol):
        _deadline: Any = None

        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            self._arm()

        def _arm(self) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
            self._deadline = self.loop.call_later(timeout, self._too_slow)

        def _too_slow(self) -> None:
            self._deadline = None
            if not self.transport.is_closing():
                log.info("closed a connection whose request was not complete within %.0f s", timeout)
                self.transport.close()

        def _request_received(self) -> bool:
            return self.conn.their_state in (h11.DONE, h11.MUST_CLOSE, h11.CLOSED)

        def handle_events(self) -> None:
            super().handle_events()
            if self._deadline is not None and self._request_received():
                self._deadline.cancel()
                self._deadline = None

        def on_response_complete(self) -> None:
            # The next request (or the rest of an unread body) gets a fresh deadline; a pipelined request that uvicorn
            # starts at once and that is complete already cancels it in handle_events.
            self._arm()
            super().on_response_complete()

        def connection_lost(self, exc: Exception | None) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
                self._deadline = None
            super().connection_lost(exc)

    return RequestDeadlineH11


# ------------------------------------------------------------------ bodies


class _BodyRefused(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass
class BufferBudget:
    """Bytes of request bodies read by requests still in progress, across all connections."""

    limit: int
    held: int = 0
    peak: int = 0

    def take(self, n: int) -> bool:
        if self.held + n > self.limit:
            return False
        self.held += n
        self.peak = max(self.peak, self.held)
        return True

    def release(self, n: int) -> None:
        self.held = max(0, self.held - n)


class BodyBounds:
    """Per-request and total body bounds, and the last line of defence against stack traces (see module doc)."""

    def __init__(self, app: ASGIApp, *, max_body: int, budget: BufferBudget) -> None:
        self.app = app
        self.max_body = max_body
        self.budget = budget

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = Headers(scope=scope).get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_body:
            await _refuse(scope, receive, send, 413, f"the request body is larger than {self.max_body} bytes")
            return
        held = 0
        started = False

        async def counted_receive() -> Message:
            nonlocal held
            message = await receive()
            if message["type"] == "http.request":
                n = len(message.get("body", b""))
                if held + n > self.max_body:
                    raise _BodyRefused(413, f"the request body is larger than {self.max_body} bytes")
                if n and not self.budget.take(n):
                    raise _BodyRefused(503, "the server is holding too many request bodies; retry shortly")
                held += n
            return message

        async def watched_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counted_receive, watched_send)
        except _BodyRefused as exc:
            if not started:
                await _refuse(scope, receive, send, exc.status, exc.message)
        except Exception as exc:  # noqa: BLE001 - the one place an unexpected error becomes a clean 500
            log.error("unexpected %s while answering %s %s", type(exc).__name__, scope.get("method"), scope.get("path"))
            log.debug("details of the unexpected error", exc_info=True)
            if not started:
                await JSONResponse({"error": "internal_error", "error_description": "the server could not answer this request"},
                                   500, headers={"Connection": "close"})(scope, receive, send)
        finally:
            self.budget.release(held)


async def _refuse(scope: Scope, receive: Receive, send: Send, status: int, message: str) -> None:
    headers = {"Connection": "close"}
    if status == 503:
        headers["Retry-After"] = "5"
    error = "request_too_large" if status == 413 else "temporarily_unavailable"
    await JSONResponse({"error": error, "error_description": message}, status, headers=headers)(scope, receive, send)


# ------------------------------------------------------------------ per-principal quotas


@dataclass
class _Session:
    last_seen: float  # clock time the last request on it ended (or began, while one is in progress)
    in_flight: int = 0  # requests on it in progress (an open GET stream is one)


@dataclass
class _Caller:
    sessions: dict[str, _Session] = field(default_factory=dict)  # Mcp-Session-Id -> its use
    in_flight: anyio.Semaphore | None = None


@dataclass(frozen=True)
class Refusal:
    """Why a caller is held back, and when to try again (seconds)."""

    reason: str
    message: str
    retry_after: int


class PrincipalLimits:
    """Quotas per principal on /mcp: a token bucket of requests per minute, a cap on open MCP sessions and on
    calls in progress at once. Callers are tracked in an LRU table of bounded size.

    Open sessions are tracked here, from what crosses the wire, not read from the MCP SDK: a session counts from the
    response that hands out its Mcp-Session-Id until its DELETE succeeds, a request on it answers 404 (the SDK no
    longer knows it: ended idle, crashed, or the server restarted), or it has had no request in progress for
    `session_idle_seconds` (the same idle timeout the SDK is given, so both forget it together). Without sessions
    (a stateless transport, where no response carries an Mcp-Session-Id) nothing is counted and only the request
    rate and calls-in-progress quotas apply."""

    MAX_CALLERS = 50_000

    def __init__(
        self,
        *,
        requests_per_minute: int,
        sessions: int,
        concurrent_calls: int,
        session_idle_seconds: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        rate: Limiter | None = None,
    ) -> None:
        # `rate`: the requests-per-minute buckets; the shared ones (sharedstore/counters.py) count every replica's
        # requests of a caller together. Open sessions and calls in progress are this process's own.
        self.rate: Limiter = rate or RateLimiter(requests_per_minute, max_keys=self.MAX_CALLERS, clock=clock)
        self.max_sessions = sessions
        self.concurrent_calls = concurrent_calls
        self.session_idle_seconds = session_idle_seconds
        self._clock = clock
        self._callers: OrderedDict[str, _Caller] = OrderedDict()

    def _caller(self, key: str) -> _Caller:
        caller = self._callers.get(key)
        if caller is None:
            caller = _Caller()
            self._callers[key] = caller
            while len(self._callers) > self.MAX_CALLERS:
                self._callers.popitem(last=False)
        self._callers.move_to_end(key)
        return caller

    def admit(self, key: str) -> Refusal | None:
        """Spend one request of `key`'s rate; a Refusal when none is left."""
        return self._refusal(self.rate.admit(key))

    async def admit_async(self, key: str) -> Refusal | None:
        """`admit` on the event loop: a shared limiter awaits Redis without blocking the loop."""
        return self._refusal(await self.rate.admit_async(key))

    def _refusal(self, wait: int | None) -> Refusal | None:
        if wait is None:
            return None
        return Refusal("rate", f"too many requests from this caller (limit {self.rate.per_minute} a minute)", wait)

    def open_sessions(self, key: str) -> int:
        caller = self._caller(key)
        if self.session_idle_seconds is not None:
            now = self._clock()
            for sid, session in list(caller.sessions.items()):
                if session.in_flight == 0 and now - session.last_seen > self.session_idle_seconds:
                    del caller.sessions[sid]
        return len(caller.sessions)

    def may_open_session(self, key: str) -> Refusal | None:
        if self.open_sessions(key) < self.max_sessions:
            return None
        return Refusal(
            "sessions",
            f"this caller already has {self.max_sessions} open MCP sessions; end unused ones (DELETE /mcp with their "
            "Mcp-Session-Id) or reuse one",
            60,
        )

    def session_opened(self, key: str, session_id: str) -> None:
        self._caller(key).sessions[session_id] = _Session(self._clock())

    def session_request(self, key: str, session_id: str, *, started: bool) -> None:
        """A request on `session_id` starts (started=True) or ends: a session with one in progress is never idle."""
        caller = self._callers.get(key)
        session = caller.sessions.get(session_id) if caller is not None else None
        if session is not None:
            session.in_flight = max(0, session.in_flight + (1 if started else -1))
            session.last_seen = self._clock()

    def session_closed(self, key: str, session_id: str) -> None:
        """The session ended (DELETE) or the MCP app no longer knows it (404)."""
        caller = self._callers.get(key)
        if caller is not None:
            caller.sessions.pop(session_id, None)

    def calls(self, key: str) -> anyio.Semaphore:
        """The semaphore bounding `key`'s calls in progress (its other calls wait their turn)."""
        caller = self._caller(key)
        if caller.in_flight is None:
            caller.in_flight = anyio.Semaphore(self.concurrent_calls)
        return caller.in_flight


class WorkLanes:
    """Tool answers off the event loop, fairly: each caller's answers are computed one at a time (its lane) in a
    worker thread, with at most `workers` threads in all. The loop stays free for /healthz, other callers' requests
    and the transport; a caller sending many heavy calls queues behind itself, not in front of everyone else.

    With `cpu_share` below 1, answers are paced (entra_mcp/pacing.py): a long answer gives way at its checkpoints
    whenever others were running, and a caller that has used more than `cpu_share` of a CPU (after a burst of
    `cpu_burst` seconds) waits, between its calls and inside a long one, until it is back under its share. Python's
    GIL lets one thread run at a time, so this is what keeps one caller's heavy answers from slowing everyone's.

    A call its tool declares heavy (`heavy=True`: computed by the answer workers, server/workers.py) waits for its
    worker process on one of `heavy_threads` threads of its own, so that callers waiting for the workers never hold
    the threads that answer everyone's light calls."""

    MAX_LANES = 10_000

    def __init__(self, workers: int = 4, *, cpu_share: float = 1.0, cpu_burst: float = 0.5, heavy_threads: int = 8) -> None:
        self._threads = anyio.CapacityLimiter(workers)
        self._heavy_threads = anyio.CapacityLimiter(heavy_threads)
        self._lanes: OrderedDict[str, tuple[anyio.Lock, CpuBudget]] = OrderedDict()
        self.cpu_share = cpu_share
        self.cpu_burst = cpu_burst

    def _lane(self, key: str) -> tuple[anyio.Lock, CpuBudget]:
        lane = self._lanes.get(key)
        if lane is None:
            lane = self._lanes[key] = (anyio.Lock(), CpuBudget(self.cpu_share, self.cpu_burst))
            while len(self._lanes) > self.MAX_LANES:
                self._lanes.popitem(last=False)
        self._lanes.move_to_end(key)
        return lane

    async def run(self, key: str, work: Callable[[], Any], *, heavy: bool = False) -> Any:
        lock, budget = self._lane(key)
        threads = self._heavy_threads if heavy else self._threads
        async with lock:
            if self.cpu_share >= 1:
                return await anyio.to_thread.run_sync(work, limiter=threads)
            debt = budget.debt()
            if debt > 0:  # over its share: wait on the loop, holding no thread and no GIL
                await anyio.sleep(min(debt, MAX_WAIT_FOR_SHARE))

            def paced_work() -> Any:
                with paced(Pacer(budget)):
                    return work()

            return await anyio.to_thread.run_sync(paced_work, limiter=threads)


def too_many(refusal: Refusal) -> JSONResponse:
    """The 429 a refused caller gets."""
    return JSONResponse(
        {"error": "too_many_requests", "reason": refusal.reason, "error_description": refusal.message},
        429,
        headers={"Retry-After": str(refusal.retry_after)},
    )


__all__ = ["BodyBounds", "BufferBudget", "PrincipalLimits", "Refusal", "WorkLanes", "request_deadline_protocol", "too_many"]
