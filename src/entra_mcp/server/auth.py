"""Protection of the hosted /mcp endpoint per [server.auth] (docs/sign-in.md rules 13, 15, 16).

Modes:
- entra: `Authorization: Bearer <access token>` for this API (aud = server.auth.audience or api://audience), with
  every server.auth.required_scopes in `scp`; app-only tokens only with allow_app_tokens. No credential or a bad
  one -> 401 with `WWW-Authenticate: Bearer resource_metadata="{public_url}/.well-known/oauth-protected-resource/mcp"`;
  a valid token without the scope -> 403 `insufficient_scope`. The metadata routes (RFC 9728) come from `routes()`.
- api_key: `Authorization: Bearer <key>` with one of the keys in the environment variable server.auth.api_keys_env
  (`name=key` items, or bare keys), compared in constant time; the principal carries the key's name, never the key.
- oauth: `Authorization: Bearer <access token>` issued by this server's own authorization server (entra_mcp.oauth,
  docs/oauth.md) for this resource, with every server.auth.required_scopes granted; the protected-resource metadata
  names this server as the authorization server. The person behind it signed in with Entra, so the principal is
  (tid, oid) as in entra mode, plus the OAuth client it approved.
- none: open (config refuses it on a non-loopback host).

Whatever the mode: a token in the query string is never read; the Authorization header is removed before the request
reaches the MCP app, so no tool can pass the caller's token on (no passthrough to Graph); and an Mcp-Session-Id is
bound to the principal that opened it: another principal presenting it gets 404, as if it did not exist. mcp 2.3's
session manager does the same when `scope["user"]` is an AuthenticatedUser (CVE-2026-52869 fix), which this wrapper
also sets; the binding here keeps holding if the SDK's check changes or a stateless app is used.
"""

from __future__ import annotations

import contextvars
import hashlib
import hmac
import json
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import anyio
from mcp.server.auth.middleware.bearer_auth import AuthenticatedUser
from mcp.server.auth.provider import AccessToken
from starlette.authentication import AuthCredentials
from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from entra_mcp.config import Settings
from entra_mcp.errors import EntraMcpError, StoreUnavailable
from entra_mcp.logs import get_logger
from entra_mcp.ratelimit import Limiter
from entra_mcp.server.limits import PrincipalLimits, Refusal, too_many

if TYPE_CHECKING:  # sign-in (oidc: JOSE, cryptography) and oauth load only in the modes that use them (~0.2 s of a start)
    import httpx  # annotations only: a stdio start imports no HTTP client (httpx and its CLI's rich/pygments: ~0.1 s)

    from entra_mcp.mirror.session_store import SessionRecords
    from entra_mcp.oauth import OAuthRoutes
    from entra_mcp.oidc.routes import SignIn
    from entra_mcp.oidc.sessions import SessionService
    from entra_mcp.oidc.validate import TokenValidator
    from entra_mcp.sharedstore.connection import SharedRedis

log = get_logger("server.auth")

METADATA_PATH = "/.well-known/oauth-protected-resource"
MCP_SESSION_HEADER = "mcp-session-id"
MAX_BOUND_SESSIONS = 100_000
PRINCIPAL_SCOPE_KEY = "entra_mcp.principal"
# The Principal of the /mcp request being handled, for code the SDK calls without the request (the tool input
# schema lookup behind its Mcp-Param-* header check, server/app.py); None outside an authenticated request.
CURRENT_PRINCIPAL: contextvars.ContextVar["Principal | None"] = contextvars.ContextVar("entra_mcp_principal", default=None)


@dataclass(frozen=True)
class Principal:
    """Who is calling /mcp. `key` identifies it (entra and oauth: tid/oid, api_key: a hash of the key); never a secret.
    `client_id`: the OAuth client the person approved (oauth mode), else None."""

    kind: str  # "entra" | "oauth" | "api_key" | "anonymous"
    key: str
    tid: str | None = None
    oid: str | None = None
    name: str | None = None
    preferred_username: str | None = None
    app_only: bool = False
    scopes: tuple[str, ...] = ()
    client_id: str | None = None
    roles: tuple[str, ...] = ()  # the token's app roles (`roles` claim), for [server.access] rules
    groups: tuple[str, ...] = ()  # the token's group object ids (`groups` claim; absent on overage), same
    groups_overage: bool = False  # the token left its groups out (over 200): `groups` is not the caller's groups
    key_name: str | None = None  # api_key: the key's name (server.auth.api_keys_env `name=key`), never the key


ANONYMOUS = Principal("anonymous", "anonymous")


