"""The sign-in window as the server holds it: columns of small integers, not one object per event.

A large tenant's 7-day window is ~460,000 failures and ~630,000 last-success rows. Held as the mirror's Records
(one object per row, its id string, lists per user) that was ~350 bytes a row, hundreds of MB in the server. Here:

- a time is an int (epoch seconds) in an array;
- a column whose values repeat (error code, reason, app, client, city, policies...) is coded: each distinct value
  once, one 1-, 2- or 4-byte index per row;
- a column of many distinct strings (user ids, UPNs, names, IP addresses) is pooled: the distinct strings joined in
  one sorted string, one 4-byte index per row (sorted, so a string is found by binary search without a dict);
- rows are found by user through one array of row numbers ordered by user (no list per user).

The event ids are not kept (the answers never show them; the sync de-duplicates in the mirror, not here). Rows come
back as plain dicts, only for the rows an answer reads (one user's, or one hour's as tuples for the tallies).
"""

from __future__ import annotations

import time
from array import array
from collections import Counter
from bisect import bisect_left
from calendar import timegm
from typing import Any, Callable, Iterable, Mapping, Sequence

from ..mirror.table import Record, Table

_POOL_MIN = 4096  # distinct strings from which a column is pooled instead of coded
_NONE = -1  # a pooled column's index for None


def _ts(text: Any) -> int | None:
    """"2026-12-01T10:00:00Z" (the mirror's form) -> epoch seconds; None when not such a time."""
    if not isinstance(text, str) or len(text) < 19:
        return None
    try:
        return timegm((int(text[0:4]), int(text[5:7]), int(text[8:10]), int(text[11:13]), int(text[14:16]),
                       int(text[17:19])))
    except ValueError:
        return None


