"""Member lists in the mirror (mirror/member_lists.py) and the reverse memberships built from them (MemberOf):
the same as the definitions they replace, from both stored forms and across a delta's splice."""

from __future__ import annotations

import pickle
import random
import sys
from array import array
from collections import defaultdict, deque
from collections.abc import Mapping
from itertools import repeat
from pathlib import Path
from typing import Any

import pytest

import entra_mcp.mirror.store as store_mod
from entra_mcp.mirror import member_lists
from entra_mcp.identity.member_index import MemberOf
from entra_mcp.identity.view import DirectoryView
from entra_mcp.mirror.member_lists import MemberLists, is_packed_members, memberships, pack_members, unpack_members
from entra_mcp.mirror.snapshot import AreaStatus, DirectorySnapshot
from entra_mcp.mirror.store import MirrorStore
from entra_mcp.mirror.table import unpack

_KINDS = ("user", "group", "servicePrincipal", "device", "orgContact", "other")
_ON = AreaStatus(enabled=True)


# ---- the definitions replaced (the previous release's code, copied)

def _old_load(buckets: list[dict[str, dict[str, str]]], pool: dict[str, str]) -> dict[str, dict[str, str]]:
    out: dict[str, dict[str, str]] = {}
    get = pool.get
    for bucket in buckets:
        for gid, members in bucket.items():
            out[get(gid, gid)] = dict(zip(map(get, members, members), map(sys.intern, members.values())))
    return out


def _old_member_of(members: Mapping[str, Mapping[str, Any]], user_ids: tuple[str, ...]) -> tuple[Any, ...]:
    group_ids = list(members)
    parents: defaultdict[str, list[int]] = defaultdict(list)
    for g, group_members in enumerate(members.values()):
        deque(map(list.append, map(parents.__getitem__, group_members), repeat(g, len(group_members))), maxlen=0)
    offsets = array("I", [0])
    rows = array("I")
    pop = parents.pop
    for uid in user_ids:
        found = pop(uid, None)
        if found:
            rows.extend(found)
        offsets.append(len(rows))
    others = {mid: tuple(map(group_ids.__getitem__, found)) for mid, found in parents.items()}
    return group_ids, offsets, rows, others


def _same_index(member_of: MemberOf, members: Mapping[str, Mapping[str, Any]], user_ids: tuple[str, ...]) -> None:
    group_ids, offsets, rows, others = _old_member_of(members, user_ids)
    assert member_of.user_ids == user_ids and member_of.group_ids == group_ids
    assert member_of.offsets == offsets and member_of.rows == rows
    assert member_of.offsets.typecode == offsets.typecode and member_of.rows.typecode == rows.typecode
    assert list(member_of.others.items()) == list(others.items())  # the same groups, in the same order


# ---- random directories

def _directory(rnd: random.Random, users: int, groups: int) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """(users, groups, member lists): users, nested groups, apps, devices, users the mirror does not hold (deleted
    meanwhile), empty groups, users in no group, members in any order."""
    user_ids = [f"u{i:05d}" for i in range(users)]
    group_ids = [f"g{i:04d}" for i in range(groups)]
    others = [f"sp{i}" for i in range(5)] + [f"dev{i}" for i in range(5)] + [f"gone{i}" for i in range(5)]
    members: dict[str, dict[str, str]] = {}
    for gid in group_ids:
        size = rnd.choice((0, 1, 2, 5, 40, min(users, 300)))
        chosen = rnd.sample(user_ids, min(size, users))
        chosen += rnd.sample(group_ids + others, rnd.choice((0, 0, 1, 3)))
        rnd.shuffle(chosen)
        kind = {**{o: rnd.choice(_KINDS[1:]) for o in others}, **{o: "user" for o in others if o.startswith("gone")}}
        members[gid] = {m: ("user" if m.startswith("u") else "group" if m.startswith("g0") else kind[m]) for m in chosen}
    return ({uid: {"id": uid, "displayName": f"User {uid}"} for uid in user_ids},
            {gid: {"id": gid, "displayName": f"Group {gid}"} for gid in group_ids}, members)


