"""The HTTP transport: a Starlette app serving `/mcp` (streamable HTTP), `/healthz` and whatever routes the sign-in
part adds (`/auth/*`, the protected-resource metadata).

Checks on every request, before any route: the Host header must name this server (else 421), a browser Origin must
be one of ours (a missing Origin is fine, `null` is not: 403), and bodies over server.max_body_bytes get 413 while all
bodies being read stay under server.max_buffered_bytes (server/limits.py). The sign-in part protects `/mcp` through
`protect`, a function that wraps the MCP ASGI app (it answers 401/403 itself). `run_http` serves it with uvicorn,
with a deadline for each whole request (server.request_timeout_seconds).
"""

from __future__ import annotations

import contextlib
import sys
import logging
import threading
import time
from datetime import datetime, timezone
from typing import Any, AsyncIterator, Callable, Iterable, Sequence
from urllib.parse import urlsplit

import anyio
from mcp.server.mcpserver import MCPServer
from mcp.server.streamable_http_manager import StreamableHTTPASGIApp
from mcp.server.transport_security import TransportSecuritySettings
from starlette.applications import Starlette
from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, Receive, Scope, Send

from entra_mcp import __version__
from entra_mcp.identity.status import area_ok, current_error
from entra_mcp.identity.text import iso
from entra_mcp.logs import get_logger
from entra_mcp.server.limits import BodyBounds, BufferBudget, request_deadline_protocol
from entra_mcp.views import ViewProvider

log = get_logger("server.http")

Protect = Callable[[ASGIApp], ASGIApp]
_LOOPBACK = ("127.0.0.1", "localhost", "::1", "[::1]")


def _bracket(host: str) -> str:
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def allowed_hosts_and_origins(settings: Any) -> tuple[list[str], list[str]]:
    """The Host values and browser Origins this server answers: its bind address and port, its public URL, the
    loopback names when bound to loopback, plus server.allowed_hosts / server.allowed_origins from the config. With
    sign-in on, the origins of oidc.allowed_return_to are allowed Origins too: a chat widget served from one calls
    /auth/chat/exchange and /mcp and must not need listing twice."""
    srv = settings.server
    hosts: list[str] = []
    origins: list[str] = []

    def add(host: str, port: int | None, scheme: str) -> None:
        h = _bracket(host.lower())
        default = port is None or (scheme == "http" and port == 80) or (scheme == "https" and port == 443)
        if default:
            hosts.append(h)
            origins.append(f"{scheme}://{h}")
        if port is not None:
            hosts.append(f"{h}:{port}")
            origins.append(f"{scheme}://{h}:{port}")

    if srv.host not in ("0.0.0.0", "::", ""):
        add(srv.host, srv.port, "http")
    if srv.host in _LOOPBACK or srv.host.startswith("127."):
        for name in ("127.0.0.1", "localhost", "::1"):
            add(name, srv.port, "http")
    public = urlsplit(srv.resolved_public_url)
    if public.hostname:
        add(public.hostname, public.port or (443 if public.scheme == "https" else 80), public.scheme or "http")
    for h in srv.allowed_hosts:
        hosts.append(h.lower())
    for o in srv.allowed_origins:
        origins.append(o.rstrip("/").lower())
    oidc = getattr(settings, "oidc", None)
    if oidc is not None and oidc.enabled:
        from entra_mcp.oidc.flow import origin_of

        origins.extend(o for o in (origin_of(u) for u in oidc.allowed_return_to) if o)
    origins.extend(_cors_origins(settings))
    return sorted(set(hosts)), sorted(set(origins))


def _cors_origins(settings: Any) -> list[str]:
    """[server.auth.oauth] cors_origins in oauth mode (browser-based MCP clients, oauth/cors.py); else none."""
    auth = getattr(settings.server, "auth", None)
    return list(auth.oauth.cors_origins) if auth is not None and auth.mode == "oauth" else []


class HostOriginMiddleware:
    """DNS-rebinding and cross-origin guard for every route (the SDK's own check covers only /mcp)."""

    def __init__(self, app: ASGIApp, hosts: Iterable[str], origins: Iterable[str]) -> None:
        self.app = app
        self.hosts = {h.lower() for h in hosts}
        self.host_wildcards = {h[:-2] for h in self.hosts if h.endswith(":*")}
        self.origins = {o.lower() for o in origins}
        self.origin_wildcards = {o[:-2] for o in self.origins if o.endswith(":*")}

    def _host_ok(self, host: str | None) -> bool:
        if not host:
            return False
        host = host.lower()
        if host in self.hosts:
            return True
        base, _, port = host.rpartition(":")
        return bool(port.isdigit() and base in self.host_wildcards)

    def _origin_ok(self, origin: str | None) -> bool:
        if origin is None:
            return True  # not a browser, or a same-origin GET
        origin = origin.lower().rstrip("/")
        if origin in self.origins:
            return True
        base, _, port = origin.rpartition(":")
        return bool(port.isdigit() and base in self.origin_wildcards)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        if not self._host_ok(headers.get("host")):
            log.warning("refused a request for an unknown Host header (%d chars)", len(headers.get("host") or ""))
            await PlainTextResponse("Misdirected request: unknown Host header", status_code=421)(scope, receive, send)
            return
        if not self._origin_ok(headers.get("origin")):
            log.warning("refused a request from a foreign Origin")
            await PlainTextResponse("Forbidden: cross-origin request refused", status_code=403)(scope, receive, send)
            return
        # Host names and schemes are case-insensitive: what passed here reaches the routes (and the SDK's own
        # case-sensitive check on /mcp) in lower case, and with an Origin's trailing slash dropped.
        scope = dict(scope)
        scope["headers"] = [
            (k, v.lower() if k == b"host" else v.lower().rstrip(b"/") if k == b"origin" else v) for k, v in scope["headers"]
        ]
        await self.app(scope, receive, send)


