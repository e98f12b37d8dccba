"""The emulator's token service: RS256 signing keys with rollover, the JWKS, and the tokens Entra ID v2 issues.

Tokens have Entra's v2 shape (claims named as Microsoft names them). Keys are per emulator, like Microsoft's keys
shared by all tenants; the JWKS of a tenant labels each key with that tenant's issuer. A rollover adds a key and signs
with it at once while the old key stays in the JWKS until `retire_old()`: clients that cache keys must refetch on an
unknown kid, and tokens signed before the rollover stay verifiable meanwhile.

`verify_access_token` is what the emulated Graph uses to accept its bearer tokens; it is strict (RS256 only, keys
from this service only, v2 issuer of a known tenant, audience, lifetime). `mint` forges tokens with real or foreign
keys and any algorithm, for tests of token validation elsewhere.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import json
import secrets
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Literal

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID

from entra_mcp.devtenant.customers import app_roles
from entra_mcp.devtenant.id_claims import token_claims
from entra_mcp.devtenant.model import AppRegistration, EmulatedTenant

if TYPE_CHECKING:
    from entra_mcp.devtenant.runtime import EmulatorRuntime

# Entra's leeway for nbf/exp on resources is five minutes.
CLOCK_SKEW_S = 300
REFRESH_TOKEN_LIFETIME_S = 90 * 24 * 3600
# azpacr / appidacr: how the client authenticated
AZPACR_PUBLIC, AZPACR_SECRET, AZPACR_CERTIFICATE = "0", "1", "2"


class TokenRejected(Exception):
    """A bearer token the emulator does not accept; `reason` is for the error body, `expired` picks Graph's message."""

    def __init__(self, reason: str, *, expired: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.expired = expired


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _json_part(obj: dict[str, Any]) -> str:
    return b64url(json.dumps(obj, separators=(",", ":")).encode("utf-8"))


def split_jwt(token: str) -> tuple[dict[str, Any], dict[str, Any], bytes, bytes]:
    """Header, claims, signature and signing input of a compact JWS. Decoding only: nothing is verified here."""
    parts = token.split(".")
    if len(parts) != 3:
        raise ValueError("not a compact JWS (three dot-separated parts)")
    try:
        header = json.loads(b64url_decode(parts[0]))
        claims = json.loads(b64url_decode(parts[1]))
        signature = b64url_decode(parts[2])
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValueError("not base64url-encoded JSON") from exc
    if not isinstance(header, dict) or not isinstance(claims, dict):
        raise ValueError("header and payload must be JSON objects")
    return header, claims, signature, f"{parts[0]}.{parts[1]}".encode("ascii")


def verify_rsa_signature(public_key: Any, alg: str, signing_input: bytes, signature: bytes) -> bool:
    """RS256 or PS256 (what client assertions use: msal signs PS256 when it knows the SHA-256 thumbprint)."""
    if not isinstance(public_key, rsa.RSAPublicKey):
        return False
    if alg == "RS256":
        pad: padding.AsymmetricPadding = padding.PKCS1v15()
    elif alg == "PS256":
        pad = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=hashes.SHA256.digest_size)
    else:
        return False
    try:
        public_key.verify(signature, signing_input, pad, hashes.SHA256())
    except InvalidSignature:
        return False
    return True


