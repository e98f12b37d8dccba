"""The sync areas' one definition each (entra_mcp/areas.py REGISTRY) and the places that read it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from entra_mcp.config import SyncSettings
from entra_mcp.errors import PermissionDenied
from entra_mcp.mirror import store as store_mod
from entra_mcp.mirror.snapshot import AREA_LABELS, AREAS, AreaStatus
from entra_mcp.mirror.store import COLLECTIONS, MirrorStore
from entra_mcp import areas as A


def test_every_definition_matches_config_and_mirror() -> None:
    switches = SyncSettings.model_fields
    assert AREAS == tuple(a.name for a in A.REGISTRY)
    for area in A.REGISTRY:
        assert area.switch in switches and switches[area.switch].annotation is bool, area.name
        assert COLLECTIONS[area.name] == tuple(c.name for c in area.collections)
        assert AREA_LABELS[area.name] == area.label
        assert area.probe[0].startswith("/") and area.permission
        assert all(A.REGISTRY.index(A.AREA[d]) < A.REGISTRY.index(area) for d in area.depends_on)


def test_disabled_reasons_name_the_grant_or_the_licence() -> None:
    denied = PermissionDenied("no", status=403, graph_code="Authorization_RequestDenied")
    premium = PermissionDenied("no", status=403, graph_code=A.NON_PREMIUM)
    assert A.AREA["applications"].disabled_reason(denied) == "Graph refused (Authorization_RequestDenied): grant Application.Read.All"
    assert A.AREA["domains"].disabled_reason(denied).endswith("grant Domain.Read.All (or Directory.Read.All)")
    assert A.AREA["sign_in_activity"].disabled_reason(premium) == (
        f"Graph refused ({A.NON_PREMIUM}): sign-in activity needs an Entra ID P1/P2 licence in this tenant")
    assert A.AREA["sign_in_activity"].disabled_reason(denied).endswith("grant AuditLog.Read.All")


def _apply(target: A.Target, page: list[dict[str, object]], counter: A.Counter) -> None:
    pass


@pytest.mark.parametrize(
    ("defs", "why"),
    [
        ((A.Area(name="x", label="x", switch="users", permission="P", collections=(A.Collection("x1"),), refresh="delta",
                 probe=("/x", {}), path="/x/delta", apply=_apply),) * 2, "defined twice"),
        ((A.Area(name="x", label="x", switch="users", permission="P", collections=(A.Collection("x1"),), refresh="full",
                 probe=("/x", {}), path="/x"),), "needs path and apply"),
        ((A.Area(name="x", label="x", switch="users", permission="P", collections=(A.Collection("x1"),), refresh="custom",
                 probe=("/x", {}), depends_on=("y",), run=A.run_assignments),), "depends on"),
        ((A.Area(name="x", label="x", switch="users", permission="P", collections=(A.Collection("users"),), refresh="custom",
                 probe=("/x", {}), run=A.run_assignments), A.AREA["users"]), "collections of its own"),
    ],
)
def test_a_wrong_definition_is_refused_with_the_reason(defs: tuple[A.Area, ...], why: str) -> None:
    with pytest.raises(ValueError, match=why):
        A._check(defs)


def test_snapshot_reaches_every_collection_by_name(tmp_path: Path) -> None:
    store = MirrorStore(tmp_path)
    with store.writer("t") as w:
        w.set_tenant(tenant_id="tid", interval_minutes=5)
        w.commit_full("groups", {"groups": {"g1": {"id": "g1", "displayName": "G"}}, "members": {"g1": {"u1": "user"}}},
                      delta_link="dl", status=AreaStatus(enabled=True, object_count=1))
        w.commit_full("domains", {"domains": {"contoso.example": {"id": "contoso.example", "isDefault": True}}},
                      delta_link=None, status=AreaStatus(enabled=True, object_count=1))
    snap = store.load_snapshot("t")
    assert snap is not None
    assert set(snap.collections) == {c for colls in COLLECTIONS.values() for c in colls}
    assert snap.collection("members") == {"g1": {"u1": "user"}} == snap.members
    assert snap.collection("groups")["g1"]["displayName"] == "G"
    assert snap.collection("domains") == {"contoso.example": {"id": "contoso.example", "isDefault": True}}
    assert snap.collection("no_such_collection") == {}
    store.close()


def test_a_mirror_written_before_an_area_existed_loads_with_that_area_never_synced(tmp_path: Path) -> None:
    """What a release adding an area meets: a root without that area. Readers see it as not synced yet, the next
    writer adds it."""
    store = MirrorStore(tmp_path)
    with store.writer("t") as w:
        w.set_tenant(tenant_id="tid", interval_minutes=5)
        w.commit_full("users", {"users": {"u1": {"id": "u1", "displayName": "U"}}}, delta_link="dl",
                      status=AreaStatus(enabled=True, object_count=1))
    with store._cache("t", create=False) as cache:
        assert cache is not None
        root = cache.get(store_mod._ROOT)
        del root["areas"]["domains"]  # as an earlier release, without the domains area, would have written it
        cache.set(store_mod._ROOT, root)
    snap = store.load_snapshot("t")
    assert snap is not None and snap.users["u1"]["displayName"] == "U"
    assert snap.areas["domains"] == AreaStatus(enabled=True) and snap.domains == []
    info = store.info("t")
    assert info is not None and info["areas"]["domains"]["has_delta_link"] is False
    with store.writer("t") as w:
        assert w.status("domains") == AreaStatus(enabled=True) and not w.has_data("domains")
    store.close()


def test_the_readmes_permission_table_says_what_each_area_asks_for() -> None:
    """README "Register the app": each area's row names the permission the area asks for (its disabled reason),
    no permission the area does not ask for, and the licence it needs."""
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    rows = {m.group(1): m.group(2) for m in re.finditer(r"^\| `(\w+)`[^|]*\|[^|]*\| ([^\n]*) \|$", readme, re.M)}
    checked = 0
    for area in A.REGISTRY:
        row = rows.get(area.name)
        if row is None:
            continue  # parts of another area's row (app role assignments, domains)
        asks = set(re.findall(r"\w+\.\w+(?:\.\w+)+", area.permission_text or area.permission))
        named = set(re.findall(r"\w+\.\w+(?:\.\w+)+", row))
        assert area.permission in named and named <= asks, (area.name, row, asks)
        if area.licence is not None:
            assert area.licence.name.split()[-1] in row, (area.name, row)
        checked += 1
    assert checked >= 12
