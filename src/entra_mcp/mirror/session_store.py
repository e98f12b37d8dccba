"""Server-side persistence for sign-in state, portal sessions and chat sessions (diskcache under cache_dir/sessions).

Records are small JSON-able dicts under namespaced keys. Secrets never become keys as they are: callers pass the
secret (a session id, a chat token, a sign-in `state`), and the store keys the record by its SHA-256, so the files on
disk hold nothing a thief could replay. Every record has an expiry; `purge_expired()` removes the lapsed ones (run at
start and periodically). `take()` is an atomic read-and-delete, for single-use values (state, one-time codes).
The directory is private to the service account (mirror/permissions.py): its values are pickles.

`SessionRecords` is the interface the sign-in code uses; `SessionStore` (here, one machine) and the Redis backend
for replicas (sharedstore/sessions.py `RedisSessionStore`, [server.store] redis_url) both implement it with the same
semantics. A backend that cannot answer raises `StoreUnavailable` (errors.py); nothing is half-written.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

import diskcache

from entra_mcp.errors import MirrorError
from entra_mcp.logs import get_logger
from entra_mcp.mirror.permissions import private_directory

log = get_logger("mirror.sessions")


def _key(namespace: str, secret: str) -> str:
    return f"{namespace}:{secret_digest(secret)}"


def secret_digest(secret: str) -> str:
    """What a record is keyed by instead of its secret: SHA-256, hex."""
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


class SessionRecords(Protocol):
    """Namespaced, expiring records keyed by (namespace, secret); the secret itself is never stored."""

    def put(self, namespace: str, secret: str, record: dict[str, Any], *, ttl: float) -> None:
        """Store `record` for `ttl` seconds, replacing any earlier one (all or nothing)."""

    def get(self, namespace: str, secret: str) -> dict[str, Any] | None: ...

    def take(self, namespace: str, secret: str) -> dict[str, Any] | None:
        """Read and delete atomically: of concurrent callers with the same secret only one gets the record."""

    def delete(self, namespace: str, secret: str) -> bool: ...

    def records(self, namespace: str) -> Iterator[tuple[str, dict[str, Any]]]:
        """(SHA-256 of the secret, record) of every live record in `namespace`."""

    def purge_expired(self) -> int:
        """Remove lapsed records where the backend does not expire them itself; how many went."""

    def close(self) -> None: ...


class SessionStore:
    """A namespaced, expiring key-value store for sign-in records that survives a server restart."""

    def __init__(self, cache_dir: Path | str) -> None:
        self.directory = private_directory(Path(private_directory(cache_dir)) / "sessions")
        try:
            self._cache = diskcache.Cache(str(self.directory), eviction_policy="none", size_limit=2**30)
        except OSError as exc:
            raise MirrorError(f"cannot open the session store at {self.directory} ({exc.strerror})") from None

    def close(self) -> None:
        self._cache.close()

    def put(self, namespace: str, secret: str, record: dict[str, Any], *, ttl: float) -> None:
        """Store `record` under (namespace, secret) for `ttl` seconds (replacing any earlier one)."""
        try:
            self._cache.set(_key(namespace, secret), record, expire=max(ttl, 0.01))
        except OSError as exc:
            raise MirrorError(f"cannot write the session store ({exc.strerror})") from None

    def get(self, namespace: str, secret: str) -> dict[str, Any] | None:
        value = self._cache.get(_key(namespace, secret))
        return value if isinstance(value, dict) else None

    def take(self, namespace: str, secret: str) -> dict[str, Any] | None:
        """Read and delete in one step: of two concurrent callers with the same secret only one gets the record."""
        value = self._cache.pop(_key(namespace, secret), default=None, retry=True)
        return value if isinstance(value, dict) else None

    def delete(self, namespace: str, secret: str) -> bool:
        return bool(self._cache.delete(_key(namespace, secret), retry=True))

    def records(self, namespace: str) -> Iterator[tuple[str, dict[str, Any]]]:
        """(SHA-256 of the secret, record) of every live record in `namespace`: what a restarted process counts."""
        prefix = f"{namespace}:"
        for key in self._cache.iterkeys():
            if isinstance(key, str) and key.startswith(prefix):
                value = self._cache.get(key)
                if isinstance(value, dict):
                    yield key[len(prefix):], value

    def purge_expired(self) -> int:
        """Remove every record whose expiry has passed; returns how many went."""
        removed = int(self._cache.expire())
        if removed:
            log.info("purged %d expired sign-in records", removed)
        return removed

    def __len__(self) -> int:
        return len(self._cache)


__all__ = ["SessionRecords", "SessionStore", "secret_digest"]
