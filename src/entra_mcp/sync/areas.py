"""One definition per area: what to ask Graph, and how a page of answers changes the mirror.

Areas and their Graph calls (graph-notes.md):
  users                 GET /users/delta?$select=<account-state fields>,manager  (first run: the initial round;
                        later: the delta link). manager arrives as `manager` or `manager@delta`; stored as managerId.
  sign_in_activity      GET /users?$select=id,signInActivity&$top=500 (signInActivity is not in users/delta), a full
                        pull at most every SIGN_IN_REFRESH_MINUTES (Graph itself updates it with hours of lag).
  groups                GET /groups/delta?$select=<group fields>,members: groups AND direct memberships in one
                        stream; members@delta chunks merged by group id in any order (never one request per group).
  applications          GET /applications/delta
  service_principals    GET /servicePrincipals/delta
  app_role_assignments  GET /servicePrincipals/{id}/appRoleAssignedTo in $batch requests of 20, only for service
                        principals that can have assignments (appRoleAssignmentRequired, appRoles defined, or the
                        app is registered in this tenant).
                        Incremental: the service principals the same run saw change, plus a full refresh when the
                        last one is older than ASSIGNMENTS_FULL_REFRESH_MINUTES (assignment changes do not show in
                        servicePrincipals/delta).
  domains               GET /domains (a handful of objects: password validity and notification window).

`apply_*` functions take a target with get/put/delete (a dict-backed full build, or a mirror AreaChange for a delta
run), so full and delta runs share one code path; applying a page twice is harmless.
"""

from __future__ import annotations

import sys
from typing import Any, Protocol

# What the identity answers read of a user (identity/, server/): nothing else is asked for or stored. Each property is
# held for every user in the server's memory (100,000 users: each unique string ~10 MB), so phones, preferred
# language, employeeType, externalUserStateChangeDateTime, onPremisesUserPrincipalName and onPremisesDomainName,
# which no answer returns, are left out (mailNickname is kept: the desk finds people by it). A mirror synced before
# keeps them until its next full sync.
USER_FIELDS = (
    "id", "displayName", "givenName", "surname", "userPrincipalName", "mail", "otherMails", "proxyAddresses",
    "jobTitle", "department", "officeLocation", "companyName", "employeeId", "accountEnabled",
    "userType", "externalUserState", "createdDateTime", "lastPasswordChangeDateTime",
    "passwordPolicies", "onPremisesSyncEnabled", "onPremisesLastSyncDateTime", "onPremisesSamAccountName",
    "usageLocation", "assignedLicenses", "mailNickname",
)
USER_SELECT = ",".join(USER_FIELDS + ("manager",))

GROUP_FIELDS = (
    "id", "displayName", "description", "mail", "mailNickname", "mailEnabled", "securityEnabled", "groupTypes",
    "membershipRule", "membershipRuleProcessingState", "onPremisesSyncEnabled", "createdDateTime", "visibility",
    "isAssignableToRole",
)
GROUP_SELECT = ",".join(GROUP_FIELDS + ("members",))

APPLICATION_FIELDS = (
    "id", "appId", "displayName", "signInAudience", "appRoles", "keyCredentials", "passwordCredentials",
    "createdDateTime", "identifierUris", "tags", "publisherDomain",
)
SERVICE_PRINCIPAL_FIELDS = (
    "id", "appId", "displayName", "appDisplayName", "accountEnabled", "appOwnerOrganizationId",
    "appRoleAssignmentRequired", "servicePrincipalType", "servicePrincipalNames", "appRoles", "keyCredentials",
    "passwordCredentials", "tags", "preferredSingleSignOnMode",
)
DOMAIN_FIELDS = ("id", "isDefault", "isVerified", "passwordValidityPeriodInDays", "passwordNotificationWindowInDays", "authenticationType")
SIGN_IN_SELECT = "id,signInActivity"
# what the answers read of signInActivity (Graph returns it whole): the request ids are left out (~35 MB of the
# server's memory for 100,000 users)
SIGN_IN_FIELDS = ("lastSignInDateTime", "lastNonInteractiveSignInDateTime", "lastSuccessfulSignInDateTime")

SIGN_IN_REFRESH_MINUTES = 60.0
ASSIGNMENTS_FULL_REFRESH_MINUTES = 60.0
BATCH_SIZE = 20

