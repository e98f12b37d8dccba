"""The local Conditional Access evaluation rule by rule (identity/conditional_access.py, facts in
docs/graph-facts-access.md). The end-to-end path (emulator -> sync -> MCP client) is in test_access_end_to_end.py."""

from __future__ import annotations

from typing import Any

from entra_mcp.devtenant.graph_access import new_policy
from entra_mcp.identity.conditional_access import evaluate, guest_kind

APP = "11111111-1111-1111-1111-111111111111"
OTHER_APP = "22222222-2222-2222-2222-222222222222"
EXCHANGE = "00000002-0000-0ff1-ce00-000000000000"
ALICE = {"id": "u-alice", "userPrincipalName": "alice@contoso.example", "userType": "Member"}
GUEST = {"id": "u-guest", "userPrincipalName": "bob_fabrikam.example#EXT#@contoso.example", "userType": "Guest"}
# Alice is in "Service Desk" directly, and through it in "IT" (nested)
CHAINS = {"g-desk": ("g-desk",), "g-it": ("g-desk", "g-it")}
NAMES = {"g-desk": "Service Desk", "g-it": "IT"}


def run(policies: list[dict[str, Any]], user: dict[str, Any] = ALICE, app: str = APP, *,
        chains: dict[str, tuple[str, ...]] | None = CHAINS, roles: set[str] | None = None,
        first_party: bool = False, locations: dict[str, Any] | None = None) -> dict[str, dict[str, Any]]:
    out = evaluate({p["id"]: p for p in policies}, locations or {}, user, app, first_party=first_party,
                   chains=chains, roles=roles, group_name=lambda g: NAMES.get(g, g), role_name=lambda r: r)
    return {p["displayName"]: p for p in out}


def pol(name: str, users: dict[str, Any], apps: list[str] | None = None, grant: list[str] | None = None,
        state: str = "enabled", **kw: Any) -> dict[str, Any]:
    return new_policy(f"p-{name}", name, state, users, apps or ["All"], grant or ["mfa"], **kw)


def test_users_all_direct_and_nested_groups() -> None:
    got = run([pol("all", {"includeUsers": ["All"]}), pol("direct", {"includeUsers": [ALICE["id"]]}),
               pol("nested", {"includeGroups": ["g-it"]}), pol("someone else", {"includeUsers": ["u-other"]}),
               pol("none", {"includeUsers": ["None"]})])
    assert set(got) == {"all", "direct", "nested"}
    assert got["nested"]["matchedBy"] == "member of IT (nested: Service Desk > IT)"
    assert all(p["applies"] is True and p["state"] == "enabled" for p in got.values())


def test_exclusions_win_over_inclusions() -> None:
    got = run([pol("excluded by user", {"includeUsers": ["All"], "excludeUsers": [ALICE["id"]]}),
               pol("excluded by nested group", {"includeGroups": ["g-desk"], "excludeGroups": ["g-it"]}),
               pol("excluded guests", {"includeUsers": ["All"], "excludeGuestsOrExternalUsers": {
                   "guestOrExternalUserTypes": "b2bCollaborationGuest",
                   "externalTenants": {"membershipKind": "all"}}})])
    assert set(got) == {"excluded guests"}, "Alice is no guest: only the guest exclusion lets the policy reach her"
    assert set(run([pol("g", {"includeUsers": ["All"], "excludeGuestsOrExternalUsers": {
        "guestOrExternalUserTypes": "b2bCollaborationGuest", "externalTenants": {"membershipKind": "all"}}})],
        user=GUEST)) == set()


def test_guests() -> None:
    assert guest_kind(GUEST) == "b2bCollaborationGuest" and guest_kind(ALICE) is None
    assert guest_kind({"userType": "Guest", "userPrincipalName": "local@contoso.example"}) == "internalGuest"
    policies = [pol("guests", {"includeGuestsOrExternalUsers": {"guestOrExternalUserTypes": "internalGuest,b2bCollaborationGuest",
                                                                "externalTenants": {"membershipKind": "all"}}}),
                pol("keyword", {"includeUsers": ["GuestsOrExternalUsers"]}),
                pol("enumerated tenants", {"includeGuestsOrExternalUsers": {
                    "guestOrExternalUserTypes": "b2bCollaborationGuest",
                    "externalTenants": {"membershipKind": "enumerated", "members": ["t1"]}}})]
    assert run(policies) == {}
    got = run(policies, user=GUEST)
    assert got["guests"]["applies"] is True and got["keyword"]["applies"] is True
    assert got["enumerated tenants"]["applies"] is None and got["enumerated tenants"]["unknown"]


