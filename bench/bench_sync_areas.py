"""What each sync area adds to a sync, one area at a time: requests, CPU seconds (entra-mcp and the emulator), wall,
peak RSS and mirror size on disk, for a full sync and an incremental one after a fixed mix of changes.

    python bench/bench_sync_areas.py [--size large] [--areas devices,owners,...] [--throttled] [--no-report]

1. starts ONE emulator (`entra-mcp devtenant --size SIZE --latency-ms 0`, throttling off: the figures are the sync's own
   cost, not Graph's pacing) for every run;
2. the base (users and groups, everything else off), then base + ONE area, each into an empty mirror: a full
   `sync_tenant` + index preparation in a fresh process started through bench_sync's launcher (so its peak RSS is
   its own), then a fixed mix of changes through the control API (directory, devices, group owners, a Conditional
   Access policy, an app role assignment, role assignments, risk: a fresh set per run, the same kinds and counts),
   then the incremental sync in another fresh process;
3. the added cost of an area = (base + area) - base; one run with every area on (sign-in events off) too;
4. with --throttled, one more full + incremental run with every area on under the emulator's default throttling:
   per-area request counts with Graph's throttling (retries included);
5. writes the figures to docs/benchmarks.md (its own section).

Each measured process records its sync's peak RSS (VmHWM) and CPU, resets the peak, then prepares the server's
index and records that phase's peak and CPU the same way: the two figures are apart.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
from bench_sync import Control, _emulator_session, _proc_cpu, _run_measured, _summary  # noqa: E402
from _report import write_section  # noqa: E402

SECTION = "## Sync cost per area, one area at a time (bench/bench_sync_areas.py)"
BASE = ("users", "groups")  # config switches of the base run (users also brings domains)
SWITCHES = ("users", "groups", "applications", "service_principals", "sign_in_activity", "auth_methods", "roles",
            "licenses", "risk", "devices", "conditional_access", "owners")
# the areas issue 11 added, one run each on top of the base; "service_principals" brings app_role_assignments
# (whose incremental run re-reads the assignment-required apps) and is measured with "applications"
NEW_AREAS = ("devices", "conditional_access", "owners", "auth_methods", "roles", "licenses", "risk")
EXTRA = {"service_principals": ("applications", "service_principals")}


def _hwm_mb(field: str = "VmHWM:") -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field)) / 1024


def _reset_hwm() -> None:
    with open("/proc/self/clear_refs", "w") as f:  # "5": reset the peak resident set size to the current one
        f.write("5")


def _cpu() -> float:
    t = os.times()
    return t.user + t.system


def driver(config: str) -> int:
    """One measured sync, as `entra-mcp sync` does it (sync_tenant, then prepare_views), each phase's figures apart;
    prints the sync summary to stderr (commands/sync.py) and one JSON line of figures to stdout."""
    import anyio

    from entra_mcp.commands.sync import _summary as print_summary
    from entra_mcp.config import load_settings
    from entra_mcp.errors import MirrorError
    from entra_mcp.mirror.store import MirrorStore
    from entra_mcp.sync.engine import sync_tenant
    from entra_mcp.views import prepare_views, views_to_prepare

    settings = load_settings(config)
    tenant = settings.tenants[0]
    store = MirrorStore(settings.server.cache_dir)
    try:
        before = store.version(tenant.name)
    except MirrorError:
        before = 0
    cpu0 = _cpu()
    _reset_hwm()
    started = time.monotonic()
    result = anyio.run(lambda: sync_tenant(tenant, store))
    sync_fig = {"wall": time.monotonic() - started, "cpu": _cpu() - cpu0, "rss": _hwm_mb()}
    print_summary(result, sys.stderr)
    at_start = _hwm_mb("VmRSS:")  # what the sync left resident (freed memory the allocator kept)
    _reset_hwm()
    cpu1, started = _cpu(), time.monotonic()
    stale = views_to_prepare(settings.server.cache_dir, {tenant.name: (before, store.version(tenant.name))})
    if stale:
        prepare_views(settings.server.cache_dir, store, stale)
    prep = {"wall": time.monotonic() - started, "cpu": _cpu() - cpu1, "rss": _hwm_mb(), "done": bool(stale), "start_rss": at_start}
    store.close()
    print(json.dumps({"sync": sync_fig, "prepare": prep, "ok": result.ok}))
    return 0 if result.ok else 1


def _changes(ctl: Control, found: dict[str, str], runs: int, seed: int = 11) -> list[list[dict[str, Any]]]:
    """`runs` sets of changes of the same mix (picked from the emulator's ground truth, read in a child process so
    this one stays small): 50 user updates, 10 disables, 20 added and 10 removed memberships, 10 app renames, 20
    device updates, 2 new devices, 5 group owners, a Conditional Access policy, an app role assignment, 2 role
    assignments, 2 users at risk (132 changes)."""
    code = (
        "import json, ssl, sys, httpx\n"
        "base, ca, tid = sys.argv[1:4]\n"
        "s = httpx.get(f'{base}/_emulator/tenants/{tid}/snapshot', verify=ssl.create_default_context(cafile=ca), timeout=600).json()\n"
        "print(json.dumps({'users': [u['id'] for u in s['users'] if u.get('accountEnabled')],\n"
        "  'groups': [g['id'] for g in s['groups'] if not g.get('membershipRule')],\n"
        "  'members': {g: sorted(m)[:1] for g, m in s['members'].items() if m},\n"
        "  'apps': [a['id'] for a in s['applications']],\n"
        "  'required': [p['id'] for p in s['servicePrincipals'] if p.get('appRoleAssignmentRequired')],\n"
        "  'devices': [d['id'] for d in s.get('devices', [])]}))\n"
    )
    out = subprocess.run([sys.executable, "-c", code, found["graph_url"], found["ca_bundle"], found["tenant_id"]],
                         capture_output=True, text=True, check=True)
    t = json.loads(out.stdout)
    rnd = random.Random(seed)
    sets = []
    for r in range(runs):
        users = rnd.sample(t["users"], 90)
        groups = rnd.sample(t["groups"], 35)
        with_members = [g for g in groups if t["members"].get(g)]
        ops: list[dict[str, Any]] = [{"op": "update_user", "id": u, "set": {"jobTitle": f"Bench title {r}-{i}"}} for i, u in enumerate(users[:50])]
        ops += [{"op": "disable_user", "id": u} for u in users[50:60]]
        ops += [{"op": "add_member", "group": g, "member": u} for g, u in zip(groups[:20], users[60:80])]
        ops += [{"op": "remove_member", "group": g, "member": t["members"][g][0]} for g in with_members[20:30]]
        ops += [{"op": "update_application", "id": a, "set": {"displayName": f"Bench app {r}-{i}"}} for i, a in enumerate(rnd.sample(t["apps"], 10))]
        ops += [{"op": "update_device", "id": d, "set": {"isCompliant": bool((i + r) % 2)}}
                for i, d in enumerate(rnd.sample(t["devices"], min(20, len(t["devices"]))))]
        ops += [{"op": "add_device", "owner": rnd.choice(users), "set": {"displayName": f"Bench device {r}-{i}"}} for i in range(2)]
        ops += [{"op": "set_owners", "id": g, "owners": [rnd.choice(users)]} for g in groups[30:35]]
        ops += [{"op": "put_ca_policy", "policy": {"displayName": f"Bench policy {r}", "state": "enabledForReportingButNotEnforced",
                                                   "conditions": {"users": {"includeUsers": ["All"]},
                                                                  "applications": {"includeApplications": ["All"]}},
                                                   "grantControls": {"operator": "OR", "builtInControls": ["mfa"]}}}]
        if t["required"]:
            ops.append({"op": "add_app_role_assignment", "resource": rnd.choice(t["required"]), "principal": users[80]})
        ops += [{"op": "assign_role", "principal": u, "role": "729827e3-9c14-49f7-bb1b-9608f156bbb8"} for u in users[81:83]]
        ops += [{"op": "set_risk", "id": u, "riskLevel": "medium"} for u in users[83:85]]
        sets.append(ops)
    return sets


def _du_mb(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2**20


def _config(work: Path, emu_text: str, name: str, on: tuple[str, ...]) -> Path:
    cache = work / f"cache-{name}"
    cfg = work / f"config-{name}.toml"
    switches = "\n".join(f"{s} = {'true' if s in on else 'false'}" for s in SWITCHES)
    cfg.write_text(f'[server]\ncache_dir = "{cache}"\n\n{emu_text}\n[tenants.sync]\n{switches}\n', encoding="utf-8")
    return cfg


def _measured(config: Path, env: dict[str, str], emulator_pid: int) -> dict[str, Any]:
    before = _proc_cpu(emulator_pid)
    r = _run_measured([sys.executable, __file__, "--driver", str(config)], env)
    if r["code"] != 0:
        raise SystemExit(f"sync failed ({r['code']}):\n{r['err'][-3000:]}")
    fig = json.loads(r["out"].strip().splitlines()[-1])
    fig["summary"] = _summary(r["err"])
    fig["emulator_cpu"] = _proc_cpu(emulator_pid) - before
    fig["process_rss"], fig["process_cpu"], fig["process_wall"] = r["rss"], r["cpu"], r["wall"]
    return fig


def _run(name: str, on: tuple[str, ...], work: Path, emu: Any, env: dict[str, str], ctl: Control, tid: str,
         ops: list[dict[str, Any]]) -> dict[str, Any]:
    cfg = _config(work, emu.config_text, name, on)
    print(f"{name}: full sync ({', '.join(on)})...", file=sys.stderr)
    full = _measured(cfg, env, emu.proc.pid)
    s = full["sync"]
    print(f"  {s['wall']:.1f}s wall, {s['cpu']:.1f}s CPU, {full['summary']['requests']} requests, peak {s['rss']:.0f} MB;"
          f" index {full['prepare']['cpu']:.1f}s CPU, {full['prepare']['rss']:.0f} MB", file=sys.stderr)
    full["disk_mb"] = _du_mb(work / f"cache-{name}")
    ctl.mutate(tid, ops)
    inc = _measured(cfg, env, emu.proc.pid)
    s = inc["sync"]
    print(f"  incremental: {s['wall']:.1f}s wall, {s['cpu']:.1f}s CPU, {inc['summary']['requests']} requests,"
          f" peak {s['rss']:.0f} MB", file=sys.stderr)
    shutil.rmtree(work / f"cache-{name}", ignore_errors=True)  # its size is noted; a large mirror is ~200 MB
    return {"name": name, "on": on, "full": full, "inc": inc}


def _row(label: str, f: dict[str, Any], base: dict[str, Any] | None, disk: bool) -> str:
    s, p = f["sync"], f["prepare"]
    req = f["summary"]["requests"]

    def d(x: float, b: float, fmt: str) -> str:
        return f"{x:{fmt}}" if base is None else f"{x:{fmt}} ({x - b:+{fmt}})"

    b = base or f
    cells = [label, d(req, b["summary"]["requests"], ",d"), d(s["cpu"], b["sync"]["cpu"], ".1f"),
             d(f["emulator_cpu"], b["emulator_cpu"], ".1f"), f"{s['wall']:.1f}", d(s["rss"], b["sync"]["rss"], ".0f")]
    cells += [f"{p['cpu']:.1f} / {p['rss']:.0f}" if p["done"] else "-"]
    if disk:
        cells.append(d(f["disk_mb"], b["disk_mb"], ".1f"))
    return "| " + " | ".join(cells) + " |"


def _table(runs: list[dict[str, Any]], every: dict[str, Any], phase: str, *, disk: bool) -> list[str]:
    """The table of one phase ("full" or "inc"): the base run, base + each area, every area (minus the base)."""
    base = runs[0][phase]
    head = "| run | requests | CPU entra-mcp s | CPU emulator s | wall s | peak RSS MB | index: CPU s / peak MB |"
    return [head + (" mirror on disk MB |" if disk else ""), "|---" * (8 if disk else 7) + "|",
            _row("base: users (+domains), groups", base, None, disk),
            *[_row(f"base + {r['name']}", r[phase], base, disk) for r in runs[1:]],
            _row("every area (sign-in events off)", every[phase], base, disk)]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="large", choices=["small", "medium", "large"])
    ap.add_argument("--areas", default=",".join(NEW_AREAS + tuple(EXTRA)), help="comma-separated config switches, one run each")
    ap.add_argument("--throttled", action="store_true", help="also every area on under the default throttling")
    ap.add_argument("--no-report", action="store_true")
    ap.add_argument("--driver", metavar="CONFIG", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.driver:
        return driver(args.driver)
    areas = [a for a in args.areas.split(",") if a]
    work = Path(tempfile.mkdtemp(prefix="bench-sync-areas-"))
    t0 = time.monotonic()
    emu, _config_path, env, ctl, found = _emulator_session(args.size, 0.0, work)
    print(f"emulator ({args.size}) up in {time.monotonic() - t0:.1f}s", file=sys.stderr)
    runs: list[dict[str, Any]] = []
    throttled = None
    started = time.strftime("%Y-%m-%d %H:%M", time.gmtime())
    loads = [os.getloadavg()[0]]
    try:
        truth = ctl.counts()["counts"]
        ctl.faults(throttling_enabled=False)
        sets = _changes(ctl, found, len(areas) + 3)
        runs.append(_run("base", BASE, work, emu, env, ctl, found["tenant_id"], sets[0]))
        loads.append(os.getloadavg()[0])
        every = _run("every area", SWITCHES, work, emu, env, ctl, found["tenant_id"], sets[1])
        loads.append(os.getloadavg()[0])
        for i, area in enumerate(areas, 2):
            runs.append(_run(area, BASE + EXTRA.get(area, (area,)), work, emu, env, ctl, found["tenant_id"], sets[i]))
            loads.append(os.getloadavg()[0])
        if args.throttled:
            ctl.faults(throttling_enabled=True)
            throttled = _run("all-throttled", SWITCHES, work, emu, env, ctl, found["tenant_id"], sets[-1])
            loads.append(os.getloadavg()[0])
    finally:
        emu.stop(30)
    lines = [
        f"Command: `python bench/bench_sync_areas.py --size {args.size}{' --throttled' if args.throttled else ''}`."
        f" One emulator for every run, no added latency, **throttling off** (the sync's own cost); the client's own pacing"
        f" (max_requests_per_10s = 600) on as shipped. Tenant: {truth['users']:,} users, {truth['groups']:,} groups,"
        f" {truth['memberships']:,} memberships. Each sync is a fresh process (bench_sync's launcher) running"
        " `sync_tenant` then the index preparation, as `entra-mcp sync` does; its peak RSS (VmHWM) and CPU are read per"
        " phase (the peak reset between them). The emulator's CPU is its process's over the sync. Incremental: after a"
        f" fresh set of {len(sets[0])} changes of the same mix (50 user updates, 10 disables, 20 + 10 memberships, 10 app"
        " renames, 20 device updates, 2 new devices, 5 group owners, a Conditional Access policy, an app role assignment,"
        f" 2 role assignments, 2 users at risk). Measured {started}-{time.strftime('%H:%M', time.gmtime())} UTC on"
        f" {os.cpu_count()} CPUs shared with other work, load average {min(loads):.1f}-{max(loads):.1f}: wall seconds"
        " are inflated by the load; **CPU seconds are the honest figure**.",
        "",
        "Full sync into an empty mirror (in brackets: minus the base run, i.e. what the area adds):",
        "",
        *_table(runs, every, "full", disk=True),
        "",
        "Incremental sync after the changes:",
        "",
        *_table(runs, every, "inc", disk=False),
        "",
        "The area's own requests and seconds in each run (from the sync summary; areas run concurrently):",
        "",
        "| area | full: outcome, requests, s | incremental: outcome, requests, s |",
        "|---|---|---|",
    ]
    for r in runs[1:]:
        for area, a in r["full"]["summary"]["areas"].items():
            if area in ("users", "groups", "domains") or a["outcome"] == "off":
                continue
            b = r["inc"]["summary"]["areas"].get(area, {})
            lines.append(f"| {area} | {a['outcome']}, {a['requests']}, {a['seconds']:.1f} | {b.get('outcome', '-')}, "
                         f"{b.get('requests', '-')}, {b.get('seconds', 0):.1f} |")
    if throttled:
        fs, is_ = throttled["full"]["summary"], throttled["inc"]["summary"]
        lines += ["", f"Every area on, the emulator's default throttling (Microsoft's resource-unit buckets): full"
                  f" {fs['requests']:,} requests ({fs['retries']} retries, {fs['throttled']} throttled), incremental"
                  f" {is_['requests']} ({is_['retries']} retries, {is_['throttled']} throttled). Per area (full / incremental requests):", "",
                  "| area | full | incremental |", "|---|---|---|"]
        for area, a in fs["areas"].items():
            b = is_["areas"].get(area, {})
            lines.append(f"| {area} | {a['outcome']}, {a['requests']} | {b.get('outcome', '-')}, {b.get('requests', '-')} |")
    print("\n".join(lines))
    (work / "figures.json").write_text(json.dumps({"runs": runs, "every": every, "throttled": throttled}, default=str))
    print(f"figures kept in {work / 'figures.json'}", file=sys.stderr)
    if not args.no_report:
        write_section(SECTION, lines)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
