"""Token validation: the only JOSE code in entra-mcp (docs/sign-in.md rules 1-8).

Two kinds of tokens reach us from outside and both are validated here, explicitly, claim by claim:
- ID tokens, after the authorization-code redemption (`validate_id_token`), and
- bearer access tokens on the `/mcp` endpoint (`validate_access_token`).

What is checked, in order: size and shape; header `alg` pinned to RS256 (`none`, HS256 and every other alg refused
before any key is touched); `kid` as an opaque, length- and charset-limited lookup key into the tenant's JWKS (the
header's `jku`, `x5u`, `jwk` and `x5c` are never read); the RS256 signature with joserfc and a registry that knows
RS256 only; then the claims: `iss` exact (multi-tenant: `tid` allow-listed and equal to the issuer's tenant segment;
v1 `sts.windows.net` tokens refused), `aud`, `exp`/`nbf`/`iat` with at most 60 s leeway, `tid`/`oid` present, and
the kind-specific ones (`nonce` for ID tokens; `scp`/app-only rules for access tokens).

The identity of a person is (tid, oid) and nothing else: never email, `preferred_username` or `upn`.
The clock is a parameter (`now=`), so time-dependent rules are tested without sleeping.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from typing import Any, TypeGuard

from joserfc import jws
from joserfc.errors import JoseError
from joserfc.jws import JWSRegistry

from entra_mcp.errors import AuthError
from entra_mcp.oidc.provider import GUID_RE, KID_RE, OidcProvider

ALGORITHMS = ("RS256",)
MAX_TOKEN_CHARS = 16 * 1024
MAX_LEEWAY = 60.0
# The longest lifetime Entra gives a token: 60-90 min by default, up to 1 day by a lifetime policy, 24-28 h for a
# CAE-capable client (docs/graph-facts-tokens.md). A token valid for longer was not issued by Entra as configured.
MAX_LIFETIME_SECONDS = 28 * 3600.0
# Claims only ID tokens carry (docs/graph-facts-tokens.md): a token with one is not an access token.
_ID_TOKEN_ONLY = ("nonce", "at_hash", "c_hash")
_V1_ISSUER_PREFIX = "https://sts.windows.net/"
# A registry that knows RS256 only: even if the pre-check below were bypassed, joserfc could not pick another alg.
# Header parameters we do not know are tolerated (and never read); headers up to 2 KB (Entra's are ~100 bytes).
_REGISTRY = JWSRegistry(algorithms=list(ALGORITHMS), strict_check_header=False)
_REGISTRY.max_header_length = 2048


class TokenRejected(AuthError):
    """A token failed validation. `reason` is a stable machine code; the message never includes the token."""

    code = "INVALID_TOKEN"

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message, code=self.code)
        self.reason = reason


class InsufficientScope(TokenRejected):
    """A valid token that lacks the scope this endpoint requires (HTTP 403, not 401)."""

    code = "INSUFFICIENT_SCOPE"


@dataclass(frozen=True)
class Identity:
    """Who a validated token speaks for: (tid, oid). Display claims ride along but never identify."""

    tid: str
    oid: str
    name: str | None = None
    preferred_username: str | None = None
    # What the token said for [server.access] rules (docs/graph-facts-token-claims.md): the `roles` claim (app roles
    # of the application the token was issued to), the `groups` claim (group object ids), and whether the groups were
    # left out for an overage (more than 200: `_claim_names.groups` or `hasgroups`), when `groups` is not the truth.
    roles: tuple[str, ...] = ()
    groups: tuple[str, ...] = ()
    groups_overage: bool = False

    @property
    def key(self) -> tuple[str, str]:
        return (self.tid.lower(), self.oid.lower())

    def as_dict(self) -> dict[str, str | None]:
        return {"tid": self.tid, "oid": self.oid, "name": self.name, "preferredUsername": self.preferred_username}

    def record(self) -> dict[str, Any]:
        """The identity as stored with a session or an OAuth grant (from_record reads it back)."""
        out: dict[str, Any] = dict(self.as_dict())
        if self.roles:
            out["roles"] = list(self.roles)
        if self.groups:
            out["groups"] = list(self.groups)
        if self.groups_overage:
            out["groupsOverage"] = True
        return out

    @classmethod
    def from_record(cls, r: dict[str, Any]) -> "Identity":
        def strings(v: Any) -> tuple[str, ...]:
            return tuple(str(x) for x in v[:MAX_GROUPS]) if isinstance(v, list) else ()

        return cls(tid=r["tid"], oid=r["oid"], name=r.get("name"), preferred_username=r.get("preferredUsername"),
                   roles=strings(r.get("roles")), groups=strings(r.get("groups")),
                   groups_overage=bool(r.get("groupsOverage")))


MAX_GROUPS = 1000  # more than Entra puts in any token (200); a longer list is cut, never trusted to be complete


def group_claims(claims: dict[str, Any]) -> tuple[tuple[str, ...], tuple[str, ...], bool]:
    """(roles, groups, overage) of a token's claims. Overage: `_claim_names` names `groups` (the JWT form, over 200
    groups) or `hasgroups` is true (the implicit flow's form): the token then carries no usable groups."""
    roles = claims.get("roles")
    groups = claims.get("groups")
    names = claims.get("_claim_names")
    overage = (isinstance(names, dict) and "groups" in names) or claims.get("hasgroups") is True
    return (tuple(str(r) for r in roles[:MAX_GROUPS] if isinstance(r, str)) if isinstance(roles, list) else (),
            tuple(str(g) for g in groups[:MAX_GROUPS] if isinstance(g, str)) if isinstance(groups, list) and not overage
            else (),
            overage)


@dataclass(frozen=True)
class ValidatedToken:
    identity: Identity
    issuer: str
    audience: str
    expires_at: int
    client_app_id: str | None  # azp (v2) of the app that obtained the token
    scopes: frozenset[str] = frozenset()
    roles: frozenset[str] = frozenset()
    app_only: bool = False
    claims: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)


