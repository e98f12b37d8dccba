"""The cache directory is private to the service account (issue 15 item 6): `entra-mcp sync` and `serve` create it
0700 with files 0600, tighten one that others may only read, and refuse to start on one that another account owns or
that others may write (its values are pickles). A served process opens every store (sign-in sessions too); the
refusals and syncs go through the command's entry point in this process (`_harness.cli_in_process`, the same
main(), umask included, without ~3 s CPU of imports per case). The tests run as root, so ownership is tested with a
directory chowned to another uid, and modes by their bits.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any, Iterator

import pytest

from _endurance_fixtures import ProductConfig, ServeProcess, track
from _harness import cli_in_process


@pytest.fixture(scope="module")
def emu() -> Iterator[Any]:
    from entra_mcp.devtenant.server import run_emulator

    with run_emulator(size="small", seed=37) as e:
        yield e


def run_cli(cfg: ProductConfig, *args: str, timeout: float = 120.0, env: dict[str, str] | None = None) -> Any:
    """`entra-mcp --config CFG ARGS` in this process (see the module's docstring)."""
    return cli_in_process("--config", str(cfg.path), *args, env=env or cfg.env(), timeout=timeout)


def _modes(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): stat.S_IMODE(p.stat().st_mode) for p in [root, *root.rglob("*")]}


def test_a_new_cache_is_private(emu: Any, tmp_path: Path) -> None:
    cfg = ProductConfig(emu, tmp_path / "fresh", cache_dir=tmp_path / "fresh" / "deep" / "cache")
    done = run_cli(cfg, "sync")
    assert done.returncode == 0, done.stderr[-2000:]
    server = ServeProcess(cfg, "--no-sync")  # opens the sign-in store too
    track(server.proc)
    try:
        server.wait_ready()
    finally:
        server.stop()
    modes = _modes(cfg.cache_dir)  # type: ignore[arg-type]
    assert (cfg.cache_dir / "sessions").is_dir()  # type: ignore[operator]
    assert modes["."] == 0o700
    loose = {name: oct(mode) for name, mode in modes.items() if mode & 0o077}
    assert loose == {}, loose


@pytest.mark.parametrize("mode", [0o777, 0o775, 0o722])
def test_a_cache_others_may_write_is_refused(emu: Any, tmp_path: Path, mode: int) -> None:
    cfg = ProductConfig(emu, tmp_path / "open")
    cfg.cache_dir.mkdir(parents=True)  # type: ignore[union-attr]
    os.chmod(cfg.cache_dir, mode)  # type: ignore[arg-type]
    for args in (("sync",), ("serve", "--transport", "http", "--no-sync")):
        refused = run_cli(cfg, *args, timeout=60)
        assert refused.returncode == 2, (args, refused.stderr[-2000:])
        assert "writable by other accounts" in refused.stderr and "chmod 700" in refused.stderr
        assert "Traceback" not in refused.stderr
    assert not any(cfg.cache_dir.iterdir())  # type: ignore[union-attr]  # nothing was read or written there


def test_a_cache_of_another_account_is_refused(emu: Any, tmp_path: Path) -> None:
    cfg = ProductConfig(emu, tmp_path / "theirs")
    cfg.cache_dir.mkdir(parents=True, mode=0o700)  # type: ignore[union-attr]
    os.chown(cfg.cache_dir, 65534, 65534)  # type: ignore[arg-type]
    refused = run_cli(cfg, "sync", timeout=60)
    assert refused.returncode == 2, refused.stderr[-2000:]
    assert "belongs to another account" in refused.stderr and "Traceback" not in refused.stderr


def test_a_readable_cache_of_this_account_is_made_private(emu: Any, tmp_path: Path) -> None:
    cfg = ProductConfig(emu, tmp_path / "old")
    cfg.cache_dir.mkdir(parents=True)  # type: ignore[union-attr]
    os.chmod(cfg.cache_dir, 0o755)  # type: ignore[arg-type]
    done = run_cli(cfg, "sync")
    assert done.returncode == 0, done.stderr[-2000:]
    assert stat.S_IMODE(cfg.cache_dir.stat().st_mode) == 0o700  # type: ignore[union-attr]


def test_a_tenant_cannot_be_named_like_the_sign_in_store(emu: Any, tmp_path: Path) -> None:
    cfg = ProductConfig(emu, tmp_path / "reserved")
    cfg.path.write_text(cfg.path.read_text().replace(f'name = "{cfg.tenant_name}"', 'name = "sessions"')
                        .replace(f'tenant = "{cfg.tenant_name}"', 'tenant = "sessions"'))
    refused = run_cli(cfg, "sync", timeout=60)
    assert refused.returncode == 2, refused.stderr[-2000:]
    assert "reserved" in refused.stderr and "Traceback" not in refused.stderr


@pytest.mark.parametrize("key", ["Xq9!zz", "aaaaaaaaaaaaaaaaaaaaaaaa", "0123456"])
def test_a_guessable_api_key_is_refused_at_start(emu: Any, tmp_path: Path, key: str) -> None:
    cfg = ProductConfig(emu, tmp_path / "weak")
    env = {**cfg.env(), "ENDURANCE_API_KEYS": f"{key},another-good-key-0123456789abcdef"}
    refused = run_cli(cfg, "serve", "--transport", "http", "--no-sync", timeout=60, env=env)
    assert refused.returncode == 2, refused.stderr[-2000:]
    assert "too easy to guess (key 1 of 2)" in refused.stderr
    assert key not in refused.stderr.replace("ENDURANCE_API_KEYS", "") and "Traceback" not in refused.stderr
