"""What each sync area's collections add to the server's memory, on an already synced mirror.

    .venv/bin/python bench/bench_area_memory.py --config /tmp/entra-mcp-large/config.toml

Reads the mirror's collections one by one the way MirrorStore.load_snapshot does (tables first, ids shared through
one pool) under tracemalloc, and prints the Python memory each collection holds once read (its objects, the ids it
is the first to hold, minus what reading it freed), summed per area. tracemalloc counts Python allocations only: the
process RSS is higher by the allocator's overhead and fragmentation.
"""

from __future__ import annotations

import argparse
import gc
import tracemalloc
from pathlib import Path


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", type=Path, required=True)
    args = p.parse_args()

    from entra_mcp.config import load_settings
    from entra_mcp.mirror import store as mirror_store
    from entra_mcp.mirror.snapshot import AREAS

    settings = load_settings(args.config)
    store = mirror_store.MirrorStore(settings.server.cache_dir)
    name = settings.tenants[0].name
    root = store._root(name)
    cache = store._cache(name, create=False)
    assert root is not None and cache is not None, f"no mirror of {name}: sync it first"
    pool: dict[str, str] = {}
    held = {}
    per_area: dict[str, float] = {}
    gc.disable()
    tracemalloc.start()
    order = sorted(((a, c) for a in AREAS for c in mirror_store.COLLECTIONS[a]), key=lambda ac: ac[1] not in mirror_store.TABLES)
    for area, coll in order:
        before = tracemalloc.get_traced_memory()[0]
        held[coll] = store._read_coll(cache, area, coll, mirror_store._area_of(root, area)["colls"].get(coll), pool)
        mb = (tracemalloc.get_traced_memory()[0] - before) / 2**20
        per_area[area] = per_area.get(area, 0.0) + mb
        print(f"  {area:22s} {coll:22s} {len(held[coll]):>9,} objects  {mb:7.1f} MB")
    total = tracemalloc.get_traced_memory()[0] / 2**20
    tracemalloc.stop()
    print("per area (MB):")
    for area, mb in sorted(per_area.items(), key=lambda kv: -kv[1]):
        print(f"  {area:22s} {mb:7.1f}")
    print(f"all collections: {total:.1f} MB of Python objects")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
