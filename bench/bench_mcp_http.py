"""/mcp tool calls over streamable HTTP: calls/s and latency under N concurrent clients, against the real server.

The server is the installed `entra-mcp serve --transport http --no-sync` in its own process (the product's uvicorn
config and middleware), over the emulator's small tenant (synced first). The load generator is a lean HTTP/1.1
client (h11 over asyncio streams, one keep-alive connection and one MCP session per client, TCP_NODELAY) spread
over --procs processes, so that the generator is not what is measured: each process reports its own CPU use.

    .venv/bin/python bench/bench_mcp_http.py [--modes api_key,entra,oauth] [--clients 32] [--seconds 8] [--procs 2]
                                             [--tool sync_status]

Prints one markdown table row per auth mode (calls/s, p50, p99, errors, connections reopened, server CPU, client
CPU), then oauth's closed-loop figures as ratios to api_key's and entra's of the same run. A connection the server
(or a proxy in front) closes costs the call in flight (an error) and is replaced by a new one with a new MCP session.
Targets: >= 300 authenticated calls/s with p99 <= 100 ms under 32 clients.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import h11

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "tests"))
from _harness import ServeProcess, free_port  # noqa: E402

SCOPE = "Identity.Investigate"
API_KEY = "bench-key-0123456789abcdef"


# ------------------------------------------------------------------------------ load generator (child processes)

class Conn:
    """One keep-alive HTTP/1.1 connection (h11), requests one at a time."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, host: str) -> None:
        self.r, self.w, self.host = reader, writer, host
        self.h = h11.Connection(h11.CLIENT)

    @classmethod
    async def open(cls, host: str, port: int) -> "Conn":
        reader, writer = await asyncio.open_connection(host, port)
        writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return cls(reader, writer, f"{host}:{port}")

    async def post(self, path: str, body: bytes, headers: dict[str, str], method: str = "POST") -> tuple[int, dict[str, str], bytes]:
        if self.h.our_state is h11.DONE and self.h.their_state is h11.DONE:
            self.h.start_next_cycle()
        hdrs = [("Host", self.host), ("Content-Length", str(len(body))), *headers.items()]
        self.w.write(self.h.send(h11.Request(method=method, target=path, headers=hdrs)) + self.h.send(h11.Data(data=body))
                     + self.h.send(h11.EndOfMessage()))
        status, resp_headers, chunks = 0, {}, []
        while True:
            event = self.h.next_event()
            if event is h11.NEED_DATA:
                data = await self.r.read(65536)
                self.h.receive_data(data)
                continue
            if isinstance(event, h11.Response):
                status = event.status_code
                resp_headers = {k.decode().lower(): v.decode() for k, v in event.headers}
            elif isinstance(event, h11.Data):
                chunks.append(bytes(event.data))
            elif isinstance(event, (h11.EndOfMessage, h11.ConnectionClosed)):
                return status, resp_headers, b"".join(chunks)

    @property
    def reusable(self) -> bool:
        """The last exchange ended cleanly and the server keeps the connection open (no Connection: close)."""
        return self.h.our_state is h11.DONE and self.h.their_state is h11.DONE

    def close(self) -> None:
        self.w.close()


