"""Memberships A/B: the member lists' load and the reverse memberships from several source trees, interleaved.

Usage: python bench/bench_memberships.py ROUNDS LABEL=SRC|CONFIG [LABEL=SRC|CONFIG ...]
  SRC     the source tree put on PYTHONPATH (e.g. a checkout's src/), CONFIG a config whose mirror it loads.
Each run is a fresh process: `load_snapshot` with the collector off (as the server loads), the "members" collection
timed around MirrorStore._read_coll, then MemberOf.build and DirectoryView.build; RSS after the load and after the
build. Prints per label the medians (CPU seconds, MB) and each run's members load and MemberOf.build.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys

_ONE = r'''
import gc, json, sys, time
from entra_mcp.config import load_settings
from entra_mcp.mirror import store as st
from entra_mcp.identity.member_index import MemberOf
from entra_mcp.identity.view import DirectoryView

def rss():
    with open("/proc/self/status") as f:
        return int(next(line for line in f if line.startswith("VmRSS")).split()[1]) / 1024

settings = load_settings(sys.argv[1])
store = st.MirrorStore(settings.server.cache_dir)
gc.disable()
read, times = st.MirrorStore._read_coll, {}

def timed(self, cache, area, coll, spec, pool, held=None):
    t = time.process_time()
    found = read(self, cache, area, coll, spec, pool, held)
    times[coll] = time.process_time() - t
    return found

st.MirrorStore._read_coll = timed
t = time.process_time()
snap = store.load_snapshot(settings.tenants[0].name)
load = time.process_time() - t
rss_load = rss()
t = time.process_time()
MemberOf.build(snap.members, tuple(snap.users))
build = time.process_time() - t
t = time.process_time()
view = DirectoryView.build(snap)
view_build = time.process_time() - t
print(json.dumps({"load": load, "members": times["members"], "build": build, "view_build": view_build,
                  "rss_load_mb": rss_load, "rss_view_mb": rss(), "user_memberships": len(view.member_of.rows)}))
'''

_FIGURES = ("load", "members", "build", "view_build", "rss_load_mb", "rss_view_mb")


def main() -> None:
    rounds, sides = int(sys.argv[1]), dict(arg.split("=", 1) for arg in sys.argv[2:])
    runs: dict[str, list[dict[str, float]]] = {label: [] for label in sides}
    for _ in range(rounds):
        for label, spec in sides.items():
            src, config = spec.split("|")
            out = subprocess.run([sys.executable, "-c", _ONE, config], env={**os.environ, "PYTHONPATH": src},
                                 capture_output=True, text=True, check=True).stdout
            runs[label].append(json.loads(out.strip().splitlines()[-1]))
    for label, found in runs.items():
        medians = {k: round(statistics.median(r[k] for r in found), 3) for k in _FIGURES}
        print(label, medians, "memberships of users", found[0]["user_memberships"])
        print("   members", [round(r["members"], 3) for r in found], "build", [round(r["build"], 3) for r in found])


if __name__ == "__main__":
    main()
