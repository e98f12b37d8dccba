"""One sync leader per tenant: a lease in Redis with a fencing token, and the fenced publication record.

Keys (`prefix` is `[server.store] key_prefix`, the tenant name is a config name: letters, digits, `_.-`):
  {prefix}sync:{tenant}:lease      "<holder>|<token>", expiring after the lease time (PX); renewed while it leads
  {prefix}sync:{tenant}:fence      the newest fencing token (INCR on every new lease: monotonic, never reused)
  {prefix}sync:{tenant}:published  the newest publication (JSON: version, stamp, token, file, holder, asOf, kind)
  {prefix}sync:{tenant}:log        the last publications, oldest first (bounded list; for `status` and the tests)
  {prefix}sync:{tenant}:refused    how many publications a fenced-off leader attempted (a counter)
  {prefix}sync:{tenant}:signins:published, ...:signins:log
                                   the same for the tenant's sign-in events (their own mirror, polled apart from the
                                   directory sync), published under the same lease and fencing token

Why a token as well as an expiring key: a leader can be paused (SIGSTOP, a long GC pause, a frozen VM) past its
lease, while another replica takes over; when it resumes it still believes it leads. Every publication is therefore
one Lua script that compares the publisher's token with the lease and the newest token *inside Redis*, atomically:
a paused leader's commit is refused, so no two commits for one tenant land.

Redis unreachable: nobody acquires or renews, so nobody syncs; every replica keeps answering from the mirror it has.
Every command goes through sharedstore's `SharedRedis.call`, which turns Redis errors into StoreUnavailable (no URL,
no password in it).
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import time
from dataclasses import dataclass
from typing import Any, Callable

from entra_mcp.errors import StoreUnavailable
from entra_mcp.logs import get_logger

log = get_logger("cluster.lease")

# KEYS: lease, fence; ARGV: holder, ttl ms. Returns the token (an existing lease of this holder is extended) or nil.
_ACQUIRE = """
local cur = redis.call('GET', KEYS[1])
if cur then
  local sep = string.find(cur, '|', 1, true)
  if sep and string.sub(cur, 1, sep - 1) == ARGV[1] then
    redis.call('PEXPIRE', KEYS[1], ARGV[2])
    return tonumber(string.sub(cur, sep + 1))
  end
  return false
end
local tok = redis.call('INCR', KEYS[2])
redis.call('SET', KEYS[1], ARGV[1] .. '|' .. tok, 'PX', ARGV[2])
return tok
"""

# KEYS: lease; ARGV: "<holder>|<token>", ttl ms. 1 when still held (and extended), else 0.
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
"""

# KEYS: lease; ARGV: "<holder>|<token>". 1 when it was held and is now released.
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  return 1
end
return 0
"""

# KEYS: lease, fence, published, log, refused; ARGV: "<holder>|<token>", token, record, max log length.
# The fencing check and the publication are one atomic step.
_PUBLISH = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] or tonumber(redis.call('GET', KEYS[2]) or '0') ~= tonumber(ARGV[2]) then
  redis.call('INCR', KEYS[5])
  return 0
end
redis.call('SET', KEYS[3], ARGV[3])
redis.call('RPUSH', KEYS[4], ARGV[3])
redis.call('LTRIM', KEYS[4], -tonumber(ARGV[4]), -1)
return 1
"""

