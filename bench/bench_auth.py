"""Sign-in and /mcp protection throughput, with a PyJWT peer measured in the same run.

1. ID-token validations per second on one core: entra-mcp's TokenValidator (joserfc, explicit claim checks, cached
   JWKS) against the peer, PyJWT's PyJWKClient + jwt.decode with the same checks (iss, aud, exp/nbf/iat with 60 s
   leeway, required tid/oid, nonce). Tokens are the emulator's own ID tokens; keys come from its JWKS over HTTPS.
2. A burst of 50 tokens with unknown kids: JWKS fetches it costs each validator.
3. Authenticated /mcp tool calls per second and latency percentiles under 32 concurrent clients (each with its own
   MCP session and bearer token), with the product's HTTP app (create_http_app + build_hooks, entra mode) served by
   uvicorn in a separate process; the same server with server.auth.mode = "none" is the baseline that shows what
   authentication costs.

    .venv/bin/python bench/bench_auth.py [--seconds 8] [--clients 32] [--no-write]

Targets: >= 5,000 ID-token validations/s; >= 300 authenticated tool calls/s with p99 <= 100 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import multiprocessing as mp
import os
import platform
import ssl
import statistics
import sys
import time
import tomllib
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

VALIDATIONS_TARGET = 5000.0
CALLS_TARGET = 300.0
P99_TARGET_MS = 100.0
SCOPE = "Identity.Investigate"
CALL: dict[str, Any] = {"jsonrpc": "2.0", "method": "tools/call", "params": {"name": "sync_status", "arguments": {}}}
MCP_HEADERS = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json",
               "MCP-Protocol-Version": "2025-06-18"}


# ------------------------------------------------------------------------------------------- ID-token validation

def validation_bench(emu: Any, seconds: float) -> dict[str, Any]:
    import jwt  # PyJWT, from the `bench` extra

    from entra_mcp.oidc.provider import OidcProvider
    from entra_mcp.oidc.validate import TokenValidator

    t = emu.tenant(0)
    portal = emu.portal_app(0)
    user = next(u for u in t.users.values() if u.get("accountEnabled", True))
    nonce = "bench-nonce-0123456789"
    tokens = [emu.tokens.issue_user_tokens(t, portal, user, audience=portal.client_id, scp=[], scopes=["openid", "profile"],
                                           nonce=nonce).id_token for _ in range(16)]
    issuer = f"{emu.login_url}/{t.tenant_id}/v2.0"
    ctx = ssl.create_default_context(cafile=str(emu.ca_bundle))

    async def ours() -> tuple[float, int]:
        provider = OidcProvider(emu.login_url, t.tenant_id, ca_bundle=emu.ca_bundle)
        v = TokenValidator(provider)
        await v.validate_id_token(tokens[0], client_id=portal.client_id, nonce=nonce)  # warm: discovery + JWKS
        n, start = 0, time.perf_counter()
        end = start + seconds
        while True:
            for tok in tokens:
                await v.validate_id_token(tok, client_id=portal.client_id, nonce=nonce)
            n += len(tokens)
            if time.perf_counter() >= end:
                break
        rate = n / (time.perf_counter() - start)
        await provider.aclose()
        return rate, provider.jwks_fetches

    def peer() -> float:
        client = jwt.PyJWKClient(f"{emu.login_url}/{t.tenant_id}/discovery/v2.0/keys", cache_keys=True, ssl_context=ctx)

        def one(tok: str) -> None:
            key = client.get_signing_key_from_jwt(tok)
            claims = jwt.decode(tok, key.key, algorithms=["RS256"], audience=portal.client_id, issuer=issuer, leeway=60,
                                options={"require": ["exp", "iss", "aud", "tid", "oid"]})
            if claims.get("nonce") != nonce or claims["tid"] != t.tenant_id:
                raise ValueError("bad token")

        one(tokens[0])
        n, start = 0, time.perf_counter()
        end = start + seconds
        while True:
            for tok in tokens:
                one(tok)
            n += len(tokens)
            if time.perf_counter() >= end:
                break
        return n / (time.perf_counter() - start)

    ours_rate, _ = asyncio.run(ours())
    peer_rate = peer()
    return {"ours": ours_rate, "peer": peer_rate, "burst": junk_kid_burst(emu, tokens[0], ctx, issuer)}


def junk_kid_burst(emu: Any, good: str, ctx: ssl.SSLContext, issuer: str) -> dict[str, int]:
    """JWKS requests caused by 50 tokens with random unknown kids, once the cache is warm and the throttle window
    (ours 60 s, PyJWT's cooldown_duration 30 s) has passed."""
    import uuid

    import jwt

    from entra_mcp.oidc.provider import OidcProvider
    from entra_mcp.oidc.validate import TokenRejected, TokenValidator

    t = emu.tenant(0)
    portal = emu.portal_app(0)
    claims = {"iss": issuer, "aud": portal.client_id, "tid": t.tenant_id, "oid": str(uuid.uuid4()),
              "exp": int(time.time()) + 600, "nonce": "x"}
    junk = [emu.tokens.mint(claims, key="foreign", header={"kid": uuid.uuid4().hex}) for _ in range(50)]

    offset = [0.0]

    async def ours() -> int:
        provider = OidcProvider(emu.login_url, t.tenant_id, ca_bundle=emu.ca_bundle, clock=lambda: time.monotonic() + offset[0])
        v = TokenValidator(provider)
        await v.validate_id_token(good, client_id=portal.client_id, nonce="bench-nonce-0123456789")
        offset[0] += 61  # past the refetch throttle, as in a long-running server
        before = provider.jwks_fetches

        async def one(tok: str) -> None:
            try:
                await v.validate_id_token(tok, client_id=portal.client_id, nonce="x")
            except TokenRejected:
                pass

        await asyncio.gather(*(one(tok) for tok in junk))
        fetched = provider.jwks_fetches - before
        await provider.aclose()
        return fetched

    fetches = {"n": 0}

    class CountingClient(jwt.PyJWKClient):
        def fetch_data(self) -> Any:
            fetches["n"] += 1
            return super().fetch_data()

    client = CountingClient(f"{emu.login_url}/{t.tenant_id}/discovery/v2.0/keys", cache_keys=True, ssl_context=ctx)
    client.get_signing_key_from_jwt(good)
    if client._last_successful_fetch is not None:  # PyJWT >= 2.10 throttles forced refreshes: step past its cooldown
        client._last_successful_fetch -= client.cooldown_duration + 1
    before = fetches["n"]
    for tok in junk:
        try:
            client.get_signing_key_from_jwt(tok)
        except jwt.PyJWKClientError:
            pass
    return {"ours": asyncio.run(ours()), "peer": fetches["n"] - before}


# ------------------------------------------------------------------------------------------- /mcp tool calls

def _serve(data: dict[str, Any], env: dict[str, str], port: int, json_response: bool = False) -> None:
    """Child process: the product's HTTP app as `entra-mcp serve` builds it, under uvicorn."""
    os.environ.update(env)
    import logging

    import uvicorn

    from entra_mcp.config import parse_settings
    from entra_mcp.mirror.store import MirrorStore
    from entra_mcp.server.app import create_server
    from entra_mcp.server.auth import build_hooks
    from entra_mcp.server.http import create_http_app
    from entra_mcp.server.views import ViewProvider

    logging.getLogger("entra_mcp").setLevel(logging.ERROR)
    settings = parse_settings(data)
    hooks = build_hooks(settings)
    store = MirrorStore(settings.server.cache_dir)
    views = ViewProvider.from_settings(settings, store)
    server = create_server(settings, views=views, sessions=hooks.sessions)
    app = create_http_app(settings, server, views=views, extra_routes=hooks.routes, protect=hooks.protect,
                          json_response=json_response)
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="error", access_log=False)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _load(base: str, tokens: list[str | None], seconds: float, rate: float | None = None) -> dict[str, float]:
    """Closed loop (each client sends its next call when the last one is answered) or, with `rate`, paced: the
    clients together offer `rate` calls/s on a fixed schedule and latency counts from the scheduled send time (no
    coordinated omission: a stalled server is charged for the calls it delayed)."""
    url = base + "/mcp"
    latencies: list[float] = []
    errors = 0
    init = {"jsonrpc": "2.0", "id": 1, "method": "initialize",
            "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "bench", "version": "1"}}}
    limits = httpx.Limits(max_connections=len(tokens) + 4, max_keepalive_connections=len(tokens) + 4)
    # TCP_NODELAY: httpx writes headers and body separately; with Nagle + delayed ACK each call would wait ~40 ms.
    import socket

    transport = httpx.AsyncHTTPTransport(limits=limits, socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)])
    async with httpx.AsyncClient(timeout=30, transport=transport) as client:
        async def session(token: str | None) -> dict[str, str]:
            hdr = dict(MCP_HEADERS)
            if token:
                hdr["Authorization"] = f"Bearer {token}"
            r = await client.post(url, json=init, headers=hdr)
            r.raise_for_status()
            hdr["Mcp-Session-Id"] = r.headers["mcp-session-id"]
            await client.post(url, json={"jsonrpc": "2.0", "method": "notifications/initialized"}, headers=hdr)
            return hdr

        headers = await asyncio.gather(*(session(t) for t in tokens))
        stop = time.perf_counter() + seconds

        interval = len(tokens) / rate if rate else 0.0

        async def worker(n: int, hdr: dict[str, str]) -> None:
            nonlocal errors
            i = 2
            due = time.perf_counter() + (interval * n / len(tokens))
            while due < stop:
                if interval:
                    delay = due - time.perf_counter()
                    if delay > 0:
                        await asyncio.sleep(delay)  # pacing the offered load (a schedule, not a wait for a result)
                body = dict(CALL, id=i)
                t0 = due if interval else time.perf_counter()
                r = await client.post(url, json=body, headers=hdr)
                latencies.append(time.perf_counter() - t0)
                due = due + interval if interval else time.perf_counter()
                if r.status_code != 200 or '"isError":true' in r.text.replace(" ", ""):
                    errors += 1
                i += 1

        start = time.perf_counter()
        await asyncio.gather(*(worker(n, h) for n, h in enumerate(headers)))
        elapsed = time.perf_counter() - start
    latencies.sort()
    q = statistics.quantiles(latencies, n=100)
    return {"calls": len(latencies), "rate": len(latencies) / elapsed, "p50": q[49] * 1000, "p99": q[98] * 1000,
            "errors": errors}


