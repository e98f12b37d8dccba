"""The emulator's login host: what login.microsoftonline.com answers to msal and to an OIDC client.

Routes (the tenant segment is a tenant id, one of its domains, or `common` / `organizations` where Entra allows):
  GET  /{tenant}/v2.0/.well-known/openid-configuration   discovery (v2); /{tenant}/.well-known/openid-configuration (v1)
  GET  /{tenant}/discovery/v2.0/keys                      JWKS (also /{tenant}/discovery/keys, /common/discovery/keys)
  GET  /common/discovery/instance                         instance discovery, for msal with instance_discovery=<url>
  GET  /oidc/userinfo                                     the discovery document's userinfo_endpoint (Graph token)
  POST /{tenant}/oauth2/v2.0/token                        client_credentials (secret, Basic, certificate assertion),
                                                          authorization_code (PKCE), refresh_token
  GET  /{tenant}/oauth2/v2.0/authorize                    validates, then a plain sign-in form (#username, #password,
                                                          #submit) that POSTs to /{tenant}/login
  POST /{tenant}/login                                    checks the password, redirects with ?code&state&session_state
  GET  /{tenant}/oauth2/v2.0/logout                       back to post_logout_redirect_uri when it is registered

Errors are Entra's: the AADSTS number, error and wording Microsoft uses, with error_codes, timestamp, trace_id,
correlation_id (the client's `client-request-id` when sent) and error_uri. A redirect_uri that does not match the
registration exactly gets an error page and never a redirect.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import html
import json
import re
import secrets
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Awaitable, Callable
from urllib.parse import unquote, urlencode, urlsplit

import anyio
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from entra_mcp.devtenant.customers import consent_error
from entra_mcp.devtenant.model import AppRegistration, EmulatedTenant
from entra_mcp.devtenant.tokens import (
    AZPACR_CERTIFICATE,
    AZPACR_PUBLIC,
    AZPACR_SECRET,
    TokenRejected,
    b64url,
    b64url_decode,
    service_principal_of,
    split_jwt,
    unverified_claims,
    verify_rsa_signature,
)
from entra_mcp.logs import get_logger

if TYPE_CHECKING:
    from entra_mcp.devtenant.runtime import EmulatorRuntime
    from entra_mcp.devtenant.tokens import TokenService

log = get_logger("devtenant.login")

CODE_LIFETIME_S = 600  # Entra's authorization codes live about ten minutes
SIGN_IN_PAGE_LIFETIME_S = 1800
ASSERTION_SKEW_S = 300
JWT_BEARER = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
OIDC_SCOPES = ("openid", "profile", "email", "offline_access")
GRAPH_APP_ID = "00000003-0000-0000-c000-000000000000"
MULTI_TENANT_SEGMENTS = ("common", "organizations")  # tenant-independent endpoints (no "consumers": no MSA here)
MULTI_TENANT_AUDIENCES = ("AzureADMultipleOrgs", "AzureADandPersonalMicrosoftAccount")
_VERIFIER_RE = re.compile(r"^[A-Za-z0-9._~-]{43,128}$")
_TENANT_TEMPLATE = "{tenantid}"
# what the login host counts and can take down, one name per kind of endpoint
LOGIN_ENDPOINT_KINDS = frozenset(
    {"discovery", "jwks", "token", "authorize", "sign_in", "logout", "userinfo", "instance"})


class LoginError(Exception):
    """An Entra error answer: `error` (OAuth code), the AADSTS number and Microsoft's message."""

    def __init__(self, error: str, aadsts: int, message: str, status: int = 400) -> None:
        super().__init__(f"AADSTS{aadsts}: {message}")
        self.error, self.aadsts, self.text, self.status = error, aadsts, message, status


