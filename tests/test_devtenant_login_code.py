"""Sign-in on the emulator's login host: authorize page, authorization code with PKCE, refresh tokens, logout.

Driven with httpx over real HTTPS (the form is posted as a browser would), and once end to end with msal's own
auth-code flow.
"""

from __future__ import annotations

import base64
import hashlib
import re
import secrets
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import msal
import pytest

from entra_mcp.devtenant.model import DEFAULT_USER_PASSWORD
from entra_mcp.devtenant.server import RunningEmulator
from entra_mcp.devtenant.tokens import unverified_claims


@pytest.fixture(autouse=True)
def _msal_honours_verify(monkeypatch: pytest.MonkeyPatch) -> None:
    # requests lets these override msal's verify= (psf/requests#3829); see tests/conftest.py
    monkeypatch.delenv("REQUESTS_CA_BUNDLE", raising=False)
    monkeypatch.delenv("CURL_CA_BUNDLE", raising=False)


def pkce() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    return verifier, challenge


def a_user(emu: RunningEmulator, *, enabled: bool = True, tenant_index: int = 0) -> dict[str, Any]:
    return next(u for u in emu.tenant(tenant_index).users.values()
                if bool(u.get("accountEnabled")) is enabled and u.get("mail") and u.get("userType") == "Member")


def api_scope(emu: RunningEmulator) -> str:
    return f"api://{emu.api_app().client_id}/Identity.Investigate"


class Browser:
    """Just enough of a browser: GET the authorize page, fill the form, read the redirect."""

    def __init__(self, emu: RunningEmulator) -> None:
        self.emu = emu
        self.client = httpx.Client(verify=emu.ssl_context(), follow_redirects=False)
        self.redirect_uri = emu.portal_app().redirect_uris[0]

    def authorize(self, *, tenant: str | None = None, **params: str) -> httpx.Response:
        query = {
            "client_id": self.emu.portal_app().client_id,
            "response_type": "code",
            "redirect_uri": self.redirect_uri,
            "response_mode": "query",
            "scope": f"openid profile email offline_access {api_scope(self.emu)}",
            "state": "st-" + secrets.token_hex(8),
            "nonce": "n-" + secrets.token_hex(8),
        }
        query.update(params)
        return self.client.get(f"{self.emu.login_url}/{tenant or self.emu.tenant().tenant_id}/oauth2/v2.0/authorize",
                               params=query)

    def submit(self, page: httpx.Response, username: str, password: str = DEFAULT_USER_PASSWORD) -> httpx.Response:
        action = re.search(r'<form method="post" action="([^"]+)"', page.text)
        ctx = re.search(r'name="ctx" value="([^"]+)"', page.text)
        assert action and ctx
        return self.client.post(f"{self.emu.login_url}{action.group(1)}",
                                data={"ctx": ctx.group(1), "username": username, "password": password})

    def sign_in(self, user: dict[str, Any], challenge: str, **params: str) -> dict[str, str]:
        resp = self.submit(self.authorize(code_challenge=challenge, code_challenge_method="S256", **params),
                           user["userPrincipalName"])
        assert resp.status_code == 302, resp.text
        location = resp.headers["location"]
        assert location.startswith(self.redirect_uri + "?")
        return {k: v[0] for k, v in parse_qs(urlsplit(location).query).items()}

    def redeem(self, code: str, verifier: str, **extra: str) -> httpx.Response:
        portal = self.emu.portal_app()
        data = {"grant_type": "authorization_code", "client_id": portal.client_id,
                "client_secret": portal.secrets[0].value, "code": code, "redirect_uri": self.redirect_uri,
                "code_verifier": verifier}
        data.update(extra)
        return self.client.post(f"{self.emu.login_url}/{self.emu.tenant().tenant_id}/oauth2/v2.0/token", data=data)


@pytest.fixture
def browser(emulator: RunningEmulator) -> Any:
    b = Browser(emulator)
    yield b
    b.client.close()


