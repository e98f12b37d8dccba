"""The authorization server's state over a real SessionStore on disk: lifetimes (an injected clock), a restart, and the
config rules of oauth mode. No network: the HTTP side is tests/test_oauth_hostile.py."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import pytest

from _auth_fixtures import FakeClock
from entra_mcp.config import parse_settings
from entra_mcp.errors import ConfigError
from entra_mcp.mirror.session_store import SessionStore
from entra_mcp.oauth.provider import AuthorizationServer

SCOPE = "Identity.Investigate"
RESOURCE = "https://mcp.example.com/mcp"


class _Client:
    client_id = "client-1"


def _server(store: SessionStore, clock: FakeClock) -> AuthorizationServer:
    return AuthorizationServer(store, issuer="https://mcp.example.com", resource=RESOURCE, scopes=[SCOPE],
                               consent_url="https://mcp.example.com/oauth/consent", documents=None,
                               dynamic_registration=True, access_seconds=600, refresh_seconds=3600,
                               client_seconds=86400, clock=clock)


def _sign_in(srv: AuthorizationServer) -> Any:
    request = {"client_id": "client-1", "redirect_uri": "http://127.0.0.1/cb", "redirect_explicit": True,
               "code_challenge": "c" * 43, "state": "s", "scopes": [SCOPE], "resource": RESOURCE, "binding": "b"}
    code = srv.issue_code(request, {"tid": "tid-1", "oid": "oid-1", "name": "A", "preferredUsername": "a@x.example"})

    async def redeem() -> Any:
        loaded = await srv.load_authorization_code(_Client(), code)
        assert loaded is not None
        return await srv.exchange_authorization_code(_Client(), loaded)

    return anyio.run(redeem)


def test_tokens_survive_a_restart_and_are_kept_only_as_hashes(tmp_path: Path) -> None:
    clock = FakeClock(1_000_000.0)
    store = SessionStore(tmp_path)
    tokens = _sign_in(_server(store, clock))
    store.close()
    on_disk = b"".join(p.read_bytes() for p in tmp_path.rglob("*") if p.is_file())
    assert tokens.access_token.encode() not in on_disk and tokens.refresh_token.encode() not in on_disk

    store = SessionStore(tmp_path)  # a new process
    try:
        srv = _server(store, clock)
        grant = srv.verify(tokens.access_token)
        assert grant is not None and (grant.tid, grant.oid, grant.client_id) == ("tid-1", "oid-1", "client-1")
        assert grant.scopes == (SCOPE,) and grant.resource == RESOURCE
        assert anyio.run(srv.load_refresh_token, _Client(), tokens.refresh_token) is not None
    finally:
        store.close()


def test_access_tokens_and_token_families_expire(tmp_path: Path) -> None:
    clock = FakeClock(1_000_000.0)
    store = SessionStore(tmp_path)
    try:
        srv = _server(store, clock)
        tokens = _sign_in(srv)
        clock.advance(599)
        assert srv.verify(tokens.access_token) is not None
        clock.advance(2)  # past access_seconds
        assert srv.verify(tokens.access_token) is None

        async def refresh(token: str) -> Any:
            loaded = await srv.load_refresh_token(_Client(), token)
            return None if loaded is None else await srv.exchange_refresh_token(_Client(), loaded, [SCOPE])

        fresh = anyio.run(refresh, tokens.refresh_token)
        assert fresh is not None and srv.verify(fresh.access_token) is not None
        clock.advance(3600)  # past the family's lifetime, counted from the sign-in
        assert anyio.run(refresh, fresh.refresh_token) is None
        assert srv.verify(fresh.access_token) is None
    finally:
        store.close()


def _config(tmp_path: Path, **extra: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "server": {"cache_dir": str(tmp_path), "transport": "http", "auth": {"mode": "oauth"}},
        "tenants": [{"name": "contoso", "tenant_id": "contoso.example", "client_id": "00000000-0000-0000-0000-000000000001",
                     "client_secret_env": "X_SECRET"}],
    }
    data.update(extra)
    return data


def test_oauth_mode_needs_sign_in_configured(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as refused:
        parse_settings(_config(tmp_path), check_files=False)
    assert "oidc.enabled" in str(refused.value) and "oauth" in str(refused.value)
    ok = parse_settings(_config(tmp_path, oidc={"enabled": True, "tenant": "contoso", "client_id": "portal-app"}),
                        check_files=False)
    assert ok.server.auth.mode == "oauth" and ok.server.auth.oauth.access_token_minutes == 10
    with pytest.raises(ConfigError) as refused:
        data = _config(tmp_path, oidc={"enabled": True, "tenant": "contoso", "client_id": "portal-app"})
        data["server"]["auth"]["oauth"] = {"client_metadata_max_bytes": 10}
        parse_settings(data, check_files=False)
    assert "client_metadata_max_bytes" in str(refused.value)
