"""The emulator's HTTPS server assembly: TLS, run_emulator, the config it hands out, control endpoints, the CLI."""

from __future__ import annotations

import os
import signal
import socket
import ssl
import stat
import sys
import tomllib
from pathlib import Path
from typing import Any

import httpx
import msal
import pytest
from cryptography import x509

from _harness import DevtenantProcess
from entra_mcp.config import parse_settings
from entra_mcp.devtenant.model import EmulatorState
from entra_mcp.devtenant.server import RunningEmulator, run_emulator
from entra_mcp.devtenant.tokens import TokenRejected, unverified_claims
from entra_mcp.errors import EntraMcpError


# ---- TLS ------------------------------------------------------------------------------------------------------------


def test_tls_is_trusted_through_ca_pem_only(emulator: RunningEmulator) -> None:
    with httpx.Client(verify=emulator.ssl_context()) as client:
        assert client.get(f"{emulator.base_url}/").status_code == 200
        host_url = emulator.base_url.replace("127.0.0.1", "localhost")
        assert client.get(f"{host_url}/").status_code == 200
    with httpx.Client(verify=ssl.create_default_context()) as client:  # the system's CAs do not know it
        with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
            client.get(f"{emulator.base_url}/")


def test_tls_files(emulator: RunningEmulator) -> None:
    tls = emulator.tls
    assert tls.ca_bundle.name == "ca.pem" and tls.ca_bundle.parent == tls.directory
    ca = x509.load_pem_x509_certificate(tls.ca_bundle.read_bytes())
    leaf = x509.load_pem_x509_certificate(tls.cert_file.read_bytes())
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is True
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert {str(ip) for ip in san.get_values_for_type(x509.IPAddress)} == {"127.0.0.1", "::1"}
    assert san.get_values_for_type(x509.DNSName) == ["localhost"]
    assert leaf.issuer == ca.subject
    assert stat.S_IMODE(os.stat(tls.key_file).st_mode) == 0o600


def test_state_dir_holds_the_tls_files(tmp_path: Path) -> None:
    with run_emulator(EmulatorState(), state_dir=tmp_path / "dt") as emu:
        assert emu.ca_bundle == tmp_path / "dt" / "ca.pem" and emu.ca_bundle.exists()
    assert (tmp_path / "dt" / "ca.pem").exists()


# ---- run_emulator ---------------------------------------------------------------------------------------------------


def test_run_emulator_serves_then_stops(tmp_path: Path) -> None:
    with run_emulator(size="small", seed=3) as emu:
        assert emu.login_url == emu.graph_url == emu.base_url == f"https://127.0.0.1:{emu.port}"
        with httpx.Client(verify=emu.ssl_context()) as client:
            client.get(f"{emu.base_url}/").raise_for_status()
        port, tls_dir = emu.port, emu.tls.directory
        assert tls_dir.is_dir()
    with socket.socket() as s:
        with pytest.raises(ConnectionRefusedError):
            s.connect(("127.0.0.1", port))
    assert not tls_dir.exists()  # the temp dir it made is gone; a --state-dir stays (next test)


def test_a_busy_port_is_a_clear_error() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        with pytest.raises(EntraMcpError, match=f"cannot listen on 127.0.0.1:{port}.*--port 0"):
            with run_emulator(EmulatorState(), port=port):
                pass


def test_run_emulator_takes_a_hand_built_state(fresh_emulator: Any, emulator: RunningEmulator) -> None:
    only = emulator.tenant()
    emu: RunningEmulator = fresh_emulator(state=EmulatorState(tenants={only.tenant_id: only}))
    assert emu.tenant() is only
    with httpx.Client(verify=emu.ssl_context()) as client:
        doc = client.get(f"{emu.login_url}/{only.domain}/v2.0/.well-known/openid-configuration").json()
    assert doc["issuer"] == f"{emu.login_url}/{only.tenant_id}/v2.0"


# ---- the config block it hands out ----------------------------------------------------------------------------------