def _timestamp(now: float) -> str:
    return dt.datetime.fromtimestamp(now, dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ")


def _correlation_id(request: Request) -> str:
    sent = request.headers.get("client-request-id", "")
    try:
        return str(uuid.UUID(sent))
    except ValueError:
        return str(uuid.uuid4())


@dataclass
class AuthorizationRequest:
    """An /authorize request that passed validation and waits for the user's password."""

    tenant_segment: str
    client_id: str
    redirect_uri: str
    scopes: list[str]
    state: str | None
    nonce: str | None
    code_challenge: str
    response_mode: str
    login_hint: str
    expires_at: float


@dataclass
class AuthorizationCode:
    tenant_id: str
    client_id: str
    redirect_uri: str
    user_id: str
    scopes: list[str]
    code_challenge: str
    nonce: str | None
    sid: str
    expires_at: float
    redeemed: bool = False


@dataclass
class Resource:
    """The resource an access token is for: its `aud`, its delegated `scp`, the scopes as the response lists them."""

    audience: str
    scp: list[str]
    listed: list[str]
    client_id: str


@dataclass
class LoginHost:
    """State of the login host: pending sign-ins, authorization codes, seen client-assertion ids.

    Server-side things that age (sign-in pages, codes, refresh tokens) follow the emulator's clock
    (`state.clock`, advanced with POST /_emulator/clock), so expiry is testable without waiting. What a client
    signs (client assertions) and issued tokens use wall time, like the client's own clock.
    """

    runtime: "EmulatorRuntime"
    now_fn: Callable[[], float] = time.time
    _pending: dict[str, AuthorizationRequest] = field(default_factory=dict)
    _codes: dict[str, AuthorizationCode] = field(default_factory=dict)  # sha256(code) -> code
    _assertion_ids: dict[str, float] = field(default_factory=dict)  # jti -> expiry
    _lock: threading.Lock = field(default_factory=threading.Lock)
    # requests served per endpoint kind (LOGIN_ENDPOINT_KINDS)
    requests: Counter[str] = field(default_factory=Counter)
    # endpoint kinds that answer 503 (an outage of the login host or of one of its endpoints)
    down: set[str] = field(default_factory=set)

    # ---- plumbing -----------------------------------------------------------------------------------------------

    def now(self) -> float:
        return self.now_fn() + self.runtime.state.clock.offset_s

    @property
    def tokens(self) -> "TokenService":
        assert self.runtime.tokens is not None, "the token service is set before serving"
        return self.runtime.tokens

    @property
    def base(self) -> str:
        return self.runtime.base_url

    def _endpoint(self, kind: str, handler: Callable[[Request], Awaitable[Response]]) -> Callable[[Request], Any]:
        """Every route: counted, delayed by the latency fault, and 503 while `kind` is down."""
        assert kind in LOGIN_ENDPOINT_KINDS, kind

        async def endpoint(request: Request) -> Response:
            with self._lock:
                self.requests[kind] += 1
            latency = self.runtime.faults.latency_ms
            if latency > 0:
                await anyio.sleep(latency / 1000.0)
            if kind in self.down:
                exc = LoginError("temporarily_unavailable", 90033, "A transient error has occurred. Please try again.",
                                 503)
                return self.error_response(exc, request)
            return await handler(request)

        return endpoint

    def error_body(self, exc: LoginError, correlation_id: str) -> dict[str, Any]:
        now = time.time()
        trace = str(uuid.uuid4())
        return {
            "error": exc.error,
            "error_description": f"AADSTS{exc.aadsts}: {exc.text} Trace ID: {trace} Correlation ID: {correlation_id} "
            f"Timestamp: {_timestamp(now)}",
            "error_codes": [exc.aadsts],
            "timestamp": _timestamp(now),
            "trace_id": trace,
            "correlation_id": correlation_id,
            "error_uri": f"{self.base}/error?code={exc.aadsts}",
        }

    def error_response(self, exc: LoginError, request: Request) -> JSONResponse:
        return JSONResponse(self.error_body(exc, _correlation_id(request)), status_code=exc.status,
                            headers={"Cache-Control": "no-store", "Pragma": "no-cache"})

    def resolve_tenant(self, segment: str) -> EmulatedTenant:
        tenant = self.runtime.state.resolve(segment)
        if tenant is None:
            raise LoginError(
                "invalid_request", 90002,
                f"Tenant '{segment}' not found. Check to make sure you have the correct tenant ID and are signing into "
                "the correct cloud. Check with your subscription administrator, this may happen if there are no active "
                "subscriptions for the tenant.",
            )
        return tenant

    def find_registration(self, client_id: str, tenant: EmulatedTenant) -> AppRegistration:
        """The app in `tenant`, or a multi-tenant app registered elsewhere (Entra would create its service
        principal here on consent)."""
        cid = client_id.strip().lower()
        reg = tenant.registrations.get(cid) or tenant.registrations.get(client_id)
        if reg is None:
            for other in self.runtime.state.tenants.values():
                cand = other.registrations.get(cid) or other.registrations.get(client_id)
                if cand is not None and cand.sign_in_audience in MULTI_TENANT_AUDIENCES:
                    reg = cand
                    break
        if reg is None:
            raise LoginError(
                "unauthorized_client", 700016,
                f"Application with identifier '{client_id}' was not found in the directory '{tenant.display_name}'. "
                "This can happen if the application has not been installed by the administrator of the tenant or "
                "consented to by any user in the tenant. You may have sent your authentication request to the wrong "
                "tenant.",
            )
        return reg

    def check_enabled(self, tenant: EmulatedTenant, reg: AppRegistration) -> None:
        """A disabled service principal can get no token in its tenant (AADSTS7000112)."""
        sp = service_principal_of(tenant, reg.client_id)
        if sp is not None and sp.get("accountEnabled") is False:
            raise LoginError("unauthorized_client", 7000112,
                             f"Application '{reg.client_id}'({reg.display_name}) is disabled.")

    def check_assignment(self, tenant: EmulatedTenant, reg: AppRegistration, user: dict[str, Any]) -> None:
        """appRoleAssignmentRequired: the user, or a group the user is a DIRECT member of, must be assigned
        (Entra does not follow nested groups for app assignment)."""
        sp = service_principal_of(tenant, reg.client_id)
        if sp is None or not sp.get("appRoleAssignmentRequired"):
            return
        with tenant.lock:
            principals = {str(user["id"]), *tenant.member_of(str(user["id"]))}
            assigned = any(a.get("principalId") in principals for a in tenant.assignments_for_resource(str(sp["id"])))
        if not assigned:
            raise LoginError(
                "access_denied", 50105,
                f"Your administrator has configured the application {reg.display_name} ('{reg.client_id}') to block "
                "users unless they are specifically granted ('assigned') access to the application. The signed in "
                f"user '{user.get('userPrincipalName')}' is blocked because they are not a direct member of a group "
                "with access, nor had access directly assigned by an administrator. Please contact your administrator "
                "to assign access to this application.",
            )

    def _expired(self, end_date_time: str) -> bool:
        try:
            end = dt.datetime.fromisoformat(end_date_time.replace("Z", "+00:00"))
        except ValueError:
            return False
        return end.timestamp() <= self.now()

    # ---- discovery ----------------------------------------------------------------------------------------------

    def openid_configuration(self, segment: str) -> dict[str, Any]:
        """Entra's v2 discovery document for a tenant, or for `common`/`organizations` (issuer template kept)."""
        if segment in MULTI_TENANT_SEGMENTS:
            path, tid, region = segment, _TENANT_TEMPLATE, None
        else:
            tenant = self.resolve_tenant(segment)
            path = tid = tenant.tenant_id
            region = "NA"
        b = self.base
        host = urlsplit(b).netloc
        return {
            "token_endpoint": f"{b}/{path}/oauth2/v2.0/token",
            "token_endpoint_auth_methods_supported": ["client_secret_post", "private_key_jwt", "client_secret_basic"],
            "jwks_uri": f"{b}/{path}/discovery/v2.0/keys",
            "response_modes_supported": ["query", "fragment", "form_post"],
            "subject_types_supported": ["pairwise"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "response_types_supported": ["code", "id_token", "code id_token", "id_token token"],
            "scopes_supported": ["openid", "profile", "email", "offline_access"],
            "issuer": f"{b}/{tid}/v2.0",
            "request_uri_parameter_supported": False,
            "userinfo_endpoint": f"{b}/oidc/userinfo",
            "authorization_endpoint": f"{b}/{path}/oauth2/v2.0/authorize",
            "device_authorization_endpoint": f"{b}/{path}/oauth2/v2.0/devicecode",
            "http_logout_supported": True,
            "frontchannel_logout_supported": True,
            "end_session_endpoint": f"{b}/{path}/oauth2/v2.0/logout",
            "claims_supported": [
                "sub", "iss", "cloud_instance_name", "cloud_instance_host_name", "cloud_graph_host_name",
                "msgraph_host", "aud", "exp", "iat", "auth_time", "acr", "nonce", "preferred_username", "name", "tid",
                "ver", "at_hash", "c_hash", "email",
            ],
            "kerberos_endpoint": f"{b}/{path}/kerberos",
            "tenant_region_scope": region,
            "cloud_instance_name": host,
            "cloud_graph_host_name": host,
            "msgraph_host": host,
            "rbac_url": "https://pas.windows.net",
        }

    def openid_configuration_v1(self, segment: str) -> dict[str, Any]:
        if segment in MULTI_TENANT_SEGMENTS:
            path, tid = segment, _TENANT_TEMPLATE
        else:
            path = tid = self.resolve_tenant(segment).tenant_id
        b = self.base
        return {
            "token_endpoint": f"{b}/{path}/oauth2/token",
            "token_endpoint_auth_methods_supported": ["client_secret_post", "private_key_jwt", "client_secret_basic"],
            "jwks_uri": f"{b}/{path}/discovery/keys",
            "response_modes_supported": ["query", "fragment", "form_post"],
            "subject_types_supported": ["pairwise"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "response_types_supported": ["code", "id_token", "code id_token", "token id_token", "token"],
            "scopes_supported": ["openid"],
            "issuer": f"https://sts.windows.net/{tid}/",
            "authorization_endpoint": f"{b}/{path}/oauth2/authorize",
            "end_session_endpoint": f"{b}/{path}/oauth2/logout",
            "claims_supported": ["sub", "iss", "aud", "exp", "iat", "auth_time", "acr", "amr", "nonce", "email",
                                 "given_name", "family_name", "nickname"],
        }

    # ---- scopes and resources -----------------------------------------------------------------------------------

    def _resource(self, tenant: EmulatedTenant, identifier: str) -> tuple[str, AppRegistration | None]:
        """(audience, API registration or None for Graph) for a resource identifier; invalid_resource otherwise."""
        ident = identifier.rstrip("/")
        if ident in (self.base, "https://graph.microsoft.com", GRAPH_APP_ID):
            return self.base, None
        cid = ident.removeprefix("api://")
        for reg in tenant.registrations.values():
            if reg.client_id.lower() == cid.lower():
                return reg.client_id, reg
        raise LoginError(
            "invalid_resource", 500011,
            f"The resource principal named {identifier} was not found in the tenant named {tenant.display_name}. "
            "This can happen if the application has not been installed by the administrator of the tenant or "
            "consented to by any user in the tenant. You might have sent your authentication request to the wrong "
            "tenant.",
        )

    def resolve_app_scope(self, tenant: EmulatedTenant, scope: str) -> str:
        """Client credentials: exactly one `{resource}/.default`; returns the token's audience."""
        scopes = scope.split()
        if not scopes:
            raise LoginError("invalid_request", 900144, "The request body must contain the following parameter: 'scope'.")
        bad = [s for s in scopes if not s.endswith("/.default")]
        if bad or len(scopes) != 1:
            raise LoginError(
                "invalid_scope", 1002012,
                f"The provided value for scope {scope} is not valid. Client credential flows must have a scope value "
                "with /.default suffixed to the resource identifier (application ID URI).",
            )
        return self._resource(tenant, scopes[0].removesuffix("/.default"))[0]

    def resolve_user_scopes(self, tenant: EmulatedTenant, scopes: list[str]) -> tuple[Resource, list[str]]:
        """Delegated scopes: one resource (Graph when none is named) and the OIDC scopes asked for."""
        oidc = [s for s in scopes if s in OIDC_SCOPES]
        audience: str | None = None
        api: AppRegistration | None = None
        scp: list[str] = []
        listed: list[str] = []
        for s in scopes:
            if s in OIDC_SCOPES:
                continue
            if "/" in s:
                ident, _, name = s.rpartition("/")
                aud, reg = self._resource(tenant, ident)
            else:  # a bare scope name is Graph's, e.g. User.Read
                aud, reg, name = self.base, None, s
            if audience is not None and aud != audience:
                raise LoginError(
                    "invalid_scope", 28000,
                    "Provided value for the input parameter scope is not valid because it contains more than one "
                    f"resource. Scope {' '.join(scopes)} is not valid.",
                )
            audience, api = aud, reg
            if name == ".default":
                names = list(reg.exposed_scopes) if reg is not None else ["User.Read"]
            elif not name or (reg is not None and name not in reg.exposed_scopes):
                raise LoginError(
                    "invalid_scope", 70011,
                    f"The provided value for the input parameter 'scope' is not valid. The scope {s} is not valid.",
                )
            else:
                names = [name]
            scp.extend(n for n in names if n not in scp)
            listed.append(s)
        if audience is None:  # only OIDC scopes: Entra hands out a Graph token for the user's own profile
            audience = self.base
            scp = ["User.Read"] + [s for s in oidc if s in ("openid", "profile", "email")]
        client_id = api.client_id if api is not None else GRAPH_APP_ID
        return Resource(audience, scp, listed, client_id), oidc

    # ---- client authentication ----------------------------------------------------------------------------------

    @staticmethod
    def client_id_of(form: dict[str, str], request: Request) -> tuple[str, str | None]:
        """(client_id, secret from HTTP Basic or None)."""
        cid = form.get("client_id", "")
        auth = request.headers.get("authorization", "")
        basic_secret = None
        if auth[:6].lower() == "basic ":
            try:
                user, _, pw = base64.b64decode(auth[6:].strip()).decode("utf-8").partition(":")
            except (ValueError, UnicodeDecodeError):
                raise LoginError("invalid_client", 7000218, "The request body must contain the following parameter: "
                                 "'client_assertion' or 'client_secret'.", 401) from None
            user, basic_secret = unquote(user), unquote(pw)
            if cid and cid != user:
                raise LoginError("invalid_request", 900144, "The client_id in the body and in the Authorization header "
                                 "differ.")
            cid = user
        if not cid:
            raise LoginError("invalid_request", 900144,
                             "The request body must contain the following parameter: 'client_id'.")
        return cid, basic_secret

    def authenticate_client(
        self, reg: AppRegistration, tenant: EmulatedTenant, form: dict[str, str], basic_secret: str | None,
        *, required: bool,
    ) -> str:
        """Check the client's secret or certificate assertion; returns azpacr ("0" none, "1" secret, "2" cert)."""
        secret = basic_secret if basic_secret is not None else form.get("client_secret")
        assertion = form.get("client_assertion")
        if secret:
            match = next((s for s in reg.secrets if hmac.compare_digest(s.value.encode(), secret.encode())), None)
            if match is None:
                raise LoginError(
                    "invalid_client", 7000215,
                    "Invalid client secret provided. Ensure the secret being sent in the request is the client secret "
                    f"value, not the client secret ID, for a secret added to app '{reg.client_id}'.", 401,
                )
            if self._expired(match.end_date_time):
                raise LoginError(
                    "invalid_client", 7000222,
                    f"The provided client secret keys for app '{reg.client_id}' are expired. Visit the Azure portal to "
                    "create new keys for your app: https://aka.ms/NewClientSecret, or consider using certificate "
                    "credentials for added security: https://aka.ms/certCreds.", 401,
                )
            return AZPACR_SECRET
        if assertion:
            self._check_assertion(reg, tenant, assertion, form.get("client_assertion_type", ""))
            return AZPACR_CERTIFICATE
        if required:
            raise LoginError("invalid_client", 7000218, "The request body must contain the following parameter: "
                             "'client_assertion' or 'client_secret'.", 401)
        return AZPACR_PUBLIC

    def _check_assertion(self, reg: AppRegistration, tenant: EmulatedTenant, assertion: str, kind: str) -> None:
        if kind != JWT_BEARER:
            raise LoginError("invalid_request", 900144,
                             "The request body must contain the following parameter: 'client_assertion_type'.")
        try:
            header, claims, signature, signing_input = split_jwt(assertion)
        except ValueError:
            raise LoginError("invalid_client", 50027, "JWT token is invalid or malformed.", 401) from None
        alg = header.get("alg")
        # msal pads its thumbprints ("...=") although JWS says unpadded base64url: accept both, as Entra does.
        x5t256, x5t = (v.rstrip("=") if isinstance(v, str) else None for v in (header.get("x5t#S256"), header.get("x5t")))
        cert = None
        for c in reg.certificates:
            if (x5t256 and hmac.compare_digest(c.thumbprint_sha256_b64url, x5t256)) or (
                x5t and hmac.compare_digest(c.thumbprint_sha1_b64url, x5t)
            ):
                cert = c
                break
        if cert is None:
            shown = x5t256 or x5t or ""
            try:
                shown = _b64url_to_hex(shown)
            except ValueError:
                shown = "(not base64url)"
            raise LoginError(
                "invalid_client", 700027,
                "The certificate with identifier used to sign the client assertion is not registered on application. "
                f"[Reason - The key was not found., Thumbprint of key used by client: '{shown}', Please visit the "
                "Azure Portal, Graph Explorer or directly use MS Graph to see configured keys for app Id "
                f"'{reg.client_id}'. Review the documentation at https://docs.microsoft.com/en-us/graph/deployments "
                "to determine the corresponding service endpoint and "
                "https://docs.microsoft.com/en-us/graph/api/application-get?view=graph-rest-1.0&tabs=http to build a "
                f"query request URL, such as 'https://graph.microsoft.com/beta/applications/{reg.client_id}']", 401,
            )
        from cryptography.hazmat.primitives.serialization import load_pem_public_key

        if self._expired(cert.end_date_time):
            raise LoginError(
                "invalid_client", 700027,
                "Client assertion contains an invalid signature. [Reason - The key used is expired., Thumbprint of key "
                f"used by client: '{_b64url_to_hex(cert.thumbprint_sha1_b64url)}', Found key 'End="
                f"{cert.end_date_time}']", 401,
            )
        if alg not in ("RS256", "PS256") or not verify_rsa_signature(
            load_pem_public_key(cert.public_key_pem), str(alg), signing_input, signature
        ):
            raise LoginError("invalid_client", 700027, "Client assertion failed signature validation.", 401)
        if claims.get("iss") != reg.client_id or claims.get("sub") != reg.client_id:
            raise LoginError("invalid_client", 700021,
                             "Client assertion application identifier doesn't match 'client_id' parameter.", 401)
        endpoints = {f"{self.base}/{tenant.tenant_id}/oauth2/v2.0/token", f"{self.base}/{tenant.domain}/oauth2/v2.0/token",
                     f"{self.base}/{tenant.tenant_id}/v2.0"}
        aud = claims.get("aud")
        auds = aud if isinstance(aud, list) else [aud]
        if not any(a in endpoints for a in auds):
            raise LoginError("invalid_client", 50027, "Invalid JWT token. The audience of the client assertion is "
                             "not the token endpoint of this tenant.", 401)
        now = self.now_fn()
        exp, nbf = claims.get("exp"), claims.get("nbf", claims.get("iat"))
        if not isinstance(exp, (int, float)) or exp + ASSERTION_SKEW_S <= now or (
            isinstance(nbf, (int, float)) and nbf - ASSERTION_SKEW_S > now
        ):
            raise LoginError("invalid_client", 700024, "Client assertion is not within its valid time range. "
                             f"Current time: {_timestamp(now)}.", 401)
        jti = claims.get("jti")
        if not isinstance(jti, str) or not jti:
            raise LoginError("invalid_client", 50027, "Invalid JWT token. The client assertion has no 'jti'.", 401)
        with self._lock:
            for k in [k for k, e in self._assertion_ids.items() if e + ASSERTION_SKEW_S <= now]:
                del self._assertion_ids[k]
            if jti in self._assertion_ids:
                raise LoginError("invalid_client", 50027,
                                 "Invalid JWT token. The client assertion's 'jti' was already used.", 401)
            self._assertion_ids[jti] = float(exp)

    # ---- token endpoint -----------------------------------------------------------------------------------------

    async def token(self, request: Request) -> Response:
        if request.method != "POST":
            return self.error_response(LoginError("invalid_request", 900561,
                                                  "The endpoint only accepts POST requests. Received a GET request."),
                                       request)
        try:
            form = {k: str(v) for k, v in (await request.form()).items()}
            return JSONResponse(self._token(request.path_params["tenant"], form, request),
                                headers={"Cache-Control": "no-store", "Pragma": "no-cache"})
        except LoginError as exc:
            log.info("token request refused: AADSTS%s %s", exc.aadsts, exc.error)
            return self.error_response(exc, request)

    def _token(self, segment: str, form: dict[str, str], request: Request) -> dict[str, Any]:
        grant_type = form.get("grant_type", "")
        if not grant_type:
            raise LoginError("invalid_request", 900144,
                             "The request body must contain the following parameter: 'grant_type'.")
        if segment in MULTI_TENANT_SEGMENTS:
            if grant_type == "client_credentials":
                raise LoginError(
                    "invalid_request", 90002,
                    f"Tenant '{segment}' not found. Client credentials need a tenant-specific endpoint: use the "
                    "tenant id or a verified domain instead of 'common' or 'organizations'.",
                )
            tenant = None
        else:
            tenant = self.resolve_tenant(segment)
        if grant_type == "client_credentials":
            assert tenant is not None
            return self._client_credentials(tenant, form, request)
        if grant_type == "authorization_code":
            return self._authorization_code(tenant, form, request)
        if grant_type == "refresh_token":
            return self._refresh_token(tenant, form, request)
        raise LoginError("unsupported_grant_type", 70003, "The app requested an unsupported grant type "
                         f"'{grant_type}'.")

    def _client_credentials(self, tenant: EmulatedTenant, form: dict[str, str], request: Request) -> dict[str, Any]:
        cid, basic = self.client_id_of(form, request)
        reg = self.find_registration(cid, tenant)
        azpacr = self.authenticate_client(reg, tenant, form, basic, required=True)
        if (missing := consent_error(tenant, reg)) is not None:  # a multi-tenant app no admin consented to here
            raise LoginError("invalid_client", 7000229, missing)
        self.check_enabled(tenant, reg)
        audience = self.resolve_app_scope(tenant, form.get("scope", ""))
        token = self.tokens.issue_app_token(tenant, reg, audience, azpacr=azpacr)
        claims = unverified_claims(token)
        lifetime = int(claims["exp"]) - int(claims["iat"])
        return {"token_type": "Bearer", "expires_in": lifetime, "ext_expires_in": lifetime, "access_token": token}

    def user_token_response(
        self, tenant: EmulatedTenant, reg: AppRegistration, user: dict[str, Any], scopes: list[str],
        requested: str | None, *, nonce: str | None, sid: str | None, azpacr: str = AZPACR_SECRET,
        client_info: bool = False,
    ) -> dict[str, Any]:
        """The token endpoint's answer for a signed-in user: `scopes` as granted at sign-in, `requested` the token
        request's own `scope` (it may pick another resource)."""
        resource, oidc = self.resolve_user_scopes(tenant, requested.split() if requested else scopes)
        if requested:  # offline_access/openid granted at sign-in stay granted on redemption
            oidc = list(dict.fromkeys(oidc + [s for s in scopes if s in OIDC_SCOPES]))
        granted = list(dict.fromkeys(oidc + resource.listed))
        issued = self.tokens.issue_user_tokens(
            tenant, reg, user, audience=resource.audience, scp=resource.scp, scopes=granted, nonce=nonce, sid=sid,
            azpacr=azpacr, resource_client_id=resource.client_id,
        )
        body: dict[str, Any] = {
            "token_type": "Bearer",
            "scope": " ".join((resource.listed or [f"{resource.audience}/{s}" for s in resource.scp]) + oidc),
            "expires_in": issued.expires_in,
            "ext_expires_in": issued.expires_in,
            "access_token": issued.access_token,
        }
        if issued.refresh_token:
            body["refresh_token"] = issued.refresh_token
        if issued.id_token:
            body["id_token"] = issued.id_token
        if client_info:
            body["client_info"] = b64url(json.dumps({"uid": str(user["id"]), "utid": tenant.tenant_id}).encode())
        return body

    def _code_record(self, code: str) -> AuthorizationCode:
        with self._lock:
            rec = self._codes.get(hashlib.sha256(code.encode()).hexdigest())
        if rec is None:
            raise LoginError("invalid_grant", 9002313, "Invalid request. Request is malformed or invalid.")
        return rec

    def _authorization_code(
        self, tenant: EmulatedTenant | None, form: dict[str, str], request: Request
    ) -> dict[str, Any]:
        code = form.get("code", "")
        if not code:
            raise LoginError("invalid_request", 900144, "The request body must contain the following parameter: 'code'.")
        rec = self._code_record(code)
        tenant, reg, azpacr = self._grant_client(tenant, rec.tenant_id, rec.client_id, form, request,
                                                 "Authorization Code")
        if rec.redeemed:
            raise _already_redeemed()
        if rec.expires_at <= self.now():
            raise _expired_grant()
        redirect_uri = form.get("redirect_uri", "")
        if redirect_uri != rec.redirect_uri:
            raise LoginError("invalid_grant", 500112, f"The reply address '{redirect_uri}' does not match the reply "
                             f"address '{rec.redirect_uri}' provided when requesting Authorization code.")
        verifier = form.get("code_verifier", "")
        if not verifier:
            raise LoginError("invalid_grant", 50148, "The code_verifier does not match the code_challenge supplied in "
                             "the authorization request for PKCE.")
        challenge = b64url(hashlib.sha256(verifier.encode("utf-8")).digest())
        if not _VERIFIER_RE.match(verifier) or not hmac.compare_digest(challenge, rec.code_challenge):
            raise LoginError("invalid_grant", 501481, "The Code_Verifier does not match the code_challenge supplied in "
                             "the authorization request.")
        user = self._active_user(tenant, reg, rec.user_id)
        with self._lock:
            if rec.redeemed:  # a concurrent redemption won
                raise _already_redeemed()
            rec.redeemed = True
        return self.user_token_response(tenant, reg, user, rec.scopes, form.get("scope"), nonce=rec.nonce,
                                         sid=rec.sid, azpacr=azpacr, client_info=form.get("client_info") == "1")

    def _grant_client(
        self, tenant: EmulatedTenant | None, grant_tenant_id: str, grant_client_id: str, form: dict[str, str],
        request: Request, what: str,
    ) -> tuple[EmulatedTenant, AppRegistration, str]:
        """A code or refresh token is redeemed by the client it was issued to, at its tenant (or common):
        (tenant, registration, azpacr) once the client has authenticated."""
        if tenant is not None and tenant.tenant_id != grant_tenant_id:
            raise LoginError("invalid_grant", 700005,
                             f"Provided {what} is intended to use against other tenant, thus rejected.")
        tenant = self.runtime.state.tenants[grant_tenant_id]
        cid, basic = self.client_id_of(form, request)
        if cid.lower() != grant_client_id.lower():
            raise LoginError("invalid_grant", 70000, "Provided grant is invalid or malformed.")
        reg = self.find_registration(cid, tenant)
        azpacr = self.authenticate_client(reg, tenant, form, basic, required=bool(reg.secrets or reg.certificates))
        return tenant, reg, azpacr

    def _active_user(self, tenant: EmulatedTenant, reg: AppRegistration, user_id: str) -> dict[str, Any]:
        """The user behind a code or refresh token, still allowed in: not deleted or disabled, app enabled."""
        with tenant.lock:
            user = tenant.users.get(user_id)
        if user is None:
            raise LoginError("invalid_grant", 50034, "The user account does not exist in the directory.")
        if user.get("accountEnabled") is False:
            raise LoginError("invalid_grant", 50057, "The user account is disabled.")
        self.check_enabled(tenant, reg)
        self.check_assignment(tenant, reg, user)
        return user

    def _refresh_token(self, tenant: EmulatedTenant | None, form: dict[str, str], request: Request) -> dict[str, Any]:
        token = form.get("refresh_token", "")
        if not token:
            raise LoginError("invalid_request", 900144,
                             "The request body must contain the following parameter: 'refresh_token'.")
        grant = self.tokens.refresh_grant(token)
        if grant is None:
            raise LoginError("invalid_grant", 9002313, "Invalid request. Request is malformed or invalid.")
        tenant, reg, azpacr = self._grant_client(tenant, grant.tenant_id, grant.client_id, form, request,
                                                 "refresh token")
        if grant.expires_at <= self.now():
            raise _expired_grant()
        user = self._active_user(tenant, reg, grant.user_id)
        return self.user_token_response(tenant, reg, user, list(grant.scopes), form.get("scope"), nonce=None,
                                         sid=grant.sid, azpacr=azpacr, client_info=form.get("client_info") == "1")

    # ---- authorize and sign-in ----------------------------------------------------------------------------------

    def _page(self, title: str, body: str, status: int = 200) -> HTMLResponse:
        doc = (
            "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{html.escape(title)}</title>"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            "<style>body{font-family:system-ui,sans-serif;max-width:28rem;margin:3rem auto;padding:0 1rem}"
            "label{display:block;margin-top:1rem}input{width:100%;padding:.4rem;font-size:1rem}"
            "button{margin-top:1.2rem;padding:.5rem 1.5rem;font-size:1rem}.error{color:#a80000}</style>"
            f"</head><body><main><h1>{html.escape(title)}</h1>{body}</main></body></html>"
        )
        return HTMLResponse(doc, status_code=status, headers={"Cache-Control": "no-store",
                                                               "X-Frame-Options": "DENY",
                                                               "Content-Security-Policy": "frame-ancestors 'none'"})

    def _error_page(self, exc: LoginError, request: Request) -> HTMLResponse:
        body = self.error_body(exc, _correlation_id(request))
        return self._page(
            "Sign in: something went wrong",
            f"<p class=\"error\" id=\"error\" role=\"alert\">{html.escape(body['error_description'])}</p>"
            f"<p id=\"error-code\">{html.escape(body['error'])}</p>",
            status=exc.status,
        )

    def _sign_in_form(self, segment: str, ctx: str, req: AuthorizationRequest, tenant_name: str,
                      username: str = "", error: str = "") -> HTMLResponse:
        err = f"<p class=\"error\" id=\"error\" role=\"alert\">{html.escape(error)}</p>" if error else ""
        body = (
            f"<p>Sign in to <strong>{html.escape(tenant_name)}</strong> (entra-mcp local test tenant).</p>{err}"
            f"<form method=\"post\" action=\"/{html.escape(segment)}/login\" id=\"signin\">"
            f"<input type=\"hidden\" name=\"ctx\" value=\"{html.escape(ctx)}\">"
            "<label for=\"username\">Email, phone, or Skype</label>"
            # type=text: guests' UPNs (x_y#EXT#@...) are not valid e-mail addresses for a browser's form validation
            f"<input id=\"username\" name=\"username\" type=\"text\" inputmode=\"email\" autocomplete=\"username\" "
            "required "
            f"value=\"{html.escape(username or req.login_hint)}\">"
            "<label for=\"password\">Password</label>"
            "<input id=\"password\" name=\"password\" type=\"password\" autocomplete=\"current-password\" required>"
            "<button id=\"submit\" type=\"submit\">Sign in</button></form>"
        )
        return self._page("Sign in to your account", body, status=200 if not error else 400)

    def _redirect_with(self, req_uri: str, params: dict[str, str], mode: str) -> Response:
        params = {k: v for k, v in params.items() if v is not None}
        if mode == "form_post":
            fields = "".join(
                f"<input type=\"hidden\" name=\"{html.escape(k)}\" value=\"{html.escape(v)}\">" for k, v in params.items()
            )
            return HTMLResponse(
                "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>Working...</title></head>"
                "<body onload=\"document.forms[0].submit()\">"
                f"<form method=\"post\" action=\"{html.escape(req_uri)}\">{fields}"
                "<noscript><button type=\"submit\">Continue</button></noscript></form></body></html>",
                headers={"Cache-Control": "no-store"},
            )
        if mode == "fragment":
            return RedirectResponse(f"{req_uri}#{urlencode(params)}", status_code=302)
        sep = "&" if urlsplit(req_uri).query else "?"
        return RedirectResponse(f"{req_uri}{sep}{urlencode(params)}", status_code=302)

    def _redirect_error(self, exc: LoginError, redirect_uri: str, state: str | None, mode: str,
                        request: Request) -> Response:
        body = self.error_body(exc, _correlation_id(request))
        params = {"error": exc.error, "error_description": body["error_description"], "error_uri": body["error_uri"]}
        if state is not None:
            params["state"] = state
        return self._redirect_with(redirect_uri, params, mode)

    async def authorize(self, request: Request) -> Response:
        segment = request.path_params["tenant"]
        q = request.query_params
        try:
            tenant = None if segment in MULTI_TENANT_SEGMENTS else self.resolve_tenant(segment)
            client_id = q.get("client_id", "")
            if not client_id:
                raise LoginError("invalid_request", 900144,
                                 "The request body must contain the following parameter: 'client_id'.")
            reg = self._registration_anywhere(client_id) if tenant is None else self.find_registration(client_id, tenant)
            redirect_uri = q.get("redirect_uri", "")
            if redirect_uri not in reg.redirect_uris:
                raise LoginError(
                    "invalid_request", 50011,
                    f"The redirect URI '{redirect_uri}' specified in the request does not match the redirect URIs "
                    f"configured for the application '{reg.client_id}'. Make sure the redirect URI sent in the request "
                    "matches one added to your application in the Azure portal. Navigate to "
                    "https://aka.ms/redirectUriMismatchError to learn more about how to fix this.",
                )
        except LoginError as exc:
            log.info("authorize refused before redirect: AADSTS%s", exc.aadsts)
            return self._error_page(exc, request)
        state = q.get("state")
        mode = q.get("response_mode", "query")
        if mode not in ("query", "form_post", "fragment"):
            return self._redirect_error(LoginError("invalid_request", 900144, "The response_mode parameter is not "
                                                   "valid: use query, fragment or form_post."), redirect_uri, state,
                                        "query", request)
        try:
            if q.get("response_type") != "code":
                raise LoginError("unsupported_response_type", 700054,
                                 f"response_type '{q.get('response_type', '')}' is not enabled for the application.")
            challenge = q.get("code_challenge", "")
            if not challenge:
                raise LoginError("invalid_request", 9002325,
                                 "Proof Key for Code Exchange is required for cross-origin authorization code redemption.")
            if q.get("code_challenge_method") != "S256":
                raise LoginError("invalid_request", 9002325, "Proof Key for Code Exchange must use "
                                 "code_challenge_method=S256.")
            scopes = q.get("scope", "").split()
            if not scopes:
                raise LoginError("invalid_request", 900144,
                                 "The request body must contain the following parameter: 'scope'.")
            if tenant is not None:
                self.resolve_user_scopes(tenant, scopes)
            if q.get("prompt") == "none":
                raise LoginError("login_required", 50058, "A silent sign-in request was sent but no user is signed in.")
        except LoginError as exc:
            return self._redirect_error(exc, redirect_uri, state, mode, request)
        ctx = secrets.token_urlsafe(32)
        req = AuthorizationRequest(segment, reg.client_id, redirect_uri, scopes, state, q.get("nonce"), challenge,
                                   mode, q.get("login_hint", ""), self.now() + SIGN_IN_PAGE_LIFETIME_S)
        with self._lock:
            now = self.now()
            for k in [k for k, p in self._pending.items() if p.expires_at <= now]:
                del self._pending[k]
            self._pending[ctx] = req
        name = tenant.display_name if tenant is not None else "your organization"
        return self._sign_in_form(segment, ctx, req, name)

    def _registration_anywhere(self, client_id: str) -> AppRegistration:
        for t in self.runtime.state.tenants.values():
            reg = t.registrations.get(client_id.lower()) or t.registrations.get(client_id)
            if reg is not None:
                return reg
        raise LoginError(
            "unauthorized_client", 700016,
            f"Application with identifier '{client_id}' was not found in the directory 'common'. This can happen if "
            "the application has not been installed by the administrator of the tenant or consented to by any user in "
            "the tenant. You may have sent your authentication request to the wrong tenant.",
        )

    def _find_user(self, req: AuthorizationRequest, username: str) -> tuple[EmulatedTenant, dict[str, Any]]:
        if req.tenant_segment in MULTI_TENANT_SEGMENTS:
            candidates = list(self.runtime.state.tenants.values())
        else:
            candidates = [self.resolve_tenant(req.tenant_segment)]
        for t in candidates:
            with t.lock:
                user = t.user_by_upn(username)
            if user is not None:
                return t, user
        where = candidates[0].display_name if len(candidates) == 1 else "organization's"
        raise LoginError(
            "invalid_grant", 50034,
            f"The user account {username} does not exist in the {where} directory. To sign into this application, "
            "the account must be added to the directory.",
        )

    async def sign_in(self, request: Request) -> Response:
        segment = request.path_params["tenant"]
        form = {k: str(v) for k, v in (await request.form()).items()}
        ctx = form.get("ctx", "")
        with self._lock:
            req = self._pending.get(ctx)
        if req is None or req.expires_at <= self.now() or req.tenant_segment != segment:
            return self._error_page(LoginError("invalid_request", 50058, "Your sign-in page expired or was already "
                                               "used. Start the sign-in again from the application."), request)
        username, password = form.get("username", "").strip(), form.get("password", "")
        try:
            tenant, user = self._find_user(req, username)
            reg = self.find_registration(req.client_id, tenant)
            if not hmac.compare_digest(tenant.password_for(str(user["id"])).encode(), password.encode()):
                raise LoginError("invalid_grant", 50126,
                                 "Error validating credentials due to invalid username or password.")
        except LoginError as exc:
            log.info("sign-in refused: AADSTS%s", exc.aadsts)
            if exc.aadsts == 700016:
                return self._error_page(exc, request)
            name = req.tenant_segment if req.tenant_segment in MULTI_TENANT_SEGMENTS else \
                self.resolve_tenant(req.tenant_segment).display_name
            return self._sign_in_form(segment, ctx, req, name, username, self.error_body(
                exc, _correlation_id(request))["error_description"])
        if user.get("accountEnabled") is False:
            return self._error_page(LoginError(
                "invalid_grant", 50057, "The user account is disabled. The user object in Active Directory backing "
                "this account has been disabled. An admin can re-enable this account through PowerShell."), request)
        try:
            self.check_enabled(tenant, reg)
            self.check_assignment(tenant, reg, user)
        except LoginError as exc:
            log.info("sign-in refused: AADSTS%s", exc.aadsts)
            return self._error_page(exc, request)
        with self._lock:
            if self._pending.pop(ctx, None) is None:
                return self._error_page(LoginError("invalid_request", 50058, "Your sign-in page was already used."),
                                        request)
        code = "1.A" + secrets.token_urlsafe(48)
        sid = str(uuid.uuid4())
        rec = AuthorizationCode(tenant.tenant_id, reg.client_id, req.redirect_uri, str(user["id"]), req.scopes,
                                req.code_challenge, req.nonce, sid, self.now() + CODE_LIFETIME_S)
        with self._lock:
            now = self.now()
            for k in [k for k, c in self._codes.items() if c.expires_at + CODE_LIFETIME_S <= now]:
                del self._codes[k]
            self._codes[hashlib.sha256(code.encode()).hexdigest()] = rec
        log.info("user signed in to tenant %s for app %s", tenant.tenant_id, reg.client_id)
        params = {"code": code}
        if req.state is not None:
            params["state"] = req.state
        params["session_state"] = sid
        return self._redirect_with(req.redirect_uri, params, req.response_mode)

    async def logout(self, request: Request) -> Response:
        segment = request.path_params["tenant"]
        target = request.query_params.get("post_logout_redirect_uri", "")
        tenants = list(self.runtime.state.tenants.values()) if segment in MULTI_TENANT_SEGMENTS else [
            t for t in [self.runtime.state.resolve(segment)] if t is not None]
        registered = {u for t in tenants for r in t.registrations.values() for u in r.redirect_uris}
        if target and target in registered:
            state = request.query_params.get("state")
            if state:
                return self._redirect_with(target, {"state": state}, "query")
            return RedirectResponse(target, status_code=302)
        return self._page("You signed out of your account",
                          "<p id=\"signed-out\">It's a good idea to close all browser windows.</p>")

    # ---- discovery routes ---------------------------------------------------------------------------------------

    async def _tenant_document(self, request: Request, build: Callable[[str], dict[str, Any]]) -> Response:
        try:
            return JSONResponse(build(request.path_params["tenant"]))
        except LoginError as exc:
            exc.error = "invalid_tenant"  # what Entra's discovery endpoints call an unknown tenant
            return self.error_response(exc, request)

    def jwks_document(self, segment: str) -> dict[str, Any]:
        return self.tokens.jwks(None if segment in MULTI_TENANT_SEGMENTS else self.resolve_tenant(segment).tenant_id)

    async def discovery(self, request: Request) -> Response:
        return await self._tenant_document(request, self.openid_configuration)

    async def discovery_v1(self, request: Request) -> Response:
        return await self._tenant_document(request, self.openid_configuration_v1)

    async def keys(self, request: Request) -> Response:
        return await self._tenant_document(request, self.jwks_document)

    async def userinfo(self, request: Request) -> Response:
        """Graph's /oidc/userinfo (the discovery document's userinfo_endpoint): the signed-in user's basic profile
        for a delegated Graph token."""
        auth = request.headers.get("authorization", "")
        try:
            if auth[:7].lower() != "bearer ":
                raise TokenRejected("No bearer token.")
            claims = self.tokens.verify_access_token(auth[7:].strip(), audience=self.base)
            tenant = self.runtime.state.tenants[claims["tid"]]
            with tenant.lock:
                user = tenant.users.get(str(claims.get("oid", ""))) if "scp" in claims else None
            if user is None:
                raise TokenRejected("The token does not belong to a signed-in user.")
        except TokenRejected as exc:
            return JSONResponse({"error": {"code": "InvalidAuthenticationToken", "message": exc.reason}},
                                status_code=401, headers={"WWW-Authenticate": 'Bearer error="invalid_token"'})
        info = {"sub": claims["sub"], "name": user.get("displayName"), "family_name": user.get("surname"),
                "given_name": user.get("givenName"), "picture": f"{self.base}/v1.0/me/photo/$value"}
        if user.get("mail"):
            info["email"] = user["mail"]
        return JSONResponse({k: v for k, v in info.items() if v is not None})

    async def instance_discovery(self, request: Request) -> Response:
        endpoint = request.query_params.get("authorization_endpoint", "")
        parts = urlsplit(endpoint).path.split("/")
        tenant = parts[1] if len(parts) > 1 and parts[1] else "common"
        host = urlsplit(self.base).netloc
        return JSONResponse({
            "tenant_discovery_endpoint": f"{self.base}/{tenant}/v2.0/.well-known/openid-configuration",
            "api-version": "1.1",
            "metadata": [{"preferred_network": host, "preferred_cache": host, "aliases": [host]}],
        })

    def routes(self) -> list[BaseRoute]:
        e = self._endpoint
        return [
            Route("/common/discovery/instance", e("instance", self.instance_discovery), methods=["GET"]),
            Route("/oidc/userinfo", e("userinfo", self.userinfo), methods=["GET", "POST"]),
            Route("/{tenant}/v2.0/.well-known/openid-configuration", e("discovery", self.discovery), methods=["GET"]),
            Route("/{tenant}/.well-known/openid-configuration", e("discovery", self.discovery_v1), methods=["GET"]),
            Route("/{tenant}/discovery/v2.0/keys", e("jwks", self.keys), methods=["GET"]),
            Route("/{tenant}/discovery/keys", e("jwks", self.keys), methods=["GET"]),
            Route("/{tenant}/oauth2/v2.0/token", e("token", self.token), methods=["GET", "POST"]),
            Route("/{tenant}/oauth2/v2.0/authorize", e("authorize", self.authorize), methods=["GET"]),
            Route("/{tenant}/login", e("sign_in", self.sign_in), methods=["POST"]),
            Route("/{tenant}/oauth2/v2.0/logout", e("logout", self.logout), methods=["GET", "POST"]),
        ]


def _already_redeemed() -> LoginError:
    return LoginError("invalid_grant", 54005, "OAuth2 Authorization code was already redeemed, please retry with a new "
                      "valid code or use an existing refresh token.")


def _expired_grant() -> LoginError:
    return LoginError("invalid_grant", 70008, "The provided authorization code or refresh token has expired due to "
                      "inactivity. Send a new interactive authorization request for this user and resource.")


def _b64url_to_hex(text: str) -> str:
    return b64url_decode(text).hex().upper()


__all__ = ["CODE_LIFETIME_S", "LOGIN_ENDPOINT_KINDS", "LoginError", "LoginHost"]
