"""The soak test, short: `python bench/soak.py` for ~70 s with 8 clients against a small tenant.

The same command an operator runs for 30 minutes (see docs/benchmarks.md), bounded here: `entra-mcp serve` over
HTTP with Entra bearer tokens that expire mid-run (lifetime 40 s), a background sync every 15 s, 429/503/dropped
connections and one delta-token expiry injected through the control API, a mutator changing the directory every
half second. Asserted: no call failed, the background syncs ran, the final sync succeeded, the mirror equals the
emulator's ground truth object by object and membership by membership, the served view caught up, nothing secret
or stack-trace-like reached the server's log.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

SOAK = Path(__file__).resolve().parents[1] / "bench" / "soak.py"


@pytest.mark.slow
@pytest.mark.timeout(480)
def test_short_soak_has_no_failed_call_and_an_identical_mirror(tmp_path: Path) -> None:
    report_path = tmp_path / "soak.json"
    # its own process group: on a time-out the emulator and server soak.py started go with it
    p = subprocess.Popen(
        [sys.executable, str(SOAK), "--seconds", "70", "--clients", "8", "--size", "small", "--interval-minutes", "0.25",
         "--token-lifetime", "40", "--fault-every", "6", "--mutate-every", "0.5", "--workdir", str(tmp_path / "work"),
         "--json", str(report_path), "--quiet"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
    )
    try:
        stdout, stderr = p.communicate(timeout=420)  # ~90 s on an idle 2-CPU machine
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
    assert report_path.exists(), stdout[-3000:] + stderr[-3000:]
    r = json.loads(report_path.read_text())
    calls, mirror, sync = r["calls"], r["mirror"], r["sync"]
    assert calls["made"] > 200, calls
    assert calls["failed"] == 0, calls["failures"]
    assert set(calls["byTool"]) >= {"lookup_user", "list_group_memberships", "list_group_members", "check_account_state",
                                    "get_app_principal", "check_app_access", "get_ticket_identity_context"}
    assert sync["done"] >= 2, sync  # the background sync ran through the faults (every ~15 s; fewer on a busy machine)
    assert r["stats"]["mutations_applied"] > 50 and r["stats"]["faults_injected"] >= 5 and r["stats"]["delta_expiries"] == 1
    assert r["stats"]["tokenRenewals"] > r["options"]["clients"], "client tokens never expired mid-run"
    assert r["finalSync"]["exit"] == 0, r["finalSync"]
    assert mirror["afterDelta"] == [], mirror["afterDelta"]  # the delta run got every area but assignments exact
    assert mirror["identical"], mirror["differences"]  # and a full run everything
    assert r["servedFresh"] is True
    assert r["serverLogUnexpectedTracebacks"] == [] and r["serverLogSecrets"] == 0
    assert r["ok"] and p.returncode == 0
