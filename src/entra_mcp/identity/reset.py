"""check_reset_eligibility: may this password be reset, by whom and where — one verdict and the reasons.

Verdicts, first match wins:
  escalate           the caller is not verifiably the account owner (a chat session was given and failed), the
                     account is disabled, the user is at risk (Identity Protection), or the user is a VIP
  guest_home_tenant  a guest: their home organisation resets the password
  not_by_helpdesk    the desk's role may not reset this user's password (Entra's "Who can reset passwords" table:
                     privileged roles, roles through a role-assignable group, membership of such a group, PIM
                     eligibility counts as held)
  unknown            a fact the decision needs is not in the mirror (roles area off or never synced)
  on_premises        synced from on-premises AD and password writeback is off or unknown
  self_service       SSPR is enabled and registered: the user can reset it themselves (the desk may too)
  helpdesk_cloud     the desk may reset it in Entra ID
The table and its source: docs/graph-facts-account.md.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Mapping

from ..errors import InvalidArgument
from .account_facts import (
    AT_RISK_STATES,
    AUTH_ADMIN,
    DIRECTORY_READERS,
    GLOBAL_ADMIN,
    GROUPS_ADMIN,
    GUEST_INVITER,
    HELPDESK_ADMIN,
    MESSAGE_CENTER_READER,
    PASSWORD_ADMIN,
    PRIVILEGED_AUTH_ADMIN,
    PRIVILEGED_ROLE_ADMIN,
    REPORTS_READER,
    USAGE_SUMMARY_READER,
    USER_ADMIN,
    UX_SUCCESS_MANAGER,
    account_index,
    authentication_section,
    is_vip,
    risk_section,
    roles_section,
)
from .common import area_unavailable_reason, as_of, freshness_findings, name_of, user_ref
from .findings import finding, quote, sort_findings
from .users import resolve_user
from .view import DirectoryView

# the six roles the table's columns name
RESETTERS = {
    "Password Administrator": PASSWORD_ADMIN, "Helpdesk Administrator": HELPDESK_ADMIN,
    "Authentication Administrator": AUTH_ADMIN, "User Administrator": USER_ADMIN,
    "Privileged Authentication Administrator": PRIVILEGED_AUTH_ADMIN, "Global Administrator": GLOBAL_ADMIN,
}
_ALL = frozenset(RESETTERS.values())
_TOP = frozenset({PRIVILEGED_AUTH_ADMIN, GLOBAL_ADMIN})
# target's role template id -> the resetter roles that may reset that target's password (tenant-scoped table)
RESET_TABLE: dict[str, frozenset[str]] = {
    AUTH_ADMIN: frozenset({AUTH_ADMIN}) | _TOP,
    DIRECTORY_READERS: _ALL,
    GLOBAL_ADMIN: _TOP,
    GROUPS_ADMIN: frozenset({USER_ADMIN}) | _TOP,
    GUEST_INVITER: _ALL,
    HELPDESK_ADMIN: frozenset({HELPDESK_ADMIN, USER_ADMIN}) | _TOP,
    MESSAGE_CENTER_READER: frozenset({HELPDESK_ADMIN, AUTH_ADMIN, USER_ADMIN}) | _TOP,
    PASSWORD_ADMIN: _ALL,
    PRIVILEGED_AUTH_ADMIN: _TOP,
    PRIVILEGED_ROLE_ADMIN: _TOP,
    REPORTS_READER: frozenset({HELPDESK_ADMIN, AUTH_ADMIN, USER_ADMIN}) | _TOP,
    USER_ADMIN: frozenset({USER_ADMIN}) | _TOP,
    UX_SUCCESS_MANAGER: frozenset({HELPDESK_ADMIN, AUTH_ADMIN, USER_ADMIN}) | _TOP,
    USAGE_SUMMARY_READER: frozenset({HELPDESK_ADMIN, AUTH_ADMIN, USER_ADMIN}) | _TOP,
}
OTHER_ROLES = _TOP  # "All other built-in and custom roles", a role-assignable group's member, a restricted AU
_NAME_OF = {v: k for k, v in RESETTERS.items()}
DEFAULT_DESK_ROLE = "Helpdesk Administrator"


def desk_role_id(desk_role: str | None) -> str:
    if desk_role is None:
        return HELPDESK_ADMIN
    for name, rid in RESETTERS.items():
        if desk_role.strip().casefold() in (name.casefold(), rid):
            return rid
    raise InvalidArgument(f"desk_role must be one of: {', '.join(RESETTERS)} (got {quote(desk_role)}).")


def who_may_reset(view: DirectoryView, user_id: str) -> tuple[frozenset[str], list[str]]:
    """(the resetter role ids allowed for this target, why it is restricted) from the target's roles."""
    idx = account_index(view)
    allowed = _ALL
    why: list[str] = []
    for h in idx.roles_by_user.get(user_id, []):
        allowed = allowed & RESET_TABLE.get(h.template_id, OTHER_ROLES)
        how = "is PIM-eligible for" if h.eligible else "holds"
        via = f" through the role-assignable group {name_of(dict(view.snapshot.groups.get(h.via) or {'id': h.via}))}" if h.via else ""
        scope = "" if h.scope == "/" else f" (scoped to {quote(h.scope)})"
        if RESET_TABLE.get(h.template_id, OTHER_ROLES) != _ALL:
            why.append(f"{how} {quote(h.name)}{via}{scope}")
    if idx.role_group_owners.get(user_id):  # "members and owners of role-assignable groups are protected"
        allowed = allowed & OTHER_ROLES
        why.append("owns the role-assignable group "
                   + ", ".join(name_of(dict(view.snapshot.groups.get(g) or {"id": g})) for g in idx.role_group_owners[user_id]))
    if idx.role_group_members.get(user_id):
        allowed = allowed & OTHER_ROLES
        if not any("role-assignable" in w for w in why):
            gids = idx.role_group_members[user_id]
            why.append("is a member of the role-assignable group "
                       + ", ".join(name_of(dict(view.snapshot.groups.get(g) or {"id": g})) for g in gids))
    return allowed, why