class McpGuard:
    """Authenticates /mcp requests per [server.auth] and serves the protected-resource metadata."""

    def __init__(
        self,
        settings: Settings,
        *,
        validator: TokenValidator | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        oauth: OAuthRoutes | None = None,
        rate: Limiter | None = None,
    ) -> None:
        self.settings = settings
        self.rate = rate  # requests per minute per caller; None: counted in this process
        self.auth = settings.server.auth
        self.mode = self.auth.mode
        self.public_url = settings.server.resolved_public_url
        self.resource = f"{self.public_url}/mcp"
        self.metadata_url = f"{self.public_url}{METADATA_PATH}/mcp"
        self.validator: TokenValidator | None = None
        self._key_hashes: list[tuple[bytes, str]] = []  # (SHA-256 of a key, its name)
        self._issuer: str | None = None
        self.oauth = oauth
        if self.mode == "oauth" and oauth is None:
            raise ValueError("server.auth.mode = 'oauth' needs the authorization server (build_hooks makes it)")
        if self.mode == "entra":
            tenant = settings.tenant(self.auth.tenant)
            self._issuer = tenant.issuer
            if validator is None:
                from entra_mcp.oidc.provider import OidcProvider
                from entra_mcp.oidc.validate import TokenValidator

                # Only server.auth.allowed_tenants open /mcp to other tenants: oidc.allowed_tenants (who may sign in
                # to the portal) never does.
                validator = TokenValidator(
                    OidcProvider.from_tenant(tenant, allowed_tenants=self.auth.allowed_tenants, transport=transport)
                )
            self.validator = validator
        elif self.mode == "api_key":
            # Keys are hashed once; requests compare hashes in constant time (equal lengths, no early exit).
            self._key_hashes = [(hashlib.sha256(k.encode("utf-8")).digest(), name) for name, k in self.auth.named_api_keys()]
        self._owners: OrderedDict[str, str] = OrderedDict()  # Mcp-Session-Id -> principal key

    async def aclose(self) -> None:
        if self.validator is not None:
            await self.validator.provider.aclose()

    # -- metadata (RFC 9728) ---------------------------------------------------------------------------------
    def metadata(self) -> dict[str, Any]:
        if self.mode == "oauth":
            return {
                "resource": self.resource,
                "authorization_servers": [self.public_url],
                "scopes_supported": list(self.auth.required_scopes),
                "bearer_methods_supported": ["header"],
                "resource_name": "entra-mcp",
            }
        home = self.validator.provider.home if self.validator is not None else None
        issuer = home.issuer if home is not None else self._issuer
        audience = self.auth.audience or ""
        prefix = audience if audience.startswith("api://") else f"api://{audience}"
        return {
            "resource": self.resource,
            "authorization_servers": [issuer] if issuer else [],
            "scopes_supported": [f"{prefix}/{s}" for s in self.auth.required_scopes],
            "bearer_methods_supported": ["header"],
            "resource_name": "entra-mcp",
        }

    async def _metadata_endpoint(self, request: Request) -> Response:
        if self.validator is not None and self.validator.provider.home is None:
            from entra_mcp.oidc.provider import ProviderUnavailable

            try:  # name the issuer by its tenant GUID, as tokens do (the config may name the tenant by domain)
                await self.validator.provider.metadata()
            except (ProviderUnavailable, EntraMcpError):
                pass
        return JSONResponse(self.metadata(), headers={"Cache-Control": "public, max-age=3600"})

    def routes(self) -> list[BaseRoute]:
        """The protected-resource metadata routes (entra and oauth modes)."""
        if self.mode not in ("entra", "oauth"):
            return []
        return [
            Route(METADATA_PATH, self._metadata_endpoint, methods=["GET"]),
            Route(f"{METADATA_PATH}/mcp", self._metadata_endpoint, methods=["GET"]),
        ]

    # -- authentication --------------------------------------------------------------------------------------
    def _challenge(self, status: int, error: str | None = None, description: str | None = None) -> Response:
        parts = []
        if error:
            parts.append(f'error="{error}"')
            if description:
                parts.append(f'error_description="{description}"')
            if error == "insufficient_scope":
                parts.append(f'scope="{" ".join(self.auth.required_scopes)}"')
        parts.append(f'resource_metadata="{self.metadata_url}"')
        body = {"error": error or "unauthorized", "error_description": description or "a bearer token is required"}
        return JSONResponse(body, status, headers={"WWW-Authenticate": "Bearer " + ", ".join(parts)})

    async def authenticate(self, headers: Headers) -> Principal | Response:
        """The caller's Principal, or the response that refuses it."""
        if self.mode == "none":
            return ANONYMOUS
        auth = headers.get("authorization", "")
        if auth[:7].lower() != "bearer " or not auth[7:].strip():
            if self.mode == "api_key":
                return JSONResponse({"error": "unauthorized", "error_description": "an API key is required"}, 401,
                                    headers={"WWW-Authenticate": 'Bearer realm="entra-mcp"'})
            return self._challenge(401)
        credential = auth[7:].strip()
        if self.mode == "api_key":
            return self._api_key(credential)
        if self.mode == "oauth":
            return self._oauth(credential)
        assert self.validator is not None and self.auth.audience
        from entra_mcp.oidc.provider import ProviderUnavailable
        from entra_mcp.oidc.validate import InsufficientScope, TokenRejected

        try:
            tok = await self.validator.validate_access_token(
                credential,
                audience=self.auth.audience,
                required_scopes=self.auth.required_scopes,
                allow_app_tokens=self.auth.allow_app_tokens,
            )
        except InsufficientScope as exc:
            return self._challenge(403, "insufficient_scope", str(exc))
        except TokenRejected as exc:
            log.info("bearer token refused on /mcp: %s", exc.reason)
            return self._challenge(401, "invalid_token", str(exc))
        except ProviderUnavailable:
            log.warning("bearer token cannot be checked: the login host's keys are unavailable")
            return JSONResponse({"error": "temporarily_unavailable",
                                 "error_description": "the identity provider's signing keys cannot be fetched"}, 503,
                                headers={"Retry-After": "30"})
        i = tok.identity
        return Principal("entra", f"{i.tid.lower()}/{i.oid.lower()}", i.tid, i.oid, i.name, i.preferred_username,
                         tok.app_only, tuple(sorted(tok.scopes or tok.roles)), roles=tuple(sorted(tok.roles)),
                         groups=i.groups, groups_overage=i.groups_overage)

    def _oauth(self, credential: str) -> Principal | Response:
        assert self.oauth is not None
        try:
            grant = self.oauth.server.verify(credential)
        except StoreUnavailable:  # opaque tokens are looked up in the store: without it none can be checked
            return JSONResponse({"error": "temporarily_unavailable",
                                 "error_description": "access tokens cannot be checked now (the token store does not "
                                                      "answer); retry in a few seconds"}, 503, headers={"Retry-After": "5"})
        if grant is None:
            log.info("OAuth access token refused on /mcp: unknown, expired or revoked")
            return self._challenge(401, "invalid_token", "the access token is unknown, expired or revoked")
        if grant.resource != self.resource:
            return self._challenge(401, "invalid_token", "the access token was issued for another resource")
        missing = [s for s in self.auth.required_scopes if s not in grant.scopes]
        if missing:
            return self._challenge(403, "insufficient_scope", f"the token lacks the scope {' '.join(missing)}")
        return Principal("oauth", f"{grant.tid.lower()}/{grant.oid.lower()}", grant.tid, grant.oid, grant.name,
                         grant.preferred_username, False, grant.scopes, grant.client_id, roles=grant.roles,
                         groups=grant.groups, groups_overage=grant.groups_overage)

    def _api_key(self, credential: str) -> Principal | Response:
        digest = hashlib.sha256(credential.encode("utf-8", "replace")).digest()
        match = False
        name = None
        for known, key_name in self._key_hashes:
            same = hmac.compare_digest(digest, known)
            match |= same
            if same:
                name = key_name
        if not match:
            log.info("API key refused on /mcp")
            return JSONResponse({"error": "invalid_token", "error_description": "the API key is not valid"}, 401,
                                headers={"WWW-Authenticate": 'Bearer realm="entra-mcp", error="invalid_token"'})
        return Principal("api_key", "api_key:" + digest.hex()[:16], key_name=name)

    # -- session binding -------------------------------------------------------------------------------------
    def _owner_ok(self, session_id: str, principal: Principal) -> bool:
        owner = self._owners.get(session_id)
        return owner is None or hmac.compare_digest(owner, principal.key)

    def _bind(self, session_id: str, principal: Principal) -> None:
        self._owners[session_id] = principal.key
        self._owners.move_to_end(session_id)
        while len(self._owners) > MAX_BOUND_SESSIONS:
            self._owners.popitem(last=False)

    def wrap(self, app: ASGIApp) -> ASGIApp:
        """The /mcp app behind authentication, session binding and the per-caller quotas (server/limits.py).

        Open sessions are counted from what crosses the wire (PrincipalLimits), with the same idle timeout the MCP
        app is given (server.mcp_session_idle_seconds): nothing here reads the SDK's session table."""
        srv = self.settings.server
        limits = PrincipalLimits(
            requests_per_minute=srv.max_requests_per_minute,
            sessions=srv.max_sessions_per_caller,
            concurrent_calls=srv.max_concurrent_calls,
            session_idle_seconds=srv.mcp_session_idle_seconds,
            rate=self.rate,
        )
        return _Protected(app, self, limits, queue_seconds=srv.request_timeout_seconds)


