"""The mirror store: bucketed generations, all-or-nothing commits, schema rebuild, one writer, clear disk errors."""

from __future__ import annotations

import os
import pickle
import random
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

from entra_mcp import areas as A
from entra_mcp.errors import MirrorError
from entra_mcp.mirror.snapshot import AREAS, AreaStatus
from entra_mcp.mirror.store import MAX_BUCKETS, SCHEMA_VERSION, MirrorStore
from entra_mcp.mirror.table import unpack


def _users(n: int, tag: str = "") -> dict[str, dict[str, object]]:
    return {f"u{i:05d}": {"id": f"u{i:05d}", "displayName": f"User {i}{tag}", "managerId": None} for i in range(n)}


def test_full_and_delta_commits_and_snapshot(tmp_path: Path) -> None:
    store = MirrorStore(tmp_path)
    assert store.load_snapshot("t") is None and store.version("t") == 0
    with store.writer("t") as w:
        w.set_tenant(tenant_id="tid-1", interval_minutes=5)
        v1 = w.commit_full("users", {"users": _users(5000)}, delta_link="dl-1", status=AreaStatus(enabled=True, object_count=5000))
        w.commit_full("groups", {"groups": {"g1": {"id": "g1"}}, "members": {"g1": {"u00001": "user"}}}, delta_link="dl-g",
                      status=AreaStatus(enabled=True, object_count=1))
        w.commit_full("sign_in_activity", {"sign_in": {"u00002": {"lastSignInDateTime": "2026-01-01T00:00:00Z"}}}, delta_link=None,
                      status=AreaStatus(enabled=True, object_count=1))
        change = w.begin("users")
        u = dict(change.get("users", "u00003"))
        u["displayName"] = "Renamed"
        change.put("users", "u00003", u)
        change.delete("users", "u00004")
        change.put("users", "new", {"id": "new", "displayName": "New"})
        v2 = w.commit_delta(change, delta_link="dl-2", status=AreaStatus(enabled=True, object_count=5000))
        assert change.touched <= 3
        assert w.delta_link("users") == "dl-2"
    assert v2 > v1
    snap = store.load_snapshot("t")
    assert snap is not None and snap.version == store.version("t") and snap.tenant_id == "tid-1" and snap.interval_minutes == 5
    assert len(snap.users) == 5000 and snap.users["u00003"]["displayName"] == "Renamed" and "u00004" not in snap.users
    assert snap.users["u00002"]["signInActivity"]["lastSignInDateTime"].startswith("2026")
    assert snap.members == {"g1": {"u00001": "user"}}
    assert set(snap.areas) == set(AREAS) and snap.areas["users"].object_count == 5000
    assert snap.areas["domains"].last_success is None


