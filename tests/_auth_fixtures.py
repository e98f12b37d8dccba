"""Helpers for the sign-in and token tests: a counting/switchable transport and token forging.

`LocalIdP` is a tiny in-process stand-in for a login host's discovery + JWKS (through httpx.MockTransport, httpx's
public test seam), with keys generated in the test. It exists for the rules that need control the emulator does not
give (a JWKS endpoint that goes down, counted fetches). Everything else runs against the emulator over HTTPS.
"""

from __future__ import annotations

import base64
import json
import re as _re
import time
import tomllib as _tomllib
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path as _Path
from typing import Any
from urllib.parse import parse_qs as _parse_qs
from urllib.parse import urlsplit as _urlsplit

import httpx
from cryptography.hazmat.primitives import hashes, hmac, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from _harness import free_port, serve_app as serve  # noqa: F401 (re-exported: one helper for every test module)


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def sign_rs256(private_key: rsa.RSAPrivateKey, header: dict[str, Any], claims: dict[str, Any]) -> str:
    signing_input = f"{b64url(json.dumps(header).encode())}.{b64url(json.dumps(claims).encode())}".encode()
    sig = private_key.sign(signing_input, padding.PKCS1v15(), hashes.SHA256())
    return signing_input.decode() + "." + b64url(sig)


def sign_hs256(secret: bytes, header: dict[str, Any], claims: dict[str, Any]) -> str:
    signing_input = f"{b64url(json.dumps(header).encode())}.{b64url(json.dumps(claims).encode())}".encode()
    h = hmac.HMAC(secret, hashes.SHA256())
    h.update(signing_input)
    return signing_input.decode() + "." + b64url(h.finalize())


def unsigned(header: dict[str, Any], claims: dict[str, Any]) -> str:
    return f"{b64url(json.dumps(header).encode())}.{b64url(json.dumps(claims).encode())}."


