"""The emulator as one HTTPS server on 127.0.0.1: login host at `/`, Graph at `/v1.0`, control API at `/_emulator`.

`run_emulator(...)` is the way in for tests, `demo` and `entra-mcp devtenant`:

    with run_emulator(size="small", seed=1) as emu:
        app = msal.ConfidentialClientApplication(
            emu.sync_app().client_id, client_credential=emu.secret_env()["DEVTENANT_CLIENT_SECRET"],
            authority=f"{emu.login_url}/{emu.tenant().tenant_id}", instance_discovery=False,
            verify=str(emu.ca_bundle))

The server runs uvicorn in a background thread of the calling process; the state is shared in memory, so tests may
read and change `emu.state` (under the tenant's lock) while it serves.
"""

from __future__ import annotations

import asyncio
import json
import socket
import ssl
import tempfile
import threading
import time
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import httpx
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Mount, Route

from entra_mcp.devtenant.control import build_control_app
from entra_mcp.devtenant.faults import FaultPlan
from entra_mcp.devtenant.graph import build_graph_app
from entra_mcp.devtenant.login import LOGIN_ENDPOINT_KINDS, LoginError, LoginHost
from entra_mcp.devtenant.model import AppRegistration, EmulatedTenant, EmulatorState
from entra_mcp.devtenant.runtime import EmulatorRuntime
from entra_mcp.devtenant.tls import TlsFiles, create_tls_files
from entra_mcp.devtenant.tokens import TokenService, unverified_claims
from entra_mcp.errors import EntraMcpError, InvalidArgument
from entra_mcp.logs import get_logger

log = get_logger("devtenant.server")

SYNC_APP = "entra-mcp sync"
PORTAL_APP = "entra-mcp portal"
API_APP = "entra-mcp api"
SECRET_ENV = "DEVTENANT_CLIENT_SECRET"
PORTAL_SECRET_ENV = "DEVTENANT_PORTAL_SECRET"
START_TIMEOUT_S = 30.0


def _control_routes(runtime: EmulatorRuntime, login: LoginHost) -> list[BaseRoute]:
    """The login side's control endpoints: signing keys, forged tokens, request counts and outages:
    GET /_emulator/login/stats -> {"requests": {kind: n}, "down": [...]};
    POST /_emulator/login/outage {"down": ["jwks", ...]} (replaces the set; [] ends the outage)."""
    tokens = runtime.tokens
    assert tokens is not None

    async def rollover(request: Request) -> Response:
        new = tokens.rollover()
        log.info("signing key rolled over to %s", new.kid)
        return JSONResponse({"kid": new.kid, "keys": [k.kid for k in tokens.keys]})

    async def retire(request: Request) -> Response:
        retired = tokens.retire_old()
        return JSONResponse({"retired": retired, "keys": [k.kid for k in tokens.keys]})

    async def mint(request: Request) -> Response:
        body = await _json_body(request)
        try:
            return JSONResponse(mint_from_request(runtime, login, body))
        except (InvalidArgument, LoginError, ValueError) as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)

    async def stats(request: Request) -> Response:
        return JSONResponse({"requests": dict(login.requests), "down": sorted(login.down)})

    async def outage(request: Request) -> Response:
        down = (await _json_body(request)).get("down")
        if not isinstance(down, list) or not set(down) <= LOGIN_ENDPOINT_KINDS:
            return JSONResponse({"error": f"send {{\"down\": [...]}} naming any of {sorted(LOGIN_ENDPOINT_KINDS)}"},
                                status_code=400)
        login.down.clear()
        login.down.update(down)
        log.info("login endpoints down: %s", ", ".join(sorted(down)) or "none")
        return JSONResponse({"down": sorted(login.down)})

    return [
        Route("/_emulator/login/stats", stats, methods=["GET"]),
        Route("/_emulator/login/outage", outage, methods=["POST"]),
        Route("/_emulator/keys/rollover", rollover, methods=["POST"]),
        Route("/_emulator/keys/retire", retire, methods=["POST"]),
        Route("/_emulator/tokens/mint", mint, methods=["POST"]),
    ]


