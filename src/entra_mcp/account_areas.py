"""The account areas' Graph calls and mirror shapes (facts and sources: docs/graph-facts-account.md).

  auth_methods  GET /reports/authenticationMethods/userRegistrationDetails (AuditLog.Read.All, Entra ID P1/P2).
                No delta and no $top: a full list at most every AUTH_METHODS_REFRESH_MINUTES.
  roles         GET /roleManagement/directory/roleDefinitions and /roleAssignments (RoleManagement.Read.Directory)
                in one $batch, then /roleEligibilityScheduleInstances (PIM, Entra ID P2) in another. No delta; a
                tenant holds tens to hundreds of assignments: every run. Without P2 (AadPremiumLicenseRequired) or
                without the PIM permission the active assignments are kept and eligibility is recorded as unknown.
  licenses      GET /subscribedSkus (LicenseAssignment.Read.All) and /users?$select=id,licenseAssignmentStates&$top=999
                in one $batch (the user list's nextLinks followed), at most every LICENSES_REFRESH_MINUTES. Only
                the states that say something (an error, a state other than Active) are kept: assignedLicenses is
                already on every user.
  risk          GET /identityProtection/riskyUsers (IdentityRiskyUser.Read.All, Entra ID P2), at most every
                RISK_REFRESH_MINUTES.

A leaf like areas.py (standard library and entra_mcp.errors only): the apply and run functions the registry
names. Run functions use only what the engine's AreaRun offers (batch_get, commit, ok_status).
"""

from __future__ import annotations

import sys
from typing import Any

from entra_mcp.errors import GraphError, PermissionDenied

AUTH_METHODS_PATH = "/reports/authenticationMethods/userRegistrationDetails"
ROLE_DEFINITIONS_URL = "/roleManagement/directory/roleDefinitions"
ROLE_ASSIGNMENTS_URL = "/roleManagement/directory/roleAssignments"
ROLE_ELIGIBILITY_URL = "/roleManagement/directory/roleEligibilityScheduleInstances"
SKUS_URL = "/subscribedSkus"
LICENCE_STATES_URL = "/users?$select=id,licenseAssignmentStates&$top=999"
RISKY_USERS_PATH = "/identityProtection/riskyUsers"

AUTH_METHODS_REFRESH_MINUTES = 60.0
LICENSES_REFRESH_MINUTES = 60.0
RISK_REFRESH_MINUTES = 15.0

PIM_UNLICENSED = "AadPremiumLicenseRequired"

REGISTRATION_FIELDS = (
    "isAdmin", "isMfaCapable", "isMfaRegistered", "isPasswordlessCapable", "isSsprCapable", "isSsprEnabled",
    "isSsprRegistered", "methodsRegistered", "userPreferredMethodForSecondaryAuthentication", "lastUpdatedDateTime",
)
ROLE_DEFINITION_FIELDS = ("id", "displayName", "templateId", "isBuiltIn", "isEnabled")
ROLE_ASSIGNMENT_FIELDS = ("id", "principalId", "roleDefinitionId", "directoryScopeId")
ELIGIBILITY_FIELDS = ("id", "principalId", "roleDefinitionId", "directoryScopeId", "startDateTime", "endDateTime", "memberType")
LICENCE_STATE_FIELDS = ("skuId", "state", "error", "assignedByGroup", "disabledPlans", "lastUpdatedDateTime")
RISK_FIELDS = ("riskLevel", "riskState", "riskDetail", "riskLastUpdatedDateTime")


def _pick(item: dict[str, Any], fields: tuple[str, ...]) -> dict[str, Any]:
    return {sys.intern(k): item.get(k) for k in fields if k in item}


def compact_registration(item: dict[str, Any]) -> dict[str, Any]:
    out = _pick(item, REGISTRATION_FIELDS)
    methods = out.get("methodsRegistered")
    if isinstance(methods, list):
        out["methodsRegistered"] = [sys.intern(str(m)) for m in methods]
    return out


def compact_licence_states(states: Any) -> list[dict[str, Any]] | None:
    """The states worth keeping: an error, or a state other than Active (None when there is none)."""
    if not isinstance(states, list):
        return None
    kept = [_pick(s, LICENCE_STATE_FIELDS) for s in states
            if isinstance(s, dict) and (s.get("error") not in (None, "None") or s.get("state") not in (None, "Active"))]
    return kept or None


