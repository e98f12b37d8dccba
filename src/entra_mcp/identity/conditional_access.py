"""Which Conditional Access policies apply to a user signing in to an app: a local evaluation of the mirrored
policies, as Microsoft documents the rules (docs/graph-facts-access.md):

- users: includeUsers "All" (members and guests), "None", "GuestsOrExternalUsers" or ids; includeGroups apply to
  nested members too ("Policy is applied to nested users and groups"); includeRoles are built-in directory roles held
  actively at tenant scope; includeGuestsOrExternalUsers by guest type; every exclusion overrides every inclusion;
- apps: includeApplications "All", "None", "Office365" or appIds (Conditional Access names apps by appId);
  excludeApplications override; policies aimed only at user actions or authentication contexts are not app sign-ins;
- state: enabled policies are enforced, enabledForReportingButNotEnforced ("report-only") are only logged,
  disabled ones are ignored;
- grant controls: block, or the built-in controls (mfa, compliantDevice, domainJoinedDevice, approvedApplication,
  compliantApplication, passwordChange), an authentication strength or terms of use, joined by AND or OR.

Conditions that depend on the sign-in itself (location, device platform, client app, sign-in and user risk, insider
risk, device filter, authentication flow) are never guessed: a policy whose users and apps match but which has such a
condition applies "depending on the sign-in", and the condition is named. Nothing here speaks HTTP or MCP.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping

from .findings import quote

OFFICE365_APP_IDS = frozenset({
    "00000002-0000-0ff1-ce00-000000000000",  # Office 365 Exchange Online
    "00000003-0000-0ff1-ce00-000000000000",  # Office 365 SharePoint Online
    "cc15fd57-2c6c-4117-a88c-83b1d56b4bbe",  # Microsoft Teams
    "00000006-0000-0ff1-ce00-000000000000",  # Microsoft Office 365 Portal
    "4345a7b9-9a63-4910-a426-35363201d503",  # Office 365 Search Service
    "d3590ed6-52b3-4102-aeff-aad2292ab01c",  # Microsoft Office
})
MICROSOFT_TENANT_ID = "f8cdef31-a31e-4b4a-93e4-5f571e91255a"
GUEST_TYPES = ("internalGuest", "b2bCollaborationGuest", "b2bCollaborationMember", "b2bDirectConnectUser",
               "otherExternalUser", "serviceProvider")
CONTROL_TEXT = {
    "block": "access blocked",
    "mfa": "multifactor authentication",
    "compliantDevice": "a device marked compliant (Intune)",
    "domainJoinedDevice": "a Microsoft Entra hybrid joined device",
    "approvedApplication": "an approved client app",
    "compliantApplication": "an app protection policy",
    "passwordChange": "a password change",
}
SIGN_IN_CONDITIONS = (
    ("clientAppTypes", "client app"), ("platforms", "device platform"), ("locations", "location"),
    ("signInRiskLevels", "sign-in risk"), ("userRiskLevels", "user risk"), ("insiderRiskLevels", "insider risk"),
    ("devices", "device filter"), ("authenticationFlows", "authentication flow"), ("times", "time"),
)


def guest_kind(user: Mapping[str, Any]) -> str | None:
    """The Conditional Access guest type of a user, or None for an internal member."""
    external = "#ext#" in str(user.get("userPrincipalName") or "").lower()
    if user.get("userType") == "Guest":
        return "b2bCollaborationGuest" if external else "internalGuest"
    return "b2bCollaborationMember" if external else None


def _ids(values: Any) -> list[str]:
    return [str(v) for v in values or () if v]


class _Scope:
    """Whether one side (include or exclude) of a policy's users condition names the user, and why."""

    def __init__(self, hit: bool | None, why: str) -> None:
        self.hit = hit  # True, False, or None (unknown: data the mirror lacks)
        self.why = why


