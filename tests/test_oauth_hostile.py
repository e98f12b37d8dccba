"""The OAuth authorization server (server.auth.mode = "oauth") over real HTTP, each refusal checked.

One module-scoped stack (tests/_oauth_fixtures.py): the emulator over HTTPS, the product under uvicorn, and an HTTPS
server of Client ID Metadata Documents. The front channel (sign-in with Entra, consent) is walked with plain httpx
here; tests/test_oauth_end_to_end.py does it with the MCP SDK's own client and a real browser.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import anyio
import httpx
import pytest
from starlette.datastructures import Headers

from _auth_fixtures import MCP_HEADERS, rpc_result, user_upn
from _oauth_fixtures import CLIENT_NAME, SCOPE, HttpBrowser, Stack, oauth_stack, pkce

CALLBACK = "http://127.0.0.1/callback"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with oauth_stack(tmp_path_factory.mktemp("oauth-hostile")) as s:
        yield s


@pytest.fixture
def browser(stack: Stack) -> Iterator[HttpBrowser]:
    b = HttpBrowser(stack)
    yield b
    b.close()


def _client(browser: HttpBrowser, uris: list[str] | None = None, **extra: Any) -> dict[str, Any]:
    r = browser.register(uris or [CALLBACK], **extra)
    assert r.status_code == 201, r.text
    return dict(r.json())


def _tokens(browser: HttpBrowser, client_id: str, redirect: str = "http://127.0.0.1:40123/callback") -> dict[str, Any]:
    verifier, challenge = pkce()
    code = browser.code_for(client_id, redirect, challenge)
    r = browser.token(grant_type="authorization_code", code=code, redirect_uri=redirect, client_id=client_id,
                      code_verifier=verifier, resource=browser.stack.resource)
    assert r.status_code == 200, r.text
    return dict(r.json())


def _mcp(stack: Stack, token: str, session: str | None = None) -> httpx.Response:
    """initialize on /mcp with this bearer token (and an existing session id, when given)."""
    hdr = {**MCP_HEADERS, "Authorization": f"Bearer {token}"}
    if session:
        hdr["Mcp-Session-Id"] = session
    init = {"jsonrpc": "2.0", "id": 1, "method": "initialize" if not session else "tools/list",
            "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}
            if not session else {}}
    return httpx.post(f"{stack.base}/mcp", json=init, headers=hdr, timeout=20)


def _refused_redirect(r: httpx.Response, error: str) -> None:
    """An authorization error sent back to the client's own redirect URI (RFC 6749 section 4.1.2.1)."""
    assert r.status_code == 302, r.text
    q = parse_qs(urlsplit(r.headers["location"]).query)
    assert q["error"] == [error], q


def _refused_here(r: httpx.Response) -> None:
    """An error answered by the server itself: no redirect anywhere."""
    assert r.status_code == 400, (r.status_code, r.headers.get("location"))
    assert "location" not in r.headers


def test_metadata_links_this_server_as_the_authorization_server(stack: Stack) -> None:
    r = httpx.post(f"{stack.base}/mcp", json={}, headers=MCP_HEADERS)
    assert r.status_code == 401
    challenge = r.headers["www-authenticate"]
    assert f'resource_metadata="{stack.base}/.well-known/oauth-protected-resource/mcp"' in challenge
    prm = httpx.get(f"{stack.base}/.well-known/oauth-protected-resource/mcp").json()
    assert prm["resource"] == stack.resource and prm["authorization_servers"] == [stack.base]
    assert prm["scopes_supported"] == [SCOPE]
    asm = httpx.get(f"{stack.base}/.well-known/oauth-authorization-server").json()
    assert asm["issuer"] == stack.base
    assert asm["authorization_endpoint"] == f"{stack.base}/oauth/authorize"
    assert asm["token_endpoint"] == f"{stack.base}/oauth/token"
    assert asm["registration_endpoint"] == f"{stack.base}/oauth/register"
    assert asm["revocation_endpoint"] == f"{stack.base}/oauth/revoke"
    assert asm["code_challenge_methods_supported"] == ["S256"]
    assert asm["client_id_metadata_document_supported"] is True
    assert asm["authorization_response_iss_parameter_supported"] is True
    assert set(asm["grant_types_supported"]) == {"authorization_code", "refresh_token"}


