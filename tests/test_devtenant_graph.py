"""The emulated Graph v1.0 over real HTTPS: Microsoft's shapes for lists, paging, filters, errors, permissions,
throttling, injected faults, $batch and the control API (facts in docs/graph-facts-directory.md)."""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest

from entra_mcp.devtenant.faults import FaultPlan
from entra_mcp.devtenant.odata import USER_DEFAULT
from entra_mcp.devtenant.server import RunningEmulator
from entra_mcp.devtenant.throttle import ResourceUnitThrottle, limit_for, request_cost
from tests._graph_fixtures import control, graph, mutate, pages

EVENTUAL = {"ConsistencyLevel": "eventual"}


def assert_error(r: httpx.Response, status: int, code: str, message: str | None = None) -> dict[str, Any]:
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["code"] == code
    if message is not None:
        assert err["message"] == message
    assert err["innerError"]["request-id"] and err["innerError"]["date"]
    return dict(err)


@pytest.fixture(scope="module")
def client(emulator: RunningEmulator) -> Any:
    with graph(emulator) as c:
        yield c


# --------------------------------------------------------------------------------------------- lists and paging

def test_users_default_properties_unless_select(client: httpx.Client) -> None:
    user = client.get("/users").json()["value"][0]
    assert set(user) == set(USER_DEFAULT)
    assert "accountEnabled" not in user
    picked = client.get("/users", params={"$select": "id,accountEnabled,userType,proxyAddresses"}).json()["value"][0]
    assert set(picked) == {"id", "accountEnabled", "userType", "proxyAddresses"}
    r = client.get("/users", params={"$select": "displayName,nope"})
    assert_error(r, 400, "Request_BadRequest", "Could not find a property named 'nope' on type 'microsoft.graph.user'.")


def test_top_bounds_and_skip(client: httpx.Client) -> None:
    for bad in ("0", "1000", "x"):
        r = client.get("/users", params={"$top": bad})
        assert_error(r, 400, "Request_BadRequest", f"Invalid page size specified: '{bad}'. Must be between 1 and 999 inclusive.")
    assert client.get("/users", params={"$top": "999"}).status_code == 200
    r = client.get("/users", params={"$select": "signInActivity", "$top": "501"})
    assert_error(r, 400, "Request_BadRequest", "Invalid page size specified: '501'. Must be between 1 and 500 inclusive.")
    assert client.get("/users", params={"$select": "signInActivity", "$top": "500"}).status_code == 200
    assert_error(client.get("/users", params={"$skip": "5"}), 400, "Request_BadRequest")
    assert_error(client.get("/users", params={"$bogus": "1"}), 400, "BadRequest", "Unrecognized query argument specified: '$bogus'.")
    assert_error(client.get("/users", params={"$orderby": "displayName"}), 400, "Request_UnsupportedQuery")


