"""The emulated account surfaces over real HTTPS: registration details, directory roles and PIM eligibility,
subscribed SKUs and licence states, risky users — shapes, paging, permission and licence errors, control hooks
(facts and sources in docs/graph-facts-account.md)."""

from __future__ import annotations

from typing import Any

import httpx

from entra_mcp.devtenant.graph_account import GLOBAL_ADMIN, HELPDESK_ADMIN, USER_ADMIN, account_examples
from entra_mcp.devtenant.server import RunningEmulator
from tests._graph_fixtures import control, graph, mutate, pages


def _all(client: httpx.Client, url: str, params: dict[str, str] | None = None) -> list[dict[str, Any]]:
    return [item for page in pages(client, url, params) for item in page["value"]]


def test_registration_details_shape_paging_and_admin_flag(emulator: RunningEmulator) -> None:
    t = emulator.tenant()
    ex = account_examples(t)
    with graph(emulator) as c:
        rows = _all(c, "/reports/authenticationMethods/userRegistrationDetails")
    by_id = {x["id"]: x for x in rows}
    assert set(by_id) == set(t.users)
    row = by_id[ex["no_mfa_user"]]
    assert row["isMfaRegistered"] is False and row["methodsRegistered"] == [] and row["userType"] == "member"
    assert by_id[ex["no_sspr_user"]]["isSsprRegistered"] is False and by_id[ex["no_sspr_user"]]["isMfaRegistered"]
    assert by_id[ex["global_admin"]]["isAdmin"] is True
    assert by_id[ex["role_group_member"]]["isAdmin"] is True  # a role through a role-assignable group
    assert by_id[ex["sspr_ready_user"]]["isAdmin"] is False
    assert {"isSsprEnabled", "isSsprCapable", "isPasswordlessCapable", "lastUpdatedDateTime",
            "userPreferredMethodForSecondaryAuthentication", "userDisplayName", "userPrincipalName"} <= set(row)


REG = "/reports/authenticationMethods/userRegistrationDetails"


def test_registration_details_take_exactly_the_documented_query_options(emulator: RunningEmulator) -> None:
    """Only $filter (on the properties and operators the v1.0 resource page names) and $orderby (userDisplayName,
    userPrincipalName) are documented for this list: those work, and page by @odata.nextLink with the order kept;
    $top, $select and the rest are refused, as are filters on other properties and the directory's advanced operators
    (docs/graph-facts-account.md has the sources)."""
    t = emulator.tenant()
    ex = account_examples(t)
    with graph(emulator) as c:
        every = {x["id"]: x for x in _all(c, REG)}
        refused = {opt: c.get(REG, params={opt: value}) for opt, value in (
            ("$top", "5"), ("$select", "id,isAdmin"), ("$count", "true"), ("$search", '"userDisplayName:a"'),
            ("$skip", "5"), ("$expand", "x"))}
        bad_filters = {f: c.get(REG, params={"$filter": f}) for f in (
            "isAdmin eq true", f"id eq '{ex['global_admin']}'", "userType eq 'guest'", "isMfaRegistered ne true",
            "endswith(userPrincipalName,'.com')", "lastUpdatedDateTime ge 2020-01-01T00:00:00Z")}
        bad_orders = {o: c.get(REG, params={"$orderby": o}).status_code for o in (
            "isAdmin", "id", "userDisplayName,userPrincipalName", "userPrincipalName sideways")}
        no_mfa = _all(c, REG, {"$filter": "isMfaRegistered eq false"})
        phone = _all(c, REG, {"$filter": "methodsRegistered/any(m:m eq 'mobilePhone')"})
        upn = every[ex["no_mfa_user"]]["userPrincipalName"]
        by_upn = _all(c, REG, {"$filter": f"startswith(userPrincipalName,'{upn[:-3]}') and isSsprEnabled eq true"})
        up = _all(c, REG, {"$orderby": "userDisplayName"})
        mfa_up = _all(c, REG, {"$filter": "isMfaCapable eq true", "$orderby": "userPrincipalName asc"})
    for opt, r in refused.items():
        assert r.status_code == 400 and opt in r.json()["error"]["message"], (opt, r.text)
    assert {r.status_code for r in bad_filters.values()} == {400}, {f: r.text for f, r in bad_filters.items()}
    assert "ConsistencyLevel" not in bad_filters["isMfaRegistered ne true"].text, "no advanced queries on this API"
    assert set(bad_orders.values()) == {400}, bad_orders
    assert {x["id"] for x in no_mfa} == {i for i, x in every.items() if x["isMfaRegistered"] is False} >= {ex["no_mfa_user"]}
    assert {x["id"] for x in phone} == {i for i, x in every.items() if "mobilePhone" in x["methodsRegistered"]} != set()
    assert {x["id"] for x in by_upn} == {i for i, x in every.items()
                                         if x["userPrincipalName"].lower().startswith(upn[:-3].lower()) and x["isSsprEnabled"]}
    assert [x["id"] for x in up] == sorted(every, key=lambda i: (every[i]["userDisplayName"].casefold(), i))
    assert [x["id"] for x in mfa_up] == sorted((i for i, x in every.items() if x["isMfaCapable"]),
                                               key=lambda i: (every[i]["userPrincipalName"].casefold(), i))