def test_code_flow_with_pkce_end_to_end(emulator: RunningEmulator, browser: Browser) -> None:
    user, tenant, portal, api = a_user(emulator), emulator.tenant(), emulator.portal_app(), emulator.api_app()
    verifier, challenge = pkce()
    back = browser.sign_in(user, challenge, state="the-state", nonce="the-nonce")
    assert back["state"] == "the-state" and back["code"] and back["session_state"]
    resp = browser.redeem(back["code"], verifier, client_info="1")
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["token_type"] == "Bearer" and body["expires_in"] > 0 and body["ext_expires_in"] > 0
    assert api_scope(emulator) in body["scope"].split()

    idt = unverified_claims(body["id_token"])
    assert idt["aud"] == portal.client_id
    assert idt["iss"] == f"{emulator.login_url}/{tenant.tenant_id}/v2.0"
    assert idt["tid"] == tenant.tenant_id and idt["oid"] == user["id"]
    assert idt["nonce"] == "the-nonce"
    assert idt["preferred_username"] == user["userPrincipalName"] and idt["name"] == user["displayName"]
    assert idt["email"] == user["mail"]
    assert idt["ver"] == "2.0" and idt["sid"] == back["session_state"]
    assert idt["sub"] != user["id"] and len(idt["sub"]) == 43  # pairwise, per app
    for claim in ("iat", "nbf", "exp", "uti", "rh"):
        assert claim in idt

    at = unverified_claims(body["access_token"])
    assert at["aud"] == api.client_id
    assert at["scp"] == "Identity.Investigate"
    assert at.get("idtyp", "user") == "user" and "roles" not in at
    assert at["oid"] == user["id"] and at["tid"] == tenant.tenant_id and at["azp"] == portal.client_id
    assert at["preferred_username"] == user["userPrincipalName"] and at["name"] == user["displayName"]
    assert at["sub"] != idt["sub"]  # pairwise per application: the API sees another subject
    assert body["refresh_token"] and body["refresh_token"] not in (body["access_token"], back["code"])

    info = json_b64(body["client_info"])
    assert info == {"uid": user["id"], "utid": tenant.tenant_id}


def json_b64(text: str) -> Any:
    import json

    return json.loads(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))


def test_wrong_verifier_is_invalid_grant(emulator: RunningEmulator, browser: Browser) -> None:
    verifier, challenge = pkce()
    back = browser.sign_in(a_user(emulator), challenge)
    resp = browser.redeem(back["code"], pkce()[0])
    assert resp.status_code == 400
    assert resp.json()["error"] == "invalid_grant" and resp.json()["error_codes"] == [501481]
    missing = browser.redeem(back["code"], "")
    assert missing.json()["error"] == "invalid_grant"


def test_code_is_single_use(emulator: RunningEmulator, browser: Browser) -> None:
    verifier, challenge = pkce()
    back = browser.sign_in(a_user(emulator), challenge)
    assert browser.redeem(back["code"], verifier).status_code == 200
    again = browser.redeem(back["code"], verifier)
    assert again.status_code == 400
    assert again.json()["error"] == "invalid_grant"
    assert again.json()["error_description"].startswith("AADSTS54005: OAuth2 Authorization code was already redeemed")


def test_garbage_code_is_invalid_grant(emulator: RunningEmulator, browser: Browser) -> None:
    resp = browser.redeem("1.Anot-a-code", pkce()[0])
    assert resp.status_code == 400 and resp.json()["error"] == "invalid_grant"


def test_expired_code_is_aadsts70008(fresh_emulator: Any) -> None:
    emu: RunningEmulator = fresh_emulator()
    b = Browser(emu)
    verifier, challenge = pkce()
    back = b.sign_in(a_user(emu), challenge)
    with httpx.Client(verify=emu.ssl_context()) as client:
        client.post(f"{emu.base_url}/_emulator/clock", json={"seconds": 601}).raise_for_status()
    resp = b.redeem(back["code"], verifier)
    assert resp.status_code == 400
    assert resp.json()["error"] == "invalid_grant" and resp.json()["error_codes"] == [70008]
    b.client.close()


def test_code_still_valid_just_before_ten_minutes(fresh_emulator: Any) -> None:
    emu: RunningEmulator = fresh_emulator()
    b = Browser(emu)
    verifier, challenge = pkce()
    back = b.sign_in(a_user(emu), challenge)
    emu.state.clock.advance(590)
    assert b.redeem(back["code"], verifier).status_code == 200
    b.client.close()


def test_redirect_uri_mismatch_at_authorize_is_an_error_page_not_a_redirect(browser: Browser) -> None:
    resp = browser.authorize(redirect_uri="https://evil.example/cb", code_challenge=pkce()[1],
                             code_challenge_method="S256")
    assert resp.status_code == 400
    assert "location" not in resp.headers
    assert "AADSTS50011" in resp.text and "evil.example" in resp.text
    # a prefix or a trailing slash is not an exact match either
    near = browser.authorize(redirect_uri=browser.redirect_uri + "/", code_challenge=pkce()[1],
                             code_challenge_method="S256")
    assert near.status_code == 400 and "location" not in near.headers


