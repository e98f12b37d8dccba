"""The last successful sign-in per user and app: the one rule (last_success.is_later) and the four places that fold
successes by it — the sync's per-user lists (merge_success), its first pull's tuples (_merge_packed_success), the
polls' flat lists (merge_recent), and the server's merge of those lists into the folded ones (_merge_last) — keep
the same success for the same events, including the edge cases: a missing or empty time, equal times, ties."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

import pytest

from entra_mcp.identity import sign_ins as answers
from entra_mcp.last_success import is_later
from entra_mcp.mirror.snapshot import AreaStatus, DirectorySnapshot
from entra_mcp.mirror.table import concat_groups, pack_groups
from entra_mcp.sync import sign_ins as sync

T10 = "2026-12-01T10:00:00Z"


@pytest.mark.parametrize(("time", "than", "later"), [
    (T10, "2026-12-01T09:59:59Z", True),
    ("2026-12-01T09:59:59Z", T10, False),
    (T10, T10, False),  # a tie keeps the one held
    (T10, None, True),  # any timed success replaces one without a time ...
    (T10, "", True),
    (None, T10, False),  # ... and one without a time replaces nothing
    ("", T10, False),
    (None, None, False),
    ("", None, False),
    (None, "", False),
    (12345, None, False),  # not text: as missing
    (T10, 12345, True),
])
def test_is_later_edges(time: Any, than: Any, later: bool) -> None:
    assert is_later(time, than) is later


U1, U2 = "11111111-1111-1111-1111-111111111111", "22222222-2222-2222-2222-222222222222"
# (user, app, time, ipAddress) in the order they are read; the address tells which success was kept
EVENTS = [
    (U1, "app-a", None, "a0"),
    (U1, "app-a", T10, "a1"),
    (U1, "app-a", T10, "a2"),  # the same time: a1 stays
    (U1, "app-a", "2026-12-01T09:00:00Z", "a3"),  # earlier: a1 stays
    (U1, "app-a", "", "a4"),  # no time: a1 stays
    (U1, "app-b", "2026-12-01T08:00:00Z", "b1"),
    (U1, "app-b", "2026-12-01T08:00:01Z", "b2"),  # a second later: replaces b1
    (U1, "app-c", None, "c1"),
    (U1, "app-c", "", "c2"),  # two without a time: the first stays
    (U2, "app-a", "2026-12-01T07:00:00Z", "x1"),  # another user's success to the same app: apart
]
KEPT = {(U1, "app-a"): "a1", (U1, "app-b"): "b2", (U1, "app-c"): "c1", (U2, "app-a"): "x1"}


def _record(app: str, when: Any, ip: str) -> dict[str, Any]:
    return {"appId": app, "appDisplayName": app.upper(), "createdDateTime": when, "ipAddress": ip,
            "clientAppUsed": "Browser", "city": None, "countryOrRegion": None}


def test_the_four_folds_keep_the_same_success() -> None:
    by_user: dict[str, list[dict[str, Any]]] = {}
    packed: dict[str, list[tuple[Any, ...]]] = {}
    flat: list[dict[str, Any]] = []
    served: dict[str, list[dict[str, Any]]] = {}
    for uid, app, when, ip in EVENTS:
        by_user[uid], _ = sync.merge_success(by_user.get(uid), _record(app, when, ip))
        packed[uid] = sync._merge_packed_success(packed.get(uid), _record(app, when, ip))
        flat, _ = sync.merge_recent(flat, {uid: [_record(app, when, ip)]})
        answers._merge_last(served.setdefault(uid, []), _record(app, when, ip))
    assert {(u, r["appId"]): r["ipAddress"] for u, rows in by_user.items() for r in rows} == KEPT
    assert {(u, t[0]): t[3] for u, rows in packed.items() for t in rows} == KEPT
    assert {(r["userId"], r["appId"]): r["ipAddress"] for r in flat} == KEPT
    assert {(u, r["appId"]): r["ipAddress"] for u, rows in served.items() for r in rows} == KEPT


def test_folding_a_held_success_again_changes_nothing() -> None:
    rows, changed = sync.merge_success(None, _record("app-a", T10, "a1"))
    assert changed
    assert sync.merge_success(rows, _record("app-a", T10, "a2")) == (rows, False)
    flat, _ = sync.merge_recent(None, {U1: [_record("app-a", T10, "a1")]})
    assert sync.merge_recent(flat, {U1: [_record("app-a", T10, "a2")]}) == (flat, False)


def test_the_servers_last_success_is_the_latest_timed_one() -> None:
    """explain_sign_in's lastSuccess: the latest of the user's successes across apps by the same rule, the first held
    of two at the same time. (The server's columns hold a missing time as the epoch: never the latest.)"""
    now = datetime(2026, 12, 1, 12, tzinfo=timezone.utc)
    by_user = {U1: [_record("app-c", None, "c1"), _record("app-b", "2026-12-01T08:00:01Z", "b2"),
                    _record("app-a", T10, "a1"), _record("app-d", T10, "d1")]}
    snap = DirectorySnapshot(tenant="contoso.example", tenant_id="t", as_of=now, interval_minutes=15,
                             areas={"sign_in_events": AreaStatus(enabled=True, last_success=now)},
                             collections={"sign_in_failures": {}, "sign_in_successes": concat_groups([pack_groups(by_user)])})
    log = answers.SignInLog.build("contoso", snap, {})
    best = answers._last_success(log, {"id": U1}, None, None)
    assert best is not None and best["ipAddress"] == "a1", "the latest; of two at the same time, the first held"
    only_c = answers._last_success(log, {"id": U1}, "app-c", None)
    assert only_c is not None and only_c["ipAddress"] == "c1", "an app whose only success has no time still has it"
