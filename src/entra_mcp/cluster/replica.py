"""Several `serve` replicas, one sync leader per tenant: who syncs, what it publishes, how the others follow.

- Leases (cluster/lease.py): `keep_leases` tries to take each tenant's lease and renews it every third of the lease
  time; a replica that dies stops renewing and another takes over within the lease time; a clean stop releases it.
- The sync (sync/scheduler.py) asks `run(tenant)` around each run: only the lease holder syncs. Before its run a new
  leader adopts the newest publication (so it continues from the version the others serve, delta links included);
  after it, every commit is published: the mirror (or, when no object changed, its root alone: asOf and statuses
  move) written to the snapshot directory (cluster/snapshots.py), then made current by the fenced Redis record. A
  leader whose token is no longer the newest (paused past its lease) is refused and removes its file.
- The sign-in events (their own mirror, MirrorStore.sign_in_store(), polled every few minutes apart from the
  directory sync) are published the same way on their own channel (`run(tenant, part="sign_ins")` around each poll,
  and after each directory run, which polls them too): files under `<snapshot_dir>/.sign-in-events/<tenant>/`, the
  record at `{prefix}sync:{tenant}:signins:published`, fenced by the same lease. A follower adopts them into its own
  sign-in mirror in one switch, so explain_sign_in and sign_in_failures_summary answer the leader's events with the
  leader's asOf for that area.
- A run stops as soon as its lease is lost: the Graph client asks the run's gate before every request
  (graph/client.py REQUEST_GATE), and the lease keeper cancels the runs of a lease it could not renew. A leader
  resumed after a pause longer than its lease sends no further request: its local deadline has passed, so the gate
  cancels the run at its next request; the mirror keeps its last commit (each commit is atomic), nothing is
  published, and the replica adopts the new leader's version.
- `follow` polls the Redis records of every tenant with ONE command (MGET) per poll; a replica that does not lead
  adopts each new publication into its own mirror in one switch (MirrorWriter.adopt): the server's ViewProvider then
  reloads (or only refreshes asOf and statuses) as it does after a local sync, so every answer's asOf is the
  leader's commit time of the data it was answered from.
- Redis unreachable: nobody can take or renew a lease, so nobody syncs; every replica keeps serving its mirror.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, AsyncIterator, Callable, Sequence

import anyio
import anyio.lowlevel

from entra_mcp.cluster.lease import Publication, ReplicaSet, SyncLease, read_publications, replica_id
from entra_mcp.cluster.snapshots import SnapshotDir
from entra_mcp.errors import MirrorError, StoreUnavailable
from entra_mcp.graph.client import REQUEST_GATE
from entra_mcp.logs import get_logger
from entra_mcp.mirror.store import SIGN_IN_DIR, MirrorStore

log = get_logger("cluster.replica")

DIRECTORY, SIGN_INS = "directory", "sign_ins"


def _colls(root: dict[str, Any]) -> dict[str, Any]:
    return {area: dict(a["colls"]) for area, a in root["areas"].items()}


def _iso(value: Any) -> str | None:
    return value.isoformat().replace("+00:00", "Z") if value is not None and hasattr(value, "isoformat") else None


def _as_of(root: dict[str, Any], part: str) -> Any:
    """The asOf the answers of `part` carry: the mirror's commit time, or for the sign-in events the time of the
    leader's last successful poll (their answers' asOf)."""
    if part == SIGN_INS:
        status = (root.get("areas", {}).get("sign_in_events") or {}).get("status") or {}
        return status.get("last_success")
    return root.get("as_of")


@dataclass(frozen=True)
class _Part:
    """What one channel of a tenant's publications carries: the directory mirror (with its prepared index) or the
    sign-in events' mirror."""

    channel: str  # cluster/lease.py CHANNELS: "" (directory) or "signins"
    store: MirrorStore
    snapshots: SnapshotDir
    views: Any  # views.ShippedViews for the directory, None for the sign-in events


