"""A real redis-server for the tests (and benchmarks): started on a free 127.0.0.1 port in its own directory.

- `RedisServer(root, password=None, persistence=False)`: `redis-server` as a subprocess, no RDB/AOF unless
  `persistence`; `start()` waits (bounded) until it answers PING; `kill9()`, `stop()`, `restart()` (same port, so
  clients configured with its URL reconnect); `.url`, `.port`; `client()` a redis.Redis on it.
- fixture `redis_server` (session scope): one server for the whole run, killed at teardown. Share it by using a key
  prefix of your own (`unique_prefix()`); a test that stops or restarts Redis starts its own `RedisServer`.

Skips (like the browser tests without chromium) when redis-server is not installed: scripts/test.sh installs it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from pathlib import Path
from typing import Any, Iterator

import pytest
from _harness import free_port, stop_process, wait_until

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"


def have_redis() -> bool:
    return os.access(REDIS_SERVER, os.X_OK)


def unique_prefix(name: str = "test") -> str:
    """A key prefix no other test uses (for tests sharing the session's server)."""
    return f"{name}-{uuid.uuid4().hex[:10]}:"


class RedisServer:
    def __init__(self, root: Path, *, port: int | None = None, password: str | None = None,
                 persistence: bool = False, tls: Any = None) -> None:
        """`tls`: devtenant/tls.py's TlsFiles (a CA and a certificate for 127.0.0.1): TLS only, on `port`."""
        self.tls = tls
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.password = password
        self.persistence = persistence
        self.log_path = root / "redis.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"{'rediss' if self.tls else 'redis'}://127.0.0.1:{self.port}/0"

    def argv(self) -> list[str]:
        ports = ["--port", str(self.port)]
        if self.tls:
            ports = ["--port", "0", "--tls-port", str(self.port), "--tls-cert-file", str(self.tls.cert_file),
                     "--tls-key-file", str(self.tls.key_file), "--tls-ca-cert-file", str(self.tls.ca_bundle),
                     "--tls-auth-clients", "no"]
        args = [REDIS_SERVER, *ports, "--bind", "127.0.0.1", "--dir", str(self.root),
                "--logfile", str(self.log_path), "--daemonize", "no", "--databases", "4"]
        if self.persistence:
            args += ["--appendonly", "yes", "--appendfsync", "always", "--save", ""]
        else:
            args += ["--appendonly", "no", "--save", ""]
        if self.password:
            args += ["--requirepass", self.password]
        return args

    def client(self, **kw: Any) -> Any:
        import redis

        if self.tls:
            kw.update(ssl=True, ssl_ca_certs=str(self.tls.ca_bundle))
        return redis.Redis(host="127.0.0.1", port=self.port, password=self.password, socket_timeout=5, **kw)

    def _answers(self) -> bool:
        import redis

        try:
            with self.client(socket_connect_timeout=1) as c:
                return bool(c.ping())
        except redis.exceptions.RedisError:
            return False

    def start(self, timeout: float = 20.0) -> "RedisServer":
        self.proc = subprocess.Popen(self.argv(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_until(self._answers, timeout=timeout, what=f"redis-server on port {self.port}", proc=self.proc,
                   log_path=self.log_path)
        return self

    def kill9(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc, timeout=10)

    def restart(self, timeout: float = 20.0) -> None:
        self.kill9()
        self.start(timeout)

    def __enter__(self) -> "RedisServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.kill9()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    if not have_redis():
        pytest.skip("redis-server is not installed (scripts/test.sh installs it with apt-get)")
    with RedisServer(tmp_path_factory.mktemp("redis")) as server:
        yield server


__all__ = ["REDIS_SERVER", "RedisServer", "have_redis", "redis_server", "unique_prefix"]
