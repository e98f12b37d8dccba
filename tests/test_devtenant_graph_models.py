"""Every object the emulated Graph serves is a valid instance of Microsoft's published model (msgraph-sdk), read
over real HTTPS: no property the model lacks, no value of the wrong type (tests/graph_models.py)."""

from __future__ import annotations

from typing import Any, Iterator

import httpx
import pytest
from msgraph.generated.models.app_role_assignment import AppRoleAssignment
from msgraph.generated.models.application import Application
from msgraph.generated.models.directory_object import DirectoryObject
from msgraph.generated.models.domain import Domain
from msgraph.generated.models.group import Group
from msgraph.generated.models.organization import Organization
from msgraph.generated.models.service_principal import ServicePrincipal
from msgraph.generated.models.user import User

from entra_mcp.devtenant.odata import (
    APPLICATION_PROPERTIES,
    GROUP_PROPERTIES,
    SERVICE_PRINCIPAL_PROPERTIES,
    USER_PROPERTIES,
)
from entra_mcp.devtenant.server import RunningEmulator
from tests._graph_fixtures import control, graph, mutate, pages
from tests.graph_models import check_object, check_page, one_of_each_shape

EVERY = {
    "users": ",".join(sorted(USER_PROPERTIES)),
    "groups": ",".join(sorted(GROUP_PROPERTIES)),
    "applications": ",".join(sorted(APPLICATION_PROPERTIES)),
    "servicePrincipals": ",".join(sorted(SERVICE_PRINCIPAL_PROPERTIES)),
}
MODEL = {"users": User, "groups": Group, "applications": Application, "servicePrincipals": ServicePrincipal}


@pytest.fixture(scope="module")
def client(emulator: RunningEmulator) -> Iterator[httpx.Client]:
    with graph(emulator) as c:
        yield c


def every_page(client: httpx.Client, path: str, params: dict[str, str] | None = None) -> list[dict[str, Any]]:
    return pages(client, path, {"$top": "999", **(params or {})})


# ------------------------------------------------------------------------------------------------ the checker

def test_the_checker_fails_on_unknown_properties_and_wrong_types() -> None:
    good = {"id": "1", "displayName": "Ada", "accountEnabled": True, "businessPhones": ["+1 555"],
            "signInActivity": {"lastSignInDateTime": "2026-01-02T03:04:05Z",
                               "lastNonInteractiveSignInDateTime": "0001-01-01T00:00:00Z"},
            "assignedLicenses": [{"skuId": "6fd2c87f-b296-4371-a0a4-b0da93b2e0f7", "disabledPlans": []}],
            "mail": None}
    check_object(good, User)
    bad = {**good, "accountEnabled": "yes", "businessPhones": [5], "nickname": "x",
           "signInActivity": {"lastSignInDateTime": "yesterday", "extra": 1}}
    with pytest.raises(AssertionError) as err:
        check_object(bad, User)
    text = str(err.value)
    for where in ("$.accountEnabled", "$.businessPhones[0]", "$.nickname", "$.signInActivity.extra",
                  "$.signInActivity.lastSignInDateTime"):
        assert where in text, text
    with pytest.raises(AssertionError, match="members@delta"):
        check_page({"value": [{"id": "1", "members@delta": []}]}, User, delta=True)
    with pytest.raises(AssertionError, match="@removed"):
        check_page({"value": [{"id": "1", "@removed": {"reason": "gone"}}]}, Group, delta=True)
    with pytest.raises(AssertionError, match="deltaLink"):
        check_page({"value": [], "@odata.deltaLink": "https://x"}, User)
    # a long page is parsed by one item of each shape: another enum member or date layout is another shape
    a = {"id": "1", "status": {"errorCode": 0}, "conditionalAccessStatus": "success",
         "createdDateTime": "2026-01-02T03:04:05Z", "appId": "6fd2c87f-b296-4371-a0a4-b0da93b2e0f7"}
    same = {**a, "id": "2", "status": {"errorCode": 50126}, "appId": "0a1b2c3d-b296-4371-a0a4-b0da93b2e0f7"}
    others = [{**a, "conditionalAccessStatus": "notApplied"}, {**a, "createdDateTime": "2026-01-02T03:04:05.1Z"},
              {**a, "status": {"errorCode": "0"}}, {**a, "appId": "portal"}, {k: v for k, v in a.items() if k != "id"}]
    assert one_of_each_shape([a, same, *others]) == [a, *others]


# ------------------------------------------------------------------------------------ collections, every property

