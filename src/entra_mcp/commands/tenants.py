"""`entra-mcp tenants list|add|check`: the customer tenants of a service provider's deployment.

- `list [--json]`: every configured tenant (main config and tenants file) with its mirror's state (synced, age,
  users, current error), read from the mirror alone.
- `add NAME TENANT [--redirect-uri URI]`: validates a new entry against the config (shared [tenant_defaults] merged),
  appends it to the tenants file and prints the admin-consent link that a Global Administrator of that tenant opens
  to consent to the multi-tenant app (docs/graph-facts-tenants.md).
- `check [--tenant NAME ...] [--concurrency N]`: a token and each area's permission probe per tenant (doctor's),
  several tenants at a time, one progress line per tenant, the problems in full at the end.
Exit codes: 0 all good, 1 a problem found (check), 2 bad config or an entry refused (add).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import secrets
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TextIO
from urllib.parse import urlencode

from entra_mcp.config import Settings, TenantSettings, load_settings, merge_tenant, read_tenants_file
from entra_mcp.errors import ConfigError, EntraMcpError

NAME = "tenants"
HELP = "list, add and check the configured tenants (many customer tenants, one multi-tenant app)"

DEFAULT_CONCURRENCY = 8
_GUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
_DOMAIN = re.compile(r"^(?=.{3,253}$)([A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,63}$")


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="tenants_command", metavar="list|add|check")
    sub.required = True
    ls = sub.add_parser("list", help="every configured tenant and its mirror's state")
    ls.add_argument("--json", action="store_true", help="machine-readable output")
    add = sub.add_parser("add", help="add a tenant to the tenants file and print its admin-consent link")
    add.add_argument("name", help="short name the tools take as `tenant` (letters, digits, . _ -)")
    add.add_argument("tenant_id", help="the customer's tenant id (GUID) or verified domain")
    add.add_argument("--redirect-uri", help="where Entra sends the admin after consent (registered on the app; "
                     "default: the server's public_url)")
    check = sub.add_parser("check", help="get a token and probe each area's permission, per tenant")
    check.add_argument("--tenant", action="append", default=[], help="only this tenant (repeatable)")
    check.add_argument("--concurrency", type=int, default=DEFAULT_CONCURRENCY, help="tenants checked at once (1-64)")


# ------------------------------------------------------------------------------------------------------------ list


def list_report(settings: Settings, store: Any, *, now: datetime | None = None) -> list[dict[str, Any]]:
    """One row per tenant: name, tenantId, where it is configured, synced, asOf, ageSeconds, users, lastError."""
    from entra_mcp.identity.status import current_error
    from entra_mcp.identity.text import iso

    now = now or datetime.now(timezone.utc)
    file_names = _file_names(settings)
    rows = []
    for t in settings.tenants:
        fresh = store.freshness(t.name)
        areas = fresh.areas if fresh is not None else {}
        errors = [e for e in (current_error(st) for st in areas.values() if st.enabled) if e]
        users = areas.get("users")
        rows.append({
            "tenant": t.name,
            "tenantId": t.tenant_id,
            "configuredIn": "tenants_file" if t.name in file_names else "config",
            "synced": bool(fresh is not None and fresh.as_of is not None and fresh.version > 0),
            "asOf": iso(fresh.as_of) if fresh is not None and fresh.as_of else None,
            "ageSeconds": round((now - fresh.as_of).total_seconds()) if fresh is not None and fresh.as_of else None,
            "users": users.object_count if users is not None else None,
            "lastError": errors[0] if errors else None,
        })
    return rows


def _file_names(settings: Settings) -> set[str]:
    if settings.tenants_file is None or not Path(settings.tenants_file).is_file():
        return set()
    try:
        return {str(e.get("name")) for e in read_tenants_file(Path(settings.tenants_file))}
    except ConfigError:
        return set()


def _age_text(seconds: int | None) -> str:
    if seconds is None:
        return "never"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit} ago"
    return f"{seconds}s ago"


def run_list(settings: Settings, out: TextIO, as_json: bool) -> int:
    from entra_mcp.mirror.store import MirrorStore

    store = MirrorStore(settings.server.cache_dir)
    try:
        rows = list_report(settings, store)
    finally:
        store.close()
    if as_json:
        out.write(json.dumps({"tenants": rows}, indent=2) + "\n")
        return 0
    if not rows:
        out.write("no tenants configured: add one with `entra-mcp tenants add NAME TENANT` (needs tenants_file)\n")
        return 0
    width = max(len(r["tenant"]) for r in rows)
    for r in rows:
        state = "synced " + _age_text(r["ageSeconds"]) if r["synced"] else "not synced yet"
        users = f", {r['users']} users" if r["users"] is not None and r["synced"] else ""
        error = f"  FAILING: {r['lastError'][:160]}" if r["lastError"] else ""
        out.write(f"{r['tenant']:<{width}}  {r['tenantId']:<36}  {state}{users}{error}\n")
    synced = sum(r["synced"] for r in rows)
    failing = sum(bool(r["lastError"]) for r in rows)
    out.write(f"{len(rows)} tenants: {synced} synced, {len(rows) - synced} not yet, {failing} failing\n")
    return 0


# ------------------------------------------------------------------------------------------------------------- add


def admin_consent_url(tenant: TenantSettings, redirect_uri: str, state: str | None = None) -> str:
    """The v2.0 admin-consent link for `tenant`'s app: its cloud's login host, the tenant, the app's client id, the
    app's configured application permissions on that cloud's Graph (`{graph}/.default`), where to come back."""
    query = {"client_id": tenant.client_id, "scope": f"{tenant.graph_host}/.default", "redirect_uri": redirect_uri,
             "state": state or secrets.token_urlsafe(12)}
    return f"{tenant.login_host}/{tenant.tenant_id}/v2.0/adminconsent?{urlencode(query)}"


def new_entry(settings: Settings, name: str, tenant_id: str) -> tuple[dict[str, Any], TenantSettings]:
    """The tenants-file entry for (name, tenant_id) and the tenant it makes with the shared defaults; ConfigError
    saying what is wrong (a taken name or tenant id, a malformed id, defaults that do not make a usable tenant)."""
    tenant_id = tenant_id.strip()
    if not (_GUID.match(tenant_id) or _DOMAIN.match(tenant_id)):
        raise ConfigError(f"{tenant_id[:80]!r} is neither a tenant id (a GUID) nor a domain name. Fix: pass the "
                          "customer's Directory (tenant) ID from the Entra admin center, or a verified domain.")
    for t in settings.tenants:
        if t.name.casefold() == name.casefold():
            raise ConfigError(f"a tenant named {t.name!r} is already configured. Fix: choose another name.")
        if t.tenant_id.casefold() == tenant_id.casefold():
            raise ConfigError(f"tenant {tenant_id} is already configured as {t.name!r}.")
    entry = {"name": name, "tenant_id": tenant_id}
    from pydantic import ValidationError

    try:
        tenant = TenantSettings.model_validate(merge_tenant(settings.tenant_defaults, entry),
                                               context={"check_files": False})
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'entry'}: {e['msg'].removeprefix('Value error, ')}"
                             for e in exc.errors())
        raise ConfigError(f"the new entry {name!r} would not be a usable tenant: {problems}. Fix: set the shared keys "
                          "(client_id and a credential) in [tenant_defaults] of the config.") from None
    return entry, tenant


def append_entry(path: Path, entry: dict[str, Any]) -> None:
    """Append one [[tenants]] table to the tenants file, atomically (a reader never sees half an entry)."""
    old = path.read_text(encoding="utf-8") if path.exists() else ""
    block = "[[tenants]]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in entry.items())
    text = old + ("\n" if old and not old.endswith("\n\n") else "") + block
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def run_add(settings: Settings, args: argparse.Namespace, out: TextIO) -> int:
    if settings.tenants_file is None:
        raise ConfigError("`tenants add` writes to the tenants file, and the config names none. Fix: add "
                          'tenants_file = "tenants.toml" (relative to the config) at the top of the config.')
    if not re.match(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$", args.name):
        raise ConfigError(f"tenant name {args.name[:80]!r}: use letters, digits, '.', '_' and '-' (at most 64, "
                          "starting with a letter or digit).")
    entry, tenant = new_entry(settings, args.name, args.tenant_id)
    path = Path(settings.tenants_file)
    append_entry(path, entry)
    redirect = args.redirect_uri or settings.server.resolved_public_url + "/"
    out.write(f"added tenant {args.name} ({tenant.tenant_id}) to {path}\n\n")
    out.write("A Global Administrator (or Privileged Role Administrator) of that tenant opens this link to consent to "
              f"the app {tenant.client_id} and its application permissions:\n\n  {admin_consent_url(tenant, redirect)}\n\n")
    out.write(f"Entra then sends the browser to {redirect} with admin_consent=True and the tenant id (the redirect URI "
              "must be registered on the app). Then run `entra-mcp tenants check --tenant "
              f"{args.name}`; a running `serve` picks the tenant up at its next start.\n")
    return 0


# ----------------------------------------------------------------------------------------------------------- check


async def check_tenants(tenants: list[TenantSettings], out: TextIO, *, concurrency: int) -> list[tuple[str, bool, str]]:
    """doctor's checks for each tenant, `concurrency` at once; a progress line per tenant as it finishes;
    [(name, ok, the full report)] in the tenants' order."""
    import anyio

    from entra_mcp.commands.doctor import doctor_tenant

    results: dict[str, tuple[bool, str]] = {}
    limiter = anyio.CapacityLimiter(max(1, min(64, concurrency)))
    started = time.monotonic()

    async def one(t: TenantSettings) -> None:
        buf = io.StringIO()
        async with limiter:
            try:
                ok = await doctor_tenant(t, buf)
            except EntraMcpError as exc:
                buf.write(f"  FAILED - {exc}\n")
                ok = False
        results[t.name] = (ok, buf.getvalue())
        problems = [ln.strip() for ln in buf.getvalue().splitlines()[1:] if "ok" not in ln.split()[1:2] and
                    not ln.strip().endswith("(turned off in config)")]
        summary = "ok" if ok else "PROBLEM: " + ("; ".join(problems)[:200] or "see below")
        out.write(f"[{len(results)}/{len(tenants)} {time.monotonic() - started:.0f}s] {t.name}: {summary}\n")
        out.flush()

    async with anyio.create_task_group() as tg:
        for t in tenants:
            tg.start_soon(one, t)
    return [(t.name, *results[t.name]) for t in tenants]


