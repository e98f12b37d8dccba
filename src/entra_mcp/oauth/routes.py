"""The authorization server's routes (server.auth.mode = "oauth"), docs/oauth.md.

| route | method | does |
|---|---|---|
| /.well-known/oauth-authorization-server | GET | RFC 8414 metadata (issuer = server.public_url) |
| /oauth/authorize | GET, POST | the SDK's AuthorizationHandler; on success 302 to the consent page, bound to this browser |
| /oauth/consent | GET | sign in with Entra first (/auth/login), then the page naming the client and its redirect host |
| /oauth/consent | POST | approve or deny (CSRF token bound to the browser's session): 303 to the client with code or error |
| /oauth/token | POST | the SDK's TokenHandler (authorization_code with PKCE, refresh_token), `resource` checked first |
| /oauth/register | POST | the SDK's RegistrationHandler (RFC 7591), when dynamic_registration is on; rate-limited per address |
| /oauth/revoke | POST | RFC 7009: revokes the token's whole family |

The SDK's `create_auth_routes` is not used as a whole: it puts the endpoints at the issuer's root (/authorize...) while
this server's contract names /oauth/*, and it adds `Access-Control-Allow-Origin: *`, which the Host/Origin guard in
front of every route (server/http.py) would contradict. The handlers it wires are used unchanged.
"""

from __future__ import annotations

import base64
import hmac
import html
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlencode, urlsplit

import httpx
from mcp.server.auth.handlers.authorize import AuthorizationHandler
from mcp.server.auth.handlers.register import RegistrationHandler
from mcp.server.auth.handlers.token import TokenHandler
from mcp.server.auth.middleware.client_auth import AuthenticationError, ClientAuthenticator
from mcp.server.auth.provider import construct_redirect_uri
from mcp.server.auth.routes import build_metadata
from mcp.server.auth.settings import ClientRegistrationOptions, RevocationOptions
from mcp.shared.auth import OAuthClientInformationFull
from pydantic import AnyHttpUrl
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from entra_mcp.audit import sign_in_event
from entra_mcp.config import Settings
from entra_mcp.errors import EntraMcpError
from entra_mcp.logs import get_logger
from entra_mcp.oauth.clients import LOOPBACK_HOSTS, Client, MetadataDocuments, secret_hash
from entra_mcp.oauth.provider import AuthorizationServer, browser_binding, new_token
from entra_mcp.oidc.flow import origin_of
from entra_mcp.oidc.provider import ProviderUnavailable
from entra_mcp.oidc.routes import SESSION_COOKIE, SignIn
from entra_mcp.oidc.validate import Identity
from entra_mcp.ratelimit import RateLimiter

log = get_logger("oauth.routes")

BINDING_COOKIE = "entra_mcp_oauth"
MAX_FORM_BYTES = 8192
MAX_REGISTRATION_BYTES = 8192
_NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}


class HashedSecretAuthenticator(ClientAuthenticator):
    """The SDK's client authentication (none, client_secret_post, client_secret_basic) against a stored SHA-256 of
    the secret instead of the secret itself (the store keeps no secret a thief could use)."""

    async def authenticate_request(self, request: Request) -> OAuthClientInformationFull:
        form = await request.form()
        client_id = form.get("client_id")
        if not isinstance(client_id, str) or not client_id:
            raise AuthenticationError("Missing client_id")
        client = await self.provider.get_client(client_id)
        if client is None:
            raise AuthenticationError("Invalid client_id")
        method = client.token_endpoint_auth_method or "none"
        presented: str | None = None
        if method == "client_secret_basic":
            auth = request.headers.get("authorization", "")
            if auth[:6].lower() != "basic ":
                raise AuthenticationError("Missing or invalid Basic authentication in Authorization header")
            try:
                basic_id, _, presented = base64.b64decode(auth[6:], validate=True).decode("utf-8").partition(":")
            except (ValueError, UnicodeDecodeError):
                raise AuthenticationError("Invalid Basic authentication header") from None
            if unquote(basic_id) != client_id:
                raise AuthenticationError("Client ID mismatch in Basic auth")
            presented = unquote(presented)
        elif method == "client_secret_post":
            value = form.get("client_secret")
            presented = value if isinstance(value, str) else None
        elif method != "none":
            raise AuthenticationError("Unsupported client authentication method")
        if method == "none":
            return client
        if not client.client_secret or not presented:
            raise AuthenticationError("Client secret is required")
        if not hmac.compare_digest(secret_hash(presented).encode(), client.client_secret.encode()):
            raise AuthenticationError("Invalid client_secret")
        if client.client_secret_expires_at and client.client_secret_expires_at < int(time.time()):
            raise AuthenticationError("Client secret has expired")
        return client


