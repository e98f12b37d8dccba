"""Group memberships (direct and inherited, with the chain) and group members.

`kind` is the base kind of a group: "microsoft365" (groupTypes has "Unified"), "mailEnabledSecurity" (mail and
security enabled), "security", or "distribution" (mail enabled, not security). Dynamic membership is orthogonal and
shown apart: `dynamic: true` with `membershipRule` and `membershipRuleProcessingState`.
"""

from __future__ import annotations

import heapq
import itertools
from collections import Counter
from datetime import datetime
from typing import Any, Iterator, Mapping

from ..errors import InvalidArgument, NotFoundError
from . import access
from .common import area_finding, area_unavailable_reason, as_of, freshness_findings, property_getter, user_ref
from .findings import finding, quote, sort_findings, suspicious_findings
from .text import GROUP_EXPECTED, clean_identifier, clean_limit
from .users import resolve_user
from .view import DirectoryView

MAX_MEMBERSHIPS = 1000
MAX_MEMBERS = 1000
SORT_MEMBERS_UP_TO = 5000  # larger groups list a sample (users first), not the alphabetical first `limit`


def group_kind(group: Mapping[str, Any]) -> str:
    types = group.get("groupTypes") or ()
    if "Unified" in types:
        return "microsoft365"
    mail, security = bool(group.get("mailEnabled")), bool(group.get("securityEnabled"))
    if mail and security:
        return "mailEnabledSecurity"
    if mail:
        return "distribution"
    return "security"


def is_dynamic(group: Mapping[str, Any]) -> bool:
    return "DynamicMembership" in (group.get("groupTypes") or ())


def group_card(group: Mapping[str, Any]) -> dict[str, Any]:
    card: dict[str, Any] = {
        "id": group.get("id"),
        "displayName": group.get("displayName"),
        "kind": group_kind(group),
        "dynamic": is_dynamic(group),
    }
    if card["dynamic"]:
        card["membershipRule"] = group.get("membershipRule")
        card["membershipRuleProcessingState"] = group.get("membershipRuleProcessingState")
    if group.get("mail"):
        card["mail"] = group.get("mail")
    if group.get("onPremisesSyncEnabled"):
        card["onPremisesSyncEnabled"] = True
    return card


def resolve_group(view: DirectoryView, group: str) -> Mapping[str, Any]:
    """The one group with this object id, mail or name (case- and accent-insensitive). NotFoundError with the closest
    names; InvalidArgument listing the ids when several groups share the name."""
    text = clean_identifier(group, argument="group", expected=GROUP_EXPECTED)
    groups = view.snapshot.groups
    ids = view.groups_matching(text)
    if len(ids) == 1:
        return groups[ids[0]]
    if len(ids) > 1:
        listed = "; ".join(f"{g} ({quote(groups[g].get('displayName'), 40)}, {group_kind(groups[g])})" for g in ids[:10])
        raise InvalidArgument(f"{len(ids)} groups are named {quote(text)}: give the object id of the one you mean: {listed}.")
    if not groups:
        reason = area_unavailable_reason(view, "groups") or "the mirror holds no groups"
        raise NotFoundError(f"No group {quote(text)} can be found: {reason}.")
    suggestions = [quote(name, 60) for name in view.closest_group_names(text)]
    raise NotFoundError(f"No group matches {quote(text)}.", suggestions=suggestions)


def list_group_memberships(
    view: DirectoryView, user: str, transitive: bool = True, *, limit: int = 500, now: datetime | None = None
) -> dict[str, Any]:
    """The groups `user` belongs to. Inherited groups carry `via`: the shortest chain of groups from one the user
    is a direct member of down to (not including) this one. Cycles in nesting are harmless."""
    record = resolve_user(view, user)
    limit = clean_limit(limit, default=500, maximum=MAX_MEMBERSHIPS)
    groups = view.snapshot.groups
    findings = freshness_findings(view.snapshot, now) + suspicious_findings("user", record)
    answer: dict[str, Any] = {"user": user_ref(record)}
    unavailable = area_finding(view, "groups", "the user's groups are unknown.")
    if unavailable is not None:
        answer.update(groups=None, total=None, truncated=False, asOf=as_of(view), findings=sort_findings([unavailable, *findings]))
        return answer

    if transitive:
        chains = view.transitive_groups(record["id"])
    else:
        chains = {gid: (gid,) for gid in view.direct_groups(record["id"])}
    rows = []
    for gid, chain in chains.items():
        group = groups.get(gid)
        card: dict[str, Any] = group_card(group) if group else {"id": gid, "displayName": None, "kind": None,
                                                                "dynamic": False}
        card["direct"] = len(chain) == 1
        card["via"] = [{"id": g, "displayName": (groups.get(g) or {}).get("displayName")} for g in chain[:-1]]
        rows.append((len(chain), str(card["displayName"] or "").casefold(), card))
        if group:
            findings.extend(suspicious_findings("group", group))
    rows.sort(key=lambda r: (r[0], r[1]))
    answer.update(
        groups=[r[2] for r in rows[:limit]],
        total=len(rows),
        directCount=sum(1 for r in rows if r[0] == 1),
        truncated=len(rows) > limit,
        asOf=as_of(view),
        findings=sort_findings(findings),
    )
    return answer


