"""Columnar tables: how the mirror keeps large collections of Graph objects compact, on disk and in memory.

A Table is a read-only Mapping {object id: Record}; a Record is a read-only Mapping {property name: value} that
reads like the Graph object it came from (`user.get("mail")`, `user["id"]`, `dict(user)`, `==` against a dict).
Underneath, one column per property instead of one dict per object:

- a plain column is a list of values (JSON lists stored as tuples, handed out as fresh lists);
- a date column is an array of epoch seconds for properties whose values are all Graph timestamps
  ("2026-11-26T08:15:00Z") or null: 8 bytes per object instead of a 70-byte string;
- a coded column is (distinct values, array of indexes) for properties that repeat (department, usageLocation,
  accountEnabled, the same assignedLicenses, a manager's id...): 4 bytes per object, each distinct value once;
- a child column joins another table row by row (signInActivity, kept apart by the sync, read as one property).

Why: held as dicts, 100,000 users are ~170 MB of Python objects and loading them from the mirror's buckets took
seconds of walking to share equal strings. As columns they are a fraction of that, and loading a collection is
mostly list and array concatenation (see MirrorStore.load_snapshot). A property an object does not have is ABSENT
in its column (a Record then has no such key), which is not the same as null.

`pack()` turns a bucket {id: dict} into the stored form, `Table.concat()` joins stored buckets into one Table, and
`Table.to_dicts()` goes back to plain dicts (what the sync edits).
"""

from __future__ import annotations

import time
from array import array
from datetime import datetime, timedelta
from itertools import chain, repeat
from operator import attrgetter, is_, methodcaller
from collections.abc import ItemsView, Mapping, ValuesView
from typing import Any, Callable, Container, Iterator, Sequence, cast

from entra_mcp.mirror.member_lists import is_packed_members, unpack_members


