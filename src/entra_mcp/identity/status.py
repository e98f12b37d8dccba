"""sync_status: how each area of a tenant's mirror stands, straight from AreaStatus (nothing inferred)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from ..mirror.snapshot import AREAS, DirectorySnapshot
from .common import freshness_findings
from .findings import sort_findings
from .text import iso
from .view import DirectoryView


def sync_status(source: DirectorySnapshot | DirectoryView, now: datetime | None = None) -> dict[str, Any]:
    """Per area: enabled, disabledReason, lastSuccess, lastError, objectCount, mode (full/delta); plus the tenant,
    asOf, the sync interval and a MIRROR_STALE finding when the mirror is older than two intervals."""
    snapshot = source.snapshot if isinstance(source, DirectoryView) else source
    areas: dict[str, Any] = {}
    for name in (*AREAS, *sorted(set(snapshot.areas) - set(AREAS))):
        status = snapshot.areas.get(name)
        if status is None:
            areas[name] = {"enabled": None, "disabledReason": "not reported by the mirror", "lastSuccess": None,
                           "lastError": None, "lastErrorAt": None, "objectCount": None, "mode": None}
            continue
        areas[name] = {
            "enabled": status.enabled,
            "disabledReason": status.disabled_reason,
            "lastSuccess": iso(status.last_success),
            "lastError": status.last_error,
            "lastErrorAt": iso(status.last_error_at),
            "objectCount": status.object_count,
            "mode": status.mode,
        }
    findings = freshness_findings(snapshot, now)
    return {
        "tenant": snapshot.tenant,
        "tenantId": snapshot.tenant_id,
        "asOf": iso(snapshot.as_of),
        "intervalMinutes": snapshot.interval_minutes,
        "version": snapshot.version,
        "areas": areas,
        "findings": sort_findings(findings),
    }

