"""Three `entra-mcp serve` replicas on one Redis behind haproxy (round-robin, health checks on /healthz).

All real parts, started here once for the module (tests/_replicas.py): the emulator, redis-server (AOF on, so a
restart keeps what it held), three replicas as separate processes with their own cache directories, haproxy.
- a sign-in started on one replica completes on another and its session works on every replica and through haproxy;
- /mcp is stateless: no Mcp-Session-Id, any replica answers any call;
- Redis down: tool calls with an API key keep answering from each replica's mirror, sign-in answers 503 with a clear
  message, and everything recovers by itself when Redis is back (sessions kept);
- kill -9 of one replica under load: at most the calls in flight on it fail, a retry succeeds, sessions survive;
- Redis unreachable at start: `serve` exits 1 with the reason and the fix.
"""

from __future__ import annotations

import subprocess
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import httpx
import pytest

from _harness import ENTRA_MCP, free_port, wait_until
from _redis import RedisServer, have_redis
from _replicas import MCP_HEADERS, Cluster, SignInClient, call_tool, have_haproxy, tool_answer

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not (have_redis() and have_haproxy()),
                       reason="redis-server and haproxy are needed (scripts/test.sh installs them with apt-get)"),
]

WORKERS = 6


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    from entra_mcp.devtenant.server import run_emulator

    root = tmp_path_factory.mktemp("replicas")
    with run_emulator(size="small", seed=13) as emu, RedisServer(root / "redis", persistence=True) as redis:
        c = Cluster(root, emu, redis)
        try:
            c.start()
            yield c
        finally:
            c.stop()


@pytest.fixture(scope="module")
def chat(cluster: Cluster) -> Iterator[dict[str, Any]]:
    """A chat-session token made across replicas (login on 2, callback on 0, exchange on 1), kept by later tests."""
    client = SignInClient(cluster.emu)
    try:
        yield {"token": client.chat_token(cluster.base(2), cluster.base(0), cluster.base(1)), "user": client.user()}
    finally:
        client.close()


@pytest.fixture(scope="module")
def http() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=30) as h:
        yield h


def _lookup(http: httpx.Client, base: str, upn: str) -> dict[str, Any]:
    return tool_answer(call_tool(http, base, "lookup_user", {"query": upn}))


def test_redis_unreachable_at_start_is_a_clear_error(cluster: Cluster, tmp_path: Path) -> None:
    port = free_port()
    config = tmp_path / "config.toml"
    config.write_text(cluster.config_text(free_port(), tmp_path / "cache", redis_url=f"redis://127.0.0.1:{port}/0",
                                          start_wait_seconds=0.5))
    done = subprocess.run([ENTRA_MCP, "--config", str(config), "serve", "--transport", "http", "--no-sync"],
                          env=cluster.env(), capture_output=True, timeout=60)
    err = done.stderr.decode(errors="replace")
    assert done.returncode == 1, err
    assert f"redis://127.0.0.1:{port}/0 is unreachable (connection refused" in err and "Fix: start Redis" in err
    assert "Traceback" not in err


def test_sign_in_on_one_replica_and_use_the_session_on_every_other(cluster: Cluster, http: httpx.Client,
                                                                    chat: dict[str, Any]) -> None:
    browser = SignInClient(cluster.emu)
    try:
        done = browser.sign_in(cluster.base(0), cluster.base(1), return_to=cluster.public + "/")
        assert done.status_code == 303, done.text
        for base in [cluster.base(i) for i in range(3)] + [cluster.public] * 3:
            seen = browser.get(f"{base}/auth/session")
            assert seen.status_code == 200, (base, seen.text)
            assert seen.json()["preferredUsername"] == browser.user()
        # the chat session made across replicas is valid on each, through the tool
        for i in range(3):
            answer = tool_answer(call_tool(http, cluster.base(i), "validate_chat_session", {"session_token": chat["token"]}))
            assert answer["valid"] is True and answer["identity"]["preferredUsername"] == chat["user"]
        # logout on one replica ends the session on all of them
        sid = browser.cookies["entra_mcp_session"]
        out = browser.post(f"{cluster.base(2)}/auth/logout")
        assert out.status_code == 200 and out.json()["signedOut"] is True
        gone = browser.http.get(f"{cluster.base(0)}/auth/session", cookies={"entra_mcp_session": sid})
        assert gone.status_code == 401 and gone.json()["reason"] == "revoked"
    finally:
        browser.close()