def test_code_token_use_refresh_and_revocation(stack: Stack, browser: HttpBrowser) -> None:
    client = _client(browser)
    assert "client_secret" not in client and client["token_endpoint_auth_method"] == "none"
    tokens = _tokens(browser, client["client_id"])
    assert tokens["token_type"] == "Bearer" and tokens["scope"] == SCOPE and 0 < tokens["expires_in"] <= 600
    page = browser.last_page
    assert CLIENT_NAME in page and "127.0.0.1 (an application on this computer)" in page and stack.upn in page

    # the token is a principal of kind oauth: (tid, oid) of the person, the client it approved
    principal = anyio.run(stack.hooks.guard.authenticate, Headers({"authorization": f"Bearer {tokens['access_token']}"}))
    assert principal.kind == "oauth" and principal.client_id == client["client_id"]
    assert principal.key == f"{principal.tid}/{principal.oid}" and principal.preferred_username == stack.upn
    assert principal.scopes == (SCOPE,)
    r = _mcp(stack, tokens["access_token"])
    assert r.status_code == 200 and rpc_result(r)["result"]["serverInfo"]

    # refresh rotates both tokens; the new access token works, the old refresh token is spent
    r = browser.token(grant_type="refresh_token", refresh_token=tokens["refresh_token"], client_id=client["client_id"],
                      resource=stack.resource)
    assert r.status_code == 200, r.text
    fresh = r.json()
    assert fresh["refresh_token"] != tokens["refresh_token"] and fresh["access_token"] != tokens["access_token"]
    assert _mcp(stack, fresh["access_token"]).status_code == 200

    # revocation (RFC 7009): an unknown token is fine; the refresh token ends every token of the sign-in
    r = browser.http.post(f"{stack.base}/oauth/revoke", data={"token": "not-a-token", "client_id": client["client_id"]})
    assert r.status_code == 200
    r = browser.http.post(f"{stack.base}/oauth/revoke", data={"token": fresh["refresh_token"],
                                                              "client_id": client["client_id"]})
    assert r.status_code == 200
    for token in (fresh["access_token"], tokens["access_token"]):
        refused = _mcp(stack, token)
        assert refused.status_code == 401 and 'error="invalid_token"' in refused.headers["www-authenticate"]
    r = browser.token(grant_type="refresh_token", refresh_token=fresh["refresh_token"], client_id=client["client_id"])
    assert r.status_code == 400 and r.json()["error"] == "invalid_grant"


def test_refresh_token_reuse_revokes_the_whole_family(stack: Stack, browser: HttpBrowser) -> None:
    client = _client(browser)
    first = _tokens(browser, client["client_id"])
    second = browser.token(grant_type="refresh_token", refresh_token=first["refresh_token"],
                           client_id=client["client_id"]).json()
    assert _mcp(stack, second["access_token"]).status_code == 200
    # an attacker replays the spent refresh token: refused, and the legitimate client's tokens die with it
    replay = browser.token(grant_type="refresh_token", refresh_token=first["refresh_token"], client_id=client["client_id"])
    assert replay.status_code == 400 and replay.json()["error"] == "invalid_grant"
    assert _mcp(stack, second["access_token"]).status_code == 401
    r = browser.token(grant_type="refresh_token", refresh_token=second["refresh_token"], client_id=client["client_id"])
    assert r.status_code == 400 and r.json()["error"] == "invalid_grant"


def test_code_replay_is_refused_and_revokes_what_the_code_gave(stack: Stack, browser: HttpBrowser) -> None:
    client = _client(browser)
    redirect = "http://127.0.0.1:40999/callback"
    verifier, challenge = pkce()
    code = browser.code_for(client["client_id"], redirect, challenge)
    form = {"grant_type": "authorization_code", "code": code, "redirect_uri": redirect,
            "client_id": client["client_id"], "code_verifier": verifier}
    first = browser.token(**form)
    assert first.status_code == 200
    replay = browser.token(**form)
    assert replay.status_code == 400 and replay.json()["error"] == "invalid_grant"
    assert _mcp(stack, first.json()["access_token"]).status_code == 401


