"""The emulated Graph for devices, Conditional Access and owners (docs/graph-facts-access.md has the sources).

Routes (relative to /v1.0), each with Graph's permission and licence rules:
  GET  /devices, /devices/{id}                     Device.Read.All; $select, $top (<= 999), $expand=registeredOwners
                                                   or registeredUsers (only ids and @odata.type unless $select'ed)
  GET  /devices/delta                              delta rounds over devices (initial, $deltatoken, =latest, removals)
  GET  /devices/{id}/registeredOwners, registeredUsers
  GET  /identity/conditionalAccess/policies        Policy.Read.All (or Policy.Read.ConditionalAccess); P1 tenant
  GET  /identity/conditionalAccess/namedLocations  same
  POST /identity/conditionalAccess/evaluate        the What If evaluation (whatIfAnalysisResult collection)
  GET  /groups/delta?$select=...,owners            a delta stream of group ownership: owners@delta (ids only)
  GET  /groups/{id}/owners, /applications/{id}/owners, /servicePrincipals/{id}/owners

The data lives beside the tenant's directory (`access_of(tenant)`); generation adds devices, owners, named
locations and policies that exercise every verdict; control-API mutations (`MUTATIONS`) edit it. The What If
evaluation here is the emulator's own reading of Microsoft's documented rules, written apart from the product's
local evaluation (identity/conditional_access.py) so tests compare two implementations.
"""

from __future__ import annotations

import bisect
import ipaddress
import json
import random
import uuid
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from entra_mcp.devtenant.device_filter import RuleError, in_scope
from entra_mcp.devtenant.model import EmulatedTenant, MutationError
from entra_mcp.devtenant.odata import GraphFailure, bad_request, parse_options, parse_top, seal, unseal

if TYPE_CHECKING:
    from entra_mcp.devtenant.graph import Caller, GraphService, Reply

DEVICE_READ = frozenset({"Device.Read.All", "Device.ReadWrite.All", "Directory.Read.All", "Directory.ReadWrite.All"})
POLICY_READ = frozenset({"Policy.Read.All", "Policy.Read.ConditionalAccess", "Policy.ReadWrite.ConditionalAccess"})
GROUP_READ = frozenset({"GroupMember.Read.All", "Group.Read.All", "Group.ReadWrite.All", "Directory.Read.All",
                        "Directory.ReadWrite.All"})
APP_READ = frozenset({"Application.Read.All", "Application.ReadWrite.All", "Directory.Read.All",
                      "Directory.ReadWrite.All"})
USER_READ = frozenset({"User.Read.All", "User.ReadWrite.All", "Directory.Read.All", "Directory.ReadWrite.All"})

DEVICE_PROPERTIES = (
    "id", "accountEnabled", "deviceId", "displayName", "operatingSystem", "operatingSystemVersion", "trustType",
    "isManaged", "isCompliant", "approximateLastSignInDateTime", "registrationDateTime",
    "profileType", "manufacturer", "model", "mdmAppId", "onPremisesSyncEnabled",
)
DEVICE_DEFAULT = DEVICE_PROPERTIES
DEFAULT_PAGE = 100
CA_PAGE = 100
NON_PREMIUM = ("Authentication_RequestFromNonPremiumTenantOrB2CTenant",
               "Neither tenant is B2C or tenant doesn't have premium license")

GLOBAL_ADMIN_ROLE = "62e90394-69f5-4237-9190-012177145e10"
HELPDESK_ADMIN_ROLE = "729827e3-9c14-49f7-bb1b-9608f156bbb8"
# what "Office365" in includeApplications covers (a subset of Microsoft's list: the apps the emulator has)
OFFICE365_APP_IDS = frozenset({
    "00000002-0000-0ff1-ce00-000000000000",  # Office 365 Exchange Online
    "00000003-0000-0ff1-ce00-000000000000",  # Office 365 SharePoint Online
    "cc15fd57-2c6c-4117-a88c-83b1d56b4bbe",  # Microsoft Teams
})


def _iso(dt: datetime) -> str:
    return dt.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class TenantAccess:
    """Devices, Conditional Access and owners of one emulated tenant."""

    devices: dict[str, dict[str, Any]] = field(default_factory=dict)
    device_owners: dict[str, list[str]] = field(default_factory=dict)  # device id -> registeredOwners (user ids)
    device_users: dict[str, list[str]] = field(default_factory=dict)  # device id -> registeredUsers (user ids)
    policies: dict[str, dict[str, Any]] = field(default_factory=dict)
    named_locations: dict[str, dict[str, Any]] = field(default_factory=dict)
    owners: dict[str, list[str]] = field(default_factory=dict)  # group/application/servicePrincipal id -> owner ids
    # change tracking of devices and of group ownership: a sequence of our own, per object the last change
    seq: int = 0
    device_seq: dict[str, int] = field(default_factory=dict)
    device_gone: dict[str, int] = field(default_factory=dict)  # removed device id -> seq
    owner_seq: dict[str, int] = field(default_factory=dict)  # group id -> seq of its last ownership change
    former_owners: dict[str, dict[str, int]] = field(default_factory=dict)  # group id -> {removed owner: seq}

    def bump(self) -> int:
        self.seq += 1
        return self.seq


def access_of(tenant: EmulatedTenant) -> TenantAccess:
    data = getattr(tenant, "access_data", None)
    if data is None:
        data = TenantAccess()
        setattr(tenant, "access_data", data)
    return data


# ------------------------------------------------------------------------------------------------- generation