def test_registration_details_keep_their_order_across_pages(fresh_emulator: Any) -> None:
    """$orderby over more than one page (100 a page): each nextLink goes on where the last page stopped, in either
    direction, case-insensitively, nothing twice or left out."""
    emu = fresh_emulator(size="small", seed=1)
    domain = emu.tenant().domain
    mutate(emu, *[{"op": "create_user", "set": {"displayName": f"{'aBcD'[n % 4]}order {n:03d}",
                                                "userPrincipalName": f"{'XyZ'[n % 3]}order{n:03d}@{domain}"}}
                  for n in range(120)])
    with graph(emu) as c:
        every = {x["id"]: x for x in _all(c, REG)}
        down = pages(c, REG, {"$orderby": "userPrincipalName desc"})
        up = pages(c, REG, {"$orderby": "userDisplayName asc"})
    assert len(every) > 150 and len(down) > 1 and len(up) > 1
    assert [x["id"] for page in down for x in page["value"]] == sorted(
        every, key=lambda i: (every[i]["userPrincipalName"].casefold(), i), reverse=True)
    assert [x["id"] for page in up for x in page["value"]] == sorted(
        every, key=lambda i: (every[i]["userDisplayName"].casefold(), i))


def test_roles_definitions_assignments_scopes_and_groups(emulator: RunningEmulator) -> None:
    ex = account_examples(emulator.tenant())
    with graph(emulator) as c:
        defs = {d["id"]: d for d in _all(c, "/roleManagement/directory/roleDefinitions")}
        assigns = _all(c, "/roleManagement/directory/roleAssignments")
        one = c.get("/roleManagement/directory/roleAssignments",
                    params={"$filter": f"principalId eq '{ex['global_admin']}'"}).json()["value"]
        elig = _all(c, "/roleManagement/directory/roleEligibilityScheduleInstances")
    assert defs[GLOBAL_ADMIN]["displayName"] == "Global Administrator" and defs[GLOBAL_ADMIN]["templateId"] == GLOBAL_ADMIN
    assert {a["directoryScopeId"] for a in assigns} == {"/", f"/administrativeUnits/{ex['au_id']}"}
    assert [a["roleDefinitionId"] for a in one] == [GLOBAL_ADMIN]
    assert any(a["principalId"] == ex["role_group"] and a["roleDefinitionId"] == USER_ADMIN for a in assigns)
    assert any(a["principalId"] == ex["au_helpdesk_admin"] and a["roleDefinitionId"] == HELPDESK_ADMIN for a in assigns)
    pim = [e for e in elig if e["principalId"] == ex["pim_eligible_admin"]]
    assert pim and pim[0]["roleDefinitionId"] == GLOBAL_ADMIN and pim[0]["memberType"] == "Direct"
    assert pim[0]["startDateTime"] and pim[0]["endDateTime"]


def test_skus_licence_states_and_risky_users(emulator: RunningEmulator) -> None:
    ex = account_examples(emulator.tenant())
    with graph(emulator) as c:
        skus = c.get("/subscribedSkus").json()["value"]
        states = c.get("/users", params={"$select": "id,licenseAssignmentStates",
                                         "$filter": f"id eq '{ex['licence_CountViolation_user']}'"}).json()["value"]
        risky = {u["id"]: u for u in _all(c, "/identityProtection/riskyUsers")}
    e5 = next(s for s in skus if s["skuPartNumber"] == "SPE_E5")
    assert e5["consumedUnits"] >= e5["prepaidUnits"]["enabled"]  # E5 is over-assigned: CountViolation comes from it
    assert {"servicePlanId", "servicePlanName", "provisioningStatus", "appliesTo"} <= set(e5["servicePlans"][0])
    assert states[0]["licenseAssignmentStates"][0]["error"] == "CountViolation"
    assert risky[ex["risky_user"]]["riskLevel"] == "high" and risky[ex["risky_user"]]["riskState"] == "atRisk"
    assert risky[ex["remediated_user"]]["riskState"] == "remediated"
    assert {"riskDetail", "riskLastUpdatedDateTime", "isDeleted", "isProcessing", "userPrincipalName"} <= set(risky[ex["risky_user"]])


