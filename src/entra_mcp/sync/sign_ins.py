"""The `sign_in_events` area: GET /auditLogs/signIns -> a bounded window of sign-in evidence in the mirror.

Facts it relies on (docs/graph-facts-sign-ins.md): newest first, 1,000 a page, no delta query; events are listed up
to ~5 minutes (P99) after they happened, so a poll reads from `watermark - OVERLAP` and de-duplicates by id; the
reporting API allows 5 requests per 10 s per app and tenant, so the first pull reads FAILURES for the whole window
(`status/errorCode ne 0`, ~5 % of the traffic) and every event only from the last SUCCESS_BACKFILL_HOURS; later polls
read everything since the watermark.

What is kept (the answers' needs, bounded):
  sign_in_failures   hour ("2026-12-01T10") -> [failure record]: every failed sign-in of the window, compacted to
                     the fields the answers read (`compact_failure`). Keyed by hour so a poll rewrites one or two
                     buckets and expiry drops whole hours.
  sign_in_successes  user id -> [{appId, appDisplayName, createdDateTime, ipAddress, clientAppUsed, city,
                     countryOrRegion}]: the LAST success per user and app (older successes add nothing an answer uses).
  sign_in_recent     "p00000001", "p00000002"... -> [{userId, appId, ...}]: lists of the last success per user and
                     app that the polls read, in the order they were first seen. A poll adds what is new (not what its
                     overlap reads again) to the last list, or starts a new one once that holds LIST_ROWS: it rewrites
                     one small list, where merging into the by-user buckets would rewrite nearly all of them (a large
                     tenant's poll reads successes of ~14,000 users) and make a server re-read all of them. Once
                     FOLD_AFTER lists are held the older ones are folded into sign_in_successes (on a large tenant
                     about once a day). The last successes are sign_in_successes with the lists merged in, in order
                     (`merge_success`), which is what a reader does too (identity/sign_ins.py).
Both are stored in a mirror of their own (`MirrorStore.sign_in_store()`), so a 5-minute poll never invalidates the
directory's index and never waits for a long directory sync.

The functions here are pure (records in, records out); `pull` is the only I/O and takes a GraphClient.
"""

from __future__ import annotations

import sys
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from typing import Any, AsyncIterator, Iterable

import anyio

from entra_mcp.areas import AREA as AREAS_BY_NAME
from entra_mcp.areas import AreaResult, AreaRun, AreaStatus
from entra_mcp.errors import EntraMcpError, MirrorError, PermissionDenied
from entra_mcp.graph.client import GraphClient
from entra_mcp.graph.paging import Pager
from entra_mcp.graph.tenant import make_client
from entra_mcp.last_success import is_later
from entra_mcp.logs import get_logger
from entra_mcp.mirror.table import pack_groups, unpack

log = get_logger("sync.sign_ins")

AREA = "sign_in_events"
AREA_DEF = AREAS_BY_NAME[AREA]
PATH = "/auditLogs/signIns"
PAGE_SIZE = "1000"  # Graph's maximum and default
OVERLAP = timedelta(minutes=15)  # three times Microsoft's P99 ingestion latency (5 minutes)
SUCCESS_BACKFILL_HOURS = 24  # first pull: successes of the last day only (the reporting throttle; see module doc)
FAILURES = "sign_in_failures"
SUCCESSES = "sign_in_successes"
RECENT = "sign_in_recent"
LIST_ROWS = 16_384  # successes in one list of RECENT before the next poll starts a new one
OVERLAP_LISTS = 3  # the last lists a poll checks for the successes its overlap reads again
FOLD_AFTER = 48  # lists of RECENT held apart (besides the last) before they are folded into SUCCESSES

FAILURE_FIELDS = (
    "id", "createdDateTime", "userId", "userPrincipalName", "userDisplayName", "appId", "appDisplayName", "errorCode",
    "failureReason", "additionalDetails", "clientAppUsed", "ipAddress", "city", "countryOrRegion",
    "conditionalAccessStatus", "failedPolicies", "grantControls", "deviceCompliant", "deviceManaged", "operatingSystem",
    "riskState",
)
SUCCESS_FIELDS = ("appId", "appDisplayName", "createdDateTime", "ipAddress", "clientAppUsed", "city", "countryOrRegion")


