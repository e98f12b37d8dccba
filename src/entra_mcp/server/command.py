"""`entra-mcp serve` and `entra-mcp demo`.

serve: load the config, open the mirror, start the background sync (unless --no-sync), serve MCP over stdio or
streamable HTTP. In stdio mode stdout is the MCP wire and nothing else: the real stdout is claimed first thing and
file descriptor 1 is pointed at stderr, so a stray print or a chatty library cannot corrupt the protocol.

demo: the same server over a local emulator of Entra ID + Graph started in-process, with a throw-away config and
cache; needs no config file and no network.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
import tomllib
from contextlib import ExitStack
from pathlib import Path
from typing import Any, Callable, Sequence

from entra_mcp.config import Settings, load_settings, parse_settings
from entra_mcp.errors import ConfigError, EntraMcpError
from entra_mcp.logs import get_logger

log = get_logger("server.command")


# ------------------------------------------------------------------ stdio wire


class _StdoutWire:
    """The process's real stdout, claimed for the MCP wire; fd 1 then points at stderr."""

    def __init__(self) -> None:
        sys.stdout.flush()
        self.fd = os.dup(1)
        os.set_inheritable(self.fd, False)
        os.dup2(2, 1)

    def release(self) -> None:
        try:
            os.dup2(self.fd, 1)
            os.close(self.fd)
        except OSError:
            pass


class _FdLines:
    """Lines from a file descriptor, read on the event loop (no worker thread per line, unlike anyio.wrap_file)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.buf = b""

    def __aiter__(self) -> "_FdLines":
        return self

    async def __anext__(self) -> str:
        import anyio

        while b"\n" not in self.buf:
            await anyio.wait_readable(self.fd)
            try:
                chunk = os.read(self.fd, 1 << 16)
            except BlockingIOError:
                continue
            if not chunk:
                if not self.buf:
                    raise StopAsyncIteration
                line, self.buf = self.buf, b""
                return line.decode("utf-8", "replace")
            self.buf += chunk
        line, _, self.buf = self.buf.partition(b"\n")
        return line.decode("utf-8", "replace") + "\n"


class _FdWriter:
    """Text to a file descriptor from the event loop; waits (without blocking the loop) while the pipe is full."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    async def write(self, text: str) -> None:
        import anyio

        data = memoryview(text.encode("utf-8"))
        while data:
            try:
                data = data[os.write(self.fd, data):]
            except BlockingIOError:
                await anyio.wait_writable(self.fd)

    async def flush(self) -> None:
        return None


def _run_stdio(server: Any, wire: _StdoutWire) -> None:
    import anyio
    from mcp.server.stdio import stdio_server

    # stdin is claimed like stdout: a private duplicate carries the wire, fd 0 reads /dev/null for anything else.
    stdin_fd = os.dup(0)
    os.set_inheritable(stdin_fd, False)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    # Non-blocking only while serving: the flag lives on the shared open file (a terminal, a parent's pipe).
    was_blocking = os.get_blocking(stdin_fd), os.get_blocking(wire.fd)
    os.set_blocking(stdin_fd, False)
    os.set_blocking(wire.fd, False)

    async def main() -> None:
        lowlevel = server._lowlevel_server  # what MCPServer.run_stdio_async runs, with our own streams
        async with stdio_server(stdin=_FdLines(stdin_fd), stdout=_FdWriter(wire.fd)) as (read_stream, write_stream):  # type: ignore[arg-type]
            await lowlevel.run(read_stream, write_stream, lowlevel.create_initialization_options())

    try:
        anyio.run(main)
    finally:
        os.set_blocking(stdin_fd, was_blocking[0])
        os.set_blocking(wire.fd, was_blocking[1])
        os.dup2(stdin_fd, 0)
        os.close(stdin_fd)


# ------------------------------------------------------------------ sign-in hooks


def _sign_in_hooks(settings: Settings, store: Any) -> Any:
    """The sign-in part's hooks: `entra_mcp.server.auth.build_hooks(settings, store)` gives `protect` (wraps the
    /mcp ASGI app; None for mode "none"), `routes` (/auth/*, /.well-known/oauth-protected-resource...) and
    `sessions` (the chat-session validator; None when [oidc] is off)."""
    from entra_mcp.server.auth import build_hooks

    return build_hooks(settings, store)


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


def _start_scheduler(settings: Settings, store: Any, stop: threading.Event, *, initial_delay: float = 0.0) -> threading.Thread:
    """Run the sync scheduler on its own thread and event loop until `stop` is set."""
    import anyio

    from entra_mcp.sync.scheduler import run_scheduler

    async def main() -> None:
        stop_event = anyio.Event()

        async def relay() -> None:
            await anyio.to_thread.run_sync(stop.wait, abandon_on_cancel=True)
            stop_event.set()

        async with anyio.create_task_group() as tg:
            tg.start_soon(relay)
            await run_scheduler(settings, store, stop_event=stop_event, initial_delay=initial_delay)
            tg.cancel_scope.cancel()

    def work() -> None:
        try:
            anyio.run(main)
        except Exception:  # the server goes on answering from the mirror it has
            log.exception("background sync stopped")

    t = threading.Thread(target=work, name="entra-mcp-sync", daemon=True)
    t.start()
    return t