def test_any_replica_answers_any_request_without_affinity(cluster: Cluster, http: httpx.Client) -> None:
    assert cluster.haproxy is not None
    before = {name: int(row["stot"]) for name, row in cluster.haproxy.stats().items()}
    init = {"jsonrpc": "2.0", "id": 1, "method": "initialize",
            "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}}
    first = http.post(f"{cluster.public}/mcp", json=init, headers=MCP_HEADERS)
    assert first.status_code == 200 and "mcp-session-id" not in first.headers  # stateless: nothing to stick to
    upn = _a_user(cluster)
    for _ in range(9):
        assert _lookup(http, cluster.public, upn)["matchType"] == "exact"
    # a session id sent anyway names nothing: there is no session to take over, the call is answered on its own
    body = {"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": {"name": "lookup_user", "arguments": {"query": upn}}}
    stray = http.post(f"{cluster.public}/mcp", json=body, headers={**MCP_HEADERS, "Mcp-Session-Id": "someone-elses"})
    assert tool_answer(stray)["matchType"] == "exact"
    after = {name: int(row["stot"]) for name, row in cluster.haproxy.stats().items()}
    assert all(after[n] - before.get(n, 0) >= 2 for n in ("r0", "r1", "r2")), (before, after)

    # the SDK's own client, through haproxy: every request may land elsewhere
    import anyio
    import httpx2
    from mcp import Client
    from mcp.client.streamable_http import streamable_http_client

    async def session() -> list[Any]:
        async with httpx2.AsyncClient(headers={"Authorization": MCP_HEADERS["Authorization"]}, timeout=30) as h:
            async with Client(streamable_http_client(f"{cluster.public}/mcp", http_client=h), mode="legacy") as client:
                return [await client.call_tool("lookup_user", {"query": upn}) for _ in range(4)]

    for r in anyio.run(session):
        assert not r.is_error and r.structured_content["matchType"] == "exact"


def _a_user(cluster: Cluster) -> str:
    users = sorted(u["userPrincipalName"] for u in cluster.emu.tenant(0).users.values() if u.get("accountEnabled", True))
    return str(users[0])


def test_redis_restarted_mid_run(cluster: Cluster, http: httpx.Client, chat: dict[str, Any]) -> None:
    upn = _a_user(cluster)
    cluster.redis.kill9()
    # tool calls with an API key keep answering from the replicas' mirrors
    for _ in range(6):
        assert _lookup(http, cluster.public, upn)["matchType"] == "exact"
    # sign-in refuses clearly; a session cannot be checked (503, retry), nor the chat token through the tool
    login = http.get(f"{cluster.public}/auth/login", params={"flow": "portal", "return_to": cluster.public + "/"})
    assert login.status_code == 503 and "sign-in is unavailable" in login.text and "retry" in login.text
    assert "Traceback" not in login.text and "127.0.0.1:" + str(cluster.redis.port) not in login.text
    seen = http.get(f"{cluster.public}/auth/session", headers={"Authorization": f"Bearer {chat['token']}"})
    assert seen.status_code == 503 and seen.headers["Retry-After"] and seen.json()["error"] == "temporarily_unavailable"
    tool = call_tool(http, cluster.public, "validate_chat_session", {"session_token": chat["token"]}).json()["result"]
    assert tool["isError"] and "unavailable" in tool["content"][0]["text"]
    health = http.get(f"{cluster.base(0)}/healthz")  # 200: the replica still serves, so the balancer keeps it
    assert health.status_code == 200 and health.json()["status"] == "degraded"
    assert health.json()["sharedStore"] == {"available": False}

    cluster.redis.start()  # same port, its append-only file: what it held comes back
    for i in range(3):
        wait_until(lambda: http.get(f"{cluster.base(i)}/auth/session",
                                    headers={"Authorization": f"Bearer {chat['token']}"}).status_code == 200,
                   timeout=20, what=f"replica {i} using Redis again")
    again = http.get(f"{cluster.public}/auth/login", params={"flow": "portal", "return_to": cluster.public + "/"})
    assert again.status_code == 302
    assert http.get(f"{cluster.base(0)}/healthz").json()["sharedStore"] == {"available": True}
    logs = [r.log() for r in cluster.replicas if r is not None]
    for log in logs:
        assert log.count("is unavailable (connection refused)") <= 1, log[-2000:]
        assert "Traceback" not in log
    assert sum("answers again" in log for log in logs) >= 2


def test_kill9_one_replica_under_load(cluster: Cluster, chat: dict[str, Any]) -> None:
    assert cluster.haproxy is not None
    upn = _a_user(cluster)
    stop = threading.Event()
    results: list[tuple[float, bool, str]] = []
    lock = threading.Lock()

    def worker() -> None:
        with httpx.Client(timeout=30) as h:
            while not stop.is_set():
                started = time.monotonic()
                try:
                    r = call_tool(h, cluster.public, "lookup_user", {"query": upn})
                    ok, why = r.status_code == 200 and not r.json()["result"].get("isError"), str(r.status_code)
                except httpx.HTTPError as exc:
                    ok, why = False, type(exc).__name__
                with lock:
                    results.append((started, ok, why))

    threads = [threading.Thread(target=worker) for _ in range(WORKERS)]
    for t in threads:
        t.start()
    try:
        wait_until(lambda: sum(ok for _, ok, _ in results) >= 30, timeout=60, what="load before the kill")
        killed_at = time.monotonic()
        cluster.kill9(1)
        cluster.haproxy.wait_state("r1", "DOWN")
        down_at = max(time.monotonic(), killed_at + 1.0)  # haproxy has taken it out (on a loaded machine, later than 1 s)
        wait_until(lambda: sum(1 for t, _, _ in results if t > down_at) >= 30, timeout=60, what="load after the kill")
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=60)
    failed = [(t, why) for t, ok, why in results if not ok]
    # only calls in flight on the killed replica may fail: at most one per worker, all started before the kill
    assert len(failed) <= WORKERS, failed
    assert all(t <= down_at for t, _ in failed), (failed, killed_at, down_at)
    after = [ok for t, ok, _ in results if t > down_at]
    assert after and all(after)
    with httpx.Client(timeout=30) as h:
        for _ in failed:  # a client retrying succeeds
            assert _lookup(h, cluster.public, upn)["matchType"] == "exact"
        # sessions survive the replica
        for _ in range(3):
            answer = tool_answer(call_tool(h, cluster.public, "validate_chat_session", {"session_token": chat["token"]}))
            assert answer["valid"] is True
    print(f"kill -9 under load: {len(results)} calls, {len(failed)} failed ({[w for _, w in failed]})")