def iso_of(ts: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


_MINUTE_SECOND = [f"{m:02d}:{s:02d}Z" for m in range(60) for s in range(60)]  # "MM:SSZ" by seconds into the hour


def _iso_all(times: Sequence[int]) -> list[str]:
    """iso_of for many times (a row's hour formatted once per hour, not once per row)."""
    if times:
        first = min(times) // 3600 * 3600
        if max(times) - first < 3600:  # one hour (an hour's rows, the usual call): one prefix, then a table lookup
            hour, tail = iso_of(first)[:14], _MINUTE_SECOND
            return [hour + tail[t - first] for t in times]
    out = []
    hours: dict[int, str] = {}
    for t in times:
        h = t - t % 3600
        prefix = hours.get(h)
        if prefix is None:
            prefix = hours[h] = iso_of(h)[:14]  # "YYYY-MM-DDTHH:"
        m, sec = divmod(t - h, 60)
        out.append(f"{prefix}{m:02d}:{sec:02d}Z")
    return out


def _small(n: int) -> str:
    return "B" if n <= 0x100 else "H" if n <= 0x10000 else "i"


def _key(v: Any) -> Any:
    t = type(v)
    if t is str or v is None:
        return v
    if t is list or t is tuple:
        return ("L", *map(_key, v))
    return (t.__name__, v)


class _Coded:
    """A column of repeated values: the distinct values once (lists kept as tuples), an index per row."""

    __slots__ = ("values", "idx")

    def __init__(self, raw: Sequence[Any]) -> None:
        kinds = set(map(type, raw)) - {type(None)}
        if len(kinds) <= 1 and not kinds & {list, dict, float}:
            # one plain kind (str, int, bool): equal values are the same value; coded at C speed
            values = list(dict.fromkeys(raw))
            where = {v: i for i, v in enumerate(values)}
            self.values = values
            self.idx = array(_small(len(values)), map(where.__getitem__, raw))
            return
        codes: dict[Any, int] = {}
        values = []
        out = []
        for v in raw:
            k = _key(v)  # a bool is not the int 1, a list is not a tuple of the same items
            i = codes.get(k)
            if i is None:
                i = codes[k] = len(values)
                values.append(tuple(v) if isinstance(v, list) else v)
            out.append(i)
        self.values = values
        self.idx = array(_small(len(values)), out)

    def get(self, row: int) -> Any:
        v = self.values[self.idx[row]]
        return list(v) if isinstance(v, tuple) else v


class _Pooled:
    """A column of many distinct strings (or None): one sorted pool string, an int index per row."""

    __slots__ = ("pool", "starts", "idx")

    def __init__(self, raw: Sequence[Any]) -> None:
        distinct = sorted({v for v in raw if v is not None})
        self.pool = "".join(distinct)
        starts = array("i", [0])
        at = 0
        for s in distinct:
            at += len(s)
            starts.append(at)
        self.starts = starts
        where: dict[str | None, int] = {s: i for i, s in enumerate(distinct)}
        where[None] = _NONE
        self.idx = array("i", map(where.__getitem__, raw))

    def __len__(self) -> int:
        return len(self.starts) - 1

    def __getitem__(self, i: int) -> str:  # the i-th distinct string (a sequence for bisect)
        return self.pool[self.starts[i]:self.starts[i + 1]]

    def find(self, text: str) -> int:
        """The pool index of `text`, or -1."""
        i = bisect_left(self, text)
        return i if i < len(self) and self[i] == text else -1

    def get(self, row: int) -> str | None:
        i = self.idx[row]
        return None if i == _NONE else self[i]


def _value(col: "_Coded | _Pooled", i: int) -> Any:
    """The value of index `i` of a column (lists as lists)."""
    if isinstance(col, _Pooled):
        return None if i == _NONE else col[i]
    v = col.values[i]
    return list(v) if isinstance(v, tuple) else v


def _column(raw: Sequence[Any]) -> _Coded | _Pooled:
    if len(raw) >= _POOL_MIN and set(map(type, raw)) <= {str, type(None)} and len(set(raw)) >= _POOL_MIN:
        return _Pooled(raw)
    return _Coded(raw)


def _times(values: Iterable[Any]) -> array[int]:
    return array("I", [_ts(v) or 0 for v in values])  # epoch seconds (to 2106); 0 for a bad time


def _reader(rows: Sequence[Mapping[str, Any]]) -> tuple[Callable[[str], list[Any]], Callable[[str], array[int]]]:
    """Functions giving one property of every row, in order (and a time property as epoch seconds): column by column
    from the mirror's Table when the rows are its Records (no per-row, per-property lookups: a large window has ~20
    million cells), else row by row."""
    table = getattr(rows[0], "_t", None) if rows else None
    if isinstance(table, Table) and all(type(r) is Record and r._t is table for r in rows):
        at = [r._i for r in rows]  # type: ignore[attr-defined]
        whole = at == list(range(len(table)))

        def by_column(name: str) -> list[Any]:
            col = table.column(name)
            return col if whole else [col[i] for i in at]

        def times(name: str) -> array[int]:
            j = table._index.get(name)
            col = table.cols[j] if j is not None else None
            if isinstance(col, array) and col.typecode == "q":  # the table's own date column: epoch seconds
                picked = col if whole else array("q", [col[i] for i in at])
                return array("I", [t if 0 < t < 2**32 else 0 for t in picked])
            return _times(by_column(name))

        return by_column, times
    return (lambda name: [r.get(name) for r in rows]), (lambda name: _times(r.get(name) for r in rows))


class Rows:
    """Rows of one kind (failures, or last successes) as columns; `time_field` is held as epoch seconds."""

    def __init__(self, fields: Sequence[str], rows: Sequence[Mapping[str, Any]], time_field: str,
                 extra: Mapping[str, Sequence[Any]] | None = None, pooled: Sequence[str] = ()) -> None:
        self.n = len(rows)
        self.time_field = time_field
        values_of, times_of = _reader(rows)
        self.times = times_of(time_field)
        self.fields = tuple(f for f in fields if f != time_field)
        self.cols: dict[str, _Coded | _Pooled] = {f: _column(values_of(f)) for f in self.fields}
        for name, values in (extra or {}).items():
            self.cols[name] = _Pooled(values) if name in pooled else _column(values)
        self._shown = tuple(fields)

    def key(self, name: str) -> "_Pooled":
        col = self.cols[name]
        assert isinstance(col, _Pooled), name
        return col

    def __len__(self) -> int:
        return self.n

    def value(self, row: int, name: str) -> Any:
        if name == self.time_field:
            return iso_of(self.times[row])
        return self.cols[name].get(row)

    def row(self, i: int) -> dict[str, Any]:
        """Row `i` as the mirror's record (a plain dict of `fields`)."""
        out = {}
        for f in self._shown:
            out[f] = iso_of(self.times[i]) if f == self.time_field else self.cols[f].get(i)
        return out

    def tuples(self, names: Sequence[str], start: int, stop: int) -> list[tuple[Any, ...]]:
        """Rows [start, stop) as tuples of `names` (a time as its ISO text), column by column at C speed."""
        cols: list[list[Any]] = []
        for name in names:
            if name == self.time_field:
                cols.append(_iso_all(self.times[start:stop]))
                continue
            col = self.cols[name]
            if isinstance(col, _Coded):
                values = [list(v) if isinstance(v, tuple) else v for v in col.values]
                cols.append(list(map(values.__getitem__, col.idx[start:stop])))
            else:
                pool, at = col.pool, col.starts
                cols.append([None if i == _NONE else pool[at[i]:at[i + 1]] for i in col.idx[start:stop]])
        return list(zip(*cols))

    def pairs(self, a: str, b: str, start: int, stop: int) -> Counter[tuple[Any, Any]]:
        """(value of `a`, value of `b`) -> rows in [start, stop), counted on the columns' indexes at C speed."""
        ca, cb = self.cols[a], self.cols[b]
        counted = Counter(zip(ca.idx[start:stop], cb.idx[start:stop]))
        out: Counter[tuple[Any, Any]] = Counter()
        for (i, j), n in counted.items():
            out[(_value(ca, i), _value(cb, j))] += n
        return out

    def nbytes(self) -> int:
        """Bytes of the arrays and pools (not the coded columns' distinct values)."""
        total = self.times.itemsize * len(self.times)
        for c in self.cols.values():
            total += c.idx.itemsize * len(c.idx)
            if isinstance(c, _Pooled):
                total += len(c.pool) + c.starts.itemsize * len(c.starts)
        return total


class ByKey:
    """Row numbers of `rows` grouped by a pooled key column (user id): one array ordered by key, row order kept."""

    def __init__(self, col: _Pooled) -> None:
        self.col = col
        idx = col.idx
        order = sorted(range(len(idx)), key=idx.__getitem__)  # stable: each key's rows stay in row order
        self.order = array("i", order)
        starts = array("i", [0] * (len(col) + 1))
        for i in idx:
            if i != _NONE:
                starts[i + 1] += 1
        none = sum(1 for i in idx if i == _NONE)
        starts[0] = none  # rows without a key sort first
        for k in range(1, len(starts)):
            starts[k] += starts[k - 1]
        self.starts = starts

    def rows(self, key: str) -> list[int]:
        i = self.col.find(key)
        if i < 0:
            return []
        return list(self.order[self.starts[i]:self.starts[i + 1]])

    def keys(self) -> Iterable[str]:
        for i in range(len(self.col)):
            if self.starts[i + 1] > self.starts[i]:
                yield self.col[i]

    def nbytes(self) -> int:
        """Bytes of its two arrays (the key column is the rows' own)."""
        return self.order.itemsize * len(self.order) + self.starts.itemsize * len(self.starts)


__all__ = ["ByKey", "Rows", "iso_of"]
