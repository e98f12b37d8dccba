"""Soak test: the assembled product under load, faults and directory churn, the way an operator runs it.

    python bench/soak.py --minutes 2          # a quick look
    python bench/soak.py --minutes 30         # the long run (figures in docs/benchmarks.md)

Everything is on 127.0.0.1 and bounded in time:
- the emulator as a subprocess (`entra-mcp devtenant --size medium --port 0`), driven through its control API;
- `entra-mcp serve --transport http` as a subprocess with server.auth.mode = entra (or api_key), sign-in on, and
  the background sync every `--interval-minutes` (default 1; the scheduler adds +-10% jitter, so 54-66 s);
- `--clients` concurrent MCP clients (mcp.Client over streamable HTTP), each signed in as its own user with a
  bearer token from the emulator, re-minted before it expires (the token lifetime is short on purpose), calling a
  mix of every tool; each client reopens its MCP session every few dozen calls, like agents opening tickets;
- a mutator changing users, groups, memberships, managers and app role assignments through the control API;
- faults through the control API: 429 bursts, 503/504s, dropped connections, short token lifetimes, and once a
  delta-token expiry (every delta link refused, so the next sync must fall back to a full one);
- a sampler of the server's RSS (from /proc) and of /healthz.

At the end, with faults off and the mutator stopped, one `entra-mcp sync` (a delta run, as the scheduler does it)
brings the mirror up to date: every area but app role assignments must then equal the emulator's ground truth
object by object and membership by membership (assignments of unchanged service principals are refreshed only
every 60 minutes, see sync/areas.py); then `entra-mcp sync --full`, after which everything must be equal. The
served view is probed for the last user the mutator created.

Exit 0 when no call failed, the final sync succeeded and the mirror is identical; 1 otherwise. `--json PATH` writes
the full report (tests/test_endurance_soak.py reads it).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, AsyncIterator, Generator

import anyio
import httpx
import httpx2

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from _harness import DevtenantProcess, ServeProcess, free_port  # noqa: E402
from soak_compare import mirror_differences, truth_counts  # noqa: E402

BIN = Path(sys.executable).parent
ENTRA_MCP = str(BIN / "entra-mcp")
SCOPE = "Identity.Investigate"
STACK_MARKERS = ("Traceback", 'File "')
API_KEYS_ENV = "SOAK_API_KEYS"
# Third-party tracebacks that aborted or malformed requests put in the server's log while the client got a clean
# answer (or had gone): uvicorn's h11 refusing an early 421/403/413 after it answered a broken body itself; the MCP
# SDK's logger.exception for a client gone mid-body, and for a POST racing its session's DELETE at client close (the
# SDK then also tries to answer that POST a second time: the RuntimeError).
KNOWN_THIRD_PARTY = ("h11._util.LocalProtocolError: can't handle event type Response when role=SERVER and state=MUST_CLOSE",
                     "starlette.requests.ClientDisconnect", "anyio.ClosedResourceError",
                     "RuntimeError: Unexpected ASGI message 'http.response.start' sent, after response already completed.")


def unexpected_tracebacks(log: str) -> list[str]:
    """The tracebacks in a server log, minus KNOWN_THIRD_PARTY; each as its last line (the exception)."""
    out = []
    for block in log.split("Traceback (most recent call last):")[1:]:
        last = next((ln for ln in block.splitlines() if ln and not ln.startswith(" ")), "?")
        if last.strip() not in KNOWN_THIRD_PARTY:
            out.append(last.strip())
    return out


@dataclass
class Options:
    seconds: float = 120.0
    clients: int = 32
    size: str = "medium"
    seed: int = 11
    interval_minutes: float = 1.0
    auth: str = "entra"  # entra | api_key
    faults: bool = True
    token_lifetime_s: int = 120
    mutate_every_s: float = 1.0
    fault_every_s: float = 15.0
    think_ms: float = 100.0
    calls_per_session: int = 60
    rss_every_s: float = 5.0
    workdir: Path | None = None
    json_path: Path | None = None
    quiet: bool = False


# ------------------------------------------------------------------ small helpers


def say(opts: Options, text: str) -> None:
    if not opts.quiet:
        sys.stderr.write(f"soak [{time.strftime('%H:%M:%S')}] {text}\n")
        sys.stderr.flush()


def percentile(values: list[float], p: float) -> float:
    if not values:
        return 0.0
    s = sorted(values)
    k = min(len(s) - 1, max(0, int(round(p / 100.0 * (len(s) - 1)))))
    return s[k]


def rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        return None
    return None


def toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, list):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    raise TypeError(type(v))


def toml_dump(data: dict[str, Any]) -> str:
    """Enough TOML for our config: scalars, lists, tables, arrays of tables (with sub-tables)."""
    lines: list[str] = []

    def table(prefix: str, t: dict[str, Any], header: str | None) -> None:
        if header:
            lines.append(header)
        for k, v in t.items():
            if not isinstance(v, dict) and not (isinstance(v, list) and v and isinstance(v[0], dict)):
                lines.append(f"{k} = {toml_value(v)}")
        lines.append("")
        for k, v in t.items():
            name = f"{prefix}{k}"
            if isinstance(v, dict):
                table(f"{name}.", v, f"[{name}]")
            elif isinstance(v, list) and v and isinstance(v[0], dict):
                for item in v:
                    table(f"{name}.", item, f"[[{name}]]")

    table("", data, None)
    return "\n".join(lines)


# ------------------------------------------------------------------ processes


class Emulator(DevtenantProcess):
    """`entra-mcp devtenant` as a subprocess; its config block parsed from stdout."""

    def __init__(self, opts: Options, root: Path) -> None:
        super().__init__("--size", opts.size, "--seed", str(opts.seed), "--state-dir", str(root / "emulator"),
                         root=root, timeout=180)


class Server(ServeProcess):
    """`entra-mcp serve --transport http` as a subprocess."""

    def __init__(self, config_path: Path, env: dict[str, str], log_path: Path, port: int) -> None:
        self.port = port
        super().__init__(config_path, env=env, log_path=log_path, base=f"http://127.0.0.1:{port}")


# ------------------------------------------------------------------ clients


class BearerAuth(httpx2.Auth):
    """A signed-in engineer's bearer token for /mcp, minted by the emulator's login host for one user and renewed
    before it expires (the way an agent runtime refreshes its token); a 401 renews it once and retries."""

    def __init__(self, soak: "Soak", upn: str | None) -> None:
        self.soak = soak
        self.upn = upn
        self.token: str | None = None
        self.renew_at = 0.0

    async def _renew(self) -> None:
        self.token, lifetime = await self.soak.mint(self.upn)
        self.renew_at = time.time() + lifetime * 0.6
        self.soak.stats["tokenRenewals"] += 1

    async def async_auth_flow(self, request: httpx2.Request) -> AsyncIterator[httpx2.Request]:  # type: ignore[override]
        if self.upn is None:  # api_key mode
            request.headers["Authorization"] = f"Bearer {self.soak.api_key}"
            yield request
            return
        if self.token is None or time.time() >= self.renew_at:
            await self._renew()
        request.headers["Authorization"] = f"Bearer {self.token}"
        response = yield request
        if response.status_code == 401:
            self.soak.stats["reauth_401"] += 1
            await self._renew()
            request.headers["Authorization"] = f"Bearer {self.token}"
            yield request

    def sync_auth_flow(self, request: httpx2.Request) -> Generator[httpx2.Request, httpx2.Response, None]:
        raise RuntimeError("async only")


@dataclass
class Pool:
    """Stable objects the clients ask about (the mutator changes them but never deletes them)."""

    upns: list[str]
    names: list[str]
    group_ids: list[str]
    app_ids: list[str]
    sp_names: list[str]


def tool_call(pool: Pool, rnd: random.Random) -> tuple[str, dict[str, Any]]:
    upn = rnd.choice(pool.upns)
    kind = rnd.random()
    if kind < 0.22:
        q = rnd.choice([upn, rnd.choice(pool.names), upn.split("@")[0], rnd.choice(pool.names).split(" ")[0]])
        return "lookup_user", {"query": q, "limit": rnd.choice([5, 10, 25])}
    if kind < 0.37:
        return "list_group_memberships", {"user": upn, "transitive": rnd.random() < 0.7}
    if kind < 0.49:
        return "list_group_members", {"group": rnd.choice(pool.group_ids), "transitive": rnd.random() < 0.5, "limit": 50}
    if kind < 0.63:
        return "check_account_state", {"user": upn}
    if kind < 0.72:
        return "get_app_principal", {"app": rnd.choice(pool.app_ids)}
    if kind < 0.84:
        return "check_app_access", {"user": upn, "app": rnd.choice(pool.app_ids)}
    if kind < 0.94:
        other = rnd.choice(pool.names)
        text = (f"Hi, {other} cannot open {rnd.choice(pool.sp_names)} since this morning. Password reset? "
                f"Also please add me to the group. Thanks")
        return "get_ticket_identity_context", {"requester": upn, "ticket_text": text}
    if kind < 0.97:
        return "validate_chat_session", {"session_token": "x" * rnd.randint(8, 64)}
    return "sync_status", {}


# ------------------------------------------------------------------ the soak


class Soak:
    def __init__(self, opts: Options, root: Path) -> None:
        self.opts = opts
        self.root = root
        self.rnd = random.Random(opts.seed)
        self.latency: dict[str, list[float]] = {}
        self.failures: list[str] = []
        self.calls = 0
        self.stats: dict[str, int] = {"tokenRenewals": 0, "reauth_401": 0, "sessions_opened": 0, "mutations_applied": 0,
                                      "mutations_refused": 0, "faults_injected": 0, "delta_expiries": 0}
        self.rss: list[tuple[float, float]] = []
        self.health: list[dict[str, Any]] = []
        self.api_key = "soak-" + os.urandom(16).hex()
        self.created_users: list[str] = []
        self.created_groups: list[str] = []
        self.created_assignments: list[str] = []
        self.secrets: list[str] = []
        self.last_created_upn: str | None = None

    # ---- control API
    async def control(self, method: str, path: str, body: Any = None) -> httpx.Response:
        return await self.ctl.request(method, f"/_emulator{path}", json=body)

    async def mint(self, upn: str | None) -> tuple[str, int]:
        r = await self.control("POST", "/tokens/mint", {
            "kind": "user", "tenant": self.emu.tenant_id, "client_id": self.portal_id, "user": upn,
            "scope": f"api://{self.api_id}/{SCOPE}"})
        r.raise_for_status()
        token = r.json()["token"]
        self.secrets.append(token)
        return token, self.token_lifetime

    async def truth(self) -> dict[str, Any]:
        r = await self.control("GET", f"/tenants/{self.emu.tenant_id}/snapshot")
        r.raise_for_status()
        return r.json()  # type: ignore[no-any-return]

    async def faults(self, **changes: Any) -> None:
        r = await self.control("POST", "/faults", changes)
        r.raise_for_status()

    # ---- setup
    def start(self) -> None:
        opts = self.opts
        say(opts, f"starting the emulator ({opts.size} tenant, seed {opts.seed})")
        self.emu = Emulator(opts, self.root)
        doc = httpx.get(f"{self.emu.base_url}/_emulator/tenants", verify=ssl.create_default_context(cafile=self.emu.ca_bundle), timeout=60).json()
        regs = {r["displayName"]: r for r in doc["tenants"][0]["registrations"]}
        self.api_id = regs["entra-mcp api"]["clientId"]
        self.portal_id = regs["entra-mcp portal"]["clientId"]
        portal_secret = regs["entra-mcp portal"]["secrets"][0]["value"]
        self.secrets += [v for v in self.emu.env.values()] + [portal_secret, self.api_key]
        self.port = free_port()
        public = f"http://127.0.0.1:{self.port}"
        tenant = dict(self.emu.config["tenants"][0])
        tenant["sync"] = {"interval_minutes": opts.interval_minutes}
        auth: dict[str, Any] = {"mode": opts.auth}
        if opts.auth == "entra":
            auth.update({"tenant": tenant["name"], "audience": self.api_id, "required_scopes": [SCOPE]})
        else:
            auth["api_keys_env"] = API_KEYS_ENV
        config = {
            "server": {"cache_dir": str(self.root / "cache"), "transport": "http", "host": "127.0.0.1",
                       "port": self.port, "public_url": public, "auth": auth},
            "tenants": [tenant],
            "oidc": {"enabled": True, "tenant": tenant["name"], "client_id": self.portal_id,
                     "client_secret_env": "SOAK_PORTAL_SECRET", "allowed_return_to": [public + "/"]},
        }
        self.config_path = self.root / "config.toml"
        self.config_path.write_text(toml_dump(config), encoding="utf-8")
        self.env = {k: v for k, v in os.environ.items() if k not in ("ENTRA_MCP_CONFIG", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE")}
        self.env.update(self.emu.env)
        self.env.update({"SOAK_PORTAL_SECRET": portal_secret, API_KEYS_ENV: self.api_key, "PYTHONUNBUFFERED": "1"})
        self.token_lifetime = opts.token_lifetime_s if opts.faults else 3599

    def start_server(self) -> None:
        self.server = Server(self.config_path, self.env, self.root / "serve.log", self.port)
        self.server.wait_ready()

    def pool_from(self, truth: dict[str, Any]) -> Pool:
        rnd = random.Random(self.opts.seed + 1)
        users = [u for u in truth["users"] if u.get("userType") == "Member" and u.get("userPrincipalName")]
        users = rnd.sample(users, min(300, len(users)))
        groups = rnd.sample(truth["groups"], min(80, len(truth["groups"])))
        sps = truth["servicePrincipals"]
        sp_sample = rnd.sample(sps, min(40, len(sps)))
        return Pool(
            upns=[u["userPrincipalName"] for u in users],
            names=[u["displayName"] for u in users if u.get("displayName")],
            group_ids=[g["id"] for g in groups],
            app_ids=[s["appId"] for s in sp_sample],
            sp_names=[s["displayName"] for s in sp_sample if s.get("displayName")],
        )

    # ---- workers
    async def client(self, n: int, pool: Pool) -> None:
        from mcp import Client
        from mcp.client.streamable_http import streamable_http_client

        rnd = random.Random(self.opts.seed * 1000 + n)
        auth = BearerAuth(self, pool.upns[n % len(pool.upns)] if self.opts.auth == "entra" else None)
        timeout = httpx2.Timeout(30.0, read=60.0)
        async with httpx2.AsyncClient(auth=auth, timeout=timeout) as http:
            while not self.stop_clients.is_set():
                try:
                    async with Client(streamable_http_client(f"{self.server.base}/mcp", http_client=http),
                                      read_timeout_seconds=60, mode="legacy") as client:
                        self.stats["sessions_opened"] += 1
                        for _ in range(self.opts.calls_per_session):
                            if self.stop_clients.is_set():
                                break
                            await self.one_call(client, pool, rnd)
                            if self.opts.think_ms:
                                await anyio.sleep(rnd.uniform(0, 2 * self.opts.think_ms) / 1000.0)
                except Exception as exc:  # a session that could not open or broke: a failure, then a new session
                    self.fail(f"client {n}: session: {type(exc).__name__}: {str(exc)[:200]}")
                    await anyio.sleep(0.5)

    def fail(self, text: str) -> None:
        self.failures.append(text)

    async def one_call(self, client: Any, pool: Pool, rnd: random.Random) -> None:
        tool, args = tool_call(pool, rnd)
        started = time.perf_counter()
        self.calls += 1
        try:
            with anyio.fail_after(60):
                result = await client.call_tool(tool, args)
        except Exception as exc:
            self.fail(f"{tool}: {type(exc).__name__}: {str(exc)[:200]}")
            return
        finally:
            self.latency.setdefault(tool, []).append((time.perf_counter() - started) * 1000.0)
        text = " ".join(getattr(c, "text", "") for c in result.content)
        if result.is_error:
            self.fail(f"{tool}: tool error: {text[:200]}")
        elif any(m in text for m in STACK_MARKERS):
            self.fail(f"{tool}: stack trace text in the answer")
        elif any(s and s in text for s in self.secrets):
            self.fail(f"{tool}: a secret in the answer")

    async def mutator(self, pool_truth: dict[str, Any]) -> None:
        rnd = random.Random(self.opts.seed + 2)
        users = [u["id"] for u in pool_truth["users"]]
        groups = [g["id"] for g in pool_truth["groups"] if not g.get("membershipRule")]
        sps = [s["id"] for s in pool_truth["servicePrincipals"] if s.get("appRoleAssignmentRequired") or s.get("appRoles")]
        tid = self.emu.tenant_id
        domain = pool_truth["users"][0]["userPrincipalName"].split("@")[1]
        k = 0
        while not self.stop_churn.is_set():
            k += 1
            ops = self.next_ops(rnd, k, users, groups, sps, domain)
            try:
                r = await self.control("POST", f"/tenants/{tid}/mutations", {"mutations": ops})
                if r.status_code < 300:
                    self.stats["mutations_applied"] += len(ops)
                    self.remember(ops, r.json()["results"])
                else:
                    self.stats["mutations_refused"] += 1
            except httpx.HTTPError:
                self.stats["mutations_refused"] += 1
            with anyio.move_on_after(self.opts.mutate_every_s):
                await self.stop_churn.wait()

    def next_ops(self, rnd: random.Random, k: int, users: list[str], groups: list[str], sps: list[str], domain: str) -> list[dict[str, Any]]:
        u = rnd.choice(users)
        choice = rnd.random()
        if choice < 0.15:
            upn = f"soak.user{k}@{domain}"
            return [{"op": "create_user", "set": {"displayName": f"Soak User {k}", "userPrincipalName": upn,
                                                   "mailNickname": f"soak.user{k}", "jobTitle": "Temp", "department": "Soak"}}]
        if choice < 0.22:
            return [{"op": "create_group", "set": {"displayName": f"Soak Group {k}", "mailNickname": f"soakgroup{k}"},
                     "members": rnd.sample(users, 3)}]
        if choice < 0.42:
            return [{"op": "update_user", "id": u, "set": {"jobTitle": rnd.choice(["Engineer", "Manager", "Analyst", "Lead"]),
                                                           "department": rnd.choice(["Sales", "IT", "Finance", "Ops"])}}]
        if choice < 0.50:
            return [{"op": rnd.choice(["disable_user", "enable_user"]), "id": u}]
        if choice < 0.65:
            return [{"op": "add_member", "group": rnd.choice(groups + self.created_groups), "member": u}]
        if choice < 0.75:
            return [{"op": "remove_member", "group": rnd.choice(groups + self.created_groups), "member": u}]
        if choice < 0.80:
            return [{"op": "set_manager", "user": u, "manager": rnd.choice(users)}]
        if choice < 0.86 and sps:
            return [{"op": "add_app_role_assignment", "resource": rnd.choice(sps), "principal": u}]
        if choice < 0.90 and self.created_assignments:
            return [{"op": "remove_app_role_assignment", "id": self.created_assignments.pop(rnd.randrange(len(self.created_assignments)))}]
        if choice < 0.95 and len(self.created_users) > 3:
            return [{"op": "soft_delete", "id": self.created_users.pop(rnd.randrange(len(self.created_users) - 1))}]
        if self.created_groups and choice < 0.98:
            return [{"op": "add_member", "group": rnd.choice(self.created_groups), "member": rnd.choice(self.created_users or users)}]
        return [{"op": "update_group", "id": rnd.choice(groups), "set": {"description": f"soak {k}"}}]

    def remember(self, ops: list[dict[str, Any]], results: list[Any]) -> None:
        for op, res in zip(ops, results):
            if not isinstance(res, dict):
                continue
            if op["op"] == "create_user":
                self.created_users.append(res["id"])
                self.last_created_upn = res.get("userPrincipalName")
            elif op["op"] == "create_group":
                self.created_groups.append(res["id"])
            elif op["op"] == "add_app_role_assignment" and res.get("id"):
                self.created_assignments.append(res["id"])

    async def fault_injector(self) -> None:
        cycle = [{"throttle_next": 6, "throttle_retry_after": 1.0}, {"error_next": 4}, {"drop_next": 3},
                 {"throttle_next": 3, "error_next": 2, "drop_next": 1}]
        await self.faults(token_lifetime_s=self.token_lifetime)
        expire_at = time.monotonic() + self.opts.seconds * 0.4
        expired = False
        i = 0
        while not self.stop_churn.is_set():
            with anyio.move_on_after(self.opts.fault_every_s):
                await self.stop_churn.wait()
            if self.stop_churn.is_set():
                break
            await self.faults(**cycle[i % len(cycle)])
            self.stats["faults_injected"] += 1
            i += 1
            if not expired and time.monotonic() >= expire_at:
                await self.faults(expire_delta_tokens=True)
                self.stats["delta_expiries"] += 1
                expired = True

    async def sampler(self) -> None:
        started = time.monotonic()
        async with httpx.AsyncClient(timeout=10) as http:
            while not self.stop_clients.is_set():
                mb = rss_mb(self.server.proc.pid)
                if mb is not None:
                    self.rss.append((round(time.monotonic() - started, 1), round(mb, 1)))
                try:
                    h = (await http.get(f"{self.server.base}/healthz")).json()
                    self.health.append(h)
                except (httpx.HTTPError, ValueError) as exc:
                    self.fail(f"/healthz: {type(exc).__name__}")
                with anyio.move_on_after(self.opts.rss_every_s):
                    await self.stop_clients.wait()

    # ---- phases
    async def wait_first_sync(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        async with httpx.AsyncClient(timeout=10) as http:
            while time.monotonic() < deadline:
                h = (await http.get(f"{self.server.base}/healthz")).json()
                # every area committed (areas commit one by one; "synced" is true after the first)
                if h["tenants"] and all(t["synced"] and all(a["lastSuccess"] for a in t["areas"].values() if a["enabled"])
                                        for t in h["tenants"]):
                    return
                if self.server.proc.poll() is not None:
                    raise RuntimeError(f"entra-mcp serve exited; see {self.server.log_path}")
                await anyio.sleep(0.5)
        raise RuntimeError(f"the first background sync did not finish in {timeout:.0f} s; see {self.server.log_path}")

    async def run_load(self) -> None:
        truth = await self.truth()
        pool = self.pool_from(truth)
        say(self.opts, f"{self.opts.clients} clients for {self.opts.seconds:.0f} s; mutator every {self.opts.mutate_every_s} s; "
            f"faults {'on' if self.opts.faults else 'off'}")
        self.load_started = time.monotonic()
        async with anyio.create_task_group() as tg:
            for n in range(self.opts.clients):
                tg.start_soon(self.client, n, pool)
            tg.start_soon(self.mutator, truth)
            if self.opts.faults:
                tg.start_soon(self.fault_injector)
            tg.start_soon(self.sampler)
            last = time.monotonic()
            end = self.load_started + self.opts.seconds
            while time.monotonic() < end:
                await anyio.sleep(min(5.0, end - time.monotonic()))
                if time.monotonic() - last >= 60:
                    last = time.monotonic()
                    say(self.opts, f"{self.calls} calls, {len(self.failures)} failed, RSS {self.rss[-1][1] if self.rss else '?'} MB, "
                        f"{self.sync_counts()['done']} syncs done")
            self.stop_churn.set()
            self.stop_clients.set()
        self.load_seconds = time.monotonic() - self.load_started
        if self.opts.faults:  # faults off for the final sync
            await self.faults(throttle_next=0, error_next=0, drop_next=0, token_lifetime_s=3599)

    def sync_counts(self) -> dict[str, Any]:
        text = self.server.log_path.read_text(errors="replace")
        done = re.findall(r"tenant \S+: sync done in", text)
        failed = re.findall(r"tenant \S+: sync failed: (.*)", text)
        return {"done": len(done), "failed": len(failed), "failures": failed[:10]}

    def load_mirror(self) -> Any:
        from entra_mcp.mirror.store import MirrorStore

        store = MirrorStore(self.root / "cache")
        try:
            return store.load_snapshot(self.emu.tenant_name)
        finally:
            store.close()

    def final_sync(self, full: bool = False, timeout: float = 300.0) -> dict[str, Any]:
        """`entra-mcp sync [--full]` until it runs (the background sync may hold the writer lock for a while)."""
        deadline = time.monotonic() + timeout
        attempts = 0
        while True:
            attempts += 1
            p = subprocess.run([ENTRA_MCP, "--config", str(self.config_path), "sync", *(["--full"] if full else [])], env=self.env,
                               capture_output=True, text=True, timeout=timeout)
            busy = "another sync" in p.stderr
            if p.returncode == 0 or not busy or time.monotonic() > deadline:
                return {"exit": p.returncode, "attempts": attempts, "summary": p.stderr[-1500:]}
            time.sleep(1.0)

    def status(self) -> dict[str, Any]:
        p = subprocess.run([ENTRA_MCP, "--config", str(self.config_path), "status", "--json"], env=self.env,
                           capture_output=True, text=True, timeout=60)
        return json.loads(p.stdout) if p.returncode == 0 else {"exit": p.returncode, "stderr": p.stderr[-500:]}

    async def probe_fresh(self) -> bool | None:
        """After the final sync the served view includes the last user the mutator created."""
        if not self.last_created_upn:
            return None
        from mcp import Client
        from mcp.client.streamable_http import streamable_http_client

        auth = BearerAuth(self, self.pool_upn if self.opts.auth == "entra" else None)
        async with httpx2.AsyncClient(auth=auth, timeout=30) as http:
            async with Client(streamable_http_client(f"{self.server.base}/mcp", http_client=http), mode="legacy") as client:
                deadline = time.monotonic() + 30
                while time.monotonic() < deadline:
                    r = await client.call_tool("lookup_user", {"query": self.last_created_upn})
                    if not r.is_error and (r.structured_content or {}).get("matchType") == "exact":
                        return True
                    await anyio.sleep(0.5)
        return False


    async def main(self, report: dict[str, Any]) -> None:
        opts = self.opts
        self.stop_clients = anyio.Event()
        self.stop_churn = anyio.Event()
        self.ctl = httpx.AsyncClient(base_url=self.emu.base_url, verify=ssl.create_default_context(cafile=self.emu.ca_bundle), timeout=60)
        async with self.ctl:
            started = time.monotonic()
            await anyio.to_thread.run_sync(self.start_server)
            say(opts, f"server at {self.server.base}; waiting for the first background sync")
            await self.wait_first_sync(600.0)
            report["firstSyncSeconds"] = round(time.monotonic() - started, 1)
            truth0 = await self.truth()
            self.pool_upn = truth0["users"][0]["userPrincipalName"]
            report["tenant"] = truth_counts(truth0)
            await self.run_load()
            say(opts, f"load done: {self.calls} calls, {len(self.failures)} failed; final sync with faults off")
            # 1. a delta run, as the scheduler would do it: every area but app role assignments must be exact
            report["finalSync"] = await anyio.to_thread.run_sync(self.final_sync)
            truth = await self.truth()
            snap = self.load_mirror()
            delta_diffs = mirror_differences(snap, truth, assignments=False)
            stale = [d for d in mirror_differences(snap, truth) if d.startswith("app role assignments")]
            # 2. a full run: everything, assignments included, must be exact
            report["finalFullSync"] = await anyio.to_thread.run_sync(self.final_sync, True)
            truth = await self.truth()
            snap = self.load_mirror()
            diffs = mirror_differences(snap, truth)
            report["mirror"] = {"identical": not diffs and not delta_diffs, "afterDelta": delta_diffs[:50],
                                "assignmentsStaleAfterDelta": len(stale), "afterFull": diffs[:50],
                                "differences": (delta_diffs + diffs)[:50], "truth": truth_counts(truth),
                                "version": snap.version if snap else 0}
            report["servedFresh"] = await self.probe_fresh()
            report["status"] = await anyio.to_thread.run_sync(self.status)
            report["healthz"] = self.health[-1] if self.health else None
            report["calls"] = {"made": self.calls, "failed": len(self.failures), "failures": self.failures[:30],
                               "perSecond": round(self.calls / max(self.load_seconds, 1e-9), 1),
                               "byTool": {t: len(v) for t, v in self.latency.items()}}
            report["latencyMs"] = {t: {"n": len(v), "p50": round(percentile(v, 50), 1), "p99": round(percentile(v, 99), 1),
                                       "max": round(max(v), 1)} for t, v in sorted(self.latency.items())}
            report["rssMb"] = rss_summary(self.rss, warmup_s=min(120.0, opts.seconds * 0.25))
            report["sync"] = self.sync_counts()
            report["stats"] = self.stats
            report["loadSeconds"] = round(self.load_seconds, 1)


def rss_summary(samples: list[tuple[float, float]], warmup_s: float) -> dict[str, Any]:
    if not samples:
        return {}
    after = [mb for t, mb in samples if t >= warmup_s] or [samples[-1][1]]
    first_quarter = after[: max(1, len(after) // 4)]
    last_quarter = after[-max(1, len(after) // 4):]
    return {
        "start": samples[0][1], "afterWarmup": after[0], "end": samples[-1][1], "max": max(mb for _, mb in samples),
        "minAfterWarmup": min(after), "maxAfterWarmup": max(after),
        "growthAfterWarmup": round(statistics.mean(last_quarter) - statistics.mean(first_quarter), 1),
        "warmupSeconds": warmup_s, "byMinute": by_minute(samples), "samples": samples,
    }


def by_minute(samples: list[tuple[float, float]]) -> list[tuple[int, float]]:
    """The first RSS sample of every minute of the run: (minute, MB)."""
    out: dict[int, float] = {}
    for t, mb in samples:
        out.setdefault(int(t // 60), mb)
    return sorted(out.items())


def run(opts: Options) -> dict[str, Any]:
    root_ctx = tempfile.TemporaryDirectory(prefix="entra-mcp-soak-") if opts.workdir is None else None
    root = Path(root_ctx.name) if root_ctx else Path(opts.workdir)  # type: ignore[arg-type]
    root.mkdir(parents=True, exist_ok=True)
    soak = Soak(opts, root)
    report: dict[str, Any] = {"options": {k: (str(v) if isinstance(v, Path) else v) for k, v in opts.__dict__.items()}}
    try:
        soak.start()
        anyio.run(soak.main, report)
    finally:
        server = getattr(soak, "server", None)
        if server is not None:
            report["serverExit"] = server.stop()
            log_text = server.log_path.read_text(errors="replace")
            report["serverLogTracebacks"] = log_text.count("Traceback")
            report["serverLogUnexpectedTracebacks"] = unexpected_tracebacks(log_text)
            report["serverLogSecrets"] = sum(1 for s in soak.secrets if s and s in log_text)
        if getattr(soak, "emu", None) is not None:
            soak.emu.stop()
        if root_ctx is not None and report.get("calls", {}).get("failed", 1) == 0 and report.get("mirror", {}).get("identical"):
            root_ctx.cleanup()
        elif root_ctx is not None:
            report["workdir"] = str(root)  # kept for a look at the logs
    report["ok"] = bool(report.get("calls", {}).get("failed", 1) == 0 and report.get("mirror", {}).get("identical")
                        and report.get("finalSync", {}).get("exit") == 0 and report.get("finalFullSync", {}).get("exit") == 0)
    return report


def print_report(r: dict[str, Any]) -> None:
    out = sys.stdout.write
    c, m = r.get("calls", {}), r.get("mirror", {})
    out(f"soak: {r['options']['clients']} clients, {r.get('loadSeconds', 0):.0f} s of load, tenant {r.get('tenant')}\n")
    out(f"calls: {c.get('made', 0)} made, {c.get('failed', '?')} failed ({c.get('perSecond', 0)}/s)\n")
    for f in c.get("failures", [])[:10]:
        out(f"  failed: {f}\n")
    out("latency (ms)                     n      p50      p99      max\n")
    for t, v in r.get("latencyMs", {}).items():
        out(f"  {t:<28} {v['n']:>6} {v['p50']:>8} {v['p99']:>8} {v['max']:>8}\n")
    rss = r.get("rssMb", {})
    if rss:
        out(f"server RSS (MB): start {rss['start']}, after warm-up {rss['afterWarmup']}, end {rss['end']}, max {rss['max']}, "
            f"growth after warm-up {rss['growthAfterWarmup']}\n")
        out("  by minute: " + ", ".join(f"{m}:{mb:.0f}" for m, mb in rss["byMinute"]) + "\n")
    s = r.get("sync", {})
    out(f"background sync runs: {s.get('done')} done, {s.get('failed')} failed\n")
    for f in s.get("failures", [])[:5]:
        out(f"  sync failed: {f}\n")
    out(f"churn: {r.get('stats')}\n")
    fs, ff = r.get("finalSync", {}), r.get("finalFullSync", {})
    out(f"final sync (faults off): delta exit {fs.get('exit')} after {fs.get('attempts')} attempt(s), then --full exit {ff.get('exit')}\n")
    out(f"mirror vs ground truth: {'IDENTICAL' if m.get('identical') else 'DIFFERENT'} {m.get('truth')}\n")
    out(f"  after the delta run: {len(m.get('afterDelta', []))} differences outside app role assignments; "
        f"{m.get('assignmentsStaleAfterDelta')} service principals with assignments not yet refreshed (full refresh every 60 min)\n")
    for d in m.get("differences", [])[:20]:
        out(f"  {d}\n")
    out(f"served view fresh after the final sync: {r.get('servedFresh')}; server exit {r.get('serverExit')}; "
        f"tracebacks in the server log: {r.get('serverLogTracebacks')}; secrets in the server log: {r.get('serverLogSecrets')}\n")
    out(f"result: {'OK' if r.get('ok') else 'FAILED'}\n")


def render_markdown(r: dict[str, Any], command: str) -> str:
    """The figures of a report as a docs/benchmarks.md section body."""
    o, c, m, s = r["options"], r["calls"], r["mirror"], r["sync"]
    rss = r.get("rssMb", {})
    lines = [
        f"Command: `{command}`",
        "",
        f"Load: {o['clients']} MCP clients over streamable HTTP for {r['loadSeconds'] / 60:.1f} min, auth `{o['auth']}` "
        f"(bearer tokens of {o['token_lifetime_s']} s, renewed {r['stats']['tokenRenewals']} times), tenant `{o['size']}` "
        f"{r['tenant']}; background sync every {o['interval_minutes']} min (+-10% jitter); "
        f"{r['stats']['mutations_applied']} directory changes, {r['stats']['faults_injected']} fault bursts "
        f"(429 / 503-504 / dropped connections), {r['stats']['delta_expiries']} delta-token expiry, "
        f"{r['stats']['sessions_opened']} MCP sessions opened.",
        "",
        f"- calls: **{c['made']:,} made, {c['failed']} failed** ({c['perSecond']}/s)",
        f"- background sync runs: **{s['done']} succeeded, {s['failed']} failed**",
        f"- server RSS (MB): start {rss.get('start')}, after warm-up {rss.get('afterWarmup')}, end {rss.get('end')}, "
        f"max {rss.get('max')}; growth after warm-up (last quarter vs first quarter) **{rss.get('growthAfterWarmup')} MB**",
        "- RSS by minute: " + ", ".join(f"{mi}: {mb:.0f}" for mi, mb in rss.get("byMinute", [])),
        f"- final `entra-mcp sync` (faults off): exit {r['finalSync']['exit']}; mirror vs ground truth outside app role "
        f"assignments: {len(m['afterDelta'])} differences; service principals with assignments not yet refreshed: "
        f"{m['assignmentsStaleAfterDelta']}; after `sync --full` (exit {r['finalFullSync']['exit']}): "
        f"**{'identical' if m['identical'] else 'DIFFERENT'}** ({m['truth']})",
        f"- served view fresh after the final sync: {r['servedFresh']}; tracebacks in the server log: "
        f"{r['serverLogTracebacks']}; secrets in the server log: {r['serverLogSecrets']}",
        "",
        "| tool | calls | p50 (ms) | p99 (ms) | max (ms) |",
        "|---|---|---|---|---|",
    ]
    for t, v in r["latencyMs"].items():
        lines.append(f"| {t} | {v['n']:,} | {v['p50']} | {v['p99']} | {v['max']} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, help="load duration in minutes (default 2)")
    p.add_argument("--seconds", type=float, help="load duration in seconds (instead of --minutes)")
    p.add_argument("--clients", type=int, default=32)
    p.add_argument("--size", choices=["small", "medium", "large"], default="medium")
    p.add_argument("--seed", type=int, default=11)
    p.add_argument("--interval-minutes", type=float, default=1.0, help="background sync interval (default 1)")
    p.add_argument("--auth", choices=["entra", "api_key"], default="entra")
    p.add_argument("--no-faults", action="store_true")
    p.add_argument("--token-lifetime", type=int, default=120, help="access-token lifetime in seconds during the run")
    p.add_argument("--mutate-every", type=float, default=1.0, help="seconds between directory changes")
    p.add_argument("--fault-every", type=float, default=15.0, help="seconds between injected fault bursts")
    p.add_argument("--think-ms", type=float, default=100.0, help="mean pause between a client's calls")
    p.add_argument("--workdir", type=Path, help="keep config, cache and logs here (default: a temp dir)")
    p.add_argument("--json", type=Path, dest="json_path", help="write the full report here")
    p.add_argument("--quiet", action="store_true")
    p.add_argument("--render", type=Path, metavar="REPORT", help="print the figures of a --json report as markdown")
    a = p.parse_args(argv)
    if a.render:
        report = json.loads(a.render.read_text())
        minutes = report["options"]["seconds"] / 60
        sys.stdout.write(render_markdown(report, f"python bench/soak.py --minutes {minutes:g}"))
        return 0
    seconds = a.seconds if a.seconds is not None else (a.minutes if a.minutes is not None else 2.0) * 60.0
    opts = Options(seconds=seconds, clients=a.clients, size=a.size, seed=a.seed, interval_minutes=a.interval_minutes,
                   auth=a.auth, faults=not a.no_faults, token_lifetime_s=a.token_lifetime, mutate_every_s=a.mutate_every,
                   fault_every_s=a.fault_every, think_ms=a.think_ms, workdir=a.workdir, json_path=a.json_path, quiet=a.quiet)
    report = run(opts)
    if opts.json_path:
        opts.json_path.write_text(json.dumps(report, indent=2, default=str), encoding="utf-8")
    print_report(report)
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