class _Absent:
    """A property the object does not have (unlike None, which is a property set to null)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "ABSENT"

    def __reduce__(self) -> str:
        return "ABSENT"  # pickled as a reference to this module's one instance


ABSENT: Any = _Absent()

_PACKED = "entra-mcp/table-1"  # the first item of a stored bucket in this format
_PACKED_GROUPS = "entra-mcp/groups-1"  # a bucket {key: [object, ...]} (assignments by resource) in this format
_NULL_TS = -(2**63)
_ABSENT_TS = _NULL_TS + 1
_MIN_CODED_ROWS = 8


def _from_ts(ts: int) -> str:
    text = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))
    if len(text) == 20:
        return text
    t = time.gmtime(ts)  # a year before 1000: strftime does not pad it (Graph's "never" is 0001-01-01T00:00:00Z)
    return f"{t.tm_year:04d}-{t.tm_mon:02d}-{t.tm_mday:02d}T{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d}Z"


def frozen(value: Any) -> Any:
    """A hashable key equal only for equal plain values (a bool is not the int 1, a list is not a str); TypeError
    for anything that is not JSON-like."""
    t = type(value)
    if t is str or value is None or value is ABSENT:
        return value
    if t is list or t is tuple:
        return ("L", *map(frozen, value))
    if t is dict:
        return ("D", *[(k, frozen(v)) for k, v in value.items()])
    if t is bool or t is int or t is float:
        return (t, value)
    raise TypeError(t)


class Coded:
    """A column of repeating values: `values` holds each distinct value once, `idx` one index per row."""

    __slots__ = ("values", "idx", "_verdicts")

    def __init__(self, values: Sequence[Any], idx: array[int], verdicts: dict[Any, bytearray] | None = None) -> None:
        self.values = tuple(values)
        self.idx = idx
        # test -> one byte per distinct value: 0 not judged yet, 1 False, 2 True
        self._verdicts: dict[Any, bytearray] | None = verdicts

    def _memo(self, test: Callable[[Any], bool]) -> bytearray:
        memo = self._verdicts
        if memo is None:
            memo = self._verdicts = {}
        found = memo.get(test)
        if found is None:
            found = memo[test] = bytearray(len(self.values))
        return found

    def verdict(self, test: Callable[[Any], bool], k: int) -> bool:
        """test(value) of distinct value `k` (False for ABSENT), judged once per column and test, when first asked: the
        first answer after a cold start judges the values of the records it shows, not every value of the column."""
        found = self._memo(test)
        judged = found[k]
        if not judged:
            v = self.values[k]
            judged = found[k] = 2 if v is not ABSENT and test(list(v) if type(v) is tuple else v) else 1
        return judged == 2

    def verdicts(self, test: Callable[[Any], bool]) -> tuple[bool, ...]:
        """test(value) for each distinct value (False for ABSENT): every value judged now (a reload or `entra-mcp sync`
        does it off the request path, and the prepared index carries the verdicts)."""
        found = self._memo(test)
        if 0 in found:
            for k in range(len(found)):
                if not found[k]:
                    self.verdict(test, k)
        return tuple(judged == 2 for judged in found)

    def __reduce__(self) -> tuple[Any, ...]:
        # verdicts of module-level tests are kept (the server's prepared index carries them); a lambda's cannot be
        memo = {test: found for test, found in (self._verdicts or {}).items() if "<" not in getattr(test, "__qualname__", "<")}
        return (Coded, (self.values, self.idx, memo)) if memo else (Coded, (self.values, self.idx))


class Child:
    """A column whose cell is the row of another table aligned with this one (ABSENT where `present` is 0)."""

    __slots__ = ("table", "present")

    def __init__(self, table: "Table", present: bytes) -> None:
        self.table = table
        self.present = present

    def __reduce__(self) -> tuple[Any, ...]:
        return (Child, (self.table, self.present))


def _cell(col: Any, i: int) -> Any:
    t = type(col)
    if t is list:
        v = col[i]
    elif t is Coded:
        v = col.values[col.idx[i]]
    elif t is array:
        x = col[i]
        return None if x == _NULL_TS else ABSENT if x == _ABSENT_TS else _from_ts(x)
    else:  # Child
        return Record(col.table, i) if col.present[i] else ABSENT
    return list(v) if type(v) is tuple else v


def _present(col: Any, i: int) -> bool:
    t = type(col)
    if t is list:
        return col[i] is not ABSENT
    if t is Coded:
        return col.values[col.idx[i]] is not ABSENT
    if t is array:
        return bool(col[i] != _ABSENT_TS)
    return bool(col.present[i])


class Record(Mapping[str, Any]):
    """One object of a Table, read like the dict it was stored from (read-only; lists come back as new lists)."""

    __slots__ = ("_t", "_i")

    def __init__(self, table: "Table", row: int) -> None:
        self._t = table
        self._i = row

    def __getitem__(self, key: str) -> Any:
        j = self._t._index.get(key)
        if j is None:
            raise KeyError(key)
        v = _cell(self._t.cols[j], self._i)
        if v is ABSENT:
            raise KeyError(key)
        return v

    def get(self, key: str, default: Any = None) -> Any:
        j = self._t._index.get(key)
        if j is None:
            return default
        v = _cell(self._t.cols[j], self._i)
        return default if v is ABSENT else v

    def __contains__(self, key: object) -> bool:
        j = self._t._index.get(key) if isinstance(key, str) else None
        return j is not None and _present(self._t.cols[j], self._i)

    def __iter__(self) -> Iterator[str]:
        i = self._i
        for name, col in zip(self._t.fields, self._t.cols):
            if _present(col, i):
                yield name

    def __len__(self) -> int:
        i = self._i
        return sum(1 for col in self._t.cols if _present(col, i))

    def __bool__(self) -> bool:  # `if not user:` without counting every property
        i = self._i
        return any(_present(col, i) for col in self._t.cols)

    def items(self) -> "_RecordItems":
        return _RecordItems(self)

    def scan(self, test: Callable[[Any], bool], skip: Container[str] = (), *, dates: bool = True) -> list[str]:
        """Names of the properties (outside `skip`) whose value passes `test`. A repeated value is tested once per
        table (the verdict stays with its column); `dates=False` skips Graph timestamps; a joined record counts
        when one of its properties passes."""
        out = []
        i = self._i
        for name, col in zip(self._t.fields, self._t.cols):
            if name in skip:
                continue
            t = type(col)
            if t is Coded:
                if col.verdict(test, col.idx[i]):
                    out.append(name)
            elif t is list:
                v = col[i]
                if v is not ABSENT and test(list(v) if type(v) is tuple else v):
                    out.append(name)
            elif t is array:
                if dates:
                    v = _cell(col, i)
                    if v is not ABSENT and test(v):
                        out.append(name)
            elif col.present[i] and Record(col.table, i).scan(test, skip, dates=dates):
                out.append(name)
        return out

    def to_dict(self) -> dict[str, Any]:
        """A plain dict copy (nested records become dicts too)."""
        out = {}
        i = self._i
        for name, col in zip(self._t.fields, self._t.cols):
            v = _cell(col, i)
            if v is not ABSENT:
                out[name] = v.to_dict() if type(v) is Record else v
        return out

    def __repr__(self) -> str:
        return repr(self.to_dict())

    def __reduce__(self) -> tuple[Any, ...]:
        return (Record, (self._t, self._i))  # the table is pickled once however many of its records are


class _RecordItems(ItemsView[str, Any]):
    def __init__(self, record: Record) -> None:
        super().__init__(record)
        self._record = record

    def __iter__(self) -> Iterator[tuple[str, Any]]:
        record = self._record
        i = record._i
        for name, col in zip(record._t.fields, record._t.cols):
            v = _cell(col, i)
            if v is not ABSENT:
                yield name, v


class _Items(ItemsView[str, Record]):
    def __init__(self, table: Table) -> None:
        super().__init__(table)
        self._table = table

    def __iter__(self) -> Iterator[tuple[str, Record]]:
        table = self._table
        return zip(table.ids, map(Record, [table] * len(table.ids), range(len(table.ids))))


class _Values(ValuesView[Record]):
    def __init__(self, table: Table) -> None:
        super().__init__(table)
        self._table = table

    def __iter__(self) -> Iterator[Record]:
        table = self._table
        return map(Record, [table] * len(table.ids), range(len(table.ids)))


class Table(Mapping[str, Record]):
    """Read-only {object id: Record} over columns (see the module docstring). Equal to a dict of equal dicts."""

    __slots__ = ("ids", "fields", "cols", "_index", "_pos")

    def __init__(self, ids: list[str], fields: Sequence[str], cols: list[Any], pos: dict[str, int] | None = None) -> None:
        self.ids = ids
        self.fields = tuple(fields)
        self.cols = cols
        self._index = {name: j for j, name in enumerate(self.fields)}
        self._pos = pos

    @property
    def pos(self) -> dict[str, int]:
        """object id -> row (built on first use; a Table loaded only to be re-pickled never needs it)."""
        pos = self._pos
        if pos is None:
            pos = self._pos = {oid: i for i, oid in enumerate(self.ids)}
        return pos

    def __getitem__(self, key: str) -> Record:
        return Record(self, self.pos[key])

    def get(self, key: str, default: Any = None) -> Any:
        i = self.pos.get(key)
        return default if i is None else Record(self, i)

    def __contains__(self, key: object) -> bool:
        return key in self.pos

    def __iter__(self) -> Iterator[str]:
        return iter(self.ids)

    def __len__(self) -> int:
        return len(self.ids)

    def items(self) -> _Items:
        return _Items(self)

    def values(self) -> _Values:
        return _Values(self)

    def column(self, name: str) -> list[Any]:
        """Every row's value of one property, in row order (None where a row does not have it)."""
        j = self._index.get(name)
        n = len(self.ids)
        if j is None:
            return [None] * n
        col = self.cols[j]
        if type(col) is list:
            if _TEXT_TYPES.issuperset(map(type, col)):  # strings and nulls (names, addresses): a copy at C speed
                return list(col)
            return [None if v is ABSENT else list(v) if type(v) is tuple else v for v in col]
        if type(col) is Coded:
            values = [None if v is ABSENT else list(v) if type(v) is tuple else v for v in col.values]
            return list(map(values.__getitem__, col.idx))
        return [None if v is ABSENT else v for v in map(_cell, [col] * n, range(n))]

    def judge(self, test: Callable[[Any], bool], skip: Container[str] = ()) -> None:
        """Judge every distinct value of the coded columns (outside `skip`, joined tables included) with `test` now;
        Record.scan then reads the verdicts instead of judging a value when a record first shows it."""
        for name, col in zip(self.fields, self.cols):
            if name in skip:
                continue
            if type(col) is Coded:
                col.verdicts(test)
            elif type(col) is Child:
                col.table.judge(test, skip)

    def getter(self, name: str) -> Callable[[str], Any]:
        """A function object id -> its `name` (None when the object or the property is missing): one lookup per
        call, no Record (sorting thousands of members by name)."""
        j = self._index.get(name)
        pos = self.pos
        if j is None:
            return lambda oid: None
        col = self.cols[j]
        if type(col) is list:
            def plain(oid: str) -> Any:
                i = pos.get(oid)
                if i is None:
                    return None
                v = col[i]
                return None if v is ABSENT else list(v) if type(v) is tuple else v

            return plain

        def other(oid: str) -> Any:
            i = pos.get(oid)
            if i is None:
                return None
            v = _cell(col, i)
            return None if v is ABSENT else v

        return other

    def to_dicts(self) -> dict[str, dict[str, Any]]:
        return {oid: Record(self, i).to_dict() for i, oid in enumerate(self.ids)}

    def __repr__(self) -> str:
        return f"<Table of {len(self.ids)} objects, {len(self.fields)} properties>"

    def __reduce__(self) -> tuple[Any, ...]:
        return (Table, (self.ids, self.fields, self.cols))

    # ---------------------------------------------------------------- building

    @classmethod
    def from_dicts(cls, objects: Mapping[str, Mapping[str, Any]]) -> "Table":
        return cls.concat([pack(objects)])

    @classmethod
    def concat(cls, parts: Sequence[Any], *, share: dict[str, str] | None = None) -> "Table":
        """One Table from stored buckets (see `pack`). Ids found in `share` become its string objects (so the
        tables and member lists of one snapshot hold each id once); new ids are added to it."""
        ids: list[str] = list(chain.from_iterable([part[1] for part in parts]))
        sizes = [len(part[1]) for part in parts]
        # the property names in first-seen order; the buckets of a collection nearly all list the same ones
        fields: dict[str, None] = {}
        layouts: dict[tuple[str, ...], dict[str, int]] = {}
        for part in parts:
            names = tuple(part[2])
            if names not in layouts:
                layouts[names] = {name: j for j, name in enumerate(names)}
                fields.update(dict.fromkeys(names))
        order = tuple(fields)
        # each bucket's columns in `order` (None where it lacks a property), then one tuple of stored columns per
        # property at C speed
        aligned = []
        for part in parts:
            names = tuple(part[2])
            if names == order:
                aligned.append(part[3])
            else:
                at = layouts[names]
                aligned.append([part[3][at[name]] if name in at else None for name in order])
        if share is not None:
            ids = list(map(share.setdefault, ids, ids))
        cols = [_concat_column(stored, sizes) for stored in zip(*aligned)] if order else []
        if share is not None:
            _share_columns(ids, list(order), cols, share)
        return cls(ids, list(order), cols)

    def splice(self, rows: Sequence[int], parts: Mapping[int, Any], *, share: dict[str, str]) -> "Table | None":
        """This table (loaded from stored buckets of `rows[i]` objects each, in bucket order) with the buckets in
        `parts` (bucket index -> its new stored form, or None: the bucket is gone) replaced: what a later version of
        the mirror holds when only those buckets were rewritten. The other buckets' rows are the held values
        themselves (one copy of each string shared by both versions), so a delta of a few objects loads a few
        buckets instead of the whole collection. None when the new buckets do not fit this table's columns (a new
        property, a date column holding something else): the caller loads the collection whole."""
        if len(rows) < max(parts, default=-1) + 1 or sum(rows) != len(self.ids):
            return None
        get = share.get
        starts = [0]
        for count in rows:
            starts.append(starts[-1] + count)
        new_fields: dict[int, tuple[Any, ...]] = {}
        for i, part in parts.items():
            if part is None:
                continue
            if not is_packed(part) or any(name not in self._index for name in part[2]):
                return None
            new_fields[i] = part
        # the layout: held row ranges and new buckets, in bucket order
        segments: list[tuple[int, int, Any]] = []  # (start, end, None) or (-1, n, stored bucket)
        same_ids = True
        for i, count in enumerate(rows):
            if i not in parts:
                if count and segments and segments[-1][2] is None and segments[-1][1] == starts[i]:
                    segments[-1] = (segments[-1][0], starts[i + 1], None)  # adjacent held rows: one slice
                elif count:
                    segments.append((starts[i], starts[i + 1], None))
                continue
            part = new_fields.get(i)
            n = len(part[1]) if part is not None else 0
            if n != count or (n and list(part[1]) != self.ids[starts[i]:starts[i + 1]]):  # type: ignore[index]
                same_ids = False
            if n:
                segments.append((-1, n, part))
        if same_ids:  # the usual delta: the same objects changed in place, so ids, rows and the id -> row map stay
            ids, pos = self.ids, self._pos
        else:
            ids = []
            for start, end, part in segments:
                ids.extend(self.ids[start:end] if part is None else [get(oid, oid) for oid in part[1]])
            setdefault = share.setdefault
            for oid in ids:
                setdefault(oid, oid)
            pos = None
        cols: list[Any] = []
        for name, held in zip(self.fields, self.cols):
            pieces = [(start, end, None if part is None else part[3][part[2].index(name)] if name in part[2] else _MISSING_COL)
                      for start, end, part in segments]
            col = _splice_column(held, pieces, get, ids if held is self.ids else None)
            if col is None:
                return None
            cols.append(col)
        return Table(ids, self.fields, cols, pos=pos)

    def attach(self, name: str, child: "Table") -> "Table":
        """This table with one more property, `name`, whose value is `child`'s record of the same id (ABSENT where
        `child` has none). The child's rows are laid out in this table's order and share its ids."""
        n = len(self.ids)
        if child.ids == self.ids:  # laid out alike (the sign-in activity of the users, bucketed as they are): copies
            order: list[int] | None = None
            present = b"\1" * n
        else:
            order = list(map(child.pos.get, self.ids, repeat(-1, n)))
            present = bytes(map((-1).__lt__, order))
        aligned = Table(self.ids, child.fields, [_take(col, order) for col in child.cols], pos=self._pos)
        j = self._index.get(name)
        fields, cols = list(self.fields), list(self.cols)
        if j is None:
            fields.append(name)
            cols.append(Child(aligned, present))
        else:
            cols[j] = Child(aligned, present)
        return Table(self.ids, fields, cols, pos=self._pos)