def generate_access(tenant: EmulatedTenant, now: datetime) -> None:
    """Devices, owners, named locations and Conditional Access policies for a generated tenant (deterministic from
    the tenant id and the day; a random stream of its own, so the directory it joins is unchanged)."""
    r = random.Random(f"entra-mcp/access/{tenant.tenant_id}")
    acc = access_of(tenant)
    day = now.astimezone(timezone.utc).replace(hour=0, minute=0, second=0, microsecond=0)
    base = day.timestamp()

    def ago(lo: float, hi: float) -> str:
        return _iso(datetime.fromtimestamp(base - r.uniform(lo, hi) * 86400, timezone.utc))

    def uid() -> str:
        n = r.getrandbits(128)
        h = f"{(n & ~((0xC000 << 48) | (0xF000 << 64))) | (0x8000 << 48) | (4 << 76):032x}"
        return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"

    users = tenant.users
    members = [u for u in users.values() if u.get("userType") == "Member"]
    by_title = {u.get("jobTitle"): u["id"] for u in members}
    # devices: about half the members have one, some two; the CEO a compliant laptop, the CFO a non-compliant one
    kinds = [("AzureAd", "Windows", "10.0.22631.4460", True), ("AzureAd", "Windows", "10.0.19045.5131", True),
             ("ServerAd", "Windows", "10.0.19045.5131", True), ("AzureAd", "MacMDM", "14.6.1", True),
             ("Workplace", "iOS", "17.6.1", False), ("Workplace", "Android", "14", False)]

    def add_device(owner: str, kind: tuple[str, str, str, bool], *, compliant: bool | None, name: str) -> None:
        trust, os_name, version, managed_default = kind
        oid, did = uid(), uid()
        managed = managed_default if compliant is not False or trust != "Workplace" else False
        acc.devices[oid] = {
            "id": oid, "accountEnabled": True, "deviceId": did, "displayName": name, "operatingSystem": os_name,
            "operatingSystemVersion": version, "trustType": trust, "isManaged": managed,
            "isCompliant": compliant if managed else None,
            "approximateLastSignInDateTime": ago(0, 40), "registrationDateTime": ago(60, 900),
            "profileType": "RegisteredDevice", "manufacturer": None, "model": None,
            "mdmAppId": "0000000a-0000-0000-c000-000000000000" if managed else None,
            "onPremisesSyncEnabled": True if trust == "ServerAd" else None,
        }
        ago(60, 900)  # was createdDateTime (not on v1.0 device); still drawn so each seed's tenant stays
        acc.device_owners[oid] = [owner]
        acc.device_users[oid] = [owner]
        acc.device_seq[oid] = 0

    ceo, cfo = by_title.get("Chief Executive Officer"), by_title.get("Chief Financial Officer")
    if ceo:
        add_device(ceo, kinds[0], compliant=True, name="LT-CEO-01")
    if cfo:
        add_device(cfo, kinds[1], compliant=False, name="LT-CFO-01")
        add_device(cfo, kinds[4], compliant=None, name="CFO iPhone")
    for n, u in enumerate(members):
        if u["id"] in (ceo, cfo) or not u.get("accountEnabled") or r.random() >= 0.5:
            continue
        for k in range(1 if r.random() < 0.85 else 2):
            kind = r.choice(kinds)
            compliant = r.random() < 0.8 if kind[3] else None
            prefix = {"Windows": "LT", "MacMDM": "MB", "iOS": "iPhone", "Android": "Android"}[kind[1]]
            add_device(u["id"], kind, compliant=compliant, name=f"{prefix}-{n:05d}-{k}")
    # a stale, disabled device
    if members:
        add_device(members[-1]["id"], kinds[2], compliant=False, name="LT-OLD-0001")
        last = list(acc.devices.values())[-1]
        last.update(accountEnabled=False, approximateLastSignInDateTime=ago(200, 300))

    # owners: security and Microsoft 365 groups (not dynamic ones) and the apps registered here
    pool = [u["id"] for u in members if u.get("accountEnabled")] or [u["id"] for u in members]
    if pool:
        for gid, g in tenant.groups.items():
            if g.get("membershipRule") or r.random() < 0.1:
                continue
            acc.owners[gid] = r.sample(pool, min(len(pool), 1 if r.random() < 0.7 else 2))
            acc.owner_seq[gid] = 0
        for oid in list(tenant.applications) + list(tenant.service_principals):
            obj = tenant.applications.get(oid) or tenant.service_principals.get(oid) or {}
            if oid in tenant.service_principals and str(obj.get("appOwnerOrganizationId", "")).lower() != tenant.tenant_id.lower():
                continue  # Microsoft's and other organisations' apps have no owners here
            acc.owners[oid] = r.sample(pool, min(len(pool), 1 if r.random() < 0.6 else 2))

    # named locations and Conditional Access policies
    created = ago(300, 700)
    head_office, blocked = uid(), uid()
    acc.named_locations[head_office] = {
        "@odata.type": "#microsoft.graph.ipNamedLocation", "id": head_office, "displayName": "Head office",
        "createdDateTime": created, "modifiedDateTime": created, "isTrusted": True,
        "ipRanges": [{"@odata.type": "#microsoft.graph.iPv4CidrRange", "cidrAddress": "203.0.113.0/24"}]}
    acc.named_locations[blocked] = {
        "@odata.type": "#microsoft.graph.countryNamedLocation", "id": blocked, "displayName": "Blocked countries",
        "createdDateTime": created, "modifiedDateTime": created, "countriesAndRegions": ["KP", "IR"],
        "includeUnknownCountriesAndRegions": False, "countryLookupMethod": "clientIpAddress"}
    groups = {g["displayName"]: gid for gid, g in tenant.groups.items()}
    sps = {s["displayName"]: s["appId"] for s in tenant.service_principals.values()}

    def policy(name: str, state: str, users_: dict[str, Any], apps: list[str], grant: list[str] | None, *,
               operator: str = "OR", **conditions: Any) -> None:
        pid = uid()
        when = ago(10, 300)
        acc.policies[pid] = new_policy(pid, name, state, users_, apps, grant, operator=operator,
                                       created=when, **conditions)

    policy("Require MFA for all users", "enabled",
           {"includeUsers": ["All"], "excludeGroups": [groups["Global IT"]] if "Global IT" in groups else []},
           ["All"], ["mfa"])
    policy("Block sign-in from blocked countries", "enabled", {"includeUsers": ["All"]}, ["All"], ["block"],
           locations={"includeLocations": [blocked], "excludeLocations": []})
    if "Salesforce" in sps and "Salesforce Users" in groups:
        policy("Salesforce: compliant or hybrid-joined device", "enabled",
               {"includeGroups": [groups["Salesforce Users"]]}, [sps["Salesforce"]], ["compliantDevice", "domainJoinedDevice"])
    policy("Require MFA for guests", "enabled",
           {"includeGuestsOrExternalUsers": {
               "guestOrExternalUserTypes": "internalGuest,b2bCollaborationGuest,b2bCollaborationMember",
               "externalTenants": {"@odata.type": "#microsoft.graph.conditionalAccessAllExternalTenants",
                                   "membershipKind": "all"}}}, ["All"], ["mfa"])
    policy("Block legacy authentication", "enabled", {"includeUsers": ["All"]}, ["All"], ["block"],
           clientAppTypes=["exchangeActiveSync", "other"])
    if "ServiceNow" in sps:
        policy("ServiceNow on mobile: compliant device (report-only)", "enabledForReportingButNotEnforced",
               {"includeUsers": ["All"]}, [sps["ServiceNow"]], ["compliantDevice"],
               platforms={"includePlatforms": ["android", "iOS"], "excludePlatforms": []})
    policy("Require MFA for administrators", "enabled", {"includeRoles": [GLOBAL_ADMIN_ROLE, HELPDESK_ADMIN_ROLE]},
           ["All"], ["mfa"])
    policy("Office 365 outside trusted networks: MFA", "enabled", {"includeUsers": ["All"]}, ["Office365"], ["mfa"],
           locations={"includeLocations": ["All"], "excludeLocations": ["AllTrusted"]})
    policy("Old pilot: block Office 365", "disabled", {"includeUsers": ["All"]}, ["Office365"], ["block"])