def test_loaded_snapshot_holds_each_distinct_string_once(tmp_path: Path) -> None:
    """Equal strings from different buckets and collections are one object after a load: property names, repeated
    values, and member ids / managerIds are the very user id objects (the view's reverse indexes reuse them)."""
    store = MirrorStore(tmp_path)
    users = {
        f"u{i:05d}": {"id": f"u{i:05d}", "department": "Sales" + "", "managerId": f"u{(i + 1) % 3000:05d}",
                      "assignedLicenses": [{"skuId": "sku-" + "e5", "disabledPlans": []}], "otherMails": [f"u{i}@x.example"]}
        for i in range(3000)
    }
    members = {"g1": {f"u{i:05d}": "user" for i in range(0, 3000, 7)}, "g2": {"g1": "group", "u00007": "user"}}
    with store.writer("t") as w:
        w.commit_full("users", {"users": users}, delta_link=None, status=AreaStatus(enabled=True))
        w.commit_full("groups", {"groups": {"g1": {"id": "g1"}, "g2": {"id": "g2"}}, "members": members}, delta_link=None,
                      status=AreaStatus(enabled=True))
        w.commit_full("sign_in_activity", {"sign_in": {"u00002": {"lastSignInDateTime": "2026-01-01T00:00:00Z"}}},
                      delta_link=None, status=AreaStatus(enabled=True))
    snap = store.load_snapshot("t")
    assert snap is not None and len(snap.users) == 3000 and snap.users == {**users, "u00002": snap.users["u00002"]}
    assert snap.users["u00002"]["signInActivity"] == {"lastSignInDateTime": "2026-01-01T00:00:00Z"}
    keys = {id(k) for u in snap.users.values() for k in u}
    assert len(keys) == 6  # id, department, managerId, assignedLicenses, otherMails, signInActivity
    assert len({id(u["department"]) for u in snap.users.values()}) == 1
    assert len({id(u["assignedLicenses"][0]["skuId"]) for u in snap.users.values()}) == 1
    # equal lists are stored once and handed out as a new list each time: a caller cannot alter the mirror
    licences = [u["assignedLicenses"] for u in list(snap.users.values())[:2]]
    assert licences[0] == licences[1] and licences[0] is not licences[1]
    licences[0].append("changed")
    assert next(iter(snap.users.values()))["assignedLicenses"] == users["u00000"]["assignedLicenses"]
    assert len({tuple(u["otherMails"]) for u in snap.users.values()}) == 3000
    ids = {uid: uid for uid in snap.users}
    for uid, user in snap.users.items():
        assert user["id"] is ids[uid] and user["managerId"] is ids[user["managerId"]]
    for member_id, _kind in [*snap.members["g1"].items(), *snap.members["g2"].items()]:
        assert member_id is (ids.get(member_id) or snap.groups[member_id]["id"])
    assert next(iter(snap.members["g1"].values())) is snap.members["g2"]["u00007"]


def _stored(store: MirrorStore, area: str) -> dict[str, Any]:
    """An area's collections as stored: {coll: [bucket count, [each bucket's objects (unpacked) or None]]}."""
    with store.writer("t") as w:
        out: dict[str, Any] = {}
        for coll, (n, revs) in w._root["areas"][area]["colls"].items():
            out[coll] = [n, [unpack(w._cache[f"b/{area}/{coll}/{i}/{rev}"]) if rev >= 0 else None for i, rev in enumerate(revs)]]
        return out


