"""One sync leader among three `entra-mcp serve` replicas (separate processes, their own cache directories, one
redis-server, one shared snapshot directory, the emulator over HTTPS).

- kill -9 the leader in the middle of a sync run: another replica takes over within the lease time, no two commits
  for one tenant land (the fenced publication log: stamps strictly increase, each token belongs to one replica), and
  every replica, the killed one restarted included, converges to the same version, equal to the emulator's ground
  truth;
- SIGSTOP the leader mid-run past its lease, SIGCONT it: its publication is refused (the fencing token is no longer
  the newest), and it adopts the new leader's version over its own local commit;
- Redis restarted (no persistence: leases, tokens and records gone): a leader is elected again and publishes, and
  every replica converges, without a manual step;
- sign-in events: only the leader polls Graph; every follower adopts the published sign-in mirror and answers
  explain_sign_in exactly as the leader does, with the leader's asOf for that area.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any, Iterator

import pytest

from _cluster import CONVERGE_TIMEOUT, LEASE_SECONDS, Cluster
from _harness import ENTRA_MCP, wait_until
from _redis import RedisServer, have_redis
from entra_mcp.devtenant.server import run_emulator
from entra_mcp.mirror.store import MirrorStore

pytestmark = pytest.mark.skipif(not have_redis(), reason="redis-server is not installed (scripts/test.sh installs it)")

@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    root = tmp_path_factory.mktemp("cluster")
    with RedisServer(root / "redis") as redis_server, run_emulator(size="small", seed=11) as emu:
        c = Cluster(root, emu, redis_server.port)
        c.redis_server = redis_server
        try:
            c.start_all(converge_timeout=CONVERGE_TIMEOUT)
            yield c
        finally:
            c.close()


SIGN_IN_FIELDS = ("failures", "signInEvents", "lockout", "lastSuccess", "asOf", "verdict")


def test_followers_answer_the_leaders_sign_in_events(cluster: Cluster) -> None:
    """A failed sign-in added to the emulator's audit log: the leader's poll reads it and publishes the sign-in
    mirror; each follower adopts it and answers explain_sign_in (its sign-in parts) exactly like the leader, with an
    asOf that is one of the leader's polls (a follower never polls Graph for them)."""
    c = cluster
    leader = c.leader()
    people = sorted((u for u in c.emu.tenant(0).users.values() if u["accountEnabled"] and u.get("userType") != "Guest"),
                    key=lambda u: u["userPrincipalName"])
    upn = people[0]["userPrincipalName"]
    c.add_sign_in_failure(upn)
    answers: dict[str, dict[str, Any]] = {}

    def everywhere() -> bool:
        for r in c.replicas:
            if not (answers.get(r.name) or {}).get("failures"):
                answers[r.name] = c.call_tool(r, "explain_sign_in", {"user": upn})
        return all((a or {}).get("failures") for a in answers.values()) and len(answers) == len(c.replicas)

    wait_until(everywhere, timeout=90, what="every replica answering the new sign-in failure")
    mine = answers[leader.name]
    assert any(g["errorCode"] == 50126 for g in mine["failures"]), mine["failures"]
    # no new event since: every answer's sign-in evidence is the same; only the poll it came from may differ
    same = [k for k in SIGN_IN_FIELDS if k != "asOf"]
    for name, a in answers.items():
        assert {k: a.get(k) for k in same} == {k: mine.get(k) for k in same}, name
    polls = {_when(p.as_of) for p in c.history("signins") if p.as_of}
    for name, a in answers.items():
        assert _when(a["asOf"]) in polls, (name, a["asOf"], sorted(polls)[-3:])
    for r in c.replicas:  # /healthz: the newest sign-in publication seen, and the one each follower holds (the
        st = c.replication_of(r)  # leader's mirror is ahead of its publications between a poll and its publishing)
        assert st is not None and st["signIns"]["published"] is not None, st
        assert st["leading"] or st["signIns"]["serving"], st


