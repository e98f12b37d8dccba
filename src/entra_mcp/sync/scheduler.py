"""Background sync for `serve`: every tenant on its own schedule (interval_minutes, with jitter), independently;
sign-in events (when enabled) also on their own, shorter schedule (sign_in_events_interval_minutes).

Many tenants: at most `[scheduler] max_concurrent_syncs` tenants sync at once; when more are due, the one due the
longest goes first (at start: never synced, then the oldest mirror), so a slow or failing tenant holds one slot and
never the others. When there are more tenants than slots, their first runs are spread over
`[scheduler] first_run_jitter_seconds` (random offsets, sorted so that the order above holds): a restart of a
server of hundreds of tenants (or of several replicas at once) does not start them all in the same second, and
their later runs (interval +-10%) stay spread. Each tenant keeps within its own Graph request budget (graph/budget.py) and a 429 pauses only that
tenant's client: throttling is per app per tenant at Graph, so one busy tenant slows no other.

A run that fails, for whatever reason (credentials refused, Graph down, the CA file gone, a bug), is logged in one
line, recorded as the last error of the tenant's enabled areas (so `/healthz`, `status` and `sync_status` say the
mirror is failing and why), and retried with backoff: 30 s, 1, 2, 4... minutes, never later than the interval. It
never stops the other tenants, the scheduler or the server. A run already in progress elsewhere (`entra-mcp sync`
holding the writer lock) makes this round wait for it briefly, then skip.

The tenants come from a `TenantRoster`, which `serve` replaces when the tenants file changes (sync/tenants_watch.py):
the dispatcher looks at it at least once a second; a new tenant is due at once, a removed one is no longer scheduled
(a run in progress finishes), a changed one runs at once with its new settings.

With several replicas (cluster/replica.py) a `gate` decides: each run happens inside `gate.run(tenant)`, which yields
whether this replica leads the tenant's sync (else the round is skipped and asked again after `gate.retry_seconds`)
and publishes what the run committed; each sign-in poll inside `gate.run(tenant, "sign_ins")` likewise. The gate
cancels a run whose lease is lost: such a run counts as not led (asked again after `gate.retry_seconds`), not as a
failure.
"""

from __future__ import annotations

import functools
import random
import time
from dataclasses import replace
from datetime import datetime, timezone
from typing import Any, AsyncContextManager, Callable, Protocol

import anyio

from entra_mcp.config import Settings, TenantSettings
from entra_mcp.errors import EntraMcpError
from entra_mcp.logs import get_logger
from entra_mcp.mirror.snapshot import AREAS, Freshness
from entra_mcp.mirror.store import MirrorStore
from entra_mcp.sync import sign_ins
from entra_mcp.sync.engine import TenantResult, sync_tenant
from entra_mcp.sync.tenants_watch import TenantRoster

log = get_logger("sync.scheduler")

ROSTER_CHECK = 1.0  # seconds: how often the dispatcher looks for a replaced tenant list at most
JITTER = 0.1  # +-10% of the interval, so tenants (and replicas) do not hit Graph in lockstep
BACKOFF_FIRST = 30.0  # seconds before the first retry of a failed run; doubles with each failure in a row


class SyncGate(Protocol):
    """Who may sync a tenant now (one leader among several replicas)."""

    retry_seconds: float

    def run(self, tenant: TenantSettings, part: str = ...) -> AsyncContextManager[bool]: ...

    def may_sync(self, tenant: str) -> bool: ...


def next_delay(interval_minutes: float, rnd: Callable[[], float] = random.random) -> float:
    """Seconds until the next run: the interval, +-10%."""
    return max(1.0, interval_minutes * 60.0 * (1.0 + JITTER * (2.0 * rnd() - 1.0)))


def retry_delay(interval_minutes: float, failures: int, rnd: Callable[[], float] = random.random) -> float:
    """Seconds until a failed run is retried: BACKOFF_FIRST doubled per failure in a row, at most the interval."""
    backoff = BACKOFF_FIRST * 2.0 ** max(0, failures - 1)
    return min(backoff * (1.0 + JITTER * (2.0 * rnd() - 1.0)), next_delay(interval_minutes, rnd))


