"""A cold start's reverse memberships built by a child process during the server's start
(identity/member_index_child.py, views.ViewProvider.start_early_index): taken only when they describe the very
snapshot the server loaded, equal to the server's own build, and anything going wrong costs only time.

Real forks over the small emulated tenant's real mirror (the size threshold lowered to its few member buckets)."""

from __future__ import annotations

import dataclasses
import os
import shutil
import signal
from pathlib import Path
from typing import Any

import pytest
from _server_fixtures import ServerEnv, server_env  # noqa: F401

from entra_mcp.identity import member_index_child
from entra_mcp.identity.member_index import MemberOf
from entra_mcp.mirror.store import MirrorStore
from entra_mcp.views import VIEW_CACHE_DIR, ViewCache, ViewProvider, prepare_views

pytestmark = pytest.mark.skipif(not hasattr(os, "fork") or member_index_child.cpus() < 2, reason="needs fork and 2 CPUs")


@pytest.fixture(autouse=True)
def _patient(monkeypatch: pytest.MonkeyPatch) -> None:
    """The child's parts are waited for up to 30 s here (1 s in the product), so that a loaded CI machine cannot turn
    "taken" into "built here"; the tests of a late child set their own bound."""
    monkeypatch.setattr(member_index_child, "TAKE_WAIT", 30.0)


def _reaped(pid: int) -> bool:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return True
    return False


def _same(got: MemberOf, want: MemberOf) -> None:
    assert got.user_ids == want.user_ids and got.group_ids == want.group_ids
    assert got.offsets == want.offsets and got.rows == want.rows
    assert list(got.others.items()) == list(want.others.items())  # the same members, groups and order
    assert dict(got.items()) == dict(want.items())


def _provider(env: ServerEnv, store: MirrorStore, **kwargs: Any) -> ViewProvider:
    return ViewProvider.from_settings(env.settings, store, background_reload=False, **kwargs)


def test_a_cold_start_takes_the_childs_reverse_memberships(server_env: ServerEnv) -> None:  # noqa: F811
    store = MirrorStore(server_env.cache_dir)
    try:
        views = _provider(server_env, store, cache=False)
        assert views.start_early_index(min_member_buckets=1) == server_env.name
        pid = member_index_child._pending[server_env.name].pid
        taken = dict(member_index_child.taken)
        views.warm()
        assert member_index_child.taken == {k: v + 1 for k, v in taken.items()}  # the member lists and MemberOf
        assert not member_index_child._pending and _reaped(pid)
        view = views.current().view
        snapshot = view.snapshot
        own = store.load_snapshot(server_env.name)  # loaded here, whole
        assert own is not None and own.version == snapshot.version
        assert snapshot.members == own.members and snapshot.bucket_rows == own.bucket_rows
        assert snapshot.users.to_dicts() == own.users.to_dicts() and snapshot.users.ids == own.users.ids
        ids = {id(oid): oid for oid in snapshot.users.ids}
        assert all(ids.get(id(mid)) is mid for mid in snapshot.members.member_ids if mid in snapshot.users)  # shared
        _same(view.member_of, MemberOf.build(own.members, view.user_ids))
        assert len(view.member_of.others) > 0  # nested groups and devices travel as positions: the server's own id objects
        ids = set(map(id, snapshot.members.member_ids))
        assert all(id(mid) in ids for mid in view.member_of.others)
    finally:
        store.close()


def test_reverse_memberships_of_other_buckets_are_not_taken(server_env: ServerEnv) -> None:  # noqa: F811
    """A commit between the child's load and the server's that rewrote users or member lists (other bucket
    revisions): the server builds its own. One that changed other areas only leaves them valid: taken."""
    store = MirrorStore(server_env.cache_dir)
    try:
        snapshot = store.load_snapshot(server_env.name)
        assert snapshot is not None
        user_ids = tuple(snapshot.users)

        def rewritten(coll: str) -> Any:
            n, revs = snapshot.buckets[coll]
            return dataclasses.replace(snapshot, version=snapshot.version + 1,
                                       buckets={**snapshot.buckets, coll: (n, (revs[0] + 1, *revs[1:]))})

        for later in (rewritten("users"), rewritten("members")):
            assert member_index_child.start(server_env.cache_dir, server_env.name)
            pid = member_index_child._pending[server_env.name].pid
            assert member_index_child.take(later, user_ids) is None
            assert not member_index_child._pending and _reaped(pid)
        # the store's side: member lists of other buckets than the root it reads are not taken either
        loaded = store.load_collections(server_env.name, ("users",))
        assert loaded is not None
        specs, data, _ = loaded
        n, revs = specs["members"]
        for changed in ({**specs, "members": [n, [revs[0] + 1, *revs[1:]]]}, {**specs, "users": [1, [7]]}):
            assert member_index_child.start(server_env.cache_dir, server_env.name)
            assert member_index_child.given(server_env.name, "members", changed, data, {}) is None
            member_index_child.discard()
        assert member_index_child.start(server_env.cache_dir, server_env.name)  # the users table likewise
        assert member_index_child.given(server_env.name, "users", {**specs, "users": [1, [7]]}, {}, {}) is None
        member_index_child.discard()
        assert member_index_child.start(server_env.cache_dir, server_env.name)
        pool: dict[str, str] = {}
        table, counts = member_index_child.given(server_env.name, "users", specs, {}, pool)
        assert table.ids == data["users"].ids and counts == snapshot.bucket_rows["users"] and set(pool) == set(table.ids)
        member_index_child.discard()
        assert member_index_child.start(server_env.cache_dir, server_env.name)
        lists, counts = member_index_child.given(server_env.name, "members", specs, data, {})
        assert lists == snapshot.members and counts == snapshot.bucket_rows["members"]
        member_index_child.discard()
        other = dataclasses.replace(snapshot, version=snapshot.version + 1, stamp=snapshot.stamp + 1)
        assert member_index_child.start(server_env.cache_dir, server_env.name)
        _same(member_index_child.take(other, user_ids), MemberOf.build(snapshot.members, user_ids))
    finally:
        store.close()


