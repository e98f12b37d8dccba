"""The MCP SDK's own OAuth client (`mcp.client.auth.OAuthClientProvider`) against server.auth.mode = "oauth".

Discovery (401 -> protected-resource metadata -> authorization-server metadata), registration in both styles
(Dynamic Client Registration, then a Client ID Metadata Document served over HTTPS), headless Chromium completing the
emulator's Entra sign-in and the consent page, tool calls through `mcp.Client` with the token, refresh (the SDK
refreshes an expired token itself; the refresh token rotates), and revocation. One browser, one sign-in: the
second client finds the browser signed in and goes straight to its consent page.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import anyio
import httpx
import httpx2
import pytest
from mcp import Client
from mcp.client.auth import OAuthClientProvider
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.auth import AuthorizationCodeResult, OAuthClientInformationFull, OAuthClientMetadata, OAuthToken

from _harness import CHROMIUM, CHROMIUM_ARGS
from _auth_fixtures import MCP_HEADERS, free_port
from _auth_fixtures import user_upn
from _oauth_fixtures import CLIENT_NAME, SCOPE, Stack, oauth_stack
from entra_mcp.devtenant.id_claims import MAX_JWT_GROUPS, define_app_role, service_principal_id, set_group_claims
from entra_mcp.devtenant.model import DEFAULT_USER_PASSWORD


pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not os.path.exists(CHROMIUM), reason=f"{CHROMIUM} is missing (scripts/test.sh installs Debian's chromium)"),
]


ROLE = "Desk.Investigator"
OVERAGE_GROUPS = MAX_JWT_GROUPS + 1


@dataclass
class People:
    """Users of tenant 0 set up for [server.access] rules by app role and by group (see `_prepare`)."""

    role: str = ""  # holds the portal app's app role ROLE: rule "investigators" grants tenant 1 only
    group: str = ""  # in the security group "Desk Tier 2" through a nested group: rule "tier2" grants every tenant
    overage: str = ""  # in "Desk Tier 2" and 200 more groups: the ID token carries the overage claim, no groups
    tier2: str = ""  # the group id


PEOPLE = People()


def _prepare(emu: Any) -> dict[str, Any]:
    """The portal app issues `roles` and (security) `groups` in its ID tokens, as Entra does when the app
    registration defines app roles and sets groupMembershipClaims; [server.access] maps them to tenants."""
    t = emu.tenant(0)
    portal = emu.portal_app(0).client_id
    users = {n: t.user_by_upn(user_upn(emu, 0, n)) for n in (1, 2, 3)}
    role_id = define_app_role(t, portal, ROLE)
    investigators = t.create_group({"displayName": "Desk Investigators", "securityEnabled": True, "mailEnabled": False,
                                    "members": [users[1]["id"]]})
    t.add_app_role_assignment(service_principal_id(t, portal), investigators["id"], role_id)  # through a group
    set_group_claims(t, portal, "SecurityGroup")
    inner = t.create_group({"displayName": "Desk Tier 2 EMEA", "securityEnabled": True, "mailEnabled": False,
                            "members": [users[2]["id"], users[3]["id"]]})
    tier2 = t.create_group({"displayName": "Desk Tier 2", "securityEnabled": True, "mailEnabled": False,
                            "members": [inner["id"]]})
    for n in range(OVERAGE_GROUPS):
        t.create_group({"displayName": f"Distribution {n}", "securityEnabled": True, "mailEnabled": False,
                        "members": [users[3]["id"]]})
    PEOPLE.role, PEOPLE.group, PEOPLE.overage = (str(users[n]["userPrincipalName"]) for n in (1, 2, 3))
    PEOPLE.tier2 = tier2["id"]
    return {"rules": [{"name": "investigators", "tids": [t.tenant_id], "roles": [ROLE], "tenants": [emu.tenant_name(1)]},
                      {"name": "tier2", "tids": [t.tenant_id], "groups": [tier2["id"]], "tenants": ["*"]}]}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with oauth_stack(tmp_path_factory.mktemp("oauth-e2e"), seed=6, tenants=2, prepare=_prepare) as s:
        yield s


class MemoryStorage:
    """The SDK's TokenStorage protocol, in memory."""

    def __init__(self) -> None:
        self.tokens: OAuthToken | None = None
        self.client: OAuthClientInformationFull | None = None

    async def get_tokens(self) -> OAuthToken | None:
        return self.tokens

    async def set_tokens(self, tokens: OAuthToken) -> None:
        self.tokens = tokens

    async def get_client_info(self) -> OAuthClientInformationFull | None:
        return self.client

    async def set_client_info(self, client_info: OAuthClientInformationFull) -> None:
        self.client = client_info


