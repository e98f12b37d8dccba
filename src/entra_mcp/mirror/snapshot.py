"""One tenant's mirror as the tools read it: a consistent, immutable-by-convention picture of the directory.

The sync writes the mirror (mirror/store.py); readers load a DirectorySnapshot from it and never see a half-applied
run. Objects are Graph-shaped dicts (camelCase property names as Graph returns them, only the properties the sync
selects). Loaded from the mirror, the object collections are mirror/table.py Tables: read-only mappings of
read-only records that read like those dicts (tests and tools may also build a snapshot from plain dicts). Nothing
here speaks HTTP or MCP.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any, Iterable, Literal, Mapping, Sized

from entra_mcp.areas import REGISTRY
from entra_mcp.areas import AreaStatus as AreaStatus  # re-exported: the seam's status type

# The sync areas, in sync order, from their one definition each (entra_mcp/areas.py, a leaf every layer may read; AreaStatus is defined there too).
AreaName = str
AREAS: tuple[AreaName, ...] = tuple(a.name for a in REGISTRY)
AREA_LABELS: dict[str, str] = {a.name: a.label for a in REGISTRY}
# areas whose objects the server's index (identity/view.py) does not read: a change there needs no re-indexing
UNINDEXED_AREAS: frozenset[str] = frozenset(a.name for a in REGISTRY if not a.indexed)
# collection name -> the area that owns it
COLLECTION_AREA: dict[str, str] = {c.name: a.name for a in REGISTRY for c in a.collections}

# member kinds as stored in DirectorySnapshot.members (the tail of Graph's @odata.type)
MemberKind = Literal["user", "group", "servicePrincipal", "device", "orgContact", "other"]


@dataclass
class DirectorySnapshot:
    """Everything the identity tools may know about one tenant, as of `as_of`.

    users             id -> user dict: id, displayName, givenName, surname, userPrincipalName, mail, otherMails,
                      proxyAddresses, jobTitle, department, officeLocation, companyName, employeeId, accountEnabled,
                      userType, externalUserState, createdDateTime, lastPasswordChangeDateTime, passwordPolicies,
                      onPremisesSyncEnabled, onPremisesLastSyncDateTime, onPremisesSamAccountName, usageLocation,
                      assignedLicenses, "managerId" (the manager's object id or None) and, when the sign_in_activity
                      area synced, signInActivity.
    groups            id -> group dict: id, displayName, description, mail, mailEnabled, securityEnabled, groupTypes,
                      membershipRule, membershipRuleProcessingState, onPremisesSyncEnabled.
    members           group id -> {member id: MemberKind}: DIRECT members only.
    applications      id -> application dict: id, appId, displayName, signInAudience, appRoles, keyCredentials,
                      passwordCredentials, createdDateTime.
    service_principals id -> servicePrincipal dict: id, appId, displayName, appDisplayName, accountEnabled,
                      appOwnerOrganizationId, appRoleAssignmentRequired, servicePrincipalType, servicePrincipalNames,
                      appRoles, keyCredentials, passwordCredentials, tags.
    app_role_assignments  resource service principal id -> list of {id, principalId, principalType
                      ("User"|"Group"|"ServicePrincipal"), principalDisplayName, appRoleId, resourceId}.
    domains           list of domain dicts: id, isDefault, isVerified, passwordValidityPeriodInDays,
                      passwordNotificationWindowInDays.
    areas             area name -> AreaStatus (every name in AREAS is present).
    version, stamp    the data version (moves only when objects changed) and the commit stamp (moves with every
                      commit, e.g. a delta run that found nothing new still moves as_of and the statuses).
    collections       collection name -> its objects as loaded from the mirror, for EVERY area's collections
                      (entra_mcp/areas.py Area.collections): how a reader reaches an area that has no typed field above.
                      Use collection(name), which also answers for a snapshot built from the typed fields.
    as_of             when the newest successful sync run of this tenant committed (None: never synced).
    """

    tenant: str  # the tenant's name in the config
    tenant_id: str
    as_of: datetime | None
    interval_minutes: float
    users: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    groups: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    members: dict[str, dict[str, MemberKind]] = field(default_factory=dict)
    applications: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    service_principals: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    app_role_assignments: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    domains: list[dict[str, Any]] = field(default_factory=list)
    areas: dict[str, AreaStatus] = field(default_factory=dict)
    version: int = 0  # the data version: grows when a commit changed objects; readers compare it to reload
    collections: Mapping[str, Any] = field(default_factory=dict)
    stamp: int = 0  # grows with every commit (freshness too): see refreshed()
    data_stamps: dict[str, int] = field(default_factory=dict)  # area -> the stamp of the commit that last changed its objects
    # collection -> (bucket count, revision of each bucket) as loaded from the mirror: what two versions differ in
    buckets: dict[str, tuple[int, tuple[int, ...]]] = field(default_factory=dict)
    # collection -> objects (member lists: groups) per bucket, in bucket order: where each bucket's rows lie in the
    # loaded collection, so a later load can replace only the rewritten buckets (MirrorStore.load_snapshot(held=))
    bucket_rows: dict[str, tuple[int, ...]] = field(default_factory=dict)

    def areas_changed_since(self, older: "DirectorySnapshot") -> set[str]:
        """The areas whose objects differ from `older`'s (of the same tenant's mirror); every area when either
        snapshot does not know its areas' data stamps (built by hand, or loaded from an older mirror)."""
        if not self.data_stamps or not older.data_stamps:
            return set(AREAS)
        return {a for a in set(self.data_stamps) | set(older.data_stamps) if self.data_stamps.get(a) != older.data_stamps.get(a)}

    def changed_ids(self, older: "DirectorySnapshot", name: str, ids: Iterable[str]) -> set[str] | None:
        """Those of `ids` that may differ in collection `name` between `older` and this snapshot (of the same
        mirror): the ids that fall in a bucket rewritten since (a few hundred per changed bucket; the caller compares
        them). None when unknown (a snapshot built by hand, or the collection re-bucketed): compare everything."""
        before, after = older.buckets.get(name), self.buckets.get(name)
        if before is None or after is None or before[0] != after[0]:
            return None
        n = after[0]
        moved = {i for i, (a, b) in enumerate(zip(before[1], after[1])) if a != b}
        if not moved:
            return set()
        rows = self.bucket_rows.get(name)
        if rows is not None and len(rows) == n and isinstance(ids, Sized) and sum(rows) == len(ids):
            # loaded in bucket order: the rewritten buckets' objects are known slices, no hashing of every id
            order, out, start = list(ids), set(), 0
            for i, count in enumerate(rows):
                if i in moved:
                    out.update(order[start:start + count])
                start += count
            return out
        return {oid for oid in ids if bucket_of(oid, n) in moved}

    def refreshed(self, fresh: "Freshness") -> "DirectorySnapshot":
        """This snapshot with the freshness of a later commit that changed no object (same data version): new
        as_of, area statuses and stamp, the same collections. Readers keep their indexes."""
        if fresh.version != self.version:
            raise ValueError(f"freshness of data version {fresh.version} does not apply to a snapshot of version {self.version}")
        return replace(self, tenant_id=fresh.tenant_id or self.tenant_id, as_of=fresh.as_of,
                       interval_minutes=fresh.interval_minutes, areas=dict(fresh.areas), stamp=fresh.stamp)

    def collection(self, name: str) -> Any:
        """One mirror collection by name (e.g. "users", "members", "assignments", or a newer area's), {} when the
        mirror has none."""
        got = self.collections.get(name)
        if got is not None:
            return got
        if name in _TYPED:
            return getattr(self, _TYPED[name])
        if name == "domains":
            return {str(d.get("id")): d for d in self.domains}
        return {}


@dataclass(frozen=True)
class Freshness:
    """What changes with every commit, objects aside (mirror/store.py MirrorStore.freshness): read to bring a held
    snapshot of the same data version up to date without loading or indexing it again."""

    version: int
    stamp: int
    tenant_id: str
    as_of: datetime | None
    interval_minutes: float
    areas: dict[str, AreaStatus]


def bucket_of(object_id: str, n: int) -> int:
    """The bucket of a collection split into `n` that holds `object_id` (mirror/store.py writes them so)."""
    return zlib.crc32(object_id.encode()) % n if n > 1 else 0


# collections held by a typed field too (a snapshot built by hand fills only those)
_TYPED = {"users": "users", "groups": "groups", "members": "members", "applications": "applications",
          "service_principals": "service_principals", "assignments": "app_role_assignments"}
