"""Benchmark (2) of issue 13: one `entra-mcp serve` syncing and serving 200 tenants of mixed sizes.

    .venv/bin/python bench/bench_tenants.py [--tenants 200] [--medium 3] [--areas core|all] [--memory-mb 64]
        [--calls 400] [--write]

The emulator (in this process) serves the tenants with one multi-tenant app consented in each (devtenant/customers.py);
`entra-mcp serve --transport http` runs as a process with `[tenant_defaults]`, a tenants file, `[scheduler]
max_concurrent_syncs` and `[server] view_memory_mb`. Measured:
  - first cycle: from the server's start until /healthz says every tenant synced; the Graph requests it took
    (the emulator's count, $batch items one each) and the most requests one tenant got within 10 s;
  - incremental cycle: with interval_minutes = 0.5, until every tenant's asOf has moved past the end of the first
    cycle (delta runs); its requests;
  - tool calls spread over the tenants (lookup_user of a random tenant's CEO, uniformly random tenants, one MCP
    client): p50 / p99 latency; the views loaded and dropped (from the server log);
  - peak RSS of the serve process (VmHWM) and its CPU time.
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import anyio  # noqa: E402
import httpx  # noqa: E402
from mcp import Client  # noqa: E402
from mcp.client.streamable_http import streamable_http_client  # noqa: E402

from _harness import ServeProcess, free_port, wait_until  # noqa: E402
from entra_mcp.devtenant.customers import customer_state, provider_config  # noqa: E402
from entra_mcp.devtenant.generate import examples  # noqa: E402
from entra_mcp.devtenant.server import run_emulator  # noqa: E402

CORE_OFF = ("sign_in_activity", "auth_methods", "roles", "licenses", "risk", "devices", "conditional_access", "owners")


def _proc_figures(pid: int) -> tuple[float, float]:
    """(peak RSS MB, CPU seconds) of a process."""
    status = Path(f"/proc/{pid}/status").read_text()
    hwm = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM:")) / 1024
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return hwm, (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _health(base: str) -> list[dict[str, Any]]:
    return list(httpx.get(f"{base}/healthz", timeout=60).json()["tenants"])


async def _tool_calls(base: str, calls: list[tuple[str, str]]) -> list[float]:
    took = []
    async with Client(streamable_http_client(f"{base}/mcp"), mode="legacy") as client:
        for tenant, query in calls:
            t0 = time.perf_counter()
            r = await client.call_tool("lookup_user", {"query": query, "tenant": tenant})
            took.append(time.perf_counter() - t0)
            if r.is_error:
                raise SystemExit(f"lookup_user failed on {tenant}: {r.content}")
    return took


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tenants", type=int, default=200)
    ap.add_argument("--medium", type=int, default=3, help="how many of them are medium (5,000 users); the rest small")
    ap.add_argument("--areas", choices=["core", "all"], default="core",
                    help="core: users, groups, applications, service principals and assignments, domains; all: every default area")
    ap.add_argument("--memory-mb", type=int, default=64, help="[server] view_memory_mb")
    ap.add_argument("--concurrency", type=int, default=4, help="[scheduler] max_concurrent_syncs")
    ap.add_argument("--calls", type=int, default=400)
    ap.add_argument("--timeout", type=float, default=1800)
    ap.add_argument("--write", action="store_true", help="write the figures into docs/benchmarks.md")
    args = ap.parse_args()

    root = Path(tempfile.mkdtemp(prefix="bench-tenants-"))
    atexit.register(shutil.rmtree, root, True)  # the tenants' mirrors: gone with the run, however it ends
    medium = set(range(0, args.tenants, max(1, args.tenants // max(1, args.medium)))[:args.medium]) if args.medium else set()
    g0, c0 = time.perf_counter(), time.process_time()
    state, app = customer_state(args.tenants, "small", seed=7, sizes=lambda i: "medium" if i in medium else "small",
                                progress=lambda m: print(m, file=sys.stderr))
    generated = time.perf_counter() - g0
    print(f"generated {args.tenants} tenants ({len(medium)} medium) in {generated:.0f} s "
          f"({time.process_time() - c0:.0f} s CPU)", file=sys.stderr)
    with run_emulator(state=state, state_dir=root / "emu") as emu:
        names = [f"customer-{i:03d}" for i in range(args.tenants)]
        sync: dict[str, Any] = {"interval_minutes": 0.5, **({a: False for a in CORE_OFF} if args.areas == "core" else {})}
        defaults, entries = provider_config(emu, app, names, secret_env="PROVIDER_SECRET", sync=sync)
        (root / "tenants.toml").write_text(entries, encoding="utf-8")
        port = free_port()
        (root / "config.toml").write_text(
            f'tenants_file = "tenants.toml"\n[server]\ncache_dir = {json.dumps(str(root / "cache"))}\nport = {port}\n'
            f"view_memory_mb = {args.memory_mb}\n[scheduler]\nmax_concurrent_syncs = {args.concurrency}\n{defaults}",
            encoding="utf-8")
        base = f"http://127.0.0.1:{port}"
        log = emu.runtime.requests
        started = time.perf_counter()
        server = ServeProcess(root / "config.toml", env={**os.environ, "PROVIDER_SECRET": app.secrets[0].value},
                              log_path=root / "serve.log", base=base)
        try:
            server.wait_ready(timeout=args.timeout)
            wait_until(lambda: all(t["synced"] for t in _health(base)), timeout=args.timeout,
                       what="first cycle", proc=server.proc, log_path=server.log_path)
            first_s = time.perf_counter() - started
            first_end = datetime.now(timezone.utc)
            first_requests = sum(log.counts().values())
            worst10 = max(log.max_in_window(tid, 10.0) for tid in log.counts())
            log.reset()
            inc_started = time.perf_counter()

            def moved() -> bool:
                return all(t["asOf"] and datetime.fromisoformat(t["asOf"].replace("Z", "+00:00")) > first_end
                           for t in _health(base))

            wait_until(moved, timeout=args.timeout, what="incremental cycle", proc=server.proc, log_path=server.log_path)
            inc_s = time.perf_counter() - inc_started
            inc_requests = sum(log.counts().values())
            rnd = random.Random(7)
            picks = [rnd.randrange(args.tenants) for _ in range(args.calls)]
            calls = [(names[i], examples(emu.tenant(i))["ceo"]) for i in picks]
            took = anyio.run(_tool_calls, base, calls)
            peak, cpu = _proc_figures(server.proc.pid)
        finally:
            server.stop()
        text = server.log()
        drops = text.count("to stay within the memory budget")
        loads = text.count("view of mirror version")
    took.sort()
    p50, p99 = statistics.median(took) * 1000, took[int(len(took) * 0.99) - 1] * 1000
    lines = [
        f"Run {datetime.now(timezone.utc):%Y-%m-%d}: `bench/bench_tenants.py --tenants {args.tenants} --medium {len(medium)} "
        f"--areas {args.areas} --memory-mb {args.memory_mb} --concurrency {args.concurrency} --calls {args.calls}` on the "
        "shared 2-CPU machine (load 8-15 from the other developers: wall times are long, CPU time is the honest figure).",
        "",
        "| figure | value |",
        "|---|---|",
        f"| first cycle (server start -> every tenant synced) | {first_s:.0f} s, {first_requests} Graph requests, at most {worst10} requests to one tenant in 10 s |",
        f"| incremental cycle (delta runs, every asOf moved) | {inc_s:.0f} s, {inc_requests} Graph requests |",
        f"| lookup_user over random tenants ({args.calls} calls, one client) | p50 {p50:.0f} ms, p99 {p99:.0f} ms |",
        f"| views loaded / drop events (budget {args.memory_mb} MB) | {loads} / {drops} |",
        f"| serve process: peak RSS, CPU time | {peak:.0f} MB, {cpu:.0f} s |",
        f"| emulator generation ({args.tenants} tenants) | {generated:.0f} s |",
    ]
    print("\n".join(lines))
    if args.write:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from _report import write_section

        write_section("## Many tenants (issue 13, benchmark 2)", lines)


if __name__ == "__main__":
    main()
