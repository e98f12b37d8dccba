"""/healthz and a well-behaved caller under hostile load: slow-body connections plus one heavy caller.

The real server (`entra-mcp serve --transport http --no-sync`, api_key mode, the emulator's small tenant synced
first) in its own process. An observer measures, one request at a time, `/healthz` and `lookup_user` calls over its
own MCP session: first unloaded, then while (from another process)
- N connections (default 300) send request headers and then dribble a body one byte a second and never finish it
  (half of them authenticated with their own key, half with no credential); each one the server drops is reopened at
  once, so N stay held for the whole phase;
- one heavy caller keeps 6 calls of `get_ticket_identity_context` with an expensive ticket text in flight.

    .venv/bin/python bench/bench_hostile_load.py [--slow 300] [--seconds 20] [--shares 1,0.5]

Each value of --shares is one server (server.tool_cpu_share_per_caller; 1 turns the pacing of heavy answers off),
measured in turn in the same run against the same synced mirror, so the ratios compare like with like.

Prints p50/p99 of both observers in each phase, their loaded/unloaded p99 ratios, the observer's failures, the heavy
caller's calls, how many slow connections the server dropped, and the server's peak RSS.
Targets (issue 15): loaded p99 within 2x of unloaded for /healthz and the other caller; no observer failure; RSS bounded.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "tests"))
from _auth_fixtures import mcp_call, mcp_open  # noqa: E402
from _harness import ServeProcess, free_port  # noqa: E402

KEYS = {"observer": "observer-key-0123456789abcdef", "heavy": "heavy-key-0123456789abcdef",
        "slow": "slow-key-0123456789abcdef"}


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def pct(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))] * 1000 if values else float("nan")


async def observe(base: str, seconds: float, upns: list[str]) -> dict[str, Any]:
    """One request at a time: /healthz, then a lookup_user call on the observer's MCP session."""
    health: list[float] = []
    calls: list[float] = []
    failures = 0
    auth = {"Authorization": f"Bearer {KEYS['observer']}"}
    async with httpx.AsyncClient(timeout=30) as http:
        opened = await mcp_open(http, base + "/mcp", auth)
        sid = opened.headers["mcp-session-id"]
        end = time.monotonic() + seconds
        n = 0
        while time.monotonic() < end:
            n += 1
            t = time.monotonic()
            try:
                ok = (await http.get(base + "/healthz")).status_code == 200
            except httpx.HTTPError:
                ok = False
            health.append(time.monotonic() - t)
            t = time.monotonic()
            try:
                r = await mcp_call(http, base + "/mcp", auth, sid, "lookup_user", {"query": upns[n % len(upns)]}, id=n + 1)
                ok = ok and r.status_code == 200 and '"isError":true' not in r.text.replace(" ", "")
            except httpx.HTTPError:
                ok = False
            calls.append(time.monotonic() - t)
            failures += not ok
            await asyncio.sleep(0.02)
    return {"health": health, "calls": calls, "failures": failures}


async def slow_bodies(port: int, n: int, stop: asyncio.Event) -> int:
    """Keep `n` connections dribbling bodies that never finish; returns how many the server dropped."""
    dropped = 0

    async def one(i: int) -> None:
        nonlocal dropped
        while not stop.is_set():
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                auth = f"Authorization: Bearer {KEYS['slow']}\r\n" if i % 2 == 0 else ""
                writer.write((f"POST /mcp HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
                              f"Accept: application/json, text/event-stream\r\n{auth}Content-Length: 999999\r\n\r\n").encode())
                await writer.drain()
                while not stop.is_set():
                    writer.write(b" ")
                    await writer.drain()
                    try:
                        if await asyncio.wait_for(reader.read(65536), 1.0) == b"":
                            break
                    except asyncio.TimeoutError:
                        continue
                    # an answer (401 before the body) and then the close: reopen
                dropped += 1
                writer.close()
            except OSError:
                dropped += 1
                await asyncio.sleep(0.1)

    tasks = [asyncio.create_task(one(i)) for i in range(n)]
    await stop.wait()
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    return dropped


async def heavy_caller(base: str, upns: list[str], stop: asyncio.Event, lanes: int = 6) -> int:
    text = " ".join(f"\ufdfa {u} x{i}" for i, u in enumerate(upns * 150))[:19_000]
    auth = {"Authorization": f"Bearer {KEYS['heavy']}"}
    done = 0
    async with httpx.AsyncClient(timeout=120) as http:
        sid = (await mcp_open(http, base + "/mcp", auth)).headers["mcp-session-id"]

        async def lane(k: int) -> None:
            nonlocal done
            n = 0
            while not stop.is_set():
                n += 1
                await mcp_call(http, base + "/mcp", auth, sid, "get_ticket_identity_context",
                               {"requester": upns[0], "ticket_text": text}, id=1000 * k + n)
                done += 1

        await asyncio.gather(*(lane(k) for k in range(lanes)))
    return done


