"""Delta queries of the emulated Graph: users, groups (with members@delta), applications, servicePrincipals.

A round is a sequence of pages over the objects that changed in (since, upto] of the tenant's change sequence (the
initial round: every live object). The cursor travels in an opaque, signed `$skiptoken`; the last page carries a
`$deltatoken` for `upto`. Paging order is object id; the emulator injects what Graph is known to do: EMPTY pages
that still carry a nextLink, an object repeated at the start of the next page, a large group's members split across
pages (the group reappearing with each chunk).

users/delta with `$select=...,manager` returns the manager as `"manager": {"id": "..."}` (null once removed); the
emulator never uses the `manager@delta` form.
"""

from __future__ import annotations

import bisect
from collections import OrderedDict
from typing import Any

from entra_mcp.devtenant.model import AREA_KIND, DeltaSettings, EmulatedTenant
from entra_mcp.devtenant.odata import (
    ENTITY_BY_KIND,
    bad_request,
    default_properties,
    delta_id_filter,
    parse_select,
    project,
    seal,
    unseal,
)

_EXPIRY_MESSAGES = {
    "syncStateNotFound": "The sync state generation is not found. The delta token is expired or invalid: start a full delta round.",
    "resyncRequired": "Resync required. Replace any local cached data with a full delta round (no $deltatoken).",
}


