"""`entra-mcp devtenant`: run the local emulator of Entra ID and Microsoft Graph."""

from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--port", type=int, default=8443, help="HTTPS port on 127.0.0.1 (0 picks a free one)")
    p.add_argument("--size", choices=["small", "medium", "large"], default="small")
    p.add_argument("--seed", type=int, default=1)


def run(args: argparse.Namespace) -> int:
    raise NotImplementedError
