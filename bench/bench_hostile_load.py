"""/healthz and a well-behaved caller under hostile load: slow-body connections plus one heavy caller.

The real server (`entra-mcp serve --transport http --no-sync`, api_key mode, the emulator's small tenant synced
first) in its own process. An observer measures, one request at a time, `/healthz` and `lookup_user` calls over its
own MCP session: first unloaded, then while (from another process)
- N connections (default 300) send request headers and then dribble a body one byte a second and never finish it
  (half of them authenticated with their own key, half with no credential); each one the server drops is reopened at
  once, so N stay held for the whole phase;
- one heavy caller keeps 6 calls of `get_ticket_identity_context` with an expensive ticket text in flight.

    .venv/bin/python bench/bench_hostile_load.py [--slow 300] [--seconds 20] [--rounds 2] [--workers 0,2] [--shares 0.5]

Each (--workers, --shares) pair is one server (server.answer_workers: worker processes for heavy answers, 0 = in the
server's threads; server.tool_cpu_share_per_caller: 1 turns the pacing of heavy answers off), measured in turn in the
same run against the same synced mirror, so the ratios compare like with like. Each round measures the server
unloaded, then loaded; the figures of all rounds are pooled (the machine's load drifts over both phases alike).

Prints p50/p99 of both observers in each phase, their loaded/unloaded p99 ratios, the observer's failures, the heavy
caller's calls, how many slow connections the server dropped, the server's RSS and its answer workers' PSS/RSS, and
the CPU view: CPU seconds of the server process and of its workers in each phase, and CPU per heavy answer.
Targets (issue 15): loaded p99 within 2x of unloaded for /healthz and the other caller; no observer failure; memory
bounded.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import os
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
from _harness import ServeProcess, cpu_seconds, free_port, live_children  # noqa: E402
from _report import percentile  # noqa: E402

KEYS = {"observer": "observer-key-0123456789abcdef", "heavy": "heavy-key-0123456789abcdef",
        "slow": "slow-key-0123456789abcdef"}


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def rollup_mb(pid: int, field: str) -> float:
    """Pss: or Rss: of /proc/PID/smaps_rollup in MB (0 once the process has ended)."""
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith(field):
                return int(line.split()[1]) / 1024
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        pass
    return 0.0


class CpuMeter:
    """CPU seconds of the server and of its answer workers (children seen at any sample) since `start`."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.seen: dict[int, float] = {}  # worker pid -> CPU at its first sample (0 when born meanwhile)
        self.last: dict[int, float] = {}

    def start(self) -> None:
        self.server0 = cpu_seconds(self.pid)
        self.seen = {k: cpu_seconds(k) for k in live_children(self.pid)}
        self.last = dict(self.seen)

    def sample(self) -> None:
        for k in live_children(self.pid):
            self.seen.setdefault(k, 0.0)
            self.last[k] = cpu_seconds(k) or self.last.get(k, 0.0)

    def stop(self) -> dict[str, float]:
        self.sample()
        return {"server_cpu": cpu_seconds(self.pid) - self.server0,
                "workers_cpu": sum(self.last[k] - self.seen[k] for k in self.seen)}


def pct(values: list[float], p: float) -> float:
    """The p-th percentile of latencies in seconds, in milliseconds."""
    return percentile(values, p, scale=1000)


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


async def heavy_caller(base: str, upns: list[str], stop: asyncio.Event, lanes: int, counter: Any) -> int:
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
                with counter.get_lock():
                    counter.value += 1

        await asyncio.gather(*(lane(k) for k in range(lanes)))
    return done


def attacker(base: str, port: int, seconds: float, n_slow: int, upns: list[str], heavy_lanes: int, out: Any,
             counter: Any) -> None:
    """The hostile load, in its own process (so that it does not slow the observer's own event loop)."""

    async def run() -> None:
        stop = asyncio.Event()
        slow = asyncio.create_task(slow_bodies(port, n_slow, stop))
        heavy = asyncio.create_task(heavy_caller(base, upns, stop, heavy_lanes, counter))
        await asyncio.sleep(seconds)
        stop.set()
        out.put({"dropped": await slow, "heavy_calls": await heavy})

    asyncio.run(run())


