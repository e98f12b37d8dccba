"""A real browser (headless Debian Chromium via playwright) signs in through the emulator's authorize page.

Portal: ends with a working HttpOnly session cookie and /auth/session; after logout the session is refused.
Chat: a widget on another origin receives the one-time code in the URL fragment, trades it (CORS POST) for a
chat-session token, and the validate_chat_session tool on /mcp accepts it; after the widget logs out it is refused.
The product runs as it does in production: create_http_app + build_hooks under uvicorn on a loopback port.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.responses import HTMLResponse
from starlette.routing import Route

from _harness import CHROMIUM, CHROMIUM_ARGS
from _auth_fixtures import MCP_HEADERS, emulator_settings, free_port, rpc_result, serve, serve_product, user_upn
from entra_mcp.devtenant.model import DEFAULT_USER_PASSWORD
from entra_mcp.devtenant.server import run_emulator


pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not os.path.exists(CHROMIUM), reason=f"{CHROMIUM} is missing (scripts/test.sh installs Debian's chromium)"),
]

WIDGET_HTML = """<!doctype html><meta charset=utf-8><title>chat widget</title>
<p id=status>starting</p><p id=who></p><button id=signin onclick="signIn()">Sign in</button>
<script>
const API = %(api)s;
window.chatToken = null;
const b64url = (bytes) => btoa(String.fromCharCode(...new Uint8Array(bytes))).replace(/\\+/g, "-").replace(/\\//g, "_").replace(/=+$/, "");
async function signIn() {
  // PKCE-style binding of the hand-over to this widget: only S256(verifier) leaves the page.
  const verifier = b64url(crypto.getRandomValues(new Uint8Array(32)));
  sessionStorage.setItem("chat_verifier", verifier);
  const challenge = b64url(await crypto.subtle.digest("SHA-256", new TextEncoder().encode(verifier)));
  location.href = API + "/auth/login?" + new URLSearchParams({flow: "chat", return_to: location.origin + "/chat", chat_challenge: challenge});
}
async function main() {
  const code = new URLSearchParams(location.hash.slice(1)).get("chat_code");
  if (!code) { document.getElementById("status").textContent = "signed-out"; return; }
  history.replaceState(null, "", location.pathname + location.search);  // the code leaves the address bar at once
  const verifier = sessionStorage.getItem("chat_verifier");
  sessionStorage.removeItem("chat_verifier");
  const r = await fetch(API + "/auth/chat/exchange", {method: "POST", headers: {"Content-Type": "application/json"},
                                                      body: JSON.stringify({code, code_verifier: verifier})});
  const j = await r.json();
  if (!r.ok) { document.getElementById("status").textContent = "failed:" + j.error; return; }
  window.chatToken = j.chatSessionToken;
  document.getElementById("who").textContent = j.identity.preferredUsername;
  document.getElementById("status").textContent = "signed-in";
}
async function logout() {
  const r = await fetch(API + "/auth/logout", {method: "POST", headers: {"Authorization": "Bearer " + window.chatToken}});
  document.getElementById("status").textContent = "signed-out:" + (await r.json()).signedOut;
}
main();
</script>"""


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """Emulator (HTTPS) + the product (uvicorn) + a chat widget on another origin."""
    root = tmp_path_factory.mktemp("browser")
    port, wport = free_port(), free_port()
    base, widget = f"http://127.0.0.1:{port}", f"http://localhost:{wport}"
    with run_emulator(tenants=1, seed=3) as emu:
        with pytest.MonkeyPatch.context() as mp:
            for k, v in emu.secret_env(None, with_sign_in=True).items():
                mp.setenv(k, v)
            settings = emulator_settings(emu, root, public_url=base, port=port, widget_origin=widget,
                                         allowed_origins=[widget])

            async def page(request: Any) -> HTMLResponse:
                return HTMLResponse(WIDGET_HTML % {"api": json.dumps(base)})

            widget_app = Starlette(routes=[Route("/chat", page)])
            with serve_product(settings) as (_, hooks), serve(widget_app, wport):
                yield {"emu": emu, "base": base, "widget": widget, "hooks": hooks, "settings": settings}


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


def sign_in_page(page: Any, emu: Any, upn: str) -> None:
    page.wait_for_selector("#username", timeout=15000)
    page.fill("#username", upn)
    page.fill("#password", DEFAULT_USER_PASSWORD)
    page.click("#submit")


def mcp_tool(base: str, bearer: str, tool: str, args: dict[str, Any]) -> dict[str, Any]:
    hdr = {**MCP_HEADERS, "Authorization": f"Bearer {bearer}"}
    init = {"jsonrpc": "2.0", "id": 1, "method": "initialize",
            "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}}
    with httpx.Client(timeout=20) as c:
        r = c.post(base + "/mcp", json=init, headers=hdr)
        assert r.status_code == 200, r.text
        hdr = {**hdr, "Mcp-Session-Id": r.headers["mcp-session-id"], "MCP-Protocol-Version": "2025-06-18"}
        c.post(base + "/mcp", json={"jsonrpc": "2.0", "method": "notifications/initialized"}, headers=hdr)
        r = c.post(base + "/mcp", json={"jsonrpc": "2.0", "id": 2, "method": "tools/call",
                                        "params": {"name": tool, "arguments": args}}, headers=hdr)
        assert r.status_code == 200, r.text
        result = rpc_result(r)["result"]
        return dict(result.get("structuredContent") or json.loads(result["content"][0]["text"]))


def test_portal_sign_in_in_a_real_browser(stack: dict[str, Any], browser: Any) -> None:
    emu, base = stack["emu"], stack["base"]
    upn = user_upn(emu)
    ctx = browser.new_context(ignore_https_errors=True)  # the emulator's own CA
    try:
        page = ctx.new_page()
        page.goto(f"{base}/auth/login?flow=portal&return_to=/auth/session")
        assert page.url.startswith(emu.login_url)
        sign_in_page(page, emu, upn)
        page.wait_for_url(f"{base}/auth/session", timeout=15000)
        body = json.loads(page.inner_text("body"))
        user = emu.tenant(0).user_by_upn(upn)
        assert (body["tid"], body["oid"], body["preferredUsername"]) == (emu.tenant(0).tenant_id, user["id"], upn)
        cookie = next(c for c in ctx.cookies() if c["name"] == "entra_mcp_session")
        assert cookie["httpOnly"] and cookie["sameSite"] == "Lax"
        assert page.evaluate("document.cookie").find("entra_mcp_session") == -1  # not readable from script
        out = page.evaluate("fetch('/auth/logout', {method: 'POST'}).then(r => r.json())")
        assert out == {"signedOut": True}
        assert page.evaluate("fetch('/auth/session').then(r => r.status)") == 401
        # the old cookie, replayed from outside the browser, is dead too
        assert httpx.get(f"{base}/auth/session", cookies={"entra_mcp_session": cookie["value"]}).status_code == 401
    finally:
        ctx.close()


def test_chat_sign_in_hands_a_token_to_the_widget_and_logout_revokes_it(stack: dict[str, Any], browser: Any) -> None:
    emu, base, widget = stack["emu"], stack["base"], stack["widget"]
    upn = user_upn(emu, 0, 1)
    ctx = browser.new_context(ignore_https_errors=True)
    try:
        page = ctx.new_page()
        page.goto(f"{widget}/chat")
        page.wait_for_function("document.getElementById('status').textContent === 'signed-out'", timeout=10000)
        page.click("#signin")
        sign_in_page(page, emu, upn)
        page.wait_for_function("document.getElementById('status').textContent.startsWith('signed-in') || "
                               "document.getElementById('status').textContent.startsWith('failed')", timeout=15000)
        assert page.inner_text("#status") == "signed-in"
        assert page.inner_text("#who") == upn
        assert "chat_code" not in page.url
        token = page.evaluate("window.chatToken")
        assert token and "." not in token
        assert not any(c["name"] == "entra_mcp_session" for c in ctx.cookies())  # chat gets no portal cookie
        check = stack["hooks"].sessions.validate_chat_token(token)
        assert check.valid and check.identity["preferredUsername"] == upn
        # the agent asks the MCP server, with its own bearer token, whether this chat session is genuine
        t = emu.tenant(0)
        agent = emu.tokens.issue_user_tokens(t, emu.portal_app(0), t.user_by_upn(user_upn(emu)),
                                             audience=emu.api_app(0).client_id, scp=["Identity.Investigate"],
                                             scopes=["Identity.Investigate"]).access_token
        verdict = mcp_tool(base, agent, "validate_chat_session", {"session_token": token, "claimed_user": upn})
        assert verdict["valid"] is True and verdict["identity"]["oid"] == t.user_by_upn(upn)["id"]
        page.evaluate("logout()")
        page.wait_for_function("document.getElementById('status').textContent.startsWith('signed-out')", timeout=10000)
        assert page.inner_text("#status") == "signed-out:true"
        after = mcp_tool(base, agent, "validate_chat_session", {"session_token": token})
        assert after["valid"] is False and "revoked" in json.dumps(after)
    finally:
        ctx.close()
