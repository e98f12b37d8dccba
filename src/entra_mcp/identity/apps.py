"""Applications and enterprise apps: what an app is, whether its credentials are healthy, and who may sign in to it.

Access rules (Microsoft Graph / Entra ID):
- a disabled service principal lets nobody in; a disabled account signs in nowhere;
- appRoleAssignmentRequired false: every user of the tenant may sign in (assignments only pick roles);
- appRoleAssignmentRequired true: the user needs an app role assignment, to the user or to a group the user is a
  DIRECT member of. Entra does not pass group assignments on to members of nested groups ("all direct members of
  the group will be considered assigned"): such assignments are listed with `effective: false` and NESTED_GROUP_ONLY.
- the all-zero appRoleId is "Default Access".
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Mapping

from ..errors import InvalidArgument, NotFoundError
from . import access
from .common import area_finding, area_unavailable_reason, as_of, freshness_findings, name_of, user_ref
from .findings import finding, quote, sort_findings, suspicious_findings
from .text import APP_EXPECTED, clean_identifier, iso, parse_time, utcnow
from .users import resolve_user
from .view import DirectoryView

DEFAULT_ACCESS_ROLE = "00000000-0000-0000-0000-000000000000"
MICROSOFT_TENANT_ID = "f8cdef31-a31e-4b4a-93e4-5f571e91255a"  # appOwnerOrganizationId of Microsoft's own apps
EXPIRING_DAYS = 30
MAX_CREDENTIALS = 50
MAX_ROLES = 50
MAX_CREDENTIAL_FINDINGS = 5
MAX_APPROVER_GROUPS = 10


def resolve_app(view: DirectoryView, app: str) -> tuple[Mapping[str, Any] | None, Mapping[str, Any] | None]:
    """(application, service principal) for an appId, an object id of either, or a display name. At least one is
    not None. NotFoundError with the closest names; InvalidArgument listing the appIds when a name is shared."""
    text = clean_identifier(app, argument="app", expected=APP_EXPECTED)
    refs = view.app_refs(text)
    if len(refs) > 1:
        listed = []
        for ref in refs[:10]:
            application, sp = view.app_objects(ref)
            obj = sp or application or {}
            listed.append(f"{obj.get('appId') or obj.get('id')} ({quote(obj.get('displayName'), 40)})")
        raise InvalidArgument(
            f"{len(refs)} apps are named {quote(text)}: give the appId of the one you mean: {'; '.join(listed)}."
        )
    if refs:
        application, sp = view.app_objects(refs[0])
        if application is not None or sp is not None:
            return application, sp
    snap = view.snapshot
    if not snap.applications and not snap.service_principals:
        reasons = [
            r for r in (area_unavailable_reason(view, "applications"), area_unavailable_reason(view, "service_principals")) if r
        ]
        raise NotFoundError(
            f"No app {quote(text)} can be found: {'; '.join(reasons) if reasons else 'the mirror holds no apps'}."
        )
    suggestions = [quote(name) for name in view.closest_app_names(text)]
    raise NotFoundError(f"No app matches {quote(text)}.", suggestions=suggestions)


def _resolve_or_unknown(
    view: DirectoryView, app: str, consequence: str
) -> tuple[Mapping[str, Any] | None, Mapping[str, Any] | None, list[dict[str, str]]]:
    """resolve_app, except that an app not found while the app areas are disabled or not synced is unknown, not
    missing: (None, None, AREA_DISABLED findings). The contract's null-with-a-reason, never a guess."""
    try:
        application, sp = resolve_app(view, app)
    except NotFoundError:
        unknown = [f for f in (area_finding(view, "applications", consequence),
                               area_finding(view, "service_principals", consequence)) if f]
        if not unknown:
            raise
        return None, None, unknown
    return application, sp, []