def _commit(store: MirrorStore, users: dict[str, Any], groups: dict[str, Any], members: dict[str, Any]) -> None:
    with store.writer("t") as w:
        w.set_tenant(tenant_id="tid", interval_minutes=5)
        w.commit_full("users", {"users": users}, delta_link="u", status=_ON)
        w.commit_full("groups", {"groups": groups, "members": members}, delta_link="g", status=_ON)


def _stored_buckets(store: MirrorStore) -> list[Any]:
    with store._cache("t", create=False) as cache:
        root = store._root_of("t", cache)
        assert root is not None and cache is not None
        n, revs = root["areas"]["groups"]["colls"]["members"]
        return [cache.get(store_mod._key("groups", "members", i, rev)) for i, rev in enumerate(revs) if rev >= 0]


def _check(snap: DirectorySnapshot, store: MirrorStore) -> None:
    """The loaded member lists equal the old load of the stored buckets as dicts (order too: groups, members,
    kinds), their ids are the users table's objects, and the reverse index equals the old build's (over the loaded
    lists, over plain dicts of them, and after a pickle round trip)."""
    users = snap.users
    pool = {uid: uid for uid in users.ids}  # type: ignore[attr-defined]
    expected = _old_load([unpack(b) for b in _stored_buckets(store)], pool)
    members = snap.members
    assert isinstance(members, MemberLists)
    assert members == expected and expected == members and dict(members.items()) == expected
    assert list(members) == list(expected) and len(members) == len(expected)
    assert all(list(a.items()) == list(b.items()) for a, b in zip(members.values(), expected.values()))
    assert members.sizes() == [len(m) for m in expected.values()] and memberships(members) == memberships(expected)
    assert all(members.get(gid) == found and gid in members for gid, found in expected.items())
    assert members.get("nope") is None and "nope" not in members and members.get("nope", {}) == {}
    with pytest.raises(KeyError):
        members["nope"]
    again = pickle.loads(pickle.dumps(members))
    assert again == members and list(again) == list(members)
    ids = users.ids  # type: ignore[attr-defined]
    for found in snap.members.values():
        assert all(mid is ids[users.pos[mid]] for mid in found if mid in users.pos)  # type: ignore[attr-defined]
    user_ids = tuple(users)
    _same_index(MemberOf.build(members, user_ids), expected, user_ids)
    _same_index(MemberOf.build(expected, user_ids), expected, user_ids)
    view = DirectoryView.build(snap)
    _same_index(view.member_of, expected, user_ids)
    again = pickle.loads(pickle.dumps(view.member_of))
    assert again == view.member_of and dict(again.items()) == dict(view.member_of.items())


