"""Benchmark of the account areas (auth_methods, roles, licenses, risk) and of check_reset_eligibility.

    python bench/bench_account.py [--size large] [--latency-ms 20] [--calls 5000]

1. starts `entra-mcp devtenant --size SIZE --latency-ms 20` (throttling on);
2. `entra-mcp sync` (full) with the account areas OFF, then a fresh full sync with them ON: the added requests,
   seconds and peak RSS of the sync process, and each account area's own requests and seconds;
3. 20 account changes (role assignments, risk) through the control API, then `entra-mcp sync` (incremental):
   each account area's outcome, requests and seconds;
4. in a child process: load the mirror, build the view, and time check_reset_eligibility in process for `--calls`
   random users (median, p99; the target is p99 <= 2 ms); RSS of that process with the account data loaded;
5. writes the figures and the command to docs/benchmarks.md (its own section; other sections are kept).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT / "src"))
from _report import write_section  # noqa: E402
from bench_sync import _emulator_session, _our_full, _run_child, _summary  # noqa: E402

SECTION = "## Account areas and reset eligibility (bench/bench_account.py)"
ACCOUNT = ("auth_methods", "roles", "licenses", "risk")


def _config_with(config: Path, cache: Path, on: bool) -> Path:
    text = config.read_text(encoding="utf-8").replace(str(config.parent / "cache"), str(cache))
    switches = "".join(f"{a} = {'true' if on else 'false'}\n" for a in ACCOUNT)
    if "[tenants.sync]" in text:
        text = text.replace("[tenants.sync]\n", "[tenants.sync]\n" + switches, 1)
    else:
        text += "\n[tenants.sync]\n" + switches
    out = config.parent / f"config-{'on' if on else 'off'}.toml"
    out.write_text(text, encoding="utf-8")
    return out


def helper(config: str, name: str, calls: int) -> None:
    """In its own process: load the mirror, build the view, time check_reset_eligibility; print one JSON line."""
    import resource

    from entra_mcp.config import load_settings
    from entra_mcp.identity.account_facts import account_index
    from entra_mcp.identity.reset import check_reset_eligibility
    from entra_mcp.identity.view import DirectoryView
    from entra_mcp.mirror.store import MirrorStore

    settings = load_settings(Path(config))
    snap = MirrorStore(settings.server.cache_dir).load_snapshot(name)
    assert snap is not None
    view = DirectoryView.build(snap)
    started = time.perf_counter()
    account_index(view)
    index_s = time.perf_counter() - started
    rnd = random.Random(5)
    ids = sorted(snap.users)
    admins = sorted(account_index(view).roles_by_user)
    picks = [rnd.choice(ids) for _ in range(calls)] + ([rnd.choice(admins) for _ in range(calls // 10)] if admins else [])
    times, cpu = [], []
    verdicts: dict[str, int] = {}
    for uid in picks:
        t0, c0 = time.perf_counter(), time.thread_time()
        answer = check_reset_eligibility(view, uid)
        cpu.append((time.thread_time() - c0) * 1000)
        times.append((time.perf_counter() - t0) * 1000)
        verdicts[answer["verdict"]] = verdicts.get(answer["verdict"], 0) + 1
    times.sort()
    cpu.sort()
    print(json.dumps({"calls": len(times), "median_ms": statistics.median(times), "p99_ms": times[int(len(times) * 0.99) - 1],
                      "max_ms": times[-1], "cpu_median_ms": statistics.median(cpu), "cpu_p99_ms": cpu[int(len(cpu) * 0.99) - 1],
                      "index_s": index_s, "verdicts": verdicts,
                      "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                      "registration": len(snap.collection("registration")), "assignments": len(snap.collection("role_assignments")),
                      "licence_states": len(snap.collection("licence_states")), "risky": len(snap.collection("risky_users"))}))


def _changes(ctl: Any, tid: str, config: Path, name: str) -> int:
    from entra_mcp.config import load_settings
    from entra_mcp.mirror.store import MirrorStore

    snap = MirrorStore(load_settings(config).server.cache_dir).load_snapshot(name)
    assert snap is not None
    rnd = random.Random(11)
    users = rnd.sample(sorted(snap.users), 20)
    ops = [{"op": "assign_role", "principal": u, "role": "729827e3-9c14-49f7-bb1b-9608f156bbb8"} for u in users[:10]]
    ops += [{"op": "set_risk", "id": u, "riskLevel": "medium"} for u in users[10:]]
    ctl.mutate(tid, ops)
    return len(ops)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", default="large")
    ap.add_argument("--latency-ms", type=float, default=20)
    ap.add_argument("--calls", type=int, default=5000)
    ap.add_argument("--helper", nargs=3)
    args = ap.parse_args()
    if args.helper:
        helper(args.helper[0], args.helper[1], int(args.helper[2]))
        return
    with tempfile.TemporaryDirectory(prefix="bench-account-") as tmp:
        work = Path(tmp)
        emu, config, env, ctl, found = _emulator_session(args.size, args.latency_ms, work)
        try:
            off_cfg = _config_with(config, work / "cache-off", False)
            on_cfg = _config_with(config, work / "cache-on", True)
            off, off_wall, off_rss = _our_full(off_cfg, env)
            print(f"full, account areas off: {off['requests']} requests, {off['seconds']:.1f} s, {off_rss:.0f} MB", file=sys.stderr)
            ctl.http.post("/throttle/reset")
            on, on_wall, on_rss = _our_full(on_cfg, env)
            print(f"full, account areas on: {on['requests']} requests, {on['seconds']:.1f} s, {on_rss:.0f} MB", file=sys.stderr)
            n = _changes(ctl, found["tenant_id"], on_cfg, found["name"])
            code, _, err, inc_wall, inc_rss = _run_child([sys.executable, "-m", "entra_mcp", "--config", str(on_cfg), "sync"], env)
            if code != 0:
                raise SystemExit(f"incremental sync failed:\n{err[-3000:]}")
            inc = _summary(err)
            out = subprocess.run([sys.executable, __file__, "--helper", str(on_cfg), found["name"], str(args.calls)],
                                 capture_output=True, text=True, check=True, env=env)
            fig = json.loads(out.stdout.strip().splitlines()[-1])
            out_off = subprocess.run([sys.executable, __file__, "--helper", str(off_cfg), found["name"], "10"],
                                     capture_output=True, text=True, check=False, env=env)
            rss_off = json.loads(out_off.stdout.strip().splitlines()[-1])["rss_mb"] if out_off.returncode == 0 else None
        finally:
            emu.stop()
    load = os.getloadavg()[0]
    lines = [
        f"Command: `python bench/bench_account.py --size {args.size} --latency-ms {args.latency_ms:g} --calls {args.calls}`. "
        f"Machine: 2 CPUs shared with other work (load average {load:.1f} at the end); emulator in its own process with "
        f"{args.latency_ms:g} ms added to every response, throttling on. Measured {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.",
        "",
        f"Mirror: {fig['registration']:,} registration rows, {fig['assignments']:,} role assignments, "
        f"{fig['licence_states']:,} users with a licence state in error, {fig['risky']:,} risky users.",
        "",
        "| full sync | wall time (run) | requests | peak RSS |",
        "|---|---|---|---|",
        f"| account areas off | {off['seconds']:.1f} s | {off['requests']:,} | {off_rss:.0f} MB |",
        f"| account areas on | {on['seconds']:.1f} s | {on['requests']:,} | {on_rss:.0f} MB |",
        f"| added | {on['seconds'] - off['seconds']:+.1f} s | {on['requests'] - off['requests']:+,} | {on_rss - off_rss:+.0f} MB |",
        "",
        f"Per account area, full run / incremental run after {n} account changes (areas run concurrently with the rest):",
        "",
        "| area | full | incremental |",
        "|---|---|---|",
    ]
    for a in ACCOUNT:
        f, i = on["areas"].get(a, {}), inc["areas"].get(a, {})
        lines.append(f"| {a} | {f.get('outcome')}, {f.get('requests')} req, {f.get('seconds')} s | "
                     f"{i.get('outcome')}, {i.get('requests')} req, {i.get('seconds')} s |")
    lines += [
        "",
        f"Incremental run: {inc['seconds']:.2f} s, {inc['requests']} requests in all (roles refresh every run: two `$batch` "
        "calls; the registration report and licences at most hourly, risky users every 15 minutes).",
        "",
        f"check_reset_eligibility in process ({fig['calls']:,} calls, random users plus 10% role holders): wall-clock median "
        f"{fig['median_ms']:.3f} ms, **p99 {fig['p99_ms']:.3f} ms** (target <= 2 ms), max {fig['max_ms']:.2f} ms; CPU time of the "
        f"calling thread (what the call costs, without the time other processes held the CPUs): median "
        f"{fig['cpu_median_ms']:.3f} ms, p99 {fig['cpu_p99_ms']:.3f} ms. The account "
        f"index is built once per view in {fig['index_s'] * 1000:.0f} ms. Verdicts seen: "
        + ", ".join(f"{k} {v:,}" for k, v in sorted(fig["verdicts"].items())) + ".",
        "",
        f"RSS of a process holding the loaded mirror and view: {fig['rss_mb']:.0f} MB with the account areas"
        + (f", {rss_off:.0f} MB without ({fig['rss_mb'] - rss_off:+.0f} MB)." if rss_off else "."),
    ]
    print(write_section(SECTION, lines))


if __name__ == "__main__":
    main()
