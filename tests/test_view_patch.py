"""A sync that changed a few users or memberships patches the server's index (DirectoryView.updated) instead of
building it again, and the patched index is exactly the one a fresh build of the new mirror gives."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path
from typing import Any

import pytest

from entra_mcp.identity.view import DirectoryView
from entra_mcp.mirror.snapshot import DirectorySnapshot
from entra_mcp.mirror.table import Table
from tests._sync_fixtures import control_of, run_sync, synced_views  # noqa: F401

pytestmark = pytest.mark.timeout(120)

_NOT_INDEXES = {"snapshot", "built_at", "_scores_cache", "_derived"}


def assert_same_index(patched: DirectoryView, fresh: DirectoryView) -> None:
    for name in (*(f.name for f in fields(DirectoryView)), *DirectoryView.ON_FIRST_USE):
        if name not in _NOT_INDEXES:
            assert getattr(patched, name) == getattr(fresh, name), f"index {name} differs from a fresh build"


def _user(i: int, **extra: Any) -> dict[str, Any]:
    given, surname = ["Ana", "Ben", "Chloé", "Dmitri"][i % 4], ["Silva", "Okafor", "Meyer", "Ivanov"][i % 3]
    return {"id": f"u{i:03d}", "displayName": f"{given} {surname}", "givenName": given, "surname": surname,
            "userPrincipalName": f"{given.lower()}.{surname.lower()}{i}@contoso.example", "mail": f"user{i}@contoso.example",
            "proxyAddresses": [f"SMTP:user{i}@contoso.example", f"smtp:alias{i % 5}@contoso.example"],
            "otherMails": [], "employeeId": f"E{i % 7}", "onPremisesSamAccountName": f"sam{i}", "mailNickname": f"nick{i % 6}",
            "managerId": None, "jobTitle": "Engineer", **extra}


def _snapshot(users: dict[str, dict[str, Any]], members: dict[str, dict[str, str]], *, version: int,
              columns: bool) -> DirectorySnapshot:
    groups = {gid: {"id": gid, "displayName": f"Group {gid}", "mail": None} for gid in members}
    return DirectorySnapshot(
        tenant="t", tenant_id="tid", as_of=None, interval_minutes=15,
        users=Table.from_dicts(users) if columns else users, groups=Table.from_dicts(groups) if columns else groups,
        members=members, domains=[{"id": "contoso.example", "isDefault": True}], version=version,
    )


@pytest.mark.parametrize("columns", [True, False], ids=["tables", "dicts"])
def test_patched_index_equals_a_fresh_build(columns: bool) -> None:
    users = {f"u{i:03d}": _user(i) for i in range(60)}
    members = {"g1": {f"u{i:03d}": "user" for i in range(0, 60, 2)}, "g2": {"u001": "user", "g1": "group"},
               "g3": {f"u{i:03d}": "user" for i in range(0, 60, 3)}}
    old = DirectoryView.build(_snapshot(users, members, version=1, columns=columns))

    changed = {k: dict(v) for k, v in users.items()}
    # renamed (a token only this user had vanishes, a new one appears), another script for another
    changed["u004"].update(displayName="Zebulon Quartz", givenName="Zebulon", surname="Quartz")
    changed["u010"].update(displayName="Иван Петров", givenName="Иван", surname="Петров")
    # a shared alias taken by one more user, another dropped; the UPN moves to a new domain; sam, employee id, nickname
    changed["u007"].update(proxyAddresses=["SMTP:user7@contoso.example", "smtp:alias0@contoso.example"],
                           userPrincipalName="ben.meyer7@fabrikam.example", employeeId="E0", onPremisesSamAccountName="sam8",
                           mailNickname="someone-else")
    changed["u020"]["jobTitle"] = "Manager"  # not indexed: no entry moves
    # u009 (already in g3) joins g1, which comes first: its groups stay in the mirror's order
    new_members = {"g1": {**members["g1"], "u001": "user", "u009": "user"}, "g2": {"g1": "group"},
                   "g3": {k: v for k, v in members["g3"].items() if k != "u003"}}
    snapshot = _snapshot(changed, new_members, version=2, columns=columns)

    patched = old.updated(snapshot)
    assert patched is not None and patched.snapshot is snapshot
    assert_same_index(patched, DirectoryView.build(snapshot))
    assert "u007" in patched.exact_users("alias0@contoso.example") and "fabrikam.example" in patched.known_domains
    assert patched.search_names("zebulon")[0][0].user_id == "u004" and patched.direct_groups("u003") == ()
    assert old.exact_users("ben.meyer7@fabrikam.example") == ()  # the held view is untouched while it answers

    # a user changed back: the domain only that user had is gone again
    back = old.updated(_snapshot(users, members, version=3, columns=columns))
    assert back is not None and "fabrikam.example" not in back.known_domains
    assert_same_index(back, old)


def test_added_or_removed_users_or_many_changes_build_the_index_again() -> None:
    users = {f"u{i:03d}": _user(i) for i in range(40)}
    old = DirectoryView.build(_snapshot(users, {}, version=1, columns=True))
    more = {**users, "u999": _user(999)}
    assert old.updated(_snapshot(more, {}, version=2, columns=True)) is None
    fewer = {k: v for k, v in users.items() if k != "u005"}
    assert old.updated(_snapshot(fewer, {}, version=2, columns=True)) is None
    renamed = {k: {**v, "displayName": v["displayName"] + " Jr"} for k, v in users.items()}
    assert old.updated(_snapshot(renamed, {}, version=2, columns=True), max_changed=10) is None
    patched = old.updated(_snapshot(renamed, {}, version=2, columns=True))
    assert patched is not None
    assert_same_index(patched, DirectoryView.build(patched.snapshot))


def test_a_delta_of_three_users_patches_the_servers_index(
    fresh_emulator: Any, control_of: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Through the real sync: three users and one membership change in the tenant, a delta run, and the server's
    view of the new mirror version is the held one patched, equal to a fresh build, answering the new names."""
    env = synced_views(fresh_emulator, control_of, tmp_path, monkeypatch, seed=7)
    ctl, settings, store, views, built = env.control, env.settings, env.store, env.views, env.built
    name = settings.tenants[0].name
    first = views.current()
    truth = ctl.snapshot()
    people = [u for u in truth["users"] if u.get("userType") != "Guest"][:3]
    group = next(g for g in truth["groups"] if not g.get("membershipRule"))
    ctl.mutate([
        {"op": "update_user", "id": people[0]["id"], "set": {"displayName": "Quentin Zarkov", "givenName": "Quentin", "surname": "Zarkov"}},
        {"op": "update_user", "id": people[1]["id"], "set": {"employeeId": "PATCH-0001"}},
        {"op": "update_user", "id": people[2]["id"], "set": {"jobTitle": "Changed Title"}},
        {"op": "add_member", "group": group["id"], "member": people[2]["id"]},
    ])
    result = run_sync(settings, store)
    assert result.ok and result.areas["users"].outcome == "delta"
    now = views.current()
    assert now.version > first.version and built == [first.version]  # patched, not built again
    assert now.view is not None and first.view is not None
    assert_same_index(now.view, DirectoryView.build(now.view.snapshot))
    assert now.view.exact_users("PATCH-0001") == (people[1]["id"],)
    assert now.view.search_names("quentin zarkov")[0][0].user_id == people[0]["id"]
    assert group["id"] in now.view.direct_groups(people[2]["id"])
    assert first.view.exact_users("PATCH-0001") == ()
    assert now.view.user(people[2]["id"])["jobTitle"] == "Changed Title"  # type: ignore[index]
    # a restart indexes the mirror afresh: the same index
    assert_same_index(now.view, DirectoryView.build(store.load_snapshot(name)))  # type: ignore[arg-type]
    store.close()


