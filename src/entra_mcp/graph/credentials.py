"""App-only tokens for Microsoft Graph through MSAL (client credentials: a client secret or a certificate).

One msal.ConfidentialClientApplication per tenant. MSAL's token cache hands back the cached token until it is close
to expiry, so `token()` simply calls acquire_token_for_client every time. MSAL's HTTP is blocking: every call runs in
a worker thread. Login-host errors become AuthError with the AADSTS code and an actionable message that never
contains the secret.
"""

from __future__ import annotations

import functools
import re
import threading
import time
from typing import Any

import anyio
import msal
import requests
import requests.adapters

from entra_mcp.config import TenantSettings
from entra_mcp.errors import AuthError, ConfigError
from entra_mcp.logs import get_logger

log = get_logger("graph.credentials")

_AADSTS_RE = re.compile(r"AADSTS(\d+)")
RENEW_BEFORE_S = 300.0  # MSAL renews a token with less than five minutes left


def certificate_credential(tenant: TenantSettings) -> dict[str, Any]:
    """MSAL's certificate credential from a PEM holding the certificate and its private key: the SHA-1 thumbprint is
    computed here and the certificate is passed as public_certificate (sent as x5c)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization

    pem, password = tenant.client_certificate()
    where = f"tenants.{tenant.name}.client_certificate_path"
    certs = re.findall(rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", pem, re.S)
    if not certs:
        raise ConfigError(f"{where}: the file holds no PEM certificate (-----BEGIN CERTIFICATE-----). Fix: put the certificate and its private key in one PEM file.")
    keys = re.findall(rb"-----BEGIN (?:RSA |EC |ENCRYPTED )?PRIVATE KEY-----.+?-----END (?:RSA |EC |ENCRYPTED )?PRIVATE KEY-----", pem, re.S)
    if not keys:
        raise ConfigError(f"{where}: the file holds no PEM private key. Fix: put the certificate and its private key in one PEM file.")
    try:
        cert = x509.load_pem_x509_certificate(certs[0])
        serialization.load_pem_private_key(keys[0], password=password.encode() if password else None)
    except (ValueError, TypeError) as exc:
        hint = " (wrong or missing client_certificate_password_env?)" if b"ENCRYPTED" in keys[0] or "password" in str(exc).lower() else ""
        raise ConfigError(f"{where}: cannot load the certificate or its private key{hint}.") from None
    cred: dict[str, Any] = {
        "private_key": keys[0].decode(),
        "thumbprint": cert.fingerprint(hashes.SHA1()).hex().upper(),  # noqa: S303 - Entra's x5t is SHA-1
        "public_certificate": certs[0].decode(),
    }
    if password:
        cred["passphrase"] = password
    return cred


def _auth_error(tenant: TenantSettings, result: dict[str, Any]) -> AuthError:
    """A clear AuthError from an MSAL error result (never the secret)."""
    desc = str(result.get("error_description") or "")
    codes = result.get("error_codes") or []
    m = _AADSTS_RE.search(desc)
    code = int(codes[0]) if codes else (int(m.group(1)) if m else None)
    first_line = desc.splitlines()[0].strip() if desc else str(result.get("error") or "unknown error")
    cred_key = (
        f"tenants.{tenant.name}.client_secret_env" if tenant.client_secret_env
        else f"tenants.{tenant.name}.client_secret_file" if tenant.client_secret_file
        else f"tenants.{tenant.name}.client_certificate_path"
    )
    label = f"AADSTS{code}" if code is not None else str(result.get("error") or "error")
    if code == 7000215:
        msg = f"the login host refused the client secret ({label}): check {cred_key}"
    elif code in (7000222,):
        msg = f"the client secret has expired ({label}): create a new one and update {cred_key}"
    elif code in (700027, 700024, 7000274, 700023):
        msg = f"the login host refused the certificate assertion ({label}): check {cred_key} and that the certificate is uploaded to the app registration"
    elif code == 90002:
        msg = f"the login host does not know the tenant {tenant.tenant_id!r} ({label}): check tenants.{tenant.name}.tenant_id and cloud"
    elif code == 700016:
        msg = f"the app {tenant.client_id!r} is not registered in tenant {tenant.tenant_id!r} ({label}): check tenants.{tenant.name}.client_id and tenant_id"
    elif code in (7000112, 7000114):
        msg = f"the app registration is disabled or has no service principal in the tenant ({label}): check tenants.{tenant.name}.client_id"
    else:
        msg = f"the login host refused the token request ({label}): {first_line[:200]}"
    return AuthError(f"tenant {tenant.name}: {msg}", aadsts=code)


class TokenProvider:
    """App-only Graph tokens for one tenant. `await token()`; `await token(force_refresh=True)` after a 401."""

    def __init__(self, tenant: TenantSettings, *, timeout: float = 30.0) -> None:
        self.tenant = tenant
        self.scope = f"{tenant.graph_host}/.default"
        self._timeout = timeout
        self._app: msal.ConfidentialClientApplication | None = None
        self._lock = threading.Lock()
        self._credential: Any = None
        self._cached: tuple[str, float] | None = None  # (token, monotonic expiry)

    def _credential_value(self) -> Any:
        if self._credential is None:
            if self.tenant.client_certificate_path is not None:
                self._credential = certificate_credential(self.tenant)
            else:
                self._credential = self.tenant.client_secret()  # raises ConfigError naming the variable
        return self._credential

    def _build_app(self) -> msal.ConfidentialClientApplication:
        tenant = self.tenant
        custom = tenant.cloud == "custom"
        verify: Any = str(tenant.ca_bundle) if tenant.ca_bundle else True
        # Our own requests session: MSAL sets `session.verify`, which REQUESTS_CA_BUNDLE / CURL_CA_BUNDLE in the
        # environment silently override; a per-request verify (and timeout) is what requests honours.
        session = requests.Session()
        adapter = requests.adapters.HTTPAdapter(max_retries=1)
        session.mount("https://", adapter)
        session.mount("http://", adapter)
        session.request = functools.partial(session.request, timeout=self._timeout, verify=verify)  # type: ignore[method-assign]
        try:
            return msal.ConfidentialClientApplication(
                tenant.client_id,
                client_credential=self._credential_value(),
                authority=tenant.authority,
                validate_authority=not custom,
                instance_discovery=False if custom else None,
                http_client=session,
            )
        except requests.exceptions.SSLError:
            raise AuthError(
                f"tenant {tenant.name}: cannot verify the TLS certificate of the login host {tenant.login_host}. "
                "Fix: set ca_bundle to the CA that signed it (TLS-inspecting proxy, local emulator), or check cloud / login_url.",
                code="AUTH_TLS",
            ) from None
        except requests.exceptions.RequestException as exc:
            raise AuthError(
                f"tenant {tenant.name}: cannot reach the login host {tenant.login_host} ({type(exc).__name__}). "
                "Fix: check cloud (or login_url for cloud = \"custom\"), the network/proxy, and ca_bundle.",
                code="AUTH_UNREACHABLE",
            ) from None
        except ValueError as exc:
            # msal raises ValueError when the authority's OpenID configuration cannot be loaded (unknown tenant on
            # the login host, or a host that is not a login host at all)
            text = f"{exc} {exc.__context__ or ''}"
            if "90002" in text or "HTTP status: 400" in text or "HTTP status: 404" in text:
                raise AuthError(
                    f"tenant {tenant.name}: the login host does not know the tenant {tenant.tenant_id!r} (AADSTS90002): "
                    f"check tenants.{tenant.name}.tenant_id and cloud",
                    aadsts=90002,
                ) from None
            raise AuthError(
                f"tenant {tenant.name}: the login host {tenant.login_host} did not serve an OpenID configuration for "
                f"tenant {tenant.tenant_id!r}. Fix: check tenant_id, cloud / login_url.",
                code="AUTH_AUTHORITY",
            ) from None

    def _acquire(self, force_refresh: bool) -> str:
        with self._lock:
            if self._app is None:
                self._app = self._build_app()
            app = self._app
            if force_refresh:
                app.remove_tokens_for_client()
            try:
                result = app.acquire_token_for_client(scopes=[self.scope])
            except requests.exceptions.SSLError:
                raise AuthError(
                    f"tenant {self.tenant.name}: cannot verify the TLS certificate of the login host {self.tenant.login_host}. "
                    "Fix: set ca_bundle, or check cloud / login_url.",
                    code="AUTH_TLS",
                ) from None
            except requests.exceptions.RequestException as exc:
                raise AuthError(
                    f"tenant {self.tenant.name}: cannot reach the login host {self.tenant.login_host} ({type(exc).__name__}). "
                    "Fix: check cloud / login_url, the network, and ca_bundle.",
                    code="AUTH_UNREACHABLE",
                ) from None
        if not isinstance(result, dict) or "access_token" not in result:
            raise _auth_error(self.tenant, result if isinstance(result, dict) else {})
        token = str(result["access_token"])
        try:
            lifetime = float(result.get("expires_in") or 0)
        except (TypeError, ValueError):
            lifetime = 0.0
        self._cached = (token, time.monotonic() + lifetime)
        if result.get("token_source") == "identity_provider":
            log.debug("tenant %s: new Graph token (expires in %ss)", self.tenant.name, result.get("expires_in"))
        return token

    async def token(self, *, force_refresh: bool = False) -> str:
        """The current token. Like MSAL's cache, a token with less than RENEW_BEFORE_S left is renewed; checking that
        here saves a worker-thread hop per Graph request."""
        cached = self._cached
        if not force_refresh and cached is not None and cached[1] - time.monotonic() > RENEW_BEFORE_S:
            return cached[0]
        return await anyio.to_thread.run_sync(self._acquire, force_refresh)


__all__ = ["TokenProvider", "certificate_credential"]
