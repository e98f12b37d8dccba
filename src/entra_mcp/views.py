"""The current DirectoryView of each configured tenant, as the tools read it.

The sync writes the mirror in another thread or process; the server only reads. Each call asks the store for the
tenant's freshness (cheap: data version, commit stamp, asOf, area statuses). When only the stamp moved (a sync run
that changed no object), the held view takes the new asOf and statuses and keeps its index; when the data version
moved, the new snapshot is loaded over the held one (only the mirror buckets rewritten since are read; the rest are the
held objects) and the held index is patched, or a new view is built. The first view of a tenant is
built on the calling thread; later rebuilds happen on a background thread while the old view keeps answering, so a
sync of a large tenant never stalls a request. A tenant that was never synced has no view: the tools then answer
with nulls and a finding (see server/app.py), never a crash.

Many tenants: with a memory budget (`[server] view_memory_mb`), views are loaded at a tenant's first call and the
least recently used ones are dropped when the held views' estimated size goes over it (a dropped tenant is loaded
again, from the view cache on disk, at its next call). `status()` / `statuses()` answer `/healthz`, sync_status and
the tenants resource from the mirror's freshness (one small read) without loading a view.
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import os
import pickle
import signal
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, fields, is_dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Protocol, Sequence

from entra_mcp.config import tenant_hint
from entra_mcp.errors import InvalidArgument, NotFoundError
from entra_mcp.logs import get_logger
from entra_mcp.mirror.member_lists import memberships
from entra_mcp.mirror.snapshot import UNINDEXED_AREAS, DirectorySnapshot, Freshness

if TYPE_CHECKING:  # identity loads with the first view, not with this module
    from entra_mcp.config import Settings
    from entra_mcp.identity.view import DirectoryView

log = get_logger("views")


class SnapshotSource(Protocol):
    """What the provider needs from mirror/store.py's MirrorStore."""

    def load_snapshot(self, tenant_name: str) -> DirectorySnapshot | None: ...

    # MirrorStore.load_snapshot also takes `held=` (a snapshot it may reuse the unchanged buckets of): see _load_and_index

    def version(self, tenant_name: str) -> int: ...

    def freshness(self, tenant_name: str) -> Freshness | None: ...


@dataclass(frozen=True)
class TenantView:
    """One tenant as of one mirror version. `view` and `snapshot` are None when the tenant was never synced."""

    name: str
    tenant_id: str
    interval_minutes: float
    version: int
    snapshot: DirectorySnapshot | None
    view: DirectoryView | None
    stamp: int = 0  # the mirror's commit stamp this view is current with
    loaded: bool = True  # False: a status only (the mirror's freshness, no objects, no view; see ViewProvider.status)

    @property
    def synced(self) -> bool:
        if not self.loaded:
            return self.snapshot is not None and self.snapshot.as_of is not None and self.version > 0
        return self.view is not None


# What one held view costs, estimated from its object counts: the columnar tables, the indexes and the snapshot's other
# collections of a directory object, and a tenant's floor. Measured 2026-12-02 (RSS growth while loading the views of
# bench/bench_tenants.py's mirrors): a medium tenant's view (5,000 users, core areas) ~16 MB, a small one ~0.55 MB.
VIEW_BYTES_PER_OBJECT = 1_000
VIEW_BYTES_BASE = 300_000
WARM_MAX = 16  # tenants loaded at start; the others at their first call
# a first tenant with at least this many member-list buckets (~60 memberships each; the large mirror has 1,024) and no
# prepared index gets its reverse memberships built by a child during the server's start (start_early_index)
EARLY_MIN_MEMBER_BUCKETS = 256
# The prepared index's layout, part of the view cache's fingerprint (with the source of the code that shapes a view):
# a file of another layout is ignored and rebuilt, never read. 2: reverse memberships as arrays (identity/member_index.py)
INDEX_FORMAT = 2
VIEW_CACHE_DIR = ".server-views"  # under cache_dir: the prepared indexes, one <tenant>.view each


def estimate_view_bytes(tv: TenantView) -> int:
    """Estimated memory of a held view: VIEW_BYTES_BASE plus VIEW_BYTES_PER_OBJECT per mirrored object."""
    snap = tv.snapshot
    if snap is None:
        return VIEW_BYTES_BASE // 4
    objects = len(snap.users) + len(snap.groups) + len(snap.applications) + len(snap.service_principals)
    objects += memberships(snap.members) // 4  # a membership is a small entry, not an object
    objects += sum(len(a) for a in snap.app_role_assignments.values())
    for name, coll in snap.collections.items():
        if name not in ("users", "groups", "applications", "service_principals", "members", "assignments"):
            try:
                objects += len(coll)
            except TypeError:
                objects += 1
    return VIEW_BYTES_BASE + VIEW_BYTES_PER_OBJECT * objects


