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
from entra_mcp.commands import audit, call, demo, devtenant, doctor, serve, status, sync, tenants
from entra_mcp.errors import ConfigError, EntraMcpError
from entra_mcp.logs import get_logger, setup_logging

log = get_logger("cli")

# in the order `entra-mcp --help` lists them; each has NAME, HELP, add_arguments(parser) and run(args) -> exit code
COMMANDS: tuple[ModuleType, ...] = (serve, sync, status, doctor, call, audit, tenants, devtenant, demo)


# What `entra-mcp COMMAND --help` says above the options: what it does, what it needs, an example.
_DESCRIPTIONS = {
    "serve": "Run the MCP server over the local mirror: stdio for an agent runtime that launches it (the default),\n"
             "or streamable HTTP at /mcp for hosted agents. Syncs every tenant in the background every\n"
             "interval_minutes unless --no-sync; /healthz tells whether each mirror is fresh or failing.\n\n"
             "  entra-mcp --config /etc/entra-mcp/config.toml serve\n"
             "  entra-mcp serve --transport http --port 8765",
    "sync": "Run one sync of every enabled area of every tenant (or --tenant NAME) from Microsoft Graph into the\n"
            "mirror: delta when it can, --full to pull everything. Exit 0 done (areas disabled for a missing\n"
            "permission are named), 1 failed, 2 bad config. Schedule it (cron, systemd timer) with serve --no-sync.\n\n"
            "  entra-mcp sync --tenant contoso",
    "status": "Show, from the mirror alone (no network), each tenant's areas: enabled or why not, last success, last\n"
              "error (while it is newer than the last success), object counts and age. --json for scripts.",
    "doctor": "Check the config, get a token, probe each area's Graph permission, and say what to grant in Entra ID.\n"
              "Exit 0 all good, 1 a problem found, 2 bad config.",
    "call": "Ask one of the server's MCP tools from the shell and print its answer, computed from the local mirror\n"
            "(run `entra-mcp sync` first; nothing goes to the network). Arguments are key=value pairs named as in\n"
            "the tool's input schema; without TOOL the tools and their arguments are listed. --json prints the\n"
            "structured answer. Exit 0 answered, 1 the tool's error (unknown user...), 2 bad usage.\n\n"
            "  entra-mcp call lookup_user query='alex johnson' limit=5\n"
            "  entra-mcp call check_account_state user=alex.johnson@contoso.com --json",
    "audit": "Answer from the audit trail ([server.audit]): who looked up this user (--user: UPN, name or id,\n"
             "resolved through the mirror), what this caller looked at (--caller), between two times (--since,\n"
             "--until: ISO or 6h/3d back from now). --verify checks the hash chain and names the first broken line.\n"
             "Exit 0 done, 1 the chain is broken, 2 bad usage.\n\n"
             "  entra-mcp audit --user alex.johnson@contoso.com --since 7d\n"
             "  entra-mcp audit --caller desk-bot --verify",
    "tenants": "The customer tenants of a deployment serving many (one multi-tenant app consented in each):\n"
               "list: each tenant and its mirror's state; add NAME TENANT: write the entry to tenants_file and print\n"
               "the admin-consent link; check: token and each area's permission per tenant, several at a time.\n"
               "Exit 0 all good, 1 a problem found, 2 bad config or a refused entry.\n\n"
               "  entra-mcp tenants add acme 00000000-0000-0000-0000-000000000000\n"
               "  entra-mcp tenants check --concurrency 16",
    "devtenant": "Run the local emulator of Entra ID and Microsoft Graph (real HTTPS on 127.0.0.1, tokens, paging,\n"
                 "delta, throttling). stdout is the config that points entra-mcp at it (valid TOML); stderr gets\n"
                 "the client secret's export line and progress.\n\n"
                 "  entra-mcp devtenant > config.toml      # then run the printed export line in your shell\n"
                 "  entra-mcp --config config.toml sync",
    "demo": "Start the emulator, sync it and serve it in one command: no config, no tenant, no network. Over stdio\n"
            "(the default) it is an MCP server for an agent runtime; it prints on stderr how to ask it from another\n"
            "shell (entra-mcp call) or the MCP Inspector.\n\n"
            "  entra-mcp demo\n"
            "  entra-mcp demo --transport http --port 8765",
}


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
        p = sub.add_parser(command.NAME, parents=[common], help=command.HELP,
                           description=_DESCRIPTIONS.get(command.NAME, command.HELP),
                           formatter_class=argparse.RawDescriptionHelpFormatter)
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
