"""Helpers for the sync tests: the emulator's control API over HTTPS, configs pointing at it, and the comparison of a
mirror snapshot with the emulator's ground truth, object by object and membership by membership."""

from __future__ import annotations

import ssl
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from entra_mcp.config import Settings, parse_settings
from entra_mcp.devtenant.server import RunningEmulator
from entra_mcp.mirror.snapshot import DirectorySnapshot
from entra_mcp.mirror.store import MirrorStore
from entra_mcp import areas as A
from entra_mcp.sync.engine import TenantResult, sync_tenant


class Control:
    """The emulator's control API (/_emulator), spoken over HTTPS like any outside test bed would."""

    def __init__(self, emu: RunningEmulator) -> None:
        self.emu = emu
        self.http = httpx.Client(base_url=f"{emu.base_url}/_emulator", verify=ssl.create_default_context(cafile=str(emu.ca_bundle)), timeout=30)

    def _ok(self, r: httpx.Response) -> Any:
        assert r.status_code < 300, r.text
        return r.json() if r.content else None

    def tid(self, i: int = 0) -> str:
        return self.emu.tenant(i).tenant_id

    def snapshot(self, i: int = 0) -> dict[str, Any]:
        return self._ok(self.http.get(f"/tenants/{self.tid(i)}/snapshot"))  # type: ignore[no-any-return]

    def mutate(self, ops: list[dict[str, Any]], i: int = 0) -> list[Any]:
        body = self._ok(self.http.post(f"/tenants/{self.tid(i)}/mutations", json={"mutations": ops}))
        return body["results"] if isinstance(body, dict) and "results" in body else body  # type: ignore[no-any-return]

    def roles(self, *, grant: list[str] = (), revoke: list[str] = (), i: int = 0) -> Any:  # type: ignore[assignment]
        cid = self.emu.sync_app(i).client_id
        return self._ok(self.http.post(f"/tenants/{self.tid(i)}/registrations/{cid}/roles", json={"grant": list(grant), "revoke": list(revoke)}))

    def faults(self, **kw: Any) -> Any:
        return self._ok(self.http.post("/faults", json=kw))

    def clock(self, seconds: float) -> Any:
        return self._ok(self.http.post("/clock", json={"seconds": seconds}))

    def close(self) -> None:
        self.http.close()


@pytest.fixture
def control_of() -> Any:
    made: list[Control] = []

    def make(emu: RunningEmulator) -> Control:
        c = Control(emu)
        made.append(c)
        return c

    yield make
    for c in made:
        c.close()


def write_config(emu: RunningEmulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *, tenant_index: int | None = 0, extra: str = "") -> tuple[Path, Settings]:
    """config.toml for the emulator (cache under tmp_path/cache), its secrets exported; returns (path, settings)."""
    text = emu.config_toml(tenant_index=tenant_index, cache_dir=tmp_path / "cache") + "\n" + extra
    path = tmp_path / "config.toml"
    path.write_text(text, encoding="utf-8")
    for k, v in emu.secret_env(tenant_index).items():
        monkeypatch.setenv(k, v)
    return path, parse_settings(tomllib.loads(text), source=path)


def run_sync(settings: Settings, store: MirrorStore, *, i: int = 0, full: bool = False, **kw: Any) -> TenantResult:
    return anyio.run(lambda: sync_tenant(settings.tenants[i], store, full=full, **kw))


def _project(obj: dict[str, Any], fields: tuple[str, ...]) -> dict[str, Any]:
    return {f: obj.get(f) for f in fields}