def attacker(base: str, port: int, seconds: float, n_slow: int, upns: list[str], heavy_lanes: int, out: Any) -> None:
    """The hostile load, in its own process (so that it does not slow the observer's own event loop)."""

    async def run() -> None:
        stop = asyncio.Event()
        slow = asyncio.create_task(slow_bodies(port, n_slow, stop))
        heavy = asyncio.create_task(heavy_caller(base, upns, stop, heavy_lanes))
        await asyncio.sleep(seconds)
        stop.set()
        out.put({"dropped": await slow, "heavy_calls": await heavy})

    asyncio.run(run())


async def loaded(base: str, port: int, seconds: float, n_slow: int, upns: list[str], pid: int,
                 heavy_lanes: int) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    load = ctx.Process(target=attacker, args=(base, port, seconds + 6, n_slow, upns, heavy_lanes, out), daemon=True)
    load.start()
    stop = asyncio.Event()
    peak = [rss_mb(pid)]

    async def sample() -> None:
        while not stop.is_set():
            peak.append(rss_mb(pid))
            await asyncio.sleep(0.5)

    sampler = asyncio.create_task(sample())
    await asyncio.sleep(4)  # the slow connections are all open and the heavy calls under way
    result = await observe(base, seconds, upns)
    stop.set()
    await sampler
    result.update(await asyncio.to_thread(out.get, True, 120))
    load.join(30)
    result["peak_rss_mb"] = max(peak)
    return result


def run_case(emu: Any, root: Path, share: float, args: argparse.Namespace) -> dict[str, Any]:
    """One server with server.tool_cpu_share_per_caller = `share`: unloaded, then loaded."""
    port = free_port()
    text = emu.config_toml(0, root / "cache", with_sign_in=True)
    text = text.replace("[server]\n", f'[server]\ntransport = "http"\nport = {port}\npublic_url = "http://127.0.0.1:{port}"\n'
                        f"tool_cpu_share_per_caller = {share}\n", 1)
    text = text.replace('mode = "entra"', 'mode = "api_key"', 1)
    cfg = root / f"config-{share}.toml"
    cfg.write_text(text, encoding="utf-8")
    env = {**os.environ, **emu.secret_env(0, with_sign_in=True), "ENTRA_MCP_API_KEYS": ",".join(KEYS.values())}
    exe = str(Path(sys.executable).with_name("entra-mcp"))
    if not (root / "cache").exists():
        subprocess.run([exe, "--config", str(cfg), "--log-level", "ERROR", "sync"], env=env, check=True, stdout=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    server = ServeProcess(cfg, "--no-sync", env=env, log_path=root / f"serve-{share}.log", base=base, options=("--log-level", "WARNING"))
    try:
        server.wait_ready(60)
        upns = [u["userPrincipalName"] for u in list(emu.tenant(0).users.values())[:20]]
        rss0 = rss_mb(server.proc.pid)
        quiet = asyncio.run(observe(base, args.seconds / 2, upns))
        busy = asyncio.run(loaded(base, port, args.seconds, args.slow, upns, server.proc.pid, args.heavy))
        return {"share": share, "quiet": quiet, "busy": busy, "rss0": rss0}
    finally:
        server.stop(10)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--slow", type=int, default=300)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--heavy", type=int, default=6, help="heavy calls kept in flight (0: slow bodies only)")
    parser.add_argument("--shares", default="1,0.5",
                        help="server.tool_cpu_share_per_caller of each server measured, in turn (1: pacing off)")
    args = parser.parse_args()
    from entra_mcp.devtenant.server import run_emulator

    with run_emulator(size="small", seed=41) as emu, tempfile.TemporaryDirectory(prefix="bench-hostile-") as tmp:
        cases = [run_case(emu, Path(tmp), float(x), args) for x in args.shares.split(",")]
    load_name = f"{args.slow} slow bodies" + (f" + heavy caller ({args.heavy} calls in flight)" if args.heavy else "")
    print("| tool_cpu_share_per_caller | phase | /healthz p50 | /healthz p99 | lookup_user p50 | lookup_user p99 | observer failures |")
    print("|---|---|---|---|---|---|---|")
    for c in cases:
        for name, r in (("unloaded", c["quiet"]), (load_name, c["busy"])):
            print(f"| {c['share']:g} | {name} | {pct(r['health'], 50):.1f} ms | {pct(r['health'], 99):.1f} ms | "
                  f"{pct(r['calls'], 50):.1f} ms | {pct(r['calls'], 99):.1f} ms | {r['failures']} of {len(r['calls'])} |")
    for c in cases:
        quiet, busy = c["quiet"], c["busy"]
        print(f"\nshare {c['share']:g}: p99 ratios loaded/unloaded: /healthz {pct(busy['health'], 99) / pct(quiet['health'], 99):.2f}x, "
              f"lookup_user {pct(busy['calls'], 99) / pct(quiet['calls'], 99):.2f}x; heavy calls answered: "
              f"{busy['heavy_calls']}; slow connections dropped by the server (and reopened): {busy['dropped']}; "
              f"server RSS {c['rss0']:.0f} MB idle, peak {busy['peak_rss_mb']:.0f} MB under load; "
              f"median /healthz unloaded {statistics.median(quiet['health']) * 1000:.1f} ms")
    print(f"\nload average at the end: {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