@pytest.mark.parametrize("area", ["users", "groups", "applications", "servicePrincipals"])
def test_collections_with_every_property(client: httpx.Client, area: str) -> None:
    top = {"$top": "500"} if area == "users" else {}  # signInActivity caps the page at 500
    seen = 0
    for page in pages(client, f"/{area}", {"$select": EVERY[area], **top}):
        seen += len(check_page(page, MODEL[area]))
    assert seen > 0
    for page in every_page(client, f"/{area}"):
        check_page(page, MODEL[area])


def test_single_objects_and_manager(emulator: RunningEmulator, client: httpx.Client) -> None:
    tenant = emulator.tenant()
    uid = next(u for u in sorted(tenant.users) if tenant.managers.get(u))
    check_object(client.get(f"/users/{uid}", params={"$select": EVERY["users"]}).json(), User)
    expanded = client.get(f"/users/{uid}", params={"$expand": "manager"}).json()
    assert expanded["manager"]["id"] == tenant.managers[uid]
    check_object(expanded, User)
    for page in every_page(client, "/users", {"$expand": "manager", "$select": "id,displayName"}):
        check_page(page, User)
    manager = client.get(f"/users/{uid}/manager").json()
    check_object(manager, DirectoryObject)
    for area in ("groups", "applications", "servicePrincipals"):
        oid = sorted(tenant.area_objects(area))[0]
        check_object(client.get(f"/{area}/{oid}").json(), MODEL[area])


def test_directory_object_collections(emulator: RunningEmulator, client: httpx.Client) -> None:
    tenant = emulator.tenant()
    uid = next(u for u in sorted(tenant.users) if tenant.member_of(u))
    gid = max(tenant.members, key=lambda g: len(tenant.members[g]))
    for path in (f"/users/{uid}/memberOf", f"/users/{uid}/transitiveMemberOf", f"/groups/{gid}/members",
                 f"/groups/{gid}/transitiveMembers"):
        items = [item for page in every_page(client, path) for item in check_page(page, DirectoryObject)]
        assert items, path
        assert all(type(i) is not DirectoryObject for i in items), "@odata.type picks the model"


def test_app_role_assignments_and_domains(emulator: RunningEmulator, client: httpx.Client) -> None:
    tenant = emulator.tenant()
    seen = 0
    for sp in sorted(tenant.service_principals):
        for page in every_page(client, f"/servicePrincipals/{sp}/appRoleAssignedTo"):
            seen += len(check_page(page, AppRoleAssignment))
    assert seen > 0
    assert check_page(client.get("/domains").json(), Domain)


def test_organization(fresh_emulator: Any) -> None:
    emu: RunningEmulator = fresh_emulator(size="small", seed=1)
    tid, cid = emu.tenant().tenant_id, emu.sync_app().client_id
    control(emu, "PUT", f"/tenants/{tid}/registrations/{cid}/roles", {"grant": ["Organization.Read.All"]})
    with graph(emu) as c:
        assert check_page(c.get("/organization").json(), Organization)


# ---------------------------------------------------------------------------------------------------- delta

def test_delta_pages_with_removals_and_member_changes(fresh_emulator: Any) -> None:
    emu: RunningEmulator = fresh_emulator(size="small", seed=3)
    tenant = emu.tenant()
    with graph(emu) as c:
        selects = {"users": EVERY["users"].replace("signInActivity,", "") + ",manager",
                   "groups": "displayName,groupTypes,securityEnabled,mailEnabled,members",
                   "applications": "displayName,appId,passwordCredentials,keyCredentials,appRoles",
                   "servicePrincipals": "displayName,appId,accountEnabled,appRoles,servicePrincipalType"}
        links = {}
        for area, select in selects.items():
            round_pages = pages(c, f"/{area}/delta", {"$select": select})
            for page in round_pages:
                check_page(page, MODEL[area], delta=True)
            links[area] = round_pages[-1]["@odata.deltaLink"]
        users = sorted(tenant.users)
        gid = next(g for g, ms in sorted(tenant.members.items()) if ms)
        app = sorted(tenant.applications)[0]
        mutate(emu,
               {"op": "update_user", "id": users[0], "set": {"jobTitle": "Model Checker"}},
               {"op": "set_manager", "user": users[1], "manager": users[2]},
               {"op": "soft_delete", "id": users[3]},
               {"op": "hard_delete", "id": users[4]},
               {"op": "add_member", "group": gid, "member": users[5]},
               {"op": "remove_member", "group": gid, "member": next(iter(tenant.members[gid]))},
               {"op": "add_password_credential", "id": app, "displayName": "rotation"})
        annotations = {"@removed": 0, "members@delta": 0}
        for area, link in links.items():
            for page in pages(c, link):
                for item in check_page(page, MODEL[area], delta=True):
                    assert item is not None
                for raw in page["value"]:
                    for key in annotations:
                        annotations[key] += key in raw
        assert annotations["@removed"] >= 2 and annotations["members@delta"] >= 1, annotations