@pytest.mark.parametrize("users, groups", [(9_000, 200), (700, 40)])  # buckets split from parts / merged from parts
def test_full_build_commits_exactly_what_dicts_commit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, users: int, groups: int) -> None:
    """A full build keeps its objects pickled by part as they come (areas.BuildCollection, a few hot as dicts); what it
    reads back while building and the buckets its commit writes are those of the same build held as plain dicts:
    objects met again (merged), deleted, deleted and put again, member lists."""
    monkeypatch.setattr(A, "BUILD_HOT", 97)  # many pickled segments, most objects read back from one
    rnd = random.Random(users)
    build, plain = A.FullBuild(), {"users": {}, "groups": {}, "members": {}}  # type: ignore[var-annotated]
    ids = [f"u{i:06d}" for i in range(users)]
    for step in range(users * 3 // 2):
        oid = rnd.choice(ids)
        seen = build.get("users", oid)
        assert seen == plain["users"].get(oid), (step, oid)
        if rnd.random() < 0.1 and seen is not None:
            build.delete("users", oid)
            del plain["users"][oid]
            continue
        value = {**(seen or {"id": oid}), "displayName": f"User {step}", "department": rnd.choice(["Sales", "IT", None])}
        build.put("users", oid, value)
        plain["users"][oid] = value
    for g in range(groups):
        gid = f"g{g:04d}"
        for _ in range(3):  # a group's member list comes in chunks, merged
            members = dict(build.get("members", gid) or {})
            members.update({rnd.choice(ids): "user" for _ in range(rnd.randint(1, 30))})
            build.put("members", gid, members)
            plain["members"][gid] = members
            build.put("groups", gid, {"id": gid, "displayName": f"Group {g}"})
            plain["groups"][gid] = {"id": gid, "displayName": f"Group {g}"}
    assert len(build.data["users"]) == len(plain["users"]) and set(build.data["users"]) == set(plain["users"])
    assert dict(build.data["members"].items()) == plain["members"]
    assert A._memberships(build.data) == A._memberships(plain)  # type: ignore[arg-type]
    a, b = MirrorStore(tmp_path / "build"), MirrorStore(tmp_path / "plain")
    for store, data in ((a, build.data), (b, plain)):
        with store.writer("t") as w:
            w.commit_full("users", {"users": data["users"]}, delta_link=None, status=AreaStatus(enabled=True))
            w.commit_full("groups", {"groups": data["groups"], "members": data["members"]}, delta_link=None,
                          status=AreaStatus(enabled=True))
    for area in ("users", "groups"):
        assert _stored(a, area) == _stored(b, area)
    assert _stored(a, "users")["users"][0] == (MAX_BUCKETS if users > 100_000 else _stored(b, "users")["users"][0])
    snap = a.load_snapshot("t")
    assert snap is not None and snap.users == plain["users"] and snap.members == plain["members"]


def test_killed_while_committing_a_full_build_keeps_the_last_state(tmp_path: Path) -> None:
    """kill -9 while a full build's buckets are being written (a full sync's commit): the mirror stays at its last
    commit, the next writer sweeps what was written, and commits again."""
    store = MirrorStore(tmp_path)
    with store.writer("t") as w:
        v = w.commit_full("users", {"users": _users(10)}, delta_link="a", status=AreaStatus(enabled=True))
    store.close()
    code = textwrap.dedent(f"""
        import sys
        from entra_mcp.areas import FullBuild
        from entra_mcp.mirror.store import MirrorStore
        from entra_mcp.mirror.snapshot import AreaStatus
        build = FullBuild()
        for i in range(60_000):
            build.put("users", f"x{{i:06d}}", {{"id": f"x{{i:06d}}", "displayName": f"Someone {{i}}", "n": i}})
        with MirrorStore({str(tmp_path)!r}).writer("t") as w:
            print("committing", flush=True)
            w.commit_full("users", build.data, delta_link="b", status=AreaStatus(enabled=True))
        print("committed", flush=True)
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "committing"
        db = sqlite3.connect(f"file:{tmp_path / 't' / 'cache.db'}?mode=ro", uri=True, timeout=30)
        deadline = time.monotonic() + 60
        while db.execute("SELECT count(*) FROM Cache WHERE key LIKE 'b/users/users/%/2'").fetchone()[0] < 5:
            assert proc.poll() is None and time.monotonic() < deadline, "the commit ended before it was killed"
            time.sleep(0.01)
        db.close()
        proc.kill()
        assert proc.wait(timeout=30) == -9
    finally:
        proc.kill()
        proc.wait(timeout=30)
    snap = MirrorStore(tmp_path).load_snapshot("t")
    assert snap is not None and set(snap.users) == set(_users(10)) and snap.version == v
    with MirrorStore(tmp_path).writer("t") as w:
        assert not [k for k in w._cache.iterkeys() if k.startswith("b/users/users/") and k.endswith("/2")]
        build = A.FullBuild()
        for oid, user in _users(3).items():
            build.put("users", oid, user)
        w.commit_full("users", build.data, delta_link="c", status=AreaStatus(enabled=True))
    snap = MirrorStore(tmp_path).load_snapshot("t")
    assert snap is not None and set(snap.users) == set(_users(3)) and snap.version > v


def test_delta_rewrites_only_touched_buckets(tmp_path: Path) -> None:
    store = MirrorStore(tmp_path)
    with store.writer("t") as w:
        w.commit_full("users", {"users": _users(120_000)}, delta_link="a", status=AreaStatus(enabled=True))
        cache = w._cache
        keys_before = {k for k in cache.iterkeys() if k.startswith("b/users/")}
        assert len(keys_before) == MAX_BUCKETS
        change = w.begin("users")
        change.put("users", "u00001", {"id": "u00001"})
        w.commit_delta(change, delta_link="b", status=AreaStatus(enabled=True))
        keys_after = {k for k in cache.iterkeys() if k.startswith("b/users/")}
    assert len(keys_after - keys_before) == 1 and len(keys_before - keys_after) == 1


def test_older_schema_is_rebuilt(tmp_path: Path) -> None:
    store = MirrorStore(tmp_path)
    with store.writer("t") as w:
        w.commit_full("users", {"users": _users(3)}, delta_link="a", status=AreaStatus(enabled=True))
        root = w._cache.get("root")
        root["schema"] = SCHEMA_VERSION - 1
        w._cache.set("root", root)
    assert store.load_snapshot("t") is None  # readers never see a mirror of another schema
    with store.writer("t") as w:
        assert w.rebuilt and w.delta_link("users") is None and not w.has_data("users")
        assert [k for k in w._cache.iterkeys() if k.startswith("b/")] == []


def test_one_writer_at_a_time_across_processes(tmp_path: Path) -> None:
    store = MirrorStore(tmp_path)
    with store.writer("t"):
        code = textwrap.dedent(f"""
            from entra_mcp.mirror.store import MirrorStore
            from entra_mcp.errors import MirrorError
            try:
                with MirrorStore({str(tmp_path)!r}).writer("t"):
                    print("GOT")
            except MirrorError as e:
                print("REFUSED", e)
        """)
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60).stdout
        assert out.startswith("REFUSED") and f"pid {os.getpid()}" in out
    with store.writer("other"), store.writer("t"):  # other tenants are independent; released lock is free again
        pass


def test_leftovers_of_a_killed_writer_are_swept(tmp_path: Path) -> None:
    store = MirrorStore(tmp_path)
    with store.writer("t") as w:
        w.commit_full("users", {"users": _users(10)}, delta_link="a", status=AreaStatus(enabled=True))
        w._cache.set("b/users/users/0/999", {"junk": {}})  # written by a run that died before its commit
        w._cache.set("writer/running", 12345)
    with store.writer("t") as w:
        assert "b/users/users/0/999" not in set(w._cache.iterkeys())
    snap = store.load_snapshot("t")
    assert snap is not None and len(snap.users) == 10


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores directory permissions")
def test_read_only_mirror_is_a_clear_error_and_keeps_the_last_state(tmp_path: Path) -> None:
    store = MirrorStore(tmp_path)
    with store.writer("t") as w:
        w.commit_full("users", {"users": _users(10)}, delta_link="a", status=AreaStatus(enabled=True))
    store.close()
    os.chmod(tmp_path / "t", 0o500)
    try:
        with pytest.raises(MirrorError, match="last good state is kept"):
            with MirrorStore(tmp_path).writer("t") as w:
                w.commit_full("users", {"users": _users(20)}, delta_link="b", status=AreaStatus(enabled=True))
    finally:
        os.chmod(tmp_path / "t", 0o700)
    snap = MirrorStore(tmp_path).load_snapshot("t")
    assert snap is not None and len(snap.users) == 10


def test_failed_write_is_a_clear_error_and_keeps_the_last_state(tmp_path: Path) -> None:
    """A value that cannot be written (here: unpicklable, standing in for a full disk) aborts the commit cleanly."""
    store = MirrorStore(tmp_path)
    with store.writer("t") as w:
        v = w.commit_full("users", {"users": _users(10)}, delta_link="a", status=AreaStatus(enabled=True))
        bad = _users(10)
        bad["u00001"]["x"] = lambda: None  # type: ignore[assignment]
        with pytest.raises((MirrorError, pickle.PicklingError, AttributeError)):
            w.commit_full("users", {"users": bad}, delta_link="b", status=AreaStatus(enabled=True))
        assert w.version == v and w.delta_link("users") == "a"
    snap = store.load_snapshot("t")
    assert snap is not None and len(snap.users) == 10 and snap.version == v


def test_disk_full_is_a_clear_error_and_keeps_the_last_state(tmp_path: Path) -> None:
    """A write the file system refuses (a file-size limit standing in for a full disk) aborts the commit cleanly."""
    store = MirrorStore(tmp_path)
    with store.writer("t") as w:
        w.commit_full("users", {"users": _users(10)}, delta_link="a", status=AreaStatus(enabled=True))
    store.close()
    code = textwrap.dedent(f"""
        import resource, signal
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (256 * 1024, 256 * 1024))
        from entra_mcp.mirror.store import MirrorStore
        from entra_mcp.mirror.snapshot import AreaStatus
        from entra_mcp.errors import MirrorError
        users = {{f"x{{i}}": {{"id": f"x{{i}}", "blob": "z" * 2000}} for i in range(5000)}}
        try:
            with MirrorStore({str(tmp_path)!r}).writer("t") as w:
                w.commit_full("users", {{"users": users}}, delta_link="b", status=AreaStatus(enabled=True))
            print("WROTE")
        except MirrorError as e:
            print("ERROR", e)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.startswith("ERROR cannot write the mirror"), out.stdout + out.stderr
    assert "last good state is kept" in out.stdout
    snap = MirrorStore(tmp_path).load_snapshot("t")
    assert snap is not None and set(snap.users) == set(_users(10))
    with MirrorStore(tmp_path).writer("t") as w:  # and the next writer cleans up and works
        w.commit_full("users", {"users": _users(3)}, delta_link="c", status=AreaStatus(enabled=True))


def _open_db_files(root: Path) -> dict[str, int]:
    """This process's open descriptors on SQLite files under `root`, by tenant directory."""
    out: dict[str, int] = {}
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = Path(os.readlink(f"/proc/self/fd/{fd}"))
        except OSError:
            continue
        if target.name.startswith("cache.db") and root in target.parents:
            out[target.parent.name] = out.get(target.parent.name, 0) + 1
    return out


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="counts /proc/self/fd")
def test_idle_mirrors_close_their_files_from_every_thread(tmp_path: Path) -> None:
    """Past max_open, the least recently used mirror nobody is using has every thread's SQLite connection closed,
    and answers again at its next use; a mirror in use (a writer mid-run) is never closed under it."""
    import threading

    store = MirrorStore(tmp_path, max_open=3)
    try:
        names = [f"t{i}" for i in range(8)]
        for name in names:
            with store.writer(name) as w:
                w.commit_full("users", {"users": _users(3, name)}, delta_link=None, status=AreaStatus(enabled=True))

        def read_all() -> None:
            for name in names:
                assert store.load_snapshot(name) is not None

        threads = [threading.Thread(target=read_all) for _ in range(4)]  # connections of several threads, as serve's pool
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        read_all()
        held = _open_db_files(tmp_path)
        assert set(held) <= set(names[-3:]) and len(held) == 3, held  # the three used last, no other
        assert store.connected() == names[-3:]
        with store.writer("t0") as w:  # in use: kept open while five other mirrors are read
            for name in names[1:6]:
                assert store.version(name) > 0
            assert "t0" in _open_db_files(tmp_path)
            w.commit_full("users", {"users": _users(4, "again")}, delta_link=None, status=AreaStatus(enabled=True))
        snap = store.load_snapshot("t0")  # reopened after its files were closed: the same committed data
        assert snap is not None and snap.users["u00003"]["displayName"] == "User 3again"
        assert len(_open_db_files(tmp_path)) <= 3
    finally:
        store.close()
    assert _open_db_files(tmp_path) == {}