def health(views: ViewProvider | None, *, now: datetime | None = None) -> dict[str, Any]:
    """Liveness and per-tenant freshness; names and times only (no ids, no error texts, nothing secret: `status`
    and the sync_status tool say why). `status` is "ok", or "degraded" when a tenant's last sync failed (`failing`,
    since when) or a synced mirror is older than two intervals (`fresh` false)."""
    now = now or datetime.now(timezone.utc)
    tenants = []
    for tv in views.statuses() if views is not None else []:  # freshness reads: no view is loaded
        snap = tv.snapshot
        as_of = snap.as_of if snap is not None else None
        age = (now - as_of).total_seconds() if as_of else None
        areas = {}
        if snap is not None:
            for name, st in snap.areas.items():
                areas[name] = {"enabled": st.enabled, "lastSuccess": iso(st.last_success), "ok": area_ok(st)}
        # Areas commit one by one: the tenant counts as synced once every enabled area has committed, so a
        # readiness probe does not pass while users or groups are still missing.
        complete = as_of is not None and all(a["lastSuccess"] is not None for a in areas.values() if a["enabled"])
        # failing: an error newer than the last success (or no success yet) in an area that is not switched off
        errors = [
            st.last_error_at for st in (snap.areas.values() if snap is not None else ())
            if st.last_error_at is not None and current_error(st) is not None and (st.enabled or st.last_success is None)
        ]
        fresh = age is not None and age <= 2 * tv.interval_minutes * 60
        tenants.append(
            {
                "tenant": tv.name,
                "synced": complete,
                "asOf": iso(as_of),
                "ageSeconds": round(age) if age is not None else None,
                "fresh": fresh,
                "failing": bool(errors),
                "failingSince": iso(min(errors)) if errors else None,
                "areas": areas,
            }
        )
    degraded = any(t["failing"] or (t["synced"] and not t["fresh"]) for t in tenants)
    return {"status": "degraded" if degraded else "ok", "version": __version__, "tenants": tenants}


def create_http_app(
    settings: Any,
    server: MCPServer[Any],
    *,
    views: ViewProvider | None = None,
    extra_routes: Sequence[BaseRoute] = (),
    protect: Protect | None = None,
    json_response: bool = True,
    stateless: bool = False,
    replication: Callable[[], dict[str, Any]] | None = None,
    shared_store: Callable[[], bool] | None = None,
) -> Starlette:
    """The Starlette app of the HTTP transport.

    Hooks for the sign-in part:
      extra_routes  Starlette routes mounted beside /mcp (the /auth/* routes, /.well-known/... metadata). They sit
                    behind the same Host/Origin and body-size checks.
      protect       wraps the /mcp ASGI app, e.g. `lambda app: RequireBearer(app, settings)`: it answers 401 with
                    WWW-Authenticate / 403 insufficient_scope itself and calls the wrapped app when the caller may
                    pass. None leaves /mcp open (server.auth.mode = "none", loopback only).
      replication   several replicas (cluster/replica.py `Replication.health`): /healthz adds which tenants this
                    replica leads and the published version it serves.
      shared_store  [server.store] (sharedstore/connection.py `SharedRedis.reachable`): /healthz adds
                    `sharedStore: {"available": ...}`, and `status` is "degraded" while Redis does not answer (sign-in
                    refused, limits counted locally). The answer stays 200: the replica still serves tool calls, so a
                    load balancer must keep sending it requests.

    Transport: stateful sessions (Mcp-Session-Id), and each POST is answered with one application/json body
    (`json_response=True`, the default). The SDK's alternative, an SSE stream per POST, costs about twice the server
    CPU per tool call (a response task group, a ping task, several socket writes per answer) and buys nothing here:
    no tool sends progress, log messages or requests to the client while it runs. Server-initiated messages still
    go out on the GET /mcp stream. See docs/benchmarks.md (bench/bench_mcp_http.py).
    """
    hosts, origins = allowed_hosts_and_origins(settings)
    max_body = settings.server.max_body_bytes
    security = TransportSecuritySettings(enable_dns_rebinding_protection=True, allowed_hosts=hosts, allowed_origins=origins)
    # Builds the session manager (and the SDK's own /mcp app, which we do not use) on the server.
    server.streamable_http_app(
        json_response=json_response,
        stateless_http=stateless,
        transport_security=security,
        max_request_body_size=max_body,
        session_idle_timeout=settings.server.mcp_session_idle_seconds,  # the per-caller session quota uses it too
        host=settings.server.host,
    )
    manager = server.session_manager
    mcp_app: ASGIApp = StreamableHTTPASGIApp(manager)
    if protect is not None:
        mcp_app = protect(mcp_app)
    started = time.monotonic()

    async def healthz(request: Request) -> Response:
        data = await anyio.to_thread.run_sync(health, views)  # a freshness read per tenant: off the event loop
        data["uptimeSeconds"] = round(time.monotonic() - started)
        if replication is not None:
            data["replication"] = await anyio.to_thread.run_sync(replication)
        if shared_store is not None:
            available = await anyio.to_thread.run_sync(shared_store)
            data["sharedStore"] = {"available": available}
            if not available:
                data["status"] = "degraded"
        return JSONResponse(data, headers={"Cache-Control": "no-store"})

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with manager.run():
            yield

    routes: list[BaseRoute] = [
        Route("/mcp", endpoint=mcp_app),
        Route("/healthz", endpoint=healthz, methods=["GET"]),
        *extra_routes,
    ]
    app = Starlette(routes=routes, lifespan=lifespan)
    # Outermost first: Host/Origin, then the body bounds (which read nothing themselves: /mcp's guard refuses an
    # unauthenticated caller before its body is read), then routing.
    app.state.buffer_budget = BufferBudget(settings.server.max_buffered_bytes)
    app.add_middleware(BodyBounds, max_body=max_body, budget=app.state.buffer_budget)
    if _cors_origins(settings):  # inside the Origin guard (which lets the listed origins through), before /mcp's auth
        from entra_mcp.oauth.cors import OAuthCors

        app.add_middleware(OAuthCors, origins=_cors_origins(settings))
    app.add_middleware(HostOriginMiddleware, hosts=hosts, origins=origins)
    return app


