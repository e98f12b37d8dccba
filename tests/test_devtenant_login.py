"""The emulator's login host against real msal over real HTTPS: client credentials, discovery, JWKS, keys, errors."""

from __future__ import annotations

import time
import uuid
from typing import Any

import httpx
import jwt as pyjwt  # PyJWT comes with msal; used here as an independent JOSE implementation
import msal
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from joserfc import jwt as jose_jwt
from joserfc.jwk import KeySet

from entra_mcp.devtenant.faults import FaultPlan
from entra_mcp.devtenant.server import RunningEmulator
from entra_mcp.devtenant.tokens import TokenRejected, unverified_claims


@pytest.fixture(autouse=True)
def _msal_honours_verify(monkeypatch: pytest.MonkeyPatch) -> None:
    # requests lets these variables override a session's `verify` (psf/requests#3829): msal's verify=ca_bundle
    # would be ignored. This module tests the emulator, so it takes them away.
    monkeypatch.delenv("REQUESTS_CA_BUNDLE", raising=False)
    monkeypatch.delenv("CURL_CA_BUNDLE", raising=False)


def cca(emu: RunningEmulator, credential: Any, *, tenant: str | None = None, client_id: str | None = None
        ) -> msal.ConfidentialClientApplication:
    return msal.ConfidentialClientApplication(
        client_id or emu.sync_app().client_id,
        client_credential=credential,
        authority=f"{emu.login_url}/{tenant or emu.tenant().tenant_id}",
        instance_discovery=False,
        verify=str(emu.ca_bundle),
    )


def graph_scope(emu: RunningEmulator) -> list[str]:
    return [f"{emu.graph_url}/.default"]


def token_post(emu: RunningEmulator, data: dict[str, str], *, tenant: str | None = None, **kw: Any) -> httpx.Response:
    with httpx.Client(verify=emu.ssl_context()) as client:
        return client.post(f"{emu.login_url}/{tenant or emu.tenant().tenant_id}/oauth2/v2.0/token", data=data, **kw)


# ---- client credentials with msal ---------------------------------------------------------------------------------


def test_msal_client_secret_gets_a_graph_token_with_the_granted_roles(emulator: RunningEmulator) -> None:
    sync, tenant = emulator.sync_app(), emulator.tenant()
    result = cca(emulator, sync.secrets[0].value).acquire_token_for_client(graph_scope(emulator))
    assert result.get("token_type") == "Bearer", result.get("error_description")
    assert 3000 < result["expires_in"] <= 3599
    claims = unverified_claims(result["access_token"])
    assert claims["aud"] == emulator.graph_url
    assert claims["iss"] == f"{emulator.login_url}/{tenant.tenant_id}/v2.0"
    assert claims["tid"] == tenant.tenant_id
    assert claims["idtyp"] == "app"
    assert claims["azp"] == sync.client_id and claims["azpacr"] == "1"
    assert claims["ver"] == "2.0"
    assert sorted(claims["roles"]) == sorted(sync.granted_roles)
    sp_ids = [sp["id"] for sp in tenant.service_principals.values() if sp.get("appId") == sync.client_id]
    assert claims["oid"] == claims["sub"] and (not sp_ids or claims["oid"] == sp_ids[0])
    assert claims["nbf"] <= time.time() + 5 < claims["exp"]
    # the emulated Graph accepts it
    assert emulator.tokens.verify_access_token(result["access_token"], audience=emulator.base_url)["tid"] == tenant.tenant_id


def test_tenant_domain_works_as_authority(emulator: RunningEmulator) -> None:
    sync, tenant = emulator.sync_app(), emulator.tenant()
    result = cca(emulator, sync.secrets[0].value, tenant=tenant.domain).acquire_token_for_client(graph_scope(emulator))
    assert unverified_claims(result["access_token"])["tid"] == tenant.tenant_id


