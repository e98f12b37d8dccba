"""The authorization server's state: clients, pending requests, codes and tokens, over the SessionStore API.

Implements the MCP SDK's `OAuthAuthorizationServerProvider` protocol (mcp.server.auth.provider); the SDK's handlers
(mcp.server.auth.handlers) parse and check the requests (response_type, PKCE S256 and its verification, redirect URI
against the client, code expiry and client binding, refresh scope narrowing) and call this. What is ours:

- every record lives in the SessionStore (hashed keys, an expiry each, `take` for single use), so it survives a
  restart and moves with the store (diskcache today, Redis when [server.store] names one);
- tokens are opaque 256-bit random strings, never JWTs: a lookup is one store read anyway (revocation must be
  immediate), so a signature would add key management and buy nothing;
- one sign-in and consent opens a token *family*: its record is what every access and refresh token of it needs
  alive, so revoking (the revocation endpoint, a replayed code, a reused refresh token) is one delete;
- refresh tokens rotate: each is single use, the used one stays behind as a tombstone, and presenting it again
  revokes the whole family (OAuth 2.1 section 4.3.1, RFC 9700 section 4.14.2);
- an authorization code is single use: the first redemption takes it; a replay finds the tombstone and revokes
  the family issued from it (RFC 6749 section 4.1.2).
"""

from __future__ import annotations

import contextvars
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from mcp.server.auth.provider import (
    AccessToken,
    AuthorizationCode,
    AuthorizationParams,
    AuthorizeError,
    OAuthAuthorizationServerProvider,
    RefreshToken,
    RegistrationError,
    TokenError,
)
from mcp.shared.auth import OAuthClientInformationFull, OAuthToken

from entra_mcp.logs import get_logger
from entra_mcp.mirror.session_store import SessionRecords
from entra_mcp.oauth.clients import (
    MAX_REDIRECT_URIS,
    Client,
    MetadataDocuments,
    redirect_uri_problem,
    secret_hash,
)
from entra_mcp.oidc.validate import Identity

log = get_logger("oauth.provider")

NS_CLIENT = "oauth.client"
NS_REQUEST = "oauth.request"
NS_CODE = "oauth.code"
NS_CODE_USED = "oauth.code-used"
NS_ACCESS = "oauth.access"
NS_REFRESH = "oauth.refresh"
NS_FAMILY = "oauth.family"
NS_CONSENT = "oauth.consent"

REQUEST_SECONDS = 600.0  # sign-in plus consent
CODE_SECONDS = 60.0  # the redirect to the client and its token request are automatic
MAX_TOKEN_CHARS = 256

# The browser binding of a pending authorization request, set by the /oauth/authorize route around the SDK handler.
browser_binding: contextvars.ContextVar[str | None] = contextvars.ContextVar("oauth_browser_binding", default=None)


def new_token() -> str:
    return secrets.token_urlsafe(32)


def canonical_resource(uri: str) -> str:
    """RFC 8707 / RFC 3986 comparison form: scheme and host in lower case, no fragment, no trailing slash."""
    p = urlsplit(uri.strip())
    return urlunsplit((p.scheme.lower(), p.netloc.lower(), p.path.rstrip("/"), p.query, ""))


@dataclass(frozen=True)
class Grant:
    """What a valid access token stands for: the person (tid, oid), the client, the resource and the scopes."""

    tid: str
    oid: str
    name: str | None
    preferred_username: str | None
    client_id: str
    scopes: tuple[str, ...]
    resource: str
    expires_at: float
    roles: tuple[str, ...] = ()  # the sign-in's ID token `roles` and `groups` (oidc/validate.py Identity)
    groups: tuple[str, ...] = ()
    groups_overage: bool = False


class Code(AuthorizationCode):
    family: str
    identity: dict[str, Any]
    consent: str | None = None


class Refresh(RefreshToken):
    family: str
    identity: dict[str, Any]


class Access(AccessToken):
    family: str


