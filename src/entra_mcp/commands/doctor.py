"""`entra-mcp doctor`: checks the config, the shared store when one is configured, gets a token, probes each area's
Graph permission with a cheap request and prints what works and what to grant (stdout). Exit 0 all good, 1 a problem
found, 2 bad config.
"""

from __future__ import annotations

import argparse
import sys
from typing import TextIO

from entra_mcp.config import Settings, TenantSettings, load_settings
from entra_mcp.errors import AuthError, EntraMcpError, GraphError, PermissionDenied, TransientError

NAME = "doctor"
HELP = "check config, credentials and each area's Graph permission"


def add_arguments(p: argparse.ArgumentParser) -> None:
    """No options beyond --config and --log-level."""


async def doctor_tenant(t: TenantSettings, out: TextIO) -> bool:
    """Check one tenant: credentials, then each area's permission with a cheap request. True when all is well."""
    from entra_mcp.areas import REGISTRY
    from entra_mcp.graph.tenant import make_client

    ok = True
    out.write(f"tenant {t.name}: {t.tenant_id} (cloud {t.cloud}, login {t.login_host}, graph {t.graph_host})\n")
    client = make_client(t)
    try:
        try:
            await client.ensure_token()
        except AuthError as exc:
            out.write(f"  token: FAILED - {exc}\n")
            return False
        out.write("  token: ok (app-only token from the login host)\n")
        for defn in REGISTRY:
            area = defn.name
            if not getattr(t.sync, defn.switch):
                out.write(f"  {area:<22} off (turned off in config)\n")
                continue
            path, params = defn.probe
            try:
                await client.get(path, params=params, area=area)
                out.write(f"  {area:<22} ok\n")
            except PermissionDenied as exc:
                ok = False
                out.write(f"  {area:<22} MISSING - {defn.disabled_reason(exc)}\n")
            except (GraphError, TransientError, AuthError) as exc:
                ok = False
                out.write(f"  {area:<22} ERROR - {exc}\n")
    finally:
        await client.aclose()
    return ok


async def doctor_oauth(settings: Settings, out: TextIO) -> bool:
    """server.auth.mode = "oauth": can MCP clients use this server as their authorization server? True when so."""
    from urllib.parse import urlsplit

    from entra_mcp.config import _is_loopback
    from entra_mcp.oidc.provider import OidcProvider, ProviderUnavailable

    o = settings.server.auth.oauth
    public = settings.server.resolved_public_url
    ok = True
    out.write(f"oauth: issuer {public}, resource {public}/mcp, scopes {' '.join(settings.server.auth.required_scopes)}\n")
    parts = urlsplit(public)
    if parts.scheme != "https" and not _is_loopback(parts.hostname or ""):
        ok = False
        out.write("  public_url: PLAIN HTTP off loopback - MCP clients refuse such an authorization server. Fix: serve "
                  "it over https and set server.public_url to the https address\n")
    styles = [name for name, on in (("dynamic registration", o.dynamic_registration),
                                    ("client metadata documents", o.client_metadata_documents)) if on]
    if styles:
        out.write(f"  clients: {' and '.join(styles)}\n")
    else:
        ok = False
        out.write("  clients: NONE - no client can identify itself. Fix: turn on server.auth.oauth.dynamic_registration "
                  "or client_metadata_documents\n")
    provider = OidcProvider.from_tenant(settings.tenant(settings.oidc.tenant), allowed_tenants=settings.oidc.allowed_tenants)
    try:
        await provider.metadata()
        out.write(f"  sign-in: ok (people sign in through [oidc] tenant {settings.oidc.tenant}; redirect URI "
                  f"{public}/auth/callback must be registered on app {settings.oidc.client_id})\n")
    except (ProviderUnavailable, EntraMcpError) as exc:
        ok = False
        out.write(f"  sign-in: FAILED - the login host's discovery document cannot be fetched ({exc})\n")
    finally:
        await provider.aclose()
    return ok


def check_shared_store(settings: Settings, out: TextIO) -> bool:
    """[server.store]: Redis answers within start_wait_seconds (at most 5 s here) and the configured user may write,
    read, take and script under key_prefix (a probe key that expires in a second). True when all is well or no
    shared store is configured."""
    store = settings.server.store
    if not store.shared:
        return True
    from entra_mcp.sharedstore.connection import SharedRedis
    from entra_mcp.sharedstore.counters import SharedRateLimiter
    from entra_mcp.sharedstore.sessions import RedisSessionStore

    shared = SharedRedis.from_settings(store)
    try:
        try:
            shared.wait_reachable(min(store.start_wait_seconds, 5.0))
            records = RedisSessionStore(shared)
            probe = "doctor-probe-" + "x" * 30
            records.put("doctor", probe, {"ok": True}, ttl=1.0)
            taken = records.take("doctor", probe) == {"ok": True}
            SharedRateLimiter(shared, "doctor", 1_000).admit("doctor")
        except EntraMcpError as exc:
            out.write(f"shared store {shared.where}: FAILED - {exc}\n")
            return False
        if not taken:
            out.write(f"shared store {shared.where}: FAILED - a record written could not be read back\n")
            return False
        out.write(f"shared store {shared.where}: ok (sessions, sign-in state and rate limits under "
                  f"{store.key_prefix!r})\n")
        return True
    finally:
        shared.close()


def run(args: argparse.Namespace) -> int:
    import anyio

    from entra_mcp.mirror.store import MirrorStore

    settings = load_settings(getattr(args, "config", None))
    out = sys.stdout
    out.write(f"config: ok ({settings.source})\n")
    if not settings.tenants:
        out.write("no [[tenants]] configured: add one (see config.example.toml)\n")
        return 1
    for t in settings.tenants:  # bad config (missing secret variable) is exit 2
        if t.client_certificate_path is None:
            t.client_secret()
        else:
            t.client_certificate()
    if settings.server.auth.mode == "oauth":
        settings.oidc.client_secret()  # the sign-in app's secret variable unset: bad config (exit 2)
    ok = True
    store = MirrorStore(settings.server.cache_dir)
    try:
        for t in settings.tenants:
            d = store.tenant_dir(t.name)
            try:
                d.mkdir(parents=True, exist_ok=True)
                probe = d / ".doctor-write-test"
                probe.write_bytes(b"ok")
                probe.unlink()
            except OSError as exc:
                ok = False
                out.write(f"mirror {d}: NOT WRITABLE ({exc.strerror}). Fix: check server.cache_dir\n")
    finally:
        store.close()
    ok = check_shared_store(settings, out) and ok

    async def main() -> bool:
        results = []
        for t in settings.tenants:
            try:
                results.append(await doctor_tenant(t, out))
            except EntraMcpError as exc:
                out.write(f"  FAILED - {exc}\n")
                results.append(False)
        if settings.server.auth.mode == "oauth":
            results.append(await doctor_oauth(settings, out))
        return all(results)

    ok = anyio.run(main) and ok
    out.write("all good\n" if ok else "problems found: see above\n")
    return 0 if ok else 1


__all__ = ["HELP", "NAME", "add_arguments", "check_shared_store", "doctor_oauth", "doctor_tenant", "run"]
