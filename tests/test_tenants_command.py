"""`entra-mcp tenants list|add|check` against the emulator: three customer tenants, one multi-tenant app consented in
two of them (the second tenant has no Entra ID P1/P2 licence)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import anyio
import pytest

from entra_mcp.cli import main
from entra_mcp.config import load_settings
from entra_mcp.devtenant.customers import customer_state, provider_config, revoke_consent
from entra_mcp.devtenant.server import RunningEmulator, run_emulator
from entra_mcp.mirror.store import MirrorStore
from entra_mcp.sync.engine import sync_tenant


@pytest.fixture(scope="module")
def bed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    root = tmp_path_factory.mktemp("tenants-cmd")
    state, app = customer_state(3, "small", seed=5)
    third = list(state.tenants.values())[2]
    revoke_consent(third, app.client_id)  # the customer's admin has not consented yet
    with run_emulator(state=state, state_dir=root / "emu") as emu:
        yield {"emu": emu, "app": app, "root": root}


def _config(bed: dict[str, Any], tmp_path: Path) -> Path:
    defaults, entries = provider_config(bed["emu"], bed["app"], ["cust-0", "cust-1"], secret_env="PROVIDER_SECRET_T",
                                        sync={"sign_in_activity": False})
    (tmp_path / "tenants.toml").write_text(entries, encoding="utf-8")
    config = tmp_path / "config.toml"
    config.write_text(f'tenants_file = "tenants.toml"\n[server]\ncache_dir = {json.dumps(str(tmp_path / "cache"))}\n{defaults}',
                      encoding="utf-8")
    return config


@pytest.fixture
def config(bed: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("PROVIDER_SECRET_T", bed["app"].secrets[0].value)
    return _config(bed, tmp_path)


def test_add_writes_the_entry_and_prints_the_admin_consent_link(bed: dict[str, Any], config: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    emu: RunningEmulator = bed["emu"]
    tid = emu.tenant(2).tenant_id
    assert main(["--config", str(config), "tenants", "add", "cust-2", tid, "--redirect-uri", "https://provider.example/consented"]) == 0
    out = capsys.readouterr().out
    link = next(w for w in out.split() if "/adminconsent?" in w)
    parts = urlsplit(link)
    assert f"{parts.scheme}://{parts.netloc}" == emu.login_url and parts.path == f"/{tid}/v2.0/adminconsent"
    query = parse_qs(parts.query)
    assert query["client_id"] == [bed["app"].client_id] and query["scope"] == [f"{emu.graph_url}/.default"]
    assert query["redirect_uri"] == ["https://provider.example/consented"] and query["state"][0]
    settings = load_settings(config)
    assert [t.name for t in settings.tenants] == ["cust-0", "cust-1", "cust-2"]
    assert settings.tenant("cust-2").client_id == bed["app"].client_id  # the shared app, from [tenant_defaults]
    # refused: a taken name, a tenant already configured, an id that is neither GUID nor domain; the file is unchanged
    before = (config.parent / "tenants.toml").read_text(encoding="utf-8")
    for args, expected in ((["CUST-0", "x.example"], "already configured"), (["other", tid], "already configured as 'cust-2'"),
                           (["other", "not an id"], "neither a tenant id"), (["bad name", "y.example"], "tenant name")):
        assert main(["--config", str(config), "tenants", "add", *args]) == 2
        assert expected in capsys.readouterr().err
    assert (config.parent / "tenants.toml").read_text(encoding="utf-8") == before


def test_global_cloud_link_uses_that_clouds_hosts(tmp_path: Path) -> None:
    from entra_mcp.commands.tenants import admin_consent_url
    from entra_mcp.config import TenantSettings

    t = TenantSettings(name="gov", tenant_id="contoso.onmicrosoft.us", client_id="c", client_secret_env="X", cloud="usgov")
    url = admin_consent_url(t, "https://app.example/", state="s")
    assert url.startswith("https://login.microsoftonline.us/contoso.onmicrosoft.us/v2.0/adminconsent?client_id=c&")
    assert "scope=https%3A%2F%2Fgraph.microsoft.us%2F.default" in url


def test_check_probes_every_tenant_and_names_the_one_without_consent(bed: dict[str, Any], config: Path,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    main(["--config", str(config), "tenants", "add", "cust-2", bed["emu"].tenant(2).tenant_id])
    capsys.readouterr()
    assert main(["--config", str(config), "tenants", "check", "--concurrency", "3"]) == 1
    out = capsys.readouterr().out
    progress = [ln for ln in out.splitlines() if ln.startswith("[")]
    assert len(progress) == 3 and {ln.split("] ")[1].split(":")[0] for ln in progress} == {"cust-0", "cust-1", "cust-2"}
    assert "cust-0: ok" in out, out
    # tenant #1 of the emulator has no Entra ID P1/P2: its premium areas are named with the licence they need
    assert "cust-1: PROBLEM: conditional_access" in out and "Entra ID P1 licence" in out
    assert "2 of 3 tenants have problems" in out and "cust-2: PROBLEM: token: FAILED" in out and "AADSTS7000229" in out
    assert bed["app"].secrets[0].value not in out


def test_list_shows_each_tenants_mirror_state(bed: dict[str, Any], config: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    settings = load_settings(config)
    store = MirrorStore(settings.server.cache_dir)
    try:
        result = anyio.run(sync_tenant, settings.tenant("cust-1"), store)
        assert result.error is None
    finally:
        store.close()
    assert main(["--config", str(config), "tenants", "list", "--json"]) == 0
    rows = {r["tenant"]: r for r in json.loads(capsys.readouterr().out)["tenants"]}
    assert rows["cust-1"]["synced"] and rows["cust-1"]["users"] == len(bed["emu"].tenant(1).users)
    assert not rows["cust-0"]["synced"] and rows["cust-0"]["configuredIn"] == "tenants_file"
    assert main(["--config", str(config), "tenants", "list"]) == 0
    assert "2 tenants: 1 synced, 1 not yet, 0 failing" in capsys.readouterr().out


def test_devtenant_customers_prints_a_working_multi_tenant_config(tmp_path: Path) -> None:
    """`entra-mcp devtenant --customers 3`: its printed config (one app in [tenant_defaults]) checks out with
    `entra-mcp tenants check` against it."""
    import os
    import shlex
    import subprocess

    from _harness import ENTRA_MCP, stop_process, wait_until

    out, err = tmp_path / "devtenant.out", tmp_path / "devtenant.err"
    with open(out, "wb") as o, open(err, "wb") as e:
        proc = subprocess.Popen([ENTRA_MCP, "devtenant", "--port", "0", "--customers", "3", "--state-dir",
                                 str(tmp_path / "emu")], stdout=o, stderr=e, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        wait_until(lambda: "\nready\n" in "\n" + err.read_text(errors="replace"), timeout=120,
                   what="devtenant --customers ready", proc=proc, log_path=err)
        exports = [ln for ln in err.read_text().splitlines() if ln.startswith("export ")]
        env = {**os.environ, **dict(shlex.split(x)[1].split("=", 1) for x in exports)}
        config = tmp_path / "config.toml"
        config.write_text(f"[server]\ncache_dir = {json.dumps(str(tmp_path / 'cache'))}\n" + out.read_text(), encoding="utf-8")
        settings = load_settings(config)
        assert len(settings.tenants) == 3 and len({t.client_id for t in settings.tenants}) == 1
        check = subprocess.run([ENTRA_MCP, "--config", str(config), "tenants", "check"], env=env, capture_output=True,
                               text=True, timeout=300)
        assert "[3/3" in check.stdout and f"{settings.tenants[0].name}: ok" in check.stdout, check.stdout + check.stderr
    finally:
        stop_process(proc)


def test_sync_of_many_tenants_runs_at_most_max_concurrent_syncs_at_once(bed: dict[str, Any], config: Path,
                                                                        capsys: pytest.CaptureFixture[str]) -> None:
    """`entra-mcp sync` of every tenant keeps [scheduler] max_concurrent_syncs: with 1, the two consented tenants'
    Graph requests (the emulator's own log) never interleave."""
    emu: RunningEmulator = bed["emu"]
    config.write_text(config.read_text(encoding="utf-8").replace("[server]", "[scheduler]\nmax_concurrent_syncs = 1\n\n[server]", 1),
                      encoding="utf-8")
    emu.runtime.requests.reset()
    assert main(["--config", str(config), "sync"]) == 0
    spans = sorted((min(s), max(s)) for s in emu.runtime.requests.stamps.values() if s)
    assert len(spans) == 2 and spans[0][1] <= spans[1][0], spans


def test_serve_follows_the_tenants_file_without_a_restart(bed: dict[str, Any], tmp_path: Path) -> None:
    """A running `serve` picks up a tenant added to its tenants file (synced and answered), a removed one (answered
    as unknown, no longer synced), and refuses a broken file with the error naming file, entry and key while the
    running set stays; SIGHUP reads the file at once."""
    import os
    import signal

    import httpx
    from mcp import Client
    from mcp.client.streamable_http import streamable_http_client

    from _harness import ServeProcess, free_port, wait_until
    from entra_mcp.devtenant.generate import examples

    emu: RunningEmulator = bed["emu"]
    _, both = provider_config(emu, bed["app"], ["cust-0", "cust-1"])
    first, second = ["[[tenants]]" + e for e in both.split("[[tenants]]")[1:]]
    tenants_file = tmp_path / "tenants.toml"
    config = _config(bed, tmp_path)
    tenants_file.write_text(first, encoding="utf-8")
    port = free_port()
    config.write_text(config.read_text(encoding="utf-8").replace(
        "[server]\n", f"[scheduler]\ntenants_file_poll_seconds = 0.3\n\n[server]\nport = {port}\n", 1), encoding="utf-8")
    base = f"http://127.0.0.1:{port}"
    server = ServeProcess(config, env={**os.environ, "PROVIDER_SECRET_T": bed["app"].secrets[0].value},
                          log_path=tmp_path / "serve.log", base=base)

    def synced() -> dict[str, bool]:
        return {t["tenant"]: t["synced"] for t in httpx.get(f"{base}/healthz", timeout=10).json()["tenants"]}

    async def call(tenant: str, query: str) -> tuple[bool, Any]:
        async with Client(streamable_http_client(f"{base}/mcp"), mode="legacy") as client:
            r = await client.call_tool("lookup_user", {"query": query, "tenant": tenant})
            return bool(r.is_error), r.content[0].text if r.is_error else r.structured_content  # type: ignore[union-attr]

    ceo1 = emu.tenant(1).users[examples(emu.tenant(1))["ceo"]]["userPrincipalName"]
    try:
        server.wait_ready(timeout=90)
        wait_until(lambda: synced() == {"cust-0": True}, timeout=90, what="cust-0 synced", proc=server.proc,
                   log_path=server.log_path)
        tenants_file.write_text(first + second, encoding="utf-8")  # added
        wait_until(lambda: synced() == {"cust-0": True, "cust-1": True}, timeout=90, what="the added cust-1 synced",
                   proc=server.proc, log_path=server.log_path)
        err, answer = anyio.run(call, "cust-1", ceo1)
        assert not err and answer["matches"][0]["userPrincipalName"] == ceo1

        tenants_file.write_text(second, encoding="utf-8")  # cust-0 removed
        wait_until(lambda: set(synced()) == {"cust-1"}, timeout=30, what="cust-0 gone from /healthz", proc=server.proc,
                   log_path=server.log_path)
        err, text = anyio.run(call, "cust-0", "anyone")
        assert err and "unknown tenant 'cust-0'" in text
        wait_until(lambda: "tenant cust-0: no longer in the tenants: not synced any more" in server.log(), timeout=30,
                   what="the scheduler dropping cust-0", proc=server.proc, log_path=server.log_path)

        runs = server.log().count("tenant cust-1: sync done")
        tenants_file.write_text(second + "[tenants.sync]\ninterval_minutes = 30\n", encoding="utf-8")  # changed
        wait_until(lambda: server.log().count("tenant cust-1: sync done") > runs, timeout=60,
                   what="the changed cust-1 synced again with its new settings", proc=server.proc, log_path=server.log_path)
        assert "tenant cust-1: its settings changed: synced now with the new ones" in server.log()

        broken = second + '[[tenants]]\nname = "cust-9"\ntenant_idd = "x"\n'
        tenants_file.write_text(broken, encoding="utf-8")
        refused = "the changed tenants were not applied, the 1 tenants loaded before are still served"
        wait_until(lambda: refused in server.log(), timeout=30, what="the broken tenants file refused", proc=server.proc,
                   log_path=server.log_path)
        line = next(x for x in server.log().splitlines() if refused in x)
        assert str(tenants_file) in server.log() and "tenant_idd" in server.log(), line
        assert "Traceback" not in server.log()
        err, answer = anyio.run(call, "cust-1", ceo1)  # the running set stays
        assert not err and set(synced()) == {"cust-1"}
        before = server.log().count(refused)
        server.proc.send_signal(signal.SIGHUP)  # read at once, and said again
        wait_until(lambda: server.log().count(refused) > before, timeout=30, what="SIGHUP re-reading the tenants file",
                   proc=server.proc, log_path=server.log_path)
        assert server.proc.poll() is None
    finally:
        server.stop()


def test_consent_without_one_permission_disables_its_areas_with_the_reason(bed: dict[str, Any], config: Path,
                                                                         capsys: pytest.CaptureFixture[str]) -> None:
    """Admin consent is per permission (an appRoleAssignment to Microsoft Graph each): a customer that left out
    AuditLog.Read.All gets tokens without it in `roles`, Graph refuses what needs it with 403
    Authorization_RequestDenied, and the product disables exactly those areas with the reason while the rest
    syncs; `tenants check` names the missing permission for that tenant only."""
    import base64

    import httpx

    from entra_mcp.devtenant.customers import app_roles, consent, provider_principal, withhold_permission

    emu: RunningEmulator = bed["emu"]
    app = bed["app"]
    tenant = emu.tenant(0)
    assert withhold_permission(tenant, app.client_id, "AuditLog.Read.All")
    try:
        token = httpx.post(f"{emu.login_url}/{tenant.tenant_id}/oauth2/v2.0/token", verify=str(emu.ca_bundle), timeout=30,
                           data={"grant_type": "client_credentials", "client_id": app.client_id,
                                 "client_secret": app.secrets[0].value, "scope": f"{emu.graph_url}/.default"}).json()["access_token"]
        payload = token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        assert sorted(claims["roles"]) == sorted(set(app.granted_roles) - {"AuditLog.Read.All"})
        assert sorted(claims["roles"]) == app_roles(tenant, app)

        assert main(["--config", str(config), "tenants", "check", "--tenant", "cust-0"]) == 1
        out = capsys.readouterr().out
        assert "cust-0: PROBLEM:" in out and "AuditLog.Read.All" in out, out
        assert "Authorization_RequestDenied" in out, out

        settings = load_settings(config)
        store = MirrorStore(settings.server.cache_dir)
        try:
            result = anyio.run(sync_tenant, settings.tenant("cust-0"), store)
            areas = store.area_status("cust-0")
        finally:
            store.close()
        assert result.error is None, result.error
        refused = {a for a, st in areas.items() if not st.enabled and "Authorization_RequestDenied" in (st.disabled_reason or "")}
        assert "auth_methods" in refused and "users" not in refused, {a: st.disabled_reason for a, st in areas.items()}
        assert all("AuditLog.Read.All" in (areas[a].disabled_reason or "") for a in refused)
        assert areas["users"].last_success is not None and areas["groups"].last_success is not None
    finally:
        home = next(t for t in emu.tenants() if app.client_id in t.registrations)
        consent(tenant, app, home)  # granted again: the other tests see the full consent
        assert provider_principal(tenant, app.client_id) is not None and "AuditLog.Read.All" in (app_roles(tenant, app) or [])