# ------------------------------------------------------------------ serving


def _apply_overrides(settings: Settings, **overrides: Any) -> Settings:
    changes = {k: v for k, v in overrides.items() if v is not None}
    if not changes:
        return settings
    data = settings.model_dump(mode="python")
    data["server"].update(changes)
    return parse_settings(data, source=settings.source)


def serve(
    settings: Settings,
    *,
    background_sync: bool,
    wire: _StdoutWire | None = None,
    on_ready: Callable[[str], None] | None = None,
    sync_delay: float = 0.0,
    view_cache: bool = True,
) -> int:
    """Serve until stopped. `on_ready(where)` is called once the server accepts connections (or reads stdin);
    the background sync (when on) first runs `sync_delay` seconds after the start; `view_cache` keeps built views
    on disk for the next start."""
    from entra_mcp.mirror.store import MirrorStore
    from entra_mcp.server.app import create_server
    from entra_mcp.server.views import ViewProvider

    if not settings.tenants:
        raise ConfigError("no [[tenants]] are configured. Fix: add a [[tenants]] table (see config.example.toml), or try `entra-mcp demo`.")
    started = time.perf_counter()
    store = MirrorStore(settings.server.cache_dir)
    views = ViewProvider.from_settings(settings, store, cache=view_cache)
    views.warm()
    for tv in views.all():
        if not tv.synced:
            log.warning("tenant %s has no mirror yet: answers will be empty until a sync completes", tv.name)
    hooks = _sign_in_hooks(settings, store)
    server = create_server(settings, views=views, sessions=hooks.sessions)
    stop = threading.Event()
    scheduler = _start_scheduler(settings, store, stop, initial_delay=sync_delay) if background_sync else None
    try:
        if settings.server.transport == "stdio":
            log.info("serving MCP over stdio (ready in %.2f s)", time.perf_counter() - started)
            if on_ready:
                on_ready("stdio")
            _run_stdio(server, wire or _StdoutWire())
        else:
            _run_http(settings, server, views, protect=hooks.protect, routes=hooks.routes, started=started, on_ready=on_ready)
    finally:
        stop.set()
        if scheduler is not None:
            scheduler.join(timeout=5)
        _close_hooks(hooks)
        store.close()
    return 0


def _run_http(
    settings: Settings,
    server: Any,
    views: Any,
    *,
    protect: Any,
    routes: Sequence[Any],
    started: float,
    on_ready: Callable[[str], None] | None,
) -> None:
    import uvicorn

    from entra_mcp.server.http import create_http_app

    app = create_http_app(settings, server, views=views, extra_routes=routes, protect=protect)
    config = uvicorn.Config(
        app,
        host=settings.server.host,
        port=settings.server.port,
        http=_header_deadline_protocol(),
        log_level="warning",
        access_log=False,
        timeout_keep_alive=15,
        timeout_graceful_shutdown=5,
        server_header=False,
        log_config=None,
    )
    http_server = uvicorn.Server(config)
    url = f"{settings.server.resolved_public_url}/mcp"

    def announce() -> None:
        deadline = time.monotonic() + 30
        while not http_server.started and time.monotonic() < deadline and not http_server.should_exit:
            time.sleep(0.01)
        if http_server.started:
            log.info("serving MCP at %s (ready in %.2f s)", url, time.perf_counter() - started)
            if on_ready:
                on_ready(url)

    threading.Thread(target=announce, name="entra-mcp-ready", daemon=True).start()
    http_server.run()


HEADER_TIMEOUT_S = 15.0


def _header_deadline_protocol() -> type:
    """uvicorn's h11 protocol with a deadline for each request's headers.

    uvicorn times out idle keep-alive connections but not a request whose headers never finish (slowloris): each
    such connection would hold a socket for as long as the client likes. Here a connection waiting for headers
    (new, or between two requests) is closed when they are not complete within HEADER_TIMEOUT_S.
    """
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class HeaderDeadlineH11(H11Protocol):
        def connection_made(self, transport: Any) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm_header_deadline()

        def _arm_header_deadline(self) -> None:
            self._waiting_cycle = self.cycle
            self._header_deadline = self.loop.call_later(HEADER_TIMEOUT_S, self._headers_too_slow)

        def _headers_too_slow(self) -> None:
            if self.cycle is self._waiting_cycle and not self.transport.is_closing():
                self.transport.close()

        def handle_events(self) -> None:
            super().handle_events()
            if self.cycle is not self._waiting_cycle and self._header_deadline is not None:
                self._header_deadline.cancel()  # a request's headers arrived
                self._header_deadline = None

        def on_response_complete(self) -> None:
            # Armed before uvicorn moves on: a pipelined request it starts right away cancels it in handle_events.
            if self._header_deadline is not None:
                self._header_deadline.cancel()
            self._arm_header_deadline()
            super().on_response_complete()

        def connection_lost(self, exc: Exception | None) -> None:
            if self._header_deadline is not None:
                self._header_deadline.cancel()
                self._header_deadline = None
            super().connection_lost(exc)

    return HeaderDeadlineH11


