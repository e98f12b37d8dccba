"""The emulated Microsoft Graph v1.0 (mounted at /v1.0): the subset entra-mcp reads, in Microsoft's shapes.

Every request goes: injected faults (latency, 503/504, 429, dropped connection) -> bearer token -> route ->
permission (the token's `roles`) -> resource-unit throttle -> handler. Handlers are plain functions of the tenant
and the query options that return (status, body, headers); `$batch` runs its items through the same path, each
throttled on its own. Errors use Graph's body `{"error": {"code", "message", "innerError": {...}}}`.
"""

from __future__ import annotations

import bisect
import json
import math
import uuid
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Awaitable, Callable, Iterable, MutableMapping
from urllib.parse import parse_qsl, urlsplit

import anyio

from entra_mcp.devtenant import graph_access
from entra_mcp.devtenant.delta import DeltaEngine, expire_all
from entra_mcp.devtenant.graph_account import account_route
from entra_mcp.devtenant.graph_signins import PERMISSION as SIGN_INS_READ
from entra_mcp.devtenant.graph_signins import emulation
from entra_mcp.devtenant.model import EmulatedTenant
from entra_mcp.devtenant.odata import (
    APP_ROLE_ASSIGNMENT,
    APPLICATION,
    ENTITY_BY_KIND,
    GROUP,
    SERVICE_PRINCIPAL,
    USER,
    EntityType,
    Filter,
    GraphFailure,
    bad_request,
    compile_filter,
    parse_bool_option,
    parse_options,
    parse_select,
    parse_top,
    project,
    seal,
    unseal,
)
from entra_mcp.devtenant.runtime import EmulatorRuntime
from entra_mcp.devtenant.throttle import limit_for, request_cost
from entra_mcp.logs import get_logger

log = get_logger("devtenant.graph")

JSON_TYPE = "application/json;odata.metadata=minimal;odata.streaming=true;IEEE754Compatible=false;charset=utf-8"
DEFAULT_PAGE = 100
MAX_BATCH = 20

# permission needed per data kind (any one of them)
USER_READ = frozenset({"User.Read.All", "User.ReadWrite.All", "Directory.Read.All", "Directory.ReadWrite.All"})
GROUP_READ = frozenset({"GroupMember.Read.All", "Group.Read.All", "Group.ReadWrite.All", "Directory.Read.All",
                        "Directory.ReadWrite.All"})
APP_READ = frozenset({"Application.Read.All", "Application.ReadWrite.All", "Directory.Read.All",
                      "Directory.ReadWrite.All"})
DOMAIN_READ = frozenset({"Domain.Read.All", "Domain.ReadWrite.All", "Directory.Read.All", "Directory.ReadWrite.All"})
ORG_READ = frozenset({"Organization.Read.All", "Organization.ReadWrite.All", "Directory.Read.All",
                      "Directory.ReadWrite.All"})
DEVICE_READ = frozenset({"Device.Read.All", "Directory.Read.All", "Directory.ReadWrite.All"})
READ_BY_KIND = {"user": USER_READ, "group": GROUP_READ, "servicePrincipal": APP_READ, "application": APP_READ,
                "device": DEVICE_READ}


def _now_graph_date() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")


@dataclass
class Caller:
    tenant: EmulatedTenant
    app_id: str
    roles: frozenset[str]
    token_id: str = ""  # the access token's `uti`: which client process sent a request (RequestLog.by_token)


@dataclass
class Reply:
    status: int
    body: dict[str, Any] | None
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class _Route:
    key: str  # route pattern for costs and skiptokens, e.g. "groups/{id}/members"
    permission: frozenset[str]
    run: Callable[[Caller, dict[str, str], dict[str, str]], Reply]