class _Protected:
    """The ASGI wrapper around the MCP app."""

    def __init__(self, app: ASGIApp, guard: McpGuard, limits: PrincipalLimits, *, queue_seconds: float) -> None:
        self.app = app
        self.guard = guard
        self.limits = limits
        self.queue_seconds = queue_seconds

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        outcome = await self.guard.authenticate(headers)
        if isinstance(outcome, Response):
            await outcome(scope, receive, send)
            return
        principal = outcome
        method = scope.get("method", "GET")
        refusal = await self.limits.admit_async(principal.key)  # Redis awaited off the loop's critical path
        if refusal is not None:
            log.info("refused a request on /mcp: %s quota of one caller", refusal.reason)
            await too_many(refusal)(scope, receive, send)
            return
        session_id = headers.get(MCP_SESSION_HEADER)
        if session_id is not None and not self.guard._owner_ok(session_id, principal):
            log.warning("refused an MCP session id presented by a principal other than its owner")
            gone = json.dumps({"jsonrpc": "2.0", "id": None, "error": {"code": -32600, "message": "Session not found"}})
            await Response(gone, 404, media_type="application/json")(scope, receive, send)
            return
        if session_id is None and method == "POST":
            refusal = self.limits.may_open_session(principal.key)
            if refusal is not None:
                log.info("refused a new MCP session: one caller has %d open", self.limits.max_sessions)
                await too_many(refusal)(scope, receive, send)
                return
        inner = dict(scope)
        # The caller's credential goes no further than this wrapper (no token passthrough, rule 15).
        inner["headers"] = [(k, v) for k, v in scope["headers"] if k.lower() != b"authorization"]
        inner[PRINCIPAL_SCOPE_KEY] = principal
        if principal.kind != "anonymous":
            inner["user"] = AuthenticatedUser(
                AccessToken(
                    token="[not kept]",
                    client_id=principal.key,
                    scopes=list(principal.scopes),
                    subject=principal.key,
                    claims={"iss": principal.tid or principal.kind},
                )
            )
            inner["auth"] = AuthCredentials(list(principal.scopes))

        async def send_and_bind(message: Message) -> None:
            if message["type"] == "http.response.start" and message["status"] < 400:
                new_id = Headers(raw=message.get("headers", [])).get(MCP_SESSION_HEADER)
                if new_id and session_id is None:
                    self.limits.session_opened(principal.key, new_id)
                    if principal.kind != "anonymous":
                        self.guard._bind(new_id, principal)
                if method == "DELETE" and session_id is not None:
                    self.guard._owners.pop(session_id, None)
                    self.limits.session_closed(principal.key, session_id)
            elif message["type"] == "http.response.start" and message["status"] == 404 and session_id is not None:
                self.limits.session_closed(principal.key, session_id)  # the MCP app no longer knows it
            await send(message)

        if session_id is not None:
            self.limits.session_request(principal.key, session_id, started=True)
        current = CURRENT_PRINCIPAL.set(principal)
        try:
            await self._forward(scope, inner, receive, send, send_and_bind, principal, method)
        finally:
            CURRENT_PRINCIPAL.reset(current)
            if session_id is not None:
                self.limits.session_request(principal.key, session_id, started=False)

    async def _forward(self, scope: Scope, inner: Scope, receive: Receive, send: Send, send_and_bind: Send,
                       principal: Principal, method: str) -> None:
        if method != "POST":  # GET is the long-lived stream of a session, DELETE ends one: not calls
            await self.app(inner, receive, send_and_bind)
            return
        # The body is read (bounded by server/limits.py's BodyBounds) before the call takes a place, so a caller's
        # slow upload never holds one of its places.
        request_body = await _read_body(receive)
        if request_body is None:
            return  # the client went away
        receive = _replay(request_body, receive)
        # A caller's calls beyond max_concurrent_calls wait their turn (bounded), so one caller's burst of heavy
        # calls takes at most that many workers and never starves another caller's.
        calls = self.limits.calls(principal.key)
        with anyio.move_on_after(self.queue_seconds) as waiting:
            await calls.acquire()
        if waiting.cancelled_caught:
            log.info("refused a call on /mcp: one caller kept %d calls in progress too long", self.limits.concurrent_calls)
            await too_many(Refusal("calls", f"this caller already has {self.limits.concurrent_calls} calls in progress; "
                                            "wait for their answers", 5))(scope, receive, send)
            return
        try:
            await self.app(inner, receive, send_and_bind)
        finally:
            calls.release()