def _user_side(side: str, cond: Mapping[str, Any], user: Mapping[str, Any], chains: Mapping[str, tuple[str, ...]] | None,
               roles: set[str] | None, group_name: Any, role_name: Any) -> _Scope:
    uid = str(user.get("id"))
    users = _ids(cond.get(f"{side}Users"))
    kind = guest_kind(user)
    if side == "include" and "All" in users:
        return _Scope(True, "all users")
    if uid in users:
        return _Scope(True, "the user by name")
    if "GuestsOrExternalUsers" in users and kind:
        return _Scope(True, "guests or external users")
    unknown: list[str] = []
    groups = _ids(cond.get(f"{side}Groups"))
    if groups:
        if chains is None:
            unknown.append("group memberships are not in the mirror")
        else:
            for gid in groups:
                chain = chains.get(gid)
                if chain is not None:
                    via = "" if len(chain) == 1 else " (nested: " + " > ".join(group_name(g) for g in chain) + ")"
                    return _Scope(True, f"member of {group_name(gid)}{via}")
    wanted_roles = _ids(cond.get(f"{side}Roles"))
    if wanted_roles:
        if roles is None:
            unknown.append("directory roles are not in the mirror")
        else:
            held = [r for r in wanted_roles if r.lower() in roles]
            if held:
                return _Scope(True, f"holds the role {role_name(held[0])}")
    guests = cond.get(f"{side}GuestsOrExternalUsers")
    if isinstance(guests, Mapping) and kind:
        types = [t.strip() for t in str(guests.get("guestOrExternalUserTypes") or "").split(",") if t.strip()]
        if kind in types:
            tenants = guests.get("externalTenants") or {}
            if str(tenants.get("membershipKind", "all")) == "all":
                return _Scope(True, f"a guest or external user ({kind})")
            unknown.append("the policy names specific external tenants and the guest's home tenant is not in the mirror")
    if unknown:
        return _Scope(None, "; ".join(unknown))
    return _Scope(False, "")


def _app_side(names: Iterable[str], app_id: str, first_party: bool) -> bool | None:
    names = set(names)
    if "All" in names or app_id in names:
        return True
    if "Office365" in names:
        if app_id in OFFICE365_APP_IDS:
            return True
        if first_party:
            return None  # a Microsoft app: whether Office 365 covers it is not known here
    if "MicrosoftAdminPortals" in names and first_party:
        return None
    return False


def requirement(policy: Mapping[str, Any], location_name: Any = None) -> dict[str, Any]:
    """What a policy requires: {block, controls, operator, text}."""
    grant = policy.get("grantControls") or {}
    controls = _ids(grant.get("builtInControls"))
    operator = str(grant.get("operator") or "OR")
    parts = [CONTROL_TEXT.get(c, c) for c in controls if c != "block"]
    strength = grant.get("authenticationStrength")
    if isinstance(strength, Mapping) and strength.get("displayName"):
        parts.append(f"authentication strength {quote(strength.get('displayName'), 60)}")
    if grant.get("termsOfUse"):
        parts.append("accepting the terms of use")
    session = policy.get("sessionControls") or {}
    sessions = sorted(k for k, v in session.items() if v) if isinstance(session, Mapping) else []
    block = "block" in controls
    if block:
        text = "blocks access"
    elif parts:
        text = "requires " + (" and " if operator.upper() == "AND" else " or ").join(parts)
    elif sessions:
        text = "sets session controls (" + ", ".join(sessions) + ")"
    else:
        text = "grants access with no extra control"
    return {"block": block, "builtInControls": controls, "operator": operator, "sessionControls": sessions, "text": text}


def _depends(cond: Mapping[str, Any], location_name: Any) -> list[dict[str, str]]:
    out = []
    for key, label in SIGN_IN_CONDITIONS:
        value = cond.get(key)
        if not value:
            continue
        if key == "clientAppTypes":
            apps = _ids(value)
            if not apps or "all" in apps:
                continue
            out.append({"condition": label, "detail": "only sign-ins from " + ", ".join(apps)})
        elif key == "platforms" and isinstance(value, Mapping):
            inc, exc = _ids(value.get("includePlatforms")), _ids(value.get("excludePlatforms"))
            detail = "platforms " + ", ".join(inc) + (f" except {', '.join(exc)}" if exc else "")
            out.append({"condition": label, "detail": detail})
        elif key == "locations" and isinstance(value, Mapping):
            inc = [location_name(x) for x in _ids(value.get("includeLocations"))]
            exc = [location_name(x) for x in _ids(value.get("excludeLocations"))]
            detail = "from " + ", ".join(inc) + (f", not from {', '.join(exc)}" if exc else "")
            out.append({"condition": label, "detail": detail})
        elif isinstance(value, list):
            out.append({"condition": label, "detail": "levels " + ", ".join(_ids(value))})
        else:
            out.append({"condition": label, "detail": "set in the policy"})
    return out


