"""Several `entra-mcp serve` replicas on one Redis behind a real haproxy, for the replica tests and bench (1).

- `HAProxy(root, port, backends, host)`: haproxy in the foreground (`-db`), its config generated into `root`:
  round-robin, health checks on /healthz (Host: the public host, as a client would send), a dead server's requests
  redispatched (`retry-on conn-failure empty-response`, `option redispatch`); `status()` reads each server's state from
  the stats socket, `wait_state(server, "UP"|"DOWN")` polls it (bounded).
- `Cluster(root, emulator, redis, replicas=3)`: one sync of the emulator into a seed cache directory, copied into each
  replica's own cache directory; each replica its own config file (port, cache_dir) naming the same Redis, with
  [server.auth] api_key and sign-in on, public_url = haproxy's address. `start()` starts the replicas (in parallel)
  and haproxy; `kill9(i)`, `restart(i)`, `stop()`.
- `SignInClient`: a browser-like client (cookies by hand, so each request can go to a chosen replica) that signs in
  through the emulator's login pages; `chat_token()` runs the chat hand-over.
- `call_tool(http, base, tool, args)`: one stateless JSON-RPC tools/call (no initialize, no session id), with the API key.

The replicas do not sync themselves (`--no-sync`): each serves the copy of one synced mirror, so every replica answers
from the same data version and the tests measure the serving path. Nothing here sleeps to wait: every wait polls with
a deadline.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import tomllib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx

from _harness import ServeProcess, free_port, stop_process, wait_until

HAPROXY = shutil.which("haproxy") or "/usr/sbin/haproxy"
API_KEY = "replica-key-0123456789abcdefXYZ"
API_KEYS_ENV = "REPLICA_TEST_API_KEYS"
PORTAL_ENV = "REPLICA_TEST_PORTAL_SECRET"
WIDGET = "https://chat.example.test"
VERIFIER = "widget-verifier-" + "w" * 40
MCP_HEADERS = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json",
               "Authorization": f"Bearer {API_KEY}", "MCP-Protocol-Version": "2025-06-18"}


def have_haproxy() -> bool:
    return os.access(HAPROXY, os.X_OK)


def _q(v: Any) -> str:
    return ("true" if v else "false") if isinstance(v, bool) else json.dumps(v)


# ------------------------------------------------------------------ haproxy


class HAProxy:
    def __init__(self, root: Path, port: int, backends: list[int], host: str) -> None:
        self.root = root
        self.port = port
        self.backends = backends
        self.socket_path = root / "haproxy.sock"
        self.config_path = root / "haproxy.cfg"
        self.log_path = root / "haproxy.log"
        servers = "\n".join(f"    server r{i} 127.0.0.1:{p} check" for i, p in enumerate(backends))
        self.config_path.write_text(f"""global
    maxconn 2000
    stats socket {self.socket_path} mode 600 level admin

defaults
    mode http
    timeout connect 2s
    timeout client 60s
    timeout server 60s
    timeout http-request 15s
    option http-server-close
    retries 2
    option redispatch 1
    retry-on conn-failure empty-response

frontend entra_mcp
    bind 127.0.0.1:{port}
    default_backend replicas

backend replicas
    balance roundrobin
    option httpchk
    http-check send meth GET uri /healthz ver HTTP/1.1 hdr Host {host}
    http-check expect status 200
    default-server inter 300ms fall 2 rise 1
{servers}
""", encoding="utf-8")
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen([HAPROXY, "-f", str(self.config_path), "-db"], stdout=self._log, stderr=self._log)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _command(self, command: str) -> str:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(5)
            s.connect(str(self.socket_path))
            s.sendall(command.encode() + b"\n")
            chunks = []
            while chunk := s.recv(65536):
                chunks.append(chunk)
        return b"".join(chunks).decode()

    def stats(self) -> dict[str, dict[str, str]]:
        """Per server of the backend: haproxy's CSV stats row (status, stot = requests sent to it, ...)."""
        try:
            text = self._command("show stat")
        except OSError:
            return {}
        lines = [x for x in text.splitlines() if x]
        if not lines:
            return {}
        header = lines[0].lstrip("# ").split(",")
        rows = [dict(zip(header, x.split(","))) for x in lines[1:]]
        return {r["svname"]: r for r in rows if r.get("pxname") == "replicas" and r["svname"].startswith("r")}

    def status(self) -> dict[str, str]:
        return {name: row.get("status", "") for name, row in self.stats().items()}

    def wait_state(self, server: str, state: str, timeout: float = 20) -> None:
        wait_until(lambda: self.status().get(server, "").startswith(state), timeout=timeout,
                   what=f"haproxy marking {server} {state}", proc=self.proc, log_path=self.log_path)

    def stop(self) -> None:
        stop_process(self.proc, timeout=10)
        self._log.close()


