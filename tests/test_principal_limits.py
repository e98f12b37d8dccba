"""Per-caller MCP session counting (server/limits.py PrincipalLimits) on an injected clock: what ends a session in
the count, and what keeps one open. End to end over HTTP: tests/test_hostile_http_bounds.py."""

from __future__ import annotations

from entra_mcp.server.limits import PrincipalLimits


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _limits(clock: Clock) -> PrincipalLimits:
    return PrincipalLimits(requests_per_minute=600, sessions=2, concurrent_calls=4, session_idle_seconds=60, clock=clock)


def test_a_caller_at_its_quota_is_refused_and_others_are_not() -> None:
    limits = _limits(Clock())
    limits.session_opened("a", "s1")
    limits.session_opened("a", "s2")
    refusal = limits.may_open_session("a")
    assert refusal is not None and refusal.reason == "sessions" and refusal.retry_after > 0
    assert limits.may_open_session("b") is None


def test_idle_sessions_leave_the_count_after_the_idle_timeout() -> None:
    clock = Clock()
    limits = _limits(clock)
    limits.session_opened("a", "s1")
    limits.session_opened("a", "s2")
    clock.now += 59
    limits.session_request("a", "s2", started=True)
    limits.session_request("a", "s2", started=False)  # s2 used: its idle time starts again
    clock.now += 2
    assert limits.open_sessions("a") == 1
    clock.now += 60
    assert limits.open_sessions("a") == 0


def test_a_session_with_a_request_in_progress_is_never_idle() -> None:
    clock = Clock()
    limits = _limits(clock)
    limits.session_opened("a", "stream")
    limits.session_request("a", "stream", started=True)  # e.g. the long-lived GET stream
    clock.now += 3600
    assert limits.open_sessions("a") == 1
    limits.session_request("a", "stream", started=False)
    clock.now += 61
    assert limits.open_sessions("a") == 0


def test_a_session_the_app_no_longer_knows_leaves_the_count() -> None:
    limits = _limits(Clock())
    limits.session_opened("a", "s1")
    limits.session_opened("a", "s2")
    limits.session_closed("a", "s1")  # DELETE, or a 404 from the MCP app
    assert limits.open_sessions("a") == 1 and limits.may_open_session("a") is None
    limits.session_closed("a", "unknown")
    limits.session_request("zz", "unknown", started=True)  # requests on sessions never counted change nothing
    assert limits.open_sessions("a") == 1
