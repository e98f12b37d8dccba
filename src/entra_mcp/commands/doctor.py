"""`entra-mcp doctor`: checks the config, gets a token, probes each area's Graph permission with a cheap request and
prints what works and what to grant (stdout). Exit 0 all good, 1 a problem found, 2 bad config.
"""

from __future__ import annotations

import argparse
import sys
from typing import TextIO

from entra_mcp.config import TenantSettings, load_settings
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

    async def main() -> bool:
        results = []
        for t in settings.tenants:
            try:
                results.append(await doctor_tenant(t, out))
            except EntraMcpError as exc:
                out.write(f"  FAILED - {exc}\n")
                results.append(False)
        return all(results)

    ok = anyio.run(main) and ok
    out.write("all good\n" if ok else "problems found: see above\n")
    return 0 if ok else 1


__all__ = ["HELP", "NAME", "add_arguments", "doctor_tenant", "run"]
