"""The async Microsoft Graph client: the only code that sends requests to Graph.

What it does for every request:
- bounded concurrency (a semaphore) over one keep-alive HTTP/1.1 connection pool;
- a bearer token from the tenant's token source; a 401 InvalidAuthenticationToken gets ONE forced refresh and one
  retry;
- retries of 429, 503, 504 and dropped connections, honouring Retry-After in every form (integer, decimal seconds,
  HTTP date), else capped exponential back-off with jitter; all retries of one run draw from one budget and each
  back-off is logged;
- everything else becomes a typed error (errors.py): PermissionDenied (with the Graph code and the permission to
  grant), DeltaTokenExpired (410, syncStateNotFound, resyncRequired), NotFound, GraphError, TransientError when the
  retry budget runs out;
- counts requests, retries, throttled responses and time spent, for `status` and the benchmark;
- asks the context's `REQUEST_GATE` (when one is set) right before each request goes out: the sync leader of
  several replicas sets one that stops the run once its lease is lost (cluster/replica.py), so a leader resumed after
  a pause sends no request past its lease;
- gives each request it sends (each attempt) Graph's `client-request-id` header, made once the gate let it through:
  Microsoft's guidance for every Graph call (Graph echoes it, and support finds a request by it). A UUID version 7
  (RFC 9562): its first 48 bits are the Unix time in milliseconds it was made, so the ids of a run sort by when
  each request was started.

`transport=`, `sleep=`, `wall_clock=` and `random=` are injectable so tests exercise the real retry logic without
waiting.
"""

from __future__ import annotations

import contextvars
import email.utils
import os
import random as _random
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Awaitable, Callable, Mapping, Protocol
from urllib.parse import urlsplit

import anyio
import httpx

from entra_mcp.graph.budget import RequestBudget
from entra_mcp.errors import AuthError, DeltaTokenExpired, GraphError, NotFound, PermissionDenied, TransientError
from entra_mcp.logs import get_logger

log = get_logger("graph.client")

RETRY_STATUSES = frozenset({429, 503, 504})
DELTA_EXPIRED_CODES = frozenset({"syncStateNotFound", "resyncRequired", "SyncStateNotFound", "ResyncRequired"})
# Entra's signInActivity refusals (docs/graph-facts-directory.md, "signInActivity")
SIGNIN_CODES = frozenset({"Authentication_MSGraphPermissionMissing", "Authentication_RequestFromNonPremiumTenantOrB2CTenant"})


# Awaited right before each request is sent (in the task that sends it, and the tasks it started): it may cancel the
# run it belongs to (it then raises the cancellation) but never sends anything itself. None: no gate.
REQUEST_GATE: contextvars.ContextVar[Callable[[], Awaitable[None]] | None] = contextvars.ContextVar(
    "entra_mcp_graph_request_gate", default=None)


class TokenSource(Protocol):
    async def token(self, *, force_refresh: bool = False) -> str: ...


def client_request_id(unix_seconds: float) -> str:
    """A `client-request-id` for a request started at `unix_seconds`: a UUID version 7 (RFC 9562), 48 bits of Unix
    time in milliseconds, then the version, 12 random bits, the variant and 62 random bits."""
    rand = int.from_bytes(os.urandom(10), "big")  # 80 bits: 12 + 62 used
    value = (int(unix_seconds * 1000) & ((1 << 48) - 1)) << 80 | 0x7 << 76 | (rand >> 62 & 0xFFF) << 64
    value |= 0b10 << 62 | rand & ((1 << 62) - 1)
    return str(uuid.UUID(int=value))


def permission_for(path: str) -> str:
    """The least-privileged application permission that reads `path` (docs/graph-facts-directory.md, "Permissions")."""
    p = path.lower()
    if "signinactivity" in p:
        return "AuditLog.Read.All"
    if p.startswith("/users"):
        return "User.Read.All"
    if p.startswith("/groups"):
        return "GroupMember.Read.All"
    if p.startswith("/applications") or p.startswith("/serviceprincipals"):
        return "Application.Read.All"
    if p.startswith("/domains"):
        return "Domain.Read.All"
    return "Directory.Read.All"


def parse_retry_after(value: str | None, *, now: datetime | None = None) -> float | None:
    """Seconds to wait from a Retry-After header: "10", "2.128" or an HTTP date. None when absent or unreadable."""
    if value is None:
        return None
    value = value.strip()
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=timezone.utc)
        now = now or datetime.now(timezone.utc)
        return max(0.0, (when - now).total_seconds())
    if seconds != seconds or seconds < 0:  # NaN or negative
        return None
    return seconds


