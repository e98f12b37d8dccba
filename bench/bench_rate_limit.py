"""The shared /mcp rate limit on the event loop: the synchronous Redis call (what the request path did) against the
awaited one (SharedRateLimiter.admit_async, what it does now), A/B in one run, in one process.

    .venv/bin/python bench/bench_rate_limit.py [--calls 4000] [--concurrency 16] [--write]

One redis-server on loopback. For each variant, `--concurrency` tasks on one asyncio loop spend `--calls` admits
together (distinct keys, never refused), while a probe task measures the loop's lag (how late a 1 ms sleep wakes):
what every other request on that loop waits while a rate-limit call holds it. Figures: wall and process CPU per
admit, and the probe's lag p50/p99/max. Each variant runs `--rounds` times alternately; medians.
With --write, the results replace the "Shared rate limit on the event loop" section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from _redis import RedisServer  # noqa: E402
from _report import percentile, write_section  # noqa: E402

from entra_mcp.config import StoreSettings  # noqa: E402
from entra_mcp.sharedstore.connection import SharedRedis  # noqa: E402
from entra_mcp.sharedstore.counters import SharedRateLimiter  # noqa: E402


async def _run(limiter: SharedRateLimiter, *, variant: str, calls: int, concurrency: int) -> dict[str, Any]:
    lags: list[float] = []
    done = asyncio.Event()

    async def probe() -> None:
        while not done.is_set():
            t0 = time.perf_counter()
            await asyncio.sleep(0.001)
            lags.append((time.perf_counter() - t0 - 0.001) * 1000)

    left = calls

    async def worker(n: int) -> None:
        nonlocal left
        i = 0
        while left > 0:
            left -= 1
            i += 1
            key = f"{variant}-{n}-{i}"
            if variant == "sync":
                limiter.admit(key)
                await asyncio.sleep(0)  # the request path goes on awaiting other things
            else:
                await limiter.admit_async(key)

    probe_task = asyncio.create_task(probe())
    await asyncio.sleep(0.01)
    cpu0, t0 = time.process_time(), time.perf_counter()
    await asyncio.gather(*(worker(n) for n in range(concurrency)))
    wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    done.set()
    await probe_task
    return {"wall_ms": wall / calls * 1000, "cpu_ms": cpu / calls * 1000, "p50": percentile(lags, 50),
            "p99": percentile(lags, 99), "max": max(lags) if lags else float("nan")}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--calls", type=int, default=4000)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--write", action="store_true")
    args = ap.parse_args()
    results: dict[str, list[dict[str, Any]]] = {"sync": [], "async": []}
    with tempfile.TemporaryDirectory(prefix="bench-rate-") as tmp, RedisServer(Path(tmp) / "redis") as server:
        shared = SharedRedis(StoreSettings(redis_url=server.url, key_prefix="bench:"))
        limiter = SharedRateLimiter(shared, "mcp", 1_000_000)

        async def all_rounds() -> None:
            for _ in range(args.rounds):
                for variant in ("sync", "async"):
                    results[variant].append(await _run(limiter, variant=variant, calls=args.calls,
                                                       concurrency=args.concurrency))

        asyncio.run(all_rounds())
        shared.close()

    def med(variant: str, k: str) -> float:
        return statistics.median(r[k] for r in results[variant])

    rows = []
    for variant, label in (("sync", "A: synchronous call on the loop (before)"), ("async", "B: awaited, redis.asyncio (now)")):
        rows.append(f"| {label} | {med(variant, 'wall_ms'):.3f} ms | {med(variant, 'cpu_ms'):.3f} ms | "
                    f"{med(variant, 'p50'):.2f} / {med(variant, 'p99'):.2f} / {med(variant, 'max'):.1f} ms |")
    lines = [
        f"`bench/bench_rate_limit.py --calls {args.calls} --concurrency {args.concurrency} --rounds {args.rounds}` "
        f"(measured {time.strftime('%Y-%m-%d')}; one process, one asyncio loop, one redis-server on loopback; the "
        "machine's 2 cores shared with other work: medians of alternating rounds, compare the rows with each other).",
        "",
        "| shared rate limit | wall per admit (all tasks together) | process CPU per admit | loop lag of a 1 ms sleep, p50 / p99 / max |",
        "|---|---|---|---|",
        *rows,
        "",
        "The loop lag is what any other request on the server's event loop waits behind rate-limit calls: the "
        "synchronous call holds the loop for the whole Redis round trip; the awaited one only for its own CPU.",
    ]
    print("\n".join(lines))
    if args.write:
        write_section("## Shared rate limit on the event loop", lines)


if __name__ == "__main__":
    main()
