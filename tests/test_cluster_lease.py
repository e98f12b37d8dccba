"""One sync leader: the Redis lease and its fencing token (real redis-server), a mirror adopting another replica's
published version in one switch, and the snapshot files' retention."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any, Iterator

import pytest

from _redis import redis_server, unique_prefix  # noqa: F401  (fixture)
from entra_mcp.cluster.lease import Publication, SyncLease
from entra_mcp.cluster.snapshots import SnapshotDir, file_name
from entra_mcp.config import StoreSettings
from entra_mcp.errors import MirrorError
from entra_mcp.mirror.snapshot import AreaStatus
from entra_mcp.mirror.store import MirrorStore
from entra_mcp.sharedstore.connection import SharedRedis


class Clock:
    """A hand-moved monotonic clock: the lease's local deadline without sleeping."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def shared(redis_server: Any) -> Iterator[SharedRedis]:  # noqa: F811
    s = SharedRedis(StoreSettings(redis_url=redis_server.url, key_prefix=unique_prefix("lease")))
    yield s
    s.close()


@pytest.fixture
def client(shared: SharedRedis) -> Any:
    return shared.client


def _pub(lease: SyncLease, version: int, token: int | None = None) -> Publication:
    token = lease.token if token is None else token
    assert token is not None
    name = file_name(version, version, token, "data")
    return Publication(version=version, stamp=version, token=token, file=name, data_file=name, holder=lease.holder,
                       as_of=None, kind="data", published_at=0.0)


def _expire(client: Any, lease: SyncLease) -> None:
    """The lease's time ran out (what Redis does by itself after ttl; said at once here)."""
    client.pexpire(lease.keys["lease"], 1)
    stop = threading.Event()
    for _ in range(200):
        if not client.exists(lease.keys["lease"]):
            return
        stop.wait(0.01)
    raise AssertionError("the lease key did not expire")


def test_one_holder_tokens_grow_and_a_released_lease_is_free_at_once(shared: SharedRedis) -> None:
    a = SyncLease(shared, tenant="contoso", holder="a", ttl_seconds=30)
    b = SyncLease(shared, tenant="contoso", holder="b", ttl_seconds=30)
    t1 = a.acquire()
    assert t1 == 1 and a.held()
    assert b.acquire() is None and not b.held()
    assert a.acquire() == t1  # ours: extended, same token
    assert a.renew() and a.leader() == ("a", 1)
    a.release()
    assert a.leader() is None and not a.held()
    t2 = b.acquire()
    assert t2 == 2 and b.leader() == ("b", 2)
    other = SyncLease(shared, tenant="fabrikam", holder="a", ttl_seconds=30)
    assert other.acquire() == 1  # tokens are per tenant


def test_a_paused_leader_past_its_lease_cannot_publish(shared: SharedRedis, client: Any) -> None:
    clock = Clock()
    a = SyncLease(shared, tenant="contoso", holder="a", ttl_seconds=5, clock=clock)
    b = SyncLease(shared, tenant="contoso", holder="b", ttl_seconds=5, clock=clock)
    assert a.acquire() == 1
    assert a.publish(_pub(a, 1))
    # a is paused: its lease runs out in Redis, b takes over, then a resumes still holding token 1
    _expire(client, a)
    assert b.acquire() == 2
    stale = _pub(a, 2, token=1)
    assert not a.publish(stale, token=1)
    assert a.refused() == 1
    assert b.publish(_pub(b, 2))
    assert [(p.holder, p.version, p.token) for p in b.history()] == [("a", 1, 1), ("b", 2, 2)]
    assert b.published() is not None and b.published().holder == "b"  # type: ignore[union-attr]
    # a's renewal fails: it no longer assumes it leads, even before its local deadline
    clock.now += 1
    assert not a.renew() and not a.held()


def test_the_newest_token_wins_even_over_a_lease_nobody_renewed(shared: SharedRedis, client: Any) -> None:
    """An expired lease nobody took yet: the old holder's publish is refused too (it must take the lease again)."""
    a = SyncLease(shared, tenant="contoso", holder="a", ttl_seconds=5)
    assert a.acquire() == 1
    _expire(client, a)
    assert not a.publish(_pub(a, 1), token=1)
    assert a.acquire() == 2 and a.publish(_pub(a, 1))