def _record_failure(store: MirrorStore, tenant: TenantSettings, message: str) -> None:
    """The failure as the last error of each area that has synced or is still waiting for its first success."""
    now = datetime.now(timezone.utc)
    try:
        with store.writer(tenant.name, wait_seconds=5.0) as writer:
            for area in AREAS:
                prev = writer.status(area)
                if prev.enabled or prev.last_success is None:
                    writer.set_status(area, replace(prev, last_error=message, last_error_at=now))
    except Exception as exc:  # the mirror itself unwritable: the log line is all that can be done
        log.error("tenant %s: cannot record the sync failure in the mirror: %s", tenant.name, exc)


def _clear_recorded(store: MirrorStore, tenant: TenantSettings, message: str) -> None:
    """After a successful run: the failure `_record_failure` wrote is over, also in the areas the run did not need
    to touch (sign-in activity between its hourly refreshes); errors the engine recorded itself stay."""
    try:
        with store.writer(tenant.name, wait_seconds=5.0) as writer:
            for area in AREAS:
                prev = writer.status(area)
                if prev.last_error == message:
                    writer.set_status(area, replace(prev, last_error=None, last_error_at=None))
    except Exception as exc:
        log.error("tenant %s: cannot clear the recovered sync failure in the mirror: %s", tenant.name, exc)


async def _run_once(tenant: TenantSettings, store: MirrorStore) -> tuple[TenantResult | None, str | None]:
    """(result, None) or (result or None, what failed)."""
    try:
        tenant.check_files()  # a file removed since start (the emulator's CA): a clear error, not a TLS traceback
        result = await sync_tenant(tenant, store, wait_seconds=30.0)
    except EntraMcpError as exc:  # e.g. the secret's variable is unset
        return None, str(exc)
    except Exception as exc:  # anything else: a bug or an unexpected library error; the loop must go on
        problem = tenant.missing_file()
        if problem:  # the file went away during the run: the same clear message as before it
            return None, f"tenants[{tenant.name!r}].{problem}"
        log.exception("tenant %s: sync run crashed", tenant.name)
        return None, f"the sync run failed unexpectedly ({type(exc).__name__}); see the server log"
    return result, result.error


class _Schedule:
    """When each tenant is due, what its last runs did, and which are running (one event loop: no locks needed)."""

    def __init__(self, tenants: list[TenantSettings], store: MirrorStore, initial_delay: float,
                 clock: Callable[[], float], *, jitter: float = 0.0, slots: int = 0,
                 rnd: Callable[[], float] = random.random) -> None:
        """All tenants due at `initial_delay`; with more tenants than `slots`, their first runs spread over `jitter`
        seconds after it (the tenant of the oldest mirror, or none, at the earliest offset)."""
        self.clock = clock
        start = clock() + initial_delay
        self.due: dict[str, float] = {}
        self.order: dict[str, float] = {}  # tie-break among equally due tenants: the oldest mirror first
        for t in tenants:
            fresh = store.freshness(t.name)
            as_of = fresh.as_of.timestamp() if fresh is not None and fresh.as_of is not None else float("-inf")
            self.due[t.name] = start
            self.order[t.name] = as_of
        if jitter > 0 and len(tenants) > slots:
            by_age = sorted(self.due, key=lambda n: self.order[n])  # stable: config order among equals
            for name, offset in zip(by_age, sorted(rnd() * jitter for _ in by_age)):
                self.due[name] = start + offset
        self.failures = {t.name: 0 for t in tenants}
        self.recorded: dict[str, str | None] = {t.name: None for t in tenants}
        self.running: set[str] = set()

    def add(self, name: str, fresh: Freshness | None) -> None:
        """A tenant added by a reload (`fresh`: its mirror's freshness, if it has one): due now."""
        self.order[name] = fresh.as_of.timestamp() if fresh is not None and fresh.as_of is not None else float("-inf")
        self.due[name] = self.clock()
        self.failures[name] = 0
        self.recorded[name] = None

    def forget(self, name: str) -> None:
        """A tenant removed by a reload: never due again (a run in progress finishes and is not followed)."""
        for d in (self.due, self.order, self.failures, self.recorded):
            d.pop(name, None)

    def ready(self, limit: int) -> list[str]:
        """Up to `limit` due tenants not running, the one due the longest first."""
        now = self.clock()
        due = [n for n, at in self.due.items() if at <= now and n not in self.running]
        due.sort(key=lambda n: (self.due[n], self.order[n]))
        return due[:max(0, limit)]

    def next_due_in(self) -> float:
        waiting = [at for n, at in self.due.items() if n not in self.running]
        return max(0.0, min(waiting) - self.clock()) if waiting else 3600.0