async def _json_body(request: Request) -> dict[str, Any]:
    try:
        body = json.loads(await request.body() or b"{}")
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def mint_from_request(runtime: EmulatorRuntime, login: LoginHost, body: dict[str, Any]) -> dict[str, Any]:
    """POST /_emulator/tokens/mint. Either raw `claims`, or a real token to start from:
    {"kind": "app", "tenant": T, "client_id": C, "audience": A?} or
    {"kind": "user", "tenant": T, "client_id": C, "user": UPN, "scope": "api://.../Identity.Investigate openid"},
    then `overrides` (claims to set; null removes one), `alg`, `key` ("active" | "previous" | "foreign") and
    `header` as TokenService.mint takes them. Answers {"token": ...} (plus "id_token" for kind user)."""
    tokens = runtime.tokens
    assert tokens is not None
    alg, key, header = body.get("alg", "RS256"), body.get("key", "active"), body.get("header")
    if key not in ("active", "previous", "foreign"):
        raise InvalidArgument("key must be active, previous or foreign")
    extra: dict[str, Any] = {}
    if isinstance(body.get("claims"), dict):
        claims = dict(body["claims"])
    else:
        kind = body.get("kind")
        tenant = runtime.state.resolve(str(body.get("tenant", "")))
        if tenant is None:
            raise InvalidArgument("tenant: a tenant id or domain this emulator serves")
        reg = login.find_registration(str(body.get("client_id", "")), tenant)
        if kind == "app":
            token = tokens.issue_app_token(tenant, reg, str(body.get("audience") or runtime.base_url))
        elif kind == "user":
            user = tenant.user_by_upn(str(body.get("user", ""))) or tenant.users.get(str(body.get("user", "")))
            if user is None:
                raise InvalidArgument("user: a userPrincipalName or object id of the tenant")
            issued = login.user_token_response(tenant, reg, user, str(body.get("scope", "openid profile")).split(),
                                               None, nonce=body.get("nonce"), sid=None)
            token = issued["access_token"]
            if "id_token" in issued:
                extra["id_token"] = issued["id_token"]
        else:
            raise InvalidArgument("send `claims`, or `kind` app or user with tenant and client_id")
        claims = unverified_claims(token)
    for name, value in (body.get("overrides") or {}).items():
        if value is None:
            claims.pop(name, None)
        else:
            claims[name] = value
    return {"token": tokens.mint(claims, key=key, alg=alg, header=header if isinstance(header, dict) else None),
            **extra}


def build_app(runtime: EmulatorRuntime, login: LoginHost | None = None) -> Starlette:
    """The emulator's ASGI app. `runtime.tokens` must be set."""
    login = login or LoginHost(runtime)
    routes: list[BaseRoute] = list(_control_routes(runtime, login))
    routes.append(Mount("/_emulator", app=build_control_app(runtime)))
    routes.append(Mount("/v1.0", app=build_graph_app(runtime)))

    async def root(request: Request) -> Response:
        return JSONResponse({"service": "entra-mcp devtenant", "login_url": runtime.base_url,
                             "graph_url": runtime.base_url})

    routes.append(Route("/", root, methods=["GET"]))
    routes.extend(login.routes())
    return Starlette(routes=routes)


class _EmulatorServer(uvicorn.Server):
    """uvicorn, but stopping does not wait for idle keep-alive clients: an asyncio TLS transport's close() waits
    for the peer's close_notify, and a client that keeps its pool open (msal's requests session) never sends it."""

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        for connection in list(self.server_state.connections):
            connection.shutdown()
        await asyncio.sleep(0.1)
        for connection in list(self.server_state.connections):
            transport = getattr(connection, "transport", None)
            if transport is not None:
                transport.abort()
        await super().shutdown(sockets)


