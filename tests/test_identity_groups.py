"""list_group_memberships / list_group_members: nesting chains, cycles, kinds, dynamic groups, disabled areas."""

from __future__ import annotations

from datetime import timedelta

import pytest

from _identity_fixtures import NOW, AreaStatus, areas, group, make_snapshot, oid, user
from entra_mcp.errors import InvalidArgument, NotFoundError
from entra_mcp.identity.groups import group_kind, list_group_members, list_group_memberships
from entra_mcp.identity.view import DirectoryView

U, G, SP = "user", "group", "servicePrincipal"


def _snapshot(**kw: object):  # type: ignore[no-untyped-def]
    users = [user("ann", "Ann Lee"), user("ben", "Ben Ode"), user("cy", "Cy Twin")]
    groups = [
        group("desk", "Service Desk Tier 1"),
        group("itsd", "IT Service Desk"),
        group("itops", "IT Operations"),
        group("global", "Global IT"),
        group("cyc-a", "Escalations - Duty Managers"),
        group("cyc-b", "Escalations - Tier 3"),
        group("m365", "Project Phoenix", "microsoft365", mail="phoenix@contoso.example"),
        group("dl", "Newsletter", "distribution", mail="news@contoso.example"),
        group("mes", "Finance Approvers", "mailEnabledSecurity"),
        group(
            "dyn",
            "Marketing (dynamic)",
            "security",
            groupTypes=["DynamicMembership"],
            membershipRule='user.department -eq "Marketing"',
            membershipRuleProcessingState="Paused",
        ),
        group("dup1", "Printers"),
        group("dup2", "Printers"),
    ]
    members = {
        oid("desk"): {oid("ann"): U, oid("cyc-a"): G},
        oid("itsd"): {oid("desk"): G, oid("ben"): U},
        oid("itops"): {oid("itsd"): G},
        oid("global"): {oid("itops"): G, oid("desk"): G},  # a shortcut: Global IT holds Tier 1 directly too
        oid("cyc-a"): {oid("cyc-b"): G, oid("cy"): U},
        oid("cyc-b"): {oid("cyc-a"): G},  # the cycle
        oid("m365"): {oid("ann"): U, oid("sp"): SP, oid("dev"): "device"},
        oid("dyn"): {oid("ben"): U},
    }
    return make_snapshot(users, groups, members, **kw)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def view() -> DirectoryView:
    return DirectoryView.build(_snapshot())


def _by_name(answer: dict) -> dict:  # type: ignore[type-arg]
    return {g["displayName"]: g for g in answer["groups"]}


def test_transitive_memberships_with_shortest_chain(view: DirectoryView) -> None:
    answer = list_group_memberships(view, "ann@contoso.example")
    groups = _by_name(answer)
    assert set(groups) == {
        "Service Desk Tier 1", "IT Service Desk", "IT Operations", "Global IT", "Project Phoenix",
    }
    assert answer["total"] == 5 and answer["directCount"] == 2
    assert groups["Service Desk Tier 1"]["direct"] is True and groups["Service Desk Tier 1"]["via"] == []
    assert [v["displayName"] for v in groups["IT Operations"]["via"]] == ["Service Desk Tier 1", "IT Service Desk"]
    # two routes to Global IT: the shorter one (directly through Tier 1) is shown
    assert [v["displayName"] for v in groups["Global IT"]["via"]] == ["Service Desk Tier 1"]
    # direct groups come first
    assert [g["direct"] for g in answer["groups"]][:2] == [True, True]


def test_direct_only(view: DirectoryView) -> None:
    answer = list_group_memberships(view, "ann@contoso.example", transitive=False)
    assert {g["displayName"] for g in answer["groups"]} == {"Service Desk Tier 1", "Project Phoenix"}
    assert all(g["direct"] for g in answer["groups"])


def test_cycle_is_harmless(view: DirectoryView) -> None:
    answer = list_group_memberships(view, "cy@contoso.example")
    groups = _by_name(answer)
    assert set(groups) >= {"Escalations - Duty Managers", "Escalations - Tier 3"}
    # cyc-a is in Tier 1 (desk), so cy inherits the desk chain as well
    assert [v["displayName"] for v in groups["Escalations - Tier 3"]["via"]] == ["Escalations - Duty Managers"]
    assert answer["total"] == len(answer["groups"]) == len(set(g["id"] for g in answer["groups"]))
    members = list_group_members(view, "Escalations - Tier 3", transitive=True)
    ids = [m["id"] for m in members["members"]]
    assert len(ids) == len(set(ids))
    assert oid("cyc-b") not in ids  # a group is not its own member, even in a cycle
    assert oid("cy") in ids


