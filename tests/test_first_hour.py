"""What a new user hits first: a config naming a file that is gone (sync, doctor, serve refuse it with the key, the
path and the fix; a running server's background sync survives it and /healthz says so), stdio from /dev/null or a
regular file, `entra-mcp call`, the demo, every command's --help.

What a command says and returns is asked through its entry point in this process (`_harness.cli_in_process`: an
`entra-mcp` process costs ~3 s CPU of imports); the tests about the process itself (stdin kinds, the background
sync of a running server, the demo, devtenant's restart) start the real `entra-mcp`."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from _harness import cli_in_process
from _server_fixtures import ENTRA_MCP, ServerEnv, config_data, free_port, server_env, write_config  # noqa: F401


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
    proc = cli_in_process("--config", str(config), *command, env=server_env.subprocess_env())
    err = proc.stderr
    assert proc.returncode == 2, err
    assert "ca_bundle" in err and str(gone) in err and "Fix:" in err
    assert "Traceback" not in err and proc.stdout == ""


def test_status_still_answers_with_a_missing_ca_bundle(server_env: ServerEnv, tmp_path: Path) -> None:
    config = _config_with_ca(server_env, tmp_path, tmp_path / "gone.pem")
    proc = cli_in_process("--config", str(config), "status", env=server_env.subprocess_env())
    assert proc.returncode == 0, proc.stderr


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
        status = cli_in_process("--config", str(config), "status", "--json", env=server_env.subprocess_env())
        assert str(ca) in status.stdout and "ca_bundle" in status.stdout  # why, for the admin
        shutil.copy(server_env.emulator.ca_bundle, ca)
        recovered = await until(lambda h: not h["tenants"][0]["failing"], "recovery")
        assert recovered["status"] == "ok" and recovered["tenants"][0]["synced"]
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=30)
    log = err.decode()
    assert "sync failed (1 in a row" in log and "ca_bundle" in log
    assert "Traceback" not in log


@pytest.mark.parametrize("stdin_kind", ["devnull", "file", "zero"])
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
    paths = {"devnull": "/dev/null", "zero": "/dev/zero", "file": str(source)}  # /dev/zero: endless, no line break
    with open(paths[stdin_kind], "rb") as stdin:
        proc = subprocess.run([str(ENTRA_MCP), "--config", str(server_env.config_path), "serve", "--no-sync"],
                              stdin=stdin, capture_output=True, timeout=60, env=server_env.subprocess_env())
    err = proc.stderr.decode()
    assert proc.returncode == 0, err
    assert "Traceback" not in err
    replies = [json.loads(line) for line in proc.stdout.decode().splitlines()]
    if stdin_kind != "file":
        assert replies == []
    else:
        by_id = {r["id"]: r for r in replies if "id" in r}
        assert by_id[1]["result"]["serverInfo"] and "lookup_user" in {t["name"] for t in by_id[2]["result"]["tools"]}


# ---------------------------------------------------------------- entra-mcp call


def _call(env: ServerEnv, *args: str) -> subprocess.CompletedProcess[str]:
    """`entra-mcp call ARGS` in this process (the demo test below runs the printed call as a process)."""
    return cli_in_process("--config", str(env.config_path), "call", *args, env=env.subprocess_env())


def test_call_answers_from_the_mirror_human_readable_and_json(server_env: ServerEnv) -> None:
    from entra_mcp.devtenant.generate import examples

    ceo = server_env.tenant.users[examples(server_env.tenant)["ceo"]]
    human = _call(server_env, "lookup_user", f"query={ceo['userPrincipalName']}")
    assert human.returncode == 0, human.stderr
    assert human.stdout.startswith("1 match(es), matchType=exact")
    assert f"userPrincipalName: {ceo['userPrincipalName']}" in human.stdout
    machine = _call(server_env, "lookup_user", f"query={ceo['displayName']}", "limit=3", "--json")
    answer = json.loads(machine.stdout)
    assert machine.returncode == 0 and answer["matchType"] == "fuzzy" and ceo["id"] in [m["id"] for m in answer["matches"]]
    state = _call(server_env, "check_account_state", f"user={ceo['id']}", "--tenant", server_env.name, "--json")
    assert json.loads(state.stdout)["user"]["id"] == ceo["id"]
    listed = _call(server_env)
    assert "lookup_user: query (string, required)" in listed.stdout


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["lookup_user", "alex"], "'alex' is not key=value. lookup_user takes: query (string, required)"),
        (["lookup_user", "qeury=alex"], "no argument 'qeury' (did you mean query?)"),
        (["lookup_user", "query=alex", "limit=many"], "limit must be a whole number"),
        (["lookup_user", "query=alex", "limit=1000"], "limit"),
        (["lookup_user"], "lookup_user needs query"),
        (["lookup_usr", "query=alex"], "Did you mean lookup_user?"),
    ],
)
def test_call_says_what_the_tool_expects(server_env: ServerEnv, args: list[str], expected: str) -> None:
    proc = _call(server_env, *args)
    assert proc.returncode in (1, 2) and expected in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr and proc.stdout == ""


def test_call_an_unknown_user_is_a_tool_error(server_env: ServerEnv) -> None:
    proc = _call(server_env, "check_account_state", "user=nobody@nowhere.example")
    assert proc.returncode == 1 and "nobody@nowhere.example" in proc.stderr


# ---------------------------------------------------------------- the demo on a terminal


def test_demo_says_what_to_do_next_and_the_printed_call_works(tmp_path: Path) -> None:
    import os
    import shlex
    import socket

    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(tmp_path), "TMPDIR": str(tmp_path)}
    proc = subprocess.Popen([str(ENTRA_MCP), "demo"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=env, cwd=tmp_path, text=True)
    assert proc.stderr is not None
    try:
        lines: list[str] = []
        while not any("from another shell:" in line for line in lines):
            line = proc.stderr.readline()  # bounded: the process is killed in `finally` if this test fails
            assert line, "".join(lines)
            lines.append(line)
        while not any("in a browser:" in line for line in lines):
            lines.append(proc.stderr.readline())
        text = "".join(lines)
        assert "npx @modelcontextprotocol/inspector" in text and "typing here does nothing useful" in text
        call = next(line for line in lines if "from another shell:" in line).split("from another shell:", 1)[1]
        answered = subprocess.run(shlex.split(call) + ["--json"], capture_output=True, text=True, timeout=120,
                                  env=env, stdin=subprocess.DEVNULL)
        assert answered.returncode == 0, answered.stderr
        assert len(json.loads(answered.stdout)["matches"]) == 3
    finally:
        proc.stdin.close()  # type: ignore[union-attr]  # end of stdin: the demo exits
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
    assert proc.returncode == 0

    # a busy port is refused at once, before the emulator starts
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        refused = cli_in_process("demo", "--transport", "http", "--port", str(port), env=env, cwd=tmp_path)
    assert refused.returncode == 2 and "--port" in refused.stderr and "emulator" not in refused.stderr


# ---------------------------------------------------------------- entra-mcp devtenant > config.toml


def test_devtenant_output_is_a_config_that_survives_a_restart(tmp_path: Path) -> None:
    """stdout is valid TOML; the TLS files live in a stable default directory, so the saved config syncs again after
    the emulator restarts."""
    import os
    import signal
    import tomllib

    from _harness import wait_until

    home = tmp_path / "home"
    port = free_port()
    env = {**os.environ, "HOME": str(home), "PYTHONUNBUFFERED": "1"}
    env.pop("XDG_CACHE_HOME", None)
    config = tmp_path / "config.toml"
    for attempt in range(2):
        log = tmp_path / f"devtenant-{attempt}.log"
        with open(config if attempt == 0 else tmp_path / "again.toml", "wb") as out, open(log, "wb") as err:
            proc = subprocess.Popen([str(ENTRA_MCP), "devtenant", "--port", str(port)], stdout=out, stderr=err, env=env,
                                    stdin=subprocess.DEVNULL)
        try:
            wait_until(lambda: "\nready\n" in "\n" + log.read_text(errors="replace"), timeout=120,
                       what="devtenant ready", proc=proc, log_path=log)
            data = tomllib.loads(config.read_text())  # the whole stdout of the first start parses
            ca = Path(data["tenants"][0]["ca_bundle"])
            assert ca.parent == home / ".cache" / "entra-mcp" / f"devtenant-{port}" and ca.exists()
            exports = [line for line in log.read_text().splitlines() if line.startswith("export ")]
            name, _, value = exports[0].removeprefix("export ").partition("=")
            (tmp_path / "full.toml").write_text(config.read_text() + f'\n[server]\ncache_dir = "{tmp_path / "cache"}"\n')
            synced = cli_in_process("--config", str(tmp_path / "full.toml"), "sync", env={**env, name: value.strip("'")},
                                    timeout=300)
            assert synced.returncode == 0, synced.stderr[-3000:]
        finally:
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=30) == 0


def test_every_command_help_says_what_it_does_with_an_example() -> None:
    from entra_mcp.cli import COMMANDS

    for command in COMMANDS:
        proc = cli_in_process(command.NAME, "--help")
        assert proc.returncode == 0, proc.stderr
        description = proc.stdout.split("\n\n")[1]
        assert len(description.splitlines()) >= 2, (command.NAME, description)
        assert command.NAME in ("status", "doctor") or f"entra-mcp {command.NAME}" in proc.stdout.split("options:")[0]


def test_demo_stopped_by_sigterm_leaves_no_temporary_files(tmp_path: Path) -> None:
    import os
    import signal

    from _harness import wait_until

    log = tmp_path / "demo.log"
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(tmp_path), "TMPDIR": str(tmp_path)}
    with open(log, "wb") as err:
        proc = subprocess.Popen([str(ENTRA_MCP), "demo"], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=err,
                                env=env, cwd=tmp_path)
    try:
        wait_until(lambda: "ready in" in log.read_text(errors="replace"), timeout=120, what="demo ready", proc=proc,
                   log_path=log)
        assert [p.name for p in tmp_path.iterdir() if p.name.startswith("entra-mcp-demo-")]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert [p for p in tmp_path.iterdir() if p.name.startswith("entra-mcp-demo-")] == []
    assert "Traceback" not in log.read_text()