class AuthorizationServer(OAuthAuthorizationServerProvider[Code, Refresh, Access]):
    """OAuthAuthorizationServerProvider over a SessionStore (see the module docstring)."""

    def __init__(
        self,
        store: SessionRecords,
        *,
        issuer: str,
        resource: str,
        scopes: list[str],
        consent_url: str,
        documents: MetadataDocuments | None,
        dynamic_registration: bool,
        access_seconds: float,
        refresh_seconds: float,
        client_seconds: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.issuer = issuer
        self.resource = resource
        self.scopes = list(scopes)
        self.consent_url = consent_url
        self.documents = documents
        self.dynamic_registration = dynamic_registration
        self.access_seconds = access_seconds
        self.refresh_seconds = refresh_seconds
        self.client_seconds = client_seconds
        self._clock = clock
        # Why the person of a grant may no longer use this server (tenant no longer allowed, no access rule left), or
        # None: asked at every refresh-token grant (oauth/routes.py sets it).
        self.admit: Callable[[Identity], Awaitable[str | None]] | None = None

    # -- clients ---------------------------------------------------------------------------------------------
    async def get_client(self, client_id: str) -> OAuthClientInformationFull | None:
        if not client_id or len(client_id) > 512:
            return None
        if client_id.startswith("https://"):
            return await self.documents.get(client_id) if self.documents is not None else None
        if not self.dynamic_registration:
            return None
        record = self.store.get(NS_CLIENT, client_id)
        if record is None:
            return None
        return Client.model_validate({**record, "scope": " ".join(self.scopes)})

    async def register_client(self, client_info: OAuthClientInformationFull) -> None:
        uris = [str(u) for u in client_info.redirect_uris or ()]
        if not uris or len(uris) > MAX_REDIRECT_URIS:
            raise RegistrationError("invalid_redirect_uri", f"register 1 to {MAX_REDIRECT_URIS} redirect_uris")
        for uri in uris:
            problem = redirect_uri_problem(uri)
            if problem:
                raise RegistrationError("invalid_redirect_uri", problem)
        if client_info.client_name is not None and len(client_info.client_name) > 200:
            raise RegistrationError("invalid_client_metadata", "client_name is longer than 200 characters")
        record = client_info.model_dump(mode="json", exclude_none=True)
        if client_info.client_secret:  # kept as its hash; the client receives it once, in this response
            record["client_secret"] = secret_hash(client_info.client_secret)
        self.store.put(NS_CLIENT, client_info.client_id, record, ttl=self.client_seconds)
        log.info("registered OAuth client %s (%.80r)", client_info.client_id, client_info.client_name)

    # -- authorization ---------------------------------------------------------------------------------------
    def resource_ok(self, resource: str | None) -> bool:
        """A `resource` indicator names this server's /mcp (or is absent: then the token is for /mcp anyway)."""
        return resource is None or canonical_resource(resource) == canonical_resource(self.resource)

    async def authorize(self, client: OAuthClientInformationFull, params: AuthorizationParams) -> str:
        if not self.resource_ok(params.resource):
            raise AuthorizeError("invalid_target", f"this server issues tokens only for the resource {self.resource}")
        binding = browser_binding.get()
        if binding is None:
            raise AuthorizeError("server_error", "the authorization request has no browser binding")
        request_id = new_token()
        record = {
            "client_id": client.client_id,
            "redirect_uri": str(params.redirect_uri),
            "redirect_explicit": params.redirect_uri_provided_explicitly,
            "code_challenge": params.code_challenge,
            "state": params.state,
            "scopes": params.scopes or self.scopes,
            "resource": self.resource,
            "binding": secret_hash(binding),
        }
        self.store.put(NS_REQUEST, request_id, record, ttl=REQUEST_SECONDS)
        return f"{self.consent_url}?request={request_id}"

    def pending(self, request_id: str | None) -> dict[str, Any] | None:
        if not request_id or len(request_id) > MAX_TOKEN_CHARS:
            return None
        return self.store.get(NS_REQUEST, request_id)

    def remember_consent_page(self, request_id: str, record: dict[str, Any]) -> None:
        self.store.put(NS_REQUEST, request_id, record, ttl=REQUEST_SECONDS)

    def take_pending(self, request_id: str | None) -> dict[str, Any] | None:
        if not request_id or len(request_id) > MAX_TOKEN_CHARS:
            return None
        return self.store.take(NS_REQUEST, request_id)

    # -- remembered consent ----------------------------------------------------------------------------------
    @staticmethod
    def consent_key(identity: dict[str, Any], client_id: str, redirect_uri: str, scopes: list[str]) -> str:
        """What an approval covers: this person, this client, its redirect host, these scopes (stored hashed)."""
        host = (urlsplit(redirect_uri).hostname or "").lower()
        return "|".join((str(identity["tid"]).lower(), str(identity["oid"]).lower(), client_id, host,
                         " ".join(sorted(scopes))))

    def remember_consent(self, key: str, seconds: float) -> None:
        self.store.put(NS_CONSENT, key, {"at": self._clock()}, ttl=seconds)

    def consent_remembered(self, key: str) -> bool:
        return self.store.get(NS_CONSENT, key) is not None

    def issue_code(self, request: dict[str, Any], identity: dict[str, Any], *, consent: str | None = None) -> str:
        """After consent: a single-use code for the client, and the family its tokens will belong to. `consent`: the
        remembered approval it came from (or created); revoking the family forgets that approval."""
        code = new_token()
        record = {**request, "identity": identity, "family": new_token(), "expires_at": self._clock() + CODE_SECONDS,
                  "consent": consent}
        self.store.put(NS_CODE, code, record, ttl=CODE_SECONDS)
        return code

    async def load_authorization_code(self, client: OAuthClientInformationFull, authorization_code: str) -> Code | None:
        if len(authorization_code) > MAX_TOKEN_CHARS:
            return None
        record = self.store.take(NS_CODE, authorization_code)
        if record is None:
            used = self.store.get(NS_CODE_USED, authorization_code)
            if used is not None:
                log.warning("an authorization code was presented a second time: the tokens issued for it are revoked")
                self.revoke_family(str(used["family"]))
            return None
        self.store.put(NS_CODE_USED, authorization_code, {"family": record["family"]}, ttl=REQUEST_SECONDS)
        return Code(
            code=authorization_code,
            scopes=list(record["scopes"]),
            expires_at=float(record["expires_at"]),
            client_id=str(record["client_id"]),
            code_challenge=str(record["code_challenge"]),
            redirect_uri=record["redirect_uri"],
            redirect_uri_provided_explicitly=bool(record["redirect_explicit"]),
            resource=record.get("resource"),
            subject=f"{record['identity']['tid']}/{record['identity']['oid']}",
            family=str(record["family"]),
            identity=dict(record["identity"]),
            consent=record.get("consent"),
        )

    async def exchange_authorization_code(self, client: OAuthClientInformationFull, authorization_code: Code) -> OAuthToken:
        now = self._clock()
        family = authorization_code.family
        self.store.put(NS_FAMILY, family, {"client_id": client.client_id, "expires_at": now + self.refresh_seconds,
                                           "tid": authorization_code.identity["tid"],
                                           "oid": authorization_code.identity["oid"],
                                           "consent": authorization_code.consent},
                       ttl=self.refresh_seconds)
        return self._issue(client.client_id, family, authorization_code.identity, authorization_code.scopes,
                           family_expires=now + self.refresh_seconds)

    def _issue(self, client_id: str, family: str, identity: dict[str, Any], scopes: list[str], *,
               family_expires: float) -> OAuthToken:
        now = self._clock()
        access, refresh = new_token(), new_token()
        common = {"client_id": client_id, "family": family, "identity": identity, "scopes": list(scopes),
                  "resource": self.resource}
        self.store.put(NS_ACCESS, access, {**common, "expires_at": now + self.access_seconds}, ttl=self.access_seconds)
        self.store.put(NS_REFRESH, refresh, {**common, "expires_at": family_expires}, ttl=max(family_expires - now, 1))
        return OAuthToken(access_token=access, token_type="Bearer", expires_in=int(self.access_seconds),
                          scope=" ".join(scopes), refresh_token=refresh)

    # -- refresh ---------------------------------------------------------------------------------------------
    def _family_alive(self, family: str) -> dict[str, Any] | None:
        record = self.store.get(NS_FAMILY, family)
        if record is None or float(record.get("expires_at", 0)) <= self._clock():
            return None
        return record

    async def load_refresh_token(self, client: OAuthClientInformationFull, refresh_token: str) -> Refresh | None:
        if len(refresh_token) > MAX_TOKEN_CHARS:
            return None
        record = self.store.get(NS_REFRESH, refresh_token)
        if record is None:
            return None
        if record.get("rotated"):
            log.warning("a refresh token was used a second time: its whole token family is revoked")
            self.revoke_family(str(record["family"]))
            return None
        if self._family_alive(str(record["family"])) is None:
            return None
        return Refresh(token=refresh_token, client_id=str(record["client_id"]), scopes=list(record["scopes"]),
                       expires_at=int(record["expires_at"]), resource=record.get("resource"),
                       subject=f"{record['identity']['tid']}/{record['identity']['oid']}",
                       family=str(record["family"]), identity=dict(record["identity"]))

    async def exchange_refresh_token(self, client: OAuthClientInformationFull, refresh_token: Refresh,
                                     scopes: list[str]) -> OAuthToken:
        family = refresh_token.family
        if self.admit is not None:
            identity = Identity.from_record(refresh_token.identity)
            reason = await self.admit(identity)
            if reason:
                log.warning("refresh refused for tid=%s oid=%s (%s): its token family is revoked", identity.tid,
                            identity.oid, reason)
                self.revoke_family(family)
                raise TokenError("invalid_grant", f"{reason}; every token of this sign-in is revoked")
        record = self.store.take(NS_REFRESH, refresh_token.token)  # single use, even against a concurrent twin
        if record is None or record.get("rotated"):
            log.warning("a refresh token was used a second time: its whole token family is revoked")
            self.revoke_family(family)
            raise TokenError("invalid_grant", "refresh token already used: every token of this sign-in is revoked")
        fam = self._family_alive(family)
        if fam is None:
            raise TokenError("invalid_grant", "refresh token revoked or expired")
        family_expires = float(fam["expires_at"])
        remaining = max(family_expires - self._clock(), 1)
        self.store.put(NS_REFRESH, refresh_token.token, {"rotated": True, "family": family}, ttl=remaining)
        return self._issue(client.client_id, family, refresh_token.identity, scopes, family_expires=family_expires)

    # -- access tokens and revocation ------------------------------------------------------------------------
    async def load_access_token(self, token: str) -> Access | None:
        record = self._access_record(token)
        if record is None:
            return None
        return Access(token=token, client_id=str(record["client_id"]), scopes=list(record["scopes"]),
                      expires_at=int(record["expires_at"]), resource=record.get("resource"),
                      subject=f"{record['identity']['tid']}/{record['identity']['oid']}", family=str(record["family"]))

    def _access_record(self, token: str) -> dict[str, Any] | None:
        if not token or len(token) > MAX_TOKEN_CHARS:
            return None
        record = self.store.get(NS_ACCESS, token)
        if record is None or float(record.get("expires_at", 0)) <= self._clock():
            return None
        if self._family_alive(str(record["family"])) is None:
            return None
        return record

    def verify(self, token: str) -> Grant | None:
        """The grant behind a bearer token on /mcp, or None (unknown, expired, revoked)."""
        record = self._access_record(token)
        if record is None:
            return None
        i = Identity.from_record(record["identity"])
        return Grant(tid=i.tid, oid=i.oid, name=i.name, preferred_username=i.preferred_username,
                     client_id=str(record["client_id"]), scopes=tuple(record["scopes"]), resource=str(record["resource"]),
                     expires_at=float(record["expires_at"]), roles=i.roles, groups=i.groups,
                     groups_overage=i.groups_overage)

    async def revoke_token(self, token: Access | Refresh) -> None:
        self.revoke_family(token.family)

    def revoke_family(self, family: str) -> None:
        """Every access and refresh token of this sign-in stops working at once, and the remembered approval it came
        from is forgotten (the next authorization of that client shows the consent page again)."""
        record = self.store.take(NS_FAMILY, family)
        if record is not None:
            if record.get("consent"):
                self.store.delete(NS_CONSENT, str(record["consent"]))
            log.info("an OAuth token family was revoked")


__all__ = ["AuthorizationServer", "Grant", "browser_binding", "canonical_resource", "new_token"]
