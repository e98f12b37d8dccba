"""One sync leader among three `entra-mcp serve` replicas (separate processes, their own cache directories, one
redis-server, one shared snapshot directory, the emulator over HTTPS).

- kill -9 the leader in the middle of a sync run: another replica takes over within the lease time, no two commits
  for one tenant land (the fenced publication log: stamps strictly increase, each token belongs to one replica), and
  every replica, the killed one restarted included, converges to the same version, equal to the emulator's ground
  truth;
- SIGSTOP the leader mid-run past its lease, SIGCONT it: its publication is refused (the fencing token is no longer
  the newest), and it adopts the new leader's version over its own local commit.
"""

from __future__ import annotations

import fcntl
import json
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import httpx
import pytest

from _harness import ServeProcess, free_port, wait_until
from _redis import RedisServer, have_redis
from _sync_fixtures import Control, assert_mirror_matches
from entra_mcp.cluster.lease import Publication
from entra_mcp.devtenant.server import run_emulator
from entra_mcp.mirror.store import MirrorStore

LEASE_SECONDS = 3.0
PREFIX = "entra-mcp:"

pytestmark = pytest.mark.skipif(not have_redis(), reason="redis-server is not installed (scripts/test.sh installs it)")


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

    def health(self) -> dict[str, Any] | None:
        try:
            r = httpx.get(f"{self.base}/healthz", timeout=2)
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
    def __init__(self, root: Path, emu: Any, redis_port: int) -> None:
        self.root = root
        self.emu = emu
        self.ctl = Control(emu)
        self.redis_port = redis_port
        self.tenant = emu.tenant_name(0)
        self.snapshot_dir = root / "shared-snapshots"
        self.replicas = [Replica(f"r{i}", root / f"r{i}", free_port()) for i in range(3)]
        import redis

        self.redis = redis.Redis(host="127.0.0.1", port=redis_port, socket_timeout=5)
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
            f"snapshot_dir = {q(str(self.snapshot_dir))}", f"lease_seconds = {LEASE_SECONDS}",
            "snapshot_poll_seconds = 0.25", "",
            "[[tenants]]" + block.rstrip(), "",
            "[tenants.sync]", "interval_minutes = 0.02", "",  # a run every ~1.2 s on the leader
        ])
        path = r.root / "config.toml"
        path.write_text(text, encoding="utf-8")
        return path

    def start(self, r: Replica) -> None:
        r.proc = ServeProcess(self.config(r), env=self.env, log_path=r.root / "serve.log", base=r.base)

    def key(self, what: str) -> str:
        return f"{PREFIX}sync:{self.tenant}:{what}"

    def published(self) -> Publication | None:
        return Publication.from_json(self.redis.get(self.key("published")))

    def history(self) -> list[Publication]:
        return [p for p in map(Publication.from_json, self.redis.lrange(self.key("log"), 0, -1)) if p is not None]

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

    def converged(self, replicas: list[Replica]) -> bool:
        """Every replica serves the newest publication."""
        rec = self.published()
        if rec is None:
            return False
        for r in replicas:
            st = self.replication_of(r)
            if not st or not st["serving"] or (st["serving"]["token"], st["serving"]["stamp"]) != (rec.token, rec.stamp):
                return False
        return True

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

    def change_directory(self, tag: str) -> str:
        upn = f"failover-{tag}@{self.emu.tenant(0).domain}"
        self.ctl.mutate([{"op": "create_user", "set": {"displayName": f"Failover {tag}", "userPrincipalName": upn}}])
        return upn


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    root = tmp_path_factory.mktemp("cluster")
    with RedisServer(root / "redis") as redis_server, run_emulator(size="small", seed=11) as emu:
        c = Cluster(root, emu, redis_server.port)
        try:
            # Graph slowed a little so a run lasts long enough to be killed in the middle of
            c.ctl.faults(latency_ms=25, delta_users_page_size=20, delta_groups_page_size=5)
            for r in c.replicas:
                c.start(r)
            for r in c.replicas:
                assert r.proc is not None
                r.proc.wait_ready(timeout=180)  # three starts at once on a loaded 2-core machine
            wait_until(lambda: c.converged(c.replicas), timeout=60, what="a first publication adopted by every replica")
            yield c
        finally:
            for r in c.replicas:
                if r.proc is not None and r.proc.proc.poll() is None:
                    os.kill(r.proc.proc.pid, signal.SIGCONT)  # a test that failed while it was paused
                    r.proc.stop()
            c.ctl.close()
            c.redis.close()