# KEYS: the replica set; ARGV: holder, ttl ms. This replica alive until now + ttl (Redis's clock); the others whose
# time ran out dropped; returns how many replicas are alive.
_HEARTBEAT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
redis.call('PEXPIRE', KEYS[1], 2 * tonumber(ARGV[2]))
return redis.call('ZCARD', KEYS[1])
"""

LOG_LENGTH = 1000
CHANNELS = ("", "signins")  # what a tenant's leader publishes: its directory mirror, its sign-in events' mirror


def replica_id() -> str:
    """This process among the replicas: host, pid and a random suffix (a restarted pid is another replica)."""
    return f"{socket.gethostname()[:40]}:{os.getpid()}:{secrets.token_hex(3)}"


@dataclass(frozen=True)
class Publication:
    """The newest committed version of a tenant as published by its leader (the Redis record)."""

    version: int  # the leader's data version
    stamp: int  # the leader's commit stamp (moves with freshness-only runs too)
    token: int  # the fencing token of the lease it was published under
    file: str  # the snapshot file's name in the tenant's snapshot directory
    data_file: str  # the data snapshot it belongs to (itself, or the one a freshness publication refreshes)
    holder: str
    as_of: str | None
    kind: str  # "data" | "freshness"
    published_at: float

    def to_json(self) -> str:
        return json.dumps(self.__dict__, separators=(",", ":"))

    @classmethod
    def from_json(cls, raw: str | bytes | None) -> "Publication | None":
        if not raw:
            return None
        try:
            d = json.loads(raw)
            return cls(**{k: d[k] for k in cls.__dataclass_fields__})
        except (ValueError, TypeError, KeyError):
            log.warning("ignoring an unreadable publication record in Redis")
            return None


class ReplicaSet:
    """The replicas alive now ({prefix}sync:replicas, a sorted set of holders by the time each stops counting), so
    that each takes about its share of the tenants' leases."""

    def __init__(self, shared: Any, *, holder: str, ttl_seconds: float) -> None:
        self._shared = shared
        self.holder = holder
        self.ttl_ms = max(100, int(ttl_seconds * 1000))
        self.key = shared.key("sync", "replicas")
        self._beat = shared.client.register_script(_HEARTBEAT)

    def beat(self) -> int:
        """Say this replica is alive for another ttl; how many replicas are alive (at least 1). StoreUnavailable."""
        n = self._shared.call(lambda c: self._beat(keys=[self.key], args=[self.holder, self.ttl_ms]),
                              what="the sync leases (the replica set)")
        return max(1, int(n))

    def leave(self) -> None:
        try:
            self._shared.call(lambda c: c.zrem(self.key, self.holder), what="the sync leases (the replica set)")
        except StoreUnavailable:
            pass


