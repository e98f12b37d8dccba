"""How long `entra-mcp devtenant --size large --port 0` takes to serve, and how much memory it holds then.

Starts the command as a subprocess, waits (bounded) for "ready" on its stderr, samples its resident set size with
psutil, checks that the login host answers with the printed config (a client-credentials token over TLS with the
printed ca_bundle), stops it with SIGTERM, and appends a section to docs/benchmarks.md.

    .venv/bin/python bench/bench_devtenant_start.py [--size large] [--runs 1] [--no-write]

Targets: ready within 60 s, RSS below 1.5 GB.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import queue
import shlex
import signal
import ssl
import subprocess
import sys
import threading
import time
import tomllib
from pathlib import Path
from typing import IO

import httpx
import psutil

ROOT = Path(__file__).resolve().parent.parent
READY_TARGET_S = 60.0
RSS_TARGET_MB = 1536.0


def _pump(stream: IO[str], lines: "queue.Queue[str | None]") -> None:
    for line in stream:
        lines.put(line)
    lines.put(None)


def one_run(size: str, timeout_s: float) -> dict[str, float]:
    started = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, "-m", "entra_mcp", "devtenant", "--size", size, "--port", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
    )
    out: queue.Queue[str | None] = queue.Queue()
    err: queue.Queue[str | None] = queue.Queue()
    for stream, q in ((proc.stdout, out), (proc.stderr, err)):
        threading.Thread(target=_pump, args=(stream, q), daemon=True).start()
    try:
        deadline = started + timeout_s
        exported = ""
        while True:
            line = err.get(timeout=max(0.1, deadline - time.monotonic()))
            if line is None:
                raise SystemExit(f"devtenant exited with {proc.wait()} before it was ready")
            if line.startswith("export "):
                exported = line
            if line == "ready\n":
                break
        ready_s = time.monotonic() - started
        rss_mb = psutil.Process(proc.pid).memory_info().rss / 2**20
        stdout = ""
        while "API app (bearer audience)" not in stdout:  # the config's last line, written before "ready"
            chunk = out.get(timeout=max(0.1, deadline - time.monotonic()))
            if chunk is None:
                raise SystemExit("devtenant closed stdout before printing its config")
            stdout += chunk
        tenant = tomllib.loads(stdout)["tenants"][0]  # stdout is TOML only; the export line is on stderr
        secret = shlex.split(exported.split("export DEVTENANT_CLIENT_SECRET=")[1].splitlines()[0])[0]
        ctx = ssl.create_default_context(cafile=tenant["ca_bundle"])
        t0 = time.monotonic()
        with httpx.Client(verify=ctx, timeout=30) as client:
            resp = client.post(f"{tenant['login_url']}/{tenant['tenant_id']}/oauth2/v2.0/token", data={
                "grant_type": "client_credentials", "client_id": tenant["client_id"], "client_secret": secret,
                "scope": f"{tenant['graph_url']}/.default"})
            resp.raise_for_status()
        token_ms = (time.monotonic() - t0) * 1000
        proc.send_signal(signal.SIGTERM)
        t0 = time.monotonic()
        code = proc.wait(timeout=30)
        stop_s = time.monotonic() - t0
        if code != 0:
            raise SystemExit(f"devtenant exited with {code} after SIGTERM")
        return {"ready_s": ready_s, "rss_mb": rss_mb, "first_token_ms": token_ms, "stop_s": stop_s}
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=["small", "medium", "large"], default="large")
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--timeout", type=float, default=180.0, help="give up waiting for ready after this many s")
    parser.add_argument("--no-write", action="store_true", help="print only; do not append to docs/benchmarks.md")
    args = parser.parse_args()

    runs = [one_run(args.size, args.timeout) for _ in range(args.runs)]
    worst_ready = max(r["ready_s"] for r in runs)
    worst_rss = max(r["rss_mb"] for r in runs)
    rows = "\n".join(
        f"| {i + 1} | {r['ready_s']:.1f} | {r['rss_mb']:.0f} | {r['first_token_ms']:.0f} | {r['stop_s']:.2f} |"
        for i, r in enumerate(runs)
    )
    verdict = (f"ready {'within' if worst_ready <= READY_TARGET_S else 'OVER'} the {READY_TARGET_S:.0f} s target, "
               f"RSS {'below' if worst_rss <= RSS_TARGET_MB else 'OVER'} the {RSS_TARGET_MB / 1024:.1f} GB target")
    section = f"""
## Emulator start (`entra-mcp devtenant --size {args.size} --port 0`)

{dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC, {platform.python_implementation()} {platform.python_version()},
{os.cpu_count()} CPUs, {psutil.virtual_memory().total / 2**30:.0f} GiB RAM. `bench/bench_devtenant_start.py`: time from
process start to "ready" on stderr (generation of the tenant, TLS and signing keys, HTTPS listening), resident
memory at that moment, then one client-credentials token over TLS with the printed config, then SIGTERM.

| run | ready (s) | RSS (MB) | first token (ms) | stop after SIGTERM (s) |
|---|---|---|---|---|
{rows}

Result: {verdict}.
"""
    print(section)
    if not args.no_write:
        path = ROOT / "docs" / "benchmarks.md"
        existing = path.read_text(encoding="utf-8") if path.exists() else "# Benchmarks\n"
        path.write_text(existing.rstrip("\n") + "\n" + section, encoding="utf-8")
    return 0 if worst_ready <= READY_TARGET_S and worst_rss <= RSS_TARGET_MB else 1


if __name__ == "__main__":
    raise SystemExit(main())