def check_reset_eligibility(view: DirectoryView, user: str, *, caller: Mapping[str, Any] | None = None,
                            desk_role: str | None = None, password_writeback: bool | None = None,
                            now: datetime | None = None) -> dict[str, Any]:
    """One verdict (see the module docstring) with its reasons and the facts it rests on.

    `caller`: the chat-session check when a session was given — {"valid": bool, "matchesClaimedUser": bool|None,
    "reason": str|None}; None when no session was given (the caller is then unverified and the answer says so).
    `password_writeback`: what the tenant's config states (None: unknown; Graph does not tell an app)."""
    record = resolve_user(view, user)
    uid = str(record.get("id"))
    name = name_of(record)
    desk = desk_role_id(desk_role)
    reasons: list[str] = []
    findings: list[dict[str, str]] = []
    auth, f_auth = authentication_section(view, record)
    roles, f_roles = roles_section(view, record)
    risk, f_risk = risk_section(view, record)
    findings += f_auth + f_roles + f_risk
    synced = record.get("onPremisesSyncEnabled") is True
    guest = record.get("userType") == "Guest"
    roles_unknown = area_unavailable_reason(view, "roles")
    allowed, why = who_may_reset(view, uid) if roles_unknown is None else (frozenset(), [])
    verdict: str | None = None

    # ---- who is asking
    verified: bool | None = None
    if caller is not None:
        verified = bool(caller.get("valid")) and caller.get("matchesClaimedUser") is True
        if not verified:
            why_not = caller.get("reason") or ("the signed-in person is not this user" if caller.get("valid") else "the chat session is not valid")
            verdict = "escalate"
            reasons.append(f"The caller is not verified as {name}: {why_not}. Verify out of band before anything else.")
            findings.append(finding("RESET_CALLER_UNVERIFIED", f"The chat session does not prove the caller is {name}: {why_not}."))
    if verdict is None and record.get("accountEnabled") is False:
        verdict = "escalate"
        reasons.append(f"The account of {name} is disabled: it is disabled on purpose until someone with authority says otherwise.")
    if verdict is None and guest:
        verdict = "guest_home_tenant"
        reasons.append(f"{name} is a guest: their home organisation owns the password; their own help desk resets it.")
    if verdict is None and roles_unknown is None and desk not in allowed:
        verdict = "not_by_helpdesk"
        reasons.append(f"A {_NAME_OF[desk]} may not reset the password of {name}, who {'; '.join(why)} "
                       f"(Entra's 'Who can reset passwords'). Only: {', '.join(_NAME_OF[r] for r in RESETTERS.values() if r in allowed)}.")
        findings.append(finding("RESET_NOT_BY_HELPDESK", reasons[-1]))
    if verdict is None and risk is not None and risk.get("riskState") in AT_RISK_STATES:
        verdict = "escalate"
        reasons.append(f"Identity Protection flags {name} as {quote(risk.get('riskState'))} (level {quote(risk.get('riskLevel'))}): "
                       "hand over to security; a reset alone does not end a compromise (revoke sessions, check MFA methods).")
    if verdict is None and is_vip(record):
        verdict = "escalate"
        reasons.append(f"{name} is an executive ({quote(record.get('jobTitle'))}): verify identity out of band and follow the VIP process.")
        findings.append(finding("VIP_REQUESTER", f"{name} is an executive: verify identity out of band before any reset."))
    if verdict is None and roles_unknown is not None:
        verdict = "unknown"
        reasons.append(f"Whether a {_NAME_OF[desk]} may reset this password is unknown: {roles_unknown}.")
        if auth is not None and auth.get("isAdmin") is True:
            reasons.append(f"The authentication-methods registration report marks {name} as an administrator (isAdmin): "
                           "treat the account as privileged; route the reset to a Privileged Authentication "
                           "Administrator or Global Administrator.")
    if verdict is None and synced and password_writeback is not True:
        verdict = "on_premises"
        if password_writeback is None:
            reasons.append(f"{name} is synchronised from on-premises AD and whether password writeback is on is unknown "
                           "(Graph does not tell an app): reset it in AD; with writeback a cloud or self-service reset also works.")
            findings.append(finding("PASSWORD_WRITEBACK_UNKNOWN"))
        else:
            reasons.append(f"{name} is synchronised from on-premises AD without password writeback: reset it in AD.")
    sspr_ready = auth is not None and auth.get("isSsprEnabled") is True and auth.get("isSsprRegistered") is True
    if verdict is None and sspr_ready:
        verdict = "self_service"
        reasons.append(f"{name} is registered for self-service password reset: point them to https://aka.ms/sspr "
                       f"(a {_NAME_OF[desk]} may also reset it).")
    if verdict is None:
        verdict = "helpdesk_cloud"
        reasons.append(f"A {_NAME_OF[desk]} may reset the password of {name} in Entra ID"
                       + (" (self-service readiness is unknown)." if auth is None else
                          " (self-service reset is not available to them)."))
    if caller is None and verdict in ("helpdesk_cloud", "self_service", "on_premises"):
        findings.append(finding("RESET_CALLER_UNVERIFIED", "No chat session was given: verify the caller out of band "
                                "(call back on the number in the directory, or the manager) before resetting."))
    if synced and verdict not in ("on_premises",):
        findings.append(finding("ONPREM_SYNCED"))
    findings += freshness_findings(view.snapshot, now)
    whom = [n for n, r in RESETTERS.items() if r in allowed] if roles_unknown is None else None
    return {
        "user": {**user_ref(record), "userType": record.get("userType"), "accountEnabled": record.get("accountEnabled"),
                 "onPremisesSyncEnabled": record.get("onPremisesSyncEnabled")},
        "verdict": verdict,
        "reasons": reasons,
        "deskRole": _NAME_OF[desk],
        "rolesThatMayReset": whom,
        "callerVerified": verified,
        "passwordWriteback": password_writeback if synced else None,
        "authentication": auth,
        "roles": roles,
        "risk": risk,
        "asOf": as_of(view),
        "findings": sort_findings(findings),
    }


__all__ = ["RESETTERS", "RESET_TABLE", "check_reset_eligibility", "who_may_reset"]