# Exceptions that third-party code logs with a traceback at ERROR level although a client caused them: h11 refusing
# our early 421/403/413 after uvicorn already answered a body it could not parse; a client gone mid-body
# (ClientDisconnect) or mid-stream (anyio's closed/broken streams); the MCP SDK answering a POST that raced its
# session's DELETE a second time. (module prefix, class name, text in the message)
_CLIENT_CAUSED = (
    ("h11", "LocalProtocolError", "state=MUST_CLOSE"),
    ("starlette", "ClientDisconnect", ""),
    ("anyio", "ClosedResourceError", ""),
    ("anyio", "BrokenResourceError", ""),
    ("builtins", "RuntimeError", "after response already completed"),
)
_NOISY_LOGGERS = ("uvicorn.error", "mcp.server.streamable_http", "mcp.server.streamable_http_manager")


def client_caused(exc: BaseException) -> bool:
    if isinstance(exc, BaseExceptionGroup):
        return all(client_caused(e) for e in exc.exceptions)
    kind = type(exc)
    return any(kind.__module__.startswith(module) and kind.__name__ == name and text in str(exc)
               for module, name, text in _CLIENT_CAUSED)


class ClientCausedErrors(logging.Filter):
    """A client-caused exception logged with its traceback becomes one INFO line naming it."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if exc is not None and client_caused(exc):
            record.msg = f"{record.getMessage()} ({type(exc).__name__}: {str(exc)[:200]}; caused by the client, the server goes on)"
            record.args = None
            record.exc_info = None
            record.exc_text = None
            record.levelno, record.levelname = logging.INFO, "INFO"
        return True


def quiet_client_errors() -> None:
    """Install ClientCausedErrors on the third-party loggers that report client-caused events with tracebacks."""
    for name in _NOISY_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, ClientCausedErrors) for f in logger.filters):
            logger.addFilter(ClientCausedErrors())


def run_http(
    settings: Any,
    server: Any,
    views: Any,
    *,
    protect: Any,
    routes: Sequence[Any],
    started: float,
    on_ready: Callable[[str], None] | None,
    replication: Callable[[], dict[str, Any]] | None = None,
    shared_store: Callable[[], bool] | None = None,
) -> None:
    import uvicorn

    quiet_client_errors()
    # Tool answers run in worker threads (server/limits.py WorkLanes); a shorter GIL switch interval than Python's 5 ms
    # lets the event loop (/healthz, other callers' requests) in more often while one of them computes.
    sys.setswitchinterval(0.001)
    # With a shared store, /mcp keeps no session in this process (stateless streamable HTTP): any replica answers
    # any request, and a replica may die between two calls of one client (docs/deployment.md).
    app = create_http_app(settings, server, views=views, extra_routes=routes, protect=protect,
                          stateless=settings.server.store.shared, replication=replication, shared_store=shared_store)
    config = uvicorn.Config(
        app,
        host=settings.server.host,
        port=settings.server.port,
        http=request_deadline_protocol(settings.server.request_timeout_seconds),
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


__all__ = ["ClientCausedErrors", "Protect", "allowed_hosts_and_origins", "client_caused", "create_http_app", "health",
           "quiet_client_errors", "run_http"]
