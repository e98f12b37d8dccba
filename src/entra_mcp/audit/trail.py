"""The audit trail: one JSON line per tool call and per sign-in event, chained by hashes (docs/audit.md).

Each line is a JSON object whose `prev` is the SHA-256 (hex) of the previous line's bytes (without its newline), so an
edited, inserted or deleted line breaks the chain at the next one; the chain runs on across rotated files (the first
line of a new file carries the hash of the last line of the one before). `<path>.head` holds the hash of the last
line written, so a cut-off tail is seen too. Rotation is by size; rotated files are named
`<stem>.<UTC time>.jsonl` beside the live file and removed by count and age (each removal is itself recorded, with the
removed file's last hash, so the chain's new start is explained).

Several processes may append to the same file (`serve` and `entra-mcp call` on one cache dir): every append takes an
exclusive lock on `<path>.lock` (fcntl) and reads the hash to chain to from the file itself when another writer moved
it. A failure to write is logged and counted, never raised into the call being audited.

What is recorded is decided by the callers (server/app.py, oidc/routes.py): identifiers, outcomes and timings — never
secrets, tokens, raw session ids or answer payloads. `record()` drops any field whose name says it holds one.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Mapping

from entra_mcp.logs import get_logger

log = get_logger("audit")

RECORD_VERSION = 1
GENESIS = "0" * 64  # `prev` of the very first line of a trail
MAX_LINE_BYTES = 64_000  # a record is identifiers and counts: cut lists long before this
TAIL_READ = 131_072
# Field names that must never reach the trail, whatever a caller hands in.
FORBIDDEN_FIELDS = frozenset({"token", "access_token", "refresh_token", "id_token", "session_token", "secret",
                              "client_secret", "password", "authorization", "cookie", "code", "code_verifier",
                              "session_id", "api_key", "key"})


def now_iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def line_hash(line: bytes) -> str:
    """The chain hash of one line (its bytes without the trailing newline)."""
    return hashlib.sha256(line.rstrip(b"\n")).hexdigest()


def session_ref(session_id: str | None) -> str | None:
    """What the trail keeps of an MCP or sign-in session id: a one-way hash (enough to group a session's calls)."""
    if not session_id:
        return None
    return hashlib.sha256(b"entra-mcp-session\0" + session_id.encode("utf-8", "replace")).hexdigest()[:24]


def rotated_files(path: Path) -> list[Path]:
    """The rotated files of the trail at `path`, oldest first (their names sort by time)."""
    stem = path.name[: -len(path.suffix)] if path.suffix else path.name
    suffix = path.suffix or ".jsonl"
    if not path.parent.is_dir():
        return []
    found = [p for p in path.parent.iterdir()
             if p.name.startswith(stem + ".") and p.name.endswith(suffix) and p.name != path.name
             and p.name[len(stem) + 1:-len(suffix)].endswith("Z")]
    return sorted(found, key=lambda p: p.name)


def trail_files(path: Path) -> list[Path]:
    """Every file of the trail, oldest first: the rotated ones, then the live one."""
    return rotated_files(path) + ([path] if path.exists() else [])


def _clean(value: Any, depth: int = 0) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _clean(v, depth + 1) for k, v in value.items()
                if str(k).lower() not in FORBIDDEN_FIELDS and v is not None and depth < 4}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_clean(v, depth + 1) for v in list(value)[:200]]
    if isinstance(value, str):
        return value[:512]
    if value is None or isinstance(value, (bool, int, float)):
        return value
    return str(value)[:512]