@dataclass
class RetryPolicy:
    max_attempts: int = 8  # per request (the first try included) for 5xx and dropped connections
    max_throttled_attempts: int = 100  # per request for 429 with Retry-After: throttling is expected, not a failure
    budget: int = 1000  # retries per run, all requests together
    base_backoff: float = 0.5
    max_backoff: float = 30.0
    max_retry_after: float = 120.0  # a Retry-After beyond this is capped (and logged)

    def backoff(self, attempt: int, rnd: float) -> float:
        """Capped exponential back-off with full jitter in [50%, 100%] of the step."""
        step = min(self.max_backoff, self.base_backoff * float(2 ** max(0, attempt - 1)))
        return step * (0.5 + 0.5 * rnd)


@dataclass
class ClientStats:
    requests: int = 0
    retries: int = 0
    throttled: int = 0
    token_refreshes: int = 0
    seconds_waiting: float = 0.0  # time slept in back-off
    seconds: float = 0.0  # wall time spent in requests (incl. back-off)
    by_area: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "retries": self.retries,
            "throttled": self.throttled,
            "tokenRefreshes": self.token_refreshes,
            "secondsWaiting": round(self.seconds_waiting, 3),
            "seconds": round(self.seconds, 3),
        }


def _graph_error_of(response: httpx.Response) -> tuple[str | None, str]:
    """(code, message) from a Graph error body; tolerant of bodies that are not Graph-shaped."""
    try:
        body = response.json()
    except ValueError:
        return None, (response.text[:200].strip() or response.reason_phrase)
    err = body.get("error") if isinstance(body, dict) else None
    if isinstance(err, dict):
        return (str(err["code"]) if err.get("code") else None), str(err.get("message") or "")[:300]
    if isinstance(err, str):  # OAuth-shaped
        return err, str(body.get("error_description") or "")[:300]
    return None, response.reason_phrase