async def quiet(base: str, seconds: float, upns: list[str], pid: int) -> dict[str, Any]:
    meter = CpuMeter(pid)
    meter.start()
    result = await observe(base, seconds, upns)
    result.update(meter.stop())
    result["seconds"] = seconds
    return result


async def loaded(base: str, port: int, seconds: float, n_slow: int, upns: list[str], pid: int,
                 heavy_lanes: int) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    counter = ctx.Value("i", 0)
    load = ctx.Process(target=attacker, args=(base, port, seconds + 6, n_slow, upns, heavy_lanes, out, counter),
                       daemon=True)
    load.start()
    stop = asyncio.Event()
    peak = [rss_mb(pid)]
    pool_pss = [0.0]
    pool_rss = [0.0]
    meter = CpuMeter(pid)

    async def sample() -> None:
        while not stop.is_set():
            peak.append(rss_mb(pid))
            kids = live_children(pid)
            pool_pss.append(sum(rollup_mb(k, "Pss:") for k in kids))
            pool_rss.append(sum(rollup_mb(k, "Rss:") for k in kids))
            meter.sample()
            await asyncio.sleep(0.5)

    sampler = asyncio.create_task(sample())
    await asyncio.sleep(4)  # the slow connections are all open and the heavy calls under way
    meter.start()
    heavy0 = counter.value
    result = await observe(base, seconds, upns)
    result["heavy_in_window"] = counter.value - heavy0
    result.update(meter.stop())
    stop.set()
    await sampler
    result.update(await asyncio.to_thread(out.get, True, 120))
    load.join(30)
    result["seconds"] = seconds
    result["peak_rss_mb"] = max(peak)
    result["pool_pss_mb"] = max(pool_pss)
    result["pool_rss_mb"] = max(pool_rss)
    return result


