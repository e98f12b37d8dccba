"""The local mirror of each tenant, on diskcache under `cache_dir/<tenant name>/`.

Layout (one diskcache per tenant):
  "root"                      one small dict, the only thing a commit switches: schema version, the data version
                              (moves only when objects changed), the stamp (moves with every commit), tenant id,
                              as_of, and per area its AreaStatus, delta link, bookkeeping ("meta") and, per
                              collection, the bucket count and the revision of every bucket.
  "b/<area>/<coll>/<i>/<rev>" one bucket: the objects whose crc32(id) % n == i; for the object collections
                              (TABLES, GROUPED) in the column form of mirror/table.py, else a pickled dict (member
                              lists written by 756fff1 in the flat form of mirror/member_lists.py, read too). A bucket is never rewritten in place: a changed bucket is written
                              under a new revision (the stamp of the commit that wrote it).

Why: a full load reads a few hundred values (fast even at 100,000 users), a delta run rewrites only the buckets it
touched, and a commit is ONE atomic write of "root" (SQLite underneath), so
- readers never lock and always see a consistent state: they read "root" then the buckets it names; a bucket that
  vanished meanwhile (deleted after a newer commit) means "read root again";
- a full resync of an area writes a new set of buckets aside and switches "root" once; a delta run switches it once
  too (changed buckets + delta link + area status + stamp and, when objects changed, data version: all or nothing);
- a run killed at any point (kill -9) leaves the last committed root; buckets it wrote but never committed are
  unreferenced and swept when the next writer opens the mirror;
- a stored schema version different from SCHEMA_VERSION makes readers see "no mirror" and the next writer rebuild;
- a run that changed no object (the usual delta run) moves as_of, the areas' status and the stamp but not the data
  version: a server then refreshes its snapshot's freshness (`freshness()`, one small read) and keeps its index.

One writer per tenant across processes (fcntl.flock on `writer.lock`); any number of readers. At most
`max_open` mirrors keep their SQLite files open while nobody uses them (mirror/open_files.py): the descriptors of a
server stay bounded whatever the tenant count.
Only this package imports diskcache.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import shutil
import sqlite3
import threading
import time
from dataclasses import asdict, dataclass, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence, TypeVar

import diskcache

from entra_mcp.errors import MirrorError
from entra_mcp.logs import get_logger
from entra_mcp.mirror import member_lists
from entra_mcp.mirror.member_lists import MemberLists, is_packed_members
from entra_mcp.mirror.open_files import DEFAULT_LIMIT, Database, OpenMirrors
from entra_mcp.mirror.permissions import private_directory
from entra_mcp.mirror.snapshot import AREAS, AreaStatus, DirectorySnapshot, Freshness, bucket_of
from entra_mcp.areas import REGISTRY, BuildCollection, collection_weight
from entra_mcp.mirror.table import Table, concat_groups, is_packed, is_packed_groups, pack, pack_groups, unpack

log = get_logger("mirror.store")

SCHEMA_VERSION = 2  # 2: object collections stored as columns (mirror/table.py)

# area -> its collections (each a dict {id: object} split into buckets), and how each collection is stored: both
# from the areas' definitions (entra_mcp/areas.py Area.collections), so a new area needs no edit here
COLLECTIONS: dict[str, tuple[str, ...]] = {a.name: tuple(c.name for c in a.collections) for a in REGISTRY}
_FORMS: dict[str, str] = {c.name: c.form for a in REGISTRY for c in a.collections}
# collections of Graph objects, stored and loaded as columns (mirror/table.py)
TABLES = frozenset(c for c, form in _FORMS.items() if form == "table")
# collections of lists of Graph objects by key (assignments by resource), stored as columns too
GROUPED = frozenset(c for c, form in _FORMS.items() if form == "grouped")
# groups' member lists {group id: {member id: kind}}, stored flat (mirror/member_lists.py)
MEMBER_LISTS = frozenset(c for c, form in _FORMS.items() if form == "members")
_MIN_BUCKETS: dict[str, int] = {c.name: c.min_buckets for a in REGISTRY for c in a.collections}
# the sign-in events' own mirror under cache_dir (tenant names cannot start with a dot): a 5-minute poll commits there,
# so it never bumps the directory's version (the server's index) nor waits for the directory's writer lock
SIGN_IN_DIR = ".sign-in-events"

MAX_BUCKETS = 1024
FRESHNESS_REUSE_SECONDS = 10.0  # see MirrorStore.freshness
_ITEMS_PER_BUCKET = 128  # small buckets: a delta run unpickles and rewrites little
_FULL_BELOW = 1 << 20  # bytes free under which SQLite's "disk I/O error" means a full disk
_MISSING = object()
_T = TypeVar("_T")
_ROOT = "root"
_DIRTY = "writer/running"
_LAST_RUN = "run/last"  # figures of the last sync run (not part of the snapshot: writing it bumps no version)
# the published version this mirror holds (cluster/: adopted from the sync leader, or published by this replica) and
# which leader bucket revisions its buckets are copies of; valid only while "root" has the stamp noted in it
_SOURCE = "replica/source"
_SETTINGS = {
    "eviction_policy": "none",  # a mirror is not a cache: never evict
    "size_limit": 2**62,
    "cull_limit": 0,
    "statistics": 0,
    "tag_index": 0,
    # buckets are read once per load: SQLite's page cache (diskcache: 32 MB) and a 64 MB memory map of the file
    # would only sit in the resident memory of the long-running server
    "sqlite_cache_size": 256,
    "sqlite_mmap_size": 0,
}


def _bucket_count(data: Mapping[str, Any], least: int = 1) -> int:
    weight = collection_weight(data)
    n = 1
    while n < min(least, MAX_BUCKETS):
        n *= 2
    while n < MAX_BUCKETS and n * _ITEMS_PER_BUCKET < weight:
        n *= 2
    return n


def _stored_form(coll: str, part: dict[str, Any]) -> Any:
    """What a bucket is written as: columns for the object collections, the dict itself for the others (member
    lists too: their flat form, which mirror/member_lists.py reads, left 33 MB more resident after a load)."""
    if coll in TABLES:
        return pack(part)
    return pack_groups(part) if coll in GROUPED else part


def collection_specs(root: dict[str, Any]) -> dict[str, tuple[int, tuple[int, ...]] | None]:
    """Every collection's stored spec in a committed root: (bucket count, bucket revisions), as
    DirectorySnapshot.buckets holds them, or None (never written). Equal specs mean equal buckets."""
    out: dict[str, tuple[int, tuple[int, ...]] | None] = {}
    for area in AREAS:
        colls = _area_of(root, area)["colls"]
        for coll in COLLECTIONS[area]:
            spec = colls.get(coll)
            out[coll] = (int(spec[0]), tuple(int(rev) for rev in spec[1])) if spec else None
    return out


def _continues(held: DirectorySnapshot, root: dict[str, Any]) -> bool:
    """Whether `root` is a later commit of the mirror `held` was loaded from (bucket revisions only grow there; a
    mirror deleted and synced again starts its versions anew)."""
    return (held.tenant_id == root["tenant_id"] and int(root["version"]) >= held.version
            and _stamp(root) >= held.stamp)


def _rows(bucket: Any) -> int:
    """How many objects (or groups of member lists) a stored bucket holds; 0 for an empty one (None)."""
    if bucket is None:
        return 0
    return len(bucket[1]) if is_packed(bucket) or is_packed_members(bucket) else len(bucket)


def _key(area: str, coll: str, i: int, rev: int) -> str:
    return f"b/{area}/{coll}/{i}/{rev}"


def _status_to_dict(s: AreaStatus) -> dict[str, Any]:
    return asdict(s)


def _status_from_dict(d: dict[str, Any] | None) -> AreaStatus:
    if not d:
        return AreaStatus(enabled=True)
    known = {f.name for f in fields(AreaStatus)}
    return AreaStatus(**{k: v for k, v in d.items() if k in known})


def _empty_area() -> dict[str, Any]:
    return {"status": None, "delta_link": None, "meta": {}, "colls": {}}


def _area_of(root: dict[str, Any], area: str) -> dict[str, Any]:
    """An area's part of a root; an area this release defines that the root does not know yet (written by an
    earlier release) reads as never synced."""
    found: dict[str, Any] | None = root["areas"].get(area)
    return found or _empty_area()


def _stamp(root: dict[str, Any]) -> int:
    return int(root.get("stamp", root["version"]))  # a root written before stamps existed: its version


def _empty_root(version: int = 0) -> dict[str, Any]:
    return {
        "schema": SCHEMA_VERSION,
        "version": version,
        "stamp": version,
        "tenant_id": "",
        "as_of": None,
        "interval_minutes": 15.0,
        "areas": {a: _empty_area() for a in AREAS},
    }


def _existing(path: Path) -> Path:
    return next((p for p in (path, *path.parents) if p.exists()), path)


def _free_bytes(path: Path) -> int | None:
    try:
        return shutil.disk_usage(_existing(path)).free
    except OSError:
        return None


def _read_only(path: Path) -> bool:
    p = _existing(path)
    try:
        return bool(os.statvfs(p).f_flag & os.ST_RDONLY) or not os.access(p, os.W_OK)
    except OSError:
        return False


def _why(path: Path, exc: BaseException) -> str:
    """Why the mirror at `path` cannot be opened or written, and what to do (SQLite often says only "disk I/O
    error" when the disk is full: the free space tells)."""
    text = str(exc)
    err = getattr(exc, "errno", None)
    full = err == errno.ENOSPC or "disk is full" in text or "No space" in text
    if not full and "disk I/O error" in text:
        free = _free_bytes(path)
        full = free is not None and free < _FULL_BELOW
    if full:
        return "the disk is full. Fix: free space on that disk or move server.cache_dir"
    if err in (errno.EROFS, errno.EACCES, errno.EPERM) or "readonly" in text or "read-only" in text or _read_only(path):
        return "it is read-only or not writable by this user. Fix: check the permissions of server.cache_dir"
    if isinstance(exc, diskcache.Timeout) or "locked" in text:
        return "the database stayed locked. Fix: retry; check that no other process holds it"
    return f"{type(exc).__name__}: {text[:200]}. Fix: check the disk and the permissions of server.cache_dir"


def _mirror_error(path: Path, exc: BaseException) -> MirrorError:
    return MirrorError(f"cannot write the mirror at {path}: {_why(path, exc)}. The last good state is kept.")


class MirrorStore:
    """All tenants' mirrors under one cache_dir. Thread-safe; one instance per process is enough."""

    def __init__(self, cache_dir: str | os.PathLike[str], *, max_open: int = DEFAULT_LIMIT) -> None:
        # Private to the service account, checked before anything is read from it (mirror/permissions.py); created
        # (0700) only when a mirror is first written.
        self.cache_dir = private_directory(os.fspath(cache_dir), create=False)
        # a collection another process already loaded (a server's cold start: identity/member_index_child.py):
        # given(tenant, collection, the root's specs, the collections loaded so far, the id pool) -> (collection,
        # objects per bucket) when it holds exactly what the root's buckets do, else None (loaded as usual)
        self.given: Callable[[str, str, dict[str, Any], dict[str, Any], dict[Any, Any]], tuple[Any, tuple[int, ...]] | None] | None = None
        self._open = OpenMirrors(max_open)
        # tenant -> (freshness, when it was read, the files once the mirror was found closed): see freshness()
        self._freshness_memo: dict[str, tuple[Freshness | None, float, tuple[tuple[int, int, int] | None, ...] | None]] = {}
        self._lock = threading.Lock()
        self._sign_ins: MirrorStore | None = None

    def sign_in_store(self) -> "MirrorStore":
        """The mirror of the `sign_in_events` area (same layout, its own version, lock and root)."""
        with self._lock:
            if self._sign_ins is None:
                self._sign_ins = MirrorStore(self.cache_dir / SIGN_IN_DIR, max_open=self._open.limit)
            return self._sign_ins

    def connected(self) -> list[str]:
        """The tenants whose mirror may hold open files now (at most `max_open` of them unless in use)."""
        return self._open.connected()

    # ---------- reading ----------
    def tenant_dir(self, tenant_name: str) -> Path:
        return self.cache_dir / tenant_name

    def _cache(self, tenant_name: str, *, create: bool) -> contextlib.AbstractContextManager[Database | None]:
        """The tenant's database, in use (its connections stay open) until the block ends; None when there is no
        mirror and `create` is false."""

        def open_db() -> Database | None:
            d = self.tenant_dir(tenant_name)
            if not create and not (d / "cache.db").exists():
                return None
            if create:
                private_directory(self.cache_dir)
            try:
                d.mkdir(parents=True, exist_ok=True)
                return Database(str(d), **_SETTINGS)
            except (OSError, sqlite3.Error, diskcache.Timeout) as exc:
                if not create:
                    raise MirrorError(f"cannot open the mirror at {d}: {_why(d, exc)}.") from None
                raise _mirror_error(d, exc) from None

        return self._open.use(tenant_name, open_db)

    def close(self) -> None:
        self._open.close()
        with self._lock:
            inner, self._sign_ins = self._sign_ins, None
        if inner is not None:
            inner.close()

    def _root(self, tenant_name: str) -> dict[str, Any] | None:
        with self._cache(tenant_name, create=False) as cache:
            return self._root_of(tenant_name, cache)

    def _root_of(self, tenant_name: str, cache: Database | None) -> dict[str, Any] | None:
        if cache is None:
            return None
        try:
            root = cache.get(_ROOT)
        except (OSError, sqlite3.Error) as exc:
            raise MirrorError(f"cannot read the mirror of tenant {tenant_name} at {self.tenant_dir(tenant_name)}: {exc}") from None
        if not isinstance(root, dict) or root.get("schema") != SCHEMA_VERSION:
            return None
        return root

    def version(self, tenant_name: str) -> int:
        """The data version: grows with every commit that changed objects; 0 when there is no (usable) mirror.
        Cheap: one small read."""
        root = self._root(tenant_name)
        return int(root["version"]) if root else 0

    def freshness(self, tenant_name: str) -> Freshness | None:
        """Data version, stamp, as_of and the areas' status (no objects): what a reader holding a snapshot of the
        same data version needs to be current. None when there is no (usable) mirror. Cheap: one small read.

        A mirror whose connections were closed (past max_open) would pay a reconnection for it (~1.5 ms of CPU:
        /healthz reads every tenant's), so its last answer is reused, for at most FRESHNESS_REUSE_SECONDS, while its
        database and WAL files stay as they were when this process first found it closed (inode, size, modification
        time): a commit of this process forgets it at once, and another process (`entra-mcp sync`) that opens and
        commits creates the WAL anew and writes to it."""
        if not self._open.is_connected(tenant_name):
            memo = self._freshness_memo.get(tenant_name)
            if memo is not None and time.monotonic() - memo[1] < FRESHNESS_REUSE_SECONDS:
                files = self._files_seen(tenant_name)
                if memo[2] is None:  # closed since the read: the files as they are now are the ones to watch
                    self._freshness_memo[tenant_name] = (memo[0], memo[1], files)
                    return memo[0]
                if files == memo[2]:
                    return memo[0]
        fresh = self._read_freshness(tenant_name)
        self._freshness_memo[tenant_name] = (fresh, time.monotonic(), None)
        return fresh

    def _files_seen(self, tenant_name: str) -> tuple[tuple[int, int, int] | None, ...]:
        d = self.tenant_dir(tenant_name)
        out: list[tuple[int, int, int] | None] = []
        for name in ("cache.db", "cache.db-wal"):
            try:
                st = os.stat(d / name)
            except OSError:
                out.append(None)
            else:
                out.append((st.st_ino, st.st_size, st.st_mtime_ns))
        return tuple(out)

    def forget_freshness(self, tenant_name: str) -> None:
        self._freshness_memo.pop(tenant_name, None)

    def _read_freshness(self, tenant_name: str) -> Freshness | None:
        root = self._root(tenant_name)
        if root is None:
            return None
        return Freshness(
            version=int(root["version"]),
            stamp=_stamp(root),
            tenant_id=root["tenant_id"],
            as_of=root["as_of"],
            interval_minutes=root["interval_minutes"],
            areas={a: _status_from_dict(_area_of(root, a)["status"]) for a in AREAS},
        )

    def area_status(self, tenant_name: str) -> dict[str, AreaStatus]:
        """AreaStatus of every area (never-synced areas: enabled, no last_success)."""
        root = self._root(tenant_name) or _empty_root()
        return {a: _status_from_dict(_area_of(root, a)["status"]) for a in AREAS}

    def info(self, tenant_name: str) -> dict[str, Any] | None:
        """version, tenant_id, as_of and per-area status, delta-link presence and meta (no object data)."""
        with self._cache(tenant_name, create=False) as cache:
            root = self._root_of(tenant_name, cache)
            if root is None or cache is None:
                return None
            last_run = cache.get(_LAST_RUN)
        return {
            "last_run": last_run if isinstance(last_run, dict) else None,
            "version": root["version"],
            "tenant_id": root["tenant_id"],
            "as_of": root["as_of"],
            "interval_minutes": root["interval_minutes"],
            "areas": {
                a: {
                    "status": _status_from_dict(_area_of(root, a)["status"]),
                    "has_delta_link": bool(_area_of(root, a)["delta_link"]),
                    "meta": dict(_area_of(root, a)["meta"]),
                }
                for a in AREAS
            },
        }

    def _read_ids(self, cache: Database, area: str, coll: str, spec: Sequence[Any] | None, pool: dict[Any, Any]
                  ) -> tuple[list[str], tuple[int, ...]]:
        """A table's ids as _read_coll's Table would hold them (its buckets' ids in bucket order), shared through
        `pool`, and its objects per bucket: what a reader that only needs the rows unpickles, without the columns."""
        n, revs = spec if spec else (0, [])
        wanted = [(i, rev) for i, rev in enumerate(revs) if rev >= 0]
        ids: list[str] = []
        counts = [0] * n
        for start in range(0, len(wanted), 64):  # 64 buckets at a time: their columns are dropped as soon as read
            for i, bucket in self._buckets(cache, area, coll, dict(wanted[start : start + 64])).items():
                if bucket is not None:
                    ids.extend(bucket[1] if is_packed(bucket) else bucket)
                    counts[i] = _rows(bucket)
        return list(map(pool.setdefault, ids, ids)), tuple(counts)

    def _read_coll(
        self, cache: Database, area: str, coll: str, spec: Sequence[Any] | None, pool: dict[Any, Any],
        held: DirectorySnapshot | None = None,
    ) -> tuple[Any, tuple[int, ...]]:
        """One collection of the snapshot and its objects per bucket: a Table for TABLES, lists of records for
        GROUPED, member lists (MemberLists) with their ids shared through `pool`, else the plain dict (domains: a
        handful of objects).
        With `held` (a snapshot of an older version of this mirror), a collection whose buckets all kept their
        revision is `held`'s own, and a table or member lists with a few buckets rewritten are `held`'s with those
        buckets replaced: only the rewritten buckets are read (see Table.splice)."""
        n, revs = spec if spec else (0, [])
        reused = self._reuse(held, coll, n, revs, pool)
        if reused is not None:
            before, rows, moved = reused
            if not moved:
                return before, rows
            fresh = self._buckets(cache, area, coll, {i: revs[i] for i in moved})
            if coll in TABLES:
                spliced = before.splice(rows, {i: b if b is None or is_packed(b) else pack(b) for i, b in fresh.items()},
                                        share=pool)
                if spliced is not None:
                    return spliced, tuple(_rows(fresh[i]) if i in fresh else rows[i] for i in range(n))
            elif coll in MEMBER_LISTS and isinstance(before, MemberLists):
                return member_lists.splice(before, rows, fresh, pool)
        stored = self._buckets(cache, area, coll, {i: rev for i, rev in enumerate(revs) if rev >= 0})
        counts = tuple(_rows(stored.get(i)) for i in range(n))
        buckets = [b for b in stored.values() if b is not None]
        if coll in TABLES:
            return Table.concat([b if is_packed(b) else pack(b) for b in buckets], share=pool), counts
        if coll in GROUPED:
            return concat_groups([b if is_packed_groups(b) else pack_groups(b) for b in buckets], share=pool), counts
        if coll in MEMBER_LISTS:
            return member_lists.load(buckets, pool), counts
        out: dict[str, Any] = {}
        for bucket in buckets:
            out.update(bucket)
        return out, counts

    @staticmethod
    def _buckets(cache: Database, area: str, coll: str, revs: Mapping[int, int]) -> dict[int, Any]:
        """{i: the stored bucket i of revision revs[i]} (None for an empty one, rev < 0), read together (a few queries
        per collection, not one per bucket); _Stale when a newer commit removed one meanwhile."""
        keys = {i: _key(area, coll, i, rev) for i, rev in revs.items() if rev >= 0}
        found = cache.get_many(list(keys.values()))
        if len(found) < len(keys):
            raise _Stale()
        return {i: found[keys[i]] if rev >= 0 else None for i, rev in revs.items()}

    @staticmethod
    def _reuse(held: DirectorySnapshot | None, coll: str, n: int, revs: Sequence[int],
               pool: dict[Any, Any]) -> tuple[Any, tuple[int, ...], list[int]] | None:
        """(held collection, its objects per bucket, the buckets rewritten since) when `held`'s `coll` can be reused
        (the same bucket count; a table or member lists, or nothing rewritten); its ids join `pool`."""
        if held is None or not n:
            return None
        before, spec, rows = held.collections.get(coll), held.buckets.get(coll), held.bucket_rows.get(coll)
        if before is None or spec is None or rows is None or spec[0] != n or len(rows) != n:
            return None
        moved = [i for i, (a, b) in enumerate(zip(spec[1], revs)) if a != b]
        if moved and not (coll in TABLES and isinstance(before, Table)) and not isinstance(before, MemberLists):
            return None
        if len(moved) * 2 > n:
            return None  # most buckets rewritten (a full re-pull): load whole
        if isinstance(before, Table):  # later collections share its id objects (at C speed)
            pool.update(zip(before.ids, before.ids))
        return before, rows, moved

    def _consistent(self, tenant_name: str, read: Callable[[dict[str, Any], Database], _T]) -> _T | None:
        """`read(root, cache)` of the committed root, started again from the new root when a newer commit removed a
        bucket it needed (`_Stale`); None when there is no (usable) mirror."""
        with self._cache(tenant_name, create=False) as cache:
            for _ in range(50):
                root = self._root_of(tenant_name, cache)
                if root is None or cache is None:
                    return None
                try:
                    return read(root, cache)
                except _Stale:
                    continue  # a newer commit replaced a bucket while we read: start again from the new root
                except (OSError, sqlite3.Error) as exc:
                    raise MirrorError(f"cannot read the mirror of tenant {tenant_name}: {exc}") from None
        raise MirrorError(f"the mirror of tenant {tenant_name} kept changing while it was read; try again")

    def load_snapshot(self, tenant_name: str, *, held: DirectorySnapshot | None = None) -> DirectorySnapshot | None:
        """The tenant's mirror as one consistent DirectorySnapshot; None when it was never synced (or the stored schema
        is from another release). `held`: a snapshot of an older version of this mirror that the caller keeps
        anyway (the server's current one): the collections and buckets not rewritten since are taken from it instead
        of being read again, so a small delta's reload costs a few buckets of memory and CPU, not a second copy."""

        def read(root: dict[str, Any], cache: Database) -> DirectorySnapshot:
            # this load's ids: the tables are read first, so member lists, managers and assignments reuse the id
            # objects the tables hold (a bucket's pickle shares equal strings only within itself)
            pool: dict[Any, Any] = {}
            data: dict[str, Any] = {}
            rows: dict[str, tuple[int, ...]] = {}
            base = held if held is not None and _continues(held, root) else None
            specs = collection_specs(root)
            given = self.given if base is None else None
            # tables first (their ids are the pool); member lists last: a cold start's child (`given`) has the longest
            # time to send them
            for area, coll in sorted(((a, c) for a in AREAS for c in COLLECTIONS[a]),
                                     key=lambda ac: (ac[1] not in TABLES, ac[1] in MEMBER_LISTS)):
                found = given(tenant_name, coll, specs, data, pool) if given is not None else None
                data[coll], rows[coll] = (found if found is not None else
                                          self._read_coll(cache, area, coll, specs[coll], pool, base))
            return self._snapshot(tenant_name, root, data, rows, base)

        return self._consistent(tenant_name, read)

    def load_collections(self, tenant_name: str, colls: Sequence[str], *, ids_only: Sequence[str] = ()
                         ) -> tuple[dict[str, Any], dict[str, Any], dict[str, tuple[int, ...]]] | None:
        """Some collections of the committed mirror, read as load_snapshot reads them (tables first, ids shared):
        (every collection's stored spec [bucket count, revisions], {coll: data}, {coll: objects per bucket}). Equal
        specs mean equal buckets: another reader can tell whether its own load holds the same. A table in `ids_only`
        is read as the list of its ids, in the order its Table would hold them (no columns). None: no mirror."""

        def read(root: dict[str, Any], cache: Database) -> tuple[dict[str, Any], dict[str, Any], dict[str, tuple[int, ...]]]:
            pool: dict[Any, Any] = {}
            data: dict[str, Any] = {}
            rows: dict[str, tuple[int, ...]] = {}
            specs = collection_specs(root)
            for area, coll in sorted(((a, c) for a in AREAS for c in COLLECTIONS[a] if c in colls),
                                     key=lambda ac: ac[1] not in TABLES):
                if coll in ids_only and coll in TABLES:
                    data[coll], rows[coll] = self._read_ids(cache, area, coll, specs[coll], pool)
                else:
                    data[coll], rows[coll] = self._read_coll(cache, area, coll, specs[coll], pool)
            return specs, data, rows

        return self._consistent(tenant_name, read)

    def read_area(self, tenant_name: str, area: str, held: AreaBuckets | None = None) -> AreaBuckets | None:
        """One area's committed state as stored: version, stamp, status, meta and per collection its spec
        (bucket count, revisions) with the stored buckets. With `held` (what an earlier call returned, for a later
        commit of this mirror), only the buckets whose revision moved are read: a reader that keeps its own form of
        the others (the server's sign-in window) follows a commit in proportion to what it rewrote. None when there
        is no (usable) mirror. Consistent like load_snapshot."""

        def read(root: dict[str, Any], cache: Database) -> AreaBuckets:
            a = _area_of(root, area)
            base = held if held is not None and held.tenant_id == root["tenant_id"] and held.stamp <= _stamp(root) else None
            specs: dict[str, tuple[int, tuple[int, ...]]] = {}
            buckets: dict[str, dict[int, Any]] = {}
            for coll in COLLECTIONS[area]:
                spec = a["colls"].get(coll)
                n, revs = (int(spec[0]), tuple(int(r) for r in spec[1])) if spec else (0, ())
                before = base.specs.get(coll) if base is not None else None
                same = before is not None and before[0] == n
                specs[coll] = (n, revs)
                buckets[coll] = self._buckets(cache, area, coll, {i: rev for i, rev in enumerate(revs)
                                                                  if rev >= 0 and not (same and before[1][i] == rev)})  # type: ignore[index]
            return AreaBuckets(tenant_id=root["tenant_id"], version=int(root["version"]), stamp=_stamp(root),
                               status=_status_from_dict(a["status"]), meta=dict(a["meta"]), specs=specs, buckets=buckets,
                               whole=frozenset(c for c in specs if base is None or base.specs.get(c, (None,))[0] != specs[c][0]))

        return self._consistent(tenant_name, read)

    def export(self, tenant_name: str) -> MirrorExport | None:
        """The committed mirror as it is stored (root and the buckets it names), for a replica to adopt; None when
        there is no (usable) mirror. Consistent like load_snapshot."""

        def read(root: dict[str, Any], cache: Database) -> MirrorExport:
            keys = [_key(area, coll, i, rev) for area, a in root["areas"].items() for coll, spec in a["colls"].items()
                    for i, rev in enumerate(spec[1] if spec else ()) if rev >= 0]
            found = cache.get_many(keys)
            if len(found) < len(keys):
                raise _Stale()
            return MirrorExport(root=root, buckets={k: found[k] for k in keys})

        return self._consistent(tenant_name, read)

    def root_state(self, tenant_name: str) -> dict[str, Any] | None:
        """The committed root alone (statuses, delta links, bucket revisions; no objects): a freshness publication."""
        return self._root(tenant_name)

    def source(self, tenant_name: str, *, any_stamp: bool = False) -> dict[str, Any] | None:
        """What `set_source` recorded, while it still describes the committed root (None after a local commit,
        unless `any_stamp`)."""
        with self._cache(tenant_name, create=False) as cache:
            root = self._root_of(tenant_name, cache)
            if cache is None or root is None:
                return None
            try:
                found = cache.get(_SOURCE)
            except (OSError, sqlite3.Error):
                return None
        if not isinstance(found, dict) or (found.get("local_stamp") != _stamp(root) and not any_stamp):
            return None
        return found

    def set_source(self, tenant_name: str, *, local_stamp: int, publication: dict[str, Any], colls: dict[str, Any]) -> None:
        """Record that the root of stamp `local_stamp` holds `publication` (the leader's version), and per area and
        collection the leader's bucket revisions its buckets copy (`colls`), so the next adoption copies only the
        buckets that moved."""
        with self._cache(tenant_name, create=False) as cache:
            if cache is None:
                return
            with contextlib.suppress(OSError, sqlite3.Error, diskcache.Timeout):
                cache.set(_SOURCE, {"local_stamp": local_stamp, "publication": dict(publication), "colls": colls})

    def _snapshot(self, tenant_name: str, root: dict[str, Any], data: dict[str, Any],
                  rows: dict[str, tuple[int, ...]] | None = None, held: DirectorySnapshot | None = None) -> DirectorySnapshot:
        users = data["users"]
        if held is not None and users is held.collections.get("users") and data["sign_in"] is held.collections.get("sign_in"):
            users = held.users  # neither changed: the joined table too
        elif data["sign_in"]:
            users = users.attach("signInActivity", data["sign_in"])
        domains = sorted(data["domains"].values(), key=lambda d: str(d.get("id", "")))
        return DirectorySnapshot(
            tenant=tenant_name,
            tenant_id=root["tenant_id"],
            as_of=root["as_of"],
            interval_minutes=root["interval_minutes"],
            users=users,
            groups=data["groups"],
            members=data["members"],
            applications=data["applications"],
            service_principals=data["service_principals"],
            app_role_assignments=data["assignments"],
            domains=domains,
            areas={a: _status_from_dict(_area_of(root, a)["status"]) for a in AREAS},
            version=int(root["version"]),
            stamp=_stamp(root),
            collections=data,
            data_stamps={a: int(_area_of(root, a).get("data_stamp", 0)) for a in AREAS},
            buckets={coll: (int(spec[0]), tuple(spec[1])) for a in AREAS for coll, spec in _area_of(root, a)["colls"].items() if spec},
            bucket_rows=dict(rows or {}),
        )

    # ---------- writing ----------
    @contextlib.contextmanager
    def writer(self, tenant_name: str, *, wait_seconds: float = 0.0) -> Iterator["MirrorWriter"]:
        """The one writer of a tenant's mirror (a lock across processes). Waits up to `wait_seconds` for another
        writer to finish, then raises MirrorError."""
        d = self.tenant_dir(tenant_name)
        private_directory(self.cache_dir)
        try:
            d.mkdir(parents=True, exist_ok=True)
            fd = os.open(d / "writer.lock", os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise _mirror_error(d, exc) from None
        try:
            deadline = time.monotonic() + wait_seconds
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        try:
                            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
                        except OSError:
                            holder = "?"
                        raise MirrorError(
                            f"another sync of tenant {tenant_name} is running (pid {holder}) and holds {d / 'writer.lock'}; "
                            "wait for it to finish"
                        ) from None
                    time.sleep(0.1)
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
                os.pwrite(fd, str(os.getpid()).encode(), 0)
            with self._cache(tenant_name, create=True) as cache:  # in use, so kept open, for the whole run
                assert cache is not None
                w = MirrorWriter(self, tenant_name, cache)
                w._open()
                try:
                    yield w
                finally:
                    w._close()
        finally:
            with contextlib.suppress(OSError):
                fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)


class _Stale(Exception):
    pass


@dataclass(frozen=True)
class AreaBuckets:
    """MirrorStore.read_area's answer. `buckets`: coll -> {bucket number: stored form} of the buckets read (every
    stored bucket of the collections in `whole`, else those whose revision moved since the `held` call)."""

    tenant_id: str
    version: int
    stamp: int
    status: AreaStatus
    meta: dict[str, Any]
    specs: dict[str, tuple[int, tuple[int, ...]]]
    buckets: dict[str, dict[int, Any]]
    whole: frozenset[str]


@dataclass(frozen=True)
class MirrorExport:
    """A committed mirror as stored: the root and every bucket it names (key -> stored form)."""

    root: dict[str, Any]
    buckets: dict[str, Any]


class AreaChange:
    """A delta run's changes to one area, applied all or nothing by MirrorWriter.commit_delta."""

    def __init__(self, writer: "MirrorWriter", area: str) -> None:
        self._w = writer
        self.area = area
        self._buckets: dict[tuple[str, int], dict[str, Any]] = {}  # loaded (and maybe changed) buckets
        self._loaded: dict[tuple[str, int], dict[str, Any]] = {}  # each bucket as loaded (values are replaced, never edited)
        self._dirty: set[tuple[str, int]] = set()
        self._full_colls: dict[str, dict[str, Any]] = {}  # collections replaced wholesale

    def _spec(self, coll: str) -> list[Any]:
        spec = self._w._root["areas"][self.area]["colls"].get(coll)
        if spec:
            return spec  # type: ignore[no-any-return]
        n = _bucket_count({}, _MIN_BUCKETS.get(coll, 1))
        return [n, [-1] * n]

    def _bucket(self, coll: str, object_id: str) -> tuple[tuple[str, int], dict[str, Any]]:
        n, revs = self._spec(coll)
        i = bucket_of(object_id, n)
        k = (coll, i)
        b = self._buckets.get(k)
        if b is None:
            rev = revs[i]
            b = {} if rev < 0 else unpack(self._w._get(_key(self.area, coll, i, rev)))
            self._buckets[k] = b
            self._loaded[k] = dict(b)
        return k, b

    def get(self, coll: str, object_id: str) -> Any:
        if coll in self._full_colls:
            return self._full_colls[coll].get(object_id)
        return self._bucket(coll, object_id)[1].get(object_id)

    def put(self, coll: str, object_id: str, value: Any) -> None:
        if coll in self._full_colls:
            self._full_colls[coll][object_id] = value
            return
        k, b = self._bucket(coll, object_id)
        b[object_id] = value
        self._dirty.add(k)

    def delete(self, coll: str, object_id: str) -> None:
        if coll in self._full_colls:
            self._full_colls[coll].pop(object_id, None)
            return
        k, b = self._bucket(coll, object_id)
        if object_id in b:
            del b[object_id]
            self._dirty.add(k)

    def replace(self, coll: str, data: dict[str, Any]) -> None:
        """Replace a whole collection in this change (e.g. domains, or assignments after a full refresh)."""
        self._full_colls[coll] = data

    @property
    def touched(self) -> int:
        return len(self._dirty) + len(self._full_colls)

    def changed_buckets(self) -> list[tuple[str, int]]:
        """The buckets whose content differs from what was loaded (a put of an equal object changes nothing)."""
        return [k for k in sorted(self._dirty) if self._buckets[k] != self._loaded.get(k)]


class MirrorWriter:
    """Writes one tenant's mirror. Get it from MirrorStore.writer(); thread-safe (commits are serialised)."""

    def __init__(self, store: MirrorStore, tenant_name: str, cache: diskcache.Cache) -> None:
        self.store = store
        self.tenant_name = tenant_name
        self._cache = cache
        self._lock = threading.RLock()
        self._root: dict[str, Any] = _empty_root()
        self.rebuilt = False  # True when an unusable (other schema) mirror was found and discarded

    @property
    def path(self) -> Path:
        return self.store.tenant_dir(self.tenant_name)

    def _get(self, key: str) -> Any:
        try:
            value = self._cache.get(key, default=_MISSING)
        except (OSError, sqlite3.Error) as exc:
            raise MirrorError(f"cannot read the mirror at {self.path}: {exc}") from None
        if value is _MISSING:
            raise MirrorError(f"the mirror at {self.path} is damaged (missing {key}); run `entra-mcp sync --full`")
        return value

    def _open(self) -> None:
        try:
            root = self._cache.get(_ROOT)
            crashed = self._cache.get(_DIRTY) is not None
            if not isinstance(root, dict) or root.get("schema") != SCHEMA_VERSION:
                if isinstance(root, dict):
                    log.warning("tenant %s: the mirror has schema %s, this release uses %s: rebuilding it with a full sync",
                                self.tenant_name, root.get("schema"), SCHEMA_VERSION)
                    self.rebuilt = True
                old_version = int(root.get("version", 0)) if isinstance(root, dict) else 0
                self._root = _empty_root(old_version)
                if isinstance(root, dict):  # bucket revisions of the new root start above any of the old one's
                    self._root["stamp"] = max(old_version, int(root.get("stamp", 0) or 0))
                if isinstance(root, dict):
                    self._cache.set(_ROOT, self._root)
            else:
                self._root = root
                for area in AREAS:  # areas added by a newer release of the same schema
                    self._root["areas"].setdefault(area, _empty_area())
            self._cache.set(_DIRTY, os.getpid())
            self._sweep(check_files=crashed)
        except (OSError, sqlite3.Error, diskcache.Timeout) as exc:
            raise _mirror_error(self.path, exc) from None

    def _close(self) -> None:
        with contextlib.suppress(OSError, sqlite3.Error, diskcache.Timeout):
            self._cache.delete(_DIRTY)

    def _referenced(self) -> set[str]:
        keys: set[str] = set()
        for area, a in self._root["areas"].items():
            for coll, spec in a["colls"].items():
                if spec:
                    keys.update(_key(area, coll, i, rev) for i, rev in enumerate(spec[1]) if rev >= 0)
        return keys

    def _sweep(self, *, check_files: bool) -> None:
        """Delete buckets no root references (left by a run that died before its commit, or by an old schema)."""
        live = self._referenced() | {_ROOT, _DIRTY, _LAST_RUN, _SOURCE}
        stale = [k for k in self._cache.iterkeys() if k not in live]
        for k in stale:
            self._cache.delete(k)
        if stale:
            log.info("tenant %s: removed %d leftover values of an interrupted run", self.tenant_name, len(stale))
        if check_files:
            # files written by a killed run whose row never committed
            with contextlib.suppress(Exception):
                self._cache.check(fix=True)

    # --- what the sync reads ---
    @property
    def version(self) -> int:
        """The data version (moves only with changed objects)."""
        return int(self._root["version"])

    @property
    def stamp(self) -> int:
        """Moves with every commit; also the revision of the buckets the next commit writes."""
        return _stamp(self._root)

    def delta_link(self, area: str) -> str | None:
        return self._root["areas"][area]["delta_link"]  # type: ignore[no-any-return]

    def status(self, area: str) -> AreaStatus:
        return _status_from_dict(self._root["areas"][area]["status"])

    def meta(self, area: str) -> dict[str, Any]:
        return dict(self._root["areas"][area]["meta"])

    def has_data(self, area: str) -> bool:
        return bool(self._root["areas"][area]["colls"])

    def read_all(self, area: str, coll: str) -> dict[str, Any]:
        with self._lock:
            out: dict[str, Any] = {}
            spec = self._root["areas"][area]["colls"].get(coll)
            if spec:
                for i, rev in enumerate(spec[1]):
                    if rev >= 0:
                        out.update(unpack(self._get(_key(area, coll, i, rev))))
            return out

    def begin(self, area: str) -> AreaChange:
        return AreaChange(self, area)

    def record_run(self, figures: dict[str, Any]) -> None:
        """Remember the last run's figures (requests, retries, throttled, seconds...) for `status`."""
        with contextlib.suppress(OSError, sqlite3.Error, diskcache.Timeout):
            self._cache.set(_LAST_RUN, dict(figures))

    # --- commits ---
    def set_tenant(self, *, tenant_id: str, interval_minutes: float) -> None:
        """Remembered with the next commit."""
        with self._lock:
            self._root["tenant_id"] = tenant_id
            self._root["interval_minutes"] = float(interval_minutes)

    def _write_collection(
        self, area: str, coll: str, items: Mapping[str, Any], rev: int, written: list[str], old: list[Any] | None = None,
        expand: Callable[[Any], Any] | None = None,
    ) -> tuple[list[Any], bool]:
        """Write a whole collection as buckets of revision `rev`; a bucket equal to the one it replaces (`old`, the
        collection's spec) keeps its revision and is not written. Returns its spec [n, revs] and whether anything
        differs from `old`. `expand`: the stored value of an item held in a compact form (applied one bucket at a
        time, so only one bucket's worth of stored values exists at once)."""
        n = _bucket_count(items, _MIN_BUCKETS.get(coll, 1))
        parts: Iterable[tuple[int, dict[str, Any]]]
        if isinstance(items, BuildCollection):  # a full build: its buckets one at a time, never all as dicts
            parts = items.parts(n)
        else:
            keys: list[list[str]] = [[] for _ in range(n)]
            for oid in items:
                keys[bucket_of(oid, n)].append(oid)
            # one bucket's values at a time (expanded from a compact form when `expand` is given)
            parts = ((i, {k: expand(items[k]) for k in ks} if expand is not None else {k: items[k] for k in ks})
                     for i, ks in enumerate(keys))
        same_shape = bool(old) and old[0] == n  # type: ignore[index]
        changed = not same_shape
        revs = [-1] * n
        for i, part in parts:
            if same_shape:
                old_rev = old[1][i]  # type: ignore[index]
                try:
                    before: dict[str, Any] | None = unpack(self._get(_key(area, coll, i, old_rev))) if old_rev >= 0 else {}
                except MirrorError:  # a damaged mirror (a bucket missing): the full pull rewrites it
                    before = None
                if before == part:
                    revs[i] = old_rev
                    continue
                changed = True
            if part:
                k = _key(area, coll, i, rev)
                self._cache.set(k, _stored_form(coll, part))
                written.append(k)
                revs[i] = rev
        return [n, revs], changed

    def commit_full(
        self,
        area: str,
        data: Mapping[str, Mapping[str, Any]],
        *,
        delta_link: str | None,
        status: AreaStatus,
        meta: dict[str, Any] | None = None,
        expand: dict[str, Callable[[Any], Any]] | None = None,
    ) -> int:
        """Replace an area's data (every collection of the area) in one switch. Buckets equal to the stored ones are
        kept: a full pull that found nothing new leaves the data version as it was. Returns the data version.
        `expand`: per collection, the stored value of an item `data` holds in a compact form (see _write_collection)."""
        with self._lock:
            rev = self.stamp + 1
            old_colls = self._root["areas"][area]["colls"]
            colls: dict[str, list[Any]] = {}
            written: list[str] = []
            changed = False
            try:
                for coll in COLLECTIONS[area]:
                    colls[coll], differs = self._write_collection(area, coll, data.get(coll, {}), rev, written, old_colls.get(coll),
                                                                  (expand or {}).get(coll))
                    changed = changed or differs
            except BaseException as exc:
                self._forget(written)
                if isinstance(exc, (OSError, sqlite3.Error, diskcache.Timeout)):
                    raise _mirror_error(self.path, exc) from None
                raise
            new_area = {"status": _status_to_dict(status), "delta_link": delta_link,
                        "meta": dict(meta) if meta is not None else dict(self._root["areas"][area]["meta"]), "colls": colls}
            return self._switch(area, new_area, written, data_changed=changed or set(old_colls) != set(colls))

    def commit_delta(
        self,
        change: AreaChange,
        *,
        delta_link: str | None,
        status: AreaStatus,
        meta: dict[str, Any] | None = None,
    ) -> int:
        """Apply a delta run's changes, delta link, status and meta all together. Returns the data version (as it
        was when no object changed)."""
        with self._lock:
            area = change.area
            rev = self.stamp + 1
            old = self._root["areas"][area]
            colls = {c: [s[0], list(s[1])] for c, s in old["colls"].items()}
            written: list[str] = []
            changed = False
            try:
                for coll, full in change._full_colls.items():
                    colls[coll], differs = self._write_collection(area, coll, full, rev, written, old["colls"].get(coll))
                    changed = changed or differs
                for coll, i in change.changed_buckets():
                    if coll in change._full_colls:
                        continue
                    changed = True
                    spec = colls.setdefault(coll, change._spec(coll))
                    part = change._buckets[(coll, i)]
                    if part:
                        k = _key(area, coll, i, rev)
                        self._cache.set(k, _stored_form(coll, part))
                        written.append(k)
                        spec[1][i] = rev
                    else:
                        spec[1][i] = -1
                for coll in COLLECTIONS[area]:
                    colls.setdefault(coll, change._spec(coll))
            except BaseException as exc:
                self._forget(written)
                if isinstance(exc, (OSError, sqlite3.Error, diskcache.Timeout)):
                    raise _mirror_error(self.path, exc) from None
                raise
            new_area = {"status": _status_to_dict(status), "delta_link": delta_link,
                        "meta": dict(meta) if meta is not None else dict(old["meta"]), "colls": colls}
            return self._switch(area, new_area, written, data_changed=changed)

    def set_status(self, area: str, status: AreaStatus, *, meta: dict[str, Any] | None = None, drop_delta_link: bool = False) -> int:
        """Commit only an area's status (data untouched), e.g. disabled for a missing permission, or a failed run."""
        with self._lock:
            old = self._root["areas"][area]
            new_area = dict(old)
            new_area["status"] = _status_to_dict(status)
            if meta is not None:
                new_area["meta"] = dict(meta)
            if drop_delta_link:
                new_area["delta_link"] = None
            return self._switch(area, new_area, [], data_changed=False, touch_as_of=False)

    def clear_area(self, area: str, status: AreaStatus) -> int:
        """Drop an area's data and delta link (turned off in config: nothing stale stays behind)."""
        with self._lock:
            had_data = self.has_data(area)
            new_area = {"status": _status_to_dict(status), "delta_link": None, "meta": {}, "colls": {}}
            return self._switch(area, new_area, [], data_changed=had_data, touch_as_of=False)

    def adopt(self, root: dict[str, Any], buckets: dict[str, Any] | None, source: dict[str, Any] | None, *,
              before_commit: Callable[[int, int, dict[str, int]], None] | None = None) -> tuple[int, int]:
        """Make this mirror hold another replica's committed state in ONE switch: its statuses, delta links, meta,
        tenant and asOf, and (with `buckets`, an export's) its objects. Without `buckets` (a freshness publication)
        the objects stay. `source` (MirrorStore.source) names the leader bucket revisions the current buckets copy:
        only buckets whose revision moved are written (stored form as is, no unpickling); without it every bucket
        is. The local version and stamp stay monotonic (never below the leader's: the usual case is equal).
        `before_commit(version, stamp, data stamps)` runs when objects changed, once the buckets are written and just
        before the switch (a prepared index is kept then, so a reader finds it as soon as it sees the version).
        Returns (data version, stamp)."""
        with self._lock:
            if root.get("schema") != SCHEMA_VERSION:
                raise MirrorError(f"the published mirror has schema {root.get('schema')}, this release uses "
                                  f"{SCHEMA_VERSION}: upgrade every replica to the same release")
            new_stamp = max(self.stamp + 1, _stamp(root))
            copied = (source or {}).get("colls", {})
            written: list[str] = []
            areas: dict[str, Any] = {}
            changed = False
            try:
                for area in AREAS:
                    theirs = _area_of(root, area)
                    ours = _area_of(self._root, area)
                    colls = ours["colls"]
                    area_changed = False
                    if buckets is not None:
                        colls = {}
                        for coll in COLLECTIONS[area]:
                            spec = theirs["colls"].get(coll)
                            if not spec:
                                continue
                            n, revs = spec
                            was, mine = copied.get(area, {}).get(coll), ours["colls"].get(coll)
                            same_shape = bool(was and mine and was[0] == n and mine[0] == n)
                            out = []
                            for i, rev in enumerate(revs):
                                if same_shape and was[1][i] == rev:
                                    out.append(mine[1][i])
                                    continue
                                area_changed = True
                                if rev < 0:
                                    out.append(-1)
                                    continue
                                k = _key(area, coll, i, new_stamp)
                                self._cache.set(k, buckets[_key(area, coll, i, rev)])
                                written.append(k)
                                out.append(new_stamp)
                            colls[coll] = [n, out]
                        area_changed = area_changed or set(colls) != set(ours["colls"])
                    changed = changed or area_changed
                    areas[area] = {"status": theirs["status"], "delta_link": theirs["delta_link"],
                                   "meta": dict(theirs["meta"]), "colls": colls,
                                   "data_stamp": new_stamp if area_changed else ours.get("data_stamp", 0)}
            except BaseException as exc:
                self._forget(written)
                if isinstance(exc, KeyError):
                    raise MirrorError(f"the published mirror is incomplete (missing {exc})") from None
                if isinstance(exc, (OSError, sqlite3.Error, diskcache.Timeout)):
                    raise _mirror_error(self.path, exc) from None
                raise
            new_root = {**self._root, "areas": areas, "stamp": new_stamp, "tenant_id": root["tenant_id"],
                        "as_of": root["as_of"], "interval_minutes": root["interval_minutes"]}
            if changed:
                new_root["version"] = max(self.version + 1, int(root["version"]))
                if before_commit is not None:
                    before_commit(int(new_root["version"]), new_stamp, {a: int(x["data_stamp"]) for a, x in areas.items()})
            self._commit_root(new_root, written)
            return self.version, self.stamp

    def _switch(self, area: str, new_area: dict[str, Any], written: list[str], *, data_changed: bool, touch_as_of: bool = True) -> int:
        root = dict(self._root)
        root["areas"] = dict(root["areas"])
        root["stamp"] = self.stamp + 1
        # the stamp of the commit that last changed the area's objects: readers see which areas' data moved
        new_area = {**new_area, "data_stamp": root["stamp"] if data_changed else _area_of(self._root, area).get("data_stamp", 0)}
        root["areas"][area] = new_area
        if data_changed:
            root["version"] = self.version + 1
        if touch_as_of:
            root["as_of"] = datetime.now(timezone.utc)
        self._commit_root(root, written)
        return self.version

    def _commit_root(self, root: dict[str, Any], written: list[str]) -> None:
        """Write `root` (the commit point), then delete the buckets only the previous root referenced; a failed
        write forgets the buckets `written` for it and keeps the previous root."""
        old_keys = self._referenced()
        self.store.forget_freshness(self.tenant_name)
        try:
            self._cache.set(_ROOT, root)  # the commit point
        except (OSError, sqlite3.Error, diskcache.Timeout) as exc:
            self._forget(written)
            raise _mirror_error(self.path, exc) from None
        finally:
            self.store.forget_freshness(self.tenant_name)  # also a read that raced the commit
        self._root = root
        for k in old_keys - self._referenced():
            with contextlib.suppress(OSError, sqlite3.Error, diskcache.Timeout):
                self._cache.delete(k)

    def _forget(self, keys: list[str]) -> None:
        for k in keys:
            with contextlib.suppress(Exception):
                self._cache.delete(k)


__all__ = ["COLLECTIONS", "SCHEMA_VERSION", "SIGN_IN_DIR", "AreaBuckets", "AreaChange", "MirrorExport", "MirrorStore", "MirrorWriter", "bucket_of"]