def test_pkce_plain_missing_or_wrong_is_refused(stack: Stack, browser: HttpBrowser) -> None:
    client = _client(browser)
    verifier, challenge = pkce()
    base = {"response_type": "code", "client_id": client["client_id"], "redirect_uri": CALLBACK, "state": "s",
            "resource": stack.resource}
    _refused_redirect(browser.authorize(**base, code_challenge=verifier, code_challenge_method="plain"), "invalid_request")
    _refused_redirect(browser.authorize(**base), "invalid_request")  # no code_challenge at all
    # a code issued with S256 and redeemed without, or with the wrong verifier, is refused (and spent)
    for bad in ({}, {"code_verifier": pkce()[0]}, {"code_verifier": challenge}):
        code = browser.code_for(client["client_id"], CALLBACK, challenge)
        r = browser.token(grant_type="authorization_code", code=code, redirect_uri=CALLBACK,
                          client_id=client["client_id"], **bad)
        assert r.status_code == 400 and r.json()["error"] in ("invalid_request", "invalid_grant"), r.text


@pytest.mark.parametrize("uri", [
    "http://evil.example/callback",  # plain http off loopback
    "javascript:alert(1)",
    "https://client.example/cb#frag",
    "com.example.app:/callback",  # private-use schemes are not accepted here
    "http://user@127.0.0.1/callback",
    "file:///etc/passwd",
])
def test_registration_refuses_unsafe_redirect_uris(browser: HttpBrowser, uri: str) -> None:
    r = browser.register([uri])
    assert r.status_code == 400 and r.json()["error"] in ("invalid_redirect_uri", "invalid_client_metadata"), r.text


@pytest.mark.parametrize("uri", [
    "https://evil.example/callback",
    "http://127.0.0.1.evil.example/callback",
    "http://localhost/callback",  # another loopback name than the one registered
    "https://127.0.0.1/callback",
    "http://127.0.0.1/callback/../evil",
    "http://127.0.0.1/callback?next=https://evil.example",
    "http://127.0.0.1/Callback",
    "http://evil.example@127.0.0.1/callback",
    "http://127.0.0.1:99999/callback",
])
def test_authorize_refuses_unregistered_redirect_uris_without_redirecting(browser: HttpBrowser, stack: Stack, uri: str) -> None:
    client = _client(browser)
    _, challenge = pkce()
    r = browser.authorize(response_type="code", client_id=client["client_id"], redirect_uri=uri, code_challenge=challenge,
                          code_challenge_method="S256", state="s", resource=stack.resource)
    _refused_here(r)


def test_loopback_redirect_uri_matches_on_any_port_only(browser: HttpBrowser, stack: Stack) -> None:
    client = _client(browser, ["http://127.0.0.1/callback", "https://app.example/oauth/done"])
    _, challenge = pkce()
    common = {"response_type": "code", "client_id": client["client_id"], "code_challenge": challenge,
              "code_challenge_method": "S256", "state": "s", "resource": stack.resource}
    r = browser.authorize(**common, redirect_uri="http://127.0.0.1:61234/callback")
    assert r.status_code == 302 and r.headers["location"].startswith(f"{stack.base}/oauth/consent?request=")
    _refused_here(browser.authorize(**common, redirect_uri="https://app.example:8443/oauth/done"))  # https: exact only
    assert browser.authorize(**common, redirect_uri="https://app.example/oauth/done").status_code == 302


def test_a_token_for_another_resource_is_refused(stack: Stack, browser: HttpBrowser) -> None:
    client = _client(browser)
    verifier, challenge = pkce()
    r = browser.authorize(response_type="code", client_id=client["client_id"], redirect_uri=CALLBACK, state="s",
                          code_challenge=challenge, code_challenge_method="S256", resource="https://graph.microsoft.com/")
    _refused_redirect(r, "invalid_target")
    code = browser.code_for(client["client_id"], CALLBACK, challenge)
    r = browser.token(grant_type="authorization_code", code=code, redirect_uri=CALLBACK, client_id=client["client_id"],
                      code_verifier=verifier, resource="http://127.0.0.1:1/mcp")
    assert r.status_code == 400 and r.json()["error"] == "invalid_target"


