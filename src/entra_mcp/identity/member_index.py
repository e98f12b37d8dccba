"""Reverse memberships held compactly: member id -> the groups it is a DIRECT member of.

A large tenant has ~600,000 memberships. Held as {member id: (group id, ...)} they are 100,000+ tuples and a dict,
which the prepared index (views.py ViewCache) unpickles object by object at every server start. Here the users'
groups are two arrays of numbers instead (for the user in row r of the users table: group positions
`rows[offsets[r]:offsets[r + 1]]`, positions into `group_ids`), which unpickle as one copy each; the few other
members (groups, service principals, devices, contacts) stay a small dict. A patched index (DirectoryView.updated)
keeps the arrays and overrides the members whose groups changed (`overlay`).

It reads like the dict it replaces: `get(member_id, default)` gives a tuple of group ids, iteration, `len`, `in` and
`==` (against a dict or another MemberOf) compare the same pairs.
"""

from __future__ import annotations

from array import array
from collections import defaultdict, deque
from collections.abc import Iterable, Iterator, Mapping
from itertools import chain, repeat
from typing import Any

from entra_mcp.mirror.member_lists import MemberLists

_EMPTY: tuple[str, ...] = ()


class MemberOf(Mapping[str, tuple[str, ...]]):
    """member id -> the ids of the groups it is a direct member of, in the order of the snapshot's member lists."""

    __slots__ = ("user_ids", "group_ids", "offsets", "rows", "others", "overlay", "_pos")

    def __init__(self, user_ids: tuple[str, ...], group_ids: list[str], offsets: array[int], rows: array[int],
                 others: dict[str, tuple[str, ...]], overlay: dict[str, tuple[str, ...]] | None = None) -> None:
        self.user_ids = user_ids  # row -> user id, the order `offsets` follows
        self.group_ids = group_ids
        self.offsets = offsets
        self.rows = rows
        self.others = others
        self.overlay = overlay or {}  # member id -> its groups now (() once it has none), over the arrays
        self._pos: dict[str, int] | None = None

    @classmethod
    def build(cls, members: Mapping[str, Mapping[str, Any]], user_ids: tuple[str, ...]) -> "MemberOf":
        """From the snapshot's member lists {group id: {member id: kind}} and its users in row order."""
        group_ids = list(members)
        member_ids: Iterable[str]
        if isinstance(members, MemberLists):  # as loaded from the mirror: the flat lists, no dict per group
            member_ids, sizes = members.member_ids, members.sizes()
        else:
            member_ids, sizes = chain.from_iterable(members.values()), list(map(len, members.values()))
        parents: defaultdict[str, list[int]] = defaultdict(list)
        # parents[member].append(g) for every membership, in member-list order, at C speed
        deque(map(list.append, map(parents.__getitem__, member_ids), chain.from_iterable(map(repeat, range(len(sizes)), sizes))),
              maxlen=0)
        offsets = array("I", [0])
        rows = array("I")
        pop = parents.pop
        for uid in user_ids:
            found = pop(uid, None)
            if found:
                rows.extend(found)
            offsets.append(len(rows))
        others = {mid: tuple(map(group_ids.__getitem__, found)) for mid, found in parents.items()}
        return cls(user_ids, group_ids, offsets, rows, others)

    def patched(self, changes: Mapping[str, tuple[str, ...]]) -> "MemberOf":
        """The same arrays with `changes` (member id -> its groups now; () when none) over them (a newer snapshot
        with the same users in the same rows)."""
        return MemberOf(self.user_ids, self.group_ids, self.offsets, self.rows, self.others,
                        {**self.overlay, **changes})

    def _positions(self, users: Any) -> dict[str, int]:
        """user id -> row: the users table's own map when `users` is the mirror Table of these rows, else one of
        this object's (made on first use)."""
        pos = getattr(users, "pos", None)
        if pos is not None and (pos is self._pos or len(pos) == len(self.user_ids)):
            return pos  # type: ignore[no-any-return]
        pos = self._pos
        if pos is None or len(pos) != len(self.user_ids):
            pos = self._pos = {uid: i for i, uid in enumerate(self.user_ids)}
        return pos

    def groups(self, member_id: str, users: Any = None) -> tuple[str, ...]:
        """The member's direct groups (() when none). `users`: the snapshot's users in the rows this was built over
        (a mirror Table: its id -> row map is used instead of a map of this object's own)."""
        if self.overlay:
            found = self.overlay.get(member_id)
            if found is not None:
                return found
        found = self.others.get(member_id)  # a group, app or device (never a user of the rows)
        if found is not None:
            return found
        r = self._positions(users).get(member_id)
        if r is None:
            return _EMPTY
        offsets = self.offsets
        a, b = offsets[r], offsets[r + 1]
        if a == b:
            return _EMPTY
        ids, rows = self.group_ids, self.rows
        if b - a == 1:
            return (ids[rows[a]],)
        return tuple([ids[g] for g in rows[a:b]])

    def get(self, member_id: str, default: Any = None) -> Any:
        return self.groups(member_id) or default

    def __getitem__(self, member_id: str) -> tuple[str, ...]:
        found = self.get(member_id)
        if found is None:
            raise KeyError(member_id)
        return found  # type: ignore[no-any-return]

    def __contains__(self, member_id: object) -> bool:
        return isinstance(member_id, str) and bool(self.get(member_id))

    def __iter__(self) -> Iterator[str]:
        overlay, offsets = self.overlay, self.offsets
        for r, uid in enumerate(self.user_ids):
            if uid not in overlay and offsets[r] != offsets[r + 1]:
                yield uid
        for mid in self.others:
            if mid not in overlay:
                yield mid
        for mid, found in overlay.items():
            if found:
                yield mid

    def __len__(self) -> int:
        return sum(1 for _ in self)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Mapping):
            return NotImplemented
        return dict(self.items()) == dict(other.items())

    __hash__ = None  # type: ignore[assignment]

    def __reduce__(self) -> tuple[Any, ...]:
        # the id -> row map is not kept: the users table has its own (or this object makes one on first use)
        return (MemberOf, (self.user_ids, self.group_ids, self.offsets, self.rows, self.others, self.overlay))

    def __repr__(self) -> str:
        return f"<MemberOf {len(self.user_ids)} users, {len(self.rows)} user memberships, {len(self.others)} other members>"


__all__ = ["MemberOf"]
