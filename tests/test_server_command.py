"""`entra-mcp serve` and `entra-mcp demo` as processes, the view provider's reload after a sync, and a tenant that was
never synced."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
from pathlib import Path
from typing import Any, Callable

import anyio
import pytest
from _server_fixtures import ENTRA_MCP, ServerEnv, config_data, serve_http, server_env, sync_mirror, write_config  # noqa: F401
from mcp import Client
from mcp.client.stdio import StdioServerParameters

from entra_mcp.config import parse_settings
from entra_mcp.devtenant.generate import examples
from entra_mcp.mirror.store import MirrorStore
from entra_mcp.server.app import create_server
from entra_mcp.views import ViewProvider


def _rpc(i: int, method: str, params: dict[str, Any] | None = None) -> str:
    msg: dict[str, Any] = {"jsonrpc": "2.0", "method": method}
    if i:
        msg["id"] = i
    if params is not None:
        msg["params"] = params
    return json.dumps(msg) + "\n"


def test_stdio_stdout_carries_only_the_mcp_wire(server_env: ServerEnv) -> None:
    """Every byte on stdout is a JSON-RPC message, even while the server logs and answers errors."""
    requests = "".join(
        [
            _rpc(1, "initialize", {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}),
            _rpc(0, "notifications/initialized"),
            _rpc(2, "tools/list", {}),
            _rpc(3, "tools/call", {"name": "lookup_user", "arguments": {"query": "alex johnson"}}),
            _rpc(4, "tools/call", {"name": "check_account_state", "arguments": {"user": "nobody@nowhere.example"}}),
            _rpc(5, "tools/call", {"name": "lookup_user", "arguments": {"query": "x" * 10_000}}),
            _rpc(6, "prompts/list", {}),
        ]
    )
    proc = subprocess.Popen(
        [str(ENTRA_MCP), "--config", str(server_env.config_path), "--log-level", "DEBUG", "serve", "--no-sync"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=server_env.subprocess_env(),
    )
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write(requests.encode())
    proc.stdin.flush()
    replies: list[dict[str, Any]] = []
    try:
        while {r.get("id") for r in replies} < {1, 2, 3, 4, 5, 6}:
            line = proc.stdout.readline()  # bounded by the timeout below (the process is killed on failure)
            assert line, "stdout closed early"
            replies.append(json.loads(line))  # a stray non-JSON line fails here
    finally:
        try:
            stdout_rest, stderr = proc.communicate(timeout=30)  # closes stdin: the server exits
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
    assert stdout_rest.strip() == b""
    assert all(r.get("jsonrpc") == "2.0" for r in replies)
    by_id = {r["id"]: r for r in replies if "id" in r}
    assert by_id[3]["result"]["structuredContent"]["matchType"] == "fuzzy"
    assert by_id[4]["result"]["isError"] is True and by_id[5]["result"]["isError"] is True
    assert len(by_id[6]["result"]["prompts"]) >= 4
    assert b"serving MCP over stdio" in stderr  # the logs went to stderr
    assert proc.returncode == 0  # stdin closed: a clean exit


def test_serve_without_config_is_a_config_error(tmp_path: Path) -> None:
    from _harness import cli_in_process

    env = {k: v for k, v in os.environ.items() if k != "ENTRA_MCP_CONFIG"}
    proc = cli_in_process("serve", "--transport", "http", cwd=tmp_path, env=env)  # (stdio would claim this process's stdout)
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert "entra-mcp demo" in proc.stderr


@pytest.mark.anyio
async def test_demo_over_stdio_end_to_end(tmp_path: Path) -> None:
    """On a machine with no config: spawn `entra-mcp demo`, list tools, ask a question, stop."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(tmp_path), "TMPDIR": str(tmp_path)}
    params = StdioServerParameters(command=str(ENTRA_MCP), args=["demo", "--transport", "stdio"], env=env, cwd=str(tmp_path))
    with anyio.fail_after(60):
        async with Client(params, read_timeout_seconds=30) as client:
            tools = {t.name for t in (await client.list_tools()).tools}
            assert "lookup_user" in tools and "check_app_access" in tools
            result = await client.call_tool("lookup_user", {"query": "alex johnson"})
            assert not result.is_error
            assert result.structured_content and len(result.structured_content["matches"]) == 3
    leftovers = [p for p in tmp_path.iterdir() if p.name.startswith("entra-mcp-demo-")]
    assert leftovers == []  # the demo's temporary files are gone