@dataclass(frozen=True)
class SigningKey:
    kid: str
    x5t: str
    private_key: rsa.RSAPrivateKey = field(repr=False)
    certificate: x509.Certificate = field(repr=False)

    @classmethod
    def generate(cls) -> "SigningKey":
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "accounts.accesscontrol.windows.net")])
        now = dt.datetime.now(dt.timezone.utc)
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=730))
            .sign(key, hashes.SHA256())
        )
        x5t = b64url(cert.fingerprint(hashes.SHA1()))  # noqa: S303 - x5t is SHA-1 by definition (RFC 7515)
        # Entra's v2 keys use the x5t as the kid.
        return cls(kid=x5t, x5t=x5t, private_key=key, certificate=cert)

    @property
    def public_pem(self) -> bytes:
        return self.private_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    def jwk(self, issuer: str | None = None) -> dict[str, Any]:
        numbers = self.private_key.public_key().public_numbers()
        entry: dict[str, Any] = {
            "kty": "RSA",
            "use": "sig",
            "kid": self.kid,
            "x5t": self.x5t,
            "n": b64url(numbers.n.to_bytes((numbers.n.bit_length() + 7) // 8, "big")),
            "e": b64url(numbers.e.to_bytes((numbers.e.bit_length() + 7) // 8, "big")),
            "x5c": [base64.b64encode(self.certificate.public_bytes(serialization.Encoding.DER)).decode("ascii")],
        }
        if issuer:
            entry["issuer"] = issuer
        return entry


@dataclass(frozen=True)
class RefreshGrant:
    """What a refresh token stands for; kept server-side, the token itself is opaque."""

    tenant_id: str
    client_id: str
    user_id: str
    scopes: tuple[str, ...]  # the scopes consented at sign-in (OIDC scopes and the resource's scopes)
    sid: str
    expires_at: float


@dataclass(frozen=True)
class UserTokens:
    access_token: str
    id_token: str | None
    refresh_token: str | None
    expires_in: int


KeyChoice = Literal["active", "previous", "foreign"]


def service_principal_of(tenant: EmulatedTenant, client_id: str) -> dict[str, Any] | None:
    """The service principal of app `client_id` in `tenant`, if the tenant has one."""
    with tenant.lock:
        return next((sp for sp in tenant.service_principals.values() if sp.get("appId") == client_id), None)


class TokenService:
    """Signing keys, JWKS and token issuance for one emulator. Thread-safe; `now` is injectable for tests."""

    def __init__(self, runtime: "EmulatorRuntime", *, now: Callable[[], float] = time.time) -> None:
        self.runtime = runtime
        self.now = now
        self._lock = threading.Lock()
        self._keys: list[SigningKey] = [SigningKey.generate()]  # the last one signs
        self._foreign: SigningKey | None = None
        self._refresh: dict[str, RefreshGrant] = {}  # sha256(token) -> grant

    # ---- keys -------------------------------------------------------------------------------------------------

    @property
    def active_key(self) -> SigningKey:
        with self._lock:
            return self._keys[-1]

    @property
    def keys(self) -> list[SigningKey]:
        with self._lock:
            return list(self._keys)

    def rollover(self) -> SigningKey:
        """Add a new signing key and sign with it from now on; older keys stay published until retire_old()."""
        new = SigningKey.generate()
        with self._lock:
            self._keys.append(new)
        return new

    def retire_old(self) -> list[str]:
        """Drop every key but the active one from the JWKS; returns the retired kids."""
        with self._lock:
            retired = [k.kid for k in self._keys[:-1]]
            self._keys = self._keys[-1:]
        return retired

    def issuer(self, tenant_id: str) -> str:
        return f"{self.runtime.base_url}/{tenant_id}/v2.0"

    def jwks(self, tenant_id: str | None = None) -> dict[str, Any]:
        issuer = self.issuer(tenant_id) if tenant_id else f"{self.runtime.base_url}/{{tenantid}}/v2.0"
        return {"keys": [k.jwk(issuer) for k in self.keys]}

    # ---- issuing ----------------------------------------------------------------------------------------------

    def _lifetime(self) -> int:
        return max(1, int(self.runtime.faults.token_lifetime_s))

    @staticmethod
    def _uti() -> str:
        return b64url(secrets.token_bytes(16))

    @staticmethod
    def service_principal_id(tenant: EmulatedTenant, client_id: str) -> str:
        """Object id of the app's service principal in `tenant` (the `oid` of its app-only tokens)."""
        sp = service_principal_of(tenant, client_id)
        return str(sp["id"]) if sp else str(uuid.uuid5(uuid.NAMESPACE_URL, f"sp:{tenant.tenant_id}:{client_id}"))

    @staticmethod
    def pairwise_sub(tenant_id: str, client_id: str, object_id: str) -> str:
        """Entra's `sub`: the same user gets a different, stable subject per application."""
        return b64url(hashlib.sha256(f"{tenant_id}|{client_id}|{object_id}".encode()).digest())

    def issue_app_token(
        self,
        tenant: EmulatedTenant,
        registration: AppRegistration,
        audience: str,
        *,
        roles: list[str] | None = None,
        azpacr: str = AZPACR_SECRET,
    ) -> str:
        """A v2 app-only access token (client credentials). `roles` defaults to the app's granted permissions when
        the audience is Graph (the emulator's base URL) and to none for other resources."""
        now = int(self.now())
        oid = self.service_principal_id(tenant, registration.client_id)
        if roles is None:  # a multi-tenant app: what was consented in THIS tenant (devtenant/customers.py)
            consented = app_roles(tenant, registration) if audience == self.runtime.base_url else None
            roles = (consented if consented is not None else list(registration.granted_roles)) \
                if audience == self.runtime.base_url else []
        claims: dict[str, Any] = {
            "aud": audience,
            "iss": self.issuer(tenant.tenant_id),
            "iat": now,
            "nbf": now,
            "exp": now + self._lifetime(),
            "aio": self._uti(),
            "app_displayname": registration.display_name,
            "azp": registration.client_id,
            "azpacr": azpacr,
            "idp": self.issuer(tenant.tenant_id).removesuffix("/v2.0") + "/",
            "idtyp": "app",
            "oid": oid,
            "rh": f"0.{self._uti()}.",
            "sub": oid,
            "tid": tenant.tenant_id,
            "uti": self._uti(),
            "ver": "2.0",
        }
        if roles:
            claims["roles"] = roles
        return self.mint(claims)

    def issue_user_tokens(
        self,
        tenant: EmulatedTenant,
        registration: AppRegistration,
        user: dict[str, Any],
        *,
        audience: str,
        scp: list[str],
        scopes: list[str],
        nonce: str | None = None,
        sid: str | None = None,
        azpacr: str = AZPACR_SECRET,
        resource_client_id: str | None = None,
    ) -> UserTokens:
        """Tokens for a signed-in user (authorization_code and refresh_token grants).

        `audience`/`scp`: the access token's resource and delegated scopes. `scopes`: everything granted, OIDC scopes
        included; `openid` adds an ID token, `offline_access` a refresh token. `resource_client_id` is the resource
        app's client id, for the access token's pairwise `sub`.
        """
        now = int(self.now())
        lifetime = self._lifetime()
        sid = sid or str(uuid.uuid4())
        tid, oid = tenant.tenant_id, str(user["id"])
        issuer = self.issuer(tid)
        common = {
            "iss": issuer,
            "iat": now,
            "nbf": now,
            "exp": now + lifetime,
            "name": user.get("displayName") or "",
            "oid": oid,
            "preferred_username": user.get("userPrincipalName") or "",
            "rh": f"0.{self._uti()}.",
            "sid": sid,
            "tid": tid,
            "ver": "2.0",
        }
        access = {
            **common,
            "aud": audience,
            "aio": self._uti(),
            "azp": registration.client_id,
            "azpacr": azpacr,
            "scp": " ".join(scp),
            "sub": self.pairwise_sub(tid, resource_client_id or audience, oid),
            "uti": self._uti(),
        }
        access.update(token_claims(tenant, resource_client_id or audience, user))  # the API's roles and groups
        id_token = None
        if "openid" in scopes:
            idc = {**common, "aud": registration.client_id, "sub": self.pairwise_sub(tid, registration.client_id, oid),
                   "uti": self._uti(), "aio": self._uti()}
            if nonce:
                idc["nonce"] = nonce
            if user.get("mail") and ("email" in scopes or "profile" in scopes):
                idc["email"] = user["mail"]
            idc.update(token_claims(tenant, registration.client_id, user))  # roles, groups (devtenant/id_claims.py)
            id_token = self.mint(idc)
        refresh = None
        if "offline_access" in scopes:
            refresh = self.issue_refresh_token(
                RefreshGrant(tid, registration.client_id, oid, tuple(scopes), sid, now + REFRESH_TOKEN_LIFETIME_S)
            )
        return UserTokens(self.mint(access), id_token, refresh, lifetime)

    # ---- refresh tokens (opaque, server-side) -----------------------------------------------------------------

    @staticmethod
    def _rt_key(token: str) -> str:
        return hashlib.sha256(token.encode("utf-8")).hexdigest()

    def issue_refresh_token(self, grant: RefreshGrant) -> str:
        token = "1.AR" + b64url(secrets.token_bytes(48))
        with self._lock:
            self._refresh[self._rt_key(token)] = grant
        return token

    def refresh_grant(self, token: str) -> RefreshGrant | None:
        """The grant behind a refresh token (expired or not: the caller decides), or None when unknown. Refresh
        tokens are reusable until they expire, as Entra's are (a new one is issued with each use as well)."""
        with self._lock:
            return self._refresh.get(self._rt_key(token))

    def revoke_refresh_tokens(self, *, tenant_id: str, user_id: str | None = None) -> int:
        """Forget a user's (or a whole tenant's) refresh tokens, like revokeSignInSessions. Returns how many."""
        with self._lock:
            doomed = [k for k, g in self._refresh.items()
                      if g.tenant_id == tenant_id and (user_id is None or g.user_id == user_id)]
            for k in doomed:
                del self._refresh[k]
        return len(doomed)

    # ---- verifying (the emulated Graph's bearer tokens) -------------------------------------------------------

    def verify_access_token(self, token: str, *, audience: str, now: float | None = None) -> dict[str, Any]:
        """Claims of a valid access token issued by this emulator for `audience`; TokenRejected otherwise."""
        try:
            header, claims, signature, signing_input = split_jwt(token)
        except ValueError:
            raise TokenRejected("IDX14100: JWT is not well formed.") from None
        if header.get("alg") != "RS256":
            raise TokenRejected("Signing algorithm is not supported.")
        kid = header.get("kid")
        key = next((k for k in self.keys if isinstance(kid, str) and hmac.compare_digest(k.kid, kid)), None)
        if key is None:
            raise TokenRejected("Signature key was not found.")
        if not verify_rsa_signature(key.private_key.public_key(), "RS256", signing_input, signature):
            raise TokenRejected("Signature validation failed.")
        tid = claims.get("tid")
        if not isinstance(tid, str) or self.runtime.state.tenants.get(tid) is None:
            raise TokenRejected("Invalid tenant.")
        if claims.get("iss") != self.issuer(tid):
            raise TokenRejected("Invalid issuer.")
        if claims.get("aud") != audience:
            raise TokenRejected("Invalid audience.")
        now = self.now() if now is None else now
        exp, nbf = claims.get("exp"), claims.get("nbf", claims.get("iat"))
        if not isinstance(exp, (int, float)):
            raise TokenRejected("Lifetime validation failed, the token has no expiry.")
        if exp + CLOCK_SKEW_S <= now:
            raise TokenRejected("Lifetime validation failed, the token is expired.", expired=True)
        if isinstance(nbf, (int, float)) and nbf - CLOCK_SKEW_S > now:
            raise TokenRejected("Lifetime validation failed, the token is not yet valid.")
        return claims

    # ---- forging (tests) --------------------------------------------------------------------------------------

    def _foreign_key(self) -> SigningKey:
        with self._lock:
            if self._foreign is None:
                self._foreign = SigningKey.generate()
            return self._foreign

    def _pick(self, key: KeyChoice | SigningKey) -> SigningKey:
        if isinstance(key, SigningKey):
            return key
        if key == "foreign":
            return self._foreign_key()
        keys = self.keys
        if key == "previous":
            return keys[-2] if len(keys) > 1 else keys[-1]
        return keys[-1]

    def mint(
        self,
        claims: dict[str, Any],
        *,
        key: KeyChoice | SigningKey = "active",
        alg: str = "RS256",
        header: dict[str, Any] | None = None,
    ) -> str:
        """Sign `claims` as given. `key`: "active" (the JWKS's signing key), "previous" (the key before the last
        rollover), "foreign" (a key the JWKS never lists) or a SigningKey. `alg`: RS256, PS256, HS256 (HMAC keyed
        with the key's public PEM: the algorithm-confusion forgery) or none. `header` entries override the default
        header (typ, alg, kid, x5t); a value of None removes that entry."""
        k = self._pick(key)
        hdr: dict[str, Any] = {"typ": "JWT", "alg": alg, "kid": k.kid, "x5t": k.x5t}
        if alg == "none":
            hdr.pop("kid"), hdr.pop("x5t")
        for name, value in (header or {}).items():
            if value is None:
                hdr.pop(name, None)
            else:
                hdr[name] = value
        signing_input = f"{_json_part(hdr)}.{_json_part(claims)}".encode("ascii")
        if alg == "none":
            signature = b""
        elif alg == "HS256":
            signature = hmac.new(k.public_pem, signing_input, hashlib.sha256).digest()
        elif alg == "RS256":
            signature = k.private_key.sign(signing_input, padding.PKCS1v15(), hashes.SHA256())
        elif alg == "PS256":
            signature = k.private_key.sign(
                signing_input,
                padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=hashes.SHA256.digest_size),
                hashes.SHA256(),
            )
        else:
            raise ValueError(f"mint: unsupported alg {alg!r} (RS256, PS256, HS256 or none)")
        return f"{signing_input.decode('ascii')}.{b64url(signature)}"


def unverified_claims(token: str) -> dict[str, Any]:
    """The payload of a JWT without any check (for reading what the emulator itself just issued)."""
    return split_jwt(token)[1]


__all__ = [
    "AZPACR_CERTIFICATE",
    "AZPACR_PUBLIC",
    "AZPACR_SECRET",
    "RefreshGrant",
    "SigningKey",
    "TokenRejected",
    "TokenService",
    "UserTokens",
    "b64url",
    "split_jwt",
    "unverified_claims",
    "service_principal_of",
    "verify_rsa_signature",
]
