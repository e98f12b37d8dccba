"""Sign-in and /mcp protection throughput, with a PyJWT peer measured in the same run.

1. ID-token validations per second on one core: entra-mcp's TokenValidator (joserfc, explicit claim checks, cached
   JWKS) against the peer, PyJWT's PyJWKClient + jwt.decode with the same checks (iss, aud, exp/nbf/iat with 60 s
   leeway, required tid/oid, nonce). Tokens are the emulator's own ID tokens; keys come from its JWKS over HTTPS.
2. A burst of 50 tokens with unknown kids: JWKS fetches it costs each validator.
3. Authenticated /mcp tool calls per second and latency percentiles under 32 concurrent clients (each with its own
   MCP session and bearer token), with the product's HTTP app (create_http_app + build_hooks, entra mode) served by
   uvicorn in a separate process; the same in oauth mode (tokens from the server's own authorization server, each
   client a different person who signed in and consented) and api_key mode; server.auth.mode = "none" is the
   baseline that shows what authentication costs.

    .venv/bin/python bench/bench_auth.py [--seconds 8] [--clients 32] [--no-write]

   Unless --no-write, the figures replace this benchmark's section of docs/benchmarks.md (its own text, above the
   subsections written there for bench/bench_mcp_http.py, which stay).

   (bench/bench_mcp_http.py measures the /mcp part alone, with the SDK's SSE answers for comparison.)

Targets: >= 5,000 ID-token validations/s; >= 300 authenticated tool calls/s with p99 <= 100 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import platform
import ssl
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "bench"))
from _report import write_section  # noqa: E402

SECTION = "## Sign-in and /mcp protection (`bench/bench_auth.py`)"

VALIDATIONS_TARGET = 5000.0
CALLS_TARGET = 300.0
P99_TARGET_MS = 100.0
SCOPE = "Identity.Investigate"


# ------------------------------------------------------------------------------------------- ID-token validation

def validation_bench(emu: Any, seconds: float) -> dict[str, Any]:
    import jwt  # PyJWT, from the `test` extra

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

def mcp_bench(emu: Any, root: Path, mode: str, clients: int, seconds: float, rate: float = 0.0) -> dict[str, float]:
    """The installed `entra-mcp serve` over HTTP, driven by bench_mcp_http.py's load generator (lean HTTP/1.1
    clients over 2 processes: a single httpx AsyncClient shared by 32 sessions spends ~4 ms of CPU per call in its
    connection pool and was the bottleneck of this benchmark's earlier figures)."""
    import bench_mcp_http

    return bench_mcp_http.measure(emu, root, mode, clients, seconds, procs=2, tool="sync_status", rate=rate)


# ------------------------------------------------------------------------------------------- report

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--no-write", action="store_true", help="print only; leave docs/benchmarks.md alone")
    args = parser.parse_args()

    import tempfile

    from entra_mcp.devtenant.server import run_emulator

    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp, run_emulator(size="small", seed=1) as emu:
        v = validation_bench(emu, args.seconds)
        entra = mcp_bench(emu, Path(tmp), "entra", args.clients, args.seconds)
        api_key = mcp_bench(emu, Path(tmp), "api_key", args.clients, args.seconds)
        oauth = mcp_bench(emu, Path(tmp), "oauth", args.clients, args.seconds)
        none = mcp_bench(emu, Path(tmp), "none", args.clients, args.seconds)
        paced = mcp_bench(emu, Path(tmp), "entra", args.clients, args.seconds, rate=CALLS_TARGET)

    def row(name: str, r: dict[str, float]) -> str:
        cpu_ms = r["server_cpu"] / 100 / r["rate"] * 1000 if r["rate"] else float("nan")
        return (f"| {name} | {r['rate']:,.0f} | {r['p50']:.1f} | {r['p99']:.1f} | {r['errors']:.0f} | "
                f"{r['server_cpu']:.0f} | {cpu_ms:.2f} |")

    ok_v = v["ours"] >= VALIDATIONS_TARGET
    ok_c = paced["rate"] >= CALLS_TARGET * 0.97 and paced["p99"] <= P99_TARGET_MS
    body = f"""{dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC, {platform.python_implementation()} {platform.python_version()},
{os.cpu_count()} CPUs, 1-minute load average {load_before:.1f} before / {os.getloadavg()[0]:.1f} after the run (other
work on the machine shares these CPUs). Emulator (small, seed 1) over HTTPS on loopback; {args.seconds:.0f} s per
measurement; the load generator runs in 2 processes of its own, the server in its own.

ID-token validation, one core (one thread), the emulator's RS256 ID tokens, keys from its JWKS (cached), checks:
signature, iss, aud, exp/nbf/iat (60 s leeway), tid, oid, nonce.

| validator | validations/s | JWKS fetches for 50 unknown-kid tokens |
|---|---|---|
| entra-mcp `TokenValidator` (joserfc, explicit checks) | {v['ours']:,.0f} | {v['burst']['ours']} |
| peer: PyJWT `PyJWKClient` + `jwt.decode` | {v['peer']:,.0f} | {v['burst']['peer']} |

Authenticated `/mcp` tool calls (`sync_status`), {args.clients} concurrent clients, each its own MCP session, server in
its own process (`entra-mcp serve`, uvicorn, one worker), stateful streamable HTTP with one JSON body per answer;
load generator: bench/bench_mcp_http.py (h11 clients over 2 processes). Closed loop (each client calls again
as soon as it is answered: the maximum rate) unless "paced" (a fixed offered rate; latency from the scheduled send):

| server.auth.mode | calls/s | p50 (ms) | p99 (ms) | errors | server CPU (% of a core) | server CPU per call (ms) |
|---|---|---|---|---|---|---|
{row("entra (bearer token validated on every request)", entra)}
{row("oauth (this server's own opaque access token, looked up in the session store on every request)", oauth)}
{row("api_key", api_key)}
{row("none (baseline, loopback)", none)}
{row(f"entra, paced: {CALLS_TARGET:.0f} calls/s offered by the {args.clients} clients", paced)}

"Server CPU per call" is the server process's CPU time divided by the calls it answered: 1000 / that figure is the
rate one otherwise idle core sustains, whatever else the machine was doing during the run.

Targets: >= {VALIDATIONS_TARGET:,.0f} validations/s ({'met' if ok_v else 'NOT met'}); >= {CALLS_TARGET:.0f} authenticated
calls/s with p99 <= {P99_TARGET_MS:.0f} ms ({'met' if ok_c else 'NOT met'})."""
    lines = body.split("\n")
    print("\n".join([SECTION, "", *lines]))
    if not args.no_write:  # this section's own text; the subsections below it (bench_mcp_http's figures) stay
        write_section(SECTION, lines, keep_subsections=True)


if __name__ == "__main__":
    main()