@pytest.mark.parametrize("kind,host", [
    ("good", "localhost"),  # resolves to loopback, and only 127.0.0.1 is allow-listed
    ("good", "10.20.30.40"),  # a private address, refused before any connection
    ("big", "127.0.0.1"),  # larger than client_metadata_max_bytes
    ("other-id", "127.0.0.1"),  # the document names another client_id
    ("secret", "127.0.0.1"),  # a shared-secret method in a public document
    ("text", "127.0.0.1"),  # not served as JSON
    ("redirect", "127.0.0.1"),  # redirects are not followed
])
def test_client_metadata_documents_that_are_refused(stack: Stack, browser: HttpBrowser, kind: str, host: str) -> None:
    port = urlsplit(stack.docs).port
    client_id = f"https://{host}:{port}/client/{kind}"
    _, challenge = pkce()
    r = browser.authorize(response_type="code", client_id=client_id, redirect_uri=CALLBACK, state="s",
                          code_challenge=challenge, code_challenge_method="S256", resource=stack.resource)
    _refused_here(r)
    assert r.json()["error"] in ("invalid_client", "invalid_request")


def test_a_client_metadata_document_on_an_allowed_host_works(stack: Stack, browser: HttpBrowser) -> None:
    client_id = f"{stack.docs}/client/good"
    tokens = _tokens(browser, client_id)
    assert CLIENT_NAME in browser.last_page and client_id in browser.last_page
    assert _mcp(stack, tokens["access_token"]).status_code == 200
    # http is never fetched
    _, challenge = pkce()
    r = browser.authorize(response_type="code", client_id=client_id.replace("https:", "http:"), redirect_uri=CALLBACK,
                          state="s", code_challenge=challenge, code_challenge_method="S256", resource=stack.resource)
    _refused_here(r)


def test_consent_needs_the_csrf_token_of_this_browser_session(stack: Stack, browser: HttpBrowser) -> None:
    client = _client(browser)
    _, challenge = pkce()
    params = {"response_type": "code", "client_id": client["client_id"], "redirect_uri": CALLBACK, "state": "s",
              "code_challenge": challenge, "code_challenge_method": "S256", "resource": stack.resource}
    form_headers = {"Content-Type": "application/x-www-form-urlencoded", "Origin": stack.base}

    def fresh_request() -> tuple[str, dict[str, str]]:
        start = browser.authorize(**params)
        page = browser.consent_page(start.headers["location"])
        assert page.status_code == 200
        import re

        return start.headers["location"], dict(re.findall(r'name=(\w+) value="([^"]*)"', page.text))

    # no csrf / a wrong one: refused, and the request is spent
    _, fields = fresh_request()
    r = browser.http.post(f"{stack.base}/oauth/consent", data={"request": fields["request"], "decision": "approve"},
                          headers=form_headers)
    assert r.status_code == 403 and "location" not in r.headers
    _, fields = fresh_request()
    r = browser.http.post(f"{stack.base}/oauth/consent", headers=form_headers,
                          data={"request": fields["request"], "csrf": fields["csrf"][::-1], "decision": "approve"})
    assert r.status_code == 403
    r = browser.http.post(f"{stack.base}/oauth/consent", headers=form_headers,
                          data={"request": fields["request"], "csrf": fields["csrf"], "decision": "approve"})
    assert r.status_code == 400  # spent by the refused attempt

    # the right fields posted from another browser (its own sign-in, its own cookies): refused
    _, fields = fresh_request()
    other = HttpBrowser(stack)
    try:
        other.stack = stack
        start = other.authorize(**params)
        other.consent_page(start.headers["location"])  # signs the other browser in
        r = other.http.post(f"{stack.base}/oauth/consent", headers=form_headers,
                            data={"request": fields["request"], "csrf": fields["csrf"], "decision": "approve"})
        assert r.status_code == 403 and "location" not in r.headers
    finally:
        other.close()

    # a cross-site form post is stopped at the door
    _, fields = fresh_request()
    r = browser.http.post(f"{stack.base}/oauth/consent", headers={**form_headers, "Origin": "https://evil.example"},
                          data={"request": fields["request"], "csrf": fields["csrf"], "decision": "approve"})
    assert r.status_code == 403

    # a consent page opened in a browser that did not start the request says so
    start = browser.authorize(**params)
    stranger = HttpBrowser(stack)
    try:
        page = stranger.http.get(start.headers["location"])
        assert page.status_code == 400 and "another browser" in page.text
    finally:
        stranger.close()

    # deny: the client hears access_denied
    consent_url, _ = fresh_request()
    start = browser.authorize(**params)
    r = browser.decide(start.headers["location"], decision="deny")
    assert r.status_code == 303
    assert parse_qs(urlsplit(r.headers["location"]).query)["error"] == ["access_denied"]