def _credentials(obj: Mapping[str, Any] | None, source: str, now: datetime) -> list[dict[str, Any]]:
    if not obj:
        return []
    out = []
    for field, kind in (("passwordCredentials", "password"), ("keyCredentials", "certificate")):
        for cred in obj.get(field) or ():
            end = parse_time(cred.get("endDateTime"))
            days = None if end is None else int((end - now).total_seconds() // 86400)
            row: dict[str, Any] = {
                "type": kind,
                "displayName": cred.get("displayName"),
                "keyId": cred.get("keyId"),
                "endDateTime": iso(end),
                "expired": None if end is None else end <= now,
                "expiresInDays": days,
                "source": source,
            }
            # A password credential's `hint` is the first characters of the secret itself: never passed on.
            if kind != "password":
                row["usage"] = cred.get("usage")
            out.append(row)
    return out


def _role_map(application: Mapping[str, Any] | None, sp: Mapping[str, Any] | None) -> dict[str, dict[str, Any]]:
    roles: dict[str, dict[str, Any]] = {}
    for obj in (application, sp):
        for role in (obj or {}).get("appRoles") or ():
            if role.get("id"):
                roles[str(role["id"]).casefold()] = role
    return roles


def _role_ref(roles: dict[str, dict[str, Any]], role_id: str | None) -> dict[str, Any]:
    if not role_id or role_id == DEFAULT_ACCESS_ROLE:
        return {"id": DEFAULT_ACCESS_ROLE, "value": None, "displayName": "Default Access"}
    role = roles.get(str(role_id).casefold())
    if role is None:
        return {"id": role_id, "value": None, "displayName": None}
    ref = {"id": role_id, "value": role.get("value"), "displayName": role.get("displayName")}
    if role.get("isEnabled") is False:
        ref["isEnabled"] = False
    return ref


def _owned_here(view: DirectoryView, application: Mapping[str, Any] | None, sp: Mapping[str, Any] | None) -> bool | None:
    if application is not None:
        return True
    owner = (sp or {}).get("appOwnerOrganizationId")
    if owner is None:
        return None
    return str(owner).casefold() == str(view.snapshot.tenant_id).casefold()


def _app_header(view: DirectoryView, application: Mapping[str, Any] | None, sp: Mapping[str, Any] | None) -> dict[str, Any]:
    obj = sp or application or {}
    return {
        "appId": obj.get("appId"),
        "displayName": obj.get("displayName"),
        "servicePrincipalId": sp.get("id") if sp else None,
        "applicationId": application.get("id") if application else None,
    }


def get_app_principal(view: DirectoryView, app: str, now: datetime | None = None) -> dict[str, Any]:
    """The app registration and/or enterprise app (service principal) for `app`, with its credentials (secrets and
    certificates: expired, expiring within 30 days), its app roles and what a service desk should notice."""
    current = utcnow(now)
    application, sp, unknown = _resolve_or_unknown(view, app, "the app cannot be looked up, so it is unknown (null).")
    findings = freshness_findings(view.snapshot, now)
    if unknown:
        return {
            **_app_header(view, None, None),
            "application": None, "servicePrincipal": None, "credentials": None, "credentialsTotal": None,
            "appRoles": None, "appRolesTotal": None, "asOf": as_of(view), "findings": sort_findings(findings + unknown),
        }
    owned = _owned_here(view, application, sp)
    findings += suspicious_findings("application", application) + suspicious_findings("servicePrincipal", sp)
    name = name_of(sp or application)

    application_out = None
    if application is not None:
        application_out = {
            "id": application.get("id"),
            "appId": application.get("appId"),
            "displayName": application.get("displayName"),
            "signInAudience": application.get("signInAudience"),
            "createdDateTime": application.get("createdDateTime"),
        }
    elif owned:
        missing = area_finding(view, "applications", "the app registration (and its credentials) is unknown.")
        if missing:
            findings.append(missing)
    sp_out = None
    if sp is not None:
        sp_out = {
            "id": sp.get("id"),
            "appId": sp.get("appId"),
            "displayName": sp.get("displayName"),
            "accountEnabled": sp.get("accountEnabled"),
            "appRoleAssignmentRequired": sp.get("appRoleAssignmentRequired"),
            "servicePrincipalType": sp.get("servicePrincipalType"),
            "signInAudience": (application or {}).get("signInAudience", sp.get("signInAudience")),
            "appOwnerOrganizationId": sp.get("appOwnerOrganizationId"),
            "ownedByThisTenant": owned,
        }
        if sp.get("accountEnabled") is False:
            findings.append(finding("SP_DISABLED", f"The enterprise app {name} is disabled: nobody can sign in to it."))
        if sp.get("appRoleAssignmentRequired"):
            findings.append(
                finding("ASSIGNMENT_REQUIRED", f"Users need an assignment (directly or through a group) to use {name}.")
            )
        if sp.get("servicePrincipalType") == "ManagedIdentity":
            findings.append(finding("MANAGED_IDENTITY", f"{name} is a managed identity of an Azure resource."))
        owner = str(sp.get("appOwnerOrganizationId") or "").casefold()
        if owned is False:
            who = "Microsoft (a first-party app)" if owner == MICROSOFT_TENANT_ID else "another organisation"
            findings.append(
                finding(
                    "THIRD_PARTY_APP",
                    f"{name} is registered by {who}: its credentials and settings are managed there, not here.",
                )
            )
    elif view.area_ready("service_principals"):
        findings.append(
            finding(
                "NO_SERVICE_PRINCIPAL",
                f"{name} has no enterprise app (service principal) in this tenant: nobody here can sign in to it "
                "until an administrator consents to it.",
            )
        )
    else:
        missing = area_finding(view, "service_principals", "the enterprise app is unknown.")
        if missing:
            findings.append(missing)

    credentials = _credentials(application, "application", current) + _credentials(sp, "servicePrincipal", current)
    credentials.sort(key=lambda c: (c["endDateTime"] is None, c["endDateTime"] or ""))
    expired = [c for c in credentials if c["expired"]]
    expiring = [c for c in credentials if c["expired"] is False and c["expiresInDays"] is not None
                and c["expiresInDays"] <= EXPIRING_DAYS]
    for cred in expired[:MAX_CREDENTIAL_FINDINGS]:
        findings.append(
            finding(
                "APP_CREDENTIAL_EXPIRED",
                f"The {cred['type']} {quote(cred['displayName'] or cred['keyId'], 40)} of {name} expired on "
                f"{cred['endDateTime']}.",
            )
        )
    for cred in expiring[:MAX_CREDENTIAL_FINDINGS]:
        findings.append(
            finding(
                "APP_CREDENTIAL_EXPIRING",
                f"The {cred['type']} {quote(cred['displayName'] or cred['keyId'], 40)} of {name} expires in "
                f"{cred['expiresInDays']} days ({cred['endDateTime']}).",
            )
        )
    if credentials and len(expired) == len(credentials):
        findings.append(
            finding("APP_ALL_CREDENTIALS_EXPIRED", f"Every credential of {name} has expired: it cannot authenticate.")
        )

    roles = list(_role_map(application, sp).values())
    return {
        **_app_header(view, application, sp),
        "application": application_out,
        "servicePrincipal": sp_out,
        "credentials": credentials[:MAX_CREDENTIALS],
        "credentialsTotal": len(credentials),
        "appRoles": [
            {
                "id": r.get("id"),
                "value": r.get("value"),
                "displayName": r.get("displayName"),
                "allowedMemberTypes": r.get("allowedMemberTypes"),
                "isEnabled": r.get("isEnabled"),
            }
            for r in roles[:MAX_ROLES]
        ],
        "appRolesTotal": len(roles),
        "owners": access.app_owners(view, application, sp),
        "asOf": as_of(view),
        "findings": sort_findings(findings),
    }


def user_app_assignments(
    view: DirectoryView, user_id: str, sp: Mapping[str, Any], roles: dict[str, dict[str, Any]]
) -> list[dict[str, Any]]:
    """The user's assignments to `sp`: direct, and through every group the user is in (with the chain of groups
    from the user's direct group to the assigned one; `effective` only for direct members of the group)."""
    sp_id = sp.get("id")
    groups = view.snapshot.groups
    out: list[dict[str, Any]] = []
    for assignment in view.assignments_of(user_id):
        if assignment.get("resourceId") == sp_id:
            out.append({"appRole": _role_ref(roles, assignment.get("appRoleId")), "via": "direct", "effective": True})
    if view.area_ready("groups"):
        for gid, chain in view.transitive_groups(user_id).items():
            for assignment in view.assignments_of(gid):
                if assignment.get("resourceId") != sp_id:
                    continue
                out.append(
                    {
                        "appRole": _role_ref(roles, assignment.get("appRoleId")),
                        "via": "group",
                        "group": {"id": gid, "displayName": (groups.get(gid) or {}).get("displayName")},
                        "chain": [{"id": g, "displayName": (groups.get(g) or {}).get("displayName")} for g in chain],
                        "effective": len(chain) == 1,
                    }
                )
    out.sort(key=lambda a: (not a["effective"], a["via"] != "direct", len(a.get("chain", ()))))
    return out


def _entitlement(
    who: str,
    what: str,
    required: bool | None,
    assignments: list[dict[str, Any]],
    assignments_known: bool,
    groups_known: bool,
    findings: list[dict[str, str]],
) -> tuple[bool | None, str]:
    """Whether the assignment rules let the user in (before disabled accounts or apps are considered), and the
    one-sentence reason; adds the findings that explain it."""
    effective = [a for a in assignments if a["effective"]]
    grants: bool | None
    if not required:
        grants = True
        findings.append(
            finding("ASSIGNMENT_NOT_REQUIRED", f"{what} does not require assignment: every user of the tenant may sign in.")
        )
        grant_reason = f"{what} does not require assignment, so every user of the tenant may sign in."
    elif effective:
        grants = True
        first = effective[0]
        role = first["appRole"].get("displayName") or first["appRole"].get("value") or "an app role"
        if first["via"] == "direct":
            grant_reason = f"{who} is assigned to {what} directly (role {quote(role)})."
        else:
            grant_reason = (
                f"{who} is a direct member of {quote(first['group']['displayName'])}, which is assigned to {what} "
                f"(role {quote(role)})."
            )
    elif not assignments_known or not groups_known:
        grants = None
        grant_reason = (
            f"Unknown: {what} requires assignment and the mirror lacks "
            f"{'app role assignments' if not assignments_known else 'group memberships'} to check it."
        )
    else:
        grants = False
        nested = [a for a in assignments if not a["effective"]]
        if nested:
            chain = " > ".join(quote(g["displayName"], 40) for g in nested[0]["chain"])
            findings.append(
                finding(
                    "NESTED_GROUP_ONLY",
                    f"{who} reaches the assigned group {quote(nested[0]['group']['displayName'])} only through nested "
                    f"groups ({chain}); Entra grants app access to direct members of an assigned group only: add the "
                    "user to that group directly or assign the app to a group the user is directly in.",
                )
            )
            grant_reason = (
                f"{what} requires assignment and {who} is only in a nested group of an assigned group, which Entra "
                "does not honour."
            )
        else:
            grant_reason = f"{what} requires assignment and {who} has none, directly or through a group."
        findings.append(
            finding("NOT_ASSIGNED", f"{who} is not assigned to {what}: add an assignment (to the user or a group).")
        )

    return grants, grant_reason


def check_app_access(view: DirectoryView, user: str, app: str, now: datetime | None = None) -> dict[str, Any]:
    """Whether `user` may sign in to `app` and why: hasAccess true/false, or null when the mirror cannot tell (an
    area it needs is disabled). Lists the user's assignments (appRole, via direct or group, with the group chain)."""
    record = resolve_user(view, user)
    application, sp, unknown = _resolve_or_unknown(view, app, "whether the user may use the app is unknown (null).")
    has_access: bool | None
    findings = freshness_findings(view.snapshot, now) + suspicious_findings("user", record)
    if unknown:
        return {"user": user_ref(record), "app": None, "hasAccess": None,
                "reason": "Unknown: the app cannot be looked up (app registrations or enterprise apps are not in the "
                          "mirror; see sync_status).",
                "assignmentRequired": None, "assignments": None, "assignmentsTotal": None, "asOf": as_of(view),
                "findings": sort_findings(findings + unknown)}
    findings += suspicious_findings("servicePrincipal", sp) + suspicious_findings("application", application)
    who, what = name_of(record), name_of(sp or application)
    answer: dict[str, Any] = {"user": user_ref(record), "app": _app_header(view, application, sp)}

    if sp is None:
        if view.area_ready("service_principals"):
            findings.append(
                finding(
                    "NO_SERVICE_PRINCIPAL",
                    f"{what} has no enterprise app (service principal) in this tenant: nobody here can sign in to it.",
                )
            )
            has_access, reason = False, f"{what} is not set up in this tenant (no service principal), so nobody can sign in."
        else:
            findings.append(area_finding(view, "service_principals", "whether the app is set up here is unknown.")
                            or finding("AREA_DISABLED"))
            has_access, reason = None, "Unknown: enterprise apps (service principals) are not in the mirror."
        answer.update(hasAccess=has_access, reason=reason, assignmentRequired=None, assignments=[],
                      asOf=as_of(view), findings=sort_findings(findings))
        return answer

    roles = _role_map(application, sp)
    required = sp.get("appRoleAssignmentRequired")
    assignments_known = view.area_ready("app_role_assignments")
    groups_known = view.area_ready("groups")
    assignments = user_app_assignments(view, record["id"], sp, roles) if assignments_known else []
    effective = [a for a in assignments if a["effective"]]
    for a in effective:
        if a["appRole"].get("isEnabled") is False:
            findings.append(
                finding("ROLE_DISABLED", f"The assigned role {quote(a['appRole']['displayName'])} of {what} is disabled.")
            )

    if not assignments_known:
        findings.append(
            area_finding(view, "app_role_assignments", "the user's assignments to the app are unknown.")
            or finding("AREA_DISABLED")
        )
    elif not groups_known:
        findings.append(
            area_finding(view, "groups", "assignments through groups are unknown.") or finding("AREA_DISABLED")
        )

    grants, grant_reason = _entitlement(who, what, required, assignments, assignments_known, groups_known, findings)

    blockers = []
    if sp.get("accountEnabled") is False:
        blockers.append(f"the enterprise app {what} is disabled")
        findings.append(finding("SP_DISABLED", f"The enterprise app {what} is disabled: nobody can sign in to it."))
    if record.get("accountEnabled") is False:
        blockers.append(f"the account of {who} is disabled")
        findings.append(finding("ACCOUNT_DISABLED", f"The account of {who} is disabled: it cannot sign in anywhere."))
    if blockers:
        has_access = False
        reason = f"No: {' and '.join(blockers)}" + (", although the user would otherwise be allowed." if grants else ".")
    else:
        has_access = grants
        reason = grant_reason

    if grants is False and assignments_known:
        age = access.assignments_age_minutes(view, now)
        if age is not None:
            findings.append(finding("ASSIGNMENT_DATA_AGE", f"The assignment data is {age} minutes old: an assignment "
                                    "made since then is not in it yet (assignment-required apps are re-read every sync)."))
    ca_answer, ca_findings = access.conditional_access(view, record, sp, application)
    findings += ca_findings
    if ca_answer is not None and ca_answer["blocked"] is True and has_access:
        has_access = False
        reason = f"No: Conditional Access blocks {who} in {what} ({ca_answer['policies'][0]['displayName']!r})."
    answer.update(
        hasAccess=has_access,
        reason=reason,
        assignmentRequired=required,
        assignments=assignments[:50] if assignments_known else None,
        assignmentsTotal=len(assignments) if assignments_known else None,
        conditionalAccess=ca_answer,
        approvers=_approvers(view, application, sp, assignments) if grants is not True else None,
        asOf=as_of(view),
        findings=sort_findings(findings),
    )
    return answer


def _approvers(view: DirectoryView, application: Mapping[str, Any] | None, sp: Mapping[str, Any],
               assignments: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Who can approve or grant access when the user lacks it: the app's owners, and the owners of the groups
    assigned to the app (adding the user to one of them grants access). None when owners are not mirrored."""
    owners = access.app_owners(view, application, sp)
    if owners is None:
        return None
    sp_id = str(sp.get("id"))
    groups = view.snapshot.groups
    assigned = [a for a in view.snapshot.app_role_assignments.get(sp_id, ()) if a.get("principalType") == "Group"]
    rows = []
    for a in assigned[:MAX_APPROVER_GROUPS]:
        gid = str(a.get("principalId"))
        rows.append({"id": gid, "displayName": (groups.get(gid) or {}).get("displayName") or a.get("principalDisplayName"),
                     "owners": access.owners_of(view, gid) or []})
    return {"appOwners": owners, "assignedGroups": rows, "assignedGroupsTotal": len(assigned)}