async def _open(port: int, token: str | None) -> tuple[Conn, dict[str, str]]:
    """One client's connection and MCP session (initialize + initialized)."""
    hdr = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json",
           "MCP-Protocol-Version": "2025-06-18"}
    if token:
        hdr["Authorization"] = f"Bearer {token}"
    conn = await Conn.open("127.0.0.1", port)
    init = {"jsonrpc": "2.0", "id": 1, "method": "initialize",
            "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "bench", "version": "1"}}}
    status, rh, _ = await conn.post("/mcp", json.dumps(init).encode(), hdr)
    if status != 200:
        raise SystemExit(f"initialize answered {status}")
    if "mcp-session-id" in rh:  # a stateless server ([server.store]) gives none: each call stands alone
        hdr["Mcp-Session-Id"] = rh["mcp-session-id"]
    await conn.post("/mcp", b'{"jsonrpc":"2.0","method":"notifications/initialized"}', hdr)
    return conn, hdr


CONNECTION_LOST = (OSError, EOFError, h11.ProtocolError, asyncio.IncompleteReadError)


async def _client_loop(conn: Conn, hdr: dict[str, str], tool: str, start_at: float, stop_at: float,
                       latencies: list[float], errors: list[int], interval: float, phase: float,
                       reopen: Any = None) -> None:
    """One client: calls until stop_at. A connection the server (or a proxy in front, e.g. haproxy) closes is
    counted as an error when a call was lost on it, and replaced by a new connection and MCP session (`reopen`),
    so one closed connection never ends the client's load."""
    i = 2
    while time.perf_counter() < start_at:  # everyone starts together
        await asyncio.sleep(0.005)
    due = start_at + phase
    while True:
        body = json.dumps({"jsonrpc": "2.0", "id": i, "method": "tools/call", "params": {"name": tool, "arguments": {}}}).encode()
        if interval:  # paced: send on a fixed schedule, latency counted from the scheduled time
            if due >= stop_at:
                break
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            t0, due = due, due + interval
        else:
            t0 = time.perf_counter()
            if t0 >= stop_at:
                break
        try:
            status, _, data = await conn.post("/mcp", body, hdr)
        except CONNECTION_LOST:
            status, data = 0, b""
        latencies.append(time.perf_counter() - t0)
        if status != 200 or b'"isError":true' in data.replace(b" ", b"") or f'"id":{i}'.encode() not in data.replace(b" ", b""):
            errors[0] += 1
        i += 1
        if not conn.reusable:
            conn.close()
            errors[1] += 1
            if reopen is None:
                return
            while time.perf_counter() < stop_at:
                try:
                    conn, hdr = await reopen()
                    break
                except (*CONNECTION_LOST, SystemExit):
                    errors[0] += 1
                    await asyncio.sleep(0.05)
            else:
                return
    # End the session (DELETE), as a client does: the per-caller session quota counts open sessions, and a caller
    # that runs the load twice (the warm-up, then the measurement) would otherwise find its quota taken.
    try:
        await conn.post("/mcp", b"", {k: v for k, v in hdr.items() if k != "Content-Type"}, method="DELETE")
    except CONNECTION_LOST:
        pass
    conn.close()


def _generator(port: int, tokens: list[str | None], tool: str, seconds: float, barrier: Any, out: Any,
               interval: float = 0.0, first: int = 0, total: int = 1) -> None:
    latencies: list[float] = []
    errors = [0, 0]  # failed calls, connections lost (and reopened)

    async def run() -> None:
        # Every process opens its sessions first, then all start together (a barrier, not a fixed start time: on a
        # loaded machine spawning and initializing can take longer than any fixed delay).
        opened = await asyncio.gather(*(_open(port, t) for t in tokens))
        await asyncio.to_thread(barrier.wait, 120)
        start_at = time.perf_counter() + 0.1
        stop_at = start_at + seconds
        await asyncio.gather(*(_client_loop(conn, hdr, tool, start_at, stop_at, latencies, errors, interval,
                                            interval * (first + k * (total // max(len(tokens), 1))) / total,
                                            reopen=lambda t=tokens[k]: _open(port, t))
                               for k, (conn, hdr) in enumerate(opened)))

    cpu0 = time.process_time()
    asyncio.run(run())
    out.send({"latencies": latencies, "errors": errors[0], "reconnects": errors[1], "cpu": time.process_time() - cpu0})
    out.close()


def load(port: int, tokens: list[str | None], tool: str, seconds: float, procs: int, rate: float = 0.0) -> dict[str, float]:
    """Closed loop (each client calls again when answered) or, with `rate`, paced: the clients together offer
    `rate` calls/s on a fixed schedule (no coordinated omission: a stalled server is charged for delayed sends)."""
    interval = len(tokens) / rate if rate else 0.0
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(procs)
    parts, pipes = [], []
    for p in range(procs):
        rx, tx = ctx.Pipe(duplex=False)
        proc = ctx.Process(target=_generator, args=(port, tokens[p::procs], tool, seconds, barrier, tx, interval, p, len(tokens)),
                           daemon=True)
        proc.start()
        parts.append(proc)
        pipes.append(rx)
    results = [rx.recv() for rx in pipes]
    for proc in parts:
        proc.join(10)
    lat = sorted(x for r in results for x in r["latencies"])
    q = statistics.quantiles(lat, n=100)
    return {"calls": len(lat), "rate": len(lat) / seconds, "p50": q[49] * 1000, "p99": q[98] * 1000,
            "errors": sum(r["errors"] for r in results), "reconnects": sum(r["reconnects"] for r in results),
            "client_cpu": sum(r["cpu"] for r in results) / seconds * 100}


# ------------------------------------------------------------------------------ server under test

def _proc_cpu(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# `entra-mcp` with the SDK's SSE answer per POST instead of the product's JSON answers (the setting before 2026-11-26):
# create_http_app is looked up when the server starts, so a changed default reaches the real `serve`.
_SSE_SERVER = ("import functools, sys; import entra_mcp.server.http as h; "
               "h.create_http_app = functools.partial(h.create_http_app, json_response=False); "
               "from entra_mcp.cli import main; sys.exit(main(sys.argv[1:]))")


def _oauth_tokens(emu: Any, base: str, clients: int) -> list[str | None]:
    """Access tokens from the server's own authorization server (oauth mode), the way MCP clients get them: one
    client registered (RFC 7591), then for each of `clients` directory users a sign-in with Entra on the emulator,
    the consent page, and the code redeemed with PKCE (tests/_oauth_fixtures.py HttpBrowser walks the pages)."""
    from types import SimpleNamespace

    from _auth_fixtures import user_upn
    from _oauth_fixtures import HttpBrowser, pkce

    users = sum(1 for u in emu.tenant(0).users.values()
                if u.get("accountEnabled", True) and u.get("userType", "Member") == "Member")
    redirect = "http://127.0.0.1:40000/callback"
    tokens: list[str | None] = []
    client_id = ""
    for i in range(clients):
        browser = HttpBrowser(SimpleNamespace(emu=emu, base=base, resource=f"{base}/mcp",  # type: ignore[arg-type]
                                              upn=user_upn(emu, 0, n=i % users)))
        try:
            if not client_id:
                client_id = browser.register([redirect]).json()["client_id"]
            verifier, challenge = pkce()
            code = browser.code_for(client_id, redirect, challenge)
            answer = browser.token(grant_type="authorization_code", code=code, redirect_uri=redirect,
                                   client_id=client_id, code_verifier=verifier, resource=f"{base}/mcp")
            tokens.append(answer.json()["access_token"])
        finally:
            browser.close()
    return tokens


def measure(emu: Any, root: Path, mode: str, clients: int, seconds: float, procs: int, tool: str, *,
            sse: bool = False, rate: float = 0.0) -> dict[str, float]:
    port = free_port()
    cache = root / mode
    text = emu.config_toml(0, cache, with_sign_in=True)
    text = text.replace("[server]\n", f'[server]\ntransport = "http"\nport = {port}\npublic_url = "http://127.0.0.1:{port}"\n', 1)
    if mode != "entra":
        text = text.replace('mode = "entra"', f'mode = "{mode}"', 1)
    if mode == "oauth":  # tokens live 10 minutes by default: long enough for any run here
        text = text.replace('required_scopes = ["Identity.Investigate"]',
                            'required_scopes = ["Identity.Investigate"]\n\n[server.auth.oauth]\naccess_token_minutes = 60', 1)
    cfg = root / f"{mode}.toml"
    cfg.write_text(text, encoding="utf-8")
    # api_key: one named key per client, so each client is its own caller as each person is in entra and oauth mode
    # (one shared key is one caller: its max_requests_per_minute turned a closed loop's calls into 429s)
    keys = [f"{API_KEY}-{i:02d}" for i in range(clients)]
    env = {**os.environ, **emu.secret_env(0, with_sign_in=True),
           "ENTRA_MCP_API_KEYS": ",".join(f"desk-{i:02d}={k}" for i, k in enumerate(keys))}
    emu.add_redirect_uri(f"http://127.0.0.1:{port}/auth/callback", 0)
    exe = str(Path(sys.executable).with_name("entra-mcp"))
    subprocess.run([exe, "--config", str(cfg), "--log-level", "ERROR", "sync"], env=env, check=True,
                   stdout=subprocess.DEVNULL)
    cmd = [sys.executable, "-c", _SSE_SERVER] if sse else [exe]
    serving = ServeProcess(cfg, "--no-sync", env=env, log_path=root / f"{mode}.log", base=f"http://127.0.0.1:{port}",
                           argv=cmd, options=("--log-level", "ERROR"))
    server = serving.proc
    try:
        serving.wait_ready(60)
        t = emu.tenant(0)
        if mode == "entra":
            users = [u for u in t.users.values() if u.get("accountEnabled", True)][:clients]
            tokens: list[str | None] = [
                emu.tokens.issue_user_tokens(t, emu.portal_app(0), users[i % len(users)], audience=emu.api_app(0).client_id,
                                             scp=[SCOPE], scopes=[SCOPE]).access_token for i in range(clients)]
        elif mode == "oauth":
            tokens = _oauth_tokens(emu, f"http://127.0.0.1:{port}", clients)
        elif mode == "api_key":
            tokens = list(keys)
        else:
            tokens = [None] * clients
        load(port, tokens, tool, 1.0, procs)  # warm-up
        cpu0 = _proc_cpu(server.pid)
        result = load(port, tokens, tool, seconds, procs, rate)
        result["server_cpu"] = (_proc_cpu(server.pid) - cpu0) / seconds * 100
        return result
    finally:
        serving.stop(10)


def token_check_cpu(emu: Any, calls: int = 20000) -> dict[str, float]:
    """CPU per bearer-token check, in this process, one thread: oauth mode's store lookup (AuthorizationServer.verify:
    the token's record and its family's, diskcache) against entra mode's JWT validation (TokenValidator, RS256,
    cached JWKS). The honest figure for what each mode's authentication costs per request on a shared machine."""
    import anyio

    from entra_mcp.mirror.session_store import SessionStore
    from entra_mcp.oauth.provider import AuthorizationServer
    from entra_mcp.oidc.provider import OidcProvider
    from entra_mcp.oidc.validate import TokenValidator

    with tempfile.TemporaryDirectory() as tmp:
        store = SessionStore(tmp)
        srv = AuthorizationServer(store, issuer="http://127.0.0.1:1", resource="http://127.0.0.1:1/mcp", scopes=[SCOPE],
                                  consent_url="http://127.0.0.1:1/oauth/consent", documents=None,
                                  dynamic_registration=True, access_seconds=3600, refresh_seconds=86400,
                                  client_seconds=86400)
        request = {"client_id": "bench", "redirect_uri": "http://127.0.0.1/cb", "redirect_explicit": True,
                   "code_challenge": "x" * 43, "state": None, "scopes": [SCOPE], "resource": srv.resource, "binding": ""}
        code = srv.issue_code(request, {"tid": "t", "oid": "o", "name": None, "preferredUsername": None})

        async def mint() -> str:
            client: Any = type("C", (), {"client_id": "bench"})()
            loaded = await srv.load_authorization_code(client, code)
            assert loaded is not None
            return (await srv.exchange_authorization_code(client, loaded)).access_token

        token = anyio.run(mint)
        t0 = time.process_time()
        for _ in range(calls):
            assert srv.verify(token) is not None
        oauth_ms = (time.process_time() - t0) / calls * 1000
        store.close()

    t = emu.tenant(0)
    user = next(u for u in t.users.values() if u.get("accountEnabled", True))
    jwt = emu.tokens.issue_user_tokens(t, emu.portal_app(0), user, audience=emu.api_app(0).client_id, scp=[SCOPE],
                                       scopes=[SCOPE]).access_token

    async def entra() -> float:
        v = TokenValidator(OidcProvider(emu.login_url, t.tenant_id, ca_bundle=emu.ca_bundle))
        await v.validate_access_token(jwt, audience=emu.api_app(0).client_id, required_scopes=[SCOPE])
        n = calls // 4
        t0 = time.process_time()
        for _ in range(n):
            await v.validate_access_token(jwt, audience=emu.api_app(0).client_id, required_scopes=[SCOPE])
        await v.provider.aclose()
        return (time.process_time() - t0) / n * 1000

    return {"oauth": oauth_ms, "entra": anyio.run(entra)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--modes", default="api_key,entra,oauth")
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--procs", type=int, default=2, help="load-generator processes")
    parser.add_argument("--tool", default="sync_status")
    parser.add_argument("--rate", type=float, default=300.0, help="offered calls/s of the paced runs (0: none)")
    parser.add_argument("--sse", action="store_true", help="also measure the server with the SDK's SSE answers")
    args = parser.parse_args()

    from entra_mcp.devtenant.server import run_emulator

    load_before = os.getloadavg()[0]
    rows = []
    closed: dict[str, dict[str, float]] = {}  # mode -> its closed-loop JSON row, for the ratios
    variants = [("JSON answers", False)] + ([("SSE answers (before)", True)] if args.sse else [])
    with tempfile.TemporaryDirectory() as tmp, run_emulator(size="small", seed=1) as emu:
        for mode in args.modes.split(","):
            for label, sse in variants:
                for rate in [0.0] + ([args.rate] if args.rate else []):
                    r = measure(emu, Path(tmp), mode, args.clients, args.seconds, args.procs, args.tool, sse=sse, rate=rate)
                    cpu_ms = r["server_cpu"] / 100 / r["rate"] * 1000 if r["rate"] else float("nan")
                    if not rate and not sse:
                        closed[mode] = {**r, "cpu_ms": cpu_ms}
                    load_kind = f"paced, {rate:.0f}/s offered" if rate else "closed loop"
                    rows.append(f"| {mode} | {label} | {load_kind} | {r['rate']:,.0f} | {r['p50']:.1f} | {r['p99']:.1f} | "
                                f"{r['errors']:.0f} | {r['reconnects']:.0f} | {r['server_cpu']:.0f} | {cpu_ms:.2f} | "
                                f"{r['client_cpu']:.0f} |")
                    print(rows[-1], flush=True)
    print(f"\n{time.strftime('%Y-%m-%d %H:%M', time.gmtime())} UTC, {platform.python_implementation()} "
          f"{platform.python_version()}, {os.cpu_count()} CPUs, load average {load_before:.1f} before / "
          f"{os.getloadavg()[0]:.1f} after; {args.clients} clients over {args.procs} processes, `{args.tool}`, "
          f"{args.seconds:.0f} s per row\n")
    print("| server.auth.mode | server | load | calls/s | p50 (ms) | p99 (ms) | errors | connections reopened "
          "| server CPU (% of a core) | server CPU per call (ms) | load generator CPU (% of a core) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))
    if "oauth" in closed:  # same-run ratios: on a shared machine these, not the absolute figures, are the answer
        o = closed["oauth"]
        for other in ("api_key", "entra"):
            if other in closed:
                c = closed[other]
                print(f"\noauth / {other} (closed loop, this run): calls/s x{o['rate'] / c['rate']:.2f}, "
                      f"p50 x{o['p50'] / c['p50']:.2f}, p99 x{o['p99'] / c['p99']:.2f}, "
                      f"server CPU per call x{o['cpu_ms'] / c['cpu_ms']:.2f}")
    if "oauth" in args.modes.split(","):
        with run_emulator(size="small", seed=1) as emu:
            check = token_check_cpu(emu)
        print(f"\nCPU per bearer-token check, one thread: oauth (store lookup) {check['oauth']:.3f} ms, entra (RS256 JWT "
              f"validation) {check['entra']:.3f} ms")


if __name__ == "__main__":
    main()
