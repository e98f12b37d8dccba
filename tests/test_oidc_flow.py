"""Sign-in (authorization code + PKCE) end to end against the emulator over HTTPS: rules 9-12 of docs/sign-in.md.

The product's /auth/* routes run in-process (httpx's ASGI transport plays the browser, keeping cookies); the
emulator's login host is real: discovery, JWKS, authorize page, token endpoint.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest
from starlette.applications import Starlette

from _auth_fixtures import PUBLIC_URL, WIDGET_ORIGIN, CountingTransport, Harness, counting_transport, emulator_settings, user_upn
from entra_mcp.devtenant.server import run_emulator
from entra_mcp.oidc.flow import SignInError, safe_return_to
from entra_mcp.oidc.routes import SignIn

pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module")
def emu() -> Iterator[object]:
    with run_emulator(tenants=2, seed=11) as e:
        yield e


@pytest.fixture
async def h(emu, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Harness]:  # type: ignore[no-untyped-def]
    for k, v in emu.secret_env(None, with_sign_in=True).items():
        monkeypatch.setenv(k, v)
    settings = emulator_settings(emu, tmp_path)
    counting = counting_transport(emu)
    sign_in = SignIn.from_settings(settings, transport=counting)
    app = Starlette(routes=sign_in.routes())
    harness = Harness(emu, settings, app, counting)
    harness.sign_in_obj = sign_in  # type: ignore[attr-defined]
    yield harness
    await harness.aclose()
    await sign_in.aclose()
    sign_in.sessions.store.close()


def token_calls(c: CountingTransport) -> int:
    return c.count("/oauth2/v2.0/token")


async def test_portal_sign_in_sets_a_hardened_cookie_and_session_shows_identity(h: Harness) -> None:
    start = await h.login("portal", "/portal/home")
    assert start.status_code == 302
    q = parse_qs(urlsplit(start.headers["location"]).query)
    assert q["code_challenge_method"] == ["S256"] and len(q["code_challenge"][0]) == 43
    assert len(q["state"][0]) >= 22 and len(q["nonce"][0]) >= 22  # >= 128 bits
    assert q["redirect_uri"] == [PUBLIC_URL + "/auth/callback"]
    assert "entra_mcp_signin=" in start.headers["set-cookie"]
    upn = user_upn(h.emu)
    done = await h.client.get(await h.authenticate(start.headers["location"], upn))
    assert done.status_code == 303 and done.headers["location"] == "/portal/home"
    cookie = done.headers["set-cookie"]
    assert cookie.startswith("entra_mcp_session=") and "HttpOnly" in cookie and "SameSite=lax" in cookie
    assert "Secure" not in cookie  # plain-http loopback development only
    me = await h.client.get("/auth/session")
    assert me.status_code == 200
    body = me.json()
    user = h.emu.tenant(0).user_by_upn(upn)
    assert (body["tid"], body["oid"]) == (h.emu.tenant(0).tenant_id, user["id"])
    assert body["preferredUsername"] == upn
    text = me.text
    assert "eyJ" not in text and h.client.cookies.get("entra_mcp_session") not in text  # no tokens, no session id


async def test_logout_makes_the_old_cookie_useless(h: Harness) -> None:
    await h.sign_in()
    old = h.client.cookies.get("entra_mcp_session")
    assert (await h.client.get("/auth/session")).status_code == 200
    out = await h.client.post("/auth/logout", headers={"Origin": PUBLIC_URL})
    assert out.status_code == 200 and out.json()["signedOut"] is True
    assert (await h.client.get("/auth/session")).status_code == 401
    replay = await h.client.get("/auth/session", cookies={"entra_mcp_session": old})
    assert replay.status_code == 401 and replay.json()["reason"] == "revoked"


async def test_logout_from_a_foreign_origin_is_refused(h: Harness) -> None:
    await h.sign_in()
    for origin in ("https://evil.example", "null"):
        r = await h.client.post("/auth/logout", headers={"Origin": origin})
        assert r.status_code == 403
    assert (await h.client.get("/auth/session")).status_code == 200


async def test_session_id_is_rotated_at_sign_in(h: Harness) -> None:
    """Fixation: a session id the browser held before signing in is never reused and stops working."""
    await h.sign_in()
    first = h.client.cookies.get("entra_mcp_session")
    await h.sign_in(user=user_upn(h.emu, 0, 1))
    second = h.client.cookies.get("entra_mcp_session")
    assert first and second and first != second and len(second) >= 43
    assert (await h.client.get("/auth/session", cookies={"entra_mcp_session": first})).status_code == 401
    # an attacker-planted id is ignored and replaced
    h.client.cookies.clear()
    h.client.cookies.set("entra_mcp_session", "A" * 43, domain="127.0.0.1")
    await h.sign_in()
    assert h.client.cookies.get("entra_mcp_session", domain="127.0.0.1") != "A" * 43


async def test_state_is_single_use_and_checked_before_the_code_is_redeemed(h: Harness) -> None:
    start = await h.login("portal", "/")
    callback = await h.authenticate(start.headers["location"], user_upn(h.emu))
    ok = await h.client.get(callback)
    assert ok.status_code == 303
    calls = token_calls(h.counting)
    replay = await h.client.get(callback)  # same state (and code) again
    assert replay.status_code == 400 and "already used" in replay.text
    assert token_calls(h.counting) == calls  # refused before the code went to the token endpoint


async def test_missing_forged_or_foreign_browser_state_is_refused_before_redemption(h: Harness, emu) -> None:  # type: ignore[no-untyped-def]
    start = await h.login("portal", "/")
    callback = await h.authenticate(start.headers["location"], user_upn(h.emu))
    parts = urlsplit(callback)
    code = parse_qs(parts.query)["code"][0]
    calls = token_calls(h.counting)
    assert (await h.client.get("/auth/callback", params={"code": code})).status_code == 400
    assert (await h.client.get("/auth/callback", params={"code": code, "state": "x" * 43})).status_code == 400
    # the right state from a different browser (no sign-in cookie): login CSRF / injected callback
    other = Harness(emu, h.settings, h.app, h.counting)
    try:
        r = await other.client.get(callback)
        assert r.status_code == 400 and "another browser" in r.text
    finally:
        await other.aclose()
    assert token_calls(h.counting) == calls
    # that state is now spent too
    assert (await h.client.get(callback)).status_code == 400


async def test_state_expires_after_ten_minutes(h: Harness) -> None:
    flow = h.sign_in_obj.flow  # type: ignore[attr-defined]
    start = await h.login("portal", "/")
    callback = await h.authenticate(start.headers["location"], user_upn(h.emu))
    real = flow._clock
    flow._clock = lambda: real() + 601
    try:
        r = await h.client.get(callback)
    finally:
        flow._clock = real
    assert r.status_code == 400 and "10 minutes" in r.text


async def test_reused_code_is_refused_by_the_token_endpoint(h: Harness) -> None:
    """A code replayed under a fresh state of the same browser: the login host refuses (AADSTS54005)."""
    start = await h.login("portal", "/")
    callback = await h.authenticate(start.headers["location"], user_upn(h.emu))
    assert (await h.client.get(callback)).status_code == 303
    code = parse_qs(urlsplit(callback).query)["code"][0]
    second = await h.login("portal", "/")
    state = parse_qs(urlsplit(second.headers["location"]).query)["state"][0]
    r = await h.client.get("/auth/callback", params={"code": code, "state": state})
    assert r.status_code == 400 and "54005" in r.text


async def test_wrong_nonce_in_the_id_token_is_refused(h: Harness) -> None:
    """The login host answers with an ID token whose nonce is not this sign-in's (a substituted token)."""
    start = await h.login("portal", "/")
    authorize = urlsplit(start.headers["location"])
    query = {k: v[0] for k, v in parse_qs(authorize.query).items()}
    assert "nonce" in query
    query["nonce"] = "a-different-nonce"  # the IdP is asked for (and embeds) another sign-in's nonce
    callback = await h.authenticate(authorize._replace(query=urlencode(query)).geturl(), user_upn(h.emu))
    r = await h.client.get(callback)
    assert r.status_code == 400 and "nonce" in r.text
    assert (await h.client.get("/auth/session")).status_code == 401


