"""The `entra-mcp` command line. Each command's work lives in its module under entra_mcp.commands; this file only
parses and dispatches.

Exit codes: 0 done, 1 failed, 2 bad configuration or bad usage, 130 interrupted.
"""

from __future__ import annotations

import argparse
import os
import sys
from types import ModuleType
from typing import Sequence, NoReturn

from entra_mcp import __version__
from entra_mcp.commands import call, demo, devtenant, doctor, serve, status, sync
from entra_mcp.errors import ConfigError, EntraMcpError
from entra_mcp.logs import get_logger, setup_logging

log = get_logger("cli")

# in the order `entra-mcp --help` lists them; each has NAME, HELP, add_arguments(parser) and run(args) -> exit code
COMMANDS: tuple[ModuleType, ...] = (serve, sync, status, doctor, call, devtenant, demo)


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error says what is wrong and how to get help, and exits 2."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        sys.stderr.write(f"{self.prog}: error: {message}\nRun `{self.prog} --help` for the options.\n")
        raise SystemExit(2)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="entra-mcp", description="Identity context from Microsoft Entra ID for AI service-desk engineers, over MCP.")
    parser.add_argument("--version", action="version", version=f"entra-mcp {__version__}")
    parser.add_argument("--config", metavar="PATH", help="config file (default: $ENTRA_MCP_CONFIG, else ./config.toml)")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"], type=str.upper)
    # the same two options after the command too (`entra-mcp serve --config PATH`, as agent runtimes are often set up)
    common = _Parser(add_help=False)
    common.add_argument("--config", metavar="PATH", default=argparse.SUPPRESS, help="config file (as before the command)")
    common.add_argument("--log-level", default=argparse.SUPPRESS, choices=["DEBUG", "INFO", "WARNING", "ERROR"], type=str.upper)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for command in COMMANDS:
        p = sub.add_parser(command.NAME, parents=[common], help=command.HELP)
        command.add_arguments(p)
        p.set_defaults(run=command.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help(sys.stderr)
        return 2
    setup_logging(args.log_level)
    # Every file entra-mcp writes (mirror, sign-in store, views, logs it opens) is the service account's alone.
    os.umask(0o077)
    try:
        code: int = args.run(args)
        return code
    except ConfigError as exc:
        sys.stderr.write(f"entra-mcp: configuration problem: {exc}\n")
        return 2
    except EntraMcpError as exc:
        sys.stderr.write(f"entra-mcp: {exc}\n")
        return 1
    except KeyboardInterrupt:
        sys.stderr.write("entra-mcp: interrupted\n")
        return 130