def _share_columns(ids: list[str], fields: list[str], cols: list[Any], share: dict[str, str]) -> None:
    """Make the known ids in the columns the shared objects: the "id" column becomes the ids list itself, id-valued
    columns (managerId...) and every coded value go through `share` (a repeated value is then one object across
    buckets and collections too)."""
    get = share.get
    for j, col in enumerate(cols):
        if type(col) is Coded:
            col.values = tuple(get(v, v) if type(v) is str else v for v in col.values)
        elif type(col) is list:
            if fields[j] == "id" and col == ids:
                cols[j] = ids
                continue
            sample = next((v for v in col if type(v) is str), None)
            if sample is not None and sample in share:
                plain = _PLAIN_TYPES.issuperset(map(type, col))  # strings, nulls and ABSENT only: hashable
                cols[j] = list(map(get, col, col)) if plain else [get(v, v) if type(v) is str else v for v in col]
                continue
            sampled = _head_distinct(col)  # (distinct values, rows) of its first rows; None: unhashable values
            if sampled is not None and sampled[1] == _SAMPLE_ROWS and 20 * sampled[0] > 19 * sampled[1]:
                continue  # one value per object (addresses, employee ids...): nothing repeats across buckets
            if _PLAIN_TYPES.issuperset(map(type, col)):  # strings, nulls and ABSENT only: hashable
                # a bucket stores each distinct string once; a value repeated across buckets (given names, job
                # titles) becomes one object here, and a column of repeats a coded one (all at C speed)
                if sampled is not None and 20 * sampled[0] <= 17 * sampled[1]:
                    # repeats seen in the first rows (names, titles): likely coded. Each row is first numbered by the
                    # first row of its value, then coded through a map of those row numbers: ints are cheaper keys
                    # than the strings, each equal to the first row's only after a full compare
                    at: dict[Any, int] = {}
                    rows = list(map(at.setdefault, col, range(len(col))))
                    if 2 * len(at) <= len(col):
                        where = dict(zip(at.values(), range(len(at))))
                        cols[j] = Coded(list(at), array("I", map(where.__getitem__, rows)))
                    else:
                        cols[j] = list(map(col.__getitem__, rows))  # each row's value as the object of its first row
                    continue
                first: dict[Any, Any] = {}
                shared = list(map(first.setdefault, col, col))  # each row's value as the object of its first row
                if 2 * len(first) <= len(col):
                    where = {v: k for k, v in enumerate(first)}
                    cols[j] = Coded(list(first), array("I", map(where.__getitem__, col)))
                else:
                    cols[j] = shared