@dataclass
class RunningEmulator:
    """A serving emulator. login_url == graph_url == base_url ("https://127.0.0.1:PORT")."""

    base_url: str
    port: int
    ca_bundle: Path
    tls: TlsFiles
    runtime: EmulatorRuntime
    login: LoginHost

    @property
    def login_url(self) -> str:
        return self.base_url

    @property
    def graph_url(self) -> str:
        return self.base_url

    @property
    def state(self) -> EmulatorState:
        return self.runtime.state

    @property
    def tokens(self) -> TokenService:
        assert self.runtime.tokens is not None
        return self.runtime.tokens

    @property
    def faults(self) -> FaultPlan:
        return self.runtime.faults

    def ssl_context(self) -> ssl.SSLContext:
        """A client SSLContext trusting only this emulator's CA (for httpx `verify=`)."""
        return ssl.create_default_context(cafile=str(self.ca_bundle))

    def tenants(self) -> list[EmulatedTenant]:
        return list(self.state.tenants.values())

    def tenant(self, index: int = 0) -> EmulatedTenant:
        return self.tenants()[index]

    def registration(self, display_name: str, tenant_index: int = 0) -> AppRegistration:
        for reg in self.tenant(tenant_index).registrations.values():
            if reg.display_name == display_name:
                return reg
        raise KeyError(f"no app registration named {display_name!r} in tenant #{tenant_index}")

    def sync_app(self, tenant_index: int = 0) -> AppRegistration:
        return self.registration(SYNC_APP, tenant_index)

    def portal_app(self, tenant_index: int = 0) -> AppRegistration:
        return self.registration(PORTAL_APP, tenant_index)

    def api_app(self, tenant_index: int = 0) -> AppRegistration:
        return self.registration(API_APP, tenant_index)

    def add_redirect_uri(self, uri: str, tenant_index: int | None = None) -> None:
        """Register `uri` on the portal app (of one tenant, or of every tenant when None)."""
        indexes = range(len(self.tenants())) if tenant_index is None else [tenant_index]
        for i in indexes:
            with self.tenant(i).lock:
                reg = self.portal_app(i)
                if uri not in reg.redirect_uris:
                    reg.redirect_uris.append(uri)

    @staticmethod
    def secret_env_name(tenant_index: int = 0) -> str:
        return SECRET_ENV if tenant_index == 0 else f"{SECRET_ENV}_{tenant_index + 1}"

    def tenant_name(self, tenant_index: int = 0) -> str:
        """The config's short name for a tenant: the first label of its domain, unique among the tenants."""
        label = self.tenant(tenant_index).domain.split(".")[0] or "devtenant"
        earlier = [self.tenant(i).domain.split(".")[0] for i in range(tenant_index)]
        return label if label not in earlier else f"{label}-{tenant_index + 1}"

    def _indexes(self, tenant_index: int | None) -> list[int]:
        return list(range(len(self.tenants()))) if tenant_index is None else [tenant_index]

    def secret_env(self, tenant_index: int | None = 0, *, with_sign_in: bool = False) -> dict[str, str]:
        """Environment variables holding the sync app's secret (and the portal app's, with_sign_in)."""
        env = {self.secret_env_name(i): self.sync_app(i).secrets[0].value for i in self._indexes(tenant_index)}
        if with_sign_in:
            env[PORTAL_SECRET_ENV] = self.portal_app(self._indexes(tenant_index)[0]).secrets[0].value
        return env

    def config_toml(
        self, tenant_index: int | None = 0, cache_dir: str | Path | None = None, *, with_sign_in: bool = False
    ) -> str:
        """The product's config pointing at this emulator: one [[tenants]] entry (every tenant when
        tenant_index is None) with cloud = "custom", login_url, graph_url, ca_bundle and the sync app's client id;
        the secret comes from secret_env(). with_sign_in adds [server.auth] (entra, audience = the API app) and
        [oidc] (the portal app) for the first tenant listed."""
        q = json.dumps  # TOML basic strings accept JSON's escapes
        lines = ["# entra-mcp devtenant: the local emulator of Entra ID and Microsoft Graph"]
        first = self._indexes(tenant_index)[0]
        if cache_dir is not None or with_sign_in:
            lines.append("[server]")
            if cache_dir is not None:
                lines.append(f"cache_dir = {q(str(cache_dir))}")
            if with_sign_in:
                lines += ["", "[server.auth]", 'mode = "entra"', f"tenant = {q(self.tenant_name(first))}",
                          f"audience = {q(self.api_app(first).client_id)}", 'required_scopes = ["Identity.Investigate"]']
            lines.append("")
        for i in self._indexes(tenant_index):
            lines += [
                "[[tenants]]",
                f"name = {q(self.tenant_name(i))}",
                f"tenant_id = {q(self.tenant(i).tenant_id)}",
                f"client_id = {q(self.sync_app(i).client_id)}",
                f"client_secret_env = {q(self.secret_env_name(i))}",
                'cloud = "custom"',
                f"login_url = {q(self.login_url)}",
                f"graph_url = {q(self.graph_url)}",
                f"ca_bundle = {q(str(self.ca_bundle))}",
                "",
            ]
        if with_sign_in:
            lines += ["[oidc]", "enabled = true", f"tenant = {q(self.tenant_name(first))}",
                      f"client_id = {q(self.portal_app(first).client_id)}",
                      f"client_secret_env = {q(PORTAL_SECRET_ENV)}", ""]
        return "\n".join(lines)


