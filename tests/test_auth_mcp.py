"""The hosted /mcp endpoint under [server.auth] (docs/sign-in.md rules 1-8 on bearer tokens, 13-16).

The product's real HTTP app (server/http.py's create_http_app with server/app.py's MCP server) runs under uvicorn
on a loopback port; bearer tokens are the emulator's own (issued or forged with its real signing keys) and are
validated against its JWKS over HTTPS.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from _auth_fixtures import (
    CountingTransport,
    counting_transport,
    emulator_settings,
    free_port,
    mcp_call,
    mcp_open,
    rpc_result,
    serve_product,
    user_upn,
)
from entra_mcp.devtenant.server import run_emulator
from entra_mcp.server.auth import PRINCIPAL_SCOPE_KEY, McpGuard

pytestmark = pytest.mark.anyio
SCOPE = "Identity.Investigate"


@pytest.fixture(scope="module")
def emu() -> Iterator[Any]:
    with run_emulator(tenants=2, seed=5) as e:
        yield e


class Api:
    """The served product plus helpers to get tokens for it."""

    def __init__(self, emu: Any, settings: Any, base: str, counting: CountingTransport, hooks: Any) -> None:
        self.emu, self.settings, self.base, self.counting, self.hooks = emu, settings, base, counting, hooks
        self.url = base + "/mcp"
        self.api = emu.api_app(0)
        self.portal = emu.portal_app(0)
        self.http = httpx.AsyncClient(timeout=20)

    def user(self, tenant_index: int = 0, n: int = 0) -> dict[str, Any]:
        return self.emu.tenant(tenant_index).user_by_upn(user_upn(self.emu, tenant_index, n))

    def token(self, tenant_index: int = 0, n: int = 0, scp: list[str] | None = None, audience: str | None = None) -> str:
        t = self.emu.tenant(tenant_index)
        tokens = self.emu.tokens.issue_user_tokens(
            t, self.emu.portal_app(tenant_index), self.user(tenant_index, n),
            audience=audience or self.api.client_id, scp=[SCOPE] if scp is None else scp, scopes=[SCOPE],
        )
        return str(tokens.access_token)

    def claims(self, **kw: Any) -> dict[str, Any]:
        now = int(time.time())
        t = self.emu.tenant(0)
        base = {"iss": f"{self.emu.login_url}/{t.tenant_id}/v2.0", "aud": self.api.client_id, "tid": t.tenant_id,
                "oid": self.user()["id"], "iat": now, "nbf": now, "exp": now + 3600, "scp": SCOPE, "ver": "2.0",
                "azp": self.portal.client_id, "preferred_username": self.user()["userPrincipalName"]}
        base.update(kw)
        return {k: v for k, v in base.items() if v is not None}

    @staticmethod
    def bearer(token: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {token}"}


@pytest.fixture
async def api(emu: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Api]:
    for k, v in emu.secret_env(None, with_sign_in=True).items():
        monkeypatch.setenv(k, v)
    port = free_port()
    settings = emulator_settings(emu, tmp_path, public_url=f"http://127.0.0.1:{port}", port=port)
    counting = counting_transport(emu)
    with serve_product(settings, transport=counting) as (base, hooks):
        a = Api(emu, settings, base, counting, hooks)
        yield a
        await a.http.aclose()
    # hooks' HTTP clients lived on uvicorn's loop, which is gone now; their connections went with it.


async def test_no_credential_gets_401_with_resource_metadata(api: Api) -> None:
    r = await api.http.post(api.url, json={"jsonrpc": "2.0", "id": 1, "method": "ping"})
    assert r.status_code == 401
    assert r.headers["www-authenticate"].startswith("Bearer ")
    assert f'resource_metadata="{api.base}/.well-known/oauth-protected-resource/mcp"' in r.headers["www-authenticate"]
    for path in ("/.well-known/oauth-protected-resource", "/.well-known/oauth-protected-resource/mcp"):
        meta = (await api.http.get(api.base + path)).json()
        assert meta["resource"] == api.url
        assert meta["authorization_servers"] == [f"{api.emu.login_url}/{api.emu.tenant(0).tenant_id}/v2.0"]
        assert meta["scopes_supported"] == [f"api://{api.api.client_id}/{SCOPE}"]
        assert meta["bearer_methods_supported"] == ["header"]


async def test_valid_token_can_call_tools(api: Api) -> None:
    hdr = api.bearer(api.token())
    opened = await mcp_open(api.http, api.url, hdr)
    assert opened.status_code == 200, opened.text
    sid = opened.headers["mcp-session-id"]
    r = await mcp_call(api.http, api.url, hdr, sid, "sync_status")
    assert r.status_code == 200 and "result" in rpc_result(r)


async def test_missing_scope_is_403_insufficient_scope(api: Api) -> None:
    r = await mcp_open(api.http, api.url, api.bearer(api.token(scp=["User.Read"])))
    assert r.status_code == 403
    assert 'error="insufficient_scope"' in r.headers["www-authenticate"]
    assert "resource_metadata=" in r.headers["www-authenticate"]


def forged(api: Api) -> dict[str, str]:
    tok = api.emu.tokens
    other = api.emu.tenant(1)
    c = api.claims
    v1 = c(iss=f"https://sts.windows.net/{api.emu.tenant(0).tenant_id}/", ver="1.0")
    return {
        "alg none": tok.mint(c(), alg="none"),
        "HS256 keyed with the public key": tok.mint(c(), alg="HS256"),
        "PS256": tok.mint(c(), alg="PS256"),
        "foreign key with a known kid": tok.mint(c(), key="foreign", header={"kid": tok.active_key.kid}),
        "foreign key": tok.mint(c(), key="foreign"),
        "jku to an attacker key set": tok.mint(c(), key="foreign", header={"jku": "https://evil.example/keys", "kid": "evil"}),
        "x5u to an attacker cert": tok.mint(c(), key="foreign", header={"x5u": "https://evil.example/c.pem"}),
        "wrong issuer": tok.mint(c(iss="https://evil.example/" + api.emu.tenant(0).tenant_id + "/v2.0")),
        "other tenant": tok.mint(c(iss=f"{api.emu.login_url}/{other.tenant_id}/v2.0", tid=other.tenant_id)),
        "tid differs from iss": tok.mint(c(tid=other.tenant_id)),
        "wrong audience (portal app)": tok.mint(c(aud=api.portal.client_id)),
        "Graph audience": tok.mint(c(aud=api.emu.graph_url)),
        "v1 token": tok.mint(v1),
        "expired": tok.mint(c(exp=int(time.time()) - 120)),
        "future nbf": tok.mint(c(nbf=int(time.time()) + 600)),
        "no exp": tok.mint(c(exp=None)),
        "no iss": tok.mint(c(iss=None)),
        "no oid": tok.mint(c(oid=None)),
        "no tid": tok.mint(c(tid=None)),
        "junk kid": tok.mint(c(), header={"kid": "../../../etc/passwd"}),
        "id token as access token": api.emu.tokens.issue_user_tokens(
            api.emu.tenant(0), api.portal, api.user(), audience=api.api.client_id, scp=[SCOPE], scopes=["openid", SCOPE],
            nonce="n").id_token,
    }


async def test_forged_and_wrong_tokens_are_refused(api: Api) -> None:
    good = api.emu.tokens.mint(api.claims())
    assert (await mcp_open(api.http, api.url, api.bearer(good))).status_code == 200  # the baseline passes
    for name, token in forged(api).items():
        r = await mcp_open(api.http, api.url, api.bearer(token))
        assert r.status_code == 401, name
        assert 'error="invalid_token"' in r.headers["www-authenticate"], name


async def test_app_only_tokens_are_refused(api: Api) -> None:
    t = api.emu.tenant(0)
    app_token = api.emu.tokens.issue_app_token(t, api.emu.sync_app(0), api.api.client_id, roles=[SCOPE])
    r = await mcp_open(api.http, api.url, api.bearer(app_token))
    assert r.status_code == 401 and "app-only" in r.json()["error_description"]


async def test_token_in_query_string_is_ignored(api: Api) -> None:
    token = api.token()
    for name in ("access_token", "token", "code"):
        r = await api.http.post(f"{api.url}?{name}={token}", json={"jsonrpc": "2.0", "id": 1, "method": "ping"})
        assert r.status_code == 401


async def test_one_principal_cannot_use_another_principals_session(api: Api) -> None:
    alice, bob = api.bearer(api.token(0, 0)), api.bearer(api.token(0, 1))
    opened = await mcp_open(api.http, api.url, alice)
    sid = opened.headers["mcp-session-id"]
    hijack = await mcp_call(api.http, api.url, bob, sid, "sync_status")
    assert hijack.status_code == 404
    # a fresh token of the same person (tid, oid) keeps working
    assert (await mcp_call(api.http, api.url, api.bearer(api.token(0, 0)), sid, "sync_status")).status_code == 200
    # mcp 2.3's own check (CVE-2026-52869): with this wrapper's binding forgotten, the SDK still refuses bob
    api.hooks.guard._owners.clear()
    assert (await mcp_call(api.http, api.url, bob, sid, "sync_status", id=3)).status_code == 404
    assert (await mcp_call(api.http, api.url, alice, sid, "sync_status", id=4)).status_code == 200


async def test_same_upn_from_another_tenant_is_another_principal(api: Api) -> None:
    """nOAuth: tenant B signs a token carrying the victim's preferred_username; it is not the victim."""
    victim = api.user(0, 0)
    opened = await mcp_open(api.http, api.url, api.bearer(api.token(0, 0)))
    sid = opened.headers["mcp-session-id"]
    t1 = api.emu.tenant(1)
    impostor = api.emu.tokens.mint(api.claims(iss=f"{api.emu.login_url}/{t1.tenant_id}/v2.0", tid=t1.tenant_id,
                                              oid=victim["id"], preferred_username=victim["userPrincipalName"]))
    # single-tenant: refused outright
    assert (await mcp_call(api.http, api.url, api.bearer(impostor), sid, "sync_status")).status_code == 401
    # multi-tenant guard allowing tenant B (server.auth.allowed_tenants): accepted as B's principal, still not the
    # victim's session
    multi = emulator_settings(api.emu, Path(api.settings.server.cache_dir), public_url=api.base)
    auth = multi.server.auth.model_copy(update={"allowed_tenants": [t1.tenant_id]})
    guard = McpGuard(multi.model_copy(update={"server": multi.server.model_copy(update={"auth": auth})}),
                     transport=counting_transport(api.emu))
    from starlette.datastructures import Headers

    p_victim = await guard.authenticate(Headers({"authorization": f"Bearer {api.token(0, 0)}"}))
    p_impostor = await guard.authenticate(Headers({"authorization": f"Bearer {impostor}"}))
    assert p_victim.preferred_username == p_impostor.preferred_username  # type: ignore[union-attr]
    assert p_victim.key != p_impostor.key  # type: ignore[union-attr]
    await guard.aclose()