def evaluate(policies: Mapping[str, Mapping[str, Any]], named_locations: Mapping[str, Mapping[str, Any]],
             user: Mapping[str, Any], app_id: str, *, first_party: bool,
             chains: Mapping[str, tuple[str, ...]] | None, roles: set[str] | None,
             group_name: Any, role_name: Any) -> list[dict[str, Any]]:
    """Every enabled or report-only policy whose users and apps reach this sign-in, with what it requires and what
    it depends on. `chains`: the user's transitive groups (group id -> chain), None when memberships are unknown;
    `roles`: the user's active tenant-wide role template ids (lower case), None when unknown. Policies that do not
    reach the user or the app are left out; those whose reach is unknown are returned with applies None."""

    def location_name(lid: str) -> str:
        if lid == "All":
            return "any location"
        if lid == "AllTrusted":
            return "all trusted locations"
        loc = named_locations.get(lid)
        return quote(loc.get("displayName"), 60) if loc else f"location {lid}"

    out: list[dict[str, Any]] = []
    for pid, policy in policies.items():
        state = str(policy.get("state") or "")
        if state not in ("enabled", "enabledForReportingButNotEnforced"):
            continue
        cond = policy.get("conditions") or {}
        users = cond.get("users") or {}
        apps = cond.get("applications") or {}
        app_in = _app_side(_ids(apps.get("includeApplications")), app_id, first_party)
        if app_in is False:
            continue
        app_out = _app_side(_ids(apps.get("excludeApplications")), app_id, first_party)
        if app_out is True:
            continue
        inc = _user_side("include", users, user, chains, roles, group_name, role_name)
        if inc.hit is False:
            continue
        exc = _user_side("exclude", users, user, chains, roles, group_name, role_name)
        if exc.hit is True:
            continue  # exclusions win over inclusions
        depends = _depends(cond, location_name)
        unknown = [why for why in (inc.why if inc.hit is None else "", exc.why if exc.hit is None else "") if why]
        if app_in is None or app_out is None:
            unknown.append("whether the policy's Microsoft app group covers this app is not known")
        applies: bool | str | None
        if unknown:
            applies = None
        elif depends:
            applies = "dependsOnSignIn"
        else:
            applies = True
        out.append({
            "id": pid,
            "displayName": policy.get("displayName"),
            "state": "reportOnly" if state == "enabledForReportingButNotEnforced" else "enabled",
            "applies": applies,
            "matchedBy": inc.why if inc.hit else None,
            "requires": requirement(policy),
            "dependsOn": depends,
            "unknown": unknown,
        })
    out.sort(key=lambda p: (p["state"] != "enabled", not p["requires"]["block"], p["applies"] is not True,
                            str(p["displayName"] or "")))
    return out


def compare_what_if(local: list[Mapping[str, Any]] | None, live: list[Mapping[str, Any]]) -> dict[str, Any]:
    """Graph's What If answer beside the local evaluation: each policy's policyApplies and analysisReasons, and the
    differences that matter (the local answer says a policy applies and Graph says it does not for a reason other
    than missing sign-in details, or Graph says one applies that the local answer does not list)."""
    policies = [{"id": p.get("id"), "displayName": p.get("displayName"), "state": p.get("state"),
                 "policyApplies": p.get("policyApplies"), "analysisReasons": p.get("analysisReasons")} for p in live]
    differences: list[dict[str, Any]] = []
    if local is not None:
        by_id = {str(p.get("id")): p for p in local}
        for p in policies:
            mine = by_id.get(str(p["id"]))
            if p["state"] == "disabled":
                continue
            if p["policyApplies"] is True and mine is None:
                differences.append({"id": p["id"], "displayName": p["displayName"],
                                    "difference": "Graph says it applies; the mirror's policies do not reach this sign-in"})
            elif (p["policyApplies"] is False and mine is not None and mine.get("applies") is True
                  and p["analysisReasons"] != "notEnoughInformation"):
                differences.append({"id": p["id"], "displayName": p["displayName"],
                                    "difference": f"the mirror says it applies; Graph says not ({p['analysisReasons']})"})
    return {"policies": policies, "differences": differences}


__all__ = ["compare_what_if", "evaluate", "guest_kind", "requirement"]