def _head_distinct(col: list[Any]) -> tuple[int, int] | None:
    """(distinct values, rows) among a column's first _SAMPLE_ROWS rows (buckets hold objects by a hash of their id,
    so the first rows are a fair sample: a large column nearly all distinct there has nothing to share across
    buckets; one with repeats there is likely coded); None for unhashable values (lists of dicts)."""
    head = col[:_SAMPLE_ROWS]
    try:
        return len(set(head)), len(head)
    except TypeError:
        return None


_SAMPLE_ROWS = 2048
_PLAIN_TYPES = frozenset({str, type(None), _Absent})
_TEXT_TYPES = frozenset({str, type(None)})
_MISSING_COL: Any = object()  # a new bucket without the property: every row ABSENT


def _splice_column(held: Any, pieces: list[tuple[int, int, Any]], get: Callable[[str, str], str],
                   ids: list[str] | None) -> Any:
    """One column of Table.splice: `held`'s rows [start, end) where a piece's stored column is None, else that
    stored column (of `end` rows; _MISSING_COL: none). None when the stored columns do not fit `held`'s kind."""
    if ids is not None:  # the "id" column is the ids list itself
        return ids
    t = type(held)
    if t is array:
        dates = array("q")
        for start, end, col in pieces:
            if col is None:
                dates.extend(held[start:end])
            elif col is _MISSING_COL:
                dates.extend(array("q", [_ABSENT_TS]) * end)
            elif type(col) is array:
                dates.extend(col)
            else:  # the new bucket's values are not all dates: load whole (a fresh load decides the column's form)
                return None
        return dates
    if t is list:
        out: list[Any] = []
        for start, end, col in pieces:
            if col is None:
                out.extend(held[start:end])
            else:
                out.extend(get(v, v) if type(v) is str else v for v in _expand(None if col is _MISSING_COL else col, end))
        return out
    if t is Coded:
        values = list(held.values)
        where: dict[Any, int] | None = None
        idx = array("I")
        for start, end, col in pieces:
            if col is None:
                idx.extend(held.idx[start:end])
                continue
            if where is None:
                try:
                    where = {}
                    for k, v in enumerate(values):
                        where.setdefault(frozen(v), k)
                except TypeError:
                    return None
            for v in _expand(None if col is _MISSING_COL else col, end):
                try:
                    key = frozen(v)
                except TypeError:
                    return None
                k = where.setdefault(key, len(values))
                if k == len(values):
                    values.append(get(v, v) if type(v) is str else v)
                idx.append(k)
        # the held verdicts stay; new values are judged when first asked
        extra = len(values) - len(held.values)
        verdicts = {test: found + bytearray(extra) for test, found in held._verdicts.items()} if held._verdicts else None
        return Coded(values, idx, verdicts)
    return None  # a joined column: the caller loads whole


