"""Password-spray sampling is the same in every process: an address failing against more than SPRAY_SAMPLE accounts
is judged (spray, or a shared office address) on the first SPRAY_SAMPLE accounts by user key, not on the first a
set happens to yield (its order follows string hashing, randomised per process), so two replicas answer alike."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from entra_mcp.identity import sign_ins as answers
from entra_mcp.mirror.snapshot import AreaStatus, DirectorySnapshot
from entra_mcp.mirror.table import concat_groups, pack_groups
from entra_mcp.sync.sign_ins import FAILURE_FIELDS, SUCCESS_FIELDS

IP = "203.0.113.77"
NOW = datetime(2026, 12, 1, 12, 30, tzinfo=timezone.utc)
ACCOUNTS = 300
HOME_EVERY = 4  # every 4th account (by creation, not by id) also signed in from the address: 25 % of all of them


def _uid(i: int) -> str:
    # ids in an order unrelated to i, as Entra's random object ids are
    return f"{(i * 7919) % 1000:08x}-0000-4000-8000-{i:012x}"


def answer() -> dict[str, Any]:
    """The summary's verdict on IP for a log of ACCOUNTS accounts failing a password from it once each."""
    failures = []
    for i in range(ACCOUNTS):
        when = (NOW - timedelta(minutes=50) + timedelta(seconds=i)).strftime("%Y-%m-%dT%H:%M:%SZ")
        row = dict.fromkeys(FAILURE_FIELDS)
        row.update({"id": f"e{i:05d}", "createdDateTime": when, "userId": _uid(i), "userPrincipalName": f"user{i}@contoso.example",
                    "appId": "app", "appDisplayName": "App", "errorCode": 50126, "ipAddress": IP,
                    "failedPolicies": [], "grantControls": []})
        failures.append(row)
    successes = {}
    for i in range(0, ACCOUNTS, HOME_EVERY):
        ok = dict.fromkeys(SUCCESS_FIELDS)
        ok.update({"appId": "app", "appDisplayName": "App", "createdDateTime": "2026-12-01T09:00:00Z", "ipAddress": IP})
        successes[_uid(i)] = [ok]
    hour = failures[0]["createdDateTime"][:13]
    snap = DirectorySnapshot(tenant="contoso.example", tenant_id="t", as_of=NOW, interval_minutes=15,
                             areas={"sign_in_events": AreaStatus(enabled=True, last_success=NOW)},
                             collections={"sign_in_failures": concat_groups([pack_groups({hour: failures})]),
                                          "sign_in_successes": concat_groups([pack_groups(successes)])})
    log = answers.SignInLog.build("contoso", snap, {"window_start": "2026-11-30T12:30:00Z"})
    s = answers.sign_in_failures_summary(log, now=NOW)
    return {"sprays": s["suspectedSprays"], "shared": s["sharedAddresses"]}


def _in_process_with_hash_seed(seed: int) -> dict[str, Any]:
    env = {**os.environ, "PYTHONHASHSEED": str(seed)}
    code = f"import json, sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); import test_spray_sample as t; print(json.dumps(t.answer()))"
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout)  # type: ignore[no-any-return]


def test_the_sample_is_the_first_accounts_by_user_key() -> None:
    got = answer()
    first = sorted(_uid(i) for i in range(ACCOUNTS))[:answers.SPRAY_SAMPLE]
    home = {_uid(i) for i in range(0, ACCOUNTS, HOME_EVERY)}
    share = round(sum(1 for u in first if u in home) / len(first), 2)
    assert share >= answers.SPRAY_HOME_SHARE, "the data must make the address a shared one for this check"
    assert got["sprays"] == []
    assert got["shared"] == [{"ipAddress": IP, "accounts": ACCOUNTS, "failures": ACCOUNTS, "alsoSucceededFromIt": share}]


def test_processes_with_different_string_hashing_sample_the_same_accounts() -> None:
    answers_by_seed = [_in_process_with_hash_seed(seed) for seed in (1, 2, 3)]
    assert answers_by_seed[0]["shared"], answers_by_seed[0]
    assert answers_by_seed[1] == answers_by_seed[0] and answers_by_seed[2] == answers_by_seed[0]
