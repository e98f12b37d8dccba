"""`entra-mcp status`: per tenant and area, enabled or disabled with the reason, last success, last error, object
counts and age, from the mirror alone (no network). With several replicas (`[server.store] snapshot_dir`) also which
replica leads each tenant's sync and the newest published version, read from Redis (a short timeout; unreachable is
said, not fatal). Prints on stdout; exit 0 even when a mirror cannot be read.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from entra_mcp.config import Settings, load_settings
from entra_mcp.errors import EntraMcpError, MirrorError

if TYPE_CHECKING:
    from entra_mcp.mirror.store import MirrorStore

NAME = "status"
HELP = "per tenant and area: enabled, last success, last error, counts, age"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="machine-readable output")


def status_report(settings: Settings, store: MirrorStore, *, now: datetime | None = None,
                  shared: Any = None) -> dict[str, Any]:
    """What `status --json` prints: per tenant its configuration's identity and its mirror as identity/status.py's
    `mirror_report` renders it (the same rendering as the sync_status tool's); no secrets. With `shared` (the
    [server.store] connection) and a snapshot_dir, each tenant gains `replication` (cluster/replica.py
    replication_report)."""
    from entra_mcp.areas import REGISTRY
    from entra_mcp.identity.status import mirror_report
    from entra_mcp.identity.text import iso  # the one time format of every answer (...Z)

    now = now or datetime.now(timezone.utc)
    tenants = []
    for t in settings.tenants:
        try:
            info, mirror_error = store.info(t.name), None
        except MirrorError as exc:  # a full or read-only disk: report it per tenant, status itself still answers
            info, mirror_error = None, str(exc)
        turned_on = {defn.name: bool(getattr(t.sync, defn.switch)) for defn in REGISTRY}
        tenants.append({
            "name": t.name,
            "tenantId": t.tenant_id,
            "cloud": t.cloud,
            "graphUrl": t.graph_host,
            "mirror": str(store.tenant_dir(t.name)),
            "mirrorError": mirror_error,
            **mirror_report(info, turned_on=turned_on, interval_minutes=t.sync.interval_minutes, now=now),
            **({"replication": _replication(shared, store, t.name)}
               if shared is not None and settings.server.store.snapshot_dir is not None else {}),
        })
    return {"generatedAt": iso(now), "tenants": tenants}


def _replication(shared: Any, store: MirrorStore, name: str) -> dict[str, Any]:
    from entra_mcp.cluster.replica import replication_report

    return replication_report(shared, store, name)


def _open_shared(settings: Settings) -> Any:
    """The [server.store] connection when several replicas share a snapshot directory (no I/O yet), else None."""
    if settings.server.store.snapshot_dir is None or not settings.server.store.shared:
        return None
    from entra_mcp.sharedstore.connection import SharedRedis

    try:
        return SharedRedis.from_settings(settings.server.store)
    except EntraMcpError as exc:  # e.g. the password variable unset: status still reports the mirror
        sys.stderr.write(f"replication status unavailable: {exc}\n")
        return None


def _replication_line(rep: dict[str, Any]) -> str:
    serving = rep["serving"]
    here = f"this cache holds version {serving['version']} (token {serving['token']})" if serving else "this cache holds no published version"
    if rep["redisError"]:
        return f"sync leader unknown ({rep['redisError']}); {here}"
    pub = rep["published"]
    newest = (f"newest published version {pub['version']} (token {pub['token']}, asOf {pub['asOf']})" if pub
              else "nothing published yet")
    leader = f"sync leader {rep['leader']} (token {rep['fencingToken']})" if rep["leader"] else "no sync leader now"
    line = f"{leader}; {newest}; {here}{'' if rep['inSync'] else ', not the newest'}"
    sign_ins = rep.get("signIns") or {}
    if sign_ins.get("published"):
        line += (f"; sign-in events published as of {sign_ins['published']['asOf']}"
                 f"{', held here' if sign_ins.get('inSync') else ', not held here yet'}")
    return line


def _fmt_age(seconds: float | None) -> str:
    if seconds is None:
        return "never"
    if seconds < 120:
        return f"{seconds:.0f}s ago"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m ago"
    if seconds < 172800:
        return f"{seconds / 3600:.1f}h ago"
    return f"{seconds / 86400:.1f}d ago"


def run(args: argparse.Namespace) -> int:
    from entra_mcp.mirror.store import MirrorStore

    settings = load_settings(getattr(args, "config", None), check_files=False)  # it only reads the mirror
    store = MirrorStore(settings.server.cache_dir)
    shared = _open_shared(settings)
    try:
        report = status_report(settings, store, shared=shared)
    finally:
        store.close()
        if shared is not None:
            shared.close()
    if getattr(args, "json", False):
        sys.stdout.write(json.dumps(report, indent=2) + "\n")
        return 0
    out = sys.stdout
    if not report["tenants"]:
        out.write("no tenants configured\n")
    for t in report["tenants"]:
        state = f"synced {_fmt_age(t['ageSeconds'])} (version {t['version']})" if t["synced"] else "never synced"
        out.write(f"tenant {t['name']} ({t['tenantId']}, cloud {t['cloud']}): {state}; mirror {t['mirror']}\n")
        if t["mirrorError"]:
            out.write(f"  mirror unreadable: {t['mirrorError']}\n")
        if t["lastError"]:
            out.write(f"  last error {t['lastErrorAt']} (every failing area): {t['lastError']}\n")
        rep = t.get("replication")
        if rep is not None:
            out.write(f"  {_replication_line(rep)}\n")
        run = t["lastRun"]
        if run:
            out.write(f"  last run {run['at']}: {'full' if run['full'] else 'delta'}, {'ok' if run['ok'] else 'with failures'},"
                      f" {run['seconds']:.1f}s, {run['requests']} requests, {run['retries']} retries, {run['throttled']} throttled\n")
        for area, a in t["areas"].items():
            if not a["enabled"]:
                line = f"disabled: {a['disabledReason']}"
            elif a["lastSuccess"] is None:
                line = "enabled, not synced yet"
            else:
                extra = f", {a['memberships']:,} memberships" if "memberships" in a else ""
                count = f"{a['objectCount']:,}" if a["objectCount"] is not None else "?"
                line = f"ok, {count} objects{extra}, last success {_fmt_age(a['ageSeconds'])} ({a['mode']})"
            if a["lastError"] and a["enabled"]:
                line += f"; last error {a['lastErrorAt']}: {a['lastError']}"
            out.write(f"  {area:<22} {line}\n")
    return 0


__all__ = ["HELP", "NAME", "add_arguments", "run", "status_report"]
