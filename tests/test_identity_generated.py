"""The identity answers on a generated medium tenant (5,000 users), checked against ground truth computed here,
independently, from the emulator's EmulatedTenant (brute-force scans and plain graph searches)."""

from __future__ import annotations

import random
from collections import deque
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from _identity_fixtures import snapshot_from_emulated
from entra_mcp.devtenant.generate import (
    DEFAULT_ACCESS_ROLE,
    INJECTION_TEXTS,
    cycle_groups,
    examples,
    generate_state,
    injection_samples,
)
from entra_mcp.errors import InvalidArgument
from entra_mcp.identity.account import check_account_state
from entra_mcp.identity.apps import check_app_access, get_app_principal
from entra_mcp.identity.groups import list_group_members, list_group_memberships
from entra_mcp.identity.ticket import get_ticket_identity_context
from entra_mcp.identity.users import lookup_user
from entra_mcp.identity.view import DirectoryView

NOW = datetime.now(timezone.utc)
SAMPLES = 150


@pytest.fixture(scope="module")
def world() -> tuple[Any, DirectoryView]:
    state = generate_state("medium", 7, 1, now=NOW)
    tenant = next(iter(state.tenants.values()))
    view = DirectoryView.build(snapshot_from_emulated(tenant, as_of=NOW), now=NOW)
    return tenant, view


def _rng(name: str) -> random.Random:
    return random.Random(name)


def _ids(answer: dict[str, Any]) -> set[str]:
    return {m["id"] for m in answer["matches"]}


def _parse(ts: str | None) -> datetime | None:
    if not ts or ts.startswith("0001"):
        return None
    return datetime.strptime(ts[:19], "%Y-%m-%dT%H:%M:%S").replace(tzinfo=timezone.utc)


# ---------------------------------------------------------------- lookup


def test_exact_lookups_match_brute_force(world: tuple[Any, DirectoryView]) -> None:
    tenant, view = world
    rng = _rng("exact")
    users = list(tenant.users.values())
    # ground truth: every identifier of every user, by a plain scan
    owners: dict[str, set[str]] = {}
    sams: dict[str, set[str]] = {}
    for x in users:
        keys = {x["userPrincipalName"], x["id"], x.get("mail") or "", x.get("employeeId") or ""}
        keys |= set(x.get("otherMails") or [])
        keys |= {a.split(":", 1)[1] for a in x.get("proxyAddresses") or []}
        for key in keys - {""}:
            owners.setdefault(key.casefold(), set()).add(x["id"])
        if x.get("onPremisesSamAccountName"):
            sams.setdefault(x["onPremisesSamAccountName"].casefold(), set()).add(x["id"])

    checked = 0
    for u in rng.sample(users, SAMPLES):
        probes = [u["userPrincipalName"], u["id"]]
        probes += [p.split(":", 1)[1] for p in u.get("proxyAddresses") or []]
        if u.get("employeeId"):
            probes.append(u["employeeId"])
        for probe in probes:
            truth = owners[probe.casefold()]
            answer = lookup_user(view, probe.upper() if "@" in probe else probe, limit=100)
            assert answer["matchType"] == "exact", probe
            assert _ids(answer) == truth, probe
            checked += 1
        if u.get("onPremisesSamAccountName"):
            sam = u["onPremisesSamAccountName"]
            truth = sams[sam.casefold()]
            assert _ids(lookup_user(view, f"CORP\\{sam}", limit=100)) == truth
            assert _ids(lookup_user(view, sam, limit=100)) >= truth
    assert checked > SAMPLES * 2


def test_fuzzy_lookup_by_folded_name_finds_everyone_with_that_name(world: tuple[Any, DirectoryView]) -> None:
    tenant, view = world
    rng = _rng("fuzzy")
    import unicodedata

    def plain(s: str) -> str:
        s = unicodedata.normalize("NFKD", s.replace("ø", "o").replace("Ø", "O").replace("ł", "l").replace("Ł", "L"))
        return "".join(c for c in s if not unicodedata.combining(c)).lower()

    by_plain: dict[str, set[str]] = {}
    for x in tenant.users.values():
        by_plain.setdefault(plain(x["displayName"]), set()).add(x["id"])
    members = [u for u in tenant.users.values() if u["userType"] == "Member" and u["displayName"].count(" ") == 1]
    for u in rng.sample(members, SAMPLES):
        query = plain(u["displayName"])
        same = by_plain[query]
        answer = lookup_user(view, query, limit=100)
        ids = [m["id"] for m in answer["matches"]]
        assert answer["matchType"] == "fuzzy"
        # everyone with exactly this name is listed, ahead of everyone else
        assert set(ids[: len(same)]) == same, query