def test_load_with_a_held_snapshot_reads_only_the_rewritten_buckets(tmp_path: Path) -> None:
    """load_snapshot(held=) (a server's reload): a collection no commit touched since is the held one itself; a table
    or the member lists with a few buckets rewritten are the held ones with those buckets replaced; either way the
    snapshot equals a load from scratch, property by property."""
    store = MirrorStore(tmp_path)
    users = {f"u{i:05d}": {"id": f"u{i:05d}", "displayName": f"User {i}", "department": ["Sales", "IT"][i % 2],
                           "createdDateTime": "2026-01-01T00:00:00Z", "managerId": f"u{(i + 1) % 4000:05d}"}
             for i in range(4000)}
    members = {f"g{j}": {f"u{i:05d}": "user" for i in range(j, 4000, 50)} for j in range(300)}
    with store.writer("t") as w:
        w.set_tenant(tenant_id="tid", interval_minutes=5)
        w.commit_full("users", {"users": users}, delta_link="a", status=AreaStatus(enabled=True))
        w.commit_full("groups", {"groups": {g: {"id": g, "displayName": g} for g in members}, "members": members},
                      delta_link="g", status=AreaStatus(enabled=True))
        w.commit_full("sign_in_activity", {"sign_in": {"u00002": {"lastSignInDateTime": "2026-01-01T00:00:00Z"}}},
                      delta_link=None, status=AreaStatus(enabled=True))
    held = store.load_snapshot("t")
    assert held is not None and sum(held.bucket_rows["users"]) == 4000
    with store.writer("t") as w:
        change = w.begin("users")  # a rename, a new department value, a date gone null, one user gone, one new
        change.put("users", "u00003", {**change.get("users", "u00003"), "displayName": "Renamed", "department": "Legal",
                                         "createdDateTime": None})
        change.delete("users", "u00004")
        change.put("users", "new", {"id": "new", "displayName": "New", "managerId": "u00001"})
        w.commit_delta(change, delta_link="b", status=AreaStatus(enabled=True))
        change = w.begin("groups")
        change.put("members", "g7", {**change.get("members", "g7"), "new": "user"})
        w.commit_delta(change, delta_link="h", status=AreaStatus(enabled=True))
    reloaded, fresh = store.load_snapshot("t", held=held), store.load_snapshot("t")
    assert reloaded is not None and fresh is not None and reloaded.version == fresh.version > held.version
    assert reloaded.users == fresh.users and list(reloaded.users) == list(fresh.users)
    assert reloaded.users["u00003"] == {**users["u00003"], "displayName": "Renamed", "department": "Legal", "createdDateTime": None}
    assert reloaded.members == fresh.members and list(reloaded.members) == list(fresh.members)
    assert reloaded.members["g7"]["new"] == "user" and reloaded.bucket_rows == fresh.bucket_rows
    assert reloaded.users["u00002"]["signInActivity"] == {"lastSignInDateTime": "2026-01-01T00:00:00Z"}
    # the untouched collections are the held objects, the untouched users' values the held strings
    assert reloaded.groups is held.groups and reloaded.collections["sign_in"] is held.collections["sign_in"]
    assert reloaded.users["u01000"]["displayName"] is held.users["u01000"]["displayName"]
    # member lists are held flat (mirror/member_lists.py: a group's dict is made when asked for): an untouched
    # group's members are the held id objects
    assert reloaded.members["g8"] == held.members["g8"]
    assert all(a is b for a, b in zip(reloaded.members["g8"], held.members["g8"], strict=True))
    # a property change that keeps the users: ids and the id -> row map are the held ones
    with store.writer("t") as w:
        change = w.begin("users")
        change.put("users", "u00005", {**change.get("users", "u00005"), "department": "Finance"})
        w.commit_delta(change, delta_link="c", status=AreaStatus(enabled=True))
    again = store.load_snapshot("t", held=reloaded)
    assert again is not None and again.users == store.load_snapshot("t").users  # type: ignore[union-attr]
    assert again.collections["users"].ids is reloaded.collections["users"].ids
    assert again.users["u00005"]["department"] == "Finance" and again.members is reloaded.members
    # a snapshot of another mirror (deleted and synced again: versions start anew) is never reused
    other = MirrorStore(tmp_path / "other")
    with other.writer("t") as w:
        w.set_tenant(tenant_id="tid", interval_minutes=5)
        w.commit_full("users", {"users": _users(10)}, delta_link=None, status=AreaStatus(enabled=True))
    alone = other.load_snapshot("t", held=again)
    assert alone is not None and alone.users == _users(10) and alone.groups == {}