def test_local_deadline_ends_leadership_without_redis(shared: SharedRedis) -> None:
    clock = Clock()
    a = SyncLease(shared, tenant="contoso", holder="a", ttl_seconds=5, clock=clock)
    a.acquire()
    clock.now += 4.9
    assert a.held()
    clock.now += 0.2
    assert not a.held()


@pytest.fixture
def dead(monkeypatch: pytest.MonkeyPatch) -> Iterator[SharedRedis]:
    """A SharedRedis against a port nobody listens on, with a password; closed after the test whatever its outcome
    (its first failed command starts a background probe thread that PINGs the dead port until close())."""
    monkeypatch.setenv("LEASE_TEST_REDIS_PW", "s3cret-pw")
    s = SharedRedis(StoreSettings(redis_url="redis://127.0.0.1:1/0", password_env="LEASE_TEST_REDIS_PW",
                                  timeout_seconds=0.5))
    yield s
    s.close()
    probes = [t for t in threading.enumerate() if t.name == "entra-mcp-redis-probe"]
    assert probes == [], "close() left the background probe of a dead Redis running"


def test_redis_unreachable_is_a_clear_error_without_a_secret(dead: SharedRedis) -> None:
    from entra_mcp.errors import StoreUnavailable

    lease = SyncLease(dead, tenant="contoso", holder="a", ttl_seconds=5)
    with pytest.raises(StoreUnavailable) as err:
        lease.acquire()
    assert "s3cret" not in str(err.value) and "contoso" in str(err.value)
    assert not lease.held()


# ---------------------------------------------------------------------------------------------- mirror adoption


def _users(n: int, tag: str = "") -> dict[str, dict[str, Any]]:
    return {f"u{i:05d}": {"id": f"u{i:05d}", "displayName": f"User {i}{tag}"} for i in range(n)}


def _commit_users(store: MirrorStore, users: dict[str, Any], link: str) -> None:
    with store.writer("t") as w:
        w.set_tenant(tenant_id="tid-1", interval_minutes=5)
        w.commit_full("users", {"users": users}, delta_link=link, status=AreaStatus(enabled=True, object_count=len(users)))


def _adopt(leader: MirrorStore, follower: MirrorStore, publication: dict[str, Any]) -> tuple[int, int]:
    export = leader.export("t")
    assert export is not None
    source = follower.source("t")
    with follower.writer("t") as w:
        version, stamp = w.adopt(export.root, export.buckets, source)
    follower.set_source("t", local_stamp=stamp, publication=publication,
                        colls={a: dict(x["colls"]) for a, x in export.root["areas"].items()})
    return version, stamp


def _keys(store: MirrorStore) -> set[str]:
    with store._cache("t", create=False) as db:
        assert db is not None
        return set(db.iterkeys())


def test_adopt_copies_the_leaders_version_and_then_only_the_buckets_that_moved(tmp_path: Path) -> None:
    leader, follower = MirrorStore(tmp_path / "a"), MirrorStore(tmp_path / "b")
    users = _users(3000)
    _commit_users(leader, users, "dl-1")
    version, _ = _adopt(leader, follower, {"version": 1})
    snap, lsnap = follower.load_snapshot("t"), leader.load_snapshot("t")
    assert snap is not None and lsnap is not None
    assert version == lsnap.version and snap.users.to_dicts() == lsnap.users.to_dicts()  # type: ignore[attr-defined]
    assert snap.as_of == lsnap.as_of and snap.tenant_id == "tid-1"
    with follower.writer("t") as w:
        assert w.delta_link("users") == "dl-1"  # a follower that takes over continues with the leader's delta link

    # one user renamed: the second adoption writes only that bucket
    users["u00007"] = {"id": "u00007", "displayName": "Renamed"}
    _commit_users(leader, users, "dl-2")
    before = _keys(follower)
    version2, _ = _adopt(leader, follower, {"version": 2})
    after = _keys(follower)
    assert len([k for k in after - before if k.startswith("b/")]) == 1
    snap2 = follower.load_snapshot("t")
    assert snap2 is not None and snap2.users["u00007"]["displayName"] == "Renamed" and version2 > version
    assert snap2.users.to_dicts() == leader.load_snapshot("t").users.to_dicts()  # type: ignore[union-attr]


