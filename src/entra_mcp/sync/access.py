"""Graph -> mirror for devices, Conditional Access and owners (docs/graph-facts-access.md has the sources).

  devices             full: GET /devices/delta?$deltatoken=latest (the delta link first, so nothing changed during
                      the pull is lost), then GET /devices?$select=...&$expand=registeredOwners($select=id)&$top=999
                      (devices with their owners in one pass: no request per device);
                      incremental: the delta link; devices new to the mirror get their registeredOwners in $batch.
                      Device.Read.All.
  conditional_access  GET /identity/conditionalAccess/policies and /namedLocations, whole, every run (tens of
                      objects; Graph offers no delta for them). Policy.Read.All and an Entra ID P1 licence.
  owners              groups: GET /groups/delta?$select=displayName,owners, a delta stream of its own (owners@delta,
                      ids only); applications and service principals registered in this tenant: /{id}/owners in
                      $batch, refreshed every APP_OWNERS_REFRESH_MINUTES (Graph tracks no ownership change for
                      them). GroupMember.Read.All (groups) and Application.Read.All (apps).

The `run_*` functions are the areas' custom runs (they page through `run.pager`); the `apply_*` functions change a
mirror target (FullBuild or AreaChange), so a full and a delta run share one code path; applying a page twice is
harmless.
"""

from __future__ import annotations

import sys
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Iterable

from entra_mcp.errors import DeltaTokenExpired, GraphError
from entra_mcp.sync.areas import AreaResult, Counter, FullBuild

if TYPE_CHECKING:
    from entra_mcp.mirror.snapshot import AreaStatus
    from entra_mcp.sync.areas import Area, AreaRun


DEVICE_FIELDS = (
    "id", "accountEnabled", "deviceId", "displayName", "operatingSystem", "operatingSystemVersion", "trustType",
    "isManaged", "isCompliant", "approximateLastSignInDateTime", "registrationDateTime",
)
DEVICE_SELECT = ",".join(DEVICE_FIELDS)
OWNERS_GROUP_SELECT = "displayName,owners"
APP_OWNERS_REFRESH_MINUTES = 60.0

_SHARED = frozenset({"operatingSystem", "operatingSystemVersion", "trustType"})


def clean_device(item: dict[str, Any]) -> dict[str, Any]:
    return {sys.intern(k): (sys.intern(v) if k in _SHARED and isinstance(v, str) else v)
            for k, v in item.items() if k in DEVICE_FIELDS}


def owner_ids(refs: Any) -> list[str]:
    return [str(r["id"]) for r in refs or () if isinstance(r, dict) and r.get("id") and "@removed" not in r]


def apply_devices(target: Any, page: Iterable[dict[str, Any]], counter: Any, *, with_owners: bool = False) -> list[str]:
    """Apply devices (a list page or a delta page); returns the ids of devices new to the mirror (their owners are to
    be fetched when the page did not carry them)."""
    new: list[str] = []
    for item in page:
        if not isinstance(item, dict) or not item.get("id"):
            continue
        did = str(item["id"])
        old = target.get("devices", did)
        if "@removed" in item:
            if old is not None:
                target.delete("devices", did)
                counter.removed += 1
            counter.changed += 1
            continue
        dev = {**(old or {}), **clean_device(item)}
        if with_owners:
            dev["registeredOwners"] = owner_ids(item.get("registeredOwners"))
        elif old is None:
            dev["registeredOwners"] = []
            new.append(did)
        if old is None:
            counter.added += 1
        counter.changed += 1
        target.put("devices", did, dev)
    return new


def apply_group_owners(target: Any, page: Iterable[dict[str, Any]], counter: Any) -> None:
    """owners@delta of a groups/delta?$select=displayName,owners page: merged by group id (a group may come again)."""
    for item in page:
        if not isinstance(item, dict) or not item.get("id"):
            continue
        gid = str(item["id"])
        old = target.get("owners", gid)
        if "@removed" in item:
            if old is not None:
                target.delete("owners", gid)
                counter.removed += 1
            continue
        refs = item.get("owners@delta")
        if not isinstance(refs, list):
            continue
        owners = {str(o["id"]): o for o in (old or ())}
        for r in refs:
            if not isinstance(r, dict) or not r.get("id"):
                continue
            if "@removed" in r:
                owners.pop(str(r["id"]), None)
            else:
                owners[str(r["id"])] = {"id": str(r["id"]), "type": _kind(r.get("@odata.type"))}
        if owners:
            if old is None:
                counter.added += 1
            target.put("owners", gid, list(owners.values()))
        elif old is not None:
            target.delete("owners", gid)
            counter.removed += 1
        counter.changed += 1