def test_apps_all_specific_office365_and_exclusions() -> None:
    policies = [pol("all apps", {"includeUsers": ["All"]}), pol("this app", {"includeUsers": ["All"]}, [APP]),
                pol("other app", {"includeUsers": ["All"]}, [OTHER_APP]),
                pol("all but this", {"includeUsers": ["All"]}, ["All"], exclude_apps=[APP]),
                pol("office", {"includeUsers": ["All"]}, ["Office365"])]
    assert set(run(policies)) == {"all apps", "this app"}
    assert set(run(policies, app=EXCHANGE, first_party=True)) == {"all apps", "all but this", "office"}
    unknown = run(policies, app="33333333-3333-3333-3333-333333333333", first_party=True)["office"]
    assert unknown["applies"] is None, "a Microsoft app the Office 365 group may cover: unknown, not guessed"


def test_states_report_only_and_disabled() -> None:
    got = run([pol("on", {"includeUsers": ["All"]}),
               pol("report", {"includeUsers": ["All"]}, state="enabledForReportingButNotEnforced"),
               pol("off", {"includeUsers": ["All"]}, state="disabled")])
    assert set(got) == {"on", "report"}
    assert got["report"]["state"] == "reportOnly" and got["on"]["state"] == "enabled"


def test_sign_in_conditions_are_named_never_guessed() -> None:
    locations = {"loc-1": {"displayName": "Blocked countries"}}
    got = run([pol("country block", {"includeUsers": ["All"]}, grant=["block"],
                   locations={"includeLocations": ["loc-1"], "excludeLocations": []}),
               pol("mobile", {"includeUsers": ["All"]}, grant=["compliantDevice"],
                   platforms={"includePlatforms": ["android", "iOS"], "excludePlatforms": []}),
               pol("legacy", {"includeUsers": ["All"]}, grant=["block"], clientAppTypes=["exchangeActiveSync", "other"]),
               pol("risky", {"includeUsers": ["All"]}, signInRiskLevels=["high"]),
               pol("plain", {"includeUsers": ["All"]}, clientAppTypes=["all"])], locations=locations)
    assert got["plain"]["applies"] is True and got["plain"]["dependsOn"] == []
    for name, condition in (("country block", "location"), ("mobile", "device platform"), ("legacy", "client app"),
                            ("risky", "sign-in risk")):
        assert got[name]["applies"] == "dependsOnSignIn", name
        assert [d["condition"] for d in got[name]["dependsOn"]] == [condition]
    assert got["country block"]["dependsOn"][0]["detail"] == 'from "Blocked countries"'


def test_roles_and_unknown_memberships() -> None:
    admin = "62e90394-69f5-4237-9190-012177145e10"
    policies = [pol("admins", {"includeRoles": [admin]}), pol("group", {"includeGroups": ["g-x"]})]
    got = run(policies, roles=None, chains=None)
    assert got["admins"]["applies"] is None and "roles" in got["admins"]["unknown"][0]
    assert got["group"]["applies"] is None and "group memberships" in got["group"]["unknown"][0]
    assert set(run(policies, roles={admin})) == {"admins"}
    assert run(policies, roles=set()) == {}


def test_requirements() -> None:
    got = run([pol("or", {"includeUsers": ["All"]}, grant=["compliantDevice", "domainJoinedDevice"]),
               pol("and", {"includeUsers": ["All"]}, grant=["mfa", "compliantDevice"], operator="AND"),
               pol("block", {"includeUsers": ["All"]}, grant=["block"])])
    assert got["or"]["requires"]["text"] == ("requires a device marked compliant (Intune) or a Microsoft Entra hybrid "
                                             "joined device")
    assert got["and"]["requires"]["text"] == "requires multifactor authentication and a device marked compliant (Intune)"
    assert got["block"]["requires"]["block"] is True and got["block"]["requires"]["text"] == "blocks access"
    assert list(got)[0] == "block", "enforced blocking policies come first"