@pytest.mark.anyio
async def test_a_tenant_never_synced_answers_nulls_with_a_finding(server_env: ServerEnv, tmp_path: Path) -> None:
    data = config_data(server_env.emulator, tmp_path / "empty-cache")
    settings = parse_settings(data)
    store = MirrorStore(tmp_path / "empty-cache")
    views = ViewProvider.from_settings(settings, store)
    async with Client(create_server(settings, views=views)) as client:
        state = await client.call_tool("check_account_state", {"user": "adele@contoso.example"})
        assert not state.is_error and state.structured_content is not None
        s = state.structured_content
        assert s["accountEnabled"] is None and s["passwordExpired"] is None and s["asOf"] is None
        assert [f["code"] for f in s["findings"]] == ["MIRROR_NOT_SYNCED"]
        lookup = (await client.call_tool("lookup_user", {"query": "adele"})).structured_content
        assert lookup is not None and lookup["matches"] is None and lookup["matchType"] is None
        status = (await client.call_tool("sync_status", {})).structured_content
        assert status is not None and status["asOf"] is None
    store.close()


@pytest.mark.anyio
async def test_views_follow_the_mirror_after_a_sync(fresh_emulator: Callable[..., Any], tmp_path: Path) -> None:
    """A change in the directory reaches the answers after the next sync, without restarting the server."""
    emu = fresh_emulator(size="small", seed=3)
    settings = parse_settings(config_data(emu, tmp_path / "cache"))
    os.environ.update(emu.secret_env(0))
    store = MirrorStore(tmp_path / "cache")
    await anyio.to_thread.run_sync(sync_mirror, settings, store)
    views = ViewProvider.from_settings(settings, store, check_interval=0, background_reload=False)
    tenant = emu.tenant(0)
    ceo = examples(tenant)["ceo"]
    async with Client(create_server(settings, views=views)) as client:
        before = (await client.call_tool("check_account_state", {"user": ceo})).structured_content
        assert before is not None and before["accountEnabled"] is True
        version = views.current().version
        with tenant.lock:
            tenant.disable_user(ceo)
        await anyio.to_thread.run_sync(lambda: sync_mirror(settings, store, full=False))  # a delta run
        after = (await client.call_tool("check_account_state", {"user": ceo})).structured_content
        assert after is not None and after["accountEnabled"] is False
        assert views.current().version > version
    store.close()


def test_background_reload_keeps_answering_from_the_old_view(server_env: ServerEnv, tmp_path: Path) -> None:
    """With background reload, a version change never blocks the caller: the old view answers until the new one
    is built."""
    import threading

    built = threading.Event()
    release = threading.Event()
    calls: list[int] = []

    class Store:
        v = 1

        def version(self, name: str) -> int:
            return self.v

        def freshness(self, name: str) -> Any:
            real = MirrorStore(server_env.cache_dir)
            try:
                return dataclasses.replace(real.freshness(name), version=self.v)
            finally:
                real.close()

        def load_snapshot(self, name: str) -> Any:
            real = MirrorStore(server_env.cache_dir)
            try:
                return dataclasses.replace(real.load_snapshot(name), version=self.v)
            finally:
                real.close()

    def build(snapshot: Any) -> Any:
        calls.append(1)
        if len(calls) == 2:
            built.set()
            assert release.wait(10)
        return object()

    store = Store()
    views = ViewProvider.from_settings(server_env.settings, store, build=build, check_interval=0)
    first = views.current()
    store.v = 2
    assert views.current() is first  # not blocked, old view
    assert built.wait(10)
    assert views.current() is first  # still building
    release.set()
    for _ in range(1000):
        if views.current() is not first:
            break
        threading.Event().wait(0.01)
    assert views.current().version == 2 and len(calls) == 2


