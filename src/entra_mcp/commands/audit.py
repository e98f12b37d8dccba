"""`entra-mcp audit [--user U] [--caller C] [--since T] [--until T] [--verify] [--json]`: who looked up this user,
what did this caller look at, between these times; `--verify` checks the trail's hash chain.

`--user` takes a UPN, name or object id: it is resolved through the mirror (every configured tenant, or `--tenant`),
and the records that touched any of the matching objects are listed; an id is also matched as given. `--caller`
matches the caller's UPN, object id, tid/oid, API key name or (local calls) login name. Human-readable lines by
default, `--json` one JSON document. Progress goes to stderr for big trails. Exit 0 done (verify: the chain holds),
1 the chain is broken, 2 bad usage or configuration.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from entra_mcp.audit.read import parse_time, read_lines, select, total_size, verify
from entra_mcp.config import Settings, load_settings
from entra_mcp.errors import InvalidArgument, NotFoundError

NAME = "audit"
HELP = "who looked up a user, what a caller looked at, between two times; --verify checks the trail's chain"

MAX_RESOLVED = 50


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--user", metavar="U", help="records that touched this user (UPN, mail, name or object id)")
    p.add_argument("--caller", metavar="C", help="records of this caller (UPN, object id, tid/oid or API key name)")
    p.add_argument("--since", metavar="T", help="from this time: ISO (2026-12-01T08:00Z) or back from now (6h, 3d)")
    p.add_argument("--until", metavar="T", help="up to this time (same forms as --since)")
    p.add_argument("--tenant", metavar="NAME", help="resolve --user in this tenant only")
    p.add_argument("--verify", action="store_true", help="check the hash chain; name the first broken line")
    p.add_argument("--json", action="store_true", help="machine-readable output")


def _progress(done: int, total: int) -> None:
    print(f"audit: read {done / 1e6:.0f} of {total / 1e6:.0f} MB", file=sys.stderr, flush=True)


def resolve_user(settings: Settings, user: str, tenant: str | None) -> tuple[set[str], list[dict[str, Any]]]:
    """The object ids `user` designates in the mirror (each tenant, or `tenant`), and who they are."""
    from entra_mcp import identity
    from entra_mcp.mirror.store import MirrorStore
    from entra_mcp.views import ViewProvider

    ids = {user.strip()}
    people: list[dict[str, Any]] = []
    store = MirrorStore(settings.server.cache_dir)
    try:
        views = ViewProvider.from_settings(settings, store, cache=True, background_reload=False)
        names = [views.resolve(tenant)] if tenant else views.names
        for name in names:
            tv = views.current(name)
            if tv.view is None:
                continue
            try:
                found = identity.lookup_user(tv.view, user, MAX_RESOLVED)
            except (NotFoundError, InvalidArgument):
                continue
            for m in found.get("matches") or ():
                ids.add(str(m.get("id")))
                people.append({"tenant": name, "id": m.get("id"), "userPrincipalName": m.get("userPrincipalName"),
                               "displayName": m.get("displayName"), "matchType": found.get("matchType")})
    finally:
        close = getattr(store, "close", None)
        if close is not None:
            close()
    return ids, people


def _line(rec: dict[str, Any]) -> str:
    caller = rec.get("caller") or {}
    who = caller.get("upn") or caller.get("keyName") or caller.get("name") or caller.get("oid") or caller.get("kind")
    parts = [str(rec.get("time")), f"{rec.get('event')}", f"caller={who}"]
    for key in ("tool", "tenant", "outcome", "errorCode", "ticketId", "transport"):
        if rec.get(key) is not None:
            parts.append(f"{key}={rec[key]}")
    if rec.get("objects"):
        objs = rec["objects"]
        parts.append(f"objects={','.join(objs[:5])}" + (f"(+{len(objs) - 5})" if len(objs) > 5 else ""))
    if rec.get("findings"):
        parts.append(f"findings={','.join(rec['findings'][:5])}")
    if rec.get("latencyMs") is not None:
        parts.append(f"{rec['latencyMs']}ms")
    return " ".join(" ".join(str(p).split()) for p in parts)  # one line each: recorded text cannot fake more


def run(args: argparse.Namespace) -> int:
    settings = load_settings(getattr(args, "config", None), check_files=False)
    audit = settings.server.audit
    path: Path = audit.resolved_path(settings.server.cache_dir)
    big = total_size(path) > 64 * 1024 * 1024
    progress = _progress if big else None
    if args.verify:
        verdict = verify(path, progress)
        if args.json:
            print(json.dumps({"path": str(path), **verdict.as_dict()}, indent=2))
        elif verdict.ok:
            print(f"audit trail {path}: chain intact ({verdict.records} records in {verdict.files} file(s))")
            for note in verdict.notes:
                print(f"  note: {note}")
        else:
            where = f"{verdict.broken_file} line {verdict.broken_line}" if verdict.broken_line else verdict.broken_file
            print(f"audit trail {path}: chain BROKEN at {where}: {verdict.reason}")
        if not (args.user or args.caller or args.since or args.until):
            return 0 if verdict.ok else 1
    now = datetime.now(timezone.utc)
    try:
        since = parse_time(args.since, now) if args.since else None
        until = parse_time(args.until, now) if args.until else None
    except ValueError as exc:
        print(f"entra-mcp audit: {exc}", file=sys.stderr)
        return 2
    objects = None
    people: list[dict[str, Any]] = []
    if args.user:
        try:
            objects, people = resolve_user(settings, args.user, args.tenant)
        except (NotFoundError, InvalidArgument) as exc:
            print(f"entra-mcp audit: {exc}", file=sys.stderr)
            return 2
    if not path.exists() and not path.parent.exists():
        print(f"entra-mcp audit: no audit trail at {path} yet (nothing recorded; see [server.audit])", file=sys.stderr)
    records = list(select(read_lines(path, progress), since=since, until=until, objects=objects, caller=args.caller))
    if args.json:
        print(json.dumps({"path": str(path), "user": people if args.user else None, "records": records}, indent=2,
                         ensure_ascii=False))
        return 0
    if args.user:
        if people:
            print(f"{args.user!r} is: " + "; ".join(f"{p['displayName']} <{p['userPrincipalName']}> ({p['tenant']}, "
                                                     f"{p['id']})" for p in people[:10]))
        else:
            print(f"{args.user!r} matches no user in the mirror; records naming it as an object id are listed")
    for rec in records:
        print(_line(rec))
    print(f"{len(records)} record(s)", file=sys.stderr)
    return 0


__all__ = ["NAME", "HELP", "add_arguments", "run", "resolve_user"]
