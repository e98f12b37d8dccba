"""Client-caused events (a client gone mid-body, a request refused early while its body still streams in) are one
line in the server's log, not a third-party traceback at ERROR level: an operator reading the log of
`entra-mcp serve --transport http` sees problems of the server, and one line per misbehaving client."""

from __future__ import annotations

import socket
from typing import Iterator

import anyio
import httpx
import httpx2
import pytest
from _endurance_fixtures import API_KEY, ProductConfig, ServeProcess, synced_server
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError
from mcp_types.jsonrpc import INVALID_PARAMS

pytestmark = pytest.mark.timeout(180)

MAX_BODY = 65536


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ProductConfig, ServeProcess]]:
    with synced_server(tmp_path_factory.mktemp("log-noise"), seed=31, max_body_bytes=MAX_BODY) as (cfg, server, _):
        yield cfg, server


def _cut_short(port: int) -> None:
    """A tools/call whose body never arrives in full: the client goes away mid-body."""

    async def main() -> None:
        stream = await anyio.connect_tcp("127.0.0.1", port)
        head = (f"POST /mcp HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: Bearer {API_KEY}\r\n"
                "Accept: application/json, text/event-stream\r\nContent-Type: application/json\r\nContent-Length: 5000\r\n\r\n")
        await stream.send(head.encode() + b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{')
        await stream.aclose()

    anyio.run(main)


def _refused_while_streaming(port: int) -> None:
    """An oversized chunked body: answered 413 early while the client goes on sending, then closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall((f"POST /mcp HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: Bearer {API_KEY}\r\n"
                   "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n").encode())
        chunk = b"x" * 16384
        try:
            for _ in range(8):
                s.sendall(b"%x\r\n" % len(chunk) + chunk + b"\r\n")
            s.recv(4096)
        except OSError:
            pass


def _broken_body_refused_early(port: int, host: str) -> None:
    """Headers the app refuses at once (a foreign Host: 421) and, in the same packet, a body h11 cannot parse:
    uvicorn answers 400 itself, then the app's 421 finds the connection already answered (h11 MUST_CLOSE)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall((f"POST /mcp HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {API_KEY}\r\n"
                   "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\nZZZ\r\n").encode())
        try:
            while s.recv(4096):
                pass
        except OSError:
            pass


def test_client_caused_errors_are_one_line_not_a_traceback(served: tuple[ProductConfig, ServeProcess]) -> None:
    cfg, server = served
    before = len(server.log())
    for _ in range(10):
        _cut_short(cfg.port)
        _refused_while_streaming(cfg.port)
        _broken_body_refused_early(cfg.port, "evil.example")
        _broken_body_refused_early(cfg.port, f"127.0.0.1:{cfg.port}")
    # the server still answers, and its log since then has no traceback at all
    assert httpx.get(f"{cfg.base}/healthz", timeout=10).status_code == 200
    log = server.log()[before:]
    assert "Traceback" not in log and 'File "' not in log, log[-4000:]
    assert " ERROR " not in log, log[-4000:]
    assert "caused by the client" in log  # said in one line


def test_a_prompt_asked_for_wrongly_gets_our_message_and_one_log_line(served: tuple[ProductConfig, ServeProcess]) -> None:
    """prompts/get with a required argument missing, an argument the playbook does not take, or a name no playbook
    has: the caller reads what the prompt takes (not the SDK's "Error rendering prompt X"), the log has one line
    each and no traceback (over a real mcp.Client on HTTP)."""
    cfg, server = served
    before = len(server.log())
    asked = (
        ("lost_app_access", {"user": "adele@contoso.example"},
         "prompt lost_app_access needs the argument(s) app; it takes user (required), app (required)"),
        ("lost_app_access", {"user": "adele@contoso.example", "app": "Salesforce", "colour": "red"},
         "prompt lost_app_access has no argument(s) 'colour'; it takes user (required), app (required)"),
        ("no_such_playbook", {}, "no prompt named 'no_such_playbook'; the prompts are lost_app_access, "),
    )
    refused: list[tuple[int, str]] = []

    async def main() -> None:
        with anyio.fail_after(60):
            await ask()

    async def ask() -> None:
        async with httpx2.AsyncClient(headers={"Authorization": f"Bearer {API_KEY}"}, timeout=30) as http:
            async with Client(streamable_http_client(f"{cfg.base}/mcp", http_client=http), mode="legacy") as client:
                for name, arguments, _ in asked:
                    with pytest.raises(MCPError) as caught:
                        await client.get_prompt(name, arguments)
                    refused.append((caught.value.code, caught.value.message))
                rendered = await client.get_prompt("lost_app_access", {"user": "adele@contoso.example", "app": "Salesforce"})
                assert "Salesforce" in rendered.messages[0].content.text  # type: ignore[union-attr]

    anyio.run(main)
    for (code, message), (_, _, expected) in zip(refused, asked):
        assert code == INVALID_PARAMS and message.startswith(expected), message
    log = server.log()[before:]
    assert "Traceback" not in log and 'File "' not in log and "Error rendering" not in log, log[-4000:]
    lines = [line for line in log.splitlines() if "prompts/get refused" in line]
    assert [expected in line for line, (_, _, expected) in zip(lines, asked)] == [True] * 3, lines