def _kind(odata_type: Any) -> str:
    tail = str(odata_type or "").rsplit(".", 1)[-1]
    return tail or "directoryObject"


def owned_here(applications: dict[str, Any], service_principals: dict[str, Any]) -> dict[str, str]:
    """The apps whose owners matter: every app registration here, and the service principals of those apps (same
    appId); Microsoft's and other organisations' apps have no owners in this tenant."""
    out = {str(a): "applications" for a in applications}
    own = {str(a.get("appId")) for a in applications.values() if a.get("appId")}
    for sid, sp in service_principals.items():
        if str(sp.get("appId")) in own:
            out[str(sid)] = "servicePrincipals"
    return out


# ------------------------------------------------------------------------------------------- the area runs

async def run_devices(run: "AreaRun", area: "Area", prev: "AreaStatus") -> AreaResult:
    """devices: a full pull (delta link first, then the list with owners) or a delta round from the saved link."""
    name = area.name
    link = None if run.full or not prev.enabled or not run.writer.has_data(name) else run.writer.delta_link(name)
    if link is not None:
        try:
            return await _devices_delta(run, area, prev, link)
        except DeltaTokenExpired as exc:
            result = await _devices_full(run, area, prev)
            result.message = f"delta link expired ({exc.graph_code or exc.status}): full resync"
            return result
    return await _devices_full(run, area, prev)


async def _devices_full(run: "AreaRun", area: "Area", prev: "AreaStatus") -> AreaResult:
    name = area.name
    latest = run.pager("/devices/delta", params={"$select": DEVICE_SELECT, "$deltatoken": "latest"}, area=name)
    async for _ in latest:
        pass  # no data: only a delta link from now on
    link = latest.delta_link
    if not link:
        raise GraphError("Graph answered devices/delta?$deltatoken=latest without an @odata.deltaLink")
    target, counter = FullBuild(), Counter()
    pager = run.pager("/devices", params={"$select": DEVICE_SELECT, "$expand": "registeredOwners($select=id)",
                                          "$top": "999"}, area=name)
    async for page in pager:
        apply_devices(target, page, counter, with_owners=True)
        run.tick(name, pager.items)
    count = len(target.data.get("devices", {}))
    await run.commit(run.writer.commit_full, name, target.data, delta_link=link,
                     status=run.ok_status(prev, count, "full"), meta=run.writer.meta(name))
    return AreaResult(name, "full", objects=count, changes=count)


async def _devices_delta(run: "AreaRun", area: "Area", prev: "AreaStatus", link: str) -> AreaResult:
    name = area.name
    change, counter = run.writer.begin(name), Counter()
    pager = run.pager(link, area=name)
    new: list[str] = []
    async for page in pager:
        new += apply_devices(change, page, counter)
        run.tick(name, pager.items)
    if not pager.delta_link:
        raise GraphError("Graph ended the devices/delta round without an @odata.deltaLink; the delta link is kept as it was")
    if new:  # the registered owner is set once, at registration: only new devices need it
        urls = {f"/devices/{d}/registeredOwners?$select=id": d for d in dict.fromkeys(new)}
        got = await run.batch_get(list(urls), area=name)
        for url, rows in got.items():
            dev = change.get("devices", urls[url])
            if dev is not None:
                change.put("devices", urls[url], {**dev, "registeredOwners": owner_ids(rows)})
    count = max(0, (prev.object_count or 0) + counter.added - counter.removed)
    await run.commit(run.writer.commit_delta, change, delta_link=pager.delta_link,
                     status=run.ok_status(prev, count, "delta"), meta=run.writer.meta(name))
    return AreaResult(name, "delta", objects=count, changes=counter.changed)


