"""Open files of many mirrors: the SQLite connections of idle tenants are closed, so a server of hundreds of tenants
holds a bounded number of descriptors whatever the tenant count.

diskcache opens one SQLite connection per thread that uses a Cache (each: the database, its WAL, and the shared
memory file once per database), and its `close()` closes only the calling thread's. The others stay open until the
garbage collector finds them (a sqlite3 connection sits in a reference cycle), and a Cache is cheap to keep but slow
to open again (its constructor writes its settings: ~50 ms with an fsync). So:
- `Database` is a diskcache Cache whose connections can all be closed at once (`release()`), from any thread, and are
  reopened on demand by the next use in each thread (a connect and a few PRAGMAs, no write); the connections of
  threads that have ended are closed when another thread connects;
- `OpenMirrors` keeps the caches of the mirrors in use: a use pins its cache (a read, a writer for a whole sync run),
  and past `limit` connected mirrors the least recently used one that nobody is using has its connections released.
  A cache is never released while pinned, so never in the middle of a read or a transaction. Connections are closed
  outside the registry's lock (closing the last one checkpoints the WAL), and a first open (diskcache writes its
  settings) happens outside it too: one slow mirror never holds up the reads of the others.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
import time
from collections import OrderedDict
from typing import Any, Callable, Iterator, Sequence

import diskcache

# the pragmas SQLite keeps per connection, set again on each reconnection (diskcache's reset() also asks for the
# journal mode and auto-vacuum, which are persistent in the database file: ~1.8 ms of CPU per connection for nothing)
_PER_CONNECTION = ("cache_size", "mmap_size", "synchronous")
DEFAULT_LIMIT = 64  # mirrors with open connections at once (serve: [server] max_open_mirrors)
_KEYS_PER_QUERY = 500  # bound parameters of one Database.get_many query (older SQLite builds allow 999)


class Database(diskcache.Cache):  # type: ignore[misc]  # diskcache has no type hints
    """A diskcache Cache whose SQLite connections (one per thread that used it) `release()` closes together."""

    def __init__(self, directory: str, **settings: Any) -> None:
        self._opened: list[tuple[threading.Thread, sqlite3.Connection]] = []
        self._pid = os.getpid()  # the process whose connections _opened lists (a forked child never closes them)
        self._opened_lock = threading.Lock()
        self._generation = 0  # moves with each release: a thread's connection of an older generation is closed
        self._ready = False
        super().__init__(directory, **settings)
        self._ready = True

    @property
    def _con(self) -> sqlite3.Connection:
        # diskcache's own property, with connections any thread may close (check_same_thread=False: only release()
        # uses that, and only while no thread uses this cache) and remembered so that release() finds them all
        local = self._local
        con: sqlite3.Connection | None = getattr(local, "con", None)
        if con is not None and getattr(local, "pid", None) == os.getpid() and getattr(local, "gen", None) == self._generation:
            return con
        con = sqlite3.connect(os.path.join(self._directory, diskcache.core.DBNAME), timeout=self._timeout,
                              isolation_level=None, check_same_thread=False)
        local.con, local.pid, local.gen = con, os.getpid(), self._generation
        me = threading.current_thread()
        with self._opened_lock:
            if self._pid != os.getpid():  # a forked child: the parent's connections are not ours to close
                self._opened, self._pid = [], os.getpid()
            ended = [c for t, c in self._opened if not t.is_alive() or t is me]
            self._opened = [(t, c) for t, c in self._opened if t.is_alive() and t is not me] + [(me, con)]
        _close(ended)  # a thread that has ended cannot be using its connection; this thread's old one is replaced
        if self._ready:  # the settings of this connection alone; journal mode and auto-vacuum live in the file
            for pragma in _PER_CONNECTION:
                con.execute(f"PRAGMA {pragma} = {int(getattr(self, 'sqlite_' + pragma))}").fetchall()
            return con
        try:  # in diskcache's constructor: its own way (the Settings table may not exist yet)
            settings = con.execute("SELECT key, value FROM Settings").fetchall()
        except sqlite3.OperationalError:
            pass
        else:
            for key, value in settings:
                if key.startswith("sqlite_"):
                    self.reset(key, value, update=False)
        return con

    def get_many(self, keys: Sequence[str]) -> dict[str, Any]:
        """{key: value} of the string `keys` present (as many `get` calls would: a key missing, or whose value file
        vanished meanwhile, is left out), read with a few queries instead of one per key (a mirror load reads
        thousands of buckets: ~20 us of statement and call overhead each). Values are decoded by diskcache's own
        Disk.fetch (inline or in a file, any mode)."""
        found: dict[str, Any] = {}
        fetch = self._disk.fetch
        now = time.time()
        for start in range(0, len(keys), _KEYS_PER_QUERY):
            chunk = keys[start:start + _KEYS_PER_QUERY]
            rows = self._sql(
                "SELECT key, mode, filename, value FROM Cache WHERE raw = 1 AND key IN (%s)"
                " AND (expire_time IS NULL OR expire_time > ?)" % ",".join("?" * len(chunk)), (*chunk, now))
            for key, mode, filename, value in rows:  # one row's bytes at a time
                with contextlib.suppress(OSError):  # deleted with its row after the query: missing, as for `get`
                    found[key] = fetch(mode, filename, value, False)
        return found

    def close(self) -> None:
        """The calling thread's connection (diskcache's meaning)."""
        con = getattr(self._local, "con", None)
        super().close()
        if con is not None:
            with self._opened_lock:
                self._opened = [(t, c) for t, c in self._opened if c is not con]

    def detach(self) -> list[sqlite3.Connection]:
        """Every thread's connection, for the caller to close: from now on each thread connects again. Only while no
        thread is using this cache (OpenMirrors sees to that)."""
        with self._opened_lock:
            opened, self._opened = self._opened, []
            self._generation += 1
            if self._pid != os.getpid():
                return []
        return [con for _, con in opened]

    def release(self) -> None:
        """Close every thread's connection (as `detach`)."""
        _close(self.detach())

    @property
    def connections(self) -> int:
        with self._opened_lock:
            return len(self._opened)