def test_freshness_of_a_closed_mirror_is_reused_until_its_files_move(tmp_path: Path) -> None:
    """/healthz reads every tenant's freshness: a mirror past max_open is not reopened for it while its files are
    unchanged, and a commit by another process (its own store) is seen at the next read."""
    store = MirrorStore(tmp_path, max_open=1)
    other = MirrorStore(tmp_path)  # as `entra-mcp sync` in another process: its commits do not tell `store`
    try:
        for name in ("t0", "t1"):
            with other.writer(name) as w:
                w.commit_full("users", {"users": _users(2)}, delta_link=None, status=AreaStatus(enabled=True))
        other.close()
        first = store.freshness("t0")
        assert first is not None and store.freshness("t1") is not None
        assert store.connected() == ["t1"]
        assert store.freshness("t0") == first and store.connected() == ["t1"]  # answered without reopening t0
        with other.writer("t0") as w:
            v = w.commit_full("users", {"users": _users(3)}, delta_link=None, status=AreaStatus(enabled=True))
        other.close()
        again = store.freshness("t0")
        assert again is not None and again.version == v > first.version
        with store.writer("t1") as w:  # a commit of this process: forgotten at once
            v1 = w.commit_full("users", {"users": _users(4)}, delta_link=None, status=AreaStatus(enabled=True))
        assert store.freshness("t0") is not None and store.freshness("t1").version == v1  # type: ignore[union-attr]
    finally:
        store.close()
        other.close()


