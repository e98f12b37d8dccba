"""CORS for browser-based MCP clients (oauth mode, `[server.auth.oauth] cors_origins`), docs/oauth.md "CORS".

A web page (an MCP client that runs in the browser) calls the protected-resource and authorization-server metadata,
/oauth/register, /oauth/token, /oauth/revoke and /mcp with `fetch`; the browser lets it read the answers only when
they carry `Access-Control-Allow-Origin` for its origin, and first asks with a preflight (OPTIONS) for POSTs with
JSON bodies or an Authorization header. Rules:

- only the exact origins listed (scheme://host[:port]) get CORS headers; none by default; never `*`;
- never `Access-Control-Allow-Credentials`: these endpoints take bearer tokens and form/JSON bodies, not cookies, so
  a page can never ride on a person's session (the consent page, /oauth/authorize and /auth/* are not CORS routes);
- a preflight from a listed origin is answered here (204), before authentication (a preflight carries no token);
  an unlisted origin gets no CORS headers at all (the Host/Origin guard in front already refuses it with 403);
- answers expose the headers a client must read: Mcp-Session-Id, Mcp-Protocol-Version, WWW-Authenticate,
  Retry-After.
"""

from __future__ import annotations

from collections.abc import Iterable

from starlette.datastructures import Headers, MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

CORS_PATHS = frozenset({
    "/mcp", "/.well-known/oauth-protected-resource", "/.well-known/oauth-protected-resource/mcp",
    "/.well-known/oauth-authorization-server", "/oauth/token", "/oauth/register", "/oauth/revoke",
})
ALLOW_HEADERS = ("authorization", "content-type", "accept", "mcp-session-id", "mcp-protocol-version", "last-event-id")
EXPOSE_HEADERS = "Mcp-Session-Id, Mcp-Protocol-Version, WWW-Authenticate, Retry-After"
MAX_AGE = "600"


class OAuthCors:
    """ASGI middleware adding CORS to the oauth mode's endpoints for the configured origins (module docstring)."""

    def __init__(self, app: ASGIApp, origins: Iterable[str]) -> None:
        self.app = app
        self.origins = frozenset(o.lower().rstrip("/") for o in origins)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("path") not in CORS_PATHS:
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        origin = (headers.get("origin") or "").lower().rstrip("/")
        if origin not in self.origins:
            await self.app(scope, receive, send)
            return
        if scope["method"] == "OPTIONS" and headers.get("access-control-request-method"):
            await self._preflight(origin, headers, send)
            return

        async def with_cors(message: Message) -> None:
            if message["type"] == "http.response.start":
                out = MutableHeaders(scope=message)
                out["Access-Control-Allow-Origin"] = origin
                out["Access-Control-Expose-Headers"] = EXPOSE_HEADERS
                out.add_vary_header("Origin")
            await send(message)

        await self.app(scope, receive, with_cors)

    @staticmethod
    async def _preflight(origin: str, headers: Headers, send: Send) -> None:
        asked = [h.strip().lower() for h in headers.get("access-control-request-headers", "").split(",") if h.strip()]
        # Mcp-Param-* headers (tools/call arguments mirrored as headers) are named per tool: allowed by prefix
        allowed = [h for h in asked if h in ALLOW_HEADERS or (h.startswith("mcp-param-") and len(h) <= 100)]
        response_headers = [
            (b"access-control-allow-origin", origin.encode()),
            (b"access-control-allow-methods", b"GET, POST, DELETE, OPTIONS"),
            (b"access-control-allow-headers", ", ".join(dict.fromkeys([*ALLOW_HEADERS, *allowed])).encode()),
            (b"access-control-max-age", MAX_AGE.encode()),
            (b"vary", b"Origin"),
            (b"content-length", b"0"),
        ]
        await send({"type": "http.response.start", "status": 204, "headers": response_headers})
        await send({"type": "http.response.body", "body": b""})


__all__ = ["CORS_PATHS", "OAuthCors"]
