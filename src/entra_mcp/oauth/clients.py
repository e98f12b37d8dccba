"""OAuth clients of the authorization server: who they are and where their codes may go.

Two ways in, each switchable ([server.auth.oauth]): Dynamic Client Registration (RFC 7591, records kept hashed in the
SessionStore) and Client ID Metadata Documents (the client_id is an https URL; its JSON document is fetched by
`MetadataDocuments`, hardened against server-side request forgery). Redirect URIs (docs/oauth.md): https, or plain
http on a loopback address (RFC 8252 section 7.3: any port at request time); exact match otherwise. Client names,
URIs and every other field a client sends are untrusted data: shown escaped, logged shortened.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import ssl
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import anyio
import httpx
from mcp.shared.auth import InvalidRedirectUriError, InvalidScopeError, OAuthClientInformationFull
from pydantic import AnyUrl, ValidationError

from entra_mcp.errors import EntraMcpError
from entra_mcp.logs import get_logger

log = get_logger("oauth.clients")

LOOPBACK_HOSTS = frozenset({"127.0.0.1", "[::1]", "::1", "localhost"})
MAX_REDIRECT_URIS = 10
MAX_URI_CHARS = 512
MAX_NAME_CHARS = 120


def secret_hash(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8", "replace")).hexdigest()


def redirect_uri_problem(uri: str) -> str | None:
    """Why `uri` cannot be a redirect URI here, or None when it can (https, or http on a loopback host)."""
    if len(uri) > MAX_URI_CHARS:
        return f"a redirect URI is longer than {MAX_URI_CHARS} characters"
    parts = urlsplit(uri)
    if parts.fragment or "#" in uri:
        return "a redirect URI must not contain a fragment"
    if parts.username is not None or parts.password is not None or "@" in parts.netloc:
        return "a redirect URI must not contain user information"
    if not parts.hostname:
        return "a redirect URI must be an absolute http(s) URL"
    if parts.scheme == "https":
        return None
    if parts.scheme == "http" and parts.hostname.lower() in LOOPBACK_HOSTS:
        return None
    return "a redirect URI must use https, or plain http on a loopback address (127.0.0.1, [::1] or localhost)"


def redirect_matches(registered: str, requested: str) -> bool:
    """Exact match, except that a loopback http URI matches on any port (RFC 8252 section 7.3)."""
    if registered == requested:
        return True
    a, b = urlsplit(registered), urlsplit(requested)
    loopback = a.scheme == "http" and (a.hostname or "").lower() in LOOPBACK_HOSTS
    try:
        b.port  # noqa: B018 (a malformed port raises)
    except ValueError:
        return False
    return (loopback and b.scheme == "http" and (a.hostname or "").lower() == (b.hostname or "").lower()
            and a.path == b.path and a.query == b.query and not b.fragment and "@" not in b.netloc)


class Client(OAuthClientInformationFull):
    """A client as the authorization server knows it: the SDK's record with this server's redirect-URI rule and
    scopes. `client_secret` holds the SHA-256 of the registered secret (see `HashedSecretAuthenticator`)."""

    def validate_redirect_uri(self, redirect_uri: AnyUrl | None) -> AnyUrl:
        registered = [str(u) for u in self.redirect_uris or ()]
        if redirect_uri is None:
            if len(registered) == 1:
                return AnyUrl(registered[0])
            raise InvalidRedirectUriError("redirect_uri is required: this client registered several")
        if any(redirect_matches(r, str(redirect_uri)) for r in registered):
            return redirect_uri
        raise InvalidRedirectUriError("redirect_uri is not one of the redirect URIs registered for this client")

    def validate_scope(self, requested_scope: str | None) -> list[str] | None:
        if requested_scope is None:
            return None
        allowed = (self.scope or "").split()
        requested = requested_scope.split()
        unknown = [s for s in requested if s not in allowed]
        if unknown:
            raise InvalidScopeError(f"this server grants only the scopes {' '.join(allowed)}")
        return requested

    @property
    def display_name(self) -> str:
        name = " ".join((self.client_name or "").split())[:MAX_NAME_CHARS]
        return name or "an unnamed application"


class ClientMetadataError(EntraMcpError):
    """A Client ID Metadata Document that cannot be used; the message says why (no secrets in it)."""

    code = "CLIENT_METADATA_REFUSED"


@dataclass
class _Cached:
    client: Client | None
    reason: str | None
    until: float


def _forbidden_address(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return not ip.is_global or ip.is_multicast


def client_metadata_url_problem(url: str) -> str | None:
    """Why `url` cannot be a client_id URL (draft-ietf-oauth-client-id-metadata-document section 3), or None."""
    if len(url) > MAX_URI_CHARS:
        return "the client_id URL is too long"
    parts = urlsplit(url)
    if parts.scheme != "https" or not parts.hostname:
        return "a client_id URL must be an https URL"
    if parts.username is not None or parts.password is not None or "@" in parts.netloc:
        return "a client_id URL must not contain user information"
    if parts.fragment or "#" in url:
        return "a client_id URL must not contain a fragment"
    if parts.path in ("", "/"):
        return "a client_id URL must have a path"
    if any(seg in (".", "..") for seg in parts.path.split("/")):
        return "a client_id URL must not contain . or .. path segments"
    return None


class MetadataDocuments:
    """Fetches, checks and caches Client ID Metadata Documents.

    Hardened: https only; the host's addresses are resolved first and every one must be public (no private, loopback,
    link-local, shared or reserved address) unless the host is in `allowed_hosts`; the connection then goes to the
    address that was checked (SNI and Host carry the name), so a DNS answer that changes in between cannot redirect
    it; no redirects followed; at most `max_bytes` read; `timeout` for the whole fetch; good and bad answers cached
    (`cache_seconds`, failures for at most a minute) so a client_id cannot make this server fetch in a loop."""

    MAX_ENTRIES = 2000

    def __init__(self, *, scopes: list[str], allowed_hosts: Sequence[str] = (), max_bytes: int = 5120,
                 timeout: float = 5.0, cache_seconds: int = 300, ca_bundle: Path | None = None,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.scopes = scopes
        self.allowed_hosts = frozenset(h.lower().strip("[]") for h in allowed_hosts)
        self.max_bytes = max_bytes
        self.timeout = timeout
        self.cache_seconds = cache_seconds
        self._cache: OrderedDict[str, _Cached] = OrderedDict()
        ctx = ssl.create_default_context()
        if ca_bundle is not None:
            ctx.load_verify_locations(cafile=str(ca_bundle))
        # No keep-alive: fetches are rare, each one resolves and checks the address anew, and no idle connection
        # to a client's host outlives the fetch.
        self._http = httpx.AsyncClient(verify=ctx, transport=transport, follow_redirects=False, trust_env=False,
                                       timeout=httpx.Timeout(timeout), limits=httpx.Limits(max_keepalive_connections=0))

    async def aclose(self) -> None:
        await self._http.aclose()

    async def get(self, client_id: str) -> Client | None:
        """The client described by the document at `client_id`, or None (the reason goes to the log)."""
        now = time.monotonic()
        hit = self._cache.get(client_id)
        if hit is not None and hit.until > now:
            return hit.client
        try:
            client = await self._fetch(client_id)
            entry = _Cached(client, None, now + self.cache_seconds)
        except ClientMetadataError as exc:
            log.info("client metadata document refused (%.120r): %s", client_id, exc)
            entry = _Cached(None, str(exc), now + min(60, self.cache_seconds))
        self._cache[client_id] = entry
        self._cache.move_to_end(client_id)
        while len(self._cache) > self.MAX_ENTRIES:
            self._cache.popitem(last=False)
        return entry.client

    def refusal(self, client_id: str) -> str | None:
        """Why the last fetch of `client_id` was refused (for the error page), if it was."""
        hit = self._cache.get(client_id)
        return hit.reason if hit is not None else None

    async def _address(self, host: str, port: int) -> str:
        bare = host.lower().strip("[]")
        try:
            literal = ipaddress.ip_address(bare)
        except ValueError:
            literal = None
        if literal is not None:
            if _forbidden_address(literal) and bare not in self.allowed_hosts:
                raise ClientMetadataError("the client_id URL names a private or loopback address")
            return bare
        try:
            infos = await anyio.getaddrinfo(bare, port, type=0)
        except OSError:
            raise ClientMetadataError("the client_id URL's host name does not resolve") from None
        addresses = []
        for info in infos:
            addr = ipaddress.ip_address(str(info[4][0]).split("%")[0])
            if _forbidden_address(addr) and bare not in self.allowed_hosts:
                raise ClientMetadataError("the client_id URL's host resolves to a private or loopback address")
            addresses.append(str(addr))
        if not addresses:
            raise ClientMetadataError("the client_id URL's host name does not resolve")
        return addresses[0]

    async def _fetch(self, client_id: str) -> Client:
        problem = client_metadata_url_problem(client_id)
        if problem:
            raise ClientMetadataError(problem)
        parts = urlsplit(client_id)
        host = parts.hostname or ""
        port = parts.port or 443
        body = bytearray()
        try:
            with anyio.fail_after(self.timeout):
                address = await self._address(host, port)
                ip_host = f"[{address}]" if ":" in address else address
                target = parts._replace(netloc=f"{ip_host}:{port}").geturl()
                headers = {"Host": parts.netloc.split("@")[-1], "Accept": "application/json"}
                request = self._http.build_request("GET", target, headers=headers,
                                                   extensions={"sni_hostname": host})
                response = await self._http.send(request, stream=True)
                try:
                    if response.status_code != 200:
                        raise ClientMetadataError(f"the client metadata document answered HTTP {response.status_code}")
                    ctype = response.headers.get("content-type", "").split(";")[0].strip().lower()
                    if ctype != "application/json" and not (ctype.startswith("application/") and ctype.endswith("+json")):
                        raise ClientMetadataError("the client metadata document is not served as application/json")
                    declared = response.headers.get("content-length")
                    if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
                        raise ClientMetadataError(f"the client metadata document is larger than {self.max_bytes} bytes")
                    async for chunk in response.aiter_raw():
                        body += chunk
                        if len(body) > self.max_bytes:
                            raise ClientMetadataError(f"the client metadata document is larger than {self.max_bytes} bytes")
                finally:
                    await response.aclose()
        except TimeoutError:
            raise ClientMetadataError("fetching the client metadata document timed out") from None
        except httpx.HTTPError as exc:
            raise ClientMetadataError(f"the client metadata document cannot be fetched ({type(exc).__name__})") from None
        try:
            data = json.loads(bytes(body))
        except ValueError:
            raise ClientMetadataError("the client metadata document is not JSON") from None
        return self.client_from_document(client_id, data)

    def client_from_document(self, client_id: str, data: Any) -> Client:
        if not isinstance(data, dict):
            raise ClientMetadataError("the client metadata document is not a JSON object")
        if data.get("client_id") != client_id:
            raise ClientMetadataError("the document's client_id is not the URL it was fetched from")
        method = data.get("token_endpoint_auth_method", "none")
        if method != "none":
            raise ClientMetadataError("a client identified by a metadata document must use token_endpoint_auth_method "
                                      "'none' (it has no shared secret)")
        if any(k in data for k in ("client_secret", "client_secret_expires_at")):
            raise ClientMetadataError("a client metadata document must not contain a client secret")
        uris = data.get("redirect_uris")
        if not isinstance(uris, list) or not uris or len(uris) > MAX_REDIRECT_URIS:
            raise ClientMetadataError(f"the document needs 1 to {MAX_REDIRECT_URIS} redirect_uris")
        for uri in uris:
            problem = redirect_uri_problem(uri) if isinstance(uri, str) else "a redirect URI must be a string"
            if problem:
                raise ClientMetadataError(problem)
        try:
            return Client.model_validate({**data, "token_endpoint_auth_method": "none", "scope": " ".join(self.scopes)})
        except ValidationError:
            raise ClientMetadataError("the client metadata document has fields of the wrong type") from None


__all__ = ["Client", "ClientMetadataError", "MetadataDocuments", "client_metadata_url_problem", "redirect_matches",
           "redirect_uri_problem", "secret_hash"]
