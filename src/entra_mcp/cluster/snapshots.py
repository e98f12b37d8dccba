"""Published snapshots: immutable, versioned files in a directory every replica reads (`[server.store] snapshot_dir`).

Layout: `<snapshot_dir>/<tenant>/v<version>-s<stamp>-t<token>.<kind>`, where version, stamp and token are the
leader's data version, commit stamp and fencing token (zero-padded, so names sort by age):
  `.data`   a committed mirror: its root and every bucket it names (mirror/store.py MirrorExport), and the server's
            prepared index when the leader built one (views.py ViewCache's format, keyed by its code fingerprint)
  `.fresh`  a freshness publication of a run that changed no object: the root only (asOf, statuses, delta links)

A file is written under a temporary name, flushed to disk, then renamed into place: a reader never sees half a file.
It is never written again. Which file is current is said by the fenced Redis record (cluster/lease.py), never by
listing the directory, so a file left by a leader that was refused (or killed before publishing) is ignored and
removed by retention. Files are pickles: the directory must be writable by the service account only (checked like
cache_dir). Plain files on purpose: SQLite must never live on a network file system.
"""

from __future__ import annotations

import os
import pickle
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from entra_mcp.errors import MirrorError
from entra_mcp.logs import get_logger
from entra_mcp.mirror.permissions import private_directory

log = get_logger("cluster.snapshots")

FORMAT = 1
_NAME = re.compile(r"^v(\d{12})-s(\d{12})-t(\d{10})\.(data|fresh)$")


@dataclass(frozen=True)
class Snapshot:
    """One published file, read back."""

    header: dict[str, Any]
    root: dict[str, Any]
    buckets: dict[str, Any] | None  # None for a freshness publication
    view: Any | None = None  # the prepared index (a DirectoryView), when the leader shipped one


def file_name(version: int, stamp: int, token: int, kind: str) -> str:
    return f"v{version:012d}-s{stamp:012d}-t{token:010d}.{kind}"


class SnapshotDir:
    """The tenants' published snapshots under one directory."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory).expanduser()

    def tenant_dir(self, tenant: str) -> Path:
        return self.directory / tenant

    def write(self, tenant: str, *, version: int, stamp: int, token: int, root: dict[str, Any],
              buckets: dict[str, Any] | None, view: Any = None, fingerprint: str | None = None,
              data_file: str | None = None) -> str:
        """Write one publication file (temp name, fsync, rename); returns its name. `data_file`: for a freshness
        publication, the data file it refreshes."""
        kind = "data" if buckets is not None else "fresh"
        name = file_name(version, stamp, token, kind)
        d = self.tenant_dir(tenant)
        try:
            private_directory(self.directory)
            d.mkdir(mode=0o700, exist_ok=True)
            tmp = d / f".{name}.{os.getpid()}.tmp"
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "wb") as f:
                header = {"format": FORMAT, "tenant": tenant, "version": version, "stamp": stamp, "token": token,
                          "kind": kind, "data_file": data_file or name, "written": time.time(),
                          "view": fingerprint if view is not None else None}
                pickle.dump(header, f, protocol=pickle.HIGHEST_PROTOCOL)
                pickle.dump(root, f, protocol=pickle.HIGHEST_PROTOCOL)
                if buckets is not None:
                    pickle.dump(buckets, f, protocol=pickle.HIGHEST_PROTOCOL)
                    if view is not None:
                        pickle.dump(view, f, protocol=pickle.HIGHEST_PROTOCOL)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, d / name)
            _fsync_dir(d)
        except OSError as exc:
            raise MirrorError(f"cannot write the snapshot of tenant {tenant} to {d}: {exc.strerror or exc}. "
                              "Fix: check server.store.snapshot_dir (space, permissions, the mount)") from None
        return name

    def read(self, tenant: str, name: str, *, view_fingerprint: str | None = None) -> Snapshot:
        """A published file. The prepared index is read only when it was built by code of `view_fingerprint`."""
        if not _NAME.match(name):
            raise MirrorError(f"not a snapshot file name: {name[:80]!r}")
        path = self.tenant_dir(tenant) / name
        try:
            with open(path, "rb") as f:
                header = pickle.load(f)
                if not isinstance(header, dict) or header.get("format") != FORMAT:
                    raise MirrorError(f"the snapshot {path} has another format: upgrade every replica to one release")
                root = pickle.load(f)
                buckets = pickle.load(f) if header["kind"] == "data" else None
                view = None
                if buckets is not None and header.get("view") and header["view"] == view_fingerprint:
                    view = pickle.load(f)
        except FileNotFoundError:
            raise MirrorError(f"the snapshot {path} is gone (replaced by a newer one?)") from None
        except (OSError, EOFError, pickle.UnpicklingError, AttributeError, ImportError) as exc:
            raise MirrorError(f"cannot read the snapshot {path}: {type(exc).__name__}") from None
        return Snapshot(header=header, root=root, buckets=buckets, view=view)

    def remove(self, tenant: str, name: str) -> None:
        try:
            (self.tenant_dir(tenant) / name).unlink()
        except FileNotFoundError:
            pass
        except OSError as exc:
            log.warning("tenant %s: cannot remove the snapshot %s: %s", tenant, name, exc.strerror or exc)

    def names(self, tenant: str) -> list[str]:
        """The tenant's publication files, oldest first."""
        try:
            return sorted(n for n in os.listdir(self.tenant_dir(tenant)) if _NAME.match(n))
        except FileNotFoundError:
            return []

    def prune(self, tenant: str, *, keep: int, current: str, current_data: str, grace_seconds: float = 60.0) -> list[str]:
        """Retention: keep the newest `keep` data files (and the current one), the freshness files newer than the
        oldest data file kept, and whatever is younger than `grace_seconds` (a follower may be reading it, or a
        publication in flight); remove the rest (older versions, files of refused or killed leaders, stale temps)."""
        names = self.names(tenant)
        data = [n for n in names if n.endswith(".data")]
        kept = set(data[-keep:]) | {current, current_data}
        oldest = min(kept)
        now = time.time()
        removed = []
        d = self.tenant_dir(tenant)
        for n in names:
            if n in kept or (n.endswith(".fresh") and n > oldest):
                continue
            try:
                if now - (d / n).stat().st_mtime < grace_seconds:
                    continue
            except FileNotFoundError:
                continue
            self.remove(tenant, n)
            removed.append(n)
        try:
            for n in os.listdir(d):  # temps of a writer killed before its rename
                if n.endswith(".tmp") and now - (d / n).stat().st_mtime > 3600:
                    (d / n).unlink()
        except OSError:
            pass
        return removed


def _fsync_dir(d: Path) -> None:
    try:
        fd = os.open(d, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


__all__ = ["FORMAT", "Snapshot", "SnapshotDir", "file_name"]
