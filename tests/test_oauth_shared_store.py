"""OAuth mode over the shared store: the authorization server's clients, codes and tokens live in Redis
([server.store]); Redis down makes /mcp answer 503 with Retry-After for opaque access tokens (they cannot be looked
up), and with Redis back (AOF) the same tokens work again without a restart."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import httpx
import pytest

from _harness import wait_until
from _oauth_fixtures import HttpBrowser, Stack, oauth_stack, pkce
from _redis import RedisServer, have_redis

pytestmark = pytest.mark.skipif(not have_redis(), reason="redis-server is not installed (scripts/test.sh installs it)")

CALLBACK = "http://127.0.0.1:40123/callback"
MCP_HEADERS = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json",
               "MCP-Protocol-Version": "2025-06-18"}


@pytest.fixture(scope="module")
def redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    with RedisServer(tmp_path_factory.mktemp("oauth-redis"), persistence=True) as server:
        yield server


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, redis: RedisServer) -> Iterator[Stack]:
    with oauth_stack(tmp_path_factory.mktemp("oauth-shared"), seed=9, redis_url=redis.url) as s:
        yield s


def _call(stack: Stack, token: str) -> httpx.Response:
    body = {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "sync_status", "arguments": {}}}
    return httpx.post(f"{stack.base}/mcp", json=body, headers={**MCP_HEADERS, "Authorization": f"Bearer {token}"},
                      timeout=20)


def test_oauth_tokens_live_in_redis_and_survive_its_restart(stack: Stack, redis: RedisServer, tmp_path: Path) -> None:
    browser = HttpBrowser(stack)
    try:
        client = browser.register([CALLBACK])
        assert client.status_code == 201, client.text
        client_id = client.json()["client_id"]
        verifier, challenge = pkce()
        code = browser.code_for(client_id, CALLBACK, challenge)
        tokens = browser.token(grant_type="authorization_code", code=code, redirect_uri=CALLBACK, client_id=client_id,
                               code_verifier=verifier, resource=stack.resource)
        assert tokens.status_code == 200, tokens.text
        access = tokens.json()["access_token"]
    finally:
        browser.close()
    with redis.client() as raw:
        keys = [k.decode() for k in raw.keys(stack.settings.server.store.key_prefix + "rec:*")]
    assert keys and not any(access in k for k in keys)  # stored under hashes, never the token itself
    ok = _call(stack, access)
    assert ok.status_code == 200 and "mcp-session-id" not in ok.headers

    redis.kill9()
    down = _call(stack, access)
    assert down.status_code == 503 and down.headers["Retry-After"] == "5"
    assert down.json()["error"] == "temporarily_unavailable" and "Traceback" not in down.text

    redis.start()  # the append-only file brings the tokens back
    wait_until(lambda: _call(stack, access).status_code == 200, timeout=20, what="the token answered again")