@pytest.mark.parametrize(
    "target",
    ["//evil.example", "/\\evil.example", "https://evil.example", "javascript:alert(1)", "https://evil.example/?x=" + WIDGET_ORIGIN,
     "https://chat.example.test@evil.example/", "/ok\r\nSet-Cookie: x=1", "http://chat.example.test/", "data:text/html,x",
     "\\\\evil.example", "https:evil.example", " //evil.example"],
)
async def test_open_redirects_are_refused(h: Harness, target: str) -> None:
    r = await h.login("portal", target)
    assert r.status_code == 400
    assert "location" not in r.headers


def test_return_to_allow_list_accepts_what_it_should() -> None:
    allowed = {"https://chat.example.test", "http://127.0.0.1:8765"}
    assert safe_return_to(None, allowed_origins=allowed) == "/"
    assert safe_return_to("/a/b?c=d#e", allowed_origins=allowed) == "/a/b?c=d#e"
    assert safe_return_to("https://chat.example.test:443/w", allowed_origins=allowed) == "https://chat.example.test:443/w"
    assert safe_return_to("HTTP://127.0.0.1:8765/x", allowed_origins=allowed)
    with pytest.raises(SignInError):
        safe_return_to("https://chat.example.test:8443/", allowed_origins=allowed)


async def test_chat_flow_hands_over_a_one_time_code_then_an_opaque_revocable_token(h: Harness) -> None:
    done = await h.sign_in("chat", f"{WIDGET_ORIGIN}/chat?x=1")
    assert done.status_code == 303
    loc = urlsplit(done.headers["location"])
    assert f"{loc.scheme}://{loc.netloc}{loc.path}?{loc.query}" == f"{WIDGET_ORIGIN}/chat?x=1"
    assert "chat_code" not in loc.query and "set-cookie" not in {k.lower() for k in done.headers.keys()} | set()
    code = parse_qs(loc.fragment)["chat_code"][0]
    ex = await h.client.post("/auth/chat/exchange", json={"code": code, "code_verifier": h.verifier}, headers={"Origin": WIDGET_ORIGIN})
    assert ex.status_code == 200
    assert ex.headers["access-control-allow-origin"] == WIDGET_ORIGIN
    token = ex.json()["chatSessionToken"]
    assert token.count(".") == 0 and not token.startswith("eyJ") and len(token) >= 43
    again = await h.client.post("/auth/chat/exchange", json={"code": code, "code_verifier": h.verifier}, headers={"Origin": WIDGET_ORIGIN})
    assert again.status_code == 400  # the code is single use
    sessions = h.sign_in_obj.sessions  # type: ignore[attr-defined]
    check = sessions.validate_chat_token(token)
    assert check.valid and check.identity["tid"] == h.emu.tenant(0).tenant_id
    assert (await h.client.get("/auth/session", headers={"Authorization": f"Bearer {token}"})).json()["kind"] == "chat"
    out = await h.client.post("/auth/logout", headers={"Authorization": f"Bearer {token}", "Origin": WIDGET_ORIGIN})
    assert out.json()["signedOut"] is True
    after = sessions.validate_chat_token(token)
    assert not after.valid and after.reason == "revoked"