def test_redirect_uri_must_equal_the_one_used_at_authorize(emulator: RunningEmulator, fresh_emulator: Any) -> None:
    emu: RunningEmulator = fresh_emulator()
    second = "http://127.0.0.1:9/other-callback"
    emu.add_redirect_uri(second)
    b = Browser(emu)
    verifier, challenge = pkce()
    back = b.sign_in(a_user(emu), challenge)
    resp = b.redeem(back["code"], verifier, redirect_uri=second)
    assert resp.status_code == 400
    assert resp.json()["error"] == "invalid_grant" and resp.json()["error_codes"] == [500112]
    b.client.close()


def test_unknown_client_at_authorize_is_an_error_page(browser: Browser) -> None:
    resp = browser.authorize(client_id="00000000-0000-0000-0000-00000000abcd")
    assert resp.status_code == 400 and "location" not in resp.headers and "AADSTS700016" in resp.text


@pytest.mark.parametrize(
    ("params", "error"),
    [
        ({}, "invalid_request"),  # no PKCE
        ({"code_challenge": "x" * 43, "code_challenge_method": "plain"}, "invalid_request"),
        ({"code_challenge": "x" * 43, "code_challenge_method": "S256", "response_type": "token"},
         "unsupported_response_type"),
        ({"code_challenge": "x" * 43, "code_challenge_method": "S256",
          "scope": "openid api://00000000-0000-0000-0000-000000000009/x"}, "invalid_resource"),
        ({"code_challenge": "x" * 43, "code_challenge_method": "S256", "scope": "openid api://{api}/Nope"},
         "invalid_scope"),
    ],
    ids=["no-pkce", "plain-pkce", "token-response", "unknown-resource", "unknown-scope"],
)
def test_authorize_errors_after_a_valid_redirect_uri_go_back_to_the_app(
    emulator: RunningEmulator, browser: Browser, params: dict[str, str], error: str
) -> None:
    if "scope" in params:
        params = {**params, "scope": params["scope"].replace("{api}", emulator.api_app().client_id)}
    resp = browser.authorize(state="s1", **params)
    assert resp.status_code == 302
    back = parse_qs(urlsplit(resp.headers["location"]).query)
    assert back["error"] == [error] and back["state"] == ["s1"] and back["error_description"][0].startswith("AADSTS")


def test_wrong_password_shows_aadsts50126_and_lets_the_user_retry(emulator: RunningEmulator,
                                                                   browser: Browser) -> None:
    user = a_user(emulator)
    page = browser.authorize(code_challenge=pkce()[1], code_challenge_method="S256")
    wrong = browser.submit(page, user["userPrincipalName"], "not-the-password")
    assert wrong.status_code == 400 and "location" not in wrong.headers
    assert "AADSTS50126" in wrong.text and 'id="password"' in wrong.text
    right = browser.submit(wrong, user["userPrincipalName"])
    assert right.status_code == 302


def test_disabled_account_gets_aadsts50057(emulator: RunningEmulator, browser: Browser) -> None:
    user = a_user(emulator, enabled=False)
    resp = browser.submit(browser.authorize(code_challenge=pkce()[1], code_challenge_method="S256"),
                          user["userPrincipalName"])
    assert resp.status_code == 400 and "location" not in resp.headers and "AADSTS50057" in resp.text


def test_unknown_user_gets_aadsts50034(browser: Browser) -> None:
    resp = browser.submit(browser.authorize(code_challenge=pkce()[1], code_challenge_method="S256"),
                          "nobody@nowhere.example")
    assert resp.status_code == 400 and "AADSTS50034" in resp.text


def test_sign_in_form_is_fillable_and_prefills_login_hint(emulator: RunningEmulator, browser: Browser) -> None:
    upn = a_user(emulator)["userPrincipalName"]
    page = browser.authorize(code_challenge=pkce()[1], code_challenge_method="S256", login_hint=upn)
    for element in ('id="username"', 'id="password"', 'id="submit"', f'value="{upn}"'):
        assert element in page.text
    assert page.headers["x-frame-options"] == "DENY"


def test_sign_in_page_is_single_use(emulator: RunningEmulator, browser: Browser) -> None:
    user = a_user(emulator)
    page = browser.authorize(code_challenge=pkce()[1], code_challenge_method="S256")
    assert browser.submit(page, user["userPrincipalName"]).status_code == 302
    assert browser.submit(page, user["userPrincipalName"]).status_code == 400