class AuditTrail:
    """Appends chained records to the trail at `path` (see the module docstring). Thread- and process-safe."""

    def __init__(self, path: Path, *, max_bytes: int = 10_000_000, keep_files: int = 50, retention_days: float = 400,
                 mirror: str = "none", clock: Callable[[], float] = time.time) -> None:
        self.path = Path(path)
        self.max_bytes = max_bytes
        self.keep_files = keep_files
        self.retention_days = retention_days
        self.mirror = mirror
        self.clock = clock
        self.failures = 0
        self._lock = threading.Lock()
        self._lock_fd: int | None = None
        self._head_fd: int | None = None
        self._fd: int | None = None  # the live file, open for appending
        self._fd_ino = -1
        self._known: tuple[int, int, str] | None = None  # (inode, size, hash of its last line) after our last write
        self._head_path = self.path.with_name(self.path.name + ".head")

    @classmethod
    def from_settings(cls, settings: Any) -> "AuditTrail | None":
        """The trail [server.audit] configures (None when it is switched off). One instance per path per process."""
        audit = settings.server.audit
        if not audit.enabled:
            return None
        path = audit.resolved_path(settings.server.cache_dir)
        key = (str(path), audit.max_bytes, audit.keep_files, audit.retention_days, audit.mirror)
        with _REGISTRY_LOCK:
            trail = _REGISTRY.get(key)
            if trail is None:
                trail = _REGISTRY[key] = cls(path, max_bytes=audit.max_bytes, keep_files=audit.keep_files,
                                             retention_days=audit.retention_days, mirror=audit.mirror)
        return trail

    # ------------------------------------------------------------------ writing

    def record(self, event: str, fields: Mapping[str, Any]) -> bool:
        """Append one record of `event` with `fields` (None values left out, forbidden names dropped). True when
        written; a failure is logged (never raised) and counted in `failures`."""
        try:
            self._append(event, fields)
            return True
        except OSError as exc:
            self.failures += 1
            log.error("audit trail %s: could not append a record (%s): %s", self.path, event, exc.strerror or exc)
            return False

    def _append(self, event: str, fields: Mapping[str, Any]) -> None:
        body = {"v": RECORD_VERSION, "time": now_iso(self.clock()), "event": event, **_clean(fields)}
        text = json.dumps(body, ensure_ascii=False, separators=(",", ":"))
        with self._lock:
            fd = self._locked_fd()
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                removed = self._rotate_if_needed(len(text) + 100)
                for name, last in removed:
                    self._write_line(json.dumps({"v": RECORD_VERSION, "time": body["time"], "event": "audit_retention",
                                                 "removedFile": name, "removedLastHash": last}, separators=(",", ":")))
                line = self._write_line(text)
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
        if self.mirror == "stderr":
            sys.stderr.write("entra-mcp audit: " + line.decode("utf-8"))
            sys.stderr.flush()
        elif self.mirror == "syslog":
            import syslog

            syslog.syslog(syslog.LOG_INFO | syslog.LOG_AUTH, "entra-mcp audit: " + line.decode("utf-8").rstrip("\n"))

    def _locked_fd(self) -> int:
        if self._lock_fd is None:
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            self._lock_fd = os.open(self.path.with_name(self.path.name + ".lock"), os.O_RDWR | os.O_CREAT, 0o600)
            self._head_fd = os.open(self._head_path, os.O_WRONLY | os.O_CREAT, 0o600)
        return self._lock_fd

    def _live(self) -> tuple[int, os.stat_result]:
        """The append descriptor of the live file (reopened when another writer rotated it) and its stat."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            st = None
        if self._fd is None or st is None or st.st_ino != self._fd_ino:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None
            self._fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o600)
            st = os.fstat(self._fd)
            self._fd_ino = st.st_ino
        return self._fd, st

    def _write_line(self, text: str) -> bytes:
        """Chain the record `text` (a JSON object) to the last line of the trail and append it (the file lock is
        held). One stat, one write and the head's pwrite when this writer wrote the line before; a read of the tail
        when another did."""
        fd, st = self._live()
        torn = b""
        if self._known is not None and self._known[:2] == (st.st_ino, st.st_size):
            prev = self._known[2]
        else:
            prev = self._last_hash(st.st_size)
            if st.st_size and os.pread(fd, 1, st.st_size - 1) != b"\n":
                torn = b"\n"  # a torn line (a writer killed mid-append) stays alone on its line
        body = text[:-1] + f',"prev":"{prev}"}}'
        line = (body + "\n").encode("utf-8")
        if len(line) > MAX_LINE_BYTES:  # never expected: lists are cut before; keep the record, drop its lists
            short = {k: v for k, v in json.loads(text).items() if not isinstance(v, (list, dict))}
            short.update(truncated=True, prev=prev)
            line = (json.dumps(short, ensure_ascii=False, separators=(",", ":")) + "\n").encode("utf-8")
        os.write(fd, torn + line)
        digest = line_hash(line)
        self._known = (st.st_ino, st.st_size + len(torn) + len(line), digest)
        assert self._head_fd is not None
        os.pwrite(self._head_fd, (digest + "\n").encode(), 0)
        return line

    def _last_hash(self, size: int) -> str:
        """The hash of the trail's last line, read from the file (another writer moved it)."""
        if size:
            last = last_line(self.path)
            if last is not None:
                return line_hash(last)
        for older in reversed(rotated_files(self.path)):  # the live file is new or empty: chain to the last rotated one
            last = last_line(older)
            if last is not None:
                return line_hash(last)
        return GENESIS

    def _rotate_if_needed(self, incoming: int) -> list[tuple[str, str]]:
        """Rotate the live file when `incoming` more bytes would take it past max_bytes; then apply retention.
        Returns (name, last line hash) of each rotated file removed."""
        try:
            size = os.stat(self.path).st_size
        except FileNotFoundError:
            return []
        if size == 0 or size + incoming <= self.max_bytes:
            return []
        stem = self.path.name[: -len(self.path.suffix)] if self.path.suffix else self.path.name
        suffix = self.path.suffix or ".jsonl"
        stamp = datetime.fromtimestamp(self.clock(), timezone.utc).strftime("%Y%m%dT%H%M%S%f")
        # Several rotations within one microsecond (a clock that stands still) stay in order: the next number.
        same = [p.name[len(stem) + 1 + len(stamp):-len(suffix) - 1] for p in rotated_files(self.path)
                if p.name.startswith(f"{stem}.{stamp}")]
        n = max((int(x) for x in same if x.isdigit()), default=-1) + 1
        target = self.path.with_name(f"{stem}.{stamp}{n:03d}Z{suffix}")
        os.rename(self.path, target)
        self._known = None
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        return self._apply_retention()

    def _apply_retention(self) -> list[tuple[str, str]]:
        files = rotated_files(self.path)
        cutoff = self.clock() - self.retention_days * 86400 if self.retention_days else None
        doomed = files[: max(0, len(files) - self.keep_files)]
        if cutoff is not None:
            doomed += [p for p in files[len(doomed):-1] if p.stat().st_mtime < cutoff]  # the newest rotated one stays
        removed = []
        for p in doomed:
            last = last_line(p)
            try:
                p.unlink()
            except FileNotFoundError:
                continue
            removed.append((p.name, line_hash(last) if last is not None else GENESIS))
            log.info("audit trail: removed %s (retention)", p.name)
        return removed

    def close(self) -> None:
        with self._lock:
            for name in ("_fd", "_head_fd", "_lock_fd"):
                fd = getattr(self, name)
                if fd is not None:
                    os.close(fd)
                    setattr(self, name, None)


def last_line(path: Path) -> bytes | None:
    """The last complete line of a file (None when it has none)."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            start = max(0, size - TAIL_READ)
            f.seek(start)
            data = f.read()
    except FileNotFoundError:
        return None
    lines = [ln for ln in data.split(b"\n") if ln.strip()]
    if not data.endswith(b"\n") and lines:
        lines = lines[:-1]  # a torn last line is not part of the chain
    if not lines or (start > 0 and len(lines) == 1 and data.count(b"\n") <= 1):
        return None
    return lines[-1]


_REGISTRY: dict[tuple[Any, ...], AuditTrail] = {}
_REGISTRY_LOCK = threading.Lock()


__all__ = ["AuditTrail", "GENESIS", "last_line", "line_hash", "now_iso", "rotated_files", "session_ref", "trail_files"]