class GraphClient:
    """One tenant's Graph client. Use `async with GraphClient(...)` or call `aclose()`."""

    def __init__(
        self,
        graph_host: str,
        tokens: TokenSource,
        *,
        ca_bundle: str | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        max_concurrency: int = 8,
        timeout: float = 60.0,
        retry: RetryPolicy | None = None,
        sleep: Callable[[float], Awaitable[None]] = anyio.sleep,
        wall_clock: Callable[[], datetime] | None = None,
        random: Callable[[], float] = _random.random,
        clock: Callable[[], float] = time.monotonic,
        api_version: str = "v1.0",
        budget: RequestBudget | None = None,
    ) -> None:
        self.graph_host = graph_host.rstrip("/")
        self.base_url = f"{self.graph_host}/{api_version}"
        self._origin = urlsplit(self.graph_host)[:2]
        self._tokens = tokens
        self._sem = anyio.Semaphore(max_concurrency)
        self.retry = retry or RetryPolicy()
        self._budget = self.retry.budget
        self._sleep = sleep
        self._wall_clock = wall_clock or (lambda: datetime.now(timezone.utc))
        self._random = random
        self._clock = clock
        # A 429 pauses every request of this client until its Retry-After has passed: the resource-unit bucket is per
        # app and tenant, so concurrent requests retrying on their own would only burn it again (a thundering herd).
        self._not_before = 0.0
        self._request_budget = budget  # the tenant's requests per 10 s (graph/budget.py), shared with its other clients
        self.stats = ClientStats()
        self._token: str | None = None
        self._token_lock = anyio.Lock()
        limits = httpx.Limits(max_connections=max_concurrency, max_keepalive_connections=max_concurrency)
        self._http = httpx.AsyncClient(
            transport=transport,
            verify=str(ca_bundle) if ca_bundle else True,
            timeout=httpx.Timeout(timeout, connect=15.0),
            limits=limits,
            http2=False,
            headers={"Accept": "application/json", "User-Agent": "entra-mcp"},
        )

    async def __aenter__(self) -> "GraphClient":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    def reset_budget(self) -> None:
        self._budget = self.retry.budget

    def url(self, path_or_url: str) -> str:
        """An absolute URL: paths are relative to /v1.0; absolute URLs (nextLink, deltaLink) must stay on Graph's host,
        since the bearer token goes with them."""
        if path_or_url.startswith("https://") or path_or_url.startswith("http://"):
            if urlsplit(path_or_url)[:2] != self._origin:
                raise GraphError(
                    f"Graph returned a link to another host ({urlsplit(path_or_url).netloc}); refusing to send the "
                    f"token there (expected {self._origin[1]})."
                )
            return path_or_url
        return f"{self.base_url}/{path_or_url.lstrip('/')}"

    async def get(self, path_or_url: str, *, params: Mapping[str, str] | None = None, headers: Mapping[str, str] | None = None, area: str | None = None) -> dict[str, Any]:
        return await self.request("GET", path_or_url, params=params, headers=headers, area=area)

    async def post(self, path_or_url: str, *, json: Any, headers: Mapping[str, str] | None = None, area: str | None = None,
                   weight: int = 1) -> dict[str, Any]:
        return await self.request("POST", path_or_url, json=json, headers=headers, area=area, weight=weight)

    async def ensure_token(self) -> None:
        """Get a token now (raises AuthError when the login host refuses the credential)."""
        await self._bearer(force=False)

    async def _bearer(self, force: bool) -> str:
        # asked every request: the token source hands back its cached token and renews it before expiry
        if force:
            self.stats.token_refreshes += 1
        self._token = await self._tokens.token(force_refresh=force)
        return self._token

    async def request(
        self,
        method: str,
        path_or_url: str,
        *,
        params: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
        json: Any = None,
        area: str | None = None,
        weight: int = 1,
    ) -> dict[str, Any]:
        """One request with the retries above. `weight`: how many requests Graph counts it as (a $batch: its items),
        taken from the tenant's request budget before each attempt."""
        url = self.url(path_or_url)
        path = urlsplit(url).path.removeprefix(urlsplit(self.base_url).path)
        attempt = 0
        throttled = 0
        refreshed = False
        waited = False
        started = time.monotonic()
        try:
            while True:
                attempt += 1
                pause = self._not_before - self._clock()
                if pause > 0 and not waited:
                    # another request was throttled: wait out its Retry-After, with a little jitter to spread the herd
                    pause *= 1.0 + 0.2 * self._random()
                    self.stats.seconds_waiting += pause
                    await self._sleep(pause)
                waited = False
                if self._request_budget is not None:
                    turn = self._request_budget.reserve(weight)
                    if turn > 0:
                        self.stats.seconds_waiting += turn
                        await self._sleep(turn)
                token = await self._bearer(force=False)
                hdrs = {"Authorization": f"Bearer {token}", **(headers or {})}
                try:
                    async with self._sem:
                        gate = REQUEST_GATE.get()
                        if gate is not None:
                            await gate()
                        self.stats.requests += 1
                        if area:
                            self.stats.by_area[area] = self.stats.by_area.get(area, 0) + 1
                        hdrs["client-request-id"] = client_request_id(self._wall_clock().timestamp())
                        response = await self._http.request(method, url, params=params, headers=hdrs, json=json)
                except httpx.TransportError as exc:
                    self._raise_if_fatal_transport(exc)
                    if isinstance(exc, httpx.ConnectError) and attempt - throttled >= 3:
                        raise TransientError(
                            f"cannot connect to the Graph host {self._origin[1]} ({type(exc).__name__}). Fix: check "
                            "cloud (or graph_url for cloud = \"custom\"), the network or proxy, and ca_bundle."
                        ) from None
                    await self._back_off(attempt - throttled, None, f"{type(exc).__name__} on {method} {path}")
                    waited = True
                    continue
                status = response.status_code
                if status < 300:
                    try:
                        data = response.json()
                    except ValueError:
                        await self._back_off(attempt - throttled, None, f"unreadable JSON body on {method} {path}")
                        waited = True
                        continue
                    return data if isinstance(data, dict) else {"value": data}
                if status == 401 and not refreshed:
                    # an expired or revoked token: one fresh token, one retry (docs/graph-facts-directory.md, "Errors"). When a
                    # concurrent request already renewed it, use that one.
                    refreshed = True
                    async with self._token_lock:
                        if self._token == token:
                            await self._bearer(force=True)
                    log.info("Graph answered 401 on %s %s; retrying once with a fresh token", method, path)
                    continue
                if status in RETRY_STATUSES:
                    wait = parse_retry_after(response.headers.get("Retry-After"), now=self._wall_clock())
                    what = f"HTTP {status} on {method} {path}"
                    if status == 429:
                        self.stats.throttled += 1
                        throttled += 1
                        if wait is not None:
                            self._not_before = max(self._not_before, self._clock() + min(wait, self.retry.max_retry_after))
                        if self._request_budget is not None:  # the tenant's other clients slow down too
                            self._request_budget.throttled(min(wait, self.retry.max_retry_after) if wait is not None else None)
                        if throttled >= self.retry.max_throttled_attempts:
                            raise TransientError(f"{what}: still throttled after {throttled} attempts; the next run retries.")
                        await self._back_off(1 if wait is not None else throttled, wait, what)
                    else:
                        await self._back_off(attempt - throttled, wait, what)
                    waited = True
                    continue
                raise self._error(response, method, path)
        finally:
            self.stats.seconds += time.monotonic() - started

    def _raise_if_fatal_transport(self, exc: httpx.TransportError) -> None:
        text = str(exc)
        host = self._origin[1]
        if "CERTIFICATE_VERIFY_FAILED" in text or "certificate verify failed" in text.lower():
            raise GraphError(
                f"cannot verify the TLS certificate of the Graph host {host}. Fix: if a TLS-inspecting proxy or a local "
                "emulator sits in between, set ca_bundle to its CA certificate; otherwise check cloud / graph_url."
            ) from None
        if isinstance(exc, httpx.UnsupportedProtocol | httpx.InvalidURL):
            raise GraphError(f"the Graph URL {self.graph_host} is not usable: {exc}. Fix: check cloud / graph_url.") from None

    async def back_off(self, attempt: int, retry_after: float | None, what: str, *, throttled: bool = False) -> None:
        """Wait before retry number `attempt` (Retry-After when given), drawing on this run's retry budget; raises
        TransientError when the attempts or the budget are used up. Used by $batch item retries: `throttled` (items
        answered 429) pauses the whole client like a 429 on a request and allows max_throttled_attempts."""
        if throttled:
            if retry_after is not None:
                self._not_before = max(self._not_before, self._clock() + min(retry_after, self.retry.max_retry_after))
            if attempt >= self.retry.max_throttled_attempts:
                raise TransientError(f"{what}: still throttled after {attempt} attempts; the next run retries.")
            await self._back_off(1, retry_after, what)
            return
        await self._back_off(attempt, retry_after, what)

    async def _back_off(self, attempt: int, retry_after: float | None, what: str) -> None:
        if attempt >= self.retry.max_attempts or self._budget <= 0:
            why = "retry budget of this run is used up" if self._budget <= 0 else f"gave up after {attempt} attempts"
            raise TransientError(f"{what}: {why}. Graph ({self._origin[1]}) may be throttling or unavailable; the next run retries.")
        self._budget -= 1
        self.stats.retries += 1
        if retry_after is not None:
            wait = retry_after
            if wait > self.retry.max_retry_after:
                log.warning("%s: Retry-After %.1fs is longer than %.0fs; waiting %.0fs", what, wait, self.retry.max_retry_after, self.retry.max_retry_after)
                wait = self.retry.max_retry_after
            source = "Retry-After"
        else:
            wait = self.retry.backoff(attempt, self._random())
            source = "back-off"
        log.info("%s: retrying in %.2fs (%s, attempt %d)", what, wait, source, attempt + 1)
        self.stats.seconds_waiting += wait
        await self._sleep(wait)

    def _error(self, response: httpx.Response, method: str, path: str) -> Exception:
        status = response.status_code
        code, message = _graph_error_of(response)
        where = f"{method} {path}"
        if status == 410 or (code in DELTA_EXPIRED_CODES):
            return DeltaTokenExpired(f"the delta link is no longer valid ({code or status}) on {where}: a full resync follows", status=status, graph_code=code)
        if status == 403:
            perm = "AuditLog.Read.All" if code == "Authentication_MSGraphPermissionMissing" else permission_for(path + "?" + (response.request.url.query.decode() if response.request else ""))
            if code == "Authentication_RequestFromNonPremiumTenantOrB2CTenant":
                msg = f"Graph refused ({code}): the tenant needs an Entra ID P1/P2 licence for sign-in activity"
            else:
                msg = f"Graph refused ({code or 'HTTP 403'}): grant {perm}"
            err = PermissionDenied(msg, status=status, graph_code=code)
            err.permission = perm  # type: ignore[attr-defined]
            return err
        if status == 401:
            return AuthError(f"Graph refused the access token twice ({code or 401}) on {where}: {message}", code="GRAPH_UNAUTHORIZED")
        if status == 404:
            return NotFound(f"Graph found nothing at {where} ({code or 404})", status=status, graph_code=code)
        return GraphError(f"Graph answered HTTP {status} ({code or 'no code'}) on {where}: {message}", status=status, graph_code=code)


__all__ = ["REQUEST_GATE", "ClientStats", "GraphClient", "RetryPolicy", "TokenSource", "client_request_id", "parse_retry_after",
           "permission_for"]