async def run_conditional_access(run: "AreaRun", area: "Area", prev: "AreaStatus") -> AreaResult:
    """conditional_access: both collections whole (Graph offers no delta for them)."""
    name = area.name
    data: dict[str, dict[str, Any]] = {"ca_policies": {}, "named_locations": {}}
    for coll, path in (("ca_policies", "/identity/conditionalAccess/policies"),
                       ("named_locations", "/identity/conditionalAccess/namedLocations")):
        async for page in run.pager(path, area=name):
            for obj in page:
                if isinstance(obj, dict) and obj.get("id"):
                    data[coll][str(obj["id"])] = obj
    count = len(data["ca_policies"])
    await run.commit(run.writer.commit_full, name, data, delta_link=None, status=run.ok_status(prev, count, "full"),
                     meta=run.writer.meta(name))
    return AreaResult(name, "full", objects=count, changes=count,
                      message=f"{count} policies, {len(data['named_locations'])} named locations")


async def run_owners(run: "AreaRun", area: "Area", prev: "AreaStatus") -> AreaResult:
    """owners: the group-ownership delta stream every run; owners of apps in $batch at most every
    APP_OWNERS_REFRESH_MINUTES (and on a full run)."""
    name, writer = area.name, run.writer
    meta = writer.meta(name)
    link = None if run.full or not prev.enabled or not writer.has_data(name) else writer.delta_link(name)
    sp_result = run.results.get("service_principals")
    apps_readable = sp_result is not None and sp_result.outcome not in ("disabled", "off", "failed", "skipped")
    last = meta.get("apps_at")
    apps_due = link is None or last is None or run.now() - last >= timedelta(minutes=APP_OWNERS_REFRESH_MINUTES)
    target: Any = FullBuild() if link is None else writer.begin(name)
    counter = Counter()
    pager = run.pager("/groups/delta" if link is None else link,
                      params={"$select": OWNERS_GROUP_SELECT} if link is None else None, area=name)
    try:
        async for page in pager:
            apply_group_owners(target, page, counter)
            run.tick(name, pager.items)
    except DeltaTokenExpired:
        return await run_owners(_Full(run), area, prev)
    if not pager.delta_link:
        raise GraphError("Graph ended the groups/delta (owners) round without an @odata.deltaLink")
    message = "group owners by delta"
    if apps_due and apps_readable:
        apps = await run.read_all("applications", "applications")
        sps = await run.read_all("service_principals", "service_principals")
        objects = owned_here(apps, sps)
        urls = {f"/{kind}/{oid}/owners?$select=id": oid for oid, kind in objects.items()}
        got = await run.batch_get(list(urls), area=name)
        for url, rows in got.items():
            oid = urls[url]
            refs = [{"id": str(r["id"]), "type": _kind(r.get("@odata.type"))} for r in rows or () if r.get("id")]
            old = target.get("owners", oid)
            if refs:
                counter.added += old is None
                target.put("owners", oid, refs)
            elif old is not None:
                counter.removed += 1
                target.delete("owners", oid)
        meta["apps_at"] = run.now()
        message += f"; owners of {len(objects)} apps refreshed (every {APP_OWNERS_REFRESH_MINUTES:.0f} minutes)"
    elif not apps_readable:
        message += "; owners of apps not read (enterprise apps did not sync in this run)"
    if link is None:
        count = len(target.data.get("owners", {}))
        await run.commit(writer.commit_full, name, target.data, delta_link=pager.delta_link,
                         status=run.ok_status(prev, count, "full"), meta=meta)
        return AreaResult(name, "full", objects=count, changes=count, message=message)
    count = max(0, (prev.object_count or 0) + counter.added - counter.removed)
    await run.commit(writer.commit_delta, target, delta_link=pager.delta_link,
                     status=run.ok_status(prev, count, "delta"), meta=meta)
    return AreaResult(name, "delta", objects=count, changes=counter.changed, message=message)


class _Full:
    """The same run, forced full (a delta link expired)."""

    def __init__(self, run: "AreaRun") -> None:
        self._run = run
        self.full = True

    def __getattr__(self, item: str) -> Any:
        return getattr(self._run, item)


__all__ = [
    "APP_OWNERS_REFRESH_MINUTES", "DEVICE_SELECT", "OWNERS_GROUP_SELECT", "apply_devices", "apply_group_owners",
    "owned_here", "run_conditional_access", "run_devices", "run_owners",
]