class Replication:
    """The leader/follower side of `serve` for the tenants named. `shared` is sharedstore's SharedRedis."""

    def __init__(self, tenants: Sequence[str], store: MirrorStore, shared: Any, *, snapshot_dir: str | Any,
                 lease_seconds: float = 30.0, poll_seconds: float = 2.0, keep: int = 3, holder: str | None = None,
                 lead: bool = True, views: Any = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.store = store
        self.shared = shared
        self.holder = holder or replica_id()
        self.snapshots = SnapshotDir(snapshot_dir)
        self.parts = {
            DIRECTORY: _Part("", store, self.snapshots, views),  # views: the prepared index published with a version
            SIGN_INS: _Part("signins", store.sign_in_store(), SnapshotDir(Path(snapshot_dir).expanduser() / SIGN_IN_DIR),
                            None),
        }
        self.lease_seconds = lease_seconds
        self.poll_seconds = poll_seconds
        self.keep = keep
        self.lead = lead  # False: follow only (serve --no-sync)
        self.leases = {name: SyncLease(shared, tenant=name, holder=self.holder, ttl_seconds=lease_seconds, clock=clock)
                       for name in tenants}
        self.retry_seconds = max(0.2, min(poll_seconds, lease_seconds / 3.0))
        self.replica_set = ReplicaSet(shared, holder=self.holder, ttl_seconds=lease_seconds)
        self.live_replicas = 1
        # the runs in progress here, per tenant (their lease is never handed over; they are stopped when it is lost)
        self._runs: dict[str, set[anyio.CancelScope]] = {}
        self.last_error: dict[str, str] = {}
        self.refused: dict[str, int] = {name: 0 for name in tenants}
        self.stopped: dict[str, int] = {name: 0 for name in tenants}  # runs stopped because the lease was lost
        self._seen: dict[tuple[str, str], Publication] = {}  # the newest publication seen per (tenant, part)
        self._serving: dict[tuple[str, str], tuple[int, int]] = {}  # (token, stamp) this mirror holds, once known

    @property
    def _views(self) -> Any:
        return self.parts[DIRECTORY].views

    @property
    def _running(self) -> set[str]:
        return {name for name, scopes in self._runs.items() if scopes}

    # ------------------------------------------------------------------ the scheduler's gate
    def may_sync(self, tenant: str) -> bool:
        """Whether this replica leads `tenant` now."""
        lease = self.leases.get(tenant)
        return lease is not None and lease.held()

    @contextlib.asynccontextmanager
    async def run(self, tenant: Any, part: str = DIRECTORY) -> AsyncIterator[bool]:
        """Around one sync run of `tenant` (a TenantSettings), or one poll of its sign-in events (`part` SIGN_INS):
        yields False when another replica leads (skip the run); else catches up with the newest publication, yields
        True, and publishes what the run committed (a directory run polls the sign-in events too: both are
        published). The run is cancelled as soon as the lease is lost (the body then ends without an exception and
        nothing is published): the caller tells a finished run by having reached its end."""
        name = tenant.name
        lease = self.leases[name]
        if not lease.held() or lease.token is None:
            yield False
            return
        token = lease.token
        scope = anyio.CancelScope()
        self._runs.setdefault(name, set()).add(scope)
        gate = REQUEST_GATE.set(self._request_gate(name, token, scope))
        parts = (DIRECTORY, SIGN_INS) if part == DIRECTORY else (part,)  # a directory run polls the sign-ins too
        try:
            for p in parts:
                await anyio.to_thread.run_sync(self._catch_up, name, p)
            with scope:
                yield True
            if scope.cancel_called:
                return
            for p in parts:
                await anyio.to_thread.run_sync(self._publish, name, token, p)
        finally:
            REQUEST_GATE.reset(gate)
            self._runs[name].discard(scope)

    def _request_gate(self, name: str, token: int, scope: anyio.CancelScope) -> Callable[[], Any]:
        """What the Graph client awaits before each request of this run: nothing while the lease is held; once it is
        not (renewal failed, or the local deadline passed: a pause longer than the lease), the run is cancelled
        before the request goes out."""
        lease = self.leases[name]

        async def gate() -> None:
            if lease.token == token and lease.held():
                return
            self._stop(name, scope, "before its next Graph request")
            await anyio.lowlevel.checkpoint()  # delivers the cancellation: the request is not sent

        return gate

    def _stop(self, name: str, scope: anyio.CancelScope, when: str) -> None:
        if scope.cancel_called:
            return
        scope.cancel()
        self.stopped[name] = self.stopped.get(name, 0) + 1
        log.warning("tenant %s: this replica lost the sync lease; its run is stopped %s (the mirror keeps its last "
                    "commit; nothing is published; the new leader's version is adopted)", name, when)

    def _stop_lost_runs(self) -> None:
        """Cancel the runs whose lease is no longer held (called on the event loop after each lease round)."""
        for name, scopes in self._runs.items():
            if scopes and not self.leases[name].held():
                for scope in list(scopes):
                    self._stop(name, scope, "by the lease keeper")

    # ------------------------------------------------------------------ background loops
    async def keep_leases(self, stop_event: anyio.Event) -> None:
        """Take and renew the leases until `stop_event`; then release them (a clean stop hands over at once). A run
        whose lease was lost is stopped after each round."""
        interval = self.lease_seconds / 3.0
        try:
            while not stop_event.is_set():
                await anyio.to_thread.run_sync(self.keep_round)
                self._stop_lost_runs()
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
        running = self._running
        spare = [n for n in leading if n not in running]
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
            await anyio.to_thread.run_sync(self.follow_round)
            with anyio.move_on_after(self.poll_seconds):
                await stop_event.wait()

    # ------------------------------------------------------------------ adopting
    def follow_round(self) -> int:
        """One poll: every tenant's publications read with one Redis command, the new ones of the tenants this
        replica does not lead adopted. How many it adopted."""
        try:
            records = read_publications(self.shared, list(self.leases.values()))
        except StoreUnavailable as exc:
            for name in self.leases:
                self.last_error[f"redis:{name}"] = str(exc)
            return 0
        adopted = 0
        for name, lease in self.leases.items():
            self.last_error.pop(f"redis:{name}", None)
            if lease.held():
                continue  # the leader catches up before its own run
            for part, p in self.parts.items():
                rec = records.get((name, p.channel))
                if rec is None:
                    continue
                self._seen[(name, part)] = rec
                if self._serving.get((name, part)) == (rec.token, rec.stamp):
                    continue  # held already: no disk read
                adopted += self._adopt(name, part, rec)
        return adopted

    def _catch_up(self, name: str, part: str = DIRECTORY) -> bool:
        """Adopt the newest publication of `name` (of `part`) unless this mirror holds it already; True when it
        adopted one."""
        lease = self.leases[name]
        try:
            rec = lease.published(self.parts[part].channel)
        except StoreUnavailable as exc:
            self.last_error[f"redis:{name}"] = str(exc)
            return False
        self.last_error.pop(f"redis:{name}", None)
        if rec is None:
            return False
        self._seen[(name, part)] = rec
        return self._adopt(name, part, rec)

    def _adopt(self, name: str, part: str, rec: Publication) -> bool:
        p = self.parts[part]
        lease = self.leases[name]
        source = p.store.source(name)
        have = (source or {}).get("publication") or {}
        if have.get("token") == rec.token and have.get("stamp") == rec.stamp:
            self._serving[(name, part)] = (rec.token, rec.stamp)
            return False
        if rec.holder == self.holder and rec.token == lease.token:
            return False  # our own, with a local commit since (published by the next run)
        started = time.perf_counter()
        what = "" if part == DIRECTORY else "sign-in events' "
        try:
            # buckets copied from the data file only when the local mirror does not already hold that version
            same_data = source is not None and have.get("data_file") == rec.data_file
            views = p.views
            data = p.snapshots.read(name, rec.data_file, view_fingerprint=None if same_data or views is None
                                    else views.fingerprint())
            root = data.root if rec.file == rec.data_file else p.snapshots.read(name, rec.file).root

            def install(version: int, stamp: int, data_stamps: dict[str, int]) -> None:
                if views is not None and data.view is not None:
                    views.install(name, data.view, version=version, stamp=stamp, data_stamps=data_stamps)

            with p.store.writer(name, wait_seconds=10.0) as writer:
                version, stamp = writer.adopt(root, None if same_data else data.buckets, source, before_commit=install)
            p.store.set_source(name, local_stamp=stamp, publication=asdict(rec), colls=_colls(root))
        except MirrorError as exc:
            if self.last_error.get(f"follow:{part}:{name}") != str(exc):
                log.warning("tenant %s: cannot adopt the published %sversion %s: %s", name, what, rec.version, exc)
            self.last_error[f"follow:{part}:{name}"] = str(exc)
            return False
        self.last_error.pop(f"follow:{part}:{name}", None)
        self._serving[(name, part)] = (rec.token, rec.stamp)
        log.info("tenant %s: adopted the published %s%s version %s (stamp %s, token %s%s) in %.0f ms", name, what,
                 rec.kind, rec.version, rec.stamp, rec.token, ", with its index" if data.view is not None else "",
                 (time.perf_counter() - started) * 1000)
        return True

    # ------------------------------------------------------------------ publishing
    def _publish(self, name: str, token: int, part: str = DIRECTORY) -> bool:
        """Publish what this replica's mirror (of `part`) holds now, fenced by `token`. True when it became the
        current one."""
        lease = self.leases[name]
        p = self.parts[part]
        root = p.store.root_state(name)
        if root is None:
            return False
        prev = p.store.source(name, any_stamp=True)
        have = (prev or {}).get("publication") or {}
        stamp, version = int(root.get("stamp", root["version"])), int(root["version"])
        if have.get("token") == token and have.get("stamp") == stamp:
            return False  # nothing committed since our last publication
        what = "" if part == DIRECTORY else "sign-in events' "
        fresh_only = bool(have) and have.get("version") == version and prev is not None and \
            _colls(root) == prev.get("colls") and bool(have.get("data_file"))
        try:
            if fresh_only:
                file = p.snapshots.write(name, version=version, stamp=stamp, token=token, root=root, buckets=None,
                                         data_file=have["data_file"])
                data_file = str(have["data_file"])
            else:
                export = p.store.export(name)
                if export is None:
                    return False
                root = export.root
                stamp, version = int(root.get("stamp", root["version"])), int(root["version"])
                view, fingerprint = p.views.prepare(name, version) if p.views is not None else (None, None)
                file = p.snapshots.write(name, version=version, stamp=stamp, token=token, root=root,
                                         buckets=export.buckets, view=view, fingerprint=fingerprint)
                data_file = file
        except MirrorError as exc:
            log.error("tenant %s: cannot publish the %sversion %s: %s", name, what, version, exc)
            return False
        rec = Publication(version=version, stamp=stamp, token=token, file=file, data_file=data_file,
                          holder=self.holder, as_of=_iso(_as_of(root, part)), kind="freshness" if fresh_only else "data",
                          published_at=time.time())
        try:
            ok = lease.publish(rec, token=token, channel=p.channel)
        except StoreUnavailable as exc:
            log.error("%s: %sversion %s not published", exc, what, version)
            ok = False
        if not ok:
            self.refused[name] = self.refused.get(name, 0) + 1
            if file != have.get("data_file"):
                p.snapshots.remove(name, file)
            log.warning("tenant %s: publication of the %sversion %s refused: fencing token %s is no longer the newest "
                        "(another replica leads); this replica adopts the leader's version instead", name, what,
                        version, token)
            return False
        p.store.set_source(name, local_stamp=stamp, publication=asdict(rec), colls=_colls(root))
        self._seen[(name, part)] = rec
        self._serving[(name, part)] = (rec.token, rec.stamp)
        log.info("tenant %s: published %s%s version %s (stamp %s, token %s)", name, what, rec.kind, version, stamp, token)
        try:
            p.snapshots.prune(name, keep=self.keep, current=file, current_data=data_file)
        except OSError as exc:
            log.info("tenant %s: snapshot retention skipped: %s", name, exc)
        return True

    # ------------------------------------------------------------------ what status and /healthz show
    def status(self, name: str) -> dict[str, Any]:
        """Whether this replica leads `name`, the newest publication it has seen and the version it serves (for the
        directory, and under `signIns` for the sign-in events). From memory and the local mirror only (never waits
        for Redis); no secrets."""
        lease = self.leases[name]
        leading = lease.held()
        out: dict[str, Any] = {"leading": leading, "fencingToken": lease.token if leading else None}
        out.update(self._part_status(name, DIRECTORY))
        out["refusedPublications"] = self.refused.get(name, 0)
        out["stoppedRuns"] = self.stopped.get(name, 0)
        out["signIns"] = self._part_status(name, SIGN_INS)
        return out

    def _part_status(self, name: str, part: str) -> dict[str, Any]:
        rec = self._seen.get((name, part))
        have = ((self.parts[part].store.source(name) or {}).get("publication") or {})
        return {"published": _publication_json(rec), "serving": _serving(have), "inSync": _same(rec, have)}

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
    from Redis), and the publication this cache_dir's mirror holds; the same for the sign-in events under
    `signIns` (published, serving, inSync). Redis unreachable: `redisError` says so."""
    lease = SyncLease(shared, tenant=name, holder="status", ttl_seconds=1)

    def held(s: MirrorStore) -> dict[str, Any]:
        return (s.source(name) or {}).get("publication") or {}

    have, have_sign_ins = held(store), held(store.sign_in_store())
    out: dict[str, Any] = {"leader": None, "fencingToken": None, "published": None, "serving": _serving(have),
                           "inSync": None, "redisError": None,
                           "signIns": {"published": None, "serving": _serving(have_sign_ins), "inSync": None}}
    try:
        leader, rec, sign_ins = lease.leader(), lease.published(), lease.published("signins")
    except StoreUnavailable as exc:
        out["redisError"] = str(exc)
        return out
    out["leader"], out["fencingToken"] = (leader[0], leader[1]) if leader else (None, None)
    out["published"] = _publication_json(rec)
    out["inSync"] = _same(rec, have)
    out["signIns"].update(published=_publication_json(sign_ins), inSync=_same(sign_ins, have_sign_ins))
    return out


def _serving(have: dict[str, Any]) -> dict[str, Any] | None:
    return {k: have.get(k) for k in ("version", "stamp", "token")} if have else None


def _same(rec: Publication | None, have: dict[str, Any]) -> bool:
    return bool(rec and have and have.get("token") == rec.token and have.get("stamp") == rec.stamp)


__all__ = ["Replication", "replication_report"]
