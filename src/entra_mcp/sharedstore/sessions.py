"""Sign-in records in Redis: the `SessionRecords` of mirror/session_store.py for replicas sharing one store.

Same semantics as the local store: a record is keyed by its namespace and the SHA-256 of its secret
(`{key_prefix}rec:{namespace}:{sha256 hex}`), never by the secret; every record expires (Redis drops it itself, so
`purge_expired` has nothing to do); `take` is GETDEL, one atomic command, so of two replicas redeeming the same state
or one-time code only one gets it; `put` is one SET with its expiry (PX), so a record is whole or absent.

Values are JSON, not pickles: whoever can write to Redis must not be able to make a replica run code. A value that is
not a JSON object reads as absent. When Redis cannot answer, every method raises StoreUnavailable (the sign-in
routes answer 503; a chat-session check says the store is unavailable) and nothing is written.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from entra_mcp.mirror.session_store import secret_digest
from entra_mcp.sharedstore.connection import SharedRedis

WHAT = "the session store"
SCAN_BATCH = 500


class RedisSessionStore:
    """`SessionRecords` over the shared Redis connection."""

    def __init__(self, shared: SharedRedis) -> None:
        self.shared = shared

    def _key(self, namespace: str, secret: str) -> str:
        return self.shared.key("rec", namespace, secret_digest(secret))

    @staticmethod
    def _decode(raw: Any) -> dict[str, Any] | None:
        if raw is None:
            return None
        try:
            value = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            return None
        return value if isinstance(value, dict) else None

    def put(self, namespace: str, secret: str, record: dict[str, Any], *, ttl: float) -> None:
        data = json.dumps(record, separators=(",", ":"), allow_nan=False)
        ms = max(int(ttl * 1000), 10)
        self.shared.call(lambda c: c.set(self._key(namespace, secret), data, px=ms), what=WHAT)

    def get(self, namespace: str, secret: str) -> dict[str, Any] | None:
        return self._decode(self.shared.call(lambda c: c.get(self._key(namespace, secret)), what=WHAT))

    def take(self, namespace: str, secret: str) -> dict[str, Any] | None:
        return self._decode(self.shared.call(lambda c: c.getdel(self._key(namespace, secret)), what=WHAT))

    def delete(self, namespace: str, secret: str) -> bool:
        return bool(self.shared.call(lambda c: c.delete(self._key(namespace, secret)), what=WHAT))

    def records(self, namespace: str) -> Iterator[tuple[str, dict[str, Any]]]:
        """(SHA-256 of the secret, record) of every live record in `namespace`, of all replicas (SCAN, then MGET in
        batches: Redis is never blocked by one long command)."""
        head = self.shared.key("rec", namespace, "")
        keys: list[bytes] = self.shared.call(
            lambda c: list(c.scan_iter(match=head + "*", count=SCAN_BATCH)), what=WHAT)
        for start in range(0, len(keys), SCAN_BATCH):
            batch = keys[start:start + SCAN_BATCH]
            values = self.shared.call(lambda c: c.mget(batch), what=WHAT)
            for key, raw in zip(batch, values):
                record = self._decode(raw)
                if record is not None:
                    yield key.decode("utf-8", "replace")[len(head):], record

    def purge_expired(self) -> int:
        return 0  # Redis expires keys itself

    def close(self) -> None:
        """The connection is the process's (closed by whoever opened it)."""


__all__ = ["RedisSessionStore"]