def run_serve(args: argparse.Namespace) -> int:
    # Claim stdout before anything (config loading, imports, the sync) could write to it, unless HTTP is asked for
    # on the command line; with transport = "http" from the config it is claimed and unused, which is harmless.
    wire = _StdoutWire() if getattr(args, "transport", None) != "http" else None
    try:
        settings = load_settings(getattr(args, "config", None))
        settings = _apply_overrides(settings, transport=args.transport, host=args.host, port=args.port)
        return serve(settings, background_sync=not args.no_sync, wire=wire)
    finally:
        if wire is not None:
            wire.release()


# ------------------------------------------------------------------ demo


def demo_settings(emulator: Any, cache_dir: Path, *, transport: str, port: int | None) -> Settings:
    """The config of the demo: the emulator's first tenant (its own config_toml), our transport and port."""
    data = tomllib.loads(emulator.config_toml(0, cache_dir=cache_dir))
    data.setdefault("server", {}).update({"transport": transport, "host": "127.0.0.1", "port": port or 8765})
    for tenant in data.get("tenants", []):
        tenant.setdefault("sync", {})["interval_minutes"] = 5
    return parse_settings(data)


def run_demo(args: argparse.Namespace) -> int:
    transport = getattr(args, "transport", None) or "stdio"
    wire = _StdoutWire() if transport == "stdio" else None
    try:
        return _demo(args, transport, wire)
    finally:
        if wire is not None:
            wire.release()


def _demo(args: argparse.Namespace, transport: str, wire: _StdoutWire | None) -> int:
    from entra_mcp.devtenant.server import run_emulator

    started = time.perf_counter()
    size = getattr(args, "size", None) or "small"
    with ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="entra-mcp-demo-")))
        _say(f"entra-mcp demo: starting the local Entra ID + Graph emulator ({size} tenant)...")
        emulator = stack.enter_context(run_emulator(size=size, state_dir=tmp / "emulator"))
        settings = demo_settings(emulator, tmp / "cache", transport=transport, port=getattr(args, "port", None))
        os.environ.update(emulator.secret_env(0))  # the sync app's secret, named by the config
        config_file = tmp / "config.toml"
        config_file.write_text(emulator.config_toml(0, cache_dir=tmp / "cache"), encoding="utf-8")
        _say(f"entra-mcp demo: emulator at {emulator.base_url}; syncing tenant {settings.tenants[0].name!r}...")
        _sync_once(settings)
        _say(f"entra-mcp demo: mirror ready {time.perf_counter() - started:.1f} s after start")

        def ready(where: str) -> None:
            if where == "stdio":
                _say(
                    "entra-mcp demo: serving MCP over stdio. Register the command `entra-mcp demo` as a stdio MCP "
                    "server in your agent runtime (it speaks MCP on stdin/stdout), then ask e.g. lookup_user "
                    '{"query": "alex johnson"}.'
                )
            else:
                _say(f"entra-mcp demo: serving MCP over streamable HTTP at {where}   (health: {where[:-4]}/healthz)")
            _say(f"entra-mcp demo: ready in {time.perf_counter() - started:.1f} s; stop with Ctrl-C (the demo's files in {tmp} are deleted)")

        interval = settings.tenants[0].sync.interval_minutes * 60  # just synced: the next run is one interval away
        # no view cache: the demo's files are deleted at exit, and a small tenant indexes in milliseconds
        return serve(settings, background_sync=True, wire=wire, on_ready=ready, sync_delay=interval, view_cache=False)


def _sync_once(settings: Settings) -> None:
    """One full sync of every tenant, with a line of progress per area on stderr."""
    import anyio

    from entra_mcp.mirror.store import MirrorStore
    from entra_mcp.sync.engine import sync_tenant

    reported: set[str] = set()

    def progress(tenant: str, area: str, n: int) -> None:
        if area not in reported:
            reported.add(area)
            _say(f"entra-mcp demo:   syncing {area}...")

    store = MirrorStore(settings.server.cache_dir)
    try:
        for tenant in settings.tenants:
            result = anyio.run(lambda: sync_tenant(tenant, store, full=True, progress=progress))
            if result.error:
                raise EntraMcpError(f"the demo sync failed: {result.error}")
            counts = ", ".join(f"{a} {r.objects}" for a, r in result.areas.items() if getattr(r, "objects", None) is not None)
            _say(f"entra-mcp demo: synced in {result.seconds:.1f} s" + (f" ({counts})" if counts else ""))
    finally:
        store.close()


def _say(text: str) -> None:
    sys.stderr.write(text + "\n")
    sys.stderr.flush()


__all__ = ["demo_settings", "run_demo", "run_serve", "serve"]
