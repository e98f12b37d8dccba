"""The first answer of a spawned `entra-mcp serve` over stdio: the MCP handshake, then one lookup_user call.

bench_start_ab and bench_server_memory time a start as spawn -> this answer; both speak the wire directly (plain
JSON lines, no MCP SDK in the benchmark process) so that the measured process is the only one importing it.
"""

from __future__ import annotations

import json
import subprocess
from typing import Any


def first_lookup_answer(proc: subprocess.Popen[bytes], query: str) -> dict[str, Any]:
    """Initialize the MCP session on `proc`'s stdin/stdout and return the reply to lookup_user(`query`).

    Raises SystemExit naming the method when the server answers with an error."""
    assert proc.stdin is not None and proc.stdout is not None
    stdin, stdout = proc.stdin, proc.stdout
    n = 0

    def rpc(method: str, params: dict[str, Any]) -> dict[str, Any]:
        nonlocal n
        n += 1
        stdin.write((json.dumps({"jsonrpc": "2.0", "id": n, "method": method, "params": params}) + "\n").encode())
        stdin.flush()
        reply: dict[str, Any] = json.loads(stdout.readline())
        if "error" in reply:
            raise SystemExit(f"{method} failed: {reply['error']}")
        return reply

    rpc("initialize", {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "bench", "version": "1"}})
    stdin.write(b'{"jsonrpc":"2.0","method":"notifications/initialized"}\n')
    stdin.flush()
    return rpc("tools/call", {"name": "lookup_user", "arguments": {"query": query}})
