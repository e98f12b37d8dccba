"""Helpers for the endurance, crash and hostile-input tests: the product as real processes on loopback.

- `ProductConfig`: a config file for an emulator (server.auth api_key, sign-in on, a short sync interval) and the
  environment the product's processes need (the emulator's secrets, the API key).
- `ServeProcess`: `entra-mcp serve --transport http` for a ProductConfig (tests/_harness.py's, which polls /healthz
  with a deadline in `wait_ready()`).
- `synced_server(root, seed=..., **server)`: a small emulator, its mirror synced (`entra-mcp sync` run in this
  process), `serve --no-sync` on it, ready.
- `run_cli(...)`: an `entra-mcp` command as a subprocess; `sync_until_done(...)` retries `entra-mcp sync` while
  another writer (the background sync) holds the lock.
- `cache_integrity(cache_dir)`: SQLite's integrity check of every database under the cache directory.
- `mirror_differences` (from bench/soak_compare.py): the mirror against the emulator's ground truth.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
from soak import KNOWN_THIRD_PARTY, unexpected_tracebacks  # noqa: E402,F401
from soak_compare import mirror_differences  # noqa: E402

import _harness  # noqa: E402
from _harness import ENTRA_MCP, free_port  # noqa: E402
API_KEY = "endurance-key-0123456789abcdef"
API_KEYS_ENV = "ENDURANCE_API_KEYS"
PORTAL_ENV = "ENDURANCE_PORTAL_SECRET"


def _q(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    return json.dumps(v)


@dataclass
class ProductConfig:
    emulator: Any
    root: Path
    interval_minutes: float = 15.0
    port: int = field(default_factory=free_port)
    auth_mode: str = "api_key"
    cache_dir: Path | None = None
    extra_server: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        if self.cache_dir is None:
            self.cache_dir = self.root / "cache"
        self.path = self.root / "config.toml"
        self.write()

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def tenant_name(self) -> str:
        return str(self.emulator.tenant_name(0))

    def write(self) -> None:
        emu = self.emulator
        public = self.base
        server = {"cache_dir": str(self.cache_dir), "transport": "http", "host": "127.0.0.1", "port": self.port,
                  "public_url": public, **self.extra_server}
        lines = ["[server]"] + [f"{k} = {_q(v)}" for k, v in server.items()]
        lines += ["", "[server.auth]", f"mode = {_q(self.auth_mode)}", f"api_keys_env = {_q(API_KEYS_ENV)}", ""]
        block = emu.config_toml(0).split("[[tenants]]", 1)[1]
        lines += ["[[tenants]]" + block.rstrip(), "", "[tenants.sync]", f"interval_minutes = {self.interval_minutes}", ""]
        lines += ["[oidc]", "enabled = true", f"tenant = {_q(self.tenant_name)}",
                  f"client_id = {_q(emu.portal_app(0).client_id)}", f"client_secret_env = {_q(PORTAL_ENV)}",
                  f"allowed_return_to = [{_q(public + '/')}]", ""]
        self.path.write_text("\n".join(lines), encoding="utf-8")

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in ("ENTRA_MCP_CONFIG", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE")}
        env.update(self.emulator.secret_env(0))
        env.update({PORTAL_ENV: self.emulator.portal_app(0).secrets[0].value, API_KEYS_ENV: API_KEY, "PYTHONUNBUFFERED": "1"})
        return env

    def settings(self) -> Any:
        from entra_mcp.config import load_settings

        return load_settings(str(self.path))


class ServeProcess(_harness.ServeProcess):
    """`entra-mcp serve --transport http [--no-sync]` for a ProductConfig, its log in `root/<name>.log`."""

    def __init__(self, cfg: ProductConfig, *extra: str, name: str = "serve") -> None:
        self.cfg = cfg
        super().__init__(cfg.path, *extra, env=cfg.env(), log_path=cfg.root / f"{name}.log", base=cfg.base)


_LIVE: list[subprocess.Popen[Any]] = []


def track(proc: subprocess.Popen[Any]) -> subprocess.Popen[Any]:
    """Remember a process so the `spawn` fixture kills it if a test ends early."""
    _LIVE.append(proc)
    return proc


@pytest.fixture
def spawn() -> Iterator[Callable[..., ServeProcess]]:
    """`spawn(cfg, *args, name=...)` starts a ServeProcess; every process started in the test is gone after it."""
    def start(cfg: ProductConfig, *args: str, name: str = "serve") -> ServeProcess:
        s = ServeProcess(cfg, *args, name=name)
        track(s.proc)
        return s

    try:
        yield start
    finally:
        while _LIVE:
            proc = _LIVE.pop()
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)


def run_cli(cfg: ProductConfig, *args: str, timeout: float = 120.0, env: dict[str, str] | None = None,
            preexec: Any = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([ENTRA_MCP, "--config", str(cfg.path), *args], capture_output=True, text=True,
                          timeout=timeout, env=env or cfg.env(), preexec_fn=preexec)


@contextmanager
def synced_server(root: Path, *, seed: int, config: type[ProductConfig] = ProductConfig,
                  **extra_server: Any) -> Iterator[tuple[ProductConfig, ServeProcess, Any]]:
    """A small emulated tenant (`seed`), its mirror filled by `entra-mcp sync` (its entry point in this process), and
    `entra-mcp serve --no-sync` on it with `extra_server` in [server], ready; yields (config, server, emulator) and
    stops both at the end."""
    from entra_mcp.devtenant.server import run_emulator

    with run_emulator(size="small", seed=seed) as emu:
        cfg = config(emu, root, extra_server=extra_server)
        synced = _harness.cli_in_process("--config", str(cfg.path), "sync", env=cfg.env())  # no process: ~3 s CPU less
        assert synced.returncode == 0, synced.stderr[-3000:]
        server = ServeProcess(cfg, "--no-sync")
        track(server.proc)
        try:
            server.wait_ready()
            yield cfg, server, emu
        finally:
            server.stop()


def sync_until_done(cfg: ProductConfig, *args: str, timeout: float = 90.0) -> subprocess.CompletedProcess[str]:
    """`entra-mcp sync` until it gets the writer lock (the background sync may hold it); returns the last run."""
    deadline = time.monotonic() + timeout
    while True:
        p = run_cli(cfg, "sync", *args, timeout=timeout)
        if p.returncode == 0 or "another sync" not in p.stderr or time.monotonic() > deadline:
            return p
        time.sleep(0.2)


def cache_integrity(cache_dir: Path) -> list[str]:
    """Problems SQLite finds in the databases under cache_dir (empty: all sound)."""
    problems = []
    for db in sorted(cache_dir.rglob("*.db")):
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
        try:
            rows = con.execute("PRAGMA integrity_check").fetchall()
        finally:
            con.close()
        if rows != [("ok",)]:
            problems.append(f"{db}: {rows[:3]}")
    return problems


def _read_mirror(cfg: ProductConfig, what: str) -> Any:
    from entra_mcp.mirror.store import MirrorStore

    store = MirrorStore(cfg.cache_dir)  # type: ignore[arg-type]
    try:
        return getattr(store, what)(cfg.tenant_name)
    finally:
        store.close()


def load_snapshot(cfg: ProductConfig) -> Any:
    """The tenant's mirror as a fresh reader sees it (None: no mirror)."""
    return _read_mirror(cfg, "load_snapshot")


def mirror_version(cfg: ProductConfig) -> int:
    """The data version: moves when a commit changed objects."""
    return int(_read_mirror(cfg, "version"))


def mirror_stamp(cfg: ProductConfig) -> int:
    """The commit stamp: moves with every commit (0: no mirror)."""
    fresh = _read_mirror(cfg, "freshness")
    return int(fresh.stamp) if fresh is not None else 0


__all__ = ["API_KEY", "ENTRA_MCP", "ProductConfig", "ServeProcess", "cache_integrity", "free_port", "load_snapshot",
           "mirror_differences", "mirror_stamp", "mirror_version", "run_cli", "spawn", "sync_until_done", "synced_server", "track", "unexpected_tracebacks"]