def _page_headers(form_target: str | None = None) -> dict[str, str]:
    form_action = "'self'" + (f" {form_target}" if form_target else "")
    return {
        **_NO_STORE,
        "Content-Security-Policy": f"default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'; "
                                   f"base-uri 'none'; form-action {form_action}",
        "X-Frame-Options": "DENY",
        # same-origin, not no-referrer: with no-referrer Chromium sends `Origin: null` on the consent form's POST,
        # which the Origin guard refuses; across origins (the redirect to the client) nothing is sent either way.
        "Referrer-Policy": "same-origin",
        "X-Content-Type-Options": "nosniff",
    }


def _page(status: int, title: str, body: str, *, form_target: str | None = None) -> Response:
    doc = (f"<!doctype html><meta charset=utf-8><title>{html.escape(title)}</title>"
           "<style>body{font-family:sans-serif;max-width:36em;margin:3em auto}code{word-break:break-all}</style>"
           f"{body}")
    return Response(doc, status_code=status, media_type="text/html", headers=_page_headers(form_target))


def _error_page(status: int, message: str) -> Response:
    return _page(status, "Authorization", f"<h1>Authorization failed</h1><p id=error>{html.escape(message)}</p>")


def _redirect_host(uri: str) -> str:
    parts = urlsplit(uri)
    host = (parts.hostname or "").lower()
    if parts.scheme == "http" and host in LOOPBACK_HOSTS:
        return f"{host} (an application on this computer)"
    return host