def test_alex_johnsons_are_all_listed(world: tuple[Any, DirectoryView]) -> None:
    tenant, view = world
    truth = {u["id"] for u in tenant.users.values() if u["displayName"] == "Alex Johnson"}
    assert len(truth) >= 3
    answer = lookup_user(view, "alex johnson")
    assert set([m["id"] for m in answer["matches"]][: len(truth)]) == truth
    assert len({(m["department"], m["jobTitle"], m["officeLocation"]) for m in answer["matches"][: len(truth)]}) > 1
    with pytest.raises(InvalidArgument):
        check_account_state(view, "Alex Johnson", now=NOW)


# ---------------------------------------------------------------- memberships


def _parents(tenant: Any) -> dict[str, set[str]]:
    parents: dict[str, set[str]] = {}
    for gid, members in tenant.members.items():
        for mid in members:
            parents.setdefault(mid, set()).add(gid)
    return parents


def _distances(start: str, parents: dict[str, set[str]]) -> dict[str, int]:
    dist: dict[str, int] = {}
    queue = deque((g, 1) for g in parents.get(start, ()))
    while queue:
        gid, d = queue.popleft()
        if gid in dist:
            continue
        dist[gid] = d
        queue.extend((p, d + 1) for p in parents.get(gid, ()) if p not in dist)
    dist.pop(start, None)
    return dist


def test_transitive_memberships_match_graph_search(world: tuple[Any, DirectoryView]) -> None:
    tenant, view = world
    parents = _parents(tenant)
    rng = _rng("memberships")
    cycle = cycle_groups(tenant)
    assert cycle is not None
    in_cycle = [uid for uid, k in tenant.members[cycle[0]].items() if k == "user"]
    sample = rng.sample(list(tenant.users), SAMPLES) + in_cycle[:5]
    for uid in sample:
        truth = _distances(uid, parents)
        answer = list_group_memberships(view, uid, limit=1000)
        got = {g["id"]: g for g in answer["groups"]}
        assert set(got) == set(truth) and answer["total"] == len(truth)
        for gid, g in got.items():
            chain = [v["id"] for v in g["via"]] + [gid]
            assert len(chain) == truth[gid], "chain is not the shortest"
            assert uid in tenant.members[chain[0]]
            for child, parent in zip(chain, chain[1:]):
                assert child in tenant.members[parent]
            assert g["direct"] is (truth[gid] == 1)
        direct = list_group_memberships(view, uid, transitive=False, limit=1000)
        assert {g["id"] for g in direct["groups"]} == {g for g, d in truth.items() if d == 1}


def test_transitive_members_match_graph_search(world: tuple[Any, DirectoryView]) -> None:
    tenant, view = world
    rng = _rng("members")
    for gid in rng.sample(list(tenant.groups), 40) + list(cycle_groups(tenant) or ()):
        seen, queue, truth = {gid}, deque([gid]), set()
        while queue:
            for mid, kind in tenant.members.get(queue.popleft(), {}).items():
                truth.add(mid)
                if kind == "group" and mid not in seen:
                    seen.add(mid)
                    queue.append(mid)
        truth.discard(gid)
        answer = list_group_members(view, gid, transitive=True, limit=1000)
        assert answer["total"] == len(truth)
        if len(truth) <= 1000:
            assert {m["id"] for m in answer["members"]} == truth
        direct = list_group_members(view, gid, limit=1000)
        assert direct["total"] == len(tenant.members.get(gid, {}))


# ---------------------------------------------------------------- account state


