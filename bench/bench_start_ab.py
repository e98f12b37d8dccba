"""Start time A/B: spawn `entra-mcp serve --no-sync` (stdio) from several source trees, time it to the first
lookup_user answer, interleaved round by round.

Usage: python bench/bench_start_ab.py [--cold] ROUNDS LABEL=SRC|CONFIG|QUERY [LABEL=SRC|CONFIG|QUERY ...]
  SRC     the source tree put on PYTHONPATH (e.g. a checkout's src/), CONFIG its config (a synced mirror, each build
          with its own prepared index), QUERY the lookup_user query.
  --cold  every start without a prepared index: before each run, once the previous start's index writer (a forked
          child that outlives its server) has finished, the config's view cache files are deleted.
Prints per label the median wall (spawn to the answer), CPU (user + system of the server process; a child it forks
counts in the wall only) and RSS, with each run's wall and CPU.

Each SRC is byte-compiled first (`compileall`, writing its __pycache__ as `pip install` does): a start from a
source tree that has none compiles every module it imports on each start (PYTHONDONTWRITEBYTECODE=1, set on this
machine, keeps Python from writing them), ~0.5 s of CPU that no installed copy pays.
"""

from __future__ import annotations

import compileall
import glob
import os
import statistics
import subprocess
import sys
import time

import psutil

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _stdio import first_lookup_answer  # noqa: E402


def drop_prepared_index(config: str, timeout: float = 300.0) -> None:
    """Delete CONFIG's prepared indexes (cache_dir/.server-views/*.view) once the index writers of earlier starts
    (forked children of those servers, still named by their command line) have exited."""
    from entra_mcp.config import load_settings
    from entra_mcp.views import VIEW_CACHE_DIR

    # every start's writer, not only this config's: one still pickling would share the CPUs with the measured start
    writers = [p for p in psutil.process_iter(["cmdline"]) if {"entra_mcp", "serve"} <= set(p.info["cmdline"] or [])]
    _, alive = psutil.wait_procs(writers, timeout=timeout)
    if alive:
        raise SystemExit(f"an index writer (pid {alive[0].pid}) did not finish within {timeout:.0f} s")
    views = os.path.join(load_settings(config).server.cache_dir, VIEW_CACHE_DIR)  # the default cache_dir too
    for path in glob.glob(os.path.join(views, "*.view")):
        os.unlink(path)


def run(src: str, config: str, query: str, cold: bool = False) -> tuple[float, float, float]:
    """(wall s, CPU s, RSS MB) of one start from spawn to the first lookup_user answer."""
    if cold:
        drop_prepared_index(config)
    env = {**os.environ, "PYTHONPATH": src, "DEVTENANT_CLIENT_SECRET": "unused-by-no-sync"}
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "entra_mcp", "--config", config, "--log-level", "WARNING", "serve", "--no-sync"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env)
    try:
        first_lookup_answer(proc, query)
        wall = time.perf_counter() - t0
        child = psutil.Process(proc.pid)
        cpu = child.cpu_times()
        rss = child.memory_info().rss / 2**20
    finally:
        proc.stdin.close()  # type: ignore[union-attr]
        proc.wait(timeout=60)
    return wall, cpu.user + cpu.system, rss


def main() -> int:
    args = sys.argv[1:]
    cold = "--cold" in args
    args = [a for a in args if a != "--cold"]
    if len(args) < 2:
        raise SystemExit(__doc__)
    rounds = int(args[0])
    specs = [arg.split("=", 1) for arg in args[1:]]
    results: dict[str, list[tuple[float, float, float]]] = {label: [] for label, _ in specs}
    for _, spec in specs:
        compileall.compile_dir(spec.split("|")[0], quiet=1)
    for _ in range(rounds):
        for label, spec in specs:
            src, config, query = spec.split("|")
            results[label].append(run(src, config, query, cold))
    for label, runs in results.items():
        wall, cpu, rss = (statistics.median(r[i] for r in runs) for i in range(3))
        print(f"{label:12s} wall {wall:.2f} s (runs {', '.join(f'{r[0]:.2f}' for r in runs)}), "
              f"CPU {cpu:.2f} s (runs {', '.join(f'{r[1]:.2f}' for r in runs)}), RSS {rss:.0f} MB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
