"""Sign-in events end to end: events put into the emulator's /auditLogs/signIns, pulled by the real sync over HTTPS,
answered by explain_sign_in / sign_in_failures_summary / get_ticket_identity_context through a real MCP client."""

from __future__ import annotations

import functools
import json
from collections import Counter
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import anyio
import pytest
from _sync_fixtures import control_of, run_sync, write_config  # noqa: F401 (fixture)
from mcp import Client

from entra_mcp.identity import sign_ins as identity_sign_ins
from entra_mcp.identity.sign_in_errors import catalogue
from entra_mcp.identity.sign_ins import SignInLogs
from entra_mcp.identity.findings import FINDINGS
from entra_mcp.mirror.store import MirrorStore
from entra_mcp.server.app import create_server
from entra_mcp.views import ViewProvider
from entra_mcp.sync import sign_ins

ENABLED = "[tenants.sync]\nsign_in_events = true\n"
SPRAY = "203.0.113.9"
OFFICE = "192.0.2.44"


class Bed:
    """An emulator whose sign-in log holds only the events a test adds, a config with sign_in_events on, a mirror."""

    def __init__(self, emu: Any, ctl: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, extra: str = ENABLED) -> None:
        self.emu, self.ctl = emu, ctl
        _, self.settings = write_config(emu, tmp_path, monkeypatch, extra=extra)
        self.store = MirrorStore(self.settings.server.cache_dir)
        self.tenant = emu.tenant(0)
        ctl._ok(ctl.http.post("/signins/settings", json={"generated": False, "throttle_per_10s": 0}))
        people = sorted((u for u in self.tenant.users.values() if u["accountEnabled"] and u.get("userType") != "Guest"),
                        key=lambda u: u["userPrincipalName"])
        self.upns = [u["userPrincipalName"] for u in people]

    def add(self, *events: dict[str, Any]) -> list[dict[str, Any]]:
        body = self.ctl._ok(self.ctl.http.post(f"/tenants/{self.tenant.tenant_id}/signins", json={"events": list(events)}))
        return body["added"]  # type: ignore[no-any-return]

    def sync(self, **kw: Any) -> Any:
        result = run_sync(self.settings, self.store, **kw)
        assert result.error is None, result.error
        return result

    def poll(self, now: datetime | None = None) -> dict[str, Any]:
        async def go() -> dict[str, Any]:
            from entra_mcp.graph.tenant import make_client

            client = make_client(self.settings.tenants[0])
            try:
                return await sign_ins.run_area(self.settings.tenants[0], self.store, client, now=now)
            finally:
                await client.aclose()

        return anyio.run(go)

    def ask(self, tool: str, *, now: datetime | None = None, **args: Any) -> dict[str, Any]:
        """One tool call to a server over the mirror; `now`: the server's clock stands still at that time."""
        async def go() -> dict[str, Any]:
            views = ViewProvider.from_settings(self.settings, self.store, background_reload=False)
            clock = (lambda: now) if now is not None else None
            async with Client(create_server(self.settings, views=views, now=clock)) as client:
                with anyio.fail_after(30):
                    result = await client.call_tool(tool, args)
                assert not result.is_error, result.content[0].text  # type: ignore[union-attr]
                assert json.loads(result.content[-1].text) == result.structured_content  # type: ignore[union-attr]
                return result.structured_content  # type: ignore[return-value]

        return anyio.run(go)


