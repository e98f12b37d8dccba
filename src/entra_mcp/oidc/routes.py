"""The /auth/* routes (Starlette adapter over flow.py and sessions.py).

| route | method | does |
|---|---|---|
| /auth/login?flow=portal\\|chat&return_to=URL[&tenant=TID][&chat_challenge=S256] | GET | 302 to the tenant's authorize endpoint (PKCE S256, state, nonce) |
| /auth/callback | GET | the configured redirect URI: checks state, redeems the code, starts the session |
| /auth/session | GET | the signed-in session as JSON (cookie, or `Authorization: Bearer <chat-session token>`), else 401 |
| /auth/logout | POST | ends the cookie's session and/or the bearer chat session; the old cookie/token stops working |
| /auth/chat/exchange | POST | `{"code", "code_verifier"}` (the one-time `#chat_code`) -> `{"chatSessionToken", "expiresAt", "identity"}` |

Cookies: HttpOnly, SameSite=Lax, Secure unless the public URL is plain-http loopback, `__Host-` prefix over https.
POSTs with an Origin that is not this server's or an allow-listed return origin are refused (403), `null` included.
Pages (sign-in errors) say a fixed text, never what the request or the IdP put in the URL, and forbid scripts,
framing and referrers. JSON bodies are bounded in size and depth; anything malformed is a 400, never a 500.
"""

from __future__ import annotations

import html
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs

import httpx
import pydantic_core
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from entra_mcp.audit import sign_in_event
from entra_mcp.config import Settings, _is_loopback
from entra_mcp.errors import ConfigError, EntraMcpError, StoreUnavailable
from entra_mcp.logs import get_logger
from entra_mcp.mirror.session_store import SessionRecords
from entra_mcp.oidc.flow import SignInBusy, SignInError, SignInFlow, origin_of
from entra_mcp.oidc.provider import GUID_RE, OidcProvider, ProviderUnavailable
from entra_mcp.oidc.sessions import SessionService
from entra_mcp.oidc.validate import Identity, TokenValidator
from entra_mcp.ratelimit import Limiter

log = get_logger("oidc.routes")

_NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}
_PAGE_HEADERS = {
    **_NO_STORE,
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'; base-uri 'none'; "
    "form-action 'none'",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
}
MAX_EXCHANGE_BODY = 4096
MAX_JSON_DEPTH = 8


class _BadBody(Exception):
    pass