def test_derived_indexes_survive_a_refresh_and_follow_a_new_collection() -> None:
    """The answers' derived indexes (devices by user) are made once per collection, kept by the copy a freshness
    refresh makes of the view, and made again from a newer collection."""
    from dataclasses import replace

    from entra_mcp.identity.access import _devices_by_user, derive_indexes

    devices = {"d1": {"id": "d1", "registeredOwners": ["u001"], "registeredUsers": ["u001", "u002"]}}
    snap = replace(_snapshot({"u001": _user(1), "u002": _user(2)}, {}, version=1, columns=True),
                   collections={"devices": Table.from_dicts(devices)})
    view = DirectoryView.build(snap)
    derive_indexes(view)
    first = _devices_by_user(view)
    assert first == {"u001": ("d1",), "u002": ("d1",)}
    refreshed = replace(view, snapshot=replace(snap, stamp=2))  # what a sync that changed no object does
    assert _devices_by_user(refreshed) is first
    # a patched view (a later version whose devices are the same collection) keeps it; a new collection drops it
    renamed = {"u001": _user(1, displayName="Renamed One"), "u002": _user(2)}
    later = replace(_snapshot(renamed, {}, version=2, columns=True), collections=snap.collections)
    patched = view.updated(later)
    assert patched is not None and _devices_by_user(patched) is first
    other = view.updated(replace(later, collections={"devices": Table.from_dicts(devices)}))
    assert other is not None and "devices_by_user" not in other._derived
    newer = replace(view, snapshot=replace(snap, collections={"devices": Table.from_dicts({**devices, "d2": {
        "id": "d2", "registeredOwners": ["u002"]}})}))
    assert _devices_by_user(newer) == {"u001": ("d1",), "u002": ("d1", "d2")}


def test_reverse_memberships_read_like_the_dict_they_replace() -> None:
    """MemberOf (arrays of group positions for the users, a dict for other members) answers like {member: groups}:
    after a pickle round trip (the prepared index), through a patch's overlay, and with or without the users table."""
    import pickle

    from entra_mcp.identity.member_index import MemberOf

    users = {f"u{i}": {"id": f"u{i}"} for i in range(6)}
    members = {"g1": {"u0": "user", "u2": "user", "g2": "group"}, "g2": {"u2": "user", "sp1": "servicePrincipal"},
               "g3": {"u5": "user", "gone": "user"}}
    expected = {"u0": ("g1",), "u2": ("g1", "g2"), "g2": ("g1",), "sp1": ("g2",), "u5": ("g3",), "gone": ("g3",)}
    table = Table.from_dicts(users)
    member_of = MemberOf.build(members, tuple(users))
    for index in (member_of, pickle.loads(pickle.dumps(member_of))):
        assert index == expected and dict(index) == expected and len(index) == len(expected)
        assert index.get("u1") is None and "u1" not in index and index.groups("u1", table) == ()
        assert all(index.groups(m, table) == g == index[m] for m, g in expected.items())
    patched = member_of.patched({"u0": (), "u1": ("g3",), "u2": ("g2",)})
    assert patched == {**{k: v for k, v in expected.items() if k != "u0"}, "u1": ("g3",), "u2": ("g2",)}
    assert patched.groups("u0", table) == () and patched.groups("u1", table) == ("g3",) and member_of.get("u1") is None
