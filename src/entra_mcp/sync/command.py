"""`entra-mcp sync`, `entra-mcp status` and `entra-mcp doctor`.

Output goes to stderr except `status` (and `doctor`'s report), which print their answer on stdout. Nothing printed
ever carries a secret or a token.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import datetime, timezone
from typing import Any, TextIO

import anyio

from entra_mcp.config import Settings, TenantSettings, load_settings
from entra_mcp.errors import AuthError, EntraMcpError, GraphError, MirrorError, PermissionDenied, TransientError
from entra_mcp.logs import get_logger
from entra_mcp.mirror.snapshot import AREAS
from entra_mcp.mirror.store import MirrorStore
from entra_mcp.sync import areas as A
from entra_mcp.sync.engine import TenantResult, disabled_reason, make_client, sync_tenant

log = get_logger("sync.command")


class _Progress:
    """A one-line live display on a terminal (stderr only, only when it is a TTY); log lines otherwise."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.tty = stream.isatty()
        self.counts: dict[tuple[str, str], int] = {}
        self._last = 0.0
        self._last_log: dict[tuple[str, str], float] = {}

    def __call__(self, tenant: str, area: str, n: int) -> None:
        self.counts[(tenant, area)] = n
        now = time.monotonic()
        if self.tty:
            if now - self._last >= 0.2:
                self._last = now
                parts = [f"{a} {c:,}" for (t, a), c in self.counts.items() if t == tenant]
                self.stream.write(f"\r\x1b[K[{tenant}] " + "  ".join(parts))
                self.stream.flush()
        elif now - self._last_log.get((tenant, area), 0.0) >= 2.0:
            self._last_log[(tenant, area)] = now
            log.info("progress: tenant %s: %s %d objects so far", tenant, area, n)

    def done(self) -> None:
        if self.tty and self.counts:
            self.stream.write("\r\x1b[K")
            self.stream.flush()


def _tenants(settings: Settings, name: str | None) -> list[TenantSettings]:
    if name:
        return [settings.tenant(name)]
    if not settings.tenants:
        settings.tenant(None)  # raises the "no tenants" ConfigError
    return list(settings.tenants)


def _summary(result: TenantResult, out: TextIO) -> None:
    head = "failed" if not result.ok else "done"
    s = result.stats
    out.write(f"tenant {result.tenant}: {head} in {result.seconds:.1f}s, {s.get('requests', 0)} requests, "
              f"{s.get('retries', 0)} retries, {s.get('throttled', 0)} throttled\n")
    if result.error:
        out.write(f"  error: {result.error}\n")
    for area in AREAS:
        r = result.areas.get(area)
        if r is None:
            continue
        count = f"{r.objects:,} objects" if r.objects is not None else ""
        changes = f", {r.changes:,} changes" if r.outcome == "delta" else ""
        note = f" - {r.message}" if r.message else ""
        out.write(f"  {area:<22} {r.outcome:<9} {count}{changes} ({r.requests} requests, {r.seconds:.1f}s){note}\n")
    disabled = [a for a, r in result.areas.items() if r.outcome == "disabled"]
    if disabled:
        out.write(f"  disabled for missing permissions: {', '.join(disabled)} (run `entra-mcp doctor` for what to grant)\n")


def run_sync(args: argparse.Namespace) -> int:
    settings = load_settings(getattr(args, "config", None))
    tenants = _tenants(settings, getattr(args, "tenant", None))
    for t in tenants:  # a missing secret variable is bad config (exit 2), found before any work
        if t.client_certificate_path is None:
            t.client_secret()
        else:
            t.client_certificate()
    store = MirrorStore(settings.server.cache_dir)
    progress = _Progress(sys.stderr)
    before = {t.name: _version(store, t.name) for t in tenants}

    async def main() -> list[TenantResult]:
        results: list[TenantResult] = []

        async def one(t: TenantSettings) -> None:
            results.append(await sync_tenant(t, store, full=bool(getattr(args, "full", False)), progress=progress))

        async with anyio.create_task_group() as tg:
            for t in tenants:
                tg.start_soon(one, t)
        return results

    try:
        results = anyio.run(main)
        progress.done()
        for r in sorted(results, key=lambda r: r.tenant):
            _summary(r, sys.stderr)
        changed = [t.name for t in tenants if _version(store, t.name) not in (before[t.name], 0)]
        if changed:
            # the server's index of a changed mirror, built now rather than at the next server start (the one place
            # the sync reaches into server/: that is where the index and its cache live)
            from entra_mcp.server.views import prepare_views

            prepare_views(settings.server.cache_dir, store, changed)
    finally:
        progress.done()
        store.close()
    return 0 if all(r.ok for r in results) else 1


def _version(store: MirrorStore, name: str) -> int:
    try:
        return store.version(name)
    except MirrorError:
        return 0


def _iso(dt: Any) -> str | None:
    return dt.isoformat().replace("+00:00", "Z") if isinstance(dt, datetime) else None


def _age(dt: Any, now: datetime) -> float | None:
    return round((now - dt).total_seconds(), 1) if isinstance(dt, datetime) else None


