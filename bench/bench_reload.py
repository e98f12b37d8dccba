"""What a server pays to follow a small sync: the reload after a delta that changed 3 users and 1 membership.

    .venv/bin/python bench/bench_reload.py --config /tmp/entra-mcp-large/config.toml [--rounds 3]

The mirror (bench/make_mirror.py builds one) is copied to a temporary directory first; it is not changed. Each
round runs in a fresh process: the server's view is loaded (ViewProvider, as `serve` holds it), then a delta commit
changes three users (a rename, a new employee id, a job title) and adds one user to a group, and
  - reload: what the server now does (views.current(): load the new snapshot, patch the held index), wall and CPU
    seconds and the peak RSS while both versions are held;
  - before: the same new snapshot indexed afresh (DirectoryView.build, what every reload did before), CPU seconds;
and the patched index is checked equal to the fresh build. Medians over the rounds; --write puts them into
docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import os
import sys
import tempfile
import time
import tomllib
from pathlib import Path

import psutil

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _peak import PeakRSS  # noqa: E402


def _child(config: Path) -> dict[str, float]:
    from dataclasses import fields

    from entra_mcp.config import parse_settings
    from entra_mcp.identity.access import derive_indexes
    from entra_mcp.identity.view import DirectoryView
    from entra_mcp.mirror.store import MirrorStore
    from entra_mcp.views import ViewProvider

    settings = parse_settings(tomllib.loads(config.read_text()))
    store = MirrorStore(settings.server.cache_dir)
    name = settings.tenants[0].name
    views = ViewProvider.from_settings(settings, store, check_interval=0, background_reload=False)
    held = views.current(name)
    assert held.snapshot is not None and held.view is not None
    derive_indexes(held.view)  # what a served view has after its first answers (or from the prepared index)
    users = list(held.snapshot.users)
    group = next(gid for gid, members in held.snapshot.members.items() if members and users[7] not in members)
    with store.writer(name) as w:
        change = w.begin("users")
        for uid, props in ((users[1], {"displayName": "Quentin Zarkov", "givenName": "Quentin", "surname": "Zarkov"}),
                           (users[2], {"employeeId": "BENCH-0002"}), (users[3], {"jobTitle": "Changed Title"})):
            change.put("users", uid, {**change.get("users", uid), **props})
        w.commit_delta(change, delta_link=w.delta_link("users"), status=w.status("users"))
        change = w.begin("groups")
        change.put("members", group, {**change.get("members", group), users[7]: "user"})
        w.commit_delta(change, delta_link=w.delta_link("groups"), status=w.status("groups"))

    with PeakRSS() as rss:
        t0, c0 = time.perf_counter(), time.process_time()
        now = views.current(name)
        reload_s, reload_cpu = time.perf_counter() - t0, time.process_time() - c0
    peak, before_rss = rss.peak, rss.before
    assert now.version > held.version and now.view is not None and now.view is not held.view
    assert now.view.exact_users("BENCH-0002") == (users[2],)
    c0 = time.process_time()
    fresh = DirectoryView.build(now.view.snapshot)
    build_cpu = time.process_time() - c0
    c0 = time.process_time()
    held.view.updated(now.view.snapshot)
    patch_cpu = time.process_time() - c0
    for f in fields(DirectoryView):
        if f.name not in ("snapshot", "built_at", "_scores_cache", "_derived"):
            assert getattr(now.view, f.name) == getattr(fresh, f.name), f.name
    return {"reload_s": reload_s, "reload_cpu": reload_cpu, "patch_cpu": patch_cpu, "build_cpu": build_cpu,
            "rss_before": before_rss / 2**20, "peak": peak / 2**20}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", type=Path, required=True)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--write", action="store_true", help="write the figures into docs/benchmarks.md")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(_child(args.config)))
        return 0
    from entra_mcp.views import VIEW_CACHE_DIR

    text = args.config.read_text()
    cache_dir = Path(tomllib.loads(text)["server"]["cache_dir"])
    runs = []
    for _ in range(args.rounds):
        with tempfile.TemporaryDirectory(prefix="entra-mcp-reload-") as tmp:
            shutil.copytree(cache_dir, Path(tmp) / "cache", ignore=shutil.ignore_patterns(VIEW_CACHE_DIR))
            config = Path(tmp) / "config.toml"
            config.write_text(text.replace(json.dumps(str(cache_dir)), json.dumps(str(Path(tmp) / "cache"))))
            out = subprocess.run([sys.executable, __file__, "--child", "--config", str(config)],
                                 capture_output=True, text=True, check=True)
            runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
    med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
    lines = [
        f"reload after a 3-user + 1-membership delta: {med['reload_s']:.2f} s wall, {med['reload_cpu']:.2f} s CPU "
        f"(load the new snapshot + patch the index); RSS {med['rss_before']:.0f} MB before, peak {med['peak']:.0f} MB",
        f"index: patched in {med['patch_cpu'] * 1000:.0f} ms CPU, built afresh in {med['build_cpu']:.2f} s CPU "
        f"({med['build_cpu'] / med['patch_cpu']:.0f}x); patched == fresh build checked",
        "runs (CPU reload / patch / build s): " + "; ".join(
            f"{r['reload_cpu']:.2f} / {r['patch_cpu']:.3f} / {r['build_cpu']:.2f}" for r in runs),
    ]
    print("\n".join(lines))
    if args.write:
        sys.path.insert(0, str(Path(__file__).parent))
        from _report import write_section

        write_section("## Reload after a small delta (bench/bench_reload.py)",
                      ["## Reload after a small delta (bench/bench_reload.py)", "", f"Command: `python bench/bench_reload.py --config <large mirror> --rounds {args.rounds}`; "
                       f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, load average "
                       f"{psutil.getloadavg()[0]:.1f} on {psutil.cpu_count()} CPUs.", "", *[f"- {x}" for x in lines]])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
