"""An account's wider story from the mirror: MFA/SSPR readiness, directory roles, licences and risk.

Each section is a compact dict, or null with a finding when its area is disabled or never synced — never a guess.
Roles count when held directly, through a role-assignable group (its direct members: such groups cannot nest), or
as a PIM eligibility (activatable at any moment). Facts and sources: docs/graph-facts-account.md.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from typing import Any, Mapping

from .common import area_finding, area_unavailable_reason, name_of, property_getter
from .findings import finding, quote
from .view import DirectoryView

# built-in role template ids (permissions-reference.md "All roles")
GLOBAL_ADMIN = "62e90394-69f5-4237-9190-012177145e10"
PRIVILEGED_ROLE_ADMIN = "e8611ab8-c189-46e8-94e1-60213ab1f814"
PRIVILEGED_AUTH_ADMIN = "7be44c8a-adaf-4e2a-84d6-ab2649e08a13"
USER_ADMIN = "fe930be7-5e62-47db-91af-98c3a49a38b1"
HELPDESK_ADMIN = "729827e3-9c14-49f7-bb1b-9608f156bbb8"
PASSWORD_ADMIN = "966707d0-3269-4727-9be2-8c3a10f19b9d"
AUTH_ADMIN = "c4e39bd9-1100-46d3-8c65-fb160da0071f"
GROUPS_ADMIN = "fdd7a751-b60b-444a-984c-02652fe8fa1c"
DIRECTORY_READERS = "88d8e3e3-8f55-4a1e-953a-9b9898b8876b"
GUEST_INVITER = "95e79109-95c0-4d8e-aee3-d01accf2d47b"
MESSAGE_CENTER_READER = "790c1fb9-7f7d-4f88-86a1-ef1f95c05c1b"
REPORTS_READER = "4a5d8f65-41da-4de4-8968-e035b65339cf"
UX_SUCCESS_MANAGER = "27460883-1df1-4691-b032-3b79643e5e63"
USAGE_SUMMARY_READER = "75934031-6c7e-415a-99d7-48dbd49e875e"

BUILTIN_ROLE_NAMES = {
    GLOBAL_ADMIN: "Global Administrator", PRIVILEGED_ROLE_ADMIN: "Privileged Role Administrator",
    PRIVILEGED_AUTH_ADMIN: "Privileged Authentication Administrator", USER_ADMIN: "User Administrator",
    HELPDESK_ADMIN: "Helpdesk Administrator", PASSWORD_ADMIN: "Password Administrator",
    AUTH_ADMIN: "Authentication Administrator", GROUPS_ADMIN: "Groups Administrator",
    DIRECTORY_READERS: "Directory Readers", GUEST_INVITER: "Guest Inviter",
    MESSAGE_CENTER_READER: "Message Center Reader", REPORTS_READER: "Reports Reader",
    UX_SUCCESS_MANAGER: "User Experience Success Manager", USAGE_SUMMARY_READER: "Usage Summary Reports Reader",
}
# roles that are no "admin" for the purposes of privilege findings (read-only, harmless to hold)
NON_ADMIN_ROLES = frozenset({DIRECTORY_READERS, GUEST_INVITER, MESSAGE_CENTER_READER, REPORTS_READER,
                             UX_SUCCESS_MANAGER, USAGE_SUMMARY_READER})
AT_RISK_STATES = frozenset({"atRisk", "confirmedCompromised"})


def collection(view: DirectoryView, name: str) -> Mapping[str, Any]:
    """One of the account areas' mirror collections (empty when absent)."""
    snap = view.snapshot
    get = getattr(snap, "collection", None)
    value = get(name) if callable(get) else getattr(snap, name, None)
    return value if isinstance(value, Mapping) else {}


@lru_cache(maxsize=1)
def licence_names() -> tuple[dict[str, str], dict[str, str]]:
    """(skuPartNumber -> product name, servicePlanName -> product name) from data/licence_names.json."""
    data = json.loads(resources.files("entra_mcp").joinpath("data/licence_names.json").read_text(encoding="utf-8"))
    return dict(data["skus"]), dict(data["servicePlans"])


@dataclass(frozen=True)
class RoleHolding:
    role_id: str  # roleDefinitionId (a built-in role's id is its template id)
    template_id: str
    name: str
    scope: str  # "/" or "/administrativeUnits/{id}"
    via: str | None  # the role-assignable group's id, or None when assigned directly
    eligible: bool  # a PIM eligibility, not an active assignment


