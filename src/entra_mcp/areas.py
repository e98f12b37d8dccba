"""The sync areas: one `Area` definition each, in one ordered registry (`REGISTRY`), plus the functions that turn a
page of Graph answers into mirror changes.

Everything the product knows about an area is read from its `Area`: the engine (what to ask Graph, how to refresh,
what to wait for), the mirror (which collections an area owns and how they are stored), `status` and `doctor`
(config switch, permission, probe), and the answers' wording (label). Adding an area is one `Area` in `REGISTRY`
plus its apply (or run) function and a switch in config.SyncSettings: docs/ARCHITECTURE.md, "Adding a sync area".

This module is a leaf: it imports only the standard library and entra_mcp.errors, so every layer may read it
(docs/ARCHITECTURE.md, "Layers").

Areas and their Graph calls (docs/graph-facts-directory.md and the other graph-facts pages):
  users                 GET /users/delta?$select=<account-state fields>,manager  (first run: the initial round;
                        later: the delta link). manager arrives as `manager` or `manager@delta`; stored as managerId.
  sign_in_activity      GET /users?$select=id,signInActivity&$top=500 (signInActivity is not in users/delta), a full
                        pull at most every SIGN_IN_REFRESH_MINUTES (Graph itself updates it with hours of lag).
  groups                GET /groups/delta?$select=<group fields>,members: groups AND direct memberships in one
                        stream; members@delta chunks merged by group id in any order (never one request per group).
  applications          GET /applications/delta
  service_principals    GET /servicePrincipals/delta
  app_role_assignments  GET /servicePrincipals/{id}/appRoleAssignedTo in $batch requests of 20 (graph/batch.py), only for service
                        principals that can have assignments (appRoleAssignmentRequired, appRoles defined, or the
                        app is registered in this tenant).
                        Incremental: the service principals the same run saw change, plus a full refresh when the
                        last one is older than ASSIGNMENTS_FULL_REFRESH_MINUTES (assignment changes do not show in
                        servicePrincipals/delta).
  domains               GET /domains (a handful of objects: password validity and notification window), every run.
  sign_in_events        GET /auditLogs/signIns with a createdDateTime watermark into a mirror of its own
                        (sync/sign_ins.py; MirrorStore.sign_in_store()); the serve scheduler also polls it on its own
                        interval (sign_in_events_interval_minutes). Its status is recorded here too.
  devices               full: GET /devices/delta?$deltatoken=latest, then GET /devices?$expand=registeredOwners (one pass);
                        incremental: the delta link, and registeredOwners in $batch for devices new to the mirror.
  conditional_access    GET /identity/conditionalAccess/policies and /namedLocations, whole, every run (no delta).
  owners                GET /groups/delta?$select=displayName,owners (its own delta stream: owners@delta), and
                        /{id}/owners in $batch for the apps registered here, every APP_OWNERS_REFRESH_MINUTES.
                        (docs/graph-facts-access.md has the sources.) App role assignments of assignment-required
                        apps are re-read every run: Graph tracks no assignment change.

`apply_*` functions take a target with get/put/delete (a dict-backed full build, or a mirror AreaChange for a delta
run), so full and delta runs share one code path; applying a page twice is harmless.
"""

from __future__ import annotations

import pickle
import sys
import zlib
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, AsyncIterator, Awaitable, Callable, Iterable, Iterator, Literal, Mapping, Protocol

from entra_mcp import account_areas
from entra_mcp.errors import DeltaTokenExpired, GraphError, PermissionDenied

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

_KINDS = {"user": "user", "group": "group", "serviceprincipal": "servicePrincipal", "device": "device", "orgcontact": "orgContact"}


class Target(Protocol):
    def get(self, coll: str, object_id: str) -> Any: ...
    def put(self, coll: str, object_id: str, value: Any) -> None: ...
    def delete(self, coll: str, object_id: str) -> None: ...


# A full build's collection keeps its objects pickled by part (crc32(id) % BUILD_PARTS), at most BUILD_HOT of them as
# dicts: a large full sync would otherwise hold every area's objects as dicts until its commit (users, registration
# rows, sign-in activity, devices and member lists together: ~500 MB for 100,000 users). BUILD_PARTS is a power of two
# <= the mirror's MAX_BUCKETS (mirror/store.py), so a mirror bucket (crc32(id) % n, n a power of two) is a subset of
# one part (n >= BUILD_PARTS) or the union of parts (n < BUILD_PARTS): the commit unpickles one part at a time.
BUILD_PARTS = 64
BUILD_HOT = 1024


def _part(object_id: str) -> int:
    return zlib.crc32(object_id.encode()) % BUILD_PARTS


def _weight(value: Any) -> int:
    """An object's weight in the mirror's bucket count (mirror/store.py _bucket_count): a member list counts its
    members, an object one."""
    return len(value) if isinstance(value, (dict, list)) and not (isinstance(value, dict) and "id" in value) else 1


def collection_weight(data: Mapping[str, Any]) -> int:
    """A collection's weight: what the mirror's bucket count is sized by (mirror/store.py _bucket_count) and, for the
    member lists, the number of memberships."""
    if isinstance(data, BuildCollection):  # kept as it is put: no segment unpickled
        return data.weight()
    return sum(map(_weight, data.values()))


