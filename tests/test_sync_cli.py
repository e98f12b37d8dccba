"""`entra-mcp sync`, `status`, `doctor` against the emulator: exit codes, messages, no secrets, crash safety."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import anyio
import pytest

from entra_mcp.cli import main
from entra_mcp.mirror.store import MirrorStore
from entra_mcp.sync.scheduler import next_delay, run_scheduler
from tests._sync_fixtures import assert_mirror_matches, control_of, write_config  # noqa: F401

pytestmark = pytest.mark.timeout(120)


def test_sync_status_doctor_happy_path(fresh_emulator: Any, control_of: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    emu = fresh_emulator(size="small", seed=11)
    ctl = control_of(emu)
    ctl.roles(grant=["Domain.Read.All"])
    path, settings = write_config(emu, tmp_path, monkeypatch)
    secret = emu.secret_env()["DEVTENANT_CLIENT_SECRET"]

    assert main(["--config", str(path), "sync"]) == 0
    err = capsys.readouterr().err
    assert "tenant contoso: done" in err and "users" in err and secret not in err
    assert_mirror_matches(MirrorStore(settings.server.cache_dir).load_snapshot("contoso"), ctl.snapshot())

    assert main(["--config", str(path), "status", "--json"]) == 0
    out = capsys.readouterr().out
    assert secret not in out
    report = json.loads(out)
    t = report["tenants"][0]
    assert t["name"] == "contoso" and t["synced"] is True and t["version"] > 0
    users = t["areas"]["users"]
    assert set(users) >= {"enabled", "disabledReason", "lastSuccess", "lastError", "objectCount", "ageSeconds"}
    assert users["enabled"] is True and users["objectCount"] == len(ctl.snapshot()["users"]) and users["lastSuccess"].endswith("Z")
    assert t["areas"]["domains"]["enabled"] is True and t["areas"]["domains"]["objectCount"] >= 1
    assert t["areas"]["groups"]["memberships"] > 0
    assert t["lastRun"]["ok"] is True and t["lastRun"]["requests"] >= 7 and t["lastRun"]["byArea"]["users"] >= 1

    assert main(["--config", str(path), "status"]) == 0
    text = capsys.readouterr().out
    assert "tenant contoso" in text and "users" in text and "ok," in text and "last run" in text

    assert main(["--config", str(path), "doctor"]) == 0
    out = capsys.readouterr().out
    assert "token: ok" in out and "all good" in out and secret not in out

    ctl.roles(revoke=["Application.Read.All"])
    assert main(["--config", str(path), "doctor"]) == 1
    out = capsys.readouterr().out
    assert "applications" in out and "MISSING" in out and "grant Application.Read.All" in out

    # a sync with a missing permission still exits 0 and names the disabled areas
    assert main(["--config", str(path), "sync"]) == 0
    err = capsys.readouterr().err
    assert "disabled for missing permissions: applications, service_principals, app_role_assignments" in err


def test_bad_secret_unknown_tenant_wrong_host_missing_variable(emulator: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    path, _ = write_config(emulator, tmp_path, monkeypatch)
    real = emulator.secret_env()["DEVTENANT_CLIENT_SECRET"]

    monkeypatch.setenv("DEVTENANT_CLIENT_SECRET", "wrong-secret-value-123")
    for cmd in (["sync"], ["doctor"]):
        assert main(["--config", str(path), *cmd]) == 1
        cap = capsys.readouterr()
        text = cap.out + cap.err
        assert "AADSTS7000215" in text and "client_secret_env" in text
        assert "wrong-secret-value-123" not in text and real not in text
        assert "Traceback" not in text
    # status shows the refusal as each area's last error, and never a secret
    for cmd in (["status"], ["status", "--json"]):
        assert main(["--config", str(path), *cmd]) == 0
        out = capsys.readouterr().out
        assert "AADSTS7000215" in out and "wrong-secret-value-123" not in out and real not in out
    assert "not synced yet" in (main(["--config", str(path), "status"]), capsys.readouterr().out)[1]
    monkeypatch.setenv("DEVTENANT_CLIENT_SECRET", real)

    text = path.read_text()
    tid = emulator.tenant().tenant_id
    bad_tenant = tmp_path / "bad-tenant.toml"
    bad_tenant.write_text(text.replace(tid, "00000000-1111-2222-3333-444444444444"))
    assert main(["--config", str(bad_tenant), "sync"]) == 1
    err = capsys.readouterr().err
    assert "AADSTS90002" in err and "tenant_id" in err

    cid = emulator.sync_app().client_id
    bad_app = tmp_path / "bad-app.toml"
    bad_app.write_text(text.replace(cid, "99999999-8888-7777-6666-555555555555"))
    assert main(["--config", str(bad_app), "sync"]) == 1
    err = capsys.readouterr().err
    assert "AADSTS700016" in err and "client_id" in err

    bad_host = tmp_path / "bad-host.toml"
    bad_host.write_text(text.replace(f'login_url = "{emulator.login_url}"', 'login_url = "https://127.0.0.1:9"'))
    assert main(["--config", str(bad_host), "sync"]) == 1
    err = capsys.readouterr().err
    assert "cannot reach the login host https://127.0.0.1:9" in err and "login_url" in err

    no_ca = tmp_path / "no-ca.toml"
    no_ca.write_text("\n".join(line for line in text.splitlines() if not line.startswith("ca_bundle")))
    assert main(["--config", str(no_ca), "sync"]) == 1
    err = capsys.readouterr().err
    assert "TLS certificate" in err and "ca_bundle" in err

    monkeypatch.delenv("DEVTENANT_CLIENT_SECRET")
    for cmd in (["sync"], ["doctor"]):
        assert main(["--config", str(path), *cmd]) == 2
        err = capsys.readouterr().err
        assert "DEVTENANT_CLIENT_SECRET" in err


def test_certificate_credential(emulator: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    cert = emulator.sync_app().certificates[0]
    pem = tmp_path / "sync.pem"
    pem.write_bytes(cert.certificate_pem + cert.private_key_pem)
    path, _ = write_config(emulator, tmp_path, monkeypatch)
    path.write_text(path.read_text().replace('client_secret_env = "DEVTENANT_CLIENT_SECRET"', f'client_certificate_path = "{pem}"'))
    assert main(["--config", str(path), "doctor"]) in (0, 1)
    out = capsys.readouterr().out
    assert "token: ok" in out


def _spawn_sync(path: Path, *extra: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "entra_mcp", "--config", str(path), "sync", *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def test_kill_9_mid_run_keeps_last_good_state(fresh_emulator: Any, control_of: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    emu = fresh_emulator(size="small", seed=12)
    ctl = control_of(emu)
    path, settings = write_config(emu, tmp_path, monkeypatch)
    store = MirrorStore(settings.server.cache_dir)
    assert main(["--config", str(path), "sync"]) == 0
    good = store.load_snapshot("contoso")
    assert good is not None
    truth_before = ctl.snapshot()

    # changes, then a slow full run (small pages, latency) killed as soon as it shows progress
    ctl.mutate([{"op": "create_user", "set": {"displayName": f"Late {n}", "userPrincipalName": f"late{n}@{emu.tenant().domain}"}} for n in range(10)])
    ctl.faults(latency_ms=60, delta_users_page_size=5, delta_groups_page_size=1, delta_groups_page_units=3)
    for attempt in range(2):  # once mid-pull, once after the users area committed while groups still page
        proc = _spawn_sync(path, "--full")
        assert proc.stderr is not None
        deadline = time.monotonic() + 60
        seen = ""
        while time.monotonic() < deadline:
            line = proc.stderr.readline()
            seen += line
            if (attempt == 0 and "progress:" in line) or (attempt == 1 and "users full:" in line):
                break
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        assert proc.returncode == -signal.SIGKILL or attempt == 1
        snap = MirrorStore(settings.server.cache_dir).load_snapshot("contoso")
        assert snap is not None
        if attempt == 0:
            assert snap.version == good.version
            assert_mirror_matches(snap, truth_before)
    ctl.faults(latency_ms=0)
    assert main(["--config", str(path), "sync"]) == 0
    assert_mirror_matches(MirrorStore(settings.server.cache_dir).load_snapshot("contoso"), ctl.snapshot())
    leftovers = list((tmp_path / "cache" / "contoso").rglob("*.val"))
    # every value file on disk belongs to the committed state (swept after the crash)
    assert len(leftovers) <= 7 * 256


def test_second_writer_is_refused(fresh_emulator: Any, control_of: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    emu = fresh_emulator(size="small", seed=13)
    path, settings = write_config(emu, tmp_path, monkeypatch)
    store = MirrorStore(settings.server.cache_dir)
    with store.writer("contoso"):
        assert main(["--config", str(path), "sync"]) == 1
        err = capsys.readouterr().err
        assert "another sync of tenant contoso is running" in err


def test_scheduler_syncs_every_tenant_and_stops(fresh_emulator: Any, control_of: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    emu = fresh_emulator(size="small", seed=14, tenants=2)
    ctl = control_of(emu)
    _, settings = write_config(emu, tmp_path, monkeypatch, tenant_index=None)
    store = MirrorStore(settings.server.cache_dir)
    done: list[str] = []

    async def scenario() -> None:
        stop = anyio.Event()

        def on_result(r: Any) -> None:
            done.append(r.tenant)
            if {"contoso", "fabrikam"} <= set(done):
                stop.set()

        with anyio.fail_after(60):
            await run_scheduler(settings, store, stop_event=stop, on_result=on_result)

    anyio.run(scenario)
    assert set(done) == {"contoso", "fabrikam"}
    for i, name in enumerate(("contoso", "fabrikam")):
        assert_mirror_matches(store.load_snapshot(name), ctl.snapshot(i))
    delays = [next_delay(15, lambda: x) for x in (0.0, 0.5, 1.0)]
    assert delays == pytest.approx([810.0, 900.0, 990.0])


def test_sync_prepares_the_servers_index(emulator: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """`entra-mcp sync` leaves the server's index of the mirror it committed in the view cache: the next server start
    loads it instead of indexing the mirror."""
    from entra_mcp.identity.view import DirectoryView
    from entra_mcp.views import ViewCache, ViewProvider

    path, settings = write_config(emulator, tmp_path, monkeypatch)
    assert main(["--config", str(path), "sync"]) == 0
    assert "index for the server prepared" in capsys.readouterr().err
    store = MirrorStore(settings.server.cache_dir)
    version = store.version("contoso")
    cache = ViewCache(Path(settings.server.cache_dir) / ".server-views")
    prepared = cache.load("contoso", version, DirectoryView)
    assert prepared is not None and prepared.snapshot.version == version
    written = cache.path("contoso").stat().st_mtime_ns

    views = ViewProvider.from_settings(settings, store, cache=True, check_interval=0)  # asks the store on every call
    views.warm()
    assert "index loaded from the view cache" in capsys.readouterr().err
    fresh = DirectoryView.build(store.load_snapshot("contoso"))  # type: ignore[arg-type]
    held = views.current().view
    upn = next(iter(fresh.snapshot.users.values()))["userPrincipalName"]
    assert held.exact_users(upn) == fresh.exact_users(upn) and held.exact == fresh.exact and held.member_of == fresh.member_of

    assert main(["--config", str(path), "sync"]) == 0  # a delta run that changed no object: nothing to index again
    assert "index for the server prepared" not in capsys.readouterr().err
    assert store.version("contoso") == version and cache.path("contoso").stat().st_mtime_ns == written
    fresh_as_of = store.freshness("contoso").as_of  # type: ignore[union-attr]
    assert fresh_as_of is not None and fresh_as_of > prepared.snapshot.as_of
    assert views.current().snapshot.as_of == fresh_as_of and views.current().view.exact is held.exact  # same index

    cache.path("contoso").unlink()  # as after an upgrade: no index of this version built by this code
    assert main(["--config", str(path), "sync"]) == 0  # nothing changed, but the next start would be a cold one
    assert "index for the server prepared" in capsys.readouterr().err
    assert store.version("contoso") == version and cache.holds("contoso", version, DirectoryView)
    store.close()
