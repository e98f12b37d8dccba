"""The account areas synced from the emulator over HTTPS (real msal, httpx, mirror): MFA/SSPR readiness, directory
roles with role-assignable groups and PIM, licence errors, risk — and every check_reset_eligibility verdict, each
area disabled with its reason when its permission or licence is missing while the others keep answering."""

from __future__ import annotations

from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, AsyncIterator

import anyio
import pytest
from mcp import Client
from mcp.client.stdio import StdioServerParameters

from entra_mcp.devtenant.generate import examples
from entra_mcp.devtenant.graph_account import GLOBAL_ADMIN, account_examples
from entra_mcp.identity.account import check_account_state
from entra_mcp.identity.reset import check_reset_eligibility
from entra_mcp.identity.view import DirectoryView
from entra_mcp.mirror.store import MirrorStore
from entra_mcp.server.app import create_server
from entra_mcp.views import ViewProvider
from _server_fixtures import ENTRA_MCP, server_env  # noqa: F401 (fixture)
from tests._sync_fixtures import control_of, run_sync, write_config  # noqa: F401

pytestmark = pytest.mark.timeout(180)
ACCOUNT_AREAS = ("auth_methods", "roles", "licenses", "risk")


def _synced(emu: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, i: int = 0, **kw: Any) -> tuple[Any, MirrorStore, DirectoryView]:
    tmp_path.mkdir(parents=True, exist_ok=True)
    _, settings = write_config(emu, tmp_path, monkeypatch, tenant_index=i)
    store = MirrorStore(settings.server.cache_dir)
    result = run_sync(settings, store, **kw)
    snap = store.load_snapshot(settings.tenants[0].name)
    assert snap is not None
    return result, store, DirectoryView.build(snap)


def _codes(answer: dict[str, Any]) -> set[str]:
    return {f["code"] for f in answer["findings"]}


