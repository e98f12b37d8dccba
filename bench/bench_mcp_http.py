"""/mcp tool calls over streamable HTTP: calls/s and latency under N concurrent clients, against the real server.

The server is the installed `entra-mcp serve --transport http --no-sync` in its own process (the product's uvicorn
config and middleware), over the emulator's small tenant (synced first). The load generator is a lean HTTP/1.1
client (h11 over asyncio streams, one keep-alive connection and one MCP session per client, TCP_NODELAY) spread
over --procs processes, so that the generator is not what is measured: each process reports its own CPU use.

    .venv/bin/python bench/bench_mcp_http.py [--modes api_key,entra] [--clients 32] [--seconds 8] [--procs 2]
                                             [--tool sync_status]

Prints one markdown table row per auth mode (calls/s, p50, p99, errors, server CPU, client CPU).
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

    async def post(self, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
        if self.h.our_state is h11.DONE and self.h.their_state is h11.DONE:
            self.h.start_next_cycle()
        hdrs = [("Host", self.host), ("Content-Length", str(len(body))), *headers.items()]
        self.w.write(self.h.send(h11.Request(method="POST", target=path, headers=hdrs)) + self.h.send(h11.Data(data=body))
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

    def close(self) -> None:
        self.w.close()


async def _client_loop(port: int, token: str | None, tool: str, stop_at: float, start_at: float,
                       latencies: list[float], errors: list[int], interval: float, phase: float) -> None:
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
    i = 2
    while time.time() < start_at:  # everyone starts together
        await asyncio.sleep(0.005)
    due = time.perf_counter() + phase
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
        status, _, data = await conn.post("/mcp", body, hdr)
        latencies.append(time.perf_counter() - t0)
        if status != 200 or b'"isError":true' in data.replace(b" ", b"") or f'"id":{i}'.encode() not in data.replace(b" ", b""):
            errors[0] += 1
        i += 1
    conn.close()


def _generator(port: int, tokens: list[str | None], tool: str, seconds: float, start_at: float, out: Any,
               interval: float = 0.0, first: int = 0, total: int = 1) -> None:
    latencies: list[float] = []
    errors = [0]

    async def run() -> None:
        offset = time.time() - time.perf_counter()
        stop_at = start_at - offset + seconds
        await asyncio.gather(*(_client_loop(port, t, tool, stop_at, start_at, latencies, errors, interval,
                                            interval * (first + k * (total // max(len(tokens), 1))) / total)
                               for k, t in enumerate(tokens)))

    cpu0 = time.process_time()
    asyncio.run(run())
    out.send({"latencies": latencies, "errors": errors[0], "cpu": time.process_time() - cpu0})
    out.close()


def load(port: int, tokens: list[str | None], tool: str, seconds: float, procs: int, rate: float = 0.0) -> dict[str, float]:
    """Closed loop (each client calls again when answered) or, with `rate`, paced: the clients together offer
    `rate` calls/s on a fixed schedule (no coordinated omission: a stalled server is charged for delayed sends)."""
    interval = len(tokens) / rate if rate else 0.0
    ctx = mp.get_context("spawn")
    start_at = time.time() + 1.5 + 0.05 * len(tokens)
    parts, pipes = [], []
    for p in range(procs):
        rx, tx = ctx.Pipe(duplex=False)
        proc = ctx.Process(target=_generator, args=(port, tokens[p::procs], tool, seconds, start_at, tx, interval, p, len(tokens)),
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
            "errors": sum(r["errors"] for r in results), "client_cpu": sum(r["cpu"] for r in results) / seconds * 100}


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


def measure(emu: Any, root: Path, mode: str, clients: int, seconds: float, procs: int, tool: str, *,
            sse: bool = False, rate: float = 0.0) -> dict[str, float]:
    port = free_port()
    cache = root / mode
    text = emu.config_toml(0, cache, with_sign_in=True)
    text = text.replace("[server]\n", f'[server]\ntransport = "http"\nport = {port}\npublic_url = "http://127.0.0.1:{port}"\n', 1)
    if mode != "entra":
        text = text.replace('mode = "entra"', f'mode = "{mode}"', 1)
    cfg = root / f"{mode}.toml"
    cfg.write_text(text, encoding="utf-8")
    env = {**os.environ, **emu.secret_env(0, with_sign_in=True), "ENTRA_MCP_API_KEYS": API_KEY}
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
        elif mode == "api_key":
            tokens = [API_KEY] * clients
        else:
            tokens = [None] * clients
        load(port, tokens, tool, 1.0, procs)  # warm-up
        cpu0 = _proc_cpu(server.pid)
        result = load(port, tokens, tool, seconds, procs, rate)
        result["server_cpu"] = (_proc_cpu(server.pid) - cpu0) / seconds * 100
        return result
    finally:
        serving.stop(10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--modes", default="api_key,entra")
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
    variants = [("JSON answers", False)] + ([("SSE answers (before)", True)] if args.sse else [])
    with tempfile.TemporaryDirectory() as tmp, run_emulator(size="small", seed=1) as emu:
        for mode in args.modes.split(","):
            for label, sse in variants:
                for rate in [0.0] + ([args.rate] if args.rate else []):
                    r = measure(emu, Path(tmp), mode, args.clients, args.seconds, args.procs, args.tool, sse=sse, rate=rate)
                    cpu_ms = r["server_cpu"] / 100 / r["rate"] * 1000 if r["rate"] else float("nan")
                    load_kind = f"paced, {rate:.0f}/s offered" if rate else "closed loop"
                    rows.append(f"| {mode} | {label} | {load_kind} | {r['rate']:,.0f} | {r['p50']:.1f} | {r['p99']:.1f} | "
                                f"{r['errors']:.0f} | {r['server_cpu']:.0f} | {cpu_ms:.2f} | {r['client_cpu']:.0f} |")
                    print(rows[-1], flush=True)
    print(f"\n{time.strftime('%Y-%m-%d %H:%M', time.gmtime())} UTC, {platform.python_implementation()} "
          f"{platform.python_version()}, {os.cpu_count()} CPUs, load average {load_before:.1f} before / "
          f"{os.getloadavg()[0]:.1f} after; {args.clients} clients over {args.procs} processes, `{args.tool}`, "
          f"{args.seconds:.0f} s per row\n")
    print("| server.auth.mode | server | load | calls/s | p50 (ms) | p99 (ms) | errors | server CPU (% of a core) "
          "| server CPU per call (ms) | load generator CPU (% of a core) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
