"""Groups' direct member lists as mirror buckets store them, and as a loaded snapshot holds them.

A bucket of the "members" collection holds {group id: {member id: kind}} for the groups that fall in it, stored as
that dict. A flat form, (marker, group ids, member counts, member ids, kind codes, kind names), was written for a
while (756fff1) and is read too: every reader here takes both forms. It is no longer written: loading it cost the
same CPU as the dicts and left ~33 MB more resident on the large mirror (pymalloc arenas kept by a few survivors
among its unpickled strings: 2,013 unused pools after the load against 11).

A load (`load`) joins the buckets into one MemberLists: the same flat lists for the whole collection (member ids
the tables' own string objects), read like {group id: {member id: kind}}. A large tenant's 600,000 memberships are
then one list of ids and one byte each, not 15,000 dicts (18.6 -> 6.2 MB of containers, and no dict to build per group at
every load); a group's dict is made when it is asked for, and the reverse memberships of the identity index
(identity/member_index.py MemberOf.build) are built from the flat lists directly.
"""

from __future__ import annotations

import sys
from array import array
from collections.abc import Iterable, Iterator, Mapping, Sequence
from itertools import accumulate, chain
from operator import sub
from typing import Any

_PACKED_MEMBERS = "entra-mcp/members-1"  # the first item of a stored bucket in the flat form
_MAX_KINDS = 256  # kinds are coded as bytes; a bucket with more distinct kinds is stored as the dict itself


class MemberLists(Mapping[str, dict[str, str]]):
    """{group id: {member id: kind}} held flat: group `i`'s members are `member_ids[starts[i]:starts[i + 1]]`,
    their kinds `kind_names[kinds[j]]`. `lists[gid]` is a new dict each time (the caller may keep or change it)."""

    __slots__ = ("group_ids", "starts", "member_ids", "kinds", "kind_names", "_index")

    def __init__(self, group_ids: list[str], starts: array[int], member_ids: list[str], kinds: bytes | bytearray,
                 kind_names: tuple[str, ...]) -> None:
        self.group_ids = group_ids
        self.starts = starts  # len(group_ids) + 1 offsets into member_ids
        self.member_ids = member_ids
        self.kinds = bytes(kinds)
        self.kind_names = tuple(map(sys.intern, kind_names))
        self._index = dict(zip(group_ids, range(len(group_ids))))

    @property
    def memberships(self) -> int:
        return len(self.member_ids)

    def _group(self, i: int) -> dict[str, str]:
        a, b = self.starts[i], self.starts[i + 1]
        return dict(zip(self.member_ids[a:b], map(self.kind_names.__getitem__, self.kinds[a:b])))

    def __getitem__(self, group_id: str) -> dict[str, str]:
        return self._group(self._index[group_id])

    def get(self, group_id: str, default: Any = None) -> Any:
        i = self._index.get(group_id)
        return default if i is None else self._group(i)

    def __contains__(self, group_id: object) -> bool:
        return group_id in self._index

    def __iter__(self) -> Iterator[str]:
        return iter(self.group_ids)

    def __len__(self) -> int:
        return len(self.group_ids)

    def sizes(self) -> list[int]:
        """Each group's member count, in order."""
        starts = self.starts
        return list(map(sub, starts[1:], starts[:-1]))

    def __eq__(self, other: object) -> bool:
        if isinstance(other, MemberLists):
            return (self.group_ids == other.group_ids and self.starts == other.starts
                    and self.member_ids == other.member_ids
                    and list(map(self.kind_names.__getitem__, self.kinds)) == list(map(other.kind_names.__getitem__, other.kinds)))
        if not isinstance(other, Mapping):
            return NotImplemented
        return len(self) == len(other) and all(gid in other and self._group(i) == other[gid] for i, gid in enumerate(self.group_ids))

    __hash__ = None  # type: ignore[assignment]

    def __reduce__(self) -> tuple[Any, ...]:
        return (MemberLists, (self.group_ids, self.starts, self.member_ids, self.kinds, self.kind_names))

    def __repr__(self) -> str:
        return f"<MemberLists {len(self.group_ids)} groups, {len(self.member_ids)} memberships>"


def memberships(members: Mapping[str, Mapping[str, Any]]) -> int:
    """How many memberships member lists hold (without making a dict per group of MemberLists)."""
    if isinstance(members, MemberLists):
        return members.memberships
    return sum(map(len, members.values()))


def is_packed_members(stored: Any) -> bool:
    return type(stored) is tuple and len(stored) == 6 and stored[0] == _PACKED_MEMBERS