@pytest.mark.parametrize("with_thumbprint", [True, False], ids=["sha1-thumbprint-RS256", "sha256-from-cert-PS256"])
def test_msal_certificate_credential(emulator: RunningEmulator, with_thumbprint: bool) -> None:
    sync = emulator.sync_app()
    cert = sync.certificates[0]
    credential: dict[str, str] = {"private_key": cert.private_key_pem.decode(),
                                  "public_certificate": cert.certificate_pem.decode()}
    if with_thumbprint:
        credential["thumbprint"] = x509.load_pem_x509_certificate(cert.certificate_pem).fingerprint(hashes.SHA1()).hex()
    result = cca(emulator, credential).acquire_token_for_client(graph_scope(emulator))
    assert "access_token" in result, result.get("error_description")
    claims = unverified_claims(result["access_token"])
    assert claims["azpacr"] == "2"
    assert sorted(claims["roles"]) == sorted(sync.granted_roles)


def test_certificate_not_registered_is_refused(emulator: RunningEmulator) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "stranger")])
    import datetime as dt

    now = dt.datetime.now(dt.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(1).not_valid_before(now).not_valid_after(now + dt.timedelta(days=1))
            .sign(key, hashes.SHA256()))
    credential = {
        "private_key": key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                         serialization.NoEncryption()).decode(),
        "public_certificate": cert.public_bytes(serialization.Encoding.PEM).decode(),
    }
    result = cca(emulator, credential).acquire_token_for_client(graph_scope(emulator))
    assert result["error"] == "invalid_client"
    assert result["error_codes"] == [700027]
    assert result["error_description"].startswith("AADSTS700027: The certificate with identifier used to sign")


def test_bad_secret_is_aadsts7000215_through_msal(emulator: RunningEmulator) -> None:
    sync = emulator.sync_app()
    result = cca(emulator, "not-the-secret").acquire_token_for_client(graph_scope(emulator))
    assert result["error"] == "invalid_client"
    assert result["error_description"].startswith(
        "AADSTS7000215: Invalid client secret provided. Ensure the secret being sent in the request is the client "
        f"secret value, not the client secret ID, for a secret added to app '{sync.client_id}'."
    )
    assert result["error_codes"] == [7000215]
    for key in ("timestamp", "trace_id", "correlation_id", "error_uri"):
        assert result[key]
    assert "not-the-secret" not in str(result)


def test_bad_secret_is_http_401_and_echoes_the_correlation_id(emulator: RunningEmulator) -> None:
    corr = str(uuid.uuid4())
    resp = token_post(emulator, {"grant_type": "client_credentials", "client_id": emulator.sync_app().client_id,
                                 "client_secret": "wrong", "scope": graph_scope(emulator)[0]},
                      headers={"client-request-id": corr})
    assert resp.status_code == 401
    body = resp.json()
    assert body["correlation_id"] == corr and f"Correlation ID: {corr}" in body["error_description"]
    assert resp.headers["cache-control"] == "no-store"


def test_http_basic_client_authentication(emulator: RunningEmulator) -> None:
    sync = emulator.sync_app()
    resp = token_post(emulator, {"grant_type": "client_credentials", "scope": graph_scope(emulator)[0]},
                      auth=(sync.client_id, sync.secrets[0].value))
    assert resp.status_code == 200, resp.text
    assert set(resp.json()) == {"token_type", "expires_in", "ext_expires_in", "access_token"}


def test_unknown_tenant_is_aadsts90002(emulator: RunningEmulator) -> None:
    with pytest.raises(ValueError, match="double check your tenant") as info:
        cca(emulator, "x", tenant="nosuch.example")
    # msal's own message drops Entra's; the discovery answer it wraps carries it
    assert "AADSTS90002: Tenant 'nosuch.example' not found" in str(info.value.__context__)
    resp = token_post(emulator, {"grant_type": "client_credentials", "client_id": emulator.sync_app().client_id,
                                 "client_secret": "x", "scope": graph_scope(emulator)[0]}, tenant=str(uuid.uuid4()))
    assert resp.status_code == 400
    assert resp.json()["error"] == "invalid_request" and resp.json()["error_codes"] == [90002]


