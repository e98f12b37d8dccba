"""The product and the emulator as real processes on loopback, for the tests and the benchmarks alike.

- `free_port()`: a free TCP port on 127.0.0.1.
- `wait_until(check, timeout=..., what=...)`: poll `check()` every 50 ms until it is true, at most `timeout` seconds;
  fails at once (with the process's log) when the watched process has exited.
- `stop_process(proc)`: SIGTERM, then SIGKILL when it does not stop in time; returns the exit code.
- `ServeProcess(config, *args, env=..., log_path=..., base=...)`: `entra-mcp serve` as a subprocess, its output in a
  log file; `wait_ready()` polls `/healthz` with a generous overall deadline.
- `DevtenantProcess(*args, root=...)`: `entra-mcp devtenant` as a subprocess; once it says "ready" its config block
  (`.config`, parsed TOML) and secret exports (`.env`) are read from its stdout.
- `cli_in_process(*argv, env=...)`: `entra-mcp ARGV...` through its entry point in this process (no ~3 s CPU of
  imports per case), for tests of what a command says and returns rather than of the process; a CompletedProcess.
- `serve_app(app)`: an ASGI app under uvicorn in a thread on a free port until the block ends; yields the base URL.

Tests import it as `_harness` (tests/ is on pytest's path); bench/ scripts put tests/ on `sys.path` first.
Failures raise `NotReady` (an AssertionError, so a test reports it as a failure; a benchmark stops with it).
"""

from __future__ import annotations

import os
import shlex
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import tomllib
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

import httpx

ENTRA_MCP = str(Path(sys.executable).parent / "entra-mcp")
POLL_SECONDS = 0.05


# Headless Debian Chromium for the browser tests (playwright drives it; scripts/test.sh installs it).
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


class NotReady(AssertionError):
    """A process or server did not become ready within its bound (or exited first)."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _tail(path: Path | None, chars: int = 3000) -> str:
    if path is None or not path.exists():
        return ""
    return "\n" + path.read_text(errors="replace")[-chars:]


def wait_until(check: Callable[[], bool], *, timeout: float, what: str,
               proc: subprocess.Popen[Any] | None = None, log_path: Path | None = None) -> None:
    """Poll `check()` until it returns true; at most `timeout` seconds, and no longer than `proc` lives."""
    deadline = time.monotonic() + timeout
    stop = threading.Event()
    while True:
        if proc is not None and proc.poll() is not None:
            raise NotReady(f"{what}: the process exited with {proc.returncode}{_tail(log_path)}")
        if check():
            return
        if time.monotonic() > deadline:
            raise NotReady(f"{what}: not within {timeout:g} s{_tail(log_path)}")
        stop.wait(POLL_SECONDS)


def stop_process(proc: subprocess.Popen[Any], timeout: float = 20.0) -> int | None:
    """SIGTERM, then SIGKILL if it does not stop in time; returns the exit code."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
    return proc.returncode


def live_children(pid: int) -> set[int]:
    """A process's children that are still running (not those ended and not reaped yet): e.g. serve's answer workers."""
    kids: set[int] = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            kids |= {int(k) for k in (task / "children").read_text().split()}
        except FileNotFoundError:
            pass
    live = set()
    for kid in kids:
        try:
            if not Path(f"/proc/{kid}/stat").read_text().rsplit(") ", 1)[1].startswith("Z"):
                live.add(kid)
        except FileNotFoundError:
            pass
    return live


def modules_imported_by(imports: str, watched: tuple[str, ...]) -> list[str]:
    """Which of the `watched` modules a fresh interpreter has loaded after `imports` (Python statements)."""
    code = f"import sys\n{imports}\nprint(','.join(sorted(m for m in {watched!r} if m in sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return [m for m in out.stdout.strip().split(",") if m]