# area -> the config switch that turns it on (SyncSettings field) and the permission it needs
AREA_SWITCH = {
    "users": "users",
    "sign_in_activity": "sign_in_activity",
    "groups": "groups",
    "applications": "applications",
    "service_principals": "service_principals",
    "app_role_assignments": "service_principals",
    "domains": "users",
}
AREA_PERMISSION = {
    "users": "User.Read.All",
    "sign_in_activity": "AuditLog.Read.All",
    "groups": "GroupMember.Read.All",
    "applications": "Application.Read.All",
    "service_principals": "Application.Read.All",
    "app_role_assignments": "Application.Read.All",
    "domains": "Domain.Read.All",
}
# a cheap request per area (doctor's permission probe)
AREA_PROBE = {
    "users": ("/users", {"$select": "id", "$top": "1"}),
    "sign_in_activity": ("/users", {"$select": "id,signInActivity", "$top": "1"}),
    "groups": ("/groups", {"$select": "id", "$top": "1"}),
    "applications": ("/applications", {"$select": "id", "$top": "1"}),
    "service_principals": ("/servicePrincipals", {"$select": "id", "$top": "1"}),
    "app_role_assignments": ("/servicePrincipals", {"$select": "id", "$top": "1"}),
    "domains": ("/domains", {}),
}
DELTA_PATHS = {
    "users": ("/users/delta", USER_SELECT),
    "groups": ("/groups/delta", GROUP_SELECT),
    "applications": ("/applications/delta", ",".join(APPLICATION_FIELDS)),
    "service_principals": ("/servicePrincipals/delta", ",".join(SERVICE_PRINCIPAL_FIELDS)),
}
AREA_MAIN_COLL = {
    "users": "users",
    "sign_in_activity": "sign_in",
    "groups": "groups",
    "applications": "applications",
    "service_principals": "service_principals",
    "app_role_assignments": "assignments",
    "domains": "domains",
}

_KINDS = {"user": "user", "group": "group", "serviceprincipal": "servicePrincipal", "device": "device", "orgcontact": "orgContact"}


class Target(Protocol):
    def get(self, coll: str, object_id: str) -> Any: ...
    def put(self, coll: str, object_id: str, value: Any) -> None: ...
    def delete(self, coll: str, object_id: str) -> None: ...


class FullBuild:
    """A Target for a full run: plain dicts, committed at once with MirrorWriter.commit_full."""

    def __init__(self) -> None:
        self.data: dict[str, dict[str, Any]] = {}

    def get(self, coll: str, object_id: str) -> Any:
        return self.data.get(coll, {}).get(object_id)

    def put(self, coll: str, object_id: str, value: Any) -> None:
        self.data.setdefault(coll, {})[object_id] = value

    def delete(self, coll: str, object_id: str) -> None:
        self.data.get(coll, {}).pop(object_id, None)


class Counter:
    """Objects added/removed/changed while applying pages (object_count of a delta run = old + added - removed)."""

    def __init__(self) -> None:
        self.added = 0
        self.removed = 0
        self.changed = 0
        self.changed_ids: set[str] = set()
        self.removed_ids: set[str] = set()


def member_kind(odata_type: Any) -> str:
    tail = str(odata_type or "").rsplit(".", 1)[-1].lower()
    return _KINDS.get(tail, "other")


# properties whose values repeat across many objects: stored as one shared string each (see _plain)
_SHARED_VALUES = frozenset({
    "department", "jobTitle", "officeLocation", "companyName", "usageLocation", "userType", "preferredLanguage",
    "employeeType", "externalUserState", "passwordPolicies", "onPremisesDomainName", "signInAudience",
    "servicePrincipalType", "appOwnerOrganizationId", "membershipRuleProcessingState", "visibility",
})


def _shared(k: str, v: Any) -> Any:
    return sys.intern(v) if k in _SHARED_VALUES and isinstance(v, str) and len(v) <= 128 else v


def _plain(item: dict[str, Any], fields: tuple[str, ...]) -> dict[str, Any]:
    """The item's own properties (annotations and navigation deltas dropped). Property names, and the values that
    repeat (department, job title...), become shared strings: pickle then stores each once per bucket, so a loaded
    mirror of 100,000 users does not hold 100,000 copies of every property name."""
    return {sys.intern(k): _shared(k, v) for k, v in item.items() if "@" not in k and (k in fields or k == "id")}