def test_kinds_and_dynamic(view: DirectoryView) -> None:
    kinds = {g["displayName"]: group_kind(g) for g in view.snapshot.groups.values()}
    assert kinds["Project Phoenix"] == "microsoft365"
    assert kinds["Newsletter"] == "distribution"
    assert kinds["Finance Approvers"] == "mailEnabledSecurity"
    assert kinds["IT Operations"] == "security"
    ben = _by_name(list_group_memberships(view, "ben@contoso.example"))
    dyn = ben["Marketing (dynamic)"]
    assert dyn["kind"] == "security" and dyn["dynamic"] is True
    assert dyn["membershipRule"] == 'user.department -eq "Marketing"'
    assert ben["IT Service Desk"]["dynamic"] is False and "membershipRule" not in ben["IT Service Desk"]
    paused = list_group_members(view, "Marketing (dynamic)", now=NOW)
    assert [f["code"] for f in paused["findings"]] == ["DYNAMIC_MEMBERSHIP_PAUSED"]


def test_members_direct_and_transitive(view: DirectoryView) -> None:
    direct = list_group_members(view, "it service desk")
    assert {(m["displayName"], m["type"]) for m in direct["members"]} == {
        ("Ben Ode", "user"), ("Service Desk Tier 1", "group"),
    }
    assert direct["total"] == 2 and direct["truncated"] is False
    nested = list_group_members(view, "Global IT", transitive=True)
    by_id = {m["id"]: m for m in nested["members"]}
    assert by_id[oid("ann")]["direct"] is False
    assert [v["displayName"] for v in by_id[oid("ann")]["via"]] == ["Service Desk Tier 1"]
    assert oid("ben") in by_id and oid("cy") in by_id
    assert nested["countsByType"]["user"] == 3


def test_members_of_other_types_and_limit(view: DirectoryView) -> None:
    answer = list_group_members(view, "phoenix@contoso.example", limit=2)
    assert answer["total"] == 3 and len(answer["members"]) == 2 and answer["truncated"] is True
    assert answer["group"]["kind"] == "microsoft365"
    full = list_group_members(view, oid("m365"))
    assert {m["type"] for m in full["members"]} == {"user", "servicePrincipal", "device"}


def test_group_not_found_and_ambiguous(view: DirectoryView) -> None:
    with pytest.raises(NotFoundError) as err:
        list_group_members(view, "Service Desk Tier One")
    assert '"Service Desk Tier 1"' in str(err.value)
    with pytest.raises(InvalidArgument) as amb:
        list_group_members(view, "printers")
    assert oid("dup1") in str(amb.value) and oid("dup2") in str(amb.value)
    with pytest.raises(InvalidArgument):
        list_group_members(view, "x' or 1 eq 1")


def test_stale_mirror_is_said() -> None:
    answer = list_group_memberships(DirectoryView.build(_snapshot()), "ann@contoso.example", now=NOW + timedelta(hours=2))
    assert [f["code"] for f in answer["findings"]] == ["MIRROR_STALE"]
    assert answer["total"] == 5  # the answer itself is still given


def test_groups_area_disabled_gives_null_with_reason() -> None:
    snap = _snapshot(area_status=areas(groups=AreaStatus(enabled=False, disabled_reason="not enabled in config")))
    answer = list_group_memberships(DirectoryView.build(snap), "ann@contoso.example")
    assert answer["groups"] is None and answer["total"] is None
    assert answer["findings"][0]["code"] == "AREA_DISABLED"
    assert "not enabled in config" in answer["findings"][0]["message"]


def test_very_large_group_lists_a_sample_users_first() -> None:
    users = [user(f"u{i}", f"User {i:05d}") for i in range(5100)]
    members = {oid("big"): {u["id"]: "user" for u in reversed(users)}}
    members[oid("big")][oid("sub")] = "group"
    snap = make_snapshot(users, [group("big", "Everyone"), group("sub", "Sub")], members)
    answer = list_group_members(DirectoryView.build(snap), "Everyone", limit=10)
    assert answer["total"] == 5101 and answer["countsByType"] == {"user": 5100, "group": 1}
    assert answer["sortedByName"] is False and answer["truncated"] is True
    assert [m["type"] for m in answer["members"]] == ["user"] * 10
    small = list_group_members(DirectoryView.build(snap), "Sub")
    assert small["sortedByName"] is True