class BuildCollection(Mapping[str, Any]):
    """One collection of a full build, {id: object} read-only to its readers: recent objects as dicts, the others
    pickled in segments by part, each id's latest copy noted (a later copy wins). get() of an object in a segment
    unpickles that one segment (a group's members met again in a later page: rare); `parts(n)` gives the mirror's n
    buckets one at a time. Values come back as fresh objects: callers replace an object with put(), never change it
    in place."""

    def __init__(self) -> None:
        self._where: dict[str, int] = {}  # live id -> index of the segment (in its part) holding it; -1: hot
        self._weights: dict[str, int] = {}  # live ids whose weight is not 1 (member lists)
        self._hot: dict[str, Any] = {}
        self._cold: list[list[bytes]] = [[] for _ in range(BUILD_PARTS)]

    def __len__(self) -> int:
        return len(self._where)

    def __contains__(self, object_id: object) -> bool:
        return object_id in self._where

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._where))

    def __getitem__(self, object_id: str) -> Any:
        at = self._where[object_id]
        if at < 0:
            return self._hot[object_id]
        return pickle.loads(self._cold[_part(object_id)][at])[object_id]

    def weight(self) -> int:
        return len(self._where) - len(self._weights) + sum(self._weights.values())

    def put(self, object_id: str, value: Any) -> None:
        self._where[object_id] = -1
        self._hot[object_id] = value
        w = _weight(value)
        if w != 1:
            self._weights[object_id] = w
        else:
            self._weights.pop(object_id, None)
        if len(self._hot) >= BUILD_HOT:
            self._flush()

    def delete(self, object_id: str) -> None:
        if self._where.pop(object_id, None) is not None:
            self._weights.pop(object_id, None)
            self._hot.pop(object_id, None)

    def _flush(self) -> None:
        parts: dict[int, dict[str, Any]] = {}
        for oid, value in self._hot.items():
            parts.setdefault(_part(oid), {})[oid] = value
        self._hot = {}
        where = self._where
        for i, part in parts.items():
            at = len(self._cold[i])
            self._cold[i].append(pickle.dumps(part, pickle.HIGHEST_PROTOCOL))
            for oid in part:
                where[oid] = at

    def _load(self, i: int) -> dict[str, Any]:
        """Part i as dicts: each live object's latest copy."""
        where = self._where
        out: dict[str, Any] = {}
        for at, segment in enumerate(self._cold[i]):
            out.update((oid, v) for oid, v in pickle.loads(segment).items() if where.get(oid) == at)
        return out

    def parts(self, n: int) -> Iterator[tuple[int, dict[str, Any]]]:
        """(i, bucket i) for the mirror's n buckets (n a power of two, at most 1024), each bucket once, one part
        unpickled at a time: bucket i holds the objects with crc32(id) % n == i (mirror/snapshot.py bucket_of)."""
        if self._hot:
            self._flush()
        if n <= BUILD_PARTS:
            for i in range(n):
                bucket: dict[str, Any] = {}
                for j in range(i, BUILD_PARTS, n):
                    bucket.update(self._load(j))
                yield i, bucket
            return
        for j in range(BUILD_PARTS):
            split: dict[int, dict[str, Any]] = {i: {} for i in range(j, n, BUILD_PARTS)}
            for oid, value in self._load(j).items():
                split[zlib.crc32(oid.encode()) % n][oid] = value
            yield from split.items()

    def items(self) -> Iterator[tuple[str, Any]]:  # type: ignore[override]
        for _, part in self.parts(BUILD_PARTS):
            yield from part.items()

    def values(self) -> Iterator[Any]:  # type: ignore[override]
        for _, value in self.items():
            yield value


class FullBuild:
    """A Target for a full run, committed at once with MirrorWriter.commit_full: `data` maps each collection to a
    BuildCollection (objects pickled by part as the pages come, so one compact copy is held, not dicts)."""

    def __init__(self) -> None:
        self.data: dict[str, BuildCollection] = {}

    def get(self, coll: str, object_id: str) -> Any:
        found = self.data.get(coll)
        return found.get(object_id) if found is not None else None

    def put(self, coll: str, object_id: str, value: Any) -> None:
        found = self.data.get(coll)
        if found is None:
            found = self.data[coll] = BuildCollection()
        found.put(object_id, value)

    def delete(self, coll: str, object_id: str) -> None:
        found = self.data.get(coll)
        if found is not None:
            found.delete(object_id)


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


_NAMES: dict[tuple[str, ...], tuple[dict[str, str], frozenset[str]]] = {}


def _names(fields: tuple[str, ...]) -> tuple[dict[str, str], frozenset[str]]:
    """fields (and "id") as shared strings, and which of them hold repeating values: computed once per field list."""
    found = _NAMES.get(fields)
    if found is None:
        names = {k: sys.intern(k) for k in (*fields, "id") if "@" not in k}
        found = _NAMES[fields] = (names, frozenset(names) & _SHARED_VALUES)
    return found


def _plain(item: dict[str, Any], fields: tuple[str, ...]) -> dict[str, Any]:
    """The item's own properties (annotations and navigation deltas dropped). Property names, and the values that
    repeat (department, job title...), become shared strings: pickle then stores each once per bucket, so a loaded
    mirror of 100,000 users does not hold 100,000 copies of every property name."""
    names, shared = _names(fields)
    out = {names[k]: v for k, v in item.items() if k in names}
    for k in shared.intersection(out):
        v = out[k]
        if type(v) is str and len(v) <= 128:
            out[k] = sys.intern(v)
    return out


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