def assert_mirror_matches(snap: DirectorySnapshot | None, truth: dict[str, Any], *, areas: tuple[str, ...] = ("users", "groups", "applications", "service_principals", "app_role_assignments")) -> None:
    """The mirror holds exactly the emulator's live objects, with the synced properties equal, and exactly its
    memberships; assignments equal for every service principal the sync covers."""
    assert snap is not None, "no mirror"
    if "users" in areas:
        want = {u["id"]: {**_project(u, A.USER_FIELDS), "managerId": u.get("managerId")} for u in truth["users"]}
        got = {uid: {**_project(u, A.USER_FIELDS), "managerId": u.get("managerId")} for uid, u in snap.users.items()}
        assert set(got) == set(want), f"users differ: missing {set(want) - set(got)}, extra {set(got) - set(want)}"
        for uid, w in want.items():
            assert got[uid] == w, f"user {uid} differs: {[k for k in w if got[uid].get(k) != w[k]]}"
    if "groups" in areas:
        want_g = {g["id"]: _project(g, A.GROUP_FIELDS) for g in truth["groups"]}
        got_g = {gid: _project(g, A.GROUP_FIELDS) for gid, g in snap.groups.items()}
        assert set(got_g) == set(want_g), f"groups differ: missing {set(want_g) - set(got_g)}, extra {set(got_g) - set(want_g)}"
        for gid, w in want_g.items():
            assert got_g[gid] == w, f"group {gid} differs"
        want_m = {gid: m for gid, m in truth["members"].items() if m}
        assert snap.members.keys() == want_m.keys(), "groups with members differ"
        for gid, m in want_m.items():
            assert snap.members[gid] == m, f"members of {gid} differ: missing {set(m) - set(snap.members[gid])}, extra {set(snap.members[gid]) - set(m)}"
    if "applications" in areas:
        want_a = {a["id"]: _project(a, A.APPLICATION_FIELDS) for a in truth["applications"]}
        assert {k: _project(v, A.APPLICATION_FIELDS) for k, v in snap.applications.items()} == want_a
    if "service_principals" in areas:
        want_s = {s["id"]: _project(s, A.SERVICE_PRINCIPAL_FIELDS) for s in truth["servicePrincipals"]}
        assert {k: _project(v, A.SERVICE_PRINCIPAL_FIELDS) for k, v in snap.service_principals.items()} == want_s
    if "app_role_assignments" in areas:
        own = {a["appId"] for a in truth["applications"]}
        covered = {s["id"] for s in truth["servicePrincipals"] if A.needs_assignments(s, own)}
        want_r: dict[str, set[tuple[Any, ...]]] = {}
        for a in truth["appRoleAssignments"]:
            if a["resourceId"] in covered:
                want_r.setdefault(a["resourceId"], set()).add((a["id"], a["principalId"], a["principalType"], a["appRoleId"]))
        got_r = {sid: {(a["id"], a["principalId"], a["principalType"], a["appRoleId"]) for a in rows} for sid, rows in snap.app_role_assignments.items()}
        assert got_r == want_r
    if "domains" in areas:
        keep = ("id", "isDefault", "isVerified", "passwordValidityPeriodInDays", "passwordNotificationWindowInDays")
        assert sorted((_project(d, keep) for d in snap.domains), key=str) == sorted((_project(d, keep) for d in truth["domains"]), key=str)


@dataclass
class SyncedViews:
    """A small emulator synced once, and a ViewProvider over its mirror that records every full index build."""

    control: Control
    settings: Settings
    store: MirrorStore
    views: Any  # entra_mcp.views.ViewProvider
    built: list[int]  # the data version of each snapshot indexed by a full build


def synced_views(fresh_emulator: Any, control_of: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *,
                 seed: int) -> SyncedViews:
    from entra_mcp.identity.view import DirectoryView
    from entra_mcp.views import ViewProvider

    emu = fresh_emulator(size="small", seed=seed)
    ctl = control_of(emu)
    _, settings = write_config(emu, tmp_path, monkeypatch)
    store = MirrorStore(settings.server.cache_dir)
    assert run_sync(settings, store).ok
    built: list[int] = []

    def build(snapshot: Any) -> Any:
        built.append(snapshot.version)
        return DirectoryView.build(snapshot)

    views = ViewProvider.from_settings(settings, store, build=build, check_interval=0, background_reload=False)
    return SyncedViews(ctl, settings, store, views, built)
