"""The connection to the shared store: one Redis client per process, built from [server.store].

`SharedRedis.from_settings(store)` builds the client without any I/O; `wait_reachable(seconds)` is what `serve` calls
at start (a clear StoreUnavailable when Redis does not answer in time). Every command of the product goes through
`call(fn)`, the one place where the client's errors are translated: a refused or timed-out connection, a refused
password or ACL user become `StoreUnavailable`, whose message says what cannot be done now (it reaches sign-in pages
and tool results); where Redis is (the redacted URL) and why go to the log, never the password.

While Redis is down the process must not stall on it (the callers run on the event loop): after a failure `call`
fails at once, without opening a socket, and a background thread PINGs Redis every `RETRY_SECONDS` until it answers;
only the request that meets the outage first waits (at most `timeout_seconds`, e.g. for a host that stopped
answering). The first failure is logged as one WARNING and the recovery as one INFO line, whatever the number of
calls in between. Nothing needs restarting when Redis returns: the client reconnects on the next command.

Commands are synchronous with short timeouts (`timeout_seconds`, 2 s by default): Redis answers a local network in well
under a millisecond, and most callers (the session store, the leases on their own thread) are synchronous. What
runs on the server's event loop for every request (the /mcp rate limit) uses `acall(fn)` instead: the same error
translation and fail-fast window over a redis.asyncio client of the running loop (one per loop, same settings), so
the loop serves other requests while Redis answers. `async_client()` gives a new redis.asyncio client.
"""

from __future__ import annotations

import asyncio
import ssl
import threading
import time
import weakref
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import redis
import redis.asyncio
import redis.asyncio.retry
from redis.backoff import NoBackoff
from redis.retry import Retry

from entra_mcp.config import StoreSettings
from entra_mcp.errors import ConfigError, StoreUnavailable
from entra_mcp.logs import get_logger

log = get_logger("sharedstore")

T = TypeVar("T")

RETRY_SECONDS = 1.0  # while Redis is down, the background probe PINGs it this often
CLIENT_NAME = "entra-mcp"


def _reason(exc: BaseException) -> str:
    """A short, secret-free reason for a redis-py error (its text can echo the URL, never the password)."""
    if isinstance(exc, redis.exceptions.AuthenticationError | redis.exceptions.AuthenticationWrongNumberOfArgsError):
        return "the password or ACL user was refused"
    if isinstance(exc, redis.exceptions.NoPermissionError):
        return "the ACL user lacks a permission this needs"
    if isinstance(exc, redis.exceptions.TimeoutError):
        return "timed out"
    if isinstance(exc, redis.exceptions.BusyLoadingError):
        return "Redis is still loading its data"
    text = str(exc).lower()
    if "ssl" in text or "certificate" in text or isinstance(exc.__cause__ or exc.__context__, ssl.SSLError):
        return "the TLS handshake failed (check rediss:// and ca_bundle)"
    if "refused" in text:
        return "connection refused"
    if "name or service" in text or "nodename" in text or "resolve" in text:
        return "the host name does not resolve"
    if "read only" in text:
        return "Redis is a read-only replica"
    return type(exc).__name__


def client_kwargs(store: StoreSettings) -> dict[str, Any]:
    """Keyword arguments for `redis.Redis.from_url(store.redis_url, **kw)` (and redis.asyncio's): credentials from
    the environment, TLS trust, timeouts. ConfigError when the password variable or the CA file is missing."""
    if store.redis_url is None:
        raise ConfigError("no shared store is configured ([server.store] redis_url)")
    kw: dict[str, Any] = {
        "socket_timeout": store.timeout_seconds,
        "socket_connect_timeout": store.timeout_seconds,
        # one quick retry after a connection error: after Redis restarts, a pooled connection is dead but a new one
        # works at once. Not after a timeout: that would double the wait of the one request that meets an outage.
        "retry": Retry(NoBackoff(), 1, supported_errors=(redis.exceptions.ConnectionError,)),
        "client_name": CLIENT_NAME,
        "decode_responses": False,
    }
    password = store.password()
    if password is not None:
        kw["password"] = password
    if store.username is not None:
        kw["username"] = store.username
    if store.redis_url.startswith("rediss://"):
        kw["ssl_cert_reqs"] = "required"
        kw["ssl_check_hostname"] = True
        if store.ca_bundle is not None:
            ca = Path(store.ca_bundle).expanduser()
            if not ca.is_file():
                raise ConfigError(
                    f"server.store.ca_bundle: {ca} does not exist or is not a file. Fix: point it at the PEM of the CA "
                    "that signed the Redis server's certificate, or remove it to trust the system's CAs."
                )
            kw["ssl_ca_certs"] = str(ca)
    return kw