@pytest.mark.anyio
async def test_serve_http_syncs_in_the_background_and_answers(server_env: ServerEnv, tmp_path: Path) -> None:
    """`entra-mcp serve --transport http` on an empty cache: the background sync fills the mirror, /healthz turns
    synced, and the tools answer over streamable HTTP, without a restart."""
    import httpx
    from _server_fixtures import free_port

    port = free_port()
    config = write_config(tmp_path / "config.toml", config_data(server_env.emulator, tmp_path / "cache"))
    proc = subprocess.Popen(
        [str(ENTRA_MCP), "--config", str(config), "serve", "--transport", "http", "--port", str(port)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=server_env.subprocess_env(),
    )
    try:
        base = f"http://127.0.0.1:{port}"
        synced = False
        with anyio.fail_after(60):
            while not synced:
                assert proc.poll() is None, proc.stderr.read().decode()[-2000:]  # type: ignore[union-attr]
                try:
                    health = httpx.get(f"{base}/healthz", timeout=5).json()
                    synced = health["tenants"][0]["synced"]
                except httpx.TransportError:
                    pass
                if not synced:
                    await anyio.sleep(0.1)  # polling a live process with a bounded deadline
        ceo = server_env.tenant.users[examples(server_env.tenant)["ceo"]]
        async with Client(f"{base}/mcp", read_timeout_seconds=30) as client:
            result = await client.call_tool("lookup_user", {"query": ceo["userPrincipalName"]})
            assert result.structured_content and result.structured_content["matches"][0]["id"] == ceo["id"]
    finally:
        proc.terminate()
        out, err = proc.communicate(timeout=30)
    assert out == b""  # HTTP mode prints nothing on stdout either
    assert proc.returncode == 0  # SIGTERM is a clean stop


@pytest.mark.anyio
async def test_demo_over_http_prints_the_url_and_serves(tmp_path: Path) -> None:
    import httpx
    from _server_fixtures import free_port

    port = free_port()
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(tmp_path), "TMPDIR": str(tmp_path)}
    proc = subprocess.Popen([str(ENTRA_MCP), "demo", "--transport", "http", "--port", str(port)], cwd=tmp_path, env=env,
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}/mcp"
    try:
        with anyio.fail_after(60):
            while True:
                assert proc.poll() is None, proc.stderr.read().decode()[-2000:]  # type: ignore[union-attr]
                try:
                    if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5).json()["tenants"][0]["synced"]:
                        break
                except httpx.TransportError:
                    pass
                await anyio.sleep(0.1)
            async with Client(url, read_timeout_seconds=30) as client:
                result = await client.call_tool("list_group_members", {"group": "All Staff", "limit": 3})
                assert result.structured_content and len(result.structured_content["members"]) == 3
    finally:
        proc.terminate()
        out, err = proc.communicate(timeout=30)
    assert url.encode() in err  # how to connect, on stderr
    assert out == b""


def test_a_view_from_the_prepared_index_answers_exactly_like_one_built_from_the_mirror(server_env: ServerEnv,
                                                                                        tmp_path: Path) -> None:
    """The prepared index (`entra-mcp sync` writes it; every normal start loads it) is the same directory: each main
    answer, for every user, group and app of the tenant, equals the one of a view built from the mirror now."""
    from datetime import datetime, timezone

    from entra_mcp import identity
    from entra_mcp.identity.view import DirectoryView
    from entra_mcp.views import ViewCache, prepare_views

    store = MirrorStore(server_env.cache_dir)
    name = server_env.name
    prepare_views(tmp_path, store, [name])
    loaded = ViewCache(tmp_path / ".server-views").load(name, store.version(name), DirectoryView)
    snapshot = store.load_snapshot(name)
    store.close()
    assert loaded is not None and snapshot is not None
    built = DirectoryView.build(snapshot)
    assert loaded is not built and loaded.snapshot.version == built.snapshot.version
    now = datetime(2026, 12, 1, 9, 0, tzinfo=timezone.utc)

    def answers(view: DirectoryView, call: Callable[[DirectoryView], Any]) -> Any:
        try:
            return call(view)
        except Exception as exc:  # a refusal must be the same refusal
            return (type(exc).__name__, str(exc))

    users = list(snapshot.users.values())
    groups = list(snapshot.groups)
    apps = [a["appId"] for a in snapshot.service_principals.values() if a.get("appId")][:10]
    calls: list[Callable[[DirectoryView], Any]] = []
    for user in users:
        upn, display = user["userPrincipalName"], str(user.get("displayName") or user["userPrincipalName"])
        calls += [lambda v, q=upn: identity.lookup_user(v, q, now=now),
                  lambda v, q=display: identity.lookup_user(v, q, now=now),
                  lambda v, q=upn: identity.check_account_state(v, q, now=now),
                  lambda v, q=upn: identity.list_group_memberships(v, q, now=now),
                  lambda v, q=upn: identity.check_reset_eligibility(v, q, now=now)]
    for user in users[:20]:
        calls += [lambda v, q=user["id"], a=app: identity.check_app_access(v, q, a, now=now) for app in apps]
    for gid in groups:
        calls += [lambda v, g=gid: identity.list_group_members(v, g, now=now),
                  lambda v, g=gid: identity.list_group_members(v, g, transitive=True, now=now)]
    calls += [lambda v, a=app: identity.get_app_principal(v, a, now=now) for app in apps]
    assert len(users) >= 50 and len(groups) > 10 and apps
    for call in calls:
        assert answers(loaded, call) == answers(built, call)


