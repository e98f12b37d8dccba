"""Delta queries of the emulated Graph over real HTTPS: full rounds, incremental rounds after mutations,
@removed changed/deleted, members@delta split across pages, empty pages, replays, return=minimal,
$deltatoken=latest and refused (expired, reset, invalid) delta links."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from entra_mcp.devtenant.server import RunningEmulator
from tests._graph_fixtures import apply_delta, control, graph, mutate, pages


def round_from(c: httpx.Client, url: str, params: dict[str, str] | None = None,
               headers: dict[str, str] | None = None) -> tuple[list[dict[str, Any]], str]:
    got = pages(c, url, params, headers)
    assert all("@odata.deltaLink" not in p for p in got[:-1]), "deltaLink only on the last page"
    assert "@odata.deltaLink" in got[-1] and "@odata.nextLink" not in got[-1]
    return got, got[-1]["@odata.deltaLink"]


def items(round_pages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [x for p in round_pages for x in p["value"]]


@pytest.fixture
def emu(fresh_emulator: Any) -> RunningEmulator:
    e: RunningEmulator = fresh_emulator()
    return e


def test_users_full_round_then_exact_changes(emu: RunningEmulator) -> None:
    tenant = emu.tenant()
    control(emu, "POST", "/faults", {"delta_users_page_size": 7})
    mirror: dict[str, dict[str, Any]] = {}
    with graph(emu) as c:
        first, link = round_from(c, "/users/delta", {"$select": "displayName,accountEnabled,jobTitle,manager"})
        assert any(not p["value"] and "@odata.nextLink" in p for p in first), "an empty page still carries a nextLink"
        seen = [x["id"] for x in items(first)]
        assert len(seen) > len(set(seen)), "an object repeated on a later page"
        apply_delta(mirror, None, first)
        apply_delta(mirror, None, first)  # a replay changes nothing
        assert set(mirror) == set(tenant.users)
        for uid, u in mirror.items():
            mgr = tenant.managers.get(uid)
            assert u["manager"] == ({"id": mgr} if mgr else None)
            assert set(u) == {"id", "displayName", "accountEnabled", "jobTitle", "manager"}

        ids = sorted(tenant.users)
        u_upd, u_dis, u_soft, u_hard, u_mgr, u_back = ids[:6]
        new_mgr = ids[10]
        # deleting a manager takes them off their reports (who then change too)
        orphaned = {r for r, m in tenant.managers.items() if m in (u_soft, u_hard, u_back)}
        made = mutate(emu,
                      {"op": "update_user", "id": u_upd, "set": {"jobTitle": "Chief Tea Officer"}},
                      {"op": "disable_user", "id": u_dis},
                      {"op": "soft_delete", "id": u_soft},
                      {"op": "hard_delete", "id": u_hard},
                      {"op": "set_manager", "user": u_mgr, "manager": new_mgr},
                      {"op": "soft_delete", "id": u_back}, {"op": "restore", "id": u_back},
                      {"op": "create_user", "set": {"displayName": "New Starter", "userPrincipalName": f"new.starter@{tenant.domain}"}})
        new_id = made[-1]["id"]
        second, link2 = round_from(c, link)
        changed = {x["id"]: x for x in items(second)}
        assert set(changed) == {u_upd, u_dis, u_soft, u_hard, u_mgr, u_back, new_id} | orphaned
        assert all(changed[r]["manager"] is None for r in orphaned - {u_soft, u_hard, u_mgr})
        assert changed[u_soft]["@removed"] == {"reason": "changed"}
        assert changed[u_hard]["@removed"] == {"reason": "deleted"}
        assert changed[u_upd]["jobTitle"] == "Chief Tea Officer"
        assert changed[u_dis]["accountEnabled"] is False
        assert changed[u_mgr]["manager"] == {"id": new_mgr}
        apply_delta(mirror, None, second)
        assert set(mirror) == set(tenant.users)
        assert {u: m["manager"] for u, m in mirror.items()} == {
            u: ({"id": tenant.managers[u]} if u in tenant.managers else None) for u in tenant.users}
        assert mirror[new_id]["displayName"] == "New Starter"
        # nothing changed since: an empty round
        third, _ = round_from(c, link2)
        assert items(third) == []
        # soft-deleted objects are gone from lists and from GET by id
        assert c.get(f"/users/{u_soft}").status_code == 404
        listed = {u["id"] for p in pages(c, "/users", {"$top": "999", "$select": "id"}) for u in p["value"]}
        assert u_soft not in listed and new_id in listed


def test_groups_members_delta_split_and_merged(emu: RunningEmulator) -> None:
    tenant = emu.tenant()
    control(emu, "POST", "/faults", {"delta_groups_page_units": 12})
    groups: dict[str, dict[str, Any]] = {}
    members: dict[str, set[str]] = {}
    with graph(emu) as c:
        first, link = round_from(c, "/groups/delta", {"$select": "displayName,description,members"})
        apply_delta(groups, members, first)
        assert set(groups) == set(tenant.groups)
        assert {g: m for g, m in members.items() if m} == {g: set(m) for g, m in tenant.members.items() if m}
        big = max(tenant.members, key=lambda g: len(tenant.members[g]))
        pages_with_big = [p for p in first if any(x["id"] == big and "members@delta" in x for x in p["value"])]
        assert len(pages_with_big) > 1, "a large group's members are split across pages"
        empty = [g for g in tenant.groups if not tenant.members.get(g)]
        for x in items(first):
            if x["id"] in empty:
                assert "members@delta" not in x

        users = sorted(tenant.users)
        gid = sorted(g for g in tenant.members if tenant.members[g])[0]
        gone = next(iter(tenant.members[gid]))
        joiner = next(u for u in users if u not in tenant.members[gid])
        other = sorted(tenant.groups)[-1] if sorted(tenant.groups)[-1] != gid else sorted(tenant.groups)[-2]
        made = mutate(emu,
                      {"op": "add_member", "group": gid, "member": joiner},
                      {"op": "remove_member", "group": gid, "member": gone},
                      {"op": "update_group", "id": other, "set": {"description": "renamed"}},
                      {"op": "create_group", "set": {"displayName": "Tiger Team"}, "members": users[:3]})
        tiger = made[-1]["id"]
        second, link2 = round_from(c, link, headers=None)
        by_id: dict[str, list[dict[str, Any]]] = {}
        for x in items(second):
            by_id.setdefault(x["id"], []).append(x)
        assert set(by_id) >= {gid, other, tiger}
        refs = [r for x in by_id[gid] for r in x.get("members@delta", [])]
        assert {"@odata.type": "#microsoft.graph.user", "id": joiner} in refs
        assert {"@odata.type": "#microsoft.graph.user", "id": gone, "@removed": {"reason": "deleted"}} in refs
        if other not in (tiger, gid):
            assert all("members@delta" not in x for x in by_id[other]), "no member change: no members@delta"
        apply_delta(groups, members, second)
        assert {g: m for g, m in members.items() if m} == {g: set(m) for g, m in tenant.members.items() if m}
        assert groups[other]["description"] == "renamed"

        mutate(emu, {"op": "soft_delete", "id": tiger})
        third, _ = round_from(c, link2)
        assert {"id": tiger, "@removed": {"reason": "changed"}} in items(third)


def test_return_minimal_and_latest(emu: RunningEmulator) -> None:
    tenant = emu.tenant()
    uid = sorted(tenant.users)[3]
    with graph(emu) as c:
        r = c.get("/users/delta", params={"$deltatoken": "latest"})
        body = r.json()
        assert r.status_code == 200 and body["value"] == [] and "@odata.nextLink" not in body
        link = body["@odata.deltaLink"]
        mutate(emu, {"op": "update_user", "id": uid, "set": {"jobTitle": "Night Owl", "department": "Nocturnal"}})
        r = c.get(link, headers={"Prefer": "return=minimal"})
        assert r.headers.get("Preference-Applied") == "return=minimal"
        got = r.json()
        assert got["value"] == [{"id": uid, "jobTitle": "Night Owl"}], "only changed, requested properties"
        full = c.get(link).json()["value"]
        assert len(full) == 1 and full[0]["displayName"] == tenant.users[uid]["displayName"]


def test_applications_and_service_principals_delta(emu: RunningEmulator) -> None:
    tenant = emu.tenant()
    with graph(emu) as c:
        _, app_link = round_from(c, "/applications/delta")
        _, sp_link = round_from(c, "/servicePrincipals/delta", {"$select": "displayName,accountEnabled"})
        app_id = sorted(tenant.applications)[0]
        sp_id = sorted(tenant.service_principals)[0]
        made = mutate(emu, {"op": "add_password_credential", "id": app_id, "displayName": "rotation"},
                      {"op": "update_service_principal", "id": sp_id, "set": {"accountEnabled": False}})
        assert made[0]["secretText"] and made[0]["credential"]["hint"] == made[0]["secretText"][:3]
        apps, _ = round_from(c, app_link)
        (app,) = items(apps)
        cred = next(x for x in app["passwordCredentials"] if x["displayName"] == "rotation")
        assert cred["secretText"] is None and cred["hint"] == made[0]["secretText"][:3]
        sps, _ = round_from(c, sp_link)
        assert items(sps) == [{"id": sp_id, "displayName": tenant.service_principals[sp_id]["displayName"], "accountEnabled": False}]


def test_refused_delta_links(emu: RunningEmulator) -> None:
    tenant = emu.tenant()
    with graph(emu) as c:
        _, link = round_from(c, "/users/delta", {"$select": "displayName"})
        assert c.get(link).status_code == 200
        control(emu, "POST", "/faults", {"expire_delta_tokens": True})
        r = c.get(link)
        assert r.status_code == 410
        assert r.headers["Location"].endswith("/v1.0/users/delta?$deltatoken=")
        control(emu, "POST", "/faults", {"delta_expiry_response": "syncStateNotFound"})
        r = c.get(link)
        assert r.status_code == 400 and r.json()["error"]["code"] == "syncStateNotFound"
        control(emu, "POST", "/faults", {"delta_expiry_response": "resyncRequired"})
        assert c.get("/users/delta", params={"$deltatoken": "forged.token"}).json()["error"]["code"] == "resyncRequired"
        # a fresh link works, until it is 7 days old in emulator time
        _, fresh = round_from(c, "/users/delta", {"$select": "displayName"})
        control(emu, "POST", "/clock", {"seconds": 6 * 86400})
        assert c.get(fresh).status_code == 200
        control(emu, "POST", "/clock", {"seconds": 2 * 86400})
        assert c.get(fresh).status_code == 400
        # another tenant's or area's link is refused too
        groups_link = fresh.replace("/users/delta", "/groups/delta")
        assert c.get(groups_link).status_code == 400
        assert len(tenant.users) > 0


def test_delta_query_options(emu: RunningEmulator) -> None:
    tenant = emu.tenant()
    a, b = sorted(tenant.users)[:2]
    with graph(emu) as c:
        got, _ = round_from(c, "/users/delta", {"$filter": f"id eq '{a}' or id eq '{b}'", "$select": "displayName"})
        assert {x["id"] for x in items(got)} == {a, b}
        for bad in ({"$top": "5"}, {"$orderby": "displayName"}, {"$filter": "displayName eq 'x'"}):
            r = c.get("/users/delta", params=bad)
            assert r.status_code == 400 and r.json()["error"]["code"] == "Request_UnsupportedQuery", bad
        r = c.get("/users/delta", params={"$select": "signInActivity"})
        assert r.status_code == 400


def test_random_mutations_keep_a_delta_mirror_exact(emu: RunningEmulator) -> None:
    """Rounds of random mutations; after each delta round the client's mirror equals the ground truth."""
    import random

    rng = random.Random(20261126)
    tenant = emu.tenant()
    tid = tenant.tenant_id
    control(emu, "POST", "/faults", {"delta_users_page_size": 9, "delta_groups_page_units": 15,
                                     "delta_groups_page_size": 4})
    users: dict[str, dict[str, Any]] = {}
    groups: dict[str, dict[str, Any]] = {}
    members: dict[str, set[str]] = {}
    user_sel = {"$select": "displayName,jobTitle,accountEnabled,manager"}
    with graph(emu) as c:
        got, ulink = round_from(c, "/users/delta", user_sel)
        apply_delta(users, None, got)
        got, glink = round_from(c, "/groups/delta", {"$select": "displayName,members"})
        apply_delta(groups, members, got)
        soft: list[str] = []
        for step in range(4):
            snap = control(emu, "GET", f"/tenants/{tid}/snapshot")
            uids = sorted(u["id"] for u in snap["users"])
            gids = sorted(g["id"] for g in snap["groups"])
            ops: list[dict[str, Any]] = []
            for _ in range(25):
                kind = rng.choice(["title", "disable", "manager", "add", "remove", "soft", "hard", "restore", "create"])
                u, g = rng.choice(uids), rng.choice(gids)
                if kind == "title":
                    ops.append({"op": "update_user", "id": u, "set": {"jobTitle": f"t{step}-{rng.randint(0, 99)}"}})
                elif kind == "disable":
                    ops.append({"op": "disable_user", "id": u})
                elif kind == "manager":
                    ops.append({"op": "set_manager", "user": u, "manager": rng.choice([None, rng.choice(uids)])})
                elif kind == "add":
                    ops.append({"op": "add_member", "group": g, "member": u})
                elif kind == "remove":
                    mems = sorted(snap["members"].get(g, {}))
                    if mems:
                        ops.append({"op": "remove_member", "group": g, "member": rng.choice(mems)})
                elif kind in ("soft", "hard") and len(uids) > 10:
                    ops.append({"op": "soft_delete" if kind == "soft" else "hard_delete", "id": u})
                    uids.remove(u)
                    if kind == "soft":
                        soft.append(u)
                elif kind == "restore" and soft:
                    ops.append({"op": "restore", "id": soft.pop()})
                elif kind == "create":
                    ops.append({"op": "create_user", "set": {"displayName": f"Temp {step} {rng.random():.6f}",
                                                             "userPrincipalName": f"t{rng.getrandbits(40)}@{tenant.domain}"}})
            for op in ops:  # one by one: an op may refer to an object an earlier op removed
                with httpx.Client(base_url=f"{emu.base_url}/_emulator", verify=emu.ssl_context()) as ctl:
                    ctl.post(f"/tenants/{tid}/mutations", json=[op])
            got, ulink = round_from(c, ulink)
            apply_delta(users, None, got)
            got, glink = round_from(c, glink)
            apply_delta(groups, members, got)
            truth = control(emu, "GET", f"/tenants/{tid}/snapshot")
            assert {u["id"]: (u["jobTitle"], u["accountEnabled"], u["managerId"]) for u in truth["users"]} == {
                uid: (u["jobTitle"], u["accountEnabled"], (u["manager"] or {}).get("id")) for uid, u in users.items()}
            assert set(groups) == {g["id"] for g in truth["groups"]}
            assert {g: m for g, m in members.items() if m} == {g: set(m) for g, m in truth["members"].items() if m}
