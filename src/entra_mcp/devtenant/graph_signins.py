"""The emulated `GET /v1.0/auditLogs/signIns` (docs/graph-facts-sign-ins.md): generated sign-in streams, events added
through the control API, and Microsoft's documented rules for reading them.

Rules served: newest first; `$top` up to 1,000 (the default); `@odata.nextLink` paging; `$filter` on createdDateTime
(ge/gt/le/lt), status/errorCode (eq/ne), userId, userPrincipalName, appId and ipAddress (eq), joined with `and`;
`$select`; an event is listed only once it has been ingested (createdDateTime + its ingestion delay) and while it is
inside the retention (30 days on a premium tenant); 403 with Microsoft's licence error on a tenant without
Entra ID P1/P2 and without AuditLog.Read.All (route permission); the reporting API's own throttle (5 requests per
10 s per app and tenant, Microsoft's published limit) with 429 + Retry-After.

The generated stream is a pure function of (tenant id, minute): each minute's events are drawn from a random
generator seeded with both, so a `large` tenant (~1,000,000 sign-ins a day) is never held in memory; failures and
successes are separate draws, so a failures-only query (`status/errorCode ne 0`) never builds the 95 % successes.
A page is computed on demand from the minutes it covers (its $skiptoken carries the last (time, id) listed), and
every event of a minute, ids included, comes from that minute's generator and lies inside that minute (a lockout
run starts early enough to end in it), so pages cut anywhere list exactly the stream generated whole. Only the
last _HELD_SLICES minutes of failures are kept; generating costs ~50 us of CPU per event (large: ~1.5 M events for a
7-day failure window plus a day of everything).
Traffic: ~10 sign-ins per user a day, 5 % failures (typo'd passwords, Smart Lockout runs, MFA interrupts and
denials, Conditional Access blocks with the policy's name, legacy-auth attempts, non-compliant devices, users not
assigned, expired passwords, disabled and unknown accounts, stale grants) and one password-spray wave from one IP
over many accounts, three hours before the emulator started.
"""

from __future__ import annotations

import bisect
import random
import re
import threading
import time
import uuid
import zlib
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from collections.abc import Collection
from functools import lru_cache
from typing import Any, Callable, Iterator

from entra_mcp.devtenant.model import EmulatedTenant
from entra_mcp.devtenant.odata import GraphFailure, bad_request, seal, unseal

PERMISSION = frozenset({"AuditLog.Read.All"})
DIRECTORY_READ_ALL = "Directory.Read.All"
DIRECTORY_READ = frozenset({DIRECTORY_READ_ALL, "Directory.ReadWrite.All"})  # also needed, as documented (see settings)
MAX_TOP = 1000
SLICE_S = 60
EVENTS_PER_USER_DAY = 10
FAILURE_SHARE = 0.05
SPRAY_IP = "203.0.113.66"
_NS = uuid.UUID("3c8e1f0a-5b7d-4e2a-9c61-0d2f4b8a7e35")
_DAY = 86400
# failure slices kept after a listing computed them (the next page, and the next poll over the same minutes, reuse
# them); successes (95 %) only for the last few minutes listed. 512 minutes of a large tenant's failures: ~18,000 events.
_HELD_SLICES = 512
_HELD_SUCCESS_SLICES = 4

# well-known first-party applications (appId, name) and the client apps modern sign-ins use
FIRST_PARTY = [
    ("00000002-0000-0ff1-ce00-000000000000", "Office 365 Exchange Online"),
    ("1fec8e78-bce4-4aaf-ab1b-5451cc387264", "Microsoft Teams"),
    ("4765445b-32c6-49b0-83e6-1d93765276ca", "OfficeHome"),
    ("00000003-0000-0ff1-ce00-000000000000", "Office 365 SharePoint Online"),
    ("c44b4083-3bb0-49c1-b47d-974e53cbdf3c", "Azure Portal"),
    ("27922004-5251-4030-b22d-91ecd9a37ea4", "Outlook Mobile"),
]
LEGACY_CLIENTS = ("IMAP4", "Authenticated SMTP", "Exchange ActiveSync", "POP3")
_OFFICE_CITY = {
    "Seattle HQ": ("Seattle", "Washington", "US"), "New York": ("New York", "New York", "US"),
    "London": ("London", "England", "GB"), "Berlin": ("Berlin", "Berlin", "DE"), "Copenhagen": ("Copenhagen", None, "DK"),
    "Paris": ("Paris", None, "FR"), "Madrid": ("Madrid", None, "ES"), "Warsaw": ("Warsaw", None, "PL"),
    "Reykjavík": ("Reykjavík", None, "IS"), "Shanghai": ("Shanghai", None, "CN"), "Bengaluru": ("Bengaluru", None, "IN"),
    "São Paulo": ("São Paulo", None, "BR"),
}

