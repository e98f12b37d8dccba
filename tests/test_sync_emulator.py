"""Sync against the emulator over HTTPS (real msal, real httpx): every test ends with the mirror equal to the
emulator's ground truth, object by object and membership by membership."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import anyio
import pytest

from entra_mcp.devtenant.faults import FaultPlan
from entra_mcp.mirror.store import MirrorStore
from entra_mcp import areas as A
from entra_mcp.graph.tenant import make_client
from entra_mcp.sync.engine import sync_tenant
from tests._sync_fixtures import assert_mirror_matches, control_of, run_sync, write_config  # noqa: F401

pytestmark = pytest.mark.timeout(120)


def _pick(truth: dict[str, Any], key: str, n: int, pred: Any = lambda o: True) -> list[dict[str, Any]]:
    return [o for o in truth[key] if pred(o)][:n]


def test_full_then_delta_after_mutations(fresh_emulator: Any, control_of: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    emu = fresh_emulator(size="small", seed=3)
    ctl = control_of(emu)
    ctl.faults(delta_users_page_size=7, delta_groups_page_size=4, delta_groups_page_units=25)  # many pages, chunked members
    # full builds keep at most 5 objects of a collection as dicts: the rest pickled by part as the pages come, and
    # member lists met again (chunked) read back from there, as on a large tenant (areas.BuildCollection)
    monkeypatch.setattr(A, "BUILD_HOT", 5)
    _, settings = write_config(emu, tmp_path, monkeypatch)
    store = MirrorStore(settings.server.cache_dir)

    first = run_sync(settings, store)
    assert first.ok, first
    assert {a: r.outcome for a, r in first.areas.items() if a in ("users", "sign_in_activity", "groups", "applications",
                                                                   "service_principals", "app_role_assignments")} == {
        "users": "full", "sign_in_activity": "full", "groups": "full", "applications": "full",
        "service_principals": "full", "app_role_assignments": "full"}
    assert {a: first.areas[a].outcome for a in ("devices", "conditional_access", "owners")} == {
        "devices": "full", "conditional_access": "full", "owners": "full"}
    truth = ctl.snapshot()
    snap = store.load_snapshot(settings.tenants[0].name)
    assert_mirror_matches(snap, truth, areas=("users", "groups", "applications", "service_principals", "app_role_assignments", "domains"))
    assert snap is not None and snap.version > 0 and snap.as_of is not None
    # only what the answers read is stored: every user holds the synced properties, the manager and sign-ins, no more
    kept = {*A.USER_FIELDS, "managerId", "signInActivity"}
    assert all(set(u) <= kept for u in snap.users.values()) and all("businessPhones" not in u for u in snap.users.values())
    assert any("businessPhones" in u for u in truth["users"])  # the emulator has them: the sync leaves them out
    activities = [u["signInActivity"] for u in snap.users.values() if u.get("signInActivity")]
    assert activities and all(set(a) <= set(A.SIGN_IN_FIELDS) for a in activities)  # no request ids
    assert any(a.get("lastSignInDateTime") for a in activities)
    v1 = store.version(settings.tenants[0].name)

    users = _pick(truth, "users", 8)
    groups = _pick(truth, "groups", 4, lambda g: "DynamicMembership" not in (g.get("groupTypes") or []))
    sps = _pick(truth, "servicePrincipals", 1, lambda s: bool(s.get("appRoleAssignmentRequired")))
    apps = truth["applications"][:1]
    created = ctl.mutate([
        {"op": "create_user", "set": {"displayName": "Zed New", "userPrincipalName": "zed.new@" + emu.tenant().domain, "jobTitle": "Tester"}},
    ])[0]
    member_of_g0 = next(iter(truth["members"].get(groups[0]["id"], {})), None)
    ops: list[dict[str, Any]] = [
        {"op": "update_user", "id": users[0]["id"], "set": {"jobTitle": "Chief Tester", "department": "QA"}},
        {"op": "disable_user", "id": users[1]["id"]},
        {"op": "soft_delete", "id": users[2]["id"]},
        {"op": "soft_delete", "id": users[3]["id"]},
        {"op": "restore", "id": users[3]["id"]},
        {"op": "hard_delete", "id": users[4]["id"]},
        {"op": "set_manager", "user": users[5]["id"], "manager": created["id"]},
        {"op": "set_manager", "user": users[6]["id"], "manager": None},
        {"op": "add_member", "group": groups[1]["id"], "member": created["id"]},
        {"op": "add_member", "group": groups[2]["id"], "member": users[7]["id"]},
        {"op": "update_group", "id": groups[3]["id"], "set": {"description": "changed by the test"}},
        {"op": "update_application", "id": apps[0]["id"], "set": {"displayName": "Renamed App"}},
        {"op": "add_password_credential", "id": apps[0]["id"], "displayName": "new secret"},
        {"op": "create_group", "set": {"displayName": "Fresh Group", "securityEnabled": True, "mailEnabled": False,
                                       "mailNickname": "fresh", "groupTypes": []}, "members": [created["id"], users[0]["id"]]},
    ]
    if member_of_g0:
        ops.append({"op": "remove_member", "group": groups[0]["id"], "member": member_of_g0})
    if sps:
        ops.append({"op": "update_service_principal", "id": sps[0]["id"], "set": {"displayName": "Renamed SP"}})
        ops.append({"op": "add_app_role_assignment", "resource": sps[0]["id"], "principal": created["id"]})
    ctl.mutate(ops)

    second = run_sync(settings, store)
    assert second.ok, second
    for area in ("users", "groups", "applications", "service_principals"):
        assert second.areas[area].outcome == "delta", second.areas[area]
        assert second.areas[area].changes > 0
    truth2 = ctl.snapshot()
    snap2 = store.load_snapshot(settings.tenants[0].name)
    assert_mirror_matches(snap2, truth2)
    assert snap2 is not None and snap2.version > v1
    assert snap2.users[users[1]["id"]]["accountEnabled"] is False
    assert users[2]["id"] not in snap2.users and users[4]["id"] not in snap2.users and users[3]["id"] in snap2.users
    assert snap2.users[users[5]["id"]]["managerId"] == created["id"]
    # counts in the status follow the deltas
    assert snap2.areas["users"].object_count == len(truth2["users"])
    assert snap2.areas["groups"].object_count == len(truth2["groups"])

    # a third run with nothing changed is cheap: one request per delta area
    third = run_sync(settings, store)
    assert third.ok
    for area in ("users", "groups", "applications", "service_principals"):
        assert third.areas[area].changes == 0
        assert third.areas[area].requests <= 3
    assert_mirror_matches(store.load_snapshot(settings.tenants[0].name), ctl.snapshot())


def test_faults_throttling_errors_drops_and_token_expiry(fresh_emulator: Any, control_of: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    emu = fresh_emulator(size="small", seed=4, faults=FaultPlan(throttle_next=6, throttle_retry_after=0.05, error_next=4, drop_next=3))
    ctl = control_of(emu)
    ctl.faults(delta_users_page_size=10)
    _, settings = write_config(emu, tmp_path, monkeypatch)
    store = MirrorStore(settings.server.cache_dir)
    tenant = settings.tenants[0]

    async def scenario() -> None:
        async with make_client(tenant) as client:
            client.retry.base_backoff = 0.01
            first = await sync_tenant(tenant, store, client=client)
            assert first.ok, first
            assert first.stats["throttled"] >= 6
            # some of the 13 injected faults land in $batch items (assignments, owners of apps), retried together per
            # batch round: how many depends on which requests run concurrently when they strike
            assert first.stats["retries"] >= 5
            assert (emu.faults.throttle_next, emu.faults.error_next, emu.faults.drop_next) == (0, 0, 0)
            assert_mirror_matches(store.load_snapshot(tenant.name), ctl.snapshot())

            # the client's token expires: the emulator's token service moves 2 hours on (its clock is injectable; the
            # short-lifetime fault is masked by the 5-minute validation skew). One 401, one fresh token, the run goes on.
            emu.tokens.now = lambda: time.time() + 2 * 3600
            ctl.mutate([{"op": "update_user", "id": ctl.snapshot()["users"][0]["id"], "set": {"jobTitle": "After Expiry"}}])
            refreshes = client.stats.token_refreshes
            second = await sync_tenant(tenant, store, client=client)
            assert second.ok, second
            assert client.stats.token_refreshes == refreshes + 1
            assert second.areas["users"].outcome == "delta"
            assert_mirror_matches(store.load_snapshot(tenant.name), ctl.snapshot())

    anyio.run(scenario)


@pytest.mark.parametrize("response", ["gone", "syncStateNotFound"])
def test_expired_delta_links_mean_full_resync(fresh_emulator: Any, control_of: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, response: str) -> None:
    emu = fresh_emulator(size="small", seed=5)
    ctl = control_of(emu)
    _, settings = write_config(emu, tmp_path, monkeypatch)
    store = MirrorStore(settings.server.cache_dir)
    assert run_sync(settings, store).ok
    truth = ctl.snapshot()
    ctl.mutate([{"op": "hard_delete", "id": truth["users"][0]["id"]}])
    ctl.faults(delta_expiry_response=response, expire_delta_tokens=True)
    again = run_sync(settings, store)
    assert again.ok, again
    for area in ("users", "groups", "applications", "service_principals"):
        assert again.areas[area].outcome == "full"
        assert "delta link expired" in (again.areas[area].message or "")
    assert_mirror_matches(store.load_snapshot(settings.tenants[0].name), ctl.snapshot())
    # and the new delta links work
    third = run_sync(settings, store)
    assert third.ok and third.areas["users"].outcome == "delta"


def test_permission_revoked_disables_areas_and_grant_reenables(fresh_emulator: Any, control_of: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    emu = fresh_emulator(size="small", seed=6)
    ctl = control_of(emu)
    _, settings = write_config(emu, tmp_path, monkeypatch)
    store = MirrorStore(settings.server.cache_dir)
    name = settings.tenants[0].name
    assert run_sync(settings, store).ok

    ctl.roles(revoke=["Application.Read.All"])
    ctl.mutate([{"op": "update_user", "id": ctl.snapshot()["users"][0]["id"], "set": {"jobTitle": "Still Synced"}}])
    r = run_sync(settings, store)
    assert r.ok, r  # missing permissions are not a failure
    for area in ("applications", "service_principals", "app_role_assignments"):
        assert r.areas[area].outcome == "disabled"
    status = store.area_status(name)
    assert status["applications"].enabled is False
    assert status["applications"].disabled_reason == "Graph refused (Authorization_RequestDenied): grant Application.Read.All"
    assert status["service_principals"].enabled is False
    snap = store.load_snapshot(name)
    assert snap is not None and snap.applications == {} and snap.service_principals == {}
    assert_mirror_matches(snap, ctl.snapshot(), areas=("users", "groups"))

    ctl.roles(grant=["Application.Read.All"])
    r2 = run_sync(settings, store)
    assert r2.ok
    for area in ("applications", "service_principals", "app_role_assignments"):
        assert r2.areas[area].outcome == "full"
    assert store.area_status(name)["applications"].enabled is True
    assert_mirror_matches(store.load_snapshot(name), ctl.snapshot())


def test_two_tenants_non_premium_keeps_users(fresh_emulator: Any, control_of: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    emu = fresh_emulator(size="small", seed=7, tenants=2)
    ctl = control_of(emu)
    _, settings = write_config(emu, tmp_path, monkeypatch, tenant_index=None)
    assert [t.name for t in settings.tenants][1] == "fabrikam"
    store = MirrorStore(settings.server.cache_dir)
    for i in (0, 1):
        r = run_sync(settings, store, i=i)
        assert r.ok, r
        snap = store.load_snapshot(settings.tenants[i].name)
        assert_mirror_matches(snap, ctl.snapshot(i))
        assert snap is not None
        if i == 0:
            assert r.areas["sign_in_activity"].outcome == "full"
            assert any("signInActivity" in u for u in snap.users.values())
        else:
            assert r.areas["sign_in_activity"].outcome == "disabled"
            reason = snap.areas["sign_in_activity"].disabled_reason or ""
            assert "Authentication_RequestFromNonPremiumTenantOrB2CTenant" in reason and "P1/P2" in reason
            assert not any("signInActivity" in u for u in snap.users.values())
            assert snap.areas["users"].enabled and snap.areas["users"].last_success is not None
    # the two mirrors are separate
    a, b = store.load_snapshot("contoso"), store.load_snapshot("fabrikam")
    assert a is not None and b is not None and not (set(a.users) & set(b.users))


def test_turned_off_in_config(fresh_emulator: Any, control_of: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    emu = fresh_emulator(size="small", seed=8)
    ctl = control_of(emu)
    _, settings = write_config(emu, tmp_path, monkeypatch, extra="[tenants.sync]\napplications = false\nsign_in_activity = false\n")
    store = MirrorStore(settings.server.cache_dir)
    r = run_sync(settings, store)
    assert r.ok
    assert r.areas["applications"].outcome == "off" and r.areas["sign_in_activity"].outcome == "off"
    st = store.area_status(settings.tenants[0].name)
    assert st["applications"] .enabled is False and st["applications"].disabled_reason == "turned off in config"
    assert r.areas["applications"].requests == 0
    assert_mirror_matches(store.load_snapshot(settings.tenants[0].name), ctl.snapshot(), areas=("users", "groups", "service_principals"))


def test_reader_always_sees_a_consistent_snapshot_during_full_resync(fresh_emulator: Any, control_of: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    emu = fresh_emulator(size="small", seed=9)
    ctl = control_of(emu)
    ctl.faults(delta_users_page_size=3, delta_groups_page_size=2)
    monkeypatch.setattr(A, "BUILD_HOT", 5)  # the full resyncs' builds mostly pickled by part (areas.BuildCollection)
    _, settings = write_config(emu, tmp_path, monkeypatch)
    name = settings.tenants[0].name
    store = MirrorStore(settings.server.cache_dir)
    assert run_sync(settings, store).ok
    ctl.mutate([{"op": "create_user", "set": {"displayName": f"Bulk {n}", "userPrincipalName": f"bulk{n}@{emu.tenant().domain}"}} for n in range(30)])

    stop = threading.Event()
    seen: list[int] = []
    problems: list[str] = []

    def reader() -> None:
        rstore = MirrorStore(settings.server.cache_dir)  # its own handles, like another process
        while not stop.is_set():
            s = rstore.load_snapshot(name)
            if s is None:
                problems.append("snapshot vanished")
                continue
            seen.append(s.version)
            for area, coll in (("users", s.users), ("groups", s.groups), ("service_principals", s.service_principals)):
                if s.areas[area].object_count != len(coll):
                    problems.append(f"v{s.version}: {area} count {s.areas[area].object_count} != {len(coll)}")
            if not set(s.members) <= set(s.groups):
                problems.append(f"v{s.version}: members of unknown groups")
        rstore.close()

    t = threading.Thread(target=reader)
    t.start()
    try:
        for _ in range(2):
            assert run_sync(settings, store, full=True).ok
    finally:
        stop.set()
        t.join(timeout=30)
    assert not problems, problems[:5]
    assert len(seen) > 3 and seen == sorted(seen) and len(set(seen)) > 1
    assert_mirror_matches(store.load_snapshot(name), ctl.snapshot())


def test_429_storm_from_the_resource_unit_bucket(fresh_emulator: Any, control_of: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Microsoft's token bucket, shrunk to 75 resource units per 10 s: many areas at once exhaust it, every 429
    carries the bucket's own (decimal) Retry-After, and the run still ends equal to the ground truth.

    The bucket's clock moves with the requests (throttle_step_ms: 20 ms each, and the Retry-Afters the client waits
    out), not with the wall clock: the run costs ~105 resource units, the bucket holds 75 and refills ~0.15 per
    request, so at least four requests are refused (a refusal's wait refills at most the 5 units of the dearest
    request) however fast or slow the machine sends them. On the wall clock a loaded machine's slower run was
    refilled meanwhile, and how many 429s it met (4 to 26 seen) depended on its speed."""
    emu = fresh_emulator(size="small", seed=15)
    ctl = control_of(emu)
    ctl.faults(throttle_limit=75, throttle_step_ms=20, delta_users_page_size=3, delta_groups_page_size=2)
    _, settings = write_config(emu, tmp_path, monkeypatch)
    store = MirrorStore(settings.server.cache_dir)
    r = run_sync(settings, store)
    assert r.ok, r
    print(f"429 storm: {r.stats['throttled']} throttled answers, {r.stats['secondsWaiting']} s waited in all")
    assert r.stats["throttled"] >= 4 and r.stats["secondsWaiting"] > 0
    assert_mirror_matches(store.load_snapshot(settings.tenants[0].name), ctl.snapshot())