async def test_idp_error_answer_is_shown_and_spends_the_state(h: Harness) -> None:
    start = await h.login("portal", "/")
    state = parse_qs(urlsplit(start.headers["location"]).query)["state"][0]
    r = await h.client.get("/auth/callback", params={"error": "access_denied", "error_description": "<script>x</script>", "state": state})
    assert r.status_code == 400 and "<script>" not in r.text
    assert h.sign_in_obj.flow.sessions.store.get("state", state) is None  # type: ignore[attr-defined]


async def test_sessions_survive_a_restart(h: Harness, tmp_path: Path) -> None:
    await h.sign_in()
    cookie = h.client.cookies.get("entra_mcp_session")
    sign_in = SignIn.from_settings(h.settings)  # a new process would build it again from the same cache_dir
    app = Starlette(routes=sign_in.routes())
    again = Harness(h.emu, h.settings, app, h.counting)
    try:
        r = await again.client.get("/auth/session", cookies={"entra_mcp_session": cookie})
        assert r.status_code == 200
    finally:
        await again.aclose()
        await sign_in.aclose()
        sign_in.sessions.store.close()
    # and the id is not on disk in the clear
    raw = b"".join(p.read_bytes() for p in (tmp_path / "sessions").rglob("*") if p.is_file())
    assert cookie.encode() not in raw
    assert hashlib.sha256(cookie.encode()).hexdigest().encode() in raw