def _upsert(target: Target, coll: str, item: dict[str, Any], fields: tuple[str, ...], counter: Counter) -> dict[str, Any]:
    oid = str(item["id"])
    old = target.get(coll, oid)
    props = _plain(item, fields)
    if old is None:
        counter.added += 1
        new = props
    else:
        new = {**old, **props}  # delta answers may carry only some properties: merge
    counter.changed += 1
    counter.changed_ids.add(oid)
    return new


def _removed(item: dict[str, Any]) -> bool:
    return "@removed" in item


def _remove(target: Target, coll: str, oid: str, counter: Counter) -> bool:
    if target.get(coll, oid) is not None:
        target.delete(coll, oid)
        counter.removed += 1
        counter.changed += 1
        counter.removed_ids.add(oid)
        return True
    counter.removed_ids.add(oid)
    return False


def apply_users(target: Target, page: list[dict[str, Any]], counter: Counter) -> None:
    for item in page:
        if "id" not in item:
            continue
        oid = str(item["id"])
        if _removed(item):  # "changed" = soft-deleted (restorable), "deleted" = gone: neither is an active user
            _remove(target, "users", oid, counter)
            continue
        new = _upsert(target, "users", item, USER_FIELDS, counter)
        new.setdefault(sys.intern("managerId"), None)
        if "manager" in item:
            m = item["manager"]
            new["managerId"] = str(m["id"]) if isinstance(m, dict) and m.get("id") else None
        if "manager@delta" in item:
            entries = item["manager@delta"] or []
            current = [e for e in entries if isinstance(e, dict) and e.get("id") and "@removed" not in e]
            if current:
                new["managerId"] = str(current[-1]["id"])
            elif any(isinstance(e, dict) and "@removed" in e for e in entries):
                new["managerId"] = None
        target.put("users", oid, new)


def apply_groups(target: Target, page: list[dict[str, Any]], counter: Counter) -> None:
    for item in page:
        if "id" not in item:
            continue
        gid = str(item["id"])
        if _removed(item):
            _remove(target, "groups", gid, counter)
            target.delete("members", gid)
            continue
        new = _upsert(target, "groups", item, GROUP_FIELDS, counter)
        target.put("groups", gid, new)
        delta = item.get("members@delta")
        if isinstance(delta, list) and delta:
            members = target.get("members", gid)
            members = dict(members) if members else {}
            for m in delta:
                if not isinstance(m, dict) or not m.get("id"):
                    continue
                mid = str(m["id"])
                if "@removed" in m:
                    members.pop(mid, None)
                else:
                    members[mid] = member_kind(m.get("@odata.type"))
            if members:
                target.put("members", gid, members)
            else:
                target.delete("members", gid)


def apply_plain(coll: str, fields: tuple[str, ...]) -> Any:
    def apply(target: Target, page: list[dict[str, Any]], counter: Counter) -> None:
        for item in page:
            if "id" not in item:
                continue
            oid = str(item["id"])
            if _removed(item):
                _remove(target, coll, oid, counter)
                continue
            target.put(coll, oid, _upsert(target, coll, item, fields, counter))

    return apply


APPLY = {
    "users": apply_users,
    "groups": apply_groups,
    "applications": apply_plain("applications", APPLICATION_FIELDS),
    "service_principals": apply_plain("service_principals", SERVICE_PRINCIPAL_FIELDS),
}


def needs_assignments(sp: dict[str, Any], own_app_ids: set[str] | frozenset[str] = frozenset()) -> bool:
    """Service principals whose appRoleAssignedTo matters: assignment required, app roles to assign, or an app
    registered in this tenant (default-access assignments). Microsoft's own first-party principals (hundreds in a
    real tenant, none of them assignable) are left out."""
    return bool(sp.get("appRoleAssignmentRequired")) or bool(sp.get("appRoles")) or sp.get("appId") in own_app_ids


def clean_assignment(a: dict[str, Any]) -> dict[str, Any]:
    keep = ("id", "principalId", "principalType", "principalDisplayName", "appRoleId", "resourceId", "resourceDisplayName", "createdDateTime")
    return {k: a.get(k) for k in keep if k in a}


__all__ = [
    "APPLY",
    "AREA_PERMISSION",
    "AREA_PROBE",
    "AREA_SWITCH",
    "Counter",
    "DELTA_PATHS",
    "FullBuild",
    "member_kind",
    "needs_assignments",
]