@dataclass
class OAuthRoutes:
    server: AuthorizationServer
    sign_in: SignIn
    public_url: str
    dynamic_registration: bool
    registrations: RateLimiter
    remember_seconds: float = 0.0  # remembered consent's lifetime; 0: every authorization shows the consent page

    @classmethod
    def from_settings(cls, settings: Settings, sign_in: SignIn, *,
                      transport: httpx.AsyncBaseTransport | None = None) -> "OAuthRoutes":
        o = settings.server.auth.oauth
        public = settings.server.resolved_public_url
        scopes = list(settings.server.auth.required_scopes)
        documents = MetadataDocuments(
            scopes=scopes, allowed_hosts=o.client_metadata_allowed_hosts, max_bytes=o.client_metadata_max_bytes,
            timeout=o.client_metadata_timeout_seconds, cache_seconds=o.client_metadata_cache_seconds,
            ca_bundle=o.client_metadata_ca_bundle, transport=transport,
        ) if o.client_metadata_documents else None
        server = AuthorizationServer(
            sign_in.sessions.store, issuer=public, resource=f"{public}/mcp", scopes=scopes,
            consent_url=f"{public}/oauth/consent", documents=documents, dynamic_registration=o.dynamic_registration,
            access_seconds=o.access_token_minutes * 60, refresh_seconds=o.refresh_token_days * 86400,
            client_seconds=o.registered_client_days * 86400,
        )
        routes = cls(server, sign_in, public, o.dynamic_registration, RateLimiter(o.registrations_per_minute),
                     o.remember_consent_days * 86400 if o.remember_consent else 0.0)
        server.admit = routes.refusal
        return routes

    async def refusal(self, identity: Identity) -> str | None:
        """Why the person of a token family may no longer use this server, asked at each refresh: their tenant is no
        longer one whose people may sign in (the served tenants, [oidc] allowed_tenants), or [server.access] no
        longer grants them any tenant. None: they still may."""
        tid = identity.tid.lower()
        sessions = self.sign_in.sessions
        if sessions.tenant_ids is not None and tid not in sessions.tenant_ids:
            return "the person's tenant is no longer served here"
        provider = self.sign_in.flow.provider
        if tid not in provider.allowed_tenants:
            try:
                home = (await provider.metadata()).tenant_id.lower()  # cached after the first sign-in
            except (ProviderUnavailable, EntraMcpError):
                return None  # cannot tell now; the access rules below and the next sign-in still apply
            if tid != home:
                return "the person's tenant is no longer allowed to sign in here ([oidc] allowed_tenants)"
        check = sessions.access_check
        return check(identity) if check is not None else None

    async def aclose(self) -> None:
        if self.server.documents is not None:
            await self.server.documents.aclose()

    # -- metadata (RFC 8414) ---------------------------------------------------------------------------------
    def metadata(self) -> dict[str, Any]:
        meta = build_metadata(
            AnyHttpUrl(self.public_url), None,
            ClientRegistrationOptions(enabled=self.dynamic_registration, valid_scopes=self.server.scopes),
            RevocationOptions(enabled=True),
        )
        data: dict[str, Any] = meta.model_dump(mode="json", exclude_none=True)
        base = self.public_url
        data.update({
            "issuer": base,
            "authorization_endpoint": f"{base}/oauth/authorize",
            "token_endpoint": f"{base}/oauth/token",
            "revocation_endpoint": f"{base}/oauth/revoke",
            "token_endpoint_auth_methods_supported": ["none", "client_secret_post", "client_secret_basic"],
            "revocation_endpoint_auth_methods_supported": ["none", "client_secret_post", "client_secret_basic"],
            "client_id_metadata_document_supported": self.server.documents is not None,
            "authorization_response_iss_parameter_supported": True,
        })
        if self.dynamic_registration:
            data["registration_endpoint"] = f"{base}/oauth/register"
        else:
            data.pop("registration_endpoint", None)
        return data

    async def metadata_endpoint(self, request: Request) -> Response:
        return JSONResponse(self.metadata(), headers={"Cache-Control": "public, max-age=3600"})

    # -- authorize -------------------------------------------------------------------------------------------
    async def authorize(self, request: Request) -> Response:
        binding = new_token()
        token = browser_binding.set(binding)
        try:
            response = await AuthorizationHandler(self.server).handle(request)
        finally:
            browser_binding.reset(token)
        location = response.headers.get("location", "")
        if location.startswith(self.server.consent_url + "?"):
            self.sign_in.cookies.set(response, BINDING_COOKIE, binding, max_age=600)
        elif response.status_code == 400 and location == "":
            client_id = request.query_params.get("client_id", "")
            reason = self.server.documents.refusal(client_id) if self.server.documents is not None else None
            if reason:  # say why a metadata document was refused instead of "client not found"
                return JSONResponse({"error": "invalid_client", "error_description": reason}, 400, headers=_NO_STORE)
        return response

    # -- consent ---------------------------------------------------------------------------------------------
    def _bound(self, request: Request, pending: dict[str, Any]) -> bool:
        cookie = request.cookies.get(self.sign_in.cookies.name(BINDING_COOKIE))
        return bool(cookie) and hmac.compare_digest(secret_hash(cookie or ""), str(pending.get("binding", "")))

    async def consent_page(self, request: Request) -> Response:
        request_id = request.query_params.get("request")
        pending = self.server.pending(request_id)
        if pending is None or request_id is None:
            return _error_page(400, "This authorization request is unknown or has expired. Start again from your "
                                    "MCP client.")
        if not self._bound(request, pending):
            return _error_page(400, "This authorization request was started in another browser. Start again from "
                                    "your MCP client, in this browser.")
        sid = request.cookies.get(self.sign_in.cookies.name(SESSION_COOKIE))
        session, _ = self.sign_in.sessions.lookup(sid, kind="portal")
        if session is None or sid is None:
            back = "/oauth/consent?" + urlencode({"request": request_id})
            return RedirectResponse("/auth/login?" + urlencode({"flow": "portal", "return_to": back}), 302,
                                    headers=_NO_STORE)
        client = await self.server.get_client(str(pending["client_id"]))
        if not isinstance(client, Client):
            return _error_page(400, "The application that asked for access is no longer known. Start again from your "
                                    "MCP client.")
        identity = session.identity.record()
        consent = self.server.consent_key(identity, client.client_id, str(pending["redirect_uri"]), pending["scopes"])
        if self.remember_seconds and self.server.consent_remembered(consent):
            # Approved before by this person for this client, redirect host and scope: no page. The request was bound
            # to this browser and this browser is signed in as that person, as for the form post.
            if self.server.take_pending(request_id) is None:  # single use, as the form post
                return _error_page(400, "This authorization request was already decided. Start again from your MCP "
                                        "client.")
            return self._approved(request, pending, session.identity, consent, remembered=True)
        csrf = new_token()
        self.server.remember_consent_page(request_id, {**pending, "csrf": secret_hash(csrf), "session": secret_hash(sid)})
        redirect_uri = str(pending["redirect_uri"])
        who = session.identity.preferred_username or session.identity.name or session.identity.oid
        e = html.escape
        body = (
            "<h1>Allow access to entra-mcp?</h1>"
            f"<p id=client><b>{e(client.display_name)}</b> wants to use entra-mcp's directory lookups as "
            f"<b id=user>{e(str(who))}</b>.</p>"
            f"<p>After you decide, your browser goes to <b id=redirect-host>{e(_redirect_host(redirect_uri))}</b>.</p>"
            f"<p>Client id: <code id=client-id>{e(client.client_id)}</code><br>"
            f"Access: <code id=scopes>{e(' '.join(pending['scopes']))}</code> on <code>{e(self.server.resource)}</code></p>"
            + (f"<p id=remember>If you allow it, this application will not ask again for "
               f"{self.remember_seconds / 86400:g} days (revoking its access makes it ask again).</p>"
               if self.remember_seconds else "") +
            "<form method=post action=/oauth/consent>"
            f"<input type=hidden name=request value=\"{e(request_id)}\">"
            f"<input type=hidden name=csrf value=\"{e(csrf)}\">"
            "<button id=approve name=decision value=approve>Allow</button> "
            "<button id=deny name=decision value=deny>Deny</button></form>"
        )
        target = origin_of(redirect_uri)
        return _page(200, "Allow access", body, form_target=target)

    async def _form(self, request: Request) -> dict[str, str] | None:
        declared = request.headers.get("content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > MAX_FORM_BYTES):
            return None
        if not request.headers.get("content-type", "").startswith("application/x-www-form-urlencoded"):
            return None
        try:
            form = await request.form(max_files=0, max_fields=8)
        except (ClientDisconnect, ValueError, KeyError):
            return None
        return {k: v for k, v in form.items() if isinstance(v, str)}

    async def consent_decision(self, request: Request) -> Response:
        origin = request.headers.get("origin")
        if origin is not None and origin_of(origin) != origin_of(self.public_url):
            return _error_page(403, "The decision must come from this server's own consent page.")
        form = await self._form(request)
        if form is None:
            return _error_page(400, "The consent form was malformed.")
        pending = self.server.take_pending(form.get("request"))  # single use, whatever the outcome
        if pending is None:
            return _error_page(400, "This authorization request is unknown, expired or already decided. Start again "
                                    "from your MCP client.")
        sid = request.cookies.get(self.sign_in.cookies.name(SESSION_COOKIE))
        session, _ = self.sign_in.sessions.lookup(sid, kind="portal")
        csrf = form.get("csrf", "")
        if (session is None or sid is None or not self._bound(request, pending) or not pending.get("csrf")
                or not hmac.compare_digest(secret_hash(sid), str(pending.get("session", "")))
                or not hmac.compare_digest(secret_hash(csrf), str(pending["csrf"]))):
            log.warning("refused a consent decision that did not come from the consent page of this browser session")
            return _error_page(403, "This decision did not come from the consent page shown to you. Start again "
                                    "from your MCP client.")
        redirect_uri, state = str(pending["redirect_uri"]), pending.get("state")
        approved = form.get("decision") == "approve"
        self._audit(request, "consent", "ok" if approved else "refused", client_id=str(pending["client_id"]),
                    tid=session.identity.tid, oid=session.identity.oid, upn=session.identity.preferred_username,
                    reason=None if approved else "denied by the person")
        if not approved:
            log.info("OAuth consent denied by tid=%s oid=%s for client %.120r", session.identity.tid,
                     session.identity.oid, pending["client_id"])
            target = construct_redirect_uri(redirect_uri, error="access_denied", state=state, iss=self.public_url)
            return RedirectResponse(target, 303, headers=_NO_STORE)
        identity = session.identity.record()
        consent = self.server.consent_key(identity, str(pending["client_id"]), redirect_uri, pending["scopes"])
        if self.remember_seconds:
            self.server.remember_consent(consent, self.remember_seconds)
        return self._approved(request, pending, session.identity, consent if self.remember_seconds else None,
                              remembered=False)

    def _approved(self, request: Request, pending: dict[str, Any], person: Identity, consent: str | None, *,
                  remembered: bool) -> Response:
        """The code for an approved request, sent to the client's redirect URI (303)."""
        # with the ID token's roles and groups, for [server.access] rules
        code = self.server.issue_code(pending, person.record(), consent=consent)
        if remembered:
            self._audit(request, "consent", "ok", client_id=str(pending["client_id"]), tid=person.tid, oid=person.oid,
                        upn=person.preferred_username, reason="remembered")
        log.info("OAuth consent %s by tid=%s oid=%s to client %.120r", "remembered" if remembered else "given",
                 person.tid, person.oid, pending["client_id"])
        target = construct_redirect_uri(str(pending["redirect_uri"]), code=code, state=pending.get("state"),
                                        iss=self.public_url)
        response = RedirectResponse(target, 303, headers=_NO_STORE)
        self.sign_in.cookies.clear(response, BINDING_COOKIE)
        return response

    # -- token, registration, revocation ---------------------------------------------------------------------
    async def token(self, request: Request) -> Response:
        try:
            form = await request.form(max_files=0, max_fields=16)
        except (ClientDisconnect, ValueError, KeyError):
            return JSONResponse({"error": "invalid_request", "error_description": "malformed form body"}, 400,
                                headers=_NO_STORE)
        resource = form.get("resource")
        if resource is not None and (not isinstance(resource, str) or not self.server.resource_ok(resource)):
            return JSONResponse({"error": "invalid_target",
                                 "error_description": f"this server issues tokens only for {self.server.resource}"},
                                400, headers=_NO_STORE)
        response: Response = await TokenHandler(self.server, HashedSecretAuthenticator(self.server)).handle(request)
        grant = form.get("grant_type")
        client_id = form.get("client_id")
        self._audit(request, "token", "ok" if response.status_code == 200 else "failed",
                    client_id=client_id if isinstance(client_id, str) else None,
                    grant=grant[:40] if isinstance(grant, str) else None,
                    reason=None if response.status_code == 200 else f"HTTP {response.status_code}")
        return response

    def _audit(self, request: Request, event: str, outcome: str, **fields: Any) -> None:
        """One OAuth event in the audit trail (identifiers only: never a code, token or secret)."""
        if self.sign_in.settings is not None:
            sign_in_event(self.sign_in.settings, event, outcome, flow="oauth",
                          ip=request.client.host if request.client else None, **fields)

    async def register(self, request: Request) -> Response:
        address = request.client.host if request.client else "unknown"
        wait = self.registrations.admit(address)
        if wait is not None:
            return JSONResponse({"error": "slow_down", "error_description": "too many registrations from this address"},
                                429, headers={"Retry-After": str(wait)})
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > MAX_REGISTRATION_BYTES:
            return JSONResponse({"error": "invalid_client_metadata", "error_description": "registration too large"}, 413)
        handler = RegistrationHandler(self.server, ClientRegistrationOptions(
            enabled=True, valid_scopes=self.server.scopes, default_scopes=self.server.scopes))
        return await handler.handle(request)

    async def revoke(self, request: Request) -> Response:
        """RFC 7009. Not the SDK's RevocationHandler: its request model requires a client_secret field even from a
        public client (token_endpoint_auth_method "none"), which RFC 7009 section 2.1 does not ask of one."""
        try:
            client = await HashedSecretAuthenticator(self.server).authenticate_request(request)
        except AuthenticationError as exc:
            return JSONResponse({"error": "invalid_client", "error_description": exc.message}, 401, headers=_NO_STORE)
        except (ClientDisconnect, ValueError, KeyError):
            return JSONResponse({"error": "invalid_request"}, 400, headers=_NO_STORE)
        form = await request.form()
        token = form.get("token")
        if not isinstance(token, str) or not token:
            return JSONResponse({"error": "invalid_request", "error_description": "token is required"}, 400,
                                headers=_NO_STORE)
        found = await self.server.load_access_token(token) or await self.server.load_refresh_token(client, token)
        if found is not None and found.client_id == client.client_id:
            await self.server.revoke_token(found)
            self._audit(request, "revoke", "ok", client_id=client.client_id)
        return Response(status_code=200, headers=_NO_STORE)  # unknown tokens too (RFC 7009 section 2.2)

    def routes(self) -> Sequence[BaseRoute]:
        routes: list[BaseRoute] = [
            Route("/.well-known/oauth-authorization-server", self.metadata_endpoint, methods=["GET"]),
            Route("/oauth/authorize", self.authorize, methods=["GET", "POST"]),
            Route("/oauth/consent", self.consent_page, methods=["GET"]),
            Route("/oauth/consent", self.consent_decision, methods=["POST"]),
            Route("/oauth/token", self.token, methods=["POST"]),
            Route("/oauth/revoke", self.revoke, methods=["POST"]),
        ]
        if self.dynamic_registration:
            routes.append(Route("/oauth/register", self.register, methods=["POST"]))
        return routes


__all__ = ["BINDING_COOKIE", "HashedSecretAuthenticator", "OAuthRoutes"]
