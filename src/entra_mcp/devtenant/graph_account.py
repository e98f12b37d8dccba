"""The emulated Graph surfaces of an account's wider story (docs/graph-facts-account.md has the sources):

  GET /reports/authenticationMethods/userRegistrationDetails   AuditLog.Read.All; Entra ID P1/P2 (else 403
                                                               Authentication_RequestFromNonPremiumTenantOrB2CTenant);
                                                               only $filter and $orderby are documented (on the
                                                               properties the resource page names): others refused
  GET /roleManagement/directory/roleDefinitions                RoleManagement.Read.Directory (or Directory.Read.All)
  GET /roleManagement/directory/roleAssignments                same; active assignments, directoryScopeId "/" or
                                                               "/administrativeUnits/{id}", principals may be
                                                               role-assignable groups
  GET /roleManagement/directory/roleEligibilityScheduleInstances   same (or RoleEligibilitySchedule.Read.Directory);
                                                               P2 only, else 400 AadPremiumLicenseRequired
  GET /subscribedSkus                                          LicenseAssignment.Read.All (or Organization.Read.All,
                                                               Directory.Read.All); no query options
  GET /identityProtection/riskyUsers                           IdentityRiskyUser.Read.All; P2 only (else 403)

User licence states (`licenseAssignmentStates`) live on the user objects themselves and come through /users.

The data sits in `AccountData` on `EmulatedTenant.account`, built by `generate_account` (deterministic from the
tenant id) and changed through `ACCOUNT_OPS` (control API mutations). `account_examples(tenant)` names one object of
each interesting kind for tests.
"""

from __future__ import annotations

import random
import re
import struct
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Callable

from entra_mcp.devtenant.model import EmulatedTenant, MutationError, iso
from entra_mcp.devtenant.odata import ENTITY_BY_KIND, EntityType, GraphFailure, compile_filter

if TYPE_CHECKING:
    from entra_mcp.devtenant.graph import Caller, GraphService, Reply

AUDIT_READ = frozenset({"AuditLog.Read.All"})
ROLE_READ = frozenset({"RoleManagement.Read.Directory", "RoleManagement.Read.All", "RoleManagement.ReadWrite.Directory",
                       "Directory.Read.All", "Directory.ReadWrite.All"})
ELIGIBILITY_READ = ROLE_READ | {"RoleEligibilitySchedule.Read.Directory", "RoleEligibilitySchedule.ReadWrite.Directory"}
SKU_READ = frozenset({"LicenseAssignment.Read.All", "Organization.Read.All", "Organization.ReadWrite.All",
                      "Directory.Read.All", "Directory.ReadWrite.All"})
RISK_READ = frozenset({"IdentityRiskyUser.Read.All", "IdentityRiskyUser.ReadWrite.All"})

# Built-in role template ids (permissions-reference.md, "All roles"); a built-in role definition's id is its template id
GLOBAL_ADMIN = "62e90394-69f5-4237-9190-012177145e10"
PRIVILEGED_ROLE_ADMIN = "e8611ab8-c189-46e8-94e1-60213ab1f814"
PRIVILEGED_AUTH_ADMIN = "7be44c8a-adaf-4e2a-84d6-ab2649e08a13"
USER_ADMIN = "fe930be7-5e62-47db-91af-98c3a49a38b1"
HELPDESK_ADMIN = "729827e3-9c14-49f7-bb1b-9608f156bbb8"
PASSWORD_ADMIN = "966707d0-3269-4727-9be2-8c3a10f19b9d"
AUTH_ADMIN = "c4e39bd9-1100-46d3-8c65-fb160da0071f"
SECURITY_ADMIN = "194ae4cb-b126-40b2-bd5b-6091b380977d"
EXCHANGE_ADMIN = "29232cdf-9323-42fd-ade2-1d097af3e4de"
GROUPS_ADMIN = "fdd7a751-b60b-444a-984c-02652fe8fa1c"
DIRECTORY_READERS = "88d8e3e3-8f55-4a1e-953a-9b9898b8876b"
REPORTS_READER = "4a5d8f65-41da-4de4-8968-e035b65339cf"
GLOBAL_READER = "f2ef992c-3afb-46b9-b7cf-a126ee74c451"
APPLICATION_ADMIN = "9b895d92-2cd3-44c7-9d02-a6ac2d5ea5c3"

