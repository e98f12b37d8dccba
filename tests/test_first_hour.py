"""What a new user hits first, as processes: a config naming a file that is gone (sync, doctor, serve refuse it with
the key, the path and the fix; a running server's background sync survives it and /healthz says so), stdio from
/dev/null or a regular file."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from _server_fixtures import ENTRA_MCP, ServerEnv, config_data, free_port, server_env, write_config  # noqa: F401


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def _config_with_ca(env: ServerEnv, tmp_path: Path, ca: Path, **sync: Any) -> Path:
    data = config_data(env.emulator, tmp_path / "cache")
    data["tenants"][0]["ca_bundle"] = str(ca)
    path = write_config(tmp_path / "config.toml", data)
    if sync:
        path.write_text(path.read_text() + "\n[tenants.sync]\n" + "".join(f"{k} = {v}\n" for k, v in sync.items()))
    return path


@pytest.mark.parametrize("command", [["sync"], ["doctor"], ["serve", "--transport", "http", "--port", "0"]])
def test_a_missing_ca_bundle_is_refused_when_the_config_loads(server_env: ServerEnv, tmp_path: Path, command: list[str]) -> None:
    gone = tmp_path / "devtenant" / "ca.pem"
    config = _config_with_ca(server_env, tmp_path, gone)
    proc = subprocess.run([str(ENTRA_MCP), "--config", str(config), *command], capture_output=True, timeout=120,
                          env=server_env.subprocess_env(), stdin=subprocess.DEVNULL)
    err = proc.stderr.decode()
    assert proc.returncode == 2, err
    assert "ca_bundle" in err and str(gone) in err and "Fix:" in err
    assert "Traceback" not in err and proc.stdout == b""


def test_status_still_answers_with_a_missing_ca_bundle(server_env: ServerEnv, tmp_path: Path) -> None:
    config = _config_with_ca(server_env, tmp_path, tmp_path / "gone.pem")
    proc = subprocess.run([str(ENTRA_MCP), "--config", str(config), "status"], capture_output=True, timeout=60,
                          env=server_env.subprocess_env(), stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr.decode()


def _health(base: str) -> dict[str, Any] | None:
    try:
        return httpx.get(f"{base}/healthz", timeout=5).json()  # type: ignore[no-any-return]
    except httpx.TransportError:
        return None


@pytest.mark.anyio
async def test_background_sync_survives_a_ca_file_removed_after_start(server_env: ServerEnv, tmp_path: Path) -> None:
    """The emulator's CA vanishes under a running server: the scheduler keeps going, /healthz turns degraded with
    the tenant failing, `status` says why, and all recovers once the file is back."""
    ca = tmp_path / "ca.pem"
    shutil.copy(server_env.emulator.ca_bundle, ca)
    config = _config_with_ca(server_env, tmp_path, ca, interval_minutes=0.02)  # a run every ~1.2 s
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen([str(ENTRA_MCP), "--config", str(config), "serve", "--transport", "http", "--port", str(port)],
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=server_env.subprocess_env())

    async def until(predicate: Any, what: str) -> dict[str, Any]:
        with anyio.fail_after(90, shield=False):
            while True:
                assert proc.poll() is None, proc.stderr.read().decode()[-3000:]  # type: ignore[union-attr]
                health = _health(base)
                if health is not None and predicate(health):
                    return health
                await anyio.sleep(0.2)  # polling a live process with a bounded deadline

    try:
        healthy = await until(lambda h: h["tenants"][0]["synced"] and not h["tenants"][0]["failing"], "first sync")
        assert healthy["status"] == "ok"
        ca.unlink()
        failing = await until(lambda h: h["tenants"][0]["failing"], "the failure to show")
        assert failing["status"] == "degraded" and failing["tenants"][0]["failingSince"]
        assert "ca.pem" not in json.dumps(failing)  # /healthz is unauthenticated: no error texts
        status = subprocess.run([str(ENTRA_MCP), "--config", str(config), "status", "--json"], capture_output=True,
                                timeout=60, env=server_env.subprocess_env(), stdin=subprocess.DEVNULL)
        assert str(ca) in status.stdout.decode() and "ca_bundle" in status.stdout.decode()  # why, for the admin
        shutil.copy(server_env.emulator.ca_bundle, ca)
        recovered = await until(lambda h: not h["tenants"][0]["failing"], "recovery")
        assert recovered["status"] == "ok" and recovered["tenants"][0]["synced"]
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=30)
    log = err.decode()
    assert "sync failed (1 in a row" in log and "ca_bundle" in log
    assert "Traceback" not in log


@pytest.mark.parametrize("stdin_kind", ["devnull", "file"])
def test_stdio_from_dev_null_or_a_regular_file(server_env: ServerEnv, tmp_path: Path, stdin_kind: str) -> None:
    """Containers and service managers give no interactive stdin: serve what is there, then exit cleanly."""
    messages = [
        {"jsonrpc": "2.0", "id": 1, "method": "initialize",
         "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}},
        {"jsonrpc": "2.0", "method": "notifications/initialized"},
        {"jsonrpc": "2.0", "id": 2, "method": "tools/list", "params": {}},
    ]
    source = tmp_path / "requests.jsonl"
    source.write_text("".join(json.dumps(m) + "\n" for m in messages))
    with open("/dev/null" if stdin_kind == "devnull" else source, "rb") as stdin:
        proc = subprocess.run([str(ENTRA_MCP), "--config", str(server_env.config_path), "serve", "--no-sync"],
                              stdin=stdin, capture_output=True, timeout=60, env=server_env.subprocess_env())
    err = proc.stderr.decode()
    assert proc.returncode == 0, err
    assert "Traceback" not in err
    replies = [json.loads(line) for line in proc.stdout.decode().splitlines()]
    if stdin_kind == "devnull":
        assert replies == []
    else:
        by_id = {r["id"]: r for r in replies if "id" in r}
        assert by_id[1]["result"]["serverInfo"] and "lookup_user" in {t["name"] for t in by_id[2]["result"]["tools"]}