def test_kill_9_the_leader_mid_sync_another_takes_over(cluster: Cluster) -> None:
    c = cluster
    leader = c.leader()
    before = c.published()
    assert before is not None
    upn = c.change_directory("kill")
    assert leader.proc is not None
    killed_holder = c.holder(leader)
    c.wait_mid_run(leader)
    killed_at = time.time()  # right before the kill: the leader may finish a run and publish until then
    leader.proc.kill9()
    # what its own mirror holds: a run may have committed locally just before the kill, unpublished
    own_commit = _local_as_of(leader.cache_dir, c.tenant)
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
    c.wait_converged()
    c.assert_no_two_commits()
    c.assert_matches_ground_truth(c.replicas)
    store = MirrorStore(leader.cache_dir)
    try:
        snap = store.load_snapshot(c.tenant)
        assert snap is not None and any(u.get("userPrincipalName") == upn for u in snap.users.values())
    finally:
        store.close()

    # the followers took the leader's prepared index with the version (no indexing of their own)
    assert any("with its index" in r.proc.log() for r in c.replicas if r.proc is not None)

    # the restarted replica follows: it answers the change, and its asOf is a leader's commit time, not its own
    # (the server swaps to a newly adopted version in the background; the held view answers meanwhile)
    answers: list[dict[str, Any]] = []

    def found() -> bool:
        answers.append(c.call_tool(leader, "lookup_user", {"query": upn}))
        return answers[-1]["matchType"] == "exact"
    wait_until(found, timeout=60, what="the restarted replica answering from the adopted version")
    answer = answers[-1]
    assert answer["matches"][0]["userPrincipalName"] == upn
    # every answer, also those from the older view, carries a leader's commit time: a published one, or the commit
    # it made itself as the leader and was killed before publishing (served until it adopts the newest publication)
    published_as_of = {_when(p.as_of) for p in c.history()}
    for a in answers:
        assert _when(a["asOf"]) in published_as_of | {own_commit}, (a["asOf"], own_commit, sorted(published_as_of)[-3:])
    assert _when(answer["asOf"]) in published_as_of, (answer["asOf"], sorted(published_as_of)[-3:])
    status = c.call_tool(leader, "sync_status", {})
    rep_now, newest = status["replication"], c.published()
    assert newest is not None and rep_now["serving"]["token"] == newest.token
    # it may lead again by now (replicas share the leases and it came back); if so, with a token no older than the newest
    assert rep_now["leading"] is False or rep_now["fencingToken"] >= newest.token, (rep_now, newest)
    # `entra-mcp status` from the same config says who leads and that this cache holds a published version. When this
    # replica leads again, its mirror holds a run it committed and has not published yet for a moment (status then
    # says serving: null, by design: MirrorStore.source); asked again, it holds the publication that follows
    reps: list[dict[str, Any]] = []

    def status_read() -> bool:
        out = subprocess.run([ENTRA_MCP, "--config", str(leader.root / "config.toml"), "status", "--json"], env=c.env,
                             capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        reps.append(json.loads(out.stdout)["tenants"][0]["replication"])
        return reps[-1]["serving"] is not None
    wait_until(status_read, timeout=60, what="entra-mcp status reporting the publication this cache serves")
    rep = reps[-1]
    assert rep["leader"] == c.published().holder and rep["redisError"] is None and rep["serving"]["token"]  # type: ignore[union-attr]
    assert rep["signIns"]["published"]["asOf"], rep["signIns"]  # the sign-in events' publication too


def _local_as_of(cache_dir: Path, tenant: str) -> datetime | None:
    """The commit time of what a (stopped) replica's own mirror holds."""
    store = MirrorStore(cache_dir)
    try:
        root = store.root_state(tenant) or {}
    finally:
        store.close()
    value = root.get("as_of")
    return _when(value if isinstance(value, str) else value.isoformat()) if value is not None else None


def _when(text: str | None) -> datetime:
    assert text, "no asOf"
    return datetime.fromisoformat(text.replace("Z", "+00:00")).replace(microsecond=0)


def _started_at(client_request_id: str) -> float | None:
    """When the client started a request: the Unix time (s) in its client-request-id, a UUID version 7 made once the
    request gate let the request through (graph/client.py); None for an id of another kind."""
    try:
        u = uuid.UUID(client_request_id)
    except ValueError:
        return None
    return (u.int >> 80) / 1000.0 if u.version == 7 else None


def test_a_paused_leader_past_its_lease_cannot_commit(cluster: Cluster) -> None:
    """SIGSTOP the leader mid-run past its lease, SIGCONT it: it starts no Graph request after the resume (its run is
    stopped before its next request: the lease's local deadline has passed), commits nothing that lands, and adopts
    the new leader's version."""
    c = cluster
    leader = c.leader()
    assert leader.proc is not None
    paused_holder = c.holder(leader)
    before = c.published()
    assert before is not None
    refused = c.refused()
    requests = c.emu.runtime.requests  # the emulator's request log: per access token, i.e. per replica process
    pid = leader.proc.proc.pid
    paused: dict[str, Any] = {}
    once = threading.Lock()

    def pause_at_this_request(token_id: str, client_request_id: str) -> None:
        """The emulator received a request of the leader's run (only the leader talks to Graph): SIGSTOP the leader
        before answering it, so its run has that answer and usually more requests ahead of it."""
        if once.acquire(blocking=False):
            os.kill(pid, signal.SIGSTOP)
            paused.update(token=token_id, at=time.monotonic(), wall=time.time())

    proc = leader.proc
    log_before = len(proc.log())
    requests.on_http = pause_at_this_request
    try:
        c.change_directory("pause")
        wait_until(lambda: "wall" in paused, timeout=30, what="a Graph request of the leader's run")
        requests.on_http = None
        mid, stopped_wall = paused["at"], paused["wall"]
        paused_tokens = {paused["token"]}

        def taken_over() -> bool:
            rec = c.published()
            return rec is not None and rec.token > before.token
        wait_until(taken_over, timeout=LEASE_SECONDS + 30, what="a publication by the next leader while the old one is paused")
    finally:
        requests.on_http = None
        resumed_at, resumed_wall = time.monotonic(), time.time()
        if once.locked():
            os.kill(pid, signal.SIGCONT)
    new = c.published()
    assert new is not None and new.holder != paused_holder

    # the resumed replica stops its run before its next Graph request (or, when the run had sent its last request
    # before the pause, finishes it and its publication is refused): either way it says so in its log
    def since() -> str:
        return proc.log()[log_before:]
    wait_until(lambda: "its run is stopped" in since() or (c.refused() > refused and "refused: fencing token" in since()),
               timeout=60, what="the resumed leader stopping its run (or its publication refused)",
               proc=proc.proc, log_path=proc.log_path)
    noticed_wall = time.time()
    how = "its run stopped" if "its run is stopped" in since() else "its publication refused"
    c.assert_no_two_commits()
    c.wait_converged()  # by then whatever the run had started before the pause has reached the emulator

    # What the client started, by the time in each request's client-request-id: requests it had let through before
    # the pause may still reach the emulator after the resume (written after it, or a slow emulator); one started
    # after the resume (until its run was seen stopped) would have passed the gate past the lease's deadline.
    sent = requests.http_requests(paused_tokens, mid)
    started = [_started_at(crid) for _, crid in sent]
    assert sent and None not in started, f"every Graph request carries a UUIDv7 client-request-id: {sent[:3]}"
    pause_mid = (stopped_wall + resumed_wall) / 2  # the process ran neither side of this by more than a moment
    late = [t for t in started if t is not None and pause_mid < t <= noticed_wall]
    arrived_after = sum(1 for arrival, _ in sent if arrival >= resumed_at)
    print(f"Graph requests of the paused leader ({how}): {len(sent)} since the pause's request, {arrived_after} arriving "
          f"after the resume, {len(late)} started after it")
    assert not late, (f"the paused leader started {len(late)} Graph requests after it resumed past its lease "
                      f"({[round(t - resumed_wall, 3) for t in late]} s after the resume)")
    assert not [p for p in c.history() if p.holder == paused_holder and p.token > before.token]
    c.assert_matches_ground_truth(c.replicas)


def test_redis_restarted_a_leader_is_elected_again_and_everyone_converges(cluster: Cluster) -> None:
    c = cluster
    c.leader()
    restarted_at = time.time()
    c.redis_server.restart()  # an empty Redis: the lease, the fencing counter and the publication records are gone
    upn = c.change_directory("redis")

    def republished() -> bool:
        try:
            rec = c.published()
        except Exception:  # noqa: BLE001 - the test's own client reconnecting
            return False
        return rec is not None and rec.published_at > restarted_at
    wait_until(republished, timeout=60, what="a publication after Redis came back")
    c.wait_converged()
    c.leader()
    c.assert_no_two_commits()
    c.assert_matches_ground_truth(c.replicas)  # the user created while Redis was down included
    assert any(u["userPrincipalName"] == upn for u in c.ctl.snapshot()["users"])