def new_policy(pid: str, name: str, state: str, users: dict[str, Any], apps: list[str], grant: list[str] | None, *,
               operator: str = "OR", created: str | None = None, exclude_apps: list[str] | None = None,
               **conditions: Any) -> dict[str, Any]:
    """A conditionalAccessPolicy in Graph's v1.0 shape."""
    user_cond: dict[str, Any] = {"includeUsers": [], "excludeUsers": [], "includeGroups": [], "excludeGroups": [], "includeRoles": [],
                 "excludeRoles": [], "includeGuestsOrExternalUsers": None, "excludeGuestsOrExternalUsers": None}
    user_cond.update(users)
    cond: dict[str, Any] = {
        "userRiskLevels": [], "signInRiskLevels": [], "clientAppTypes": ["all"], "servicePrincipalRiskLevels": [],
        "platforms": None, "locations": None, "devices": None, "clientApplications": None,
        "applications": {"includeApplications": apps, "excludeApplications": exclude_apps or [],
                         "includeUserActions": [], "includeAuthenticationContextClassReferences": [],
                         "applicationFilter": None},
        "users": user_cond,
    }
    cond.update(conditions)
    return {
        "id": pid, "templateId": None, "displayName": name, "createdDateTime": created, "modifiedDateTime": created,
        "state": state, "conditions": cond,
        "grantControls": None if grant is None else {"operator": operator, "builtInControls": grant,
                                                     "customAuthenticationFactors": [], "termsOfUse": [],
                                                     "authenticationStrength": None},
        "sessionControls": None,
    }


def ground_truth(tenant: EmulatedTenant) -> dict[str, Any]:
    """The control API snapshot's part of this module: devices (with registeredOwners), policies, named locations,
    owners."""
    acc = access_of(tenant)
    with tenant.lock:
        return {
            "devices": [{**d, "registeredOwners": list(acc.device_owners.get(i, []))} for i, d in acc.devices.items()],
            "conditionalAccessPolicies": [dict(p) for p in acc.policies.values()],
            "namedLocations": [dict(n) for n in acc.named_locations.values()],
            "owners": {k: list(v) for k, v in acc.owners.items() if v},
        }


# ------------------------------------------------------------------------------------------------ mutations