# failure kinds of the generated stream: (kind, weight)
_KINDS = [("typo", 36), ("lockout", 3), ("mfa_required", 10), ("mfa_denied", 8), ("ca_block", 7), ("legacy", 8),
          ("device", 6), ("not_assigned", 5), ("expired", 4), ("disabled", 4), ("unknown_user", 4), ("grant", 5)]
_KIND_NAMES = [k for k, _ in _KINDS]
_KIND_CUM = []
_acc = 0
for _k, _w in _KINDS:
    _acc += _w
    _KIND_CUM.append(_acc)

_STATUS = {
    0: (None, None),
    50126: ("Error validating credentials due to invalid username or password.", "The user didn't enter the right credentials."),
    50053: ("Account is locked because user tried to sign in too many times with an incorrect user ID or password.", None),
    50074: ("Strong Authentication is required.", "The user is required to complete multifactor authentication."),
    500121: ("Authentication failed during strong authentication request.", "MFA denied; user declined the authentication"),
    53003: ("Access has been blocked by Conditional Access policies. The access policy does not allow token issuance.", None),
    53000: ("Device is not in required device state: compliant. Conditional Access policy requires a compliant device, and the device is not compliant.", None),
    50105: ("The signed in user is not assigned to a role for the application.", None),
    50055: ("The password is expired.", None),
    50057: ("The user account is disabled.", None),
    50034: ("The user account does not exist in the directory.", None),
    50173: ("The provided grant has expired due to it being revoked, a fresh auth token is needed.", None),
}
_POLICIES = {
    "legacy": ("Block legacy authentication", ["Block"]),
    "ca_block": ("Block access from outside allowed countries", ["Block"]),
    "device": ("Require compliant device for corporate apps", ["RequireCompliantDevice"]),
    "mfa": ("Require MFA for all users", ["Mfa"]),
}


@dataclass
class SignInSettings:
    """Run-time knobs (control API `POST /_emulator/signins/settings`)."""

    generated: bool = True  # the generated stream (off: only events added through the control API)
    ingestion_delay_s: float = 30.0  # an event is listed this long after its createdDateTime ...
    late_share: float = 0.03  # ... except this share, listed late_delay_s after it (Microsoft: P99 5 minutes)
    late_delay_s: float = 240.0
    retention_days: float = 30.0  # premium tenants (Entra ID Free keeps 7 days, but cannot read the API at all)
    throttle_per_10s: int = 5  # reporting API: requests per 10 s per app and tenant (0: off)
    events_per_user_day: float = EVENTS_PER_USER_DAY
    # Microsoft documents AuditLog.Read.All AND Directory.Read.All for List signIns (docs/graph-facts-sign-ins.md).
    # Off by default: the emulator's sync app holds least-privilege grants per area, and Directory.Read.All would
    # also satisfy every directory route, so revoking one area's permission could no longer be emulated. On: a caller
    # without Directory.Read.All (or .ReadWrite.All) gets Graph's 403.
    require_directory_read: bool = False


def _iso(ts: float) -> str:
    """Graph's form for signIn times: seven fractional digits and Z."""
    whole = int(ts)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole)) + f".{int((ts - whole) * 1e7):07d}Z"


_TS = re.compile(r"^(\d{4})-(\d{2})-(\d{2})(?:T(\d{2}):(\d{2})(?::(\d{2})(\.\d+)?)?)?(Z|[+-]\d{2}:\d{2})?$")