def compact_sku(item: dict[str, Any]) -> dict[str, Any]:
    plans = {str(p.get("servicePlanId")): str(p.get("servicePlanName"))
             for p in item.get("servicePlans") or () if isinstance(p, dict) and p.get("servicePlanId")}
    given = item.get("prepaidUnits")
    units: dict[str, Any] = given if isinstance(given, dict) else {}
    return {"skuId": item.get("skuId"), "skuPartNumber": item.get("skuPartNumber"),
            "capabilityStatus": item.get("capabilityStatus"), "consumedUnits": item.get("consumedUnits"),
            "enabledUnits": units.get("enabled"), "servicePlans": plans}


def apply_registration(target: Any, page: list[dict[str, Any]], counter: Any) -> None:
    for item in page:
        if item.get("id"):
            oid = str(item["id"])
            target.put("registration", oid, compact_registration(item))
            counter.added += 1
            counter.changed_ids.add(oid)


def apply_risky_users(target: Any, page: list[dict[str, Any]], counter: Any) -> None:
    for item in page:
        if item.get("id") and not item.get("isDeleted"):
            oid = str(item["id"])
            target.put("risky_users", oid, _pick(item, RISK_FIELDS))
            counter.added += 1
            counter.changed_ids.add(oid)


def _result(**kw: Any) -> Any:
    from entra_mcp.areas import AreaResult  # the registry imports this module: import at call time

    return AreaResult(**kw)


async def run_roles(run: Any, area: Any, prev: Any) -> Any:
    """Definitions and active assignments (one $batch), then PIM eligibility (another, allowed to be refused)."""
    name = area.name
    got = await run.batch_get([ROLE_DEFINITIONS_URL, ROLE_ASSIGNMENTS_URL], area=name)
    definitions = {str(d["id"]): _pick(d, ROLE_DEFINITION_FIELDS) for d in got.get(ROLE_DEFINITIONS_URL) or () if d.get("id")}
    assignments = {str(a["id"]): _pick(a, ROLE_ASSIGNMENT_FIELDS)
                   for a in got.get(ROLE_ASSIGNMENTS_URL) or () if a.get("id") and a.get("principalId")}
    eligibility = "synced"
    eligible: dict[str, Any] = {}
    try:
        rows = (await run.batch_get([ROLE_ELIGIBILITY_URL], area=name)).get(ROLE_ELIGIBILITY_URL) or ()
        eligible = {str(e["id"]): _pick(e, ELIGIBILITY_FIELDS) for e in rows if e.get("id") and e.get("principalId")}
    except PermissionDenied as exc:
        eligibility = (f"unknown: Graph refused PIM eligibility ({exc.graph_code or 'HTTP 403'}): grant "
                       "RoleEligibilitySchedule.Read.Directory or RoleManagement.Read.Directory")
    except GraphError as exc:
        if exc.graph_code != PIM_UNLICENSED:
            raise
        eligibility = f"unknown: Graph refused PIM eligibility ({PIM_UNLICENSED}): it needs Entra ID P2 or ID Governance"
    data = {"role_assignments": assignments, "role_definitions": definitions, "role_eligibilities": eligible,
            "role_meta": {"pim": {"eligibility": eligibility}}}
    count = len(assignments)
    await run.commit(run.writer.commit_full, name, data, delta_link=None, status=run.ok_status(prev, count, "full"))
    message = None if eligibility == "synced" else f"PIM eligibility {eligibility}"
    return _result(area=name, outcome="full", objects=count, changes=count, message=message)


async def run_licenses(run: Any, area: Any, prev: Any) -> Any:
    """Subscribed SKUs and the users' licence-assignment states in one $batch, at most every full_every_minutes."""
    name = area.name
    fresh = prev.fresh(area.full_every_minutes, run.now())
    if not run.full and prev.enabled and fresh and run.writer.has_data(name):
        return _result(area=name, outcome="unchanged", objects=prev.object_count,
                       message=f"refreshed at most every {area.full_every_minutes:.0f} minutes")
    got = await run.batch_get([SKUS_URL, LICENCE_STATES_URL], area=name)
    skus = {str(s["skuId"]): compact_sku(s) for s in got.get(SKUS_URL) or () if s.get("skuId")}
    states: dict[str, Any] = {}
    for u in got.get(LICENCE_STATES_URL) or ():
        kept = compact_licence_states(u.get("licenseAssignmentStates"))
        if kept and u.get("id"):
            states[str(u["id"])] = kept
    count = len(states)
    await run.commit(run.writer.commit_full, name, {"licence_states": states, "skus": skus}, delta_link=None,
                     status=run.ok_status(prev, count, "full"))
    return _result(area=name, outcome="full", objects=count, changes=count,
                   message=f"{len(skus)} subscribed SKUs; {count} users with a licence assignment in error or not active")


__all__ = ["apply_registration", "apply_risky_users", "run_licenses", "run_roles"]
