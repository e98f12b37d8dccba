"""What one heavy caller does to the event loop and to another caller, with and without pacing, in one process.

    .venv/bin/python bench/bench_heavy_pacing.py [--seconds 6] [--rounds 3]

The GIL effect without the HTTP and OS noise of bench_hostile_load.py: one process holds the small emulator tenant's
synced view and the server's own work lanes (server/limits.py WorkLanes, entra_mcp/pacing.py). An observer on the
event loop measures, one at a time, (a) the loop's lag (how late a 5 ms sleep wakes: what /healthz and every
request's I/O wait for) and (b) another caller's lookup_user answered through its lane. Phases, interleaved in each
round so that the machine's load drifts over all of them alike:
  quiet     no other work;
  unpaced   a heavy caller keeps 6 get_ticket_identity_context calls (19,000-character ticket text) in flight,
            tool_cpu_share_per_caller = 1 (pacing off: the code before this change);
  paced     the same with the default share (0.5).
  switch 5 ms / switch 0.5 ms
            paced, with the GIL's switch interval at Python's default 5 ms and at 0.5 ms instead of the 1 ms that
            `serve --transport http` sets (server/http.py): the cheap lever, and its cost to the heavy caller;
  workers   the heavy answers computed by the server's answer workers (server/workers.py AnswerPool, 2 processes
            forked with the view), the default since issue 15's last step.
Prints p50/p99 per phase (all rounds together), the loaded/quiet p99 ratios, the heavy calls answered and the CPU
seconds the process (and its answer workers) used per phase. Wall-clock figures on a shared machine are noisy: the
ratios within the run are what counts.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
import tomllib
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))
from _report import percentile  # noqa: E402


def pct(values: list[float], p: float) -> float:
    """The p-th percentile of latencies in seconds, in milliseconds."""
    return percentile(values, p, scale=1000)


async def phase(tv: Any, upns: list[str], heavy_text: str, share: float | None, seconds: float, *,
                switch: float = 0.001, pool: Any = None) -> dict[str, Any]:
    from entra_mcp.identity.ticket import get_ticket_identity_context
    from entra_mcp.identity.users import lookup_user
    from entra_mcp.server.limits import WorkLanes
    from _harness import cpu_seconds

    view = tv.view
    sys.setswitchinterval(switch)
    lanes = WorkLanes(cpu_share=share if share is not None else 1.0)
    now = datetime.now(timezone.utc)
    stop = asyncio.Event()
    heavy_done = 0

    def heavy_answer() -> Any:
        if pool is not None:
            return pool.compute(tv, get_ticket_identity_context, upns[0], heavy_text, now)
        return get_ticket_identity_context(view, upns[0], heavy_text, now=now)

    async def heavy_lane() -> None:
        nonlocal heavy_done
        while not stop.is_set():
            await lanes.run("heavy", heavy_answer)
            heavy_done += 1

    heavy = [asyncio.create_task(heavy_lane()) for _ in range(6)] if share is not None else []
    await asyncio.sleep(0.5)  # the heavy calls are under way
    lag: list[float] = []
    calls: list[float] = []
    cpu0 = time.process_time()
    workers0 = sum(cpu_seconds(p) for p in pool.pids()) if pool is not None else 0.0
    end = time.monotonic() + seconds
    n = 0
    while time.monotonic() < end:
        t = time.monotonic()
        await asyncio.sleep(0.005)
        lag.append(time.monotonic() - t - 0.005)
        n += 1
        t = time.monotonic()
        await lanes.run("observer", lambda: lookup_user(view, upns[n % len(upns)]))
        calls.append(time.monotonic() - t)
    cpu = time.process_time() - cpu0
    workers_cpu = sum(cpu_seconds(p) for p in pool.pids()) - workers0 if pool is not None else 0.0
    stop.set()
    await asyncio.gather(*heavy)
    sys.setswitchinterval(0.001)
    return {"lag": lag, "calls": calls, "heavy": heavy_done, "cpu": cpu, "workers_cpu": workers_cpu}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=6.0, help="seconds per phase and round")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    from entra_mcp.config import parse_settings
    from entra_mcp.devtenant.server import run_emulator
    from entra_mcp.mirror.store import MirrorStore
    from entra_mcp.sync.engine import sync_tenant
    from entra_mcp.views import ViewProvider

    sys.setswitchinterval(0.001)  # as `serve --transport http` sets it (server/http.py)
    with run_emulator(size="small", seed=41) as emu, tempfile.TemporaryDirectory(prefix="bench-pacing-") as tmp:
        settings = parse_settings(tomllib.loads(emu.config_toml(tenant_index=0, cache_dir=Path(tmp) / "cache")))
        os.environ.update(emu.secret_env(0))
        store = MirrorStore(settings.server.cache_dir)
        asyncio.run(sync_tenant(settings.tenants[0], store))
        tv = ViewProvider.from_settings(settings, store, background_reload=False).current(None)
        upns = [u["userPrincipalName"] for u in list(emu.tenant(0).users.values())[:20]]
    from entra_mcp.server.workers import AnswerPool

    heavy_text = " ".join(f"\ufdfa {u} x{i}" for i, u in enumerate(upns[:8] * 150))[:19_000]
    pool = AnswerPool(workers=2, timeout=60)
    # name -> (share, switch interval, pool)
    cases: dict[str, tuple[float | None, float, Any]] = {
        "quiet": (None, 0.001, None), "unpaced": (1.0, 0.001, None), "paced": (0.5, 0.001, None),
        "switch 5 ms": (0.5, 0.005, None), "switch 0.5 ms": (0.5, 0.0005, None), "workers": (0.5, 0.001, pool)}
    phases: dict[str, dict[str, Any]] = {k: {"lag": [], "calls": [], "heavy": 0, "cpu": 0.0, "workers_cpu": 0.0}
                                         for k in cases}
    try:
        for _ in range(args.rounds):
            for name, (share, switch, with_pool) in cases.items():
                r = asyncio.run(phase(tv, upns, heavy_text, share, args.seconds, switch=switch, pool=with_pool))
                for k in ("lag", "calls"):
                    phases[name][k] += r[k]
                for k in ("heavy", "cpu", "workers_cpu"):
                    phases[name][k] += r[k]
    finally:
        pool.close()
    print("| phase | loop lag p50 | loop lag p99 | lookup_user p50 | lookup_user p99 | samples | heavy calls | "
          "process CPU s | workers CPU s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, r in phases.items():
        print(f"| {name} | {pct(r['lag'], 50):.2f} ms | {pct(r['lag'], 99):.2f} ms | {pct(r['calls'], 50):.2f} ms | "
              f"{pct(r['calls'], 99):.2f} ms | {len(r['calls'])} | {r['heavy']} | {r['cpu']:.1f} | {r['workers_cpu']:.1f} |")
    q = phases["quiet"]
    for name in list(cases)[1:]:
        r = phases[name]
        print(f"{name}: p99 ratios to quiet: loop lag {pct(r['lag'], 99) / pct(q['lag'], 99):.2f}x, lookup_user "
              f"{pct(r['calls'], 99) / pct(q['calls'], 99):.2f}x; medians {statistics.median(r['lag']) * 1000:.2f} ms / "
              f"{statistics.median(r['calls']) * 1000:.2f} ms")
    print(f"load average at the end: {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