async def _read_body(receive: Receive) -> bytes | None:
    """The whole request body, or None when the client disconnects first."""
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


def _replay(body: bytes, receive: Receive) -> Receive:
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


@dataclass
class AuthHooks:
    """What the HTTP server needs from the sign-in part (see commands/serve.py `_sign_in_hooks`)."""

    protect: Callable[[ASGIApp], ASGIApp] | None  # wraps /mcp; None in mode "none"
    routes: tuple[BaseRoute, ...]  # /auth/* (when [oidc] is on) and the protected-resource metadata (entra mode)
    sessions: SessionService | None  # the chat-session validator for validate_chat_session; None when [oidc] is off
    guard: McpGuard
    sign_in: SignIn | None
    oauth: OAuthRoutes | None = None

    async def aclose(self) -> None:
        await self.guard.aclose()
        if self.oauth is not None:
            await self.oauth.aclose()
        if self.sign_in is not None:
            await self.sign_in.aclose()


def build_hooks(settings: Settings, store: Any = None, *, transport: httpx.AsyncBaseTransport | None = None,
                shared: SharedRedis | None = None) -> AuthHooks:
    """Build /mcp protection, the /auth/* and metadata routes and the session service from the settings.

    `store` (the mirror store) is not needed: sessions live in their own store under cache_dir/sessions, or in Redis
    when `shared` (the [server.store] connection) is given: then sign-in records, sessions and the rate limits of /mcp
    and /auth/login are the replicas' common ones. `transport` replaces the HTTP transport to the login host (tests)."""
    records: SessionRecords | None = None
    mcp_rate = login_rate = None
    if shared is not None:  # imported here: a server without [server.store] never loads the Redis client
        from entra_mcp.oidc.flow import LOGINS_PER_MINUTE
        from entra_mcp.sharedstore.counters import SharedRateLimiter
        from entra_mcp.sharedstore.sessions import RedisSessionStore

        records = RedisSessionStore(shared)
        mcp_rate = SharedRateLimiter(shared, "mcp", settings.server.max_requests_per_minute)
        login_rate = SharedRateLimiter(shared, "login", LOGINS_PER_MINUTE)
    sign_in = None
    if settings.oidc.enabled:  # imported here: without [oidc] a server never loads the JOSE and sign-in code
        from entra_mcp.oidc.routes import SignIn

        sign_in = SignIn.from_settings(settings, transport=transport, store=records, login_rate=login_rate)
    oauth = None
    if settings.server.auth.mode == "oauth":
        from entra_mcp.oauth import OAuthRoutes

        assert sign_in is not None  # config requires [oidc] for oauth mode
        oauth = OAuthRoutes.from_settings(settings, sign_in)
    guard = McpGuard(settings, transport=transport, oauth=oauth, rate=mcp_rate)
    routes = tuple(guard.routes()) + tuple(sign_in.routes() if sign_in else ()) + tuple(oauth.routes() if oauth else ())
    return AuthHooks(
        protect=None if settings.server.auth.mode == "none" else guard.wrap,
        routes=routes,
        sessions=sign_in.sessions if sign_in else None,
        guard=guard,
        sign_in=sign_in,
        oauth=oauth,
    )


def protect(app: ASGIApp, settings: Settings, *, guard: McpGuard | None = None, **kw: Any) -> ASGIApp:
    """Wrap the /mcp ASGI app per [server.auth] (for `create_http_app(protect=lambda a: protect(a, settings))`)."""
    return (guard or McpGuard(settings, **kw)).wrap(app)


def protected_resource_routes(settings: Settings, *, guard: McpGuard | None = None, **kw: Any) -> Sequence[BaseRoute]:
    return (guard or McpGuard(settings, **kw)).routes()


__all__ = ["ANONYMOUS", "CURRENT_PRINCIPAL", "AuthHooks", "build_hooks", "METADATA_PATH", "PRINCIPAL_SCOPE_KEY", "McpGuard", "Principal", "protect", "protected_resource_routes"]
