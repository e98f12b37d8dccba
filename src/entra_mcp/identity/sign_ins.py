"""Why a sign-in fails: the answers of explain_sign_in and sign_in_failures_summary, from the sign-in events mirror
(sync/sign_ins.py) and the directory view, never from a live call and never guessed.

`SignInLog` is one loaded version of a tenant's sign-in mirror with the indexes the answers need (failures by user,
per-hour tallies for the tenant-wide picture). The answers are plain functions of (log, view, arguments, now).

Smart Lockout (docs/graph-facts-sign-ins.md): 10 failed passwords lock the account for 60 seconds, each further
lockout longer (Microsoft does not publish by how much: the estimate doubles it). A 50053 in the log, or 10 wrong
passwords since the last success, mean "probably locked"; the clearing time is an estimate and says so.
"""

from __future__ import annotations

import os
import re
import threading
import weakref
from collections import Counter
from heapq import nsmallest
from operator import itemgetter
from bisect import bisect_right
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any, Iterable, Mapping, Sequence

from ..errors import InvalidArgument, NotFoundError
from ..last_success import is_later
from ..logs import get_logger
from ..mirror.snapshot import AreaStatus, DirectorySnapshot
from ..mirror.store import AreaBuckets
from ..mirror.table import concat_groups, is_packed_groups, pack_groups
from .findings import finding, quote, sort_findings
from .sign_in_columns import ByKey, Rows
from .sign_in_errors import describe
from .text import iso, parse_time, utcnow

_log = get_logger("identity.sign_ins")
LOCKOUT_THRESHOLD = 10  # Smart Lockout's default threshold (Azure public cloud)
LOCKOUT_SECONDS = 60  # the first lockout; later ones last longer
LOCKOUT_MAX_SECONDS = 3600  # cap of the doubling estimate
PASSWORD_CODES = frozenset({50126, 50053})
LEGACY_CLIENTS = frozenset({"imap4", "pop3", "authenticated smtp", "exchange activesync", "autodiscover",
                            "exchange online powershell", "exchange web services", "mapi over http",
                            "offline address book", "outlook anywhere (rpc over http)", "other clients",
                            "reporting web services", "universal outlook"})
SPRAY_MIN_ACCOUNTS = 10  # distinct accounts with wrong passwords from one IP ...
SPRAY_MAX_PER_ACCOUNT = 3.0  # ... and few tries each (one person's typos are many tries at ONE account) ...
SPRAY_HOME_SHARE = 0.2  # ... unless this share of them also signed in successfully from it (an office's egress address)
SPRAY_SAMPLE = 200  # accounts of one address checked for that: the first by user key (see _spray_sample)
_NO_USER = "00000000-0000-0000-0000-000000000000"
SPIKE_MIN = 10  # failures of one app+code in the last hour, and ...
SPIKE_FACTOR = 5.0  # ... this many times its hourly average over the rest of the window
DEFAULT_SINCE = timedelta(hours=24)
SINCE_MAX = 40  # characters of a `since` argument
TOP = 10
_SINCE = re.compile(r"^\s*(\d{1,4})\s*([mhd])\s*$", re.IGNORECASE)


class _Hours:
    """The failures of some whole hours as columns (sign_in_columns.py), found by user and by hour. A log holds one
    for what it loaded whole and one per later commit it adopted (the hours that commit rewrote); an hour is served
    by the newest that holds it."""

    __slots__ = ("rows", "by_user", "spans", "_starts", "_names")

    def __init__(self, groups: Mapping[str, Sequence[Mapping[str, Any]]], hours: Sequence[str]) -> None:
        self.spans: dict[str, tuple[int, int]] = {}
        at = 0
        for h in hours:
            self.spans[h] = (at, at + len(groups[h]))
            at += len(groups[h])
        rows = [r for h in hours for r in groups[h]]
        keys = [_user_key(r) for r in rows]
        self.rows = Rows(_FAILURE_COLUMNS, rows, "createdDateTime", {_KEY: keys}, pooled=(_KEY,))
        del rows, keys
        self.by_user = ByKey(self.rows.key(_KEY))
        self._starts = [a for a, _b in self.spans.values()]
        self._names = list(self.spans)

    def hour_of(self, row: int) -> str:
        return self._names[bisect_right(self._starts, row) - 1]

    def nbytes(self) -> int:
        return self.rows.nbytes() + self.by_user.nbytes()


class _Users:
    """Rows by user id (the last successes, or one hour's list of them) as columns."""

    __slots__ = ("rows", "by_user")

    def __init__(self, rows: Sequence[Mapping[str, Any]], keys: Sequence[Any]) -> None:
        self.rows = Rows(_SUCCESS_COLUMNS, rows, "createdDateTime", {_KEY: keys}, pooled=(_KEY,))
        self.by_user = ByKey(self.rows.key(_KEY))

    def of(self, user_id: str) -> list[dict[str, Any]]:
        return [self.rows.row(i) for i in self.by_user.rows(user_id)]

    def nbytes(self) -> int:
        return self.rows.nbytes() + self.by_user.nbytes()


def _merge_last(rows: list[dict[str, Any]], new: dict[str, Any]) -> None:
    """sync/sign_ins.py merge_success, in place: the latest success per app (last_success.is_later)."""
    for i, r in enumerate(rows):
        if r.get("appId") == new.get("appId"):
            if is_later(new.get("createdDateTime"), r.get("createdDateTime")):
                rows[i] = new
            return
    rows.append(new)


def _groups(stored: Iterable[Any]) -> dict[str, list[Any]]:
    """{key: [Record, ...]} of stored grouped buckets (one Table for all of them)."""
    parts = [b if is_packed_groups(b) else pack_groups(b) for b in stored if b is not None]
    return concat_groups(parts) if parts else {}


def _keys_of(stored: Any) -> list[str]:
    if stored is None:
        return []
    return list(stored[1]) if is_packed_groups(stored) else list(stored)