async def _run_tenant(tenant: TenantSettings, store: MirrorStore, schedule: _Schedule,
                      on_result: Callable[[TenantResult], None] | None, gate: SyncGate | None = None) -> None:
    """One run of one tenant, then its next due time: the interval (+-10%) after a success, backoff after a failure,
    `gate.retry_seconds` when another replica leads this tenant's sync (it may die)."""
    name = tenant.name
    if gate is None:
        result, error = await _run_once(tenant, store)
    else:
        ran = False
        async with gate.run(tenant) as leading:  # cancels the body when the lease is lost mid-run
            if leading:
                result, error = await _run_once(tenant, store)
                ran = True
        if not ran:
            if name in schedule.order:
                schedule.due[name] = schedule.clock() + gate.retry_seconds
            return
    if name not in schedule.order:  # removed from the tenants file while it ran
        log.info("tenant %s: removed from the tenants while its sync ran; no further runs", name)
        return
    if error is None:
        schedule.failures[name] = 0
        assert result is not None
        recorded = schedule.recorded[name]
        if recorded is not None:
            await anyio.to_thread.run_sync(_clear_recorded, store, tenant, recorded)
            schedule.recorded[name] = None
        throttled = result.stats.get("throttled") or 0
        log.info("tenant %s: sync done in %.1fs (%s requests%s)", name, result.seconds, result.stats.get("requests"),
                 f", {throttled} throttled by Graph" if throttled else "")
        delay = next_delay(tenant.sync.interval_minutes)
    else:
        schedule.failures[name] += 1
        failures = schedule.failures[name]
        delay = retry_delay(tenant.sync.interval_minutes, failures)
        log.error("tenant %s: sync failed (%d in a row, next try in %.0f s): %s", name, failures, delay, error)
        if result is None:  # a failed run records its own errors per area; a run that never started cannot
            await anyio.to_thread.run_sync(_record_failure, store, tenant, error)
            schedule.recorded[name] = error
    if name not in schedule.failures:  # removed by a reload while its failure or recovery was being recorded
        schedule.recorded.pop(name, None)
        return
    schedule.due[name] = schedule.clock() + delay
    schedule.order[name] = datetime.now(timezone.utc).timestamp() if error is None else schedule.order[name]
    if on_result is not None and result is not None:
        try:
            on_result(result)
        except Exception:
            log.exception("tenant %s: the sync result handler failed", name)


async def _dispatch(roster: TenantRoster, store: MirrorStore, stop_event: anyio.Event,
                    on_result: Callable[[TenantResult], None] | None, initial_delay: float, limit: int,
                    gate: SyncGate | None = None, clock: Callable[[], float] = time.monotonic,
                    jitter: float = 0.0) -> None:
    """Start due tenants, at most `limit` at once, until stop_event is set."""
    seen = roster.generation
    tenants = roster.current()
    by_name = {t.name: t for t in tenants}
    schedule = await anyio.to_thread.run_sync(
        functools.partial(_Schedule, tenants, store, initial_delay, clock, jitter=jitter, slots=limit))

    async def follow_roster() -> None:
        # on the event loop, like every other change of `schedule`; only the added mirrors' freshness in a thread
        new = {t.name: t for t in roster.current()}
        added = [n for n in new if n not in by_name]
        fresh = await anyio.to_thread.run_sync(lambda: {n: store.freshness(n) for n in added})
        for name in [n for n in by_name if n not in new]:
            del by_name[name]
            schedule.forget(name)
            log.info("tenant %s: no longer in the tenants: not synced any more", name)
        for name, t in new.items():
            if name not in by_name:
                schedule.add(name, fresh.get(name))
                log.info("tenant %s: added to the tenants: first sync now", name)
            elif by_name[name] != t:
                schedule.due[name] = min(schedule.due.get(name, clock()), clock())
                log.info("tenant %s: its settings changed: synced now with the new ones", name)
            by_name[name] = t
    wake = anyio.Event()

    async def run(name: str) -> None:
        nonlocal wake
        try:
            await _run_tenant(by_name[name], store, schedule, on_result, gate)
        finally:
            schedule.running.discard(name)
            wake.set()

    async def relay_stop() -> None:
        await stop_event.wait()
        wake.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(relay_stop)
        while not stop_event.is_set():
            if roster.generation != seen:
                seen = roster.generation
                await follow_roster()
            for name in schedule.ready(limit - len(schedule.running)):
                schedule.running.add(name)
                tg.start_soon(run, name)
            wait = schedule.next_due_in() if len(schedule.running) < limit else 3600.0
            with anyio.move_on_after(min(wait, ROSTER_CHECK)):
                await wake.wait()
            wake = anyio.Event()
        tg.cancel_scope.cancel()