class DeltaEngine:
    """Builds delta pages; `key` signs the tokens, `now` is emulator time (seconds since the epoch)."""

    def __init__(self, key: bytes, settings: DeltaSettings) -> None:
        self.key = key
        self.settings = settings
        self._cache: OrderedDict[tuple[Any, ...], Any] = OrderedDict()

    # ------------------------------------------------------------------------------------------ entry point
    def respond(self, tenant: EmulatedTenant, area: str, opts: dict[str, str], *, minimal: bool, base_url: str,
                now: float) -> tuple[int, dict[str, Any], dict[str, str]]:
        """(status, body, headers) of GET /{area}/delta with these query options."""
        entity = ENTITY_BY_KIND[AREA_KIND[area]]
        extra = frozenset({"manager"}) if area == "users" else frozenset({"members"}) if area == "groups" else frozenset()
        link = f"{base_url}/v1.0/{area}/delta"
        if "skiptoken" in opts:
            r = unseal(self.key, opts["skiptoken"])
            if r is None or r.get("k") != "ds" or r.get("t") != tenant.tenant_id or r.get("a") != area:
                return self._expired(link)
        elif "deltatoken" in opts:
            if opts["deltatoken"].lower() == "latest":
                sel = self._select(opts, entity, extra)
                ids = delta_id_filter(opts["filter"]) if "filter" in opts else None
                token = self._delta_token(tenant, area, tenant.changes.seq, sel, ids, now)
                return 200, {"@odata.context": f"{base_url}/v1.0/$metadata#{area}", "value": [],
                             "@odata.deltaLink": f"{link}?$deltatoken={token}"}, {}
            d = unseal(self.key, opts["deltatoken"])
            if (d is None or d.get("k") != "dt" or d.get("t") != tenant.tenant_id or d.get("a") != area
                    or d.get("e") != self.settings.epoch or now - float(d.get("ts", 0)) > self.settings.token_max_age_s):
                return self._expired(link)
            r = {"k": "ds", "t": tenant.tenant_id, "a": area, "i": 0, "s": d["s"], "u": tenant.changes.seq,
                 "sel": d["sel"], "f": d["f"], "c": "", "m": None, "p": 0, "prev": None}
        else:
            if area in ("users", "groups"):
                for opt in ("top", "expand", "orderby", "search", "count"):
                    if opt in opts:
                        raise bad_request(f"The query option '${opt}' is not supported with delta queries on {area}.",
                                          "Request_UnsupportedQuery")
            sel = self._select(opts, entity, extra)
            ids = delta_id_filter(opts["filter"]) if "filter" in opts else None
            r = {"k": "ds", "t": tenant.tenant_id, "a": area, "i": 1, "s": 0, "u": tenant.changes.seq, "sel": sel,
                 "f": ids, "c": "", "m": None, "p": 0, "prev": None}
        with tenant.lock:
            body = self._page(tenant, area, r, minimal=minimal, link=link, now=now)
        body = {"@odata.context": f"{base_url}/v1.0/$metadata#{area}", **body}
        headers = {"Preference-Applied": "return=minimal"} if minimal else {}
        return 200, body, headers

    @staticmethod
    def _select(opts: dict[str, str], entity: Any, extra: frozenset[str]) -> list[str] | None:
        sel = parse_select(opts.get("select"), entity, extra)
        if sel and "signInActivity" in sel:
            raise bad_request("signInActivity is not supported in delta queries: read it from /users with $select.",
                              "Request_UnsupportedQuery")
        return sel

    def _expired(self, link: str) -> tuple[int, dict[str, Any], dict[str, str]]:
        mode = self.settings.expiry_response
        if mode == "gone":
            return 410, {"error": {"code": "resyncRequired", "message": _EXPIRY_MESSAGES["resyncRequired"]}}, \
                {"Location": f"{link}?$deltatoken="}
        return 400, {"error": {"code": mode, "message": _EXPIRY_MESSAGES.get(mode, mode)}}, {}

    def _delta_token(self, tenant: EmulatedTenant, area: str, seq: int, sel: list[str] | None,
                     ids: list[str] | None, now: float) -> str:
        return seal(self.key, {"k": "dt", "t": tenant.tenant_id, "a": area, "s": seq, "sel": sel, "f": ids,
                               "ts": round(now, 3), "e": self.settings.epoch})

    # ------------------------------------------------------------------------------------------------ pages
    def _cached(self, key: tuple[Any, ...], make: Any) -> Any:
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        value = make()
        self._cache[key] = value
        if len(self._cache) > 64:
            self._cache.popitem(last=False)
        return value

    def _members_included(self, area: str, sel: list[str] | None) -> bool:
        return area == "groups" and (sel is None or "members" in sel)

    def _candidates(self, tenant: EmulatedTenant, area: str, r: dict[str, Any]) -> list[str]:
        ids_filter = r["f"]
        if r["i"]:
            ids = tenant.sorted_ids(area)
            return sorted(set(ids_filter) & set(tenant.area_objects(area))) if ids_filter is not None else ids

        def make() -> list[str]:
            changed = set(tenant.changes.changed_ids(area, r["s"], r["u"]))
            if self._members_included(area, r["sel"]):
                changed |= set(self._membership(tenant, r["s"], r["u"]))
            if ids_filter is not None:
                changed &= set(ids_filter)
            return sorted(changed)

        return self._cached((tenant.tenant_id, area, r["s"], r["u"], tuple(ids_filter or ()), r["sel"] is None or "members" in (r["sel"] or ())), make)  # type: ignore[no-any-return]

    def _membership(self, tenant: EmulatedTenant, since: int, upto: int) -> dict[str, dict[str, tuple[str, bool]]]:
        return self._cached(("m", tenant.tenant_id, since, upto), lambda: tenant.changes.membership_changes(since, upto))  # type: ignore[no-any-return]

    def _member_refs(self, tenant: EmulatedTenant, gid: str, r: dict[str, Any], after: str | None,
                     limit: int) -> list[tuple[str, str, bool]]:
        """(member id, kind, removed) sorted by member id, after member `after`, at most `limit` + 1 of them: the
        group's whole membership in an initial round, the net membership changes in an incremental one."""
        if r["i"]:
            mems = tenant.members.get(gid, {})
            ordered = tenant.sorted_members(gid)
            start = bisect.bisect_right(ordered, after) if after is not None else 0
            return [(mid, mems[mid], False) for mid in ordered[start:start + limit + 1]]
        ch = self._membership(tenant, r["s"], r["u"]).get(gid, {})
        ordered = sorted(ch) if after is None else sorted(m for m in ch if m > after)
        return [(mid, ch[mid][0], not ch[mid][1]) for mid in ordered[:limit + 1]]

    def _render(self, tenant: EmulatedTenant, area: str, oid: str, r: dict[str, Any], minimal: bool) -> dict[str, Any] | None:
        obj = tenant.area_objects(area).get(oid)
        if obj is None:
            if r["i"]:
                return None
            tomb = tenant.changes.tombstones.get(oid)
            return {"id": oid, "@removed": {"reason": tomb.reason}} if tomb is not None else None
        entity = ENTITY_BY_KIND[AREA_KIND[area]]
        sel: list[str] | None = r["sel"]
        props = [p for p in sel if p not in ("manager", "members")] if sel is not None else None
        want_manager = area == "users" and sel is not None and "manager" in sel
        if minimal and not r["i"]:
            changed = tenant.changes.changed_props(oid, r["s"], r["u"])
            if changed is not None:
                requested = set(props if props is not None else default_properties(entity, obj))
                out: dict[str, Any] = {"id": oid}
                for p in sorted(changed & requested):
                    out[p] = obj.get(p)
                if want_manager and "manager" in changed:
                    out["manager"] = self._manager(tenant, oid)
                return out
        out = project(obj, props, entity)
        if want_manager:
            out["manager"] = self._manager(tenant, oid)
        return out

    @staticmethod
    def _manager(tenant: EmulatedTenant, oid: str) -> dict[str, Any] | None:
        mgr = tenant.managers.get(oid)
        return {"id": mgr} if mgr and mgr in tenant.users else None

    def _page(self, tenant: EmulatedTenant, area: str, r: dict[str, Any], *, minimal: bool, link: str,
              now: float) -> dict[str, Any]:
        st = self.settings
        ids = self._candidates(tenant, area, r)
        partial = r["m"] is not None
        start = bisect.bisect_left(ids, r["c"]) if partial else bisect.bisect_right(ids, r["c"])
        page_no = r["p"]
        nxt = dict(r, p=page_no + 1)
        if st.empty_page_every and page_no % st.empty_page_every == 1 and (start < len(ids)):
            nxt["prev"] = None
            return {"value": [], "@odata.nextLink": f"{link}?$skiptoken={seal(self.key, nxt)}"}
        groups = area == "groups"
        with_members = self._members_included(area, r["sel"])
        max_objects = st.groups_page_size if groups else st.users_page_size
        max_units = st.groups_page_units if groups else max_objects
        value: list[dict[str, Any]] = []
        units = 0
        if st.duplicate_every and page_no % st.duplicate_every == 2 and r.get("prev"):
            again = self._render(tenant, area, r["prev"], r, minimal)
            if again is not None:  # a replay: the client must apply it harmlessly
                value.append(again)
                units += 1
        i = start
        cursor, member_cursor, last = r["c"], None, r.get("prev")
        while i < len(ids) and len(value) < max_objects and units < max_units:
            oid = ids[i]
            item = self._render(tenant, area, oid, r, minimal)
            if item is None:
                i += 1
                cursor = oid
                continue
            refs: list[tuple[str, str, bool]] = []
            if with_members and "@removed" not in item:
                after = r["m"] if partial and oid == r["c"] else None
                refs = self._member_refs(tenant, oid, r, after, max_units)
            room = max_units - units - 1
            if refs and room < len(refs) and room < 1 and value:
                break  # this group starts the next page
            chunk = refs[:max(room, 1)] if refs else []
            if chunk:
                item["members@delta"] = [
                    {"@odata.type": f"#microsoft.graph.{kind}", "id": mid, **({"@removed": {"reason": "deleted"}} if removed else {})}
                    for mid, kind, removed in chunk
                ]
            value.append(item)
            units += 1 + len(chunk)
            last = oid
            partial = False
            if len(chunk) < len(refs):
                cursor, member_cursor = oid, chunk[-1][0]
                break
            cursor = oid
            i += 1
        done = i >= len(ids) and member_cursor is None
        if done:
            token = self._delta_token(tenant, area, r["u"], r["sel"], r["f"], now)
            return {"value": value, "@odata.deltaLink": f"{link}?$deltatoken={token}"}
        nxt.update(c=cursor, m=member_cursor, prev=last)
        return {"value": value, "@odata.nextLink": f"{link}?$skiptoken={seal(self.key, nxt)}"}


def expire_all(settings: DeltaSettings) -> None:
    """Refuse every delta link issued so far (the "synchronization reset" fault)."""
    settings.epoch += 1


__all__ = ["DeltaEngine", "expire_all"]
