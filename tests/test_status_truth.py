"""Status tells the truth (issue 16): an error a later successful run got past is history, not news; an error every
area shares is said once, for the tenant; disabled areas come with a finding. Checked on the one rendering
(identity/status.py) and through `entra-mcp status` / `status --json` after real syncs against the emulator."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from _identity_fixtures import NOW, areas, make_snapshot

from entra_mcp.cli import main
from entra_mcp.identity.status import sync_status
from entra_mcp.mirror.snapshot import AreaStatus
from entra_mcp.mirror.store import MirrorStore
from tests._sync_fixtures import write_config


def test_an_error_older_than_the_last_success_is_not_shown() -> None:
    healed = AreaStatus(enabled=True, last_success=NOW - timedelta(minutes=5), last_error="Graph 503",
                        last_error_at=NOW - timedelta(hours=2), mode="delta")
    failing = AreaStatus(enabled=True, last_success=NOW - timedelta(hours=3), last_error="Graph 504",
                         last_error_at=NOW - timedelta(minutes=4), mode="delta")
    answer = sync_status(make_snapshot(area_status=areas(users=healed, groups=failing)), now=NOW)
    assert answer["areas"]["users"]["lastError"] is None and answer["areas"]["users"]["lastErrorAt"] is None
    assert answer["areas"]["groups"]["lastError"] == "Graph 504"
    assert answer["areas"]["groups"]["lastErrorAt"] == "2026-06-01T11:56:00Z"
    assert "lastError" not in answer  # one failing area: said where it happened


def test_the_same_error_in_every_failing_area_is_said_once_for_the_tenant() -> None:
    refused = "AADSTS7000215: invalid client secret"
    status = {name: AreaStatus(enabled=True, last_error=refused, last_error_at=NOW - timedelta(minutes=1))
              for name in areas()}
    status["domains"] = AreaStatus(enabled=False, disabled_reason="turned off in config")
    answer = sync_status(make_snapshot(area_status=status, as_of=None), now=NOW)
    assert answer["lastError"] == refused and answer["lastErrorAt"] == "2026-06-01T11:59:00Z"
    assert all(a["lastError"] is None for a in answer["areas"].values())
    disabled = [f for f in answer["findings"] if f["code"] == "AREA_DISABLED"]
    assert len(disabled) == 1 and "domains (turned off in config)" in disabled[0]["message"]


def test_no_disabled_area_no_finding() -> None:
    assert {f["code"] for f in sync_status(make_snapshot(), now=NOW)["findings"]} == set()


@pytest.mark.timeout(180)
def test_status_after_a_failed_then_a_good_sync(fresh_emulator: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    """sync ok -> sync refused (wrong secret) -> status names the refusal once -> sync ok -> status shows no error
    anywhere (before: every area kept the refusal as its `lastError` forever)."""
    emu = fresh_emulator(size="small", seed=5)
    path, settings = write_config(emu, tmp_path, monkeypatch)
    real = emu.secret_env()["DEVTENANT_CLIENT_SECRET"]
    assert main(["--config", str(path), "sync"]) == 0
    monkeypatch.setenv("DEVTENANT_CLIENT_SECRET", "wrong-secret-value-123")
    assert main(["--config", str(path), "sync"]) == 1
    capsys.readouterr()

    assert main(["--config", str(path), "status", "--json"]) == 0
    tenant = json.loads(capsys.readouterr().out)["tenants"][0]
    assert "AADSTS7000215" in tenant["lastError"] and tenant["lastErrorAt"].endswith("Z")
    assert all(a["lastError"] is None for a in tenant["areas"].values())
    assert main(["--config", str(path), "status"]) == 0
    text = capsys.readouterr().out
    assert text.count("AADSTS7000215") == 1

    monkeypatch.setenv("DEVTENANT_CLIENT_SECRET", real)
    assert main(["--config", str(path), "sync"]) == 0
    capsys.readouterr()
    assert main(["--config", str(path), "status", "--json"]) == 0
    tenant = json.loads(capsys.readouterr().out)["tenants"][0]
    assert tenant["lastError"] is None
    assert [a for a, s in tenant["areas"].items() if s["lastError"]] == []
    assert main(["--config", str(path), "status"]) == 0
    assert "last error" not in capsys.readouterr().out
    store = MirrorStore(settings.server.cache_dir)
    try:
        tool = sync_status(store.load_snapshot("contoso"))  # what the sync_status tool answers
    finally:
        store.close()
    assert "lastError" not in tool and all(a["lastError"] is None for a in tool["areas"].values())