def mcp_bench(emu: Any, root: Path, mode: str, clients: int, seconds: float, json_response: bool = False,
              rate: float | None = None) -> dict[str, float]:
    port = _free_port()
    data = tomllib.loads(emu.config_toml(0, root / mode, with_sign_in=True))
    data["server"].update({"public_url": f"http://127.0.0.1:{port}", "port": port, "transport": "http"})
    if mode == "none":
        data["server"]["auth"] = {"mode": "none"}
    emu.add_redirect_uri(f"http://127.0.0.1:{port}/auth/callback", 0)
    env = emu.secret_env(0, with_sign_in=True)
    proc = mp.get_context("spawn").Process(target=_serve, args=(data, env, port, json_response), daemon=True)
    proc.start()
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline or not proc.is_alive():
                raise SystemExit("the server under test did not start")
            time.sleep(0.05)
        t = emu.tenant(0)
        users = [u for u in t.users.values() if u.get("accountEnabled", True)][:clients]
        tokens: list[str | None] = [None] * clients
        if mode == "entra":
            tokens = [emu.tokens.issue_user_tokens(t, emu.portal_app(0), users[i % len(users)],
                                                   audience=emu.api_app(0).client_id, scp=[SCOPE], scopes=[SCOPE]).access_token
                      for i in range(clients)]
        asyncio.run(_load(f"http://127.0.0.1:{port}", tokens, 1.0))  # warm-up
        import psutil

        child = psutil.Process(proc.pid)
        child.cpu_percent()
        result = asyncio.run(_load(f"http://127.0.0.1:{port}", tokens, seconds, rate))
        result["server_cpu"] = child.cpu_percent()
        return result
    finally:
        proc.terminate()
        proc.join(10)