async def test_junk_kid_burst_costs_at_most_one_jwks_fetch(api: Api) -> None:
    import anyio

    assert (await mcp_open(api.http, api.url, api.bearer(api.token()))).status_code == 200
    before = api.counting.count("/discovery/v2.0/keys")
    tokens = [api.emu.tokens.mint(api.claims(), key="foreign", header={"kid": uuid.uuid4().hex}) for _ in range(60)]
    codes: list[int] = []

    async def one(t: str) -> None:
        codes.append((await api.http.post(api.url, json={"jsonrpc": "2.0", "id": 1, "method": "ping"}, headers=api.bearer(t))).status_code)

    async with anyio.create_task_group() as tg:
        for t in tokens:
            tg.start_soon(one, t)
    assert codes == [401] * 60
    assert api.counting.count("/discovery/v2.0/keys") - before <= 1


async def test_key_rollover_is_picked_up(emu: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """After the IdP rolls its key, a token signed with the new kid validates after one refetch."""
    from _auth_fixtures import FakeClock
    from entra_mcp.oidc.provider import OidcProvider
    from entra_mcp.oidc.validate import TokenValidator

    settings = emulator_settings(emu, tmp_path)
    clock = FakeClock()
    counting = counting_transport(emu)
    provider = OidcProvider.from_tenant(settings.tenant(settings.server.auth.tenant), transport=counting, clock=clock)
    v = TokenValidator(provider)
    t = emu.tenant(0)
    api_id = emu.api_app(0).client_id
    mk = lambda: emu.tokens.issue_user_tokens(t, emu.portal_app(0), next(iter(t.users.values())), audience=api_id,  # noqa: E731
                                              scp=[SCOPE], scopes=[SCOPE]).access_token
    await v.validate_access_token(mk(), audience=api_id, required_scopes=[SCOPE])
    emu.tokens.rollover()
    try:
        clock.advance(61)
        await v.validate_access_token(mk(), audience=api_id, required_scopes=[SCOPE])
        assert counting.count("/discovery/v2.0/keys") == 2
    finally:
        await provider.aclose()


async def test_jwks_down_keeps_cached_keys_then_fails_closed(emu: Any, tmp_path: Path) -> None:
    from _auth_fixtures import FakeClock
    from entra_mcp.oidc.provider import OidcProvider, ProviderUnavailable
    from entra_mcp.oidc.validate import TokenValidator

    settings = emulator_settings(emu, tmp_path)
    clock = FakeClock()
    counting = counting_transport(emu)
    provider = OidcProvider.from_tenant(settings.tenant(settings.server.auth.tenant), transport=counting, clock=clock,
                                        refresh_after=600, max_key_age=3600)
    v = TokenValidator(provider)
    t = emu.tenant(0)
    api_id = emu.api_app(0).client_id
    tok = emu.tokens.issue_user_tokens(t, emu.portal_app(0), next(iter(t.users.values())), audience=api_id,
                                       scp=[SCOPE], scopes=[SCOPE]).access_token
    await v.validate_access_token(tok, audience=api_id, required_scopes=[SCOPE])
    counting.down = lambda r: r.url.path.endswith("/keys")
    clock.advance(1800)
    await v.validate_access_token(tok, audience=api_id, required_scopes=[SCOPE])  # stale but within max age
    clock.advance(1900)
    with pytest.raises(ProviderUnavailable):
        await v.validate_access_token(tok, audience=api_id, required_scopes=[SCOPE])
    await provider.aclose()


async def test_host_and_origin_checks(api: Api) -> None:
    hdr = api.bearer(api.token())
    r = await api.http.post(api.url, json={"jsonrpc": "2.0", "id": 1, "method": "ping"}, headers={**hdr, "Host": "evil.example"})
    assert r.status_code == 421
    for origin in ("https://evil.example", "null"):
        r = await api.http.post(api.url, json={"jsonrpc": "2.0", "id": 1, "method": "ping"}, headers={**hdr, "Origin": origin})
        assert r.status_code == 403
        r = await api.http.get(api.base + "/auth/login", headers={"Origin": origin})
        assert r.status_code == 403


async def test_the_credential_never_reaches_the_mcp_app(emu: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No passthrough: what the MCP app (and so any tool) sees has no Authorization header, only the principal."""
    settings = emulator_settings(emu, tmp_path)
    guard = McpGuard(settings, transport=counting_transport(emu))
    seen: dict[str, Any] = {}

    async def inner(scope: Any, receive: Any, send: Any) -> None:
        seen.update(scope)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    app = guard.wrap(inner)
    t = emu.tenant(0)
    token = emu.tokens.issue_user_tokens(t, emu.portal_app(0), next(iter(t.users.values())),
                                         audience=emu.api_app(0).client_id, scp=[SCOPE], scopes=[SCOPE]).access_token
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1:8765") as c:
        assert (await c.post("/mcp", headers={"Authorization": f"Bearer {token}"})).status_code == 200
    assert all(k.lower() != b"authorization" for k, _ in seen["headers"])
    assert token not in repr(seen)
    assert seen[PRINCIPAL_SCOPE_KEY].tid == t.tenant_id
    await guard.aclose()


async def test_api_key_mode(emu: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ENTRA_MCP_API_KEYS", "k-one-0123456789, k-two-0123456789")
    settings = emulator_settings(emu, tmp_path)
    settings = settings.model_copy(update={"server": settings.server.model_copy(
        update={"auth": settings.server.auth.model_copy(update={"mode": "api_key"})})})
    guard = McpGuard(settings)
    assert guard.routes() == []

    async def inner(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=guard.wrap(inner)), base_url="http://127.0.0.1:8765") as c:
        assert (await c.post("/mcp", headers={"Authorization": "Bearer k-two-0123456789"})).status_code == 200
        for bad in ("k-two-012345678", "k-two-01234567890", "", "k-one-0123456789, k-two-0123456789"):
            assert (await c.post("/mcp", headers={"Authorization": f"Bearer {bad}"})).status_code == 401
        assert (await c.post("/mcp?api_key=k-one-0123456789")).status_code == 401


async def test_the_wrapper_binds_sessions_itself(emu: Any, tmp_path: Path) -> None:
    """Independent of the SDK: an inner app that hands out session ids; the wrapper alone refuses another principal."""
    settings = emulator_settings(emu, tmp_path)
    guard = McpGuard(settings, transport=counting_transport(emu))

    async def inner(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": [(b"mcp-session-id", b"s-1")]})
        await send({"type": "http.response.body", "body": b"{}"})

    t = emu.tenant(0)
    users = sorted(t.users.values(), key=lambda u: u["id"])[:2]
    tok = [emu.tokens.issue_user_tokens(t, emu.portal_app(0), u, audience=emu.api_app(0).client_id, scp=[SCOPE],
                                        scopes=[SCOPE]).access_token for u in users]
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=guard.wrap(inner)), base_url="http://127.0.0.1:8765") as c:
        assert (await c.post("/mcp", headers={"Authorization": f"Bearer {tok[0]}"})).status_code == 200
        other = await c.post("/mcp", headers={"Authorization": f"Bearer {tok[1]}", "Mcp-Session-Id": "s-1"})
        assert other.status_code == 404
        same = await c.post("/mcp", headers={"Authorization": f"Bearer {tok[0]}", "Mcp-Session-Id": "s-1"})
        assert same.status_code == 200
    await guard.aclose()


async def test_tenant_named_by_domain_validates_and_metadata_names_the_guid_issuer(emu: Any, tmp_path: Path) -> None:
    from starlette.applications import Starlette

    from entra_mcp.config import parse_settings

    settings = emulator_settings(emu, tmp_path)
    data = settings.model_dump(mode="json", exclude={"source"})
    t = emu.tenant(0)
    data["tenants"][0]["tenant_id"] = t.domain
    guard = McpGuard(parse_settings(data), transport=counting_transport(emu))
    token = emu.tokens.issue_user_tokens(t, emu.portal_app(0), next(iter(t.users.values())),
                                         audience=emu.api_app(0).client_id, scp=[SCOPE], scopes=[SCOPE]).access_token
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=Starlette(routes=guard.routes())),
                                 base_url="http://127.0.0.1:8765") as c:
        meta = (await c.get("/.well-known/oauth-protected-resource")).json()
    assert meta["authorization_servers"] == [f"{emu.login_url}/{t.tenant_id}/v2.0"]
    from starlette.datastructures import Headers

    principal = await guard.authenticate(Headers({"authorization": f"Bearer {token}"}))
    assert getattr(principal, "tid", None) == t.tenant_id
    await guard.aclose()