def test_adopt_replaces_a_diverged_local_commit(tmp_path: Path) -> None:
    """A replica that committed on its own (a paused leader refused at publish) holds the leader's version after
    the next adoption: its own buckets are never reused for the leader's."""
    leader, follower = MirrorStore(tmp_path / "a"), MirrorStore(tmp_path / "b")
    _commit_users(leader, _users(500), "dl-1")
    _adopt(leader, follower, {"version": 1})
    _commit_users(follower, _users(500, " (diverged)"), "dl-x")  # same stamp numbers as the leader's next commit
    _commit_users(leader, _users(500, " (leader)"), "dl-2")
    assert follower.source("t") is None  # the local commit made the recorded source stale
    _adopt(leader, follower, {"version": 2})
    snap = follower.load_snapshot("t")
    assert snap is not None and {u["displayName"] for u in snap.users.values()} == {f"User {i} (leader)" for i in range(500)}


def test_adopt_refuses_another_schema(tmp_path: Path) -> None:
    leader, follower = MirrorStore(tmp_path / "a"), MirrorStore(tmp_path / "b")
    _commit_users(leader, _users(10), "dl")
    export = leader.export("t")
    assert export is not None
    with follower.writer("t") as w, pytest.raises(MirrorError, match="schema"):
        w.adopt({**export.root, "schema": 999}, export.buckets, None)
    assert follower.load_snapshot("t") is None


# ---------------------------------------------------------------------------------------------- snapshot files


def test_snapshot_files_are_immutable_and_retention_keeps_the_newest(tmp_path: Path) -> None:
    snaps = SnapshotDir(tmp_path / "shared")
    names = [snaps.write("t", version=v, stamp=v, token=1, root={"v": v}, buckets={"k": v}) for v in range(1, 6)]
    fresh = snaps.write("t", version=5, stamp=6, token=1, root={"v": 5, "fresh": True}, buckets=None, data_file=names[-1])
    got = snaps.read("t", fresh)
    assert got.buckets is None and got.header["data_file"] == names[-1] and got.root["fresh"]
    assert snaps.read("t", names[2]).buckets == {"k": 3}
    assert not [p for p in (tmp_path / "shared" / "t").iterdir() if p.name.endswith(".tmp")]
    removed = snaps.prune("t", keep=2, current=fresh, current_data=names[-1], grace_seconds=0)
    assert sorted(removed) == names[:3]
    assert snaps.names("t") == [names[3], names[4], fresh]
    with pytest.raises(MirrorError, match="not a snapshot file name"):
        snaps.read("t", "../../etc/passwd")
    with pytest.raises(MirrorError, match="gone"):
        snaps.read("t", names[0])


def test_a_follower_adopts_a_publication_with_the_leaders_prepared_index(tmp_path: Path, shared: SharedRedis) -> None:
    """Leader and follower through the real publish and adopt paths (no processes): the follower's mirror holds the
    leader's objects and asOf, and its view cache the leader's index under the follower's own version."""
    from entra_mcp.cluster.replica import Replication
    from entra_mcp.views import ShippedViews, ViewCache, _view_type

    a, b = MirrorStore(tmp_path / "a"), MirrorStore(tmp_path / "b")
    shared_dir = tmp_path / "shared"
    leader = Replication(["t"], a, shared, snapshot_dir=shared_dir, views=ShippedViews(tmp_path / "a", a), holder="A")
    follower = Replication(["t"], b, shared, snapshot_dir=shared_dir, views=ShippedViews(tmp_path / "b", b), holder="B",
                           lead=False)
    token = leader.leases["t"].acquire()
    assert token is not None
    _commit_users(a, _users(300), "dl-1")
    assert leader._publish("t", token)
    assert not leader._publish("t", token)  # nothing committed since
    assert follower._catch_up("t")
    snap_a, snap_b = a.load_snapshot("t"), b.load_snapshot("t")
    assert snap_a is not None and snap_b is not None and snap_b.as_of == snap_a.as_of
    assert snap_b.users.to_dicts() == snap_a.users.to_dicts()  # type: ignore[attr-defined]
    assert ViewCache(tmp_path / "b" / ".server-views").holds("t", snap_b.version, _view_type())
    st = follower.status("t")
    assert st["inSync"] and not st["leading"] and st["published"]["by"] == "A"

    # a run that changed nothing: a freshness publication (no data file), adopted without copying buckets
    with a.writer("t") as w:
        w.set_status("users", AreaStatus(enabled=True, object_count=300))
    assert leader._publish("t", token)
    assert (leader.leases["t"].published() or Publication.from_json("{}")).kind == "freshness"  # type: ignore[union-attr]
    assert follower._catch_up("t") and follower.status("t")["inSync"]


