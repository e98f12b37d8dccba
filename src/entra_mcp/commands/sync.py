"""`entra-mcp sync`: one sync run of every enabled area of each tenant (or one), then the server's index of each
changed mirror. Progress and the summary go to stderr; nothing printed ever carries a secret or a token.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import TYPE_CHECKING, TextIO

from entra_mcp.config import Settings, TenantSettings, load_settings
from entra_mcp.errors import MirrorError
from entra_mcp.logs import get_logger

if TYPE_CHECKING:  # the sync's modules load when the command runs, not when the command line is parsed
    from entra_mcp.mirror.store import MirrorStore
    from entra_mcp.sync.engine import TenantResult

log = get_logger("commands.sync")

NAME = "sync"
HELP = "one sync run of every enabled area"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tenant", help="only this tenant (its name in the config)")
    p.add_argument("--full", action="store_true", help="ignore delta links and pull everything")


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
    from entra_mcp.mirror.snapshot import AREAS

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


def run(args: argparse.Namespace) -> int:
    import anyio

    from entra_mcp.mirror.store import MirrorStore
    from entra_mcp.sync.engine import sync_tenant

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
        limiter = anyio.CapacityLimiter(settings.scheduler.max_concurrent_syncs)  # hundreds of tenants: a few at once

        async def one(t: TenantSettings) -> None:
            async with limiter:
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
        # the server's index of a changed mirror (or of one this release has not indexed yet), built now rather
        # than at the next server start
        from entra_mcp.views import prepare_views, views_to_prepare

        stale = views_to_prepare(settings.server.cache_dir, {t.name: (before[t.name], _version(store, t.name)) for t in tenants})
        if stale:
            prepare_views(settings.server.cache_dir, store, stale)
    finally:
        progress.done()
        store.close()
    return 0 if all(r.ok for r in results) else 1


def _version(store: MirrorStore, name: str) -> int:
    try:
        return store.version(name)
    except MirrorError:
        return 0


__all__ = ["HELP", "NAME", "add_arguments", "run"]