ROLE_DEFINITIONS: tuple[tuple[str, str, str, bool], ...] = (
    (GLOBAL_ADMIN, "Global Administrator", "Can manage all aspects of Microsoft Entra ID and Microsoft services that use Microsoft Entra identities.", True),
    (PRIVILEGED_ROLE_ADMIN, "Privileged Role Administrator", "Can manage role assignments in Microsoft Entra ID, and all aspects of Privileged Identity Management.", True),
    (PRIVILEGED_AUTH_ADMIN, "Privileged Authentication Administrator", "Can access to view, set and reset authentication method information for any user (admin or non-admin).", True),
    (USER_ADMIN, "User Administrator", "Can manage all aspects of users and groups, including resetting passwords for limited admins.", True),
    (HELPDESK_ADMIN, "Helpdesk Administrator", "Can reset passwords for non-administrators and Helpdesk Administrators.", True),
    (PASSWORD_ADMIN, "Password Administrator", "Can reset passwords for non-administrators and Password Administrators.", True),
    (AUTH_ADMIN, "Authentication Administrator", "Can access to view, set and reset authentication method information for any non-admin user.", True),
    (SECURITY_ADMIN, "Security Administrator", "Can read security information and reports, and manage configuration in Microsoft Entra ID and Office 365.", True),
    (EXCHANGE_ADMIN, "Exchange Administrator", "Can manage all aspects of the Exchange product.", False),
    (GROUPS_ADMIN, "Groups Administrator", "Members of this role can create/manage groups, create/manage groups settings like naming and expiration policies, and view groups activity and audit reports.", False),
    (DIRECTORY_READERS, "Directory Readers", "Can read basic directory information. Commonly used to grant directory read access to applications and guests.", False),
    (REPORTS_READER, "Reports Reader", "Can read sign-in and audit reports.", False),
    (GLOBAL_READER, "Global Reader", "Can read everything that a Global Administrator can, but not update anything.", True),
    (APPLICATION_ADMIN, "Application Administrator", "Can create and manage all aspects of app registrations and enterprise apps.", True),
)

# subscribedSkus of every generated tenant: (skuId, skuPartNumber, prepaid enabled units, service plans)
_EXCHANGE_PLAN = ("efb87545-963c-4e0d-99df-69c6916d9eb0", "EXCHANGE_S_ENTERPRISE")
_TEAMS_PLAN = ("57ff2da0-773e-42df-b2af-ffb7a2317929", "TEAMS1")
_SHAREPOINT_PLAN = ("5dbe027f-2339-4123-9542-606e4d348a72", "SHAREPOINTENTERPRISE")
_OFFICE_PLAN = ("43de0ff5-c92c-492b-9116-175376d08c38", "OFFICESUBSCRIPTION")
_AAD_P1_PLAN = ("41781fb2-bc02-4b7c-bd55-b576c07bb09d", "AAD_PREMIUM")
_AAD_P2_PLAN = ("eec0eb4f-6444-4f95-aba0-50c24d67f998", "AAD_PREMIUM_P2")
_INTUNE_PLAN = ("c1ec4a95-1f05-45b3-a911-aa3fa01094f5", "INTUNE_A")
SKU_M365_E3 = "05e9a617-0261-44cb-a5d2-6de20f5d2e0e"
SKU_M365_E5 = "06ebc4ee-1bb5-47dd-8120-11324bc54e06"
SKU_O365_E3 = "6fd2c87f-b296-42f0-b197-1e91e994b900"
SKU_AAD_P1 = "078d2b04-f1bd-4111-bbd4-b4b1b354cef4"
SKU_AAD_P2 = "84a661c4-e949-4bd2-a560-ed7766fcaf2b"
_SKUS: tuple[tuple[str, str, tuple[tuple[str, str], ...]], ...] = (
    (SKU_M365_E3, "SPE_E3", (_EXCHANGE_PLAN, _TEAMS_PLAN, _SHAREPOINT_PLAN, _OFFICE_PLAN, _AAD_P1_PLAN, _INTUNE_PLAN)),
    (SKU_M365_E5, "SPE_E5", (_EXCHANGE_PLAN, _TEAMS_PLAN, _SHAREPOINT_PLAN, _OFFICE_PLAN, _AAD_P1_PLAN, _AAD_P2_PLAN, _INTUNE_PLAN)),
    (SKU_O365_E3, "ENTERPRISEPACK", (_EXCHANGE_PLAN, _TEAMS_PLAN, _SHAREPOINT_PLAN, _OFFICE_PLAN)),
    (SKU_AAD_P1, "AAD_PREMIUM", (_AAD_P1_PLAN,)),
    (SKU_AAD_P2, "AAD_PREMIUM_P2", (_AAD_P1_PLAN, _AAD_P2_PLAN)),
)
LICENCE_ERRORS = ("CountViolation", "MutuallyExclusiveViolation", "DependencyViolation",
                  "ProhibitedInUsageLocationViolation", "UniquenessViolation", "Other")