async def test_no_secret_reaches_the_logs(h: Harness, caplog: pytest.LogCaptureFixture) -> None:
    """Rule 19: client secret, codes, state, tokens and session ids never appear in log records."""
    import logging

    caplog.set_level(logging.DEBUG)
    start = await h.login("portal", "/")
    callback = await h.authenticate(start.headers["location"], user_upn(h.emu))
    await h.client.get(callback)
    await h.client.get(callback)  # a refused replay logs too
    token = await h.chat_token()
    q = parse_qs(urlsplit(callback).query)
    secrets_seen = [h.emu.portal_app(0).secrets[0].value, q["code"][0], q["state"][0], token,
                    h.client.cookies.get("entra_mcp_session", domain="127.0.0.1")]
    # the product's own records (the test's browser-like clients log their URLs through httpx, codes included)
    text = "\n".join(r.getMessage() for r in caplog.records if r.name.startswith("entra_mcp"))
    assert text  # something was logged
    for s in secrets_seen:
        assert s and s not in text
    assert "eyJ" not in text


async def test_cross_tenant_same_upn_signs_in_as_a_different_identity(emu, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    """nOAuth end to end: tenant B creates a user with the victim's UPN and signs in through the real flow.

    Single-tenant config: tenant B is refused. Multi-tenant config allowing B: the session is B's (tid, oid), never
    the victim's, even though preferred_username is identical."""
    for k, v in emu.secret_env(None, with_sign_in=True).items():
        monkeypatch.setenv(k, v)
    victim_upn = user_upn(emu, 0, 2)
    victim = emu.tenant(0).user_by_upn(victim_upn)
    b = emu.tenant(1)
    twin = b.user_by_upn(victim_upn) or b.create_user({"displayName": "Impostor", "userPrincipalName": victim_upn})
    emu.portal_app(0).sign_in_audience = "AzureADMultipleOrgs"

    single = SignIn.from_settings(emulator_settings(emu, tmp_path / "single"))
    multi = SignIn.from_settings(emulator_settings(emu, tmp_path / "multi", allowed_tenants=[b.tenant_id]))
    try:
        hs = Harness(emu, None, Starlette(routes=single.routes()), counting_transport(emu))
        refused = await hs.login("portal", "/", tenant=b.tenant_id)
        assert refused.status_code == 400 and "allowed_tenants" in refused.text
        await hs.aclose()

        hm = Harness(emu, None, Starlette(routes=multi.routes()), counting_transport(emu))
        start = await hm.login("portal", "/", tenant=b.tenant_id)
        assert start.status_code == 302 and f"/{b.tenant_id}/oauth2/v2.0/authorize" in start.headers["location"]
        done = await hm.client.get(await hm.authenticate(start.headers["location"], victim_upn))
        assert done.status_code == 303, done.text
        me = (await hm.client.get("/auth/session")).json()
        assert me["preferredUsername"].lower() == victim_upn.lower()
        assert (me["tid"], me["oid"]) == (b.tenant_id, twin["id"])
        assert (me["tid"], me["oid"]) != (emu.tenant(0).tenant_id, victim["id"])
        await hm.aclose()
    finally:
        emu.portal_app(0).sign_in_audience = "AzureADMyOrg"
        for s in (single, multi):
            await s.aclose()
            s.sessions.store.close()


async def test_https_public_url_gets_host_prefixed_secure_cookies(emu, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    for k, v in emu.secret_env(None, with_sign_in=True).items():
        monkeypatch.setenv(k, v)
    settings = emulator_settings(emu, tmp_path, public_url="https://portal.example.test")
    sign_in = SignIn.from_settings(settings)
    h = Harness(emu, settings, Starlette(routes=sign_in.routes()), counting_transport(emu))
    try:
        start = await h.login("portal", "/")
        binding = start.headers["set-cookie"]
        assert binding.startswith("__Host-entra_mcp_signin=") and "Secure" in binding and "Path=/" in binding
        assert "Domain" not in binding
        done = await h.client.get(await h.authenticate(start.headers["location"], user_upn(emu)))
        cookie = done.headers["set-cookie"]
        assert cookie.startswith("__Host-entra_mcp_session=") and "Secure" in cookie and "HttpOnly" in cookie
        assert (await h.client.get("/auth/session")).status_code == 200
    finally:
        await h.aclose()
        await sign_in.aclose()
        sign_in.sessions.store.close()


def test_plain_http_on_a_public_host_still_marks_cookies_secure() -> None:
    from entra_mcp.oidc.routes import CookiePolicy

    assert CookiePolicy.for_public_url("http://portal.example.test") == CookiePolicy(secure=True, host_prefix=False)
    assert CookiePolicy.for_public_url("http://127.0.0.1:8765") == CookiePolicy(secure=False, host_prefix=False)
    assert CookiePolicy.for_public_url("https://portal.example.test") == CookiePolicy(secure=True, host_prefix=True)


async def test_chat_exchange_refuses_oversized_and_malformed_bodies(h: Harness) -> None:
    hdr = {"Origin": WIDGET_ORIGIN}
    big = await h.client.post("/auth/chat/exchange", content=b"{" + b" " * 10_000 + b"}", headers={**hdr, "Content-Type": "application/json"})
    assert big.status_code == 413
    for body in (b"not json", b"[]", b'{"code": 5}', b'{"code": "' + b"A" * 43 + b'"}', b"\xff\xfe"):
        r = await h.client.post("/auth/chat/exchange", content=body, headers={**hdr, "Content-Type": "application/json"})
        assert r.status_code == 400 and r.json()["error"] == "invalid_code"
    r = await h.client.post("/auth/chat/exchange", data={"code": "x"}, headers=hdr)
    assert r.status_code == 400
    assert (await h.client.post("/auth/chat/exchange", json={"code": "x"}, headers={"Origin": "https://evil.example"})).status_code == 403
    pre = await h.client.options("/auth/chat/exchange", headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"})
    assert pre.status_code == 403 and "access-control-allow-origin" not in pre.headers


async def test_chat_code_is_useless_without_the_widgets_verifier(h: Harness) -> None:
    """Login CSRF / stolen fragment: a chat code only works with the verifier of the widget that started sign-in."""
    missing = await h.login("chat", f"{WIDGET_ORIGIN}/chat")
    assert missing.status_code == 400 and "chat_challenge" in missing.text
    done = await h.sign_in("chat", f"{WIDGET_ORIGIN}/chat")
    code = parse_qs(urlsplit(done.headers["location"]).fragment)["chat_code"][0]
    hdr = {"Origin": WIDGET_ORIGIN}
    wrong = await h.client.post("/auth/chat/exchange", json={"code": code, "code_verifier": "x" * 43}, headers=hdr)
    assert wrong.status_code == 400
    # the failed attempt spent the code: not even the right verifier gets it now
    right = await h.client.post("/auth/chat/exchange", json={"code": code, "code_verifier": h.verifier}, headers=hdr)
    assert right.status_code == 400
    done = await h.sign_in("chat", f"{WIDGET_ORIGIN}/chat")
    code = parse_qs(urlsplit(done.headers["location"]).fragment)["chat_code"][0]
    assert (await h.client.post("/auth/chat/exchange", json={"code": code}, headers=hdr)).status_code == 400
