"""Several `serve` replicas, one sync leader per tenant: who syncs, what it publishes, how the others follow.

- Leases (cluster/lease.py): `keep_leases` tries to take each tenant's lease and renews it every third of the lease
  time; a replica that dies stops renewing and another takes over within the lease time; a clean stop releases it.
- The sync (sync/scheduler.py) asks `run(tenant)` around each run: only the lease holder syncs. Before its run a new
  leader adopts the newest publication (so it continues from the version the others serve, delta links included);
  after it, every commit is published: the mirror (or, when no object changed, its root alone: asOf and statuses
  move) written to the snapshot directory (cluster/snapshots.py), then made current by the fenced Redis record. A
  leader whose token is no longer the newest (paused past its lease) is refused and removes its file.
- `follow` polls the Redis record; a replica that does not lead adopts each new publication into its own mirror in
  one switch (MirrorWriter.adopt): the server's ViewProvider then reloads (or only refreshes asOf and statuses) as
  it does after a local sync, so every answer's asOf is the leader's commit time of the data it was answered from.
- Redis unreachable: nobody can take or renew a lease, so nobody syncs; every replica keeps serving its mirror.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import asdict
from typing import Any, AsyncIterator, Callable, Sequence

import anyio

from entra_mcp.cluster.lease import Publication, ReplicaSet, SyncLease, replica_id
from entra_mcp.cluster.snapshots import SnapshotDir
from entra_mcp.errors import MirrorError, StoreUnavailable
from entra_mcp.logs import get_logger
from entra_mcp.mirror.store import MirrorStore

log = get_logger("cluster.replica")


def _colls(root: dict[str, Any]) -> dict[str, Any]:
    return {area: dict(a["colls"]) for area, a in root["areas"].items()}


def _iso(value: Any) -> str | None:
    return value.isoformat().replace("+00:00", "Z") if value is not None and hasattr(value, "isoformat") else None


class Replication:
    """The leader/follower side of `serve` for the tenants named. `shared` is sharedstore's SharedRedis."""

    def __init__(self, tenants: Sequence[str], store: MirrorStore, shared: Any, *, snapshot_dir: str | Any,
                 lease_seconds: float = 30.0, poll_seconds: float = 2.0, keep: int = 3, holder: str | None = None,
                 lead: bool = True, views: Any = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.store = store
        self.holder = holder or replica_id()
        self.snapshots = SnapshotDir(snapshot_dir)
        self.lease_seconds = lease_seconds
        self.poll_seconds = poll_seconds
        self.keep = keep
        self.lead = lead  # False: follow only (serve --no-sync)
        self.leases = {name: SyncLease(shared, tenant=name, holder=self.holder, ttl_seconds=lease_seconds, clock=clock)
                       for name in tenants}
        self.retry_seconds = max(0.2, min(poll_seconds, lease_seconds / 3.0))
        self.replica_set = ReplicaSet(shared, holder=self.holder, ttl_seconds=lease_seconds)
        self.live_replicas = 1
        self._running: set[str] = set()  # tenants whose sync run is in progress here (their lease is never handed over)
        self._views = views  # views.ShippedViews: the prepared index published with a version, installed on adoption
        self.last_error: dict[str, str] = {}
        self.refused: dict[str, int] = {name: 0 for name in tenants}
        self._seen: dict[str, Publication] = {}  # the newest publication seen per tenant

    # ------------------------------------------------------------------ the scheduler's gate
    def may_sync(self, tenant: str) -> bool:
        """Whether this replica leads `tenant` now (the sign-in poll asks this; the directory sync uses `run`)."""
        lease = self.leases.get(tenant)
        return lease is not None and lease.held()

    @contextlib.asynccontextmanager
    async def run(self, tenant: Any) -> AsyncIterator[bool]:
        """Around one sync run of `tenant` (a TenantSettings): yields False when another replica leads (skip the
        run); else catches up with the newest publication, yields True, and publishes what the run committed."""
        name = tenant.name
        lease = self.leases[name]
        if not lease.held() or lease.token is None:
            yield False
            return
        token = lease.token
        self._running.add(name)
        try:
            await anyio.to_thread.run_sync(self._catch_up, name)
            yield True
            await anyio.to_thread.run_sync(self._publish, name, token)
        finally:
            self._running.discard(name)

    # ------------------------------------------------------------------ background loops
    async def keep_leases(self, stop_event: anyio.Event) -> None:
        """Take and renew the leases until `stop_event`; then release them (a clean stop hands over at once)."""
        interval = self.lease_seconds / 3.0
        try:
            while not stop_event.is_set():
                await anyio.to_thread.run_sync(self.keep_round)
                with anyio.move_on_after(interval):
                    await stop_event.wait()
        finally:
            with anyio.CancelScope(shield=True):
                for lease in self.leases.values():
                    await anyio.to_thread.run_sync(lease.release)
                await anyio.to_thread.run_sync(self.replica_set.leave)

    def fair_share(self) -> int:
        """How many tenants this replica should lead: the tenants divided by the leader-capable replicas alive,
        rounded up."""
        return -(-len(self.leases) // max(1, self.live_replicas))

    def keep_round(self) -> None:
        """One round: say this replica is alive, renew the leases it holds, take free ones up to its fair share, and
        hand one over when it leads more than its share (a replica that started first took them all), never one
        whose run is in progress. Another replica under its share takes it at its next round."""
        if self.lead:  # a follower-only replica (serve --no-sync) takes no share
            try:
                self.live_replicas = self.replica_set.beat()
            except StoreUnavailable:
                pass  # the leases below say so
        share = self.fair_share()
        for name, lease in self.leases.items():
            self._keep(name, lease, share)
        leading = [n for n, lease in self.leases.items() if lease.held()]
        spare = [n for n in leading if n not in self._running]
        if len(leading) > share and spare:
            name = spare[-1]
            log.info("tenant %s: handing the sync lease over (this replica leads %d tenants, its share of %d replicas "
                     "is %d)", name, len(leading), self.live_replicas, share)
            self.leases[name].release()

    def _keep(self, name: str, lease: SyncLease, share: int | None = None) -> None:
        try:
            if lease.token is not None and lease.renew():
                return
            leading = sum(1 for x in self.leases.values() if x.held())
            if self.lead and (share is None or leading < share):
                lease.acquire()
            self.last_error.pop(f"lease:{name}", None)
        except StoreUnavailable as exc:
            if self.last_error.get(f"lease:{name}") != str(exc):
                log.warning("%s; this replica does not sync it until Redis answers again", exc)
            self.last_error[f"lease:{name}"] = str(exc)

    async def follow(self, stop_event: anyio.Event) -> None:
        """Adopt every new publication of the tenants this replica does not lead, until `stop_event`."""
        while not stop_event.is_set():
            for name in self.leases:
                await anyio.to_thread.run_sync(self._follow_once, name)
            with anyio.move_on_after(self.poll_seconds):
                await stop_event.wait()

    # ------------------------------------------------------------------ adopting
    def _follow_once(self, name: str) -> None:
        if self.leases[name].held():
            return  # the leader catches up before its own run
        self._catch_up(name)

    def _catch_up(self, name: str) -> bool:
        """Adopt the newest publication of `name` unless this mirror holds it already; True when it adopted one."""
        lease = self.leases[name]
        try:
            rec = lease.published()
        except StoreUnavailable as exc:
            self.last_error[f"redis:{name}"] = str(exc)
            return False
        self.last_error.pop(f"redis:{name}", None)
        if rec is None:
            return False
        self._seen[name] = rec
        source = self.store.source(name)
        have = (source or {}).get("publication") or {}
        if have.get("token") == rec.token and have.get("stamp") == rec.stamp:
            return False
        if rec.holder == self.holder and rec.token == lease.token:
            return False  # our own, with a local commit since (published by the next run)
        started = time.perf_counter()
        try:
            # buckets copied from the data file only when the local mirror does not already hold that version
            same_data = source is not None and have.get("data_file") == rec.data_file
            views = self._views
            data = self.snapshots.read(name, rec.data_file, view_fingerprint=None if same_data or views is None
                                       else views.fingerprint())
            root = data.root if rec.file == rec.data_file else self.snapshots.read(name, rec.file).root

            def install(version: int, stamp: int, data_stamps: dict[str, int]) -> None:
                if views is not None and data.view is not None:
                    views.install(name, data.view, version=version, stamp=stamp, data_stamps=data_stamps)

            with self.store.writer(name, wait_seconds=10.0) as writer:
                version, stamp = writer.adopt(root, None if same_data else data.buckets, source, before_commit=install)
            self.store.set_source(name, local_stamp=stamp, publication=asdict(rec), colls=_colls(root))
        except MirrorError as exc:
            if self.last_error.get(f"follow:{name}") != str(exc):
                log.warning("tenant %s: cannot adopt the published version %s: %s", name, rec.version, exc)
            self.last_error[f"follow:{name}"] = str(exc)
            return False
        self.last_error.pop(f"follow:{name}", None)
        log.info("tenant %s: adopted the published %s version %s (stamp %s, token %s%s) in %.0f ms", name, rec.kind,
                 rec.version, rec.stamp, rec.token, ", with its index" if data.view is not None else "",
                 (time.perf_counter() - started) * 1000)
        return True

    # ------------------------------------------------------------------ publishing
    def _publish(self, name: str, token: int) -> bool:
        """Publish what this replica's mirror holds now, fenced by `token`. True when it became the current one."""
        lease = self.leases[name]
        root = self.store.root_state(name)
        if root is None:
            return False
        prev = self.store.source(name, any_stamp=True)
        have = (prev or {}).get("publication") or {}
        stamp, version = int(root.get("stamp", root["version"])), int(root["version"])
        if have.get("token") == token and have.get("stamp") == stamp:
            return False  # nothing committed since our last publication
        fresh_only = bool(have) and have.get("version") == version and prev is not None and \
            _colls(root) == prev.get("colls") and bool(have.get("data_file"))
        try:
            if fresh_only:
                file = self.snapshots.write(name, version=version, stamp=stamp, token=token, root=root, buckets=None,
                                            data_file=have["data_file"])
                data_file = str(have["data_file"])
            else:
                export = self.store.export(name)
                if export is None:
                    return False
                root = export.root
                stamp, version = int(root.get("stamp", root["version"])), int(root["version"])
                view, fingerprint = self._views.prepare(name, version) if self._views is not None else (None, None)
                file = self.snapshots.write(name, version=version, stamp=stamp, token=token, root=root,
                                            buckets=export.buckets, view=view, fingerprint=fingerprint)
                data_file = file
        except MirrorError as exc:
            log.error("tenant %s: cannot publish version %s: %s", name, version, exc)
            return False
        rec = Publication(version=version, stamp=stamp, token=token, file=file, data_file=data_file,
                          holder=self.holder, as_of=_iso(root.get("as_of")), kind="freshness" if fresh_only else "data",
                          published_at=time.time())
        try:
            ok = lease.publish(rec, token=token)
        except StoreUnavailable as exc:
            log.error("%s: version %s not published", exc, version)
            ok = False
        if not ok:
            self.refused[name] = self.refused.get(name, 0) + 1
            if file != have.get("data_file"):
                self.snapshots.remove(name, file)
            log.warning("tenant %s: publication of version %s refused: fencing token %s is no longer the newest "
                        "(another replica leads); this replica adopts the leader's version instead", name, version, token)
            return False
        self.store.set_source(name, local_stamp=stamp, publication=asdict(rec), colls=_colls(root))
        self._seen[name] = rec
        log.info("tenant %s: published %s version %s (stamp %s, token %s)", name, rec.kind, version, stamp, token)
        try:
            self.snapshots.prune(name, keep=self.keep, current=file, current_data=data_file)
        except OSError as exc:
            log.info("tenant %s: snapshot retention skipped: %s", name, exc)
        return True

    # ------------------------------------------------------------------ what status and /healthz show
    def status(self, name: str) -> dict[str, Any]:
        """Whether this replica leads `name`, the newest publication it has seen and the version it serves. From
        memory and the local mirror only (never waits for Redis); no secrets."""
        lease = self.leases[name]
        rec = self._seen.get(name)
        have = ((self.store.source(name) or {}).get("publication") or {})
        leading = lease.held()
        return {
            "leading": leading,
            "fencingToken": lease.token if leading else None,
            "published": _publication_json(rec),
            "serving": {k: have.get(k) for k in ("version", "stamp", "token")} if have else None,
            "inSync": bool(rec and have and have.get("token") == rec.token and have.get("stamp") == rec.stamp),
            "refusedPublications": self.refused.get(name, 0),
        }

    def health(self) -> dict[str, Any]:
        """/healthz's `replication` part: this replica's id, whether Redis answered its last calls, per tenant
        `status`."""
        unreachable = any(k.startswith(("lease:", "redis:")) for k in self.last_error)
        return {"replica": self.holder, "redis": "unreachable" if unreachable else "ok",
                "tenants": {name: self.status(name) for name in self.leases}}


def _publication_json(rec: Publication | None) -> dict[str, Any] | None:
    return {"version": rec.version, "stamp": rec.stamp, "token": rec.token, "asOf": rec.as_of, "kind": rec.kind,
            "by": rec.holder} if rec else None


def replication_report(shared: Any, store: MirrorStore, name: str) -> dict[str, Any]:
    """For `entra-mcp status`, from any process: who holds `name`'s lease now, the newest publication (both read
    from Redis), and the publication this cache_dir's mirror holds. Redis unreachable: `redisError` says so."""
    lease = SyncLease(shared, tenant=name, holder="status", ttl_seconds=1)
    have = ((store.source(name) or {}).get("publication") or {})
    out: dict[str, Any] = {"leader": None, "fencingToken": None, "published": None,
                           "serving": {k: have.get(k) for k in ("version", "stamp", "token")} if have else None,
                           "inSync": None, "redisError": None}
    try:
        leader, rec = lease.leader(), lease.published()
    except StoreUnavailable as exc:
        out["redisError"] = str(exc)
        return out
    out["leader"], out["fencingToken"] = (leader[0], leader[1]) if leader else (None, None)
    out["published"] = _publication_json(rec)
    out["inSync"] = bool(rec and have and have.get("token") == rec.token and have.get("stamp") == rec.stamp)
    return out


__all__ = ["Replication", "replication_report"]