def parse_time(text: str) -> float:
    """A DateTimeOffset literal of a $filter (2026-12-01T10:00:00Z, with or without fraction / quotes) -> epoch."""
    m = _TS.match(text.strip().strip("'"))
    if not m:
        raise bad_request(f"Invalid DateTimeOffset literal '{text}' in the filter.", "Request_UnsupportedQuery")
    y, mo, d, h, mi, s, frac, tz = m.groups()
    dt = datetime(int(y), int(mo), int(d), int(h or 0), int(mi or 0), int(s or 0), tzinfo=timezone.utc)
    if tz and tz != "Z":
        sign = 1 if tz[0] == "+" else -1
        dt -= sign * timedelta(hours=int(tz[1:3]), minutes=int(tz[4:6]))
    return dt.timestamp() + (float(frac) if frac else 0.0)


@dataclass
class Query:
    lower: float | None = None  # createdDateTime >= lower
    upper: float | None = None  # createdDateTime < upper (exclusive) or <= for le
    code_eq: int | None = None
    code_ne: int | None = None
    eq: dict[str, str] = field(default_factory=dict)  # userId / userPrincipalName / appId / ipAddress

    def kinds(self) -> tuple[bool, bool]:
        """(failures needed, successes needed)."""
        if self.code_eq is not None:
            return (self.code_eq != 0, self.code_eq == 0)
        if self.code_ne == 0:
            return (True, False)
        return (True, True)

    def match(self, e: dict[str, Any], ts: float) -> bool:
        if self.lower is not None and ts < self.lower:
            return False
        if self.upper is not None and ts > self.upper:
            return False
        code = e["status"]["errorCode"]
        if self.code_eq is not None and code != self.code_eq:
            return False
        if self.code_ne is not None and code == self.code_ne:
            return False
        for k, v in self.eq.items():
            if str(e.get(k) or "").lower() != v:
                return False
        return True


_CLAUSE = re.compile(
    r"^\s*(createdDateTime|status/errorCode|userId|userPrincipalName|appId|ipAddress)\s+(eq|ne|ge|gt|le|lt)\s+(.+?)\s*$",
    re.IGNORECASE)


def parse_filter(text: str | None) -> Query:
    q = Query()
    if not text:
        return q
    for part in re.split(r"\s+and\s+", text.strip(), flags=re.IGNORECASE):
        m = _CLAUSE.match(part)
        if not m:
            raise bad_request(f"Invalid filter clause: '{part.strip()}' is not supported on auditLogs/signIns by this "
                              "emulator (createdDateTime ge/gt/le/lt, status/errorCode eq/ne, userId/userPrincipalName/"
                              "appId/ipAddress eq).", "Request_UnsupportedQuery")
        prop, op, value = m.group(1), m.group(2).lower(), m.group(3)
        lp = prop.lower()
        if lp == "createddatetime":
            ts = parse_time(value)
            if op in ("ge", "gt"):
                q.lower = max(q.lower or ts, ts + (1e-7 if op == "gt" else 0))
            elif op in ("le", "lt"):
                q.upper = min(q.upper if q.upper is not None else ts, ts - (1e-7 if op == "lt" else 0))
            else:
                raise bad_request(f"Operator '{op}' is not supported on createdDateTime.", "Request_UnsupportedQuery")
        elif lp == "status/errorcode":
            try:
                n = int(value)
            except ValueError:
                raise bad_request(f"status/errorCode needs an integer, got {value}.", "Request_UnsupportedQuery") from None
            if op == "eq":
                q.code_eq = n
            elif op == "ne":
                q.code_ne = n
            else:
                raise bad_request(f"Operator '{op}' is not supported on status/errorCode.", "Request_UnsupportedQuery")
        else:
            if op != "eq" or not (value.startswith("'") and value.endswith("'")):
                raise bad_request(f"{prop} supports only eq with a quoted string.", "Request_UnsupportedQuery")
            canonical = {"userid": "userId", "userprincipalname": "userPrincipalName", "appid": "appId",
                         "ipaddress": "ipAddress"}[lp]
            q.eq[canonical] = value[1:-1].replace("''", "'").lower()
    return q