def test_config_toml_is_a_valid_product_config(emulator: RunningEmulator, tmp_path: Path) -> None:
    settings = parse_settings(tomllib.loads(emulator.config_toml(cache_dir=tmp_path)))
    t = settings.tenant(None)
    assert t.cloud == "custom" and t.login_host == emulator.login_url and t.graph_host == emulator.graph_url
    assert t.tenant_id == emulator.tenant().tenant_id and t.client_id == emulator.sync_app().client_id
    assert t.ca_bundle == emulator.ca_bundle and settings.server.cache_dir == tmp_path
    assert t.client_secret_env == "DEVTENANT_CLIENT_SECRET"
    assert emulator.secret_env() == {"DEVTENANT_CLIENT_SECRET": emulator.sync_app().secrets[0].value}
    assert emulator.sync_app().secrets[0].value not in emulator.config_toml()


def test_config_toml_with_sign_in_and_several_tenants(fresh_emulator: Any) -> None:
    emu: RunningEmulator = fresh_emulator(tenants=2)
    settings = parse_settings(tomllib.loads(emu.config_toml(tenant_index=None, with_sign_in=True)))
    assert [t.tenant_id for t in settings.tenants] == [emu.tenant(0).tenant_id, emu.tenant(1).tenant_id]
    assert len({t.name for t in settings.tenants}) == 2
    assert settings.oidc.enabled and settings.oidc.client_id == emu.portal_app(0).client_id
    assert settings.server.auth.mode == "entra" and settings.server.auth.audience == emu.api_app(0).client_id
    env = emu.secret_env(tenant_index=None, with_sign_in=True)
    assert set(env) == {"DEVTENANT_CLIENT_SECRET", "DEVTENANT_CLIENT_SECRET_2", "DEVTENANT_PORTAL_SECRET"}


def test_config_credentials_get_a_token_and_read_graph(emulator: RunningEmulator, monkeypatch: pytest.MonkeyPatch
                                                       ) -> None:
    monkeypatch.delenv("REQUESTS_CA_BUNDLE", raising=False)  # see tests/conftest.py
    monkeypatch.delenv("CURL_CA_BUNDLE", raising=False)
    t = parse_settings(tomllib.loads(emulator.config_toml())).tenant(None)
    app = msal.ConfidentialClientApplication(
        t.client_id, client_credential=emulator.secret_env()[t.client_secret_env or ""], authority=t.authority,
        instance_discovery=False, verify=str(t.ca_bundle))
    token = app.acquire_token_for_client([f"{t.graph_host}/.default"])["access_token"]
    with httpx.Client(verify=emulator.ssl_context()) as client:
        users = client.get(f"{t.graph_host}/v1.0/users", params={"$top": "5"},
                           headers={"Authorization": f"Bearer {token}"})
        anonymous = client.get(f"{t.graph_host}/v1.0/users")
    assert users.status_code == 200, users.text
    assert len(users.json()["value"]) == 5
    assert anonymous.status_code == 401


# ---- control endpoints of the login side ----------------------------------------------------------------------------


def _control(emu: RunningEmulator, path: str, body: dict[str, Any]) -> httpx.Response:
    with httpx.Client(verify=emu.ssl_context()) as client:
        return client.post(f"{emu.base_url}/_emulator/{path}", json=body)


def test_mint_a_user_token_for_the_api(emulator: RunningEmulator) -> None:
    upn = next(u["userPrincipalName"] for u in emulator.tenant().users.values() if u.get("accountEnabled"))
    api = emulator.api_app()
    resp = _control(emulator, "tokens/mint", {
        "kind": "user", "tenant": emulator.tenant().domain, "client_id": emulator.portal_app().client_id,
        "user": upn, "scope": f"openid api://{api.client_id}/Identity.Investigate"})
    assert resp.status_code == 200, resp.text
    at, idt = unverified_claims(resp.json()["token"]), unverified_claims(resp.json()["id_token"])
    assert at["aud"] == api.client_id and at["scp"] == "Identity.Investigate" and at["preferred_username"] == upn
    assert idt["aud"] == emulator.portal_app().client_id


