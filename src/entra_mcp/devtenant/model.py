"""The emulator's in-memory state: tenants, their directory objects, their app registrations and their change log.

Directory objects are kept as Graph-shaped dicts holding every property (camelCase, as Graph names them); the Graph
routes project them with `$select` and default properties. The login host only reads registrations, users and
passwords from here. Everything the emulator serves is derived from this state.

After generation, state changes ONLY through the mutation methods of `EmulatedTenant` (create_*, update_object,
disable_user, soft_delete, restore, hard_delete, add_member, remove_member, set_manager, add/remove app role
assignments and credentials). Each mutation takes the next number of the tenant's change sequence and records what
changed, so delta queries can answer "what changed since sequence N". Generated objects have sequence 0 and cost no
log entries.
"""

from __future__ import annotations

import bisect
import secrets as _secrets
import threading
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, Iterable

from entra_mcp.devtenant.throttle import ResourceUnitThrottle

# The all-zero appRoleId: "default access" in appRoleAssignments.
DEFAULT_ACCESS_ROLE = "00000000-0000-0000-0000-000000000000"
# Password every generated user signs in with on the emulator's authorize page.
DEFAULT_USER_PASSWORD = "Passw0rd!demo"

# Graph entity sets the change log knows, and where EmulatedTenant keeps each
AREAS: tuple[str, ...] = ("users", "groups", "applications", "servicePrincipals")
AREA_ATTR = {"users": "users", "groups": "groups", "applications": "applications", "servicePrincipals": "service_principals"}
AREA_KIND = {"users": "user", "groups": "group", "applications": "application", "servicePrincipals": "servicePrincipal"}
KIND_AREA = {v: k for k, v in AREA_KIND.items()}
# principalType of an appRoleAssignment by member kind
PRINCIPAL_TYPE = {"user": "User", "group": "Group", "servicePrincipal": "ServicePrincipal"}

_ID_NAMESPACE = uuid.UUID("6f1c2a52-8d0e-4c55-9b1e-2f0f5c1d7e11")


