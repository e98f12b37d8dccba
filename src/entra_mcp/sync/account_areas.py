"""The account areas: what to ask Graph and how to keep it (facts and sources: docs/graph-facts-account.md).

  auth_methods  GET /reports/authenticationMethods/userRegistrationDetails (AuditLog.Read.All, Entra ID P1/P2).
                No delta and no $top: a full pull at most every AUTH_METHODS_REFRESH_MINUTES.
  roles         GET /roleManagement/directory/roleDefinitions, /roleAssignments (RoleManagement.Read.Directory) and,
                where licensed (P2), /roleEligibilityScheduleInstances. No delta; a tenant holds tens to hundreds of
                assignments: pulled whole every run. Without P2 the active assignments are kept and the answer says
                eligibility is unknown.
  licenses      GET /subscribedSkus (LicenseAssignment.Read.All) and GET /users?$select=id,licenseAssignmentStates
                &$top=999 (User.Read.All), at most every LICENSES_REFRESH_MINUTES. Only the states that say something
                (an error, a state other than Active) are kept: assignedLicenses already lives on the user.
  risk          GET /identityProtection/riskyUsers (IdentityRiskyUser.Read.All, Entra ID P2), at most every
                RISK_REFRESH_MINUTES.

Each `fetch_*` is a pure function of a GraphClient: it returns the area's mirror collections (name -> id -> value),
the first being the counted one, and leaves committing to the engine.
"""

from __future__ import annotations

import sys
from typing import Any

from entra_mcp.errors import GraphError, PermissionDenied
from entra_mcp.graph.client import GraphClient
from entra_mcp.graph.paging import Pager

AUTH_METHODS_PATH = "/reports/authenticationMethods/userRegistrationDetails"
ROLE_DEFINITIONS_PATH = "/roleManagement/directory/roleDefinitions"
ROLE_ASSIGNMENTS_PATH = "/roleManagement/directory/roleAssignments"
ROLE_ELIGIBILITY_PATH = "/roleManagement/directory/roleEligibilityScheduleInstances"
SKUS_PATH = "/subscribedSkus"
RISKY_USERS_PATH = "/identityProtection/riskyUsers"

AUTH_METHODS_REFRESH_MINUTES = 60.0
LICENSES_REFRESH_MINUTES = 60.0
RISK_REFRESH_MINUTES = 15.0
ROLES_REFRESH_MINUTES = 0.0  # every run: a handful of requests, and an admin role matters at once

PIM_UNLICENSED = "AadPremiumLicenseRequired"
NON_PREMIUM = "Authentication_RequestFromNonPremiumTenantOrB2CTenant"

REGISTRATION_FIELDS = (
    "isAdmin", "isMfaCapable", "isMfaRegistered", "isPasswordlessCapable", "isSsprCapable", "isSsprEnabled",
    "isSsprRegistered", "methodsRegistered", "userPreferredMethodForSecondaryAuthentication", "lastUpdatedDateTime",
)
ROLE_DEFINITION_FIELDS = ("id", "displayName", "templateId", "isBuiltIn", "isEnabled")
ROLE_ASSIGNMENT_FIELDS = ("id", "principalId", "roleDefinitionId", "directoryScopeId")
ELIGIBILITY_FIELDS = ("id", "principalId", "roleDefinitionId", "directoryScopeId", "startDateTime", "endDateTime", "memberType")
LICENCE_STATE_FIELDS = ("skuId", "state", "error", "assignedByGroup", "disabledPlans", "lastUpdatedDateTime")
RISK_FIELDS = ("riskLevel", "riskState", "riskDetail", "riskLastUpdatedDateTime")

# the permission each area needs, and its licence, for the disabled reason
AREA_PERMISSION = {
    "auth_methods": "AuditLog.Read.All",
    "roles": "RoleManagement.Read.Directory (or Directory.Read.All)",
    "licenses": "LicenseAssignment.Read.All (or Organization.Read.All) and User.Read.All",
    "risk": "IdentityRiskyUser.Read.All",
}
AREA_LICENCE = {"auth_methods": "Entra ID P1 or P2", "risk": "Entra ID P2"}
AREA_PROBE = {
    "auth_methods": (AUTH_METHODS_PATH, {}),
    "roles": (ROLE_ASSIGNMENTS_PATH, {"$top": "1"}),
    "licenses": (SKUS_PATH, {}),
    "risk": (RISKY_USERS_PATH, {"$top": "1"}),
}
AREA_COLLECTIONS = {
    "auth_methods": ("registration",),
    "roles": ("role_assignments", "role_definitions", "role_eligibilities", "role_meta"),
    "licenses": ("licence_states", "skus"),
    "risk": ("risky_users",),
}
AREA_REFRESH_MINUTES = {
    "auth_methods": AUTH_METHODS_REFRESH_MINUTES,
    "roles": ROLES_REFRESH_MINUTES,
    "licenses": LICENSES_REFRESH_MINUTES,
    "risk": RISK_REFRESH_MINUTES,
}


def _pick(item: dict[str, Any], fields: tuple[str, ...]) -> dict[str, Any]:
    return {sys.intern(k): item.get(k) for k in fields if k in item}