REGISTRATION_DETAILS = EntityType("userRegistrationDetails", frozenset({
    "id", "isAdmin", "isMfaCapable", "isMfaRegistered", "isPasswordlessCapable", "isSsprCapable", "isSsprEnabled",
    "isSsprRegistered", "isSystemPreferredAuthenticationMethodEnabled", "lastUpdatedDateTime", "methodsRegistered",
    "systemPreferredAuthenticationMethods", "userDisplayName", "userPreferredMethodForSecondaryAuthentication",
    "userPrincipalName", "userType"}), None, {
    # what the v1.0 resource page documents, property by property (docs/graph-facts-account.md); nothing else
    "isMfaCapable": frozenset({"eq"}), "isMfaRegistered": frozenset({"eq"}), "isPasswordlessCapable": frozenset({"eq"}),
    "isSsprCapable": frozenset({"eq"}), "isSsprEnabled": frozenset({"eq"}), "isSsprRegistered": frozenset({"eq"}),
    "isSystemPreferredAuthenticationMethodEnabled": frozenset({"eq"}), "methodsRegistered": frozenset({"any"}),
    "systemPreferredAuthenticationMethods": frozenset({"any"}),
    "userPreferredMethodForSecondaryAuthentication": frozenset({"eq"}),
    "userPrincipalName": frozenset({"eq", "startswith"}), "userDisplayName": frozenset({"eq", "startswith"}),
})
REGISTRATION_OPTIONS = ("filter", "orderby")  # "supports only the $filter and $orderBy OData query parameters"

ROLE_DEFINITION = EntityType("unifiedRoleDefinition", frozenset({
    "id", "description", "displayName", "isBuiltIn", "isEnabled", "resourceScopes", "rolePermissions", "templateId",
    "version"}), None, {"id": frozenset({"eq", "in"}), "displayName": frozenset({"eq", "startswith"}),
                        "isBuiltIn": frozenset({"eq"}), "templateId": frozenset({"eq", "in"})})
ROLE_ASSIGNMENT = EntityType("unifiedRoleAssignment", frozenset({
    "id", "appScopeId", "condition", "directoryScopeId", "principalId", "roleDefinitionId"}), None, {
    "id": frozenset({"eq", "in"}), "principalId": frozenset({"eq", "in"}), "roleDefinitionId": frozenset({"eq", "in"}),
    "directoryScopeId": frozenset({"eq", "in"}), "appScopeId": frozenset({"eq", "in"})})
ELIGIBILITY_INSTANCE = EntityType("unifiedRoleEligibilityScheduleInstance", frozenset({
    "id", "appScopeId", "directoryScopeId", "endDateTime", "memberType", "principalId", "roleDefinitionId",
    "roleEligibilityScheduleId", "startDateTime"}), None, {
    "id": frozenset({"eq", "in"}), "principalId": frozenset({"eq", "in"}), "roleDefinitionId": frozenset({"eq", "in"}),
    "directoryScopeId": frozenset({"eq", "in"}), "memberType": frozenset({"eq"})})
RISKY_USER = EntityType("riskyUser", frozenset({
    "id", "isDeleted", "isProcessing", "riskDetail", "riskLastUpdatedDateTime", "riskLevel", "riskState",
    "userDisplayName", "userPrincipalName"}), None, {
    "id": frozenset({"eq", "in"}), "riskLevel": frozenset({"eq", "in"}), "riskState": frozenset({"eq", "in"}),
    "userPrincipalName": frozenset({"eq", "startswith"}),
    "riskLastUpdatedDateTime": frozenset({"eq", "ge", "le", "gt", "lt"})})

# the shared list shaper (GraphService._shape) projects an object by its entity's name
ENTITY_BY_KIND.update({e.name: e for e in (REGISTRATION_DETAILS, ROLE_DEFINITION, ROLE_ASSIGNMENT, ELIGIBILITY_INSTANCE,
                                            RISKY_USER)})

_DEFAULT_METHODS = ["microsoftAuthenticatorPush", "softwareOneTimePasscode", "mobilePhone"]
# executives are left out of the scenarios (the product escalates them); a superset of identity/ticket.py's pattern
_VIP_TITLE = re.compile(r"\b(chief|ceo|cfo|cto|coo|cio|ciso|cmo|president|vice president|vp|director|managing partner|"
                        r"general counsel|chair(man|woman|person)?)\b", re.I)


@dataclass
class AccountData:
    """One tenant's authentication, role, licence and risk facts (Graph-shaped dicts, id -> object)."""

    tier: str = "P2"  # "P2" | "P1" | "free": which premium features the tenant has
    role_definitions: dict[str, dict[str, Any]] = field(default_factory=dict)
    role_assignments: dict[str, dict[str, Any]] = field(default_factory=dict)
    eligibilities: dict[str, dict[str, Any]] = field(default_factory=dict)  # roleEligibilityScheduleInstances
    # user id -> the properties of userRegistrationDetails that differ from the default (registered for MFA and SSPR)
    registration: dict[str, dict[str, Any]] = field(default_factory=dict)
    registration_updated: str = "2026-01-01T00:00:00Z"
    risky_users: dict[str, dict[str, Any]] = field(default_factory=dict)
    skus: dict[str, dict[str, Any]] = field(default_factory=dict)
    administrative_units: dict[str, str] = field(default_factory=dict)  # id -> displayName
    counter: int = 0


def account_of(tenant: EmulatedTenant) -> AccountData:
    acc = getattr(tenant, "account", None)
    if acc is None:
        acc = AccountData(tier="P2" if tenant.premium else "free")
        tenant.account = acc
    return acc


