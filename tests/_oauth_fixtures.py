"""The OAuth tests' stack: the emulator (HTTPS), the product in oauth mode under uvicorn, and an HTTPS server of
Client ID Metadata Documents on 127.0.0.1 (the emulator's certificate; allowed through
client_metadata_allowed_hosts). `HttpBrowser` walks the sign-in and consent pages with plain httpx (a cookie jar and
the emulator's login form), for the tests that need a code but not a real browser.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import secrets
import tomllib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urljoin, urlsplit

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from _auth_fixtures import free_port, serve, user_upn
from entra_mcp.config import parse_settings
from entra_mcp.devtenant.model import DEFAULT_USER_PASSWORD
from entra_mcp.devtenant.server import run_emulator
from entra_mcp.mirror.store import MirrorStore
from entra_mcp.server.app import create_server
from entra_mcp.server.auth import build_hooks
from entra_mcp.server.http import create_http_app
from entra_mcp.views import ViewProvider

SCOPE = "Identity.Investigate"
WEB_CLIENT_PORT = free_port()
WEB_CLIENT = f"http://localhost:{WEB_CLIENT_PORT}"  # a browser-based MCP client's origin, listed in cors_origins
DOC_LIMIT = 2048
CLIENT_NAME = "Service Desk Copilot"


def pkce() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    return verifier, challenge


def documents_app() -> Starlette:
    """/client/{kind}: a Client ID Metadata Document whose client_id is the URL it is served at."""

    async def doc(request: Request) -> Response:
        kind = request.path_params["kind"]
        url = str(request.url)
        body: dict[str, Any] = {"client_id": url, "client_name": CLIENT_NAME, "token_endpoint_auth_method": "none",
                                "redirect_uris": ["http://127.0.0.1/callback"], "grant_types": ["authorization_code", "refresh_token"]}
        if kind == "big":
            body["software_statement_note"] = "x" * (DOC_LIMIT * 2)
        elif kind == "other-id":
            body["client_id"] = url + "-not-me"
        elif kind == "secret":
            body["token_endpoint_auth_method"] = "client_secret_post"
        elif kind == "text":
            return Response(json.dumps(body), media_type="text/plain")
        elif kind == "redirect":
            return Response(status_code=302, headers={"Location": url.replace("/redirect", "/good")})
        return JSONResponse(body)

    return Starlette(routes=[Route("/client/{kind}", doc)])


@dataclass
class Stack:
    emu: Any
    base: str
    docs: str  # https://127.0.0.1:PORT of the metadata documents
    settings: Any
    hooks: Any
    upn: str

    @property
    def resource(self) -> str:
        return f"{self.base}/mcp"


@contextmanager
def oauth_stack(root: Path, *, seed: int = 5, redis_url: str | None = None, tenants: int = 1,
                prepare: Callable[[Any], dict[str, Any]] | None = None) -> Iterator[Stack]:
    """`redis_url`: the authorization server's records in Redis ([server.store]), /mcp stateless, as `serve` does.
    `tenants`: emulated and configured tenants (people sign in to the first). `prepare(emu)`: called once the emulator
    runs, before the product is configured; it returns the [server.access] section (or {})."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    with run_emulator(tenants=tenants, seed=seed, size="small") as emu, pytest.MonkeyPatch.context() as mp:
        for k, v in emu.secret_env(None, with_sign_in=True).items():
            mp.setenv(k, v)
        data = tomllib.loads(emu.config_toml(None, root / "cache", with_sign_in=True))
        access = prepare(emu) if prepare is not None else {}
        if access:
            data["server"]["access"] = access
        data["server"].update({"public_url": base, "port": port, "transport": "http"})
        data["server"]["auth"] = {
            "mode": "oauth", "required_scopes": [SCOPE],
            "oauth": {"client_metadata_allowed_hosts": ["127.0.0.1"], "client_metadata_max_bytes": DOC_LIMIT,
                      "client_metadata_ca_bundle": str(emu.ca_bundle), "client_metadata_timeout_seconds": 5,
                      "cors_origins": [WEB_CLIENT]},
        }
        data["oidc"]["allowed_return_to"] = [f"{base}/"]
        emu.add_redirect_uri(base + "/auth/callback", None)
        if redis_url is not None:
            data["server"]["store"] = {"redis_url": redis_url, "key_prefix": f"oauth-{secrets.token_hex(4)}:"}
        settings = parse_settings(data)
        shared = None
        if redis_url is not None:
            from entra_mcp.sharedstore.connection import SharedRedis

            shared = SharedRedis.from_settings(settings.server.store)
        hooks = build_hooks(settings, shared=shared)
        store = MirrorStore(settings.server.cache_dir)
        views = ViewProvider.from_settings(settings, store)
        server = create_server(settings, views=views, sessions=hooks.sessions)
        app = create_http_app(settings, server, views=views, extra_routes=hooks.routes, protect=hooks.protect,
                              stateless=shared is not None)
        tls = {"ssl_certfile": str(emu.tls.cert_file), "ssl_keyfile": str(emu.tls.key_file)}
        try:
            with serve(app, port), serve(documents_app(), **tls) as docs:
                yield Stack(emu, base, docs, settings, hooks, user_upn(emu))
        finally:
            store.close()
            if shared is not None:
                shared.close()