def _wait_mid_run(c: Cluster, r: Replica) -> None:
    wait_until(lambda: r.syncing(c.tenant), timeout=30, what=f"replica {r.name} in the middle of a sync run",
               proc=r.proc.proc if r.proc else None)


def test_kill_9_the_leader_mid_sync_another_takes_over(cluster: Cluster) -> None:
    c = cluster
    leader = c.leader()
    before = c.published()
    assert before is not None
    upn = c.change_directory("kill")
    _wait_mid_run(c, leader)
    killed_at = time.time()
    assert leader.proc is not None
    killed_holder = (leader.health() or {})["replication"]["replica"]
    leader.proc.kill9()
    c.start(leader)  # it comes back at once (its own cache, maybe with a half run in it); starting takes a while

    # another replica takes the lease and commits the change
    def taken_over() -> bool:
        rec = c.published()
        return rec is not None and rec.token > before.token and rec.published_at > killed_at
    wait_until(taken_over, timeout=LEASE_SECONDS + 30, what="a publication by the next leader")
    rec = c.published()
    assert rec is not None and rec.holder != killed_holder
    took = rec.published_at - killed_at
    assert took < LEASE_SECONDS + 20, f"the next commit came {took:.1f} s after the kill"
    assert not [p for p in c.history() if p.holder == killed_holder and p.published_at > killed_at]

    # the killed replica is back and everyone converges
    assert leader.proc is not None
    leader.proc.wait_ready(timeout=180)
    wait_until(lambda: c.converged(c.replicas), timeout=60, what="every replica serving the newest publication")
    c.assert_no_two_commits()
    c.assert_matches_ground_truth(c.replicas)
    store = MirrorStore(leader.cache_dir)
    try:
        snap = store.load_snapshot(c.tenant)
        assert snap is not None and any(u.get("userPrincipalName") == upn for u in snap.users.values())
    finally:
        store.close()


def test_a_paused_leader_past_its_lease_cannot_commit(cluster: Cluster) -> None:
    c = cluster
    leader = c.leader()
    assert leader.proc is not None
    paused_holder = (leader.health() or {})["replication"]["replica"]
    before = c.published()
    assert before is not None
    refused = c.refused()
    c.change_directory("pause")
    _wait_mid_run(c, leader)
    pid = leader.proc.proc.pid
    os.kill(pid, signal.SIGSTOP)
    try:
        def taken_over() -> bool:
            rec = c.published()
            return rec is not None and rec.token > before.token
        wait_until(taken_over, timeout=LEASE_SECONDS + 30, what="a publication by the next leader while the old one is paused")
    finally:
        os.kill(pid, signal.SIGCONT)
    new = c.published()
    assert new is not None and new.holder != paused_holder

    # the resumed replica finishes its run, tries to publish under its old token and is refused
    wait_until(lambda: c.refused() > refused, timeout=60, what="the resumed leader's publication refused",
               proc=leader.proc.proc, log_path=leader.proc.log_path)
    assert "refused: fencing token" in leader.proc.log()
    assert not [p for p in c.history() if p.holder == paused_holder and p.token > before.token]
    c.assert_no_two_commits()
    wait_until(lambda: c.converged(c.replicas), timeout=60, what="every replica serving the newest publication")
    c.assert_matches_ground_truth(c.replicas)