def _derived_now(view: Any) -> Any:
    from entra_mcp.identity.access import derive_indexes

    derive_indexes(view)
    return view


def test_view_cache_skips_the_rebuild_on_restart_and_ignores_bad_files(server_env: ServerEnv, tmp_path: Path) -> None:
    import time

    from entra_mcp.identity.view import DirectoryView
    from entra_mcp.views import ViewCache

    builds: list[int] = []

    def build(snapshot: Any) -> Any:
        builds.append(snapshot.version)
        return DirectoryView.build(snapshot)

    store = MirrorStore(server_env.cache_dir)
    cache = ViewCache(tmp_path / "views")
    first = ViewProvider.from_settings(server_env.settings, store, build=build, cache=cache).current()
    assert builds == [first.version]
    path = cache.path(server_env.name)
    deadline = time.monotonic() + 30
    while not path.exists():  # written by a forked child
        assert time.monotonic() < deadline, "the view cache was not written"
        time.sleep(0.05)
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    # a restart: loaded from the file, no rebuild, same answers
    second = ViewProvider.from_settings(server_env.settings, store, build=build, cache=ViewCache(tmp_path / "views")).current()
    assert builds == [first.version]
    assert second.view.user(examples(server_env.tenant)["ceo"]) == first.view.user(examples(server_env.tenant)["ceo"])
    # the forked writer stored the indexes the answers derive on first use too (as `entra-mcp sync` prepares them);
    # the server's own view derives them when first asked
    assert not first.view._derived and second.view._derived
    assert set(second.view._derived) == set(_derived_now(first.view)._derived)
    # a damaged file is ignored: rebuilt
    path.write_bytes(b"not a pickle")
    ViewProvider.from_settings(server_env.settings, store, build=build, cache=ViewCache(tmp_path / "views")).current()
    assert builds == [first.version, first.version]
    deadline = time.monotonic() + 30
    while not ViewCache(tmp_path / "views").holds(server_env.name, first.version, DirectoryView):
        # the rebuild's forked writer replaces the file: let it finish before the file is replaced below
        assert time.monotonic() < deadline, "the rebuilt view cache was not written"
        time.sleep(0.05)
    # a prepared index of another layout (an older release, another INDEX_FORMAT) is ignored and rebuilt, never read
    import pickle

    import entra_mcp.views as views_module

    old = ViewCache(tmp_path / "views")
    old._fingerprint = None
    real = views_module.INDEX_FORMAT
    views_module.INDEX_FORMAT = real - 1
    try:
        old._write(server_env.name, (old.fingerprint(DirectoryView), first.version), first.view)
    finally:
        views_module.INDEX_FORMAT = real
    with open(path, "rb") as f:
        assert pickle.load(f)[0] != ViewCache(tmp_path / "views").fingerprint(DirectoryView)
    ViewProvider.from_settings(server_env.settings, store, build=build, cache=ViewCache(tmp_path / "views")).current()
    assert builds == [first.version] * 3
    store.close()