@pytest.mark.parametrize("seed", range(6))
def test_member_lists_load_and_index_like_the_old_definitions(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, seed: int) -> None:
    """Written as dicts, written in the flat form (as 756fff1 wrote them), then a delta that rewrites some buckets
    (as dicts: mixed forms), loaded whole and spliced over the held snapshot: the same member lists and reverse index
    as the definitions they replace."""
    rnd = random.Random(seed)
    spliced_calls: list[int] = []
    splice = member_lists.splice
    monkeypatch.setattr(member_lists, "splice", lambda *a: spliced_calls.append(1) or splice(*a))
    users, groups, members = _directory(rnd, rnd.choice((0, 1, 50, 700)), rnd.choice((1, 30, 400)))
    flat, old = MirrorStore(tmp_path / "flat"), MirrorStore(tmp_path / "old")
    _commit(old, users, groups, members)
    with monkeypatch.context() as m:  # as 756fff1 wrote them
        written = store_mod._stored_form
        m.setattr(store_mod, "_stored_form", lambda coll, part: pack_members(part) if coll == "members" else written(coll, part))
        _commit(flat, users, groups, members)
    assert all(is_packed_members(b) for b in _stored_buckets(flat))
    assert all(type(b) is dict for b in _stored_buckets(old)) and _stored_buckets(old)
    assert [unpack(b) for b in _stored_buckets(old)] == [unpack(b) for b in _stored_buckets(flat)]
    for store in (flat, old):
        held = store.load_snapshot("t")
        assert held is not None
        assert held.members == members
        _check(held, store)
        # a delta: a few groups' lists changed, one emptied, one gone, one new; the rewritten buckets are flat
        changed = dict(members)
        with store.writer("t") as w:
            change = w.begin("groups")
            for gid in rnd.sample(sorted(members), min(3, len(members))):
                after = dict(members[gid])
                for mid in list(after)[: rnd.randint(0, len(after))]:
                    del after[mid]
                after.update({uid: "user" for uid in rnd.sample(sorted(users), min(len(users), rnd.randint(0, 4)))})
                after["dev0"] = "device"
                change.put("members", gid, after)
                changed[gid] = after
            gone = sorted(members)[-1]
            change.delete("members", gone)
            del changed[gone]
            change.put("members", "gnew", {"sp1": "servicePrincipal", **{uid: "user" for uid in sorted(users)[:2]}})
            changed["gnew"] = change.get("members", "gnew")
            w.commit_delta(change, delta_link="g2", status=_ON)
        spliced_calls.clear()
        whole = store.load_snapshot("t")
        spliced = store.load_snapshot("t", held=held)
        assert whole is not None and spliced is not None and whole.members == spliced.members == changed
        _check(whole, store)
        _check(spliced, store)
        # the patch path (a server's reload): the held view brought to the new member lists
        patched = DirectoryView.build(held).updated(spliced)
        if users:
            assert patched is not None
        if patched is not None:
            fresh_index = DirectoryView.build(spliced).member_of
            assert patched.member_of == fresh_index and dict(patched.member_of.items()) == dict(fresh_index.items())
            assert all(patched.member_of.groups(m, spliced.users) == fresh_index.groups(m, spliced.users)
                       for m in {*fresh_index, *held.users, "dev0", "sp1"})
        # a delta that keeps every group, changing two lists: the patch overlays the members whose groups changed
        with store.writer("t") as w:
            change = w.begin("groups")
            for gid in sorted(changed)[:2]:
                after = dict(change.get("members", gid) or {})
                after.pop(next(iter(after), None), None)  # type: ignore[arg-type]
                after.update({uid: "user" for uid in sorted(users)[-3:]} | {"dev1": "device"})
                change.put("members", gid, after)
            w.commit_delta(change, delta_link="g3", status=_ON)
        newer = store.load_snapshot("t", held=spliced)
        assert newer is not None and list(newer.members) == list(spliced.members)
        patched = DirectoryView.build(spliced).updated(newer)
        assert patched is not None
        fresh_index = DirectoryView.build(newer).member_of
        assert patched.member_of == fresh_index
        assert all(patched.member_of.groups(m, newer.users) == fresh_index.groups(m, newer.users)
                   for m in {*fresh_index, *newer.users, "dev0", "dev1", "sp1"})
        (n, before), (m, after) = held.buckets["members"], spliced.buckets["members"]
        if n == m and sum(x != y for x, y in zip(before, after)) * 2 <= n:
            assert spliced_calls  # the held lists of the buckets not rewritten were taken, not read again
        stored = _stored_buckets(store)
        assert any(type(b) is dict for b in stored)  # the rewritten buckets are dicts
        if store is flat and len(stored) > 5:  # more buckets than the delta rewrote: the others are still flat
            assert any(is_packed_members(b) for b in stored)
        if store is old:
            assert all(type(b) is dict for b in stored)


def test_stored_form_round_trips() -> None:
    rnd = random.Random(3)
    _, _, members = _directory(rnd, 80, 40)
    stored = pack_members(members)
    assert is_packed_members(stored) and unpack_members(stored) == members == unpack(stored)
    assert list(unpack_members(stored)) == list(members)
    assert unpack_members(members) == members and unpack_members(pack_members({})) == {}
    many = {"g": {f"m{i}": f"kind{i}" for i in range(300)}}  # more kinds than a byte codes: kept as the dict
    assert pack_members(many) == many and unpack(pack_members(many)) == many
    assert pickle.loads(pickle.dumps(stored)) == stored


def test_prepared_index_is_not_reused_across_member_list_code(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The view cache's fingerprint covers mirror/member_lists.py (snapshots hold MemberLists pickled)."""
    from entra_mcp.views import ViewCache

    before = ViewCache(tmp_path).fingerprint(DirectoryView)
    read = Path.read_bytes
    monkeypatch.setattr(Path, "read_bytes", lambda self: read(self) + (b"#" if self.name == "member_lists.py" else b""))
    assert ViewCache(tmp_path).fingerprint(DirectoryView) != before
