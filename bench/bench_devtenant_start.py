"""How long `entra-mcp devtenant --size large --port 0` takes to serve, and how much memory it holds then.

Starts the command as a subprocess (tests/_harness.py's DevtenantProcess), waits (bounded) for "ready" on its stderr,
samples its resident set size with psutil, checks that the login host answers with the printed config (a client-credentials token over TLS with the
printed ca_bundle), stops it with SIGTERM, and appends a section to docs/benchmarks.md.

    .venv/bin/python bench/bench_devtenant_start.py [--size large] [--runs 1] [--no-write]

Targets: ready within 60 s, RSS below 1.5 GB.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
from _harness import DevtenantProcess  # noqa: E402

READY_TARGET_S = 60.0
RSS_TARGET_MB = 1536.0


def one_run(size: str, timeout_s: float) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="bench-devtenant-") as work:
        # tests/_harness.py: waits (bounded) for "ready", reads the printed config and the secret's export line
        proc = DevtenantProcess("--size", size, root=Path(work), timeout=timeout_s,
                                argv=[sys.executable, "-m", "entra_mcp"])
        try:
            rss_mb = psutil.Process(proc.proc.pid).memory_info().rss / 2**20
            t0 = time.monotonic()
            proc.client_credentials_token().raise_for_status()
            token_ms = (time.monotonic() - t0) * 1000
            t0 = time.monotonic()
            code = proc.stop(timeout=30)
            stop_s = time.monotonic() - t0
            if code != 0:
                raise SystemExit(f"devtenant exited with {code} after SIGTERM")
            return {"ready_s": proc.ready_seconds, "rss_mb": rss_mb, "first_token_ms": token_ms, "stop_s": stop_s}
        finally:
            proc.stop()


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
