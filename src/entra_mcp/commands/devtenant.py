"""`entra-mcp devtenant`: run the local emulator of Entra ID and Microsoft Graph (the one place besides `entra-mcp demo`
where the product imports the emulator).

stdout gets only the config that points the product at the emulator, as valid TOML (`entra-mcp devtenant >
config.toml` saves a working config); stderr gets progress, the `export` line of the generated client secret (this is
a local test bed: printing its own throw-away secret is the point; it is the same on every start with the same seed),
then a line "ready" once it serves. It runs until SIGINT or SIGTERM; with --print-config it stops right after printing.

The TLS files (the CA the config names in ca_bundle) live in a stable directory by default,
~/.cache/entra-mcp/devtenant-<port> ($XDG_CACHE_HOME is honoured), so a saved config still works after a restart on
the same port; with --port 0 (a random port, so no saved config can work again) they go to a temporary directory.
"""

from __future__ import annotations

import argparse
import os
import shlex
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable
from urllib.parse import urlsplit

from entra_mcp.logs import get_logger

log = get_logger("commands.devtenant")

NAME = "devtenant"
HELP = "run the local emulator of Entra ID and Microsoft Graph"


def _ranged(kind: Callable[[str], Any], lo: float, hi: float | None, what: str) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {what}") from None
        if value < lo or (hi is not None and value > hi):
            bound = f"between {lo:g} and {hi:g}" if hi is not None else f"at least {lo:g}"
            raise argparse.ArgumentTypeError(f"{text} is out of range: must be {bound}")
        return value

    return parse


def _redirect_uri(text: str) -> str:
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.fragment:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not an absolute http(s) URL without a fragment, e.g. http://127.0.0.1:8765/auth/callback"
        )
    return text


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--port", type=_ranged(int, 0, 65535, "a port number"), default=8443,
                   help="HTTPS port on 127.0.0.1 (default 8443; 0 picks a free one)")
    p.add_argument("--size", choices=["small", "medium", "large"], default="small", help="size of each tenant")
    p.add_argument("--seed", type=_ranged(int, 0, None, "a whole number"), default=1,
                   help="seed of the generated directory (same seed, same tenant)")
    p.add_argument("--tenants", type=_ranged(int, 1, 20, "a whole number"), default=1, help="how many tenants")
    p.add_argument("--customers", type=_ranged(int, 1, 1000, "a whole number"), default=0, metavar="N",
                   help="instead: N customer tenants with ONE multi-tenant app consented in each (a service provider's "
                        "setup); the config shares the app in [tenant_defaults]")
    p.add_argument("--state-dir", metavar="DIR",
                   help="where ca.pem and the TLS files go (default: ~/.cache/entra-mcp/devtenant-PORT, kept across "
                   "restarts so a saved config keeps working; a temporary directory with --port 0)")
    p.add_argument("--print-config", action="store_true",
                   help="print the config (stdout) and the secret's export line (stderr), then stop")
    p.add_argument("--latency-ms", type=_ranged(float, 0, 60_000, "a number"), default=0.0,
                   help="added to every login and Graph response")
    p.add_argument("--throttle-next", type=_ranged(int, 0, None, "a whole number"), default=0, metavar="N",
                   help="the next N Graph requests get 429")
    p.add_argument("--error-next", type=_ranged(int, 0, None, "a whole number"), default=0, metavar="N",
                   help="the next N Graph requests get 503/504")
    p.add_argument("--drop-next", type=_ranged(int, 0, None, "a whole number"), default=0, metavar="N",
                   help="the next N Graph responses are cut mid-body")
    p.add_argument("--token-lifetime", type=_ranged(int, 1, 86_400, "a whole number of seconds"), default=3599,
                   metavar="S", help="lifetime of issued access tokens in seconds (default 3599)")
    p.add_argument("--no-throttling", action="store_true", help="turn off Graph's resource-unit throttling")
    p.add_argument("--redirect-uri", action="append", type=_redirect_uri, default=[], metavar="URI",
                   help="add a redirect URI to the portal app (repeatable)")


