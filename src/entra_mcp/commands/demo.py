"""`entra-mcp demo`: the server of `entra-mcp serve` over a local emulator of Entra ID + Graph started in-process,
with a throw-away config and cache; needs no config file and no network. The one place besides `entra-mcp devtenant`
where the product imports the emulator.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import tomllib
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from entra_mcp.commands.serve import check_port_free, serve
from entra_mcp.config import Settings, parse_settings
from entra_mcp.errors import EntraMcpError
from entra_mcp.server.stdio import StdoutWire

NAME = "demo"
HELP = "emulator + sync + serve in one command; needs no config and no network"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--transport", choices=["stdio", "http"], default="stdio")
    p.add_argument("--port", type=int, help="HTTP port (http transport)")
    p.add_argument("--size", choices=["small", "medium", "large"], default="small", help="size of the demo tenant")


def demo_settings(emulator: Any, cache_dir: Path, *, transport: str, port: int | None) -> Settings:
    """The config of the demo: the emulator's first tenant (its own config_toml), our transport and port."""
    data = tomllib.loads(emulator.config_toml(0, cache_dir=cache_dir))
    data.setdefault("server", {}).update({"transport": transport, "host": "127.0.0.1", "port": port or 8765})
    for tenant in data.get("tenants", []):
        tenant.setdefault("sync", {})["interval_minutes"] = 5
    return parse_settings(data)


def run(args: argparse.Namespace) -> int:
    transport = getattr(args, "transport", None) or "stdio"
    wire = StdoutWire() if transport == "stdio" else None
    try:
        return _demo(args, transport, wire)
    finally:
        if wire is not None:
            wire.release()


def _demo(args: argparse.Namespace, transport: str, wire: StdoutWire | None) -> int:
    from entra_mcp.devtenant.server import run_emulator

    started = time.perf_counter()
    size = getattr(args, "size", None) or "small"
    if transport == "http":  # a busy port is said now, not after the emulator and the sync
        check_port_free("127.0.0.1", getattr(args, "port", None) or 8765)
    with ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="entra-mcp-demo-")))
        _say(f"entra-mcp demo: starting the local Entra ID + Graph emulator ({size} tenant)...")
        emulator = stack.enter_context(run_emulator(size=size, state_dir=tmp / "emulator"))
        settings = demo_settings(emulator, tmp / "cache", transport=transport, port=getattr(args, "port", None))
        os.environ.update(emulator.secret_env(0))  # the sync app's secret, named by the config
        config_file = tmp / "config.toml"
        config_file.write_text(emulator.config_toml(0, cache_dir=tmp / "cache"), encoding="utf-8")
        _say(f"entra-mcp demo: emulator at {emulator.base_url}; syncing tenant {settings.tenants[0].name!r}...")
        _sync_once(settings)
        _say(f"entra-mcp demo: mirror ready {time.perf_counter() - started:.1f} s after start")

        exe = _executable()

        def ready(where: str) -> None:
            if where == "stdio":
                _say(
                    "entra-mcp demo: serving MCP over stdio: this process now speaks MCP (JSON-RPC) on stdin/stdout "
                    "for an agent runtime; typing here does nothing useful. Register `entra-mcp demo` as a stdio MCP "
                    "server in your agent runtime, or try it by hand:"
                )
            else:
                _say(f"entra-mcp demo: serving MCP over streamable HTTP at {where}   (health: {where[:-4]}/healthz). "
                     "Point your MCP client at that URL, or try it by hand:")
            _say(f"  from another shell:  {exe} --config {config_file} call lookup_user query='alex johnson'")
            _say(f"                       {exe} --config {config_file} call     (lists the tools)")
            if where == "stdio":
                _say(f"  in a browser:        npx @modelcontextprotocol/inspector {exe} demo")
            else:
                _say(f"  in a browser:        npx @modelcontextprotocol/inspector   (transport Streamable HTTP, URL {where})")
            _say(f"entra-mcp demo: ready in {time.perf_counter() - started:.1f} s; stop with Ctrl-C (the demo's files in {tmp} are deleted)")

        interval = settings.tenants[0].sync.interval_minutes * 60  # just synced: the next run is one interval away
        # no view cache: the demo's files are deleted at exit, and a small tenant indexes in milliseconds
        return serve(settings, background_sync=True, wire=wire, on_ready=ready, sync_delay=interval, view_cache=False)


def _sync_once(settings: Settings) -> None:
    """One full sync of every tenant, with a line of progress per area on stderr."""
    import anyio

    from entra_mcp.mirror.store import MirrorStore
    from entra_mcp.sync.engine import sync_tenant

    reported: set[str] = set()

    def progress(tenant: str, area: str, n: int) -> None:
        if area not in reported:
            reported.add(area)
            _say(f"entra-mcp demo:   syncing {area}...")

    store = MirrorStore(settings.server.cache_dir)
    try:
        for tenant in settings.tenants:
            result = anyio.run(lambda: sync_tenant(tenant, store, full=True, progress=progress))
            if result.error:
                raise EntraMcpError(f"the demo sync failed: {result.error}")
            counts = ", ".join(f"{a} {r.objects}" for a, r in result.areas.items() if getattr(r, "objects", None) is not None)
            _say(f"entra-mcp demo: synced in {result.seconds:.1f} s" + (f" ({counts})" if counts else ""))
    finally:
        store.close()


def _executable() -> str:
    """How to run this entra-mcp from another shell: its absolute path when known (a virtual environment's bin is
    rarely on PATH)."""
    import shutil

    argv0 = Path(sys.argv[0]) if sys.argv and sys.argv[0] else None
    if argv0 is not None and argv0.name == "entra-mcp" and argv0.exists():
        return str(argv0.resolve())
    return shutil.which("entra-mcp") or f"{sys.executable} -m entra_mcp"


def _say(text: str) -> None:
    sys.stderr.write(text + "\n")
    sys.stderr.flush()


__all__ = ["HELP", "NAME", "add_arguments", "demo_settings", "run"]