def iso(dt: datetime) -> str:
    return dt.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_iso(text: Any) -> datetime | None:
    """Graph's signIn times ("2026-12-01T10:00:00.1234567Z", or without a fraction) as aware UTC; None when bad."""
    if not isinstance(text, str) or len(text) < 19:
        return None
    try:
        return datetime(int(text[0:4]), int(text[5:7]), int(text[8:10]), int(text[11:13]), int(text[14:16]),
                        int(text[17:19]), tzinfo=timezone.utc)
    except ValueError:
        return None


def hour_key(created: str) -> str:
    return created[:13]


def _s(v: Any) -> str | None:
    return sys.intern(v) if isinstance(v, str) and len(v) <= 200 else (v[:2000] if isinstance(v, str) else None)


def _obj(parent: dict[str, Any], key: str) -> dict[str, Any]:
    """A nested JSON object of a Graph answer, {} when absent or not an object (directory data is untrusted)."""
    value = parent.get(key)
    return value if isinstance(value, dict) else {}


def compact_failure(e: dict[str, Any]) -> dict[str, Any] | None:
    """A failed signIn reduced to what the answers read; None when it is not a usable failure."""
    status = _obj(e, "status")
    code = status.get("errorCode")
    when = parse_iso(e.get("createdDateTime"))
    if not isinstance(code, int) or isinstance(code, bool) or code == 0 or when is None or not e.get("id"):
        return None
    loc = _obj(e, "location")
    dev = _obj(e, "deviceDetail")
    policies = [p for p in e.get("appliedConditionalAccessPolicies") or [] if isinstance(p, dict)]
    failed = [p for p in policies if p.get("result") == "failure"]
    return {
        "id": str(e["id"]), "createdDateTime": iso(when), "userId": _s(e.get("userId")),
        "userPrincipalName": _s(e.get("userPrincipalName")), "userDisplayName": _s(e.get("userDisplayName")),
        "appId": _s(e.get("appId")), "appDisplayName": _s(e.get("appDisplayName")), "errorCode": code,
        "failureReason": _s(status.get("failureReason")), "additionalDetails": _s(status.get("additionalDetails")),
        "clientAppUsed": _s(e.get("clientAppUsed")), "ipAddress": _s(e.get("ipAddress")), "city": _s(loc.get("city")),
        "countryOrRegion": _s(loc.get("countryOrRegion")), "conditionalAccessStatus": _s(e.get("conditionalAccessStatus")),
        "failedPolicies": [_s(p.get("displayName")) for p in failed if isinstance(p.get("displayName"), str)],
        "grantControls": sorted({_s(g) for p in failed for g in p.get("enforcedGrantControls") or [] if isinstance(g, str)}),
        "deviceCompliant": dev.get("isCompliant") if isinstance(dev.get("isCompliant"), bool) else None,
        "deviceManaged": dev.get("isManaged") if isinstance(dev.get("isManaged"), bool) else None,
        "operatingSystem": _s(dev.get("operatingSystem")), "riskState": _s(e.get("riskState")),
    }


def compact_success(e: dict[str, Any]) -> tuple[str, dict[str, Any]] | None:
    """(user id, record) of a successful signIn; None when it is not one."""
    status = _obj(e, "status")
    when = parse_iso(e.get("createdDateTime"))
    if status.get("errorCode") != 0 or when is None or not e.get("userId") or not e.get("appId"):
        return None
    loc = _obj(e, "location")
    return str(e["userId"]), {
        "appId": _s(e.get("appId")), "appDisplayName": _s(e.get("appDisplayName")), "createdDateTime": iso(when),
        "ipAddress": _s(e.get("ipAddress")), "clientAppUsed": _s(e.get("clientAppUsed")), "city": _s(loc.get("city")),
        "countryOrRegion": _s(loc.get("countryOrRegion")),
    }


def _pack_hour(hour: str, rows: list[dict[str, Any]]) -> tuple[Any, ...]:
    """An hour's failures, oldest first, in the mirror's stored column form (mirror/table.py pack_groups): what the
    first pull holds of each hour it has read to the end, a small fraction of the records' memory."""
    rows.sort(key=lambda r: (r["createdDateTime"], r["id"]))
    return pack_groups({hour: rows})


def _hour_rows(packed: tuple[Any, ...]) -> list[dict[str, Any]]:
    """The records of an hour packed by _pack_hour."""
    return next(iter(unpack(packed).values()), [])


def _success_rows(rows: list[tuple[Any, ...]]) -> list[dict[str, Any]]:
    return [dict(zip(SUCCESS_FIELDS, t)) for t in rows]