def test_a_confidential_client_secret_is_stored_hashed_and_checked(stack: Stack, browser: HttpBrowser) -> None:
    client = _client(browser, token_endpoint_auth_method="client_secret_post")
    secret = client["client_secret"]
    assert secret
    on_disk = b"".join(p.read_bytes() for p in Path(stack.settings.server.cache_dir).rglob("*") if p.is_file())
    assert secret.encode() not in on_disk
    verifier, challenge = pkce()
    code = browser.code_for(client["client_id"], CALLBACK, challenge)
    form = {"grant_type": "authorization_code", "code": code, "redirect_uri": CALLBACK,
            "client_id": client["client_id"], "code_verifier": verifier}
    r = browser.token(**form, client_secret=secret[::-1])
    assert r.status_code == 401 and r.json()["error"] == "invalid_client"
    code = browser.code_for(client["client_id"], CALLBACK, challenge)
    r = browser.token(**{**form, "code": code}, client_secret=secret)
    assert r.status_code == 200, r.text
    tokens = r.json()
    assert tokens["access_token"].encode() not in b"".join(
        p.read_bytes() for p in Path(stack.settings.server.cache_dir).rglob("*") if p.is_file())


def test_an_mcp_session_stays_with_the_person_who_opened_it(stack: Stack, browser: HttpBrowser) -> None:
    client = _client(browser)
    mine = _tokens(browser, client["client_id"])
    opened = _mcp(stack, mine["access_token"])
    session = opened.headers["mcp-session-id"]
    other = HttpBrowser(stack)
    try:
        other.stack = Stack(stack.emu, stack.base, stack.docs, stack.settings, stack.hooks, user_upn(stack.emu, n=1))
        theirs = _tokens(other, client["client_id"])
    finally:
        other.close()
    assert _mcp(stack, theirs["access_token"], session).status_code == 404
    assert _mcp(stack, mine["access_token"], session).status_code == 200