def test_unknown_app_is_aadsts700016(emulator: RunningEmulator) -> None:
    stranger = str(uuid.uuid4())
    result = cca(emulator, "x", client_id=stranger).acquire_token_for_client(graph_scope(emulator))
    assert result["error"] == "unauthorized_client"
    assert result["error_description"].startswith(
        f"AADSTS700016: Application with identifier '{stranger}' was not found in the directory "
        f"'{emulator.tenant().display_name}'."
    )


@pytest.mark.parametrize(
    ("scope", "error", "code"),
    [
        ("User.Read", "invalid_scope", 1002012),
        ("https://elsewhere.example/.default", "invalid_resource", 500011),
        ("", "invalid_request", 900144),
    ],
)
def test_client_credentials_scope_errors(emulator: RunningEmulator, scope: str, error: str, code: int) -> None:
    sync = emulator.sync_app()
    resp = token_post(emulator, {"grant_type": "client_credentials", "client_id": sync.client_id,
                                 "client_secret": sync.secrets[0].value, "scope": scope})
    assert resp.status_code == 400
    assert (resp.json()["error"], resp.json()["error_codes"]) == (error, [code])


def test_app_token_for_the_api_app_has_its_client_id_as_audience(emulator: RunningEmulator) -> None:
    sync, api = emulator.sync_app(), emulator.api_app()
    result = cca(emulator, sync.secrets[0].value).acquire_token_for_client([f"api://{api.client_id}/.default"])
    claims = unverified_claims(result["access_token"])
    assert claims["aud"] == api.client_id
    assert "roles" not in claims  # Graph permissions are not roles on another API
    with pytest.raises(TokenRejected, match="audience"):
        emulator.tokens.verify_access_token(result["access_token"], audience=emulator.base_url)


def test_unsupported_grant_type(emulator: RunningEmulator) -> None:
    resp = token_post(emulator, {"grant_type": "password", "client_id": emulator.sync_app().client_id})
    assert resp.status_code == 400 and resp.json()["error"] == "unsupported_grant_type"


# ---- client assertions built by hand (PyJWT) ----------------------------------------------------------------------


def _assertion(emu: RunningEmulator, **override: Any) -> str:
    sync = emu.sync_app()
    cert = sync.certificates[0]
    now = int(time.time())
    claims = {"aud": f"{emu.login_url}/{emu.tenant().tenant_id}/oauth2/v2.0/token", "iss": sync.client_id,
              "sub": sync.client_id, "iat": now, "nbf": now, "exp": now + 600, "jti": str(uuid.uuid4())}
    key: Any = cert.private_key_pem
    headers = {"x5t": cert.thumbprint_sha1_b64url}
    for k, v in override.items():
        if k == "key":
            key = v
        elif v is None:
            claims.pop(k, None)
        else:
            claims[k] = v
    return pyjwt.encode(claims, key, algorithm="RS256", headers=headers)


def _assert_post(emu: RunningEmulator, assertion: str) -> httpx.Response:
    return token_post(emu, {
        "grant_type": "client_credentials", "client_id": emu.sync_app().client_id, "scope": graph_scope(emu)[0],
        "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
        "client_assertion": assertion,
    })


def test_hand_built_assertion_is_accepted_once(emulator: RunningEmulator) -> None:
    assertion = _assertion(emulator)
    assert _assert_post(emulator, assertion).status_code == 200
    replay = _assert_post(emulator, assertion)
    assert replay.status_code == 401 and replay.json()["error"] == "invalid_client"


@pytest.mark.parametrize(
    ("override", "code"),
    [
        ({"aud": "https://login.microsoftonline.com/x/oauth2/v2.0/token"}, 50027),
        ({"iss": "00000000-0000-0000-0000-000000000001"}, 700021),
        ({"exp": int(time.time()) - 3600, "nbf": int(time.time()) - 4000}, 700024),
        ({"exp": None}, 700024),
        ({"jti": None}, 50027),
    ],
    ids=["wrong-aud", "wrong-iss", "expired", "no-exp", "no-jti"],
)
def test_bad_assertions_are_refused(emulator: RunningEmulator, override: dict[str, Any], code: int) -> None:
    resp = _assert_post(emulator, _assertion(emulator, **override))
    assert resp.status_code == 401
    assert resp.json()["error_codes"] == [code]