class HttpBrowser:
    """A cookie-keeping client that signs in on the emulator's form and answers the consent page (no JavaScript)."""

    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self.http = httpx.Client(timeout=20, follow_redirects=False)
        self.idp = httpx.Client(timeout=20, verify=stack.emu.ssl_context(), follow_redirects=False)
        self.last_page = ""

    def close(self) -> None:
        self.http.close()
        self.idp.close()

    def authorize(self, **params: str) -> httpx.Response:
        return self.http.get(f"{self.stack.base}/oauth/authorize", params=params)

    def consent_page(self, consent_url: str) -> httpx.Response:
        """GET the consent page, signing in with Entra on the way when the browser has no session."""
        page = self.http.get(consent_url)
        if page.status_code == 302 and page.headers["location"].startswith("/auth/login"):
            login = self.http.get(urljoin(self.stack.base, page.headers["location"]))
            assert login.status_code == 302, login.text[:300]
            form = self.idp.get(login.headers["location"])
            ctx = re.search(r'name="ctx" value="([^"]+)"', form.text)
            action = re.search(r'action="([^"]+)"', form.text)
            assert ctx and action, form.text[:300]
            done = self.idp.post(urljoin(login.headers["location"], action.group(1)),
                                 data={"ctx": ctx.group(1), "username": self.stack.upn, "password": DEFAULT_USER_PASSWORD})
            assert done.status_code == 302, done.text[:300]
            back = self.http.get(done.headers["location"])
            assert back.status_code == 303, back.text[:300]
            page = self.http.get(urljoin(self.stack.base, back.headers["location"]))
        self.last_page = page.text
        return page

    def decide(self, consent_url: str, decision: str = "approve") -> httpx.Response:
        """The consent page's decision; a remembered approval (the page answers 303 to the client at once) is
        returned as it is."""
        page = self.consent_page(consent_url)
        if page.status_code == 303 and decision == "approve":
            return page
        assert page.status_code == 200, page.text[:300]
        fields = dict(re.findall(r'name=(\w+) value="([^"]*)"', page.text))
        return self.http.post(f"{self.stack.base}/oauth/consent", content=urlencode(
            {"request": fields["request"], "csrf": fields["csrf"], "decision": decision}),
            headers={"Content-Type": "application/x-www-form-urlencoded", "Origin": self.stack.base})

    def code_for(self, client_id: str, redirect_uri: str, challenge: str, **extra: str) -> str:
        """The whole front channel: authorize -> (sign-in) -> consent -> the code at redirect_uri."""
        start = self.authorize(response_type="code", client_id=client_id, redirect_uri=redirect_uri,
                               code_challenge=challenge, code_challenge_method="S256", state="st-1",
                               resource=self.stack.resource, scope=SCOPE, **extra)
        assert start.status_code == 302, start.text[:300]
        done = self.decide(start.headers["location"])
        assert done.status_code == 303, done.text[:300]
        assert done.headers["location"].startswith(redirect_uri.split("?")[0]), done.headers["location"]
        query = parse_qs(urlsplit(done.headers["location"]).query)
        assert query["state"] == ["st-1"] and query["iss"] == [self.stack.base], query
        return query["code"][0]

    def register(self, redirect_uris: list[str], **extra: Any) -> httpx.Response:
        return self.http.post(f"{self.stack.base}/oauth/register",
                              json={"redirect_uris": redirect_uris, "client_name": CLIENT_NAME,
                                    "token_endpoint_auth_method": "none", **extra})

    def token(self, **form: str) -> httpx.Response:
        return self.http.post(f"{self.stack.base}/oauth/token", data=form)


__all__ = ["CLIENT_NAME", "DOC_LIMIT", "SCOPE", "WEB_CLIENT", "WEB_CLIENT_PORT", "HttpBrowser", "Stack", "documents_app", "oauth_stack", "pkce"]