def test_permission_and_licence_errors(fresh_emulator: Any) -> None:
    emu = fresh_emulator(size="small", seed=1, tenants=2)  # tenant 1 (fabrikam) has no premium licence
    with graph(emu, 1) as c:
        r = c.get("/reports/authenticationMethods/userRegistrationDetails")
        assert r.status_code == 403 and r.json()["error"]["code"] == "Authentication_RequestFromNonPremiumTenantOrB2CTenant"
        r = c.get("/identityProtection/riskyUsers")
        assert r.status_code == 403
        r = c.get("/roleManagement/directory/roleEligibilityScheduleInstances")
        assert r.status_code == 400 and r.json()["error"]["code"] == "AadPremiumLicenseRequired"
        assert c.get("/roleManagement/directory/roleAssignments").status_code == 200  # roles need no premium licence
    tid = emu.tenant(0).tenant_id
    cid = emu.sync_app(0).client_id
    control(emu, "POST", f"/tenants/{tid}/registrations/{cid}/roles",
            {"revoke": ["RoleManagement.Read.Directory", "IdentityRiskyUser.Read.All"]})
    with graph(emu, 0) as c:
        for path in ("/roleManagement/directory/roleAssignments", "/identityProtection/riskyUsers"):
            r = c.get(path)
            assert r.status_code == 403 and r.json()["error"]["code"] == "Authorization_RequestDenied"
        assert c.get("/subscribedSkus").status_code == 200
    control(emu, "POST", f"/tenants/{tid}/registrations/{cid}/roles", {"grant": ["RoleManagement.Read.Directory"]})
    mutate(emu, {"op": "set_licence_tier", "tier": "P1"})
    with graph(emu, 0) as c:
        assert c.get("/reports/authenticationMethods/userRegistrationDetails").status_code == 200
        r = c.get("/roleManagement/directory/roleEligibilityScheduleInstances")
        assert r.status_code == 400 and r.json()["error"]["code"] == "AadPremiumLicenseRequired"


def test_control_hooks_change_what_graph_answers(fresh_emulator: Any) -> None:
    emu = fresh_emulator(size="small", seed=1)
    t = emu.tenant()
    ex = account_examples(t)
    uid = ex["sspr_ready_user"]
    made = mutate(emu, {"op": "assign_role", "principal": uid, "role": GLOBAL_ADMIN},
                  {"op": "set_registration", "id": uid, "set": {"isSsprRegistered": False}},
                  {"op": "set_risk", "id": uid, "riskLevel": "medium"})
    with graph(emu) as c:
        one = c.get("/roleManagement/directory/roleAssignments", params={"$filter": f"principalId eq '{uid}'"}).json()["value"]
        reg = next(x for x in _all(c, "/reports/authenticationMethods/userRegistrationDetails") if x["id"] == uid)
        risk = c.get("/identityProtection/riskyUsers", params={"$filter": f"id eq '{uid}'"}).json()["value"]
    assert [a["id"] for a in one] == [made[0]["id"]]
    assert reg["isSsprRegistered"] is False and reg["isAdmin"] is True
    assert risk[0]["riskLevel"] == "medium" and risk[0]["riskState"] == "atRisk"
    mutate(emu, {"op": "remove_role", "id": made[0]["id"]})
    with graph(emu) as c:
        assert c.get("/roleManagement/directory/roleAssignments",
                     params={"$filter": f"principalId eq '{uid}'"}).json()["value"] == []


def test_objects_match_msgraph_sdk_models(emulator: RunningEmulator) -> None:
    """Every object of every account surface parses into msgraph-sdk's model with nothing left over."""
    from msgraph.generated.models.risky_user import RiskyUser
    from msgraph.generated.models.subscribed_sku import SubscribedSku
    from msgraph.generated.models.unified_role_assignment import UnifiedRoleAssignment
    from msgraph.generated.models.unified_role_definition import UnifiedRoleDefinition
    from msgraph.generated.models.unified_role_eligibility_schedule_instance import UnifiedRoleEligibilityScheduleInstance
    from msgraph.generated.models.user import User
    from msgraph.generated.models.user_registration_details import UserRegistrationDetails

    from tests.graph_models import check_page

    ex = account_examples(emulator.tenant())
    with graph(emulator) as c:
        for path, model in (("/reports/authenticationMethods/userRegistrationDetails", UserRegistrationDetails),
                            ("/roleManagement/directory/roleDefinitions", UnifiedRoleDefinition),
                            ("/roleManagement/directory/roleAssignments", UnifiedRoleAssignment),
                            ("/roleManagement/directory/roleEligibilityScheduleInstances", UnifiedRoleEligibilityScheduleInstance),
                            ("/subscribedSkus", SubscribedSku),
                            ("/identityProtection/riskyUsers", RiskyUser)):
            for page in pages(c, path):
                check_page(page, model)
        page = c.get("/users", params={"$select": "id,licenseAssignmentStates,assignedLicenses",
                                       "$filter": f"id eq '{ex['licence_DependencyViolation_user']}'"}).json()
        check_page(page, User)