def _bind(port: int) -> socket.socket:
    # proto must say TCP: asyncio sets TCP_NODELAY only on sockets whose proto is IPPROTO_TCP, and without it every
    # keep-alive response under ~64 KB waits ~40 ms (Nagle + delayed ACK: uvicorn writes headers and body apart)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(("127.0.0.1", port))
    except OSError as exc:
        sock.close()
        raise EntraMcpError(
            f"cannot listen on 127.0.0.1:{port} ({exc.strerror}). Fix: pick another port with --port, or --port 0 "
            "for a free one."
        ) from None
    sock.listen(512)
    sock.set_inheritable(True)
    return sock


def _generate(size: str, seed: int, tenants: int, progress: Callable[[str], None] | None) -> EmulatorState:
    from entra_mcp.devtenant.generate import generate_state  # lazy: generation is heavy and not always needed

    import inspect

    if progress is not None and "progress" in inspect.signature(generate_state).parameters:
        return generate_state(size, seed, tenants, progress=progress)
    return generate_state(size, seed, tenants)


@contextmanager
def run_emulator(
    state: EmulatorState | None = None,
    *,
    size: str = "small",
    seed: int = 1,
    tenants: int = 1,
    port: int = 0,
    faults: FaultPlan | None = None,
    state_dir: str | Path | None = None,
    progress: Callable[[str], None] | None = None,
) -> Iterator[RunningEmulator]:
    """Serve an emulator over HTTPS on 127.0.0.1 until the block ends. `state` defaults to a generated one
    (size, seed, tenants); port 0 picks a free port; TLS files go to `state_dir` (a fresh temp dir when None)."""
    if state is None:
        state = _generate(size, seed, tenants, progress)
    with ExitStack() as cleanup:  # unwinds in reverse: server stopped, socket closed, temp dir removed
        directory = Path(state_dir) if state_dir is not None else Path(
            cleanup.enter_context(tempfile.TemporaryDirectory(prefix="entra-devtenant-")))
        tls = create_tls_files(directory)
        sock = _bind(port)
        cleanup.callback(sock.close)
        bound = sock.getsockname()[1]
        runtime = EmulatorRuntime(state=state, faults=faults or FaultPlan(), base_url=f"https://127.0.0.1:{bound}")
        runtime.tokens = TokenService(runtime)
        login = LoginHost(runtime)
        config = uvicorn.Config(
            build_app(runtime, login), ssl_certfile=str(tls.cert_file), ssl_keyfile=str(tls.key_file),
            log_level="warning", access_log=False, lifespan="on", timeout_keep_alive=30, timeout_graceful_shutdown=5,
        )
        server = _EmulatorServer(config)
        thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name=f"devtenant:{bound}",
                                  daemon=True)
        thread.start()
        cleanup.callback(_stop, server, thread)
        _wait_until_serving(server, thread, runtime.base_url, tls.ca_bundle)
        log.info("emulator serving at %s", runtime.base_url)
        yield RunningEmulator(runtime.base_url, bound, tls.ca_bundle, tls, runtime, login)


def _stop(server: uvicorn.Server, thread: threading.Thread) -> None:
    server.should_exit = True
    thread.join(timeout=15)
    if thread.is_alive():
        log.warning("the emulator's HTTPS server did not stop within 15 s")


def _wait_until_serving(server: uvicorn.Server, thread: threading.Thread, base_url: str, ca_bundle: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while not server.started:
        if not thread.is_alive():
            raise EntraMcpError("the emulator's HTTPS server stopped while starting (see the log above)")
        if time.monotonic() > deadline:
            server.should_exit = True
            raise EntraMcpError(f"the emulator did not start within {START_TIMEOUT_S:.0f} s")
        time.sleep(0.01)
    # One real request over TLS with the CA we hand out: a broken certificate fails here, not in a client later.
    ctx = ssl.create_default_context(cafile=str(ca_bundle))
    with httpx.Client(verify=ctx, timeout=10) as client:
        client.get(f"{base_url}/").raise_for_status()


__all__ = ["RunningEmulator", "build_app", "mint_from_request", "run_emulator"]