def _merge_packed_success(current: list[tuple[Any, ...]] | None, new: dict[str, Any]) -> list[tuple[Any, ...]]:
    """merge_success on SUCCESS_FIELDS tuples, in place (the first pull's form)."""
    rows = current if current is not None else []
    for i, r in enumerate(rows):
        if r[0] == new["appId"]:
            if is_later(new["createdDateTime"], r[2]):
                rows[i] = tuple(map(new.__getitem__, SUCCESS_FIELDS))
            return rows
    rows.append(tuple(map(new.__getitem__, SUCCESS_FIELDS)))
    return rows


def merge_success(current: list[dict[str, Any]] | None, new: dict[str, Any]) -> tuple[list[dict[str, Any]], bool]:
    """A user's last-success list with `new` folded in (the latest per app, last_success.is_later); (list, changed)."""
    rows = [dict(r) for r in current or []]
    for i, r in enumerate(rows):
        if r.get("appId") == new["appId"]:
            if not is_later(new["createdDateTime"], r.get("createdDateTime")):
                return rows, False
            rows[i] = new
            return rows, True
    rows.append(new)
    return rows, True


def merge_recent(current: list[dict[str, Any]] | None, new: dict[str, list[dict[str, Any]]]) -> tuple[list[dict[str, Any]], bool]:
    """An hour's list of last successes ({userId, ...} rows) with `new` (user id -> rows, the latest per app) folded in
    like merge_success does per user: (list, changed)."""
    rows = [dict(r) for r in current or []]
    at = {(r.get("userId"), r.get("appId")): i for i, r in enumerate(rows)}
    changed = False
    for uid, got in new.items():
        for row in got:
            i = at.get((uid, row["appId"]))
            if i is None:
                at[(uid, row["appId"])] = len(rows)
                rows.append({"userId": uid, **row})
                changed = True
            elif is_later(row["createdDateTime"], rows[i].get("createdDateTime")):
                rows[i] = {"userId": uid, **row}
                changed = True
    return rows, changed


def _not_listed(change: Any, listed: list[str], new: dict[str, list[dict[str, Any]]]) -> dict[str, list[dict[str, Any]]]:
    """`new` less the successes the last lists already hold as late or later (a poll reads the overlap again): a
    success dropped here could not change what merging it would give."""
    known: dict[tuple[Any, Any], Any] = {}
    for key in listed[-OVERLAP_LISTS:]:
        for r in change.get(RECENT, key) or []:
            k, t = (r.get("userId"), r.get("appId")), r.get("createdDateTime")
            if is_later(t, known.get(k)):
                known[k] = t
    out: dict[str, list[dict[str, Any]]] = {}
    for uid, rows in new.items():
        keep = [r for r in rows if is_later(r["createdDateTime"], known.get((uid, r["appId"])))]
        if keep:
            out[uid] = keep
    return out


def fold_recent(by_user: dict[str, list[dict[str, Any]] | None], rows: Iterable[dict[str, Any]]) -> set[str]:
    """Merge an hour's list of last successes into `by_user` (user id -> stored list, loaded as needed by the caller:
    missing users are None); returns the users whose list changed."""
    changed: set[str] = set()
    for r in rows:
        uid = r.get("userId")
        if not isinstance(uid, str):
            continue
        merged, c = merge_success(by_user.get(uid), {k: v for k, v in r.items() if k != "userId"})
        if c:
            by_user[uid] = merged
            changed.add(uid)
    return changed


def merge_failures(current: list[dict[str, Any]] | None, new: Iterable[dict[str, Any]]) -> tuple[list[dict[str, Any]], int]:
    """An hour's failures with `new` added once each (by id), oldest first; (list, how many were new)."""
    rows = [dict(r) for r in current or []]
    seen = {r.get("id") for r in rows}
    added = 0
    for r in new:
        if r["id"] not in seen:
            seen.add(r["id"])
            rows.append(r)
            added += 1
    if added:
        rows.sort(key=lambda r: (str(r.get("createdDateTime")), str(r.get("id"))))
    return rows, added


def expired_hours(hours: Iterable[str], window_start: datetime) -> list[str]:
    """Hour keys entirely before the window."""
    first = iso(window_start)[:13]
    return sorted(h for h in hours if h < first)