class _Cast:
    """What a tenant's generated stream draws from: users, apps, offices (built once per tenant)."""

    def __init__(self, tenant: EmulatedTenant, start: float) -> None:
        with tenant.lock:
            users = [tenant.users[k] for k in sorted(tenant.users)]
            sps = [tenant.service_principals[k] for k in sorted(tenant.service_principals)]
        self.enabled = [(u["id"], u["userPrincipalName"], u.get("displayName"), u.get("officeLocation")) for u in users
                        if u.get("accountEnabled") and u.get("userType") != "Guest"] or [("", "nobody@invalid", None, None)]
        self.disabled = [(u["id"], u["userPrincipalName"], u.get("displayName"), u.get("officeLocation")) for u in users
                         if not u.get("accountEnabled")] or self.enabled[:1]
        own = [(sp["appId"], sp["displayName"]) for sp in sps
               if sp.get("appOwnerOrganizationId") == tenant.tenant_id and sp.get("servicePrincipalType") == "Application"
               and sp.get("accountEnabled", True)]
        required = {sp["appId"] for sp in sps if sp.get("appRoleAssignmentRequired")}
        self.assigned = [a for a in own if a[0] in required][:6] \
            or own[:3] or FIRST_PARTY[:1]
        self.apps = FIRST_PARTY + own[:6]
        self.domain = tenant.domain
        self.tid = tenant.tenant_id
        # the one spray wave: 20 minutes, three hours before the emulator started (on a minute boundary)
        self.spray_from = (int(start) // SLICE_S - 180) * SLICE_S
        self.spray_to = self.spray_from + 20 * 60
        self.daily = max(1.0, len(users) * EVENTS_PER_USER_DAY)


@lru_cache(maxsize=1 << 18)
def _home_ip(uid: str) -> str:
    h = zlib.crc32(uid.encode())
    return f"198.18.{(h >> 8) % 256}.{h % 254 + 1}"


@lru_cache(maxsize=256)
def _policy_id(name: str) -> str:
    return str(uuid.uuid5(_NS, f"policy/{name}"))


def _office_ip(office: str | None) -> str:
    return f"192.0.2.{(sum(map(ord, office or '')) % 200) + 10}"


class TenantSignIns:
    """One tenant's sign-in log: the generated stream plus events added through the control API."""

    def __init__(self, tenant: EmulatedTenant, settings: SignInSettings, start: float) -> None:
        self.tenant = tenant
        self.settings = settings
        self.start = start
        self._cast: _Cast | None = None
        self._lock = threading.Lock()
        self.added: list[tuple[float, str, dict[str, Any], float]] = []  # (created ts, id, event, visible ts), sorted
        self._slice_cache: Callable[[int, bool], list[tuple[float, str, dict[str, Any], float]]]
        self._success_cache: Callable[[int, bool], list[tuple[float, str, dict[str, Any], float]]]
        self.reset_cache()

    def reset_cache(self) -> None:
        """Forget the generated minutes (settings change the stream)."""
        self._slice_cache = lru_cache(maxsize=_HELD_SLICES)(self._slice_uncached)
        # a page of 1,000 successes ends inside a minute that the next page starts from: keep the last few
        self._success_cache = lru_cache(maxsize=_HELD_SUCCESS_SLICES)(self._slice_uncached)

    @property
    def cast(self) -> _Cast:
        if self._cast is None:
            self._cast = _Cast(self.tenant, self.start)
        return self._cast

    # ---- the generated stream ----
    def _rate(self, failures: bool) -> float:
        per_slice = self.cast.daily * self.settings.events_per_user_day / EVENTS_PER_USER_DAY * SLICE_S / _DAY
        return per_slice * (FAILURE_SHARE if failures else 1 - FAILURE_SHARE)

    def _slice_uncached(self, n: int, failures: bool) -> list[tuple[float, str, dict[str, Any], float]]:
        c = self.cast
        rng = random.Random(f"{c.tid}/{n}/{'f' if failures else 's'}")
        rate = self._rate(failures)
        count = int(rate) + (1 if rng.random() < rate - int(rate) else 0)
        base = n * SLICE_S
        out: list[tuple[float, str, dict[str, Any], float]] = []
        late_share, late_delay, delay = self.settings.late_share, self.settings.late_delay_s, self.settings.ingestion_delay_s

        minute = _iso(base)[:17]  # "YYYY-MM-DDTHH:MM:" of the slice: every event of the slice lies inside it

        def add(ev: dict[str, Any], ts: float) -> None:
            h = f"{rng.getrandbits(128):032x}"
            ev["id"] = f"{h[:8]}-{h[8:12]}-4{h[13:16]}-a{h[17:20]}-{h[20:32]}"
            h = f"{rng.getrandbits(128):032x}"
            ev["correlationId"] = f"{h[:8]}-{h[8:12]}-4{h[13:16]}-b{h[17:20]}-{h[20:32]}"
            sec = ts - base
            ev["createdDateTime"] = f"{minute}{int(sec):02d}.{int((sec - int(sec)) * 1e7):07d}Z" if 0 <= sec < SLICE_S else _iso(ts)
            late = rng.random() < late_share
            out.append((ts, ev["id"], ev, ts + (late_delay if late else delay)))

        for _ in range(count):
            ts = base + rng.random() * SLICE_S
            user = c.enabled[rng.randrange(len(c.enabled))]
            if not failures:
                app = c.apps[rng.randrange(len(c.apps))]
                add(self._event(user, app, 0, rng, office=rng.random() < 0.7), ts)
                continue
            kind = _KIND_NAMES[bisect.bisect_left(_KIND_CUM, rng.random() * _KIND_CUM[-1])]
            for ev, t in self._failure(kind, user, rng, ts):
                add(ev, t)
        if failures and c.spray_from <= base < c.spray_to:
            # the spray: one IP, a different account each few seconds, the same few passwords
            for k in range(max(5, min(60, len(c.enabled) // 2))):
                user = c.enabled[rng.randrange(len(c.enabled))]
                ev = self._event(user, FIRST_PARTY[0], 50126, rng, ip=SPRAY_IP, client="Authenticated SMTP",
                                 location=("Amsterdam", None, "NL"))
                add(ev, base + k * SLICE_S / 60.0 + rng.random())
        out.sort(key=lambda x: (x[0], x[1]), reverse=True)
        return out

    def _failure(self, kind: str, user: tuple[Any, ...], rng: random.Random, ts: float) -> Iterator[tuple[dict[str, Any], float]]:
        c = self.cast
        app = c.apps[rng.randrange(len(c.apps))]
        if kind == "typo":
            yield self._event(user, app, 50126, rng), ts
        elif kind == "lockout":
            ts = min(ts, (ts // SLICE_S + 1) * SLICE_S - 23)  # the whole run inside its slice (pages cut between slices)
            for k in range(10):
                yield self._event(user, app, 50126, rng), ts + k * 2
            yield self._event(user, app, 50053, rng), ts + 22
        elif kind == "mfa_required":
            yield self._event(user, app, 50074, rng, policy="mfa", ca="failure"), ts
        elif kind == "mfa_denied":
            yield self._event(user, app, 500121, rng, policy="mfa", ca="failure"), ts
        elif kind == "ca_block":
            yield self._event(user, app, 53003, rng, policy="ca_block", ca="failure", ip=f"185.220.{rng.randrange(256)}.{rng.randrange(1, 255)}",
                              location=("Unknown", None, "RU")), ts
        elif kind == "legacy":
            yield self._event(user, FIRST_PARTY[0], 53003, rng, policy="legacy", ca="failure",
                              client=LEGACY_CLIENTS[rng.randrange(len(LEGACY_CLIENTS))]), ts
        elif kind == "device":
            yield self._event(user, app, 53000, rng, policy="device", ca="failure", compliant=False), ts
        elif kind == "not_assigned":
            yield self._event(user, c.assigned[rng.randrange(len(c.assigned))], 50105, rng), ts
        elif kind == "expired":
            yield self._event(user, app, 50055, rng), ts
        elif kind == "disabled":
            yield self._event(c.disabled[rng.randrange(len(c.disabled))], app, 50057, rng), ts
        elif kind == "unknown_user":
            name = f"{rng.choice(['admin', 'test', 'j.smith', 'info', 'hr', 'scanner'])}@{c.domain}"
            yield self._event(("", name, None, None), app, 50034, rng), ts
        else:
            yield self._event(user, app, 50173, rng, client="Mobile Apps and Desktop clients"), ts

    def _event(self, user: tuple[Any, ...], app: tuple[str, str], code: int, rng: random.Random, *, office: bool = False,
               ip: str | None = None, client: str | None = None, policy: str | None = None, ca: str | None = None,
               location: tuple[str | None, str | None, str] | None = None, compliant: bool | None = True) -> dict[str, Any]:
        uid, upn, name, office_name = user
        if ip is None:
            ip = _office_ip(office_name) if office or not uid else _home_ip(uid)
        city, state, country = location or _OFFICE_CITY.get(office_name or "", ("Seattle", "Washington", "US"))
        reason, details = _STATUS.get(code, ("Other.", None))
        policies = []
        if policy is not None:
            pname, grants = _POLICIES[policy]
            policies.append({"id": _policy_id(pname), "displayName": pname,
                             "enforcedGrantControls": grants, "enforcedSessionControls": [], "result": ca or "failure"})
        return {
            "userDisplayName": name, "userPrincipalName": upn, "userId": uid or "00000000-0000-0000-0000-000000000000",
            "appId": app[0], "appDisplayName": app[1], "ipAddress": ip,
            "clientAppUsed": client or ("Browser" if rng.random() < 0.6 else "Mobile Apps and Desktop clients"),
            "conditionalAccessStatus": ca or ("success" if code == 0 and rng.random() < 0.5 else "notApplied"),
            "isInteractive": True, "riskDetail": "none", "riskLevelAggregated": "none", "riskLevelDuringSignIn": "none",
            "riskState": "none", "riskEventTypes_v2": [], "resourceDisplayName": app[1], "resourceId": app[0],
            "status": {"errorCode": code, "failureReason": reason, "additionalDetails": details},
            "deviceDetail": {"deviceId": "", "displayName": None, "operatingSystem": "Windows 10", "browser": "Edge 120.0.0",
                             "isCompliant": compliant, "isManaged": compliant, "trustType": None},
            "location": {"city": city, "state": state, "countryOrRegion": country,
                         "geoCoordinates": {"altitude": None, "latitude": None, "longitude": None}},
            "appliedConditionalAccessPolicies": policies,
        }

    # ---- events added through the control API ----
    def add(self, events: list[dict[str, Any]], now: float) -> list[dict[str, Any]]:
        made = []
        for raw in events:
            if not isinstance(raw, dict):
                raise ValueError("each sign-in event must be an object")
            ev = self._complete(raw, now)
            created = parse_time(ev["createdDateTime"])
            visible = now + float(raw.get("delaySeconds", 0)) if "delaySeconds" in raw else max(now, created)
            with self._lock:
                bisect.insort(self.added, (created, ev["id"], ev, visible), key=lambda x: (x[0], x[1]))
            made.append(ev)
        return made

    def _complete(self, raw: dict[str, Any], now: float) -> dict[str, Any]:
        t = self.tenant
        key = raw.get("user") or raw.get("userId") or raw.get("userPrincipalName")
        with t.lock:
            u = t.user_by_key(str(key)) if key else None
        if key and u is None and "userPrincipalName" not in raw:
            raise ValueError(f"no user '{key}' in tenant {t.domain} (give userPrincipalName for a user who does not exist)")
        app_key = str(raw.get("app") or raw.get("appId") or FIRST_PARTY[0][0])
        app = next((a for a in self.cast.apps + self.cast.assigned if app_key in a or app_key.lower() == a[1].lower()), None)
        if app is None:
            with t.lock:
                sp = next((s for s in t.service_principals.values() if app_key in (s["appId"], s["id"]) or app_key.lower() == str(s["displayName"]).lower()), None)
            if sp is None:
                raise ValueError(f"no application '{app_key}' in tenant {t.domain}")
            app = (sp["appId"], sp["displayName"])
        code = int(raw.get("errorCode", raw.get("status", {}).get("errorCode", 0) if isinstance(raw.get("status"), dict) else 0))
        user = (u["id"], u["userPrincipalName"], u.get("displayName"), u.get("officeLocation")) if u else \
            ("", str(raw.get("userPrincipalName") or f"unknown@{t.domain}"), None, None)
        rng = random.Random(f"{raw}")
        ev = self._event(user, app, code, rng, ip=raw.get("ipAddress"), client=raw.get("clientAppUsed"),
                         compliant=raw.get("isCompliant", True))
        if raw.get("policy"):
            ev["appliedConditionalAccessPolicies"] = [{"id": str(uuid.uuid5(_NS, f"policy/{raw['policy']}")),
                                                       "displayName": raw["policy"], "enforcedGrantControls": list(raw.get("grantControls") or ["Block"]),
                                                       "enforcedSessionControls": [], "result": raw.get("policyResult", "failure")}]
            ev["conditionalAccessStatus"] = "failure"
        if raw.get("failureReason") is not None:
            ev["status"]["failureReason"] = raw["failureReason"]
        if raw.get("additionalDetails") is not None:
            ev["status"]["additionalDetails"] = raw["additionalDetails"]
        created = raw.get("createdDateTime")
        ts = parse_time(created) if isinstance(created, str) else now - float(raw.get("secondsAgo", 0))
        ev["createdDateTime"] = _iso(ts)
        ev["id"] = str(raw.get("id") or uuid.uuid4())
        ev["correlationId"] = str(uuid.uuid4())
        return ev

    # ---- listing ----
    def events(self, q: Query, now: float, after: tuple[float, str] | None) -> Iterator[tuple[float, str, dict[str, Any]]]:
        """Matching, ingested events inside the retention, newest first, strictly after the cursor `after`."""
        floor = now - self.settings.retention_days * _DAY
        lower = max(floor, q.lower if q.lower is not None else floor)
        upper = min(now, q.upper if q.upper is not None else now)
        if after is not None:
            upper = min(upper, after[0])
        fails, succs = q.kinds()
        with self._lock:
            added = [a for a in self.added if lower <= a[0] <= upper]
        added.sort(key=lambda x: (x[0], x[1]), reverse=True)
        ai = 0
        n = int(upper // SLICE_S)
        stop = int(lower // SLICE_S)
        while n >= stop:
            batch: list[tuple[float, str, dict[str, Any], float]] = []
            if self.settings.generated:
                if fails:
                    batch.extend(self._slice_cache(n, True))
                if succs:
                    batch.extend(self._success_cache(n, False))
            while ai < len(added) and added[ai][0] >= n * SLICE_S:
                batch.append(added[ai])
                ai += 1
            if fails and succs or len(batch) > 1:
                batch.sort(key=lambda x: (x[0], x[1]), reverse=True)
            for ts, eid, ev, visible in batch:
                if visible > now or ts > upper or ts < lower:
                    continue
                if after is not None and (ts, eid) >= after:
                    continue
                if q.match(ev, ts):
                    yield ts, eid, ev
            n -= 1


class _ReportsThrottle:
    """The reporting API's own limit: `per_10s` requests per 10 s per (app, tenant), a sliding window."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._seen: dict[tuple[str, str], list[float]] = {}

    def check(self, key: tuple[str, str], per_10s: int, now: float) -> float | None:
        """None when allowed (and counted), else seconds until a slot frees."""
        if per_10s <= 0:
            return None
        with self._lock:
            seen = [t for t in self._seen.get(key, []) if now - t < 10.0]
            if len(seen) >= per_10s:
                self._seen[key] = seen
                return 10.0 - (now - seen[0])
            seen.append(now)
            self._seen[key] = seen
            return None

    def reset(self) -> None:
        with self._lock:
            self._seen.clear()


class SignInEmulation:
    """Every tenant's sign-in log of one emulator, its settings and the reporting throttle."""

    def __init__(self, clock_now: Callable[[], float]) -> None:
        self.settings = SignInSettings()
        self.throttle = _ReportsThrottle()
        self._now = clock_now
        self._start = clock_now()
        self._logs: dict[str, TenantSignIns] = {}
        self._lock = threading.Lock()

    def log(self, tenant: EmulatedTenant) -> TenantSignIns:
        with self._lock:
            t = self._logs.get(tenant.tenant_id)
            if t is None:
                t = self._logs[tenant.tenant_id] = TenantSignIns(tenant, self.settings, self._start)
            return t

    def list(self, tenant: EmulatedTenant, app_id: str, opts: dict[str, str], *, token_key: bytes, base: str,
             roles: Collection[str] = (DIRECTORY_READ_ALL,)) -> tuple[int, dict[str, Any], dict[str, str]]:
        """One page of GET /auditLogs/signIns as (status, body, headers); errors raise GraphFailure. `roles`: the
        caller's application permissions (the route itself already required AuditLog.Read.All)."""
        if self.settings.require_directory_read and not DIRECTORY_READ & set(roles):
            raise GraphFailure(403, "Authorization_RequestDenied", "Insufficient privileges to complete the operation.")
        wait = self.throttle.check((app_id, tenant.tenant_id), self.settings.throttle_per_10s, time.monotonic())
        if wait is not None:
            raise GraphFailure(429, "TooManyRequests", "Too many requests.", {
                "Retry-After": str(max(1, int(wait + 0.999))),
                "x-ms-throttle-scope": f"Tenant_Application/Read/{tenant.tenant_id}/{app_id}",
                "x-ms-throttle-information": "ReportsRequestLimitExceeded"})
        if not tenant.premium:
            raise GraphFailure(403, "Authentication_RequestFromNonPremiumTenantOrB2CTenant",
                               "Neither tenant is B2C or tenant doesn't have premium license")
        if "orderby" in opts and opts["orderby"].replace(" ", "").lower() not in ("createddatetimedesc", "createddatetime%20desc"):
            raise bad_request("Sorting is supported only by createdDateTime desc on auditLogs/signIns.", "Request_UnsupportedQuery")
        now = self._now()
        if "skiptoken" in opts:
            tok = unseal(token_key, opts["skiptoken"])
            if tok is None or tok.get("k") != "si" or tok.get("t") != tenant.tenant_id:
                raise bad_request("The $skiptoken is invalid or belongs to another query.", "Request_BadRequest")
            q_opts, after = tok["q"], (float(tok["c"][0]), str(tok["c"][1]))
            now = float(tok["n"])  # the first page's moment: later pages see the same log
        else:
            q_opts = {k: opts[k] for k in ("filter", "top", "select") if k in opts}
            after = None
        try:
            top = int(q_opts.get("top", MAX_TOP))
        except ValueError:
            raise bad_request(f"Invalid value '{q_opts.get('top')}' for $top.") from None
        if not 1 <= top <= MAX_TOP:
            raise bad_request(f"Invalid page size specified: '{top}'. Must be between 1 and {MAX_TOP} inclusive.")
        q = parse_filter(q_opts.get("filter"))
        select = [s.strip() for s in q_opts["select"].split(",") if s.strip()] if q_opts.get("select") else None
        out: list[dict[str, Any]] = []
        last: tuple[float, str] | None = None
        more = False
        for ts, eid, ev in self.log(tenant).events(q, now, after):
            if len(out) == top:
                more = True
                break
            out.append({k: ev[k] for k in select if k in ev} | {"id": ev["id"]} if select else dict(ev))
            last = (ts, eid)
        body: dict[str, Any] = {"@odata.context": f"{base}/v1.0/$metadata#auditLogs/signIns"}
        if more and last is not None:
            skiptoken = seal(token_key, {"k": "si", "t": tenant.tenant_id, "q": q_opts, "c": [last[0], last[1]], "n": now})
            body["@odata.nextLink"] = f"{base}/v1.0/auditLogs/signIns?$skiptoken={skiptoken}"
        body["value"] = out
        return 200, body, {}

    def set_settings(self, changes: dict[str, Any]) -> dict[str, Any]:
        for key, value in changes.items():
            if not hasattr(self.settings, key):
                raise ValueError(f"unknown sign-in setting '{key}'; known: {', '.join(sorted(vars(self.settings)))}")
            current = getattr(self.settings, key)
            if isinstance(current, bool):
                if not isinstance(value, bool):
                    raise ValueError(f"'{key}' needs true or false")
            elif not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0:
                raise ValueError(f"'{key}' needs a number >= 0")
            setattr(self.settings, key, type(current)(value))
        with self._lock:
            for log in self._logs.values():
                log.reset_cache()
        self.throttle.reset()
        return dict(vars(self.settings))


def emulation(runtime: Any) -> SignInEmulation:
    """The sign-in emulation of a running emulator (created on first use; shared by Graph and the control API)."""
    em = getattr(runtime, "_sign_ins", None)
    if em is None:
        em = SignInEmulation(lambda: runtime.state.clock.timestamp())
        setattr(runtime, "_sign_ins", em)
    return em


__all__ = ["PERMISSION", "SPRAY_IP", "SignInEmulation", "SignInSettings", "emulation", "parse_filter", "parse_time"]