def status_report(settings: Settings, store: MirrorStore, *, now: datetime | None = None) -> dict[str, Any]:
    """What `status --json` prints: per tenant and area, no secrets."""
    now = now or datetime.now(timezone.utc)
    tenants = []
    for t in settings.tenants:
        try:
            info, mirror_error = store.info(t.name), None
        except MirrorError as exc:  # a full or read-only disk: report it per tenant, status itself still answers
            info, mirror_error = None, str(exc)
        areas = {}
        for area in AREAS:
            st = info["areas"][area]["status"] if info else None
            in_config = bool(getattr(t.sync, A.AREA_SWITCH[area]))
            meta = info["areas"][area]["meta"] if info else {}
            areas[area] = {
                "enabled": (st.enabled if st else True) and in_config,
                "disabledReason": (st.disabled_reason if st else None) if in_config else "turned off in config",
                "lastSuccess": _iso(st.last_success) if st else None,
                "lastError": st.last_error if st else None,
                "lastErrorAt": _iso(st.last_error_at) if st else None,
                "objectCount": st.object_count if st else None,
                "mode": st.mode if st else None,
                "ageSeconds": _age(st.last_success, now) if st else None,
                "hasDeltaLink": info["areas"][area]["has_delta_link"] if info else False,
                **({"memberships": meta["memberships"]} if "memberships" in meta else {}),
            }
        tenants.append({
            "name": t.name,
            "tenantId": t.tenant_id,
            "cloud": t.cloud,
            "graphUrl": t.graph_host,
            "mirror": str(store.tenant_dir(t.name)),
            "mirrorError": mirror_error,
            "synced": info is not None and info["as_of"] is not None,
            "asOf": _iso(info["as_of"]) if info else None,
            "ageSeconds": _age(info["as_of"], now) if info else None,
            "version": info["version"] if info else 0,
            "lastRun": _last_run(info.get("last_run") if info else None),
            "intervalMinutes": t.sync.interval_minutes,
            "areas": areas,
        })
    return {"generatedAt": _iso(now), "tenants": tenants}


def _last_run(run: dict[str, Any] | None) -> dict[str, Any] | None:
    if not run:
        return None
    keys = ("seconds", "full", "ok", "requests", "retries", "throttled", "tokenRefreshes", "secondsWaiting", "byArea")
    return {"at": _iso(run.get("at")), **{k: run.get(k) for k in keys}}


def _fmt_age(seconds: float | None) -> str:
    if seconds is None:
        return "never"
    if seconds < 120:
        return f"{seconds:.0f}s ago"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m ago"
    if seconds < 172800:
        return f"{seconds / 3600:.1f}h ago"
    return f"{seconds / 86400:.1f}d ago"


def run_status(args: argparse.Namespace) -> int:
    settings = load_settings(getattr(args, "config", None))
    store = MirrorStore(settings.server.cache_dir)
    try:
        report = status_report(settings, store)
    finally:
        store.close()
    if getattr(args, "json", False):
        sys.stdout.write(json.dumps(report, indent=2) + "\n")
        return 0
    out = sys.stdout
    if not report["tenants"]:
        out.write("no tenants configured\n")
    for t in report["tenants"]:
        state = f"synced {_fmt_age(t['ageSeconds'])} (version {t['version']})" if t["synced"] else "never synced"
        out.write(f"tenant {t['name']} ({t['tenantId']}, cloud {t['cloud']}): {state}; mirror {t['mirror']}\n")
        if t["mirrorError"]:
            out.write(f"  mirror unreadable: {t['mirrorError']}\n")
        run = t["lastRun"]
        if run:
            out.write(f"  last run {run['at']}: {'full' if run['full'] else 'delta'}, {'ok' if run['ok'] else 'with failures'},"
                      f" {run['seconds']:.1f}s, {run['requests']} requests, {run['retries']} retries, {run['throttled']} throttled\n")
        for area, a in t["areas"].items():
            if not a["enabled"]:
                line = f"disabled: {a['disabledReason']}"
            elif a["lastSuccess"] is None:
                line = "enabled, not synced yet"
            else:
                extra = f", {a['memberships']:,} memberships" if "memberships" in a else ""
                count = f"{a['objectCount']:,}" if a["objectCount"] is not None else "?"
                line = f"ok, {count} objects{extra}, last success {_fmt_age(a['ageSeconds'])} ({a['mode']})"
            if a["lastError"] and a["enabled"]:
                line += f"; last error {a['lastErrorAt']}: {a['lastError']}"
            out.write(f"  {area:<22} {line}\n")
    return 0


async def doctor_tenant(t: TenantSettings, out: TextIO) -> bool:
    """Check one tenant: credentials, then each area's permission with a cheap request. True when all is well."""
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
        for area in AREAS:
            if not getattr(t.sync, A.AREA_SWITCH[area]):
                out.write(f"  {area:<22} off (turned off in config)\n")
                continue
            path, params = A.AREA_PROBE[area]
            try:
                await client.get(path, params=params, area=area)
                out.write(f"  {area:<22} ok\n")
            except PermissionDenied as exc:
                ok = False
                out.write(f"  {area:<22} MISSING - {disabled_reason(area, exc)}\n")
            except (GraphError, TransientError, AuthError) as exc:
                ok = False
                out.write(f"  {area:<22} ERROR - {exc}\n")
    finally:
        await client.aclose()
    return ok


def run_doctor(args: argparse.Namespace) -> int:
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


__all__ = ["doctor_tenant", "run_doctor", "run_status", "run_sync", "status_report"]