def run_check(settings: Settings, args: argparse.Namespace, out: TextIO) -> int:
    import anyio

    tenants = [settings.tenant(n) for n in args.tenant] if args.tenant else list(settings.tenants)
    if not tenants:
        out.write("no tenants configured\n")
        return 1
    for t in tenants:  # a missing secret variable is bad config (exit 2), said before any request
        if t.client_certificate_path is None:
            t.client_secret()
        else:
            t.client_certificate()
    results = anyio.run(lambda: check_tenants(tenants, out, concurrency=args.concurrency))
    bad = [(name, report) for name, ok, report in results if not ok]
    if bad:
        out.write(f"\n{len(bad)} of {len(results)} tenants have problems:\n")
        for _, report in bad:
            out.write(report)
        return 1
    out.write(f"all {len(results)} tenants good\n")
    return 0


def run(args: argparse.Namespace) -> int:
    what = args.tenants_command
    settings = load_settings(getattr(args, "config", None), check_files=what != "list")
    out = sys.stdout
    if what == "list":
        return run_list(settings, out, args.json)
    if what == "add":
        return run_add(settings, args, out)
    return run_check(settings, args, out)


__all__ = ["HELP", "NAME", "add_arguments", "admin_consent_url", "append_entry", "check_tenants", "list_report",
           "new_entry", "run"]
