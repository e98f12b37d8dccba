"""Devices, Conditional Access, owners and fresh assignments end to end: the emulator over HTTPS -> the product's sync
-> the mirror -> a real MCP client (in memory) calling check_app_access, check_account_state and sync_status."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator

import anyio
import pytest
from _sync_fixtures import Control, run_sync, write_config
from mcp import Client

from entra_mcp.config import Settings
from entra_mcp.devtenant.graph_access import access_of
from entra_mcp.devtenant.graph_account import GLOBAL_ADMIN
from entra_mcp.devtenant.server import RunningEmulator, run_emulator
from entra_mcp.graph.what_if import LiveWhatIf
from entra_mcp.mirror.store import MirrorStore
from entra_mcp.server.app import create_server
from entra_mcp.views import ViewProvider


class Env:
    def __init__(self, emu: RunningEmulator, settings: Settings, store: MirrorStore) -> None:
        self.emu, self.settings, self.store = emu, settings, store
        self.tenant = emu.tenant()
        self.control = Control(emu)

    def sync(self, *, full: bool = False) -> Any:
        result = run_sync(self.settings, self.store, full=full)
        assert result.error is None, result.error
        return result

    def call(self, tool: str, **args: Any) -> dict[str, Any]:
        async def go() -> dict[str, Any]:
            views = ViewProvider.from_settings(self.settings, self.store)
            what_if = LiveWhatIf(self.settings)  # as `entra-mcp serve` hands it over
            async with Client(create_server(self.settings, views=views, what_if=what_if)) as client:
                with anyio.fail_after(30):
                    result = await client.call_tool(tool, args)
            assert not result.is_error, result.content[0].text  # type: ignore[union-attr]
            assert result.structured_content is not None
            return result.structured_content

        return anyio.run(go)

    def group(self, name: str) -> str:
        return next(gid for gid, g in self.tenant.groups.items() if g["displayName"] == name)

    def put_policy(self, name: str, users: dict[str, Any], apps: list[str], grant: list[str], *,
                   state: str = "enabled", exclude_apps: tuple[str, ...] = (), **conditions: Any) -> None:
        applications = {"includeApplications": apps, **({"excludeApplications": list(exclude_apps)} if exclude_apps else {})}
        self.control.mutate([{"op": "put_ca_policy", "policy": {
            "displayName": name, "state": state, "grantControls": {"operator": "OR", "builtInControls": grant},
            "conditions": {"users": users, "applications": applications, **conditions}}}])


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest) -> Iterator[Env]:
    extra = "allow_live_what_if = true\n" if "live_what_if" in request.node.name else ""
    with run_emulator(size="small", seed=11) as emu:
        _, settings = write_config(emu, tmp_path, monkeypatch, extra=extra)
        store = MirrorStore(settings.server.cache_dir)
        e = Env(emu, settings, store)
        try:
            yield e
        finally:
            e.control.close()
            store.close()


def codes(answer: dict[str, Any]) -> set[str]:
    return {f["code"] for f in answer.get("findings") or []}


def policies(answer: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {p["displayName"]: p for p in (answer["conditionalAccess"] or {}).get("policies", [])}


def test_conditional_access_rules_through_sync_and_mcp(env: Env) -> None:
    t = env.tenant
    # a member of Service Desk Tier 1 only: inside Global IT through three levels of nesting
    tier1, global_it = env.group("Service Desk Tier 1"), env.group("Global IT")
    direct_global = set(t.members[global_it])
    user = next(u for u in t.members[tier1] if u in t.users and u not in direct_global
                and t.users[u]["accountEnabled"])
    app = next(s for s in t.service_principals.values() if not s.get("appRoleAssignmentRequired")
               and s["accountEnabled"] and s["appOwnerOrganizationId"] == t.tenant_id)
    env.put_policy("T nested include", {"includeGroups": [global_it]}, [app["appId"]], ["mfa"])
    env.put_policy("T exclusion wins", {"includeUsers": [user], "excludeGroups": [global_it]}, [app["appId"]], ["block"])
    env.put_policy("T report only", {"includeUsers": ["All"]}, [app["appId"]], ["compliantDevice"],
                   state="enabledForReportingButNotEnforced")
    env.put_policy("T other app", {"includeUsers": ["All"]}, ["00000000-0000-0000-0000-00000000beef"], ["block"])
    env.put_policy("T disabled", {"includeUsers": ["All"]}, ["All"], ["block"], state="disabled")
    env.put_policy("T all apps but this", {"includeUsers": ["All"]}, ["All"], ["mfa"], exclude_apps=(app["appId"],))
    env.put_policy("T guests", {"includeGuestsOrExternalUsers": {"guestOrExternalUserTypes": "b2bCollaborationGuest",
                                                                 "externalTenants": {"membershipKind": "all"}}},
                   [app["appId"]], ["mfa"])
    env.put_policy("T admins excluded", {"includeUsers": ["All"], "excludeRoles": [GLOBAL_ADMIN]}, [app["appId"]], ["mfa"])
    env.sync(full=True)

    answer = env.call("check_app_access", user=user, app=app["appId"])
    got = policies(answer)
    assert "T nested include" in got, json.dumps(answer)[:3000]
    assert got["T nested include"]["applies"] is True and got["T nested include"]["state"] == "enabled"
    assert "nested" in got["T nested include"]["matchedBy"]
    assert "T exclusion wins" not in got, "an exclusion (through nesting) wins over an inclusion by name"
    assert got["T report only"]["state"] == "reportOnly" and "CA_REPORT_ONLY" in codes(answer)
    assert "T other app" not in got and "T disabled" not in got
    assert "T all apps but this" not in got, "an excluded application wins over All"
    assert "T guests" not in got and got["T admins excluded"]["applies"] is True
    guest = next(u for u, rec in t.users.items() if rec["userType"] == "Guest" and rec["accountEnabled"]
                 and "#EXT#" in rec["userPrincipalName"])
    as_guest = policies(env.call("check_app_access", user=guest, app=app["appId"]))
    assert as_guest["T guests"]["applies"] is True and "T nested include" not in as_guest
    # generated policies: "Require MFA for all users" excludes Global IT (nested members too); the country block
    # depends on where the sign-in comes from, and is named so, never guessed
    assert "Require MFA for all users" not in got
    block = got["Block sign-in from blocked countries"]
    assert block["applies"] == "dependsOnSignIn" and block["dependsOn"][0]["condition"] == "location"
    assert "Blocked countries" in block["dependsOn"][0]["detail"], "the mirrored named location, by its name"
    assert "CA_BLOCK_DEPENDS_ON_SIGN_IN" in codes(answer) and "CA_REQUIREMENTS" in codes(answer)
    assert answer["hasAccess"] is True and answer["conditionalAccess"]["blocked"] == "dependsOnSignIn"
    # roles are mirrored (roles area): the administrators' policy does not reach this user, and reaches an admin
    assert "Require MFA for administrators" not in got
    from entra_mcp.devtenant.graph_account import account_of

    admin = next(a["principalId"] for a in account_of(t).role_assignments.values()
                 if a["roleDefinitionId"] == "62e90394-69f5-4237-9190-012177145e10" and a["principalId"] in t.users
                 and a.get("directoryScopeId", "/") == "/")
    for_admin = policies(env.call("check_app_access", user=admin, app=app["appId"]))
    admins = for_admin["Require MFA for administrators"]
    assert admins["applies"] is True and admins["matchedBy"] == 'holds the role "Global Administrator"'
    assert "T admins excluded" not in for_admin, "an excluded role wins over All users"
    # Conditional Access matches active tenant-wide roles: not a PIM-eligible Global Administrator (until activated),
    # not a Helpdesk Administrator scoped to an administrative unit
    from entra_mcp.devtenant.graph_account import account_examples

    ex = account_examples(t)
    for who in ("pim_eligible_admin", "au_helpdesk_admin"):
        assert "Require MFA for administrators" not in policies(env.call("check_app_access", user=ex[who], app=app["appId"])), who

    # a policy change is seen after the next (incremental) sync; a block flips the verdict
    env.put_policy("T block now", {"includeUsers": [user]}, ["All"], ["block"])
    env.sync()
    answer = env.call("check_app_access", user=user, app=app["appId"])
    assert answer["hasAccess"] is False and "CA_BLOCKED" in codes(answer)
    assert answer["conditionalAccess"]["blocked"] is True


def test_devices_in_account_state_and_compliant_device_grant(env: Env) -> None:
    t = env.tenant
    acc = access_of(t)
    env.sync(full=True)
    ceo = next(u for u in t.users.values() if u["jobTitle"] == "Chief Executive Officer")
    cfo = next(u for u in t.users.values() if u["jobTitle"] == "Chief Financial Officer")
    state = env.call("check_account_state", user=ceo["id"])
    assert state["devices"]["compliant"] >= 1 and state["devices"]["items"][0]["joinType"] == "joined"
    state = env.call("check_account_state", user=cfo["id"])
    names = {d["displayName"]: d for d in state["devices"]["items"]}
    assert names["LT-CFO-01"]["isCompliant"] is False and names["CFO iPhone"]["joinType"] == "registered"
    truth = {d["displayName"]: d for d in access_of(t).devices.values() if d["displayName"] in names}
    for shown, device in ((names[n], truth[n]) for n in names):  # managed, OS and last activity as Graph has them
        assert (shown["isManaged"], shown["operatingSystem"], shown["approximateLastSignInDateTime"]) == (
            device["isManaged"], device["operatingSystem"], device["approximateLastSignInDateTime"]), shown
    assert {"DEVICE_NOT_COMPLIANT", "NO_COMPLIANT_DEVICE"} <= codes(state)

    # Salesforce requires a compliant or hybrid joined device for the Salesforce Users group
    sf_users = env.group("Salesforce Users")
    env.control.mutate([{"op": "add_member", "group": sf_users, "member": cfo["id"]}])
    env.sync()
    answer = env.call("check_app_access", user=cfo["id"], app="Salesforce")
    sf = policies(answer)["Salesforce: compliant or hybrid-joined device"]
    assert sf["applies"] is True and set(sf["requires"]["builtInControls"]) == {"compliantDevice", "domainJoinedDevice"}
    assert "CA_DEVICE_REQUIREMENT_UNMET" in codes(answer)
    # the CFO's laptop becomes compliant: the device delta brings it, the requirement is met
    laptop = next(d for d, dev in acc.devices.items() if dev["displayName"] == "LT-CFO-01")
    added = env.control.mutate([{"op": "update_device", "id": laptop, "set": {"isCompliant": True}},
                                {"op": "add_device", "owner": cfo["id"], "set": {"displayName": "CFO new laptop"}}])
    result = env.sync()
    assert result.areas["devices"].outcome == "delta"
    # the mirror holds exactly the emulator's devices, with their compliance and registered owners
    truth = {d["id"]: d for d in env.control.snapshot()["devices"]}
    snap = env.store.load_snapshot(env.settings.tenants[0].name)
    assert snap is not None
    mirrored = snap.collection("devices")
    assert set(mirrored) == set(truth)
    assert all(mirrored[d]["isCompliant"] == truth[d]["isCompliant"]
               and list(mirrored[d]["registeredOwners"]) == truth[d]["registeredOwners"] for d in truth)
    answer = env.call("check_app_access", user=cfo["id"], app="Salesforce")
    assert "CA_DEVICE_REQUIREMENT_UNMET" not in codes(answer)
    state = env.call("check_account_state", user=cfo["id"])
    assert "CFO new laptop" in {d["displayName"] for d in state["devices"]["items"]}, \
        f"a new device's owner comes in $batch ({added[1]['id']})"


def test_owners_and_an_assignment_visible_after_the_next_sync(env: Env) -> None:
    t = env.tenant
    acc = access_of(t)
    sp = next(s for s in t.service_principals.values() if s.get("appRoleAssignmentRequired") and s["accountEnabled"]
              and s["appOwnerOrganizationId"] == t.tenant_id and acc.owners.get(s["id"]))
    assigned = {a["principalId"] for a in t.app_role_assignments.values() if a["resourceId"] == sp["id"]}
    user = next(u for u, rec in t.users.items() if rec["accountEnabled"] and rec["userType"] == "Member"
                and u not in assigned and not set(t.member_of(u)) & assigned)
    env.sync(full=True)
    answer = env.call("check_app_access", user=user, app=sp["appId"])
    assert answer["hasAccess"] is False and {"NOT_ASSIGNED", "ASSIGNMENT_DATA_AGE"} <= codes(answer)
    approvers = answer["approvers"]
    assert {o["id"] for o in approvers["appOwners"]} >= set(acc.owners[sp["id"]])
    for g in approvers["assignedGroups"]:
        assert [o["id"] for o in g["owners"]] == acc.owners.get(g["id"], [])[:10]

    # the assignment is made now; the next ordinary sync (not an hour later, not --full) shows it
    env.control.mutate([{"op": "add_app_role_assignment", "resource": sp["id"], "principal": user}])
    env.sync()
    answer = env.call("check_app_access", user=user, app=sp["appId"])
    assert answer["hasAccess"] is True, answer["reason"]
    assert answer["approvers"] is None

    # owners in get_app_principal (whom to route an app problem to) and list_group_members (who approves membership)
    principal = env.call("get_app_principal", app=sp["appId"])
    assert {o["id"] for o in principal["owners"]} >= set(acc.owners[sp["id"]])
    some_group = next(g for g in t.groups if acc.owners.get(g))
    members = env.call("list_group_members", group=some_group)
    assert [o["id"] for o in members["owners"]] == acc.owners[some_group][:10]

    # a new group owner arrives by the ownership delta stream
    gid = next(g for g in t.groups if acc.owners.get(g))
    env.control.mutate([{"op": "set_owners", "id": gid, "owners": [user]}])
    result = env.sync()
    assert result.areas["owners"].outcome == "delta"
    snap = env.store.load_snapshot(env.settings.tenants[0].name)
    assert snap is not None and [o["id"] for o in snap.collection("owners")[gid]] == [user]


def test_areas_disabled_with_their_reason(env: Env) -> None:
    env.control.roles(revoke=["Device.Read.All", "Policy.Read.All"])
    env.sync(full=True)
    status = env.call("sync_status")
    areas = json.dumps(status)
    assert "grant Device.Read.All" in areas and "grant Policy.Read.All" in areas
    user = next(u for u, rec in env.tenant.users.items() if rec["accountEnabled"] and rec["userType"] == "Member")
    state = env.call("check_account_state", user=user)
    assert state["devices"] is None and "AREA_DISABLED" in codes(state)
    assert state["accountEnabled"] is True, "the rest still answers"
    answer = env.call("check_app_access", user=user, app="Salesforce")
    assert answer["conditionalAccess"] is None and "AREA_DISABLED" in codes(answer)
    # the permission is granted back, but the tenant has no P1 licence: the licence is the reason now
    env.control.roles(grant=["Device.Read.All", "Policy.Read.All"])
    env.control.mutate([{"op": "set_premium", "premium": False}])
    env.sync()
    status = json.dumps(env.call("sync_status"))
    assert "P1" in status and "Authentication_RequestFromNonPremiumTenantOrB2CTenant" in status
    state = env.call("check_account_state", user=user)
    assert state["devices"] is not None, "devices need no licence: re-enabled by the grant"
    # owners: group owners need GroupMember.Read.All (the groups area's permission too)
    env.control.roles(revoke=["GroupMember.Read.All"])
    result = env.sync()
    assert result.areas["owners"].outcome == "disabled" and "grant GroupMember.Read.All" in (result.areas["owners"].message or "")
    assert result.areas["devices"].outcome in ("delta", "unchanged") and result.areas["users"].outcome != "disabled"
    assert env.call("check_account_state", user=user)["accountEnabled"] is True, "the rest still answers"
    env.control.roles(grant=["GroupMember.Read.All"])


def test_live_what_if_only_where_allowed_and_compared(env: Env) -> None:
    t = env.tenant
    env.sync(full=True)
    ceo = next(u for u in t.users.values() if u["jobTitle"] == "Chief Executive Officer")
    exchange = "00000002-0000-0ff1-ce00-000000000000"
    answer = env.call("check_app_access", user=ceo["id"], app=exchange, live_what_if=True)
    live = answer["liveWhatIf"]
    assert {p["displayName"] for p in live["policies"] if p["policyApplies"]} >= {"Require MFA for all users"}
    reasons = {p["displayName"]: p["analysisReasons"] for p in live["policies"]}
    assert reasons["Office 365 outside trusted networks: MFA"] == "notEnoughInformation", "no sign-in details were sent"
    assert live["differences"] == [] and "CA_LIVE_WHAT_IF" in codes(answer)
    # a policy added after the last sync: Graph sees it, the mirror does not yet -> the difference is named
    env.put_policy("T new block", {"includeUsers": [ceo["id"]]}, ["All"], ["block"])
    answer = env.call("check_app_access", user=ceo["id"], app=exchange, live_what_if=True)
    assert [d["displayName"] for d in answer["liveWhatIf"]["differences"]] == ["T new block"]
    assert "CA_LIVE_WHAT_IF_DIFFERS" in codes(answer)
    env.sync()
    answer = env.call("check_app_access", user=ceo["id"], app=exchange, live_what_if=True)
    assert answer["liveWhatIf"]["differences"] == [] and answer["hasAccess"] is False


def test_what_if_refused_without_the_config_key(env: Env) -> None:
    env.sync(full=True)
    user = next(u for u, rec in env.tenant.users.items() if rec["accountEnabled"] and rec["userType"] == "Member")
    answer = env.call("check_app_access", user=user, app="Salesforce", live_what_if=True)
    assert answer["liveWhatIf"] is None and "CA_LIVE_WHAT_IF_UNAVAILABLE" in codes(answer)
    assert answer["conditionalAccess"] is not None, "the local evaluation still answers"
