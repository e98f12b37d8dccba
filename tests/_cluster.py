"""Several `entra-mcp serve` replicas as processes with their own cache directories, one redis-server, one shared
snapshot directory and the emulator (tests/test_cluster_failover.py and bench/bench_failover.py).

- `Cluster(root, emu, redis_port, lease_seconds=...)`: configs and processes; `start(r)`, `leader()` (the one replica
  whose /healthz says it leads), `published()` / `history()` / `refused()` (the fenced Redis records), `converged()`,
  `wait_converged()` (every replica on the newest publication as of the call, or a newer one), `holder(r)`,
  `assert_no_two_commits()`, `assert_matches_ground_truth()`, `change_directory(tag)` (a user created in the emulator).
- `Replica.syncing(tenant)`: whether a sync run holds its mirror's writer lock now (mid-run).
"""

from __future__ import annotations

import fcntl
import json
import os
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from _harness import ServeProcess, free_port, wait_until
from _sync_fixtures import Control, assert_mirror_matches
from entra_mcp.cluster.lease import Publication
from entra_mcp.mirror.store import MirrorStore

LEASE_SECONDS = 3.0  # the tests' lease: a takeover within seconds
PREFIX = "entra-mcp:"
HEALTH_TIMEOUT = 15.0  # a live replica's /healthz on a loaded 2-core machine (a dead one refuses at once)
CONVERGE_TIMEOUT = 180.0  # a hang guard: every replica serving a given publication (the same as a replica's start)

@dataclass
class Replica:
    name: str
    root: Path
    port: int
    proc: ServeProcess | None = None

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def cache_dir(self) -> Path:
        return self.root / "cache"

    def health(self, timeout: float = HEALTH_TIMEOUT) -> dict[str, Any] | None:
        """/healthz, or None when the replica does not answer (down, starting, or not within `timeout`)."""
        try:
            r = httpx.get(f"{self.base}/healthz", timeout=timeout)
        except httpx.HTTPError:
            return None
        return r.json() if r.status_code == 200 else None  # type: ignore[no-any-return]

    def replication(self, tenant: str) -> dict[str, Any] | None:
        h = self.health()
        return h["replication"]["tenants"][tenant] if h and "replication" in h else None

    def syncing(self, tenant: str) -> bool:
        """Whether a sync run holds this replica's mirror writer lock right now (it is mid-run)."""
        path = self.cache_dir / tenant / "writer.lock"
        try:
            fd = os.open(path, os.O_RDWR)
        except FileNotFoundError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        finally:
            os.close(fd)  # closing drops a lock we may have taken at once
        return False


