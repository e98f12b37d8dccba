"""Open mirrors of many tenants: the SQLite descriptors a process holds and the CPU of one /healthz's freshness reads,
for several `[server] max_open_mirrors` (mirror/open_files.py, MirrorStore.freshness).

    .venv/bin/python bench/bench_open_mirrors.py [--tenants 200] [--threads 8] [--limits 64,256,0] [--rounds 10]

Writes `--tenants` small mirrors into a temporary cache_dir, then for each limit (0: unbounded) lets `--threads`
long-lived threads read every tenant's freshness (as serve's worker threads do), counts this process's descriptors
on SQLite files, and times `--rounds` passes of every tenant's freshness on one thread (median of thread CPU time).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import threading
import time

from entra_mcp.mirror.snapshot import AreaStatus
from entra_mcp.mirror.store import MirrorStore


def sqlite_descriptors() -> int:
    n = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            n += "cache.db" in os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
    return n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tenants", type=int, default=200)
    ap.add_argument("--threads", type=int, default=8)
    ap.add_argument("--limits", default="64,256,0", help="max_open_mirrors values, 0 = unbounded")
    ap.add_argument("--rounds", type=int, default=10)
    args = ap.parse_args()
    names = [f"t{i}" for i in range(args.tenants)]
    with tempfile.TemporaryDirectory() as d:
        writer = MirrorStore(d)
        for name in names:
            with writer.writer(name) as w:
                w.commit_full("users", {"users": {"u1": {"id": "u1"}}}, delta_link=None, status=AreaStatus(enabled=True))
        writer.close()
        print(f"{args.tenants} mirrors, {args.threads} reader threads, load {os.getloadavg()[0]:.1f}")
        for limit in (int(x) for x in args.limits.split(",")):
            store = MirrorStore(d, max_open=limit or 10**9)
            done = threading.Barrier(args.threads + 1)
            release = threading.Event()

            def reader() -> None:
                for name in names:
                    store.freshness(name)
                done.wait()
                release.wait()

            threads = [threading.Thread(target=reader) for _ in range(args.threads)]
            for t in threads:
                t.start()
            done.wait(timeout=600)
            held = sqlite_descriptors()
            cpu = []
            for _ in range(args.rounds):
                started = time.thread_time()
                for name in names:
                    store.freshness(name)
                cpu.append((time.thread_time() - started) * 1000)
            release.set()
            for t in threads:
                t.join()
            store.close()
            print(f"max_open_mirrors={limit or 'unbounded'}: {held} SQLite descriptors held; "
                  f"{args.tenants} freshness reads: median {statistics.median(cpu):.0f} ms CPU")


if __name__ == "__main__":
    main()