def test_assertion_signed_by_another_key_fails_signature_validation(emulator: RunningEmulator) -> None:
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    resp = _assert_post(emulator, _assertion(emulator, key=other))
    assert resp.status_code == 401
    assert resp.json()["error_description"].startswith("AADSTS700027: Client assertion failed signature validation.")


# ---- discovery and keys -------------------------------------------------------------------------------------------


def _get(emu: RunningEmulator, path: str) -> httpx.Response:
    with httpx.Client(verify=emu.ssl_context()) as client:
        return client.get(f"{emu.login_url}{path}")


@pytest.mark.parametrize("by", ["id", "domain"])
def test_v2_discovery_document(emulator: RunningEmulator, by: str) -> None:
    tenant = emulator.tenant()
    seg = tenant.tenant_id if by == "id" else tenant.domain
    doc = _get(emulator, f"/{seg}/v2.0/.well-known/openid-configuration").json()
    b, tid = emulator.login_url, tenant.tenant_id
    assert doc["issuer"] == f"{b}/{tid}/v2.0"
    assert doc["authorization_endpoint"] == f"{b}/{tid}/oauth2/v2.0/authorize"
    assert doc["token_endpoint"] == f"{b}/{tid}/oauth2/v2.0/token"
    assert doc["jwks_uri"] == f"{b}/{tid}/discovery/v2.0/keys"
    assert doc["end_session_endpoint"] == f"{b}/{tid}/oauth2/v2.0/logout"
    assert doc["id_token_signing_alg_values_supported"] == ["RS256"]
    assert "code" in doc["response_types_supported"] and "form_post" in doc["response_modes_supported"]
    assert {"openid", "profile", "email", "offline_access"} <= set(doc["scopes_supported"])
    assert "private_key_jwt" in doc["token_endpoint_auth_methods_supported"]
    assert doc["tenant_region_scope"] == "NA"


@pytest.mark.parametrize("segment", ["common", "organizations"])
def test_multi_tenant_discovery_keeps_the_issuer_template(emulator: RunningEmulator, segment: str) -> None:
    doc = _get(emulator, f"/{segment}/v2.0/.well-known/openid-configuration").json()
    assert doc["issuer"] == f"{emulator.login_url}/{{tenantid}}/v2.0"
    assert doc["token_endpoint"] == f"{emulator.login_url}/{segment}/oauth2/v2.0/token"
    assert doc["tenant_region_scope"] is None


def test_v1_discovery_document_has_the_sts_issuer(emulator: RunningEmulator) -> None:
    tid = emulator.tenant().tenant_id
    doc = _get(emulator, f"/{tid}/.well-known/openid-configuration").json()
    assert doc["issuer"] == f"https://sts.windows.net/{tid}/"


def test_discovery_of_an_unknown_tenant_is_400_invalid_tenant(emulator: RunningEmulator) -> None:
    resp = _get(emulator, "/nosuch.example/v2.0/.well-known/openid-configuration")
    assert resp.status_code == 400
    assert resp.json()["error"] == "invalid_tenant" and resp.json()["error_codes"] == [90002]


def test_jwks_verifies_issued_tokens_with_an_independent_library(emulator: RunningEmulator) -> None:
    tid = emulator.tenant().tenant_id
    jwks = _get(emulator, f"/{tid}/discovery/v2.0/keys").json()
    for entry in jwks["keys"]:
        assert entry["kty"] == "RSA" and entry["use"] == "sig"
        assert {"kid", "x5t", "n", "e", "x5c"} <= set(entry)
        assert entry["issuer"] == f"{emulator.login_url}/{tid}/v2.0"
    sync = emulator.sync_app()
    token = cca(emulator, sync.secrets[0].value).acquire_token_for_client(graph_scope(emulator))["access_token"]
    verified = jose_jwt.decode(token, KeySet.import_key_set(jwks), algorithms=["RS256"])
    assert verified.claims["tid"] == tid and verified.header["kid"] in {k["kid"] for k in jwks["keys"]}