def iso(dt: datetime) -> str:
    """Graph's timestamp form: UTC, second precision, trailing Z."""
    return dt.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class MutationError(ValueError):
    """A mutation cannot be applied; `status` is the HTTP status the control API answers with (404 or 400)."""

    def __init__(self, message: str, *, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


class Clock:
    """Emulator time: wall-clock UTC plus an offset the control API can advance (delta-token age-out)."""

    def __init__(self) -> None:
        self.offset_s = 0.0

    def now(self) -> datetime:
        return datetime.now(timezone.utc) + timedelta(seconds=self.offset_s)

    def timestamp(self) -> float:
        return self.now().timestamp()

    def advance(self, seconds: float) -> None:
        if seconds < 0:
            raise MutationError("the emulator clock only moves forward")
        self.offset_s += seconds


@dataclass
class ClientSecret:
    key_id: str
    value: str
    display_name: str = ""
    end_date_time: str = "2299-12-31T00:00:00Z"


@dataclass
class ClientCertificate:
    key_id: str
    thumbprint_sha1_b64url: str  # x5t of the certificate, as a client assertion names it
    thumbprint_sha256_b64url: str  # x5t#S256
    public_key_pem: bytes
    certificate_pem: bytes = b""
    private_key_pem: bytes = b""  # kept so the control API can hand the test bed a working PEM (cert + key)
    end_date_time: str = "2299-12-31T00:00:00Z"


@dataclass
class AppRegistration:
    """An app that can ask the login host for tokens (the product's sync app, a portal web app, an API)."""

    client_id: str
    display_name: str
    secrets: list[ClientSecret] = field(default_factory=list)
    certificates: list[ClientCertificate] = field(default_factory=list)
    # application permissions granted with admin consent, e.g. ["User.Read.All", "GroupMember.Read.All"]
    granted_roles: list[str] = field(default_factory=list)
    redirect_uris: list[str] = field(default_factory=list)
    # delegated scopes this app exposes as an API (identifierUri api://{client_id}), e.g. ["Identity.Investigate"]
    exposed_scopes: list[str] = field(default_factory=list)
    # app roles this API exposes for app-only callers
    exposed_app_roles: list[str] = field(default_factory=list)
    sign_in_audience: str = "AzureADMyOrg"


@dataclass
class Tombstone:
    """A removed object as delta reports it: reason "changed" (soft-deleted, restorable) or "deleted" (gone)."""

    area: str
    obj: dict[str, Any]
    reason: str
    seq: int
    deleted_date_time: str
    # what restore() puts back: groups this object was a direct member of, a group's own members, the user's
    # manager, app role assignments held by (or granted on) the object
    parent_groups: dict[str, str] = field(default_factory=dict)
    own_members: dict[str, str] = field(default_factory=dict)
    manager_id: str | None = None
    assignments: list[dict[str, Any]] = field(default_factory=list)


@dataclass(frozen=True)
class MembershipChange:
    seq: int
    group_id: str
    member_id: str
    kind: str  # tail of @odata.type: user, group, servicePrincipal, device
    added: bool


class ChangeLog:
    """The tenant's change sequence and what each step changed; generated state is sequence 0 and not logged."""

    def __init__(self) -> None:
        self.seq = 0
        # per area, parallel lists (seq ascending, object id): which objects changed at which step
        self._area_seqs: dict[str, list[int]] = {a: [] for a in AREAS}
        self._area_ids: dict[str, list[str]] = {a: [] for a in AREAS}
        # object id -> [(seq, changed property names or None for "everything": created, restored)]
        self._props: dict[str, list[tuple[int, frozenset[str] | None]]] = {}
        self.tombstones: dict[str, Tombstone] = {}
        self.memberships: list[MembershipChange] = []
        self._membership_seqs: list[int] = []

    def record(self, area: str, oid: str, props: Iterable[str] | None) -> int:
        self.seq += 1
        self._area_seqs[area].append(self.seq)
        self._area_ids[area].append(oid)
        self._props.setdefault(oid, []).append((self.seq, None if props is None else frozenset(props)))
        return self.seq

    def record_membership(self, group_id: str, member_id: str, kind: str, added: bool) -> int:
        self.seq += 1
        self.memberships.append(MembershipChange(self.seq, group_id, member_id, kind, added))
        self._membership_seqs.append(self.seq)
        return self.seq

    def last_seq(self, oid: str) -> int:
        entries = self._props.get(oid)
        return entries[-1][0] if entries else 0

    def changed_ids(self, area: str, since: int, upto: int) -> list[str]:
        """Sorted ids of the area's objects changed in (since, upto]."""
        seqs = self._area_seqs[area]
        lo, hi = bisect.bisect_right(seqs, since), bisect.bisect_right(seqs, upto)
        return sorted(set(self._area_ids[area][lo:hi]))

    def changed_props(self, oid: str, since: int, upto: int) -> frozenset[str] | None:
        """Property names changed in (since, upto]; None when the object was (re)created in that window."""
        out: set[str] = set()
        for seq, props in self._props.get(oid, ()):
            if since < seq <= upto:
                if props is None:
                    return None
                out |= props
        return frozenset(out)

    def membership_changes(self, since: int, upto: int) -> dict[str, dict[str, tuple[str, bool]]]:
        """group id -> {member id: (kind, added)}: the net effect of membership changes in (since, upto]."""
        lo = bisect.bisect_right(self._membership_seqs, since)
        hi = bisect.bisect_right(self._membership_seqs, upto)
        out: dict[str, dict[str, tuple[str, bool]]] = {}
        for ch in self.memberships[lo:hi]:
            out.setdefault(ch.group_id, {})[ch.member_id] = (ch.kind, ch.added)
        return out


@dataclass
class EmulatedTenant:
    tenant_id: str  # GUID
    domain: str  # verified default domain, e.g. "contoso.example"
    display_name: str
    premium: bool = True  # Entra ID P1/P2: signInActivity is served only when True
    registrations: dict[str, AppRegistration] = field(default_factory=dict)  # client_id -> registration
    # Graph-shaped directory objects, id -> dict with every property
    users: dict[str, dict[str, Any]] = field(default_factory=dict)
    groups: dict[str, dict[str, Any]] = field(default_factory=dict)
    applications: dict[str, dict[str, Any]] = field(default_factory=dict)
    service_principals: dict[str, dict[str, Any]] = field(default_factory=dict)
    # group id -> {member id: kind}, DIRECT members only; kind is the tail of @odata.type ("user", "group",
    # "servicePrincipal", "device")
    members: dict[str, dict[str, str]] = field(default_factory=dict)
    # user id -> manager's user id
    managers: dict[str, str] = field(default_factory=dict)
    # appRoleAssignment id -> Graph-shaped appRoleAssignment (id, appRoleId, createdDateTime, principalDisplayName,
    # principalId, principalType, resourceDisplayName, resourceId)
    app_role_assignments: dict[str, dict[str, Any]] = field(default_factory=dict)
    domains: list[dict[str, Any]] = field(default_factory=list)
    organization: dict[str, Any] = field(default_factory=dict)
    # user id -> password for the authorize page (DEFAULT_USER_PASSWORD unless set)
    passwords: dict[str, str] = field(default_factory=dict)
    account: Any = field(default=None, repr=False)  # graph_account.AccountData: roles, MFA/SSPR, licences, risk
    lock: threading.RLock = field(default_factory=threading.RLock, repr=False)
    # delta bookkeeping and emulator time (EmulatorState shares one Clock across its tenants)
    changes: ChangeLog = field(default_factory=ChangeLog, repr=False)
    clock: Clock = field(default_factory=Clock, repr=False)
    # lazily built read indexes, kept up to date by the mutations once built
    _sorted_ids: dict[str, list[str]] = field(default_factory=dict, repr=False)
    _sorted_members: dict[str, list[str]] = field(default_factory=dict, repr=False)
    _member_of: dict[str, dict[str, str]] | None = field(default=None, repr=False)
    _upn: dict[str, str] | None = field(default=None, repr=False)
    _by_resource: dict[str, dict[str, None]] | None = field(default=None, repr=False)

    # ----------------------------------------------------------------------------------------------- reads
    def area_objects(self, area: str) -> dict[str, dict[str, Any]]:
        objs: dict[str, dict[str, Any]] = getattr(self, AREA_ATTR[area])
        return objs

    def find(self, oid: str) -> tuple[str, dict[str, Any]] | None:
        """(area, object) of a live directory object by id, searching every area."""
        for area in AREAS:
            obj = self.area_objects(area).get(oid)
            if obj is not None:
                return area, obj
        return None

    def kind_of(self, oid: str) -> str | None:
        found = self.find(oid)
        return AREA_KIND[found[0]] if found else None

    def sorted_ids(self, area: str) -> list[str]:
        """The area's live object ids in ascending order (the emulator's paging order)."""
        ids = self._sorted_ids.get(area)
        if ids is None:
            ids = self._sorted_ids[area] = sorted(self.area_objects(area))
        return ids

    def sorted_members(self, group_id: str) -> list[str]:
        ids = self._sorted_members.get(group_id)
        if ids is None:
            ids = self._sorted_members[group_id] = sorted(self.members.get(group_id, {}))
        return ids

    def member_of(self, member_id: str) -> dict[str, str]:
        """group id -> kind of `member_id` in it: the groups it is a DIRECT member of."""
        if self._member_of is None:
            idx: defaultdict[str, dict[str, str]] = defaultdict(dict)
            for gid, mems in self.members.items():
                for mid, kind in mems.items():
                    idx[mid][gid] = kind
            self._member_of = dict(idx)
        return self._member_of.get(member_id, {})

    def user_by_upn(self, upn: str) -> dict[str, Any] | None:
        """Case-insensitive userPrincipalName lookup (used by the authorize page and /users/{upn})."""
        if self._upn is None:
            self._upn = {str(u.get("userPrincipalName", "")).lower(): uid for uid, u in self.users.items()}
        uid = self._upn.get(upn.strip().lower())
        return self.users.get(uid) if uid else None

    def user_by_key(self, key: str) -> dict[str, Any] | None:
        """/users/{id | userPrincipalName}."""
        return self.users.get(key) or (self.user_by_upn(key) if "@" in key else None)

    def assignments_for_resource(self, sp_id: str) -> list[dict[str, Any]]:
        """appRoleAssignments granted on a service principal (its appRoleAssignedTo), ordered by id."""
        if self._by_resource is None:
            idx: dict[str, dict[str, None]] = {}
            for aid, a in self.app_role_assignments.items():
                idx.setdefault(a["resourceId"], {})[aid] = None
            self._by_resource = idx
        return [self.app_role_assignments[a] for a in sorted(self._by_resource.get(sp_id, {}))]

    def warm_indexes(self) -> None:
        """Build the read indexes now (about a second for the large tenant) rather than on the first request."""
        with self.lock:
            for area in AREAS:
                self.sorted_ids(area)
            self.user_by_upn("")
            self.member_of("")
            self.assignments_for_resource("")

    def password_for(self, user_id: str) -> str:
        return self.passwords.get(user_id, DEFAULT_USER_PASSWORD)

    # ------------------------------------------------------------------------------------ index upkeep
    def _index_add(self, area: str, obj: dict[str, Any]) -> None:
        ids = self._sorted_ids.get(area)
        if ids is not None:
            bisect.insort(ids, obj["id"])
        if area == "users" and self._upn is not None:
            self._upn[str(obj.get("userPrincipalName", "")).lower()] = obj["id"]

    def _index_remove(self, area: str, obj: dict[str, Any]) -> None:
        ids = self._sorted_ids.get(area)
        if ids is not None:
            i = bisect.bisect_left(ids, obj["id"])
            if i < len(ids) and ids[i] == obj["id"]:
                del ids[i]
        if area == "users" and self._upn is not None:
            self._upn.pop(str(obj.get("userPrincipalName", "")).lower(), None)

    # --------------------------------------------------------------------------------------- mutations
    def _new_id(self, kind: str) -> str:
        return str(uuid.uuid5(_ID_NAMESPACE, f"{self.tenant_id}:{kind}:{self.changes.seq + 1}:{len(self.changes.tombstones)}"))

    def _now(self) -> str:
        return iso(self.clock.now())

    def _require(self, oid: str, area: str | None = None) -> tuple[str, dict[str, Any]]:
        found = self.find(oid)
        if found is None or (area is not None and found[0] != area):
            what = AREA_KIND[area] if area else "directory object"
            raise MutationError(f"no live {what} with id '{oid}' in tenant {self.tenant_id}", status=404)
        return found

    def _insert(self, area: str, obj: dict[str, Any]) -> dict[str, Any]:
        with self.lock:
            if obj["id"] in self.area_objects(area) or obj["id"] in self.changes.tombstones:
                raise MutationError(f"an object with id '{obj['id']}' already exists")
            self.area_objects(area)[obj["id"]] = obj
            self._index_add(area, obj)
            self.changes.record(area, obj["id"], None)
            return obj

    def create_user(self, props: dict[str, Any]) -> dict[str, Any]:
        """Create a user; displayName and userPrincipalName are required, everything else has Graph's defaults."""
        with self.lock:
            upn = str(props.get("userPrincipalName") or "")
            if not upn or not props.get("displayName"):
                raise MutationError("create_user needs displayName and userPrincipalName")
            if self.user_by_upn(upn) is not None:
                raise MutationError(f"userPrincipalName '{upn}' is already taken")
            props = dict(props)
            password = props.pop("password", None)
            user: dict[str, Any] = {
                "id": props.pop("id", None) or self._new_id("user"),
                "businessPhones": [], "displayName": None, "givenName": None, "jobTitle": None, "mail": None,
                "mobilePhone": None, "officeLocation": None, "preferredLanguage": None, "surname": None,
                "userPrincipalName": upn, "accountEnabled": True, "createdDateTime": self._now(), "userType": "Member",
                "externalUserState": None, "employeeId": None, "department": None, "companyName": None,
                "lastPasswordChangeDateTime": self._now(), "passwordPolicies": None, "onPremisesSyncEnabled": None,
                "onPremisesLastSyncDateTime": None, "onPremisesSamAccountName": None, "otherMails": [],
                "proxyAddresses": [], "usageLocation": None, "assignedLicenses": [], "mailNickname": upn.split("@")[0],
            }
            user.update(props)
            self._insert("users", user)
            if password:
                self.passwords[user["id"]] = str(password)
            return user

    def create_group(self, props: dict[str, Any]) -> dict[str, Any]:
        """Create a group (security by default: groupTypes [], securityEnabled true, mailEnabled false)."""
        with self.lock:
            if not props.get("displayName"):
                raise MutationError("create_group needs displayName")
            props = dict(props)
            members = props.pop("members", [])
            group: dict[str, Any] = {
                "id": props.pop("id", None) or self._new_id("group"), "displayName": None, "description": None,
                "mail": None, "mailEnabled": False, "mailNickname": str(props["displayName"]).replace(" ", ""),
                "securityEnabled": True, "groupTypes": [], "membershipRule": None,
                "membershipRuleProcessingState": None, "onPremisesSyncEnabled": None, "createdDateTime": self._now(),
                "visibility": None, "proxyAddresses": [],
            }
            group.update(props)
            self._insert("groups", group)
            self.members.setdefault(group["id"], {})
            for mid in members:
                self.add_member(group["id"], mid)
            return group

    def create_application(self, props: dict[str, Any]) -> dict[str, Any]:
        with self.lock:
            if not props.get("displayName"):
                raise MutationError("create_application needs displayName")
            props = dict(props)
            app: dict[str, Any] = {
                "id": props.pop("id", None) or self._new_id("application"),
                "appId": props.pop("appId", None) or self._new_id("appId"), "displayName": None,
                "signInAudience": "AzureADMyOrg", "appRoles": [], "keyCredentials": [], "passwordCredentials": [],
                "createdDateTime": self._now(), "identifierUris": [], "publisherDomain": self.domain,
                "web": {"redirectUris": []}, "requiredResourceAccess": [], "tags": [],
            }
            app.update(props)
            return self._insert("applications", app)

    def create_service_principal(self, props: dict[str, Any]) -> dict[str, Any]:
        """Create a service principal; with an appId of an application here it takes that app's name and roles."""
        with self.lock:
            props = dict(props)
            app = next((a for a in self.applications.values() if props.get("appId") and a["appId"] == props["appId"]), None)
            if not props.get("displayName") and app is None:
                raise MutationError("create_service_principal needs displayName or the appId of an application")
            app_id = props.pop("appId", None) or self._new_id("appId")
            sp: dict[str, Any] = {
                "id": props.pop("id", None) or self._new_id("servicePrincipal"), "appId": app_id,
                "displayName": app["displayName"] if app else None,
                "appDisplayName": app["displayName"] if app else props.get("displayName"),
                "accountEnabled": True, "appOwnerOrganizationId": self.tenant_id, "appRoleAssignmentRequired": False,
                "servicePrincipalType": "Application", "servicePrincipalNames": [app_id],
                "appRoles": list(app["appRoles"]) if app else [], "keyCredentials": [], "passwordCredentials": [],
                "tags": [],
            }
            sp.update(props)
            return self._insert("servicePrincipals", sp)

    def update_object(self, oid: str, changes: dict[str, Any], area: str | None = None) -> dict[str, Any]:
        """Set properties of a live object (`id` cannot change; manager goes through set_manager)."""
        with self.lock:
            area, obj = self._require(oid, area)
            bad = {"id", "manager", "members"} & set(changes)
            if bad:
                raise MutationError(f"cannot set {', '.join(sorted(bad))} with update (use set_manager / add_member)")
            if area == "users" and "userPrincipalName" in changes:
                other = self.user_by_upn(str(changes["userPrincipalName"]))
                if other is not None and other["id"] != oid:
                    raise MutationError(f"userPrincipalName '{changes['userPrincipalName']}' is already taken")
                self._index_remove(area, obj)
                obj.update(changes)
                self._index_add(area, obj)
            else:
                obj.update(changes)
            if "password" in changes and area == "users":
                self.passwords[oid] = str(obj.pop("password"))
                obj["lastPasswordChangeDateTime"] = self._now()
                changes = {**changes, "lastPasswordChangeDateTime": None}
                changes.pop("password")
            self.changes.record(area, oid, changes.keys())
            return obj

    def disable_user(self, user_id: str) -> dict[str, Any]:
        return self.update_object(user_id, {"accountEnabled": False}, "users")

    def enable_user(self, user_id: str) -> dict[str, Any]:
        return self.update_object(user_id, {"accountEnabled": True}, "users")

    def _detach(self, area: str, oid: str, tomb: Tombstone) -> None:
        """Remove a live object with its links; what restore() needs goes into the tombstone."""
        obj = self.area_objects(area).pop(oid)
        self._index_remove(area, obj)
        tomb.obj = obj
        for gid, kind in list(self.member_of(oid).items()):
            tomb.parent_groups[gid] = kind
            self.remove_member(gid, oid)
        if area == "groups":
            tomb.own_members = dict(self.members.get(oid, {}))
            for mid in list(tomb.own_members):
                self._drop_membership(oid, mid)
            self.members.pop(oid, None)
            self._sorted_members.pop(oid, None)
        if area == "users":
            tomb.manager_id = self.managers.pop(oid, None)
            for report, mgr in list(self.managers.items()):
                if mgr == oid:  # reports lose a deleted manager (not given back on restore)
                    self.set_manager(report, None)
        for aid, a in list(self.app_role_assignments.items()):
            if a["principalId"] == oid or a["resourceId"] == oid:
                tomb.assignments.append(a)
                self._remove_assignment(aid)

    def soft_delete(self, oid: str) -> Tombstone:
        """Delete to the recycle bin: gone from lists, delta says {"@removed": {"reason": "changed"}}; restorable."""
        with self.lock:
            area, _ = self._require(oid)
            tomb = Tombstone(area=area, obj={}, reason="changed", seq=0, deleted_date_time=self._now())
            self._detach(area, oid, tomb)
            tomb.obj["deletedDateTime"] = tomb.deleted_date_time
            tomb.seq = self.changes.record(area, oid, None)
            self.changes.tombstones[oid] = tomb
            return tomb

    def restore(self, oid: str) -> dict[str, Any]:
        """Bring a soft-deleted object back with its memberships, manager and app role assignments."""
        with self.lock:
            tomb = self.changes.tombstones.get(oid)
            if tomb is None or tomb.reason != "changed":
                raise MutationError(f"no soft-deleted object with id '{oid}'", status=404)
            del self.changes.tombstones[oid]
            obj = tomb.obj
            obj.pop("deletedDateTime", None)
            self.area_objects(tomb.area)[oid] = obj
            self._index_add(tomb.area, obj)
            self.changes.record(tomb.area, oid, None)
            if tomb.area == "groups":
                self.members.setdefault(oid, {})
                for mid, _kind in tomb.own_members.items():
                    if self.find(mid) is not None or _kind == "device":
                        self._add_membership(oid, mid, _kind)
            for gid in tomb.parent_groups:
                if gid in self.groups:
                    self.add_member(gid, oid)
            if tomb.manager_id and tomb.manager_id in self.users:
                self.set_manager(oid, tomb.manager_id)
            for a in tomb.assignments:
                if self.find(a["principalId"]) and a["resourceId"] in self.service_principals:
                    self.app_role_assignments[a["id"]] = a
                    if self._by_resource is not None:
                        self._by_resource.setdefault(a["resourceId"], {})[a["id"]] = None
            return obj

    def hard_delete(self, oid: str) -> Tombstone:
        """Delete for good (live or soft-deleted): delta says {"@removed": {"reason": "deleted"}}."""
        with self.lock:
            tomb = self.changes.tombstones.get(oid)
            if tomb is not None:
                if tomb.reason == "deleted":
                    raise MutationError(f"object '{oid}' is already permanently deleted", status=404)
                area = tomb.area
            else:
                area, _ = self._require(oid)
                tomb = Tombstone(area=area, obj={}, reason="deleted", seq=0, deleted_date_time=self._now())
                self._detach(area, oid, tomb)
            tomb.reason = "deleted"
            tomb.parent_groups, tomb.own_members, tomb.assignments, tomb.manager_id = {}, {}, [], None
            tomb.seq = self.changes.record(area, oid, None)
            self.changes.tombstones[oid] = tomb
            self.passwords.pop(oid, None)
            return tomb

    def _add_membership(self, group_id: str, member_id: str, kind: str) -> None:
        self.members.setdefault(group_id, {})[member_id] = kind
        self._sorted_members.pop(group_id, None)
        if self._member_of is not None:
            self._member_of.setdefault(member_id, {})[group_id] = kind
        self.changes.record_membership(group_id, member_id, kind, True)

    def _drop_membership(self, group_id: str, member_id: str) -> None:
        kind = self.members[group_id].pop(member_id)
        self._sorted_members.pop(group_id, None)
        if self._member_of is not None:
            self._member_of.get(member_id, {}).pop(group_id, None)
        self.changes.record_membership(group_id, member_id, kind, False)

    def add_member(self, group_id: str, member_id: str) -> bool:
        """Add a direct member (user, group or service principal); False when it already was one."""
        with self.lock:
            self._require(group_id, "groups")
            if member_id == group_id:
                raise MutationError("a group cannot be a member of itself")
            kind = self.kind_of(member_id)
            if kind not in ("user", "group", "servicePrincipal"):
                raise MutationError(f"no live user, group or service principal with id '{member_id}'", status=404)
            if member_id in self.members.get(group_id, {}):
                return False
            self._add_membership(group_id, member_id, kind)
            return True

    def remove_member(self, group_id: str, member_id: str) -> bool:
        """Remove a direct member; False when it was not one."""
        with self.lock:
            if member_id not in self.members.get(group_id, {}):
                return False
            self._drop_membership(group_id, member_id)
            return True

    def set_manager(self, user_id: str, manager_id: str | None) -> None:
        """Set (or with None, remove) a user's manager; users/delta reports it when `manager` is selected."""
        with self.lock:
            self._require(user_id, "users")
            if manager_id is not None:
                self._require(manager_id, "users")
                if manager_id == user_id:
                    raise MutationError("a user cannot be their own manager")
            if self.managers.get(user_id) == manager_id:
                return
            if manager_id is None:
                self.managers.pop(user_id, None)
            else:
                self.managers[user_id] = manager_id
            self.changes.record("users", user_id, ("manager",))

    def add_app_role_assignment(self, resource_id: str, principal_id: str, app_role_id: str = DEFAULT_ACCESS_ROLE) -> dict[str, Any]:
        """Grant `principal_id` (user, group or service principal) an app role of service principal `resource_id`."""
        with self.lock:
            _, resource = self._require(resource_id, "servicePrincipals")
            area, principal = self._require(principal_id)
            kind = AREA_KIND[area]
            if kind not in PRINCIPAL_TYPE:
                raise MutationError(f"'{principal_id}' is an {kind}: only users, groups and service principals get app roles")
            if app_role_id != DEFAULT_ACCESS_ROLE and not any(r.get("id") == app_role_id for r in resource.get("appRoles", [])):
                raise MutationError(f"service principal '{resource_id}' has no app role '{app_role_id}'")
            a: dict[str, Any] = {
                "id": self._new_id("appRoleAssignment"), "appRoleId": app_role_id, "createdDateTime": self._now(),
                "deletedDateTime": None, "principalDisplayName": principal.get("displayName"),
                "principalId": principal_id, "principalType": PRINCIPAL_TYPE[kind],
                "resourceDisplayName": resource.get("displayName"), "resourceId": resource_id,
            }
            self.changes.seq += 1  # assignments are not in any delta, but ids must stay unique
            self.app_role_assignments[a["id"]] = a
            if self._by_resource is not None:
                self._by_resource.setdefault(resource_id, {})[a["id"]] = None
            return a

    def _remove_assignment(self, assignment_id: str) -> None:
        a = self.app_role_assignments.pop(assignment_id)
        if self._by_resource is not None:
            self._by_resource.get(a["resourceId"], {}).pop(assignment_id, None)

    def remove_app_role_assignment(self, assignment_id: str) -> None:
        with self.lock:
            if assignment_id not in self.app_role_assignments:
                raise MutationError(f"no appRoleAssignment with id '{assignment_id}'", status=404)
            self._remove_assignment(assignment_id)

    def _credential_owner(self, oid: str) -> tuple[str, dict[str, Any]]:
        area, obj = self._require(oid)
        if area not in ("applications", "servicePrincipals"):
            raise MutationError(f"'{oid}' is not an application or service principal")
        return area, obj

    def add_password_credential(self, oid: str, display_name: str = "", end_date_time: str | None = None) -> tuple[dict[str, Any], str]:
        """addPassword: returns the passwordCredential as reads show it and the secret text (shown only here).

        On an application whose appId is a registration's client id, the secret also works at the login host.
        """
        with self.lock:
            area, obj = self._credential_owner(oid)
            secret = _secrets.token_urlsafe(30)
            now = self.clock.now()
            cred: dict[str, Any] = {
                "customKeyIdentifier": None, "displayName": display_name or None,
                "endDateTime": end_date_time or iso(now + timedelta(days=365 * 2)), "hint": secret[:3],
                "keyId": self._new_id("passwordCredential"), "secretText": None, "startDateTime": iso(now),
            }
            obj["passwordCredentials"] = [*obj.get("passwordCredentials", []), cred]
            reg = self.registrations.get(obj.get("appId", "")) if area == "applications" else None
            if reg is not None:
                reg.secrets.append(ClientSecret(cred["keyId"], secret, display_name, cred["endDateTime"]))
            self.changes.record(area, oid, ("passwordCredentials",))
            return cred, secret

    def remove_password_credential(self, oid: str, key_id: str) -> None:
        self._remove_credential(oid, key_id, "passwordCredentials")

    def add_key_credential(self, oid: str, display_name: str = "", end_date_time: str | None = None,
                           certificate_pem: str | None = None) -> dict[str, Any]:
        """Add a certificate credential (type AsymmetricX509Cert, usage Verify)."""
        with self.lock:
            area, obj = self._credential_owner(oid)
            now = self.clock.now()
            cred: dict[str, Any] = {
                "customKeyIdentifier": _secrets.token_hex(20).upper(), "displayName": display_name or None,
                "endDateTime": end_date_time or iso(now + timedelta(days=365)), "key": None,
                "keyId": self._new_id("keyCredential"), "startDateTime": iso(now), "type": "AsymmetricX509Cert",
                "usage": "Verify",
            }
            obj["keyCredentials"] = [*obj.get("keyCredentials", []), cred]
            self.changes.record(area, oid, ("keyCredentials",))
            return cred

    def remove_key_credential(self, oid: str, key_id: str) -> None:
        self._remove_credential(oid, key_id, "keyCredentials")

    def _remove_credential(self, oid: str, key_id: str, prop: str) -> None:
        with self.lock:
            area, obj = self._credential_owner(oid)
            creds = obj.get(prop, [])
            kept = [c for c in creds if c.get("keyId") != key_id]
            if len(kept) == len(creds):
                raise MutationError(f"'{oid}' has no {prop[:-1]} with keyId '{key_id}'", status=404)
            obj[prop] = kept
            reg = self.registrations.get(obj.get("appId", "")) if area == "applications" else None
            if reg is not None and prop == "passwordCredentials":
                reg.secrets = [s for s in reg.secrets if s.key_id != key_id]
            self.changes.record(area, oid, (prop,))

    # ---------------------------------------------------------------------------------------- ground truth
    def snapshot(self) -> dict[str, Any]:
        """Every live object and link as JSON-able data: what a perfect mirror of this tenant holds."""
        with self.lock:
            return {
                "tenantId": self.tenant_id, "seq": self.changes.seq,
                "users": [{**u, "managerId": self.managers.get(uid)} for uid, u in self.users.items()],
                "groups": list(self.groups.values()),
                "members": {gid: dict(m) for gid, m in self.members.items() if gid in self.groups},
                "applications": list(self.applications.values()),
                "servicePrincipals": list(self.service_principals.values()),
                "appRoleAssignments": list(self.app_role_assignments.values()),
                "domains": list(self.domains), "organization": dict(self.organization),
                "softDeleted": sorted(i for i, t in self.changes.tombstones.items() if t.reason == "changed"),
            }


@dataclass
class DeltaSettings:
    """How the emulated Graph shapes delta rounds (the control API can change these at run time)."""

    users_page_size: int = 200  # objects per users/applications/servicePrincipals delta page
    groups_page_size: int = 200  # groups per groups/delta page ...
    groups_page_units: int = 1000  # ... and at most this many groups + member references per page
    empty_page_every: int = 5  # page 1, 1+N, 1+2N... of a round is EMPTY but carries a nextLink (0: never)
    duplicate_every: int = 3  # page 2, 2+N... starts by repeating the previous page's last object (0: never)
    token_max_age_s: float = 7 * 24 * 3600  # delta links older than this (emulator time) are refused
    expiry_response: str = "gone"  # gone (410 + Location) | syncStateNotFound (400) | resyncRequired (400)
    epoch: int = 0  # bumped by "expire delta tokens": links of older epochs are refused


EXPIRY_RESPONSES = ("gone", "syncStateNotFound", "resyncRequired")


@dataclass
class EmulatorState:
    """All tenants the emulator serves; a tenant is addressed by its id or any of its domains."""

    tenants: dict[str, EmulatedTenant] = field(default_factory=dict)  # tenant_id -> tenant
    clock: Clock = field(default_factory=Clock)
    # key that signs the Graph routes' $skiptoken / $deltatoken values (opaque to clients)
    token_key: bytes = field(default_factory=lambda: _secrets.token_bytes(32), repr=False)
    delta: DeltaSettings = field(default_factory=DeltaSettings)
    # Graph's resource-unit buckets per (app, tenant); the control API can empty them
    throttle: ResourceUnitThrottle = field(default_factory=ResourceUnitThrottle, repr=False)

    def __post_init__(self) -> None:
        for t in self.tenants.values():
            t.clock = self.clock

    def add_tenant(self, tenant: EmulatedTenant) -> EmulatedTenant:
        tenant.clock = self.clock
        self.tenants[tenant.tenant_id] = tenant
        return tenant

    def resolve(self, tenant: str) -> EmulatedTenant | None:
        key = tenant.strip().lower()
        t: EmulatedTenant | None
        if key in self.tenants:
            t = self.tenants[key]
        else:
            t = next((t for t in self.tenants.values()
                      if key == t.domain.lower() or any(key == str(d.get("id", "")).lower() for d in t.domains)), None)
        if t is not None and t.clock is not self.clock:
            t.clock = self.clock  # tenants put into the dict after construction share the emulator clock too
        return t