def _new_id(t: EmulatedTenant, kind: str) -> str:
    """A fresh object id (deterministic in the order of mutations)."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"entra-mcp/{t.tenant_id}/{kind}/{access_of(t).bump()}"))


def _device_add(t: EmulatedTenant, op: dict[str, Any]) -> dict[str, Any]:
    acc = access_of(t)
    props = dict(op.get("set") or {})
    owner = op.get("owner")
    if owner is not None and owner not in t.users:
        raise MutationError(f"no user with id '{owner}'", status=404)
    oid = str(props.pop("id", None) or _new_id(t, "device"))
    if oid in acc.devices:
        raise MutationError(f"a device with id '{oid}' already exists")
    dev: dict[str, Any] = {p: None for p in DEVICE_PROPERTIES}
    dev.update({"id": oid, "accountEnabled": True, "deviceId": _new_id(t, "deviceId"), "displayName": "New device",
                "operatingSystem": "Windows", "operatingSystemVersion": "10.0.22631.4460", "trustType": "AzureAd",
                "isManaged": True, "isCompliant": True, "registrationDateTime": t._now(),
                "approximateLastSignInDateTime": t._now(), "profileType": "RegisteredDevice"})
    dev.update({k: v for k, v in props.items() if k in DEVICE_PROPERTIES})
    acc.devices[oid] = dev
    acc.device_owners[oid] = [owner] if owner else []
    acc.device_users[oid] = [owner] if owner else []
    acc.device_seq[oid] = acc.bump()
    acc.device_gone.pop(oid, None)
    return dev


def _device_update(t: EmulatedTenant, op: dict[str, Any]) -> dict[str, Any]:
    acc = access_of(t)
    oid = str(op.get("id"))
    dev = acc.devices.get(oid)
    if dev is None:
        raise MutationError(f"no device with id '{oid}'", status=404)
    props = op.get("set") or {}
    bad = [k for k in props if k not in DEVICE_PROPERTIES or k == "id"]
    if bad:
        raise MutationError(f"cannot set {', '.join(bad)} on a device")
    dev.update(props)
    acc.device_seq[oid] = acc.bump()
    return dev


def _device_delete(t: EmulatedTenant, op: dict[str, Any]) -> dict[str, Any]:
    acc = access_of(t)
    oid = str(op.get("id"))
    if acc.devices.pop(oid, None) is None:
        raise MutationError(f"no device with id '{oid}'", status=404)
    acc.device_owners.pop(oid, None)
    acc.device_users.pop(oid, None)
    acc.device_seq.pop(oid, None)
    acc.device_gone[oid] = acc.bump()
    return {"id": oid}


def _set_owners(t: EmulatedTenant, op: dict[str, Any]) -> dict[str, Any]:
    acc = access_of(t)
    oid = str(op.get("id"))
    if oid not in t.groups and oid not in t.applications and oid not in t.service_principals:
        raise MutationError(f"no group, application or service principal with id '{oid}'", status=404)
    owners = op.get("owners")
    if not isinstance(owners, list) or any(o not in t.users and o not in t.service_principals for o in owners):
        raise MutationError("'owners' must be a list of user or service principal ids")
    before = acc.owners.get(oid, [])
    acc.owners[oid] = [str(o) for o in owners]
    if oid in t.groups:
        seq = acc.owner_seq[oid] = acc.bump()
        gone = acc.former_owners.setdefault(oid, {})
        for o in before:
            if o not in acc.owners[oid]:
                gone[o] = seq
        for o in acc.owners[oid]:
            gone.pop(o, None)
    return {"id": oid, "owners": acc.owners[oid]}


def _put_policy(t: EmulatedTenant, op: dict[str, Any]) -> dict[str, Any]:
    """{"op": "put_ca_policy", "policy": {...}}: add or replace a policy (Graph's shape; missing parts defaulted)."""
    acc = access_of(t)
    raw = op.get("policy")
    if not isinstance(raw, dict) or not raw.get("displayName"):
        raise MutationError("'policy' must be an object with a displayName")
    pid = str(raw.get("id") or _new_id(t, "caPolicy"))
    cond = raw.get("conditions") or {}
    apps = (cond.get("applications") or {})
    base = new_policy(pid, str(raw["displayName"]), str(raw.get("state", "enabled")), dict(cond.get("users") or {}),
                      list(apps.get("includeApplications") or []),
                      (raw.get("grantControls") or {}).get("builtInControls") if raw.get("grantControls") is not None else None,
                      operator=(raw.get("grantControls") or {}).get("operator", "OR"), created=t._now(),
                      exclude_apps=list(apps.get("excludeApplications") or []),
                      **{k: v for k, v in cond.items() if k not in ("users", "applications")})
    if raw.get("state") not in (None, "enabled", "disabled", "enabledForReportingButNotEnforced"):
        raise MutationError("state must be enabled, disabled or enabledForReportingButNotEnforced")
    acc.policies[pid] = base
    return base


def _delete_policy(t: EmulatedTenant, op: dict[str, Any]) -> dict[str, Any]:
    if access_of(t).policies.pop(str(op.get("id")), None) is None:
        raise MutationError(f"no Conditional Access policy with id '{op.get('id')}'", status=404)
    return {"id": op.get("id")}


MUTATIONS = {
    "add_device": _device_add,
    "update_device": _device_update,
    "delete_device": _device_delete,
    "set_owners": _set_owners,
    "put_ca_policy": _put_policy,
    "delete_ca_policy": _delete_policy,
}


# ------------------------------------------------------------------------------------------------- routes

def handle(service: "GraphService", caller: "Caller", method: str, segs: list[str], query: list[tuple[str, str]],
           headers: dict[str, str], body: bytes) -> "Reply | None":
    """The reply for a route of this module, or None when the request is not one of them."""
    low = [s.lower() for s in segs]
    if low[:2] == ["identity", "conditionalaccess"] and len(low) == 3:
        if low[2] == "evaluate":
            if method != "POST":
                raise GraphFailure(405, "Request_BadRequest", "evaluate only accepts POST.")
            _require(caller, POLICY_READ)
            _premium(caller)
            return _Routes(service, caller).evaluate(body)
        if method != "GET":
            return None
        if low[2] in ("policies", "namedlocations"):
            _require(caller, POLICY_READ)
            _premium(caller)
            return _Routes(service, caller).ca_list(low[2], parse_options(query))
        return None
    if method != "GET":
        return None
    opts = None
    if low[0] == "devices":
        _require(caller, DEVICE_READ)
        opts = parse_options(query)
        routes = _Routes(service, caller)
        if len(low) == 1:
            return routes.devices_list(opts)
        if low[1] in ("delta", "delta()") and len(low) == 2:
            return routes.devices_delta(opts)
        dev = access_of(caller.tenant).devices.get(segs[1])
        if dev is None:
            raise GraphFailure(404, "Request_ResourceNotFound", f"Resource '{segs[1]}' does not exist or one of its "
                               "queried reference-property objects are not present.")
        if len(low) == 2:
            return routes.ok({"@odata.context": f"{service.base}/v1.0/$metadata#devices/$entity",
                              **_project_device(dev, opts.get("select"))})
        if len(low) == 3 and low[2] in ("registeredowners", "registeredusers"):
            ids = (access_of(caller.tenant).device_owners if low[2] == "registeredowners"
                   else access_of(caller.tenant).device_users).get(segs[1], [])
            return routes.refs(ids, f"devices/{segs[1]}/{segs[2]}")
        return None
    if len(low) == 2 and low[0] == "groups" and low[1] in ("delta", "delta()"):
        opts = parse_options(query)
        if _owners_stream(opts):
            _require(caller, GROUP_READ)
            return _Routes(service, caller).owners_delta(opts)
        return None
    if len(low) == 3 and low[2] == "owners" and low[0] in ("groups", "applications", "serviceprincipals"):
        _require(caller, GROUP_READ if low[0] == "groups" else APP_READ)
        tenant = caller.tenant
        coll = {"groups": tenant.groups, "applications": tenant.applications,
                "serviceprincipals": tenant.service_principals}[low[0]]
        if segs[1] not in coll:
            raise GraphFailure(404, "Request_ResourceNotFound", f"Resource '{segs[1]}' does not exist or one of its "
                               "queried reference-property objects are not present.")
        parse_options(query)
        return _Routes(service, caller).refs(access_of(tenant).owners.get(segs[1], []), f"{segs[0]}/{segs[1]}/owners")
    return None


def _owners_stream(opts: dict[str, str]) -> bool:
    if "select" in opts:
        return "owners" in [s.strip().lower() for s in opts["select"].split(",")]
    tok = opts.get("skiptoken") or opts.get("deltatoken")
    return bool(tok) and str(tok).startswith("o.")


def _require(caller: "Caller", perms: frozenset[str]) -> None:
    if not perms & caller.roles:
        raise GraphFailure(403, "Authorization_RequestDenied", "Insufficient privileges to complete the operation.")


def _premium(caller: "Caller") -> None:
    if not caller.tenant.premium:
        raise GraphFailure(403, *NON_PREMIUM)


def _project_device(dev: dict[str, Any], select: str | None) -> dict[str, Any]:
    if select is None:
        return {p: dev.get(p) for p in DEVICE_DEFAULT}
    names = []
    for part in select.split(","):
        name = part.strip()
        if not name:
            continue
        match = next((p for p in DEVICE_PROPERTIES if p.lower() == name.lower()), None)
        if match is None:
            raise bad_request(f"Could not find a property named '{name}' on type 'microsoft.graph.device'.",
                              "Request_BadRequest")
        names.append(match)
    return {"id": dev["id"], **{p: dev.get(p) for p in names if p != "id"}}


class _Routes:
    def __init__(self, service: "GraphService", caller: "Caller") -> None:
        self.service = service
        self.caller = caller
        self.tenant = caller.tenant
        self.acc = access_of(caller.tenant)
        self.key = service.runtime.state.token_key

    def ok(self, body: dict[str, Any]) -> "Reply":
        from entra_mcp.devtenant.graph import Reply

        return Reply(200, body, {})

    def _user_ref(self, oid: str) -> dict[str, Any]:
        user = self.tenant.users.get(oid)
        if user is not None:
            ref: dict[str, Any] = {"@odata.type": "#microsoft.graph.user", "id": oid}
            if USER_READ & self.caller.roles:
                ref.update(displayName=user.get("displayName"), userPrincipalName=user.get("userPrincipalName"),
                           mail=user.get("mail"))
            return ref
        sp = self.tenant.service_principals.get(oid)
        if sp is not None:
            ref = {"@odata.type": "#microsoft.graph.servicePrincipal", "id": oid}
            if APP_READ & self.caller.roles:
                ref.update(displayName=sp.get("displayName"), appId=sp.get("appId"))
            return ref
        return {"@odata.type": "#microsoft.graph.directoryObject", "id": oid}

    def refs(self, ids: list[str], path: str) -> "Reply":
        live = [i for i in ids if i in self.tenant.users or i in self.tenant.service_principals]
        return self.ok({"@odata.context": f"{self.service.base}/v1.0/$metadata#directoryObjects",
                        "value": [self._user_ref(i) for i in live]})

    # ---------------------------------------------------------------------------------------- devices list
    def devices_list(self, opts: dict[str, str]) -> "Reply":
        first = "skiptoken" not in opts
        if first:
            q = {k: opts[k] for k in ("select", "top", "expand") if k in opts}
            cursor = ""
            for k in ("filter", "search", "orderby"):
                if k in opts:
                    raise bad_request(f"The emulated Graph does not support ${k} on devices.", "Request_UnsupportedQuery")
        else:
            tok = unseal(self.key, opts["skiptoken"])
            if tok is None or tok.get("k") != "dl" or tok.get("t") != self.tenant.tenant_id:
                raise bad_request("The $skiptoken is invalid or belongs to another query.", "Request_BadRequest")
            q, cursor = tok["q"], tok["c"]
        page = parse_top(q.get("top")) or DEFAULT_PAGE
        expand = None
        if "expand" in q:
            expand = q["expand"].split("(")[0].strip().lower()
            if expand not in ("registeredowners", "registeredusers"):
                raise bad_request(f"Could not find a navigation property named '{q['expand']}' to expand.",
                                  "Request_BadRequest")
        with self.tenant.lock:
            ids = sorted(self.acc.devices)
            start = bisect.bisect_right(ids, cursor) if cursor else 0
            chosen = ids[start:start + page]
            out = []
            for oid in chosen:
                item = _project_device(self.acc.devices[oid], q.get("select"))
                if expand:
                    src = self.acc.device_owners if expand == "registeredowners" else self.acc.device_users
                    name = "registeredOwners" if expand == "registeredowners" else "registeredUsers"
                    item[name] = [self._user_ref(u) for u in src.get(oid, []) if u in self.tenant.users]
                out.append(item)
        body: dict[str, Any] = {"@odata.context": f"{self.service.base}/v1.0/$metadata#devices", "value": out}
        if start + page < len(ids):
            nxt = seal(self.key, {"k": "dl", "t": self.tenant.tenant_id, "q": q, "c": chosen[-1]})
            body["@odata.nextLink"] = f"{self.service.base}/v1.0/devices?$skiptoken={nxt}"
        return self.ok(body)

    # --------------------------------------------------------------------------------------- devices delta
    def _expired(self, link: str) -> "Reply":
        from entra_mcp.devtenant.graph import Reply

        status, body, headers = self.service.delta._expired(link)  # the same expiry behaviour as the other areas
        return Reply(status, body, headers)

    def _delta_round(self, opts: dict[str, str], *, kind: str, link: str) -> tuple[dict[str, Any] | None, "Reply | None"]:
        """The round state of a delta request: {i: initial?, s: since, u: upto, c: cursor, sel}."""
        settings = self.service.runtime.state.delta
        now = self.service.runtime.state.clock.timestamp()
        if "skiptoken" in opts:
            raw = opts["skiptoken"][2:] if opts["skiptoken"].startswith("o.") else opts["skiptoken"]
            r = unseal(self.key, raw)
            if r is None or r.get("k") != kind + "s" or r.get("t") != self.tenant.tenant_id:
                return None, self._expired(link)
            return r, None
        if "deltatoken" in opts:
            raw = opts["deltatoken"]
            if raw.lower() == "latest":
                return {"latest": True, "sel": opts.get("select")}, None
            raw = raw[2:] if raw.startswith("o.") else raw
            d = unseal(self.key, raw)
            if (d is None or d.get("k") != kind + "t" or d.get("t") != self.tenant.tenant_id
                    or d.get("e") != settings.epoch or now - float(d.get("ts", 0)) > settings.token_max_age_s):
                return None, self._expired(link)
            return {"k": kind + "s", "t": self.tenant.tenant_id, "i": 0, "s": d["s"], "u": self.acc.seq,
                    "gs": d.get("gs", 0), "gu": self.tenant.changes.seq, "c": "", "sel": d["sel"]}, None
        for opt in ("top", "expand", "orderby", "search", "count", "filter"):
            if opt in opts:
                raise bad_request(f"The query option '${opt}' is not supported with this delta query.",
                                  "Request_UnsupportedQuery")
        return {"k": kind + "s", "t": self.tenant.tenant_id, "i": 1, "s": 0, "u": self.acc.seq, "gs": 0,
                "gu": self.tenant.changes.seq, "c": "", "sel": opts.get("select")}, None

    def _token(self, kind: str, r: dict[str, Any]) -> str:
        now = self.service.runtime.state.clock.timestamp()
        prefix = "o." if kind == "o" else ""
        return prefix + seal(self.key, {"k": kind + "t", "t": self.tenant.tenant_id, "s": r["u"], "gs": r.get("gu", 0),
                                        "sel": r["sel"], "ts": round(now, 3), "e": self.service.runtime.state.delta.epoch})

    def devices_delta(self, opts: dict[str, str]) -> "Reply":
        link = f"{self.service.base}/v1.0/devices/delta"
        r, err = self._delta_round(opts, kind="d", link=link)
        if err is not None:
            return err
        assert r is not None
        ctx = f"{self.service.base}/v1.0/$metadata#devices"
        if r.get("latest"):
            if r["sel"] is not None:
                _project_device({"id": ""}, r["sel"])
            state = {"u": self.acc.seq, "gu": self.tenant.changes.seq, "sel": r["sel"]}
            return self.ok({"@odata.context": ctx, "value": [], "@odata.deltaLink": f"{link}?$deltatoken={self._token('d', state)}"})
        page = self.service.runtime.state.delta.users_page_size
        with self.tenant.lock:
            if r["i"]:
                ids = sorted(self.acc.devices)
            else:
                ids = sorted({d for d, s in self.acc.device_seq.items() if r["s"] < s <= r["u"]}
                             | {d for d, s in self.acc.device_gone.items() if r["s"] < s <= r["u"]})
            start = bisect.bisect_right(ids, r["c"]) if r["c"] else 0
            chosen = ids[start:start + page]
            value = []
            for oid in chosen:
                dev = self.acc.devices.get(oid)
                value.append({"id": oid, "@removed": {"reason": "deleted"}} if dev is None
                             else _project_device(dev, r["sel"]))
        if start + page < len(ids):
            nxt = dict(r, c=chosen[-1])
            return self.ok({"@odata.context": ctx, "value": value,
                            "@odata.nextLink": f"{link}?$skiptoken={seal(self.key, nxt)}"})
        return self.ok({"@odata.context": ctx, "value": value, "@odata.deltaLink": f"{link}?$deltatoken={self._token('d', r)}"})

    # -------------------------------------------------------------------------------- group ownership delta
    def owners_delta(self, opts: dict[str, str]) -> "Reply":
        link = f"{self.service.base}/v1.0/groups/delta"
        if "select" in opts:
            allowed = {"id", "displayname", "owners"}
            extra = [s for s in (p.strip() for p in opts["select"].split(",")) if s and s.lower() not in allowed]
            if extra:  # the emulator keeps ownership apart from the other group properties
                raise bad_request("The emulated Graph serves owners@delta with $select=displayName,owners only.",
                                  "Request_UnsupportedQuery")
        r, err = self._delta_round(opts, kind="o", link=link)
        if err is not None:
            return err
        assert r is not None
        ctx = f"{self.service.base}/v1.0/$metadata#groups"
        if r.get("latest"):
            state = {"u": self.acc.seq, "gu": self.tenant.changes.seq, "sel": r["sel"]}
            return self.ok({"@odata.context": ctx, "value": [], "@odata.deltaLink": f"{link}?$deltatoken={self._token('o', state)}"})
        page = self.service.runtime.state.delta.groups_page_size
        with self.tenant.lock:
            if r["i"]:
                ids = sorted(self.tenant.groups)
            else:
                changed = {g for g, s in self.acc.owner_seq.items() if r["s"] < s <= r["u"]}
                changed |= set(self.tenant.changes.changed_ids("groups", r["gs"], r["gu"]))
                ids = sorted(changed)
            start = bisect.bisect_right(ids, r["c"]) if r["c"] else 0
            chosen = ids[start:start + page]
            value = []
            want_name = r["sel"] is not None and "displayname" in r["sel"].lower()
            for gid in chosen:
                g = self.tenant.groups.get(gid)
                if g is None:
                    tomb = self.tenant.changes.tombstones.get(gid)
                    if tomb is not None and not r["i"]:
                        value.append({"id": gid, "@removed": {"reason": tomb.reason}})
                    continue
                item: dict[str, Any] = {"id": gid}
                if want_name:
                    item["displayName"] = g.get("displayName")
                owners = [o for o in self.acc.owners.get(gid, []) if o in self.tenant.users or o in self.tenant.service_principals]
                if r["i"]:
                    if owners:
                        item["owners@delta"] = [{"@odata.type": self._user_ref(o)["@odata.type"], "id": o} for o in owners]
                else:
                    # an incremental round: the current owners, and those removed in this window
                    removed = [o for o, s in self.acc.former_owners.get(gid, {}).items()
                               if r["s"] < s <= r["u"] and o not in owners]
                    item["owners@delta"] = [{"@odata.type": self._user_ref(o)["@odata.type"], "id": o} for o in owners]
                    item["owners@delta"] += [{"@odata.type": "#microsoft.graph.user", "id": o,
                                              "@removed": {"reason": "deleted"}} for o in removed]
                value.append(item)
        if start + page < len(ids):
            nxt = dict(r, c=chosen[-1])
            return self.ok({"@odata.context": ctx, "value": value,
                            "@odata.nextLink": f"{link}?$skiptoken=o.{seal(self.key, nxt)}"})
        return self.ok({"@odata.context": ctx, "value": value, "@odata.deltaLink": f"{link}?$deltatoken={self._token('o', r)}"})

    # ------------------------------------------------------------------------------------ Conditional Access
    def ca_list(self, which: str, opts: dict[str, str]) -> "Reply":
        name = "policies" if which == "policies" else "namedLocations"
        objs = self.acc.policies if which == "policies" else self.acc.named_locations
        for k in ("filter", "search", "orderby", "expand", "count"):
            if k in opts:
                raise bad_request(f"The emulated Graph does not support ${k} on {name}.", "Request_UnsupportedQuery")
        if "skiptoken" in opts:
            tok = unseal(self.key, opts["skiptoken"])
            if tok is None or tok.get("k") != "ca" or tok.get("n") != name or tok.get("t") != self.tenant.tenant_id:
                raise bad_request("The $skiptoken is invalid or belongs to another query.", "Request_BadRequest")
            cursor, top, select = tok["c"], tok["p"], tok["s"]
        else:
            cursor, top, select = "", parse_top(opts.get("top")) or CA_PAGE, opts.get("select")
        with self.tenant.lock:
            ids = sorted(objs)
            start = bisect.bisect_right(ids, cursor) if cursor else 0
            chosen = ids[start:start + top]
            value = []
            for oid in chosen:
                obj = json.loads(json.dumps(objs[oid]))
                if select:
                    keep = {s.strip() for s in select.split(",") if s.strip()} | {"id", "@odata.type"}
                    obj = {k: v for k, v in obj.items() if k in keep}
                value.append(obj)
        ctx = f"{self.service.base}/v1.0/$metadata#identity/conditionalAccess/{name}"
        body: dict[str, Any] = {"@odata.context": ctx, "value": value}
        if start + top < len(ids):
            nxt = seal(self.key, {"k": "ca", "n": name, "t": self.tenant.tenant_id, "c": chosen[-1], "p": top, "s": select})
            body["@odata.nextLink"] = f"{self.service.base}/v1.0/identity/conditionalAccess/{name}?$skiptoken={nxt}"
        return self.ok(body)

    def evaluate(self, raw: bytes) -> "Reply":
        try:
            doc = json.loads(raw or b"{}")
        except ValueError:
            raise bad_request("The request body is not JSON.") from None
        if not isinstance(doc, dict):
            raise bad_request("The request body must be a JSON object.")
        identity = doc.get("signInIdentity")
        context = doc.get("signInContext")
        conditions = doc.get("signInConditions")
        if not isinstance(identity, dict) or not isinstance(context, dict) or not isinstance(conditions, dict):
            raise bad_request("signInIdentity, signInContext and signInConditions are required.")
        if identity.get("@odata.type") != "#microsoft.graph.userSignIn" or not identity.get("userId"):
            raise bad_request("The emulator evaluates #microsoft.graph.userSignIn identities with a userId.")
        user = self.tenant.users.get(str(identity["userId"]))
        if user is None:
            raise GraphFailure(404, "Request_ResourceNotFound", f"Resource '{identity['userId']}' does not exist.")
        if context.get("@odata.type") != "#microsoft.graph.applicationContext":
            raise bad_request("The emulator evaluates #microsoft.graph.applicationContext contexts.")
        apps = [str(a) for a in context.get("includeApplications") or []]
        only_applied = bool(doc.get("appliedPoliciesOnly"))
        groups = self._groups_of(user["id"])
        roles = self._roles_of(user["id"])
        out = []
        with self.tenant.lock:
            for pid in sorted(self.acc.policies):
                p = self.acc.policies[pid]
                applies, reason = self._what_if(p, user, groups, roles, apps, conditions)
                if only_applied and not applies:
                    continue
                out.append({**json.loads(json.dumps(p)), "policyApplies": applies,
                            "analysisReasons": "notSet" if applies else reason})
        return self.ok({"@odata.context": f"{self.service.base}/v1.0/$metadata#Collection(microsoft.graph.whatIfAnalysisResult)",
                        "value": out})

    def _groups_of(self, user_id: str) -> set[str]:
        seen: set[str] = set()
        queue = deque(self.tenant.member_of(user_id))
        while queue:
            gid = queue.popleft()
            if gid in seen:
                continue
            seen.add(gid)
            queue.extend(self.tenant.member_of(gid))
        return seen

    def _roles_of(self, user_id: str) -> set[str]:
        """Built-in roles the user holds actively at tenant scope, directly or through a role-assignable group."""
        from entra_mcp.devtenant.graph_account import account_of

        direct = set(self.tenant.member_of(user_id))
        return {str(a.get("roleDefinitionId")).lower() for a in account_of(self.tenant).role_assignments.values()
                if (a.get("principalId") == user_id or a.get("principalId") in direct)
                and a.get("directoryScopeId", "/") == "/"}

    def _what_if(self, p: dict[str, Any], user: dict[str, Any], groups: set[str], roles: set[str], apps: list[str],
                 sign_in: dict[str, Any]) -> tuple[bool, str]:
        if p.get("state") == "disabled":
            return False, "policyNotEnabled"
        c = p.get("conditions") or {}
        u = c.get("users") or {}
        uid = user["id"]
        guest = user.get("userType") == "Guest" or "#EXT#" in str(user.get("userPrincipalName", ""))
        included = ("All" in (u.get("includeUsers") or []) or uid in (u.get("includeUsers") or [])
                    or bool(groups & set(u.get("includeGroups") or []))
                    or bool(roles & {r.lower() for r in u.get("includeRoles") or []})
                    or (guest and bool(u.get("includeGuestsOrExternalUsers"))
                        or ("GuestsOrExternalUsers" in (u.get("includeUsers") or []) and guest)))
        excluded = (uid in (u.get("excludeUsers") or []) or bool(groups & set(u.get("excludeGroups") or []))
                    or bool(roles & {r.lower() for r in u.get("excludeRoles") or []})
                    or (guest and bool(u.get("excludeGuestsOrExternalUsers"))))
        if not included or excluded:
            return False, "users"
        a = c.get("applications") or {}
        inc, exc = set(a.get("includeApplications") or []), set(a.get("excludeApplications") or [])

        def hit(names: set[str], app: str) -> bool:
            return "All" in names or app in names or ("Office365" in names and app in OFFICE365_APP_IDS)

        if not any(hit(inc, x) for x in apps) or any(x in exc or ("Office365" in exc and x in OFFICE365_APP_IDS) for x in apps):
            return False, "application"
        clients = c.get("clientAppTypes") or ["all"]
        if "all" not in clients:
            given = sign_in.get("clientAppType")
            if not given:
                return False, "notEnoughInformation"
            if given not in clients:
                return False, "clientApps"
        plat = c.get("platforms")
        if plat:
            given = str(sign_in.get("devicePlatform") or "")
            if not given:
                return False, "notEnoughInformation"
            incp = {x.lower() for x in plat.get("includePlatforms") or []}
            excp = {x.lower() for x in plat.get("excludePlatforms") or []}
            if not ("all" in incp or given.lower() in incp) or given.lower() in excp:
                return False, "devicePlatform"
        device_filter = (c.get("devices") or {}).get("deviceFilter")
        if device_filter:  # devtenant/device_filter.py: no deviceInfo is an unregistered device (null attributes)
            try:
                if not in_scope(device_filter, sign_in.get("deviceInfo") if isinstance(sign_in.get("deviceInfo"), dict) else None):
                    return False, "devices"
            except RuleError:
                return False, "invalidCondition"
        loc = c.get("locations")
        if loc:
            matched = self._locations(sign_in)
            if matched is None:
                return False, "notEnoughInformation"
            incl = set(loc.get("includeLocations") or [])
            excl = set(loc.get("excludeLocations") or [])
            if not (("All" in incl) or matched & incl or ("AllTrusted" in incl and "AllTrusted" in matched)) \
                    or matched & excl or ("AllTrusted" in excl and "AllTrusted" in matched):
                return False, "location"
        for key, given_key in (("signInRiskLevels", "signInRiskLevel"), ("userRiskLevels", "userRiskLevel")):
            levels = c.get(key) or []
            if levels:
                given = sign_in.get(given_key)
                if not given:
                    return False, "notEnoughInformation"
                if given not in levels:
                    return False, "signInRisk" if key == "signInRiskLevels" else "userRisk"
        return True, "notSet"

    def _locations(self, sign_in: dict[str, Any]) -> set[str] | None:
        ip, country = sign_in.get("ipAddress"), sign_in.get("country")
        if not ip and not country:
            return None
        out: set[str] = set()
        for lid, loc in self.acc.named_locations.items():
            if loc.get("@odata.type") == "#microsoft.graph.ipNamedLocation" and ip:
                try:
                    addr = ipaddress.ip_address(str(ip))
                    nets = [ipaddress.ip_network(r["cidrAddress"], strict=False) for r in loc.get("ipRanges") or []]
                except ValueError:
                    continue
                if any(addr in n for n in nets):
                    out.add(lid)
                    if loc.get("isTrusted"):
                        out.add("AllTrusted")
            elif loc.get("@odata.type") == "#microsoft.graph.countryNamedLocation" and country:
                if str(country).upper() in [c.upper() for c in loc.get("countriesAndRegions") or []]:
                    out.add(lid)
        return out


__all__ = ["MUTATIONS", "TenantAccess", "access_of", "generate_access", "ground_truth", "handle", "new_policy"]
