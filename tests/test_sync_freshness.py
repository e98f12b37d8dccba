"""The data version moves only when objects changed; freshness (asOf, area statuses, the commit stamp) moves with
every commit. A sync run that found nothing new costs a server one small read, not a reload and a re-index."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from entra_mcp.mirror.snapshot import AreaStatus
from entra_mcp.mirror.store import MirrorStore
from entra_mcp.views import ViewProvider
from tests._sync_fixtures import control_of, run_sync, synced_views  # noqa: F401

pytestmark = pytest.mark.timeout(120)


def _users(n: int) -> dict[str, dict[str, Any]]:
    return {f"u{i:04d}": {"id": f"u{i:04d}", "displayName": f"User {i}", "managerId": None} for i in range(n)}


def _colls(store: MirrorStore, area: str) -> Any:
    root = store._root("t")
    assert root is not None
    return root["areas"][area]["colls"]


def test_commits_that_change_no_object_keep_the_data_version(tmp_path: Path) -> None:
    store = MirrorStore(tmp_path)
    ok = AreaStatus(enabled=True, object_count=1000)
    with store.writer("t") as w:
        w.set_tenant(tenant_id="tid", interval_minutes=5)
        v1 = w.commit_full("users", {"users": _users(1000)}, delta_link="dl-1", status=ok)
    f1 = store.freshness("t")
    assert f1 is not None and f1.version == v1 == store.version("t")
    specs = _colls(store, "users")

    with store.writer("t") as w:
        change = w.begin("users")  # a delta round that saw one object, unchanged (Graph sends such objects)
        change.put("users", "u0003", dict(change.get("users", "u0003")))
        assert w.commit_delta(change, delta_link="dl-2", status=ok) == v1
        assert w.commit_full("users", {"users": _users(1000)}, delta_link="dl-3", status=ok) == v1  # same objects
        w.set_status("users", AreaStatus(enabled=True, object_count=1000, last_error="boom"))
    f2 = store.freshness("t")
    assert f2 is not None and f2.version == v1 and f2.stamp == f1.stamp + 3
    assert f2.as_of is not None and f1.as_of is not None and f2.as_of > f1.as_of
    assert f2.areas["users"].last_error == "boom" and store.version("t") == v1
    assert _colls(store, "users") == specs  # no bucket was rewritten

    with store.writer("t") as w:
        users = _users(1000)
        users["u0007"]["displayName"] = "Renamed"
        v2 = w.commit_full("users", {"users": users}, delta_link="dl-4", status=ok)
        assert v2 == v1 + 1
        n, revs = _colls(store, "users")["users"]
        assert sum(r != old for r, old in zip(revs, specs["users"][1])) == 1  # only the bucket holding u0007
        change = w.begin("users")
        change.delete("users", "u0008")
        assert w.commit_delta(change, delta_link="dl-5", status=ok) == v2 + 1
        assert w.clear_area("users", AreaStatus(enabled=False, disabled_reason="turned off in config")) == v2 + 2
        assert w.clear_area("users", AreaStatus(enabled=False, disabled_reason="turned off in config")) == v2 + 2
    snap = store.load_snapshot("t")
    assert snap is not None and snap.version == v2 + 2 and snap.stamp == store.freshness("t").stamp  # type: ignore[union-attr]
    store.close()


def test_a_sync_that_found_nothing_new_refreshes_the_server_without_reindexing(
    fresh_emulator: Any, control_of: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = synced_views(fresh_emulator, control_of, tmp_path, monkeypatch, seed=5)
    ctl, settings, store, views, built = env.control, env.settings, env.store, env.views, env.built
    name = settings.tenants[0].name
    first = views.current()
    version = store.version(name)
    assert first.version == version and built == [version]

    second = run_sync(settings, store)  # a delta run: nothing changed in the tenant
    assert second.ok and {r.outcome for r in second.areas.values()} <= {"delta", "full", "unchanged", "off"}
    assert store.version(name) == version
    now = views.current()
    assert built == [version]  # not indexed again
    assert now.view.exact is first.view.exact and now.view.member_of is first.view.member_of
    assert now.snapshot.as_of > first.snapshot.as_of and now.view.snapshot.as_of == now.snapshot.as_of
    assert now.snapshot.areas["users"].last_success > first.snapshot.areas["users"].last_success

    user = ctl.snapshot()["users"][0]
    ctl.mutate([{"op": "update_user", "id": user["id"], "set": {"jobTitle": "Changed Title"}}])
    assert run_sync(settings, store).ok
    assert store.version(name) > version
    after = views.current()
    # a new data version: the new snapshot, its index patched from the held one (no indexed field changed)
    assert after.version == store.version(name) and after.view.snapshot.users[user["id"]]["jobTitle"] == "Changed Title"
    assert built == [version] and after.view.exact == first.view.exact
    store.close()


def test_a_change_only_in_sign_in_activity_keeps_the_servers_index(tmp_path: Path) -> None:
    """Sign-in activity is refreshed hourly and changes every time in a live tenant; the index reads no sign-in
    field, so the server loads the new data and keeps its index."""
    from entra_mcp.identity.view import DirectoryView
    from entra_mcp.views import TenantInfo

    store = MirrorStore(tmp_path)
    users = {f"u{i}": {"id": f"u{i}", "displayName": f"User {i}", "userPrincipalName": f"u{i}@contoso.example", "managerId": None}
             for i in range(300)}
    ok = AreaStatus(enabled=True, object_count=300)

    def sign_ins(when: str) -> dict[str, Any]:
        return {"sign_in": {uid: {"lastSignInDateTime": when} for uid in users}}

    with store.writer("t") as w:
        w.set_tenant(tenant_id="tid", interval_minutes=5)
        w.commit_full("users", {"users": users}, delta_link="dl", status=ok)
        w.commit_full("groups", {"groups": {"g1": {"id": "g1", "displayName": "G"}}, "members": {"g1": {"u1": "user"}}},
                      delta_link="dl", status=ok)
        w.commit_full("sign_in_activity", sign_ins("2026-11-01T10:00:00Z"), delta_link=None, status=ok)
    built: list[int] = []

    def build(snapshot: Any) -> Any:
        built.append(snapshot.version)
        return DirectoryView.build(snapshot)

    views = ViewProvider([TenantInfo("t", "tid", 5)], store, build=build, check_interval=0, background_reload=False)
    first = views.current()
    assert len(built) == 1 and first.view.snapshot.users["u7"]["signInActivity"]["lastSignInDateTime"] == "2026-11-01T10:00:00Z"

    with store.writer("t") as w:
        w.commit_full("sign_in_activity", sign_ins("2026-11-02T11:00:00Z"), delta_link=None, status=ok)
    second = views.current()
    assert second.version > first.version and len(built) == 1  # new data, same index
    assert second.view.exact is first.view.exact and second.view.snapshot is second.snapshot
    assert second.view.snapshot.users["u7"]["signInActivity"]["lastSignInDateTime"] == "2026-11-02T11:00:00Z"
    assert second.view.exact_users("u7@contoso.example") == first.view.exact_users("u7@contoso.example")

    with store.writer("t") as w:
        change = w.begin("users")
        change.put("users", "u300", {"id": "u300", "displayName": "New Person", "userPrincipalName": "u300@contoso.example", "managerId": None})
        w.commit_delta(change, delta_link="dl-2", status=ok)
    third = views.current()
    assert len(built) == 2 and third.view.exact_users("u300@contoso.example")  # the users changed: indexed again
    store.close()


def test_a_servers_start_freezes_its_view_out_of_the_collector_until_the_view_is_replaced(tmp_path: Path) -> None:
    """serve's warm(freeze=True) keeps the start's view out of the cyclic collector's generations (the collections
    after a start would traverse it three times); the first reload gives everything back to the collector."""
    import gc

    from entra_mcp.views import TenantInfo

    store = MirrorStore(tmp_path)
    ok = AreaStatus(enabled=True, object_count=20)
    with store.writer("t") as w:
        w.set_tenant(tenant_id="tid", interval_minutes=5)
        w.commit_full("users", {"users": _users(20)}, delta_link="dl", status=ok)
    views = ViewProvider([TenantInfo("t", "tid", 5)], store, check_interval=0, background_reload=False)
    gc.unfreeze()  # freezing is process-wide: an earlier test's objects in this worker must not count here
    assert gc.get_freeze_count() == 0
    try:
        views.warm(freeze=True)
        assert views.held == ["t"] and gc.get_freeze_count() > 0
        first = views.current()
        with store.writer("t") as w:
            change = w.begin("users")
            change.put("users", "u9999", {"id": "u9999", "displayName": "New Person", "managerId": None})
            w.commit_delta(change, delta_link="dl-2", status=ok)
        second = views.current()
        assert second.version > first.version and "u9999" in second.view.snapshot.users
        assert gc.get_freeze_count() == 0  # the start's view was replaced: thawed
        views.warm(freeze=True)  # a start again: it freezes what it holds
        assert gc.get_freeze_count() > 0
        views.thaw()  # serving ended (serve's last step): nothing stays frozen in a process that goes on
        assert gc.get_freeze_count() == 0
    finally:
        gc.unfreeze()
        store.close()
    store = MirrorStore(tmp_path)
    ViewProvider([TenantInfo("t", "tid", 5)], store, check_interval=0, background_reload=False).warm()
    assert gc.get_freeze_count() == 0  # only a server's start asks for it
    store.close()


def test_a_full_pull_repairs_a_missing_bucket_instead_of_comparing_with_it(tmp_path: Path) -> None:
    """`sync --full` is the advice for a damaged mirror: comparing with the stored buckets must not trip on one."""
    from entra_mcp.mirror import store as store_mod

    store = MirrorStore(tmp_path)
    ok = AreaStatus(enabled=True, object_count=1000)
    with store.writer("t") as w:
        w.set_tenant(tenant_id="tid", interval_minutes=5)
        v1 = w.commit_full("users", {"users": _users(1000)}, delta_link="dl", status=ok)
        n, revs = _colls(store, "users")["users"]
        w._cache.delete(store_mod._key("users", "users", 0, revs[0]))  # the damage
        assert w.commit_full("users", {"users": _users(1000)}, delta_link="dl", status=ok) == v1 + 1
    snap = store.load_snapshot("t")
    assert snap is not None and len(snap.users) == 1000
    store.close()
