"""The `entra-mcp` command line. Each command's work lives in its own module; this file only parses and dispatches.

Exit codes: 0 done, 1 failed, 2 bad configuration or bad usage, 130 interrupted.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Callable, Sequence

from entra_mcp import __version__
from entra_mcp.errors import ConfigError, EntraMcpError
from entra_mcp.logs import get_logger, setup_logging

log = get_logger("cli")

# command -> "module:function"; each function takes the parsed args and returns an exit code
_COMMANDS = {
    "serve": "entra_mcp.server.command:run_serve",
    "sync": "entra_mcp.sync.command:run_sync",
    "status": "entra_mcp.sync.command:run_status",
    "doctor": "entra_mcp.sync.command:run_doctor",
    "devtenant": "entra_mcp.devtenant.command:run",
    "demo": "entra_mcp.server.command:run_demo",
}


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error says what is wrong and how to get help, and exits 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.print_usage(sys.stderr)
        sys.stderr.write(f"{self.prog}: error: {message}\nRun `{self.prog} --help` for the options.\n")
        raise SystemExit(2)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="entra-mcp", description="Identity context from Microsoft Entra ID for AI service-desk engineers, over MCP.")
    parser.add_argument("--version", action="version", version=f"entra-mcp {__version__}")
    parser.add_argument("--config", metavar="PATH", help="config file (default: $ENTRA_MCP_CONFIG, else ./config.toml)")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"], type=str.upper)
    # the same two options after the command too (`entra-mcp serve --config PATH`, as agent runtimes are often set up)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", metavar="PATH", default=argparse.SUPPRESS, help="config file (as before the command)")
    common.add_argument("--log-level", default=argparse.SUPPRESS, choices=["DEBUG", "INFO", "WARNING", "ERROR"], type=str.upper)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    p = sub.add_parser("serve", parents=[common], help="run the MCP server (syncs in the background unless --no-sync)")
    p.add_argument("--transport", choices=["stdio", "http"])
    p.add_argument("--host")
    p.add_argument("--port", type=int)
    p.add_argument("--no-sync", action="store_true", help="serve the mirror as it is; do not sync in the background")

    p = sub.add_parser("sync", parents=[common], help="one sync run of every enabled area")
    p.add_argument("--tenant", help="only this tenant (its name in the config)")
    p.add_argument("--full", action="store_true", help="ignore delta links and pull everything")

    p = sub.add_parser("status", parents=[common], help="per tenant and area: enabled, last success, last error, counts, age")
    p.add_argument("--json", action="store_true", help="machine-readable output")

    sub.add_parser("doctor", parents=[common], help="check config, credentials and each area's Graph permission")

    p = sub.add_parser("devtenant", parents=[common], help="run the local emulator of Entra ID and Microsoft Graph")
    from entra_mcp.devtenant.command import add_arguments

    add_arguments(p)

    p = sub.add_parser("demo", parents=[common], help="emulator + sync + serve in one command; needs no config and no network")
    p.add_argument("--transport", choices=["stdio", "http"], default="stdio")
    p.add_argument("--port", type=int, help="HTTP port (http transport)")
    p.add_argument("--size", choices=["small", "medium", "large"], default="small", help="size of the demo tenant")
    return parser


def _resolve(target: str) -> Callable[[argparse.Namespace], int]:
    module, func = target.split(":")
    return getattr(importlib.import_module(module), func)  # type: ignore[no-any-return]


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help(sys.stderr)
        return 2
    setup_logging(args.log_level)
    try:
        return _resolve(_COMMANDS[args.command])(args)
    except ConfigError as exc:
        sys.stderr.write(f"entra-mcp: configuration problem: {exc}\n")
        return 2
    except EntraMcpError as exc:
        sys.stderr.write(f"entra-mcp: {exc}\n")
        return 1
    except KeyboardInterrupt:
        sys.stderr.write("entra-mcp: interrupted\n")
        return 130