def _take(col: Any, order: list[int] | None) -> Any:
    """`col` re-laid in `order` (row indexes; -1: ABSENT), a copy of it for None. At C speed: each column gets one
    ABSENT cell appended, which index -1 reads."""
    t = type(col)
    if t is list:
        return list(col) if order is None else list(map([*col, ABSENT].__getitem__, order))
    if t is array:
        return array("q", col) if order is None else array("q", map((col + array("q", [_ABSENT_TS])).__getitem__, order))
    if t is Coded:
        idx = col.idx if order is None else map((col.idx + array("I", [len(col.values)])).__getitem__, order)
        return Coded((*col.values, ABSENT), array("I", idx))
    if order is None:
        order = list(range(len(col.present)))
    return [_cell(col, j) if j >= 0 else ABSENT for j in order]  # a child of a child: kept as records


def _expand(col: Any, n: int) -> list[Any]:
    """A stored column as a plain list in stored form (tuples for lists, ABSENT for absent)."""
    if col is None:
        return [ABSENT] * n
    t = type(col)
    if t is list:
        return cast("list[Any]", col)
    if t is Coded:
        return list(map(col.values.__getitem__, col.idx))
    return [None if x == _NULL_TS else ABSENT if x == _ABSENT_TS else _from_ts(x) for x in col]


