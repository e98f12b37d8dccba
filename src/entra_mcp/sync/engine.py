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

import time
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from typing import Any, Callable

import anyio

from entra_mcp.config import TenantSettings
from entra_mcp.errors import AuthError, DeltaTokenExpired, EntraMcpError, GraphError, MirrorError, PermissionDenied
from entra_mcp.graph.batch import batch_get
from entra_mcp.graph.client import GraphClient
from entra_mcp.graph.paging import Pager
from entra_mcp.graph.tenant import make_client
from entra_mcp.logs import get_logger
from entra_mcp.mirror.snapshot import AREAS, AreaStatus
from entra_mcp.mirror.store import MirrorStore, MirrorWriter
from entra_mcp import areas as A
from entra_mcp.areas import Area, AreaResult, RunChanges
from entra_mcp.sync import sign_ins

log = get_logger("sync")

# custom runs that need more than entra_mcp/areas.py may import (Graph paging, a mirror of their own): Area.sync_run
SYNC_RUNS: dict[str, A.RunFn] = {"sign_in_events": sign_ins.run_in_sync}

ProgressFn = Callable[[str, str, int], None]  # (tenant name, area, objects seen so far in this run)


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


class TenantSync:
    """One tenant's run: every area of entra_mcp/areas.py REGISTRY at once, each as its definition says. It is the
    `AreaRun` a custom area's run function works with."""

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
        self._done = {a: anyio.Event() for a in AREAS}
        self._changes: dict[str, RunChanges] = {}
        self.auth_error: AuthError | None = None
        self.denied: dict[str, PermissionDenied] = {}

    # ---- what an area's run function may use (entra_mcp/areas.py AreaRun) ----
    async def commit(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return await anyio.to_thread.run_sync(lambda: fn(*args, **kwargs))

    def changes(self, area: str) -> RunChanges | None:
        return self._changes.get(area)

    async def read_all(self, area: str, coll: str) -> dict[str, Any]:
        return await anyio.to_thread.run_sync(self.writer.read_all, area, coll)

    def ok_status(self, prev: AreaStatus, count: int, mode: str) -> AreaStatus:
        return AreaStatus(enabled=True, disabled_reason=None, last_success=self.now(), last_error=prev.last_error,
                          last_error_at=prev.last_error_at, object_count=count, mode=mode)

    def tick(self, area: str, n: int) -> None:
        if self.progress is not None:
            self.progress(self.tenant.name, area, n)

    def _enabled_in_config(self, area: Area) -> bool:
        return bool(getattr(self.tenant.sync, area.switch))

    async def run(self) -> dict[str, AreaResult]:
        self.writer.set_tenant(tenant_id=self.tenant.tenant_id, interval_minutes=self.tenant.sync.interval_minutes)
        async with anyio.create_task_group() as tg:
            for area in A.REGISTRY:
                tg.start_soon(self._area, area)
        if self.auth_error is not None:
            raise self.auth_error
        return {a: self.results[a] for a in AREAS}

    async def _area(self, area: Area) -> None:
        name = area.name
        started = time.monotonic()
        before = self.client.stats.by_area.get(name, 0)
        prev = self.writer.status(name)
        try:
            if not self._enabled_in_config(area) and not area.always_run:
                result = await self._turned_off(name, prev)
            else:
                for dep in area.depends_on:
                    await self._done[dep].wait()
                if area.refresh == "custom":
                    run = SYNC_RUNS[name] if area.sync_run else area.run
                    assert run is not None
                    result = await run(self, area, prev)
                elif area.refresh == "full":
                    result = await self._full_list(area, prev)
                else:
                    result = await self._delta_area(area, prev)
        except PermissionDenied as exc:
            self.denied[name] = exc
            reason = area.disabled_reason(exc)
            log.warning("tenant %s: %s disabled: %s", self.tenant.name, name, reason)
            status = AreaStatus(enabled=False, disabled_reason=reason, last_success=prev.last_success,
                                last_error=reason, last_error_at=self.now(), object_count=None, mode=None)
            await self.commit(self.writer.clear_area, name, status)
            result = AreaResult(name, "disabled", message=reason)
        except AuthError as exc:
            self.auth_error = self.auth_error or exc
            result = AreaResult(name, "failed", message=str(exc))
        except (GraphError, EntraMcpError) as exc:
            message = str(exc)
            log.error("tenant %s: %s failed: %s", self.tenant.name, name, message)
            if not isinstance(exc, MirrorError):
                try:
                    await self.commit(self.writer.set_status, name, replace(prev, last_error=message, last_error_at=self.now()))
                except MirrorError as exc2:
                    log.error("tenant %s: %s", self.tenant.name, exc2)
            result = AreaResult(name, "failed", message=message)
        finally:
            self._done[name].set()
        result.requests = self.client.stats.by_area.get(name, 0) - before
        result.seconds = time.monotonic() - started
        self.results[name] = result

    async def _turned_off(self, area: str, prev: AreaStatus) -> AreaResult:
        reason = "turned off in config"
        if prev.enabled or prev.disabled_reason != reason or self.writer.has_data(area):
            await self.commit(self.writer.clear_area, area, AreaStatus(enabled=False, disabled_reason=reason))
        return AreaResult(area, "off", message=reason)

    # ---- refresh="delta": delta queries ----
    async def _delta_area(self, area: Area, prev: AreaStatus) -> AreaResult:
        name = area.name
        link = None if self.full or not prev.enabled or not self.writer.has_data(name) else self.writer.delta_link(name)
        if link is not None:
            try:
                return await self._delta_round(area, prev, link)
            except DeltaTokenExpired as exc:
                log.warning("tenant %s: %s: %s", self.tenant.name, name, exc)
                result = await self._delta_round(area, prev, None)
                result.message = f"delta link expired ({exc.graph_code or exc.status}): full resync"
                return result
        return await self._delta_round(area, prev, None)

    async def _delta_round(self, area: Area, prev: AreaStatus, link: str | None) -> AreaResult:
        name, path, apply = area.name, area.path, area.apply
        assert apply is not None
        full = link is None
        target: Any = A.FullBuild() if full else self.writer.begin(name)
        counter = A.Counter()
        params = {**({"$select": area.select} if area.select else {}), **area.params}
        pager = Pager(self.client, path if full else link, params=(params or None) if full else None, area=name)  # type: ignore[arg-type]
        seen = 0
        async for page in pager:
            apply(target, page, counter)
            seen += len(page)
            self.tick(name, seen)
        if not pager.delta_link:
            raise GraphError(f"Graph ended the {path} round without an @odata.deltaLink; the delta link is kept as it was")
        meta = self.writer.meta(name)
        if full:
            count = len(target.data.get(area.counted, {}))
            if area.meta_on_full is not None:
                meta.update(area.meta_on_full(target.data))
            await self.commit(self.writer.commit_full, name, target.data, delta_link=pager.delta_link,
                               status=self.ok_status(prev, count, "full"), meta=meta)
            outcome = "full"
        else:
            count = max(0, (prev.object_count or 0) + counter.added - counter.removed)
            await self.commit(self.writer.commit_delta, target, delta_link=pager.delta_link,
                               status=self.ok_status(prev, count, "delta"), meta=meta)
            outcome = "delta"
        self._changes[name] = RunChanges(full=full, ids=frozenset(counter.changed_ids | counter.removed_ids))
        log.info("tenant %s: %s %s: %d objects, %d changes, %d pages", self.tenant.name, name, outcome, count, counter.changed, pager.pages)
        return AreaResult(name, outcome, objects=count, changes=counter.changed)

    # ---- refresh="full": a whole list, at most every full_every_minutes ----
    async def _full_list(self, area: Area, prev: AreaStatus) -> AreaResult:
        name, apply = area.name, area.apply
        assert apply is not None
        every = area.full_every_minutes
        fresh = prev.fresh(every, self.now())
        if not self.full and prev.enabled and fresh and self.writer.has_data(name):
            return AreaResult(name, "unchanged", objects=prev.object_count, message=f"refreshed at most every {every:.0f} minutes")
        target = A.FullBuild()
        counter = A.Counter()
        params = {**({"$select": area.select} if area.select else {}), **area.params}
        pager = Pager(self.client, area.path, params=params or None, area=name)
        async for page in pager:
            apply(target, page, counter)
            self.tick(name, pager.items)
        count = len(target.data.get(area.counted, {}))
        meta = None
        if area.meta_on_full is not None:
            meta = {**self.writer.meta(name), **area.meta_on_full(target.data)}
        await self.commit(self.writer.commit_full, name, target.data, delta_link=None,
                           status=self.ok_status(prev, count, "full"), meta=meta)
        self._changes[name] = RunChanges(full=True, ids=frozenset(counter.changed_ids))
        return AreaResult(name, "full", objects=count, changes=count)

    async def batch_get(self, urls: list[str], *, area: str) -> dict[str, list[dict[str, Any]] | None]:
        return await batch_get(self.client, urls, area=area, progress=lambda n: self.tick(area, n))

    def pager(self, path_or_link: str, *, params: dict[str, str] | None = None, area: str) -> Pager:
        return Pager(self.client, path_or_link, params=params, area=area)


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


__all__ = ["TenantResult", "TenantSync", "sync_tenant"]