async def _bounded_body(request: Request, limit: int) -> bytes:
    """The request body, read no further than `limit` bytes (raises _BadBody past it or on a disconnect)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise _BadBody("request_too_large")
    body = bytearray()
    try:
        async for chunk in request.stream():
            body += chunk
            if len(body) > limit:
                raise _BadBody("request_too_large")
    except ClientDisconnect:
        raise _BadBody("disconnected") from None
    return bytes(body)


def _json_object(body: bytes, max_depth: int = MAX_JSON_DEPTH) -> dict[str, Any] | None:
    """A JSON object of at most `max_depth` levels, or None (malformed, too deep, not an object)."""
    depth = deepest = 0
    in_string = escaped = False
    for byte in body:  # a cheap pass first: no parser ever sees a deeper document
        if in_string:
            if escaped:
                escaped = False
            elif byte == 0x5C:
                escaped = True
            elif byte == 0x22:
                in_string = False
        elif byte == 0x22:
            in_string = True
        elif byte in (0x5B, 0x7B):
            depth += 1
            deepest = max(deepest, depth)
            if deepest > max_depth:
                return None
        elif byte in (0x5D, 0x7D):
            depth -= 1
    try:
        data = pydantic_core.from_json(body or b"{}")
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


@dataclass(frozen=True)
class CookiePolicy:
    secure: bool
    host_prefix: bool

    @classmethod
    def for_public_url(cls, public_url: str) -> "CookiePolicy":
        origin = origin_of(public_url) or ""
        https = origin.startswith("https://")
        host = (httpx.URL(public_url).host or "") if origin else ""
        if not https and not _is_loopback(host):
            log.warning(
                "server.public_url is plain http on a non-loopback host: session cookies are marked Secure and "
                "browsers will not send them back. Serve the portal over https."
            )
        return cls(secure=https or not _is_loopback(host), host_prefix=https)

    def name(self, base: str) -> str:
        return f"__Host-{base}" if self.host_prefix else base

    def set(self, response: Response, base: str, value: str, *, max_age: int) -> None:
        response.set_cookie(
            self.name(base), value, max_age=max_age, path="/", secure=self.secure, httponly=True, samesite="lax"
        )

    def clear(self, response: Response, base: str) -> None:
        response.delete_cookie(self.name(base), path="/", secure=self.secure, httponly=True, samesite="lax")


SESSION_COOKIE = "entra_mcp_session"
SIGNIN_COOKIE = "entra_mcp_signin"


@dataclass
class SignIn:
    """Everything sign-in needs, built once per server: provider, validator, sessions, the flow and its routes."""

    flow: SignInFlow
    sessions: SessionService
    cookies: CookiePolicy
    post_origins: frozenset[str]
    cors_origins: frozenset[str]
    _closers: list[Callable[[], Awaitable[None]]] = field(default_factory=list)
    settings: Settings | None = None  # for the audit trail ([server.audit]); None: sign-in events are not recorded

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        *,
        sessions: SessionService | None = None,
        store: SessionRecords | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        login_rate: Limiter | None = None,
    ) -> "SignIn":
        """`store`: where sign-in records and sessions live (default: the local store in cache_dir); `login_rate`:
        the per-address limit of sign-ins started (default: counted in this process)."""
        o = settings.oidc
        if not o.enabled:
            raise ConfigError("sign-in routes need [oidc] enabled = true")
        tenant = settings.tenant(o.tenant)
        provider = OidcProvider.from_tenant(tenant, allowed_tenants=o.allowed_tenants, transport=transport)
        validator = TokenValidator(provider)
        sessions = sessions or SessionService.from_settings(settings, store=store, tenant_ids=_served_tenant_ids(settings))
        flow = SignInFlow.from_settings(settings, provider=provider, validator=validator, sessions=sessions,
                                        **({"login_rate": login_rate} if login_rate is not None else {}))
        public_origin = origin_of(settings.server.resolved_public_url)
        return_origins = {origin_of(u) for u in o.allowed_return_to}
        extra = {origin_of(u) for u in settings.server.allowed_origins}
        post = {x for x in {public_origin, *return_origins, *extra} if x}
        cors = {x for x in {*return_origins, *extra} if x and x != public_origin}
        return cls(flow, sessions, CookiePolicy.for_public_url(settings.server.resolved_public_url), frozenset(post),
                   frozenset(cors), [provider.aclose], settings)

    async def aclose(self) -> None:
        for close in self._closers:
            await close()

    # -- helpers ---------------------------------------------------------------------------------------------
    def _audit(self, request: Request, event: str, outcome: str, *, identity: Identity | None = None,
               flow: str | None = None, session_id: str | None = None, reason: str | None = None) -> None:
        """One sign-in event in the audit trail (identifiers only: the session id is hashed there)."""
        if self.settings is None:
            return
        sign_in_event(self.settings, event, outcome, tid=identity.tid if identity else None,
                      oid=identity.oid if identity else None, upn=identity.preferred_username if identity else None,
                      flow=flow, session_id=session_id, reason=reason,
                      ip=request.client.host if request.client else None)

    def _cookie(self, request: Request, base: str) -> str | None:
        return request.cookies.get(self.cookies.name(base))

    def _cors(self, request: Request, response: Response) -> Response:
        origin = request.headers.get("origin")
        if origin and origin_of(origin) in self.cors_origins:
            response.headers["Access-Control-Allow-Origin"] = origin
            response.headers["Vary"] = "Origin"
        return response

    def _origin_refused(self, request: Request) -> bool:
        origin = request.headers.get("origin")
        return origin is not None and (origin == "null" or origin_of(origin) not in self.post_origins)

    @staticmethod
    def _bearer(request: Request) -> str | None:
        auth = request.headers.get("authorization", "")
        if auth[:7].lower() == "bearer ":
            return auth[7:].strip()
        return None

    # -- handlers --------------------------------------------------------------------------------------------
    async def login(self, request: Request) -> Response:
        q = request.query_params
        try:
            start = await self.flow.begin(
                flow=q.get("flow", "portal"),
                return_to=q.get("return_to"),
                tenant=q.get("tenant"),
                binding=self._cookie(request, SIGNIN_COOKIE),
                chat_challenge=q.get("chat_challenge"),
                client=request.client.host if request.client else "unknown",
            )
        except SignInBusy as exc:
            page = _error_page(429, str(exc))
            page.headers["Retry-After"] = str(exc.retry_after)
            return page
        except SignInError as exc:
            return _error_page(400, str(exc))
        except (ProviderUnavailable, EntraMcpError) as exc:
            return _error_page(503, f"sign-in is unavailable: {exc}")
        response = RedirectResponse(start.authorize_url, status_code=302, headers=_NO_STORE)
        self.cookies.set(response, SIGNIN_COOKIE, start.binding, max_age=600)
        return response

    async def callback(self, request: Request) -> Response:
        q = request.query_params
        if q.get("error"):
            # The IdP's own error (user cancelled, consent missing...): state is consumed all the same. The page says a
            # fixed text: anyone can craft this URL, so nothing of it is shown; the error code goes to the log.
            self.flow.discard_state(q.get("state"))
            log.info("sign-in came back with an error from the identity provider: %.64r", q.get("error"))
            self._audit(request, "sign_in", "failed", reason="identity provider error")
            return _error_page(400, "the identity provider did not complete the sign-in (cancelled, or consent or "
                                    "access missing); start again from the sign-in link")
        try:
            result = await self.flow.complete(
                code=q.get("code"),
                state=q.get("state"),
                binding=self._cookie(request, SIGNIN_COOKIE),
                previous_session=self._cookie(request, SESSION_COOKIE),
            )
        except SignInError as exc:
            self._audit(request, "sign_in", "failed", reason=str(exc)[:160])
            return _error_page(400, str(exc))
        except (ProviderUnavailable, EntraMcpError) as exc:
            self._audit(request, "sign_in", "failed", reason="identity provider unavailable")
            return _error_page(503, f"sign-in is unavailable: {exc}")
        self._audit(request, "sign_in", "ok", identity=result.identity, flow=result.flow, session_id=result.session_id)
        response = RedirectResponse(result.redirect_target(), status_code=303, headers=_NO_STORE)
        if result.flow == "portal" and result.session_id and result.session:
            self.cookies.set(response, SESSION_COOKIE, result.session_id, max_age=int(result.session.max_seconds))
        return response

    async def session(self, request: Request) -> Response:
        bearer = self._bearer(request)
        if bearer is not None:
            found, reason = self.sessions.lookup(bearer, kind="chat")
        else:
            found, reason = self.sessions.lookup(self._cookie(request, SESSION_COOKIE), kind="portal")
        if found is None:
            return self._cors(request, JSONResponse({"error": "not_signed_in", "reason": reason}, 401, headers=_NO_STORE))
        return self._cors(request, JSONResponse(found.public(), headers=_NO_STORE))

    async def logout(self, request: Request) -> Response:
        if self._origin_refused(request):
            return JSONResponse({"error": "origin_not_allowed"}, 403)
        ended = False
        bearer = self._bearer(request)
        cookie = self._cookie(request, SESSION_COOKIE)
        if bearer is not None:
            chat, _ = self.sessions.lookup(bearer, kind="chat", touch=False)
            if self.sessions.revoke_chat_token(bearer):
                ended = True
                self._audit(request, "sign_out", "ok", identity=chat.identity if chat else None, flow="chat",
                            session_id=bearer)
        portal = self.sessions.get(cookie) if cookie else None
        if self.sessions.delete(cookie):
            ended = True
            self._audit(request, "sign_out", "ok", identity=portal.identity if portal else None, flow="portal",
                        session_id=cookie)
        response = self._cors(request, JSONResponse({"signedOut": ended}, headers=_NO_STORE))
        self.cookies.clear(response, SESSION_COOKIE)
        return response

    async def chat_exchange(self, request: Request) -> Response:
        if self._origin_refused(request):
            return JSONResponse({"error": "origin_not_allowed"}, 403)
        try:
            body = await _bounded_body(request, MAX_EXCHANGE_BODY)
        except _BadBody as exc:
            return JSONResponse({"error": str(exc)}, 413 if str(exc) == "request_too_large" else 400)
        data: Any = None
        ctype = request.headers.get("content-type", "")
        if ctype.startswith("application/json"):
            data = _json_object(body)
        else:
            try:
                data = {k: v[0] for k, v in parse_qs(body.decode("utf-8"), max_num_fields=8).items()}
            except (ValueError, UnicodeDecodeError):
                data = None
        code = data.get("code") if isinstance(data, dict) else None
        verifier = data.get("code_verifier") if isinstance(data, dict) else None
        redeemed = self.sessions.redeem_chat_code(
            code if isinstance(code, str) else None, verifier if isinstance(verifier, str) else None
        )
        if redeemed is None:
            return self._cors(
                request,
                JSONResponse({"error": "invalid_code",
                              "error_description": "unknown, used or expired chat code, or a code_verifier that does not match"},
                             400),
            )
        token, session = redeemed
        self._audit(request, "chat_session", "ok", identity=session.identity, flow="chat", session_id=token)
        payload = {
            "chatSessionToken": token,
            "tokenType": "chat_session",
            "expiresAt": session.public()["expiresAt"],
            "identity": session.identity.as_dict(),
        }
        return self._cors(request, JSONResponse(payload, headers=_NO_STORE))

    async def preflight(self, request: Request) -> Response:
        origin = request.headers.get("origin")
        if not origin or origin_of(origin) not in self.cors_origins:
            return Response(status_code=403)
        return Response(
            status_code=204,
            headers={
                "Access-Control-Allow-Origin": origin,
                "Access-Control-Allow-Methods": "GET, POST",
                "Access-Control-Allow-Headers": "Authorization, Content-Type",
                "Access-Control-Max-Age": "600",
                "Vary": "Origin",
            },
        )

    def _store_answers(self, handler: Callable[[Request], Awaitable[Response]]) -> Callable[[Request], Awaitable[Response]]:
        """`handler`, answering 503 with Retry-After when the session store (Redis) cannot answer: the session is
        neither created, found nor ended, and the client is told to retry (the login pages say it in their own way)."""

        async def guarded(request: Request) -> Response:
            try:
                return await handler(request)
            except StoreUnavailable as exc:
                return self._cors(request, JSONResponse(
                    {"error": "temporarily_unavailable", "error_description": str(exc)}, 503,
                    headers={**_NO_STORE, "Retry-After": "5"}))

        return guarded

    def routes(self) -> list[BaseRoute]:
        return [
            Route("/auth/login", self.login, methods=["GET"]),
            Route("/auth/callback", self.callback, methods=["GET"]),
            Route("/auth/session", self._store_answers(self.session), methods=["GET"]),
            Route("/auth/session", self.preflight, methods=["OPTIONS"]),
            Route("/auth/logout", self._store_answers(self.logout), methods=["POST"]),
            Route("/auth/logout", self.preflight, methods=["OPTIONS"]),
            Route("/auth/chat/exchange", self._store_answers(self.chat_exchange), methods=["POST"]),
            Route("/auth/chat/exchange", self.preflight, methods=["OPTIONS"]),
        ]


def _served_tenant_ids(settings: Settings) -> set[str] | None:
    """Tenant GUIDs whose chat sessions count as this server's (configured tenants and oidc.allowed_tenants);
    None when a tenant is configured by domain name (its GUID is only known after discovery)."""
    ids = [t.tenant_id for t in settings.tenants] + list(settings.oidc.allowed_tenants)
    if not all(GUID_RE.match(i) for i in ids):
        return None
    return {i.lower() for i in ids}


def _error_page(status: int, message: str) -> Response:
    body = (
        "<!doctype html><meta charset=utf-8><title>Sign-in</title>"
        f"<h1>Sign-in failed</h1><p id=error>{html.escape(message)}</p><p><a href=\"/\">Back</a></p>"
    )
    return Response(body, status_code=status, media_type="text/html", headers=_PAGE_HEADERS)


def auth_routes(settings: Settings, *, sign_in: SignIn | None = None, **kw: Any) -> list[BaseRoute]:
    """The /auth/* routes for `create_http_app(extra_routes=...)`; empty when [oidc] is not enabled."""
    if not settings.oidc.enabled:
        return []
    return (sign_in or SignIn.from_settings(settings, **kw)).routes()


__all__ = ["SESSION_COOKIE", "SIGNIN_COOKIE", "CookiePolicy", "SignIn", "auth_routes"]