@dataclass
class AccountIndex:
    """Per-view indexes of the account areas, built once on first use."""

    roles_by_user: dict[str, list[RoleHolding]] = field(default_factory=dict)
    role_group_members: dict[str, list[str]] = field(default_factory=dict)  # user -> role-assignable groups
    # user -> role-assignable groups they own: an owner manages the membership, so can add themselves and hold the
    # group's roles; Entra protects owners like members ("All members and owners of role-assignable groups are
    # protected", docs/graph-facts-account.md). Empty when the owners area is not mirrored.
    role_group_owners: dict[str, list[str]] = field(default_factory=dict)
    role_group_roles: dict[str, set[str]] = field(default_factory=dict)  # group -> names of the roles it holds


_ROLE_SOURCES = ("role_assignments", "role_eligibilities", "role_definitions")


def account_index(view: DirectoryView) -> AccountIndex:
    """The view's AccountIndex, derived once per version of the collections it reads."""
    snap = view.snapshot
    sources = (*(collection(view, name) for name in _ROLE_SOURCES), snap.groups, snap.members,
               collection(view, "owners"), view.area_ready("owners"))
    return view.derived("account_index", sources, lambda: _build_index(view))  # type: ignore[no-any-return]


def _build_index(view: DirectoryView) -> AccountIndex:
    idx = AccountIndex()
    snap = view.snapshot
    definitions = collection(view, "role_definitions")
    groups = snap.groups
    members = snap.members

    def add(a: Mapping[str, Any], eligible: bool) -> None:
        pid, rid = str(a.get("principalId") or ""), str(a.get("roleDefinitionId") or "")
        if not pid or not rid:
            return
        d = definitions.get(rid) or {}
        template = str(d.get("templateId") or rid)
        name = str(d.get("displayName") or BUILTIN_ROLE_NAMES.get(template) or rid)
        scope = str(a.get("directoryScopeId") or "/")
        if pid in groups:
            idx.role_group_roles.setdefault(pid, set()).add(name)
            for uid, kind in (members.get(pid) or {}).items():
                if kind == "user":
                    idx.roles_by_user.setdefault(uid, []).append(RoleHolding(rid, template, name, scope, pid, eligible))
        else:
            idx.roles_by_user.setdefault(pid, []).append(RoleHolding(rid, template, name, scope, None, eligible))

    for a in collection(view, "role_assignments").values():
        add(a, False)
    for e in collection(view, "role_eligibilities").values():
        add(e, True)
    assignable = property_getter(groups, "isAssignableToRole")  # a column read: 15,000 groups in milliseconds
    owners = snap.collection("owners") if view.area_ready("owners") else {}
    for gid in groups:
        if assignable(gid):
            for uid, kind in (members.get(gid) or {}).items():
                if kind == "user":
                    idx.role_group_members.setdefault(uid, []).append(gid)
            for ref in owners.get(gid) or ():
                oid = str(ref.get("id")) if isinstance(ref, Mapping) else str(ref)
                if oid in snap.users:
                    idx.role_group_owners.setdefault(oid, []).append(gid)
    return idx


def _unavailable(view: DirectoryView, area: str, consequence: str) -> list[dict[str, str]] | None:
    """None when the area synced; else the findings to give with a null section: none for a mirror that does not
    report the area at all (written before the area existed), the reason otherwise."""
    if view.area(area) is None:
        return []
    f = area_finding(view, area, consequence)
    return None if f is None else [f]


def is_vip(user: Mapping[str, Any]) -> bool:
    """An executive by job title, as the ticket context judges it (VIP_REQUESTER)."""
    from .ticket import _VIP_TITLE  # ticket imports account, which imports this module: at call time

    return bool(_VIP_TITLE.search(str(user.get("jobTitle") or "")))