def test_form_post_response_mode(emulator: RunningEmulator, browser: Browser) -> None:
    resp = browser.submit(browser.authorize(code_challenge=pkce()[1], code_challenge_method="S256",
                                            response_mode="form_post", state="fp"),
                          a_user(emulator)["userPrincipalName"])
    assert resp.status_code == 200
    assert f'action="{browser.redirect_uri}"' in resp.text
    assert re.search(r'name="code" value="1\.A[^"]+"', resp.text) and 'name="state" value="fp"' in resp.text


def test_prompt_none_without_a_session_is_login_required(browser: Browser) -> None:
    resp = browser.authorize(code_challenge=pkce()[1], code_challenge_method="S256", prompt="none", state="pn")
    back = parse_qs(urlsplit(resp.headers["location"]).query)
    assert back["error"] == ["login_required"]


def test_confidential_client_must_authenticate_at_redemption(emulator: RunningEmulator, browser: Browser) -> None:
    verifier, challenge = pkce()
    back = browser.sign_in(a_user(emulator), challenge)
    no_secret = browser.redeem(back["code"], verifier, client_secret="")
    assert no_secret.status_code == 401 and no_secret.json()["error"] == "invalid_client"
    bad_secret = browser.redeem(back["code"], verifier, client_secret="wrong")
    assert bad_secret.json()["error_codes"] == [7000215]
    assert browser.redeem(back["code"], verifier).status_code == 200  # refused attempts did not burn the code


def test_refresh_token_gets_new_tokens_and_can_switch_resource(emulator: RunningEmulator, browser: Browser) -> None:
    user, portal = a_user(emulator), emulator.portal_app()
    verifier, challenge = pkce()
    first = browser.redeem(browser.sign_in(user, challenge)["code"], verifier).json()
    data = {"grant_type": "refresh_token", "client_id": portal.client_id, "client_secret": portal.secrets[0].value,
            "refresh_token": first["refresh_token"]}
    url = f"{emulator.login_url}/{emulator.tenant().tenant_id}/oauth2/v2.0/token"
    again = browser.client.post(url, data=data).json()
    at = unverified_claims(again["access_token"])
    assert at["aud"] == emulator.api_app().client_id and at["oid"] == user["id"]
    assert again["refresh_token"] and unverified_claims(again["id_token"])["oid"] == user["id"]
    graph = browser.client.post(url, data={**data, "scope": "User.Read offline_access"}).json()
    gat = unverified_claims(graph["access_token"])
    assert gat["aud"] == emulator.graph_url and gat["scp"] == "User.Read"
    other = browser.client.post(url, data={**data, "client_id": emulator.sync_app().client_id,
                                           "client_secret": emulator.sync_app().secrets[0].value})
    assert other.status_code == 400 and other.json()["error"] == "invalid_grant"
    junk = browser.client.post(url, data={**data, "refresh_token": "1.ARnot-a-token"})
    assert junk.status_code == 400 and junk.json()["error"] == "invalid_grant"


def test_refresh_token_of_a_disabled_user_is_refused(fresh_emulator: Any) -> None:
    emu: RunningEmulator = fresh_emulator()
    b = Browser(emu)
    user, portal = a_user(emu), emu.portal_app()
    verifier, challenge = pkce()
    rt = b.redeem(b.sign_in(user, challenge)["code"], verifier).json()["refresh_token"]
    emu.tenant().disable_user(user["id"])
    resp = b.client.post(f"{emu.login_url}/{emu.tenant().tenant_id}/oauth2/v2.0/token", data={
        "grant_type": "refresh_token", "client_id": portal.client_id, "client_secret": portal.secrets[0].value,
        "refresh_token": rt})
    assert resp.status_code == 400 and resp.json()["error_codes"] == [50057]
    b.client.close()


def test_msal_auth_code_flow_round_trip(emulator: RunningEmulator, browser: Browser) -> None:
    portal, user = emulator.portal_app(), a_user(emulator)
    app = msal.ConfidentialClientApplication(
        portal.client_id, client_credential=portal.secrets[0].value,
        authority=f"{emulator.login_url}/{emulator.tenant().tenant_id}", instance_discovery=False,
        verify=str(emulator.ca_bundle))
    flow = app.initiate_auth_code_flow([api_scope(emulator)], redirect_uri=browser.redirect_uri,
                                       login_hint=user["userPrincipalName"], response_mode="form_post")
    page = browser.client.get(flow["auth_uri"])
    resp = browser.submit(page, user["userPrincipalName"])
    assert resp.status_code == 200
    back = dict(re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)">', resp.text))
    assert set(back) == {"code", "state", "session_state"}
    result = app.acquire_token_by_auth_code_flow(flow, back)
    assert "access_token" in result, result.get("error_description")
    assert result["id_token_claims"]["oid"] == user["id"]
    assert unverified_claims(result["access_token"])["scp"] == "Identity.Investigate"
    accounts = app.get_accounts()
    assert accounts and accounts[0]["home_account_id"] == f"{user['id']}.{emulator.tenant().tenant_id}"
    silent = app.acquire_token_silent([api_scope(emulator)], account=accounts[0], force_refresh=True)
    assert silent and "access_token" in silent, silent