def needs_assignments(sp: dict[str, Any], own_app_ids: set[str] | frozenset[str] = frozenset()) -> bool:
    """Service principals whose appRoleAssignedTo matters: assignment required, app roles to assign, or an app
    registered in this tenant (default-access assignments). Microsoft's own first-party principals (hundreds in a
    real tenant, none of them assignable) are left out."""
    return bool(sp.get("appRoleAssignmentRequired")) or bool(sp.get("appRoles")) or sp.get("appId") in own_app_ids


def clean_assignment(a: dict[str, Any]) -> dict[str, Any]:
    keep = ("id", "principalId", "principalType", "principalDisplayName", "appRoleId", "resourceId", "resourceDisplayName", "createdDateTime")
    return {k: a.get(k) for k in keep if k in a}




def apply_sign_in(target: Target, page: list[dict[str, Any]], counter: Counter) -> None:
    for u in page:
        if u.get("id") and isinstance(u.get("signInActivity"), dict):
            oid = str(u["id"])
            target.put("sign_in", oid, {sys.intern(k): v for k, v in u["signInActivity"].items() if k in SIGN_IN_FIELDS})
            counter.added += 1
            counter.changed_ids.add(oid)


def apply_domains(target: Target, page: list[dict[str, Any]], counter: Counter) -> None:
    for d in page:
        if d.get("id"):
            oid = str(d["id"])
            target.put("domains", oid, {k: v for k, v in d.items() if k in DOMAIN_FIELDS})
            counter.added += 1
            counter.changed_ids.add(oid)


# ---------------------------------------------------------------------------------------------- the definitions

NON_PREMIUM = "Authentication_RequestFromNonPremiumTenantOrB2CTenant"  # Graph's code for a feature needing P1/P2

ApplyFn = Callable[[Target, list[dict[str, Any]], Counter], None]
StoredForm = Literal["table", "grouped", "members", "dict"]


@dataclass(frozen=True)
class Licence:
    """A licence the tenant needs for an area; Graph refuses with `graph_code` (403) without it."""

    name: str  # as the admin knows it, e.g. "Entra ID P1/P2"
    graph_code: str = NON_PREMIUM


@dataclass(frozen=True)
class Collection:
    """One mirror collection (a dict by object id, stored in buckets). `form` is how a bucket is stored and loaded:
    "table": Graph objects as columns (mirror/table.py, a read-only Table when loaded; best for many objects);
    "grouped": lists of Graph objects by a key, as columns; "members": {id: {member id: kind}} with shared ids;
    "dict": plain dicts (a handful of objects, or shapes a Table cannot hold)."""

    name: str
    form: StoredForm = "dict"
    # buckets the collection is split into at least: a few keys each written often (the sign-in events' hours) then
    # sit in buckets of their own, so a commit rewrites, and a reader re-reads, only the keys that changed
    min_buckets: int = 1


@dataclass(frozen=True)
class AreaStatus:
    """How one area of one tenant stands (kept in the mirror with the area's data). Times are timezone-aware UTC."""

    enabled: bool
    disabled_reason: str | None = None  # e.g. "not enabled in config" or "Graph 403 Authorization_RequestDenied: grant Application.Read.All"
    last_success: datetime | None = None
    last_error: str | None = None  # never carries a secret
    last_error_at: datetime | None = None
    object_count: int | None = None
    mode: str | None = None  # "full" or "delta": how the last successful run went

    @property
    def failing(self) -> bool:
        """The last attempt failed: an error newer than the last success (or no success at all)."""
        return bool(self.last_error) and (self.last_success is None or (self.last_error_at is not None
                                                                         and self.last_error_at > self.last_success))

    def fresh(self, minutes: float, now: datetime) -> bool:
        """Refreshed less than `minutes` ago and not failing since: an area refreshed on a timer may skip this run
        (a failed refresh is retried at once, so its error does not outlive the next good run)."""
        return (minutes > 0 and self.last_success is not None and now - self.last_success < timedelta(minutes=minutes)
                and not self.failing)


@dataclass
class AreaResult:
    area: str
    outcome: str  # full | delta | unchanged | disabled | off | failed | skipped
    objects: int | None = None  # objects in the mirror after the run
    changes: int = 0  # objects added, changed or removed by this run
    requests: int = 0
    seconds: float = 0.0
    message: str | None = None


@dataclass(frozen=True)
class RunChanges:
    """What a delta or full run of an area saw change (read by areas that depend on it)."""

    full: bool
    ids: frozenset[str]


class AreaWriter(Protocol):
    """What a run function uses of the tenant's mirror writer (mirror/store.py MirrorWriter)."""

    def meta(self, area: str) -> dict[str, Any]: ...
    def has_data(self, area: str) -> bool: ...
    def delta_link(self, area: str) -> str | None: ...
    def begin(self, area: str) -> Any: ...  # an AreaChange: a Target, committed by commit_delta
    def commit_full(self, area: str, data: Mapping[str, Mapping[str, Any]], *, delta_link: str | None, status: AreaStatus,
                    meta: dict[str, Any] | None = None) -> int: ...
    def commit_delta(self, change: Any, *, delta_link: str | None, status: AreaStatus, meta: dict[str, Any] | None = None) -> int: ...


