"""Devices, owners and Conditional Access in the answers: a user's devices (compact), who owns a group or an app (who
approves, whom to escalate to), the Conditional Access policies that reach a sign-in, and how old the app role
assignment data is. Pure functions of the view; the mirror's devices, owners and policies come from the `devices`,
`owners` and `conditional_access` areas."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Mapping

from . import conditional_access as ca
from .account_facts import BUILTIN_ROLE_NAMES, account_index
from .common import area_finding
from .findings import finding, judge_repeated_values, quote
from .text import iso, utcnow
from .view import DirectoryView, _column

MAX_DEVICES = 10
MAX_OWNERS = 10
JOIN_TYPE = {"AzureAd": "joined", "ServerAd": "hybridJoined", "Workplace": "registered"}

def _devices_by_user(view: DirectoryView) -> dict[str, tuple[str, ...]]:
    """user id -> the devices they own or use (owners first), derived once per devices collection."""
    devices = view.snapshot.collection("devices")
    return view.derived("devices_by_user", (devices,), lambda: _index_devices(devices))  # type: ignore[no-any-return]


def derive_indexes(view: DirectoryView) -> None:
    """Make the indexes the answers derive on first use (the view's group, app and assignment indexes, roles by user,
    devices by user, the instruction-text verdicts of the tables' repeated values) now:
    a reload or `entra-mcp sync` does it off the request path, so the first answer after it is not the slow one."""
    view.index_on_first_use()  # groups, apps, assignments
    account_index(view)
    _devices_by_user(view)
    snap = view.snapshot
    for table in (snap.users, snap.groups, snap.applications, snap.service_principals):
        judge_repeated_values(table)  # each repeated value of the table's coded columns, once for all records
    for table in snap.collections.values():
        getattr(table, "pos", None)  # a mirror Table's id -> row map, made on first use (100,000 users: ~0.05 s)


def _index_devices(devices: Mapping[str, Mapping[str, Any]]) -> dict[str, tuple[str, ...]]:
    index: dict[str, list[str]] = {}
    owners, users = _column(devices, "registeredOwners"), _column(devices, "registeredUsers")
    for did, owned_by, used_by in zip(devices, owners, users):
        for uid in owned_by or ():
            index.setdefault(str(uid), []).append(did)
        for uid in used_by or ():
            if did not in index.get(str(uid), ()):
                index.setdefault(str(uid), []).append(did)
    return {k: tuple(v) for k, v in index.items()}


def device_card(dev: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "id": dev.get("id"),
        "displayName": dev.get("displayName"),
        "operatingSystem": dev.get("operatingSystem"),
        "operatingSystemVersion": dev.get("operatingSystemVersion"),
        "trustType": dev.get("trustType"),
        "joinType": JOIN_TYPE.get(str(dev.get("trustType")), None),
        "accountEnabled": dev.get("accountEnabled"),
        "isManaged": dev.get("isManaged"),
        "isCompliant": dev.get("isCompliant"),
        "approximateLastSignInDateTime": dev.get("approximateLastSignInDateTime"),
        "registrationDateTime": dev.get("registrationDateTime"),
    }


def user_devices(view: DirectoryView, user_id: str) -> list[Mapping[str, Any]]:
    devices = view.snapshot.collection("devices")
    return [devices[d] for d in _devices_by_user(view).get(user_id, ()) if d in devices]


def devices_summary(view: DirectoryView, user: Mapping[str, Any]) -> tuple[dict[str, Any] | None, list[dict[str, str]]]:
    """check_account_state's `devices`: counts and up to 10 devices (newest sign-in first), or None with the reason."""
    if not view.area_ready("devices"):
        missing = area_finding(view, "devices", "the user's devices are unknown.")
        return None, [missing] if missing else []
    devs = sorted(user_devices(view, str(user.get("id"))),
                  key=lambda d: str(d.get("approximateLastSignInDateTime") or ""), reverse=True)
    enabled = [d for d in devs if d.get("accountEnabled") is not False]
    compliant = [d for d in enabled if d.get("isCompliant") is True]
    findings: list[dict[str, str]] = []
    who = quote(user.get("displayName") or user.get("userPrincipalName"))
    noncompliant = [d for d in enabled if d.get("isManaged") and d.get("isCompliant") is False]
    for d in noncompliant[:3]:
        findings.append(finding("DEVICE_NOT_COMPLIANT", f"The device {quote(d.get('displayName'), 60)} of {who} is managed "
                                "but not compliant: policies that require a compliant device block it."))
    if devs and not compliant:
        findings.append(finding("NO_COMPLIANT_DEVICE", f"{who} has no enabled device marked compliant."))
    summary = {
        "total": len(devs),
        "enabled": len(enabled),
        "managed": sum(1 for d in enabled if d.get("isManaged")),
        "compliant": len(compliant),
        "items": [device_card(d) for d in devs[:MAX_DEVICES]],
    }
    return summary, findings


def owners_of(view: DirectoryView, object_id: str | None) -> list[dict[str, Any]] | None:
    """Owners of a group, application or service principal (id, displayName, userPrincipalName, type), or None when
    the owners area is not ready."""
    if not object_id or not view.area_ready("owners"):
        return None
    snap = view.snapshot
    out = []
    for ref in (snap.collection("owners").get(object_id) or ())[:MAX_OWNERS]:
        oid = str(ref.get("id")) if isinstance(ref, Mapping) else str(ref)
        user = snap.users.get(oid)
        if user is not None:
            out.append({"id": oid, "type": "user", "displayName": user.get("displayName"),
                        "userPrincipalName": user.get("userPrincipalName"), "accountEnabled": user.get("accountEnabled")})
            continue
        sp = snap.service_principals.get(oid)
        out.append({"id": oid, "type": "servicePrincipal" if sp is not None else (ref.get("type") if isinstance(ref, Mapping) else None),
                    "displayName": (sp or {}).get("displayName")})
    return out


def app_owners(view: DirectoryView, application: Mapping[str, Any] | None, sp: Mapping[str, Any] | None) -> list[dict[str, Any]] | None:
    if not view.area_ready("owners"):
        return None
    seen: dict[str, dict[str, Any]] = {}
    for obj in (sp, application):
        for o in owners_of(view, (obj or {}).get("id")) or ():
            seen.setdefault(o["id"], o)
    return list(seen.values())


def assignments_age_minutes(view: DirectoryView, now: datetime | None) -> int | None:
    status = view.area("app_role_assignments")
    if status is None or status.last_success is None:
        return None
    return max(0, int((utcnow(now) - status.last_success).total_seconds() // 60))


def _user_roles(view: DirectoryView, user_id: str) -> set[str] | None:
    """Template ids (lower case) of the built-in roles the user holds actively at tenant scope, directly or through a
    role-assignable group: what Conditional Access matches (not PIM-eligible, not administrative-unit scoped); None
    when the roles area is not ready."""
    if not view.area_ready("roles"):
        return None
    return {h.template_id.lower() for h in account_index(view).roles_by_user.get(user_id, ())
            if not h.eligible and h.scope == "/"}


def conditional_access(view: DirectoryView, user: Mapping[str, Any], sp: Mapping[str, Any] | None,
                       application: Mapping[str, Any] | None) -> tuple[dict[str, Any] | None, list[dict[str, str]]]:
    """check_app_access's `conditionalAccess`: the enabled and report-only policies that reach this user in this
    app, from the mirrored policies; None (with the reason) when the conditional_access area is not ready."""
    if not view.area_ready("conditional_access"):
        missing = area_finding(view, "conditional_access", "which Conditional Access policies apply is unknown.")
        return None, [missing] if missing else []
    obj = sp or application or {}
    app_id = str(obj.get("appId") or "")
    first_party = str((sp or {}).get("appOwnerOrganizationId") or "").lower() == ca.MICROSOFT_TENANT_ID
    groups = view.snapshot.groups
    chains = view.transitive_groups(str(user.get("id"))) if view.area_ready("groups") else None
    policies = ca.evaluate(
        view.snapshot.collection("ca_policies"), view.snapshot.collection("named_locations"), user, app_id,
        first_party=first_party, chains=chains, roles=_user_roles(view, str(user.get("id"))),
        group_name=lambda gid: quote((groups.get(gid) or {}).get("displayName") or gid, 60),
        role_name=lambda rid: quote(BUILTIN_ROLE_NAMES.get(rid.lower(), rid), 60),
    )
    findings: list[dict[str, str]] = []
    who = quote(user.get("displayName") or user.get("userPrincipalName"))
    enforced = [p for p in policies if p["state"] == "enabled"]
    blocking = [p for p in enforced if p["requires"]["block"] and p["applies"] is True]
    for p in blocking[:3]:
        findings.append(finding("CA_BLOCKED", f"The Conditional Access policy {quote(p['displayName'], 80)} blocks "
                                f"{who} in this app{'' if p['matchedBy'] is None else ' (' + p['matchedBy'] + ')'}."))
    for p in [p for p in enforced if p["requires"]["block"] and p["applies"] == "dependsOnSignIn"][:3]:
        findings.append(finding("CA_BLOCK_DEPENDS_ON_SIGN_IN", f"The policy {quote(p['displayName'], 80)} blocks the "
                                "sign-in when " + "; ".join(d["condition"] + ": " + d["detail"] for d in p["dependsOn"]) + "."))
    needs = [p for p in enforced if not p["requires"]["block"] and p["applies"] in (True, "dependsOnSignIn")
             and p["requires"]["builtInControls"]]
    if needs:
        texts = sorted({p["requires"]["text"] for p in needs})
        findings.append(finding("CA_REQUIREMENTS", f"Conditional Access {'; '.join(texts[:4])} for {who} in this app "
                                "(see conditionalAccess.policies for when)."))
    device_needed = [p for p in needs if {"compliantDevice", "domainJoinedDevice"} & set(p["requires"]["builtInControls"])]
    device_state = None
    if device_needed and view.area_ready("devices"):
        devs = [d for d in user_devices(view, str(user.get("id"))) if d.get("accountEnabled") is not False]
        ok = [d for d in devs if d.get("isCompliant") is True or d.get("trustType") == "ServerAd"]
        device_state = {"devices": len(devs), "compliantOrHybridJoined": len(ok)}
        if not ok:
            findings.append(finding("CA_DEVICE_REQUIREMENT_UNMET", f"A policy requires a compliant or hybrid joined "
                                    f"device and {who} has none registered: sign-in from any device will fail it."))
    report_only = [p for p in policies if p["state"] == "reportOnly" and p["applies"] is not None]
    if report_only:
        findings.append(finding("CA_REPORT_ONLY", f"{len(report_only)} report-only polic{'y' if len(report_only) == 1 else 'ies'} "
                                "would apply: they are logged, not enforced."))
    if any(p["applies"] is None for p in policies):
        findings.append(finding("CA_PARTLY_UNKNOWN", "Whether some Conditional Access policies reach this user is unknown: "
                                "see conditionalAccess.policies[].unknown."))
    status = view.area("conditional_access")
    answer = {
        "evaluatedFrom": "mirror",
        "policiesAsOf": iso(status.last_success) if status else None,
        "policies": policies,
        "enforcedCount": len(enforced),
        "reportOnlyCount": len(policies) - len(enforced),
        "blocked": True if blocking else ("dependsOnSignIn" if any(
            p["requires"]["block"] and p["applies"] == "dependsOnSignIn" for p in enforced) else False),
        "dependsOnSignIn": sorted({d["condition"] for p in policies for d in p["dependsOn"]}),
        "deviceCheck": device_state,
    }
    return answer, findings


__all__ = ["app_owners", "assignments_age_minutes", "conditional_access", "device_card", "devices_summary", "owners_of",
           "user_devices"]