class Cluster:
    def __init__(self, root: Path, emu: Any, redis_port: int, *, lease_seconds: float = LEASE_SECONDS,
                 replicas: int = 3) -> None:
        self.root = root
        self.lease_seconds = lease_seconds
        self.emu = emu
        self.ctl = Control(emu)
        self.redis_port = redis_port
        self.tenant = emu.tenant_name(0)
        self.snapshot_dir = root / "shared-snapshots"
        self.replicas = [Replica(f"r{i}", root / f"r{i}", free_port()) for i in range(replicas)]
        import redis

        self.redis = redis.Redis(host="127.0.0.1", port=redis_port, socket_timeout=5)
        self.redis_server: Any = None  # tests/_redis.py RedisServer, when the caller started one
        self.env = {k: v for k, v in os.environ.items() if k not in ("ENTRA_MCP_CONFIG", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE")}
        self.env.update(emu.secret_env(0))

    def config(self, r: Replica) -> Path:
        r.root.mkdir(parents=True, exist_ok=True)
        q = json.dumps
        block = self.emu.config_toml(0).split("[[tenants]]", 1)[1]
        text = "\n".join([
            "[server]", f"cache_dir = {q(str(r.cache_dir))}", 'transport = "http"', 'host = "127.0.0.1"',
            f"port = {r.port}", f"public_url = {q(r.base)}", "",
            "[server.auth]", 'mode = "none"', "",
            "[server.store]", f"redis_url = {q(f'redis://127.0.0.1:{self.redis_port}/0')}",
            f"snapshot_dir = {q(str(self.snapshot_dir))}", f"lease_seconds = {self.lease_seconds}",
            "snapshot_poll_seconds = 0.25", "",
            "[[tenants]]" + block.rstrip(), "",
            "[tenants.sync]", "interval_minutes = 0.02",  # a run every ~1.2 s on the leader
            # every run polls the sign-in events too; their own poll (every ~6 s) as well
            "sign_in_events = true", "sign_in_events_interval_minutes = 0.1", "",
        ])
        path = r.root / "config.toml"
        path.write_text(text, encoding="utf-8")
        return path

    def start(self, r: Replica) -> None:
        r.proc = ServeProcess(self.config(r), env=self.env, log_path=r.root / "serve.log", base=r.base)

    def start_all(self, *, converge_timeout: float) -> None:
        """Graph slowed a little (so a run lasts long enough to be killed in the middle of), every replica started
        and ready, and a first publication adopted by all."""
        self.ctl.faults(latency_ms=25, delta_users_page_size=20, delta_groups_page_size=5)
        # sign-in events only as the tests add them, and no reporting-API throttle (a poll every run here)
        self.ctl._ok(self.ctl.http.post("/signins/settings", json={"generated": False, "throttle_per_10s": 0}))
        for r in self.replicas:
            self.start(r)
        for r in self.replicas:
            assert r.proc is not None
            r.proc.wait_ready(timeout=180)  # three starts at once on a loaded 2-core machine
        self.wait_converged(timeout=converge_timeout, what="a first publication adopted by every replica")

    def key(self, what: str) -> str:
        return f"{PREFIX}sync:{self.tenant}:{what}"

    def published(self, channel: str = "") -> Publication | None:
        """The newest publication of the directory, or with `channel` "signins" of the sign-in events."""
        return Publication.from_json(self.redis.get(self.key(f"{channel}:published" if channel else "published")))

    def history(self, channel: str = "") -> list[Publication]:
        raw = self.redis.lrange(self.key(f"{channel}:log" if channel else "log"), 0, -1)
        return [p for p in map(Publication.from_json, raw) if p is not None]

    def refused(self) -> int:
        return int(self.redis.get(self.key("refused")) or 0)

    def live(self) -> list[Replica]:
        return [r for r in self.replicas if r.proc is not None and r.proc.proc.poll() is None]

    def leader(self) -> Replica:
        found: list[Replica] = []

        def one() -> bool:
            found[:] = [r for r in self.live() if (self.replication_of(r) or {}).get("leading")]
            return len(found) == 1

        wait_until(one, timeout=30, what="exactly one replica leading")
        return found[0]

    def replication_of(self, r: Replica) -> dict[str, Any] | None:
        return r.replication(self.tenant)

    def converged(self, replicas: list[Replica], channel: str = "") -> bool:
        """Every replica serves the newest publication (of the directory, or of the sign-in events)."""
        rec = self.published(channel)
        if rec is None:
            return False
        for r in replicas:
            st = self.replication_of(r)
            if st and channel:
                st = st.get("signIns")
            if not st or not st["serving"] or (st["serving"]["token"], st["serving"]["stamp"]) != (rec.token, rec.stamp):
                return False
        return True

    def caught_up(self, replicas: list[Replica], target: Publication) -> bool:
        """Every replica serves `target` or a newer publication. (The leader publishes every run, ~1.2 s here: on a
        loaded machine "everyone on the newest" is a target that moves faster than the followers adopt.)"""
        for r in replicas:
            st = self.replication_of(r)
            if not st or not st["serving"] or st["serving"]["token"] < target.token or st["serving"]["stamp"] < target.stamp:
                return False
        return True

    def wait_converged(self, *, timeout: float = CONVERGE_TIMEOUT, what: str = "") -> None:
        """Until every replica serves the newest publication as of now (or a newer one): bounded by progress, the
        timeout only guards against a hang."""
        target: list[Publication] = []

        def done() -> bool:
            if not target:
                rec = self.published()
                if rec is None:
                    return False
                target.append(rec)
            return self.caught_up(self.replicas, target[0])

        wait_until(done, timeout=timeout, what=what or "every replica serving the newest publication (or a newer one)")

    def holder(self, r: Replica) -> str:
        """The replica id `r` leads or follows as (its /healthz), waiting for it to answer."""
        found: list[str] = []

        def answered() -> bool:
            st = (r.health() or {}).get("replication")
            if st:
                found.append(st["replica"])
            return bool(found)

        wait_until(answered, timeout=60, what=f"replica {r.name} answering /healthz")
        return found[0]

    def assert_no_two_commits(self) -> None:
        """The publication log: stamps strictly increase, tokens never go back, each token is one replica's."""
        log = self.history()
        assert log, "nothing was published"
        stamps = [p.stamp for p in log]
        assert stamps == sorted(set(stamps)), f"two publications of one stamp, or one out of order: {stamps}"
        tokens = [p.token for p in log]
        assert tokens == sorted(tokens), f"a publication under an older fencing token landed: {tokens}"
        owners: dict[int, set[str]] = {}
        for p in log:
            owners.setdefault(p.token, set()).add(p.holder)
        assert all(len(h) == 1 for h in owners.values()), f"one token, several publishers: {owners}"

    def assert_matches_ground_truth(self, replicas: list[Replica]) -> None:
        truth = self.ctl.snapshot()
        for r in replicas:
            store = MirrorStore(r.cache_dir)
            try:
                assert_mirror_matches(store.load_snapshot(self.tenant), truth)
            finally:
                store.close()

    def call_tool(self, r: Replica, name: str, arguments: dict[str, Any]) -> dict[str, Any]:
        """One tools/call over the wire to replica `r` (its /mcp is stateless with a shared store)."""
        import anyio
        import httpx2
        from mcp import Client
        from mcp.client.streamable_http import streamable_http_client

        async def go() -> dict[str, Any]:
            async with httpx2.AsyncClient(timeout=60) as http:
                async with Client(streamable_http_client(f"{r.base}/mcp", http_client=http), mode="legacy") as client:
                    result = await client.call_tool(name, arguments)
                    assert not result.is_error, result.content
                    return dict(result.structured_content or {})

        return anyio.run(go)

    def wait_mid_run(self, r: Replica, timeout: float = 30.0) -> None:
        wait_until(lambda: r.syncing(self.tenant), timeout=timeout, what=f"replica {r.name} in the middle of a sync run",
                   proc=r.proc.proc if r.proc else None)

    def close(self) -> None:
        """Stop every replica still running (resumed first, in case one was left paused), then the clients."""
        for r in self.replicas:
            if r.proc is not None and r.proc.proc.poll() is None:
                os.kill(r.proc.proc.pid, signal.SIGCONT)
                r.proc.stop()
        self.ctl.close()
        self.redis.close()

    def add_sign_in_failure(self, upn: str, error_code: int = 50126) -> None:
        """One failed sign-in of `upn` a few seconds ago in the emulator's audit log."""
        self.ctl._ok(self.ctl.http.post(f"/tenants/{self.emu.tenant(0).tenant_id}/signins",
                                        json={"events": [{"user": upn, "errorCode": error_code, "secondsAgo": 5}]}))

    def change_directory(self, tag: str) -> str:
        upn = f"failover-{tag}@{self.emu.tenant(0).domain}"
        self.ctl.mutate([{"op": "create_user", "set": {"displayName": f"Failover {tag}", "userPrincipalName": upn}}])
        return upn
