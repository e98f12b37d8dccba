"""Time and memory of the synthetic tenant generator.

    .venv/bin/python bench/bench_devtenant_generate.py [--size large] [--seed 1] [--tenants 1] [--indexes]

Prints seconds for generation, object counts, and the process RSS (current and peak) after generation; with
--indexes also after building the emulator's lazy read indexes (sorted ids, member-of, UPN), which is what a
serving emulator holds. Targets for large: generation under ~25 s, the whole emulator under 1.5 GB RSS.
"""

from __future__ import annotations

import argparse
import gc
import resource
import sys
import time

import psutil

from entra_mcp.devtenant.generate import generate_state


def _rss_mb() -> tuple[float, float]:
    current = psutil.Process().memory_info().rss / 2**20
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    return current, peak


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", default="large", choices=["small", "medium", "large"])
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--tenants", type=int, default=1)
    p.add_argument("--indexes", action="store_true", help="also build the emulator's read indexes")
    args = p.parse_args()

    base, _ = _rss_mb()
    t0 = time.perf_counter()
    state = generate_state(args.size, args.seed, args.tenants)
    seconds = time.perf_counter() - t0
    gc.collect()
    rss, peak = _rss_mb()
    out = sys.stdout
    out.write(f"size={args.size} seed={args.seed} tenants={args.tenants}\n")
    out.write(f"generate: {seconds:.2f} s\n")
    for t in state.tenants.values():
        memberships = sum(len(m) for m in t.members.values())
        out.write(f"  {t.domain}: users={len(t.users):,} groups={len(t.groups):,} memberships={memberships:,} "
                  f"applications={len(t.applications):,} servicePrincipals={len(t.service_principals):,} "
                  f"appRoleAssignments={len(t.app_role_assignments):,}\n")
    out.write(f"rss: {rss:.0f} MB (interpreter and imports before: {base:.0f} MB), peak {peak:.0f} MB\n")
    if args.indexes:
        t1 = time.perf_counter()
        for t in state.tenants.values():
            for area in ("users", "groups", "applications", "servicePrincipals"):
                t.sorted_ids(area)
            t.member_of("")
            t.user_by_upn("")
            t.assignments_for_resource("")
        gc.collect()
        rss, peak = _rss_mb()
        out.write(f"indexes: {time.perf_counter() - t1:.2f} s; rss {rss:.0f} MB, peak {peak:.0f} MB\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
