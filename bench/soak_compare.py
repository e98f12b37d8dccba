"""Compare a mirror snapshot with the emulator's ground truth, object by object and membership by membership.

`mirror_differences(snapshot, truth)` returns a list of human-readable differences (empty: identical). `truth` is
the emulator's `EmulatedTenant.snapshot()` (also `GET /_emulator/tenants/{tid}/snapshot`). Only the properties the
sync selects are compared; memberships are compared per group, assignments per service principal the sync covers.
Used by bench/soak.py and the endurance and crash tests.
"""

from __future__ import annotations

from typing import Any

from entra_mcp.mirror.snapshot import DirectorySnapshot
from entra_mcp import areas as A

MAX_LISTED = 20  # differences listed per kind; the count says how many there were


def _project(obj: dict[str, Any], fields: tuple[str, ...]) -> dict[str, Any]:
    return {f: obj.get(f) for f in fields}


def _compare(kind: str, want: dict[str, Any], got: dict[str, Any], out: list[str]) -> None:
    missing = sorted(set(want) - set(got))
    extra = sorted(set(got) - set(want))
    changed = sorted(k for k in set(want) & set(got) if want[k] != got[k])
    for label, keys in (("missing from the mirror", missing), ("in the mirror but gone", extra)):
        if keys:
            out.append(f"{kind}: {len(keys)} {label}: {', '.join(keys[:MAX_LISTED])}")
    for k in changed[:MAX_LISTED]:
        w, g = want[k], got[k]
        if isinstance(w, dict) and isinstance(g, dict):
            fields = sorted(f for f in set(w) | set(g) if w.get(f) != g.get(f))
            out.append(f"{kind} {k} differs in {', '.join(map(str, fields[:10]))}")
        else:
            out.append(f"{kind} {k} differs")
    if len(changed) > MAX_LISTED:
        out.append(f"{kind}: {len(changed)} differ in all")


def mirror_differences(snap: DirectorySnapshot | None, truth: dict[str, Any], *, assignments: bool = True) -> list[str]:
    """assignments=False leaves out app role assignments (a delta run refreshes only those of service principals
    that changed; the rest are refreshed in full every ASSIGNMENTS_FULL_REFRESH_MINUTES)."""
    if snap is None:
        return ["no mirror (never synced, or unreadable)"]
    out: list[str] = []
    _compare(
        "user",
        {u["id"]: {**_project(u, A.USER_FIELDS), "managerId": u.get("managerId")} for u in truth["users"]},
        {k: {**_project(u, A.USER_FIELDS), "managerId": u.get("managerId")} for k, u in snap.users.items()},
        out,
    )
    _compare("group", {g["id"]: _project(g, A.GROUP_FIELDS) for g in truth["groups"]},
             {k: _project(g, A.GROUP_FIELDS) for k, g in snap.groups.items()}, out)
    _compare("members of group", {gid: dict(m) for gid, m in truth["members"].items() if m},
             {gid: dict(m) for gid, m in snap.members.items() if m}, out)
    _compare("application", {a["id"]: _project(a, A.APPLICATION_FIELDS) for a in truth["applications"]},
             {k: _project(a, A.APPLICATION_FIELDS) for k, a in snap.applications.items()}, out)
    _compare("service principal", {s["id"]: _project(s, A.SERVICE_PRINCIPAL_FIELDS) for s in truth["servicePrincipals"]},
             {k: _project(s, A.SERVICE_PRINCIPAL_FIELDS) for k, s in snap.service_principals.items()}, out)
    if not assignments:
        return out
    own = {a["appId"] for a in truth["applications"]}
    covered = {s["id"] for s in truth["servicePrincipals"] if A.needs_assignments(s, own)}
    want_r: dict[str, Any] = {}
    for a in truth["appRoleAssignments"]:
        if a["resourceId"] in covered:
            want_r.setdefault(a["resourceId"], set()).add((a["id"], a["principalId"], a["principalType"], a["appRoleId"]))
    got_r = {sid: {(a["id"], a["principalId"], a["principalType"], a["appRoleId"]) for a in rows}
             for sid, rows in snap.app_role_assignments.items() if rows}
    _compare("app role assignments of", {k: sorted(v) for k, v in want_r.items()}, {k: sorted(v) for k, v in got_r.items()}, out)
    return out


def truth_counts(truth: dict[str, Any]) -> dict[str, int]:
    return {
        "users": len(truth["users"]), "groups": len(truth["groups"]),
        "memberships": sum(len(m) for m in truth["members"].values()),
        "applications": len(truth["applications"]), "servicePrincipals": len(truth["servicePrincipals"]),
        "appRoleAssignments": len(truth["appRoleAssignments"]),
    }


__all__ = ["mirror_differences", "truth_counts"]