def _concat_column(stored: Sequence[Any], sizes: Sequence[int]) -> Any:
    """One column of Table.concat from the buckets' stored columns (None: the bucket lacks the property) of `sizes`
    rows each: dates stay dates, coded columns stay coded (their distinct values once, in first-seen order), anything
    else becomes a plain list."""
    kinds = set(map(type, stored))
    kinds.discard(type(None))
    if kinds == {array}:
        out = array("q")
        for col, n in zip(stored, sizes):
            out.extend(col if col is not None else array("q", [_ABSENT_TS]) * n)
        return out
    if kinds == {Coded}:
        # every bucket's distinct values in one list: keyed, deduplicated and numbered at C speed, then each bucket's
        # indexes mapped through its slice of the numbering
        each = [col.values if col is not None else _ABSENT_ONLY for col in stored]
        flat = list(chain.from_iterable(each))
        # strings, nulls and ABSENT are their own keys, and so are tuples of strings (stored lists of strings, equal
        # only to an equal tuple of strings): no frozen() call per value
        kinds = set(map(type, flat))
        plain = _PLAIN_KEYS.issuperset(kinds) or (_PLAIN_KEYS | {tuple}).issuperset(kinds) and all(
            type(x) is str for v in flat if type(v) is tuple for x in v)
        values: list[Any]
        if plain:
            first = dict.fromkeys(flat)  # the distinct values in first-seen order, each the object of its first row
            numbered = list(map(dict(zip(first, range(len(first)))).__getitem__, flat))
            values = list(first)
        else:
            # frozen keys (tuples of objects, numbers): numbered bucket by bucket, each key's first value kept (a frozen
            # key is a tuple, hashed anew at every lookup: the one-pass numbering above measured slower for them)
            values, where, numbered = [], {}, []
            for vals in each:
                keys = tuple(map(frozen, vals))
                for k, v in zip(keys, vals):
                    if k not in where:
                        where[k] = len(values)
                        values.append(v)
                numbered.extend(map(where.__getitem__, keys))
        idx = array("I")
        start = 0
        for col, n, vals in zip(stored, sizes, each):
            end = start + len(vals)
            here = numbered[start:end]
            start = end
            if col is None:
                idx.extend(array("I", here) * n)
            elif here and here[-1] == len(here) - 1 and here == list(range(len(here))):
                idx.extend(col.idx)  # the bucket numbers its values as the column does (often: two or three values)
            else:
                idx.extend(array("I", map(here.__getitem__, col.idx)))
        return Coded(values, idx)
    out_list: list[Any] = []
    for col, n in zip(stored, sizes):
        out_list.extend(_expand(col, n))
    return out_list