def _reject(reason: str, message: str) -> TokenRejected:
    return TokenRejected(reason, message)


class TokenValidator:
    """Validates Entra ID v2 tokens against one `OidcProvider` (its issuers and its JWKS)."""

    def __init__(
        self,
        provider: OidcProvider,
        *,
        leeway: float = 60.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not 0 <= leeway <= MAX_LEEWAY:
            raise ValueError(f"leeway must be between 0 and {MAX_LEEWAY} seconds")
        self.provider = provider
        self.leeway = leeway
        self._clock = clock

    # -- public entry points ---------------------------------------------------------------------------------
    async def validate_id_token(
        self, token: str, *, client_id: str, nonce: str, now: float | None = None
    ) -> ValidatedToken:
        """An ID token from the token endpoint: signature, issuer, aud == client_id, times, tid/oid, nonce."""
        claims = await self._verified_claims(token)
        result = self._check_common(claims, audiences=(client_id,), now=now)
        got_nonce = claims.get("nonce")
        if not isinstance(got_nonce, str) or not nonce or got_nonce != nonce:
            raise _reject("nonce", "the ID token's nonce does not match the one this sign-in sent")
        return result

    async def validate_access_token(
        self,
        token: str,
        *,
        audience: str,
        required_scopes: Collection[str] = (),
        allow_app_tokens: bool = False,
        now: float | None = None,
    ) -> ValidatedToken:
        """A bearer access token for this API: aud is `audience` or `api://{audience}`, delegated scopes required.

        App-only tokens (no `scp`, or `idtyp=app`) are refused unless `allow_app_tokens`; then every required scope
        must be granted as an app role (`roles`). Raises InsufficientScope (403) when only the scope is missing.
        """
        claims = await self._verified_claims(token)
        audiences = (audience, f"api://{audience}") if not audience.startswith("api://") else (audience,)
        result = self._check_common(claims, audiences=audiences, now=now)
        # Whatever the audience and app-token settings: only an access token passes. Entra's v2 access tokens always
        # name the client that obtained them (azp); its ID tokens never do, and may carry nonce/at_hash/c_hash.
        if any(name in claims for name in _ID_TOKEN_ONLY) or not isinstance(claims.get("azp"), str):
            raise _reject("token_type", "an access token for this API is required here (this looks like an ID token)")
        scp = claims.get("scp")
        app_only = claims.get("idtyp") == "app" or scp is None
        if app_only:
            if not allow_app_tokens:
                raise _reject("app_only", "app-only tokens are not accepted here; sign in as a user")
            missing = [s for s in required_scopes if s not in result.roles]
        else:
            if not isinstance(scp, str):
                raise _reject("claims", "the token's scp claim is malformed")
            missing = [s for s in required_scopes if s not in result.scopes]
        if missing:
            raise InsufficientScope("insufficient_scope", f"the token lacks the required scope {' '.join(missing)}")
        if app_only:
            return dataclasses.replace(result, app_only=True)
        return result

    # -- the steps -------------------------------------------------------------------------------------------
    async def _verified_claims(self, token: str) -> dict[str, Any]:
        if not isinstance(token, str) or not token or len(token) > MAX_TOKEN_CHARS or token.count(".") != 2:
            raise _reject("malformed", "the token is not a compact JWS")
        try:
            obj = jws.extract_compact(token.encode("ascii"), registry=_REGISTRY)
        except (JoseError, ValueError, UnicodeError):
            raise _reject("malformed", "the token is not a compact JWS") from None
        header = obj.headers()
        # Rule 1: RS256 only, decided before a key is looked up. Rule 2: jku/x5u/jwk/x5c are never read.
        if header.get("alg") not in ALGORITHMS:
            raise _reject("alg", "the token's algorithm is not allowed (RS256 only)")
        kid = header.get("kid")
        if not isinstance(kid, str) or not KID_RE.match(kid):
            raise _reject("kid", "the token's key id is missing or malformed")
        if "crit" in header:
            raise _reject("crit", "the token carries critical header parameters this validator does not support")
        key = await self.provider.signing_key(kid)
        if key is None:
            raise _reject("kid", "the token is signed with a key the tenant does not publish")
        try:
            ok = jws.validate_compact(obj, key, algorithms=ALGORITHMS, registry=_REGISTRY)
        except (JoseError, ValueError):
            ok = False
        if not ok:
            raise _reject("signature", "the token's signature is invalid")
        try:
            claims = json.loads(obj.payload)
        except (ValueError, TypeError):
            raise _reject("malformed", "the token's payload is not JSON") from None
        if not isinstance(claims, dict):
            raise _reject("malformed", "the token's payload is not a JSON object")
        return claims

    def _check_common(self, claims: dict[str, Any], *, audiences: Collection[str], now: float | None) -> ValidatedToken:
        now = self._clock() if now is None else now
        for name in ("iss", "exp", "tid", "oid", "aud"):
            if name not in claims:
                raise _reject("claims", f"the token has no {name} claim")
        iss, tid, oid, aud = claims["iss"], claims["tid"], claims["oid"], claims["aud"]
        if not all(isinstance(v, str) for v in (iss, tid, oid, aud)):
            raise _reject("claims", "the token's iss, tid, oid and aud must be strings")
        if iss.startswith(_V1_ISSUER_PREFIX) or claims.get("ver") == "1.0":
            raise _reject("v1", "v1.0 tokens are not accepted; the app registration must issue v2.0 tokens")
        if not GUID_RE.match(tid) or not GUID_RE.match(oid):
            raise _reject("claims", "the token's tid and oid must be GUIDs")
        home = self.provider.home
        if home is None:  # pragma: no cover - signing_key() fetched discovery already
            raise _reject("issuer", "the provider's issuer is not known yet")
        if not self.provider.accepts_issuer(iss, tid, home.issuer):
            raise _reject("issuer", "the token was not issued by an accepted tenant of this login host")
        # The tenant segment of iss and tid must agree (multi-tenant: both allow-listed).
        if iss != self.provider.issuer_for(tid):
            raise _reject("issuer", "the token's tid does not match its issuer")
        if aud not in audiences:
            raise _reject("audience", "the token was issued for another application")
        exp = claims["exp"]
        if not _is_number(exp):
            raise _reject("claims", "the token's exp claim is malformed")
        if now > exp + self.leeway:
            raise _reject("expired", "the token has expired")
        iat = claims.get("iat")
        start = float(iat) if isinstance(iat, (int, float)) and not isinstance(iat, bool) else now
        if exp - min(start, now) > MAX_LIFETIME_SECONDS + self.leeway:
            raise _reject("lifetime", "the token's lifetime is longer than Entra ID issues (28 hours at most)")
        nbf = claims.get("nbf")
        if nbf is not None and (not _is_number(nbf) or now + self.leeway < nbf):
            raise _reject("not_yet_valid", "the token is not valid yet (nbf)")
        iat = claims.get("iat")
        if iat is not None and (not _is_number(iat) or now + self.leeway < iat):
            raise _reject("not_yet_valid", "the token claims to be issued in the future (iat)")
        scopes = claims.get("scp")
        roles = claims.get("roles")
        azp = claims.get("azp")
        role_claim, group_claim, overage = group_claims(claims)
        return ValidatedToken(
            identity=Identity(
                tid=tid,
                oid=oid,
                name=_opt_str(claims.get("name")),
                preferred_username=_opt_str(claims.get("preferred_username")),
                roles=role_claim,
                groups=group_claim,
                groups_overage=overage,
            ),
            issuer=iss,
            audience=aud,
            expires_at=int(exp),
            client_app_id=azp if isinstance(azp, str) else None,
            scopes=frozenset(scopes.split()) if isinstance(scopes, str) else frozenset(),
            roles=frozenset(r for r in roles if isinstance(r, str)) if isinstance(roles, list) else frozenset(),
            claims=claims,
        )


def _is_number(v: Any) -> TypeGuard[int | float]:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _opt_str(v: Any) -> str | None:
    return v if isinstance(v, str) else None


__all__ = ["ALGORITHMS", "MAX_GROUPS", "group_claims", "Identity", "InsufficientScope", "TokenRejected", "TokenValidator", "ValidatedToken"]