@pytest.mark.parametrize(
    "example, code, field, value",
    [
        ("disabled_user", "ACCOUNT_DISABLED", "accountEnabled", False),
        ("guest_pending", "GUEST_PENDING", "externalUserState", "PendingAcceptance"),
        ("synced_user", "ONPREM_SYNCED", "passwordExpired", None),
        ("was_synced_user", "ONPREM_SYNC_STOPPED", "onPremisesSyncEnabled", False),
        ("never_expires_user", "PASSWORD_NEVER_EXPIRES", "passwordNeverExpires", True),
        ("password_expired_user", "PASSWORD_EXPIRED", "passwordExpired", True),
        ("password_expiring_user", "PASSWORD_EXPIRING", "passwordExpired", False),
        ("stale_sign_in_user", "STALE_SIGN_IN", "accountEnabled", True),
        ("never_signed_in_user", "NEVER_SIGNED_IN", "lastSignInDateTime", None),
        ("unlicensed_user", "NO_LICENSE", "accountEnabled", True),
    ],
)
def test_account_state_examples(
    world: tuple[Any, DirectoryView], example: str, code: str, field: str, value: object
) -> None:
    tenant, view = world
    answer = check_account_state(view, examples(tenant, now=NOW)[example], now=NOW)
    assert code in {f["code"] for f in answer["findings"]}
    assert answer[field] == value


def test_password_expiry_matches_the_rule_for_every_user(world: tuple[Any, DirectoryView]) -> None:
    tenant, view = world
    validity = {d["id"]: d["passwordValidityPeriodInDays"] for d in tenant.domains}
    for u in tenant.users.values():
        answer = check_account_state(view, u["id"], now=NOW)
        if u["onPremisesSyncEnabled"] is True or u["userType"] == "Guest":
            truth: bool | None = None
        elif "DisablePasswordExpiration" in (u["passwordPolicies"] or ""):
            truth = False
        else:
            changed = _parse(u["lastPasswordChangeDateTime"])
            days = validity.get(u["userPrincipalName"].split("@")[1], 90)
            truth = None if changed is None else NOW >= changed + timedelta(days=days)
        assert answer["passwordExpired"] is truth, u["userPrincipalName"]
        last = (u.get("signInActivity") or {}).get("lastSignInDateTime")
        assert answer["lastSignInDateTime"] is None if not _parse(last) else answer["lastSignInDateTime"] == last


# ---------------------------------------------------------------- apps


def test_app_access_matches_assignment_rules(world: tuple[Any, DirectoryView]) -> None:
    tenant, view = world
    rng = _rng("access")
    by_resource: dict[str, list[dict[str, Any]]] = {}
    for a in tenant.app_role_assignments.values():
        by_resource.setdefault(a["resourceId"], []).append(a)
    sps = [sp for sp in tenant.service_principals.values() if sp["id"] in by_resource]
    users = list(tenant.users.values())
    outcomes: set[Any] = set()
    checked = 0
    for sp in rng.sample(sps, min(len(sps), 30)):
        assigned = by_resource[sp["id"]]
        principals = {a["principalId"] for a in assigned}
        # users picked to hit every branch: directly assigned, members of assigned groups, random ones
        candidates = [u for u in users if u["id"] in principals][:3]
        for gid in [p for p in principals if p in tenant.groups][:2]:
            candidates += [tenant.users[m] for m, k in tenant.members.get(gid, {}).items() if k == "user"][:2]
        candidates += rng.sample(users, 3)
        for u in candidates:
            direct_groups = {g for g, m in tenant.members.items() if u["id"] in m}
            entitled = u["id"] in principals or bool(direct_groups & principals)
            if not sp["appRoleAssignmentRequired"]:
                entitled = True
            truth = entitled and u["accountEnabled"] and sp["accountEnabled"]
            answer = check_app_access(view, u["id"], sp["appId"], now=NOW)
            assert answer["hasAccess"] is truth, (u["userPrincipalName"], sp["displayName"])
            roles = {a["appRoleId"] for a in assigned if a["principalId"] == u["id"] or a["principalId"] in direct_groups}
            got = {a["appRole"]["id"] for a in answer["assignments"] if a["effective"]}
            assert got == roles
            if DEFAULT_ACCESS_ROLE in roles:
                assert any(a["appRole"]["displayName"] == "Default Access" for a in answer["assignments"])
            outcomes.add((truth, sp["appRoleAssignmentRequired"]))
            checked += 1
    assert checked > 100
    assert (True, True) in outcomes and (False, True) in outcomes


