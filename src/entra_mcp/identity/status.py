"""How a tenant's mirror stands, per area, as JSON: the one rendering behind the sync_status tool, `entra-mcp status`
(text and --json: `mirror_report`) and /healthz. Straight from AreaStatus; the only judgement made is which error is still current.

An area's last error is shown only while it is newer than its last success (an error a later run got past is
history, not news). When every area that shows an error shows the same one (a wrong secret, an unreachable login
host), it is said once for the tenant (`lastError`, `lastErrorAt`) instead of once per area.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Iterable, Mapping

from ..areas import AreaStatus
from ..mirror.snapshot import AREAS, DirectorySnapshot
from .common import freshness_findings
from .findings import finding, sort_findings
from .text import iso
from .view import DirectoryView


def current_error(status: AreaStatus) -> str | None:
    """The area's last error while it is still current: newer than the last success (or no success at all)."""
    return status.last_error if status.failing else None


def area_ok(status: AreaStatus) -> bool:
    """Enabled, synced at least once, and no error since."""
    return status.enabled and status.last_success is not None and current_error(status) is None


def area_json(status: AreaStatus | None) -> dict[str, Any]:
    """enabled, disabledReason, lastSuccess, lastError (current only), lastErrorAt, objectCount, mode."""
    if status is None:
        return {"enabled": None, "disabledReason": "not reported by the mirror", "lastSuccess": None,
                "lastError": None, "lastErrorAt": None, "objectCount": None, "mode": None}
    error = current_error(status)
    return {
        "enabled": status.enabled,
        "disabledReason": status.disabled_reason,
        "lastSuccess": iso(status.last_success),
        "lastError": error,
        "lastErrorAt": iso(status.last_error_at) if error else None,
        "objectCount": status.object_count,
        "mode": status.mode,
    }


def area_names(present: Iterable[str]) -> list[str]:
    """The known areas in their usual order, then any others the mirror reports."""
    return [*AREAS, *sorted(set(present) - set(AREAS))]


def shared_error(areas: Mapping[str, dict[str, Any]]) -> tuple[str | None, str | None]:
    """(error, at) when every area showing an error shows the same one, and more than one area does; the areas'
    own lastError/lastErrorAt are then cleared (the error is said once, for the tenant)."""
    failing = [a for a in areas.values() if a.get("lastError")]
    if len(failing) < 2 or len({a["lastError"] for a in failing}) != 1:
        return None, None
    error = str(failing[0]["lastError"])
    at = max((a["lastErrorAt"] for a in failing if a.get("lastErrorAt")), default=None)
    for a in failing:
        a["lastError"] = a["lastErrorAt"] = None
    return error, at


def disabled_findings(areas: Mapping[str, dict[str, Any]]) -> list[dict[str, str]]:
    """AREA_DISABLED naming the disabled areas and why, so that null answers in those areas are explained."""
    off = [f"{name} ({a.get('disabledReason') or 'no reason recorded'})" for name, a in areas.items() if a.get("enabled") is False]
    if not off:
        return []
    return [finding("AREA_DISABLED", "Disabled, so answers that need them are null: " + "; ".join(off) + ".")]


def _age(at: Any, now: datetime) -> float | None:
    return round((now - at).total_seconds(), 1) if isinstance(at, datetime) else None


def _last_run(run: Mapping[str, Any] | None) -> dict[str, Any] | None:
    if not run:
        return None
    keys = ("seconds", "full", "ok", "requests", "retries", "throttled", "tokenRefreshes", "secondsWaiting", "byArea")
    at = run.get("at")
    return {"at": iso(at) if isinstance(at, datetime) else None, **{k: run.get(k) for k in keys}}


def mirror_report(info: Mapping[str, Any] | None, *, turned_on: Mapping[str, bool], interval_minutes: float,
                  now: datetime) -> dict[str, Any]:
    """A tenant's mirror as `entra-mcp status` shows it, from `MirrorStore.info()` (None: no mirror): synced, asOf,
    ageSeconds, version, lastRun, intervalMinutes, the shared error, and per area (every defined area, in order)
    `area_json` plus ageSeconds, hasDeltaLink and memberships; an area that `turned_on` says is off in the config
    is disabled with that reason, whatever the mirror last recorded."""
    from ..areas import REGISTRY

    areas = {}
    for defn in REGISTRY:
        entry = info["areas"][defn.name] if info else None
        st = entry["status"] if entry else None
        shown = area_json(st) if st else {"enabled": True, "disabledReason": None, "lastSuccess": None,
                                          "lastError": None, "lastErrorAt": None, "objectCount": None, "mode": None}
        on = bool(turned_on.get(defn.name, True))
        meta = entry["meta"] if entry else {}
        areas[defn.name] = {
            **shown,
            "enabled": bool(shown["enabled"]) and on,
            "disabledReason": shown["disabledReason"] if on else "turned off in config",
            "ageSeconds": _age(st.last_success, now) if st else None,
            "hasDeltaLink": entry["has_delta_link"] if entry else False,
            **({"memberships": meta["memberships"]} if "memberships" in meta else {}),
        }
    error, error_at = shared_error(areas)
    as_of = info["as_of"] if info else None
    return {
        "synced": as_of is not None,
        "asOf": iso(as_of) if isinstance(as_of, datetime) else None,
        "ageSeconds": _age(as_of, now),
        "version": info["version"] if info else 0,
        "lastRun": _last_run(info.get("last_run") if info else None),
        "intervalMinutes": interval_minutes,
        "lastError": error,
        "lastErrorAt": error_at,
        "areas": areas,
        "findings": disabled_findings(areas),
    }


def sync_status(source: DirectorySnapshot | DirectoryView, now: datetime | None = None) -> dict[str, Any]:
    """Per area: enabled, disabledReason, lastSuccess, lastError, objectCount, mode (full/delta); plus the tenant,
    asOf, the sync interval, the tenant's shared error, a MIRROR_STALE finding when the mirror is older than two
    intervals and an AREA_DISABLED finding when areas are disabled."""
    snapshot = source.snapshot if isinstance(source, DirectoryView) else source
    areas = {name: area_json(snapshot.areas.get(name)) for name in area_names(snapshot.areas)}
    error, error_at = shared_error(areas)
    findings = freshness_findings(snapshot, now) + disabled_findings(areas)
    answer: dict[str, Any] = {
        "tenant": snapshot.tenant,
        "tenantId": snapshot.tenant_id,
        "asOf": iso(snapshot.as_of),
        "intervalMinutes": snapshot.interval_minutes,
        "version": snapshot.version,
        "areas": areas,
        "findings": sort_findings(findings),
    }
    if error:
        answer.update(lastError=error, lastErrorAt=error_at)
    return answer


__all__ = ["area_json", "area_names", "area_ok", "current_error", "disabled_findings", "mirror_report", "shared_error",
           "sync_status"]