@pytest.fixture
def bed(fresh_emulator: Any, control_of: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Bed:  # noqa: F811
    emu = fresh_emulator(size="small", seed=5)
    return Bed(emu, control_of(emu), tmp_path, monkeypatch)


def _codes(answer: dict[str, Any]) -> set[str]:
    return {f["code"] for f in answer["findings"]}


def test_each_cause_is_explained(bed: Bed) -> None:
    u = bed.upns
    assigned = next(sp for sp in bed.tenant.service_principals.values() if sp.get("appRoleAssignmentRequired"))
    bed.ctl.mutate([{"op": "disable_user", "id": bed.tenant.user_by_key(u[6])["id"]}])
    added = bed.add(
        *[{"user": u[0], "errorCode": 50126, "secondsAgo": 600 - i} for i in range(3)],
        {"user": u[1], "errorCode": 53003, "policy": "Block access from outside allowed countries", "secondsAgo": 300,
         "ipAddress": "185.220.1.2"},
        {"user": u[2], "errorCode": 500121, "additionalDetails": "MFA denied; user declined the authentication", "secondsAgo": 200},
        {"user": u[3], "errorCode": 53000, "policy": "Require compliant device", "grantControls": ["RequireCompliantDevice"],
         "isCompliant": False, "secondsAgo": 100},
        {"user": u[4], "errorCode": 50105, "app": assigned["appId"], "secondsAgo": 100},
        {"user": u[5], "errorCode": 50055, "secondsAgo": 100},
        {"user": u[6], "errorCode": 50057, "secondsAgo": 100},
        {"userPrincipalName": "nobody@contoso.example", "errorCode": 50034, "secondsAgo": 100},
        {"user": u[7], "errorCode": 50173, "secondsAgo": 100, "clientAppUsed": "Mobile Apps and Desktop clients"},
        {"user": u[8], "errorCode": 99999, "failureReason": "Something new went wrong.", "secondsAgo": 100},
        {"user": u[9], "errorCode": 53003, "policy": "Block legacy authentication", "clientAppUsed": "IMAP4", "secondsAgo": 100},
        # MFA prompts (normal interrupts): unanswered by u[11], answered by u[12]; MFA not registered; the device
        # must be hybrid joined; the on-premises password expired; an old session after a password change
        *[{"user": u[11], "errorCode": 50076, "secondsAgo": 400 - 60 * i} for i in range(3)],
        {"user": u[12], "errorCode": 50074, "secondsAgo": 300}, {"user": u[12], "errorCode": 0, "secondsAgo": 280},
        {"user": u[13], "errorCode": 50079, "secondsAgo": 100},
        {"user": u[14], "errorCode": 53001, "policy": "Require hybrid joined device", "grantControls": ["RequireDomainJoinedDevice"],
         "secondsAgo": 100},
        {"user": u[15], "errorCode": 50144, "secondsAgo": 100},
        {"user": u[17], "errorCode": 50133, "secondsAgo": 100},
    )
    bed.sync()
    expect = {0: ("SIGN_IN_WRONG_PASSWORD", "50126"), 1: ("SIGN_IN_BLOCKED_BY_CONDITIONAL_ACCESS", "Block access from outside"),
              2: ("SIGN_IN_MFA_NOT_COMPLETED", "500121"), 3: ("SIGN_IN_DEVICE_NOT_COMPLIANT", "53000"),
              5: ("SIGN_IN_PASSWORD_EXPIRED", "50055"), 6: ("ACCOUNT_DISABLED", "disabled in the directory"),
              7: ("SIGN_IN_STALE_SESSION", "50173"), 9: ("SIGN_IN_LEGACY_AUTHENTICATION", "Block legacy authentication"),
              11: ("SIGN_IN_MFA_REQUIRED", "no successful sign-in followed"), 13: ("SIGN_IN_MFA_NOT_REGISTERED", "50079"),
              14: ("SIGN_IN_DEVICE_NOT_COMPLIANT", "53001"), 15: ("SIGN_IN_PASSWORD_EXPIRED", "50144"),
              17: ("SIGN_IN_STALE_SESSION", "50133")}
    for i, (code, in_verdict) in expect.items():
        a = bed.ask("explain_sign_in", user=u[i])
        assert code in _codes(a), (u[i], a["findings"])
        assert in_verdict in a["verdict"], (u[i], a["verdict"])
        assert a["nextStep"] and a["window"]["asOf"] and a["asOf"]
    wrong = bed.ask("explain_sign_in", user=u[0])
    [group] = wrong["failures"]
    assert group["count"] == 3 and group["errorCode"] == 50126 and group["known"] and group["first"] < group["last"]
    assert group["userSees"] and group["ipAddresses"][0]["count"] == 3 and not wrong["lockout"]["probablyLockedNow"]
    ca = bed.ask("explain_sign_in", user=u[1])["failures"][0]
    assert ca["failedConditionalAccessPolicies"] == [{"displayName": "Block access from outside allowed countries", "count": 1}]
    assert ca["ipAddresses"][0]["ipAddress"] == "185.220.1.2"
    where = next(e["location"] for e in added if e["ipAddress"] == "185.220.1.2")
    assert (ca["ipAddresses"][0]["city"], ca["ipAddresses"][0]["countryOrRegion"]) == (where["city"], where["countryOrRegion"])
    assert ca["ipAddresses"][0]["city"], "the event's location, shown with its address"
    mfa = bed.ask("explain_sign_in", user=u[2])["failures"][0]
    assert mfa["additionalDetails"] == "MFA denied; user declined the authentication"
    not_assigned = bed.ask("explain_sign_in", user=u[4], app=assigned["appId"])
    assert "SIGN_IN_NOT_ASSIGNED" in _codes(not_assigned) and not_assigned["appAccess"]["hasAccess"] is False
    assert "not assigned" in not_assigned["verdict"]
    unknown_user = bed.ask("explain_sign_in", user="nobody@contoso.example")
    assert unknown_user["user"]["id"] is None and "SIGN_IN_UNKNOWN_ACCOUNT" in _codes(unknown_user)
    unknown_code = bed.ask("explain_sign_in", user=u[8])
    assert unknown_code["failures"][0]["known"] is False and "99999" in unknown_code["verdict"]
    assert "Something new went wrong." in unknown_code["failures"][0]["cause"]
    assert "SIGN_IN_UNKNOWN_ERROR_CODE" in _codes(unknown_code)
    unanswered = bed.ask("explain_sign_in", user=u[11])
    assert "50076" in unanswered["verdict"] and unanswered["failures"][0]["count"] == 3
    assert str((unanswered["lastSuccess"] or {}).get("createdDateTime")) < unanswered["failures"][0]["first"]
    answered = bed.ask("explain_sign_in", user=u[12])
    assert "SIGN_IN_MFA_REQUIRED" in _codes(answered) and answered["lastSuccess"]["source"] == "sign-in events"
    assert answered["verdict"].startswith("Only normal interruptions"), "a prompt the user answered is no failure"
    hybrid = bed.ask("explain_sign_in", user=u[14])["failures"][0]
    assert hybrid["failedConditionalAccessPolicies"][0]["displayName"] == "Require hybrid joined device"
    # the directory's own cause joins the log's in one verdict: an expired password beats the wrong-password events
    from entra_mcp.devtenant.generate import examples

    expired = bed.tenant.users[examples(bed.tenant)["password_expired_user"]]["userPrincipalName"]
    bed.add({"user": expired, "errorCode": 50126, "secondsAgo": 30})
    bed.poll()
    both = bed.ask("explain_sign_in", user=expired)
    assert both["directory"]["passwordExpired"] is True and both["verdict"] == "The password has expired (directory)."
    assert {"PASSWORD_EXPIRED", "SIGN_IN_WRONG_PASSWORD"} <= _codes(both)
    quiet = bed.ask("explain_sign_in", user=u[10])
    assert quiet["failures"] == [] and "SIGN_IN_NO_EVENTS" in _codes(quiet)
    assert "does not prove" in quiet["verdict"], "no events is not 'the user is fine'"


def test_lockout_inferred_and_cleared_on_time(bed: Bed) -> None:
    """Smart Lockout from the log: a 50053 logged, or inferred from 10 wrong passwords in a row; locked for 60 s.
    The events have fixed times and the server is asked at fixed times after them (its clock), so the answers do
    not depend on how long the sync and the server's start take on the machine."""
    locked, cleared, inferred = bed.upns[0], bed.upns[1], bed.upns[2]
    t0 = datetime.now(timezone.utc).replace(microsecond=0)

    def ago(seconds: float) -> datetime:
        return t0 - timedelta(seconds=seconds)

    def at(seconds: float) -> str:
        return ago(seconds).isoformat().replace("+00:00", "Z")

    def when(text: str) -> datetime:
        return datetime.fromisoformat(text.replace("Z", "+00:00"))

    bed.add(*[{"user": inferred, "errorCode": 50126, "createdDateTime": at(12 - i)} for i in range(10)],  # no 50053
            *[{"user": locked, "errorCode": 50126, "createdDateTime": at(50 - i)} for i in range(10)],
            {"user": locked, "errorCode": 50053, "createdDateTime": at(20)},
            *[{"user": cleared, "errorCode": 50126, "createdDateTime": at(400 - i)} for i in range(10)],
            {"user": cleared, "errorCode": 50053, "createdDateTime": at(300)})
    bed.sync()
    a = bed.ask("explain_sign_in", now=t0, user=locked)
    lock = a["lockout"]
    assert lock["probablyLockedNow"] is True and lock["failedPasswordsSinceLastSuccess"] == 10
    # locked at the 10th wrong password (41 s ago); the 50053 20 s ago is an attempt that met that same lock
    assert when(lock["lockedAt"]) == ago(41) and when(lock["clearsAt"]) == ago(41 - 60), "60 s after the lock"
    assert "SIGN_IN_LOCKED_OUT" in _codes(a) and "locked by Smart Lockout" in a["verdict"]
    b = bed.ask("explain_sign_in", now=t0, user=cleared)
    assert b["lockout"]["probablyLockedNow"] is False and b["lockout"]["lockouts"] >= 1
    assert "locked by Smart Lockout" not in b["verdict"] and "50126" in b["verdict"]
    c = bed.ask("explain_sign_in", now=t0, user=inferred)["lockout"]
    assert c["probablyLockedNow"] is True and c["lockouts"] == 1, "10 wrong passwords in a row: the 11th meets a lock"
    assert when(c["clearsAt"]) == ago(3 - 60), "60 s after the 10th wrong password"
    # on time: the same log a second before and a second after the lock clears
    assert bed.ask("explain_sign_in", now=ago(41 - 59), user=locked)["lockout"]["probablyLockedNow"] is True
    after = bed.ask("explain_sign_in", now=ago(41 - 61), user=locked)
    assert after["lockout"]["probablyLockedNow"] is False and after["lockout"]["lockouts"] == 1
    assert "locked by Smart Lockout" not in after["verdict"]


def test_spray_detected_and_one_users_typos_are_not(bed: Bed) -> None:
    victims = bed.upns[:15]
    bed.add(*[{"user": v, "errorCode": 50126, "ipAddress": SPRAY, "clientAppUsed": "Authenticated SMTP", "secondsAgo": 900 - 5 * i}
              for i, v in enumerate(victims)],
            *[{"user": bed.upns[20], "errorCode": 50126, "ipAddress": "198.51.100.7", "secondsAgo": 600 - i} for i in range(12)],
            # the office: 12 people mistype once from its address, and sign in from it too
            *[{"user": bed.upns[25 + i], "errorCode": code, "ipAddress": OFFICE, "secondsAgo": 500 - i - (100 if code else 0)}
              for i in range(12) for code in (50126, 0)])
    bed.sync()
    s = bed.ask("sign_in_failures_summary")
    assert [x["ipAddress"] for x in s["sharedAddresses"]] == [OFFICE], "an office address is not a spray"
    s["failures"] -= 12
    assert s["failures"] == 27
    assert [x["ipAddress"] for x in s["suspectedSprays"]] == [SPRAY]
    assert s["suspectedSprays"][0]["accounts"] == 15
    sprays = [f for f in s["findings"] if f["code"] == "PASSWORD_SPRAY_SUSPECTED"]
    assert len(sprays) == 1 and SPRAY in sprays[0]["message"] and "198.51.100.7" not in sprays[0]["message"]
    assert s["topErrorCodes"][0]["errorCode"] == 50126 and s["topErrorCodes"][0]["users"] == 28
    assert s["topUsers"][0]["count"] == 12
    assert {x["ipAddress"]: (x["count"], x["accounts"]) for x in s["topIpAddresses"]} == {
        SPRAY: (15, 15), OFFICE: (12, 12), "198.51.100.7": (12, 1)}
    assert sum(x["count"] for x in s["topApps"]) == 39 + 12 - 12, "every failure counted against its app"
    assert s["window"]["from"].endswith(":00:00Z"), "the tenant-wide picture counts whole hours"


def test_spike_of_one_app_and_code(bed: Bed) -> None:
    bed.add(*[{"user": bed.upns[i % 20], "errorCode": 53003, "policy": "Block unmanaged CRM access", "app": "Microsoft Teams",
               "secondsAgo": 60 + i} for i in range(25)])
    bed.sync()
    s = bed.ask("sign_in_failures_summary", app="Microsoft Teams")
    assert s["app"]["displayName"] == "Microsoft Teams" and s["failures"] == 25
    assert [(x["errorCode"], x["count"]) for x in s["spikes"]] == [(53003, 25)]
    assert "SIGN_IN_FAILURE_SPIKE" in _codes(s)


def test_late_events_are_picked_up_by_the_next_poll_exactly_once(bed: Bed) -> None:
    user = bed.upns[0]
    bed.add({"user": user, "errorCode": 50126, "secondsAgo": 60})
    bed.sync()
    assert bed.ask("explain_sign_in", user=user)["signInEvents"]["failures"] == 1
    late = bed.add({"user": user, "errorCode": 50126, "secondsAgo": 240}, {"user": user, "errorCode": 0, "secondsAgo": 30})
    first = bed.poll()
    assert first["outcome"] == "delta" and first["changes"] == 1, first
    logs = SignInLogs(bed.store)
    held = logs.get(bed.settings.tenants[0].name)
    polled_at = held.status.last_success if held.status else None
    again = bed.poll()
    assert again["changes"] == 0, "the overlap reads it again; the mirror keeps it once"
    same = logs.get(bed.settings.tenants[0].name)
    assert same is held, "no data changed: the loaded log is kept ..."
    assert same.status is not None and polled_at is not None and same.status.last_success > polled_at, "... and its asOf moves"
    a = bed.ask("explain_sign_in", user=user)
    assert a["signInEvents"]["failures"] == 2 and a["failures"][0]["count"] == 2
    assert a["lastSuccess"]["createdDateTime"] == late[1]["createdDateTime"][:19] + "Z"
    assert a["lastSuccess"]["source"] == "sign-in events"


def test_a_failed_poll_keeps_the_last_state_and_the_next_takes_the_events_once(bed: Bed) -> None:
    """Graph failing past the retries (503/504 on every attempt): the poll fails, the mirror keeps its last committed
    events and records the error; the next poll takes the events of the failed one exactly once."""
    from entra_mcp.errors import EntraMcpError
    from entra_mcp.graph.client import RetryPolicy
    from entra_mcp.graph.tenant import make_client

    user = bed.upns[0]
    bed.add({"user": user, "errorCode": 50126, "secondsAgo": 300})
    bed.sync()
    bed.add({"user": user, "errorCode": 50126, "secondsAgo": 120}, {"user": user, "errorCode": 53003, "policy": "P", "secondsAgo": 60})
    bed.ctl.faults(error_next=2)

    async def failing() -> str:
        client = make_client(bed.settings.tenants[0], retry=RetryPolicy(max_attempts=2, base_backoff=0.01))
        try:
            with pytest.raises(EntraMcpError) as caught:
                await sign_ins.run_area(bed.settings.tenants[0], bed.store, client)
            return str(caught.value)
        finally:
            await client.aclose()

    error = anyio.run(failing)
    name = bed.settings.tenants[0].name
    status = bed.store.sign_in_store().load_snapshot(name).areas["sign_in_events"]  # type: ignore[union-attr]
    assert status.enabled and status.last_error and status.last_error_at is not None, status
    assert status.last_success is not None and status.last_success < status.last_error_at
    assert "503" in error or "504" in error or "Service" in error, error
    kept = bed.ask("explain_sign_in", user=user)
    assert kept["signInEvents"]["failures"] == 1, "the last committed state, nothing half-applied"
    again = bed.poll()
    assert again["outcome"] == "delta" and again["changes"] == 2, again
    after = bed.ask("explain_sign_in", user=user)
    assert after["signInEvents"]["failures"] == 3 and sorted(g["count"] for g in after["failures"]) == [1, 2]


def test_window_and_retention_bounds(fresh_emulator: Any, control_of: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    emu = fresh_emulator(size="small", seed=5)
    bed = Bed(emu, control_of(emu), tmp_path, monkeypatch, extra=ENABLED + "sign_in_events_days = 1\n")
    user = bed.upns[0]
    bed.add({"user": user, "errorCode": 50126, "secondsAgo": 2 * 86400}, {"user": user, "errorCode": 50126, "secondsAgo": 3600},
            {"user": user, "errorCode": 50126, "secondsAgo": 45 * 86400})
    bed.sync()
    a = bed.ask("explain_sign_in", user=user, since="3d")
    assert a["signInEvents"]["failures"] == 1, "only the event inside the 1-day window is kept"
    assert "SIGN_IN_WINDOW_CLIPPED" in _codes(a)
    later = bed.poll(now=datetime.now(timezone.utc) + timedelta(hours=25))
    assert later["outcome"] == "delta" and later["objects"] == 0, "hours older than the window are dropped"
    assert bed.store.sign_in_store().load_snapshot(bed.settings.tenants[0].name).collection("sign_in_failures") == {}


def test_area_disabled_on_403_and_reenabled_when_granted(bed: Bed) -> None:
    user = bed.upns[0]
    bed.ctl.mutate([{"op": "disable_user", "id": bed.tenant.user_by_key(user)["id"]}])
    bed.add({"user": user, "errorCode": 50057, "secondsAgo": 60})
    bed.ctl.roles(revoke=["AuditLog.Read.All"])
    r = bed.sync()
    assert r.areas["sign_in_events"].outcome == "disabled"
    assert "grant AuditLog.Read.All" in (r.areas["sign_in_events"].message or "")
    a = bed.ask("explain_sign_in", user=user)
    assert a["signInEvents"] is None and "SIGN_IN_EVENTS_UNAVAILABLE" in _codes(a)
    assert "disabled in the directory" in a["verdict"], "the directory side still answers"
    status = bed.ask("sync_status")
    events = next(x for x in status["areas"] if x.get("area", x.get("name")) == "sign_in_events") if isinstance(status["areas"], list) \
        else status["areas"]["sign_in_events"]
    assert events["enabled"] is False and "AuditLog.Read.All" in events["disabledReason"]
    bed.ctl.roles(grant=["AuditLog.Read.All"])
    bed.ctl.mutate([{"op": "set_premium", "premium": False}])
    r = bed.sync()
    assert r.areas["sign_in_events"].outcome == "disabled"
    assert "Authentication_RequestFromNonPremiumTenantOrB2CTenant" in (r.areas["sign_in_events"].message or "")
    assert "licence" in (r.areas["sign_in_events"].message or "")
    bed.ctl.mutate([{"op": "set_premium", "premium": True}])
    r = bed.sync()
    assert r.areas["sign_in_events"].outcome == "full"
    assert bed.ask("explain_sign_in", user=user)["failures"][0]["errorCode"] == 50057


def test_area_off_says_so_and_gives_the_directory_verdict(fresh_emulator: Any, control_of: Any, tmp_path: Path,  # noqa: F811
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    emu = fresh_emulator(size="small", seed=5)
    bed = Bed(emu, control_of(emu), tmp_path, monkeypatch, extra="")
    user = bed.upns[0]
    r = bed.sync()
    assert r.areas["sign_in_events"].outcome == "off"
    assert not (bed.store.sign_in_store().tenant_dir(bed.settings.tenants[0].name)).exists(), "never enabled: no mirror made"
    a = bed.ask("explain_sign_in", user=user)
    assert a["failures"] is None and "SIGN_IN_EVENTS_UNAVAILABLE" in _codes(a)
    assert "sign_in_events" in next(f["message"] for f in a["findings"] if f["code"] == "SIGN_IN_EVENTS_UNAVAILABLE")
    assert a["directory"]["accountEnabled"] is True and a["verdict"]
    s = bed.ask("sign_in_failures_summary")
    assert s["failures"] is None and "SIGN_IN_EVENTS_UNAVAILABLE" in _codes(s)
    ctx = bed.ask("get_ticket_identity_context", requester=user, ticket_text="I can't sign in")
    assert ctx["signIns"] is None and ctx["requester"]["status"] == "found", "the ticket context still answers"


def test_ticket_context_carries_the_requesters_sign_in_evidence(bed: Bed) -> None:
    user = bed.upns[0]
    bed.add(*[{"user": user, "errorCode": 50126, "secondsAgo": 100 - i} for i in range(10)],
            {"user": user, "errorCode": 50053, "secondsAgo": 10},
            {"user": user, "errorCode": 53003, "policy": "Block unmanaged Teams", "app": "Microsoft Teams", "secondsAgo": 200},
            {"user": user, "errorCode": 50105, "app": "Salesforce", "secondsAgo": 300})
    bed.sync()
    ctx = bed.ask("get_ticket_identity_context", requester=user, ticket_text="I can't sign in to Microsoft Teams, it says locked")
    assert [a["displayName"] for a in ctx["mentions"]["apps"]] == ["Microsoft Teams"]
    [teams] = ctx["signIns"]["apps"]  # the app the ticket names, with its own evidence (not Salesforce's failure)
    assert teams["app"]["displayName"] == "Microsoft Teams" and teams["failures"] == 1
    assert "Smart Lockout" in teams["verdict"], "the lock is the account's, whatever the app"
    assert ctx["signIns"]["lockout"]["probablyLockedNow"] is True
    assert "Smart Lockout" in ctx["signIns"]["verdict"]
    assert ctx["signIns"]["causes"][0]["errorCode"] in (50053, 50126)


def test_bad_arguments_are_clear_errors(bed: Bed) -> None:
    bed.sync()

    async def go() -> list[str]:
        views = ViewProvider.from_settings(bed.settings, bed.store, background_reload=False)
        out = []
        async with Client(create_server(bed.settings, views=views)) as client:
            for args in ({"user": bed.upns[0], "since": "yesterday-ish"}, {"user": "no such person at all"}):
                result = await client.call_tool("explain_sign_in", args)
                assert result.is_error
                out.append(result.content[0].text)  # type: ignore[union-attr]
        return out

    since_error, user_error = anyio.run(go)
    assert "since" in since_error and "Traceback" not in since_error
    assert "Traceback" not in user_error


def test_catalogue_is_complete_and_its_findings_exist() -> None:
    entries = catalogue()
    for code in (50126, 50053, 50074, 50076, 50079, 500121, 53003, 53000, 53001, 50105, 50055, 50144, 50057, 50034,
                 50173, 50133):
        assert code in entries, code
    assert {e.finding for e in entries.values()} <= set(FINDINGS)
    assert all(e.cause and e.user_sees and e.next_step for e in entries.values())


POLLING = "[tenants.sync]\ninterval_minutes = 60\nsign_in_events = true\nsign_in_events_interval_minutes = 0.02\n"


def _serve_scheduler(bed: Bed, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, watch: Any, *, seconds: float) -> Any:
    """serve's scheduler (directory every 60 minutes, sign-in events every ~1 s) until `watch(settings, store)`,
    started after the first directory run, returns. Returns (settings, store, directory runs)."""
    from entra_mcp.config import load_settings
    from entra_mcp.sync.scheduler import run_scheduler

    path, _ = write_config(bed.emu, tmp_path, monkeypatch, extra=POLLING)
    settings = load_settings(path)
    store = MirrorStore(settings.server.cache_dir)
    directory_runs: list[str] = []

    async def scenario() -> None:
        stop = anyio.Event()
        first = anyio.Event()

        def on_result(r: Any) -> None:
            directory_runs.append(r.tenant)
            first.set()

        async def watching() -> None:
            await first.wait()
            await watch(settings, store)
            stop.set()

        with anyio.fail_after(seconds):
            async with anyio.create_task_group() as tg:
                tg.start_soon(watching)
                await run_scheduler(settings, store, stop_event=stop, on_result=on_result)

    anyio.run(scenario)
    return settings, store, directory_runs


def test_serve_scheduler_polls_sign_in_events_on_their_own_interval(bed: Bed, tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """The directory syncs every 60 minutes; sign-in events every ~1 s (sign_in_events_interval_minutes): an event
    added after the first run reaches the mirror long before the next directory sync."""

    def failures(settings: Any, store: Any) -> int:
        snap = store.sign_in_store().load_snapshot(settings.tenants[0].name)
        return 0 if snap is None else sum(len(v) for v in snap.collection("sign_in_failures").values())

    async def watch(settings: Any, store: Any) -> None:
        assert failures(settings, store) == 0
        await anyio.to_thread.run_sync(lambda: bed.add({"user": bed.upns[0], "errorCode": 50126, "secondsAgo": 5}))
        while failures(settings, store) == 0:  # bounded by fail_after
            await anyio.sleep(0.2)

    settings, store, directory_runs = _serve_scheduler(bed, tmp_path, monkeypatch, watch, seconds=60)
    name = settings.tenants[0].name
    assert directory_runs == [name], "one directory sync only: the event came with the sign-in events' own poll"
    assert failures(settings, store) == 1


def test_serve_polls_record_their_outcome_where_status_and_health_read_it(bed: Bed, tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """Between directory syncs (60 minutes apart) each sign-in poll's outcome reaches `status`, sync_status and
    /healthz: Directory.Read.All missing (Microsoft documents AuditLog.Read.All AND Directory.Read.All) disables the
    area with that reason at the next poll; granted, the poll after re-enables it with a newer lastSuccess."""
    from entra_mcp.commands.status import status_report
    from entra_mcp.identity.status import sync_status
    from entra_mcp.server.http import health

    seen: dict[str, Any] = {}

    async def watch(settings: Any, store: Any) -> None:
        name = settings.tenants[0].name
        views = ViewProvider.from_settings(settings, store, background_reload=False)

        def area() -> dict[str, Any]:
            return status_report(settings, store)["tenants"][0]["areas"]["sign_in_events"]  # type: ignore[no-any-return]

        async def until(check: Any) -> None:
            while not await anyio.to_thread.run_sync(check):  # bounded by fail_after
                await anyio.sleep(0.2)

        await until(lambda: area()["lastSuccess"] is not None)  # the first poll may end after the first directory run
        seen["before"] = area()
        assert seen["before"]["enabled"] and seen["before"]["lastSuccess"]
        await anyio.to_thread.run_sync(lambda: bed.ctl._ok(bed.ctl.http.post(
            "/signins/settings", json={"require_directory_read": True})))
        await until(lambda: area()["enabled"] is False)
        seen["denied"] = area()
        seen["denied_tool"] = sync_status(views.current(name).view)["areas"]["sign_in_events"]
        seen["denied_health"] = health(views)["tenants"][0]["areas"]["sign_in_events"]
        await anyio.to_thread.run_sync(lambda: bed.ctl.roles(grant=["Directory.Read.All"]))
        await until(lambda: area()["enabled"] is True)
        seen["granted"] = area()
        seen["granted_tool"] = sync_status(views.current(name).view)["areas"]["sign_in_events"]

    try:
        settings, store, directory_runs = _serve_scheduler(bed, tmp_path, monkeypatch, watch, seconds=90)
    finally:
        bed.ctl._ok(bed.ctl.http.post("/signins/settings", json={"require_directory_read": False}))
    assert directory_runs == [settings.tenants[0].name], "one directory sync: the statuses came with the polls"
    denied = seen["denied"]
    assert "Directory.Read.All" in denied["disabledReason"] and "Authorization_RequestDenied" in denied["disabledReason"]
    assert seen["denied_tool"]["enabled"] is False and "Directory.Read.All" in seen["denied_tool"]["disabledReason"]
    assert seen["denied_health"]["enabled"] is False
    assert seen["granted"]["lastSuccess"] > seen["before"]["lastSuccess"] and seen["granted"]["disabledReason"] is None
    assert seen["granted_tool"]["enabled"] is True


def test_reporting_throttle_is_honoured(bed: Bed) -> None:
    """Microsoft's reporting API allows 5 requests per 10 s per app; the emulator here allows 1: the first pull's
    second request is answered 429 with Retry-After, waited out, and the pull completes."""
    bed.ctl._ok(bed.ctl.http.post("/signins/settings", json={"throttle_per_10s": 1}))
    bed.add({"user": bed.upns[0], "errorCode": 50126, "secondsAgo": 60})

    async def go() -> tuple[dict[str, Any], dict[str, Any]]:
        from entra_mcp.graph.tenant import make_client

        client = make_client(bed.settings.tenants[0])
        try:
            with anyio.fail_after(60):
                return await sign_ins.run_area(bed.settings.tenants[0], bed.store, client), client.stats.as_dict()
        finally:
            await client.aclose()

    polled, stats = anyio.run(go)
    assert polled["outcome"] == "full" and polled["objects"] == 1
    assert stats["throttled"] >= 1


def test_sign_in_settings_are_checked() -> None:
    from entra_mcp.config import parse_settings
    from entra_mcp.errors import ConfigError

    base = {"tenants": [{"name": "t", "tenant_id": "x", "client_id": "y", "client_secret_env": "S"}]}
    ok = parse_settings({**base, "tenants": [{**base["tenants"][0], "sync": {"sign_in_events": True}}]})
    assert ok.tenants[0].sync.sign_in_events_days == 7 and ok.tenants[0].sync.sign_in_events_interval_minutes == 5
    assert parse_settings(base).tenants[0].sync.sign_in_events is False, "off unless enabled"
    with pytest.raises(ConfigError, match="sign_in_events_days"):
        parse_settings({**base, "tenants": [{**base["tenants"][0], "sync": {"sign_in_events_days": 31}}]})


def test_a_poll_while_another_holds_the_sign_in_mirror_is_skipped_not_failed(bed: Bed) -> None:
    name = bed.settings.tenants[0].name
    with bed.store.sign_in_store().writer(name):  # another poll (serve's own loop) is writing
        result = bed.sync()
    assert result.areas["sign_in_events"].outcome == "skipped" and result.ok
    assert bed.sync().areas["sign_in_events"].outcome == "full", "the next run does the work"


@functools.lru_cache(maxsize=1)
def _small_tenant() -> Any:
    from entra_mcp.devtenant.generate import generate_state

    return next(iter(generate_state("small", 1).tenants.values()))


def _window_snapshot(days: int = 7, per_user_day: float = 100.0, now: datetime | None = None) -> tuple[Any, dict[str, list[dict[str, Any]]], dict[str, list[dict[str, Any]]], datetime]:
    """The small emulator's generated stream for a window, compacted by the sync's functions and packed in the
    mirror's column form (what the sign-in mirror holds): (snapshot, failures by hour, successes by user, now)."""
    from entra_mcp.areas import AreaStatus
    from entra_mcp.devtenant.graph_signins import Query, SignInSettings, TenantSignIns
    from entra_mcp.mirror.snapshot import DirectorySnapshot
    from entra_mcp.mirror.table import concat_groups, pack_groups

    start = datetime(2026, 12, 1, 12, 0, tzinfo=timezone.utc)
    now = now or start
    tenant = _small_tenant()
    stream = TenantSignIns(tenant, SignInSettings(ingestion_delay_s=0, late_share=0, events_per_user_day=per_user_day),
                           start.timestamp())
    by_hour: dict[str, list[dict[str, Any]]] = {}
    for _ts, _id, e in stream.events(Query(lower=(now - timedelta(days=days)).timestamp(), code_ne=0), now.timestamp(), None):
        r = sign_ins.compact_failure(e)
        assert r is not None
        by_hour.setdefault(sign_ins.hour_key(r["createdDateTime"]), []).append(r)
    for rows in by_hour.values():
        rows.sort(key=lambda r: (r["createdDateTime"], r["id"]))
    by_user: dict[str, list[dict[str, Any]]] = {}
    for _ts, _id, e in stream.events(Query(lower=(now - timedelta(hours=24)).timestamp(), code_eq=0), now.timestamp(), None):
        got = sign_ins.compact_success(e)
        assert got is not None
        by_user[got[0]], _ = sign_ins.merge_success(by_user.get(got[0]), got[1])
    hours = sorted(by_hour)
    snap = DirectorySnapshot(tenant=tenant.domain, tenant_id=tenant.tenant_id, as_of=now, interval_minutes=15,
                             areas={"sign_in_events": AreaStatus(enabled=True, last_success=now)},
                             collections={"sign_in_failures": concat_groups([pack_groups({h: by_hour[h] for h in hours[i:i + 8]})
                                                                             for i in range(0, len(hours), 8)]),
                                          "sign_in_successes": concat_groups([pack_groups(by_user)])})
    return snap, by_hour, by_user, now


def test_the_servers_columns_give_back_every_record_of_the_window() -> None:
    """The server holds the window as columns (identity/sign_in_columns.py): every failure (less its event id), by
    user and by hour, and every last success read back equal to what the sync stored, in the same order."""
    from entra_mcp.identity.sign_ins import _ROW, SignInLog

    snap, by_hour, by_user, _now = _window_snapshot()
    log = SignInLog.build("contoso", snap, {})
    every = [r for h in sorted(by_hour) for r in by_hour[h]]
    assert log.failure_count == len(every) > 1000 and log.hours == sorted(by_hour)
    plain = [{k: v for k, v in r.items() if k != "id"} for r in every]
    assert [r for h in log.hours for r in log.hour_failures(h)] == plain
    keyed: dict[str, list[dict[str, Any]]] = {}
    for r in plain:
        uid = r["userId"]
        keyed.setdefault(uid if uid and uid != "00000000-0000-0000-0000-000000000000" else str(r["userPrincipalName"]).casefold(), []).append(r)
    assert sorted(log.failure_users()) == sorted(keyed)
    for key, rows in keyed.items():
        assert [log.failure(i) for i in log.user_failures(key)] == rows, key
    assert log.user_failures("nobody@nowhere.example") == []
    for h, rows in by_hour.items():
        assert log.hour_rows(h) == [tuple(r.get(k) for k in _ROW) for r in rows]
        # the first pull holds each hour it has read in this packed form until its commit
        assert sign_ins._hour_rows(sign_ins._pack_hour(h, list(reversed(rows)))) == rows
    assert sum(map(len, by_user.values())) == log.success_count
    for uid, rows in by_user.items():
        assert log.user_successes(uid) == rows


def _tally_row_by_row(rows: list[tuple[Any, ...]]) -> dict[str, Any]:
    """The hour's counts as a loop over the rows (what identity/sign_ins.py `_tally` counts column by column)."""
    codes: Counter[int] = Counter()
    apps: Counter[tuple[Any, Any]] = Counter()
    app_code: Counter[tuple[Any, int]] = Counter()
    ips: Counter[str] = Counter()
    users: Counter[str] = Counter()
    code_users: dict[int, set[str]] = {}
    ip_users: dict[str, set[str]] = {}
    ip_where: dict[str, tuple[Any, Any]] = {}
    ip_times: dict[str, list[str]] = {}
    for when, uid, upn, app_id, app_name, code, ip, city, country in rows:
        code = int(code or 0)
        who = str(upn or uid or "?").casefold()
        codes[code] += 1
        code_users.setdefault(code, set()).add(who)
        apps[(app_id, app_name)] += 1
        app_code[(app_id, code)] += 1
        users[who] += 1
        if ip:
            ips[ip] += 1
            ip_where.setdefault(ip, (city, country))
            if code in identity_sign_ins.PASSWORD_CODES:
                ip_users.setdefault(ip, set()).add(uid if uid and uid != "00000000-0000-0000-0000-000000000000" else who)
                t = ip_times.setdefault(ip, [when, when])
                t[0], t[1] = min(t[0], when), max(t[1], when)
    return {"n": len(rows), "codes": codes, "code_users": code_users, "apps": apps, "app_code": app_code, "ips": ips,
            "users": users, "ip_users": ip_users, "ip_where": ip_where, "ip_times": ip_times}


def test_an_hours_counts_are_those_of_a_loop_over_its_rows() -> None:
    """`_tally` counts column by column: the same counts as a loop over the rows, every dict in the same order (the
    top lists keep that order for ties), for every hour of a generated window and for odd values (a code that is
    not an int, no address, no user id, the empty user id)."""
    from entra_mcp.identity.sign_ins import SignInLog, _tally

    snap, _by_hour, _by_user, _now = _window_snapshot(days=2)
    log = SignInLog.build("contoso", snap, {})
    odd = [("2026-12-01T10:00:00Z", None, "A@x.example", "app", "App", None, "", None, None),
           ("2026-12-01T10:00:01Z", "00000000-0000-0000-0000-000000000000", "B@x.example", "app", "App", "50126",
            "192.0.2.1", "Oslo", "NO"),
           ("2026-12-01T10:00:02Z", "u1", None, "app", "App", True, "192.0.2.1", "Bergen", "NO"),
           ("2026-12-01T09:59:59Z", "u2", "C@x.example", "app", None, 50126, "192.0.2.1", None, None),
           ("2026-12-01T10:00:03Z", "u3", "c@X.example", "app2", "App 2", 50053, "192.0.2.2", "Oslo", "NO")]
    cases = [log.hour_rows(h) for h in log.hours] + [odd, odd[:1], []]
    assert sum(map(len, cases)) > 1000
    for rows in cases:
        want, got = _tally_row_by_row(rows), _tally(iter(rows))
        assert {k: list(v.items()) if isinstance(v, dict) else v for k, v in got.items()} == \
            {k: list(v.items()) if isinstance(v, dict) else v for k, v in want.items()}


def test_a_reloaded_log_reuses_the_counts_of_unchanged_hours_and_answers_the_same() -> None:
    """After a poll, the server's new version of the log takes over the hourly counts of the hours the poll did not
    touch (SignInLog.adopt); its summaries equal those of a log counted from scratch."""
    from entra_mcp.identity.sign_ins import SignInLog, sign_in_failures_summary

    snap, _h, _u, now = _window_snapshot(per_user_day=60.0)
    older = SignInLog.build("contoso", snap, {})
    asks = [(None, None), ("7d", None), ("3h", None), ("7d", "Microsoft Teams")]
    for since, app in asks:
        sign_in_failures_summary(older, None, since, app, now)
    later = now + timedelta(minutes=65)  # new failures in the current hour, the oldest hour partly expired
    snap2, _h2, _u2, _ = _window_snapshot(per_user_day=60.0, now=later)
    meta = {"window_start": sign_ins.iso(later - timedelta(days=7))}
    adopted, fresh = SignInLog.build("contoso", snap2, meta), SignInLog.build("contoso", snap2, meta)
    reused = adopted.adopt(older)
    assert 0 < reused < len(adopted.hours), "unchanged hours reused, the changed ones not"
    assert adopted._tally and adopted._merged
    for since, app in asks:
        assert sign_in_failures_summary(adopted, None, since, app, later) == sign_in_failures_summary(fresh, None, since, app, later)


def _same_answers(adopted: Any, fresh: Any, upns: list[str], user_ids: list[str], now: datetime) -> None:
    """Two logs of the same mirror version hold and answer exactly the same."""
    from entra_mcp.identity.sign_ins import explain_sign_in, sign_in_failures_summary

    assert adopted.version == fresh.version and adopted.hours == fresh.hours
    assert adopted.failure_count == fresh.failure_count
    for h in fresh.hours:
        assert adopted.hour_failures(h) == fresh.hour_failures(h), h
        assert adopted.hour_rows(h) == fresh.hour_rows(h), h
    keys = fresh.failure_users()
    assert sorted(adopted.failure_users()) == sorted(keys)
    for k in keys:
        assert [adopted.failure(x) for x in adopted.user_failures(k)] == [fresh.failure(x) for x in fresh.user_failures(k)], k
    for uid in user_ids:
        rows = fresh.user_successes(uid)
        assert adopted.user_successes(uid) == rows, uid
        assert len({r["appId"] for r in rows}) == len(rows), "the last success per app, whichever hour listed it"
    for since, app in [(None, None), ("7d", None), ("3h", None), ("2d", "Microsoft Teams")]:
        assert sign_in_failures_summary(adopted, None, since, app, now) == sign_in_failures_summary(fresh, None, since, app, now)
    for upn in upns:
        assert explain_sign_in(adopted, None, upn, None, "7d", now) == explain_sign_in(fresh, None, upn, None, "7d", now)


def test_a_polls_commit_is_adopted_in_part_and_answers_like_a_fresh_load(bed: Bed, monkeypatch: pytest.MonkeyPatch) -> None:
    """The server follows each poll's commit by reading only the buckets it rewrote (the hours with new or late
    failures, an expired hour, the poll's hour of successes), keeps the rest of its columns and its hourly counts, and
    answers exactly like a log loaded whole from the same mirror; also across the fold of the polls' successes into
    the by-user lists (made to happen after 2 lists here)."""
    monkeypatch.setattr(sign_ins, "FOLD_AFTER", 2)
    monkeypatch.setattr(sign_ins, "LIST_ROWS", 1)  # each poll's successes in a list of their own
    monkeypatch.setattr(identity_sign_ins, "_MAX_PARTS", 2)  # the hours of later polls read into one holder at once
    tenant = bed.settings.tenants[0].name
    upns = bed.upns[:12]
    ids = [str(bed.tenant.user_by_key(u)["id"]) for u in upns]
    day = 86400
    bed.add(*[{"user": upns[i % 12], "errorCode": code, "secondsAgo": ago, "app": "Microsoft Teams" if i % 2 else None}
              for i, (code, ago) in enumerate([(50126, 7 * day - 90), (50126, 7 * day - 80), (53003, 3 * day),
                                                (50074, 2 * day), (50126, 7200), (50126, 3000), (50053, 2900), (0, 2000),
                                                (0, 1900), (50126, 400), (0, 300), (0, 100)])])
    bed.sync()
    logs = SignInLogs(bed.store)
    start = datetime.now(timezone.utc)
    first = logs.get(tenant)
    for since in (None, "7d", "3h"):
        sign_in_failures_summary_of(first, since, start)
    previous = first
    for step in range(4):
        # new failures and successes, a late one of each (older than the last poll's watermark, inside the overlap),
        # the clock an hour further at each step: the oldest hour expires; each poll's successes are listed apart and
        # at the third step the two older lists are folded into the by-user lists
        if step:
            bed.ctl._ok(bed.ctl.http.post("/clock", json={"seconds": 3600}))  # the emulator's events an hour later
        bed.add({"user": upns[step], "errorCode": 50126, "secondsAgo": 5}, {"user": upns[step + 1], "errorCode": 0, "secondsAgo": 5},
                {"user": upns[step + 2], "errorCode": 50126, "secondsAgo": 420}, {"user": upns[step + 3], "errorCode": 0, "secondsAgo": 400})
        now = datetime.now(timezone.utc) + timedelta(hours=step)
        polled = bed.poll(now=now)
        assert polled["outcome"] == "delta" and polled["changes"] == 2, polled
        adopted = logs.get(tenant)
        assert adopted is not previous and adopted.version > previous.version
        fresh = SignInLogs(bed.store).get(tenant)
        assert fresh._parts[0] is not adopted._parts[0]
        if step == 2:
            assert len(fresh.meta["recent"]) == 1 and len(adopted._recent) == 1, "the older lists of successes were folded"
            assert adopted._parts[0] is not previous._parts[0], "... and the by-user lists read again, whole"
        else:
            assert adopted._parts[0] is previous._parts[0], "the hours the poll did not rewrite are the ones held before"
            assert len(adopted._parts) == 2, "an hour per poll's holder, read into one past _MAX_PARTS"
            assert len(adopted._recent) == len(fresh.meta["recent"]) == (step + 1 if step < 2 else 2)
        kept_from = sign_ins.iso(now - timedelta(days=7))[:13]
        assert [h for h in adopted.hours if h < kept_from] == [], "an hour that left the window is dropped"
        _same_answers(adopted, fresh, upns, ids, now)
        previous = adopted
    assert first.hours[0] not in previous.hours
    again = bed.poll(now=now)
    assert again["changes"] == 0 and logs.get(tenant) is previous, "what the overlap reads again is not listed again"


def sign_in_failures_summary_of(log: Any, since: str | None, now: datetime) -> dict[str, Any]:
    from entra_mcp.identity.sign_ins import sign_in_failures_summary

    return sign_in_failures_summary(log, None, since, None, now)


def test_the_log_and_its_24_hour_counts_are_loaded_ahead_of_the_first_question(bed: Bed) -> None:
    """serve warms each tenant's sign-in log in the background (SignInLogs.warm): loaded and its default summary
    counted before the first question, which then reads the memoised counts and answers like a fresh log."""
    from entra_mcp.identity.sign_ins import sign_in_failures_summary

    bed.add(*[{"user": bed.upns[i], "errorCode": 50126, "secondsAgo": 3600 * i + 60} for i in range(5)])
    bed.sync()
    tenant = bed.settings.tenants[0].name
    logs = SignInLogs(bed.store)
    thread = logs.warm([tenant, "no-such-tenant"])
    assert thread is not None
    thread.join(60)
    assert not thread.is_alive()
    held = logs._held[tenant]
    assert any(isinstance(m.get("_derived"), dict) for m in held._merged.values()), "the 24-hour summary was counted"
    now = datetime.now(timezone.utc)
    assert logs.get(tenant) is held
    assert sign_in_failures_summary(held, None, None, None, now) == \
        sign_in_failures_summary(SignInLogs(bed.store).get(tenant), None, None, None, now)
    assert SignInLogs(None).warm([tenant]) is None and logs.warm([]) is None