@dataclass
class SignInLog:
    """One version of one tenant's sign-in events mirror, held as columns (sign_in_columns.py) and indexed by user
    and hour. `status` None: never synced.

    A poll's commit is adopted in proportion to what it rewrote (`SignInLogs.get`, `load`): the failure buckets it
    rewrote (the last hour or two; expiry's first hour) are read and their hours held in a new `_Hours`, the other
    hours stay where the older version held them; the polls' successes are kept per hour of poll (sync/sign_ins.py
    RECENT) and only the rewritten hour is read; the last successes by user are read again only when the sync
    folded those hours into them (once a day)."""

    tenant: str
    status: AreaStatus | None
    version: int = 0
    meta: Mapping[str, Any] = field(default_factory=dict)
    hours: list[str] = field(default_factory=list)  # hours holding failures, oldest first
    _hour_at: dict[str, tuple[_Hours, int, int]] = field(default_factory=dict)  # hour -> its holder, rows [start, stop)
    _parts: list[_Hours] = field(default_factory=list)  # every holder an hour is served by, oldest first
    _successes: _Users | None = None  # last success per user and app, as the sync folded them
    _recent: list[tuple[str, _Users]] = field(default_factory=list)  # hour of poll -> the successes its polls read
    _tally: dict[tuple[str, str | None], dict[str, Any]] = field(default_factory=dict)
    _merged: dict[tuple[Any, ...], dict[str, Any]] = field(default_factory=dict)
    _rows: dict[str, list[tuple[Any, ...]]] = field(default_factory=dict)
    _success_ips: dict[str, frozenset[str]] = field(default_factory=dict)
    _apps: dict[int, Counter[tuple[Any, Any]]] = field(default_factory=dict)
    _app_codes: dict[tuple[str, str | None], Counter[tuple[Any, int]]] = field(default_factory=dict)
    stamp: int = 0  # the sign-in mirror's commit stamp this log's status and meta are from
    _seen: AreaBuckets | None = None  # the mirror's buckets this log holds (their revisions; no objects)
    _bucket_keys: dict[tuple[str, int], list[str]] = field(default_factory=dict)  # (coll, bucket) -> keys it held

    @classmethod
    def build(cls, tenant: str, snapshot: DirectorySnapshot | None, meta: Mapping[str, Any] | None = None) -> "SignInLog":
        """A log of a snapshot's sign-in collections (tests and benchmarks; the server loads with `load`)."""
        if snapshot is None:
            return cls(tenant, None)
        log = cls(tenant, snapshot.areas.get("sign_in_events"), snapshot.version, dict(meta or {}))
        log._fill(snapshot.collection(_FAILURES), snapshot.collection(_SUCCESSES), snapshot.collection(_RECENT) or {})
        return log

    def _fill(self, failures: Mapping[str, Sequence[Any]], successes: Mapping[str, Sequence[Any]],
              recent: Mapping[str, Sequence[Any]]) -> None:
        hours = sorted(h for h in failures if failures[h])
        part = _Hours(failures, hours)
        self._parts = [part]
        self._hour_at = {h: (part, a, b) for h, (a, b) in part.spans.items()}
        self.hours = hours
        self._successes = _Users([r for rows in successes.values() for r in rows],
                                 [uid for uid, rows in successes.items() for _r in rows])
        self._recent = [(k, _recent_users(recent[k])) for k in sorted(recent) if recent[k]]

    @classmethod
    def load(cls, tenant: str, got: AreaBuckets, older: "SignInLog | None" = None) -> "SignInLog | None":
        """The log of `got` (MirrorStore.read_area). With `older` (the log of the earlier call whose `_seen` `got`
        was read against), only what `got` read anew is built; the rest is `older`'s. None when that is not
        possible (too much rewritten, or a collection `got` could not read in part): load whole."""
        log = cls(tenant, got.status, got.version, dict(got.meta), stamp=got.stamp,
                  _seen=replace(got, buckets={}))
        if older is None or older._seen is None:
            if got.whole != frozenset(got.specs) and any(got.specs[c][0] for c in got.specs):
                return None
            for coll, stored in got.buckets.items():
                for i, b in stored.items():
                    log._bucket_keys[(coll, i)] = _keys_of(b)
            log._fill(_groups(got.buckets.get(_FAILURES, {}).values()), _groups(got.buckets.get(_SUCCESSES, {}).values()),
                      _groups(got.buckets.get(_RECENT, {}).values()))
            return log
        if got.whole & {_FAILURES, _RECENT}:
            return None
        moved = {c: [i for i, (a, b) in enumerate(zip(older._seen.specs[c][1], got.specs[c][1])) if a != b]
                 for c in got.specs if c in older._seen.specs}
        if got.whole & {_SUCCESSES} or moved.get(_SUCCESSES):
            return None  # the sync folded the polls' successes into the by-user lists: read those whole
        log._bucket_keys = {k: v for k, v in older._bucket_keys.items()
                            if not (k[0] in moved and k[1] in moved[k[0]])}
        for coll, stored in got.buckets.items():
            for i, b in stored.items():
                log._bucket_keys[(coll, i)] = _keys_of(b)
        # failures: the hours of the rewritten buckets are read; the others stay where `older` holds them
        gone = {h for i in moved.get(_FAILURES, []) for h in older._bucket_keys.get((_FAILURES, i), [])}
        fresh = _groups(got.buckets.get(_FAILURES, {}).values())
        read = sorted(h for h in fresh if fresh[h])
        if len(read) * 2 > max(len(older.hours), 1) and len(read) > 4:
            return None  # most hours rewritten (a full pull): load whole
        hour_at = {h: at for h, at in older._hour_at.items() if h not in gone}
        if read:
            part = _Hours(fresh, read)
            hour_at.update((h, (part, a, b)) for h, (a, b) in part.spans.items())
        log.hours = sorted(hour_at)
        log._hour_at = hour_at
        used = {id(at[0]) for at in hour_at.values()}
        log._parts = [p for p in [*older._parts, *([part] if read else [])] if id(p) in used]
        log._successes = older._successes
        dropped = {k for i in moved.get(_RECENT, []) for k in older._bucket_keys.get((_RECENT, i), [])}
        again = _groups(got.buckets.get(_RECENT, {}).values())
        recent = {k: u for k, u in older._recent if k not in dropped}
        recent.update((k, _recent_users(rows)) for k, rows in again.items() if rows)
        log._recent = sorted(recent.items())
        log.adopt(older)
        return log

    @property
    def failure_count(self) -> int:
        return sum(b - a for _p, a, b in self._hour_at.values())

    @property
    def success_count(self) -> int:
        """Rows of last successes held (the folded ones, and the polls' since)."""
        return (len(self._successes.rows) if self._successes is not None else 0) + sum(len(u.rows) for _k, u in self._recent)

    def failure_users(self) -> list[str]:
        """The keys (user id, or folded UPN for events without one) that have failures in the window."""
        out: dict[str, None] = {}
        for part in self._parts:
            for k in part.by_user.keys():
                if k not in out and self.user_failures(k):
                    out[k] = None
        return list(out)

    def user_failures(self, key: str) -> list[tuple[str, int, int]]:
        """The failures of user `key` (id, or folded UPN for events without a user id), oldest first, as handles for
        `failure`."""
        out = []
        for n, part in enumerate(self._parts):
            for r in part.by_user.rows(key):
                h = part.hour_of(r)
                at = self._hour_at.get(h)
                if at is not None and at[0] is part:
                    out.append((h, r, n))
        out.sort()
        return out

    def failure(self, handle: tuple[str, int, int]) -> dict[str, Any]:
        return self._parts[handle[2]].rows.row(handle[1])

    def hour_failures(self, hour: str) -> list[dict[str, Any]]:
        """The hour's failures as the mirror's records (less the event id), oldest first."""
        at = self._hour_at.get(hour)
        return [at[0].rows.row(i) for i in range(at[1], at[2])] if at is not None else []

    def user_successes(self, user_id: str) -> list[dict[str, Any]]:
        """The user's last success per app (the by-user lists with the polls' hours merged in, oldest first)."""
        rows = self._successes.of(user_id) if self._successes is not None else []
        for _k, users in self._recent:
            for row in users.of(user_id):
                _merge_last(rows, row)
        return rows

    def recent_apps(self, hours: int) -> Counter[tuple[Any, Any]]:
        """(appId, appDisplayName) -> failures in the last `hours` hours that hold failures (memoised)."""
        got = self._apps.get(hours)
        if got is not None:
            return got
        out: Counter[tuple[Any, Any]] = Counter()
        for h in self.hours[-hours:] if self.hours else []:
            part, a, b = self._hour_at[h]
            out.update(part.rows.pairs("appId", "appDisplayName", a, b))
        self._apps[hours] = out
        return out

    def hour_app_codes(self, hour: str, app: str | None) -> Counter[tuple[Any, int]]:
        """(appId, errorCode) -> failures of one whole hour, counted column-wise (what `hour_tally(...)["app_code"]`
        counts row by row; the spikes' baseline reads every hour of the window)."""
        t = self._tally.get((hour, app))
        if t is not None:
            return t["app_code"]  # type: ignore[no-any-return]
        got = self._app_codes.get((hour, app))
        if got is None:
            at = self._hour_at.get(hour)
            got = Counter()
            if at is not None:
                for (aid, code), n in at[0].rows.pairs("appId", "errorCode", at[1], at[2]).items():
                    if app is None or aid == app:
                        got[(aid, int(code or 0))] += n
            self._app_codes[(hour, app)] = got
        return got

    def memory_bytes(self) -> int:
        """Bytes of the columns' arrays and pools (what grows with the window)."""
        return sum(p.nbytes() for p in self._parts) + (self._successes.nbytes() if self._successes is not None else 0) + \
            sum(u.nbytes() for _k, u in self._recent)

    @property
    def available(self) -> bool:
        return self.status is not None and self.status.enabled and self.status.last_success is not None

    def unavailable_reason(self) -> str:
        if self.status is None or (self.status.enabled and self.status.last_success is None):
            return "sign-in events were never synced for this tenant (enable [tenants.sync] sign_in_events and run a sync)"
        return self.status.disabled_reason or "the sign_in_events area is disabled"

    @property
    def kept_from(self) -> datetime | None:
        return parse_time(self.meta.get("window_start"))

    @property
    def successes_from(self) -> datetime | None:
        return parse_time(self.meta.get("successes_from"))

    def hour_tally(self, hour: str, app: str | None) -> dict[str, Any]:
        """Counts of one whole hour (memoised: a loaded log never changes)."""
        key = (hour, app)
        t = self._tally.get(key)
        if t is None:
            t = _tally(r for r in self.hour_rows(hour) if app is None or r[3] == app)
            self._tally[key] = t
        return t

    def success_ips(self, user_id: str) -> frozenset[str]:
        """The addresses of the user's last successes (memoised)."""
        got = self._success_ips.get(user_id)
        if got is None:
            got = self._success_ips[user_id] = frozenset(str(r.get("ipAddress")) for r in self.user_successes(user_id))
        return got

    def adopt(self, older: "SignInLog") -> int:
        """Reuse the counts `older` (the previous version of this log) computed for hours this version holds unchanged
        (the same rows: a poll rewrites the last hour or two, never an older one without rewriting its bucket, and
        expiry drops whole hours). The first summary after each 5-minute poll then counts only the hours the poll
        touched. Returns the hours reused."""
        same = {h for h, at in self._hour_at.items()
                if (old := older._hour_at.get(h)) is not None and (old is at or old[2] - old[1] == at[2] - at[1])}
        for (h, app), tally in list(older._tally.items()):
            if h in same:
                self._tally[(h, app)] = tally
        for h, rows in list(older._rows.items()):
            if h in same:
                self._rows[h] = rows
        for (h, app), counts in list(older._app_codes.items()):
            if h in same:
                self._app_codes[(h, app)] = counts
        for key, merged in list(older._merged.items()):
            # keys: (first hour, last hour, hours, app, fields) or ("spike-base", first, last, hours, app); a merge
            # with the current hour folded in ("last", ...) is for one version of that hour: not carried over
            if key[0] == "last":
                continue
            first, last, count = (key[1], key[2], key[3]) if key[0] == "spike-base" else (key[0], key[1], key[2])
            hours = [h for h in older.hours if first <= h <= last] if count else []
            if len(hours) == count and all(h in same for h in hours):
                # the counts only: what the summary derived from them also read the successes, which a poll changes
                self._merged[key] = {k: v for k, v in merged.items() if k != "_derived"}
        return len(same)

    def has_hour(self, hour: str) -> bool:
        return hour in self._hour_at

    def hour_rows(self, hour: str) -> list[tuple[Any, ...]]:
        """The hour's failures as `_ROW` tuples (the last few hours asked for are kept)."""
        rows = self._rows.get(hour)
        if rows is None:
            at = self._hour_at.get(hour)
            rows = at[0].rows.tuples(_ROW, at[1], at[2]) if at is not None else []
            if len(self._rows) >= _HELD_HOURS:
                self._rows.pop(next(iter(self._rows)))
            self._rows[hour] = rows
        return rows