# ------------------------------------------------------------------------------------------------------ sections
def authentication_section(view: DirectoryView, user: Mapping[str, Any]) -> tuple[dict[str, Any] | None, list[dict[str, str]]]:
    """MFA and SSPR readiness from the registration report, or None with the finding that says why."""
    unavailable = _unavailable(view, "auth_methods", "MFA and self-service reset readiness are unknown (null).")
    if unavailable is not None:
        return None, unavailable
    name = name_of(user)
    report = collection(view, "registration")
    reg = report.get(str(user.get("id")))
    if reg is None and not report:
        return None, []  # an empty report: nothing to say per user
    if reg is None:
        return None, [finding("AUTH_METHODS_UNKNOWN", f"{name} is not in the authentication-methods registration report "
                              "(disabled accounts and accounts created since the last refresh are not): readiness unknown.")]
    out = {k: reg.get(k) for k in ("isMfaRegistered", "isMfaCapable", "isSsprEnabled", "isSsprRegistered",
                                   "isSsprCapable", "isPasswordlessCapable")}
    out["methodsRegistered"] = list(reg.get("methodsRegistered") or ())
    out["preferredMethod"] = reg.get("userPreferredMethodForSecondaryAuthentication")
    out["lastUpdatedDateTime"] = reg.get("lastUpdatedDateTime")
    out["isAdmin"] = reg.get("isAdmin")  # the report's own flag: tells a privileged account when roles are not mirrored
    findings = []
    if reg.get("isMfaRegistered") is False:
        findings.append(finding("MFA_NOT_REGISTERED", f"{name} has no MFA method registered: a first sign-in after a reset "
                                "may force registration, and MFA cannot prove the caller's identity."))
    if reg.get("isSsprEnabled") is False:
        findings.append(finding("SSPR_NOT_ENABLED", f"Self-service password reset is not enabled for {name}."))
    elif reg.get("isSsprRegistered") is False:
        findings.append(finding("SSPR_NOT_REGISTERED", f"{name} may use self-service password reset but has not registered for it."))
    return out, findings


def roles_section(view: DirectoryView, user: Mapping[str, Any]) -> tuple[dict[str, Any] | None, list[dict[str, str]]]:
    unavailable = _unavailable(view, "roles", "directory roles are unknown (null).")
    if unavailable is not None:
        return None, unavailable
    name = name_of(user)
    holdings = account_index(view).roles_by_user.get(str(user.get("id")), [])
    snap = view.snapshot

    def card(h: RoleHolding) -> dict[str, Any]:
        via = None
        if h.via is not None:
            g = snap.groups.get(h.via) or {}
            via = {"id": h.via, "displayName": g.get("displayName")}
        return {"role": h.name, "roleTemplateId": h.template_id, "directoryScopeId": h.scope, "via": via}

    active = [card(h) for h in holdings if not h.eligible]
    eligible = [card(h) for h in holdings if h.eligible]
    pim = (collection(view, "role_meta").get("pim") or {}).get("eligibility", "synced")
    admin = [h for h in holdings if h.template_id not in NON_ADMIN_ROLES]
    out: dict[str, Any] = {"privileged": bool(admin), "active": active,
                           "eligible": eligible if pim == "synced" else None}
    groups = account_index(view).role_group_members.get(str(user.get("id")), [])
    out["roleAssignableGroups"] = [{"id": g, "displayName": (snap.groups.get(g) or {}).get("displayName")} for g in groups]
    idx = account_index(view)
    owned = idx.role_group_owners.get(str(user.get("id")), [])
    out["ownsRoleAssignableGroups"] = ([{"id": g, "displayName": (snap.groups.get(g) or {}).get("displayName"),
                                         "roles": sorted(idx.role_group_roles.get(g, ()))} for g in owned]
                                       if view.area_ready("owners") else None)
    findings = []
    if any(idx.role_group_roles.get(g) for g in owned):
        out["privileged"] = True  # they can make themselves a member at any moment
    for g in owned:
        held = sorted(idx.role_group_roles.get(g, ()))
        what = f" (its members hold {', '.join(quote(r) for r in held)})" if held else ""
        findings.append(finding("ROLE_GROUP_OWNER", f"{name} owns the role-assignable group "
                                f"{name_of(dict(snap.groups.get(g) or {'id': g}))}{what}: an owner can add anyone, "
                                "themselves included, to it, and Entra protects them like an administrator."))
    names = sorted({h.name for h in admin if not h.eligible})
    if names:
        findings.append(finding("PRIVILEGED_ROLE", f"{name} holds {', '.join(quote(n) for n in names)}."))
    via = sorted({(h.name, h.via) for h in admin if h.via})
    for role, gid in via:
        findings.append(finding("ROLE_VIA_GROUP", f"{name} holds {quote(role)} as a member of the role-assignable group "
                                f"{name_of(dict(snap.groups.get(gid) or {'id': gid}))}."))
    elig = sorted({h.name for h in admin if h.eligible})
    if elig:
        findings.append(finding("PRIVILEGED_ROLE_ELIGIBLE", f"{name} is eligible (PIM) to activate {', '.join(quote(n) for n in elig)}."))
    if pim != "synced":
        findings.append(finding("AREA_DISABLED", f"PIM eligibility is {pim}; active assignments are known."))
    return out, findings


