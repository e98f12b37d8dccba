"""Pieces every identity answer shares: asOf, area and freshness findings, compact object shapes."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any, Callable, Mapping

from ..mirror.snapshot import AREA_LABELS, DirectorySnapshot
from .findings import finding, quote
from .text import iso, utcnow
from .view import DirectoryView

USER_FIELDS = (
    "id",
    "displayName",
    "userPrincipalName",
    "mail",
    "jobTitle",
    "department",
    "officeLocation",
    "accountEnabled",
    "userType",
)

def property_getter(objects: Mapping[str, Mapping[str, Any]], name: str) -> Callable[[str], Any]:
    """object id -> that object's `name` (None when either is missing), the fast way for a mirror Table."""
    getter = getattr(objects, "getter", None)
    if getter is not None:
        return getter(name)  # type: ignore[no-any-return]
    return lambda oid: (objects.get(oid) or {}).get(name)


def as_of(view: DirectoryView) -> str | None:
    return iso(view.snapshot.as_of)


def user_card(user: Mapping[str, Any]) -> dict[str, Any]:
    """The contract's user shape for lists: identifying and distinguishing fields only."""
    return {name: user.get(name) for name in USER_FIELDS}


def user_ref(user: Mapping[str, Any]) -> dict[str, Any]:
    return {"id": user.get("id"), "displayName": user.get("displayName"), "userPrincipalName": user.get("userPrincipalName")}


def area_unavailable_reason(view: DirectoryView, area: str) -> str | None:
    """Why an area's data is unknown (None when it is enabled and has synced). Reports only what AreaStatus says."""
    status = view.area(area)
    label = AREA_LABELS.get(area, area)
    if status is None:
        return f"the {label} area is not reported by the mirror"
    if not status.enabled:
        reason = status.disabled_reason or "no reason recorded"
        return f"the {label} area is disabled ({reason})"
    if status.last_success is None:
        if status.last_error:
            return f"the {label} area has never synced successfully (last error: {status.last_error})"
        return f"the {label} area has not synced yet"
    return None


def area_finding(view: DirectoryView, area: str, consequence: str, code: str = "AREA_DISABLED") -> dict[str, str] | None:
    reason = area_unavailable_reason(view, area)
    if reason is None:
        return None
    return finding(code, f"{reason[0].upper()}{reason[1:]}: {consequence}")


def freshness_findings(snapshot: DirectorySnapshot, now: datetime | None) -> list[dict[str, str]]:
    """MIRROR_STALE when the mirror never synced or is older than two sync intervals."""
    if snapshot.as_of is None:
        return [finding("MIRROR_STALE", "The mirror of this tenant has never completed a sync: answers may be empty.")]
    age = utcnow(now) - snapshot.as_of
    limit = timedelta(minutes=2 * max(snapshot.interval_minutes, 1))
    if age > limit:
        minutes = int(age.total_seconds() // 60)
        return [
            finding(
                "MIRROR_STALE",
                f"The mirror is {minutes} minutes old (sync interval {snapshot.interval_minutes:g} minutes): "
                "recent changes may be missing.",
            )
        ]
    return []


def name_of(obj: Mapping[str, Any] | None) -> str:
    """An object's name quoted for a message (untrusted text made safe)."""
    if not obj:
        return '"?"'
    return quote(obj.get("displayName") or obj.get("userPrincipalName") or obj.get("id"))
