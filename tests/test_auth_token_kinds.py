"""Which tokens /mcp accepts, whatever the configuration (issue 15 items 9, 12 and the token-lifetime bound of 13).

The product's HTTP app runs under uvicorn on a loopback port; tokens are the emulator's (issued or minted with its
real signing keys) and validated against its JWKS over HTTPS.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from _auth_fixtures import counting_transport, emulator_settings, free_port, mcp_open, serve_product, user_upn
from entra_mcp.config import parse_settings
from entra_mcp.devtenant.server import run_emulator

pytestmark = pytest.mark.anyio
SCOPE = "Identity.Investigate"


@pytest.fixture(scope="module")
def emu() -> Iterator[Any]:
    with run_emulator(tenants=2, seed=7) as e:
        yield e


Served = Callable[..., Any]


@pytest.fixture
def served(emu: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Served:
    """`async with served(auth={...}, oidc={...}) as url:` the product's /mcp with those config changes."""
    for k, v in emu.secret_env(None, with_sign_in=True).items():
        monkeypatch.setenv(k, v)

    @asynccontextmanager
    async def run(auth: dict[str, Any] | None = None, oidc: dict[str, Any] | None = None) -> AsyncIterator[str]:
        port = free_port()
        base = emulator_settings(emu, tmp_path / str(port), public_url=f"http://127.0.0.1:{port}", port=port, tenants=None)
        data = base.model_dump(mode="json")
        data["server"]["auth"].update(auth or {})
        data["oidc"].update(oidc or {})
        settings = parse_settings(data)
        with serve_product(settings, transport=counting_transport(emu)) as (url, _):
            yield url + "/mcp"

    return run


def _user(emu: Any, tenant: int) -> dict[str, Any]:
    return dict(emu.tenant(tenant).user_by_upn(user_upn(emu, tenant)))


async def _status(url: str, token: str) -> int:
    async with httpx.AsyncClient(timeout=20) as http:
        return (await mcp_open(http, url, {"Authorization": f"Bearer {token}"})).status_code


async def test_an_id_token_is_refused_even_when_its_audience_is_configured(emu: Any, served: Served) -> None:
    """audience = the portal's client id and app tokens allowed: an ID token (with roles) still is not an access token."""
    portal = emu.portal_app(0)
    t = emu.tenant(0)
    issued = emu.tokens.issue_user_tokens(t, portal, _user(emu, 0), audience=portal.client_id, scp=[SCOPE],
                                          scopes=["openid", "profile", SCOPE], nonce="n-1")
    now = int(time.time())
    id_claims = {"iss": f"{emu.login_url}/{t.tenant_id}/v2.0", "aud": portal.client_id, "tid": t.tenant_id,
                 "oid": _user(emu, 0)["id"], "iat": now, "nbf": now, "exp": now + 3600, "ver": "2.0", "roles": [SCOPE],
                 "sub": "s", "name": "n"}
    async with served(auth={"audience": portal.client_id, "allow_app_tokens": True}) as url:
        assert await _status(url, issued.access_token) == 200  # the baseline: an access token for that audience
        assert await _status(url, issued.id_token) == 401
        assert await _status(url, emu.tokens.mint(id_claims)) == 401  # no nonce, roles instead of scp
        assert await _status(url, emu.tokens.mint({**id_claims, "azp": portal.client_id, "nonce": "x"})) == 401


async def test_sign_in_tenants_do_not_open_mcp(emu: Any, served: Served) -> None:
    other = emu.tenant(1)
    api = emu.api_app(0)
    foreign = emu.tokens.issue_user_tokens(other, emu.portal_app(1), _user(emu, 1), audience=api.client_id, scp=[SCOPE],
                                           scopes=[SCOPE]).access_token
    own = emu.tokens.issue_user_tokens(emu.tenant(0), emu.portal_app(0), _user(emu, 0), audience=api.client_id,
                                       scp=[SCOPE], scopes=[SCOPE]).access_token
    async with served(oidc={"allowed_tenants": [other.tenant_id]}) as url:
        assert await _status(url, own) == 200
        assert await _status(url, foreign) == 401  # may sign in to the portal; may not call /mcp
    async with served(auth={"allowed_tenants": [other.tenant_id]}) as url:
        assert await _status(url, foreign) == 200


async def test_a_token_valid_for_longer_than_entra_issues_is_refused(emu: Any, served: Served) -> None:
    t = emu.tenant(0)
    now = int(time.time())
    claims = {"iss": f"{emu.login_url}/{t.tenant_id}/v2.0", "aud": emu.api_app(0).client_id, "tid": t.tenant_id,
              "oid": _user(emu, 0)["id"], "iat": now, "nbf": now, "scp": SCOPE, "ver": "2.0",
              "azp": emu.portal_app(0).client_id, "azpacr": "1"}
    async with served() as url:
        assert await _status(url, emu.tokens.mint({**claims, "exp": now + 27 * 3600})) == 200  # CAE: up to 28 h
        assert await _status(url, emu.tokens.mint({**claims, "exp": now + 30 * 24 * 3600})) == 401
        no_times = {k: v for k, v in claims.items() if k not in ("iat", "nbf")}
        assert await _status(url, emu.tokens.mint({**no_times, "exp": 2**40})) == 401