_ABSENT_ONLY = (ABSENT,)


# ---------------------------------------------------------------- writing


def is_packed(stored: Any) -> bool:
    return type(stored) is tuple and len(stored) == 4 and stored[0] == _PACKED


def is_packed_groups(stored: Any) -> bool:
    return type(stored) is tuple and len(stored) == 4 and stored[0] == _PACKED_GROUPS


def unpack(stored: Any) -> dict[str, Any]:
    """A stored bucket as plain dicts: {id: object} or, for grouped objects, {key: [object, ...]}, for member lists
    {group id: {member id: kind}} (any format)."""
    if is_packed_members(stored):
        return unpack_members(stored)
    if is_packed(stored):
        return Table(stored[1], stored[2], stored[3]).to_dicts()
    if is_packed_groups(stored):
        _, keys, counts, part = stored
        rows = [Record(Table(part[1], part[2], part[3]), i).to_dict() for i in range(len(part[1]))]
        out, start = {}, 0
        for key, n in zip(keys, counts):
            out[key] = rows[start : start + n]
            start += n
        return out
    return dict(stored)


def pack(objects: Mapping[str, Mapping[str, Any]]) -> tuple[Any, ...]:
    """A bucket {id: dict} in the stored column form: (marker, ids, property names, columns)."""
    return _pack_rows(list(objects), list(objects.values()))


def pack_groups(groups: Mapping[str, Sequence[Mapping[str, Any]]]) -> tuple[Any, ...]:
    """A bucket {key: [dict, ...]} in the stored form: (marker, keys, counts, the rows packed in order; a row's id
    is its "id" property)."""
    keys = list(groups)
    rows = [row for key in keys for row in groups[key]]
    ids = [str(row.get("id") or "") for row in rows]
    return (_PACKED_GROUPS, keys, [len(groups[key]) for key in keys], _pack_rows(ids, rows))


def concat_groups(parts: Sequence[Any], *, share: dict[str, str] | None = None) -> dict[str, list[Record]]:
    """{key: [Record, ...]} from stored grouped buckets (see `pack_groups`), the rows in one Table."""
    table = Table.concat([part[3] for part in parts], share=share)
    get = share.get if share is not None else None
    out: dict[str, list[Record]] = {}
    row = 0
    for part in parts:
        for key, n in zip(part[1], part[2]):
            out[get(key, key) if get else key] = [Record(table, i) for i in range(row, row + n)]
            row += n
    return out


