"""The server's tools asked in-process (`entra-mcp call`): the very MCPServer that `serve` runs, through the MCP
SDK's in-memory client, so a call from the shell goes through the same tool table, schema and checks."""

from __future__ import annotations

from contextlib import asynccontextmanager
from typing import Any, AsyncIterator


@asynccontextmanager
async def in_process(server: Any) -> AsyncIterator[Any]:
    """An MCP client session connected to `server` in memory (list_tools, call_tool)."""
    from mcp import Client

    async with Client(server) as client:
        yield client


__all__ = ["in_process"]