# what the tenant-wide counts read of a failure, as one tuple per event (reading a columnar record field by field is
# the slow part of counting): createdDateTime, userId, userPrincipalName, appId, appDisplayName, errorCode,
# ipAddress, city, countryOrRegion
_ROW = ("createdDateTime", "userId", "userPrincipalName", "appId", "appDisplayName", "errorCode", "ipAddress", "city",
        "countryOrRegion")
_HELD_HOURS = 16  # hours whose rows are kept as tuples (the partial hours at a window's ends, reused call after call)
_FAILURES, _SUCCESSES, _RECENT = "sign_in_failures", "sign_in_successes", "sign_in_recent"  # sync/sign_ins.py
_KEY = "_user"  # the column of the user key a failure is found by (see _user_key)
# what the sync keeps of an event (sync/sign_ins.py FAILURE_FIELDS, SUCCESS_FIELDS), less the failures' event id:
# the answers never show it
_FAILURE_COLUMNS = (
    "createdDateTime", "userId", "userPrincipalName", "userDisplayName", "appId", "appDisplayName", "errorCode",
    "failureReason", "additionalDetails", "clientAppUsed", "ipAddress", "city", "countryOrRegion",
    "conditionalAccessStatus", "failedPolicies", "grantControls", "deviceCompliant", "deviceManaged", "operatingSystem",
    "riskState")
_SUCCESS_COLUMNS = ("appId", "appDisplayName", "createdDateTime", "ipAddress", "clientAppUsed", "city", "countryOrRegion")


def _recent_users(rows: Sequence[Mapping[str, Any]]) -> _Users:
    """An hour's list of the polls' last successes ({userId, ...} rows) by user."""
    return _Users(rows, [r.get("userId") if isinstance(r.get("userId"), str) else None for r in rows])


def _user_key(r: Mapping[str, Any]) -> str | None:
    """A failure's user: its user id, or its folded UPN when it has none (a user who does not exist)."""
    uid, upn = r.get("userId"), r.get("userPrincipalName")
    if uid and uid != _NO_USER:
        return str(uid)
    return str(upn).casefold() if upn else None


def _tally(rows: Iterable[tuple[Any, ...]]) -> dict[str, Any]:
    """Counts of `_ROW` tuples. Counted column by column (Counter over a column is C speed; a loop over the rows is
    left only for the password failures, which feed the spray check); every dict is filled in row order, as a loop over
    the rows would (the ties of the top lists keep that order)."""
    rows = rows if isinstance(rows, list) else list(rows)
    uids = list(map(itemgetter(1), rows))
    upns = list(map(itemgetter(2), rows))
    app_ids = list(map(itemgetter(3), rows))
    codes_of = list(map(itemgetter(5), rows))
    if any(type(c) is not int for c in set(codes_of)):
        codes_of = [int(c or 0) for c in codes_of]
    ips_of = list(map(itemgetter(6), rows))
    whos = [str(upn or uid or "?").casefold() for uid, upn in zip(uids, upns)]
    codes: Counter[int] = Counter(codes_of)
    code_users: dict[int, set[str]] = {code: set() for code in codes}
    for code, who in set(zip(codes_of, whos)):
        code_users[code].add(who)
    apps: Counter[tuple[Any, Any]] = Counter(zip(app_ids, map(itemgetter(4), rows)))
    app_code: Counter[tuple[Any, int]] = Counter(zip(app_ids, codes_of))
    users: Counter[str] = Counter(whos)
    ips: Counter[str] = Counter(filter(None, ips_of))
    last_where = dict(zip(reversed(ips_of), zip(map(itemgetter(7), reversed(rows)), map(itemgetter(8), reversed(rows)))))
    ip_where: dict[str, tuple[Any, Any]] = {ip: last_where[ip] for ip in ips}  # the first row's of each address
    ip_users: dict[str, set[str]] = {}
    ip_times: dict[str, list[str]] = {}
    for (when, uid, _upn, _app, _name, _code, ip, _city, _country), code, who in zip(rows, codes_of, whos):
        if ip and code in PASSWORD_CODES:
            ip_users.setdefault(ip, set()).add(uid if uid and uid != _NO_USER else who)
            t = ip_times.setdefault(ip, [when, when])
            if when < t[0]:
                t[0] = when
            elif when > t[1]:
                t[1] = when
    return {"n": len(rows), "codes": codes, "code_users": code_users, "apps": apps, "app_code": app_code, "ips": ips,
            "users": users, "ip_users": ip_users, "ip_where": ip_where, "ip_times": ip_times}


