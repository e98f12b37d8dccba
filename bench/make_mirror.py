"""Build a synced mirror of a generated tenant once, for the benchmarks that start from one (server start and memory,
reloads, tool CPU).

    .venv/bin/python bench/make_mirror.py --size large --dir /tmp/entra-mcp-large [--seed 1] [--only users,groups,...]

Starts the emulator (`run_emulator`, throttling off: the mirror is the point, not the sync), runs one full
`sync_tenant` with every default area on (`--only`: just the named sync areas, the others switched off in the
config), and writes DIR/config.toml (without ca_bundle, so the emulator's temporary
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


def build(size: str, directory: Path, seed: int = 1, only: list[str] | None = None) -> Path:
    """Sync a fresh `size` tenant into directory/cache (only the areas in `only`, when given); returns
    directory/config.toml."""
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
        if only is not None:
            from entra_mcp.areas import REGISTRY

            unknown = sorted(set(only) - {a.name for a in REGISTRY})
            if unknown:
                raise SystemExit(f"--only: unknown sync area(s) {', '.join(unknown)}; known: {', '.join(a.name for a in REGISTRY)}")
            on = {a.switch for a in REGISTRY if a.name in only}  # an area rides on its switch ([tenants.sync] key)
            text += "\n[tenants.sync]\n" + "".join(f"{switch} = {'true' if switch in on else 'false'}\n"
                                                    for switch in dict.fromkeys(a.switch for a in REGISTRY))
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
    p.add_argument("--only", help="comma-separated sync areas to mirror (default: every default area)")
    args = p.parse_args()
    print(build(args.size, args.dir, args.seed, args.only.split(",") if args.only else None))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