def disabled_reason(area: str, exc: PermissionDenied) -> str:
    """Why Graph refused an account area, in words that say what to grant or buy."""
    code = exc.graph_code or "HTTP 403"
    if code == "Authorization_RequestDenied" or code == "Authentication_MSGraphPermissionMissing":
        return f"Graph refused ({code}): grant {AREA_PERMISSION[area]}"
    if code == NON_PREMIUM or area in AREA_LICENCE:
        licence = AREA_LICENCE.get(area, "an Entra ID premium licence")
        return f"Graph refused ({code}): this area needs {licence} in the tenant and {AREA_PERMISSION[area]}"
    return f"Graph refused ({code}): grant {AREA_PERMISSION[area]}"


def compact_registration(item: dict[str, Any]) -> dict[str, Any]:
    out = _pick(item, REGISTRATION_FIELDS)
    methods = out.get("methodsRegistered")
    if isinstance(methods, list):
        out["methodsRegistered"] = tuple(sys.intern(str(m)) for m in methods)
    return out


def compact_licence_states(states: Any) -> list[dict[str, Any]] | None:
    """The states worth keeping: an error or a state other than Active (None when there is none)."""
    if not isinstance(states, list):
        return None
    kept = [_pick(s, LICENCE_STATE_FIELDS) for s in states
            if isinstance(s, dict) and (s.get("error") not in (None, "None") or s.get("state") not in (None, "Active"))]
    return kept or None


def compact_sku(item: dict[str, Any]) -> dict[str, Any]:
    plans = {str(p.get("servicePlanId")): str(p.get("servicePlanName"))
             for p in item.get("servicePlans") or () if isinstance(p, dict) and p.get("servicePlanId")}
    units = item.get("prepaidUnits") if isinstance(item.get("prepaidUnits"), dict) else {}
    return {"skuId": item.get("skuId"), "skuPartNumber": item.get("skuPartNumber"),
            "capabilityStatus": item.get("capabilityStatus"), "consumedUnits": item.get("consumedUnits"),
            "enabledUnits": units.get("enabled"), "servicePlans": plans}


async def _all(client: GraphClient, path: str, area: str, params: dict[str, str] | None = None) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    async for page in Pager(client, path, params=params, area=area):
        out.extend(page)
    return out


async def fetch_auth_methods(client: GraphClient, area: str = "auth_methods") -> dict[str, dict[str, Any]]:
    registration: dict[str, Any] = {}
    async for page in Pager(client, AUTH_METHODS_PATH, area=area):
        for item in page:
            if item.get("id"):
                registration[str(item["id"])] = compact_registration(item)
    return {"registration": registration}


async def fetch_roles(client: GraphClient, area: str = "roles") -> dict[str, dict[str, Any]]:
    definitions = {str(d["id"]): _pick(d, ROLE_DEFINITION_FIELDS)
                   for d in await _all(client, ROLE_DEFINITIONS_PATH, area) if d.get("id")}
    assignments = {str(a["id"]): _pick(a, ROLE_ASSIGNMENT_FIELDS)
                   for a in await _all(client, ROLE_ASSIGNMENTS_PATH, area) if a.get("id") and a.get("principalId")}
    meta: dict[str, Any] = {"eligibility": "synced"}
    eligibilities: dict[str, Any] = {}
    try:
        eligibilities = {str(e["id"]): _pick(e, ELIGIBILITY_FIELDS)
                         for e in await _all(client, ROLE_ELIGIBILITY_PATH, area) if e.get("id") and e.get("principalId")}
    except (PermissionDenied, GraphError) as exc:
        code = getattr(exc, "graph_code", None)
        if code == PIM_UNLICENSED:
            meta["eligibility"] = ("unknown: Graph refused PIM eligibility (AadPremiumLicenseRequired): it needs "
                                   "Entra ID P2 or ID Governance")
        elif isinstance(exc, PermissionDenied):
            meta["eligibility"] = (f"unknown: Graph refused PIM eligibility ({code or 'HTTP 403'}): grant "
                                   "RoleEligibilitySchedule.Read.Directory or RoleManagement.Read.Directory")
        else:
            raise
    return {"role_assignments": assignments, "role_definitions": definitions, "role_eligibilities": eligibilities,
            "role_meta": {"pim": meta}}


async def fetch_licenses(client: GraphClient, area: str = "licenses") -> dict[str, dict[str, Any]]:
    skus = {str(s["skuId"]): compact_sku(s) for s in await _all(client, SKUS_PATH, area) if s.get("skuId")}
    states: dict[str, Any] = {}
    async for page in Pager(client, "/users", params={"$select": "id,licenseAssignmentStates", "$top": "999"}, area=area):
        for u in page:
            kept = compact_licence_states(u.get("licenseAssignmentStates"))
            if kept and u.get("id"):
                states[str(u["id"])] = kept
    return {"licence_states": states, "skus": skus}


async def fetch_risk(client: GraphClient, area: str = "risk") -> dict[str, dict[str, Any]]:
    risky: dict[str, Any] = {}
    async for page in Pager(client, RISKY_USERS_PATH, area=area):
        for item in page:
            if item.get("id") and not item.get("isDeleted"):
                risky[str(item["id"])] = _pick(item, RISK_FIELDS)
    return {"risky_users": risky}


FETCH = {"auth_methods": fetch_auth_methods, "roles": fetch_roles, "licenses": fetch_licenses, "risk": fetch_risk}

__all__ = ["AREA_COLLECTIONS", "AREA_PERMISSION", "AREA_PROBE", "AREA_REFRESH_MINUTES", "FETCH", "disabled_reason"]