def test_app_principal_examples(world: tuple[Any, DirectoryView]) -> None:
    tenant, view = world
    ex = examples(tenant, now=NOW)
    legacy = get_app_principal(view, tenant.applications[ex["expired_secret_app"]]["appId"], now=NOW)
    codes = {f["code"] for f in legacy["findings"]}
    assert {"APP_CREDENTIAL_EXPIRED", "APP_ALL_CREDENTIALS_EXPIRED"} <= codes
    assert legacy["credentials"] and all(c["expired"] for c in legacy["credentials"])
    sf = get_app_principal(view, "salesforce", now=NOW)
    assert sf["servicePrincipal"]["id"] == ex["salesforce_sp"]
    assert "ASSIGNMENT_REQUIRED" in {f["code"] for f in sf["findings"]}
    for sp in tenant.service_principals.values():
        answer = get_app_principal(view, sp["id"], now=NOW)
        codes = {f["code"] for f in answer["findings"]}
        assert ("SP_DISABLED" in codes) is (sp["accountEnabled"] is False)
        assert ("MANAGED_IDENTITY" in codes) is (sp["servicePrincipalType"] == "ManagedIdentity")
        assert ("THIRD_PARTY_APP" in codes) is (
            sp["appOwnerOrganizationId"] not in (None, tenant.tenant_id) and sp["appId"] not in
            {a["appId"] for a in tenant.applications.values()}
        )
        creds = sp.get("passwordCredentials", []) + sp.get("keyCredentials", [])
        for app in tenant.applications.values():
            if app["appId"] == sp["appId"]:
                creds = creds + app.get("passwordCredentials", []) + app.get("keyCredentials", [])
        expired = sum(1 for c in creds if _parse(c["endDateTime"]) and _parse(c["endDateTime"]) <= NOW)  # type: ignore[operator]
        assert sum(1 for c in answer["credentials"] if c["expired"]) == expired


# ---------------------------------------------------------------- untrusted data, tickets


def test_every_injection_sample_is_flagged_and_returned_verbatim(world: tuple[Any, DirectoryView]) -> None:
    tenant, view = world
    samples = injection_samples(tenant)
    assert samples
    for s in samples:
        if s["kind"] == "user":
            answer = check_account_state(view, s["id"], now=NOW)
            assert answer["user"].get(s["field"], s["value"]) == s["value"]
        elif s["kind"] == "group":
            answer = list_group_members(view, s["id"], limit=1)
        else:
            answer = get_app_principal(view, s["id"], now=NOW)
        flagged = [f for f in answer["findings"] if f["code"] == "SUSPICIOUS_FIELD"]
        assert any(f"Field {s['field']} " in f["message"] for f in flagged), s
        for f in answer["findings"]:
            assert s["value"] not in f["message"]
    # no false alarms on the rest of the tenant's users
    flagged_users = {s["id"] for s in samples if s["kind"] == "user"}
    from entra_mcp.identity.findings import suspicious_fields

    noisy = [u["id"] for u in tenant.users.values() if suspicious_fields(u) and u["id"] not in flagged_users]
    assert noisy == []
    assert INJECTION_TEXTS


def test_ticket_for_the_ceo(world: tuple[Any, DirectoryView]) -> None:
    tenant, view = world
    ex = examples(tenant, now=NOW)
    ceo = tenant.users[ex["ceo"]]
    cfo = tenant.users[ex["cfo"]]
    text = (
        f"From {ceo['displayName']}: I am locked out of Salesforce and ServiceNow, please also check "
        f"{cfo['userPrincipalName']} and add me to All Staff."
    )
    answer = get_ticket_identity_context(view, ceo["mail"], text, now=NOW)
    assert answer["requester"]["status"] == "found"
    assert answer["requester"]["profile"]["id"] == ceo["id"]
    assert "VIP_REQUESTER" in {f["code"] for f in answer["findings"]}
    assert "out of band" in next(f["message"] for f in answer["findings"] if f["code"] == "VIP_REQUESTER")
    assert {a["displayName"] for a in answer["mentions"]["apps"]} >= {"Salesforce", "ServiceNow"}
    assert "All Staff" in {g["displayName"] for g in answer["mentions"]["groups"]}
    assert cfo["id"] in {u["id"] for u in answer["mentions"]["users"]}
    manager_id = tenant.managers.get(ceo["id"])
    assert (answer["requester"]["manager"] or {}).get("id") == manager_id
    staff = next(u for u in tenant.users.values() if tenant.managers.get(u["id"]) == ceo["id"])
    staff_answer = get_ticket_identity_context(view, staff["userPrincipalName"], now=NOW)
    assert staff_answer["requester"]["manager"]["id"] == ceo["id"]