# ------------------------------------------------------------------------ evidence beyond the directory

EVIDENCE_ROLES = ["Directory.Read.All", "AuditLog.Read.All", "Device.Read.All", "Policy.Read.All",
                  "RoleManagement.Read.Directory", "IdentityRiskyUser.Read.All", "Organization.Read.All"]


def test_evidence_surfaces(fresh_emulator: Any) -> None:
    """Sign-ins, devices, Conditional Access, owners, registration details, roles, licences, risky users."""
    from msgraph.generated.models.conditional_access_policy import ConditionalAccessPolicy
    from msgraph.generated.models.device import Device
    from msgraph.generated.models.named_location import NamedLocation
    from msgraph.generated.models.risky_user import RiskyUser
    from msgraph.generated.models.sign_in import SignIn
    from msgraph.generated.models.subscribed_sku import SubscribedSku
    from msgraph.generated.models.unified_role_assignment import UnifiedRoleAssignment
    from msgraph.generated.models.unified_role_definition import UnifiedRoleDefinition
    from msgraph.generated.models.unified_role_eligibility_schedule_instance import UnifiedRoleEligibilityScheduleInstance
    from msgraph.generated.models.user_registration_details import UserRegistrationDetails

    emu: RunningEmulator = fresh_emulator(size="small", seed=1)
    tenant = emu.tenant()
    tid, cid = tenant.tenant_id, emu.sync_app().client_id
    control(emu, "PUT", f"/tenants/{tid}/registrations/{cid}/roles", {"grant": EVIDENCE_ROLES})
    collections = {
        "/auditLogs/signIns": SignIn,
        "/devices": Device,
        "/identity/conditionalAccess/policies": ConditionalAccessPolicy,
        "/identity/conditionalAccess/namedLocations": NamedLocation,
        "/reports/authenticationMethods/userRegistrationDetails": UserRegistrationDetails,
        "/roleManagement/directory/roleDefinitions": UnifiedRoleDefinition,
        "/roleManagement/directory/roleAssignments": UnifiedRoleAssignment,
        "/roleManagement/directory/roleEligibilityScheduleInstances": UnifiedRoleEligibilityScheduleInstance,
        "/subscribedSkus": SubscribedSku,
        "/identityProtection/riskyUsers": RiskyUser,
    }
    failures = []
    with graph(emu) as c:
        for path, model in collections.items():
            try:  # the first page of each (sign-ins are throttled to a few requests per 10 s, as Graph does)
                page = c.get(path).json()
                if path == "/auditLogs/signIns":  # 1,000 generated events: one of each shape is parsed (~21 s CPU less)
                    page = {**page, "value": one_of_each_shape(page.get("value") or [])}
                n = len(check_page(page, model))
                assert n > 0, f"{path}: nothing served"
            except AssertionError as exc:
                failures.append(f"{path}: {exc}")
        try:
            for page in pages(c, "/devices/delta"):
                check_page(page, Device, delta=True)
            dev = sorted(tenant_devices(emu))[0]
            for path in (f"/devices/{dev}/registeredOwners", f"/devices/{dev}/registeredUsers"):
                for page in pages(c, path):
                    check_page(page, DirectoryObject)
            gid = next(g for g in sorted(tenant.groups) if owners_of(emu, g))
            for page in pages(c, f"/groups/{gid}/owners"):
                check_page(page, DirectoryObject)
            for page in pages(c, "/groups/delta", {"$select": "displayName,owners"}):
                check_page(page, Group, delta=True)
        except AssertionError as exc:
            failures.append(str(exc))
    assert not failures, "\n".join(failures)


def tenant_devices(emu: RunningEmulator) -> list[str]:
    from entra_mcp.devtenant.graph_access import access_of

    return list(access_of(emu.tenant()).devices)


def owners_of(emu: RunningEmulator, oid: str) -> list[str]:
    from entra_mcp.devtenant.graph_access import access_of

    return list(access_of(emu.tenant()).owners.get(oid, []))