def pack_members(groups: Mapping[str, Mapping[str, str]]) -> Any:
    """A bucket {group id: {member id: kind}} in the flat form 756fff1 wrote (the dict itself in a bucket with more
    kinds than a byte codes); the store writes dicts now (see the module's docstring)."""
    kinds = list(chain.from_iterable(m.values() for m in groups.values()))
    names = sorted(set(kinds))
    if len(names) > _MAX_KINDS:
        return dict(groups)
    code = {name: i for i, name in enumerate(names)}
    return (_PACKED_MEMBERS, list(groups), list(map(len, groups.values())),
            list(chain.from_iterable(groups.values())), bytes(map(code.__getitem__, kinds)), tuple(names))


def _columns(stored: Any) -> tuple[list[str], list[int], list[str], bytes, tuple[str, ...]]:
    """(group ids, member counts, member ids, kind codes, kind names) of a stored bucket in either form."""
    if is_packed_members(stored):
        _, group_ids, counts, member_ids, codes, names = stored
        return group_ids, counts, member_ids, codes, names
    kinds = list(chain.from_iterable(m.values() for m in stored.values()))
    names = tuple(sorted(set(kinds)))
    code = {name: i for i, name in enumerate(names)}
    return (list(stored), list(map(len, stored.values())), list(chain.from_iterable(stored.values())),
            bytes(map(code.__getitem__, kinds)), names)


def unpack_members(stored: Any) -> dict[str, dict[str, str]]:
    """A stored bucket (either form) as {group id: {member id: kind}}."""
    if not is_packed_members(stored):
        return {gid: dict(found) for gid, found in stored.items()}
    joined = _Joined(None)
    joined.stored(stored)
    return dict(joined.result().items())


class _Joined:
    """Member lists being joined, bucket after bucket (in the order of the result)."""

    def __init__(self, share: dict[str, str] | None, kind_names: Sequence[str] = ()) -> None:
        self.share = share  # None: ids kept as they are
        self.group_ids: list[str] = []
        # as an array: the ints the buckets unpickled are not kept (they would pin the memory of their strings)
        self.counts = array("I")
        self.member_ids: list[str] = []
        self.kinds = bytearray()
        self.names = list(kind_names)
        self.code = {name: i for i, name in enumerate(self.names)}

    def stored(self, stored: Any) -> int:
        """Add a stored bucket (either form), its ids made `share`'s objects; returns its group count."""
        g, c, m, k, n = _columns(stored)
        self.group_ids += self._shared(g)
        self.counts.extend(c)
        self.member_ids += self._shared(m)
        code = self.code
        if len(n) == 1 and n[0] in code:
            self.kinds += bytes([code[n[0]]]) * len(k)
            return len(g)
        for name in n:
            if name not in code:
                code[name] = len(self.names)
                self.names.append(sys.intern(name))
        if len(self.names) > _MAX_KINDS:
            raise ValueError(f"member lists with more than {_MAX_KINDS} member kinds")
        self.kinds += k.translate(bytes(code[name] for name in n).ljust(256, b"\0")) if n else k
        return len(g)

    def _shared(self, ids: list[str]) -> list[str]:
        share = self.share
        return ids if share is None else list(map(share.get, ids, ids))

    def held(self, lists: MemberLists, sizes: list[int], first: int, end: int) -> None:
        """Add groups first..end-1 of `lists` (`sizes`: its groups' sizes), whose kind names this join started
        with, as they are."""
        a, b = lists.starts[first], lists.starts[end]
        self.group_ids += lists.group_ids[first:end]
        self.counts.extend(sizes[first:end])
        self.member_ids += lists.member_ids[a:b]
        self.kinds += lists.kinds[a:b]

    def result(self) -> MemberLists:
        return MemberLists(self.group_ids, array("I", accumulate(self.counts, initial=0)), self.member_ids, self.kinds,
                           tuple(self.names))


def load(buckets: Iterable[Any], share: dict[str, str]) -> MemberLists:
    """The member lists of stored buckets (either form), in bucket order, their ids the objects of `share` (the
    tables' ids). A bucket at a time: the strings it unpickled are dropped before the next is read."""
    joined = _Joined(share)
    for stored in buckets:
        joined.stored(stored)
    return joined.result()


def splice(held: MemberLists, rows: Sequence[int], fresh: Mapping[int, Any], share: dict[str, str]
           ) -> tuple[MemberLists, tuple[int, ...]]:
    """`held` (loaded from buckets holding `rows[i]` groups each) with buckets `fresh` ({i: stored bucket, None
    when emptied}) read again; the others' lists are taken as they are. Returns it and its groups per bucket."""
    joined = _Joined(share, held.kind_names)
    sizes = held.sizes()
    counts = []
    start = 0
    for i, n in enumerate(rows):
        if i in fresh:
            counts.append(joined.stored(fresh[i]) if fresh[i] is not None else 0)
        else:
            joined.held(held, sizes, start, start + n)
            counts.append(n)
        start += n
    return joined.result(), tuple(counts)


__all__ = ["MemberLists", "is_packed_members", "load", "memberships", "pack_members", "splice", "unpack_members"]
