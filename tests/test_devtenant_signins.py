"""The emulated GET /auditLogs/signIns over HTTPS: Microsoft's documented paging, filters, order, ingestion delay,
retention, licence and permission errors and the reporting throttle; events added through the control API."""

from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone
from typing import Any

import httpx
import pytest

from graph_models import check_page
from msgraph.generated.models.sign_in import SignIn

from entra_mcp.devtenant.graph_signins import SPRAY_IP, parse_filter
from entra_mcp.devtenant.server import RunningEmulator

# v1.0 signIn properties (api-reference/v1.0/resources/signin.md); the emulator sends nothing else
SIGN_IN_PROPS = {
    "id", "createdDateTime", "userDisplayName", "userPrincipalName", "userId", "appId", "appDisplayName", "ipAddress",
    "clientAppUsed", "correlationId", "conditionalAccessStatus", "isInteractive", "riskDetail", "riskLevelAggregated",
    "riskLevelDuringSignIn", "riskState", "riskEventTypes_v2", "resourceDisplayName", "resourceId", "status",
    "deviceDetail", "location", "appliedConditionalAccessPolicies",
}


class Graph:
    def __init__(self, emu: RunningEmulator, i: int = 0) -> None:
        self.emu = emu
        self.tenant = emu.tenant(i)
        self.http = httpx.Client(verify=emu.ssl_context(), timeout=30)
        app = emu.sync_app(i)
        r = self.http.post(f"{emu.base_url}/{self.tenant.tenant_id}/oauth2/v2.0/token", data={
            "client_id": app.client_id, "client_secret": app.secrets[0].value, "scope": f"{emu.base_url}/.default",
            "grant_type": "client_credentials"})
        self.headers = {"Authorization": f"Bearer {r.json()['access_token']}"}

    def get(self, url: str, **params: str) -> httpx.Response:
        return self.http.get(url if url.startswith("https") else f"{self.emu.base_url}/v1.0{url}", params=params or None,
                             headers=self.headers)

    def control(self, path: str, body: Any) -> Any:
        r = self.http.post(f"{self.emu.base_url}/_emulator{path}", json=body)
        assert r.status_code == 200, r.text
        return r.json()

    def all(self, **params: str) -> tuple[list[dict[str, Any]], int]:
        r = self.get("/auditLogs/signIns", **params)
        pages, out = 1, []
        while True:
            assert r.status_code == 200, r.text
            body = r.json()
            out.extend(body["value"])
            if "@odata.nextLink" not in body:
                return out, pages
            r = self.get(body["@odata.nextLink"])
            pages += 1


@pytest.fixture
def graph(fresh_emulator: Any) -> Graph:
    g = Graph(fresh_emulator())
    g.control("/signins/settings", {"throttle_per_10s": 0})
    return g


def _ts(e: dict[str, Any]) -> str:
    return str(e["createdDateTime"])


def test_failures_newest_first_paged_with_documented_shape(graph: Graph) -> None:
    page = graph.get("/auditLogs/signIns", **{"$top": "200"}).json()
    check_page(page, SignIn)  # every property and value as msgraph-sdk's SignIn model defines it
    check_page(graph.get("/auditLogs/signIns", **{"$filter": "status/errorCode ne 0", "$top": "200"}).json(), SignIn)
    events, pages = graph.all(**{"$filter": "status/errorCode ne 0", "$top": "100"})
    assert pages > 1 and len(events) > 100
    assert [_ts(e) for e in events] == sorted((_ts(e) for e in events), reverse=True), "newest first"
    assert len({e["id"] for e in events}) == len(events), "no event twice across pages"
    assert all(e["status"]["errorCode"] != 0 for e in events)
    assert all(set(e) == SIGN_IN_PROPS for e in events)
    codes = {e["status"]["errorCode"] for e in events}
    assert {50126, 50053, 53003, 500121, 50105, 50057, 50034} <= codes, codes
    legacy = [e for e in events if e["clientAppUsed"] in ("IMAP4", "Authenticated SMTP", "Exchange ActiveSync", "POP3")]
    assert legacy and any(p["displayName"] == "Block legacy authentication" and p["result"] == "failure"
                          for e in legacy for p in e["appliedConditionalAccessPolicies"])
    spray = [e for e in events if e["ipAddress"] == SPRAY_IP]
    assert len({e["userId"] for e in spray}) >= 10, "one IP against many accounts"


