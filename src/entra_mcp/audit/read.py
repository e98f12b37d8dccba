"""Reading the audit trail: its records in order (across rotated files), the chain check, and the filters that
`entra-mcp audit` offers (who looked up these objects, what this caller looked at, between these times)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping

from entra_mcp.audit.trail import GENESIS, line_hash, trail_files


@dataclass(frozen=True)
class Line:
    file: Path
    number: int  # 1-based within its file
    raw: bytes
    record: dict[str, Any] | None  # None: not a JSON object


@dataclass
class Verdict:
    """The chain check: `ok`, how much was read, and the first break (file, line number, why)."""

    ok: bool = True
    files: int = 0
    records: int = 0
    broken_file: str | None = None
    broken_line: int | None = None
    reason: str | None = None
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "files": self.files, "records": self.records, "brokenFile": self.broken_file,
                "brokenLine": self.broken_line, "reason": self.reason, "notes": self.notes}


def read_lines(path: Path, progress: Callable[[int, int], None] | None = None) -> Iterator[Line]:
    """Every line of the trail at `path`, oldest first; `progress(bytes read, total)` now and then."""
    files = trail_files(path)
    total = sum(p.stat().st_size for p in files if p.exists())
    done = 0
    step = 32 * 1024 * 1024
    next_report = step
    for p in files:
        try:
            f = open(p, "rb")
        except FileNotFoundError:  # removed by retention while we read
            continue
        with f:
            for n, raw in enumerate(f, 1):
                done += len(raw)
                if progress is not None and done >= next_report:
                    progress(done, total)
                    next_report += step
                if not raw.strip():
                    continue
                try:
                    rec = json.loads(raw)
                except ValueError:
                    rec = None
                yield Line(p, n, raw, rec if isinstance(rec, dict) else None)


def verify(path: Path, progress: Callable[[int, int], None] | None = None) -> Verdict:
    """Check the chain of the trail at `path` and name the first line where it breaks."""
    v = Verdict(files=len(trail_files(path)))
    head_path = path.with_name(path.name + ".head")
    try:
        head = head_path.read_text().strip() or None
    except FileNotFoundError:
        head = None
    prev: str | None = None
    before: Line | None = None
    start_prev: tuple[str, Line] | None = None
    removed: set[str] = set()
    seen_head = head is None
    for line in read_lines(path, progress):
        if line.record is None:
            return _broken(v, line, "not a complete JSON record (edited, or a write cut short)")
        v.records += 1
        got = line.record.get("prev")
        if prev is None:
            if got != GENESIS:
                start_prev = (str(got), line)
        elif got != prev:
            where = f"line {before.number} of {before.file.name}" if before is not None else "the line before it"
            return _broken(v, line, f"its `prev` is not the hash of {where}: that line was edited, or lines between "
                                    "them were removed or inserted")
        if line.record.get("event") == "audit_retention" and isinstance(line.record.get("removedLastHash"), str):
            removed.add(line.record["removedLastHash"])
        prev = line_hash(line.raw)
        before = line
        if prev == head:
            seen_head = True
    if start_prev is not None:
        if start_prev[0] in removed:
            v.notes.append(f"the chain starts at {start_prev[1].file.name}: older files were removed by retention "
                           "(recorded in the trail)")
        else:
            return _broken(v, start_prev[1], "the first record chains to a record that is not in the trail (a file or "
                                             "lines before it were removed)")
    if not seen_head:
        v.ok = False
        v.reason = (f"the trail ends before the last record written ({head_path.name} names a later one): lines were "
                    "removed from its end")
        v.broken_file = path.name
        v.broken_line = None
    return v


def _broken(v: Verdict, line: Line, reason: str) -> Verdict:
    v.ok = False
    v.broken_file = line.file.name
    v.broken_line = line.number
    v.reason = reason
    return v


def parse_time(text: str, now: datetime) -> datetime:
    """An ISO time (2026-12-01, 2026-12-01T08:00:00Z) or a duration back from now (30m, 6h, 3d, 2w)."""
    t = text.strip()
    units = {"m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
    if len(t) >= 2 and t[:-1].isdigit() and t[-1].lower() in units:
        from datetime import timedelta

        return now - timedelta(seconds=int(t[:-1]) * units[t[-1].lower()])
    try:
        dt = datetime.fromisoformat(t.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"{text[:60]!r} is not a time: give an ISO time (2026-12-01T08:00:00Z, 2026-12-01) or a "
                         "duration back from now (30m, 6h, 3d, 2w)") from None
    return dt if dt.tzinfo else dt.replace(tzinfo=timezone.utc)


def record_time(rec: Mapping[str, Any]) -> datetime | None:
    try:
        return datetime.fromisoformat(str(rec.get("time")).replace("Z", "+00:00"))
    except ValueError:
        return None


def caller_matches(rec: Mapping[str, Any], who: str) -> bool:
    """Whether the record's caller is `who`: its UPN, object id, tenant/object id, API key name or name."""
    caller = rec.get("caller")
    if not isinstance(caller, Mapping):
        return False
    w = who.strip().casefold()
    values = [caller.get(k) for k in ("upn", "oid", "keyName", "name", "clientId")]
    if caller.get("tid") and caller.get("oid"):
        values.append(f"{caller['tid']}/{caller['oid']}")
    return any(isinstance(x, str) and x.casefold() == w for x in values)


def select(lines: Iterable[Line], *, since: datetime | None = None, until: datetime | None = None,
           objects: set[str] | None = None, caller: str | None = None) -> Iterator[dict[str, Any]]:
    """The records that pass every given filter: time window, touched one of `objects` (ids, case-insensitive),
    called by `caller`."""
    wanted = {o.casefold() for o in objects} if objects is not None else None
    for line in lines:
        rec = line.record
        if rec is None or rec.get("event") == "audit_retention":
            continue
        if since is not None or until is not None:
            t = record_time(rec)
            if t is None or (since is not None and t < since) or (until is not None and t > until):
                continue
        if wanted is not None:
            touched = {str(o).casefold() for o in rec.get("objects") or ()}
            if not touched & wanted:
                continue
        if caller is not None and not caller_matches(rec, caller):
            continue
        yield rec


def total_size(path: Path) -> int:
    return sum(os.path.getsize(p) for p in trail_files(path) if p.exists())


__all__ = ["Line", "Verdict", "caller_matches", "parse_time", "read_lines", "record_time", "select", "total_size",
           "verify"]