def cpu_seconds(pid: int) -> float:
    """User + system CPU a process has used, in seconds (0 once it has ended)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def healthz_ok(base: str, timeout: float = 30.0) -> bool:
    """One GET of /healthz answered 200 within `timeout` seconds. (A server starting on a loaded machine can take
    seconds to answer its first request: a short per-request timeout abandons requests it would have answered and
    queues new ones behind them.)"""
    try:
        return httpx.get(f"{base}/healthz", timeout=timeout).status_code == 200
    except httpx.HTTPError:
        return False


class ServeProcess:
    """`entra-mcp --config CONFIG serve --transport http ARGS...` as a subprocess; output appended to `log_path`.

    `argv` replaces the `entra-mcp` executable (e.g. `[sys.executable, "-c", ...]`)."""

    def __init__(self, config: Path, *args: str, env: dict[str, str], log_path: Path, base: str,
                 argv: list[str] | None = None, options: tuple[str, ...] = ()) -> None:
        self.base = base
        self.log_path = log_path
        self._log = open(log_path, "ab")
        self.proc = subprocess.Popen([*(argv or [ENTRA_MCP]), "--config", str(config), *options, "serve",
                                      "--transport", "http", *args], stdout=self._log, stderr=self._log, env=env)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_ready(self, timeout: float = 180.0) -> None:
        """Poll /healthz until it answers 200, at most `timeout` seconds in all (generous: a start on a loaded 2-CPU
        machine); each request may wait for the rest of that deadline (at most 30 s), so a slow first answer counts."""
        deadline = time.monotonic() + timeout
        wait_until(lambda: healthz_ok(self.base, max(1.0, min(30.0, deadline - time.monotonic()))), timeout=timeout,
                   what="entra-mcp serve answering /healthz", proc=self.proc, log_path=self.log_path)

    def kill9(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)
        self._log.close()

    def stop(self, timeout: float = 20.0) -> int | None:
        code = stop_process(self.proc, timeout)
        if not self._log.closed:
            self._log.close()
        return code


class DevtenantProcess:
    """`entra-mcp devtenant --port 0 ARGS...` as a subprocess, ready on return (bounded by `timeout`).

    `.config`: the printed config block (parsed TOML); `.env`: its `export` lines; `.base_url`, `.ca_bundle`,
    `.tenant_id`, `.tenant_name` of its first tenant; `.ready_seconds`: from the start to "ready" (50 ms polls).
    Output goes to files under `root`."""

    def __init__(self, *args: str, root: Path, timeout: float = 600.0, argv: list[str] | None = None) -> None:
        root.mkdir(parents=True, exist_ok=True)
        self.out_path, self.log_path = root / "devtenant.out", root / "devtenant.log"
        started = time.monotonic()
        with open(self.out_path, "wb") as out, open(self.log_path, "wb") as err:
            self.proc = subprocess.Popen([*(argv or [ENTRA_MCP]), "devtenant", "--port", "0", *args], stdout=out,
                                         stderr=err, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        try:
            wait_until(lambda: "\nready\n" in "\n" + self.log_path.read_text(errors="replace"), timeout=timeout,
                       what="entra-mcp devtenant saying ready", proc=self.proc, log_path=self.log_path)
        except BaseException:
            stop_process(self.proc)
            raise
        self.ready_seconds = time.monotonic() - started
        # the config on stdout (TOML only), the secret's export line on stderr: both written before "ready"
        self.config_text = self.out_path.read_text()
        logged = self.log_path.read_text(errors="replace").splitlines()
        self.env = dict(shlex.split(x)[1].split("=", 1) for x in logged if x.startswith("export "))
        self.config = tomllib.loads(self.config_text)
        first = self.config["tenants"][0]
        self.base_url: str = first["login_url"]
        self.ca_bundle: str = first["ca_bundle"]
        self.tenant_id: str = first["tenant_id"]
        self.tenant_name: str = first["name"]

    def client_credentials_token(self) -> httpx.Response:
        """The first tenant's sync app asks for a Graph token with the printed config and secret, over TLS trusting
        only the printed ca_bundle."""
        tenant = self.config["tenants"][0]
        ctx = ssl.create_default_context(cafile=self.ca_bundle)
        with httpx.Client(verify=ctx, timeout=30) as client:
            return client.post(f"{tenant['login_url']}/{self.tenant_id}/oauth2/v2.0/token", data={
                "grant_type": "client_credentials", "client_id": tenant["client_id"],
                "client_secret": self.env["DEVTENANT_CLIENT_SECRET"], "scope": f"{tenant['graph_url']}/.default"})

    def stop(self, timeout: float = 20.0) -> int | None:
        return stop_process(self.proc, timeout)


def cli_in_process(*argv: str, env: dict[str, str] | None = None, cwd: Path | None = None,
                   timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
    """`entra-mcp ARGV...` run by its entry point (`entra_mcp.cli.main`) in this process: stdout and stderr captured,
    os.environ replaced by `env` and the working directory by `cwd` meanwhile; what main() changes for the process
    (the root logger's handlers and levels, the umask) is put back afterwards. An exception escaping main() is what
    the process would have printed: a traceback on stderr and exit 1. It runs in a thread bounded by `timeout`, so a
    command that should refuse to start but serves fails the test instead of hanging it.

    For tests of what a command says and returns (usage errors, config refusals, `call` answers, `--help`); a test
    about the process itself (signals, stdin kinds, exit on SIGTERM, its logs) starts the real `entra-mcp`."""
    import contextlib
    import io
    import logging
    import traceback

    from entra_mcp.cli import main

    out, err = io.StringIO(), io.StringIO()
    result: list[int] = []

    def run() -> None:
        try:
            result.append(int(main(list(argv))))
        except SystemExit as exc:  # argparse: --help, usage errors
            code = exc.code
            result.append(code if isinstance(code, int) else (0 if code is None else 1))
        except BaseException:  # noqa: BLE001 -- reported as the process would report it
            err.write(traceback.format_exc())
            result.append(1)

    root, package = logging.getLogger(), logging.getLogger("entra_mcp")
    saved_logging = (root.handlers[:], root.level, package.level)
    saved_env, saved_cwd = dict(os.environ), os.getcwd()
    umask = os.umask(0o022)
    os.umask(umask)
    if env is not None:
        os.environ.clear()
        os.environ.update(env)
    try:
        if cwd is not None:
            os.chdir(cwd)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            thread = threading.Thread(target=run, name="entra-mcp " + " ".join(argv)[:60], daemon=True)
            thread.start()
            thread.join(timeout)
    finally:
        os.chdir(saved_cwd)
        os.umask(umask)
        if env is not None:
            os.environ.clear()
            os.environ.update(saved_env)
        root.handlers[:] = saved_logging[0]
        root.setLevel(saved_logging[1])
        package.setLevel(saved_logging[2])
    if thread.is_alive():
        raise NotReady(f"entra-mcp {' '.join(argv)} (in-process): still running after {timeout:g} s\n"
                       f"{err.getvalue()[-3000:]}")
    return subprocess.CompletedProcess(["entra-mcp", *argv], result[0], out.getvalue(), err.getvalue())


@contextmanager
def serve_app(app: Any, port: int | None = None, **config: Any) -> Iterator[str]:
    """Run the ASGI `app` with uvicorn on 127.0.0.1 (a free port unless given) until the block ends. `config`: more
    uvicorn.Config arguments (e.g. ssl_certfile/ssl_keyfile: the URL yielded is then https)."""
    import uvicorn

    port = port or free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", access_log=False,
                                           lifespan="on", **config))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()

    def started() -> bool:
        if not thread.is_alive():
            raise NotReady("uvicorn stopped while starting")
        return bool(server.started)

    wait_until(started, timeout=20, what="uvicorn serving")
    try:
        yield f"{'https' if config.get('ssl_certfile') else 'http'}://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


__all__ = ["CHROMIUM", "CHROMIUM_ARGS", "ENTRA_MCP", "DevtenantProcess", "NotReady", "ServeProcess", "cli_in_process",
           "free_port", "healthz_ok", "serve_app", "stop_process", "wait_until"]
