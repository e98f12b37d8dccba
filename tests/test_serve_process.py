"""`entra-mcp serve` as a real process: SIGTERM (how service managers and containers stop it) is a clean stop with
exit code 0 over either transport, and nothing it logs on the way is a traceback."""

from __future__ import annotations

import signal
import subprocess
import threading
import time
from typing import IO

import pytest
from _server_fixtures import ENTRA_MCP, ServerEnv, free_port, server_env  # noqa: F401 (fixture)

pytestmark = pytest.mark.timeout(120)


class _Lines:
    """A process's stderr, read on a thread so the test can wait for a line with a deadline."""

    def __init__(self, stream: IO[bytes]) -> None:
        self.lines: list[str] = []
        self.changed = threading.Condition()
        self.thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self.thread.start()

    def _read(self, stream: IO[bytes]) -> None:
        for raw in iter(stream.readline, b""):
            with self.changed:
                self.lines.append(raw.decode("utf-8", "replace"))
                self.changed.notify_all()

    def wait_for(self, text: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        with self.changed:
            while not any(text in line for line in self.lines):
                left = deadline - time.monotonic()
                assert left > 0, f"no {text!r} on stderr within {timeout} s:\n" + "".join(self.lines[-30:])
                self.changed.wait(left)

    def text(self) -> str:
        self.thread.join(timeout=30)
        return "".join(self.lines)


@pytest.mark.parametrize("transport", ["stdio", "http"])
def test_sigterm_is_a_clean_stop_with_exit_code_0(transport: str, server_env: ServerEnv) -> None:
    args = [str(ENTRA_MCP), "--config", str(server_env.config_path), "serve", "--no-sync"]
    ready = "serving MCP over stdio"
    if transport == "http":
        args += ["--transport", "http", "--port", str(free_port())]
        ready = "serving MCP at"
    proc = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=server_env.subprocess_env())
    assert proc.stderr is not None
    err = _Lines(proc.stderr)
    try:
        err.wait_for(ready)
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
        out, _ = proc.communicate(timeout=30)
    log = err.text()
    assert proc.returncode == 0, log[-3000:]  # was -15: killed by the signal, not stopped
    assert "stopped (SIGTERM)" in log
    assert "Traceback" not in log and out == b""