def test_a_killed_or_silent_child_costs_only_time(server_env: ServerEnv, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    store = MirrorStore(server_env.cache_dir)
    try:
        views = _provider(server_env, store, cache=False)
        assert views.start_early_index(min_member_buckets=1)
        pid = member_index_child._pending[server_env.name].pid
        os.kill(pid, signal.SIGKILL)
        taken = dict(member_index_child.taken)
        views.warm()
        assert member_index_child.taken == taken and _reaped(pid)
        view = views.current().view
        _same(view.member_of, MemberOf.build(view.snapshot.members, view.user_ids))
        # a child that has not answered when the build needs it (here: stopped) is waited for TAKE_WAIT, then killed
        monkeypatch.setattr(member_index_child, "TAKE_WAIT", 0.2)
        snapshot = view.snapshot
        assert member_index_child.start(server_env.cache_dir, server_env.name)
        pid = member_index_child._pending[server_env.name].pid
        os.kill(pid, signal.SIGSTOP)
        assert member_index_child.take(snapshot, view.user_ids) is None and _reaped(pid)
    finally:
        store.close()


def test_no_child_for_a_prepared_index_a_small_tenant_or_a_budget(server_env: ServerEnv, tmp_path: Path) -> None:  # noqa: F811
    store = MirrorStore(server_env.cache_dir)
    try:
        assert _provider(server_env, store, cache=False).start_early_index() is None  # a few member buckets: not worth it
        assert _provider(server_env, store, cache=False, memory_budget_bytes=1 << 30).start_early_index(min_member_buckets=1) is None
        cache_dir = tmp_path / "cache"
        shutil.copytree(server_env.cache_dir, cache_dir)
        copy = MirrorStore(cache_dir)
        try:  # a mirror with its prepared index: the start loads it, no child
            prepare_views(cache_dir, copy, [server_env.name])
            views = _provider(server_env, copy, cache=ViewCache(cache_dir / VIEW_CACHE_DIR))
            assert views.start_early_index(min_member_buckets=1) is None and not member_index_child._pending
            assert _provider(server_env, copy, cache=False).start_early_index(min_member_buckets=1) == server_env.name
            member_index_child.discard()  # the same mirror without the cache: a child
        finally:
            copy.close()
    finally:
        store.close()


def test_discard_ends_a_child_nobody_took(server_env: ServerEnv) -> None:  # noqa: F811
    assert member_index_child.start(server_env.cache_dir, server_env.name)
    assert not member_index_child.start(server_env.cache_dir, server_env.name)  # one per tenant
    pid = member_index_child._pending[server_env.name].pid
    member_index_child.discard()
    assert not member_index_child._pending and _reaped(pid)


def test_ids_only_reads_a_tables_rows_in_its_order(server_env: ServerEnv) -> None:  # noqa: F811
    """MirrorStore.load_collections(ids_only=...): the ids a Table of the same buckets holds, in its order, and the
    same objects per bucket (the child maps member ids to the server's rows through them)."""
    store = MirrorStore(server_env.cache_dir)
    try:
        whole = store.load_collections(server_env.name, ("users", "groups"))
        ids = store.load_collections(server_env.name, ("users", "groups"), ids_only=("users",))
        assert whole is not None and ids is not None
        assert ids[1]["users"] == whole[1]["users"].ids and isinstance(ids[1]["users"], list)
        assert ids[2] == whole[2] and ids[0] == whole[0]
        assert ids[1]["groups"].ids == whole[1]["groups"].ids  # not in ids_only: the Table
    finally:
        store.close()


def test_a_mirror_it_cannot_read_is_left_to_the_load(server_env: ServerEnv) -> None:  # noqa: F811
    """start_early_index never fails a start: an unreadable mirror is the load's to report, with its own message."""
    from entra_mcp.errors import MirrorError

    class Unreadable:
        cache_dir = server_env.cache_dir

        def root_state(self, name: str) -> Any:
            raise MirrorError(f"cannot read the mirror of tenant {name}")

    views = ViewProvider.from_settings(server_env.settings, Unreadable())  # type: ignore[arg-type]
    assert views.start_early_index(min_member_buckets=1) is None and not member_index_child._pending


def test_a_stopping_server_leaves_no_index_writer_behind(server_env: ServerEnv, tmp_path: Path,  # noqa: F811
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """ViewCache.finish (serve's end): the forked writers finish within the bound, or are ended after it; either way
    none is left running (a stopped server must not keep writing into its cache: the disk-fault test remounts it)."""
    from entra_mcp.identity.view import DirectoryView

    store = MirrorStore(server_env.cache_dir)
    try:
        view = DirectoryView.build(store.load_snapshot(server_env.name))  # type: ignore[arg-type]
    finally:
        store.close()
    cache = ViewCache(tmp_path / "views")
    cache.save(server_env.name, 1, view)
    cache.finish(30)
    assert not cache._writers and cache.holds(server_env.name, 1, DirectoryView)
    slow = ViewCache(tmp_path / "slow")
    monkeypatch.setattr(ViewCache, "_write", lambda self, *args: signal.pause())  # the child never finishes
    slow.save(server_env.name, 1, view)
    (pid,) = list(slow._writers)
    slow.finish(0.2)
    assert not slow._writers and _reaped(pid) and not slow.path(server_env.name).exists()
