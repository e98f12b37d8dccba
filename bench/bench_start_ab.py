"""import json, os, subprocess, sys, time, statistics, psutil
def run(src, config, query):
    env = {**os.environ, "PYTHONPATH": src, "DEVTENANT_CLIENT_SECRET": "x"}
    t0 = time.perf_counter()
    p = subprocess.Popen([sys.executable, "-m", "entra_mcp", "--config", config, "--log-level", "WARNING", "serve", "--no-sync"],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env)
    n = 0
    def rpc(m, params):
        nonlocal n; n += 1
        p.stdin.write((json.dumps({"jsonrpc": "2.0", "id": n, "method": m, "params": params}) + "\n").encode()); p.stdin.flush()
        r = json.loads(p.stdout.readline()); assert "error" not in r, r; return r
    rpc("initialize", {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "b", "version": "1"}})
    p.stdin.write(b'{"jsonrpc":"2.0","method":"notifications/initialized"}\n'); p.stdin.flush()
    r = rpc("tools/call", {"name": "lookup_user", "arguments": {"query": query}})
    wall = time.perf_counter() - t0
    pp = psutil.Process(p.pid); ct = pp.cpu_times(); rss = pp.memory_info().rss / 2**20
    p.stdin.close(); p.wait(60)
    return wall, ct.user + ct.system, rss
rounds = int(sys.argv[1]); pairs = [a.split("=", 1) for a in sys.argv[2:]]  # label=src:config:query
res = {l: [] for l, _ in pairs}
for _ in range(rounds):
    for label, spec in pairs:
        src, config, query = spec.split("|")
        res[label].append(run(src, config, query))
for label, rs in res.items():
    med = lambda i: statistics.median(r[i] for r in rs)
    print(f"{label:10s} wall {med(0):.2f} s  cpu {med(1):.2f} s  rss {med(2):.0f} MB   cpu runs {[round(r[1],2) for r in rs]}")
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from typing import Any

import psutil


def run(src: str, config: str, query: str) -> tuple[float, float, float]:
    """(wall s, CPU s, RSS MB) of one start from spawn to the first lookup_user answer."""
    env = {**os.environ, "PYTHONPATH": src, "DEVTENANT_CLIENT_SECRET": "unused-by-no-sync"}
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "entra_mcp", "--config", config, "--log-level", "WARNING", "serve", "--no-sync"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env)
    assert proc.stdin is not None and proc.stdout is not None
    n = 0

    def rpc(method: str, params: dict[str, Any]) -> None:
        nonlocal n
        n += 1
        proc.stdin.write((json.dumps({"jsonrpc": "2.0", "id": n, "method": method, "params": params}) + "\n").encode())  # type: ignore[union-attr]
        proc.stdin.flush()  # type: ignore[union-attr]
        reply = json.loads(proc.stdout.readline())  # type: ignore[union-attr]
        if "error" in reply:
            raise SystemExit(f"{method} failed: {reply['error']}")

    try:
        rpc("initialize", {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "bench", "version": "1"}})
        proc.stdin.write(b'{"jsonrpc":"2.0","method":"notifications/initialized"}\n')
        proc.stdin.flush()
        rpc("tools/call", {"name": "lookup_user", "arguments": {"query": query}})
        wall = time.perf_counter() - t0
        child = psutil.Process(proc.pid)
        cpu = child.cpu_times()
        rss = child.memory_info().rss / 2**20
    finally:
        proc.stdin.close()
        proc.wait(timeout=60)
    return wall, cpu.user + cpu.system, rss


def main() -> int:
    if len(sys.argv) < 3:
        raise SystemExit(__doc__)
    rounds = int(sys.argv[1])
    specs = [arg.split("=", 1) for arg in sys.argv[2:]]
    results: dict[str, list[tuple[float, float, float]]] = {label: [] for label, _ in specs}
    for _ in range(rounds):
        for label, spec in specs:
            src, config, query = spec.split("|")
            results[label].append(run(src, config, query))
    for label, runs in results.items():
        wall, cpu, rss = (statistics.median(r[i] for r in runs) for i in range(3))
        print(f"{label:12s} CPU {cpu:.2f} s (runs {', '.join(f'{r[1]:.2f}' for r in runs)}), wall {wall:.2f} s, RSS {rss:.0f} MB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