# ------------------------------------------------------------------ the product


class Cluster:
    def __init__(self, root: Path, emulator: Any, redis: Any, *, replicas: int = 3,
                 extra_server: dict[str, Any] | None = None) -> None:
        self.root = root
        self.emu = emulator
        self.redis = redis
        self.count = replicas
        self.extra_server = extra_server or {}
        self.haproxy_port = free_port()
        self.public = f"http://127.0.0.1:{self.haproxy_port}"
        self.ports = [free_port() for _ in range(replicas)]
        self.replicas: list[ServeProcess | None] = [None] * replicas
        self.haproxy: HAProxy | None = None
        emulator.add_redirect_uri(self.public + "/auth/callback", 0)

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in ("ENTRA_MCP_CONFIG", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE")}
        env.update(self.emu.secret_env(0))
        env.update({PORTAL_ENV: self.emu.portal_app(0).secrets[0].value, API_KEYS_ENV: API_KEY, "PYTHONUNBUFFERED": "1"})
        return env

    def config_text(self, port: int, cache_dir: Path, *, redis_url: str | None = None, shared: bool = True,
                    **store: Any) -> str:
        """A replica's config; `shared=False`: without [server.store] (one machine's local store, stateful /mcp)."""
        emu = self.emu
        server = {"cache_dir": str(cache_dir), "transport": "http", "host": "127.0.0.1", "port": port,
                  "public_url": self.public, **self.extra_server}
        lines = ["[server]"] + [f"{k} = {_q(v)}" for k, v in server.items()]
        lines += ["", "[server.auth]", 'mode = "api_key"', f"api_keys_env = {_q(API_KEYS_ENV)}", ""]
        if shared:
            lines += ["[server.store]", f"redis_url = {_q(redis_url or self.redis.url)}", 'key_prefix = "replicas:"']
            lines += [f"{k} = {_q(v)}" for k, v in store.items()] + [""]
        block = emu.config_toml(0).split("[[tenants]]", 1)[1]
        lines += ["[[tenants]]" + block.rstrip(), ""]
        lines += ["[oidc]", "enabled = true", f"tenant = {_q(emu.tenant_name(0))}",
                  f"client_id = {_q(emu.portal_app(0).client_id)}", f"client_secret_env = {_q(PORTAL_ENV)}",
                  f"allowed_return_to = {_q([self.public + '/', WIDGET + '/chat'])}", ""]
        return "\n".join(lines)

    def write_config(self, name: str, port: int, cache_dir: Path, **kw: Any) -> Path:
        path = self.root / f"{name}.toml"
        path.write_text(self.config_text(port, cache_dir, **kw), encoding="utf-8")
        tomllib.loads(path.read_text())  # a broken file is the harness's bug: say so here
        return path

    def seed_mirror(self) -> Path:
        """One sync of the emulator (the product's own, in this process) into a seed cache directory, copied into
        each replica's own."""
        import anyio

        from entra_mcp.config import load_settings
        from entra_mcp.mirror.store import MirrorStore
        from entra_mcp.sync.engine import sync_tenant

        seed = self.root / "seed-cache"
        settings = load_settings(self.write_config("seed", free_port(), seed))
        saved = {k: os.environ.get(k) for k in self.emu.secret_env(0)}
        os.environ.update(self.emu.secret_env(0))
        store = MirrorStore(seed)
        try:
            result = anyio.run(lambda: sync_tenant(settings.tenants[0], store, full=True))
            assert result.error is None, result.error
        finally:
            store.close()
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
        return seed

    def base(self, i: int) -> str:
        return f"http://127.0.0.1:{self.ports[i]}"

    def _spawn(self, i: int) -> ServeProcess:
        cache = self.root / f"cache-{i}"
        config = self.write_config(f"replica-{i}", self.ports[i], cache)
        return ServeProcess(config, "--no-sync", env=self.env(), log_path=self.root / f"replica-{i}.log",
                            base=self.base(i))

    def start(self, timeout: float = 120) -> "Cluster":
        seed = self.seed_mirror()
        for i in range(self.count):
            shutil.copytree(seed, self.root / f"cache-{i}", symlinks=True)
        self.replicas = [self._spawn(i) for i in range(self.count)]
        with ThreadPoolExecutor(self.count) as pool:
            list(pool.map(lambda r: r.wait_ready(timeout), self.replicas))
        self.haproxy = HAProxy(self.root, self.haproxy_port, self.ports, f"127.0.0.1:{self.haproxy_port}")
        for i in range(self.count):
            self.haproxy.wait_state(f"r{i}", "UP")
        return self

    def kill9(self, i: int) -> None:
        replica = self.replicas[i]
        assert replica is not None
        replica.kill9()

    def restart(self, i: int, timeout: float = 120) -> None:
        self.replicas[i] = self._spawn(i)
        self.replicas[i].wait_ready(timeout)  # type: ignore[union-attr]

    def logs(self) -> str:
        return "\n".join(r.log() for r in self.replicas if r is not None)

    def stop(self) -> None:
        if self.haproxy is not None:
            self.haproxy.stop()
        live = [r for r in self.replicas if r is not None]
        for r in live:  # all at once: each takes its graceful-shutdown time
            if r.proc.poll() is None:
                r.proc.terminate()
        for r in live:
            r.stop()


# ------------------------------------------------------------------ clients


def call_tool(http: httpx.Client, base: str, tool: str, arguments: dict[str, Any], *, id: int = 1) -> httpx.Response:
    """One tools/call on a stateless /mcp: no initialize and no Mcp-Session-Id needed."""
    body = {"jsonrpc": "2.0", "id": id, "method": "tools/call", "params": {"name": tool, "arguments": arguments}}
    return http.post(f"{base}/mcp", json=body, headers=MCP_HEADERS)


def tool_answer(resp: httpx.Response) -> dict[str, Any]:
    assert resp.status_code == 200, f"{resp.status_code} {resp.text[:300]}"
    result = resp.json()["result"]
    assert not result.get("isError"), result
    return dict(result["structuredContent"])


class SignInClient:
    """Signs in through the emulator's login pages, each step on the replica the test names (cookies by hand)."""

    def __init__(self, emu: Any) -> None:
        import ssl

        self.emu = emu
        self.http = httpx.Client(timeout=30, follow_redirects=False)
        self.idp = httpx.Client(timeout=30, verify=ssl.create_default_context(cafile=str(emu.ca_bundle)))
        self.cookies: dict[str, str] = {}

    def close(self) -> None:
        self.http.close()
        self.idp.close()

    def _keep(self, resp: httpx.Response) -> httpx.Response:
        for name, value in resp.cookies.items():
            self.cookies[name] = value
        return resp

    def get(self, url: str, **kw: Any) -> httpx.Response:
        return self._keep(self.http.get(url, cookies=self.cookies, **kw))

    def post(self, url: str, **kw: Any) -> httpx.Response:
        return self._keep(self.http.post(url, cookies=self.cookies, **kw))

    def user(self, n: int = 0) -> str:
        users = [u for u in self.emu.tenant(0).users.values()
                 if u.get("accountEnabled", True) and u.get("userType", "Member") == "Member"]
        users.sort(key=lambda u: u["userPrincipalName"])
        return str(users[n]["userPrincipalName"])

    def authenticate(self, authorize_url: str, username: str) -> str:
        """The emulator's sign-in form; the callback URL it redirects to (on the public address)."""
        from entra_mcp.devtenant.model import DEFAULT_USER_PASSWORD

        page = self.idp.get(authorize_url)
        assert page.status_code == 200, page.text[:500]
        ctx = re.search(r'name="ctx" value="([^"]+)"', page.text)
        action = re.search(r'action="([^"]+)"', page.text)
        assert ctx and action, page.text[:500]
        base = urlsplit(authorize_url)
        resp = self.idp.post(f"{base.scheme}://{base.netloc}{action.group(1)}",
                             data={"ctx": ctx.group(1), "username": username, "password": DEFAULT_USER_PASSWORD})
        assert resp.status_code == 302, resp.text[:500]
        return str(resp.headers["location"])

    def sign_in(self, login_base: str, callback_base: str, *, flow: str = "portal", return_to: str,
                **params: str) -> httpx.Response:
        """/auth/login on `login_base`, the IdP, then /auth/callback on `callback_base` (another replica)."""
        start = self.get(f"{login_base}/auth/login", params={"flow": flow, "return_to": return_to, **params})
        assert start.status_code == 302, start.text[:500]
        callback = urlsplit(self.authenticate(start.headers["location"], self.user()))
        return self.get(f"{callback_base}{callback.path}?{callback.query}")

    def chat_token(self, login_base: str, callback_base: str, exchange_base: str) -> str:
        from entra_mcp.oidc.sessions import s256

        done = self.sign_in(login_base, callback_base, flow="chat", return_to=f"{WIDGET}/chat",
                            chat_challenge=s256(VERIFIER))
        assert done.status_code == 303, done.text[:500]
        code = parse_qs(urlsplit(done.headers["location"]).fragment)["chat_code"][0]
        resp = self.post(f"{exchange_base}/auth/chat/exchange", json={"code": code, "code_verifier": VERIFIER},
                         headers={"Origin": WIDGET})
        assert resp.status_code == 200, resp.text[:500]
        return str(resp.json()["chatSessionToken"])


__all__ = ["API_KEY", "HAPROXY", "Cluster", "HAProxy", "SignInClient", "call_tool", "free_port", "have_haproxy",
           "tool_answer"]
