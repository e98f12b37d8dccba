"""Build a synced mirror of a generated tenant once, for the benchmarks that start from one (server start and memory,
reloads, tool CPU).

    .venv/bin/python bench/make_mirror.py --size large --dir /tmp/entra-mcp-large [--seed 1]

Starts the emulator (`run_emulator`, throttling off: the mirror is the point, not the sync), runs one full
`sync_tenant` with every default area on, and writes DIR/config.toml (without ca_bundle, so the emulator's temporary
CA is not needed afterwards) and the mirror under DIR/cache. Prints the emulator's and the sync's wall time.
The config works with `entra-mcp serve --no-sync`, bench/bench_server_memory.py and bench/bench_reload.py.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import tomllib
from pathlib import Path

import anyio


def build(size: str, directory: Path, seed: int = 1) -> Path:
    """Sync a fresh `size` tenant into directory/cache; returns directory/config.toml."""
    from entra_mcp.config import parse_settings
    from entra_mcp.devtenant.server import run_emulator
    from entra_mcp.mirror.store import MirrorStore
    from entra_mcp.sync.engine import sync_tenant

    cache_dir = directory / "cache"
    cache_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    with run_emulator(size=size, seed=seed) as emu:
        emu.faults.throttling_enabled = False
        print(f"emulator ({size}) ready in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
        text = emu.config_toml(0, cache_dir=cache_dir)
        settings = parse_settings(tomllib.loads(text))
        os.environ.update(emu.secret_env(0))
        store = MirrorStore(cache_dir)
        t0 = time.perf_counter()
        try:
            result = anyio.run(lambda: sync_tenant(settings.tenants[0], store, full=True))
        finally:
            store.close()
        print(f"full sync in {time.perf_counter() - t0:.1f} s, error={result.error}", file=sys.stderr)
        for area, outcome in result.areas.items():
            print(f"  {area}: {outcome.outcome} ({outcome.objects} objects)", file=sys.stderr)
    config = directory / "config.toml"
    config.write_text("\n".join(line for line in text.splitlines() if not line.startswith("ca_bundle")) + "\n")
    return config


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", default="large", choices=["small", "medium", "large"])
    p.add_argument("--dir", type=Path, required=True, help="where config.toml and cache/ are written")
    p.add_argument("--seed", type=int, default=1)
    args = p.parse_args()
    print(build(args.size, args.dir, args.seed))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