def test_snapshot_dir_without_redis_is_refused_with_the_fix(tmp_path: Path) -> None:
    from entra_mcp.config import parse_settings
    from entra_mcp.errors import ConfigError

    with pytest.raises(ConfigError) as err:
        parse_settings({"server": {"store": {"snapshot_dir": str(tmp_path)}}})
    assert "snapshot_dir" in str(err.value) and "redis_url" in str(err.value)
    ok = parse_settings({"server": {"store": {"redis_url": "redis://127.0.0.1:6379/0", "snapshot_dir": "~/snaps"}}})
    assert ok.server.store.snapshot_dir is not None and "~" not in str(ok.server.store.snapshot_dir)


def test_replicas_share_the_tenants_leases(tmp_path: Path, shared: SharedRedis) -> None:
    """A replica that started first took every lease; once a second one is alive, leases are handed over one a
    round until each leads its share; a follower-only replica neither counts nor takes one."""
    from entra_mcp.cluster.replica import Replication

    names = ["t1", "t2", "t3", "t4"]

    def replica(holder: str, *, lead: bool = True) -> Replication:
        return Replication(names, MirrorStore(tmp_path / holder), shared, snapshot_dir=tmp_path / "shared",
                           holder=holder, lead=lead, lease_seconds=30)

    a = replica("A")
    a.keep_round()
    assert sorted(n for n, x in a.leases.items() if x.held()) == names
    b, c = replica("B"), replica("C", lead=False)
    for _ in range(4):
        for r in (b, c, a):
            r.keep_round()
    held = {r.holder: sorted(n for n, x in r.leases.items() if x.held()) for r in (a, b, c)}
    assert len(held["A"]) == 2 and len(held["B"]) == 2 and held["C"] == [], held
    assert set(held["A"]) | set(held["B"]) == set(names)
    # A stops cleanly: B takes the rest at its next round
    for lease in a.leases.values():
        lease.release()
    a.replica_set.leave()
    b.keep_round()
    assert sorted(n for n, x in b.leases.items() if x.held()) == names


# ---------------------------------------------------------------------------------------------- sign-in events, polls


def _commit_sign_ins(store: MirrorStore, failures: dict[str, list[dict[str, Any]]], watermark: str) -> None:
    """What a sign-in poll commits into the sign-in mirror (sync/sign_ins.py's collections and meta)."""
    from entra_mcp.sync.sign_ins import AREA, FAILURES, SUCCESSES

    with store.sign_in_store().writer("t") as w:
        w.set_tenant(tenant_id="tid-1", interval_minutes=5)
        n = sum(map(len, failures.values()))
        w.commit_full(AREA, {FAILURES: failures, SUCCESSES: {}}, delta_link=None,
                      status=AreaStatus(enabled=True, object_count=n), meta={"watermark": watermark, "hours": sorted(failures)})


