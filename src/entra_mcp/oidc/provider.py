"""The identity provider as a token validator needs it: discovery documents and the signing keys (JWKS).

One `OidcProvider` per login host and home tenant. It knows which issuers it accepts (single tenant: exactly the home
tenant's issuer; multi-tenant: `{login}/{tid}/v2.0` for every allow-listed tid) and serves RSA public keys by `kid`.

Key cache rules (docs/sign-in.md rules 3 and 8):
- keys come only from the home tenant's `jwks_uri` (discovery), never from a token header;
- an unknown `kid` triggers at most one refetch per `refetch_interval` (60 s); concurrent misses share one fetch, so a
  burst of junk kids costs the IdP at most one request, and a genuine key rollover still works;
- the cache is refreshed after `refresh_after` (1 h); while the JWKS endpoint is down the cached keys keep serving up
  to `max_key_age` (24 h) after the last successful fetch, then validation fails closed.

Discovery failures are remembered per tenant with a backoff (2 s, doubling to 5 min): while the login host's
discovery fails, requests fail fast with the remembered error instead of each one sending a fetch (an unauthenticated
client must not be able to turn its requests into requests to the identity provider).

All I/O goes through an injected `httpx.AsyncClient` (or a transport), never blocking the event loop.
"""

from __future__ import annotations

import re
import ssl
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import anyio
import httpx
from joserfc.errors import JoseError
from joserfc.jwk import RSAKey

from entra_mcp.config import TenantSettings
from entra_mcp.errors import AuthError, EntraMcpError, TransientError
from entra_mcp.logs import get_logger

log = get_logger("oidc.provider")

GUID_RE = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
# A kid is an opaque lookup key: short, from a plain charset (Entra uses base64url thumbprints).
KID_RE = re.compile(r"^[A-Za-z0-9_.=-]{1,128}$")
MAX_JWKS_BYTES = 512 * 1024
MAX_KEYS = 64
DISCOVERY_BACKOFF_MIN = 2.0
DISCOVERY_BACKOFF_MAX = 300.0


class ProviderUnavailable(TransientError):
    """The login host's discovery or JWKS endpoint cannot be reached and no usable cached copy is left."""

    code = "IDP_UNAVAILABLE"


@dataclass(frozen=True)
class ProviderMetadata:
    """The parts of an OpenID Provider configuration document that sign-in uses."""

    issuer: str
    authorization_endpoint: str
    token_endpoint: str
    jwks_uri: str
    tenant_id: str  # the GUID from the issuer


def tls_context(ca_bundle: Path | str | None) -> ssl.SSLContext:
    """System trust plus an extra CA (TLS-inspecting proxies, the local emulator)."""
    ctx = ssl.create_default_context()
    if ca_bundle:
        ctx.load_verify_locations(cafile=str(Path(ca_bundle).expanduser()))
    return ctx


def _same_origin(url: str, base: str) -> bool:
    a, b = urlsplit(url), urlsplit(base)
    return a.scheme == "https" and (a.scheme, a.netloc.lower()) == (b.scheme, b.netloc.lower())