def test_paging_walks_every_object_once(emulator: RunningEmulator, client: httpx.Client) -> None:
    all_pages = pages(client, "/users", {"$top": "7", "$count": "true", "$select": "id,displayName"}, EVENTUAL)
    tenant = emulator.tenant()
    assert len(all_pages) == -(-len(tenant.users) // 7)
    assert all_pages[0]["@odata.count"] == len(tenant.users)
    assert all("@odata.count" not in p for p in all_pages[1:])
    ids = [u["id"] for p in all_pages for u in p["value"]]
    assert len(ids) == len(set(ids)) and set(ids) == set(tenant.users)
    assert all(set(u) == {"id", "displayName"} for p in all_pages for u in p["value"]), "$select travels in the token"
    nxt = all_pages[0]["@odata.nextLink"]
    assert nxt.startswith(f"{emulator.graph_url}/v1.0/users?") and "$skiptoken=" in nxt
    # default page size is 100
    groups = pages(client, "/groups")
    assert sum(len(p["value"]) for p in groups) == len(tenant.groups)
    assert len(groups[0]["value"]) == min(100, len(tenant.groups))


def test_count_needs_consistency_level(client: httpx.Client) -> None:
    assert_error(client.get("/users", params={"$count": "true"}), 400, "Request_BadRequest")
    r = client.get("/users", params={"$search": '"displayName:a"'})
    assert_error(r, 400, "Request_UnsupportedQuery")


def test_filter_forms(emulator: RunningEmulator, client: httpx.Client) -> None:
    tenant = emulator.tenant()
    users = list(tenant.users.values())
    u = next(x for x in users if x.get("mail") and x.get("proxyAddresses"))

    def ids(flt: str, headers: dict[str, str] | None = None, **extra: str) -> set[str]:
        got = pages(client, "/users", {"$filter": flt, "$select": "id", **extra}, headers)
        return {x["id"] for p in got for x in p["value"]}

    assert ids(f"userPrincipalName eq '{u['userPrincipalName'].upper()}'") == {u["id"]}
    assert ids(f"mail eq '{u['mail']}'") == {u["id"]}
    two = [users[0]["id"], users[1]["id"]]
    assert ids(f"id in ('{two[0]}', '{two[1]}')") == set(two)
    prefix = u["displayName"][:2]
    assert ids(f"startswith(displayName,'{prefix}')") == {x["id"] for x in users if x["displayName"].lower().startswith(prefix.lower())}
    disabled = {x["id"] for x in users if x.get("accountEnabled") is False}
    assert disabled and ids("accountEnabled eq false") == disabled
    alias = next(p for p in u["proxyAddresses"])
    assert ids(f"proxyAddresses/any(x:x eq '{alias.lower()}')") == {u["id"]}
    # advanced queries need ConsistencyLevel + $count; then they work
    assert_error(client.get("/users", params={"$filter": "accountEnabled ne true"}), 400, "Request_UnsupportedQuery")
    assert ids("accountEnabled ne true", EVENTUAL, **{"$count": "true"}) == disabled
    r = client.get("/users", params={"$filter": "favouriteColour eq 'red'"})
    assert_error(r, 400, "Request_UnsupportedQuery",
                 "Unsupported or invalid query filter clause specified for property 'favouriteColour' of resource 'User'.")
    assert_error(client.get("/users", params={"$filter": "displayName eq"}), 400, "BadRequest")
    term = u["displayName"].split()[0]
    found = pages(client, "/users", {"$search": f'"displayName:{term}"', "$select": "id"}, EVENTUAL)
    assert u["id"] in {x["id"] for p in found for x in p["value"]}


def test_single_objects_and_navigation(emulator: RunningEmulator, client: httpx.Client) -> None:
    tenant = emulator.tenant()
    uid, mgr = next(iter(tenant.managers.items()))
    upn = tenant.users[uid]["userPrincipalName"]
    assert client.get(f"/users/{upn}").json()["id"] == uid
    assert client.get(f"/users/{uid}/manager").json()["id"] == mgr
    expanded = client.get(f"/users/{uid}", params={"$expand": "manager"}).json()
    assert expanded["manager"]["id"] == mgr
    r = client.get("/users/00000000-0000-0000-0000-00000000beef")
    assert_error(r, 404, "Request_ResourceNotFound",
                 "Resource '00000000-0000-0000-0000-00000000beef' does not exist or one of its queried reference-property objects are not present.")
    assert_error(client.get("/widgets"), 400, "BadRequest", "Resource not found for the segment 'widgets'.")
    # memberOf / members with @odata.type, transitive closure as the model says
    gid = max(tenant.members, key=lambda g: sum(1 for k in tenant.members[g].values() if k == "group"))
    direct = {m["id"]: m["@odata.type"] for p in pages(client, f"/groups/{gid}/members") for m in p["value"]}
    assert direct == {m: f"#microsoft.graph.{k}" for m, k in tenant.members[gid].items()}
    expect: set[str] = set()
    todo = list(tenant.members[gid])
    while todo:
        m = todo.pop()
        if m not in expect and m != gid:
            expect.add(m)
            todo.extend(tenant.members.get(m, {}))
    trans = {m["id"] for p in pages(client, f"/groups/{gid}/transitiveMembers") for m in p["value"]}
    assert trans == expect
    member = next(m for m, k in tenant.members[gid].items() if k == "user")
    member_of = {g["id"] for p in pages(client, f"/users/{member}/memberOf") for g in p["value"]}
    assert member_of == {g for g, ms in tenant.members.items() if member in ms}
    assert {g["@odata.type"] for p in pages(client, f"/users/{member}/memberOf") for g in p["value"]} == {"#microsoft.graph.group"}
    tm = {g["id"] for p in pages(client, f"/users/{member}/transitiveMemberOf") for g in p["value"]}
    assert member_of <= tm


def test_applications_service_principals_and_assignments(emulator: RunningEmulator, client: httpx.Client) -> None:
    tenant = emulator.tenant()
    apps = {a["id"] for p in pages(client, "/applications") for a in p["value"]}
    assert apps == set(tenant.applications)
    sp = next(s for s in tenant.service_principals.values() if tenant.assignments_for_resource(s["id"]))
    got = client.get(f"/servicePrincipals/{sp['id']}").json()
    assert got["appId"] == sp["appId"] and "servicePrincipalType" in got
    assigned = [a for p in pages(client, f"/servicePrincipals/{sp['id']}/appRoleAssignedTo") for a in p["value"]]
    assert {a["id"] for a in assigned} == {a["id"] for a in tenant.assignments_for_resource(sp["id"])}
    assert {"principalId", "principalType", "appRoleId", "resourceId"} <= set(assigned[0])
    secret = next((c for a in tenant.applications.values() for c in a.get("passwordCredentials", [])), None)
    if secret is not None:
        assert secret.get("secretText") is None


def test_sign_in_activity_rules(fresh_emulator: Any) -> None:
    emu = fresh_emulator(tenants=2)
    with graph(emu) as c:
        r = c.get("/users", params={"$select": "id,signInActivity", "$top": "3"})
        assert r.status_code == 200 and "signInActivity" in r.json()["value"][0]
    with graph(emu, 1) as c:  # tenant #1 is not premium
        r = c.get("/users", params={"$select": "id,signInActivity"})
        assert_error(r, 403, "Authentication_RequestFromNonPremiumTenantOrB2CTenant",
                     "Neither tenant is B2C or tenant doesn't have premium license")
    tid, cid = emu.tenant().tenant_id, emu.sync_app().client_id
    control(emu, "PUT", f"/tenants/{tid}/registrations/{cid}/roles", {"revoke": ["AuditLog.Read.All"]})
    with graph(emu) as c:
        r = c.get("/users", params={"$select": "id,signInActivity"})
        assert_error(r, 403, "Authentication_MSGraphPermissionMissing",
                     "Calling principal does not have required MSGraph permissions AuditLog.Read.All")


def test_permissions_from_token_roles(fresh_emulator: Any) -> None:
    emu = fresh_emulator()
    tid, cid = emu.tenant().tenant_id, emu.sync_app().client_id
    control(emu, "PUT", f"/tenants/{tid}/registrations/{cid}/roles", {"roles": ["GroupMember.Read.All"]})
    denied = "Insufficient privileges to complete the operation."
    with graph(emu) as c:
        for path in ("/users", "/users/delta", "/applications", "/servicePrincipals", "/domains"):
            assert_error(c.get(path), 403, "Authorization_RequestDenied", denied)
        assert c.get("/groups").status_code == 200
        # a group's user members come back with limited information only (no User.Read.All)
        gid = next(g for g, ms in emu.tenant().members.items() if "user" in ms.values())
        member = next(m for p in pages(c, f"/groups/{gid}/members") for m in p["value"] if m["@odata.type"].endswith("user"))
        assert set(member) == {"@odata.type", "id"}
    control(emu, "PUT", f"/tenants/{tid}/registrations/{cid}/roles", {"roles": ["Directory.Read.All"]})
    with graph(emu) as c:
        for path in ("/users", "/groups", "/applications", "/servicePrincipals", "/domains", "/organization"):
            assert c.get(path).status_code == 200, path
        domain = c.get("/domains").json()["value"][0]
        assert "passwordValidityPeriodInDays" in domain


def test_missing_or_expired_token_is_401(emulator: RunningEmulator) -> None:
    with graph(emulator, token="") as c:
        r = c.get("/users", headers={"Authorization": ""})
        assert_error(r, 401, "InvalidAuthenticationToken", "Access token is empty.")
    tenant = emulator.tenant()
    minted = control(emulator, "POST", "/tokens/mint", {
        "kind": "app", "tenant": tenant.tenant_id, "client_id": emulator.sync_app().client_id,
        "overrides": {"exp": int(time.time()) - 3600, "iat": int(time.time()) - 7200, "nbf": int(time.time()) - 7200}})
    with graph(emulator, token=minted["token"]) as c:
        assert_error(c.get("/users"), 401, "InvalidAuthenticationToken", "Lifetime validation failed, the token is expired.")
    with graph(emulator, token="not.a.token") as c:
        assert c.get("/users").json()["error"]["code"] == "InvalidAuthenticationToken"


# ------------------------------------------------------------------------------------------------- throttling

def test_resource_unit_bucket_by_microsofts_numbers() -> None:
    assert (limit_for(49), limit_for(50), limit_for(500), limit_for(501)) == (3500, 5000, 5000, 8000)
    assert request_cost("users", select=False, expand=False, top=None) == 2
    assert request_cost("users", select=True, expand=False, top=None) == 1
    assert request_cost("applications", select=False, expand=True, top=None) == 3
    assert request_cost("groups/{id}/members", select=False, expand=False, top=10) == 2
    assert request_cost("groups/{id}/transitiveMembers", select=False, expand=False, top=None) == 5
    assert request_cost("groups", select=True, expand=False, top=5) == 1
    clock = [0.0]
    bucket = ResourceUnitThrottle(now=lambda: clock[0])
    spent = 0
    while bucket.charge("app", "t", 5, 3500).allowed:
        spent += 5
    assert spent == 3500
    d = bucket.charge("app", "t", 5, 3500)
    assert not d.allowed and d.retry_after_s == pytest.approx(5 / 350)
    assert bucket.charge("other-app", "t", 5, 3500).allowed, "buckets are per app and tenant"
    clock[0] += 10
    assert bucket.charge("app", "t", 5, 3500).allowed


def test_a_bucket_on_the_request_clock_refills_by_requests_and_honoured_waits_only() -> None:
    """throttle_step_ms: the bucket's time moves 0.1 s per request, and after a refusal with the wall clock up to the
    end of its Retry-After; a slow client (minutes between requests) gets no more than a fast one."""
    clock = [0.0]
    bucket = ResourceUnitThrottle(now=lambda: clock[0])
    bucket.step_s = 0.1
    assert bucket.charge("app", "t", 5, 10).allowed  # 10 units, 1 per second of bucket time
    clock[0] += 300  # minutes pass on the wall clock: the bucket's time moves one step
    d = bucket.charge("app", "t", 5, 10)
    assert d.allowed and d.remaining == pytest.approx(0.1)
    clock[0] += 300
    d = bucket.charge("app", "t", 5, 10)
    assert not d.allowed and d.retry_after_s == pytest.approx(4.8)  # 0.2 units held, 5 needed
    clock[0] += 2  # retried too early: two more seconds of refill, not the 4.8 asked for
    d = bucket.charge("app", "t", 5, 10)
    assert not d.allowed and d.remaining == pytest.approx(2.2)
    clock[0] += 600  # the wait honoured (and much more): refilled up to the end of the Retry-After, no further
    d = bucket.charge("app", "t", 5, 10)
    assert d.allowed and d.remaining == pytest.approx(0.0, abs=1e-9)
    clock[0] += 600
    assert not bucket.charge("app", "t", 5, 10).allowed, "back on the request clock: one step refills 0.1"


def test_throttled_requests_get_429_with_microsofts_headers(fresh_emulator: Any) -> None:
    emu = fresh_emulator()
    control(emu, "POST", "/faults", {"throttle_limit": 20})
    with graph(emu) as c:
        statuses = [c.get("/users") for _ in range(15)]
    throttled = [r for r in statuses if r.status_code == 429]
    assert throttled and statuses[0].status_code == 200
    r = throttled[0]
    assert_error(r, 429, "TooManyRequests", "Please retry again later.")
    assert float(r.headers["Retry-After"]) > 0
    assert r.headers["x-ms-throttle-information"] == "ResourceUnitLimitExceeded"
    assert r.headers["x-ms-resource-unit"] == "2"
    assert emu.tenant().tenant_id in r.headers["x-ms-throttle-scope"]


def test_injected_faults(fresh_emulator: Any) -> None:
    emu = fresh_emulator(faults=FaultPlan(throttle_next=2, throttle_retry_after=2.128))
    with graph(emu) as c:
        first, second, third = c.get("/groups"), c.get("/groups"), c.get("/groups")
        assert (first.status_code, second.status_code, third.status_code) == (429, 429, 200)
        assert first.headers["Retry-After"] == "3" and second.headers["Retry-After"] == "2.128"
        control(emu, "POST", "/faults", {"error_next": 2})
        a, b = c.get("/groups"), c.get("/groups")
        assert a.status_code == 503 and "Retry-After" in a.headers and b.status_code == 504
        control(emu, "POST", "/faults", {"drop_next": 1})
        with pytest.raises(httpx.RemoteProtocolError):
            c.get("/users", params={"$top": "50"})
        assert c.get("/users").status_code == 200, "only the next response is cut"
        control(emu, "POST", "/faults", {"latency_ms": 150})
        t0 = time.monotonic()
        assert c.get("/groups", params={"$top": "1"}).status_code == 200
        assert time.monotonic() - t0 >= 0.15


# ------------------------------------------------------------------------------------------------------ $batch

def test_batch(emulator: RunningEmulator, client: httpx.Client) -> None:
    tenant = emulator.tenant()
    uid = next(iter(tenant.users))
    body = {"requests": [
        {"id": "1", "method": "GET", "url": f"/users/{uid}/memberOf"},
        {"id": "2", "method": "GET", "url": "/users/00000000-0000-0000-0000-000000000000"},
        {"id": "3", "method": "GET", "url": "/groups?$top=2", "dependsOn": ["2"]},
        {"id": "4", "method": "GET", "url": f"/users/{uid}?$select=id,accountEnabled", "dependsOn": ["1"]},
    ]}
    r = client.post("/$batch", json=body)
    assert r.status_code == 200
    by_id = {x["id"]: x for x in r.json()["responses"]}
    assert (by_id["1"]["status"], by_id["2"]["status"], by_id["3"]["status"], by_id["4"]["status"]) == (200, 404, 424, 200)
    assert by_id["2"]["body"]["error"]["code"] == "Request_ResourceNotFound"
    assert by_id["4"]["body"]["accountEnabled"] in (True, False)
    too_many = {"requests": [{"id": str(i), "method": "GET", "url": "/users"} for i in range(21)]}
    assert_error(client.post("/$batch", json=too_many), 400, "BadRequest")
    dup = {"requests": [{"id": "1", "method": "GET", "url": "/users"}] * 2}
    assert_error(client.post("/$batch", json=dup), 400, "BadRequest")


def test_batch_items_are_throttled_on_their_own(fresh_emulator: Any) -> None:
    emu = fresh_emulator()
    with graph(emu) as c:
        control(emu, "POST", "/faults", {"throttle_next": 1})
        r = c.post("/$batch", json={"requests": [{"id": "a", "method": "GET", "url": "/groups"},
                                                 {"id": "b", "method": "GET", "url": "/groups"}]})
        statuses = sorted(x["status"] for x in r.json()["responses"])
        assert r.status_code == 200 and statuses == [200, 429]
        item = next(x for x in r.json()["responses"] if x["status"] == 429)
        assert "Retry-After" in item["headers"]


# ------------------------------------------------------------------------------------------------- control API

def test_control_api_tenants_and_mutations(fresh_emulator: Any) -> None:
    emu = fresh_emulator()
    doc = control(emu, "GET", "/tenants")
    t = doc["tenants"][0]
    sync = next(r for r in t["registrations"] if r["displayName"] == "entra-mcp sync")
    assert sync["secrets"][0]["value"] and "BEGIN CERTIFICATE" in sync["certificates"][0]["pem"]
    assert "User.Read.All" in sync["grantedRoles"]
    made = mutate(emu, {"op": "create_user", "set": {"displayName": "Ada Lovelace", "userPrincipalName": "ada@" + t["domain"]}})
    ada = made[0]["id"]
    snap = control(emu, "GET", f"/tenants/{t['tenantId']}/snapshot")
    assert ada in {u["id"] for u in snap["users"]}
    with httpx.Client(base_url=f"{emu.base_url}/_emulator", verify=emu.ssl_context()) as c:
        r = c.post(f"/tenants/{t['tenantId']}/mutations", json=[{"op": "explode"}])
        assert r.status_code == 400 and "known:" in r.json()["error"]
        r = c.post(f"/tenants/{t['tenantId']}/mutations", json=[{"op": "disable_user", "id": "nope"}])
        assert r.status_code == 404
        assert c.post("/faults", json={"warp_drive": 1}).status_code == 400
    with graph(emu) as g:
        assert g.get(f"/users/ada@{t['domain']}").json()["id"] == ada