def parse_since(since: str | None, now: datetime) -> datetime:
    """`since`: an ISO time, or a duration back from now ("30m", "6h", "3d"); default 24 hours."""
    if since is None or not str(since).strip():
        return now - DEFAULT_SINCE
    text = str(since).strip()
    if len(text) > SINCE_MAX:
        raise InvalidArgument("since is too long: give an ISO time (2026-12-01T08:00:00Z) or a duration like 6h or 3d.")
    m = _SINCE.match(text)
    if m:
        n, unit = int(m.group(1)), m.group(2).lower()
        return now - {"m": timedelta(minutes=n), "h": timedelta(hours=n), "d": timedelta(days=n)}[unit]
    when = parse_time(text if text.endswith("Z") or "+" in text[10:] else text + "Z") if len(text) >= 10 else None
    if when is None:
        raise InvalidArgument(f"since {quote(text)} is not a time: give an ISO time (2026-12-01T08:00:00Z) or a duration "
                              "like 30m, 6h or 3d.")
    if when > now:
        raise InvalidArgument("since is in the future.")
    return when


def _window(log: SignInLog, since: datetime, now: datetime) -> tuple[datetime, dict[str, Any], list[dict[str, str]]]:
    kept = log.kept_from
    findings: list[dict[str, str]] = []
    start = since
    if kept is not None and since < kept:
        start = kept
        findings.append(finding("SIGN_IN_WINDOW_CLIPPED", f"The mirror keeps sign-in events from {iso(kept)} "
                                f"(sign_in_events_days); the answer covers {iso(kept)} to now, not from {iso(since)}."))
    status = log.status
    window = {"from": iso(start), "to": iso(now), "keptFrom": iso(kept) if kept else None,
              "successesFrom": iso(log.successes_from) if log.successes_from else None,
              "asOf": iso(status.last_success) if status and status.last_success else None}
    return start, window, findings


def _event_time(r: Mapping[str, Any]) -> datetime | None:
    return parse_time(r.get("createdDateTime"))


def _lockout(failures: list[Mapping[str, Any]], last_success: datetime | None, now: datetime) -> dict[str, Any]:
    """Smart Lockout against the failures (oldest first) after the last success."""
    after = [r for r in failures if int(r.get("errorCode") or 0) in PASSWORD_CODES
             and (last_success is None or (_event_time(r) or now) > last_success)]
    wrong = sum(1 for r in after if int(r.get("errorCode") or 0) == 50126)
    locks: list[datetime] = []
    streak = 0
    previous: datetime | None = None
    for r in after:
        t = _event_time(r)
        if t is None:
            continue
        if int(r.get("errorCode") or 0) == 50053:
            if not locks or (t - locks[-1]).total_seconds() > LOCKOUT_SECONDS:
                locks.append(t)
            streak = 0
        else:
            # a run of wrong passwords; an hour's pause starts a new count (typos spread over days are no lockout)
            streak = 1 if previous is not None and (t - previous) > timedelta(hours=1) else streak + 1
            if streak >= LOCKOUT_THRESHOLD and (not locks or t > locks[-1]):
                locks.append(t)  # the threshold was reached: the next attempt meets a lock
                streak = 0
        previous = t
    if not locks:
        return {"probablyLockedNow": False, "lockedAt": None, "clearsAt": None, "lockouts": 0,
                "failedPasswordsSinceLastSuccess": wrong,
                "basis": f"{wrong} wrong passwords since the last success (Smart Lockout locks at {LOCKOUT_THRESHOLD})"}
    duration = min(LOCKOUT_MAX_SECONDS, LOCKOUT_SECONDS * 2 ** (len(locks) - 1))
    clears = locks[-1] + timedelta(seconds=duration)
    return {"probablyLockedNow": clears > now, "lockedAt": iso(locks[-1]), "clearsAt": iso(clears), "lockouts": len(locks),
            "failedPasswordsSinceLastSuccess": wrong,
            "basis": (f"{len(locks)} lockout(s) since the last success; Smart Lockout locks for {LOCKOUT_SECONDS} s at "
                      f"first and longer after each further lockout (estimate: {duration} s)")}