def test_key_rollover_adds_a_kid_and_keeps_the_old_until_retired(fresh_emulator: Any) -> None:
    emu: RunningEmulator = fresh_emulator()
    sync, tid = emu.sync_app(), emu.tenant().tenant_id
    before = [k["kid"] for k in _get(emu, f"/{tid}/discovery/v2.0/keys").json()["keys"]]
    old_token = emu.tokens.issue_app_token(emu.tenant(), sync, emu.base_url)
    with httpx.Client(verify=emu.ssl_context()) as client:
        rolled = client.post(f"{emu.base_url}/_emulator/keys/rollover").json()
    new_kid = rolled["kid"]
    assert new_kid not in before
    during = [k["kid"] for k in _get(emu, f"/{tid}/discovery/v2.0/keys").json()["keys"]]
    assert set(during) == set(before) | {new_kid}
    new_token = emu.tokens.issue_app_token(emu.tenant(), sync, emu.base_url)
    assert pyjwt.get_unverified_header(new_token)["kid"] == new_kid
    emu.tokens.verify_access_token(old_token, audience=emu.base_url)  # old key still published: still valid
    with httpx.Client(verify=emu.ssl_context()) as client:
        retired = client.post(f"{emu.base_url}/_emulator/keys/retire").json()
    assert retired["retired"] == before and retired["keys"] == [new_kid]
    assert [k["kid"] for k in _get(emu, f"/{tid}/discovery/v2.0/keys").json()["keys"]] == [new_kid]
    with pytest.raises(TokenRejected, match="key was not found"):
        emu.tokens.verify_access_token(old_token, audience=emu.base_url)
    emu.tokens.verify_access_token(new_token, audience=emu.base_url)


# ---- what the emulated Graph accepts --------------------------------------------------------------------------------


def _valid_claims(emu: RunningEmulator) -> dict[str, Any]:
    return unverified_claims(emu.tokens.issue_app_token(emu.tenant(), emu.sync_app(), emu.base_url))


@pytest.mark.parametrize(
    ("forge", "reason"),
    [
        (lambda e, c: e.tokens.mint(c, alg="none"), "algorithm"),
        (lambda e, c: e.tokens.mint(c, alg="HS256"), "algorithm"),
        (lambda e, c: e.tokens.mint(c, key="foreign"), "key was not found"),
        (lambda e, c: e.tokens.mint(c, key="foreign", header={"kid": e.tokens.active_key.kid}), "Signature validation"),
        (lambda e, c: e.tokens.mint({**c, "iss": f"https://sts.windows.net/{c['tid']}/"}), "issuer"),
        (lambda e, c: e.tokens.mint({**c, "aud": "https://graph.microsoft.com"}), "audience"),
        (lambda e, c: e.tokens.mint({**c, "tid": str(uuid.uuid4())}), "tenant"),
        (lambda e, c: e.tokens.mint({k: v for k, v in c.items() if k != "exp"}), "no expiry"),
        (lambda e, c: e.tokens.mint({**c, "nbf": c["iat"] + 3600}), "not yet valid"),
        (lambda e, c: "a.b", "not well formed"),
    ],
    ids=["alg-none", "hs256-public-key", "foreign-key", "foreign-key-real-kid", "v1-issuer", "wrong-aud",
         "unknown-tid", "no-exp", "nbf-future", "garbage"],
)
def test_forged_tokens_are_rejected(emulator: RunningEmulator, forge: Any, reason: str) -> None:
    token = forge(emulator, _valid_claims(emulator))
    with pytest.raises(TokenRejected, match=reason) as info:
        emulator.tokens.verify_access_token(token, audience=emulator.base_url)
    assert info.value.expired is False