class BrowserAgent:
    """What a desktop MCP client does with the authorization URL: opens it in the person's browser and waits for the
    redirect to its loopback callback (intercepted here, so no listener is needed)."""

    def __init__(self, page: Any, stack: Stack, callback_port: int, upn: str | None = None) -> None:
        self.page = page
        self.stack = stack
        self.upn = upn or stack.upn
        self.callback_port = callback_port
        self.callback_url: str | None = None
        self.consent_text = ""
        self.sign_ins = 0
        self.authorizations = 0
        self.remembered = 0

    async def install(self) -> None:
        """A real loopback listener, as a desktop client runs (the browser reaches the callback also at the end of
        a redirect chain, where Playwright's routing would not intercept it)."""
        agent = self

        class Callback(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                if self.path.startswith("/callback?"):  # not the browser's /favicon.ico
                    agent.callback_url = f"http://127.0.0.1:{agent.callback_port}{self.path}"
                body = b"You can close this window."
                self.send_response(200)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.listener = ThreadingHTTPServer(("127.0.0.1", self.callback_port), Callback)
        threading.Thread(target=self.listener.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.listener.shutdown()
        self.listener.server_close()

    async def redirect_handler(self, authorization_url: str) -> None:
        self.callback_url = None
        self.authorizations += 1
        await self.page.goto(authorization_url)
        if self.callback_url is not None:  # a remembered approval: straight back to the client, no page
            self.remembered += 1
            return
        await self.page.wait_for_selector("#username, #approve", timeout=20000)
        if await self.page.locator("#username").count():
            self.sign_ins += 1
            await self.page.fill("#username", self.upn)
            await self.page.fill("#password", DEFAULT_USER_PASSWORD)
            await self.page.click("#submit")
            await self.page.wait_for_selector("#approve", timeout=20000)
        self.consent_text = await self.page.inner_text("body")
        await self.page.click("#approve")

    async def callback_handler(self) -> AuthorizationCodeResult:
        deadline = time.monotonic() + 20
        while self.callback_url is None:  # the browser's redirect to the callback, within a bound
            if time.monotonic() > deadline:
                raise AssertionError(f"no callback; the browser is at {self.page.url}: "
                                     f"{(await self.page.content())[:1500]}")
            await anyio.sleep(0.05)
        q = parse_qs(urlsplit(self.callback_url).query)
        return AuthorizationCodeResult(code=q["code"][0], state=q["state"][0], iss=q.get("iss", [None])[0])


async def _use(stack: Stack, provider: OAuthClientProvider, upn_tool_calls: int = 1) -> None:
    async with httpx2.AsyncClient(auth=provider, timeout=30) as http:
        async with Client(streamable_http_client(f"{stack.resource}", http_client=http), mode="legacy") as client:
            for _ in range(upn_tool_calls):
                r = await client.call_tool("lookup_user", {"query": stack.upn})
                assert not r.is_error, r.content


def _metadata(redirect: str) -> OAuthClientMetadata:
    return OAuthClientMetadata(redirect_uris=[redirect], client_name=CLIENT_NAME, token_endpoint_auth_method="none",
                               grant_types=["authorization_code", "refresh_token"], response_types=["code"])


@pytest.mark.anyio
async def test_the_sdk_client_connects_with_both_registration_styles(stack: Stack) -> None:
    from playwright.async_api import async_playwright

    callback_port = free_port()
    redirect = f"http://127.0.0.1:{callback_port}/callback"
    async with async_playwright() as p:
        chromium = await p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        stop: list[Any] = []
        try:
            context = await chromium.new_context(ignore_https_errors=True)  # the emulator's own CA
            agent = BrowserAgent(await context.new_page(), stack, callback_port)
            await agent.install()
            stop.append(agent.close)

            # 1. Dynamic Client Registration: discovery, registration, sign-in, consent, token, tool calls
            dcr = MemoryStorage()
            provider = OAuthClientProvider(stack.resource, _metadata(redirect), dcr,
                                           redirect_handler=agent.redirect_handler,
                                           callback_handler=agent.callback_handler)
            await _use(stack, provider)
            assert agent.sign_ins == 1
            assert dcr.client is not None and not dcr.client.client_id.startswith("https://")
            assert dcr.tokens is not None and dcr.tokens.refresh_token and dcr.tokens.scope == SCOPE
            assert CLIENT_NAME in agent.consent_text and "127.0.0.1 (an application on this computer)" in agent.consent_text
            assert stack.upn in agent.consent_text

            # refresh: the SDK refreshes an expired token by itself; the refresh token rotates
            first = dcr.tokens
            provider.context.token_expiry_time = time.time() - 1
            await _use(stack, provider)
            assert dcr.tokens.access_token != first.access_token and dcr.tokens.refresh_token != first.refresh_token
            assert agent.authorizations == 1  # no new trip through the browser

            # remembered consent: the same client authorizing again (no tokens kept) skips the consent page
            again = MemoryStorage()
            again.client = dcr.client
            provider_again = OAuthClientProvider(stack.resource, _metadata(redirect), again,
                                                 redirect_handler=agent.redirect_handler,
                                                 callback_handler=agent.callback_handler)
            await _use(stack, provider_again)
            assert agent.authorizations == 2 and agent.remembered == 1 and again.tokens is not None
            assert "will not ask again for 30 days" in agent.consent_text

            # revocation (RFC 7009): the tokens stop working on /mcp
            async with httpx.AsyncClient(timeout=20) as http:
                r = await http.post(f"{stack.base}/oauth/revoke",
                                    data={"token": dcr.tokens.refresh_token, "client_id": dcr.client.client_id})
                assert r.status_code == 200
                r = await http.post(stack.resource, json={"jsonrpc": "2.0", "id": 1, "method": "ping"},
                                    headers={**MCP_HEADERS, "Authorization": f"Bearer {dcr.tokens.access_token}"})
                assert r.status_code == 401 and 'error="invalid_token"' in r.headers["www-authenticate"]

            # revoking forgot the approval: the next authorization of that client shows the consent page again
            forgot = MemoryStorage()
            forgot.client = dcr.client
            await _use(stack, OAuthClientProvider(stack.resource, _metadata(redirect), forgot,
                                                  redirect_handler=agent.redirect_handler,
                                                  callback_handler=agent.callback_handler))
            assert agent.authorizations == 3 and agent.remembered == 1 and forgot.tokens is not None

            # 2. a Client ID Metadata Document: no registration call; the browser is signed in already
            cimd = MemoryStorage()
            url = f"{stack.docs}/client/good"
            provider = OAuthClientProvider(stack.resource, _metadata(redirect), cimd,
                                           redirect_handler=agent.redirect_handler,
                                           callback_handler=agent.callback_handler, client_metadata_url=url)
            await _use(stack, provider)
            assert cimd.client is not None and cimd.client.client_id == url
            assert agent.authorizations == 4 and agent.sign_ins == 1 and agent.remembered == 1
            assert url in agent.consent_text and CLIENT_NAME in agent.consent_text

            # the audit trail: consent, token grants, revocation and the tool calls, with the client; no token
            trail = stack.settings.server.audit.resolved_path(stack.settings.server.cache_dir)
            text = trail.read_text()
            rows = [json.loads(line) for line in text.splitlines()]
            events = {(r["event"], r.get("outcome"), r.get("grant")) for r in rows}
            assert {("consent", "ok", None), ("token", "ok", "authorization_code"), ("token", "ok", "refresh_token"),
                    ("revoke", "ok", None)} <= events, events
            assert [r.get("reason") for r in rows if r["event"] == "consent"].count("remembered") == 1
            calls = [r for r in rows if r["event"] == "tool_call"]
            assert calls and {r["caller"].get("clientId") for r in calls} >= {dcr.client.client_id, url}
            for secret in (first.access_token, first.refresh_token, dcr.tokens.access_token, dcr.tokens.refresh_token):
                assert secret not in text
        finally:
            await chromium.close()
            for close in stop:
                close()


async def _tenants_seen(stack: Stack, provider: OAuthClientProvider) -> list[str]:
    async with httpx2.AsyncClient(auth=provider, timeout=30) as http:
        async with Client(streamable_http_client(f"{stack.resource}", http_client=http), mode="legacy") as client:
            listed = await client.read_resource("entra://tenants")
            return [t["tenant"] for t in json.loads(listed.contents[0].text)]  # type: ignore[union-attr]


@pytest.mark.anyio
async def test_app_roles_and_groups_of_the_sign_in_decide_the_tenants(stack: Stack) -> None:
    """[server.access] rules by app role and by group apply to oauth callers: the roles and groups of the person's
    verified ID token ride with the sign-in session into the token family. Over 200 groups, the ID token carries the
    overage claim instead; this tenant's mirror is not synced here, so the group rule cannot match and the person
    gets the home-tenant default, and the log says why."""
    from playwright.async_api import async_playwright

    home, other = stack.emu.tenant_name(0), stack.emu.tenant_name(1)
    seen: dict[str, list[str]] = {}
    async with async_playwright() as p:
        chromium = await p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        stop: list[Any] = []
        try:
            for who, upn in (("role", PEOPLE.role), ("group", PEOPLE.group), ("overage", PEOPLE.overage),
                             ("plain", stack.upn)):
                context = await chromium.new_context(ignore_https_errors=True)  # a fresh browser: a new sign-in
                callback_port = free_port()
                redirect = f"http://127.0.0.1:{callback_port}/callback"
                agent = BrowserAgent(await context.new_page(), stack, callback_port, upn=upn)
                await agent.install()
                stop.append(agent.close)
                provider = OAuthClientProvider(stack.resource, _metadata(redirect), MemoryStorage(),
                                               redirect_handler=agent.redirect_handler,
                                               callback_handler=agent.callback_handler)
                seen[who] = await _tenants_seen(stack, provider)
                assert agent.sign_ins == 1
                await context.close()
        finally:
            await chromium.close()
            for close in stop:
                close()
    assert seen == {"role": [other], "group": [home, other], "overage": [home], "plain": [home]}, seen


@pytest.mark.anyio
async def test_a_browser_based_client_reaches_the_oauth_endpoints_from_a_listed_origin_only(stack: Stack) -> None:
    """A real page (Chromium) of a listed origin (cors_origins) calls the metadata, registration, token and /mcp
    endpoints with fetch and reads the answers, headers included; a page of an unlisted origin cannot."""
    from playwright.async_api import async_playwright

    from _oauth_fixtures import WEB_CLIENT, WEB_CLIENT_PORT

    script = """async (base) => {
        const out = {};
        const prm = await fetch(base + "/.well-known/oauth-protected-resource/mcp");
        out.prm = (await prm.json()).resource;
        const as = await (await fetch(base + "/.well-known/oauth-authorization-server")).json();
        out.issuer = as.issuer;
        const reg = await fetch(as.registration_endpoint, {method: "POST", headers: {"Content-Type": "application/json"},
            body: JSON.stringify({redirect_uris: [location.origin + "/cb"].map(u => u.replace("localhost", "127.0.0.1")),
                                  client_name: "Web desk", token_endpoint_auth_method: "none"})});
        out.registered = reg.status; out.client_id = (await reg.json()).client_id;
        const tok = await fetch(as.token_endpoint, {method: "POST", body: new URLSearchParams({grant_type:
            "authorization_code", code: "nope", redirect_uri: "http://127.0.0.1/cb", client_id: out.client_id,
            code_verifier: "x".repeat(43)})});
        out.token = [tok.status, (await tok.json()).error];
        const mcp = await fetch(base + "/mcp", {method: "POST", headers: {"Content-Type": "application/json",
            "Accept": "application/json, text/event-stream", "Authorization": "Bearer not-a-token"},
            body: JSON.stringify({jsonrpc: "2.0", id: 1, method: "ping"})});
        out.mcp = [mcp.status, mcp.headers.get("WWW-Authenticate") || ""];
        return out;
    }"""
    class Page(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            body = b"<!doctype html><title>web client</title>"
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    other_port = free_port()
    other = f"http://localhost:{other_port}"
    servers = [ThreadingHTTPServer(("127.0.0.1", port), Page) for port in (WEB_CLIENT_PORT, other_port)]
    for server in servers:  # the web clients' own pages, on loopback like the server
        threading.Thread(target=server.serve_forever, daemon=True).start()
    async with async_playwright() as p:
        chromium = await p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = await (await chromium.new_context()).new_page()
            await page.goto(f"{WEB_CLIENT}/")
            out = await page.evaluate(script, stack.base)
            assert out["prm"] == stack.resource and out["issuer"] == stack.base and out["registered"] == 201, out
            assert out["token"] == [400, "invalid_grant"], out
            assert out["mcp"][0] == 401 and "resource_metadata=" in out["mcp"][1], out
            await page.goto(f"{other}/")
            with pytest.raises(Exception, match="Failed to fetch"):
                await page.evaluate(script, stack.base)
        finally:
            await chromium.close()
            for server in servers:
                server.shutdown()
                server.server_close()