def _some(names: list[str], shown: int = 10) -> str:
    """The first `shown` names, and how many more (hundreds of tenants do not fit in an error message)."""
    return ", ".join(names[:shown]) + (f" and {len(names) - shown} more" if len(names) > shown else "")


def _with_snapshot(view: Any, snapshot: DirectorySnapshot) -> Any:
    """The same view (the same indexes) over `snapshot`, a refreshed copy of the one it was built from."""
    if is_dataclass(view) and not isinstance(view, type) and any(f.name == "snapshot" for f in fields(view)):
        return replace(view, snapshot=snapshot)
    return view


def _view_type() -> type:
    from entra_mcp.identity.view import DirectoryView

    return DirectoryView


def _default_build(snapshot: DirectorySnapshot) -> DirectoryView:
    from entra_mcp.identity.view import DirectoryView

    return DirectoryView.build(snapshot)


@dataclass(frozen=True)
class TenantInfo:
    name: str
    tenant_id: str
    interval_minutes: float = 15.0


@contextlib.contextmanager
def _no_cyclic_gc() -> Iterator[None]:
    """Load and index a mirror without the cyclic collector.

    A large tenant is millions of small dicts, lists and strings. With the collector on, unpickling them triggers
    full collections over an ever larger heap (the load of 100,000 users takes seconds longer). The objects hold no
    reference cycles, so reference counting frees the old view when a newer one replaces it.

    No gc.freeze() afterwards: it moves EVERY tracked object into the permanent generation, including the garbage
    waiting for a collection and the objects of requests in flight during the reload; once those become cyclic
    garbage they can never be collected. Frozen on every reload, the server grew ~20 MB a sync in the soak test
    (tests/test_endurance_memory.py). The price: a later full collection traverses the view once. (A server's start
    freezes once, before any request exists: ViewProvider.warm.)
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _return_free_memory() -> None:
    """Hand the memory freed by a replaced view back to the system (glibc's malloc_trim; elsewhere nothing).

    A view's large dict tables come from malloc, which keeps freed memory for reuse: without a trim the old view's
    share stays in the RSS after every reload (large tenant: ~150 MB)."""
    global _malloc_trim
    if _malloc_trim is None:
        try:
            import ctypes
            import ctypes.util

            _malloc_trim = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
        except (OSError, AttributeError):
            _malloc_trim = False
    if _malloc_trim:
        _malloc_trim(0)


_malloc_trim: Any = None


class ViewCache:
    """Built views kept on disk, so a restart loads the index instead of rebuilding it (a large tenant: seconds).

    One file per tenant, `<dir>/<tenant>.view`, holding (fingerprint, mirror version, view) pickled. The fingerprint
    covers this release and the source of the modules that build a view: a file written by other code is ignored
    and replaced. It holds the same directory data as the mirror next to it and gets the same protection (0600 in a 0700
    directory). Writing happens in a forked child where the platform allows it, so pickling a large view does not
    hold the server's interpreter lock for seconds.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self._fingerprint: str | None = None
        self._writers: dict[int, threading.Thread] = {}  # forked writers still at work: pid -> the thread reaping it

    def fingerprint(self, view_type: type) -> str:
        """This release plus the source of every module that shapes a view (the view's package, the snapshot, its tables
        and member lists): an index built by other code is never reused."""
        if self._fingerprint is None:
            import inspect

            from entra_mcp import __version__
            from entra_mcp.mirror import member_lists, snapshot, table

            digest = hashlib.sha256(f"{__version__}/index-{INDEX_FORMAT}".encode())
            try:
                package = Path(inspect.getfile(view_type)).parent
                for source in [*sorted(package.glob("*.py")), *(Path(inspect.getfile(m)) for m in (snapshot, table, member_lists))]:
                    digest.update(source.name.encode() + b"\0" + source.read_bytes())
            except (OSError, TypeError):
                digest.update(os.urandom(16))  # sources unreadable: never trust a cached view
            self._fingerprint = digest.hexdigest()
        return self._fingerprint

    def path(self, tenant: str) -> Path:
        return self.directory / f"{tenant}.view"

    def load(self, tenant: str, version: int, view_type: type) -> Any | None:
        try:
            with open(self.path(tenant), "rb") as f:
                header = pickle.load(f)
                if header != (self.fingerprint(view_type), version):
                    return None
                view = pickle.load(f)
        except FileNotFoundError:
            return None
        except Exception:  # unreadable or from another release: rebuild (and rewrite) it
            log.info("tenant %s: ignoring an unusable view cache", tenant)
            return None
        return view if isinstance(view, view_type) else None

    def holds(self, tenant: str, version: int, view_type: type) -> bool:
        """Whether the file holds a view of this mirror version built by this code (reads its header only)."""
        try:
            with open(self.path(tenant), "rb") as f:
                return bool(pickle.load(f) == (self.fingerprint(view_type), version))
        except Exception:  # missing, unreadable, or from another release
            return False

    def save(self, tenant: str, version: int, view: Any) -> None:
        """Write the file atomically, in a child process when fork is available."""
        header = (self.fingerprint(type(view)), version)
        if hasattr(os, "fork"):
            pid = os.fork()
            if pid == 0:  # the child: write and leave at once, touching nothing else of the parent's
                code = 0
                try:  # equal strings are already one object (the store's load shares them): pickle writes each once
                    # with the indexes the answers derive on first use, as `entra-mcp sync` prepares it: the next
                    # start answers its first questions at full speed (this copy's work, not the server's)
                    self._write(tenant, header, _derived(view))
                except BaseException:
                    code = 1
                os._exit(code)
            reaper = threading.Thread(target=self._reap, args=(pid, tenant), daemon=True)
            self._writers[pid] = reaper
            reaper.start()
        else:  # pragma: no cover - non-POSIX
            self._write(tenant, header, view)

    def _write(self, tenant: str, header: tuple[str, int], view: Any) -> None:
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        tmp = self.directory / f".{tenant}.view.{os.getpid()}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            pickle.dump(header, f, protocol=pickle.HIGHEST_PROTOCOL)
            pickle.dump(view, f, protocol=pickle.HIGHEST_PROTOCOL)
        os.replace(tmp, self.path(tenant))

    def _reap(self, pid: int, tenant: str) -> None:
        try:
            _, status = os.waitpid(pid, 0)
        except ChildProcessError:
            return
        finally:
            self._writers.pop(pid, None)
        if os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL:
            log.info("tenant %s: the view cache's writer was ended with the server; the next start indexes the mirror", tenant)
        elif status != 0:
            log.warning("tenant %s: writing the view cache failed; the next start rebuilds the view", tenant)

    def finish(self, timeout: float) -> None:
        """Let the forked writers still at work finish, for at most `timeout` seconds, then end them (a server that
        stops leaves no process behind writing into its cache; a writer ended mid-write leaves only its temporary
        file, and the next start indexes the mirror)."""
        deadline = time.monotonic() + timeout
        for pid, reaper in list(self._writers.items()):
            reaper.join(max(0.0, deadline - time.monotonic()))
            if reaper.is_alive():
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
                reaper.join(5)


def _load_and_index(
    store: SnapshotSource, name: str, build: Callable[[DirectorySnapshot], Any], held: "TenantView | None" = None
) -> tuple[DirectorySnapshot | None, Any]:
    """(snapshot, view) of a tenant's mirror, loaded and indexed with the cyclic collector off; the view is None
    when the tenant was never synced. When only areas the index does not read changed since `held` (an hourly
    sign-in activity refresh), `held`'s index is kept over the new snapshot instead of being built again; when a few
    users or memberships changed, `held`'s index is patched (DirectoryView.updated) instead of built again."""
    with _no_cyclic_gc():
        base = held.snapshot if held is not None else None
        # the held snapshot's unchanged buckets are reused (a small delta loads a few buckets, not a second copy)
        snapshot = (store.load_snapshot(name, held=base) if base is not None and _takes_held(store)  # type: ignore[call-arg]
                    else store.load_snapshot(name))
        if snapshot is None or snapshot.as_of is None:
            return snapshot, None
        if held is not None and held.snapshot is not None and held.view is not None:
            changed = snapshot.areas_changed_since(held.snapshot)
            if changed <= UNINDEXED_AREAS:
                reused = _with_snapshot(held.view, snapshot)
                if reused is not held.view:
                    log.info("tenant %s: only %s changed: the index is kept", name, ", ".join(sorted(changed)) or "freshness")
                    return snapshot, _derived(reused)
            update = getattr(held.view, "updated", None)  # a DirectoryView patches the entries of what changed
            if update is not None:
                started = time.perf_counter()
                patched = update(snapshot)
                if patched is not None:
                    log.info("tenant %s: index updated in place in %.0f ms", name, (time.perf_counter() - started) * 1000)
                    return snapshot, _derived(patched)
            return snapshot, _derived(build(snapshot))  # a reload: off the request path
        return snapshot, build(snapshot)


def _takes_held(store: SnapshotSource) -> bool:
    """Whether the store's load_snapshot reuses a held snapshot (MirrorStore does; a stand-in store may not)."""
    import inspect

    try:
        return "held" in inspect.signature(store.load_snapshot).parameters
    except (TypeError, ValueError):
        return False


def _derived(view: Any) -> Any:
    """`view` with the indexes the answers would otherwise derive on their first call (identity.access)."""
    from entra_mcp.identity.access import derive_indexes
    from entra_mcp.identity.view import DirectoryView

    if isinstance(view, DirectoryView):
        derive_indexes(view)
    return view


def views_to_prepare(cache_dir: str | os.PathLike[str], versions: dict[str, tuple[int, int]]) -> list[str]:
    """The tenants whose index `entra-mcp sync` should prepare: `versions` maps a tenant to its data version before
    and after the run; those whose objects changed, and those whose current version has no index built by this code
    in the view cache (first run after an upgrade, or a cold start that could not write it)."""
    cache = ViewCache(Path(cache_dir) / VIEW_CACHE_DIR)
    view_type = _view_type()
    return [name for name, (before, after) in versions.items()
            if after and (after != before or not cache.holds(name, after, view_type))]


def prepare_views(cache_dir: str | os.PathLike[str], store: SnapshotSource, names: Sequence[str]) -> None:
    """Build each named tenant's view now and keep it in the view cache, so that the next server start loads it
    instead of indexing the mirror (what `entra-mcp sync` does after it changed a mirror: agent runtimes launch a
    stdio server per session, and each such start is then a restart). A failure only costs the next start time."""
    cache = ViewCache(Path(cache_dir) / VIEW_CACHE_DIR)
    view_type = _view_type()
    for name in names:
        started = time.perf_counter()
        try:
            snapshot, view = _load_and_index(store, name, _default_build)
            view = _derived(view)  # kept with the index: the first answers after a start do not derive them
            if view is None or snapshot is None:
                continue
            cache._write(name, (cache.fingerprint(view_type), snapshot.version), view)
        except Exception as exc:  # noqa: BLE001 - the mirror is fine; only the head start is lost
            log.warning("tenant %s: could not prepare the server's index (%s); the next server start builds it",
                        name, str(exc)[:200] or type(exc).__name__)
            continue
        finally:
            snapshot = view = None
            _return_free_memory()
        log.info("tenant %s: index for the server prepared in %.1f s", name, time.perf_counter() - started)


class ShippedViews:
    """The prepared index travelling with a published snapshot (cluster/replica.py): the leader builds the view of
    the version it publishes (and keeps it in its own view cache, so its server loads it instead of indexing
    again); a follower that adopts that version installs it in its view cache under its own version numbers before
    the mirror switches, so its server loads it instead of indexing. Only a view built by this release's code is
    used (the fingerprint); anything else: the server indexes the mirror as usual."""

    def __init__(self, cache_dir: str | os.PathLike[str], store: SnapshotSource) -> None:
        self.cache = ViewCache(Path(cache_dir) / VIEW_CACHE_DIR)
        self.store = store

    def fingerprint(self) -> str:
        return self.cache.fingerprint(_view_type())

    def prepare(self, name: str, version: int) -> tuple[Any, str | None]:
        """(view, fingerprint) of `name`'s mirror, built now and written to this replica's view cache; (None, None)
        when it cannot be built (the followers then index it themselves)."""
        try:
            snapshot, view = _load_and_index(self.store, name, _default_build)
            if view is None or snapshot is None:
                return None, None
            fingerprint = self.fingerprint()
            self.cache._write(name, (fingerprint, snapshot.version), view)
            return view, fingerprint
        except Exception as exc:  # noqa: BLE001 - publishing goes on without the index
            log.warning("tenant %s: could not prepare the index to publish (%s)", name, str(exc)[:200] or type(exc).__name__)
            return None, None

    def install(self, name: str, view: Any, *, version: int, stamp: int, data_stamps: dict[str, int]) -> None:
        """Keep a shipped `view` as the index of this replica's mirror of `version` (its own numbers)."""
        shipped = getattr(view, "snapshot", None)
        if not isinstance(view, _view_type()) or not isinstance(shipped, DirectorySnapshot):
            return
        try:
            snapshot = replace(shipped, version=version, stamp=stamp, data_stamps=dict(data_stamps))
            self.cache._write(name, (self.fingerprint(), version), _with_snapshot(view, snapshot))
        except Exception as exc:  # noqa: BLE001 - the server indexes the mirror itself
            log.warning("tenant %s: could not keep the published index (%s)", name, str(exc)[:200] or type(exc).__name__)


class ViewProvider:
    """Hands out the current TenantView per tenant name, reloading from the store when its version changes.

    `check_interval` (seconds) bounds how often the store is asked for the version; 0 asks on every call.
    `background_reload=False` rebuilds on the calling thread (tests that need the new data at once).
    """

    def __init__(
        self,
        tenants: Sequence[TenantInfo],
        store: SnapshotSource,
        *,
        build: Callable[[DirectorySnapshot], Any] = _default_build,
        check_interval: float = 0.2,
        background_reload: bool = True,
        clock: Callable[[], float] = time.monotonic,
        cache: ViewCache | None = None,
        memory_budget_bytes: int = 0,
        estimate: Callable[[TenantView], int] = estimate_view_bytes,
    ) -> None:
        self._tenants = {t.name: t for t in tenants}
        self._folded = {n.casefold(): n for n in self._tenants}
        self._by_tenant_id = {t.tenant_id.casefold(): t.name for t in tenants}
        self._seen_ids: set[str] = set()  # tenants whose mirror's tenant GUID is in _by_tenant_id
        self._cache = cache
        self._store = store
        self._build = build
        self._check_interval = check_interval
        self._background = background_reload
        self._clock = clock
        self._budget = memory_budget_bytes
        self._estimate = estimate
        self._held: OrderedDict[str, TenantView] = OrderedDict()  # least recently used first
        self._sizes: dict[str, int] = {}
        self._checked_at: dict[str, float] = {}
        self._reloading: set[str] = set()
        self._lock = threading.Lock()
        self._load_locks = {name: threading.Lock() for name in self._tenants}
        self.evictions = 0
        self.loads = 0
        self._frozen = False  # warm(freeze=True) froze the start's objects out of the cyclic collector

    @classmethod
    def from_settings(cls, settings: Settings, store: SnapshotSource, **kwargs: Any) -> "ViewProvider":
        """`cache=True` keeps built views under cache_dir/.server-views (a name no tenant can have; see ViewCache)."""
        tenants = [TenantInfo(t.name, t.tenant_id, t.sync.interval_minutes) for t in settings.tenants]
        kwargs.setdefault("memory_budget_bytes", settings.server.view_memory_mb * 1024 * 1024)
        if kwargs.get("cache") is True:
            kwargs["cache"] = ViewCache(Path(settings.server.cache_dir) / VIEW_CACHE_DIR)
        elif kwargs.get("cache") is False:
            kwargs["cache"] = None
        return cls(tenants, store, **kwargs)

    @property
    def names(self) -> list[str]:
        return list(self._tenants)

    def set_tenants(self, tenants: Sequence[TenantInfo]) -> None:
        """Serve these tenants from now on (a reloaded tenants file): new ones are answered at once (their view
        loaded at the first call), removed ones are unknown from now on and their views dropped; the views of the
        others stay."""
        new = {t.name: t for t in tenants}
        with self._lock:
            for name in new:
                self._load_locks.setdefault(name, threading.Lock())  # before the name can be resolved
            same = {n for n, t in new.items() if n in self._tenants and self._tenants[n].tenant_id == t.tenant_id}
            by_tenant_id = {t.tenant_id.casefold(): t.name for t in tenants}
            for tid, name in self._by_tenant_id.items():  # mirror GUIDs learnt of tenants that stay as they were
                if name in same:
                    by_tenant_id.setdefault(tid, name)
            self._seen_ids &= same
            self._tenants = new
            self._folded = {n.casefold(): n for n in new}
            self._by_tenant_id = by_tenant_id
            for name in [n for n in self._held if n not in new]:
                self.thaw()
                self._held.pop(name, None)
                self._sizes.pop(name, None)
                self._checked_at.pop(name, None)

    def resolve(self, tenant: str | None) -> str:
        """The configured tenant name meant by `tenant` (None: the only one). Raises NotFoundError/InvalidArgument."""
        if tenant is None or tenant == "":
            if len(self._tenants) == 1:
                return next(iter(self._tenants))
            if not self._tenants:
                raise InvalidArgument("no tenants are configured on this server; add a [[tenants]] entry to its config.")
            raise InvalidArgument(
                f"several tenants are configured ({_some(list(self._tenants))}); pass `tenant` with one of these names."
            )
        if tenant in self._tenants:
            return tenant
        folded = tenant.casefold()
        if folded in self._folded:
            return self._folded[folded]
        if folded in self._by_tenant_id:  # the tenant id or domain is accepted too
            return self._by_tenant_id[folded]
        hint = tenant_hint(tenant, list(self._tenants))
        close = hint.removeprefix("Did you mean ").removesuffix("?").split(", ") if hint.startswith("Did you") else []
        raise NotFoundError(f"unknown tenant {tenant[:80]!r}: no tenant of this server has that name or id. {hint}",
                            suggestions=close)

    def find_tenant_id(self, tenant_id: str) -> str | None:
        """The configured tenant whose id is `tenant_id` (case-insensitive): the config's tenant_id (a GUID or a
        domain) or the GUID its mirror recorded; None when no tenant has it. Reads freshness only."""
        key = tenant_id.casefold()
        if key not in self._by_tenant_id:
            for name in self._tenants:
                if name not in self._seen_ids:
                    self.status(name)  # records the mirror's tenant GUID
                if key in self._by_tenant_id:
                    break
        return self._by_tenant_id.get(key)

    def _learn_tenant_id(self, name: str, tenant_id: str | None) -> None:
        if tenant_id:
            self._by_tenant_id.setdefault(tenant_id.casefold(), name)
            self._seen_ids.add(name)

    def current(self, tenant: str | None = None) -> TenantView:
        """The freshest view of `tenant` this provider holds (loading it when the store has a newer version)."""
        name = self.resolve(tenant)
        held = self._held.get(name)
        if held is not None and self._budget:
            try:
                self._held.move_to_end(name)  # most recently used
            except KeyError:  # evicted by another thread just now
                pass
        now = self._clock()
        if held is not None and now - self._checked_at.get(name, 0.0) < self._check_interval:
            return held
        self._checked_at[name] = now
        fresh = self._store.freshness(name)
        version = fresh.version if fresh is not None else 0
        if held is not None and held.version == version:
            if fresh is not None and held.stamp != fresh.stamp:
                return self._refresh(name, fresh, held)
            return held
        if held is None or held.view is None or not self._background:
            return self._load(name, version)  # nothing to answer from meanwhile (a first sync just landed): load now
        self._reload_in_background(name, version)
        return held

    def all(self) -> list[TenantView]:
        """Every tenant's view, loading those not held: for few tenants; `statuses()` reads only freshness."""
        return [self.current(name) for name in self._tenants]

    def start_early_index(self, *, min_member_buckets: int = EARLY_MIN_MEMBER_BUCKETS) -> str | None:
        """At a server's start, before the MCP SDK is imported: when the first tenant to be loaded has a large mirror
        and no prepared index (its start will index the mirror), have a child process load its users table and member
        lists and build its reverse memberships meanwhile (identity/member_index_child.py: the store's load takes the
        table and the lists, the view's build the reverse memberships, each only if they come from the same
        buckets). Returns the tenant, or None when there is nothing to gain (a prepared index, a small or missing
        mirror, no fork, one CPU). Never fails the start: a mirror it cannot read is the load's to report."""
        from entra_mcp.identity import member_index_child

        if self._budget or member_index_child.cpus() < 2 or not self._tenants:
            return None
        name = next(iter(self._tenants))
        try:
            root = self._store.root_state(name) if hasattr(self._store, "root_state") else None
            if not root or not int(root.get("version") or 0):
                return None
            from entra_mcp.mirror.store import collection_specs

            spec = collection_specs(root).get("members")
            if spec is None or spec[0] < min_member_buckets:
                return None  # a small tenant: its member lists take milliseconds
            if self._cache is not None and self._cache.holds(name, int(root["version"]), _view_type()):
                return None  # the start loads the prepared index
            cache_dir = getattr(self._store, "cache_dir", None)
            if cache_dir is None or not member_index_child.start(cache_dir, name, self._store):
                return None
        except Exception as exc:  # noqa: BLE001 - only a head start is lost
            log.debug("tenant %s: no child for the cold start (%s)", name, type(exc).__name__)
            return None
        log.info("tenant %s: no prepared index; a child loads the users and member lists and builds the reverse "
                 "memberships while the server starts", name)
        return name

    def warm(self, *, freeze: bool = False) -> None:
        """Load tenants now (at start-up, so the first question is answered at full speed): the first WARM_MAX, and
        with a memory budget only while it lasts; the others are loaded at their first call.

        `freeze` (a server's start, before any request): the loaded views and the imported modules then leave the
        cyclic collector's generations (`gc.freeze()`). Otherwise the collections right after the start traverse
        the whole view three times over as it ages through the generations (large tenant: ~0.5 s of CPU before the
        first answer; the first one at once, when the load re-enables the collector: so the freeze comes before).
        Nothing else exists yet, so nothing that could become cyclic garbage is frozen with them; the first view
        replaced or dropped later thaws them all (`gc.unfreeze()`), and from then on the collector sees everything,
        as without freezing (see _no_cyclic_gc)."""
        from entra_mcp.identity import member_index_child

        try:
            with _no_cyclic_gc() if freeze else contextlib.nullcontext():  # frozen before the collector runs at all
                for name in list(self._tenants)[:WARM_MAX]:
                    if self._budget and sum(self._sizes.values()) >= self._budget:
                        break
                    self._load(name, self._store.version(name))
                if freeze and self._held and not self._frozen:
                    gc.freeze()
                    self._frozen = True
        finally:  # a child no load or build took from (a prepared index after all, or a failed load)
            member_index_child.discard(self._store)

    def finish_writes(self, timeout: float = 10.0) -> None:
        """At the server's end: the view cache's writers finish (or are ended after `timeout` seconds)."""
        if self._cache is not None:
            self._cache.finish(timeout)

    def thaw(self) -> None:
        """Give the objects frozen by warm(freeze=True) back to the collector (a view of the start is going, or
        serving ended)."""
        if self._frozen:
            self._frozen = False
            gc.unfreeze()

    @property
    def held(self) -> list[str]:
        """Names of the tenants whose view is in memory, least recently used first."""
        return list(self._held)

    def held_views(self) -> dict[str, TenantView]:
        """The views in memory now, by tenant name (what a forked answer worker holds: server/workers.py)."""
        return dict(self._held)

    def held_bytes(self) -> int:
        """The held views' estimated memory (see estimate_view_bytes)."""
        return sum(self._sizes.values())

    def status(self, tenant: str | None = None) -> TenantView:
        """The tenant's view when it is held (brought up to the mirror's freshness), else a status-only TenantView
        (`loaded` False, a snapshot of the areas' statuses without objects): never loads or indexes a mirror."""
        name = self.resolve(tenant)
        held = self._held.get(name)
        fresh = self._store.freshness(name)
        if held is not None and (fresh is None or held.version == fresh.version):
            if fresh is not None and held.stamp != fresh.stamp:
                return self._refresh(name, fresh, held)
            return held
        info = self._tenants[name]  # not held, or the mirror moved on since: its freshness says how it stands
        if fresh is None:
            return TenantView(name=name, tenant_id=info.tenant_id, interval_minutes=info.interval_minutes, version=0,
                              snapshot=None, view=None, loaded=False)
        self._learn_tenant_id(name, fresh.tenant_id)
        snapshot = DirectorySnapshot(tenant=name, tenant_id=fresh.tenant_id or info.tenant_id, as_of=fresh.as_of,
                                     interval_minutes=fresh.interval_minutes, areas=dict(fresh.areas),
                                     version=fresh.version, stamp=fresh.stamp)
        return TenantView(name=name, tenant_id=snapshot.tenant_id, interval_minutes=info.interval_minutes,
                          version=fresh.version, snapshot=snapshot, view=None, stamp=fresh.stamp, loaded=False)

    def statuses(self) -> list[TenantView]:
        """status() of every tenant: what /healthz and sync_status read (no view loads)."""
        out = []
        for name in list(self._tenants):
            try:
                out.append(self.status(name))
            except NotFoundError:  # removed by a reload of the tenants file meanwhile
                continue
        return out

    def _evict(self, keep: str) -> None:
        """Drop the least recently used views until the held ones fit the budget (`keep`, just loaded, stays)."""
        if not self._budget:
            return
        dropped = []
        with self._lock:
            for name in list(self._held):
                if sum(self._sizes.values()) <= self._budget:
                    break
                if name == keep or name in self._reloading or self._load_locks[name].locked():
                    continue
                self.thaw()
                self._held.pop(name, None)
                self._sizes.pop(name, None)
                self._checked_at.pop(name, None)
                dropped.append(name)
        if dropped:
            self.evictions += len(dropped)
            _return_free_memory()
            log.info("views: dropped %d cold tenant view(s) to stay within the memory budget (%s)", len(dropped),
                     ", ".join(dropped[:5]) + (" ..." if len(dropped) > 5 else ""))

    def _refresh(self, name: str, fresh: Freshness, seen: TenantView) -> TenantView:
        """The held view with `fresh`'s asOf and statuses (no objects changed): no load, no indexing. `seen` is the
        view the caller found held (answered when a reload or an eviction is under way)."""
        lock = self._load_locks[name]
        if not lock.acquire(blocking=False):  # a reload is under way: it brings the new freshness itself
            return self._held.get(name, seen)
        try:
            held = self._held.get(name)
            if held is None:  # dropped from memory just now: the caller's copy is still a true answer
                return seen
            if held.version != fresh.version or fresh.stamp <= held.stamp:
                return held
            if held.snapshot is not None:
                snapshot = held.snapshot.refreshed(fresh)
            elif fresh.version == 0:  # no object ever committed (e.g. every area refused): statuses only
                snapshot = DirectorySnapshot(tenant=name, tenant_id=fresh.tenant_id, as_of=fresh.as_of,
                                             interval_minutes=fresh.interval_minutes, areas=dict(fresh.areas), stamp=fresh.stamp)
            else:
                return held
            tv = replace(held, snapshot=snapshot, view=_with_snapshot(held.view, snapshot), stamp=fresh.stamp)
            with self._lock:
                if name in self._held:
                    self._held[name] = tv
            return tv
        finally:
            lock.release()

    def _load(self, name: str, version: int) -> TenantView:
        with self._load_locks[name]:
            held = self._held.get(name)
            if held is not None and held.version == version:
                return held
            info = self._tenants[name]
            started = time.perf_counter()
            if held is not None:
                self.thaw()  # the start's view is being replaced: its objects go back to the collector
            view_type = _view_type()
            with _no_cyclic_gc():
                cached = (self._cache.load(name, version, view_type)
                          if self._cache is not None and view_type is not None and version else None)
                if cached is not None:
                    snapshot, view = cached.snapshot, cached
                    fresh = self._store.freshness(name)  # the cached view's asOf and statuses may be older
                    if fresh is not None and fresh.version == snapshot.version and fresh.stamp != snapshot.stamp:
                        snapshot = snapshot.refreshed(fresh)
                        view = _with_snapshot(view, snapshot)
                else:
                    snapshot, view = _load_and_index(self._store, name, self._build, held)
            if snapshot is not None:
                version = max(version, snapshot.version)
            if (cached is None and view is not None and self._cache is not None and view_type is not None
                    and isinstance(view, view_type)):
                self._cache.save(name, version, view)
            tv = TenantView(
                name=name,
                tenant_id=snapshot.tenant_id if snapshot is not None and snapshot.tenant_id else info.tenant_id,
                interval_minutes=info.interval_minutes,
                version=version,
                snapshot=snapshot,
                view=view,
                stamp=snapshot.stamp if snapshot is not None else 0,
            )
            self._learn_tenant_id(name, tv.tenant_id)
            with self._lock:
                self._held[name] = tv
                self._held.move_to_end(name)
                self._sizes[name] = self._estimate(tv)
            self.loads += 1
            from_cache = cached is not None
            held = cached = None  # the replaced view is gone now, unless a request still reads it
            _return_free_memory()  # the load's transient objects and the replaced view
            if view is not None:
                log.info("tenant %s: view of mirror version %s ready in %.0f ms (%s)", name, version,
                         (time.perf_counter() - started) * 1000, "index loaded from the view cache" if from_cache else "mirror indexed")
        self._evict(keep=name)
        return tv

    def _reload_in_background(self, name: str, version: int) -> None:
        with self._lock:
            if name in self._reloading:
                return
            self._reloading.add(name)

        def work() -> None:
            try:
                self._load(name, version)
            except Exception:  # a bad snapshot must not take the server down; the old view keeps answering
                held = self._held.get(name)
                log.exception("tenant %s: reloading the mirror failed; still answering from version %s", name,
                              held.version if held is not None else "none (not in memory)")
            finally:
                with self._lock:
                    self._reloading.discard(name)

        threading.Thread(target=work, name=f"entra-mcp-reload-{name}", daemon=True).start()


__all__ = ["VIEW_CACHE_DIR", "ShippedViews", "SnapshotSource", "TenantInfo", "TenantView", "ViewCache", "ViewProvider", "estimate_view_bytes", "prepare_views",
           "views_to_prepare"]
