"""Disk faults under the cache directory: full, then read-only, then healthy again.

The cache directory lives on a small tmpfs mounted for the test (we run as root, so chmod would not stop writes).
While the disk is full or read-only, `entra-mcp sync` and `serve` stop with exit 1 and a message that names the
directory and says what to do (`status` still answers, exit 0, and shows that message per tenant); nothing half-written is left (the mirror keeps its last good version, SQLite
finds nothing wrong). Once space or write access returns, a sync brings the mirror to the emulator's ground truth.
The commands run through their entry point in this process (`_harness.cli_in_process`: the same main(), its exit
codes and messages, without ~3 s CPU of imports for each of the eight runs).
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from _endurance_fixtures import ProductConfig, cache_integrity, load_snapshot, mirror_differences, mirror_version
from _harness import cli_in_process
from _sync_fixtures import control_of  # noqa: F401  (the emulator's control API over HTTPS)


def _mount(args: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["mount", *args], capture_output=True, text=True, timeout=30)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 16 MB tmpfs at tmp_path/disk (unmounted afterwards)."""
    where = tmp_path / "disk"
    where.mkdir()
    p = _mount(["-t", "tmpfs", "-o", "size=16m,mode=0755", "tmpfs", str(where)])
    if p.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root with CAP_SYS_ADMIN): {p.stderr.strip()[:200]}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], capture_output=True, timeout=30)


def run_cli(cfg: ProductConfig, *args: str, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
    return cli_in_process("--config", str(cfg.path), *args, env=cfg.env(), timeout=timeout)


def _fill(disk: Path) -> Path:
    filler = disk / "filler"
    with open(filler, "wb") as f:
        try:
            while True:
                f.write(b"\0" * 65536)
                f.flush()
        except OSError:
            pass
    return filler


def _serve_exit(cfg: ProductConfig) -> subprocess.CompletedProcess[str]:
    """`entra-mcp serve --transport http --no-sync` must give up on its own; 60 s is a bound, not a wait."""
    return run_cli(cfg, "serve", "--transport", "http", "--no-sync", timeout=60)


def _assert_clear(p: subprocess.CompletedProcess[str], cfg: ProductConfig, *, reason: str) -> None:
    text = p.stdout + p.stderr
    assert p.returncode == 1, (p.returncode, text[-1500:])
    assert str(cfg.cache_dir) in text, f"the message does not name the cache directory:\n{text[-1500:]}"
    assert reason in text, f"the message does not say {reason!r}:\n{text[-1500:]}"
    assert "Fix:" in text, f"the message does not say what to do:\n{text[-1500:]}"
    assert "Traceback" not in text


def test_full_then_read_only_cache_dir_fails_clearly_and_recovers(small_disk: Path, fresh_emulator: Callable[..., Any],
                                                                   control_of: Any, tmp_path: Path) -> None:
    emu = fresh_emulator(size="small", seed=31)
    ctl = control_of(emu)
    cfg = ProductConfig(emu, tmp_path / "product", cache_dir=small_disk / "cache")
    assert run_cli(cfg, "sync").returncode == 0
    good = mirror_version(cfg)
    ctl.mutate([{"op": "create_user", "set": {"displayName": "Disk Fault", "userPrincipalName": f"diskfault@{emu.tenant(0).domain}"}}])

    # the disk fills up
    filler = _fill(small_disk)
    for args in (["sync"], ["sync", "--full"]):
        _assert_clear(run_cli(cfg, *args), cfg, reason="disk is full")
    _assert_clear(_serve_exit(cfg), cfg, reason="disk is full")
    filler.unlink()
    assert cache_integrity(cfg.cache_dir) == []  # type: ignore[arg-type]
    assert mirror_version(cfg) == good, "a failed run changed the mirror"
    assert load_snapshot(cfg) is not None

    # the disk turns read-only
    assert _mount(["-o", "remount,ro", str(small_disk)]).returncode == 0
    try:
        _assert_clear(run_cli(cfg, "sync"), cfg, reason="read-only")
        _assert_clear(_serve_exit(cfg), cfg, reason="read-only")
        # status always answers (exit 0) and says per tenant why the mirror cannot be read
        st = run_cli(cfg, "status")
        assert st.returncode == 0, st.stderr[-1500:]
        assert "mirror unreadable" in st.stdout and "read-only" in st.stdout and "Traceback" not in st.stdout + st.stderr
    finally:
        assert _mount(["-o", "remount,rw", str(small_disk)]).returncode == 0
    assert cache_integrity(cfg.cache_dir) == []  # type: ignore[arg-type]
    assert mirror_version(cfg) == good

    # healthy again: the next sync catches up
    p = run_cli(cfg, "sync")
    assert p.returncode == 0, p.stderr[-1500:]
    assert mirror_differences(load_snapshot(cfg), ctl.snapshot()) == []
    assert mirror_version(cfg) > good