class OpenMirrors:
    """The mirrors' Database objects by tenant, at most `limit` of them connected when not in use (LRU). Thread-safe."""

    def __init__(self, limit: int = DEFAULT_LIMIT) -> None:
        self.limit = max(1, limit)
        self._all: dict[str, Database] = {}
        self._connected: OrderedDict[str, None] = OrderedDict()  # least recently used first
        self._pins: dict[str, int] = {}
        self._opening: dict[str, threading.Lock] = {}
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def use(self, tenant: str, open_db: Callable[[], Database | None]) -> Iterator[Database | None]:
        """The tenant's Database (`open_db()` makes it the first time; None: there is none), pinned until the block
        ends."""
        db = self._pin(tenant, open_db)
        if db is None:
            yield None
            return
        try:
            yield db
        finally:
            with self._lock:
                self._pins[tenant] -= 1
                if not self._pins[tenant]:
                    del self._pins[tenant]
                closing = self._over_limit()
            _close(closing)

    def _pin(self, tenant: str, open_db: Callable[[], Database | None]) -> Database | None:
        while True:
            with self._lock:
                db = self._all.get(tenant)
                if db is not None:
                    self._pins[tenant] = self._pins.get(tenant, 0) + 1
                    self._connected[tenant] = None
                    self._connected.move_to_end(tenant)
                    closing = self._over_limit()
                    break
                opening = self._opening.setdefault(tenant, threading.Lock())
            # a first open writes diskcache's settings (an fsync): outside the lock, so the other tenants' reads go on;
            # one thread per tenant opens it
            with opening:
                with self._lock:
                    if tenant in self._all:
                        continue
                made = open_db()
                if made is None:
                    return None
                with self._lock:
                    self._all[tenant] = made
                    self._opening.pop(tenant, None)
        _close(closing)
        return db

    def _over_limit(self) -> list[sqlite3.Connection]:
        """Under the lock: the least recently used unpinned mirrors past the limit are detached (a use from now on
        connects again); their connections are returned for the caller to close outside the lock."""
        out: list[sqlite3.Connection] = []
        excess = len(self._connected) - self.limit
        for tenant in list(self._connected):
            if excess <= 0:
                break
            if tenant not in self._pins:
                del self._connected[tenant]
                out += self._all[tenant].detach()
                excess -= 1
        return out

    def is_connected(self, tenant: str) -> bool:
        return tenant in self._connected

    def connected(self) -> list[str]:
        """Tenants whose mirror may hold open connections, least recently used first."""
        with self._lock:
            return list(self._connected)

    def close(self) -> None:
        with self._lock:
            closing = [c for db in self._all.values() for c in db.detach()]
            self._all.clear()
            self._connected.clear()
        _close(closing)


def _close(connections: list[sqlite3.Connection]) -> None:
    for con in connections:
        with contextlib.suppress(sqlite3.Error):
            con.close()


__all__ = ["DEFAULT_LIMIT", "Database", "OpenMirrors"]