def licenses_section(view: DirectoryView, user: Mapping[str, Any]) -> tuple[list[dict[str, Any]] | None, list[dict[str, str]]]:
    assigned = user.get("assignedLicenses")
    name = name_of(user)
    skus = collection(view, "skus")
    sku_names, plan_names = licence_names()
    findings: list[dict[str, str]] = []
    unknown = _unavailable(view, "licenses", "product names and licence-assignment errors are unknown.")
    findings.extend(unknown or ())
    states = collection(view, "licence_states").get(str(user.get("id"))) or []
    # an assigned licence is Active unless its assignment state says otherwise; without that area's states, unknown
    assigned_state = None if unknown is not None else "Active"
    rows: list[dict[str, Any]] = []
    seen: set[str] = set()

    def product(sku_id: str) -> tuple[str | None, str | None, dict[str, str]]:
        sku = skus.get(sku_id) or {}
        part = sku.get("skuPartNumber")
        return part, (sku_names.get(str(part)) or part) if part else None, dict(sku.get("servicePlans") or {})

    for lic in assigned or ():
        sku_id = str(lic.get("skuId"))
        seen.add(sku_id)
        part, product_name, plans = product(sku_id)
        disabled = [plan_names.get(plans.get(p, ""), plans.get(p) or p) for p in lic.get("disabledPlans") or ()]
        rows.append({"skuId": sku_id, "skuPartNumber": part, "name": product_name, "disabledPlans": disabled,
                     "state": assigned_state, "error": None})
        if disabled:
            findings.append(finding("LICENSE_PLAN_DISABLED", f"{name}'s {quote(product_name or sku_id)} licence has "
                                    f"{', '.join(quote(d) for d in disabled)} switched off."))
    for st in states:
        sku_id = str(st.get("skuId"))
        part, product_name, _plans = product(sku_id)
        row = next((r for r in rows if r["skuId"] == sku_id), None)
        if row is None:
            row = {"skuId": sku_id, "skuPartNumber": part, "name": product_name, "disabledPlans": [], "state": None, "error": None}
            rows.append(row)
        row["state"], row["error"] = st.get("state"), st.get("error")
        if st.get("assignedByGroup"):
            row["assignedByGroup"] = st.get("assignedByGroup")
        if st.get("error"):
            findings.append(finding("LICENSE_ERROR", f"The {quote(product_name or sku_id)} licence of {name} is in error "
                                    f"({quote(st.get('error'))}): {_LICENCE_FIX.get(str(st.get('error')), 'see the licence blade')}."))
    if assigned is None and not rows:
        return None, findings
    return rows, findings


_LICENCE_FIX = {
    "CountViolation": "no licences of this product are left; free or buy one",
    "MutuallyExclusiveViolation": "it conflicts with another licence the user has; remove one",
    "DependencyViolation": "a plan it needs is missing or disabled",
    "ProhibitedInUsageLocationViolation": "the product is not available in the user's usage location",
    "UniquenessViolation": "a proxy address or UPN conflicts with another object",
    "Other": "Entra could not apply it; see the licence blade",
}


def risk_section(view: DirectoryView, user: Mapping[str, Any]) -> tuple[dict[str, Any] | None, list[dict[str, str]]]:
    unavailable = _unavailable(view, "risk", "whether the account is flagged as at risk is unknown (null).")
    if unavailable is not None:
        return None, unavailable
    rec = collection(view, "risky_users").get(str(user.get("id")))
    if rec is None:
        return {"riskLevel": "none", "riskState": "none", "riskDetail": None, "riskLastUpdatedDateTime": None}, []
    out = {k: rec.get(k) for k in ("riskLevel", "riskState", "riskDetail", "riskLastUpdatedDateTime")}
    name = name_of(user)
    if rec.get("riskState") in AT_RISK_STATES:
        return out, [finding("USER_AT_RISK", f"Identity Protection flags {name} as {quote(rec.get('riskState'))} "
                             f"(risk level {quote(rec.get('riskLevel'))}, updated {rec.get('riskLastUpdatedDateTime')}): "
                             "treat the account as possibly compromised.")]
    return out, []


def account_sections(view: DirectoryView, user: Mapping[str, Any]) -> tuple[dict[str, Any], list[dict[str, str]]]:
    """{authentication, roles, licenses, risk} and their findings, for check_account_state."""
    out: dict[str, Any] = {}
    findings: list[dict[str, str]] = []
    for key, fn in (("authentication", authentication_section), ("roles", roles_section),
                    ("licenses", licenses_section), ("risk", risk_section)):
        value, more = fn(view, user)
        out[key] = value
        findings.extend(more)
    return out, findings


def area_reason(view: DirectoryView, area: str) -> str | None:
    return area_unavailable_reason(view, area)


__all__ = ["AccountIndex", "RoleHolding", "account_index", "account_sections", "authentication_section",
           "collection", "is_vip", "licence_names", "licenses_section", "risk_section", "roles_section"]
