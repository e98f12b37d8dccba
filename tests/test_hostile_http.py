"""Hostile HTTP against `entra-mcp serve --transport http` (a subprocess, API-key auth, max_body_bytes 64 KiB).

Oversized bodies get 413 (declared or chunked, authenticated or not); malformed requests (garbage JSON, binary,
wrong content type, wrong JSON-RPC shapes, deep nesting, huge or many headers, broken request lines) get a clean 4xx
without a stack trace; clients that disconnect mid-call (cancelled MCP sessions, bodies cut short) and slowloris
connections (partial headers held open) do not stop the server from answering everyone else.
"""

from __future__ import annotations

import os
import random
import selectors
import socket
import threading
import time
from typing import Any, Iterator

import anyio
import httpx
import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from _endurance_fixtures import API_KEY, ProductConfig, ServeProcess, synced_server, unexpected_tracebacks

MAX_BODY = 65536
HEADERS = {"Authorization": f"Bearer {API_KEY}", "Accept": "application/json, text/event-stream",
           "Content-Type": "application/json"}


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ProductConfig, ServeProcess, list[str]]]:
    with synced_server(tmp_path_factory.mktemp("hostile-http"), seed=29, max_body_bytes=MAX_BODY) as (cfg, server, emu):
        yield cfg, server, [u["userPrincipalName"] for u in list(emu.tenant(0).users.values())[:20]]


def _still_serving(cfg: ProductConfig, server: ServeProcess, upns: list[str], clients: int = 4,
                   within: float = 30) -> None:
    """/healthz and `clients` MCP clients' calls answered (`within` seconds: a hang guard, not a speed bound)."""
    assert server.proc.poll() is None, f"the server died:\n{server.log()[-3000:]}"
    assert httpx.get(f"{cfg.base}/healthz", timeout=within / 3).status_code == 200

    async def one(upn: str) -> None:
        async with httpx2.AsyncClient(headers={"Authorization": f"Bearer {API_KEY}"}, timeout=30) as http:
            async with Client(streamable_http_client(f"{cfg.base}/mcp", http_client=http), mode="legacy") as client:
                for _ in range(3):
                    r = await client.call_tool("lookup_user", {"query": upn})
                    assert not r.is_error and r.structured_content["matchType"] == "exact"

    async def main() -> None:
        with anyio.fail_after(within):
            async with anyio.create_task_group() as tg:
                for upn in upns[:clients]:
                    tg.start_soon(one, upn)

    anyio.run(main)


def _clean(r: httpx.Response) -> None:
    assert 400 <= r.status_code < 500, (r.status_code, r.text[:300])
    assert "Traceback" not in r.text and 'File "' not in r.text


def test_oversized_bodies_get_413(served: Any) -> None:
    cfg, server, upns = served
    with httpx.Client(base_url=cfg.base, timeout=20) as http:
        assert http.post("/mcp", headers=HEADERS, content=b"x" * (MAX_BODY + 1)).status_code == 413
        assert http.post("/mcp", content=b"{" * (4 * MAX_BODY)).status_code == 413  # before authentication
        assert http.post("/mcp", headers=HEADERS, content=(b"y" * 8192 for _ in range(40))).status_code == 413  # chunked
        assert http.post("/auth/logout", content=b"z" * (2 * MAX_BODY)).status_code == 413
    _still_serving(cfg, server, upns)


def test_malformed_requests_get_clean_errors(served: Any) -> None:
    cfg, server, upns = served
    ping = b'{"jsonrpc":"2.0","id":1,"method":"ping"}'
    cases: list[tuple[str, dict[str, Any]]] = [
        ("garbage json", {"headers": HEADERS, "content": b"{not json"}),
        ("binary", {"headers": HEADERS, "content": os.urandom(2048)}),
        ("invalid utf-8", {"headers": HEADERS, "content": b'{"jsonrpc":"2.0","id":1,"method":"\xff\xfe"}'}),
        ("wrong content type", {"headers": {**HEADERS, "Content-Type": "text/plain"}, "content": ping}),
        ("form content type", {"headers": {**HEADERS, "Content-Type": "application/x-www-form-urlencoded"}, "content": b"a=1"}),
        ("no accept", {"headers": {k: v for k, v in HEADERS.items() if k != "Accept"}, "content": ping}),
        ("empty body", {"headers": HEADERS, "content": b""}),
        ("json array", {"headers": HEADERS, "content": b"[" + b",".join([ping] * 50) + b"]"}),
        ("wrong shapes", {"headers": HEADERS, "json": {"jsonrpc": "1.0", "id": {"x": [1]}, "method": 123, "params": "x"}}),
        ("deep nesting", {"headers": HEADERS, "content": b"[" * 30000 + b"]" * 30000}),
        ("deep objects", {"headers": HEADERS, "content": b'{"a":' * 10000 + b"1" + b"}" * 10000}),
        ("huge number", {"headers": HEADERS, "content": b'{"jsonrpc":"2.0","id":' + b"9" * 50000 + b',"method":"ping"}'}),
        ("unknown session", {"headers": {**HEADERS, "Mcp-Session-Id": "../../etc/passwd"}, "content": ping}),
        ("huge header", {"headers": {**HEADERS, "X-Big": "a" * 200_000}, "content": ping}),
        ("many headers", {"headers": [*HEADERS.items(), *[(f"X-H{i}", "v" * 10) for i in range(3000)]], "content": ping}),
        ("latin-1 bearer", {"headers": {**HEADERS, "Authorization": b"Bearer " + b"\xe9\xff" * 10}, "content": ping}),
    ]
    with httpx.Client(base_url=cfg.base, timeout=20) as http:
        for name, kw in cases:
            try:
                r = http.post("/mcp", **kw)
            except httpx.RemoteProtocolError:  # the server may drop a request it will not parse: also clean
                continue
            assert 400 <= r.status_code < 500, (name, r.status_code, r.text[:300])
            _clean(r)
        for method in ("PUT", "PATCH", "TRACE", "OPTIONS"):
            _clean(http.request(method, "/mcp", headers=HEADERS))
    for raw in (b"GARBAGE\r\n\r\n", b"GET / HTTP/9.9\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + os.urandom(64),
                b"POST /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: -5\r\n\r\n",
                b"POST /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n\r\nZZZ\r\n"):
        with socket.create_connection(("127.0.0.1", cfg.port), timeout=10) as s:
            s.sendall(raw)
            reply = b""
            try:
                while chunk := s.recv(4096):
                    reply += chunk
            except (socket.timeout, ConnectionResetError):
                pass
            assert b"Traceback" not in reply
            assert reply == b"" or reply.startswith(b"HTTP/1.1 4"), reply[:200]
    _still_serving(cfg, server, upns)
    assert unexpected_tracebacks(server.log()) == []


