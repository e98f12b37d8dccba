"""What the mirror's bucket size buys and costs on a large mirror: the load of each collection (the first half of a
cold start) against a delta commit of N changed users and the server's reload after it.

    .venv/bin/python bench/bench_bucket_size.py --config /tmp/entra-mcp-large/config.toml --items 128,512 [--rounds 3]
        [--changes 100]

For each objects-per-bucket figure (`--items`; the mirror writes 128, mirror/store.py `_ITEMS_PER_BUCKET`) a copy of
the mirror, without its view cache, is re-bucketed as a full commit with that figure would write it (every area
committed again: the same objects in buckets of the new count; 128 leaves the large mirror as it is). The mirror
itself is not changed. Then, round by round and figure by figure (interleaved), each in fresh processes:
  - load: `load_snapshot`, CPU seconds per collection and the RSS after it;
  - delta: a server's view held (ViewProvider, derived indexes, as serve holds it), a delta commit that changes the
    job title of `--changes` random users (CPU), then the server's reload (`views.current()`: CPU, peak RSS while both
    versions are held); each round on a fresh copy of the re-bucketed mirror.
Medians of CPU time (`time.process_time`).
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import shutil
import statistics
import subprocess
import os
import sys
import tempfile
import time
import tomllib
from pathlib import Path
from typing import Any

import psutil

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _peak import PeakRSS  # noqa: E402

_SHOWN = ("users", "members", "registration", "assignments", "devices", "sign_in", "owners", "groups",
          "service_principals", "applications")


def _open(config: Path) -> tuple[Any, Any, str]:
    from entra_mcp.config import parse_settings
    from entra_mcp.mirror.store import MirrorStore

    settings = parse_settings(tomllib.loads(config.read_text()))
    return settings, MirrorStore(settings.server.cache_dir), settings.tenants[0].name


def _rebucket(config: Path, items: int) -> dict[str, int]:
    from entra_mcp.mirror import store as mirror_store
    from entra_mcp.mirror.snapshot import AREAS

    mirror_store._ITEMS_PER_BUCKET = items  # what a full commit of this process sizes buckets by
    _, store, name = _open(config)
    counts: dict[str, int] = {}
    with store.writer(name) as w:
        for area in AREAS:
            if not w.has_data(area):
                continue
            data = {coll: w.read_all(area, coll) for coll in mirror_store.COLLECTIONS[area]}
            w.commit_full(area, data, delta_link=w.delta_link(area), status=w.status(area), meta=w.meta(area))
    root = store.root_state(name) or {}
    for a in root.get("areas", {}).values():
        counts.update({coll: int(spec[0]) for coll, spec in a["colls"].items() if spec})
    return counts


def _load(config: Path) -> dict[str, float]:
    import gc

    from entra_mcp.mirror import store as mirror_store

    _, store, name = _open(config)
    times: dict[str, float] = {}
    read_coll = mirror_store.MirrorStore._read_coll

    def timed(self: Any, cache: Any, area: str, coll: str, spec: Any, pool: Any, held: Any = None) -> Any:
        c0 = time.process_time()
        out = read_coll(self, cache, area, coll, spec, pool, held)
        times[coll] = time.process_time() - c0
        return out

    mirror_store.MirrorStore._read_coll = timed  # type: ignore[method-assign]
    gc.disable()  # as the server's load runs
    c0 = time.process_time()
    assert store.load_snapshot(name) is not None
    times["total"] = time.process_time() - c0
    times["tables"] = sum(v for k, v in times.items() if k not in ("total", "members"))
    times["rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return times


def _delta(config: Path, changes: int) -> dict[str, float]:
    from entra_mcp.identity.access import derive_indexes
    from entra_mcp.views import ViewProvider

    settings, store, name = _open(config)
    views = ViewProvider.from_settings(settings, store, check_interval=0, background_reload=False)
    held = views.current(name)
    assert held.snapshot is not None and held.view is not None
    derive_indexes(held.view)
    users = random.Random(5).sample(list(held.snapshot.users), changes)
    c0 = time.process_time()
    with store.writer(name) as w:
        change = w.begin("users")
        for k, uid in enumerate(users):
            change.put("users", uid, {**change.get("users", uid), "jobTitle": f"Bench title {k}"})
        w.commit_delta(change, delta_link=w.delta_link("users"), status=w.status("users"))
    commit_cpu = time.process_time() - c0
    with PeakRSS() as rss:
        c0 = time.process_time()
        now = views.current(name)
        reload_cpu = time.process_time() - c0
    peak, before = rss.peak, rss.before
    assert now.view is not None and now.view.snapshot.users[users[0]]["jobTitle"] == "Bench title 0"
    return {"commit_cpu": commit_cpu, "buckets": float(len(change.changed_buckets())), "reload_cpu": reload_cpu,
            "rss_before_mb": before / 2**20, "peak_mb": peak / 2**20}


def _copy(src: Path, dst: Path) -> Path:
    """A copy of the mirror of config `src` (without its view cache) under dst; its config."""
    from entra_mcp.views import VIEW_CACHE_DIR

    text = src.read_text()
    cache_dir = Path(tomllib.loads(text)["server"]["cache_dir"])
    shutil.copytree(cache_dir, dst / "cache", ignore=shutil.ignore_patterns(VIEW_CACHE_DIR))
    config = dst / "config.toml"
    config.write_text(text.replace(json.dumps(str(cache_dir)), json.dumps(str(dst / "cache"))))
    return config


def _child(*args: str) -> Any:
    out = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", type=Path, help="the large mirror's config.toml (not changed)")
    p.add_argument("--items", default="128,512", help="objects per bucket to compare, comma-separated")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--changes", type=int, default=100, help="users changed by the delta commit")
    p.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        what, config, *rest = args.child
        fn = {"rebucket": lambda: _rebucket(Path(config), int(rest[0])), "load": lambda: _load(Path(config)),
              "delta": lambda: _delta(Path(config), int(rest[0]))}[what]
        print(json.dumps(fn()))
        return 0
    if args.config is None:
        p.error("--config is required")
    items = [int(x) for x in args.items.split(",")]
    with tempfile.TemporaryDirectory(prefix="entra-mcp-buckets-") as tmp:
        configs: dict[int, Path] = {}
        for n in items:
            configs[n] = _copy(args.config, Path(tmp) / f"items-{n}")
            counts = _child("--child", "rebucket", str(configs[n]), str(n))
            print(f"{n} objects per bucket: " + ", ".join(f"{c} {counts[c]}" for c in _SHOWN if c in counts), flush=True)
        loads: dict[int, list[dict[str, float]]] = {n: [] for n in items}
        deltas: dict[int, list[dict[str, float]]] = {n: [] for n in items}
        for _ in range(args.rounds):
            for n in items:
                loads[n].append(_child("--child", "load", str(configs[n])))
                round_dir = Path(tmp) / f"round-{n}"
                deltas[n].append(_child("--child", "delta", str(_copy(configs[n], round_dir)), str(args.changes)))
                shutil.rmtree(round_dir)
    print(f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, load average {psutil.getloadavg()[0]:.1f} on "
          f"{psutil.cpu_count()} CPUs; medians of {args.rounds} interleaved rounds (CPU s)")
    print("objects per bucket".ljust(34) + "".join(f"{n:>12d}" for n in items))
    for key in ("total", "tables", *_SHOWN, "rss_mb"):
        print(f"load {key}".ljust(34) + "".join(f"{statistics.median(r[key] for r in loads[n]):12.3f}" for n in items))
    for key in ("buckets", "commit_cpu", "reload_cpu", "rss_before_mb", "peak_mb"):
        print(f"delta of {args.changes} users: {key}".ljust(34)
              + "".join(f"{statistics.median(r[key] for r in deltas[n]):12.3f}" for n in items))
    print("runs, load total: " + "; ".join(f"{n}: " + ", ".join(f"{r['total']:.2f}" for r in loads[n]) for n in items))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