def list_group_members(
    view: DirectoryView, group: str, transitive: bool = False, limit: int = 100, *, now: datetime | None = None
) -> dict[str, Any]:
    """Members of a group (users, groups, service principals, devices), users first, by name (groups of more than
    5,000 members: a sample, `sortedByName` false). With `transitive`, members of nested groups too, each with
    `via` (the nested groups it comes through). Capped at `limit` with the full `total` and `countsByType`."""
    record = resolve_group(view, group)
    limit = clean_limit(limit, default=100, maximum=MAX_MEMBERS)
    findings = freshness_findings(view.snapshot, now) + suspicious_findings("group", record)
    gid = record["id"]
    snap = view.snapshot
    entries: Iterator[tuple[str, str, tuple[str, ...]]]
    if transitive:
        found = view.transitive_members(gid)
        total, counts = len(found), Counter(kind for kind, _ in found.values())
        entries = ((mid, kind, chain) for mid, (kind, chain) in found.items())
    else:
        direct = snap.members.get(gid, {})
        total, counts = len(direct), Counter(direct.values())
        entries = ((mid, kind, (gid,)) for mid, kind in direct.items())
    sources: dict[str, Mapping[str, Mapping[str, Any]]] = {
        "user": snap.users, "group": snap.groups, "servicePrincipal": snap.service_principals,
    }
    names = {kind: property_getter(objects, "displayName") for kind, objects in sources.items()}
    type_order = {"user": 0, "group": 1, "servicePrincipal": 2}

    def order(entry: tuple[str, str, tuple[str, ...]]) -> tuple[int, str, str]:
        name_of = names.get(entry[1])
        name = name_of(entry[0]) if name_of else None
        return type_order.get(entry[1], 3), str(name).casefold() if name else "\uffff", entry[0]

    sorted_by_name = total <= SORT_MEMBERS_UP_TO
    if sorted_by_name:
        shown = heapq.nsmallest(limit, entries, key=order)
    else:
        # a very large group (All Staff): the first `limit` of each type as stored (users come first, so enough
        # users end the scan), then those sorted; reading a name for each of 100,000 members costs more than the
        # listing is worth
        firsts: dict[str, list[tuple[str, str, tuple[str, ...]]]] = {}
        for entry in entries:
            bucket = firsts.setdefault(entry[1], [])
            if len(bucket) < limit:
                bucket.append(entry)
            elif entry[1] == "user":
                break
        shown = heapq.nsmallest(limit, itertools.chain.from_iterable(firsts.values()), key=order)
    members = []
    for mid, kind, chain in shown:
        obj = sources.get(kind, {}).get(mid)
        row: dict[str, Any] = {"id": mid, "displayName": obj.get("displayName") if obj else None, "type": kind}
        if kind == "user" and obj:
            row["userPrincipalName"] = obj.get("userPrincipalName")
        if transitive:
            row["direct"] = len(chain) == 1
            if len(chain) > 1:
                row["via"] = [{"id": g, "displayName": (snap.groups.get(g) or {}).get("displayName")} for g in chain[1:]]
        members.append(row)
        if obj:
            findings.extend(suspicious_findings(kind, obj))
    if is_dynamic(record) and record.get("membershipRuleProcessingState") == "Paused":
        findings.append(finding("DYNAMIC_MEMBERSHIP_PAUSED"))
    return {
        "group": group_card(record),
        "owners": access.owners_of(view, str(record.get("id"))),
        "members": members,
        "total": total,
        "countsByType": dict(counts),
        "truncated": total > limit,
        "sortedByName": sorted_by_name,
        "transitive": transitive,
        "asOf": as_of(view),
        "findings": sort_findings(findings),
    }