def test_expired_token_is_rejected_as_expired(emulator: RunningEmulator) -> None:
    claims = _valid_claims(emulator)
    token = emulator.tokens.mint({**claims, "exp": int(time.time()) - 301})
    with pytest.raises(TokenRejected, match="expired") as info:
        emulator.tokens.verify_access_token(token, audience=emulator.base_url)
    assert info.value.expired is True


# ---- faults ---------------------------------------------------------------------------------------------------------


def test_token_lifetime_fault_sets_exp(fresh_emulator: Any) -> None:
    emu: RunningEmulator = fresh_emulator(faults=FaultPlan(token_lifetime_s=90))
    result = cca(emu, emu.sync_app().secrets[0].value).acquire_token_for_client(graph_scope(emu))
    claims = unverified_claims(result["access_token"])
    assert claims["exp"] - claims["iat"] == 90
    assert result["expires_in"] == 90
    emu.faults.token_lifetime_s = 30  # changed at run time: applies to tokens issued from now on
    resp = token_post(emu, {"grant_type": "client_credentials", "client_id": emu.sync_app().client_id,
                            "client_secret": emu.sync_app().secrets[0].value, "scope": graph_scope(emu)[0]})
    assert resp.json()["expires_in"] == 30


def test_latency_fault_delays_login_responses(fresh_emulator: Any) -> None:
    emu: RunningEmulator = fresh_emulator(faults=FaultPlan(latency_ms=400))
    tid = emu.tenant().tenant_id
    started = time.monotonic()
    assert _get(emu, f"/{tid}/discovery/v2.0/keys").status_code == 200
    assert time.monotonic() - started >= 0.4


# ---- the app's own state: expired secrets, disabled service principals -----------------------------------------------


def test_expired_client_secret_is_aadsts7000222(fresh_emulator: Any) -> None:
    emu: RunningEmulator = fresh_emulator()
    tenant, sync = emu.tenant(), emu.sync_app()
    app_id = next(a["id"] for a in tenant.applications.values() if a.get("appId") == sync.client_id)
    tomorrow = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 86400))
    _, secret = tenant.add_password_credential(app_id, "short-lived", end_date_time=tomorrow)
    assert token_post(emu, {"grant_type": "client_credentials", "client_id": sync.client_id, "client_secret": secret,
                            "scope": graph_scope(emu)[0]}).status_code == 200
    emu.state.clock.advance(2 * 86400)
    resp = token_post(emu, {"grant_type": "client_credentials", "client_id": sync.client_id, "client_secret": secret,
                            "scope": graph_scope(emu)[0]})
    assert resp.status_code == 401
    assert resp.json()["error"] == "invalid_client" and resp.json()["error_codes"] == [7000222]
    still = cca(emu, sync.secrets[0].value).acquire_token_for_client(graph_scope(emu))  # the long-lived one works
    assert "access_token" in still


def test_disabled_service_principal_gets_no_token(fresh_emulator: Any) -> None:
    emu: RunningEmulator = fresh_emulator()
    tenant, sync = emu.tenant(), emu.sync_app()
    sp_id = next(sp["id"] for sp in tenant.service_principals.values() if sp.get("appId") == sync.client_id)
    tenant.update_object(sp_id, {"accountEnabled": False})
    result = cca(emu, sync.secrets[0].value).acquire_token_for_client(graph_scope(emu))
    assert result["error"] == "unauthorized_client" and result["error_codes"] == [7000112]


def test_token_endpoint_refuses_get(emulator: RunningEmulator) -> None:
    resp = _get(emulator, f"/{emulator.tenant().tenant_id}/oauth2/v2.0/token")
    assert resp.status_code == 400 and resp.json()["error_codes"] == [900561]


def test_msal_instance_discovery_against_the_emulator(emulator: RunningEmulator) -> None:
    app = msal.ConfidentialClientApplication(
        emulator.sync_app().client_id, client_credential=emulator.sync_app().secrets[0].value,
        authority=f"{emulator.login_url}/{emulator.tenant().domain}",
        instance_discovery=f"{emulator.login_url}/common/discovery/instance", verify=str(emulator.ca_bundle))
    assert "access_token" in app.acquire_token_for_client(graph_scope(emulator))
