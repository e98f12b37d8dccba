"""The live-call peer of bench/bench_server.py as an MCP server over stdio: every tool asks Graph (the emulator) at
call time, the way live-call MCP servers answer, and returns Graph's JSON. Started by the benchmark with
PEER_GRAPH (https://host/v1.0), PEER_CA (the emulator's CA file) and PEER_TOKEN (an app token) in its environment.
`noop` answers without doing anything (the floor of an MCP round trip). Same SDK, same stdio transport code and the
same result shape (one text block, no output schema) as entra-mcp, so only the answering differs."""

from __future__ import annotations

import json
import os
import ssl
import sys
from pathlib import Path
from typing import Any

import httpx
from mcp.server.mcpserver import MCPServer
from mcp_types import CallToolResult, TextContent

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_server import peer_tools  # noqa: E402

server: MCPServer[Any] = MCPServer(name="live-peer")
_http: list[Any] = []


def _text(text: str) -> CallToolResult:
    """Graph's JSON as one text block, as entra-mcp's results are built (no output schema for the client to check)."""
    return CallToolResult(content=[TextContent(type="text", text=text)])


async def _ask(tool: str, args: dict[str, Any]) -> CallToolResult:
    if not _http:
        ctx = ssl.create_default_context(cafile=os.environ["PEER_CA"])
        http = httpx.AsyncClient(verify=ctx, headers={"Authorization": f"Bearer {os.environ['PEER_TOKEN']}"}, timeout=30)
        _http.append(peer_tools(http, os.environ["PEER_GRAPH"]))
    return _text(json.dumps(await _http[0][tool](args)))


@server.tool()
async def noop() -> CallToolResult:
    return _text("ok")


@server.tool()
async def lookup_user(query: str) -> CallToolResult:
    return await _ask("lookup_user", {"query": query})


@server.tool()
async def check_account_state(user: str) -> CallToolResult:
    return await _ask("check_account_state", {"user": user})


@server.tool()
async def list_group_memberships(user: str) -> CallToolResult:
    return await _ask("list_group_memberships", {"user": user})


@server.tool()
async def list_group_members(group: str, limit: int = 50) -> CallToolResult:
    return await _ask("list_group_members", {"group": group, "limit": limit})


@server.tool()
async def get_app_principal(app: str) -> CallToolResult:
    return await _ask("get_app_principal", {"app": app})


@server.tool()
async def check_app_access(user: str, app: str) -> CallToolResult:
    return await _ask("check_app_access", {"user": user, "app": app})


@server.tool()
async def get_ticket_identity_context(requester: str, ticket_text: str) -> CallToolResult:
    return await _ask("get_ticket_identity_context", {"requester": requester, "ticket_text": ticket_text})


if __name__ == "__main__":
    import logging

    from entra_mcp.server.stdio import StdoutWire, run_stdio

    logging.getLogger("httpx").setLevel(logging.WARNING)
    run_stdio(server, StdoutWire())  # the stdio transport of `entra-mcp serve`: like for like