# ------------------------------------------------------------------------------------------- report

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--no-write", action="store_true", help="print only; do not append to docs/benchmarks.md")
    args = parser.parse_args()

    import tempfile

    from entra_mcp.devtenant.server import run_emulator

    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp, run_emulator(size="small", seed=1) as emu:
        v = validation_bench(emu, args.seconds)
        entra = mcp_bench(emu, Path(tmp), "entra", args.clients, args.seconds)
        none = mcp_bench(emu, Path(tmp), "none", args.clients, args.seconds)
        entra_json = mcp_bench(emu, Path(tmp), "entra", args.clients, args.seconds, json_response=True)
        paced = mcp_bench(emu, Path(tmp), "entra", args.clients, args.seconds, rate=CALLS_TARGET)

    def row(name: str, r: dict[str, float]) -> str:
        cpu_ms = r["server_cpu"] / 100 / r["rate"] * 1000 if r["rate"] else float("nan")
        return (f"| {name} | {r['rate']:,.0f} | {r['p50']:.1f} | {r['p99']:.1f} | {r['errors']:.0f} | "
                f"{r['server_cpu']:.0f} | {cpu_ms:.2f} |")

    ok_v = v["ours"] >= VALIDATIONS_TARGET
    ok_c = paced["rate"] >= CALLS_TARGET * 0.97 and paced["p99"] <= P99_TARGET_MS
    section = f"""
## Sign-in and /mcp protection (`bench/bench_auth.py`)

{dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC, {platform.python_implementation()} {platform.python_version()},
{os.cpu_count()} CPUs, 1-minute load average {load_before:.1f} before / {os.getloadavg()[0]:.1f} after the run (other
work on the machine shares these CPUs). Emulator (small, seed 1) over HTTPS on loopback; {args.seconds:.0f} s per
measurement; the load generator (httpx) runs in the bench process, the server in its own.

ID-token validation, one core (one thread), the emulator's RS256 ID tokens, keys from its JWKS (cached), checks:
signature, iss, aud, exp/nbf/iat (60 s leeway), tid, oid, nonce.

| validator | validations/s | JWKS fetches for 50 unknown-kid tokens |
|---|---|---|
| entra-mcp `TokenValidator` (joserfc, explicit checks) | {v['ours']:,.0f} | {v['burst']['ours']} |
| peer: PyJWT `PyJWKClient` + `jwt.decode` | {v['peer']:,.0f} | {v['burst']['peer']} |

Authenticated `/mcp` tool calls (`sync_status`), {args.clients} concurrent clients, each its own MCP session, server in
its own process (uvicorn, one worker), stateful streamable HTTP with SSE answers. Closed loop (each client calls again
as soon as it is answered: the maximum rate) unless "paced" (a fixed offered rate; latency from the scheduled send):

| server.auth.mode | calls/s | p50 (ms) | p99 (ms) | errors | server CPU (% of a core) | server CPU per call (ms) |
|---|---|---|---|---|---|---|
{row("entra (bearer token validated on every request)", entra)}
{row("none (baseline, loopback)", none)}
{row("entra, `json_response=True` (no SSE framing)", entra_json)}
{row(f"entra, paced: {CALLS_TARGET:.0f} calls/s offered by the {args.clients} clients", paced)}

"Server CPU per call" is the server process's CPU time divided by the calls it answered: 1000 / that figure is the
rate one otherwise idle core sustains, whatever else the machine was doing during the run.

Targets: >= {VALIDATIONS_TARGET:,.0f} validations/s ({'met' if ok_v else 'NOT met'}); >= {CALLS_TARGET:.0f} authenticated
calls/s with p99 <= {P99_TARGET_MS:.0f} ms ({'met' if ok_c else 'NOT met'}).
"""
    print(section)
    if not args.no_write:
        path = ROOT / "docs" / "benchmarks.md"
        if not path.exists():
            path.write_text("# Benchmarks\n", encoding="utf-8")
        with path.open("a", encoding="utf-8") as f:
            f.write(section)


if __name__ == "__main__":
    main()