class OidcProvider:
    """Discovery and signing keys of one Entra login host, for one home tenant (and allow-listed others)."""

    def __init__(
        self,
        login_host: str,
        tenant: str,
        *,
        allowed_tenants: Iterable[str] = (),
        http: httpx.AsyncClient | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        ca_bundle: Path | str | None = None,
        clock: Callable[[], float] = time.monotonic,
        refetch_interval: float = 60.0,
        refresh_after: float = 3600.0,
        max_key_age: float = 24 * 3600.0,
        timeout: float = 10.0,
    ) -> None:
        self.login_host = login_host.rstrip("/")
        self.tenant = tenant
        self.allowed_tenants = frozenset(t.lower() for t in allowed_tenants)
        self._own_http = http is None
        self._http = http or httpx.AsyncClient(
            transport=transport,
            verify=tls_context(ca_bundle) if transport is None else True,
            timeout=timeout,
            follow_redirects=False,
        )
        self._clock = clock
        self.refetch_interval = refetch_interval
        self.refresh_after = refresh_after
        self.max_key_age = max_key_age
        self._metadata: dict[str, ProviderMetadata] = {}
        self._meta_lock = anyio.Lock()
        self._keys: dict[str, RSAKey] = {}
        self._keys_fetched_at: float | None = None  # last successful JWKS fetch (clock time)
        self._last_attempt: float | None = None  # last JWKS fetch attempt, successful or not
        self._jwks_lock = anyio.Lock()
        self.jwks_fetches = 0  # attempts, for tests and status
        self.discovery_fetches = 0
        # tenant -> (retry at, backoff, error class, message)
        self._discovery_failures: dict[str, tuple[float, float, type[EntraMcpError], str]] = {}

    @classmethod
    def from_tenant(cls, tenant: TenantSettings, *, allowed_tenants: Iterable[str] = (), **kw: Any) -> "OidcProvider":
        if "ca_bundle" not in kw:
            kw["ca_bundle"] = tenant.ca_bundle
        return cls(tenant.login_host, tenant.tenant_id, allowed_tenants=allowed_tenants, **kw)

    async def aclose(self) -> None:
        if self._own_http:
            await self._http.aclose()

    # -- issuers ---------------------------------------------------------------------------------------------
    @property
    def multi_tenant(self) -> bool:
        return bool(self.allowed_tenants)

    @property
    def http(self) -> httpx.AsyncClient:
        """The client used for the login host (token endpoint calls share it)."""
        return self._http

    @property
    def home(self) -> ProviderMetadata | None:
        """The home tenant's discovery document once fetched (signing_key() fetches it)."""
        return self._metadata.get(self.tenant.lower())

    def issuer_for(self, tid: str) -> str:
        return f"{self.login_host}/{tid}/v2.0"

    def accepts_issuer(self, iss: str, tid: str, home_issuer: str) -> bool:
        """Single tenant: iss is exactly the home issuer. Multi-tenant: tid allow-listed and iss = {login}/{tid}/v2.0."""
        if iss == home_issuer:
            return True
        if not self.multi_tenant:
            return False
        return tid.lower() in self.allowed_tenants and GUID_RE.match(tid) is not None and iss == self.issuer_for(tid)

    def tenant_allowed(self, tid: str, home_tid: str) -> bool:
        return tid.lower() == home_tid.lower() or tid.lower() in self.allowed_tenants

    # -- discovery -------------------------------------------------------------------------------------------
    async def metadata(self, tenant: str | None = None) -> ProviderMetadata:
        """The discovery document of `tenant` (default: the home tenant), fetched once and cached."""
        tenant = tenant or self.tenant
        cached = self._metadata.get(tenant.lower())
        if cached is not None:
            return cached
        failed = self._discovery_failures.get(tenant.lower())
        if failed is not None and self._clock() < failed[0]:
            raise failed[2](failed[3])
        async with self._meta_lock:
            cached = self._metadata.get(tenant.lower())
            if cached is not None:
                return cached
            failed = self._discovery_failures.get(tenant.lower())
            if failed is not None and self._clock() < failed[0]:
                raise failed[2](failed[3])  # a request that waited on the lock gets the attempt it waited for
            try:
                meta = await self._discover(tenant)
            except (ProviderUnavailable, AuthError) as exc:
                backoff = min(DISCOVERY_BACKOFF_MAX, failed[1] * 2) if failed is not None else DISCOVERY_BACKOFF_MIN
                self._discovery_failures[tenant.lower()] = (self._clock() + backoff, backoff, type(exc), str(exc))
                while len(self._discovery_failures) > 1000:  # tenants named by callers: keep the memory bounded
                    self._discovery_failures.pop(next(iter(self._discovery_failures)))
                log.warning("discovery for tenant %.64s failed; next attempt in %.0f s", tenant, backoff)
                raise
            self._discovery_failures.pop(tenant.lower(), None)
            self._metadata[tenant.lower()] = meta
            self._metadata[meta.tenant_id.lower()] = meta
            return meta

    async def _discover(self, tenant: str) -> ProviderMetadata:
        url = f"{self.login_host}/{tenant}/v2.0/.well-known/openid-configuration"
        self.discovery_fetches += 1
        try:
            resp = await self._http.get(url)
        except httpx.HTTPError as exc:
            raise ProviderUnavailable(
                f"cannot reach the login host's discovery document at {url} ({type(exc).__name__}). "
                "Check the tenant's cloud/login_url and ca_bundle, and the network."
            ) from None
        if resp.status_code == 400 or resp.status_code == 404:
            raise AuthError(f"the login host does not know tenant {tenant!r} (HTTP {resp.status_code} from discovery)")
        if resp.status_code != 200:
            raise ProviderUnavailable(f"discovery at {url} answered HTTP {resp.status_code}")
        try:
            doc = resp.json()
            issuer = str(doc["issuer"])
            meta = ProviderMetadata(
                issuer=issuer,
                authorization_endpoint=str(doc["authorization_endpoint"]),
                token_endpoint=str(doc["token_endpoint"]),
                jwks_uri=str(doc["jwks_uri"]),
                tenant_id=issuer.removeprefix(self.login_host + "/").removesuffix("/v2.0"),
            )
        except (ValueError, KeyError, TypeError):
            raise ProviderUnavailable(f"discovery at {url} did not return an OpenID configuration") from None
        # The document must describe this login host and a concrete v2 tenant issuer, or it is not to be trusted.
        if meta.issuer != self.issuer_for(meta.tenant_id) or not GUID_RE.match(meta.tenant_id):
            raise AuthError(f"discovery at {url} names an unexpected issuer {meta.issuer!r}")
        if GUID_RE.match(tenant) and meta.tenant_id.lower() != tenant.lower():
            raise AuthError(f"discovery for tenant {tenant} names another tenant's issuer {meta.issuer!r}")
        for endpoint in (meta.authorization_endpoint, meta.token_endpoint, meta.jwks_uri):
            if not _same_origin(endpoint, self.login_host):
                raise AuthError(f"discovery at {url} points outside the login host ({endpoint!r})")
        return meta

    # -- signing keys ----------------------------------------------------------------------------------------
    async def signing_key(self, kid: str) -> RSAKey | None:
        """The RSA key with this kid, or None when the JWKS (after at most one throttled refetch) lacks it.

        Raises ProviderUnavailable when no key can be trusted any more (JWKS unreachable past max_key_age).
        """
        if not KID_RE.match(kid):
            return None
        now = self._clock()
        fetched = self._keys_fetched_at
        if fetched is None or now - fetched >= self.refresh_after:
            await self._refresh(now, reason="stale" if fetched is not None else "initial")
        elif kid not in self._keys:
            await self._refresh(now, reason="unknown kid")
        fetched = self._keys_fetched_at
        if fetched is None or self._clock() - fetched > self.max_key_age:
            raise ProviderUnavailable(
                "the login host's signing keys could not be fetched and the cached ones are too old to trust; "
                "sign-in and bearer tokens are refused until the JWKS endpoint answers again"
            )
        return self._keys.get(kid)

    def _may_attempt(self, now: float) -> bool:
        if self._last_attempt is None:
            return True
        # With no keys at all, retry sooner (but still throttled) so a cold start recovers quickly.
        interval = self.refetch_interval if self._keys else min(self.refetch_interval, 5.0)
        return now - self._last_attempt >= interval

    async def _refresh(self, now: float, *, reason: str) -> None:
        if not self._may_attempt(now) and not self._jwks_lock.locked():
            return
        # A fetch in progress is waited for (a cold start's concurrent requests all get its keys), never repeated.
        async with self._jwks_lock:
            # Whoever waited on the lock finds the attempt already made and uses its outcome.
            if not self._may_attempt(self._clock()):
                return
            self._last_attempt = self._clock()
            try:
                keys = await self._fetch_jwks()
            except (ProviderUnavailable, AuthError) as exc:
                log.warning("JWKS refresh (%s) failed: %s; keeping %d cached keys", reason, exc, len(self._keys))
                return
            self._keys = keys
            self._keys_fetched_at = self._clock()
            log.info("JWKS refreshed (%s): %d signing keys", reason, len(keys))

    async def _fetch_jwks(self) -> dict[str, RSAKey]:
        meta = await self.metadata()
        self.jwks_fetches += 1
        try:
            resp = await self._http.get(meta.jwks_uri)
        except httpx.HTTPError as exc:
            raise ProviderUnavailable(f"cannot reach the JWKS endpoint ({type(exc).__name__})") from None
        if resp.status_code != 200:
            raise ProviderUnavailable(f"the JWKS endpoint answered HTTP {resp.status_code}")
        if len(resp.content) > MAX_JWKS_BYTES:
            raise ProviderUnavailable("the JWKS document is implausibly large")
        try:
            entries = resp.json()["keys"]
            if not isinstance(entries, list):
                raise TypeError
        except (ValueError, KeyError, TypeError):
            raise ProviderUnavailable("the JWKS endpoint did not return a key set") from None
        keys: dict[str, RSAKey] = {}
        for entry in entries[:MAX_KEYS]:
            if not isinstance(entry, dict) or entry.get("kty") != "RSA" or entry.get("use", "sig") != "sig":
                continue
            kid = entry.get("kid")
            if not isinstance(kid, str) or not KID_RE.match(kid):
                continue
            try:
                # Only the public numbers: x5c/x5t and anything else in the entry are not needed to verify.
                keys[kid] = RSAKey.import_key({"kty": "RSA", "n": entry["n"], "e": entry["e"], "kid": kid})
            except (JoseError, KeyError, ValueError, TypeError):
                log.warning("skipping a malformed JWKS entry")
        if not keys:
            raise ProviderUnavailable("the JWKS document holds no usable RSA signing key")
        return keys


__all__ = ["GUID_RE", "KID_RE", "OidcProvider", "ProviderMetadata", "ProviderUnavailable", "tls_context"]