async def _sign_in_loop(tenant: TenantSettings, store: MirrorStore, stop_event: anyio.Event, first_delay: float,
                        gate: SyncGate | None = None, roster: TenantRoster | None = None) -> None:
    """The sign-in events' own poll (sign_in_events_interval_minutes, default 5), apart from the directory sync; it
    ends when the tenant leaves the roster or its sign-in events are turned off there."""
    delay = first_delay
    while not stop_event.is_set():
        with anyio.move_on_after(delay):
            await stop_event.wait()
        if stop_event.is_set():
            return
        if roster is not None:
            current = roster.get(tenant.name)
            if current is None or not current.sync.sign_in_events:
                return
            tenant = current
        delay = next_delay(tenant.sync.sign_in_events_interval_minutes)
        if gate is None:
            result = await sign_ins.poll(tenant, store)
        else:
            polled: dict[str, Any] | None = None
            async with gate.run(tenant, "sign_ins") as leading:  # catch up, poll, publish; cancelled if the lease goes
                if leading:
                    polled = await sign_ins.poll(tenant, store)
            if polled is None:
                continue
            result = polled
        if result["outcome"] in ("failed", "disabled"):
            log.warning("tenant %s: sign-in events: %s", tenant.name, result.get("message"))
        else:
            log.info("tenant %s: sign-in events %s: %s", tenant.name, result["outcome"], result.get("message"))


async def run_scheduler(
    settings: Settings,
    store: MirrorStore,
    *,
    stop_event: anyio.Event,
    on_result: Callable[[TenantResult], None] | None = None,
    initial_delay: float = 0.0,
    max_concurrent: int | None = None,
    gate: SyncGate | None = None,
    roster: TenantRoster | None = None,
) -> None:
    """Sync every tenant now (after `initial_delay`; more tenants than slots: spread over
    `[scheduler] first_run_jitter_seconds`), then every interval_minutes (+-10%), until stop_event is set; at most
    `max_concurrent` (default `[scheduler] max_concurrent_syncs`) at once. With a `gate`, only the tenants this
    replica leads."""
    limit = max_concurrent or settings.scheduler.max_concurrent_syncs
    roster = roster if roster is not None else TenantRoster(list(settings.tenants))
    async with anyio.create_task_group() as tg:
        tg.start_soon(functools.partial(_dispatch, roster, store, stop_event, on_result, initial_delay,
                                        limit, gate, jitter=settings.scheduler.first_run_jitter_seconds))
        polling: set[str] = set()
        seen = -1
        while not stop_event.is_set():
            if roster.generation != seen:  # at start, and after each reload: a loop for each tenant that has none
                seen = roster.generation
                for n, tenant in enumerate(roster.current()):
                    if tenant.sync.sign_in_events and tenant.name not in polling:
                        polling.add(tenant.name)
                        # the first directory sync polls sign-in events too; this loop takes over one interval later
                        tg.start_soon(functools.partial(
                            _watch_sign_in_loop, polling, tenant, store, stop_event,
                            initial_delay + n * 0.5 + next_delay(tenant.sync.sign_in_events_interval_minutes), gate,
                            roster))
            with anyio.move_on_after(ROSTER_CHECK):
                await stop_event.wait()
        tg.cancel_scope.cancel()


async def _watch_sign_in_loop(polling: set[str], tenant: TenantSettings, *args: Any) -> None:
    try:
        await _sign_in_loop(tenant, *args)
    finally:
        polling.discard(tenant.name)


__all__ = ["SyncGate", "TenantRoster", "next_delay", "retry_delay", "run_scheduler"]