def default_state_dir(port: int) -> Path | None:
    """~/.cache/entra-mcp/devtenant-PORT (None for port 0: a temporary directory)."""
    if not port:
        return None
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "entra-mcp" / f"devtenant-{port}"


def faults_from(args: argparse.Namespace) -> Any:
    from entra_mcp.devtenant.faults import FaultPlan

    return FaultPlan(
        latency_ms=args.latency_ms, throttle_next=args.throttle_next, error_next=args.error_next,
        drop_next=args.drop_next, token_lifetime_s=args.token_lifetime, throttling_enabled=not args.no_throttling,
    )


def run(args: argparse.Namespace) -> int:
    from entra_mcp.devtenant.model import DEFAULT_USER_PASSWORD
    from entra_mcp.devtenant.server import run_emulator

    def progress(message: str) -> None:
        sys.stderr.write(f"devtenant: {message}\n")
        sys.stderr.flush()

    started = time.monotonic()
    state = provider = None
    if args.customers:
        from entra_mcp.devtenant.customers import customer_state

        progress(f"generating {args.customers} {args.size} customer tenant(s) with seed {args.seed}, one multi-tenant app")
        state, provider = customer_state(args.customers, args.size, args.seed, progress=progress)
    else:
        progress(f"generating {args.tenants} {args.size} tenant(s) with seed {args.seed}")
    with run_emulator(
        state, size=args.size, seed=args.seed, tenants=args.tenants, port=args.port, faults=faults_from(args),
        state_dir=args.state_dir or default_state_dir(args.port), progress=progress,
    ) as emu:
        # From here on a signal stops the server cleanly; before (while generating), Ctrl+C simply interrupts.
        stop = threading.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())
        for uri in args.redirect_uri:
            emu.add_redirect_uri(uri)
        if provider is not None:
            from entra_mcp.devtenant.customers import PROVIDER_SECRET_ENV, provider_config

            defaults, entries = provider_config(emu, provider, [emu.tenant_name(i) for i in range(len(emu.tenants()))])
            sys.stdout.write(f"# entra-mcp devtenant: {len(emu.tenants())} customer tenants, one multi-tenant app\n"
                             f"{defaults}\n{entries}")
            sys.stdout.flush()
            progress("the config names the provider app's secret variable; set it in the shell that runs entra-mcp:")
            sys.stderr.write(f"export {PROVIDER_SECRET_ENV}={shlex.quote(provider.secrets[0].value)}\n")
            sys.stderr.flush()
        out = [emu.config_toml(tenant_index=None)] if provider is None else []
        for i, tenant in enumerate(emu.tenants() if provider is None else []):
            out.append(f"# {emu.tenant_name(i)} ({tenant.domain}): portal app (sign-in) {emu.portal_app(i).client_id}, "
                       f"API app (bearer audience) {emu.api_app(i).client_id}; users sign in with their UPN and "
                       f"the password {DEFAULT_USER_PASSWORD}")
        if provider is None:
            sys.stdout.write("\n".join(out) + "\n")  # TOML only: `entra-mcp devtenant > config.toml` works
            sys.stdout.flush()
            progress("the config names the client secret's variable; set it in the shell that runs entra-mcp:")
            exports = [f"export {name}={shlex.quote(value)}" for name, value in emu.secret_env(tenant_index=None).items()]
            sys.stderr.write("\n".join(exports) + "\n")
            sys.stderr.flush()
        if args.print_config:
            return 0
        progress(f"serving {emu.base_url} (login and Graph) after {time.monotonic() - started:.1f} s; "
                 "control API at /_emulator; Ctrl+C stops")
        sys.stderr.write("ready\n")
        sys.stderr.flush()
        stop.wait()
        progress("stopping")
    return 0


__all__ = ["HELP", "NAME", "add_arguments", "default_state_dir", "faults_from", "run"]