def test_clients_disconnecting_mid_call_do_not_stop_the_server(served: Any) -> None:
    cfg, server, upns = served
    rnd = random.Random(5)

    async def impatient(n: int) -> None:
        """An MCP client that opens a session, calls tools and is cancelled at a random moment."""
        with anyio.move_on_after(rnd.uniform(0.0, 0.6)):
            async with httpx2.AsyncClient(headers={"Authorization": f"Bearer {API_KEY}"}, timeout=30) as http:
                async with Client(streamable_http_client(f"{cfg.base}/mcp", http_client=http), mode="legacy") as client:
                    while True:
                        await client.call_tool("get_ticket_identity_context",
                                               {"requester": upns[n % len(upns)], "ticket_text": " ".join(upns)})

    async def cut_short() -> None:
        """A request whose body never arrives in full: the client goes away."""
        stream = await anyio.connect_tcp("127.0.0.1", cfg.port)
        head = (f"POST /mcp HTTP/1.1\r\nHost: 127.0.0.1:{cfg.port}\r\nAuthorization: Bearer {API_KEY}\r\n"
                "Accept: application/json, text/event-stream\r\nContent-Type: application/json\r\nContent-Length: 5000\r\n\r\n")
        await stream.send(head.encode() + b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{')
        await stream.aclose()

    async def main() -> None:
        with anyio.fail_after(60):
            async with anyio.create_task_group() as tg:
                for n in range(40):
                    tg.start_soon(impatient, n)
                for _ in range(40):
                    tg.start_soon(cut_short)

    anyio.run(main)
    _still_serving(cfg, server, upns, clients=8)
    assert unexpected_tracebacks(server.log()) == []


class _SlowClients:
    """`count` connections that each send the start of a request's headers and never finish it, for as long as the
    block runs: one the server drops (at its request deadline, server.request_timeout_seconds) is replaced at once by a
    new one, so that the server has `count` unfinished requests all along, however long the block takes."""

    def __init__(self, port: int, count: int) -> None:
        self.port, self.count = port, count
        self.selector = selectors.DefaultSelector()
        self.opened = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._keep, daemon=True)

    def _open(self) -> None:
        s = socket.create_connection(("127.0.0.1", self.port), timeout=10)
        s.sendall(f"POST /mcp HTTP/1.1\r\nHost: 127.0.0.1:{self.port}\r\nX-Slow-{self.opened}: ".encode())
        s.setblocking(False)
        self.selector.register(s, selectors.EVENT_READ)
        self.opened += 1

    def _keep(self) -> None:
        while not self.stop.is_set():
            for key, _ in self.selector.select(timeout=0.1):  # readable: the server answered or closed it
                self.selector.unregister(key.fileobj)
                key.fileobj.close()
                self._open()

    def held(self) -> int:
        return len(self.selector.get_map())

    def __enter__(self) -> _SlowClients:
        for _ in range(self.count):
            self._open()
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(10)
        for key in list(self.selector.get_map().values()):
            key.fileobj.close()
        self.selector.close()


def test_slowloris_connections_do_not_block_others(served: Any) -> None:
    """300 unfinished requests held all along (each one the server drops at its deadline replaced at once): /healthz
    and other callers are answered meanwhile. Bounded by progress, not speed: a server they blocked would never answer
    (the bound is a hang guard a loaded machine stays far from)."""
    cfg, server, upns = served
    with _SlowClients(cfg.port, 300) as slow:
        _still_serving(cfg, server, upns, within=120)
        assert slow.held() == 300 and slow.thread.is_alive()
    _still_serving(cfg, server, upns)


@pytest.mark.slow
def test_a_partial_request_is_dropped_after_the_keep_alive_timeout(served: Any) -> None:
    cfg, server, upns = served
    with socket.create_connection(("127.0.0.1", cfg.port), timeout=2) as s:
        s.sendall(f"POST /mcp HTTP/1.1\r\nHost: 127.0.0.1:{cfg.port}\r\nX-Slow: ".encode())
        deadline = time.monotonic() + 15 + 3  # server.request_timeout_seconds is 15 s by default
        closed = False
        while time.monotonic() < deadline and not closed:
            try:
                closed = s.recv(1024) == b"" or True
            except socket.timeout:
                continue
            except ConnectionResetError:
                closed = True
        assert closed, "the server still holds a request whose headers never finished"