def test_every_reset_verdict_from_a_real_sync(fresh_emulator: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    emu = fresh_emulator(size="small", seed=1)
    t = emu.tenant()
    ex, base = account_examples(t), examples(t)
    result, _, view = _synced(emu, tmp_path, monkeypatch)
    assert result.ok, result
    assert {a: result.areas[a].outcome for a in ACCOUNT_AREAS} == dict.fromkeys(ACCOUNT_AREAS, "full")

    def verdict(uid: str, **kw: Any) -> dict[str, Any]:
        return check_reset_eligibility(view, uid, **kw)

    ga = verdict(ex["global_admin"])  # Helpdesk Administrator may not reset a Global Administrator
    assert ga["verdict"] == "not_by_helpdesk"
    assert ga["rolesThatMayReset"] == ["Privileged Authentication Administrator", "Global Administrator"]
    assert "RESET_NOT_BY_HELPDESK" in _codes(ga)
    assert verdict(ex["global_admin"], desk_role="Privileged Authentication Administrator")["verdict"] != "not_by_helpdesk"
    group = verdict(ex["role_group_member"])  # User Administrator through a role-assignable group
    assert group["verdict"] == "not_by_helpdesk" and "role-assignable group" in group["reasons"][0]
    assert group["roles"]["active"][0]["via"]["id"] == ex["role_group"]
    assert verdict(ex["pim_eligible_admin"])["verdict"] == "not_by_helpdesk"  # eligible counts as held
    hd = verdict(ex["helpdesk_admin"])  # a Helpdesk Administrator may reset another Helpdesk Administrator
    assert hd["verdict"] in ("self_service", "helpdesk_cloud") and "Helpdesk Administrator" in hd["rolesThatMayReset"]
    assert verdict(ex["helpdesk_admin"], desk_role="Password Administrator")["verdict"] == "not_by_helpdesk"
    ready = verdict(ex["sspr_ready_user"])
    assert ready["verdict"] == "self_service" and ready["authentication"]["isSsprRegistered"] is True
    assert "RESET_CALLER_UNVERIFIED" in _codes(ready)  # no chat session given: verify out of band
    no_sspr = verdict(ex["no_sspr_user"])
    assert no_sspr["verdict"] == "helpdesk_cloud" and "SSPR_NOT_REGISTERED" in _codes(no_sspr)
    assert "MFA_NOT_REGISTERED" in _codes(verdict(ex["no_mfa_user"]))
    risky = verdict(ex["risky_user"])
    assert risky["verdict"] == "escalate" and risky["risk"]["riskState"] == "atRisk" and "USER_AT_RISK" in _codes(risky)
    assert verdict(ex["remediated_user"])["verdict"] != "escalate"
    synced = verdict(base["synced_user"])
    assert synced["verdict"] == "on_premises" and synced["passwordWriteback"] is None
    assert "PASSWORD_WRITEBACK_UNKNOWN" in _codes(synced)
    assert verdict(base["synced_user"], password_writeback=True)["verdict"] in ("self_service", "helpdesk_cloud")
    assert verdict(base["guest_accepted"])["verdict"] == "guest_home_tenant"
    assert verdict(base["ceo"])["verdict"] == "escalate"  # VIP
    assert verdict(base["disabled_user"])["verdict"] == "escalate"
    mismatch = verdict(ex["sspr_ready_user"], caller={"valid": True, "matchesClaimedUser": False})
    assert mismatch["verdict"] == "escalate" and mismatch["callerVerified"] is False
    ok = verdict(ex["sspr_ready_user"], caller={"valid": True, "matchesClaimedUser": True})
    assert ok["verdict"] == "self_service" and ok["callerVerified"] is True and "RESET_CALLER_UNVERIFIED" not in _codes(ok)


def test_account_state_shows_readiness_roles_licence_errors_and_risk(fresh_emulator: Any, tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    emu = fresh_emulator(size="small", seed=1)
    ex = account_examples(emu.tenant())
    _, _, view = _synced(emu, tmp_path, monkeypatch)
    for err in ("CountViolation", "MutuallyExclusiveViolation", "DependencyViolation",
                "ProhibitedInUsageLocationViolation", "UniquenessViolation"):
        state = check_account_state(view, ex[f"licence_{err}_user"])
        row = next(r for r in state["licenses"] if r["error"] == err)
        assert row["state"] == "Error" and row["name"] and "LICENSE_ERROR" in _codes(state)
    teams = check_account_state(view, ex["teams_disabled_user"])
    assert any("Microsoft Teams" in r["disabledPlans"] for r in teams["licenses"])
    assert next(r for r in teams["licenses"] if r["skuPartNumber"] == "SPE_E3")["name"] == "Microsoft 365 E3"
    ga = check_account_state(view, ex["global_admin"])
    assert ga["roles"]["privileged"] and ga["roles"]["active"][0]["role"] == "Global Administrator"
    assert "PRIVILEGED_ROLE" in _codes(ga)
    au = check_account_state(view, ex["au_helpdesk_admin"])
    assert au["roles"]["active"][0]["directoryScopeId"] == f"/administrativeUnits/{ex['au_id']}"
    risky = check_account_state(view, ex["risky_user"])
    assert risky["risk"]["riskLevel"] == "high" and "USER_AT_RISK" in _codes(risky)
    plain = check_account_state(view, ex["sspr_ready_user"])
    assert plain["authentication"]["isMfaRegistered"] is True and plain["risk"]["riskState"] == "none"
    assert plain["roles"] == {"privileged": False, "active": [], "eligible": [], "roleAssignableGroups": [],
                              "ownsRoleAssignableGroups": []}


def test_an_owner_of_a_role_assignable_group_counts_as_privileged(fresh_emulator: Any, control_of: Any, tmp_path: Path,  # noqa: F811
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Owners manage a role-assignable group's membership, so they can take its roles: Entra protects them like its
    members (groups-faq-troubleshooting), and so do check_account_state and check_reset_eligibility."""
    emu = fresh_emulator(size="small", seed=1)
    ex = account_examples(emu.tenant())
    owner = ex["sspr_ready_user"]  # no role of their own
    control_of(emu).mutate([{"op": "set_owners", "id": ex["role_group"], "owners": [owner]}])
    _, _, view = _synced(emu, tmp_path, monkeypatch)
    state = check_account_state(view, owner)
    assert state["roles"]["active"] == [] and state["roles"]["privileged"] is True
    [owned] = state["roles"]["ownsRoleAssignableGroups"]
    assert owned["id"] == ex["role_group"] and owned["roles"] == ["User Administrator"]
    assert "ROLE_GROUP_OWNER" in _codes(state)
    answer = check_reset_eligibility(view, owner)  # a Helpdesk Administrator may not reset them
    assert answer["verdict"] == "not_by_helpdesk", answer["reasons"]
    assert "owns the role-assignable group" in answer["reasons"][0]
    assert answer["rolesThatMayReset"] == ["Privileged Authentication Administrator", "Global Administrator"]


def test_missing_permission_or_licence_disables_only_that_area(fresh_emulator: Any, control_of: Any, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    emu = fresh_emulator(size="small", seed=1, tenants=2)
    ctl = control_of(emu)
    ctl.roles(revoke=["RoleManagement.Read.Directory"])
    result, _, view = _synced(emu, tmp_path / "a", monkeypatch)
    assert result.areas["roles"].outcome == "disabled"
    assert "RoleManagement.Read.Directory" in (result.areas["roles"].message or "")
    assert {a: result.areas[a].outcome for a in ("auth_methods", "licenses", "risk", "users")} == {
        "auth_methods": "full", "licenses": "full", "risk": "full", "users": "full"}
    ex = account_examples(emu.tenant())
    answer = check_reset_eligibility(view, ex["global_admin"])
    assert answer["verdict"] == "unknown" and answer["roles"] is None and answer["rolesThatMayReset"] is None
    assert "isAdmin" in answer["reasons"][1], "the registration report still tells a privileged account"
    assert "isAdmin" not in " ".join(check_reset_eligibility(view, ex["sspr_ready_user"])["reasons"])
    state = check_account_state(view, ex["global_admin"])
    assert state["roles"] is None and "AREA_DISABLED" in _codes(state) and state["authentication"]["isAdmin"] is True

    # each other account area's own permission: the registration report, the licences, the risky users
    ctl.roles(grant=["RoleManagement.Read.Directory"],
              revoke=["AuditLog.Read.All", "LicenseAssignment.Read.All", "IdentityRiskyUser.Read.All"])
    result, _, view = _synced(emu, tmp_path / "a2", monkeypatch)
    for area, grant in (("auth_methods", "AuditLog.Read.All"), ("licenses", "LicenseAssignment.Read.All"),
                        ("risk", "IdentityRiskyUser.Read.All")):
        assert result.areas[area].outcome == "disabled", area
        assert f"grant {grant}" in (result.areas[area].message or ""), (area, result.areas[area].message)
    assert {a: result.areas[a].outcome for a in ("roles", "users", "groups")} == dict.fromkeys(("roles", "users", "groups"), "full")
    state = check_account_state(view, ex["licence_CountViolation_user"])
    assert state["authentication"] is None and state["risk"] is None
    # the assigned licences are known from the user object; their products and assignment states are not: unknown
    assert state["licenses"] and all(r["name"] is None and r["state"] is None and r["error"] is None for r in state["licenses"])
    assert "LICENSE_ERROR" not in _codes(state)
    disabled = " ".join(f["message"] for f in state["findings"] if f["code"] == "AREA_DISABLED")
    assert all(grant in disabled for grant in ("AuditLog.Read.All", "LicenseAssignment.Read.All", "IdentityRiskyUser.Read.All"))
    assert state["accountEnabled"] is True and state["roles"] is not None, "the rest still answers"
    assert check_reset_eligibility(view, ex["global_admin"])["verdict"] == "not_by_helpdesk"
    ctl.roles(grant=["AuditLog.Read.All", "LicenseAssignment.Read.All", "IdentityRiskyUser.Read.All"])

    # tenant 1 has no premium licence: registration report and risk are refused, roles answer without PIM
    result, _, view = _synced(emu, tmp_path / "b", monkeypatch, i=1)
    assert result.areas["auth_methods"].outcome == "disabled"
    assert "Entra ID P1/P2" in (result.areas["auth_methods"].message or "")
    assert result.areas["risk"].outcome == "disabled" and "P2" in (result.areas["risk"].message or "")
    assert result.areas["roles"].outcome == "full" and "AadPremiumLicenseRequired" in (result.areas["roles"].message or "")
    ex1 = account_examples(emu.tenant(1))
    state = check_account_state(view, ex1["global_admin"])
    assert state["authentication"] is None and state["risk"] is None and state["roles"]["eligible"] is None
    assert check_reset_eligibility(view, ex1["global_admin"])["verdict"] == "not_by_helpdesk"


def test_role_changes_show_after_the_next_sync(fresh_emulator: Any, control_of: Any, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    emu = fresh_emulator(size="small", seed=1)
    ctl = control_of(emu)
    ex = account_examples(emu.tenant())
    uid = ex["sspr_ready_user"]
    _, settings = write_config(emu, tmp_path, monkeypatch)
    store = MirrorStore(settings.server.cache_dir)
    assert run_sync(settings, store).ok
    view = DirectoryView.build(store.load_snapshot(settings.tenants[0].name))  # type: ignore[arg-type]
    assert check_reset_eligibility(view, uid)["verdict"] == "self_service"
    ctl.mutate([{"op": "assign_role", "principal": uid, "role": GLOBAL_ADMIN},
                {"op": "set_risk", "id": ex["no_sspr_user"], "riskLevel": "high"}])
    second = run_sync(settings, store)
    assert second.areas["roles"].outcome == "full"
    assert second.areas["risk"].outcome == "unchanged"  # refreshed at most every 15 minutes
    view = DirectoryView.build(store.load_snapshot(settings.tenants[0].name))  # type: ignore[arg-type]
    assert check_reset_eligibility(view, uid)["verdict"] == "not_by_helpdesk"
    assert run_sync(settings, store, full=True).areas["risk"].outcome == "full"  # `sync --full` refreshes it at once
    view = DirectoryView.build(store.load_snapshot(settings.tenants[0].name))  # type: ignore[arg-type]
    assert check_reset_eligibility(view, ex["no_sspr_user"])["verdict"] == "escalate"


# ------------------------------------------------------------------ through a real MCP client (memory and stdio)

@asynccontextmanager
async def connect(transport: str, env: Any) -> AsyncIterator[Client]:
    if transport == "memory":
        store = MirrorStore(env.cache_dir)
        async with Client(create_server(env.settings, views=ViewProvider.from_settings(env.settings, store))) as client:
            yield client
        store.close()
    else:
        params = StdioServerParameters(command=str(ENTRA_MCP), args=["--config", str(env.config_path), "serve", "--no-sync"],
                                       env=env.subprocess_env())
        async with Client(params, read_timeout_seconds=30) as client:
            yield client


async def call(client: Client, tool: str, **args: Any) -> dict[str, Any]:
    with anyio.fail_after(30):
        result = await client.call_tool(tool, args)
    assert not result.is_error, result.content[0].text  # type: ignore[union-attr]
    assert result.structured_content is not None
    return result.structured_content


async def call_error(client: Client, tool: str, **args: Any) -> str:
    with anyio.fail_after(30):
        result = await client.call_tool(tool, args)
    assert result.is_error
    text: str = result.content[0].text  # type: ignore[union-attr]
    assert "Traceback" not in text
    return text


@pytest.mark.anyio
@pytest.mark.parametrize("transport", ["memory", "stdio"])
async def test_reset_eligibility_through_mcp(transport: str, server_env: Any, request: pytest.FixtureRequest) -> None:
    t = server_env.tenant
    ex, base = account_examples(t), examples(t)
    async with connect(transport, server_env) as client:
        tools = {tool.name: tool for tool in (await client.list_tools()).tools}
        schema = tools["check_reset_eligibility"].input_schema
        assert schema["required"] == ["user"] and {"chat_session", "desk_role", "tenant"} <= set(schema["properties"])
        ga = await call(client, "check_reset_eligibility", user=t.users[ex["global_admin"]]["userPrincipalName"])
        assert ga["verdict"] == "not_by_helpdesk" and ga["asOf"] and "RESET_NOT_BY_HELPDESK" in _codes(ga)
        grp = await call(client, "check_reset_eligibility", user=ex["role_group_member"])
        assert grp["verdict"] == "not_by_helpdesk" and grp["roles"]["active"][0]["via"]["id"] == ex["role_group"]
        assert (await call(client, "check_reset_eligibility", user=ex["sspr_ready_user"]))["verdict"] == "self_service"
        assert (await call(client, "check_reset_eligibility", user=base["guest_accepted"]))["verdict"] == "guest_home_tenant"
        for who, verdict in ((ex["no_sspr_user"], "helpdesk_cloud"), (base["synced_user"], "on_premises"),
                             (ex["risky_user"], "escalate"), (base["ceo"], "escalate")):
            assert (await call(client, "check_reset_eligibility", user=who))["verdict"] == verdict, (who, verdict)
        # a chat session on a server without sign-in cannot verify anyone: escalate, and the token is never echoed
        token = "opaque-session-token-123"
        unverified = await call(client, "check_reset_eligibility", user=ex["sspr_ready_user"], chat_session=token)
        assert unverified["verdict"] == "escalate" and unverified["callerVerified"] is False
        assert token not in str(unverified)
        assert "desk_role" in await call_error(client, "check_reset_eligibility", user=ex["sspr_ready_user"], desk_role="Janitor")
        state = await call(client, "check_account_state", user=ex["licence_CountViolation_user"])
        assert state["licenses"][0]["error"] == "CountViolation" and "LICENSE_ERROR" in _codes(state)
        assert state["authentication"] is not None and state["risk"]["riskState"] == "none"