def _group(rows: list[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Failures grouped by error code, most recent group first."""
    groups: dict[int, list[Mapping[str, Any]]] = {}
    for r in rows:
        groups.setdefault(int(r.get("errorCode") or 0), []).append(r)
    out = []
    for code, rs in groups.items():
        d = describe(code, rs[-1].get("failureReason"))
        ips: Counter[tuple[Any, Any, Any]] = Counter((r.get("ipAddress"), r.get("city"), r.get("countryOrRegion")) for r in rs)
        policies: Counter[str] = Counter(p for r in rs for p in r.get("failedPolicies") or ())
        grants = sorted({g for r in rs for g in r.get("grantControls") or ()})
        details = Counter(r.get("additionalDetails") for r in rs if r.get("additionalDetails"))
        out.append({
            **d,
            "count": len(rs),
            "first": rs[0].get("createdDateTime"),
            "last": rs[-1].get("createdDateTime"),
            "failureReason": rs[-1].get("failureReason"),
            "additionalDetails": details.most_common(1)[0][0] if details else None,
            "apps": sorted({str(r.get("appDisplayName") or r.get("appId")) for r in rs}),
            "clientApps": sorted({str(r.get("clientAppUsed")) for r in rs if r.get("clientAppUsed")}),
            "ipAddresses": [{"ipAddress": ip, "city": city, "countryOrRegion": country, "count": n}
                            for (ip, city, country), n in ips.most_common(5)],
            "failedConditionalAccessPolicies": [{"displayName": p, "count": n} for p, n in policies.most_common()],
            "grantControls": grants,
            "devices": sorted({f"{r.get('operatingSystem') or '?'} (compliant: {r.get('deviceCompliant')}, managed: "
                               f"{r.get('deviceManaged')})" for r in rs if d["kind"] == "device"}),
        })
    out.sort(key=lambda g: str(g["last"]), reverse=True)
    return out


_VERDICT_ORDER = ("account", "lockout", "password_expired", "assignment", "conditional_access", "device", "mfa",
                  "unknown_account", "app", "consent", "password", "session")


def _app_filter(app: str | None, view: Any, rows: Iterable[Mapping[str, Any]]) -> tuple[list[Mapping[str, Any]], str | None, str | None]:
    """(rows of the app, its appId or None, its display name) — matched by appId, or the directory's app, or the name
    the events carry."""
    rows = list(rows)
    if app is None or not str(app).strip():
        return rows, None, None
    text = str(app).strip()
    if len(text) > 256:
        raise InvalidArgument("app is too long: give the app's name, appId or object id.")
    app_id = None
    name = None
    if view is not None:
        try:
            from .apps import resolve_app

            application, sp = resolve_app(view, text)
            obj = sp or application
            if obj is not None:
                app_id, name = obj.get("appId"), obj.get("displayName")
        except (NotFoundError, InvalidArgument):
            pass
    folded = text.casefold()
    by_id = [r for r in rows if (app_id and r.get("appId") == app_id) or str(r.get("appId") or "").casefold() == folded]
    by_name = [r for r in rows if str(r.get("appDisplayName") or "").casefold() in (folded, str(name or "").casefold())]
    hit = by_id or by_name
    if hit and (app_id is None or not by_id):  # the events' own appId (a directory app of the same name may differ)
        weights: Counter[Any] = Counter()
        for r in hit:
            weights[r.get("appId")] += int(r.get("_count", 1))  # rows standing for several events (recent_apps)
        app_id = weights.most_common(1)[0][0]
        name = name or hit[0].get("appDisplayName")
    return hit, app_id, name or text


def explain_sign_in(log: SignInLog, view: Any, user: str, app: str | None = None, since: str | None = None,
                    now: datetime | None = None) -> dict[str, Any]:
    """Why `user` cannot sign in: recent failures grouped by cause, lockout, last success, the directory-side causes,
    one verdict and a next step. `view` is the DirectoryView (None when the tenant's directory was never synced)."""
    current = utcnow(now)
    start = parse_since(since, current)
    findings: list[dict[str, str]] = []
    record = None
    directory: dict[str, Any] | None = None
    access: dict[str, Any] | None = None
    if view is not None:
        from .account import check_account_state
        from .users import resolve_user

        try:
            record = resolve_user(view, user)
        except NotFoundError:
            if not _looks_like_upn(user):
                raise
        if record is not None:
            state = check_account_state(view, str(record["id"]), current)
            directory = {k: state.get(k) for k in ("accountEnabled", "passwordExpired", "passwordNeverExpires",
                                                    "lastPasswordChangeDateTime", "lastSignInDateTime",
                                                    "onPremisesSyncEnabled", "userType", "externalUserState")}
            findings += [f for f in state["findings"] if f["severity"] != "info" or f["code"] in ("ONPREM_SYNCED", "GUEST")]
            if app:
                from .apps import check_app_access

                try:
                    a = check_app_access(view, str(record["id"]), app, current)
                    access = {"app": a.get("app"), "hasAccess": a.get("hasAccess"), "reason": a.get("reason")}
                    findings += [f for f in a.get("findings", []) if f["code"] in ("NOT_ASSIGNED", "SP_DISABLED", "NESTED_GROUP_ONLY")]
                except (NotFoundError, InvalidArgument):
                    access = None
    elif not _looks_like_upn(user):
        raise NotFoundError("The tenant's directory is not in the mirror yet; give the user's UPN to read the sign-in log.")
    keys = [str(record["id"])] if record is not None else []
    upn = str(record.get("userPrincipalName") if record is not None else user).strip()
    keys.append(upn.casefold())
    who = {"id": record.get("id"), "displayName": record.get("displayName"), "userPrincipalName": record.get("userPrincipalName")} \
        if record is not None else {"id": None, "displayName": None, "userPrincipalName": upn}

    answer: dict[str, Any] = {"user": who, "app": None, "directory": directory, "appAccess": access}
    if not log.available:
        findings.append(finding("SIGN_IN_EVENTS_UNAVAILABLE", f"Sign-in events are not in the mirror: {log.unavailable_reason()}; "
                                "only the directory side is known."))
        answer.update({"window": None, "signInEvents": None, "failures": None, "lastSuccess": None, "lockout": None})
        return _finish(answer, findings, [], directory, access, None, current, log)

    begin, window, wf = _window(log, start, current)
    findings += wf
    found: set[tuple[str, int, int]] = set()
    for k in keys:
        found.update(log.user_failures(k))
    rows: list[Mapping[str, Any]] = [log.failure(i) for i in sorted(found)]  # row order: by time (then event id)
    every = rows  # Smart Lockout counts the account's failures across apps
    rows, app_id, app_name = _app_filter(app, view, rows)
    answer["app"] = {"appId": app_id, "displayName": app_name} if app else None
    in_window = [r for r in rows if (t := _event_time(r)) is not None and begin <= t <= current]
    last_success = _last_success(log, record, app_id, view)
    overall = _last_success(log, record, None, view) if app_id else last_success
    lock = _lockout(every, parse_time(overall["createdDateTime"]) if overall else None, current)
    groups = _group(in_window)
    answer.update({"window": window, "signInEvents": {"failures": len(in_window), "causes": len(groups)},
                   "failures": groups, "lastSuccess": last_success, "lockout": lock})
    if not in_window:
        findings.append(finding("SIGN_IN_NO_EVENTS", f"The sign-in log in the mirror has no failed sign-ins for {upn}"
                                + (f" to {quote(app_name)}" if app else "") + f" from {window['from']} to {window['to']}: "
                                "that does not show sign-in works (the attempt may not have reached Entra ID, or be newer "
                                "than the last poll)."))
    for g in groups:
        text = f"{g['count']} × {g['errorCode']} ({g['cause']}) from {g['first']} to {g['last']}"
        if g["failedConditionalAccessPolicies"]:
            text += "; policy: " + ", ".join(quote(p["displayName"]) for p in g["failedConditionalAccessPolicies"])
        findings.append(finding(g["finding"], text))
        if any(c.casefold() in LEGACY_CLIENTS for c in g["clientApps"]):
            findings.append(finding("SIGN_IN_LEGACY_AUTHENTICATION", f"{g['errorCode']} came from legacy clients: "
                                    f"{', '.join(c for c in g['clientApps'] if c.casefold() in LEGACY_CLIENTS)}."))
    if lock["probablyLockedNow"] or lock["lockouts"]:
        lock_state = "probably locked now, clearing about " + str(lock["clearsAt"]) if lock["probablyLockedNow"] else \
            "was locked; the lock has probably cleared (" + str(lock["clearsAt"]) + ")"
        findings.append(finding("SIGN_IN_LOCKED_OUT", f"Smart Lockout: {lock_state}. {lock['basis']}."))
    return _finish(answer, findings, groups, directory, access, lock, current, log)


def _looks_like_upn(text: str) -> bool:
    return isinstance(text, str) and "@" in text and len(text) <= 256 and " " not in text.strip()


def _last_success(log: SignInLog, record: Mapping[str, Any] | None, app_id: str | None, view: Any) -> dict[str, Any] | None:
    if record is None:
        return None
    rows = [r for r in log.user_successes(str(record["id"])) if app_id is None or r.get("appId") == app_id]
    if rows:
        best = rows[0]
        for r in rows[1:]:
            if is_later(r.get("createdDateTime"), best.get("createdDateTime")):
                best = r
        return {**{k: best.get(k) for k in ("createdDateTime", "appId", "appDisplayName", "ipAddress", "clientAppUsed",
                                            "city", "countryOrRegion")}, "source": "sign-in events"}
    activity = record.get("signInActivity")
    when = activity.get("lastSuccessfulSignInDateTime") if isinstance(activity, Mapping) else None
    if app_id is None and isinstance(when, str) and not when.startswith("0001"):
        return {"createdDateTime": when, "appId": None, "appDisplayName": None, "ipAddress": None, "clientAppUsed": None,
                "city": None, "countryOrRegion": None, "source": "signInActivity (directory; any app)"}
    return None


def _finish(answer: dict[str, Any], findings: list[dict[str, str]], groups: list[dict[str, Any]],
            directory: dict[str, Any] | None, access: dict[str, Any] | None, lock: dict[str, Any] | None,
            now: datetime, log: SignInLog) -> dict[str, Any]:
    verdict, step = _verdict(groups, directory, access, lock, answer, log)
    answer["verdict"] = verdict
    answer["nextStep"] = step
    answer["asOf"] = iso(log.status.last_success) if log.status and log.status.last_success else None
    answer["findings"] = sort_findings(findings)
    return answer


def _verdict(groups: list[dict[str, Any]], directory: dict[str, Any] | None, access: dict[str, Any] | None,
             lock: dict[str, Any] | None, answer: dict[str, Any], log: SignInLog) -> tuple[str, str]:
    """One line: the most decisive cause known, directory and log together; and the desk's next step."""
    causes: dict[str, tuple[str, str]] = {}
    if directory is not None and directory.get("accountEnabled") is False:
        causes["account"] = ("The account is disabled in the directory.",
                             "Find out why it was disabled (leaver, security hold) before enabling it.")
    if lock is not None and lock.get("probablyLockedNow"):
        causes["lockout"] = (f"The account is probably locked by Smart Lockout until about {lock['clearsAt']} after "
                             f"{lock['failedPasswordsSinceLastSuccess']} wrong passwords.",
                             "Wait for the lock to clear, then have the user sign in once with the right password or use "
                             "self-service reset; if the user did not make these attempts, treat it as an attack.")
    if directory is not None and directory.get("passwordExpired") is True:
        causes["password_expired"] = ("The password has expired (directory).",
                                      "Have the user change it at the prompt or with self-service password reset.")
    if access is not None and access.get("hasAccess") is False:
        causes["assignment"] = (f"The user is not assigned to {access.get('app', {}).get('displayName') if isinstance(access.get('app'), dict) else 'the app'}.",
                                "Ask the app owner to approve, then assign the user or a group they are a direct member of.")
    for g in groups:
        if not g["blocking"]:
            continue
        kind = "password_expired" if g["finding"] == "SIGN_IN_PASSWORD_EXPIRED" else g["kind"]
        if kind == "lockout" and "lockout" not in causes:
            continue  # a past lock that has cleared: the wrong passwords explain it
        if kind not in causes:
            text = f"{g['count']} failed sign-in(s) with {g['errorCode']}: {g['cause']}"
            if g["failedConditionalAccessPolicies"]:
                text += " Policy: " + ", ".join(quote(p["displayName"]) for p in g["failedConditionalAccessPolicies"]) + "."
            causes[kind] = (text, g["nextStep"])
    if "mfa" not in causes:
        unanswered = _unanswered_mfa_prompt(groups, answer.get("lastSuccess"), log)
        if unanswered is not None:
            causes["mfa"] = unanswered
    for kind in _VERDICT_ORDER:
        if kind in causes:
            return causes[kind]
    for g in groups:
        if g["kind"] == "unknown":
            return (f"Sign-ins failed with error code {g['errorCode']}, which the catalogue does not know.", g["nextStep"])
    if not log.available:
        return ("Sign-in events are not in the mirror, and the directory shows nothing that blocks sign-in.",
                "Enable [tenants.sync] sign_in_events (needs AuditLog.Read.All and Entra ID P1/P2) or check the sign-in "
                "log in the Entra admin center.")
    if groups:
        return ("Only normal interruptions (MFA prompts, account pickers) are logged, no blocking failure.",
                "Ask the user for the exact error text and time; if MFA prompts repeat, check their MFA methods.")
    return ("The sign-in log has no failed sign-ins for this user in the window, and the directory shows nothing that "
            "blocks sign-in; that does not prove sign-in works.",
            "Ask for the exact error message, time and app; the attempt may not have reached Entra ID (network, wrong "
            "tenant, on-premises app) or may be newer than the last poll.")


def _unanswered_mfa_prompt(groups: list[dict[str, Any]], last_success: Mapping[str, Any] | None,
                           log: SignInLog) -> tuple[str, str] | None:
    """An MFA prompt (50074/50076, a normal interrupt) that no successful sign-in followed: the user never completed
    MFA. Said only when the log holds the successes since that prompt (else a success may simply not be mirrored)."""
    succeeded = parse_time(last_success.get("createdDateTime")) if last_success else None
    known_from = log.successes_from
    for g in groups:  # most recent first
        last = parse_time(g["last"])
        if g["blocking"] or g["kind"] != "mfa" or last is None:
            continue
        if (succeeded is not None and succeeded >= last) or known_from is None or last < known_from:
            return None
        return (f"{g['count']} sign-in(s) stopped at the multi-factor authentication prompt ({g['errorCode']}), the "
                f"last at {g['last']}, and no successful sign-in followed: MFA was not completed.",
                "Ask whether the user gets the MFA prompt and can answer it (phone, authenticator app, number "
                "matching); check their registered methods (check_account_state `authentication`). If they did not "
                "start these sign-ins, treat the password as known to someone else.")
    return None


def _spray_sample(accounts: Iterable[str]) -> list[str]:
    """The SPRAY_SAMPLE accounts of an address whose successes are checked: the first by user key (object id, or
    folded UPN for an account without one). Object ids are random, so these are a fair sample; and every process
    takes the same ones (a set's order differs between processes: string hashing is randomised), so two replicas
    call the same address a spray or a shared office."""
    return nsmallest(SPRAY_SAMPLE, accounts)


def _summary_parts(log: SignInLog, t: Mapping[str, Any]) -> dict[str, Any]:
    """What the summary shows of a tally: top codes, sprays and shared addresses (computed once per tally)."""
    top_codes = []
    for code, n in _top(t["codes"]):
        d = describe(code)
        top_codes.append({"errorCode": code, "count": n, "users": len(t["code_users"].get(code, ())), "cause": d["cause"],
                          "kind": d["kind"], "finding": d["finding"]})
    sprays: list[dict[str, Any]] = []
    shared: list[dict[str, Any]] = []  # many accounts fail from it, and sign in from it too: a shared office address
    for ip, accounts in t["ip_users"].items():
        if len(accounts) < SPRAY_MIN_ACCOUNTS:
            continue
        tries = t["ips"][ip]
        if tries / len(accounts) > SPRAY_MAX_PER_ACCOUNT:
            continue
        sample = _spray_sample(accounts)
        home = sum(1 for a in sample if ip in log.success_ips(a))
        if home >= SPRAY_HOME_SHARE * len(sample):
            shared.append({"ipAddress": ip, "accounts": len(accounts), "failures": tries,
                           "alsoSucceededFromIt": round(home / len(sample), 2)})
            continue
        city, country = t["ip_where"].get(ip, (None, None))
        first, last = t["ip_times"].get(ip, [None, None])
        sprays.append({"ipAddress": ip, "accounts": len(accounts), "failures": tries, "city": city,
                       "countryOrRegion": country, "first": first, "last": last})
    sprays.sort(key=lambda x: -x["accounts"])
    shared.sort(key=lambda x: -x["accounts"])
    return {"top_codes": top_codes, "sprays": sprays, "shared": shared[:TOP],
            "top_apps": [{"appId": a, "displayName": name, "count": n} for (a, name), n in _top(t["apps"])],
            "top_ips": [{"ipAddress": ip, "count": n, "accounts": len(t["ip_users"].get(ip, ())),
                         "city": t["ip_where"].get(ip, (None, None))[0], "countryOrRegion": t["ip_where"].get(ip, (None, None))[1]}
                        for ip, n in _top(t["ips"])],
            "top_users": [{"user": u, "count": n} for u, n in _top(t["users"])]}


def sign_in_failures_summary(log: SignInLog, view: Any = None, since: str | None = None, app: str | None = None,
                             now: datetime | None = None) -> dict[str, Any]:
    """The tenant-wide picture: top error codes, apps, IPs and users with failures; password spray and spikes."""
    current = utcnow(now)
    start = parse_since(since, current)
    findings: list[dict[str, str]] = []
    if not log.available:
        findings.append(finding("SIGN_IN_EVENTS_UNAVAILABLE", f"Sign-in events are not in the mirror: {log.unavailable_reason()}."))
        return {"window": None, "app": None, "failures": None, "topErrorCodes": None, "topApps": None,
                "topIpAddresses": None, "topUsers": None, "suspectedSprays": None, "sharedAddresses": None, "spikes": None,
                "asOf": None,
                "findings": sort_findings(findings)}
    begin, window, wf = _window(log, start, current)
    findings += wf
    app_id = None
    app_name = None
    if app is not None and str(app).strip():
        apps = [{"appId": a, "appDisplayName": n, "_count": c} for (a, n), c in log.recent_apps(48).items()]
        _, app_id, app_name = _app_filter(app, view, apps)
        if app_id is None:
            raise NotFoundError(f"No failed sign-in to an app called {quote(str(app))} is in the sign-in window, and the "
                                "directory has no such app.")
    # whole hours: the tenant-wide picture counts from the start of the hour `since` falls in (window.from says so),
    # so every hour's counts and their merge are computed once per loaded log and reused call after call
    begin = begin.replace(minute=0, second=0, microsecond=0)
    window["from"] = iso(begin)
    t = _merge_tallies(log, begin, current, app_id)
    derived = t.get("_derived") if isinstance(t.get("_derived"), dict) else None
    if derived is None:
        derived = _summary_parts(log, t)
        t["_derived"] = derived  # a memoised merge (or a one-off overlay): both belong to this log only
    total = t["n"]
    top_codes = derived["top_codes"]
    sprays, shared = derived["sprays"], derived["shared"]
    for s in sprays[:5]:
        findings.append(finding("PASSWORD_SPRAY_SUSPECTED", f"{s['ipAddress']} ({s['city'] or '?'}, {s['countryOrRegion'] or '?'}) "
                                f"failed passwords against {s['accounts']} accounts ({s['failures']} attempts) from "
                                f"{s['first']} to {s['last']}: block the IP and check those accounts for a success after it."))
    spikes = _spikes(log, current, app_id)
    for s in spikes[:5]:
        findings.append(finding("SIGN_IN_FAILURE_SPIKE", f"{s['count']} failures with {s['errorCode']} for {quote(str(s['appDisplayName']))} "
                                f"in the last hour against {s['hourlyAverage']} an hour before: look for an outage or a "
                                "policy change."))
    if total == 0:
        findings.append(finding("SIGN_IN_NO_EVENTS", f"No failed sign-ins are in the mirror from {window['from']} to "
                                f"{window['to']}" + (f" for {quote(str(app_name))}" if app_name else "") + "."))
    return {
        "window": window,
        "app": {"appId": app_id, "displayName": app_name} if app_id else None,
        "failures": total,
        "topErrorCodes": top_codes,
        "topApps": derived["top_apps"],
        "topIpAddresses": derived["top_ips"],
        "topUsers": derived["top_users"],
        "suspectedSprays": sprays[:TOP],
        "sharedAddresses": shared,
        "spikes": spikes[:TOP],
        "asOf": window["asOf"],
        "findings": sort_findings(findings),
    }


_FULL_FIELDS = ("codes", "apps", "app_code", "ips", "users", "code_users", "ip_users", "ip_where", "ip_times")


def _empty_tally() -> dict[str, Any]:
    return {"n": 0, "codes": Counter(), "code_users": {}, "apps": Counter(), "app_code": Counter(), "ips": Counter(),
            "users": Counter(), "ip_users": {}, "ip_where": {}, "ip_times": {}}


def _add_tally(out: dict[str, Any], p: Mapping[str, Any], fields: tuple[str, ...]) -> None:
    """Fold tally `p` into `out` (in place; `p` is left as it was)."""
    out["n"] += p["n"]
    for k in ("codes", "apps", "app_code", "ips", "users"):
        if k in fields:
            out[k].update(p[k])
    for k in ("code_users", "ip_users"):
        if k in fields:
            dst = out[k]
            for key, users in p[k].items():
                have = dst.get(key)
                if have is None:
                    dst[key] = set(users)
                else:
                    have.update(users)
    if "ip_where" in fields:
        for ip, where in p["ip_where"].items():
            out["ip_where"].setdefault(ip, where)
    if "ip_times" in fields:
        for ip, (a, b) in p["ip_times"].items():
            cur = out["ip_times"].get(ip)
            if cur is None:
                out["ip_times"][ip] = [a, b]
            else:
                cur[0], cur[1] = min(cur[0], a), max(cur[1], b)


def _merge_tallies(log: SignInLog, begin: datetime, now: datetime, app_id: str | None,
                   fields: tuple[str, ...] = _FULL_FIELDS) -> dict[str, Any]:
    """Counts of the failures in [begin, now]: whole hours from the memoised hourly tallies (their merge memoised
    too, so repeated questions about the same hours fold only the partial hours at both ends)."""
    lo, hi = iso(begin), iso(now)
    first_full = iso(begin + timedelta(hours=1))[:13] if lo[14:19] != "00:00" else lo[:13]
    last_hour = hi[:13]
    full = tuple(h for h in log.hours if first_full <= h < last_hour)
    rows_last = log.hour_rows(last_hour) if log.has_hour(last_hour) else []
    # the log holds nothing after `now`: the current hour counts whole. It is folded in on top of the merge of the
    # hours before it (memoised apart): a poll rewrites the current hour, so the next log (SignInLog.adopt) keeps
    # the merge of the others and the first summary after each poll folds in one hour, not every hour again
    whole_last = bool(rows_last) and lo[14:19] == "00:00" and first_full <= last_hour and all(r[0] <= hi for r in rows_last)
    key = (full[0] if full else "", full[-1] if full else "", len(full), app_id, fields)
    merged = log._merged.get(key)
    if merged is None:
        merged = _empty_tally()
        for h in full:
            _add_tally(merged, log.hour_tally(h, app_id), fields)
        if len(log._merged) >= 64:
            log._merged.clear()
        log._merged[key] = merged
    if whole_last:
        last_key = ("last", key, last_hour, len(rows_last))
        with_last = log._merged.get(last_key)
        if with_last is None:
            with_last = log._merged[last_key] = _overlay(merged, [log.hour_tally(last_hour, app_id)])
        merged = with_last
    edges = [h for h in log.hours if lo[:13] <= h <= hi[:13] and h not in full and not (whole_last and h == last_hour)]
    if not edges:
        return merged
    return _overlay(merged, [_tally(r for r in log.hour_rows(h) if lo <= r[0] <= hi and (app_id is None or r[3] == app_id))
                             for h in edges])


def _top(counts: Counter[Any], n: int = TOP) -> list[tuple[Any, int]]:
    """The n largest counts (a C sort of the items: faster than most_common's heap on thousands of keys)."""
    return sorted(counts.items(), key=itemgetter(1), reverse=True)[:n]


def _overlay(big: dict[str, Any], small: list[dict[str, Any]]) -> dict[str, Any]:
    """`big` (a memoised merge, left as it is) plus a few small tallies: shallow copies at C speed, new sets and
    lists only where a small tally adds to them."""
    out: dict[str, Any] = {"n": big["n"] + sum(p["n"] for p in small)}
    for k in ("codes", "apps", "app_code", "ips", "users"):
        c: Counter[Any] = Counter(big[k])
        for p in small:
            c.update(p[k])
        out[k] = c
    for k in ("code_users", "ip_users"):
        d = dict(big[k])
        for p in small:
            for key, users in p[k].items():
                have = d.get(key)
                d[key] = have | users if have is not None else set(users)
        out[k] = d
    where = dict(big["ip_where"])
    times = dict(big["ip_times"])
    for p in small:
        for ip, w in p["ip_where"].items():
            where.setdefault(ip, w)
        for ip, (a, b) in p["ip_times"].items():
            cur = times.get(ip)
            times[ip] = [a, b] if cur is None else [min(cur[0], a), max(cur[1], b)]
    out["ip_where"], out["ip_times"] = where, times
    return out


def _spikes(log: SignInLog, now: datetime, app_id: str | None) -> list[dict[str, Any]]:
    """app+code pairs whose failures in the last hour are far above their hourly average over the rest of the window
    (the whole hours before it, from the memoised hourly tallies)."""
    lo, hi = iso(now - timedelta(hours=1)), iso(now)
    recent: Counter[tuple[Any, int]] = Counter()
    names: dict[Any, Any] = {}
    for h in (lo[:13], hi[:13]) if lo[:13] != hi[:13] else (hi[:13],):
        for r in log.hour_rows(h):
            if lo <= r[0] <= hi and (app_id is None or r[3] == app_id):
                recent[(r[3], int(r[5] or 0))] += 1
                names.setdefault(r[3], r[4])
    if not recent:
        return []
    before = tuple(h for h in log.hours if h < lo[:13])
    key = ("spike-base", before[0] if before else "", before[-1] if before else "", len(before), app_id)
    base = log._merged.get(key)
    if base is None:
        counts: Counter[tuple[Any, int]] = Counter()
        for h in before:
            counts.update(log.hour_app_codes(h, app_id))
        base = log._merged[key] = {"app_code": counts}
    hours = max(1.0, float(len(before)))
    out = []
    for (aid, code), n in recent.items():
        avg = base["app_code"].get((aid, code), 0) / hours
        if n >= SPIKE_MIN and n >= SPIKE_FACTOR * max(avg, 1.0):
            out.append({"appId": aid, "appDisplayName": names.get(aid), "errorCode": code, "count": n,
                        "hourlyAverage": round(avg, 1)})
    out.sort(key=lambda s: -s["count"])
    return out


def requester_sign_ins(log: SignInLog, view: Any, user_id: str, apps: list[str], now: datetime | None = None) -> dict[str, Any] | None:
    """The sign-in evidence a ticket's context shows for its requester (and the apps the ticket names): the verdict,
    causes and lockout of explain_sign_in over the last 24 hours, compact. None when the log is unavailable."""
    if not log.available:
        return None
    full = explain_sign_in(log, view, user_id, None, None, now)
    out: dict[str, Any] = {
        "verdict": full["verdict"], "nextStep": full["nextStep"], "window": full["window"],
        "causes": [{k: g[k] for k in ("errorCode", "cause", "count", "last", "apps", "failedConditionalAccessPolicies")}
                   for g in full["failures"] or []],
        "lockout": full["lockout"], "lastSuccess": full["lastSuccess"], "apps": [],
    }
    for a in apps[:3]:
        try:
            per = explain_sign_in(log, view, user_id, a, None, now)
        except (NotFoundError, InvalidArgument):
            continue
        out["apps"].append({"app": per["app"], "verdict": per["verdict"], "failures": (per["signInEvents"] or {}).get("failures")})
    return out




_MAX_PARTS = 12  # holders of failure hours a log keeps before their hours are read into one (see _compacted)


def _compacted(events: Any, log: SignInLog) -> SignInLog | None:
    """`log` with the hours its later holders serve (one per hour a poll last rewrote) read again into one holder:
    an answer about one user looks in every holder, so they are kept few. Reads those hours' buckets (as `log` holds
    them); None when the mirror moved meanwhile or most hours would be read (the caller loads whole then, which
    leaves one holder: on a large tenant about every 3 days)."""
    if log._seen is None:
        return None
    n, revs = log._seen.specs[_FAILURES]
    late = {id(p) for p in log._parts[1:]}
    again = {i for (coll, i), keys in log._bucket_keys.items() if coll == _FAILURES
             and any(id(at[0]) in late for h in keys if (at := log._hour_at.get(h)) is not None)}
    seen = replace(log._seen, specs={**log._seen.specs, _FAILURES: (n, tuple(-2 if i in again else r for i, r in enumerate(revs)))})
    got = events.read_area(log.tenant, "sign_in_events", seen)
    if got is None or got.version != log.version or set(got.buckets[_FAILURES]) != again:
        return None
    older = replace(log, _seen=seen)
    return SignInLog.load(log.tenant, got, older)


class SignInLogs:
    """The current SignInLog per tenant, reloaded from the sign-in mirror when its version moves (cheap to ask)."""

    def __init__(self, store: Any) -> None:
        self._store = store  # mirror/store.py MirrorStore (the directory's; its sign_in_store() holds the events)
        self._held: dict[str, SignInLog] = {}
        self._lock = threading.Lock()
        ref = weakref.ref(self)

        def after_fork() -> None:
            # an answer worker forked while a thread of the server held the lock (loading a large window takes
            # seconds) would otherwise wait for it forever
            logs = ref()
            if logs is not None:
                logs._lock = threading.Lock()

        os.register_at_fork(after_in_child=after_fork)

    def warm(self, tenants: Iterable[str]) -> threading.Thread | None:
        """Load each tenant's log and count its default summary (the last 24 hours) in a background thread, so that
        the first sign-in question after a start finds them ready instead of paying for them (a large tenant's
        window: ~18 s CPU to load, ~1.5 s to count 24 hours). A question asked meanwhile waits for the load it
        needs, as it would have done it. Returns the thread (None when there is nothing to warm)."""
        names = list(tenants)
        if not names or self._store is None:
            return None

        def run() -> None:
            for name in names:
                try:
                    got = self.get(name)
                    if got.available:
                        sign_in_failures_summary(got)
                except Exception as exc:  # noqa: BLE001 - a warm-up that fails leaves the work to the first question
                    _log.info("tenant %s: sign-in events not loaded ahead of the first question (%s)", name, exc)

        thread = threading.Thread(target=run, name="sign-in-events-warm", daemon=True)
        thread.start()
        return thread

    def get(self, tenant: str) -> SignInLog:
        """The tenant's current log: reloaded when the sign-in mirror's data version moved, its status and window
        brought up to date (one small read) when only a poll's freshness did."""
        if self._store is None:
            return SignInLog(tenant, None)
        events = self._store.sign_in_store()
        fresh = events.freshness(tenant)
        if fresh is None:
            return SignInLog(tenant, None)
        held = self._held.get(tenant)
        if held is not None and held.version == fresh.version:
            if held.stamp != fresh.stamp:
                info = events.info(tenant)
                held.meta = dict(info["areas"]["sign_in_events"]["meta"]) if info else held.meta
                held.status = fresh.areas.get("sign_in_events")
                held.stamp = fresh.stamp
            return held
        with self._lock:
            held = self._held.get(tenant)
            if held is not None and held.version == fresh.version:
                return held
            log = None
            if held is not None and held._seen is not None:
                # the buckets the commits since `held` rewrote, and only those (a 5-minute poll: an hour or two)
                got = events.read_area(tenant, "sign_in_events", held._seen)
                if got is None:
                    self._held.pop(tenant, None)
                    return SignInLog(tenant, None)
                log = SignInLog.load(tenant, got, held)
                if log is not None and len(log._parts) > _MAX_PARTS:
                    log = _compacted(events, log)  # None: most hours would be read again: load whole (once)
            if log is None:
                got = events.read_area(tenant, "sign_in_events")
                if got is None:
                    self._held.pop(tenant, None)
                    return SignInLog(tenant, None)
                log = SignInLog.load(tenant, got)
                assert log is not None
                if held is not None:
                    log.adopt(held)
            self._held[tenant] = log
            return log


__all__ = ["SignInLog", "SignInLogs", "explain_sign_in", "parse_since", "requester_sign_ins", "sign_in_failures_summary"]
