"""/healthz's freshness: a tenant counts as synced only once every enabled area has committed."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from entra_mcp.mirror.snapshot import AREAS, AreaStatus, DirectorySnapshot
from entra_mcp.server.http import health

NOW = datetime(2026, 11, 26, 12, 0, tzinfo=timezone.utc)


@dataclass
class _Tenant:  # the part of a served tenant that health() reads
    name: str
    snapshot: DirectorySnapshot | None
    interval_minutes: float = 15


class _Views:
    def __init__(self, *tenants: _Tenant) -> None:
        self._tenants = tenants

    def statuses(self) -> tuple[_Tenant, ...]:
        return self._tenants


def _snapshot(done: set[str], disabled: set[str] = frozenset()) -> DirectorySnapshot:  # type: ignore[assignment]
    areas = {
        a: AreaStatus(enabled=a not in disabled, last_success=NOW - timedelta(minutes=1) if a in done else None)
        for a in AREAS
    }
    return DirectorySnapshot(tenant="t", tenant_id="tid", as_of=NOW - timedelta(minutes=1), interval_minutes=15, areas=areas)


def test_not_synced_while_an_enabled_area_has_never_committed() -> None:
    partial = _snapshot(done={"domains"})
    [t] = health(_Views(_Tenant("t", partial)), now=NOW)["tenants"]
    assert t["synced"] is False


def test_synced_when_every_enabled_area_committed_disabled_ones_aside() -> None:
    snap = _snapshot(done=set(AREAS) - {"sign_in_activity"}, disabled={"sign_in_activity"})
    [t] = health(_Views(_Tenant("t", snap)), now=NOW)["tenants"]
    assert t["synced"] is True and t["fresh"] is True


def test_never_synced_tenant() -> None:
    [t] = health(_Views(_Tenant("t", None)), now=NOW)["tenants"]
    assert t["synced"] is False and t["asOf"] is None


def test_a_failing_sync_makes_health_degraded_until_a_success_follows() -> None:
    from dataclasses import replace

    snap = _snapshot(done=set(AREAS))
    ok = health(_Views(_Tenant("t", snap)), now=NOW)
    assert ok["status"] == "ok" and ok["tenants"][0]["failing"] is False
    failed_at = NOW - timedelta(seconds=10)
    snap.areas = {a: replace(st, last_error="ca_bundle: /x/ca.pem does not exist", last_error_at=failed_at)
                  for a, st in snap.areas.items()}
    [tenant] = (degraded := health(_Views(_Tenant("t", snap)), now=NOW))["tenants"]
    assert degraded["status"] == "degraded" and tenant["failing"] is True
    assert tenant["failingSince"] == "2026-11-26T11:59:50Z"
    assert "ca.pem" not in str(degraded)  # no error text on the unauthenticated route
    stale = health(_Views(_Tenant("t", _snapshot(done=set(AREAS)))), now=NOW + timedelta(hours=1))
    assert stale["status"] == "degraded" and stale["tenants"][0]["fresh"] is False
