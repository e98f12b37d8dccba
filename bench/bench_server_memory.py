"""Memory and start-to-ready of the MCP server on an already synced mirror (no emulator needed).

    .venv/bin/python bench/bench_server_memory.py --config /tmp/entra-mcp-bench-large.toml [--rounds 3]

Each figure comes from a fresh process:
  - cold start: `entra-mcp serve --no-sync` spawned with no prepared index (view cache) -> first tool answer
    (seconds), then its RSS: the mirror is loaded and indexed;
  - start after `entra-mcp sync` or a restart: the same with the index the sync (or the cold start) left in the view
    cache;
  - prepare: what `entra-mcp sync` adds after committing (load the mirror, index it, write the view cache);
  - reload: in-process, the view loaded from the mirror, then the whole mirror loaded again while the old one is
    still held (a background reload after a big change; a small delta reads only its buckets: bench_reload.py); RSS
    once the old view is dropped, and the peak.
The mirror must have been synced before (bench/bench_server.py does it and keeps it in --cache-dir).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import psutil

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _stdio import first_lookup_answer  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _peak import PeakRSS  # noqa: E402

ENTRA_MCP = Path(sys.executable).parent / "entra-mcp"


def _serve(config: Path, query: str) -> tuple[float, float]:
    """(spawn -> first lookup_user answer in s, RSS MB after it)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [str(ENTRA_MCP), "--config", str(config), "--log-level", "WARNING", "serve", "--no-sync"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
        env={"DEVTENANT_CLIENT_SECRET": "unused-by-no-sync", **os.environ},
    )
    try:
        first_lookup_answer(proc, query)
        ready = time.perf_counter() - t0
        rss = psutil.Process(proc.pid).memory_info().rss / 2**20
    finally:
        proc.stdin.close()
        proc.wait(timeout=60)
    return ready, rss


def _reload_child(config: Path) -> None:
    """In this process: load the view, rebuild it while the old one is held, drop the old one; print the figures."""
    from entra_mcp.config import parse_settings
    from entra_mcp.mirror.store import MirrorStore
    from entra_mcp.views import ViewProvider

    settings = parse_settings(tomllib.loads(config.read_text()))
    store = MirrorStore(settings.server.cache_dir)
    views = ViewProvider.from_settings(settings, store, background_reload=False)
    me = psutil.Process()
    with PeakRSS(0.02) as rss:
        name = views.names[0]
        t0 = time.perf_counter()
        views.warm()
        first_s = time.perf_counter() - t0
        first_rss = me.memory_info().rss / 2**20
        # as if the store's version had moved after a big change: the old view stays held (and answering) until the new
        # one replaces it, and every bucket is read again (without bucket_rows the held snapshot's columns cannot be
        # reused; a small delta reuses them: bench_reload.py measures that case)
        held = views._held[name]
        assert held.snapshot is not None
        views._held[name] = dataclasses.replace(held, version=-1, snapshot=dataclasses.replace(held.snapshot, bucket_rows={}))
        del held  # the provider's reference is the only one: the old view goes when the new one replaces it
        t0 = time.perf_counter()
        views._load(name, store.version(name))
        reload_s = time.perf_counter() - t0
        after = me.memory_info().rss / 2**20
    peak = rss.peak / 2**20
    from entra_mcp.views import prepare_views

    t0 = time.perf_counter()
    prepare_views(settings.server.cache_dir, store, [name])
    prepare_s = time.perf_counter() - t0
    print(json.dumps({"load_s": first_s, "load_rss": first_rss, "reload_s": reload_s, "reload_rss": after, "peak": peak,
                      "prepare_s": prepare_s}))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", type=Path, required=True)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--reload-child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.reload_child:
        _reload_child(args.config)
        return 0
    settings = tomllib.loads(args.config.read_text())
    cache_dir = Path(settings["server"]["cache_dir"])
    tenant = settings["tenants"][0]["name"]
    from entra_mcp.mirror.store import MirrorStore
    from entra_mcp.views import VIEW_CACHE_DIR

    view_file = cache_dir / VIEW_CACHE_DIR / f"{tenant}.view"

    store = MirrorStore(cache_dir)
    snap = store.load_snapshot(tenant)
    assert snap is not None, f"no mirror of {tenant} under {cache_dir}: sync it first"
    query = next(iter(snap.users.values()))["userPrincipalName"]
    del snap
    store.close()
    first, restart, reload = [], [], []
    for _ in range(args.rounds):
        view_file.unlink(missing_ok=True)
        first.append(_serve(args.config, query))
        deadline = time.monotonic() + 120
        while not view_file.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        restart.append(_serve(args.config, query) if view_file.exists() else (float("nan"), float("nan")))
        out = subprocess.run([sys.executable, __file__, "--config", str(args.config), "--reload-child"],
                             capture_output=True, text=True, check=True)
        reload.append(json.loads(out.stdout.strip().splitlines()[-1]))
    med = statistics.median
    print(f"cold start (no prepared index): ready {med(r for r, _ in first):.2f} s "
          f"(runs {', '.join(f'{r:.2f}' for r, _ in first)}), RSS {med(m for _, m in first):.0f} MB")
    print(f"start after sync / restart:     ready {med(r for r, _ in restart):.2f} s "
          f"(runs {', '.join(f'{r:.2f}' for r, _ in restart)}), RSS {med(m for _, m in restart):.0f} MB")
    print(f"prepare (end of `entra-mcp sync`): {med(x['prepare_s'] for x in reload):.2f} s")
    print(f"in-process:  load {med(x['load_s'] for x in reload):.2f} s, RSS {med(x['load_rss'] for x in reload):.0f} MB; "
          f"reload {med(x['reload_s'] for x in reload):.2f} s, RSS after {med(x['reload_rss'] for x in reload):.0f} MB, "
          f"peak {med(x['peak'] for x in reload):.0f} MB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