def query(since: datetime, *, failures_only: bool = False, successes_only: bool = False) -> dict[str, str]:
    flt = f"createdDateTime ge {iso(since)}"
    if failures_only:
        flt += " and status/errorCode ne 0"
    elif successes_only:
        flt += " and status/errorCode eq 0"
    return {"$filter": flt, "$top": PAGE_SIZE}


async def pull(client: GraphClient, params: dict[str, str]) -> AsyncIterator[list[dict[str, Any]]]:
    """The pages of one listing (GraphClient honours 429 Retry-After and retries transient failures)."""
    async for page in Pager(client, PATH, params=params, area=AREA):
        yield page


__all__ = [
    "AREA", "FAILURES", "FOLD_AFTER", "LIST_ROWS", "OVERLAP", "RECENT", "SUCCESSES", "SUCCESS_BACKFILL_HOURS", "compact_failure", "compact_success",
    "expired_hours", "run_area", "run_in_sync", "hour_key", "fold_recent", "merge_failures", "merge_recent", "merge_success", "parse_iso", "pull", "query",
]


# ---------------------------------------------------------------------------------------------------------- the run
async def run_area(
    tenant: Any,
    store: Any,
    client: GraphClient,
    *,
    full: bool = False,
    now: datetime | None = None,
    wait_seconds: float = 30.0,
) -> dict[str, Any]:
    """One poll of the `sign_in_events` area of `tenant` into `store.sign_in_store()`.

    Returns {"outcome": full|delta|off, "objects": failures kept, "changes": new events, "message", "status"}.
    A 403 (permission or licence) clears the area with the reason and re-raises PermissionDenied; throttling and
    transient failures are retried by the GraphClient; any other error leaves the last committed state."""
    now = now or datetime.now(timezone.utc)
    events = store.sign_in_store()
    settings = tenant.sync
    if not settings.sign_in_events and not (events.tenant_dir(tenant.name) / "cache.db").exists():
        reason = "turned off in config"  # never enabled: nothing to clear, no mirror to create
        return {"outcome": "off", "objects": None, "changes": 0, "message": reason,
                "status": AreaStatus(enabled=False, disabled_reason=reason)}
    lock = events.writer(tenant.name, wait_seconds=wait_seconds)
    try:
        writer = await anyio.to_thread.run_sync(lock.__enter__)
    except MirrorError as exc:
        if "is running" not in str(exc):
            raise
        # another poll of the same tenant (serve's own loop, or `entra-mcp sync`) holds the sign-in mirror: it does
        # this run's work; nothing here failed
        return {"outcome": "skipped", "objects": None, "changes": 0, "status": None,
                "message": "another poll of the sign-in events is running; this run left them to it"}
    try:
        prev = writer.status(AREA)

        async def commit(fn: Any, *args: Any, **kwargs: Any) -> Any:
            return await anyio.to_thread.run_sync(lambda: fn(*args, **kwargs))

        if not settings.sign_in_events:
            reason = "turned off in config"
            if prev.enabled or prev.disabled_reason != reason or writer.has_data(AREA):
                await commit(writer.clear_area, AREA, AreaStatus(enabled=False, disabled_reason=reason))
            return {"outcome": "off", "objects": None, "changes": 0, "message": reason,
                    "status": AreaStatus(enabled=False, disabled_reason=reason)}
        days = int(settings.sign_in_events_days)
        window_start = now - timedelta(days=days)
        meta = writer.meta(AREA)
        first = full or not prev.enabled or not writer.has_data(AREA) or meta.get("days") != days or not meta.get("watermark")
        seen_max: str | None = None
        try:
            if first:
                # held packed (hours in column form, successes as tuples) until the commit, which writes them one
                # bucket at a time: a large tenant's window is ~460,000 failures and ~650,000 last successes
                # failures come newest first: once a page holds an older hour, the hours after it are complete and
                # are packed in the mirror's column form; an event of a packed hour (out of order) reopens it
                by_hour: dict[str, tuple[Any, ...]] = {}
                reading: dict[str, list[dict[str, Any]]] = {}
                ids: set[str] = set()
                async for page in pull(client, query(window_start, failures_only=True)):
                    for e in page:
                        r = compact_failure(e)
                        if r is not None and r["id"] not in ids:
                            ids.add(r["id"])
                            h = hour_key(r["createdDateTime"])
                            if h in by_hour:
                                reading[h] = _hour_rows(by_hour.pop(h))
                            reading.setdefault(h, []).append(r)
                            seen_max = max(seen_max or "", r["createdDateTime"])
                    del page
                    for h in sorted(reading)[1:]:
                        by_hour[h] = _pack_hour(h, reading.pop(h))
                for h in list(reading):
                    by_hour[h] = _pack_hour(h, reading.pop(h))
                by_user: dict[str, list[tuple[Any, ...]]] = {}
                async for page in pull(client, query(max(window_start, now - timedelta(hours=SUCCESS_BACKFILL_HOURS)), successes_only=True)):
                    for e in page:
                        s = compact_success(e)
                        if s is not None:
                            by_user[s[0]] = _merge_packed_success(by_user.get(s[0]), s[1])
                            seen_max = max(seen_max or "", s[1]["createdDateTime"])
                    del page
                count = len(ids)
                meta = {"days": days, "watermark": seen_max or iso(now), "hours": sorted(by_hour), "failures": count,
                        "successes_from": iso(max(window_start, now - timedelta(hours=SUCCESS_BACKFILL_HOURS))),
                        "window_start": iso(window_start)}
                status = AreaStatus(enabled=True, last_success=now, last_error=prev.last_error,
                                    last_error_at=prev.last_error_at, object_count=count, mode="full")
                await commit(writer.commit_full, AREA, {FAILURES: by_hour, SUCCESSES: by_user, RECENT: {}}, delta_link=None,
                             status=status, meta=meta, expand={FAILURES: _hour_rows, SUCCESSES: _success_rows})
                return {"outcome": "full", "objects": count, "changes": count + sum(map(len, by_user.values())),
                        "message": f"window of {days} days: failures in full, successes since {meta['successes_from']}",
                        "status": status}
            since = max(parse_iso(meta["watermark"]) or window_start, window_start + OVERLAP) - OVERLAP
            new_fail: dict[str, list[dict[str, Any]]] = {}
            new_succ: dict[str, list[dict[str, Any]]] = {}
            async for page in pull(client, query(since)):
                for e in page:
                    r = compact_failure(e)
                    if r is not None:
                        new_fail.setdefault(hour_key(r["createdDateTime"]), []).append(r)
                        seen_max = max(seen_max or "", r["createdDateTime"])
                        continue
                    s = compact_success(e)
                    if s is not None:
                        new_succ[s[0]], _ = merge_success(new_succ.get(s[0]), s[1])
                        seen_max = max(seen_max or "", s[1]["createdDateTime"])
            change = writer.begin(AREA)
            hours = set(meta.get("hours") or [])
            recent = set(meta.get("recent") or [])
            added = 0

            def apply() -> int:
                n = 0
                for h, rows in new_fail.items():
                    if h < iso(window_start)[:13]:
                        continue
                    merged, k = merge_failures(change.get(FAILURES, h), rows)
                    if k:
                        change.put(FAILURES, h, merged)
                        hours.add(h)
                        n += k
                fresh = _not_listed(change, sorted(recent), new_succ)
                if fresh:
                    # the last list only (see the module doc), or a new one after it once it is full: the lists' order
                    # is the order the polls read them in
                    listed = sorted(recent)
                    last = listed[-1] if listed else None
                    current = change.get(RECENT, last) if last is not None else None
                    if last is None or len(current or []) >= LIST_ROWS:
                        last = f"p{int(last[1:]) + 1 if last and last.startswith('p') else 1:08d}"
                        current = None
                    merged_recent, c = merge_recent(current, fresh)
                    if c:
                        change.put(RECENT, last, merged_recent)
                        recent.add(last)
                older = sorted(recent)[:-1]
                if len(older) >= FOLD_AFTER:
                    users: dict[str, list[dict[str, Any]] | None] = {}
                    for seg in older:
                        rows = change.get(RECENT, seg) or []
                        for uid in {str(r["userId"]) for r in rows if isinstance(r.get("userId"), str)} - users.keys():
                            users[uid] = change.get(SUCCESSES, uid)
                        for uid in fold_recent(users, rows):
                            change.put(SUCCESSES, uid, users[uid])
                        change.delete(RECENT, seg)
                        recent.discard(seg)
                for h in expired_hours(hours, window_start):
                    old = change.get(FAILURES, h)
                    meta["failures"] = int(meta.get("failures", 0)) - len(old or [])
                    change.delete(FAILURES, h)
                    hours.discard(h)
                return n

            added = await anyio.to_thread.run_sync(apply)
            meta["failures"] = max(0, int(meta.get("failures", 0)) + added)
            meta["hours"] = sorted(hours)
            meta["recent"] = sorted(recent)
            meta["watermark"] = max(meta["watermark"], seen_max or meta["watermark"])
            meta["window_start"] = iso(window_start)
            status = AreaStatus(enabled=True, last_success=now, last_error=prev.last_error, last_error_at=prev.last_error_at,
                                object_count=meta["failures"], mode="delta")
            await commit(writer.commit_delta, change, delta_link=None, status=status, meta=meta)
            return {"outcome": "delta", "objects": meta["failures"], "changes": added,
                    "message": f"read since {iso(since)}: {added} new failures", "status": status}
        except PermissionDenied as exc:
            reason = AREA_DEF.disabled_reason(exc)
            await commit(writer.clear_area, AREA, AreaStatus(enabled=False, disabled_reason=reason,
                                                             last_success=prev.last_success, last_error=reason, last_error_at=now))
            raise
        except EntraMcpError as exc:  # keep the data; remember the error (GraphError, TransientError...)
            if not isinstance(exc, MirrorError):
                try:
                    await commit(writer.set_status, AREA, replace(prev, last_error=str(exc), last_error_at=now))
                except MirrorError:
                    pass
            raise
    finally:
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(lock.__exit__, None, None, None)


