"""/mcp under concurrent sessions, and the browser Origins the HTTP transport allows.

The product's HTTP app (create_http_app + build_hooks, entra mode with sign-in on) under uvicorn on a loopback port;
bearer tokens are the emulator's own.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from _auth_fixtures import WIDGET_ORIGIN, emulator_settings, free_port, mcp_call, mcp_open, serve_product, user_upn
from entra_mcp.devtenant.server import run_emulator
from entra_mcp.server.http import allowed_hosts_and_origins

pytestmark = pytest.mark.anyio
SCOPE = "Identity.Investigate"


@pytest.fixture(scope="module")
def emu() -> Iterator[Any]:
    with run_emulator(size="small", seed=11) as e:
        yield e


class Served:
    def __init__(self, emu: Any, settings: Any, base: str) -> None:
        self.emu, self.settings, self.base, self.url = emu, settings, base, base + "/mcp"

    def token(self, n: int = 0) -> str:
        t = self.emu.tenant(0)
        user = t.user_by_upn(user_upn(self.emu, 0, n))
        return str(self.emu.tokens.issue_user_tokens(t, self.emu.portal_app(0), user, audience=self.emu.api_app(0).client_id,
                                                     scp=[SCOPE], scopes=[SCOPE]).access_token)


@pytest.fixture
async def served(emu: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Served]:
    for k, v in emu.secret_env(None, with_sign_in=True).items():
        monkeypatch.setenv(k, v)
    port = free_port()
    # The widget's origin is only in oidc.allowed_return_to, not in server.allowed_origins.
    settings = emulator_settings(emu, tmp_path, public_url=f"http://127.0.0.1:{port}", port=port)
    assert settings.server.allowed_origins == []
    with serve_product(settings) as (base, _):
        yield Served(emu, settings, base)


def test_return_to_origins_are_allowed_origins(tmp_path: Path, emu: Any) -> None:
    settings = emulator_settings(emu, tmp_path, widget_origin="https://Chat.Example.test:8443")
    _, origins = allowed_hosts_and_origins(settings)
    assert "https://chat.example.test:8443" in origins
    off = settings.model_copy(update={"oidc": settings.oidc.model_copy(update={"enabled": False})})
    assert "https://chat.example.test:8443" not in allowed_hosts_and_origins(off)[1]  # sign-in off: not widened


async def test_widget_on_a_return_to_origin_reaches_chat_exchange_and_mcp(served: Served) -> None:
    async with httpx.AsyncClient(timeout=20) as http:
        hdr = {"Authorization": f"Bearer {served.token()}"}
        ok = await mcp_open(http, served.url, {**hdr, "Origin": WIDGET_ORIGIN})
        assert ok.status_code == 200, ok.text
        foreign = await mcp_open(http, served.url, {**hdr, "Origin": "https://evil.example.test"})
        assert foreign.status_code == 403
        # /auth/chat/exchange: the widget's Origin passes the transport's check (the code itself is refused: 400).
        body = {"code": "x" * 43, "code_verifier": "y" * 43}
        r = await http.post(served.base + "/auth/chat/exchange", json=body, headers={"Origin": WIDGET_ORIGIN})
        assert r.status_code == 400, r.text
        r = await http.post(served.base + "/auth/chat/exchange", json=body, headers={"Origin": "https://evil.example.test"})
        assert r.status_code == 403


async def test_concurrent_sessions_get_their_own_json_answers(served: Served) -> None:
    """32 sessions calling at once: every POST is answered with one application/json body carrying its own id."""
    clients, calls = 32, 5
    seen: list[int] = []

    async def one(n: int, http: httpx.AsyncClient) -> None:
        hdr = {"Authorization": f"Bearer {served.token(n % 5)}"}
        opened = await mcp_open(http, served.url, hdr)
        assert opened.status_code == 200, opened.text
        sid = opened.headers["mcp-session-id"]
        for i in range(calls):
            rid = 1000 * n + i + 2
            r = await mcp_call(http, served.url, hdr, sid, "sync_status", id=rid)
            assert r.status_code == 200 and r.headers["content-type"].startswith("application/json"), r.headers
            msg = json.loads(r.content)
            assert msg["id"] == rid and not msg["result"].get("isError"), msg
            seen.append(rid)

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(timeout=30, limits=limits) as http:
        with anyio.fail_after(60):
            async with anyio.create_task_group() as tg:
                for n in range(clients):
                    tg.start_soon(one, n, http)
    assert len(seen) == len(set(seen)) == clients * calls


async def test_sdk_client_works_with_json_answers(served: Served) -> None:
    upn = user_upn(served.emu, 0, 1)
    async with httpx2.AsyncClient(headers={"Authorization": f"Bearer {served.token()}"}, timeout=30) as http:
        async with Client(streamable_http_client(served.url, http_client=http), mode="legacy") as client:
            for _ in range(3):
                r = await client.call_tool("lookup_user", {"query": upn})
                assert not r.is_error, r
