"""Background sync for `serve`: every tenant on its own schedule (interval_minutes, with jitter), independently;
sign-in events (when enabled) also on their own, shorter schedule (sign_in_events_interval_minutes).

A tenant's failure (credentials refused, Graph down) is logged and retried at the next interval; it never stops the
other tenants or the server. A run already in progress elsewhere (`entra-mcp sync` holding the writer lock) makes
this round wait for it briefly, then skip.
"""

from __future__ import annotations

import random
from typing import Callable

import anyio

from entra_mcp.config import Settings, TenantSettings
from entra_mcp.errors import EntraMcpError
from entra_mcp.logs import get_logger
from entra_mcp.mirror.store import MirrorStore
from entra_mcp.sync import sign_ins
from entra_mcp.sync.engine import TenantResult, sync_tenant

log = get_logger("sync.scheduler")

JITTER = 0.1  # +-10% of the interval, so tenants (and replicas) do not hit Graph in lockstep


def next_delay(interval_minutes: float, rnd: Callable[[], float] = random.random) -> float:
    """Seconds until the next run: the interval, +-10%."""
    return max(1.0, interval_minutes * 60.0 * (1.0 + JITTER * (2.0 * rnd() - 1.0)))


async def _tenant_loop(tenant: TenantSettings, store: MirrorStore, stop_event: anyio.Event,
                       on_result: Callable[[TenantResult], None] | None, first_delay: float) -> None:
    delay = first_delay
    while not stop_event.is_set():
        if delay > 0:
            with anyio.move_on_after(delay):
                await stop_event.wait()
            if stop_event.is_set():
                return
        try:
            result = await sync_tenant(tenant, store, wait_seconds=30.0)
            if result.error:
                log.error("tenant %s: sync failed: %s", tenant.name, result.error)
            else:
                log.info("tenant %s: sync done in %.1fs (%s requests)", tenant.name, result.seconds, result.stats.get("requests"))
            if on_result is not None:
                on_result(result)
        except EntraMcpError as exc:  # e.g. the secret's variable is unset: say so, try again next interval
            log.error("tenant %s: sync failed: %s", tenant.name, exc)
        delay = next_delay(tenant.sync.interval_minutes)


async def _sign_in_loop(tenant: TenantSettings, store: MirrorStore, stop_event: anyio.Event, first_delay: float) -> None:
    """The sign-in events' own poll (sign_in_events_interval_minutes, default 5), apart from the directory sync."""
    delay = first_delay
    while not stop_event.is_set():
        with anyio.move_on_after(delay):
            await stop_event.wait()
        if stop_event.is_set():
            return
        result = await sign_ins.poll(tenant, store)
        if result["outcome"] in ("failed", "disabled"):
            log.warning("tenant %s: sign-in events: %s", tenant.name, result.get("message"))
        else:
            log.info("tenant %s: sign-in events %s: %s", tenant.name, result["outcome"], result.get("message"))
        delay = next_delay(tenant.sync.sign_in_events_interval_minutes)


async def run_scheduler(
    settings: Settings,
    store: MirrorStore,
    *,
    stop_event: anyio.Event,
    on_result: Callable[[TenantResult], None] | None = None,
    initial_delay: float = 0.0,
) -> None:
    """Sync every tenant now (after `initial_delay`), then every interval_minutes (+-10%), until stop_event is set."""
    async with anyio.create_task_group() as tg:
        for n, tenant in enumerate(settings.tenants):
            # stagger the first runs a little so several tenants do not start in the same second
            tg.start_soon(_tenant_loop, tenant, store, stop_event, on_result, initial_delay + n * 0.5)
            if tenant.sync.sign_in_events:
                # the first directory sync polls sign-in events too; this loop takes over from one interval later
                tg.start_soon(_sign_in_loop, tenant, store, stop_event,
                              initial_delay + n * 0.5 + next_delay(tenant.sync.sign_in_events_interval_minutes))
        await stop_event.wait()
        tg.cancel_scope.cancel()


__all__ = ["next_delay", "run_scheduler"]
