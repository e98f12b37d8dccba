"""Rate-limit counters shared by the replicas: one token bucket per key in Redis, updated by one Lua script.

`SharedRateLimiter(shared, name, per_minute)` has the `Limiter` interface of ratelimit.py: the same buckets (burst of
`per_minute`, refilled at per_minute/60 a second), counted for all replicas together, so a caller spread over three
replicas by the load balancer gets its `per_minute`, not three times it. The script reads Redis's own clock (TIME), so
replicas whose clocks differ still agree; the bucket's key expires once it would be full again.

Keys: `{key_prefix}rate:{name}:{sha256(key)[:32]}` (a caller's key can be long; it is hashed, never a secret anyway).

`admit_async` is what the server's request path awaits: the same script over the event loop's redis.asyncio
client (sharedstore/connection.py `acall`), so the loop is not blocked for the round trip (~0.3 ms, more under
load) of every /mcp request; `admit` stays for synchronous callers.

Redis unavailable: the limiter counts in this process (a `RateLimiter` of the same rate) and says so once in the log
(the connection logs the outage once too); when Redis answers again the shared buckets take over without a restart.
A caller may get up to one extra bucket per replica during an outage: a limit that degrades, never a refusal of
everyone.
"""

from __future__ import annotations

import hashlib

from entra_mcp.errors import StoreUnavailable
from entra_mcp.logs import get_logger
from entra_mcp.ratelimit import RateLimiter
from entra_mcp.sharedstore.connection import SharedRedis

log = get_logger("sharedstore.counters")

WHAT = "the shared rate-limit counters"

# KEYS[1] bucket; ARGV[1] capacity (= per minute), ARGV[2] refill per second. Returns 0 (admitted) or seconds to wait.
TOKEN_BUCKET = """
local cap = tonumber(ARGV[1])
local rate = tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local b = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(b[1]) or cap
local ts = tonumber(b[2]) or now
tokens = math.min(cap, tokens + math.max(0, now - ts) * rate)
local wait = 0
if tokens >= 1 then
  tokens = tokens - 1
else
  wait = math.max(1, math.ceil((1 - tokens) / rate))
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'ts', tostring(now))
redis.call('PEXPIRE', KEYS[1], math.ceil((cap - tokens) / rate * 1000) + 1000)
return wait
"""


class SharedRateLimiter:
    """`per_minute` requests per key across every replica (module doc)."""

    def __init__(self, shared: SharedRedis, name: str, per_minute: int, *, max_local_keys: int = 50_000) -> None:
        if per_minute < 1:
            raise ValueError("per_minute must be at least 1")
        self.shared = shared
        self.name = name
        self.per_minute = per_minute
        self.rate = per_minute / 60.0
        self.local = RateLimiter(per_minute, max_keys=max_local_keys)
        self._script = shared.client.register_script(TOKEN_BUCKET)
        self._counting_locally = False

    def _key(self, key: str) -> str:
        return self.shared.key("rate", self.name, hashlib.sha256(key.encode("utf-8")).hexdigest()[:32])

    def admit(self, key: str) -> int | None:
        try:
            wait = self.shared.call(lambda c: self._script(keys=[self._key(key)], args=[self.per_minute, self.rate]),
                                    what=WHAT)
        except StoreUnavailable:
            return self._locally(key)
        return self._shared_answer(wait)

    async def admit_async(self, key: str) -> int | None:
        """`admit` without blocking the event loop (module doc)."""
        try:
            script = self.shared.ascript(TOKEN_BUCKET)
            wait = await self.shared.acall(lambda c: script(keys=[self._key(key)], args=[self.per_minute, self.rate],
                                                            client=c), what=WHAT)
        except StoreUnavailable:
            return self._locally(key)
        return self._shared_answer(wait)

    def _locally(self, key: str) -> int | None:
        if not self._counting_locally:
            self._counting_locally = True
            log.warning("%s limits are counted by this replica alone until the shared store answers again", self.name)
        return self.local.admit(key)

    def _shared_answer(self, wait: object) -> int | None:
        if self._counting_locally:
            self._counting_locally = False
            log.info("%s limits are shared by the replicas again", self.name)
        return int(wait) or None  # type: ignore[call-overload]


__all__ = ["TOKEN_BUCKET", "SharedRateLimiter"]
