"""`entra-mcp serve`: load the config, open the mirror, start the background sync (unless --no-sync), serve MCP over
stdio or streamable HTTP until stopped.

In stdio mode the real stdout is claimed first thing (server/stdio.py), before config loading or any import could
write to it.
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import threading
import time
from typing import Any, Callable, Iterator

from entra_mcp.config import Settings, load_settings, parse_settings
from entra_mcp.errors import ConfigError
from entra_mcp.logs import get_logger
from entra_mcp.server.stdio import StdoutWire, run_stdio

log = get_logger("commands.serve")

NAME = "serve"
HELP = "run the MCP server (syncs in the background unless --no-sync)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--transport", choices=["stdio", "http"])
    p.add_argument("--host")
    p.add_argument("--port", type=int)
    p.add_argument("--no-sync", action="store_true", help="serve the mirror as it is; do not sync in the background")


# ------------------------------------------------------------------ sign-in hooks


def _sign_in_hooks(settings: Settings, store: Any, shared: Any = None) -> Any:
    """The sign-in part's hooks: `entra_mcp.server.auth.build_hooks(settings, store)` gives `protect` (wraps the
    /mcp ASGI app; None for mode "none"), `routes` (/auth/*, /.well-known/oauth-protected-resource...) and
    `sessions` (the chat-session validator; None when [oidc] is off). `shared`: the [server.store] connection."""
    from entra_mcp.server.auth import build_hooks

    return build_hooks(settings, store, shared=shared)


def open_shared_store(settings: Settings) -> Any:
    """The [server.store] connection, once Redis answers (None without redis_url). Redis unreachable at start is an
    error (StoreUnavailable, exit 1) after server.store.start_wait_seconds: a replica that started without it would
    sign users in where the other replicas cannot see them. Once started, an outage is survived (docs/deployment.md)."""
    if not settings.server.store.shared:
        return None
    from entra_mcp.sharedstore.connection import SharedRedis

    shared = SharedRedis.from_settings(settings.server.store)
    try:
        shared.wait_reachable(settings.server.store.start_wait_seconds)
    except BaseException:
        shared.close()
        raise
    log.info("shared store: Redis at %s (sessions, sign-in state and rate limits shared; /mcp stateless)", shared.where)
    return shared


def _close_hooks(hooks: Any) -> None:
    aclose = getattr(hooks, "aclose", None)
    if aclose is None:
        return
    import anyio

    try:
        anyio.run(aclose)
    except Exception:  # closing HTTP clients at exit must not turn a clean stop into an error
        log.debug("closing the sign-in hooks failed", exc_info=True)


# ------------------------------------------------------------------ background sync


def _start_scheduler(settings: Settings, store: Any, stop: threading.Event, *, initial_delay: float = 0.0,
                     sync: bool = True, replication: Any = None, roster: Any = None) -> threading.Thread:
    """Run the sync scheduler (with `sync`) and, with several replicas, the lease keeper and the follower of the
    published versions (cluster/replica.py) on their own thread and event loop until `stop` is set."""
    import anyio

    from entra_mcp.sync.scheduler import run_scheduler

    async def main() -> None:
        stop_event = anyio.Event()

        async def relay() -> None:
            await anyio.to_thread.run_sync(stop.wait, abandon_on_cancel=True)
            stop_event.set()

        async with anyio.create_task_group() as tg:
            tg.start_soon(relay)
            if replication is not None:
                tg.start_soon(replication.keep_leases, stop_event)
                tg.start_soon(replication.follow, stop_event)
            if sync:
                await run_scheduler(settings, store, stop_event=stop_event, initial_delay=initial_delay, gate=replication,
                                    roster=roster)
            else:
                await stop_event.wait()
            tg.cancel_scope.cancel()

    def work() -> None:
        try:
            anyio.run(main)
        except Exception:  # the server goes on answering from the mirror it has
            log.exception("background sync stopped")

    t = threading.Thread(target=work, name="entra-mcp-sync", daemon=True)
    t.start()
    return t


def _replication(settings: Settings, store: Any, shared: Any, *, lead: bool, view_cache: bool = True) -> Any:
    """The leader/follower part when `[server.store] snapshot_dir` is set (several replicas), else None."""
    conf = settings.server.store
    if conf.snapshot_dir is None or shared is None:
        return None
    from entra_mcp.cluster.replica import Replication
    from entra_mcp.views import ShippedViews

    replication = Replication([t.name for t in settings.tenants], store, shared, snapshot_dir=conf.snapshot_dir,
                              lease_seconds=conf.lease_seconds, poll_seconds=conf.snapshot_poll_seconds,
                              keep=conf.snapshot_keep, lead=lead,
                              views=ShippedViews(settings.server.cache_dir, store) if view_cache else None)
    log.info("replica %s: %s the sync lease of each tenant; published versions in %s", replication.holder,
             "competes for" if lead else "follows (--no-sync), never takes", conf.snapshot_dir)
    return replication


def _watch_tenants(settings: Settings, views: Any, roster: Any, stop: threading.Event, *,
                   replicated: bool) -> threading.Thread | None:
    """With a tenants file: follow it (sync/tenants_watch.py), polling it and on SIGHUP; new tenants are served and
    scheduled, removed ones become unknown and stop syncing. None without a tenants file."""
    if settings.tenants_file is None or settings.source is None:
        return None
    from entra_mcp.sync.tenants_watch import TenantsWatch
    from entra_mcp.views import TenantInfo

    def apply(new: Settings) -> None:
        views.set_tenants([TenantInfo(t.name, t.tenant_id, t.sync.interval_minutes) for t in new.tenants])
        roster.replace(list(new.tenants))

    def refuse(new: Settings) -> None:
        log.warning("the tenants file changed: with several replicas ([server.store] snapshot_dir) a new tenant list "
                    "applies at a restart of each replica (the sync leases follow the list each one started with)")

    def load() -> Settings:  # the file as serve would read it now, with the command line's host/port/transport
        server = settings.server
        return _apply_overrides(load_settings(settings.source), transport=server.transport, host=server.host,
                                port=server.port)

    watch = TenantsWatch(settings, refuse if replicated else apply, load=load)
    try:
        signal.signal(signal.SIGHUP, lambda signum, frame: watch.request())
    except (ValueError, AttributeError):  # not the main thread (tests serving in-process), or no SIGHUP here
        pass
    poll = settings.scheduler.tenants_file_poll_seconds
    t = threading.Thread(target=watch.run, args=(stop, poll), name="entra-mcp-tenants-watch", daemon=True)
    t.start()
    stop_watch = stop

    def wake() -> None:  # a watch without polling waits for a request: wake it when serving ends
        stop_watch.wait()
        watch.request()

    threading.Thread(target=wake, name="entra-mcp-tenants-watch-stop", daemon=True).start()
    return t


# ------------------------------------------------------------------ serving


def _apply_overrides(settings: Settings, **overrides: Any) -> Settings:
    changes = {k: v for k, v in overrides.items() if v is not None}
    if not changes:
        return settings
    data = settings.model_dump(mode="python")
    data["server"].update(changes)
    # the tenants are in `data` already (merged); the file they came from is remembered for the reload
    return parse_settings(data, source=settings.source).model_copy(update={"tenants_file": settings.tenants_file})


class _Terminated(SystemExit):
    """SIGTERM: stop serving the way Ctrl-C does, and exit 0 (a service manager's normal stop is not a failure).

    A SystemExit, because asyncio and uvicorn let only SystemExit and KeyboardInterrupt out of their loops (any other
    exception raised by a signal handler inside a callback is logged and swallowed)."""

    def __init__(self) -> None:
        super().__init__(0)


@contextlib.contextmanager
def _sigterm_stops() -> Iterator[None]:
    """While serving, SIGTERM unwinds the server (transport, background sync, sign-in hooks, store) cleanly. uvicorn
    handles SIGTERM itself while it runs and re-raises it once it has shut down: it then lands here too."""

    def stop(signum: int, frame: Any) -> None:
        raise _Terminated()

    try:
        previous = signal.signal(signal.SIGTERM, stop)
    except ValueError:  # not the main thread (tests serving from a worker thread): leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def check_port_free(host: str, port: int) -> None:
    """ConfigError (exit 2) when the HTTP port is taken, said before anything slow starts."""
    import socket

    if not port:
        return
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds: TIME_WAIT is no conflict
        try:
            sock.bind((host, port))
        except OSError as exc:
            raise ConfigError(
                f"cannot listen on {host}:{port} ({exc.strerror or exc}): another process (another entra-mcp?) uses "
                "that port. Fix: pass --port with a free port, or stop the other process."
            ) from None


FDS_PER_TENANT = 24  # open files a tenant's mirror can hold (its SQLite databases, one connection per thread reading it)


def raise_open_files_limit(tenants: int) -> None:
    """Raise this process's soft limit of open files to its hard limit (as many servers do at start): each open
    tenant mirror keeps database files open (`tenants`: how many may be open at once, at most
    [server] max_open_mirrors). Warns when even the hard limit looks too small for that many."""
    try:
        import resource
    except ImportError:  # pragma: no cover - not POSIX
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = hard if hard != resource.RLIM_INFINITY else max(soft, 1_048_576)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
            soft = wanted
        except (ValueError, OSError) as exc:
            log.debug("cannot raise the open files limit: %s", exc)
    need = 256 + FDS_PER_TENANT * tenants
    if soft != resource.RLIM_INFINITY and soft < need:
        log.warning("the open files limit is %d and %d tenants may need about %d: raise it (ulimit -n, systemd "
                    "LimitNOFILE=) or the server will fail with 'Too many open files' as tenants are used", soft,
                    tenants, need)


def serve(
    settings: Settings,
    *,
    background_sync: bool,
    wire: StdoutWire | None = None,
    on_ready: Callable[[str], None] | None = None,
    sync_delay: float = 0.0,
    view_cache: bool = True,
) -> int:
    """Serve until stopped. `on_ready(where)` is called once the server accepts connections (or reads stdin);
    the background sync (when on) first runs `sync_delay` seconds after the start; `view_cache` keeps built views
    on disk for the next start."""
    if not settings.tenants:
        raise ConfigError("no [[tenants]] are configured. Fix: add a [[tenants]] table (see config.example.toml), or try `entra-mcp demo`.")
    started = time.perf_counter()
    if settings.server.transport == "http":
        check_port_free(settings.server.host, settings.server.port)
    with _sigterm_stops():
        shared = None
        try:
            shared = open_shared_store(settings)
            _serve(settings, background_sync=background_sync, wire=wire, on_ready=on_ready, sync_delay=sync_delay,
                   view_cache=view_cache, started=started, shared=shared)
        except _Terminated:
            log.info("stopped (SIGTERM)")
        finally:
            if shared is not None:
                shared.close()
    return 0


def _serve(
    settings: Settings,
    *,
    background_sync: bool,
    wire: StdoutWire | None,
    on_ready: Callable[[str], None] | None,
    sync_delay: float,
    view_cache: bool,
    started: float,
    shared: Any = None,
) -> None:
    from entra_mcp.mirror.store import MirrorStore
    from entra_mcp.views import ViewProvider

    raise_open_files_limit(min(len(settings.tenants), settings.server.max_open_mirrors))
    store = MirrorStore(settings.server.cache_dir, max_open=settings.server.max_open_mirrors)
    views = None
    try:
        views = ViewProvider.from_settings(settings, store, cache=view_cache)
        # before the MCP SDK's import (~1 s): a cold start's child works on the other CPU meanwhile
        views.start_early_index()
        from entra_mcp.server.app import create_server
        from entra_mcp.server.http import run_http

        views.warm(freeze=True)
        unsynced = [tv.name for tv in views.statuses() if not tv.synced]
        for name in unsynced[:10]:
            log.warning("tenant %s has no mirror yet: answers will be empty until a sync completes", name)
        if len(unsynced) > 10:
            log.warning("%d more tenants have no mirror yet", len(unsynced) - 10)
        hooks = _sign_in_hooks(settings, store, shared)
        try:
            what_if = None
            if any(t.allow_live_what_if for t in settings.tenants):
                # only then: it brings msal and the Graph client (~0.2 s of a start without them)
                from entra_mcp.graph.what_if import LiveWhatIf

                what_if = LiveWhatIf(settings)
            replication = _replication(settings, store, shared, lead=background_sync, view_cache=view_cache)
            from entra_mcp.identity.sign_ins import SignInLogs

            sign_ins = SignInLogs(store)
            server = create_server(settings, views=views, sessions=hooks.sessions, what_if=what_if,
                                   replication=replication.status if replication is not None else None, sign_ins=sign_ins)
            sign_ins.warm(t.name for t in settings.tenants if t.sync.sign_in_events)
            from entra_mcp.sync.tenants_watch import TenantRoster

            stop = threading.Event()
            roster = TenantRoster(list(settings.tenants))
            scheduler = (_start_scheduler(settings, store, stop, initial_delay=sync_delay, sync=background_sync,
                                          replication=replication, roster=roster)
                         if background_sync or replication is not None else None)
            _watch_tenants(settings, views, roster, stop, replicated=replication is not None)
            try:
                if settings.server.transport == "stdio":
                    log.info("serving MCP over stdio (ready in %.2f s)", time.perf_counter() - started)
                    if on_ready:
                        on_ready("stdio")
                    run_stdio(server, wire or StdoutWire())
                else:
                    run_http(settings, server, views, protect=hooks.protect, routes=hooks.routes, started=started,
                             on_ready=on_ready, replication=replication.health if replication is not None else None,
                             shared_store=shared.reachable if shared is not None else None)
            finally:
                stop.set()
                if scheduler is not None:
                    scheduler.join(timeout=5)
        finally:
            _close_hooks(hooks)
    finally:
        if views is not None:
            views.finish_writes()  # no forked index writer outlives the server
            views.thaw()  # serving ended: a process that goes on (a test, the demo) collects as usual again
        store.close()


def run(args: argparse.Namespace) -> int:
    # Claim stdout before anything (config loading, imports, the sync) could write to it, unless HTTP is asked for
    # on the command line; with transport = "http" from the config it is claimed and unused, which is harmless.
    wire = StdoutWire() if getattr(args, "transport", None) != "http" else None
    try:
        settings = load_settings(getattr(args, "config", None))
        settings = _apply_overrides(settings, transport=args.transport, host=args.host, port=args.port)
        return serve(settings, background_sync=not args.no_sync, wire=wire)
    finally:
        if wire is not None:
            wire.release()


__all__ = ["HELP", "NAME", "add_arguments", "raise_open_files_limit", "run", "serve"]
