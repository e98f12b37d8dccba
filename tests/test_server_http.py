"""The HTTP transport's guards and health route, through real HTTP requests to uvicorn."""

from __future__ import annotations

import json
from typing import Iterator

import httpx
import pytest
from _server_fixtures import ServerEnv, serve_http, server_env  # noqa: F401 (fixture)

INIT = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}},
}
MCP_HEADERS = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}


@pytest.fixture(scope="module")
def base(server_env: ServerEnv) -> Iterator[str]:
    with serve_http(server_env, max_body_bytes=4096, allowed_hosts=["mcp.example.com"],
                    allowed_origins=["https://portal.example.com"]) as url:
        yield url


def post_init(base: str, **headers: str) -> httpx.Response:
    return httpx.post(f"{base}/mcp", content=json.dumps(INIT), headers={**MCP_HEADERS, **headers}, timeout=10)


def test_initialize_is_served_for_our_own_host(base: str) -> None:
    r = post_init(base)
    assert r.status_code == 200, r.text
    assert "entra-mcp" in r.text
    port = base.rsplit(":", 1)[1]
    assert post_init(base, Host=f"localhost:{port}").status_code == 200
    assert post_init(base, Host="mcp.example.com").status_code == 200  # server.allowed_hosts


@pytest.mark.parametrize("host", ["evil.example", "evil.example:80", "127.0.0.1.evil.example", "localhost:1"])
def test_unknown_host_is_misdirected_421(base: str, host: str) -> None:
    assert post_init(base, Host=host).status_code == 421
    assert httpx.get(f"{base}/healthz", headers={"Host": host}, timeout=10).status_code == 421


@pytest.mark.parametrize("origin", ["https://evil.example", "null", "http://127.0.0.1.evil.example:80"])
def test_foreign_or_null_origin_is_forbidden_403(base: str, origin: str) -> None:
    assert post_init(base, Origin=origin).status_code == 403
    assert httpx.get(f"{base}/healthz", headers={"Origin": origin}, timeout=10).status_code == 403


def test_own_and_configured_origins_pass(base: str) -> None:
    assert post_init(base, Origin=base).status_code == 200
    assert post_init(base, Origin="https://portal.example.com").status_code == 200


def test_oversized_body_is_refused_413(base: str) -> None:
    big = {**INIT, "params": {**INIT["params"], "pad": "x" * 10_000}}
    r = httpx.post(f"{base}/mcp", content=json.dumps(big), headers=MCP_HEADERS, timeout=10)
    assert r.status_code == 413

    def chunks() -> Iterator[bytes]:  # no Content-Length: the limit is counted while reading
        yield json.dumps(big).encode()

    r = httpx.post(f"{base}/mcp", content=chunks(), headers=MCP_HEADERS, timeout=10)
    assert r.status_code == 413
    assert post_init(base).status_code == 200  # still serving


def test_healthz_reports_freshness_without_secrets(base: str, server_env: ServerEnv) -> None:
    r = httpx.get(f"{base}/healthz", timeout=10)
    assert r.status_code == 200
    data = r.json()
    assert data["status"] == "ok"
    [tenant] = data["tenants"]
    assert tenant["tenant"] == server_env.name and tenant["synced"] is True and tenant["fresh"] is True
    assert tenant["ageSeconds"] >= 0 and tenant["areas"]["users"]["ok"] is True
    for secret in server_env.env.values():
        assert secret not in r.text
    assert server_env.tenant.tenant_id not in r.text
    assert r.headers["cache-control"] == "no-store"


def test_mcp_behind_the_sign_in_guard(server_env: ServerEnv, monkeypatch: pytest.MonkeyPatch) -> None:
    """/mcp wrapped by the sign-in part's protection (api_key mode): 401 without a key, served with one; /healthz
    stays open; the Host check still comes first."""
    key = "k-test-0123456789abcdefghij"  # long and varied enough for the API-key strength check
    monkeypatch.setenv("TEST_MCP_KEYS", key)
    with serve_http(server_env, auth={"mode": "api_key", "api_keys_env": "TEST_MCP_KEYS"}) as url:
        assert post_init(url).status_code == 401
        assert post_init(url, Authorization="Bearer wrong").status_code == 401
        r = post_init(url, Authorization=f"Bearer {key}")
        assert r.status_code == 200 and "entra-mcp" in r.text
        assert post_init(url, Host="evil.example", Authorization=f"Bearer {key}").status_code == 421
        assert httpx.get(f"{url}/healthz", timeout=10).status_code == 200