def test_get_many_reads_what_get_reads(tmp_path: Path) -> None:
    """Database.get_many (a load reads a collection's buckets with a few queries) answers exactly what one `get` per
    key answers: values stored inline and in files (diskcache keeps values of 32 KB and more in files), every mode
    (pickled, raw str/int/bytes), more keys than one query binds; a missing key, or a value whose file vanished,
    is left out."""
    from entra_mcp.mirror.open_files import Database

    db = Database(str(tmp_path / "db"))
    try:
        values: dict[str, Any] = {}
        rng = random.Random(7)
        for i in range(1_200):
            kind = i % 5
            values[f"k/{i}"] = ({"i": i, "s": "x" * rng.randrange(10)} if kind == 0 else
                                {"big": [f"v{j}" for j in range(6_000)], "i": i} if kind == 1 and i % 50 == 1 else
                                f"text {i}" if kind == 2 else i if kind == 3 else b"\0" * (i % 40_000))
        for k, v in values.items():
            db.set(k, v)
        in_files = [k for k, (name,) in ((k, db._sql("SELECT filename FROM Cache WHERE key = ?", (k,)).fetchone())
                                         for k in values) if name is not None]
        assert len(in_files) > 10
        wanted = [*values, "absent", "k/99999"]
        assert db.get_many(wanted) == {k: db.get(k) for k in values} == values
        gone = in_files[3]
        (name,) = db._sql("SELECT filename FROM Cache WHERE key = ?", (gone,)).fetchone()
        os.remove(os.path.join(db.directory, name))
        assert db.get(gone) is None and gone not in db.get_many(wanted) and len(db.get_many(wanted)) == len(values) - 1
        assert db.get_many([]) == {}
    finally:
        db.close()


def test_a_bucket_gone_under_a_load_reads_the_root_again(tmp_path: Path) -> None:
    """A bucket the committed root names but the database no longer holds (a newer commit deleted it between the
    reader's root and its bucket reads) makes the load start again from the root: here it never comes back, so the
    load ends in a clear error instead of a snapshot missing objects."""
    store = MirrorStore(tmp_path)
    with store.writer("t") as w:
        w.commit_full("users", {"users": _users(1_000)}, delta_link=None, status=AreaStatus(enabled=True))
        cache = w._cache
        victim = sorted(k for k in cache.iterkeys() if k.startswith("b/users/users/"))[3]
        cache.delete(victim)
    with pytest.raises(MirrorError, match="kept changing"):
        store.load_snapshot("t")
