"""CPU and wall time per call of the account and access answers, in process, on an already synced mirror.

    .venv/bin/python bench/bench_tools_cpu.py --config /tmp/entra-mcp-large/config.toml [--calls 3000] [--profile TOOL]

No emulator: the mirror comes from bench/make_mirror.py (every default area on). The view is loaded as `serve`
loads it (the prepared index when there is one), the cyclic collector on as in the server. Per tool: the first
call (it builds the tool's lazy per-view index), then `--calls` calls over random users (and apps), each timed by
the wall clock and by the calling thread's CPU time (what the call costs, without the time other processes held
the CPUs: on a shared machine the wall-clock tail is mostly the machine's load). --profile TOOL prints a cProfile
of that tool's calls instead.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import random
import statistics
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable


def _p(values: list[float], q: float) -> float:
    return sorted(values)[min(len(values) - 1, int(q * len(values)))]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", type=Path, required=True)
    p.add_argument("--calls", type=int, default=3000)
    p.add_argument("--profile")
    args = p.parse_args()

    from entra_mcp.config import load_settings
    from entra_mcp.identity.account import check_account_state
    from entra_mcp.identity.account_facts import account_index
    from entra_mcp.identity.apps import check_app_access
    from entra_mcp.identity.reset import check_reset_eligibility
    from entra_mcp.mirror.store import MirrorStore
    from entra_mcp.views import ViewProvider

    settings = load_settings(args.config)
    views = ViewProvider.from_settings(settings, MirrorStore(settings.server.cache_dir), cache=True, background_reload=False)
    t0 = time.perf_counter()
    tv = views.current()
    view = tv.view
    assert view is not None and tv.snapshot is not None
    print(f"view ready in {time.perf_counter() - t0:.1f} s")
    snap = tv.snapshot
    rnd = random.Random(7)
    users = sorted(snap.users)
    admins = sorted(account_index(view).roles_by_user)
    sps = sorted(snap.service_principals)
    apps = [str(snap.service_principals[s].get("appId")) for s in rnd.sample(sps, min(200, len(sps)))]
    now = datetime.now(timezone.utc)
    picks = [rnd.choice(users) for _ in range(args.calls)]
    picks[:: 10] = [rnd.choice(admins) for _ in picks[:: 10]] if admins else picks[:: 10]
    tools: dict[str, Callable[[int], Any]] = {
        "check_reset_eligibility": lambda i: check_reset_eligibility(view, picks[i], now=now),
        "check_app_access (with CA)": lambda i: check_app_access(view, picks[i], apps[i % len(apps)], now),
        "check_account_state": lambda i: check_account_state(view, picks[i], now),
    }
    for name, call in tools.items():
        if args.profile and args.profile not in name:
            continue
        c0 = time.thread_time()
        call(0)
        first = time.thread_time() - c0
        if args.profile:
            prof = cProfile.Profile()
            prof.enable()
            for i in range(args.calls):
                call(i)
            prof.disable()
            pstats.Stats(prof).sort_stats("tottime").print_stats(25)
            continue
        wall, cpu = [], []
        for i in range(args.calls):
            t0, c0 = time.perf_counter(), time.thread_time()
            call(i)
            cpu.append((time.thread_time() - c0) * 1000)
            wall.append((time.perf_counter() - t0) * 1000)
        print(f"{name:28s} first {first * 1000:7.1f} ms CPU | CPU p50 {statistics.median(cpu):.3f} p99 {_p(cpu, .99):.3f} ms"
              f" | wall p50 {statistics.median(wall):.3f} p99 {_p(wall, .99):.3f} max {max(wall):.1f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