class GraphService:
    """The Graph v1.0 behaviour of one emulator (ASGI wrapping is `build_graph_app`)."""

    def __init__(self, runtime: EmulatorRuntime) -> None:
        self.runtime = runtime
        self.throttle = runtime.state.throttle
        self.delta = DeltaEngine(runtime.state.token_key, runtime.state.delta)
        self._injected_429 = 0
        self._closures: dict[tuple[str, str, bool, int], list[str]] = {}
        self._injected_5xx = 0

    # ----------------------------------------------------------------------------------------- plumbing
    @property
    def base(self) -> str:
        return self.runtime.base_url

    def error(self, status: int, code: str, message: str, headers: dict[str, str] | None = None,
              request_id: str | None = None) -> Reply:
        rid = request_id or str(uuid.uuid4())
        body = {"error": {"code": code, "message": message,
                          "innerError": {"date": _now_graph_date(), "request-id": rid, "client-request-id": rid}}}
        return Reply(status, body, dict(headers or {}))

    def authenticate(self, headers: dict[str, str]) -> Caller | Reply:
        auth = headers.get("authorization", "")
        scheme, _, token = auth.partition(" ")
        www = {"WWW-Authenticate": 'Bearer realm="", authorization_uri="https://login.microsoftonline.com/common/oauth2/authorize", client_id="00000003-0000-0000-c000-000000000000"'}
        if scheme.lower() != "bearer" or not token.strip():
            return self.error(401, "InvalidAuthenticationToken", "Access token is empty.", www)
        tokens = self.runtime.tokens
        if tokens is None:
            return self.error(401, "InvalidAuthenticationToken", "Access token validation failure.", www)
        from entra_mcp.devtenant.tokens import TokenRejected

        try:
            claims = tokens.verify_access_token(token.strip(), audience=self.base)
        except TokenRejected as exc:
            message = "Lifetime validation failed, the token is expired." if exc.expired else (
                exc.reason or "Access token validation failure. Invalid audience.")
            return self.error(401, "InvalidAuthenticationToken", message, www)
        tenant = self.runtime.state.tenants.get(str(claims.get("tid", "")))
        if tenant is None:
            return self.error(401, "InvalidAuthenticationToken", "Access token validation failure. Invalid tenant.", www)
        roles = claims.get("roles") or []
        app_id = str(claims.get("azp") or claims.get("appid") or "")
        return Caller(tenant, app_id, frozenset(r for r in roles if isinstance(r, str)), str(claims.get("uti") or ""))

    def injected_fault(self) -> Reply | None:
        """A counted 503/504 or 429 from the fault plan, or None."""
        faults = self.runtime.faults
        if faults.take("error_next"):
            self._injected_5xx += 1
            if self._injected_5xx % 2 == 1:
                return self.error(503, "serviceNotAvailable", "The service is temporarily unavailable. Please retry later.",
                                  {"Retry-After": "1"})
            return self.error(504, "UnknownError", "The gateway timed out.")
        if faults.take("throttle_next"):
            self._injected_429 += 1
            secs = max(0.001, faults.throttle_retry_after)
            retry = str(max(1, math.ceil(secs))) if self._injected_429 % 2 == 1 else f"{secs:.3f}"
            return self._throttled(retry, 0, "Tenant_Application/ReadWrite/injected")
        return None

    def _throttled(self, retry_after: str, cost: int, scope: str) -> Reply:
        return self.error(429, "TooManyRequests", "Please retry again later.", {
            "Retry-After": retry_after, "x-ms-throttle-scope": scope,
            "x-ms-throttle-information": "ResourceUnitLimitExceeded", "x-ms-resource-unit": str(cost)})

    # --------------------------------------------------------------------------------------------- entry
    async def handle(self, method: str, path: str, query: list[tuple[str, str]], headers: dict[str, str],
                     body: bytes, *, caller: Caller | None = None) -> Reply:
        """One Graph request (paths relative to /v1.0). `caller` is given for $batch items (already authenticated)."""
        request_id = headers.get("client-request-id") or str(uuid.uuid4())
        try:
            reply = await self._handle(method, path, query, headers, body, caller)
        except GraphFailure as exc:
            reply = self.error(exc.status, exc.code, exc.message, exc.headers, request_id)
        except Exception:  # a bug in the emulator: answer like Graph's 500, keep the trace in the log
            log.exception("emulated Graph failed on %s %s", method, path)
            reply = self.error(500, "UnknownError", "An internal server error occurred.", None, request_id)
        if reply.body is not None and "error" in reply.body:
            inner = reply.body["error"].setdefault("innerError", {})
            inner["request-id"] = inner["client-request-id"] = request_id
        reply.headers.setdefault("request-id", request_id)
        reply.headers.setdefault("client-request-id", request_id)
        return reply

    async def _handle(self, method: str, path: str, query: list[tuple[str, str]], headers: dict[str, str],
                      body: bytes, caller: Caller | None) -> Reply:
        segs = [s for s in path.split("/") if s]
        is_batch = len(segs) == 1 and segs[0].lower() == "$batch"
        if not is_batch:
            injected = self.injected_fault()
            if injected is not None:
                return injected
        if caller is None:
            who = self.authenticate(headers)
            if isinstance(who, Reply):
                return who
            caller = who
            self.runtime.requests.record_http(caller.token_id, headers.get("client-request-id", ""))
        if not is_batch:
            self.runtime.requests.record(caller.tenant.tenant_id, caller.token_id)  # $batch items: one by one
        if is_batch:
            if method != "POST":
                return self.error(405, "Request_BadRequest", "The $batch endpoint only accepts POST.")
            return await self.batch(caller, body, headers)
        access_reply = graph_access.handle(self, caller, method, segs, query, headers, body)  # devices, CA, owners
        if access_reply is not None:
            return access_reply
        if method != "GET":
            return self.error(405, "Request_BadRequest", f"The emulated Graph is read-only: {method} is not supported.")
        route = self.route(segs)
        opts = parse_options(query)
        missing = route.permission and not (route.permission & caller.roles)
        if missing:
            return self.error(403, "Authorization_RequestDenied", "Insufficient privileges to complete the operation.")
        if self.runtime.faults.throttling_enabled:
            top = None
            try:
                top = int(opts["top"]) if "top" in opts else None
            except ValueError:
                pass
            cost = request_cost(route.key, select="select" in opts, expand="expand" in opts, top=top)
            limit = limit_for(len(caller.tenant.users))
            d = self.throttle.charge(caller.app_id, caller.tenant.tenant_id, cost, limit)
            if not d.allowed:
                secs = d.retry_after_s
                retry = str(max(1, math.ceil(secs))) if secs >= 1 else f"{max(secs, 0.001):.3f}"
                return self._throttled(retry, cost, f"Tenant_Application/ReadWrite/{caller.tenant.tenant_id}/{caller.app_id}")
            reply = route.run(caller, opts, headers)
            reply.headers.setdefault("x-ms-resource-unit", str(cost))
            return reply
        return route.run(caller, opts, headers)

    # -------------------------------------------------------------------------------------------- routing
    def route(self, segs: list[str]) -> _Route:
        if not segs:
            raise bad_request("Invalid request: no resource segment.")
        head = segs[0].lower()
        n = len(segs)
        areas = {"users": ("users", USER_READ), "groups": ("groups", GROUP_READ),
                 "applications": ("applications", APP_READ), "serviceprincipals": ("servicePrincipals", APP_READ)}
        if head in areas:
            area, perm = areas[head]
            if n == 1:
                return _Route(area, perm, lambda c, o, h: self.list_area(c, area, o, h))
            if segs[1].lower() in ("delta", "delta()"):
                if n > 2:
                    raise self._no_segment(segs[2])
                return _Route(f"{area}/delta", perm, lambda c, o, h: self.delta_area(c, area, o, h))
            key = segs[1]
            if n == 2:
                return _Route(f"{area}/{{id}}", perm, lambda c, o, h: self.get_one(c, area, key, o))
            nav = segs[2]
            navs: dict[str, dict[str, Callable[[Caller, dict[str, str], dict[str, str]], Reply]]] = {
                "users": {
                    "manager": lambda c, o, h: self.manager(c, key, o),
                    "memberof": lambda c, o, h: self.member_of(c, key, o, h, transitive=False),
                    "transitivememberof": lambda c, o, h: self.member_of(c, key, o, h, transitive=True),
                },
                "groups": {
                    "members": lambda c, o, h: self.group_members(c, key, o, h, transitive=False),
                    "transitivemembers": lambda c, o, h: self.group_members(c, key, o, h, transitive=True),
                },
                "servicePrincipals": {
                    "approleassignedto": lambda c, o, h: self.assigned_to(c, key, o, h),
                },
            }
            fn = navs.get(area, {}).get(nav.lower())
            if fn is None or n > 3:
                raise self._no_segment(nav if fn is None else segs[3])
            canonical = {"manager": "manager", "memberof": "memberOf", "transitivememberof": "transitiveMemberOf",
                         "members": "members", "transitivemembers": "transitiveMembers",
                         "approleassignedto": "appRoleAssignedTo"}[nav.lower()]
            return _Route(f"{area}/{{id}}/{canonical}", perm, fn)
        if head == "domains" and n == 1:
            return _Route("domains", DOMAIN_READ, lambda c, o, h: self.domains(c, o))
        if head == "organization" and n == 1:
            return _Route("organization", ORG_READ, lambda c, o, h: self.organization(c, o))
        if head == "auditlogs" and n == 2 and segs[1].lower() == "signins":  # devtenant/graph_signins.py
            return _Route("auditLogs/signIns", SIGN_INS_READ, lambda c, o, h: Reply(*emulation(self.runtime).list(
                c.tenant, c.app_id, o, token_key=self.runtime.state.token_key, base=self.base, roles=c.roles)))
        found: _Route | None = account_route(self, segs)
        if found is not None:
            return found
        raise self._no_segment(segs[0] if head not in ("domains", "organization", "auditlogs") or n == 1 else segs[1])

    @staticmethod
    def _no_segment(seg: str) -> GraphFailure:
        return GraphFailure(400, "BadRequest", f"Resource not found for the segment '{seg}'.")

    @staticmethod
    def _not_found(key: str) -> GraphFailure:
        return GraphFailure(404, "Request_ResourceNotFound",
                            f"Resource '{key}' does not exist or one of its queried reference-property objects are not present.")

    def _ok(self, body: dict[str, Any], headers: dict[str, str] | None = None) -> Reply:
        return Reply(200, body, dict(headers or {}))

    def _context(self, what: str, select: list[str] | None = None) -> str:
        return f"{self.base}/v1.0/$metadata#{what}" + (f"({','.join(select)})" if select else "")

    # --------------------------------------------------------------------------------- signInActivity rules
    def _check_sign_in(self, caller: Caller, select: list[str] | None) -> bool:
        if not select or "signInActivity" not in select:
            return False
        if "AuditLog.Read.All" not in caller.roles:
            raise GraphFailure(403, "Authentication_MSGraphPermissionMissing",
                               "Calling principal does not have required MSGraph permissions AuditLog.Read.All")
        if not caller.tenant.premium:
            raise GraphFailure(403, "Authentication_RequestFromNonPremiumTenantOrB2CTenant",
                               "Neither tenant is B2C or tenant doesn't have premium license")
        return True

    # ---------------------------------------------------------------------------------------- collections
    def _paged(self, caller: Caller, route_key: str, opts: dict[str, str], headers: dict[str, str], *,
               entity: EntityType, ids: Callable[[], list[str]], get: Callable[[str], tuple[str, dict[str, Any]] | None],
               lookup: Callable[[Filter], list[str] | None] | None = None, typed: bool = False,
               allow_filter: bool = True, extra_select: frozenset[str] = frozenset(),
               expand: Callable[[dict[str, Any], str], None] | None = None, path: str = "",
               order: dict[str, Callable[[str], Any]] | None = None) -> Reply:
        """A Graph collection: $select/$filter/$search/$count/$top and $skiptoken paging over sorted `ids`.

        `get(id)` -> (kind, object) or None; `typed` adds @odata.type (directoryObject collections). `order`: the
        properties $orderby may name (property -> its value by id); without it the emulator pages in id order only."""
        first = "skiptoken" not in opts
        if "orderby" in opts and order is None:  # say so rather than ignore the option
            raise bad_request("Sorting not supported for current query.", "Request_UnsupportedQuery")
        if first:
            q = {k: opts[k] for k in ("select", "filter", "top", "search", "expand", "orderby") if k in opts}
            cursor: Any = ""
        else:
            tok = unseal(self.runtime.state.token_key, opts["skiptoken"])
            if tok is None or tok.get("k") != "ls" or tok.get("t") != caller.tenant.tenant_id or tok.get("r") != (path or route_key):
                raise bad_request("The $skiptoken is invalid or belongs to another query.", "Request_BadRequest")
            q, cursor = tok["q"], tok["c"]
        select = parse_select(q.get("select"), entity, extra_select)
        sign_in = self._check_sign_in(caller, select)
        top = parse_top(q.get("top"), maximum=500 if sign_in else 999)
        page = top or DEFAULT_PAGE
        eventual = headers.get("consistencylevel", "").lower() == "eventual"
        count = parse_bool_option("count", opts.get("count")) if first else False
        if count and not eventual:
            raise bad_request("$count is not currently supported without the header 'ConsistencyLevel: eventual'.",
                              "Request_BadRequest")
        flt: Filter | None = None
        if "filter" in q:
            if not allow_filter:
                raise bad_request("The $filter query option is not supported on this collection.", "Request_UnsupportedQuery")
            flt = compile_filter(q["filter"], entity)
            if flt.advanced and first and not (eventual and count):
                raise bad_request("Operators 'ne', 'not' and 'endswith' are advanced queries: send 'ConsistencyLevel: "
                                  "eventual' and $count=true.", "Request_UnsupportedQuery")
        search = self._compile_search(q["search"], eventual and first or not first) if "search" in q else None
        if "expand" in q and expand is None:
            raise bad_request(f"Could not find a navigation property named '{q['expand']}' to expand.", "Request_BadRequest")
        if "expand" in q and q["expand"].split("(")[0].strip().lower() != "manager":
            raise bad_request(f"Could not find a navigation property named '{q['expand']}' to expand.", "Request_BadRequest")
        sort = _order_key(q["orderby"], order) if "orderby" in q and order is not None else None
        tenant = caller.tenant
        with tenant.lock:
            candidates = lookup(flt) if (flt is not None and lookup is not None) else None
            all_ids = candidates if candidates is not None else ids()
            matches: Callable[[dict[str, Any]], bool] = lambda o: True  # noqa: E731
            if flt is not None or search is not None:
                f1 = flt.match if flt is not None else (lambda o: True)
                f2 = search if search is not None else (lambda o: True)
                matches = lambda o: f1(o) and f2(o)  # noqa: E731
            if sort is None:
                i = bisect.bisect_right(all_ids, cursor) if cursor else 0
            else:  # the cursor is the sort key of the last item served
                key, descending = sort
                all_ids = sorted(all_ids, key=key)
                at = tuple(cursor) if cursor else None
                if descending:
                    i = len(all_ids) - bisect.bisect_left(all_ids, at, key=key) if at is not None else 0
                    all_ids.reverse()
                else:
                    i = bisect.bisect_right(all_ids, at, key=key) if at is not None else 0
            out: list[dict[str, Any]] = []
            more = False
            last = cursor
            while i < len(all_ids):
                found = get(all_ids[i])
                i += 1
                if found is None or not matches(found[1]):
                    continue
                if len(out) == page:
                    more = True
                    break
                out.append(self._shape(caller, found[0], found[1], select, typed))
                if expand is not None and "expand" in q:
                    expand(out[-1], found[1]["id"])
                last = found[1]["id"] if sort is None else list(sort[0](found[1]["id"]))
            total = None
            if count:
                total = sum(1 for x in all_ids if (f := get(x)) is not None and matches(f[1]))
        path = path or route_key
        body: dict[str, Any] = {"@odata.context": self._context(path, select)}
        if total is not None:
            body["@odata.count"] = total
        body["value"] = out
        if more:
            skiptoken = seal(self.runtime.state.token_key, {"k": "ls", "t": tenant.tenant_id, "r": path, "q": q, "c": last})
            body["@odata.nextLink"] = f"{self.base}/v1.0/{path}?$skiptoken={skiptoken}"
        return self._ok(body)

    def _shape(self, caller: Caller, kind: str, obj: dict[str, Any], select: list[str] | None, typed: bool) -> dict[str, Any]:
        if typed:
            odata = {"@odata.type": f"#microsoft.graph.{kind}"}
            if not (READ_BY_KIND.get(kind, frozenset()) & caller.roles):
                return {**odata, "id": obj["id"]}  # limited information: no read rights on this type
            entity = ENTITY_BY_KIND.get(kind, USER)
            props = [p for p in select if p in entity.properties] if select is not None else None
            return {**odata, **project(obj, props, entity)}
        return project(obj, select, ENTITY_BY_KIND.get(kind, APP_ROLE_ASSIGNMENT))

    @staticmethod
    def _compile_search(raw: str, allowed: bool) -> Callable[[dict[str, Any]], bool]:
        if not allowed:
            raise bad_request("Request with $search query parameter only works through MSGraph with a special request "
                              "header: 'ConsistencyLevel: eventual'", "Request_UnsupportedQuery")
        text = raw.strip()
        clauses: list[tuple[str, str]] = []
        joiner = "AND"
        parts = [p.strip() for p in text.replace('" OR "', '"\x00OR\x00"').replace('" AND "', '"\x00AND\x00"').split("\x00")]
        for p in parts:
            if p in ("OR", "AND"):
                joiner = p
                continue
            if len(p) < 2 or not (p.startswith('"') and p.endswith('"')) or ":" not in p:
                raise bad_request(f"Syntax error: invalid $search clause '{p}': use \"property:text\".", "Request_BadRequest")
            prop, _, term = p[1:-1].partition(":")
            clauses.append((prop.strip(), term.strip().lower()))

        def one(o: dict[str, Any], prop: str, term: str) -> bool:
            v = o.get(prop)
            if not isinstance(v, str):
                return False
            low = v.lower()
            return low.startswith(term) or any(w.startswith(term) for w in low.replace(".", " ").replace("@", " ").split())

        if joiner == "OR":
            return lambda o: any(one(o, p, t) for p, t in clauses)
        return lambda o: all(one(o, p, t) for p, t in clauses)

    def list_area(self, caller: Caller, area: str, opts: dict[str, str], headers: dict[str, str]) -> Reply:
        tenant = caller.tenant
        entity = {"users": USER, "groups": GROUP, "applications": APPLICATION, "servicePrincipals": SERVICE_PRINCIPAL}[area]
        objs = tenant.area_objects(area)
        kind = {"users": "user", "groups": "group", "applications": "application", "servicePrincipals": "servicePrincipal"}[area]

        def get(oid: str) -> tuple[str, dict[str, Any]] | None:
            o = objs.get(oid)
            return (kind, o) if o is not None else None

        def lookup(flt: Filter) -> list[str] | None:
            if flt.lookup is None:
                return None
            prop, values = flt.lookup
            if prop == "id":
                return sorted({v for v in values if isinstance(v, str) and v in objs})
            if prop == "userPrincipalName" and area == "users":
                found = (tenant.user_by_upn(v) for v in values if isinstance(v, str))
                return sorted({u["id"] for u in found if u is not None})
            return None

        expand = self._expand_manager(caller) if area == "users" else None
        return self._paged(caller, area, opts, headers, entity=entity, ids=lambda: tenant.sorted_ids(area), get=get,
                           lookup=lookup, expand=expand)

    def _expand_manager(self, caller: Caller) -> Callable[[dict[str, Any], str], None]:
        def expand(out: dict[str, Any], uid: str) -> None:
            mgr = caller.tenant.users.get(caller.tenant.managers.get(uid, ""))
            if mgr is not None:
                out["manager"] = {"@odata.type": "#microsoft.graph.user", **project(mgr, None, USER)}
        return expand

    def get_one(self, caller: Caller, area: str, key: str, opts: dict[str, str]) -> Reply:
        tenant = caller.tenant
        entity = {"users": USER, "groups": GROUP, "applications": APPLICATION, "servicePrincipals": SERVICE_PRINCIPAL}[area]
        self._only(opts, ("select", "expand"))
        with tenant.lock:
            obj = tenant.user_by_key(key) if area == "users" else tenant.area_objects(area).get(key)
            if obj is None:
                raise self._not_found(key)
            select = parse_select(opts.get("select"), entity)
            self._check_sign_in(caller, select)
            out = {"@odata.context": self._context(f"{area}/$entity", select), **project(obj, select, entity)}
            if "expand" in opts:
                if area != "users" or opts["expand"].split("(")[0].strip().lower() != "manager":
                    raise bad_request(f"Could not find a navigation property named '{opts['expand']}' to expand.", "Request_BadRequest")
                self._expand_manager(caller)(out, obj["id"])
        return self._ok(out)

    @staticmethod
    def _only(opts: dict[str, str], allowed: Iterable[str]) -> None:
        for k in opts:
            if k not in allowed:
                raise bad_request(f"The query option '${k}' is not supported on this request.", "Request_BadRequest")

    def _user(self, caller: Caller, key: str) -> dict[str, Any]:
        user = caller.tenant.user_by_key(key)
        if user is None:
            raise self._not_found(key)
        return user

    def manager(self, caller: Caller, key: str, opts: dict[str, str]) -> Reply:
        self._only(opts, ("select",))
        tenant = caller.tenant
        with tenant.lock:
            user = self._user(caller, key)
            mgr = tenant.users.get(tenant.managers.get(user["id"], ""))
            if mgr is None:
                raise self._not_found("manager")
            select = parse_select(opts.get("select"), USER)
            out = {"@odata.context": self._context("directoryObjects/$entity"), "@odata.type": "#microsoft.graph.user",
                   **project(mgr, select, USER)}
        return self._ok(out)

    def _get_directory_object(self, tenant: EmulatedTenant) -> Callable[[str], tuple[str, dict[str, Any]] | None]:
        def get(oid: str) -> tuple[str, dict[str, Any]] | None:
            found = tenant.find(oid)
            if found is None:
                return None
            return {"users": "user", "groups": "group", "servicePrincipals": "servicePrincipal",
                    "applications": "application"}[found[0]], found[1]
        return get

    def _closure(self, tenant: EmulatedTenant, start: str, *, down: bool) -> list[str]:
        """Sorted ids of every transitive member of group `start` (down) or every group `start` is in (up).
        Cached per change-sequence number, so paging a big group does not walk it again for every page."""
        key = (tenant.tenant_id, start, down, tenant.changes.seq)
        hit = self._closures.get(key)
        if hit is not None:
            return hit
        seen: set[str] = set()
        queue = deque(tenant.members.get(start, {}) if down else tenant.member_of(start))
        while queue:
            oid = queue.popleft()
            if oid in seen or oid == start:
                continue
            seen.add(oid)
            if down:
                if oid in tenant.groups:
                    queue.extend(tenant.members.get(oid, {}))
            else:
                queue.extend(g for g in tenant.member_of(oid) if g not in seen)
        result = sorted(seen)
        if len(self._closures) >= 32:
            self._closures.pop(next(iter(self._closures)))
        self._closures[key] = result
        return result

    _DIRECTORY_SELECT = frozenset(USER.properties | GROUP.properties | SERVICE_PRINCIPAL.properties)

    def member_of(self, caller: Caller, key: str, opts: dict[str, str], headers: dict[str, str], *, transitive: bool) -> Reply:
        tenant = caller.tenant
        with tenant.lock:
            user = self._user(caller, key)
            uid = user["id"]
            if transitive:
                groups = self._closure(tenant, uid, down=False)
            else:
                groups = sorted(tenant.member_of(uid))
        nav = "transitiveMemberOf" if transitive else "memberOf"
        all_select = self._DIRECTORY_SELECT
        return self._paged(caller, f"users/{{id}}/{nav}", opts, headers, entity=_union_entity(all_select),
                           ids=lambda: groups, get=self._get_directory_object(tenant), typed=True, allow_filter=False,
                           path=f"users/{uid}/{nav}")

    def group_members(self, caller: Caller, gid: str, opts: dict[str, str], headers: dict[str, str], *, transitive: bool) -> Reply:
        tenant = caller.tenant
        with tenant.lock:
            if gid not in tenant.groups:
                raise self._not_found(gid)
            if transitive:
                members = self._closure(tenant, gid, down=True)
            else:
                members = tenant.sorted_members(gid)
        nav = "transitiveMembers" if transitive else "members"
        get_obj = self._get_directory_object(tenant)

        def get(oid: str) -> tuple[str, dict[str, Any]] | None:
            found = get_obj(oid)
            if found is None:
                kind = tenant.members.get(gid, {}).get(oid)
                return (kind, {"id": oid}) if kind == "device" else None
            return found

        return self._paged(caller, f"groups/{{id}}/{nav}", opts, headers, entity=_union_entity(self._DIRECTORY_SELECT),
                           ids=lambda: members, get=get, typed=True, allow_filter=False, path=f"groups/{gid}/{nav}")

    def assigned_to(self, caller: Caller, sp_id: str, opts: dict[str, str], headers: dict[str, str]) -> Reply:
        tenant = caller.tenant
        with tenant.lock:
            if sp_id not in tenant.service_principals:
                raise self._not_found(sp_id)
            assignments = {a["id"]: a for a in tenant.assignments_for_resource(sp_id)}
        return self._paged(caller, "servicePrincipals/{id}/appRoleAssignedTo", opts, headers, entity=APP_ROLE_ASSIGNMENT,
                           ids=lambda: sorted(assignments),
                           get=lambda a: ("appRoleAssignment", assignments[a]) if a in assignments else None,
                           path=f"servicePrincipals/{sp_id}/appRoleAssignedTo")

    def domains(self, caller: Caller, opts: dict[str, str]) -> Reply:
        self._only(opts, ("select",))
        doms = caller.tenant.domains
        sel = opts.get("select")
        names = [s.strip() for s in sel.split(",") if s.strip()] if sel else None
        value = [{k: d.get(k) for k in (["id", *[n for n in names if n != "id"]] if names else d)} for d in doms]
        return self._ok({"@odata.context": self._context("domains"), "value": value})

    def organization(self, caller: Caller, opts: dict[str, str]) -> Reply:
        self._only(opts, ("select",))
        org = caller.tenant.organization or {"id": caller.tenant.tenant_id, "displayName": caller.tenant.display_name}
        sel = opts.get("select")
        names = [s.strip() for s in sel.split(",") if s.strip()] if sel else None
        item = {k: org.get(k) for k in (["id", *[n for n in names if n != "id"]] if names else org)}
        return self._ok({"@odata.context": self._context("organization"), "value": [item]})

    # ---------------------------------------------------------------------------------------------- delta
    def delta_area(self, caller: Caller, area: str, opts: dict[str, str], headers: dict[str, str]) -> Reply:
        faults = self.runtime.faults
        if faults.expire_delta_tokens:  # consumed: every link issued before this moment is refused
            with faults.lock:
                if faults.expire_delta_tokens:
                    faults.expire_delta_tokens = False
                    expire_all(self.runtime.state.delta)
        minimal = "return=minimal" in headers.get("prefer", "").replace(" ", "").lower()
        status, body, extra = self.delta.respond(caller.tenant, area, opts, minimal=minimal, base_url=self.base,
                                                 now=self.runtime.state.clock.timestamp())
        return Reply(status, body, extra)

    # ---------------------------------------------------------------------------------------------- batch
    async def batch(self, caller: Caller, raw: bytes, headers: dict[str, str]) -> Reply:
        try:
            doc = json.loads(raw or b"{}")
        except ValueError:
            raise bad_request("Invalid batch payload format: the body is not JSON.") from None
        reqs = doc.get("requests") if isinstance(doc, dict) else None
        if not isinstance(reqs, list) or not reqs:
            raise bad_request("Invalid batch payload format: 'requests' must be a non-empty array.")
        if len(reqs) > MAX_BATCH:
            raise bad_request(f"Maximum number of requests in a batch is {MAX_BATCH}.")
        ids: list[str] = []
        for r in reqs:
            if not isinstance(r, dict) or not isinstance(r.get("id"), (str, int)) or not isinstance(r.get("url"), str) \
                    or not isinstance(r.get("method"), str):
                raise bad_request("Invalid batch payload format: every request needs id, method and url.")
            ids.append(str(r["id"]))
        if len(set(ids)) != len(ids):
            raise bad_request("Batch request ids must be unique.")
        by_id = {str(r["id"]): r for r in reqs}
        for r in reqs:
            deps = r.get("dependsOn") or []
            if not isinstance(deps, list) or any(str(d) not in by_id or str(d) == str(r["id"]) for d in deps):
                raise bad_request(f"Request '{r['id']}' depends on a request that is not in the batch.")
        results: dict[str, dict[str, Any]] = {}
        pending = list(ids)
        while pending:
            ready = [i for i in pending if all(str(d) in results for d in by_id[i].get("dependsOn") or [])]
            if not ready:
                raise bad_request("Batch dependencies form a cycle.")
            for rid in ready:
                pending.remove(rid)
                r = by_id[rid]
                failed = [str(d) for d in r.get("dependsOn") or [] if not 200 <= results[str(d)]["status"] < 300]
                if failed:
                    err = self.error(424, "FailedDependency", f"The request depends on request '{failed[0]}', which failed.")
                    results[rid] = {"id": rid, "status": 424, "headers": {"Content-Type": "application/json"}, "body": err.body}
                    continue
                url = r["url"]
                parts = urlsplit(url if "://" in url else "https://x/" + url.lstrip("/"))
                path = parts.path
                if path.lower().startswith("/v1.0/"):
                    path = path[5:]
                item_headers = {str(k).lower(): str(v) for k, v in (r.get("headers") or {}).items()}
                item = await self.handle(r["method"].upper(), path, parse_qsl(parts.query, keep_blank_values=True),
                                         item_headers, b"", caller=caller)
                resp_headers = {"Content-Type": "application/json"}
                resp_headers.update({k: v for k, v in item.headers.items() if k in ("Retry-After", "Location",
                                     "x-ms-throttle-scope", "x-ms-throttle-information", "x-ms-resource-unit",
                                     "Preference-Applied")})
                results[rid] = {"id": rid, "status": item.status, "headers": resp_headers, "body": item.body}
        # Graph answers in any order: the emulator answers in reverse so clients cannot lean on the order
        return self._ok({"responses": [results[i] for i in reversed(ids)]})


