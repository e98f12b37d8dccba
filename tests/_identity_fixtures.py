"""Snapshots for the identity tests: small hand-built ones for edge cases, and one built from an emulated tenant."""

from __future__ import annotations

import uuid
from collections import defaultdict
from datetime import datetime, timedelta, timezone
from typing import Any

from entra_mcp.mirror.snapshot import AREAS, AreaStatus, DirectorySnapshot
from entra_mcp.mirror.table import Table

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=timezone.utc)
TENANT_ID = "11111111-2222-3333-4444-555555555555"
DEFAULT_ACCESS = "00000000-0000-0000-0000-000000000000"


def oid(label: str) -> str:
    """A stable GUID per label, so tests can name objects."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, label))


def ts(days_ago: float, now: datetime = NOW) -> str:
    return (now - timedelta(days=days_ago)).strftime("%Y-%m-%dT%H:%M:%SZ")


def user(label: str, display: str, upn: str | None = None, **fields: Any) -> dict[str, Any]:
    given, _, surname = display.partition(" ")
    upn = upn or f"{label}@contoso.example"
    record: dict[str, Any] = {
        "id": oid(label),
        "displayName": display,
        "givenName": given,
        "surname": surname,
        "userPrincipalName": upn,
        "mail": upn,
        "otherMails": [],
        "proxyAddresses": [f"SMTP:{upn}"],
        "jobTitle": "Analyst",
        "department": "Finance",
        "officeLocation": "Building 1",
        "employeeId": None,
        "accountEnabled": True,
        "userType": "Member",
        "externalUserState": None,
        "lastPasswordChangeDateTime": ts(10),
        "passwordPolicies": None,
        "onPremisesSyncEnabled": None,
        "onPremisesSamAccountName": None,
        "assignedLicenses": [{"disabledPlans": [], "skuId": oid("sku-e3")}],
        "managerId": None,
        "signInActivity": {
            "lastSignInDateTime": ts(1),
            "lastNonInteractiveSignInDateTime": ts(1),
            "lastSuccessfulSignInDateTime": ts(1),
        },
    }
    record.update(fields)
    return record


def group(label: str, display: str, kind: str = "security", **fields: Any) -> dict[str, Any]:
    record: dict[str, Any] = {
        "id": oid(label),
        "displayName": display,
        "description": None,
        "mail": None,
        "mailEnabled": kind in ("distribution", "mailEnabledSecurity", "microsoft365"),
        "securityEnabled": kind in ("security", "mailEnabledSecurity"),
        "groupTypes": ["Unified"] if kind == "microsoft365" else [],
        "membershipRule": None,
        "membershipRuleProcessingState": None,
        "onPremisesSyncEnabled": None,
    }
    record.update(fields)
    return record


def areas(**overrides: AreaStatus) -> dict[str, AreaStatus]:
    out = {name: AreaStatus(enabled=True, last_success=NOW - timedelta(minutes=5), mode="full") for name in AREAS}
    out.update(overrides)
    return out


def as_loaded_users(users: dict[str, dict[str, Any]]) -> Table:
    """Users in the form a snapshot loaded from the mirror holds them: a columnar Table, signInActivity kept in a
    table of its own and joined in (mirror/store.py), so the identity tests read what the tools read."""
    plain = {uid: {k: v for k, v in u.items() if k != "signInActivity"} for uid, u in users.items()}
    sign_in = {uid: u["signInActivity"] for uid, u in users.items() if u.get("signInActivity") is not None}
    table = Table.from_dicts(plain)
    return table.attach("signInActivity", Table.from_dicts(sign_in)) if sign_in else table


def make_snapshot(
    users: list[dict[str, Any]] = (),  # type: ignore[assignment]
    groups: list[dict[str, Any]] = (),  # type: ignore[assignment]
    members: dict[str, dict[str, str]] | None = None,
    applications: list[dict[str, Any]] = (),  # type: ignore[assignment]
    service_principals: list[dict[str, Any]] = (),  # type: ignore[assignment]
    assignments: list[dict[str, Any]] = (),  # type: ignore[assignment]
    domains: list[dict[str, Any]] | None = None,
    area_status: dict[str, AreaStatus] | None = None,
    as_of: datetime | None = NOW - timedelta(minutes=5),
) -> DirectorySnapshot:
    by_resource: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for a in assignments:
        by_resource[a["resourceId"]].append(a)
    return DirectorySnapshot(
        tenant="contoso",
        tenant_id=TENANT_ID,
        as_of=as_of,
        interval_minutes=15,
        users=as_loaded_users({u["id"]: u for u in users}),
        groups=Table.from_dicts({g["id"]: g for g in groups}),
        members=members or {},
        applications=Table.from_dicts({a["id"]: a for a in applications}),
        service_principals=Table.from_dicts({s["id"]: s for s in service_principals}),
        app_role_assignments=dict(by_resource),
        domains=domains
        if domains is not None
        else [
            {
                "id": "contoso.example",
                "isDefault": True,
                "isVerified": True,
                "passwordValidityPeriodInDays": 90,
                "passwordNotificationWindowInDays": 14,
            }
        ],
        areas=area_status or areas(),
        version=1,
    )


def snapshot_from_emulated(tenant: Any, name: str = "contoso", *, as_of: datetime | None = None) -> DirectorySnapshot:
    """A DirectorySnapshot holding everything an EmulatedTenant holds, every area enabled and synced."""
    when = as_of or datetime.now(timezone.utc)
    users = {}
    for uid, u in tenant.users.items():
        record = dict(u)
        record["managerId"] = tenant.managers.get(uid)
        users[uid] = record
    by_resource: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for a in tenant.app_role_assignments.values():
        by_resource[a["resourceId"]].append(dict(a))
    counts = {
        "users": len(users),
        "sign_in_activity": len(users),
        "groups": len(tenant.groups),
        "applications": len(tenant.applications),
        "service_principals": len(tenant.service_principals),
        "app_role_assignments": sum(len(v) for v in by_resource.values()),
        "domains": len(tenant.domains),
    }
    collections = access_collections(tenant)
    counts.update({"devices": len(collections["devices"]), "conditional_access": len(collections["ca_policies"]),
                   "owners": len(collections["owners"])})
    return DirectorySnapshot(
        tenant=name,
        tenant_id=tenant.tenant_id,
        as_of=when,
        interval_minutes=15,
        users=as_loaded_users(users),
        groups=Table.from_dicts(tenant.groups),
        members={gid: dict(m) for gid, m in tenant.members.items()},  # type: ignore[misc]
        applications=Table.from_dicts(tenant.applications),
        service_principals=Table.from_dicts(tenant.service_principals),
        app_role_assignments=dict(by_resource),
        domains=[dict(d) for d in tenant.domains],
        areas={
            area: AreaStatus(enabled=True, last_success=when, object_count=counts.get(area), mode="full") for area in AREAS
        },
        collections={**account_collections(tenant), **collections},
        version=1,
    )


def account_collections(tenant: Any) -> dict[str, Any]:
    """The account areas' mirror collections for an EmulatedTenant, as the sync stores them (account_areas.py)."""
    from entra_mcp import account_areas as AA
    from entra_mcp.devtenant.graph_account import _user_principals_with_roles, account_of, registration_details

    acc = account_of(tenant)
    admins = _user_principals_with_roles(tenant, acc)
    registration = {}
    for uid in tenant.users:
        row = registration_details(tenant, acc, uid, admins)
        if row is not None:
            registration[uid] = AA.compact_registration(row)
    return {
        "registration": registration,
        "role_definitions": {k: AA._pick(v, AA.ROLE_DEFINITION_FIELDS) for k, v in acc.role_definitions.items()},
        "role_assignments": {k: AA._pick(v, AA.ROLE_ASSIGNMENT_FIELDS) for k, v in acc.role_assignments.items()},
        "role_eligibilities": {k: AA._pick(v, AA.ELIGIBILITY_FIELDS) for k, v in acc.eligibilities.items()},
        "role_meta": {"pim": {"eligibility": "synced"}},
        "skus": {k: AA.compact_sku(v) for k, v in acc.skus.items()},
        "licence_states": {uid: st for uid, u in tenant.users.items()
                           if (st := AA.compact_licence_states(u.get("licenseAssignmentStates")))},
        "risky_users": {k: AA._pick(v, AA.RISK_FIELDS) for k, v in acc.risky_users.items()},
    }


def access_collections(tenant: Any) -> dict[str, Any]:
    """The devices, Conditional Access and owners collections of an EmulatedTenant, as the sync stores them."""
    from entra_mcp.devtenant.graph_access import DEVICE_PROPERTIES, access_of

    acc = access_of(tenant)
    fields = [p for p in DEVICE_PROPERTIES if p not in ("createdDateTime", "profileType", "manufacturer", "model",
                                                        "mdmAppId", "onPremisesSyncEnabled")]
    devices = {d: {**{k: dev.get(k) for k in fields}, "registeredOwners": list(acc.device_owners.get(d, []))}
               for d, dev in acc.devices.items()}

    def kind(oid: str) -> str:
        return "user" if oid in tenant.users else "servicePrincipal"

    return {
        "devices": Table.from_dicts(devices),
        "ca_policies": {k: dict(v) for k, v in acc.policies.items()},
        "named_locations": {k: dict(v) for k, v in acc.named_locations.items()},
        "owners": {oid: [{"id": o, "type": kind(o)} for o in owners] for oid, owners in acc.owners.items() if owners},
    }