def test_sign_in_through_organizations_endpoint(emulator: RunningEmulator, browser: Browser) -> None:
    user = a_user(emulator)
    verifier, challenge = pkce()
    resp = browser.submit(browser.authorize(tenant="organizations", code_challenge=challenge,
                                            code_challenge_method="S256"), user["userPrincipalName"])
    code = parse_qs(urlsplit(resp.headers["location"]).query)["code"][0]
    portal = emulator.portal_app()
    tokens = browser.client.post(f"{emulator.login_url}/organizations/oauth2/v2.0/token", data={
        "grant_type": "authorization_code", "client_id": portal.client_id, "client_secret": portal.secrets[0].value,
        "code": code, "redirect_uri": browser.redirect_uri, "code_verifier": verifier}).json()
    assert unverified_claims(tokens["id_token"])["iss"] == f"{emulator.login_url}/{emulator.tenant().tenant_id}/v2.0"


def test_logout_redirects_only_to_a_registered_uri(browser: Browser, emulator: RunningEmulator) -> None:
    url = f"{emulator.login_url}/{emulator.tenant().tenant_id}/oauth2/v2.0/logout"
    ok = browser.client.get(url, params={"post_logout_redirect_uri": browser.redirect_uri})
    assert ok.status_code == 302 and ok.headers["location"] == browser.redirect_uri
    evil = browser.client.get(url, params={"post_logout_redirect_uri": "https://evil.example/"})
    assert evil.status_code == 200 and "location" not in evil.headers


def test_assignment_required_blocks_unassigned_users(fresh_emulator: Any) -> None:
    emu: RunningEmulator = fresh_emulator()
    tenant, portal = emu.tenant(), emu.portal_app()
    sp_id = next(sp["id"] for sp in tenant.service_principals.values() if sp.get("appId") == portal.client_id)
    tenant.update_object(sp_id, {"appRoleAssignmentRequired": True})
    b = Browser(emu)
    user = a_user(emu)
    blocked = b.submit(b.authorize(code_challenge=pkce()[1], code_challenge_method="S256"), user["userPrincipalName"])
    assert blocked.status_code == 400 and "AADSTS50105" in blocked.text and "location" not in blocked.headers
    group_id = next(iter(tenant.member_of(user["id"])), None)
    if group_id is not None:  # through a group the user is a direct member of
        tenant.add_app_role_assignment(sp_id, group_id)
    else:
        tenant.add_app_role_assignment(sp_id, user["id"])
    verifier, challenge = pkce()
    assert b.redeem(b.sign_in(user, challenge)["code"], verifier).status_code == 200
    b.client.close()


def test_userinfo_endpoint_answers_for_a_delegated_graph_token(emulator: RunningEmulator, browser: Browser) -> None:
    user = a_user(emulator)
    verifier, challenge = pkce()
    back = browser.sign_in(user, challenge, scope="openid profile email User.Read")
    body = browser.redeem(back["code"], verifier).json()
    at = unverified_claims(body["access_token"])
    assert at["aud"] == emulator.graph_url and at["scp"] == "User.Read"
    doc = browser.client.get(f"{emulator.login_url}/{emulator.tenant().tenant_id}/v2.0/.well-known/openid-configuration"
                             ).json()
    info = browser.client.get(doc["userinfo_endpoint"], headers={"Authorization": f"Bearer {body['access_token']}"})
    assert info.status_code == 200
    assert info.json()["sub"] == at["sub"] and info.json()["name"] == user["displayName"]
    assert info.json()["email"] == user["mail"]
    app_token = emulator.tokens.issue_app_token(emulator.tenant(), emulator.sync_app(), emulator.graph_url)
    refused = browser.client.get(doc["userinfo_endpoint"], headers={"Authorization": f"Bearer {app_token}"})
    assert refused.status_code == 401
    assert browser.client.get(doc["userinfo_endpoint"]).status_code == 401