def test_no_token_code_or_secret_reaches_the_logs(stack: Stack, browser: HttpBrowser,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    client = _client(browser, token_endpoint_auth_method="client_secret_post")
    verifier, challenge = pkce()
    start = browser.authorize(response_type="code", client_id=client["client_id"], redirect_uri=CALLBACK, state="s",
                              code_challenge=challenge, code_challenge_method="S256", resource=stack.resource,
                              scope=SCOPE)
    request_id = parse_qs(urlsplit(start.headers["location"]).query)["request"][0]
    done = browser.decide(start.headers["location"])
    code = parse_qs(urlsplit(done.headers["location"]).query)["code"][0]
    tokens = browser.token(grant_type="authorization_code", code=code, redirect_uri=CALLBACK,
                           client_id=client["client_id"], code_verifier=verifier, client_secret=client["client_secret"]).json()
    _mcp(stack, tokens["access_token"])
    browser.token(grant_type="refresh_token", refresh_token=tokens["refresh_token"], client_id=client["client_id"],
                  client_secret=client["client_secret"])
    browser.token(grant_type="refresh_token", refresh_token=tokens["refresh_token"], client_id=client["client_id"],
                  client_secret=client["client_secret"])  # reuse: logged as a warning, without the token
    _mcp(stack, tokens["access_token"])  # refused: logged, without the token
    server_side = ("entra_mcp", "mcp", "uvicorn", "starlette")  # not this test's own httpx client
    text = "\n".join(r.getMessage() + json.dumps(r.args, default=str) for r in caplog.records
                     if r.name.split(".")[0] in server_side)
    assert "revoked" in text  # the events were logged...
    for secret in (client["client_secret"], code, request_id, verifier, tokens["access_token"], tokens["refresh_token"]):
        assert secret not in text  # ...their secrets were not


def test_doctor_reports_the_oauth_modes_readiness(stack: Stack) -> None:
    import io

    from entra_mcp.commands.doctor import doctor_oauth

    out = io.StringIO()
    assert anyio.run(doctor_oauth, stack.settings, out) is True
    text = out.getvalue()
    assert f"issuer {stack.base}" in text and "dynamic registration and client metadata documents" in text
    assert "sign-in: ok" in text

    s = stack.settings
    oauth = s.server.auth.oauth.model_copy(update={"dynamic_registration": False, "client_metadata_documents": False})
    server = s.server.model_copy(update={"auth": s.server.auth.model_copy(update={"oauth": oauth}),
                                         "public_url": "http://mcp.example.com"})
    out = io.StringIO()
    assert anyio.run(doctor_oauth, s.model_copy(update={"server": server}), out) is False
    assert "PLAIN HTTP off loopback" in out.getvalue() and "clients: NONE" in out.getvalue()


def test_refresh_re_checks_the_tenant_allow_list_and_the_access_rules(stack: Stack, browser: HttpBrowser,
                                                                       tmp_path: Path) -> None:
    """A refresh-token grant asks again whether the person may use this server. (1) A family issued to a person of a
    tenant no longer allowed to sign in (as after [oidc] allowed_tenants lost it): refused, family revoked.
    (2) The same server restarted with [server.access] home_tenant = false and no rule for the person (a second app
    over the same token store, as a restart would be): refused, family revoked, its access token dead on the first
    server too."""
    import uuid

    from entra_mcp.config import parse_settings
    from entra_mcp.mirror.store import MirrorStore
    from entra_mcp.server.app import create_server
    from entra_mcp.server.auth import build_hooks
    from entra_mcp.server.http import create_http_app
    from entra_mcp.views import ViewProvider

    client = _client(browser)
    oauth = stack.hooks.oauth
    # (1) a grant of a person whose tenant is not (any more) allowed: issued through the consent step's own code path
    verifier, challenge = pkce()
    request = {"client_id": client["client_id"], "redirect_uri": CALLBACK, "redirect_explicit": True,
               "code_challenge": challenge, "state": None, "scopes": [SCOPE], "resource": stack.resource}
    code = oauth.server.issue_code(request, {"tid": str(uuid.uuid4()), "oid": str(uuid.uuid4()), "name": "Gone"})
    tokens = browser.token(grant_type="authorization_code", code=code, redirect_uri=CALLBACK,
                           client_id=client["client_id"], code_verifier=verifier).json()
    assert _mcp(stack, tokens["access_token"]).status_code == 200
    r = browser.token(grant_type="refresh_token", refresh_token=tokens["refresh_token"], client_id=client["client_id"])
    assert r.status_code == 400 and r.json()["error"] == "invalid_grant", r.text
    assert "no longer" in r.json()["error_description"] and "revoked" in r.json()["error_description"]
    assert _mcp(stack, tokens["access_token"]).status_code == 401

    # (2) the person of the home tenant, then a configuration without their access
    mine = _tokens(browser, client["client_id"])
    again = browser.token(grant_type="refresh_token", refresh_token=mine["refresh_token"], client_id=client["client_id"])
    assert again.status_code == 200, again.text  # still allowed on this server
    mine = again.json()
    data = stack.settings.model_dump(mode="json")
    data["server"]["access"] = {"home_tenant": False}
    settings = parse_settings(data)
    hooks = build_hooks(settings)
    store = MirrorStore(settings.server.cache_dir)
    try:
        views = ViewProvider.from_settings(settings, store)
        app = create_http_app(settings, create_server(settings, views=views, sessions=hooks.sessions), views=views,
                              extra_routes=hooks.routes, protect=hooks.protect)

        async def refresh() -> httpx.Response:
            try:
                async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=stack.base) as http:
                    return await http.post("/oauth/token", data={
                        "grant_type": "refresh_token", "client_id": client["client_id"],
                        "refresh_token": mine["refresh_token"]})
            finally:
                await hooks.aclose()  # on the loop its clients were used on

        r = anyio.run(refresh)
        assert r.status_code == 400 and r.json()["error"] == "invalid_grant", r.text
        assert "access policy" in r.json()["error_description"]
        assert _mcp(stack, mine["access_token"]).status_code == 401  # the family is gone for every replica
    finally:
        store.close()