class SharedRedis:
    """The shared store's client with error translation and a fail-fast window while Redis is down (module doc)."""

    def __init__(self, store: StoreSettings, *, client: redis.Redis | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.settings = store
        self.prefix = store.key_prefix
        self.where = store.redacted_url()
        self.client: redis.Redis = client if client is not None else redis.Redis.from_url(
            store.redis_url or "", **client_kwargs(store)
        )
        self._clock = clock
        self._lock = threading.Lock()
        self._down_since: float | None = None
        self._last_reason = ""
        self._prober: threading.Thread | None = None
        self._closed = threading.Event()
        # per event loop: its redis.asyncio client and the scripts registered on it (acall, ascript)
        self._loops: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, tuple[redis.asyncio.Redis, dict[str, Any]]] = \
            weakref.WeakKeyDictionary()

    @classmethod
    def from_settings(cls, store: StoreSettings) -> "SharedRedis":
        return cls(store)

    def key(self, *parts: str) -> str:
        """A namespaced key: key_prefix + the parts joined by ':'."""
        return self.prefix + ":".join(parts)

    @property
    def available(self) -> bool:
        """False from a failed command until the background probe gets an answer again."""
        return self._down_since is None

    @staticmethod
    def unavailable(what: str = "the shared store") -> StoreUnavailable:
        """The error callers see: what cannot be done now. Where Redis is and why it failed go to the log only (the
        message reaches sign-in pages and tool results)."""
        return StoreUnavailable(f"{what} is unavailable (the shared store does not answer); retry in a few seconds")

    def call(self, fn: Callable[[redis.Redis], T], *, what: str = "the shared store") -> T:
        """Run `fn(client)`; StoreUnavailable when Redis cannot answer now. While Redis is known to be down this fails
        at once, without touching the network: a background probe (one PING every RETRY_SECONDS) notices its return,
        so no request ever waits for a timeout but the first one of an outage. Errors of the command itself (a bad
        script, a wrong type) are not about availability and pass through."""
        if self._down_since is not None:
            self._probe_in_background()
            raise self.unavailable(what)
        try:
            return fn(self.client)
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, redis.exceptions.NoPermissionError,
                redis.exceptions.ReadOnlyError, OSError) as exc:
            self._failed(exc)
            raise self.unavailable(what) from None

    def _loop_client(self) -> tuple[redis.asyncio.Redis, dict[str, Any]]:
        loop = asyncio.get_running_loop()
        found = self._loops.get(loop)
        if found is None:
            found = self._loops[loop] = (self.async_client(), {})
        return found

    def ascript(self, source: str) -> Any:
        """The Lua script `source` registered on the running loop's async client (call it inside `acall`)."""
        client, scripts = self._loop_client()
        script = scripts.get(source)
        if script is None:
            script = scripts[source] = client.register_script(source)
        return script

    async def acall(self, fn: Callable[[redis.asyncio.Redis], Awaitable[T]], *, what: str = "the shared store") -> T:
        """`call` for the event loop: awaits `fn(client)` on the running loop's redis.asyncio client, so the loop
        serves other work meanwhile. Same errors, same fail-fast window while Redis is known to be down."""
        if self._down_since is not None:
            self._probe_in_background()
            raise self.unavailable(what)
        try:
            return await fn(self._loop_client()[0])
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, redis.exceptions.NoPermissionError,
                redis.exceptions.ReadOnlyError, OSError, asyncio.TimeoutError) as exc:
            self._failed(exc)
            raise self.unavailable(what) from None

    def _failed(self, exc: BaseException) -> None:
        now = self._clock()
        with self._lock:
            self._last_reason = _reason(exc)
            if self._down_since is None:
                self._down_since = now
                log.warning("the shared store at %s is unavailable (%s): sign-in is refused and limits count locally "
                            "until it answers again", self.where, self._last_reason)
        self._probe_in_background()

    def _probe_in_background(self) -> None:
        with self._lock:
            if self._closed.is_set() or (self._prober is not None and self._prober.is_alive()):
                return
            self._prober = threading.Thread(target=self._probe, name="entra-mcp-redis-probe", daemon=True)
            self._prober.start()

    def _probe(self) -> None:
        while self._down_since is not None and not self._closed.wait(RETRY_SECONDS):
            try:
                self.client.ping()
            except (redis.exceptions.RedisError, OSError) as exc:
                self._last_reason = _reason(exc)
                continue
            self._recovered()

    def _recovered(self) -> None:
        with self._lock:
            if self._down_since is None:
                return
            log.info("the shared store at %s answers again (after %.1f s)", self.where, self._clock() - self._down_since)
            self._down_since = None
            self._last_reason = ""

    def ping(self) -> None:
        """One round trip; StoreUnavailable when it fails."""
        self.call(lambda c: c.ping())

    def reachable(self) -> bool:
        """Whether Redis answers a PING now (False at once while it is known to be down): for /healthz."""
        try:
            self.ping()
        except StoreUnavailable:
            return False
        return True

    def wait_reachable(self, seconds: float) -> None:
        """Poll until Redis answers a PING, at most `seconds` (serve's start). StoreUnavailable with the reason and
        the fix when it does not; a refused password fails at once (waiting would not fix it)."""
        deadline = time.monotonic() + seconds
        pause = threading.Event()
        while True:
            try:
                self.client.ping()
            except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, redis.exceptions.ResponseError,
                    OSError) as exc:
                reason = _reason(exc)
                credentials = isinstance(exc, redis.exceptions.AuthenticationError | redis.exceptions.NoPermissionError
                                         | redis.exceptions.AuthenticationWrongNumberOfArgsError)
                if credentials or time.monotonic() >= deadline:
                    fix = ("check server.store.username and the password in the variable server.store.password_env names"
                           if credentials else "start Redis, or correct server.store.redis_url "
                           "(remove [server.store] redis_url to run one replica on the local store)")
                    raise StoreUnavailable(
                        f"the shared store at {self.where} is unreachable ({reason}; waited {seconds:g} s, "
                        f"server.store.start_wait_seconds). Fix: {fix}."
                    ) from None
                pause.wait(0.1)
                continue
            self._recovered()
            return

    def async_client(self) -> redis.asyncio.Redis:
        """A redis.asyncio client with the same URL, credentials, TLS and timeouts (each call builds a new one)."""
        kw = client_kwargs(self.settings)
        # the same quick retry after a connection error (a pooled connection dead after a Redis restart), in the
        # asyncio client's own Retry (the synchronous one cannot retry an awaited command)
        kw["retry"] = redis.asyncio.retry.Retry(NoBackoff(), 1, supported_errors=(redis.exceptions.ConnectionError,))
        return redis.asyncio.Redis.from_url(self.settings.redis_url or "", **kw)

    def close(self) -> None:
        self._closed.set()
        if self._prober is not None:
            self._prober.join(timeout=self.settings.timeout_seconds * 2 + 1)
        self.client.close()


__all__ = ["RETRY_SECONDS", "SharedRedis", "client_kwargs"]
