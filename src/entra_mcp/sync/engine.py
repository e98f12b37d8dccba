"""One sync run of one tenant: every enabled area, concurrently, each committed to the mirror on its own.

Per area:
- turned off in config -> status "turned off in config", its data dropped;
- first run, `--full`, or no usable delta link -> full pull, committed as a new generation;
- otherwise a delta run from the saved delta link, committed all or nothing; an expired or invalid delta link
  (410, syncStateNotFound, resyncRequired) -> a full pull of that area;
- 403 -> the area is disabled with the Graph code and the permission to grant, its data dropped; the other areas go
  on; the next run probes again, so a later grant re-enables it;
- a transient failure (retry budget used up) or another Graph error -> the area keeps its last good data and records
  the error; the run's outcome is "failed" (exit 1);
- a credential refused by the login host (AuthError) fails the whole tenant run.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta, timezone
from typing import Any, Callable

import anyio
import httpx

from entra_mcp.config import TenantSettings
from entra_mcp.errors import AuthError, DeltaTokenExpired, EntraMcpError, GraphError, MirrorError, PermissionDenied
from entra_mcp.graph.client import GraphClient, parse_retry_after
from entra_mcp.graph.credentials import TokenProvider
from entra_mcp.graph.paging import Pager
from entra_mcp.logs import get_logger
from entra_mcp.mirror.snapshot import AREAS, AreaStatus
from entra_mcp.mirror.store import MirrorStore, MirrorWriter
from entra_mcp.sync import areas as A

log = get_logger("sync")

ProgressFn = Callable[[str, str, int], None]  # (tenant name, area, objects seen so far in this run)

_NON_PREMIUM = "Authentication_RequestFromNonPremiumTenantOrB2CTenant"


@dataclass
class AreaResult:
    area: str
    outcome: str  # full | delta | unchanged | disabled | off | failed | skipped
    objects: int | None = None  # objects in the mirror after the run
    changes: int = 0  # objects added, changed or removed by this run
    requests: int = 0
    seconds: float = 0.0
    message: str | None = None


@dataclass
class TenantResult:
    tenant: str
    areas: dict[str, AreaResult] = field(default_factory=dict)
    stats: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    error: str | None = None  # the whole run failed (credentials, mirror)

    @property
    def ok(self) -> bool:
        return self.error is None and not any(r.outcome == "failed" for r in self.areas.values())


def _now() -> datetime:
    return datetime.now(timezone.utc)


def disabled_reason(area: str, exc: PermissionDenied) -> str:
    code = exc.graph_code or "HTTP 403"
    if code == _NON_PREMIUM:
        return f"Graph refused ({code}): sign-in activity needs an Entra ID P1/P2 licence in this tenant"
    perm = A.AREA_PERMISSION[area]
    if area == "domains":
        perm = "Domain.Read.All (or Directory.Read.All)"
    return f"Graph refused ({code}): grant {perm}"


class TenantSync:
    def __init__(
        self,
        tenant: TenantSettings,
        writer: MirrorWriter,
        client: GraphClient,
        *,
        full: bool = False,
        progress: ProgressFn | None = None,
        now: Callable[[], datetime] = _now,
    ) -> None:
        self.tenant = tenant
        self.writer = writer
        self.client = client
        self.full = full
        self.progress = progress
        self.now = now
        self.results: dict[str, AreaResult] = {}
        self._sp_done = anyio.Event()
        self._apps_done = anyio.Event()
        self._sp_changed: set[str] = set()
        self._sp_full = False
        self.auth_error: AuthError | None = None
        self.denied: dict[str, PermissionDenied] = {}

    async def _commit(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return await anyio.to_thread.run_sync(lambda: fn(*args, **kwargs))

    def _enabled_in_config(self, area: str) -> bool:
        return bool(getattr(self.tenant.sync, A.AREA_SWITCH[area]))

    async def run(self) -> dict[str, AreaResult]:
        self.writer.set_tenant(tenant_id=self.tenant.tenant_id, interval_minutes=self.tenant.sync.interval_minutes)
        async with anyio.create_task_group() as tg:
            for area in AREAS:
                tg.start_soon(self._area, area)
        if self.auth_error is not None:
            raise self.auth_error
        return {a: self.results[a] for a in AREAS}

    async def _area(self, area: str) -> None:
        started = time.monotonic()
        before = self.client.stats.by_area.get(area, 0)
        prev = self.writer.status(area)
        try:
            if not self._enabled_in_config(area):
                result = await self._turned_off(area, prev)
            elif area == "app_role_assignments":
                await self._apps_done.wait()
                result = await self._assignments(prev)
            elif area == "sign_in_activity":
                result = await self._sign_in(prev)
            elif area == "domains":
                result = await self._domains(prev)
            else:
                result = await self._delta_area(area, prev)
        except PermissionDenied as exc:
            self.denied[area] = exc
            reason = disabled_reason(area, exc)
            log.warning("tenant %s: %s disabled: %s", self.tenant.name, area, reason)
            status = AreaStatus(enabled=False, disabled_reason=reason, last_success=prev.last_success,
                                last_error=reason, last_error_at=self.now(), object_count=None, mode=None)
            await self._commit(self.writer.clear_area, area, status)
            result = AreaResult(area, "disabled", message=reason)
        except AuthError as exc:
            self.auth_error = self.auth_error or exc
            result = AreaResult(area, "failed", message=str(exc))
        except (GraphError, EntraMcpError) as exc:
            message = str(exc)
            log.error("tenant %s: %s failed: %s", self.tenant.name, area, message)
            if not isinstance(exc, MirrorError):
                try:
                    await self._commit(self.writer.set_status, area, replace(prev, last_error=message, last_error_at=self.now()))
                except MirrorError as exc2:
                    log.error("tenant %s: %s", self.tenant.name, exc2)
            result = AreaResult(area, "failed", message=message)
        finally:
            if area == "service_principals":
                self._sp_done.set()
            if area == "applications":
                self._apps_done.set()
        result.requests = self.client.stats.by_area.get(area, 0) - before
        result.seconds = time.monotonic() - started
        self.results[area] = result

    async def _turned_off(self, area: str, prev: AreaStatus) -> AreaResult:
        reason = "turned off in config"
        if prev.enabled or prev.disabled_reason != reason or self.writer.has_data(area):
            await self._commit(self.writer.clear_area, area, AreaStatus(enabled=False, disabled_reason=reason))
        return AreaResult(area, "off", message=reason)

    def _ok_status(self, prev: AreaStatus, count: int, mode: str) -> AreaStatus:
        return AreaStatus(enabled=True, disabled_reason=None, last_success=self.now(), last_error=prev.last_error,
                          last_error_at=prev.last_error_at, object_count=count, mode=mode)

    def _tick(self, area: str, n: int) -> None:
        if self.progress is not None:
            self.progress(self.tenant.name, area, n)

    # ---- users, groups, applications, service principals: delta queries ----
    async def _delta_area(self, area: str, prev: AreaStatus) -> AreaResult:
        link = None if self.full or not prev.enabled or not self.writer.has_data(area) else self.writer.delta_link(area)
        if link is not None:
            try:
                return await self._delta_round(area, prev, link)
            except DeltaTokenExpired as exc:
                log.warning("tenant %s: %s: %s", self.tenant.name, area, exc)
                result = await self._delta_round(area, prev, None)
                result.message = f"delta link expired ({exc.graph_code or exc.status}): full resync"
                return result
        return await self._delta_round(area, prev, None)

    async def _delta_round(self, area: str, prev: AreaStatus, link: str | None) -> AreaResult:
        path, select = A.DELTA_PATHS[area]
        full = link is None
        target: Any = A.FullBuild() if full else self.writer.begin(area)
        counter = A.Counter()
        pager = Pager(self.client, path if full else link, params={"$select": select} if full else None, area=area)  # type: ignore[arg-type]
        seen = 0
        async for page in pager:
            A.APPLY[area](target, page, counter)
            seen += len(page)
            self._tick(area, seen)
        if not pager.delta_link:
            raise GraphError(f"Graph ended the {path} round without an @odata.deltaLink; the delta link is kept as it was")
        main = A.AREA_MAIN_COLL[area]
        meta = self.writer.meta(area)
        if full:
            count = len(target.data.get(main, {}))
            if area == "groups":
                meta["memberships"] = sum(len(m) for m in target.data.get("members", {}).values())
            await self._commit(self.writer.commit_full, area, target.data, delta_link=pager.delta_link,
                               status=self._ok_status(prev, count, "full"), meta=meta)
            outcome = "full"
        else:
            count = max(0, (prev.object_count or 0) + counter.added - counter.removed)
            await self._commit(self.writer.commit_delta, target, delta_link=pager.delta_link,
                               status=self._ok_status(prev, count, "delta"), meta=meta)
            outcome = "delta"
        if area == "service_principals":
            self._sp_full = full
            self._sp_changed = counter.changed_ids | counter.removed_ids
        log.info("tenant %s: %s %s: %d objects, %d changes, %d pages", self.tenant.name, area, outcome, count, counter.changed, pager.pages)
        return AreaResult(area, outcome, objects=count, changes=counter.changed)

    # ---- sign-in activity: its own list, refreshed at most every SIGN_IN_REFRESH_MINUTES ----
    async def _sign_in(self, prev: AreaStatus) -> AreaResult:
        fresh = prev.last_success is not None and self.now() - prev.last_success < timedelta(minutes=A.SIGN_IN_REFRESH_MINUTES)
        if not self.full and prev.enabled and fresh and self.writer.has_data("sign_in_activity"):
            return AreaResult("sign_in_activity", "unchanged", objects=prev.object_count,
                              message=f"refreshed at most every {A.SIGN_IN_REFRESH_MINUTES:.0f} minutes")
        activity: dict[str, Any] = {}
        pager = Pager(self.client, "/users", params={"$select": A.SIGN_IN_SELECT, "$top": "500"}, area="sign_in_activity")
        async for page in pager:
            for u in page:
                if u.get("id") and isinstance(u.get("signInActivity"), dict):
                    activity[str(u["id"])] = {sys.intern(k): v for k, v in u["signInActivity"].items() if k in A.SIGN_IN_FIELDS}
            self._tick("sign_in_activity", pager.items)
        await self._commit(self.writer.commit_full, "sign_in_activity", {"sign_in": activity}, delta_link=None,
                           status=self._ok_status(prev, len(activity), "full"))
        return AreaResult("sign_in_activity", "full", objects=len(activity), changes=len(activity))

    # ---- domains: a handful of objects, pulled whole every run ----
    async def _domains(self, prev: AreaStatus) -> AreaResult:
        domains: dict[str, Any] = {}
        async for page in Pager(self.client, "/domains", area="domains"):
            for d in page:
                if d.get("id"):
                    domains[str(d["id"])] = {k: v for k, v in d.items() if k in A.DOMAIN_FIELDS}
        await self._commit(self.writer.commit_full, "domains", {"domains": domains}, delta_link=None,
                           status=self._ok_status(prev, len(domains), "full"))
        return AreaResult("domains", "full", objects=len(domains), changes=len(domains))

    # ---- app role assignments: appRoleAssignedTo of the service principals that matter, in $batch of 20 ----
    async def _assignments(self, prev: AreaStatus) -> AreaResult:
        await self._sp_done.wait()
        sp_result = self.results.get("service_principals")
        if sp_result is None or sp_result.outcome in ("failed", "skipped"):
            return AreaResult("app_role_assignments", "skipped", objects=prev.object_count,
                              message="service principals did not sync in this run; assignments kept as they were")
        if sp_result.outcome == "disabled":
            raise self.denied["service_principals"]  # same permission (Application.Read.All): same reason
        sps = await anyio.to_thread.run_sync(self.writer.read_all, "service_principals", "service_principals")
        apps = await anyio.to_thread.run_sync(self.writer.read_all, "applications", "applications")
        own = {str(a.get("appId")) for a in apps.values() if a.get("appId")}
        relevant = {sid for sid, sp in sps.items() if A.needs_assignments(sp, own)}
        meta = self.writer.meta("app_role_assignments")
        last_full = meta.get("full_at")
        stale = last_full is None or self.now() - last_full >= timedelta(minutes=A.ASSIGNMENTS_FULL_REFRESH_MINUTES)
        do_full = self.full or self._sp_full or stale or not prev.enabled or not self.writer.has_data("app_role_assignments")
        if do_full:
            fetched = await self._fetch_assignments(sorted(relevant))
            data = {sid: rows for sid, rows in fetched.items() if rows}
            meta["full_at"] = self.now()
            count = sum(len(v) for v in data.values())
            await self._commit(self.writer.commit_full, "app_role_assignments", {"assignments": data}, delta_link=None,
                               status=self._ok_status(prev, count, "full"), meta=meta)
            return AreaResult("app_role_assignments", "full", objects=count, changes=count,
                              message=f"{len(relevant)} service principals with assignable roles or required assignment")
        ids = sorted(self._sp_changed & relevant)
        gone = self._sp_changed - relevant
        fetched = await self._fetch_assignments(ids) if ids else {}
        change = self.writer.begin("app_role_assignments")
        count = prev.object_count or 0
        changes = 0
        for sid in sorted(gone) + ids:
            old = change.get("assignments", sid) or []
            new = fetched.get(sid) or []
            count += len(new) - len(old)
            if old != new:
                changes += 1
            if new:
                change.put("assignments", sid, new)
            else:
                change.delete("assignments", sid)
        await self._commit(self.writer.commit_delta, change, delta_link=None,
                           status=self._ok_status(prev, max(0, count), "delta"), meta=meta)
        return AreaResult("app_role_assignments", "delta", objects=max(0, count), changes=changes,
                          message=f"refreshed {len(ids)} changed service principals; full refresh every {A.ASSIGNMENTS_FULL_REFRESH_MINUTES:.0f} minutes")

    async def _fetch_assignments(self, sp_ids: list[str]) -> dict[str, list[dict[str, Any]]]:
        out: dict[str, list[dict[str, Any]]] = {}
        pending = list(sp_ids)
        attempt = 0
        while pending:
            chunks = [pending[i:i + A.BATCH_SIZE] for i in range(0, len(pending), A.BATCH_SIZE)]
            retry: list[str] = []
            waits: list[float] = []

            async def one(chunk: list[str]) -> None:
                reqs = [{"id": str(n), "method": "GET", "url": f"/servicePrincipals/{sid}/appRoleAssignedTo?$top=999"} for n, sid in enumerate(chunk)]
                body = await self.client.post("/$batch", json={"requests": reqs}, area="app_role_assignments")
                answered: set[str] = set()
                for resp in body.get("responses") or []:
                    try:
                        sid = chunk[int(resp.get("id"))]
                    except (TypeError, ValueError, IndexError):
                        continue
                    answered.add(sid)
                    status = int(resp.get("status") or 0)
                    rbody = resp.get("body") if isinstance(resp.get("body"), dict) else {}
                    if status == 200:
                        rows = [A.clean_assignment(a) for a in rbody.get("value") or [] if isinstance(a, dict)]
                        nxt = rbody.get("@odata.nextLink")
                        if isinstance(nxt, str):
                            async for page in Pager(self.client, nxt, area="app_role_assignments"):
                                rows.extend(A.clean_assignment(a) for a in page)
                        out[sid] = rows
                    elif status == 404:
                        out[sid] = []  # deleted meanwhile
                    elif status == 403:
                        err = rbody.get("error") if isinstance(rbody.get("error"), dict) else {}
                        raise PermissionDenied("Graph refused appRoleAssignedTo", status=403, graph_code=err.get("code"))
                    elif status in (429, 503, 504, 424):
                        if status == 429:
                            self.client.stats.throttled += 1
                        headers = resp.get("headers") if isinstance(resp.get("headers"), dict) else {}
                        ra = next((v for k, v in headers.items() if k.lower() == "retry-after"), None)
                        w = parse_retry_after(str(ra)) if ra is not None else None
                        if w is not None:
                            waits.append(w)
                        retry.append(sid)
                    else:
                        err = rbody.get("error") if isinstance(rbody.get("error"), dict) else {}
                        raise GraphError(f"Graph answered HTTP {status} ({err.get('code')}) for appRoleAssignedTo of {sid} in $batch",
                                         status=status, graph_code=err.get("code"))
                retry.extend(sid for sid in chunk if sid not in answered)

            async with anyio.create_task_group() as tg:
                for chunk in chunks:
                    tg.start_soon(one, chunk)
            self._tick("app_role_assignments", len(out))
            pending = retry
            if pending:
                attempt += 1
                await self.client.back_off(attempt, max(waits) if waits else None, f"{len(pending)} $batch items throttled",
                                           throttled=bool(waits))
        return out


def make_client(tenant: TenantSettings, *, transport: httpx.AsyncBaseTransport | None = None, **kwargs: Any) -> GraphClient:
    return GraphClient(tenant.graph_host, TokenProvider(tenant), ca_bundle=str(tenant.ca_bundle) if tenant.ca_bundle else None,
                       transport=transport, **kwargs)


async def sync_tenant(
    tenant: TenantSettings,
    store: MirrorStore,
    *,
    full: bool = False,
    progress: ProgressFn | None = None,
    client: GraphClient | None = None,
    wait_seconds: float = 0.0,
) -> TenantResult:
    """One sync run of one tenant. Never raises for Graph or credential problems: they are in the result (and in
    each area's status); a ConfigError (e.g. the secret's variable is unset) does propagate."""
    started = time.monotonic()
    result = TenantResult(tenant.name)
    own_client = client is None
    gc = client or make_client(tenant)
    try:
        # the writer lock may be waited for, and opening sweeps leftovers: both off the event loop
        lock = store.writer(tenant.name, wait_seconds=wait_seconds)
        writer = await anyio.to_thread.run_sync(lock.__enter__)
        try:
            if writer.rebuilt:
                full = True
            run = TenantSync(tenant, writer, gc, full=full, progress=progress)
            try:
                await gc.ensure_token()  # fail fast (and once) on a refused credential
                result.areas = await run.run()
                writer.record_run({"at": _now(), "seconds": round(time.monotonic() - started, 3), "full": full,
                                   "ok": all(r.outcome != "failed" for r in result.areas.values()),
                                   **gc.stats.as_dict(), "byArea": dict(gc.stats.by_area)})
            except AuthError as exc:
                result.error = str(exc)
                result.areas = dict(run.results)
                now = _now()
                for area in AREAS:
                    prev = writer.status(area)
                    if prev.enabled and run.results.get(area) is None:
                        try:
                            writer.set_status(area, replace(prev, last_error=str(exc), last_error_at=now))
                        except MirrorError:
                            break
        finally:
            with anyio.CancelScope(shield=True):  # release the lock even when the run is cancelled (server stop)
                await anyio.to_thread.run_sync(lock.__exit__, None, None, None)
    except MirrorError as exc:
        result.error = str(exc)
    finally:
        if own_client:
            await gc.aclose()
    result.stats = gc.stats.as_dict()
    result.seconds = time.monotonic() - started
    return result


__all__ = ["AreaResult", "TenantResult", "TenantSync", "disabled_reason", "make_client", "sync_tenant"]