class SyncLease:
    """The lease of one tenant's sync, held by `holder`, through `shared` (sharedstore's SharedRedis). Thread-safe as
    far as the Redis client is. Redis errors: StoreUnavailable.

    `acquire()` -> token or None; while held, `renew()` every `ttl/3`; `release()` on a clean stop. `held_until` is a
    conservative local deadline (from before the command was sent): past it this process no longer assumes it leads.
    """

    def __init__(self, shared: Any, *, tenant: str, holder: str, ttl_seconds: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._shared = shared
        self.tenant = tenant
        self.holder = holder
        self.ttl_ms = max(100, int(ttl_seconds * 1000))
        self._clock = clock
        self.keys: dict[str, str] = {name: shared.key("sync", tenant, name)
                                     for name in ("lease", "fence", "published", "log", "refused")}
        for name in ("published", "log"):
            self.keys[f"signins:{name}"] = shared.key("sync", tenant, "signins", name)
        self.token: int | None = None
        self.held_until = 0.0
        client = shared.client
        self._acquire = client.register_script(_ACQUIRE)
        self._renew = client.register_script(_RENEW)
        self._release = client.register_script(_RELEASE)
        self._publish = client.register_script(_PUBLISH)

    @property
    def ttl_seconds(self) -> float:
        return self.ttl_ms / 1000.0

    def _value(self) -> str:
        return f"{self.holder}|{self.token}"

    def _call(self, what: str, fn: Callable[[], Any]) -> Any:
        return self._shared.call(lambda client: fn(), what=f"the sync lease of tenant {self.tenant} ({what})")

    def held(self) -> bool:
        """Whether this process may still assume it leads (its last renewal is younger than the lease)."""
        return self.token is not None and self._clock() < self.held_until

    def acquire(self) -> int | None:
        """Take the lease when it is free (or extend ours): the fencing token, or None when another replica leads."""
        sent = self._clock()
        token = self._call("take", lambda: self._acquire(keys=[self.keys["lease"], self.keys["fence"]],
                                                         args=[self.holder, self.ttl_ms]))
        if token is None:
            self.token = None
            return None
        if self.token != int(token):
            log.info("tenant %s: this replica leads the sync now (fencing token %s)", self.tenant, token)
        self.token = int(token)
        self.held_until = sent + self.ttl_seconds
        return self.token

    def renew(self) -> bool:
        """Extend the lease; False when it was lost (expired and maybe taken by another replica)."""
        if self.token is None:
            return False
        sent = self._clock()
        ok = self._call("renew", lambda: self._renew(keys=[self.keys["lease"]], args=[self._value(), self.ttl_ms]))
        if int(ok) == 1:
            self.held_until = sent + self.ttl_seconds
            return True
        log.warning("tenant %s: this replica lost the sync lease (fencing token %s)", self.tenant, self.token)
        self.token = None
        return False

    def release(self) -> None:
        """Give the lease up (clean stop): another replica may take it at once instead of after the lease time."""
        if self.token is None:
            return
        try:
            self._call("release", lambda: self._release(keys=[self.keys["lease"]], args=[self._value()]))
        except StoreUnavailable as exc:
            log.info("%s; it expires by itself", exc)
        self.token = None

    def channel_key(self, name: str, channel: str = "") -> str:
        """The key of `name` ("published" or "log") of a channel (CHANNELS: "" the directory, "signins")."""
        return self.keys[f"{channel}:{name}" if channel else name]

    def publish(self, record: Publication, *, token: int | None = None, channel: str = "") -> bool:
        """Make `record` the tenant's newest publication (of `channel`), only if `token` (default: ours) still holds
        the lease and is the newest token (one atomic script). False: refused, another replica leads."""
        token = self.token if token is None else token
        if token is None:
            return False
        value = f"{self.holder}|{token}"
        keys = [self.keys["lease"], self.keys["fence"], self.channel_key("published", channel),
                self.channel_key("log", channel), self.keys["refused"]]
        ok = self._call("publish under", lambda: self._publish(keys=keys, args=[value, token, record.to_json(), LOG_LENGTH]))
        return int(ok) == 1

    # --- what anyone may read ---
    def leader(self) -> tuple[str, int] | None:
        """(holder, token) of the current lease, or None when nobody leads."""
        raw = self._call("read", lambda: self._shared.client.get(self.keys["lease"]))
        if not raw:
            return None
        text = raw.decode() if isinstance(raw, bytes) else str(raw)
        holder, _, token = text.rpartition("|")
        return (holder, int(token)) if token.isdigit() else None

    def published(self, channel: str = "") -> Publication | None:
        key = self.channel_key("published", channel)
        return Publication.from_json(self._call("read", lambda: self._shared.client.get(key)))

    def history(self, channel: str = "") -> list[Publication]:
        key = self.channel_key("log", channel)
        raw = self._call("read", lambda: self._shared.client.lrange(key, 0, -1))
        return [p for p in map(Publication.from_json, raw) if p is not None]

    def refused(self) -> int:
        raw = self._call("read", lambda: self._shared.client.get(self.keys["refused"]))
        return int(raw or 0)


def read_publications(shared: Any, leases: list[SyncLease], channels: tuple[str, ...] = CHANNELS
                      ) -> dict[tuple[str, str], Publication | None]:
    """The newest publication of every (tenant, channel) of `leases`: ONE Redis command (MGET) whatever the number
    of tenants, which is what a follower's poll costs Redis. StoreUnavailable when Redis cannot answer."""
    wanted = [(lease.tenant, ch, lease.channel_key("published", ch)) for lease in leases for ch in channels]
    if not wanted:
        return {}
    raw = shared.call(lambda c: c.mget([k for _, _, k in wanted]), what="the published versions")
    return {(tenant, ch): Publication.from_json(value) for (tenant, ch, _), value in zip(wanted, raw)}


__all__ = ["CHANNELS", "LOG_LENGTH", "Publication", "ReplicaSet", "SyncLease", "read_publications", "replica_id"]