async def run_in_sync(run: AreaRun, area: Any, prev: AreaStatus) -> AreaResult:
    """The area inside a sync run (entra_mcp/areas.py `run`): poll into the sign-in mirror with the run's client and
    record the resulting status in the directory mirror too (what `status` and `sync_status` list). A 403 propagates
    so the engine records the area as disabled with the reason."""
    tenant, client = getattr(run, "tenant"), getattr(run, "client")  # sync/engine.py TenantSync
    store = getattr(run.writer, "store")  # mirror/store.py MirrorWriter
    polled = await run_area(tenant, store, client, full=run.full, now=run.now(), wait_seconds=5.0)
    status = polled["status"]
    if polled["outcome"] == "skipped":
        return AreaResult(area.name, "skipped", objects=prev.object_count, message=polled["message"])
    if polled["outcome"] == "off":
        if prev.enabled or prev.disabled_reason != status.disabled_reason or run.writer.has_data(area.name):
            await run.commit(getattr(run.writer, "clear_area"), area.name, status)
    elif status != prev:
        await run.commit(getattr(run.writer, "set_status"), area.name, status)
    return AreaResult(area.name, polled["outcome"], objects=polled["objects"], changes=polled["changes"],
                      message=polled["message"])


async def poll(tenant: Any, store: Any, *, client: GraphClient | None = None, wait_seconds: float = 30.0) -> dict[str, Any]:
    """One poll of the sign-in events alone (the serve scheduler's own interval, sign_in_events_interval_minutes).
    Never raises for Graph, credential or mirror problems: {"outcome": "failed", "message": ...} instead.

    Whatever the outcome, the area's status the poll left in the sign-in mirror (success, the error kept with the
    data, or disabled with the reason on a 403) is copied into the directory mirror, where `status`, the sync_status
    tool and /healthz read it: they follow the 5-minute polls, not only the directory sync runs."""
    gc = client or make_client(tenant)
    try:
        result = await run_area(tenant, store, gc, wait_seconds=wait_seconds)
    except EntraMcpError as exc:
        result = {"outcome": "disabled" if isinstance(exc, PermissionDenied) else "failed", "message": str(exc)}
    finally:
        if client is None:
            await gc.aclose()
    if result["outcome"] not in ("skipped", "off"):
        await anyio.to_thread.run_sync(_publish_status, tenant.name, store)
    return result


def _publish_status(tenant_name: str, store: Any) -> None:
    """Copy the sign-in mirror's status of the area into the directory mirror (a status-only commit: the directory's
    index is not rebuilt). A directory sync holding its writer for long is left alone: its own run of the area
    records the status, and the next poll copies it again."""
    try:
        info = store.sign_in_store().info(tenant_name)
        if info is None or store.info(tenant_name) is None:
            return  # nothing polled yet, or no directory mirror yet (its first sync records the area)
        status = info["areas"][AREA]["status"]
        with store.writer(tenant_name, wait_seconds=2.0) as writer:
            if writer.status(AREA) != status:
                writer.set_status(AREA, status)
    except MirrorError as exc:
        log.info("tenant %s: the sign-in events' status waits for the next poll (%s)", tenant_name, exc)