def test_followers_adopt_the_sign_in_events_with_one_redis_command_per_poll(tmp_path: Path, shared: SharedRedis) -> None:
    """The sign-in mirror is published on its own channel under the same lease; a follower's poll reads every
    tenant's publications with ONE command (MGET) and adopts what is new: the leader's events, status and asOf."""
    from entra_mcp.cluster.replica import SIGN_INS, Replication

    names = [f"t{i}" for i in range(20)] + ["t"]
    a, b = MirrorStore(tmp_path / "a"), MirrorStore(tmp_path / "b")
    shared_dir = tmp_path / "shared"
    leader = Replication(names, a, shared, snapshot_dir=shared_dir, holder="A")
    follower = Replication(names, b, shared, snapshot_dir=shared_dir, holder="B", lead=False)
    token = leader.leases["t"].acquire()
    assert token is not None
    row = {"id": "e1", "createdDateTime": "2026-12-01T10:00:00Z", "userId": "u1", "errorCode": 50126}
    _commit_sign_ins(a, {"2026-12-01T10": [row]}, "2026-12-01T10:00:00Z")
    assert leader._publish("t", token, SIGN_INS)
    assert leader.leases["t"].published("signins") is not None and leader.leases["t"].published() is None

    before = _commandstats(shared)
    assert follower.follow_round() == 1
    used = _commandstats(shared, before)
    assert used.get("mget") == 1 and "get" not in used, used  # 21 tenants x 2 channels: one command
    assert follower.follow_round() == 0  # nothing new: no adoption, no mirror read

    got, want = b.sign_in_store().load_snapshot("t"), a.sign_in_store().load_snapshot("t")
    assert got is not None and want is not None
    assert got.collection("sign_in_failures") == want.collection("sign_in_failures")
    assert got.areas["sign_in_events"] == want.areas["sign_in_events"]  # the leader's status: the answers' asOf
    st = follower.status("t")["signIns"]
    assert st["inSync"] and st["published"]["by"] == "A" and st["serving"]["token"] == token
    assert follower.status("t")["published"] is None  # the directory channel is apart

    # the next poll moves the watermark: a new publication, adopted at the next follow round
    row2 = {**row, "id": "e2", "createdDateTime": "2026-12-01T11:00:00Z"}
    _commit_sign_ins(a, {"2026-12-01T10": [row], "2026-12-01T11": [row2]}, "2026-12-01T11:00:00Z")
    assert leader._publish("t", token, SIGN_INS)
    assert follower.follow_round() == 1
    again = b.sign_in_store().load_snapshot("t")
    assert again is not None and sum(map(len, again.collection("sign_in_failures").values())) == 2

    # a replica that takes over adopts the newest sign-in publication before its first run (which polls them), so
    # it continues from the leader's watermark
    import anyio

    c = MirrorStore(tmp_path / "c")
    successor = Replication(names, c, shared, snapshot_dir=shared_dir, holder="C")
    leader.leases["t"].release()
    assert successor.leases["t"].acquire() is not None

    async def first_run() -> dict[str, Any]:
        async with successor.run(_Tenant()) as leading:
            assert leading
            info = c.sign_in_store().info("t")
            assert info is not None
            return dict(info["areas"]["sign_in_events"]["meta"])

    assert anyio.run(first_run)["watermark"] == "2026-12-01T11:00:00Z"


def _commandstats(shared: SharedRedis, since: dict[str, int] | None = None) -> dict[str, int]:
    """Redis's INFO commandstats calls per command (lower case), or the calls made since `since`."""
    now = {k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in shared.client.info("commandstats").items()}
    if since is None:
        return now
    return {k: n - since.get(k, 0) for k, n in now.items() if n - since.get(k, 0) > 0 and k != "info"}


class _Tenant:
    name = "t"


def test_a_run_whose_lease_is_lost_stops_before_its_next_graph_request(tmp_path: Path, shared: SharedRedis) -> None:
    """A leader paused past its lease resumes mid-run: the Graph client asks the run's gate before each request, the
    run is cancelled before the request goes out, nothing is published, and the scheduler sees a run not led."""
    import anyio
    import httpx

    from entra_mcp.cluster.replica import Replication
    from entra_mcp.graph.client import GraphClient

    clock = Clock()
    store = MirrorStore(tmp_path / "a")
    rep = Replication(["t"], store, shared, snapshot_dir=tmp_path / "shared", holder="A", lease_seconds=5, clock=clock)
    assert rep.leases["t"].acquire() is not None
    sent: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        sent.append(request.url.path)
        return httpx.Response(200, json={"value": []})

    class Tokens:
        async def token(self, *, force_refresh: bool = False) -> str:
            return "tok"

    reached: list[str] = []

    async def scenario() -> bool:
        ran = False
        with anyio.fail_after(30):
            async with GraphClient("https://graph.example", Tokens(), transport=httpx.MockTransport(handler)) as client:
                async with rep.run(_Tenant()) as leading:
                    assert leading
                    await client.get("/users")
                    reached.append("first")
                    clock.now += 6  # paused past the lease: its local deadline has passed
                    await client.get("/groups")
                    reached.append("second")  # never: cancelled before the request
                    ran = True
        return ran

    ran = anyio.run(scenario)
    assert not ran and reached == ["first"] and sent == ["/v1.0/users"]
    assert rep.stopped["t"] == 1 and rep.status("t")["stoppedRuns"] == 1
    assert rep.leases["t"].published() is None  # nothing published by a run that lost its lease