def records_column(records: Sequence[Mapping[str, Any]], name: str) -> list[Any]:
    """Each record's `name` (None where unset), in order: one column read when `records` are all the rows of one Table
    in row order (the records concat_groups makes, chained), else one get each."""
    if records and {*map(type, records)} == {Record}:
        table: Table = records[0]._t  # type: ignore[attr-defined]
        if (len(records) == len(table.ids) and all(map(is_, map(attrgetter("_t"), records), repeat(table)))
                and list(map(attrgetter("_i"), records)) == list(range(len(records)))):
            return table.column(name)
    return [record.get(name) for record in records]


def _pack_rows(ids: list[str], rows: list[Mapping[str, Any]]) -> tuple[Any, ...]:
    fields = list(dict.fromkeys(chain.from_iterable(rows)))
    pool: dict[str, str] = {}  # equal strings of the bucket (a mail equal to the UPN...) stored once
    cols = [_pack_column(list(map(methodcaller("get", name, ABSENT), rows)), pool) for name in fields]
    return (_PACKED, ids, tuple(fields), cols)


_NONE_TYPES = frozenset({type(None), _Absent})
# types whose values are their own coding key: equal values of one of these types are interchangeable
_PLAIN_KEYS = frozenset({str, type(None), _Absent})
_SCALARS = frozenset({bool, int, float})


_EPOCH = datetime(1970, 1, 1)
_SECOND = timedelta(seconds=1)


def _date_column(values: list[Any]) -> array[int] | None:
    """The column as epoch seconds when every value is a Graph timestamp ("2026-11-26T08:15:00Z") that writes back the
    same (or null/absent, with at least one date); else None. A value is a date when it parses and prints back as
    itself: 30 February, an hour 24 or an ISO week date are not."""
    dates = array("q")
    parse = datetime.fromisoformat
    for v in values:
        if v is None:
            dates.append(_NULL_TS)
        elif v is ABSENT:
            dates.append(_ABSENT_TS)
        elif type(v) is str and len(v) == 20 and v[19] == "Z":
            try:
                d = parse(v[:19])
            except ValueError:
                return None
            if d.microsecond or d.isoformat() != v[:19]:
                return None
            dates.append((d - _EPOCH) // _SECOND)
        else:
            return None
    return dates if any(x != _NULL_TS and x != _ABSENT_TS for x in dates) else None


def _pack_column(values: list[Any], pool: dict[str, str]) -> Any:
    types = set(map(type, values))
    if str in types and types <= _PLAIN_KEYS or not types - _NONE_TYPES:
        dates = _date_column(values)
        if dates is not None:
            return dates
    if types <= _PLAIN_KEYS:
        setdefault = pool.setdefault
        stored = [setdefault(v, v) if type(v) is str else v for v in values]
    else:
        stored = [_stored(v, pool) for v in values]
    if len(stored) >= _MIN_CODED_ROWS:
        kinds = types - _NONE_TYPES
        if types <= _PLAIN_KEYS or kinds <= _SCALARS and len(kinds) == 1 or kinds == {list} and all(
                type(x) is str for v in stored if v is not None and v is not ABSENT for x in v):
            # one kind of value (True is never 1 here), or tuples of strings: equal keys are equal values
            keys: list[Any] = stored
        else:
            try:
                keys = [frozen(v) for v in stored]
            except TypeError:
                return stored
        seen = dict.fromkeys(keys)  # the distinct keys in first-seen order
        if 2 * len(seen) <= len(stored):
            first = dict(zip(reversed(keys), reversed(stored)))  # each key's first value (earlier rows win)
            where: dict[Any, int] = {k: i for i, k in enumerate(seen)}
            return Coded([first[k] for k in seen], array("I", map(where.__getitem__, keys)))
    return stored


def _stored(value: Any, pool: dict[str, str]) -> Any:
    t = type(value)
    if t is str:
        return pool.setdefault(value, value)
    if t is list:
        return tuple(_stored(v, pool) if type(v) is str else v for v in value)
    return value


__all__ = ["ABSENT", "Child", "Coded", "Record", "Table", "concat_groups", "frozen", "is_packed", "is_packed_groups", "pack", "pack_groups", "unpack"]