class AreaRun(Protocol):
    """What a custom `run` function gets from the engine (sync/engine.py TenantSync) for one tenant's run."""

    full: bool  # `sync --full`
    results: dict[str, AreaResult]  # areas finished in this run (dependencies are finished before `run` starts)
    denied: dict[str, PermissionDenied]

    @property
    def writer(self) -> AreaWriter: ...
    def now(self) -> datetime: ...
    def changes(self, area: str) -> RunChanges | None: ...
    def ok_status(self, prev: AreaStatus, count: int, mode: str) -> AreaStatus: ...
    def tick(self, area: str, n: int) -> None: ...
    async def commit(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any: ...
    async def read_all(self, area: str, coll: str) -> dict[str, Any]: ...
    async def batch_get(self, urls: list[str], *, area: str) -> dict[str, list[dict[str, Any]] | None]: ...
    def pager(self, path_or_link: str, *, params: dict[str, str] | None = None, area: str) -> "PagerLike": ...


class PagerLike(Protocol):
    """graph/paging.py Pager as a run sees it: async iteration over pages; after the last page, the delta link."""

    delta_link: str | None
    items: int

    def __aiter__(self) -> AsyncIterator[list[dict[str, Any]]]: ...


RunFn = Callable[[AreaRun, "Area", AreaStatus], Awaitable[AreaResult]]


@dataclass(frozen=True)
class Area:
    """Everything about one sync area. See docs/ARCHITECTURE.md, "Adding a sync area".

    refresh: "delta"  Graph delta query at `path` (`select` on the first round), pages through `apply`; a saved delta
                      link makes later runs incremental; an expired link means a full round.
             "full"   a full list at `path` (`select`, `params`) through `apply`, committed whole, at most every
                      `full_every_minutes` (0: every run).
             "custom" `run(engine, area, previous status)` does it all (e.g. per-object calls in $batch).
    """

    name: str  # stable: the key in the mirror, sync_status and `status --json`
    label: str  # how answers name it ("the {label} area is disabled ...")
    switch: str  # the config.SyncSettings field that turns it on ([tenants.sync] in the TOML)
    permission: str  # the least-privileged application permission, as Graph names it
    collections: tuple[Collection, ...]  # the mirror collections it owns; the first is the one its objectCount counts
    refresh: Literal["delta", "full", "custom"]
    probe: tuple[str, Mapping[str, str]]  # doctor's cheap request proving the permission
    path: str = ""
    select: str | None = None
    params: Mapping[str, str] = field(default_factory=dict)
    permission_text: str | None = None  # what to grant, in the disabled reason, when friendlier than `permission`
    licence: Licence | None = None
    full_every_minutes: float = 0.0
    depends_on: tuple[str, ...] = ()  # areas whose run (this run) must finish first
    apply: ApplyFn | None = None
    run: RunFn | None = None
    meta_on_full: Callable[[Mapping[str, Mapping[str, Any]]], dict[str, Any]] | None = None  # extra figures for status
    indexed: bool = True  # the server's index (identity/view.py DirectoryView.build) reads its objects
    always_run: bool = False  # `run` is called even when switched off (it clears data kept outside this mirror)
    sync_run: bool = False  # its run function lives in sync/ (engine.SYNC_RUNS): it pages Graph into a mirror of its own

    @property
    def counted(self) -> str:
        return self.collections[0].name

    @property
    def grant(self) -> str:
        return self.permission_text or self.permission

    def disabled_reason(self, exc: PermissionDenied) -> str:
        """Why Graph refused this area, and what to do: a missing licence or the permission to grant."""
        code = exc.graph_code or "HTTP 403"
        licence = self.licence or (Licence("Entra ID P1/P2") if code == NON_PREMIUM else None)
        if licence is not None and code == licence.graph_code:
            return f"Graph refused ({code}): {self.label} needs an {licence.name} licence in this tenant"
        return f"Graph refused ({code}): grant {self.grant}"


def _probe(path: str, select: str = "id") -> tuple[str, Mapping[str, str]]:
    return path, {"$select": select, "$top": "1"}


def _memberships(data: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    return {"memberships": collection_weight(data.get("members", {}))}  # a member list weighs its length


async def run_assignments(run: AreaRun, area: Area, prev: AreaStatus) -> AreaResult:
    """appRoleAssignedTo of the service principals that can have assignments: all of them on a full refresh (first
    run, --full, service principals resynced, or older than full_every_minutes), else those this run saw change."""
    name = area.name
    sp_result = run.results.get("service_principals")
    if sp_result is None or sp_result.outcome in ("failed", "skipped"):
        return AreaResult(name, "skipped", objects=prev.object_count,
                          message="service principals did not sync in this run; assignments kept as they were")
    if sp_result.outcome == "disabled":
        raise run.denied["service_principals"]  # same permission (Application.Read.All): same reason
    sps = await run.read_all("service_principals", "service_principals")
    apps = await run.read_all("applications", "applications")
    own = {str(a.get("appId")) for a in apps.values() if a.get("appId")}
    relevant = {sid for sid, sp in sps.items() if needs_assignments(sp, own)}
    writer = run.writer
    meta = writer.meta(name)
    last_full = meta.get("full_at")
    stale = last_full is None or run.now() - last_full >= timedelta(minutes=area.full_every_minutes)
    sp_changes = run.changes("service_principals") or RunChanges(full=True, ids=frozenset())
    do_full = run.full or sp_changes.full or stale or not prev.enabled or not writer.has_data(name)

    async def fetch(ids: list[str]) -> dict[str, list[dict[str, Any]]]:
        urls = {f"/servicePrincipals/{sid}/appRoleAssignedTo?$top=999": sid for sid in ids}
        got = await run.batch_get(list(urls), area=name)
        return {urls[u]: [clean_assignment(a) for a in rows or [] if isinstance(a, dict)] for u, rows in got.items()}

    if do_full:
        fetched = await fetch(sorted(relevant))
        data = {sid: rows for sid, rows in fetched.items() if rows}
        meta["full_at"] = run.now()
        count = sum(len(v) for v in data.values())
        await run.commit(writer.commit_full, name, {"assignments": data}, delta_link=None,
                         status=run.ok_status(prev, count, "full"), meta=meta)
        return AreaResult(name, "full", objects=count, changes=count,
                          message=f"{len(relevant)} service principals with assignable roles or required assignment")
    # assignment-required apps are re-read every run: a missing assignment means no access there, and Graph tracks
    # no assignment change (docs/graph-facts-access.md), so a new assignment shows after the next sync, not an hour
    required = {sid for sid in relevant if sps[sid].get("appRoleAssignmentRequired")}
    ids = sorted((sp_changes.ids | required) & relevant)
    gone = sp_changes.ids - relevant
    fetched = await fetch(ids) if ids else {}
    change = writer.begin(name)
    count = prev.object_count or 0
    changes = 0
    for sid in sorted(gone) + ids:
        old = change.get("assignments", sid) or []
        new = fetched.get(sid) or []
        count += len(new) - len(old)
        if old != new:
            changes += 1
        if new:
            change.put("assignments", sid, new)
        else:
            change.delete("assignments", sid)
    await run.commit(writer.commit_delta, change, delta_link=None,
                     status=run.ok_status(prev, max(0, count), "delta"), meta=meta)
    return AreaResult(name, "delta", objects=max(0, count), changes=changes,
                      message=f"refreshed {len(ids)} changed or assignment-required service principals; full refresh every "
                              f"{area.full_every_minutes:.0f} minutes")


# ---------------------------------------------------------------- devices, Conditional Access, owners
# (docs/graph-facts-access.md)

DEVICE_FIELDS = (
    "id", "accountEnabled", "deviceId", "displayName", "operatingSystem", "operatingSystemVersion", "trustType",
    "isManaged", "isCompliant", "approximateLastSignInDateTime", "registrationDateTime",
)
DEVICE_SELECT = ",".join(DEVICE_FIELDS)
OWNERS_GROUP_SELECT = "displayName,owners"
APP_OWNERS_REFRESH_MINUTES = 60.0

_SHARED = frozenset({"operatingSystem", "operatingSystemVersion", "trustType"})


def clean_device(item: dict[str, Any]) -> dict[str, Any]:
    return {sys.intern(k): (sys.intern(v) if k in _SHARED and isinstance(v, str) else v)
            for k, v in item.items() if k in DEVICE_FIELDS}


def owner_ids(refs: Any) -> list[str]:
    return [str(r["id"]) for r in refs or () if isinstance(r, dict) and r.get("id") and "@removed" not in r]


def apply_devices(target: Any, page: Iterable[dict[str, Any]], counter: Any, *, with_owners: bool = False) -> list[str]:
    """Apply devices (a list page or a delta page); returns the ids of devices new to the mirror (their owners are to
    be fetched when the page did not carry them)."""
    new: list[str] = []
    for item in page:
        if not isinstance(item, dict) or not item.get("id"):
            continue
        did = str(item["id"])
        if _removed(item):
            _remove(target, "devices", did, counter)
            continue
        old = target.get("devices", did)
        dev = {**(old or {}), **clean_device(item)}
        if with_owners:
            dev["registeredOwners"] = owner_ids(item.get("registeredOwners"))
        elif old is None:
            dev["registeredOwners"] = []
            new.append(did)
        if old is None:
            counter.added += 1
        counter.changed += 1
        target.put("devices", did, dev)
    return new


def apply_group_owners(target: Any, page: Iterable[dict[str, Any]], counter: Any) -> None:
    """owners@delta of a groups/delta?$select=displayName,owners page: merged by group id (a group may come again)."""
    for item in page:
        if not isinstance(item, dict) or not item.get("id"):
            continue
        gid = str(item["id"])
        if _removed(item):
            _remove(target, "owners", gid, counter)
            continue
        old = target.get("owners", gid)
        refs = item.get("owners@delta")
        if not isinstance(refs, list):
            continue
        owners = {str(o["id"]): o for o in (old or ())}
        for r in refs:
            if not isinstance(r, dict) or not r.get("id"):
                continue
            if "@removed" in r:
                owners.pop(str(r["id"]), None)
            else:
                owners[str(r["id"])] = {"id": str(r["id"]), "type": _kind(r.get("@odata.type"))}
        if owners:
            if old is None:
                counter.added += 1
            target.put("owners", gid, list(owners.values()))
        elif old is not None:
            target.delete("owners", gid)
            counter.removed += 1
        counter.changed += 1


def _kind(odata_type: Any) -> str:
    tail = str(odata_type or "").rsplit(".", 1)[-1]
    return tail or "directoryObject"


def owned_here(applications: dict[str, Any], service_principals: dict[str, Any]) -> dict[str, str]:
    """The apps whose owners matter: every app registration here, and the service principals of those apps (same
    appId); Microsoft's and other organisations' apps have no owners in this tenant."""
    out = {str(a): "applications" for a in applications}
    own = {str(a.get("appId")) for a in applications.values() if a.get("appId")}
    for sid, sp in service_principals.items():
        if str(sp.get("appId")) in own:
            out[str(sid)] = "servicePrincipals"
    return out


# ------------------------------------------------------------------------------------------- the area runs

async def run_devices(run: AreaRun, area: Area, prev: AreaStatus) -> AreaResult:
    """devices: a full pull (delta link first, then the list with owners) or a delta round from the saved link."""
    name = area.name
    link = None if run.full or not prev.enabled or not run.writer.has_data(name) else run.writer.delta_link(name)
    if link is not None:
        try:
            return await _devices_delta(run, area, prev, link)
        except DeltaTokenExpired as exc:
            result = await _devices_full(run, area, prev)
            result.message = f"delta link expired ({exc.graph_code or exc.status}): full resync"
            return result
    return await _devices_full(run, area, prev)


async def _devices_full(run: AreaRun, area: Area, prev: AreaStatus) -> AreaResult:
    name = area.name
    latest = run.pager("/devices/delta", params={"$select": DEVICE_SELECT, "$deltatoken": "latest"}, area=name)
    async for _ in latest:
        pass  # no data: only a delta link from now on
    link = latest.delta_link
    if not link:
        raise GraphError("Graph answered devices/delta?$deltatoken=latest without an @odata.deltaLink")
    target, counter = FullBuild(), Counter()
    pager = run.pager("/devices", params={"$select": DEVICE_SELECT, "$expand": "registeredOwners($select=id)",
                                          "$top": "999"}, area=name)
    async for page in pager:
        apply_devices(target, page, counter, with_owners=True)
        run.tick(name, pager.items)
    count = len(target.data.get("devices", {}))
    await run.commit(run.writer.commit_full, name, target.data, delta_link=link,
                     status=run.ok_status(prev, count, "full"), meta=run.writer.meta(name))
    return AreaResult(name, "full", objects=count, changes=count)


async def _devices_delta(run: AreaRun, area: Area, prev: AreaStatus, link: str) -> AreaResult:
    name = area.name
    change, counter = run.writer.begin(name), Counter()
    pager = run.pager(link, area=name)
    new: list[str] = []
    async for page in pager:
        new += apply_devices(change, page, counter)
        run.tick(name, pager.items)
    if not pager.delta_link:
        raise GraphError("Graph ended the devices/delta round without an @odata.deltaLink; the delta link is kept as it was")
    if new:  # the registered owner is set once, at registration: only new devices need it
        urls = {f"/devices/{d}/registeredOwners?$select=id": d for d in dict.fromkeys(new)}
        got = await run.batch_get(list(urls), area=name)
        for url, rows in got.items():
            dev = change.get("devices", urls[url])
            if dev is not None:
                change.put("devices", urls[url], {**dev, "registeredOwners": owner_ids(rows)})
    count = max(0, (prev.object_count or 0) + counter.added - counter.removed)
    await run.commit(run.writer.commit_delta, change, delta_link=pager.delta_link,
                     status=run.ok_status(prev, count, "delta"), meta=run.writer.meta(name))
    return AreaResult(name, "delta", objects=count, changes=counter.changed)


async def run_conditional_access(run: AreaRun, area: Area, prev: AreaStatus) -> AreaResult:
    """conditional_access: both collections whole (Graph offers no delta for them)."""
    name = area.name
    data: dict[str, dict[str, Any]] = {"ca_policies": {}, "named_locations": {}}
    for coll, path in (("ca_policies", "/identity/conditionalAccess/policies"),
                       ("named_locations", "/identity/conditionalAccess/namedLocations")):
        async for page in run.pager(path, area=name):
            for obj in page:
                if isinstance(obj, dict) and obj.get("id"):
                    data[coll][str(obj["id"])] = obj
    count = len(data["ca_policies"])
    await run.commit(run.writer.commit_full, name, data, delta_link=None, status=run.ok_status(prev, count, "full"),
                     meta=run.writer.meta(name))
    return AreaResult(name, "full", objects=count, changes=count,
                      message=f"{count} policies, {len(data['named_locations'])} named locations")


async def run_owners(run: AreaRun, area: Area, prev: AreaStatus) -> AreaResult:
    """owners: the group-ownership delta stream every run; owners of apps in $batch at most every
    APP_OWNERS_REFRESH_MINUTES (and on a full run)."""
    name, writer = area.name, run.writer
    meta = writer.meta(name)
    link = None if run.full or not prev.enabled or not writer.has_data(name) else writer.delta_link(name)
    sp_result = run.results.get("service_principals")
    apps_readable = sp_result is not None and sp_result.outcome not in ("disabled", "off", "failed", "skipped")
    last = meta.get("apps_at")
    apps_due = link is None or last is None or run.now() - last >= timedelta(minutes=APP_OWNERS_REFRESH_MINUTES)
    target: Any = FullBuild() if link is None else writer.begin(name)
    counter = Counter()
    pager = run.pager("/groups/delta" if link is None else link,
                      params={"$select": OWNERS_GROUP_SELECT} if link is None else None, area=name)
    try:
        async for page in pager:
            apply_group_owners(target, page, counter)
            run.tick(name, pager.items)
    except DeltaTokenExpired:
        return await run_owners(_Full(run), area, prev)
    if not pager.delta_link:
        raise GraphError("Graph ended the groups/delta (owners) round without an @odata.deltaLink")
    message = "group owners by delta"
    if apps_due and apps_readable:
        apps = await run.read_all("applications", "applications")
        sps = await run.read_all("service_principals", "service_principals")
        objects = owned_here(apps, sps)
        urls = {f"/{kind}/{oid}/owners?$select=id": oid for oid, kind in objects.items()}
        got = await run.batch_get(list(urls), area=name)
        for url, rows in got.items():
            oid = urls[url]
            refs = [{"id": str(r["id"]), "type": _kind(r.get("@odata.type"))} for r in rows or () if r.get("id")]
            old = target.get("owners", oid)
            if refs:
                counter.added += old is None
                target.put("owners", oid, refs)
            elif old is not None:
                counter.removed += 1
                target.delete("owners", oid)
        meta["apps_at"] = run.now()
        message += f"; owners of {len(objects)} apps refreshed (every {APP_OWNERS_REFRESH_MINUTES:.0f} minutes)"
    elif not apps_readable:
        message += "; owners of apps not read (enterprise apps did not sync in this run)"
    if link is None:
        count = len(target.data.get("owners", {}))
        await run.commit(writer.commit_full, name, target.data, delta_link=pager.delta_link,
                         status=run.ok_status(prev, count, "full"), meta=meta)
        return AreaResult(name, "full", objects=count, changes=count, message=message)
    count = max(0, (prev.object_count or 0) + counter.added - counter.removed)
    await run.commit(writer.commit_delta, target, delta_link=pager.delta_link,
                     status=run.ok_status(prev, count, "delta"), meta=meta)
    return AreaResult(name, "delta", objects=count, changes=counter.changed, message=message)


class _Full:
    """The same run, forced full (a delta link expired)."""

    def __init__(self, run: AreaRun) -> None:
        self._run = run
        self.full = True

    def __getattr__(self, item: str) -> Any:
        return getattr(self._run, item)



# In sync order: an area is started in this order, and one with depends_on waits for those areas to finish.
REGISTRY: tuple[Area, ...] = (
    Area(
        name="users", label="users", switch="users", permission="User.Read.All",
        collections=(Collection("users", "table"),),
        refresh="delta", path="/users/delta", select=USER_SELECT, apply=apply_users, probe=_probe("/users"),
    ),
    Area(
        name="sign_in_activity", label="sign-in activity", switch="sign_in_activity", permission="AuditLog.Read.All",
        licence=Licence("Entra ID P1/P2"),
        collections=(Collection("sign_in", "table"),),  # user id -> signInActivity
        refresh="full", full_every_minutes=SIGN_IN_REFRESH_MINUTES, path="/users", select=SIGN_IN_SELECT,
        params={"$top": "500"}, apply=apply_sign_in, probe=_probe("/users", "id,signInActivity"),
        indexed=False,  # read through the users' records only: an hourly refresh re-indexes nothing
    ),
    Area(
        name="groups", label="groups and memberships", switch="groups", permission="GroupMember.Read.All",
        collections=(Collection("groups", "table"), Collection("members", "members")),  # members: group id -> {member id: kind}
        refresh="delta", path="/groups/delta", select=GROUP_SELECT, apply=apply_groups, probe=_probe("/groups"),
        meta_on_full=_memberships,
    ),
    Area(
        name="applications", label="app registrations", switch="applications", permission="Application.Read.All",
        collections=(Collection("applications", "table"),),
        refresh="delta", path="/applications/delta", select=",".join(APPLICATION_FIELDS),
        apply=apply_plain("applications", APPLICATION_FIELDS), probe=_probe("/applications"),
    ),
    Area(
        name="service_principals", label="enterprise apps (service principals)", switch="service_principals",
        permission="Application.Read.All",
        collections=(Collection("service_principals", "table"),),
        refresh="delta", path="/servicePrincipals/delta", select=",".join(SERVICE_PRINCIPAL_FIELDS),
        apply=apply_plain("service_principals", SERVICE_PRINCIPAL_FIELDS), probe=_probe("/servicePrincipals"),
    ),
    Area(
        name="app_role_assignments", label="app role assignments", switch="service_principals",
        permission="Application.Read.All",
        collections=(Collection("assignments", "grouped"),),  # resource service principal id -> [appRoleAssignment]
        refresh="custom", run=run_assignments, full_every_minutes=ASSIGNMENTS_FULL_REFRESH_MINUTES,
        depends_on=("applications", "service_principals"), probe=_probe("/servicePrincipals"),
    ),
    Area(
        name="domains", label="domains (password policy)", switch="users", permission="Domain.Read.All",
        permission_text="Domain.Read.All (or Directory.Read.All)",
        collections=(Collection("domains", "dict"),),  # domain id -> domain
        refresh="full", path="/domains", apply=apply_domains, probe=("/domains", {}),
    ),
    Area(
        name="sign_in_events", label="sign-in events", switch="sign_in_events", permission="AuditLog.Read.All",
        # Microsoft documents both for List signIns (docs/graph-facts-sign-ins.md, "Permissions")
        permission_text="AuditLog.Read.All and Directory.Read.All", licence=Licence("Entra ID P1/P2"),
        # hour -> failed sign-ins; user id -> last success per app; the hour of a poll -> the last successes the polls
        # of that hour read (folded into sign_in_successes once a day): kept in the sign-in mirror (sync/sign_ins.py)
        collections=(Collection("sign_in_failures", "grouped", min_buckets=256), Collection("sign_in_successes", "grouped"),
                     Collection("sign_in_recent", "grouped", min_buckets=64)),
        refresh="custom", sync_run=True, always_run=True, probe=("/auditLogs/signIns", {"$top": "1"}),
    ),
    Area(
        name="devices", label="devices", switch="devices", permission="Device.Read.All",
        collections=(Collection("devices", "table"),),  # device id -> device (+ registeredOwners: user ids)
        refresh="custom", run=run_devices, probe=_probe("/devices"),
    ),
    Area(
        name="conditional_access", label="Conditional Access policies", switch="conditional_access",
        permission="Policy.Read.All", licence=Licence("Entra ID P1"),
        collections=(Collection("ca_policies", "dict"), Collection("named_locations", "dict")),
        refresh="custom", run=run_conditional_access, probe=("/identity/conditionalAccess/policies", {"$top": "1"}),
    ),
    Area(
        name="owners", label="owners of groups and apps", switch="owners", permission="GroupMember.Read.All",
        permission_text="GroupMember.Read.All (group owners) and Application.Read.All (app owners)",
        collections=(Collection("owners", "grouped"),),  # group/application/servicePrincipal id -> [{id, type}]
        refresh="custom", run=run_owners, depends_on=("applications", "service_principals"), probe=_probe("/groups"),
    ),
)

# the account areas (account_areas.py: MFA/SSPR readiness, directory roles, licences, risk)
REGISTRY += (
    Area(
        name="auth_methods", label="authentication methods (MFA/SSPR readiness)", switch="auth_methods",
        permission="AuditLog.Read.All", licence=Licence("Entra ID P1/P2"),
        collections=(Collection("registration", "table"),),  # user id -> userRegistrationDetails (compact)
        refresh="full", full_every_minutes=account_areas.AUTH_METHODS_REFRESH_MINUTES,
        path=account_areas.AUTH_METHODS_PATH, apply=account_areas.apply_registration,
        probe=(account_areas.AUTH_METHODS_PATH, {}),
    ),
    Area(
        name="roles", label="directory roles", switch="roles", permission="RoleManagement.Read.Directory",
        permission_text="RoleManagement.Read.Directory (or Directory.Read.All)",
        # role assignment id -> assignment; definitions; PIM eligibilities; {"pim": {"eligibility": ...}}
        collections=(Collection("role_assignments"), Collection("role_definitions"), Collection("role_eligibilities"),
                     Collection("role_meta")),
        refresh="custom", run=account_areas.run_roles,
        probe=(account_areas.ROLE_ASSIGNMENTS_URL, {"$top": "1"}),
    ),
    Area(
        name="licenses", label="licences", switch="licenses", permission="LicenseAssignment.Read.All",
        permission_text="LicenseAssignment.Read.All (or Organization.Read.All)",
        collections=(Collection("licence_states"), Collection("skus")),  # user id -> [states]; skuId -> sku
        refresh="custom", run=account_areas.run_licenses, full_every_minutes=account_areas.LICENSES_REFRESH_MINUTES,
        probe=(account_areas.SKUS_URL, {}),
    ),
    Area(
        name="risk", label="risky users (Identity Protection)", switch="risk", permission="IdentityRiskyUser.Read.All",
        # Graph's answer for a tenant without P2 is not documented (a plain 403): the reason names both needs
        permission_text="IdentityRiskyUser.Read.All (the tenant also needs an Entra ID P2 licence)",
        collections=(Collection("risky_users", "dict"),),  # user id -> riskLevel, riskState, riskDetail, updated
        refresh="full", full_every_minutes=account_areas.RISK_REFRESH_MINUTES,
        path=account_areas.RISKY_USERS_PATH, apply=account_areas.apply_risky_users,
        probe=(account_areas.RISKY_USERS_PATH, {"$top": "1"}),
    ),
)

AREA: dict[str, Area] = {a.name: a for a in REGISTRY}
AREA_NAMES: tuple[str, ...] = tuple(AREA)


def _check(registry: tuple[Area, ...]) -> None:
    """Mistakes in a definition fail at import, with the reason (tests import every module)."""
    seen: set[str] = set()
    colls: set[str] = set()
    for a in registry:
        if a.name in seen:
            raise ValueError(f"sync area {a.name!r} is defined twice")
        if any(d not in seen for d in a.depends_on):
            raise ValueError(f"sync area {a.name!r} depends on {a.depends_on}: each must be defined before it")
        if a.refresh == "custom" and a.run is None and not a.sync_run or a.refresh != "custom" and (a.apply is None or not a.path):
            raise ValueError(f"sync area {a.name!r}: refresh={a.refresh!r} needs " + ("run" if a.refresh == "custom" else "path and apply"))
        if not a.collections or any(c.name in colls for c in a.collections):
            raise ValueError(f"sync area {a.name!r}: needs collections of its own (a name is used once in the mirror)")
        seen.add(a.name)
        colls.update(c.name for c in a.collections)


_check(REGISTRY)


__all__ = [
    "AREA",
    "AREA_NAMES",
    "REGISTRY",
    "Area",
    "AreaResult",
    "AreaRun",
    "AreaStatus",
    "AreaWriter",
    "BuildCollection",
    "Collection",
    "Counter",
    "FullBuild",
    "Licence",
    "RunChanges",
    "collection_weight",
    "member_kind",
    "needs_assignments",
]