def _order_key(text: str, order: dict[str, Callable[[str], Any]]) -> tuple[Callable[[str], tuple[Any, ...]], bool]:
    """`$orderby=prop [asc|desc]` on one of `order`'s properties -> (sort key of an id, descending). The key sorts
    case-insensitively, objects without the value first, ties by id (Graph documents no collation: the emulator's
    own, stable across pages)."""
    parts = text.split()
    canon = next((p for p in order if parts and p.lower() == parts[0].lower()), None)
    if canon is None or len(parts) > 2 or (len(parts) == 2 and parts[1].lower() not in ("asc", "desc")):
        raise bad_request("Sorting not supported for current query.", "Request_UnsupportedQuery")
    value = order[canon]

    def key(oid: str) -> tuple[Any, ...]:
        v = value(oid)
        return (0, "", oid) if not isinstance(v, str) else (1, v.casefold(), oid)
    return key, len(parts) == 2 and parts[1].lower() == "desc"


def _union_entity(props: frozenset[str]) -> EntityType:
    return EntityType("directoryObject", props, None, {})


# ------------------------------------------------------------------------------------------------------- ASGI

Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]


class GraphApp:
    """ASGI app for /v1.0: injected latency and dropped connections wrap `GraphService.handle`."""

    def __init__(self, runtime: EmulatorRuntime) -> None:
        self.runtime = runtime
        self.service = GraphService(runtime)
        for tenant in list(runtime.state.tenants.values()):
            tenant.warm_indexes()

    async def __call__(self, scope: MutableMapping[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                msg = await receive()
                if msg["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif msg["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        faults = self.runtime.faults
        if faults.latency_ms > 0:
            await anyio.sleep(faults.latency_ms / 1000.0)
        path: str = scope["path"]
        root = scope.get("root_path", "")
        if root and path.startswith(root):
            path = path[len(root):]
        if path.startswith("/v1.0/") or path == "/v1.0":
            path = path[5:]
        body = b""
        more = True
        while more:
            msg = await receive()
            body += msg.get("body", b"")
            more = msg.get("more_body", False)
            if len(body) > 4_000_000:
                break
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        query = parse_qsl(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True)
        reply = await self.service.handle(scope["method"], path, query, headers, body)
        payload = b"" if reply.body is None else json.dumps(reply.body, separators=(",", ":")).encode()
        out_headers = [(b"content-type", JSON_TYPE.encode()), (b"content-length", str(len(payload)).encode())]
        out_headers += [(k.lower().encode("latin-1"), str(v).encode("latin-1")) for k, v in reply.headers.items()]
        await send({"type": "http.response.start", "status": reply.status, "headers": out_headers})
        if faults.take("drop_next") and len(payload) > 1:
            # half the body, then the connection goes away: the client sees an incomplete response
            await send({"type": "http.response.body", "body": payload[: len(payload) // 2], "more_body": True})
            return  # uvicorn closes a connection whose response never completed
        await send({"type": "http.response.body", "body": payload})


def build_graph_app(runtime: EmulatorRuntime) -> GraphApp:
    """The ASGI app server.py mounts at /v1.0 (routes see paths like "/users")."""
    return GraphApp(runtime)
