"""Crash drills: kill -9 the server (with its background sync running) and `entra-mcp sync` at random points.

Each seed is one bounded run against a fresh emulator whose Graph is slowed down (latency, small delta pages) so
the kills land inside sync runs. After every kill: the mirror loads, its version never goes back, SQLite finds
nothing wrong in the cache directory. At the end a restarted server and one more sync bring the mirror to exactly
the emulator's ground truth, and the restarted server answers from it. Sign-in sessions (portal cookie and chat
bearer) live in the cache directory and survive the kills.
"""

from __future__ import annotations

import random
import signal
import subprocess
import time
from pathlib import Path
from typing import Any, Callable

import httpx
import pytest

from _endurance_fixtures import (
    API_KEY,
    ENTRA_MCP,
    ProductConfig,
    ServeProcess,
    spawn,  # noqa: F401 (fixture)
    cache_integrity,
    load_snapshot,
    mirror_differences,
    mirror_stamp,
    mirror_version,
    sync_until_done,
    track,
)
from _sync_fixtures import control_of  # noqa: F401  (the emulator's control API over HTTPS)


def _session_ids(cfg: ProductConfig, emu: Any) -> tuple[str, str]:
    """A portal session and a chat session, created through the product's own session service on its store."""
    from entra_mcp.mirror.session_store import SessionStore
    from entra_mcp.oidc.sessions import SessionService
    from entra_mcp.oidc.validate import Identity

    user = next(iter(emu.tenant(0).users.values()))
    ident = Identity(tid=emu.tenant(0).tenant_id, oid=user["id"], name=user["displayName"],
                     preferred_username=user["userPrincipalName"])
    store = SessionStore(cfg.cache_dir)  # type: ignore[arg-type]
    try:
        service = SessionService.from_settings(cfg.settings(), store=store)
        portal, _ = service.create(ident, kind="portal")
        chat, _ = service.create(ident, kind="chat")
    finally:
        store.close()
    return portal, chat


def _session_answers(cfg: ProductConfig, portal: str, chat: str) -> tuple[int, int]:
    with httpx.Client(base_url=cfg.base, timeout=10) as http:
        by_cookie = http.get("/auth/session", cookies={"entra_mcp_session": portal}).status_code
        by_bearer = http.get("/auth/session", headers={"Authorization": f"Bearer {chat}"}).status_code
    return by_cookie, by_bearer


def _mcp_lookup(cfg: ProductConfig, upn: str) -> dict[str, Any]:
    """One tools/call over the wire (initialize, then lookup_user), as an API-key client."""
    import anyio
    import httpx2
    from mcp import Client
    from mcp.client.streamable_http import streamable_http_client

    async def go() -> dict[str, Any]:
        async with httpx2.AsyncClient(headers={"Authorization": f"Bearer {API_KEY}"}, timeout=30) as http:
            async with Client(streamable_http_client(f"{cfg.base}/mcp", http_client=http), mode="legacy") as client:
                r = await client.call_tool("lookup_user", {"query": upn})
                assert not r.is_error, r.content
                return dict(r.structured_content or {})

    return anyio.run(go)


def _check_after_kill(cfg: ProductConfig, last_version: int) -> int:
    assert cache_integrity(cfg.cache_dir) == []  # type: ignore[arg-type]
    version = mirror_version(cfg)
    snap = load_snapshot(cfg)
    if last_version:
        assert snap is not None, "a mirror that existed before the kill no longer loads"
    assert version >= last_version, f"the mirror went back from version {last_version} to {version}"
    if snap is not None:  # areas commit one by one: an area with a success has its objects
        assert snap.version == version
        assert snap.users or snap.areas["users"].last_success is None, "users synced, yet none in the mirror"
        assert snap.groups or snap.areas["groups"].last_success is None, "groups synced, yet none in the mirror"
    return version


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_kill_9_server_and_syncer_at_random_points(seed: int, fresh_emulator: Callable[..., Any], control_of: Any,
                                                    spawn: Callable[..., ServeProcess], tmp_path: Path) -> None:
    rnd = random.Random(seed)
    emu = fresh_emulator(size="small", seed=40 + seed)
    ctl = control_of(emu)
    cfg = ProductConfig(emu, tmp_path, interval_minutes=0.02)  # the background sync runs every ~1.2 s
    portal, chat = _session_ids(cfg, emu)
    domain = emu.tenant(0).domain
    # slow Graph down so a kill lands inside a run: every response 15 ms late, tiny delta pages
    ctl.faults(latency_ms=15, delta_users_page_size=7, delta_groups_page_size=2, delta_groups_page_units=10)

    version = 0
    created: list[str] = []
    for round_ in range(2 if seed == 1 else 1):  # bounded: ~15 s a round on 2 cores
        ops = [{"op": "create_user", "set": {"displayName": f"Drill {seed}.{round_}.{n}",
                                             "userPrincipalName": f"drill{seed}x{round_}x{n}@{domain}"}} for n in range(3)]
        users = list(emu.tenant(0).users)
        ops += [{"op": "update_user", "id": rnd.choice(users), "set": {"jobTitle": f"t{round_}"}},
                {"op": "add_member", "group": rnd.choice([g for g, v in emu.tenant(0).groups.items() if not v.get("membershipRule")]),
                 "member": rnd.choice(users)}]
        ctl.mutate(ops)
        created += [o["set"]["userPrincipalName"] for o in ops if o["op"] == "create_user"]

        # the server, syncing in the background, killed at a random moment
        server = spawn(cfg, name=f"serve{round_}")
        server.wait_ready()
        assert _session_answers(cfg, portal, chat) == (200, 200)
        deadline = time.monotonic() + rnd.uniform(0.3, 3.0)
        while time.monotonic() < deadline and server.proc.poll() is None:
            time.sleep(0.05)  # the drill's random kill point, not a wait for a condition
        server.kill9()
        version = _check_after_kill(cfg, version)

        # `entra-mcp sync --full` (or a delta run), killed at a random moment of its run
        args = ["--full"] if rnd.random() < 0.5 else []
        sync = track(subprocess.Popen([ENTRA_MCP, "--config", str(cfg.path), "sync", *args], env=cfg.env(),
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        deadline = time.monotonic() + rnd.uniform(0.8, 3.0)
        while time.monotonic() < deadline and sync.poll() is None:
            time.sleep(0.05)
        if sync.poll() is None:
            sync.send_signal(signal.SIGKILL)
        sync.wait(timeout=30)
        version = _check_after_kill(cfg, version)

    # restart: the server comes back, sessions are still there, a sync catches up with everything
    ctl.faults(latency_ms=0)
    server = spawn(cfg, name="serve-final")
    try:
        server.wait_ready()
        assert _session_answers(cfg, portal, chat) == (200, 200), "sign-in sessions did not survive the kills"
        stamp = mirror_stamp(cfg)
        p = sync_until_done(cfg)
        assert p.returncode == 0, p.stderr[-2000:]
        assert mirror_differences(load_snapshot(cfg), ctl.snapshot()) == []
        # the run committed (its data version moved only if the background syncs had not caught up already)
        assert mirror_stamp(cfg) > stamp and mirror_version(cfg) >= version
        # the restarted server answers from the caught-up mirror (it reloads when the version moves)
        deadline = time.monotonic() + 20
        while True:
            answer = _mcp_lookup(cfg, created[-1])
            if answer.get("matchType") == "exact" or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert answer.get("matchType") == "exact", answer
        assert "Traceback" not in server.log()
    finally:
        server.stop()
    assert cache_integrity(cfg.cache_dir) == []  # type: ignore[arg-type]