def test_filters_by_time_user_and_app(graph: Graph) -> None:
    now = datetime.now(timezone.utc)
    since = (now - timedelta(hours=6)).strftime("%Y-%m-%dT%H:%M:%SZ")
    recent, _ = graph.all(**{"$filter": f"createdDateTime ge {since}"})
    assert recent and all(_ts(e) >= since for e in recent)
    assert {e["status"]["errorCode"] for e in recent} >= {0}
    uid = recent[0]["userId"]
    mine, _ = graph.all(**{"$filter": f"userId eq '{uid}' and createdDateTime ge {since}"})
    assert mine and all(e["userId"] == uid for e in mine)
    app = recent[0]["appId"]
    by_app, _ = graph.all(**{"$filter": f"appId eq '{app}' and createdDateTime ge {since}"})
    assert by_app and all(e["appId"] == app for e in by_app)
    r = graph.get("/auditLogs/signIns", **{"$filter": "startswith(displayName,'x')"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "Request_UnsupportedQuery"
    assert graph.get("/auditLogs/signIns", **{"$top": "1001"}).status_code == 400


def test_added_event_visible_after_its_ingestion_delay(graph: Graph) -> None:
    upn = sorted(u["userPrincipalName"] for u in graph.tenant.users.values() if u["accountEnabled"])[0]
    graph.control("/signins/settings", {"generated": False})
    made = graph.control(f"/tenants/{graph.tenant.tenant_id}/signins", {"events": [
        {"user": upn, "errorCode": 50053, "secondsAgo": 600, "delaySeconds": 2},
        {"user": upn, "errorCode": 0, "secondsAgo": 5}]})["added"]
    first, _ = graph.all()
    assert [e["id"] for e in first] == [made[1]["id"]], "the late one is not ingested yet"
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        listed, _ = graph.all()
        if len(listed) == 2:
            break
        time.sleep(0.2)
    assert [e["id"] for e in listed] == [made[1]["id"], made[0]["id"]], "newest first, the late one below"
    assert listed[1]["status"]["failureReason"].startswith("Account is locked")


def test_retention_licence_permission_and_throttle(fresh_emulator: Any) -> None:
    emu = fresh_emulator(tenants=2)
    g = Graph(emu)
    g.control("/signins/settings", {"throttle_per_10s": 0})
    old = (datetime.now(timezone.utc) - timedelta(days=40)).strftime("%Y-%m-%dT%H:%M:%SZ")
    g.control("/signins/settings", {"generated": False})
    g.control(f"/tenants/{g.tenant.tenant_id}/signins", {"events": [{"createdDateTime": old, "errorCode": 50126,
                                                                       "userPrincipalName": "x@contoso.example"}]})
    assert g.all()[0] == [], "older than the 30-day retention: gone"
    fab = Graph(emu, 1)  # fabrikam is not premium
    r = fab.get("/auditLogs/signIns")
    assert r.status_code == 403 and r.json()["error"]["code"] == "Authentication_RequestFromNonPremiumTenantOrB2CTenant"
    g.control(f"/tenants/{g.tenant.tenant_id}/registrations/{emu.sync_app(0).client_id}/roles", {"revoke": ["AuditLog.Read.All"]})
    g2 = Graph(emu)
    r = g2.get("/auditLogs/signIns")
    assert r.status_code == 403 and r.json()["error"]["code"] == "Authorization_RequestDenied"
    g.control(f"/tenants/{g.tenant.tenant_id}/registrations/{emu.sync_app(0).client_id}/roles", {"grant": ["AuditLog.Read.All"]})
    # Microsoft documents AuditLog.Read.All AND Directory.Read.All; the emulator checks the second when asked to
    g.control("/signins/settings", {"require_directory_read": True})
    r = Graph(emu).get("/auditLogs/signIns")
    assert r.status_code == 403 and r.json()["error"]["code"] == "Authorization_RequestDenied"
    g.control(f"/tenants/{g.tenant.tenant_id}/registrations/{emu.sync_app(0).client_id}/roles", {"grant": ["Directory.Read.All"]})
    assert Graph(emu).get("/auditLogs/signIns").status_code == 200
    g.control("/signins/settings", {"require_directory_read": False})
    g3 = Graph(emu)
    g3.control("/signins/settings", {"throttle_per_10s": 5})
    statuses = [g3.get("/auditLogs/signIns", **{"$top": "1"}) for _ in range(6)]
    assert [r.status_code for r in statuses[:5]] == [200] * 5
    assert statuses[5].status_code == 429 and float(statuses[5].headers["Retry-After"]) >= 1


def test_filter_parser_rejects_what_it_does_not_know() -> None:
    q = parse_filter("createdDateTime ge 2026-12-01T00:00:00Z and status/errorCode ne 0 and userId eq 'AbC'")
    assert q.lower is not None and q.code_ne == 0 and q.eq == {"userId": "abc"} and q.kinds() == (True, False)
    assert parse_filter("status/errorCode eq 0").kinds() == (False, True)


def test_pages_computed_on_demand_equal_the_slice_generated_whole() -> None:
    """The generated stream is a pure function of (tenant, minute): paging an hour with $skiptoken computes only that
    hour's minutes, page by page, and lists exactly what generating the hour whole lists, in the same order."""
    from entra_mcp.devtenant.generate import generate_state
    from entra_mcp.devtenant.graph_signins import Query, SignInEmulation, parse_time

    tenant = next(iter(generate_state("small", 1).tenants.values()))
    now = parse_time("2026-12-01T12:00:00Z")

    def emulation() -> SignInEmulation:
        em = SignInEmulation(lambda: now)
        em.settings.throttle_per_10s = 0
        em.settings.events_per_user_day = 400.0  # a few hundred events a minute: lockout runs and the spray included
        return em

    t0, t1 = "2026-12-01T08:30:00Z", "2026-12-01T09:30:00Z"
    whole_em = emulation()
    whole = [(ts, e["id"], e) for ts, _id, e in whole_em.log(tenant).events(
        Query(lower=parse_time(t0), upper=parse_time(t1) - 1e-7), now, None)]
    assert len(whole) > 1000 and [w[:2] for w in whole] == sorted((w[:2] for w in whole), reverse=True)
    assert {e["status"]["errorCode"] for _ts, _id, e in whole} >= {0, 50126, 50053}
    assert any(e["ipAddress"] == SPRAY_IP for _ts, _id, e in whole), "the spray wave (09:00-09:20) is in the hour"
    assert all(t0 <= e["createdDateTime"] < t1 for _ts, _id, e in whole)

    paged_em = emulation()
    log = paged_em.log(tenant)
    opts = {"filter": f"createdDateTime ge {t0} and createdDateTime lt {t1}", "top": "97"}
    paged: list[dict[str, Any]] = []
    pages = 0
    while True:
        status, body, _ = paged_em.list(tenant, "app", opts, token_key=b"k" * 32, base="https://graph.test")
        assert status == 200
        pages += 1
        paged.extend(body["value"])
        # on demand: only the minutes of [t0, t1) were ever computed, never the rest of the 30-day retention
        assert log._slice_cache.cache_info().currsize <= 61  # type: ignore[attr-defined]
        nxt = body.get("@odata.nextLink")
        if not nxt:
            break
        opts = {"skiptoken": nxt.split("$skiptoken=", 1)[1]}
    assert pages > 5
    assert [e["id"] for e in paged] == [w[1] for w in whole], "same events, same order, none twice"
    assert paged == [w[2] for w in whole], "same content"