def public_jwk(key: rsa.RSAPrivateKey, kid: str) -> dict[str, Any]:
    nums = key.public_key().public_numbers()
    n = nums.n.to_bytes((nums.n.bit_length() + 7) // 8, "big")
    e = nums.e.to_bytes((nums.e.bit_length() + 7) // 8, "big")
    return {"kty": "RSA", "use": "sig", "kid": kid, "n": b64url(n), "e": b64url(e)}


def public_pem(key: rsa.RSAPrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


@dataclass
class LocalIdP:
    """Discovery + JWKS for one or more tenants on https://login.test, with counters and a down switch."""

    login: str = "https://login.test"
    tenants: list[str] = field(default_factory=lambda: [str(uuid.uuid4()), str(uuid.uuid4())])
    keys: dict[str, rsa.RSAPrivateKey] = field(default_factory=dict)
    jwks_down: bool = False
    jwks_requests: int = 0
    jwks_gate: Any = None  # an anyio.Event: JWKS answers wait for it (a slow IdP), jwks_in_flight is set meanwhile
    jwks_in_flight: Any = None

    def __post_init__(self) -> None:
        if not self.keys:
            self.add_key("key-1")

    @property
    def tid(self) -> str:
        return self.tenants[0]

    def add_key(self, kid: str) -> rsa.RSAPrivateKey:
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.keys[kid] = key
        return key

    def handler(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        for tid in self.tenants:
            if path == f"/{tid}/v2.0/.well-known/openid-configuration":
                return httpx.Response(200, json=self.discovery(tid))
            if path == f"/{tid}/discovery/v2.0/keys":
                self.jwks_requests += 1
                if self.jwks_down:
                    return httpx.Response(503)
                return httpx.Response(200, json={"keys": [public_jwk(k, kid) for kid, k in self.keys.items()]})
        return httpx.Response(404)

    def transport(self) -> httpx.MockTransport:
        async def handler(request: httpx.Request) -> httpx.Response:
            import anyio.lowlevel

            await anyio.lowlevel.checkpoint()  # a real network round trip yields to other tasks too
            if self.jwks_gate is not None and request.url.path.endswith("/keys"):
                self.jwks_in_flight.set()
                await self.jwks_gate.wait()
            return self.handler(request)

        return httpx.MockTransport(handler)

    def discovery(self, tid: str) -> dict[str, Any]:
        return {
            "issuer": f"{self.login}/{tid}/v2.0",
            "authorization_endpoint": f"{self.login}/{tid}/oauth2/v2.0/authorize",
            "token_endpoint": f"{self.login}/{tid}/oauth2/v2.0/token",
            "jwks_uri": f"{self.login}/{tid}/discovery/v2.0/keys",
            "id_token_signing_alg_values_supported": ["RS256"],
        }

    def claims(self, *, aud: str, now: float | None = None, **extra: Any) -> dict[str, Any]:
        """Good v2 claims; keyword arguments override, and a None value removes the claim."""
        tid = extra.get("tid") or self.tid
        now = time.time() if now is None else now
        base: dict[str, Any] = {
            "iss": f"{self.login}/{tid}/v2.0",
            "aud": aud,
            "tid": tid,
            "oid": str(uuid.uuid4()),
            "iat": int(now),
            "nbf": int(now),
            "exp": int(now) + 3600,
            "ver": "2.0",
            "name": "Test User",
            "preferred_username": "test.user@contoso.example",
        }
        base.update(extra)
        return {k: v for k, v in base.items() if v is not None}

    def mint(self, claims: dict[str, Any], *, kid: str = "key-1", header: dict[str, Any] | None = None) -> str:
        h = {"alg": "RS256", "typ": "JWT", "kid": kid}
        h.update(header or {})
        return sign_rs256(self.keys[kid], h, claims)


class FakeClock:
    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class CountingTransport(httpx.AsyncBaseTransport):
    """Wraps a real transport: counts requests per path and can refuse chosen paths (an endpoint 'going down')."""

    def __init__(self, inner: httpx.AsyncBaseTransport) -> None:
        self.inner = inner
        self.paths: list[str] = []
        self.down: Callable[[httpx.Request], bool] = lambda r: False

    def count(self, fragment: str) -> int:
        return sum(1 for p in self.paths if fragment in p)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.paths.append(request.url.path)
        if self.down(request):
            raise httpx.ConnectError("endpoint down (test)", request=request)
        return await self.inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self.inner.aclose()


# ---------------------------------------------------------------------------------------------------------------------
# The emulator-backed sign-in harness: the product's /auth/* routes in-process (httpx ASGITransport) against the
# emulator's login host over HTTPS (real discovery, JWKS, authorize page and token endpoint).


PUBLIC_URL = "http://127.0.0.1:8765"
WIDGET_ORIGIN = "https://chat.example.test"


def emulator_settings(emu: Any, cache_dir: _Path, *, public_url: str = PUBLIC_URL, tenants: int | None = 0,
                      allowed_tenants: list[str] | None = None, widget_origin: str = WIDGET_ORIGIN, **server: Any) -> Any:
    """The product's Settings for `emu` with sign-in and /mcp protection on (parsed like a real config file)."""
    from entra_mcp.config import parse_settings

    data = _tomllib.loads(emu.config_toml(tenants, cache_dir, with_sign_in=True))
    data["server"].update({"public_url": public_url, "transport": "http", **server})
    # the chat widget's page exactly (the chat hand-over returns only there), and anything under the widget's origin
    data["oidc"]["allowed_return_to"] = [f"{public_url}/", f"{widget_origin}/", f"{widget_origin}/chat"]
    if allowed_tenants:
        data["oidc"]["allowed_tenants"] = allowed_tenants
    emu.add_redirect_uri(public_url + "/auth/callback", None)
    return parse_settings(data)


def user_upn(emu: Any, tenant_index: int = 0, n: int = 0) -> str:
    users = [u for u in emu.tenant(tenant_index).users.values() if u.get("accountEnabled", True) and u.get("userType", "Member") == "Member"]
    users.sort(key=lambda u: u["userPrincipalName"])
    return str(users[n]["userPrincipalName"])


class Harness:
    """A browser-like client of the product app plus a client of the emulator's login pages."""

    def __init__(self, emu: Any, settings: Any, app: Any, counting: CountingTransport) -> None:
        self.emu = emu
        self.settings = settings
        self.app = app
        self.counting = counting
        base = settings.server.resolved_public_url if settings is not None else PUBLIC_URL
        self.client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=base)
        self.idp = httpx.AsyncClient(verify=_ssl_ctx(emu.ca_bundle))

    async def aclose(self) -> None:
        await self.client.aclose()
        await self.idp.aclose()

    async def login(self, flow: str = "portal", return_to: str | None = None, **params: str) -> httpx.Response:
        q = {"flow": flow, **params}
        if return_to is not None:
            q["return_to"] = return_to
        return await self.client.get("/auth/login", params=q)

    async def authenticate(self, authorize_url: str, username: str, password: str | None = None) -> str:
        """Fill in the emulator's sign-in form; returns the redirect (callback) URL with code and state."""
        from entra_mcp.devtenant.model import DEFAULT_USER_PASSWORD

        page = await self.idp.get(authorize_url)
        assert page.status_code == 200, page.text[:500]
        ctx = _re.search(r'name="ctx" value="([^"]+)"', page.text)
        action = _re.search(r'action="([^"]+)"', page.text)
        assert ctx and action, page.text[:500]
        base = _urlsplit(authorize_url)
        resp = await self.idp.post(
            f"{base.scheme}://{base.netloc}{action.group(1)}",
            data={"ctx": ctx.group(1), "username": username, "password": password or DEFAULT_USER_PASSWORD},
        )
        assert resp.status_code == 302, resp.text[:500]
        return resp.headers["location"]

    verifier = "widget-verifier-" + "v" * 40  # what a chat widget keeps; chat_challenge = S256(verifier)

    async def sign_in(self, flow: str = "portal", return_to: str | None = None, user: str | None = None,
                      **params: str) -> httpx.Response:
        if flow == "chat":
            from entra_mcp.oidc.sessions import s256

            params.setdefault("chat_challenge", s256(self.verifier))
        start = await self.login(flow, return_to, **params)
        assert start.status_code == 302, start.text
        callback = await self.authenticate(start.headers["location"], user or user_upn(self.emu))
        return await self.client.get(callback)

    async def chat_token(self, user: str | None = None) -> str:
        done = await self.sign_in("chat", f"{WIDGET_ORIGIN}/chat", user)
        assert done.status_code == 303, done.text
        code = _parse_qs(_urlsplit(done.headers["location"]).fragment)["chat_code"][0]
        resp = await self.client.post("/auth/chat/exchange", json={"code": code, "code_verifier": self.verifier},
                                      headers={"Origin": WIDGET_ORIGIN})
        assert resp.status_code == 200, resp.text
        return str(resp.json()["chatSessionToken"])


def _ssl_ctx(ca: Any) -> Any:
    import ssl

    return ssl.create_default_context(cafile=str(ca))


def counting_transport(emu: Any) -> CountingTransport:
    return CountingTransport(httpx.AsyncHTTPTransport(verify=_ssl_ctx(emu.ca_bundle)))


# ---------------------------------------------------------------------------------------------------------------------
# Serving the product's HTTP app for real (uvicorn on a free loopback port, in a thread: tests/_harness.py's
# free_port and serve, imported above for the test modules) and speaking MCP to it.


MCP_HEADERS = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}


@contextmanager
def serve_product(settings: Any, *, transport: httpx.AsyncBaseTransport | None = None) -> Iterator[tuple[str, Any]]:
    """The product's HTTP app assembled as `entra-mcp serve` does (sign-in hooks, the mirror store, the view provider,
    the MCP server, the HTTP app) under uvicorn on `settings.server.port` until the block ends; yields (base URL,
    hooks). `transport` replaces the hooks' HTTP transport to the login host (e.g. a CountingTransport)."""
    from entra_mcp.mirror.store import MirrorStore
    from entra_mcp.server.app import create_server
    from entra_mcp.server.auth import build_hooks
    from entra_mcp.server.http import create_http_app
    from entra_mcp.views import ViewProvider

    hooks = build_hooks(settings, transport=transport)
    store = MirrorStore(settings.server.cache_dir)
    try:
        views = ViewProvider.from_settings(settings, store)
        server = create_server(settings, views=views, sessions=hooks.sessions)
        app = create_http_app(settings, server, views=views, extra_routes=hooks.routes, protect=hooks.protect)
        with serve(app, settings.server.port) as base:
            yield base, hooks
    finally:
        store.close()


def rpc_result(resp: httpx.Response) -> dict[str, Any]:
    """The JSON-RPC message in a streamable-HTTP answer (JSON or SSE)."""
    if resp.headers.get("content-type", "").startswith("application/json"):
        return dict(resp.json())
    for line in resp.text.splitlines():
        if line.startswith("data:"):
            return dict(json.loads(line[5:]))
    raise AssertionError(f"no JSON-RPC message in: {resp.status_code} {resp.text[:300]}")


INIT = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "test", "version": "1"}},
}


async def mcp_open(client: httpx.AsyncClient, url: str, headers: dict[str, str]) -> httpx.Response:
    """initialize + notifications/initialized; returns the initialize response (its Mcp-Session-Id header)."""
    resp = await client.post(url, json=INIT, headers={**MCP_HEADERS, **headers})
    if resp.status_code == 200:
        sid = resp.headers["mcp-session-id"]
        note = await client.post(url, json={"jsonrpc": "2.0", "method": "notifications/initialized"},
                                 headers={**MCP_HEADERS, **headers, "Mcp-Session-Id": sid, "MCP-Protocol-Version": "2025-06-18"})
        assert note.status_code in (200, 202), note.text
    return resp


async def mcp_call(client: httpx.AsyncClient, url: str, headers: dict[str, str], sid: str, tool: str,
                   arguments: dict[str, Any] | None = None, *, id: int = 2) -> httpx.Response:
    body = {"jsonrpc": "2.0", "id": id, "method": "tools/call", "params": {"name": tool, "arguments": arguments or {}}}
    return await client.post(url, json=body, headers={**MCP_HEADERS, **headers, "Mcp-Session-Id": sid,
                                                       "MCP-Protocol-Version": "2025-06-18"})