def test_remembered_consent_covers_one_client_redirect_host_and_browser(stack: Stack, browser: HttpBrowser) -> None:
    """After approving a client, its next authorization to the same redirect host skips the page (303 to the client
    with a code); another redirect host of that client shows the page again; a request started in another browser
    is refused as before, remembered or not; remember_consent = false turns it off."""
    from entra_mcp.config import parse_settings
    from entra_mcp.oauth.routes import OAuthRoutes

    other_host = "https://desk.example/callback"
    client = _client(browser, [CALLBACK, other_host])
    _, challenge = pkce()

    def start(b: HttpBrowser, redirect: str) -> str:
        r = b.authorize(response_type="code", client_id=client["client_id"], redirect_uri=redirect,
                        code_challenge=challenge, code_challenge_method="S256", state="s2", resource=stack.resource,
                        scope=SCOPE)
        assert r.status_code == 302, r.text
        return str(r.headers["location"])

    browser.code_for(client["client_id"], CALLBACK, challenge)  # the page, approved
    assert 'id=remember' in browser.last_page
    page = browser.consent_page(start(browser, CALLBACK))
    assert page.status_code == 303, page.text[:300]
    q = parse_qs(urlsplit(page.headers["location"]).query)
    assert page.headers["location"].startswith(CALLBACK) and q["code"] and q["state"] == ["s2"]
    assert browser.consent_page(start(browser, other_host)).status_code == 200  # another redirect host: ask again
    other = HttpBrowser(stack)
    try:
        foreign = start(other, CALLBACK)  # started in another browser, opened in this signed-in one
    finally:
        other.close()
    r = browser.http.get(foreign)
    assert r.status_code == 400 and "another browser" in r.text
    data = stack.settings.model_dump(mode="json")
    data["server"]["auth"]["oauth"]["remember_consent"] = False
    assert OAuthRoutes.from_settings(parse_settings(data), stack.hooks.sign_in).remember_seconds == 0


def test_cors_only_for_listed_origins_never_with_credentials(stack: Stack) -> None:
    """[server.auth.oauth] cors_origins: a listed origin's preflight on each CORS endpoint is answered before
    authentication (204, that exact origin, no credentials), its answers name it and expose the MCP headers; an
    unlisted origin gets 403 and no CORS header anywhere; the consent and authorize pages are never CORS routes;
    "*" or a non-origin in the config is a clear error."""
    from entra_mcp.config import parse_settings
    from entra_mcp.errors import ConfigError
    from _oauth_fixtures import WEB_CLIENT

    with httpx.Client(base_url=stack.base, timeout=20) as http:
        for path in ("/mcp", "/oauth/token", "/oauth/register", "/oauth/revoke", "/.well-known/oauth-authorization-server",
                     "/.well-known/oauth-protected-resource/mcp"):
            pre = http.options(path, headers={"Origin": WEB_CLIENT, "Access-Control-Request-Method": "POST",
                                              "Access-Control-Request-Headers": "authorization, content-type, "
                                                                                "mcp-protocol-version, mcp-param-query"})
            assert pre.status_code == 204, (path, pre.status_code)
            assert pre.headers["access-control-allow-origin"] == WEB_CLIENT
            assert "access-control-allow-credentials" not in pre.headers
            allowed = pre.headers["access-control-allow-headers"]
            assert "authorization" in allowed and "mcp-param-query" in allowed
            foreign = http.options(path, headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"})
            assert foreign.status_code == 403 and not any(h.startswith("access-control") for h in foreign.headers)
        r = http.post("/mcp", json={"jsonrpc": "2.0", "id": 1, "method": "ping"}, headers={**MCP_HEADERS, "Origin": WEB_CLIENT})
        assert r.status_code == 401 and r.headers["access-control-allow-origin"] == WEB_CLIENT
        assert "WWW-Authenticate" in r.headers["access-control-expose-headers"]
        meta = http.get("/.well-known/oauth-authorization-server", headers={"Origin": WEB_CLIENT})
        assert meta.headers["access-control-allow-origin"] == WEB_CLIENT and "origin" in meta.headers["vary"].lower()
        same = http.get("/.well-known/oauth-authorization-server")  # no Origin: no CORS headers
        assert "access-control-allow-origin" not in same.headers
        for path in ("/oauth/authorize", "/oauth/consent"):
            page = http.get(path, headers={"Origin": WEB_CLIENT})
            assert "access-control-allow-origin" not in page.headers, path
    data = stack.settings.model_dump(mode="json")
    for bad in ("*", "https://chat.example.com/app", "http://chat.example.com", "chat.example.com"):
        data["server"]["auth"]["oauth"]["cors_origins"] = [bad]
        with pytest.raises(ConfigError, match="cors_origins"):
            parse_settings(data)