def test_mint_with_overrides_alg_and_key(emulator: RunningEmulator) -> None:
    body = {"kind": "app", "tenant": emulator.tenant().tenant_id, "client_id": emulator.sync_app().client_id}
    good = _control(emulator, "tokens/mint", body).json()["token"]
    assert emulator.tokens.verify_access_token(good, audience=emulator.base_url)["idtyp"] == "app"
    expired = _control(emulator, "tokens/mint", {**body, "overrides": {"exp": 1000}}).json()["token"]
    with pytest.raises(TokenRejected) as info:
        emulator.tokens.verify_access_token(expired, audience=emulator.base_url)
    assert info.value.expired
    none = _control(emulator, "tokens/mint", {**body, "alg": "none"}).json()["token"]
    assert none.endswith(".") and '"alg":"none"' in _header_json(none)
    foreign = _control(emulator, "tokens/mint", {**body, "key": "foreign"}).json()["token"]
    with pytest.raises(TokenRejected, match="key was not found"):
        emulator.tokens.verify_access_token(foreign, audience=emulator.base_url)
    raw = _control(emulator, "tokens/mint", {"claims": {"aud": "x"}, "header": {"kid": "../../etc/passwd"}})
    assert unverified_claims(raw.json()["token"]) == {"aud": "x"}
    assert _control(emulator, "tokens/mint", {"kind": "nope"}).status_code == 400


def _header_json(token: str) -> str:
    import base64

    head = token.split(".")[0]
    return base64.urlsafe_b64decode(head + "=" * (-len(head) % 4)).decode()


# ---- the CLI ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_devtenant_cli_prints_config_serves_and_stops_on_a_signal(tmp_path: Path, stop_signal: int) -> None:
    # the config on stdout (TOML only), the secret's export line on stderr, then "ready" (tests/_harness.py)
    proc = DevtenantProcess("--state-dir", str(tmp_path / "state"), "--token-lifetime", "120", "--redirect-uri",
                            "http://127.0.0.1:7/cb", root=tmp_path / "out", timeout=60,
                            argv=[sys.executable, "-m", "entra_mcp"])
    try:
        settings = parse_settings(proc.config)
        tenant = settings.tenant(None)
        assert tenant.ca_bundle == tmp_path / "state" / "ca.pem"
        assert tenant.client_secret_env in proc.env
        resp = proc.client_credentials_token()
        assert resp.status_code == 200 and resp.json()["expires_in"] == 120
        proc.proc.send_signal(stop_signal)
        assert proc.proc.wait(timeout=20) == 0
    finally:
        proc.stop()


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--port", "70000"], "--port: 70000 is out of range"),
        (["--size", "huge"], "invalid choice: 'huge'"),
        (["--redirect-uri", "javascript:alert(1)"], "not an absolute http(s) URL"),
        (["--token-lifetime", "0"], "--token-lifetime: 0 is out of range"),
        (["--latency-ms", "soon"], "'soon' is not a number"),
    ],
)
def test_devtenant_cli_bad_flags_exit_2(flags: list[str], message: str) -> None:
    from _harness import cli_in_process  # the entry point in this process: no ~3 s CPU of imports per case

    proc = cli_in_process("devtenant", *flags, timeout=60)
    assert proc.returncode == 2
    assert message in proc.stderr and "Traceback" not in proc.stderr
    assert proc.stdout == ""


def test_login_outage_and_request_counts(fresh_emulator: Any) -> None:
    emu: RunningEmulator = fresh_emulator()
    tid = emu.tenant().tenant_id
    with httpx.Client(verify=emu.ssl_context()) as client:
        before = client.get(f"{emu.base_url}/_emulator/login/stats").json()["requests"].get("jwks", 0)
        for _ in range(3):
            assert client.get(f"{emu.login_url}/{tid}/discovery/v2.0/keys").status_code == 200
        assert client.get(f"{emu.base_url}/_emulator/login/stats").json()["requests"]["jwks"] == before + 3

        assert client.post(f"{emu.base_url}/_emulator/login/outage", json={"down": ["jwks"]}).json() == {
            "down": ["jwks"]}
        down = client.get(f"{emu.login_url}/{tid}/discovery/v2.0/keys")
        assert down.status_code == 503 and down.json()["error"] == "temporarily_unavailable"
        assert client.get(f"{emu.login_url}/{tid}/v2.0/.well-known/openid-configuration").status_code == 200
        stats = client.get(f"{emu.base_url}/_emulator/login/stats").json()
        assert stats["requests"]["jwks"] == before + 4 and stats["down"] == ["jwks"]

        assert client.post(f"{emu.base_url}/_emulator/login/outage", json={"down": ["nonsense"]}).status_code == 400
        client.post(f"{emu.base_url}/_emulator/login/outage", json={"down": []}).raise_for_status()
        assert client.get(f"{emu.login_url}/{tid}/discovery/v2.0/keys").status_code == 200
