"""bench/bench_sign_ins.py leaves no work directory behind (the emulator's state and the mirror):
not when it fails, not on Ctrl-C (SIGINT to its process group, as a terminal sends it), not on `kill` (SIGTERM)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from _harness import stop_process, wait_until

BENCH = Path(__file__).resolve().parents[1] / "bench" / "bench_sign_ins.py"


def _start(tmp: Path, *args: str) -> tuple[subprocess.Popen[bytes], Path]:
    tmp.mkdir()
    log = tmp.parent / "bench.log"
    with open(log, "wb") as err:
        proc = subprocess.Popen([sys.executable, str(BENCH), "--size", "small", "--no-report", *args],
                                stdout=subprocess.DEVNULL, stderr=err, env={**os.environ, "TMPDIR": str(tmp)},
                                start_new_session=True)
    return proc, log


def test_a_failed_run_removes_its_work_directory(tmp_path: Path) -> None:
    # the emulator refuses a negative latency: the run fails before measuring anything
    proc, log = _start(tmp_path / "tmp", "--latency-ms", "-1")
    try:
        assert proc.wait(timeout=120) != 0
    finally:
        stop_process(proc)
    assert "--latency-ms" in log.read_text(errors="replace")
    assert list((tmp_path / "tmp").iterdir()) == []


@pytest.mark.parametrize("how", ["ctrl-c", "kill"])
def test_an_interrupted_run_removes_its_work_directory(tmp_path: Path, how: str) -> None:
    proc, log = _start(tmp_path / "tmp")
    try:
        # the emulator is up and the directory sync's child runs: the work directory holds their files
        wait_until(lambda: "directory (users)" in log.read_text(errors="replace"), timeout=120,
                   what="the benchmark syncing the directory", proc=proc, log_path=log)
        assert any(p.name.startswith("bench-signins-") for p in (tmp_path / "tmp").iterdir())
        if how == "ctrl-c":
            os.killpg(proc.pid, signal.SIGINT)
        else:
            proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=120) != 0
    finally:
        stop_process(proc)
    assert list((tmp_path / "tmp").iterdir()) == [], log.read_text(errors="replace")[-2000:]