def _rid(acc: AccountData, rng: random.Random | None = None) -> str:
    acc.counter += 1
    r = rng or random.Random(f"account-id/{acc.counter}")
    return str(_uuid(r))


def _sid(object_id: str) -> str:
    a, b, c, d = struct.unpack("<IIII", uuid.UUID(object_id).bytes_le)
    return f"S-1-12-1-{a}-{b}-{c}-{d}"


def _uuid(r: random.Random) -> str:
    n = r.getrandbits(128)
    h = f"{n:032x}"
    return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{'89ab'[n % 4]}{h[17:20]}-{h[20:]}"


# ----------------------------------------------------------------------------------------------------- generation
def generate_account(tenant: EmulatedTenant, now: datetime) -> AccountData:
    """Roles, registration details, licence states and risk for a generated tenant, deterministic from its id.

    Exercises every reset verdict: Global Administrators, a Helpdesk Administrator, a User Administrator held
    through a role-assignable group ("Identity Admins"), an AU-scoped Helpdesk Administrator, a PIM-eligible
    Global Administrator, users without MFA, SSPR registered and not, each licence-assignment error, risky users
    (at risk, remediated), guests."""
    r = random.Random(f"entra-mcp/account/{tenant.tenant_id}")
    acc = AccountData(tier="P2" if tenant.premium else "free")
    acc.registration_updated = iso(now - timedelta(hours=6))
    tenant.account = acc
    for rid, name, desc, _priv in ROLE_DEFINITIONS:
        acc.role_definitions[rid] = {
            "id": rid, "description": desc, "displayName": name, "isBuiltIn": True, "isEnabled": True,
            "resourceScopes": ["/"], "templateId": rid, "version": "1",
            "rolePermissions": [{"allowedResourceActions": [], "condition": None}],
        }
    for sku_id, part, plans in _SKUS:
        acc.skus[sku_id] = {
            "id": f"{tenant.tenant_id}_{sku_id}", "accountId": tenant.tenant_id, "accountName": tenant.display_name,
            "appliesTo": "User", "capabilityStatus": "Enabled", "consumedUnits": 0, "skuId": sku_id,
            "skuPartNumber": part,
            "prepaidUnits": {"enabled": 0, "lockedOut": 0, "suspended": 0, "warning": 0},
            "servicePlans": [{"servicePlanId": pid, "servicePlanName": pname, "provisioningStatus": "Success",
                              "appliesTo": "User"} for pid, pname in plans],
        }
    users = tenant.users
    members = [uid for uid, u in users.items() if u.get("userType") == "Member" and u.get("accountEnabled")]
    guests = [uid for uid, u in users.items() if u.get("userType") == "Guest"]
    plain = [uid for uid in members[2:]
             if not _VIP_TITLE.search(str(users[uid].get("jobTitle") or ""))
             and users[uid].get("onPremisesSyncEnabled") is None and not users[uid].get("passwordPolicies")]
    r.shuffle(plain)
    pool = iter(plain)  # cloud-only members: the people whose reset verdict each scenario decides
    taken_plain = set(plain)
    others = [uid for uid in members[2:] if uid not in taken_plain]
    r.shuffle(others)
    pool2 = iter(others)  # anyone else: licence errors and roles whose reset verdict is not under test

    def take() -> str:
        return next(pool)

    def take_other() -> str:
        return next(pool2, None) or next(pool)

    def assign(principal: str, role: str, scope: str = "/") -> None:
        aid = _uuid(r)
        acc.role_assignments[aid] = {"id": aid, "principalId": principal, "roleDefinitionId": role,
                                     "directoryScopeId": scope, "appScopeId": None, "condition": None}

    try:  # a tiny tenant runs out of people before the last scenarios: it keeps the ones it has
        # the CEO's office keeps its Global Administrators; IT holds the rest
        ga = [take(), take()]
        for uid in ga:
            assign(uid, GLOBAL_ADMIN)
        assign(take(), HELPDESK_ADMIN)
        assign(take(), PASSWORD_ADMIN)
        assign(take_other(), SECURITY_ADMIN)
        assign(take_other(), EXCHANGE_ADMIN)
        assign(take_other(), DIRECTORY_READERS)
        # an administrative unit with its own Helpdesk Administrator
        au = _uuid(r)
        acc.administrative_units[au] = "Paris Office"
        assign(take(), HELPDESK_ADMIN, f"/administrativeUnits/{au}")
        # a role-assignable group holding User Administrator: its two members are privileged through it
        gid = _uuid(r)
        tenant.groups[gid] = {
            "id": gid, "displayName": "Identity Admins", "description": "Role-assignable group: User Administrator",
            "mail": None, "mailNickname": "identityadmins", "mailEnabled": False, "securityEnabled": True,
            "groupTypes": [], "membershipRule": None, "membershipRuleProcessingState": None,
            "createdDateTime": iso(now - timedelta(days=400)), "onPremisesSyncEnabled": None, "visibility": "Private",
            "isAssignableToRole": True, "securityIdentifier": _sid(gid),
        }
        tenant.members[gid] = {take(): "user", take(): "user"}
        assign(gid, USER_ADMIN)
        # PIM: one eligible Global Administrator (no active role), one eligible Privileged Role Administrator
        for uid, role in ((take(), GLOBAL_ADMIN), (take(), PRIVILEGED_ROLE_ADMIN)):
            eid = _uuid(r)
            acc.eligibilities[eid] = {
                "id": eid, "principalId": uid, "roleDefinitionId": role, "directoryScopeId": "/", "appScopeId": None,
                "startDateTime": iso(now - timedelta(days=90)), "endDateTime": iso(now + timedelta(days=275)),
                "memberType": "Direct", "roleEligibilityScheduleId": _uuid(r),
            }
        # authentication registration: admins are passwordless-capable; some users not registered at all
        for a in list(acc.role_assignments.values()):
            if a["principalId"] in users:
                acc.registration[a["principalId"]] = {"isPasswordlessCapable": True,
                                                      "methodsRegistered": ["microsoftAuthenticatorPush", "fido2"]}
        n = len(plain)
        for _ in range(max(2, n // 25)):  # no MFA, no SSPR
            acc.registration[take()] = {"isMfaRegistered": False, "isMfaCapable": False, "isSsprRegistered": False,
                                        "isSsprCapable": False, "methodsRegistered": [],
                                        "userPreferredMethodForSecondaryAuthentication": "none",
                                        "systemPreferredAuthenticationMethods": []}
        for _ in range(max(2, n // 25)):  # MFA but not registered for SSPR
            acc.registration[take()] = {"isSsprRegistered": False, "isSsprCapable": False,
                                        "methodsRegistered": ["microsoftAuthenticatorPush"]}
        for _ in range(max(1, n // 50)):  # SSPR turned off for them (not in the SSPR group)
            acc.registration[take()] = {"isSsprEnabled": False, "isSsprCapable": False}
        for uid in guests:
            acc.registration[uid] = {"isSsprEnabled": False, "isSsprCapable": False, "isSsprRegistered": False,
                                     "methodsRegistered": ["mobilePhone"], "isMfaCapable": True}
        # licence assignment errors, one of each kind (licenseAssignmentStates on the user)
        for err in LICENCE_ERRORS[:5]:
            uid = take_other()
            u = users[uid]
            sku = SKU_M365_E5 if err != "ProhibitedInUsageLocationViolation" else SKU_M365_E3
            u["licenseAssignmentStates"] = [
                {"assignedByGroup": None, "disabledPlans": [], "error": err,
                 "lastUpdatedDateTime": iso(now - timedelta(days=2)),
                 "skuId": sku, "state": "Error"}]
            # a licence in error is not in assignedLicenses (group-based licensing could not apply it)
        # one user with Teams switched off in their licence
        uid = take_other()
        users[uid]["assignedLicenses"] = [{"disabledPlans": [_TEAMS_PLAN[0]], "skuId": SKU_M365_E3}]
        # risky users: two at risk (high, medium), one remediated, one dismissed
        for level, state, detail in (("high", "atRisk", "none"), ("medium", "atRisk", "none"),
                                     ("none", "remediated", "userPerformedSecuredPasswordReset"),
                                     ("none", "dismissed", "adminDismissedAllRiskForUser")):
            uid = take()
            _set_risk(tenant, acc, uid, level, state, detail, iso(now - timedelta(days=r.randint(1, 20))))
    except StopIteration:
        pass
    _count_units(tenant, acc)
    return acc


def _set_risk(tenant: EmulatedTenant, acc: AccountData, uid: str, level: str, state: str, detail: str, when: str) -> None:
    u = tenant.users.get(uid) or {}
    acc.risky_users[uid] = {"id": uid, "isDeleted": False, "isProcessing": False, "riskDetail": detail,
                            "riskLastUpdatedDateTime": when, "riskLevel": level, "riskState": state,
                            "userDisplayName": u.get("displayName"), "userPrincipalName": u.get("userPrincipalName")}


def _count_units(tenant: EmulatedTenant, acc: AccountData) -> None:
    used: dict[str, int] = {}
    for u in tenant.users.values():
        for lic in u.get("assignedLicenses") or ():
            used[lic.get("skuId")] = used.get(lic.get("skuId"), 0) + 1
    for sku_id, sku in acc.skus.items():
        sku["consumedUnits"] = used.get(sku_id, 0)
        units = dict(sku["prepaidUnits"])
        units["enabled"] = used.get(sku_id, 0) + 5 if sku_id != SKU_M365_E5 else used.get(sku_id, 0)
        sku["prepaidUnits"] = units


# -------------------------------------------------------------------------------------------------- derived facts
def _user_principals_with_roles(tenant: EmulatedTenant, acc: AccountData) -> set[str]:
    """User ids holding an active role directly or as a member of a role-assignable group."""
    out: set[str] = set()
    for a in acc.role_assignments.values():
        pid = a["principalId"]
        if pid in tenant.users:
            out.add(pid)
        elif pid in tenant.groups:
            out.update(m for m, kind in tenant.members.get(pid, {}).items() if kind == "user")
    return out


def registration_details(tenant: EmulatedTenant, acc: AccountData, uid: str, admins: set[str]) -> dict[str, Any] | None:
    u = tenant.users.get(uid)
    if u is None:
        return None
    guest = u.get("userType") == "Guest"
    base: dict[str, Any] = {
        "id": uid, "userPrincipalName": u.get("userPrincipalName"), "userDisplayName": u.get("displayName"),
        "userType": "guest" if guest else "member", "isAdmin": uid in admins,
        "isSsprRegistered": True, "isSsprEnabled": True, "isSsprCapable": True,
        "isMfaRegistered": True, "isMfaCapable": True, "isPasswordlessCapable": False,
        "lastUpdatedDateTime": acc.registration_updated, "methodsRegistered": _DEFAULT_METHODS,
        "isSystemPreferredAuthenticationMethodEnabled": True, "systemPreferredAuthenticationMethods": ["push"],
        "userPreferredMethodForSecondaryAuthentication": "push",
    }
    over = acc.registration.get(uid)
    if over:
        base.update(over)
    return base


# ------------------------------------------------------------------------------------------------------- routes
def _licence_error(tier_needed: str, code: str, status: int) -> GraphFailure:
    if code == "AadPremiumLicenseRequired":
        return GraphFailure(status, code, "The tenant needs to have Microsoft Entra ID P2 or Microsoft Entra ID Governance license.")
    if code == "Authentication_RequestFromNonPremiumTenantOrB2CTenant":
        return GraphFailure(status, code, "Neither tenant is B2C or tenant doesn't have premium license")
    return GraphFailure(status, code, f"The tenant does not have a valid {tier_needed} license.")


def _has(acc: AccountData, tier: str) -> bool:
    order = {"free": 0, "P1": 1, "P2": 2}
    return order.get(acc.tier, 0) >= order[tier]


def account_route(service: GraphService, segs: list[str]) -> Any:
    """The _Route for one of this module's paths, or None (graph.py's router asks before giving up)."""
    from entra_mcp.devtenant.graph import _Route

    low = [s.lower() for s in segs]

    def listing(key: str, perm: frozenset[str], entity: EntityType, objs: Callable[[Caller], dict[str, dict[str, Any]]],
                check: Callable[[Caller], None] | None = None, options: tuple[str, ...] | None = None,
                lazy: Callable[[Caller], tuple[list[str], Callable[[str], dict[str, Any] | None]]] | None = None,
                order: Callable[[Caller], dict[str, Callable[[str], Any]]] | None = None) -> Any:
        """A paged list; `lazy(caller)` gives (sorted ids, id -> object) for a list computed per object; `options`:
        the only query options the API documents (others refused); `order(caller)`: what $orderby may name."""
        def run(c: Caller, o: dict[str, str], h: dict[str, str]) -> Reply:
            if check is not None:
                check(c)
            if options is not None and "skiptoken" not in o:
                for k in o:
                    if k not in options:
                        raise GraphFailure(400, "BadRequest", f"Query option '${k}' is not supported for this request.")
                if "filter" in o and compile_filter(o["filter"], entity).advanced:
                    # ne, not, endswith: the directory's advanced queries, not documented for this API
                    raise GraphFailure(400, "BadRequest", f"Unsupported or invalid query filter clause: {o['filter']}")
            with c.tenant.lock:
                if lazy is not None:
                    ids, one = lazy(c)
                else:
                    data = objs(c)
                    ids, one = sorted(data), data.get

            def get(i: str) -> tuple[str, dict[str, Any]] | None:
                obj = one(i)
                return (entity.name, obj) if obj is not None else None
            return service._paged(c, key, o, h, entity=entity, ids=lambda: ids, get=get, path=key,
                                  order=order(c) if order is not None else None)
        return _Route(key, perm, run)

    if low == ["reports", "authenticationmethods", "userregistrationdetails"]:
        def reg_check(c: Caller) -> None:
            if not _has(account_of(c.tenant), "P1"):
                raise _licence_error("P1", "Authentication_RequestFromNonPremiumTenantOrB2CTenant", 403)

        def reg_rows(c: Caller) -> tuple[list[str], Callable[[str], dict[str, Any] | None]]:
            t = c.tenant
            acc = account_of(t)
            admins = _user_principals_with_roles(t, acc)
            return t.sorted_ids("users"), lambda uid: registration_details(t, acc, uid, admins)
        def reg_order(c: Caller) -> dict[str, Callable[[str], Any]]:
            users = c.tenant.users
            return {"userDisplayName": lambda uid: users[uid].get("displayName"),
                    "userPrincipalName": lambda uid: users[uid].get("userPrincipalName")}
        return listing("reports/authenticationMethods/userRegistrationDetails", AUDIT_READ, REGISTRATION_DETAILS,
                       lambda c: {}, reg_check, options=REGISTRATION_OPTIONS, lazy=reg_rows, order=reg_order)
    if low[:2] == ["rolemanagement", "directory"] and len(low) == 3:
        if low[2] == "roledefinitions":
            return listing("roleManagement/directory/roleDefinitions", ROLE_READ, ROLE_DEFINITION,
                           lambda c: account_of(c.tenant).role_definitions)
        if low[2] == "roleassignments":
            return listing("roleManagement/directory/roleAssignments", ROLE_READ, ROLE_ASSIGNMENT,
                           lambda c: account_of(c.tenant).role_assignments)
        if low[2] == "roleeligibilityscheduleinstances":
            def pim_check(c: Caller) -> None:
                if not _has(account_of(c.tenant), "P2"):
                    raise _licence_error("P2", "AadPremiumLicenseRequired", 400)
            return listing("roleManagement/directory/roleEligibilityScheduleInstances", ELIGIBILITY_READ,
                           ELIGIBILITY_INSTANCE, lambda c: account_of(c.tenant).eligibilities, pim_check)
    if low == ["subscribedskus"]:
        def skus(c: Caller, o: dict[str, str], h: dict[str, str]) -> Reply:
            service._only(o, ("select",))
            with c.tenant.lock:
                value = [dict(s) for s in account_of(c.tenant).skus.values()]
            return service._ok({"@odata.context": service._context("subscribedSkus"), "value": value})
        return _Route("subscribedSkus", SKU_READ, skus)
    if low == ["identityprotection", "riskyusers"]:
        def risk_check(c: Caller) -> None:
            if not _has(account_of(c.tenant), "P2"):
                # assumed body: Microsoft documents the P2 requirement, not the error (docs/graph-facts-account.md)
                raise GraphFailure(403, "Forbidden", "Your tenant is not licensed for this feature.")
        return listing("identityProtection/riskyUsers", RISK_READ, RISKY_USER,
                       lambda c: account_of(c.tenant).risky_users, risk_check)
    return None


# ----------------------------------------------------------------------------------------------- control API ops
def _arg(op: dict[str, Any], name: str) -> Any:
    if name not in op:
        raise MutationError(f"operation '{op.get('op')}' needs '{name}'")
    return op[name]


def _assign_role(t: EmulatedTenant, op: dict[str, Any]) -> dict[str, Any]:
    acc = account_of(t)
    principal, role = str(_arg(op, "principal")), str(_arg(op, "role"))
    if t.find(principal) is None:
        raise MutationError(f"no directory object {principal}", status=404)
    if role not in acc.role_definitions:
        raise MutationError(f"no role definition {role}", status=404)
    if principal in t.groups and not t.groups[principal].get("isAssignableToRole"):
        raise MutationError("roles can be assigned only to role-assignable groups (isAssignableToRole)")
    with t.lock:
        aid = _rid(acc)
        target = acc.eligibilities if op.get("eligible") else acc.role_assignments
        row = {"id": aid, "principalId": principal, "roleDefinitionId": role,
               "directoryScopeId": str(op.get("scope") or "/"), "appScopeId": None}
        if op.get("eligible"):
            row.update({"startDateTime": iso(t.clock.now()), "endDateTime": None, "memberType": "Direct",
                        "roleEligibilityScheduleId": _rid(acc)})
        else:
            row["condition"] = None
        target[aid] = row
    return row


def _remove_role(t: EmulatedTenant, op: dict[str, Any]) -> dict[str, Any]:
    acc = account_of(t)
    aid = str(_arg(op, "id"))
    with t.lock:
        for coll in (acc.role_assignments, acc.eligibilities):
            if coll.pop(aid, None) is not None:
                return {"id": aid, "removed": True}
    raise MutationError(f"no role assignment {aid}", status=404)


def _set_registration(t: EmulatedTenant, op: dict[str, Any]) -> dict[str, Any]:
    acc = account_of(t)
    uid = str(_arg(op, "id"))
    if uid not in t.users:
        raise MutationError(f"no user {uid}", status=404)
    props = op.get("set") or {}
    if not isinstance(props, dict):
        raise MutationError("'set' must be an object")
    with t.lock:
        acc.registration[uid] = {**acc.registration.get(uid, {}), **props}
        acc.registration_updated = iso(t.clock.now())
    return {"id": uid, **acc.registration[uid]}


def _set_risk_op(t: EmulatedTenant, op: dict[str, Any]) -> dict[str, Any]:
    acc = account_of(t)
    uid = str(_arg(op, "id"))
    if uid not in t.users:
        raise MutationError(f"no user {uid}", status=404)
    with t.lock:
        if op.get("remove"):
            acc.risky_users.pop(uid, None)
            return {"id": uid, "removed": True}
        _set_risk(t, acc, uid, str(op.get("riskLevel", "high")), str(op.get("riskState", "atRisk")),
                  str(op.get("riskDetail", "none")), iso(t.clock.now()))
        return dict(acc.risky_users[uid])


def _set_licence_state(t: EmulatedTenant, op: dict[str, Any]) -> dict[str, Any]:
    uid = str(_arg(op, "id"))
    states = _arg(op, "states")
    if not isinstance(states, list):
        raise MutationError("'states' must be a list of licenseAssignmentState objects")
    return t.update_object(uid, {"licenseAssignmentStates": states}, "users")


def _set_tier(t: EmulatedTenant, op: dict[str, Any]) -> dict[str, Any]:
    tier = str(_arg(op, "tier"))
    if tier not in ("free", "P1", "P2"):
        raise MutationError("tier must be one of: free, P1, P2")
    account_of(t).tier = tier
    t.premium = tier != "free"
    return {"tier": tier}


ACCOUNT_OPS: dict[str, Callable[[EmulatedTenant, dict[str, Any]], Any]] = {
    "assign_role": _assign_role,  # {principal, role, scope?, eligible?}
    "remove_role": _remove_role,  # {id}
    "set_registration": _set_registration,  # {id, set: {isSsprRegistered: false, ...}}
    "set_risk": _set_risk_op,  # {id, riskLevel?, riskState?, riskDetail?, remove?}
    "set_licence_states": _set_licence_state,  # {id, states: [...]}
    "set_licence_tier": _set_tier,  # {tier: free|P1|P2}
}


# ----------------------------------------------------------------------------------------------------- examples
def account_examples(tenant: EmulatedTenant) -> dict[str, str]:
    """Ids for tests: global_admin, helpdesk_admin, password_admin, au_helpdesk_admin, au_id, role_group,
    role_group_member, pim_eligible_admin, no_mfa_user, no_sspr_user, sspr_disabled_user, sspr_ready_user,
    risky_user (high, atRisk), remediated_user, licence_<error>_user for each error, teams_disabled_user."""
    acc = account_of(tenant)
    out: dict[str, str] = {}
    role_users = _user_principals_with_roles(tenant, acc)
    for a in acc.role_assignments.values():
        pid, role, scope = a["principalId"], a["roleDefinitionId"], a["directoryScopeId"]
        if pid in tenant.groups:
            out.setdefault("role_group", pid)
            mem = sorted(m for m, k in tenant.members.get(pid, {}).items() if k == "user")
            if mem:
                out.setdefault("role_group_member", mem[0])
            continue
        if scope != "/":
            out.setdefault("au_helpdesk_admin" if role == HELPDESK_ADMIN else "au_admin", pid)
            out.setdefault("au_id", scope.rsplit("/", 1)[-1])
            continue
        key = {GLOBAL_ADMIN: "global_admin", HELPDESK_ADMIN: "helpdesk_admin", PASSWORD_ADMIN: "password_admin",
               SECURITY_ADMIN: "security_admin", EXCHANGE_ADMIN: "exchange_admin",
               DIRECTORY_READERS: "directory_reader"}.get(role)
        if key:
            out.setdefault(key, pid)
    for e in acc.eligibilities.values():
        if e["roleDefinitionId"] == GLOBAL_ADMIN and e["principalId"] not in role_users:
            out.setdefault("pim_eligible_admin", e["principalId"])
    risky_ids = set(acc.risky_users)
    for uid, over in acc.registration.items():
        if uid in role_users or uid in risky_ids or uid not in tenant.users:
            continue
        if tenant.users[uid].get("userType") != "Member":
            continue
        if over.get("isMfaRegistered") is False:
            out.setdefault("no_mfa_user", uid)
        elif over.get("isSsprRegistered") is False:
            out.setdefault("no_sspr_user", uid)
        elif over.get("isSsprEnabled") is False:
            out.setdefault("sspr_disabled_user", uid)
    for uid, ru in acc.risky_users.items():
        if ru["riskState"] == "atRisk" and ru["riskLevel"] == "high":
            out.setdefault("risky_user", uid)
        if ru["riskState"] == "remediated":
            out.setdefault("remediated_user", uid)
    for uid, u in tenant.users.items():
        for st in u.get("licenseAssignmentStates") or ():
            if st.get("error"):
                out.setdefault(f"licence_{st['error']}_user", uid)
        lic = u.get("assignedLicenses") or ()
        if any(_TEAMS_PLAN[0] in (x.get("disabledPlans") or ()) for x in lic):
            out.setdefault("teams_disabled_user", uid)
    special = set(out.values()) | role_users | risky_ids | set(acc.registration)
    special |= {e["principalId"] for e in acc.eligibilities.values()}
    for uid, u in tenant.users.items():
        if (uid not in special and u.get("userType") == "Member" and u.get("accountEnabled")
                and u.get("onPremisesSyncEnabled") is None and not u.get("passwordPolicies")
                and not u.get("licenseAssignmentStates") and not _VIP_TITLE.search(str(u.get("jobTitle") or ""))):
            out["sspr_ready_user"] = uid
            break
    return out


__all__ = ["ACCOUNT_OPS", "AccountData", "account_examples", "account_of", "account_route", "generate_account"]
