"""Benchmark of the devices, conditional_access and owners areas, and of check_app_access with Conditional Access.

    python bench/bench_access.py [--size large] [--latency-ms 20] [-n 2000] [--no-write]

1. starts `entra-mcp devtenant --size SIZE --latency-ms 20` (throttling on) in its own process;
2. `entra-mcp sync` (full) with the three areas OFF, then, on a fresh cache, with them ON: wall time, requests and
   peak RSS of each sync process, and each area's own requests and seconds (areas run concurrently, so the wall time
   added is less than their sum);
3. changes through the control API (20 devices updated, 2 added, 5 group owners, 1 policy, 1 app role assignment),
   then `entra-mcp sync` (incremental): each area's requests and seconds;
4. in a fresh process: the mirror loaded, the view built, identity's check_app_access over random (user, app) pairs
   with the Conditional Access evaluation (p50/p99/max), target p99 <= 5 ms;
5. writes the figures and the command to docs/benchmarks.md (its own section).

Needs the `test` and `bench` extras: pip install -e '.[test,bench]'.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT / "tests"))
from _report import latency, write_section  # noqa: E402
from bench_sync import _emulator_session, _run_child, _summary  # noqa: E402

SECTION = "## Devices, Conditional Access and owners (bench/bench_access.py)"
AREAS = ("devices", "conditional_access", "owners", "app_role_assignments")
OFF = "\n[tenants.sync]\ndevices = false\nconditional_access = false\nowners = false\n"


def _sync(config: Path, env: dict[str, str]) -> tuple[dict[str, Any], float, float]:
    code, _, err, wall, rss = _run_child([sys.executable, "-m", "entra_mcp", "--config", str(config), "sync"], env)
    if code != 0:
        raise SystemExit(f"sync failed ({code}):\n{err[-3000:]}")
    return _summary(err), wall, rss


def _answers(config: str, name: str, n: int) -> dict[str, Any]:
    """In this (fresh) process: load the mirror, build the view, time check_app_access with Conditional Access."""
    sys.path.insert(0, str(ROOT / "src"))
    import psutil

    from entra_mcp.config import load_settings
    from entra_mcp.identity.apps import check_app_access
    from entra_mcp.identity.view import DirectoryView
    from entra_mcp.mirror.store import MirrorStore

    settings = load_settings(Path(config))
    snap = MirrorStore(settings.server.cache_dir).load_snapshot(name)
    assert snap is not None
    view = DirectoryView.build(snap)
    rnd = random.Random(3)
    users = rnd.sample(sorted(snap.users), min(n, len(snap.users)))
    sps = sorted(snap.service_principals)
    apps = [str(snap.service_principals[s].get("appId")) for s in rnd.sample(sps, min(200, len(sps)))]
    now = datetime.now(timezone.utc)
    check_app_access(view, users[0], apps[0], now)  # first call builds the lazy indexes (devices by user)
    times, listed = [], 0
    for i in range(n):
        t0 = time.perf_counter()
        answer = check_app_access(view, users[i % len(users)], apps[i % len(apps)], now)
        times.append((time.perf_counter() - t0) * 1000)
        listed += len((answer.get("conditionalAccess") or {}).get("policies") or [])
    return {**latency(times),
            "policies": len(snap.collection("ca_policies")), "devices": len(snap.collection("devices")),
            "owners": len(snap.collection("owners")), "listed_per_answer": listed / n,
            "rss_mb": psutil.Process().memory_info().rss / 2**20}


def _area_row(label: str, fig: dict[str, Any], area: str) -> str:
    a = fig["areas"].get(area)
    if a is None:
        return f"| {label} | {area} | - | - | - |"
    return f"| {label} | {area} | {a['outcome']} | {a['requests']:,} | {a['seconds']:.1f} |"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="large")
    ap.add_argument("--latency-ms", type=float, default=20.0)
    ap.add_argument("-n", type=int, default=2000)
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument("--skip-off", action="store_true", help="skip the full sync with the three areas off")
    ap.add_argument("--helper", nargs=3, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.helper:
        print(json.dumps(_answers(args.helper[0], args.helper[1], int(args.helper[2]))))
        return 0
    with tempfile.TemporaryDirectory(prefix="bench-access-") as tmp:
        work = Path(tmp)
        emu, config, env, ctl, found = _emulator_session(args.size, args.latency_ms, work)
        try:
            base = config.read_text(encoding="utf-8")
            off = work / "config-off.toml"
            off.write_text(base.replace(str(work / "cache"), str(work / "cache-off")) + OFF, encoding="utf-8")
            f_off, w_off, rss_off = None, 0.0, 0.0
            if not args.skip_off:
                print("full sync, the three areas off ...", file=sys.stderr)
                f_off, w_off, rss_off = _sync(off, env)
            print("full sync, every area on ...", file=sys.stderr)
            f_on, w_on, rss_on = _sync(config, env)
            tid = found["tenant_id"]
            truth = ctl.http.get(f"/tenants/{tid}/snapshot").json()
            rnd = random.Random(5)
            users = [u["id"] for u in truth["users"][:2000]]
            sp = next(s for s in truth["servicePrincipals"] if s.get("appRoleAssignmentRequired"))
            groups = [g["id"] for g in truth["groups"] if not g.get("membershipRule")][:200]
            print("changes, then an incremental sync ...", file=sys.stderr)
            acc_devices = _devices(ctl, tid)
            ops: list[dict[str, Any]] = [{"op": "update_device", "id": d, "set": {"isCompliant": bool(i % 2)}}
                                         for i, d in enumerate(rnd.sample(acc_devices, min(20, len(acc_devices))))]
            ops += [{"op": "add_device", "owner": rnd.choice(users), "set": {"displayName": f"Bench device {i}"}} for i in range(2)]
            ops += [{"op": "set_owners", "id": g, "owners": [rnd.choice(users)]} for g in rnd.sample(groups, 5)]
            ops += [{"op": "put_ca_policy", "policy": {"displayName": "Bench policy", "state": "enabledForReportingButNotEnforced",
                                                       "conditions": {"users": {"includeUsers": ["All"]},
                                                                      "applications": {"includeApplications": ["All"]}},
                                                       "grantControls": {"operator": "OR", "builtInControls": ["mfa"]}}},
                    {"op": "add_app_role_assignment", "resource": sp["id"], "principal": rnd.choice(users)}]
            ctl.mutate(tid, ops)
            f_inc, w_inc, rss_inc = _sync(config, env)
        finally:
            emu.stop()
        print("check_app_access with Conditional Access, in a fresh process ...", file=sys.stderr)
        out = subprocess.run([sys.executable, __file__, "--helper", str(config), found["name"], str(args.n)],
                             capture_output=True, text=True, env=env, check=True)
        ans = json.loads(out.stdout.strip().splitlines()[-1])
    load = os.getloadavg()[0]
    lines = [
        f"Command: `python bench/bench_access.py --size {args.size} --latency-ms {args.latency_ms:g}` (needs `pip install -e "
        "'.[test,bench]'`). The emulator runs in its own process with Microsoft's throttling on and the added latency; "
        "each sync is a fresh `entra-mcp sync` process (peak RSS by wait4). Measured "
        f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC on 2 shared CPUs (load average {load:.1f} at the end).",
        "",
        f"Mirror: {ans['devices']:,} devices, {ans['policies']} Conditional Access policies, owners of {ans['owners']:,} "
        "groups and apps.",
        "",
        "| sync | wall s | requests | peak RSS MB |",
        "|---|---|---|---|",
        *([f"| full, devices/conditional_access/owners off | {w_off:.1f} | {f_off['requests']:,} | {rss_off:.0f} |"]
          if f_off else []),
        f"| full, every area on | {w_on:.1f} | {f_on['requests']:,} | {rss_on:.0f} |",
        f"| incremental after the changes | {w_inc:.1f} | {f_inc['requests']:,} | {rss_inc:.0f} |",
        "",
        "Per area (areas run concurrently: their seconds overlap):",
        "",
        "| run | area | outcome | requests | seconds |",
        "|---|---|---|---|---|",
        *[_area_row("full", f_on, a) for a in AREAS],
        *[_area_row("incremental", f_inc, a) for a in AREAS],
        "",
        (f"Added by the three areas to a full sync: {f_on['requests'] - f_off['requests']:+,} requests, "
         f"{w_on - w_off:+.1f} s wall, {rss_on - rss_off:+.0f} MB peak RSS." if f_off else
         "Added by the three areas to a full sync: their own requests above (they are independent of the other "
         "areas'); the run without them was skipped (--skip-off), so no wall or RSS difference is given.")
        + " The incremental run re-reads the "
        "assignments of every assignment-required app (so a new assignment shows at once), the Conditional Access "
        "policies whole, the devices and group owners by delta.",
        "",
        f"check_app_access with Conditional Access (in-process, {ans['n']} calls, random user and app, "
        f"{ans['listed_per_answer']:.1f} policies listed per answer on average): p50 {ans['p50']:.2f} ms, p99 "
        f"{ans['p99']:.2f} ms, max {ans['max']:.1f} ms (target p99 <= 5 ms: {'met' if ans['p99'] <= 5 else 'NOT met'}); "
        f"process RSS after {ans['rss_mb']:.0f} MB.",
    ]
    print("\n".join(lines))
    if not args.no_write:
        write_section(SECTION, lines)
    return 0


def _devices(ctl: Any, tid: str) -> list[str]:
    """Device ids from the control API's ground truth."""
    return [str(d["id"]) for d in ctl.http.get(f"/tenants/{tid}/snapshot").json().get("devices", [])]


if __name__ == "__main__":
    raise SystemExit(main())
