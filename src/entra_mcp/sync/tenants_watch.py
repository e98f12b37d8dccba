"""A running `serve` follows its tenants file: an added, removed or changed `[[tenants]]` entry takes effect without
a restart.

How a change is noticed: both, for different deployments.
- Polling (`[scheduler] tenants_file_poll_seconds`, default 5; 0 turns it off): the size and modification time of
  the config file and of the tenants file are looked at, and when either moved, their SHA-256 decides whether the
  text changed. A Kubernetes config map, a file written by `entra-mcp tenants add` or by a deployment tool, updates
  the file with nobody to send a signal: polling needs no cooperation and costs two stat() calls.
- SIGHUP: read now (the usual "reload your configuration" signal of a daemon; systemd's `ExecReload=kill -HUP`), for
  whoever wants the change applied at once, or with polling off.

What a reload applies: the tenants (entries, and `[tenant_defaults]` merged under them), through `apply(settings)`.
Any other changed key is reported as needing a restart. A file that does not load (TOML syntax, an unknown key, a
missing required key, a tenant named twice) is refused with the error naming the file, the entry and the key, and the
running set of tenants stays as it was; the same broken text is not reported again until it changes.
"""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path
from typing import Callable

from entra_mcp.config import Settings, TenantSettings, load_settings
from entra_mcp.errors import ConfigError
from entra_mcp.logs import get_logger

log = get_logger("sync.tenants_watch")


class TenantRoster:
    """The tenants to sync now; `replace` (a reloaded tenants file) takes effect within ROSTER_CHECK. Thread-safe."""

    def __init__(self, tenants: list[TenantSettings]) -> None:
        self._tenants = {t.name: t for t in tenants}
        self._lock = threading.Lock()
        self.generation = 0

    def current(self) -> list[TenantSettings]:
        with self._lock:
            return list(self._tenants.values())

    def get(self, name: str) -> TenantSettings | None:
        with self._lock:
            return self._tenants.get(name)

    def replace(self, tenants: list[TenantSettings]) -> None:
        with self._lock:
            self._tenants = {t.name: t for t in tenants}
            self.generation += 1


def _stat(path: Path | None) -> tuple[int, int, int] | None:
    if path is None:
        return None
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns)


def _digest(path: Path | None) -> str | None:
    if path is None:
        return None
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None


class TenantsWatch:
    """Reloads `settings.source` (and its tenants file) when their text changes, and hands the new settings to
    `apply`. `check()` looks (cheap when nothing moved); `request()` makes the next `check()` read them whatever the
    files look like (SIGHUP)."""

    def __init__(self, settings: Settings, apply: Callable[[Settings], None],
                 load: Callable[[], Settings] | None = None) -> None:
        self.settings = settings
        self._apply = apply
        self._load = load or (lambda: load_settings(settings.source))
        self._paths = [settings.source, settings.tenants_file]
        self._stats = [_stat(p) for p in self._paths]
        self._digests = [_digest(p) for p in self._paths]
        self._refused: tuple[str | None, ...] | None = None
        self._forced = threading.Event()
        self.reloads = 0

    def request(self) -> None:
        self._forced.set()

    def check(self) -> bool:
        """Reload when the files' text changed (or a reload was requested). True when new settings were applied."""
        forced = self._forced.is_set()
        self._forced.clear()
        stats = [_stat(p) for p in self._paths]
        if stats == self._stats and not forced:
            return False
        self._stats = stats
        digests = [_digest(p) for p in self._paths]
        if digests == self._digests and not forced:
            return False
        key = tuple(digests)
        try:
            new = self._load()
        except ConfigError as exc:
            if key != self._refused or forced:
                self._refused = key
                log.error("the changed tenants were not applied, the %d tenants loaded before are still served: %s",
                          len(self.settings.tenants), exc)
            return False
        self._refused = None
        self._digests = digests
        if new.tenants_file != self.settings.tenants_file:
            self._paths = [new.source, new.tenants_file]
            self._stats = [_stat(p) for p in self._paths]
            self._digests = [_digest(p) for p in self._paths]
        if not new.tenants:
            log.error("the changed configuration has no tenants left; not applied (the %d tenants loaded before are "
                      "still served). Fix: keep at least one [[tenants]] entry", len(self.settings.tenants))
            return False
        rest_old = self.settings.model_dump(exclude={"tenants", "tenants_file", "source"})
        rest_new = new.model_dump(exclude={"tenants", "tenants_file", "source"})
        changed = sorted(k for k in rest_old.keys() | rest_new.keys() if rest_old.get(k) != rest_new.get(k))
        if changed:
            log.warning("the configuration changed outside the tenants too (%s): those changes apply at the next "
                        "restart", ", ".join(changed))
        old = {t.name: t for t in self.settings.tenants}
        now = {t.name: t for t in new.tenants}
        added = [n for n in now if n not in old]
        removed = [n for n in old if n not in now]
        modified = [n for n in now if n in old and now[n] != old[n]]
        if not (added or removed or modified):
            self.settings = self.settings.model_copy(update={"tenants": new.tenants})
            return False
        self.settings = self.settings.model_copy(update={"tenants": new.tenants, "tenants_file": new.tenants_file})
        self._apply(self.settings)
        self.reloads += 1
        log.info("tenants reloaded: %d served (%s)", len(new.tenants), "; ".join(
            f"{what} {', '.join(_some(names))}" for what, names in
            (("added", added), ("removed", removed), ("changed", modified)) if names))
        return True

    def run(self, stop: threading.Event, poll_seconds: float) -> None:
        """Check every `poll_seconds` (0: only when requested) until `stop` is set."""
        while not stop.is_set():
            self._forced.wait(poll_seconds if poll_seconds > 0 else None)
            if stop.is_set():
                return
            try:
                self.check()
            except Exception:  # the server goes on with the tenants it has
                log.exception("reloading the tenants failed")


def _some(names: list[str], shown: int = 10) -> list[str]:
    return names[:shown] + ([f"and {len(names) - shown} more"] if len(names) > shown else [])


__all__ = ["TenantRoster", "TenantsWatch"]