def pooled(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """The rounds of one phase together: samples joined, counts and CPU added, memory peaks kept."""
    out: dict[str, Any] = {}
    for r in rounds:
        for k, v in r.items():
            if isinstance(v, list):
                out[k] = out.get(k, []) + v
            elif k.startswith(("peak_", "pool_")):
                out[k] = max(out.get(k, 0.0), v)
            else:
                out[k] = out.get(k, 0) + v
    return out


def run_case(emu: Any, root: Path, workers: int, share: float, args: argparse.Namespace) -> dict[str, Any]:
    """One server with server.answer_workers = `workers` and tool_cpu_share_per_caller = `share`: rounds of
    unloaded, then loaded."""
    port = free_port()
    text = emu.config_toml(0, root / "cache", with_sign_in=True)
    text = text.replace("[server]\n", f'[server]\ntransport = "http"\nport = {port}\npublic_url = "http://127.0.0.1:{port}"\n'
                        f"tool_cpu_share_per_caller = {share}\nanswer_workers = {workers}\n"
                        # the observer asks ~30 times a second on a quiet machine: over the default 600 a minute
                        # its calls would be the per-caller rate limit's 429s, not the isolation under test
                        "max_requests_per_minute = 100000\n", 1)
    text = text.replace('mode = "entra"', 'mode = "api_key"', 1)
    cfg = root / f"config-{workers}-{share}.toml"
    cfg.write_text(text, encoding="utf-8")
    env = {**os.environ, **emu.secret_env(0, with_sign_in=True), "ENTRA_MCP_API_KEYS": ",".join(KEYS.values())}
    exe = str(Path(sys.executable).with_name("entra-mcp"))
    if not (root / "cache").exists():
        subprocess.run([exe, "--config", str(cfg), "--log-level", "ERROR", "sync"], env=env, check=True, stdout=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    server = ServeProcess(cfg, "--no-sync", env=env, log_path=root / f"serve-{workers}-{share}.log", base=base,
                          options=("--log-level", "WARNING"))
    try:
        server.wait_ready(60)
        upns = [u["userPrincipalName"] for u in list(emu.tenant(0).users.values())[:20]]
        rss0 = rss_mb(server.proc.pid)
        quiets, slows, busies = [], [], []
        for _ in range(args.rounds):
            quiets.append(asyncio.run(quiet(base, args.seconds / 2, upns, server.proc.pid)))
            slows.append(asyncio.run(loaded(base, port, args.seconds, args.slow, upns, server.proc.pid, 0)))
            busies.append(asyncio.run(loaded(base, port, args.seconds, args.slow, upns, server.proc.pid, args.heavy)))
        return {"workers": workers, "share": share, "quiet": pooled(quiets), "slow": pooled(slows),
                "busy": pooled(busies), "rss0": rss0}
    finally:
        server.stop(10)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--slow", type=int, default=300)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--rounds", type=int, default=2, help="unloaded + loaded phases per server")
    parser.add_argument("--heavy", type=int, default=6, help="heavy calls kept in flight (0: slow bodies only)")
    parser.add_argument("--workers", default="0,2",
                        help="server.answer_workers of each server measured, in turn (0: heavy answers in threads)")
    parser.add_argument("--shares", default="0.5",
                        help="server.tool_cpu_share_per_caller of each server measured, in turn (1: pacing off)")
    args = parser.parse_args()
    from entra_mcp.devtenant.server import run_emulator

    load0 = os.getloadavg()[0]
    with run_emulator(size="small", seed=41) as emu, tempfile.TemporaryDirectory(prefix="bench-hostile-") as tmp:
        cases = [run_case(emu, Path(tmp), int(w), float(x), args)
                 for w in args.workers.split(",") for x in args.shares.split(",")]
    slow_name = f"{args.slow} slow bodies"
    load_name = slow_name + f" + heavy caller ({args.heavy} calls in flight)"
    print("| answer_workers | tool_cpu_share_per_caller | phase | /healthz p50 | /healthz p99 | lookup_user p50 | "
          "lookup_user p99 | observer failures |")
    print("|---|---|---|---|---|---|---|---|")
    for c in cases:
        for name, r in (("unloaded", c["quiet"]), (slow_name, c["slow"]), (load_name, c["busy"])):
            print(f"| {c['workers']} | {c['share']:g} | {name} | {pct(r['health'], 50):.1f} ms | {pct(r['health'], 99):.1f} ms | "
                  f"{pct(r['calls'], 50):.1f} ms | {pct(r['calls'], 99):.1f} ms | {r['failures']} of {len(r['calls'])} |")
    for c in cases:
        q, sl, b = c["quiet"], c["slow"], c["busy"]
        heavy = b["heavy_in_window"]
        print(f"\nworkers {c['workers']}, share {c['share']:g}: p99 ratios to unloaded (/healthz, lookup_user): "
              f"slow bodies alone {pct(sl['health'], 99) / pct(q['health'], 99):.2f}x, {pct(sl['calls'], 99) / pct(q['calls'], 99):.2f}x; "
              f"with the heavy caller {pct(b['health'], 99) / pct(q['health'], 99):.2f}x, {pct(b['calls'], 99) / pct(q['calls'], 99):.2f}x "
              f"(medians {pct(b['health'], 50) / pct(q['health'], 50):.2f}x, {pct(b['calls'], 50) / pct(q['calls'], 50):.2f}x); "
              f"heavy calls answered: {b['heavy_calls']} ({heavy} while observed); slow connections dropped by the server "
              f"(and reopened): {sl['dropped'] + b['dropped']}; server RSS {c['rss0']:.0f} MB idle, peak "
              f"{max(sl['peak_rss_mb'], b['peak_rss_mb']):.0f} MB under load; answer workers peak PSS "
              f"{b['pool_pss_mb']:.0f} MB (RSS {b['pool_rss_mb']:.0f} MB)")
        extra = b["workers_cpu"] if c["workers"] else b["server_cpu"] - sl["server_cpu"] * b["seconds"] / sl["seconds"]
        print(f"  CPU-s per second: server unloaded {q['server_cpu'] / q['seconds']:.2f}, slow bodies "
              f"{sl['server_cpu'] / sl['seconds']:.2f}, + heavy caller {b['server_cpu'] / b['seconds']:.2f} (answer workers "
              f"{b['workers_cpu'] / b['seconds']:.2f}); per heavy answer {extra / max(heavy, 1) * 1000:.0f} ms "
              f"{'in the workers' if c['workers'] else 'in the server (its CPU above the slow-bodies phase)'}")
    print(f"\nload average: {load0:.1f} at the start, {os.getloadavg()[0]:.1f} at the end ({os.cpu_count()} CPUs)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
