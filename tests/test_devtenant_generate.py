"""The synthetic tenant generator: determinism, the mix of cases, Graph shapes and referential integrity."""

from __future__ import annotations

import base64
import hashlib
import re
import unicodedata
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from cryptography import x509

from entra_mcp.devtenant.generate import (
    CYCLE_GROUP_NAMES,
    INJECTION_TEXTS,
    MICROSOFT_TENANT_ID,
    NEVER,
    SYNC_APP_ROLES,
    cycle_groups,
    examples,
    generate_state,
    generate_tenant,
    injection_samples,
    registration_by_name,
)
from entra_mcp.devtenant.model import DEFAULT_ACCESS_ROLE, EmulatedTenant
from entra_mcp.errors import InvalidArgument

NOW = datetime(2026, 11, 26, 9, 30, tzinfo=UTC)
GUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")


def _ts(s: str) -> datetime:
    return datetime.strptime(s, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)


def _days_ago(s: str) -> float:
    return (NOW - _ts(s)).total_seconds() / 86400


@pytest.fixture(scope="module")
def small() -> EmulatedTenant:
    return generate_tenant("small", 1, now=NOW)


@pytest.fixture(scope="module")
def medium() -> EmulatedTenant:
    return generate_tenant("medium", 7, now=NOW)


def _fingerprint(t: EmulatedTenant) -> dict[str, Any]:
    """Everything that must be deterministic (the sync certificate's RSA key is not, so its thumbprint is left out)."""
    apps = {k: {**v, "keyCredentials": [c["keyId"] for c in v["keyCredentials"]]} for k, v in t.applications.items()}
    regs = [(r.client_id, r.display_name, [(s.key_id, s.value) for s in r.secrets],
             [c.key_id for c in r.certificates], r.granted_roles, r.redirect_uris, r.exposed_scopes)
            for r in t.registrations.values()]
    return {"tid": t.tenant_id, "users": t.users, "groups": t.groups, "members": t.members, "managers": t.managers,
            "apps": apps, "sps": t.service_principals, "assignments": t.app_role_assignments, "domains": t.domains,
            "org": t.organization, "regs": regs}


def test_same_seed_same_tenant_different_seed_different() -> None:
    a = generate_tenant("small", 42, now=NOW)
    b = generate_tenant("small", 42, now=NOW + timedelta(hours=10))  # same UTC date
    assert _fingerprint(a) == _fingerprint(b)
    assert list(a.users) == list(b.users)  # insertion order too
    c = generate_tenant("small", 43, now=NOW)
    assert c.tenant_id != a.tenant_id
    assert not set(c.users) & set(a.users)
    assert registration_by_name(c, "entra-mcp sync").secrets[0].value != \
        registration_by_name(a, "entra-mcp sync").secrets[0].value


def test_medium_is_deterministic(medium: EmulatedTenant) -> None:
    again = generate_tenant("medium", 7, now=NOW)
    assert _fingerprint(again) == _fingerprint(medium)


def test_state_with_two_tenants() -> None:
    state = generate_state("small", 3, tenants=2, now=NOW)
    assert len(state.tenants) == 2
    contoso, fabrikam = state.tenants.values()
    for tid, t in state.tenants.items():
        assert GUID.match(tid) and tid == t.tenant_id == t.organization["id"]
    assert (contoso.domain, fabrikam.domain) == ("contoso.example", "fabrikam.example")
    assert contoso.premium and not fabrikam.premium
    plans = lambda t: {p["service"] for p in t.organization["assignedPlans"]}  # noqa: E731
    assert "AADPremiumService" in plans(contoso) and "AADPremiumService" not in plans(fabrikam)
    assert state.resolve("fabrikam.onmicrosoft.example") is fabrikam
    assert state.resolve(contoso.tenant_id.upper()) is contoso
    assert {u["id"] for u in contoso.users.values()}.isdisjoint(fabrikam.users)


def test_bad_size_is_a_clear_error() -> None:
    with pytest.raises(InvalidArgument, match="small, medium, large"):
        generate_tenant("huge", 1)
    with pytest.raises(InvalidArgument):
        generate_state("small", 1, tenants=0)


def test_domains_and_organization(small: EmulatedTenant) -> None:
    default = [d for d in small.domains if d["isDefault"]]
    initial = [d for d in small.domains if d["isInitial"]]
    assert [d["id"] for d in default] == ["contoso.example"]
    assert [d["id"] for d in initial] == ["contoso.onmicrosoft.example"]
    assert all(d["passwordValidityPeriodInDays"] == 90 and d["passwordNotificationWindowInDays"] == 14
               for d in small.domains)
    assert {d["authenticationType"] for d in small.domains} == {"Managed", "Federated"}
    assert small.organization["tenantType"] == "AAD"
    assert {v["name"] for v in small.organization["verifiedDomains"]} == {d["id"] for d in small.domains}


USER_FIELDS = {
    "id", "displayName", "givenName", "surname", "userPrincipalName", "mail", "otherMails", "proxyAddresses",
    "businessPhones", "mobilePhone", "jobTitle", "department", "officeLocation", "companyName", "preferredLanguage",
    "employeeId", "accountEnabled", "userType", "externalUserState", "externalUserStateChangeDateTime",
    "creationType", "createdDateTime", "lastPasswordChangeDateTime", "passwordPolicies", "onPremisesSyncEnabled",
    "onPremisesLastSyncDateTime", "onPremisesSamAccountName", "onPremisesDomainName", "onPremisesImmutableId",
    "onPremisesDistinguishedName", "usageLocation", "assignedLicenses", "signInActivity",
}


@pytest.mark.parametrize("which", ["small", "medium"])
def test_user_shapes(which: str, request: pytest.FixtureRequest) -> None:
    t: EmulatedTenant = request.getfixturevalue(which)
    upns = Counter(u["userPrincipalName"].lower() for u in t.users.values())
    assert max(upns.values()) == 1
    assert len({u["employeeId"] for u in t.users.values() if u["employeeId"]}) == \
        sum(1 for u in t.users.values() if u["employeeId"])
    for uid, u in t.users.items():
        assert USER_FIELDS <= set(u), USER_FIELDS - set(u)
        assert u["id"] == uid and GUID.match(uid)
        assert u["proxyAddresses"][0] == f"SMTP:{u['mail']}"
        assert all(p.startswith("smtp:") for p in u["proxyAddresses"][1:])
        for lic in u["assignedLicenses"]:
            assert lic["disabledPlans"] == [] and GUID.match(lic["skuId"]) or re.match(r"^[0-9a-f-]{36}$",
                                                                                         lic["skuId"])
        assert set(u["signInActivity"]) == {
            "lastSignInDateTime", "lastSignInRequestId", "lastNonInteractiveSignInDateTime",
            "lastNonInteractiveSignInRequestId", "lastSuccessfulSignInDateTime", "lastSuccessfulSignInRequestId"}
        for key in ("createdDateTime", "lastPasswordChangeDateTime"):
            assert _ts(u[key]) < NOW
        if u["userType"] == "Guest":
            local, home = u["mail"].split("@")
            assert u["userPrincipalName"] == f"{local}_{home}#EXT#@{t.domain}"
            assert u["creationType"] == "Invitation" and home != t.domain
            assert u["externalUserState"] in ("PendingAcceptance", "Accepted")
        else:
            assert u["userPrincipalName"].endswith("@" + t.domain)
            assert u["externalUserState"] is None and u["userType"] == "Member"
        if u["onPremisesSyncEnabled"] is not None:
            assert u["onPremisesSamAccountName"] and u["onPremisesImmutableId"] and u["onPremisesLastSyncDateTime"]
            assert u["onPremisesDistinguishedName"].startswith("CN=")
        else:
            assert u["onPremisesImmutableId"] is None


@pytest.mark.parametrize("which", ["small", "medium"])
def test_the_mix_of_accounts(which: str, request: pytest.FixtureRequest) -> None:
    t: EmulatedTenant = request.getfixturevalue(which)
    users = list(t.users.values())
    n = len(users)
    members = [u for u in users if u["userType"] == "Member"]
    guests = [u for u in users if u["userType"] == "Guest"]
    disabled = [u for u in users if not u["accountEnabled"]]
    synced = [u for u in members if u["onPremisesSyncEnabled"] is True]
    was_synced = [u for u in members if u["onPremisesSyncEnabled"] is False]
    never_expires = [u for u in members if u["passwordPolicies"]]
    cloud = [u for u in members if u["onPremisesSyncEnabled"] is None and not u["passwordPolicies"]]
    expired = [u for u in cloud if _days_ago(u["lastPasswordChangeDateTime"]) > 90]
    expiring = [u for u in cloud if 76 < _days_ago(u["lastPasswordChangeDateTime"]) <= 90]
    never_signed = [u for u in members if u["signInActivity"]["lastSignInDateTime"] == NEVER]
    stale = [u for u in members if u["signInActivity"]["lastSignInDateTime"] != NEVER
             and _days_ago(u["signInActivity"]["lastSignInDateTime"]) > 90]
    assert 0.02 <= len(disabled) / n <= 0.06
    assert 0.06 <= len(guests) / n <= 0.10
    assert any(g["externalUserState"] == "PendingAcceptance" for g in guests)
    assert sum(g["externalUserState"] == "Accepted" for g in guests) > len(guests) / 2
    assert 0.22 <= len(synced) / n <= 0.38 and was_synced
    assert 0.03 <= len(never_expires) / n <= 0.08
    assert "DisablePasswordExpiration, DisableStrongPassword" in {u["passwordPolicies"] for u in never_expires} \
        or which == "small"
    assert len(expired) >= 2 and len(expiring) >= 2
    assert len(never_signed) >= 2 and len(stale) >= 2
    assert any(u["signInActivity"]["lastNonInteractiveSignInDateTime"] != NEVER for u in never_signed)
    assert any(not u["assignedLicenses"] for u in members)
    # A synced member's password never looks expired: expiry is only ever tested on cloud-only accounts.
    assert all(_days_ago(u["lastPasswordChangeDateTime"]) < 76 for u in synced)


@pytest.mark.parametrize("which", ["small", "medium"])
def test_names_people_and_hierarchy(which: str, request: pytest.FixtureRequest) -> None:
    t: EmulatedTenant = request.getfixturevalue(which)
    names = Counter(u["displayName"] for u in t.users.values())
    assert names["Alex Johnson"] >= 3
    for name in ("José Müller", "Zoë Ólafsdóttir", "王伟", "Søren Kierkegård", "Łukasz Żółć"):
        assert names[name] >= 1, name
    non_ascii = [n for n in names if not n.isascii()]
    assert len(non_ascii) >= 5
    assert all(u["userPrincipalName"].isascii() for u in t.users.values())
    assert all(unicodedata.is_normalized("NFC", n) for n in names)
    ceo = [u for u in t.users.values() if u["jobTitle"] == "Chief Executive Officer"]
    cfo = [u for u in t.users.values() if u["jobTitle"] == "Chief Financial Officer"]
    assert len(ceo) == 1 and len(cfo) == 1
    assert ceo[0]["id"] not in t.managers and t.managers[cfo[0]["id"]] == ceo[0]["id"]
    # every member reaches the CEO; no manager loops
    for uid, u in t.users.items():
        if u["userType"] == "Guest":
            assert uid not in t.managers
            continue
        seen, cur = set(), uid
        while cur in t.managers:
            assert cur not in seen
            seen.add(cur)
            cur = t.managers[cur]
        assert cur == ceo[0]["id"]
    depth = max(_chain_len(t.managers, uid) for uid in t.managers)
    assert depth >= (2 if which == "small" else 4)


def _chain_len(managers: dict[str, str], uid: str) -> int:
    n = 0
    while uid in managers:
        uid, n = managers[uid], n + 1
    return n


@pytest.mark.parametrize("which", ["small", "medium"])
def test_injection_samples_are_few_and_findable(which: str, request: pytest.FixtureRequest) -> None:
    t: EmulatedTenant = request.getfixturevalue(which)
    samples = injection_samples(t)
    assert 3 <= len(samples) < 10
    assert {s["field"] for s in samples} >= {"jobTitle", "displayName", "department", "description"}
    assert set(INJECTION_TEXTS.values()) == {s["value"] for s in samples}
    cfo_and_ceo = {u["id"] for u in t.users.values() if u["jobTitle"] and u["jobTitle"].startswith("Chief")}
    assert not cfo_and_ceo & {s["id"] for s in samples}


GROUP_FIELDS = {"id", "displayName", "description", "mail", "mailNickname", "mailEnabled", "securityEnabled",
                "groupTypes", "membershipRule", "membershipRuleProcessingState", "createdDateTime",
                "onPremisesSyncEnabled", "visibility", "securityIdentifier"}


def _kind(gr: dict[str, Any]) -> str:
    if "DynamicMembership" in gr["groupTypes"]:
        return "dynamic"
    if "Unified" in gr["groupTypes"]:
        return "microsoft365"
    return {(True, False): "security", (True, True): "mailEnabledSecurity",
            (False, True): "distribution"}[(gr["securityEnabled"], gr["mailEnabled"])]


@pytest.mark.parametrize("which", ["small", "medium"])
def test_group_kinds_and_dynamic_rules(which: str, request: pytest.FixtureRequest) -> None:
    t: EmulatedTenant = request.getfixturevalue(which)
    for gid, gr in t.groups.items():
        assert GROUP_FIELDS <= set(gr) and gr["id"] == gid
        assert gr["securityIdentifier"].startswith("S-1-12-1-")
        assert (gr["mail"] is not None) == gr["mailEnabled"]
    kinds = Counter(_kind(g) for g in t.groups.values())
    if which == "medium":
        assert set(kinds) == {"dynamic", "microsoft365", "security", "mailEnabledSecurity", "distribution"}
    dynamic = [g for g in t.groups.values() if _kind(g) == "dynamic"]
    assert dynamic and {g["membershipRuleProcessingState"] for g in dynamic} == {"On", "Paused"}
    for gr in dynamic:
        m = re.fullmatch(r'user\.(department|officeLocation) -eq "([^"]+)"', gr["membershipRule"])
        assert m, gr["membershipRule"]
        want = {uid for uid, u in t.users.items() if u[m[1]] == m[2]}
        assert want and set(t.members[gr["id"]]) == want
    all_staff = [g for g in t.groups.values() if g["displayName"] == "All Staff"]
    assert len(all_staff) == 1
    size = len(t.members[all_staff[0]["id"]])
    assert (35 <= size <= 46) if which == "small" else size > 1000


def _group_edges(t: EmulatedTenant) -> dict[str, list[str]]:
    return {gid: [m for m, k in ms.items() if k == "group"] for gid, ms in t.members.items()}


def _cycles(t: EmulatedTenant) -> list[set[str]]:
    """Strongly connected components with more than one group (Tarjan, iterative)."""
    edges = _group_edges(t)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on: set[str] = set()
    stack: list[str] = []
    out: list[set[str]] = []
    counter = 0
    for root in edges:
        if root in index:
            continue
        work = [(root, iter(edges[root]))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on.add(root)
        while work:
            v, it = work[-1]
            w = next(it, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = counter
                    counter += 1
                    stack.append(w)
                    on.add(w)
                    work.append((w, iter(edges.get(w, []))))
                elif w in on:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                comp = set()
                while True:
                    x = stack.pop()
                    on.discard(x)
                    comp.add(x)
                    if x == v:
                        break
                if len(comp) > 1:
                    out.append(comp)
    return out


def _longest_chain(t: EmulatedTenant, skip: set[str]) -> int:
    edges = _group_edges(t)
    memo: dict[str, int] = {}

    def depth(g: str) -> int:
        if g not in memo:
            memo[g] = 1 + max((depth(c) for c in edges.get(g, []) if c not in skip), default=0)
        return memo[g]

    return max(depth(g) for g in edges if g not in skip)


def test_nesting_small_is_acyclic_and_four_deep(small: EmulatedTenant) -> None:
    assert _cycles(small) == [] and cycle_groups(small) is None
    assert _longest_chain(small, set()) == 4


def test_nesting_medium_has_exactly_the_documented_cycle(medium: EmulatedTenant) -> None:
    pair = cycle_groups(medium)
    assert pair is not None
    assert [medium.groups[g]["displayName"] for g in pair] == list(CYCLE_GROUP_NAMES)
    assert _cycles(medium) == [set(pair)]
    assert _longest_chain(medium, set(pair)) == 4


def test_cycle_can_be_asked_for_in_small() -> None:
    t = generate_tenant("small", 1, now=NOW, cycle=True)
    pair = cycle_groups(t)
    assert pair and _cycles(t) == [set(pair)]


@pytest.mark.parametrize("which", ["small", "medium"])
def test_referential_integrity(which: str, request: pytest.FixtureRequest) -> None:
    t: EmulatedTenant = request.getfixturevalue(which)
    where = {"user": t.users, "group": t.groups, "servicePrincipal": t.service_principals}
    kinds: Counter[str] = Counter()
    for gid, ms in t.members.items():
        assert gid in t.groups
        for mid, kind in ms.items():
            kinds[kind] += 1
            if kind == "device":
                assert all(mid not in objs for objs in where.values())
            else:
                assert mid in where[kind], (kind, mid)
    assert set(kinds) == {"user", "group", "servicePrincipal", "device"}
    assert set(t.groups) == set(t.members)
    for uid, mid in t.managers.items():
        assert uid in t.users and mid in t.users and uid != mid
    ptype = {"User": t.users, "Group": t.groups, "ServicePrincipal": t.service_principals}
    for aid, a in t.app_role_assignments.items():
        assert a["id"] == aid
        principal = ptype[a["principalType"]][a["principalId"]]
        resource = t.service_principals[a["resourceId"]]
        assert a["principalDisplayName"] == principal["displayName"]
        assert a["resourceDisplayName"] == resource["displayName"]
        assert a["appRoleId"] == DEFAULT_ACCESS_ROLE or a["appRoleId"] in {r["id"] for r in resource["appRoles"]}
    assert len({(a["principalId"], a["resourceId"], a["appRoleId"]) for a in t.app_role_assignments.values()}) \
        == len(t.app_role_assignments)
    sp_app_ids = Counter(s["appId"] for s in t.service_principals.values())
    assert max(sp_app_ids.values()) == 1
    for app in t.applications.values():
        assert sp_app_ids[app["appId"]] == 1
    assert len(t.service_principals) > len(t.applications)


def _status(cred: dict[str, Any]) -> str:
    days = (_ts(cred["endDateTime"]) - NOW).total_seconds() / 86400
    return "expired" if days < 0 else "expiring" if days <= 30 else "valid"


@pytest.mark.parametrize("which", ["small", "medium"])
def test_applications_and_principals(which: str, request: pytest.FixtureRequest) -> None:
    t: EmulatedTenant = request.getfixturevalue(which)
    apps = list(t.applications.values())
    assert {a["signInAudience"] for a in apps} == {"AzureADMyOrg", "AzureADMultipleOrgs",
                                                   "AzureADandPersonalMicrosoftAccount", "PersonalMicrosoftAccount"}
    secrets = [c for a in apps for c in a["passwordCredentials"]]
    certs = [c for a in apps for c in a["keyCredentials"]]
    assert {_status(c) for c in secrets} == {"expired", "expiring", "valid"}
    assert certs and all(c["type"] == "AsymmetricX509Cert" and c["usage"] == "Verify" for c in certs)
    for c in secrets:
        assert c["secretText"] is None and len(c["hint"]) == 3 and _ts(c["startDateTime"]) < _ts(c["endDateTime"])
    for a in apps:
        assert {"id", "appId", "displayName", "signInAudience", "appRoles", "keyCredentials", "passwordCredentials",
                "createdDateTime", "publisherDomain", "identifierUris"} <= set(a)
        for role in a["appRoles"]:
            assert set(role) >= {"allowedMemberTypes", "description", "displayName", "id", "isEnabled", "value"}
    sps = list(t.service_principals.values())
    assert {s["servicePrincipalType"] for s in sps} == {"Application", "ManagedIdentity", "Legacy"}
    owners = {s["appOwnerOrganizationId"] for s in sps}
    assert {MICROSOFT_TENANT_ID, t.tenant_id} < owners  # and third-party tenants
    assert any(not s["accountEnabled"] for s in sps)
    assert {True, False} == {s["appRoleAssignmentRequired"] for s in sps}
    by_name = {s["displayName"]: s for s in sps}
    for name in ("Salesforce", "ServiceNow", "Workday", "Zoom", "Slack"):
        s = by_name[name]
        assert s["appRoleAssignmentRequired"] and s["appRoles"]
        assert any(a["resourceId"] == s["id"] for a in t.app_role_assignments.values()), name
    legacy = [a for a in apps if a["displayName"] == "Legacy Payroll Connector"]
    assert len(legacy) == 1 and [_status(c) for c in legacy[0]["passwordCredentials"]] == ["expired"]
    types = Counter(a["principalType"] for a in t.app_role_assignments.values())
    assert set(types) == {"User", "Group", "ServicePrincipal"}


def test_access_through_nested_groups(small: EmulatedTenant) -> None:
    """ServiceNow is assigned to Global IT; members of Service Desk Tier 1 (3 levels down) inherit it."""
    by_name = {g["displayName"]: gid for gid, g in small.groups.items()}
    chain = ["Global IT", "IT Operations", "IT Service Desk", "Service Desk Tier 1"]
    for parent, child in zip(chain, chain[1:], strict=False):
        assert small.members[by_name[parent]][by_name[child]] == "group"
    snow = next(s for s in small.service_principals.values() if s["displayName"] == "ServiceNow")
    assert any(a["principalId"] == by_name["Global IT"] and a["resourceId"] == snow["id"]
               for a in small.app_role_assignments.values())
    assert any(k == "user" for k in small.members[by_name["Service Desk Tier 1"]].values())


def test_registrations(small: EmulatedTenant) -> None:
    sync = registration_by_name(small, "entra-mcp sync")
    portal = registration_by_name(small, "entra-mcp portal")
    api = registration_by_name(small, "entra-mcp api")
    assert sync.granted_roles[:7] == ["User.Read.All", "GroupMember.Read.All", "Application.Read.All",
                                      "AuditLog.Read.All", "Domain.Read.All", "Device.Read.All", "Policy.Read.All"]
    assert {"RoleManagement.Read.Directory", "LicenseAssignment.Read.All", "IdentityRiskyUser.Read.All"} <= set(sync.granted_roles)
    assert len(sync.secrets) == 1 and len(sync.secrets[0].value) == 40
    assert portal.redirect_uris == ["http://127.0.0.1:8765/auth/callback"]
    assert portal.sign_in_audience == "AzureADMyOrg" and len(portal.secrets) == 1
    assert api.exposed_scopes == ["Identity.Investigate"] and api.exposed_app_roles == ["Identity.Investigate.All"]
    (cert,) = sync.certificates
    parsed = x509.load_pem_x509_certificate(cert.certificate_pem)
    der = parsed.public_bytes(encoding=__import__("cryptography.hazmat.primitives.serialization",
                                                  fromlist=["Encoding"]).Encoding.DER)
    b64 = lambda b: base64.urlsafe_b64encode(b).rstrip(b"=").decode()  # noqa: E731
    assert cert.thumbprint_sha1_b64url == b64(hashlib.sha1(der).digest())  # noqa: S324
    assert cert.thumbprint_sha256_b64url == b64(hashlib.sha256(der).digest())
    assert parsed.public_key().key_size == 2048
    assert b"PRIVATE KEY" in cert.private_key_pem and b"PUBLIC KEY" in cert.public_key_pem
    assert parsed.not_valid_after_utc > NOW
    for reg in (sync, portal, api):
        assert reg.client_id in small.registrations and GUID.match(reg.client_id)
        assert [a for a in small.applications.values() if a["appId"] == reg.client_id]
        assert [s for s in small.service_principals.values() if s["appId"] == reg.client_id]
    app = next(a for a in small.applications.values() if a["appId"] == sync.client_id)
    assert [c["hint"] for c in app["passwordCredentials"]] == [sync.secrets[0].value[:3]]
    assert [c["keyId"] for c in app["keyCredentials"]] == [cert.key_id]
    with pytest.raises(KeyError):
        registration_by_name(small, "nope")


def test_examples_point_at_matching_objects(small: EmulatedTenant) -> None:
    ex = examples(small, now=NOW)
    u = small.users
    assert u[ex["cfo"]]["jobTitle"] == "Chief Financial Officer"
    assert not u[ex["disabled_user"]]["accountEnabled"]
    assert u[ex["guest_pending"]]["externalUserState"] == "PendingAcceptance"
    assert _days_ago(u[ex["password_expired_user"]]["lastPasswordChangeDateTime"]) > 90
    assert 76 < _days_ago(u[ex["password_expiring_user"]]["lastPasswordChangeDateTime"]) <= 90
    assert u[ex["never_signed_in_user"]]["signInActivity"]["lastSignInDateTime"] == NEVER
    assert small.groups[ex["nested_leaf_group"]]["displayName"] == "Service Desk Tier 1"
    assert len(ex) == 19


def test_medium_counts(medium: EmulatedTenant) -> None:
    assert len(medium.users) == 5_000
    assert len(medium.groups) == 600 + 1  # + the role-assignable "Identity Admins" (graph_account.py)
    assert len(medium.applications) == 200
    assert len(medium.service_principals) == 500
    assert 2_000 <= len(medium.app_role_assignments) <= 3_000
    total = sum(len(m) for m in medium.members.values())
    assert 20_000 <= total <= 40_000


_DIGEST = """
import hashlib, json, sys
from datetime import datetime
sys.path.insert(0, {tests!r})
from test_devtenant_generate import _fingerprint
from entra_mcp.devtenant.generate import generate_tenant
t = generate_tenant("small", 5, 2, now=datetime.fromisoformat({now!r}))
print(hashlib.sha256(json.dumps(_fingerprint(t), sort_keys=True, default=str).encode()).hexdigest())
"""


def test_deterministic_across_processes_and_hash_seeds() -> None:
    """Set iteration order depends on PYTHONHASHSEED; generation must not."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    code = _DIGEST.format(tests=str(Path(__file__).parent), now=NOW.isoformat())
    digests = set()
    for hash_seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": hash_seed}
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120,
                             check=True)
        digests.add(out.stdout.strip())
    assert len(digests) == 1 and len(digests.pop()) == 64


def test_dates_follow_the_real_clock_by_default() -> None:
    """Without `now`, dates are relative to today: every finding example exists against the real clock."""
    lines: list[str] = []
    state = generate_state("small", 9, progress=lines.append)
    (t,) = state.tenants.values()
    ex = examples(t)
    assert len(ex) == 19
    today = datetime.now(UTC)
    newest = max(_ts(u["signInActivity"]["lastSignInDateTime"]) for u in t.users.values()
                 if u["signInActivity"]["lastSignInDateTime"] != NEVER)
    assert timedelta(0) < today - newest < timedelta(days=2)
    assert lines == ["generating tenant contoso (small: 50 users, 15 groups, 30 service principals)"]


def test_registration_applications_carry_their_api_and_permissions(small: EmulatedTenant) -> None:
    by_app_id = {a["appId"]: a for a in small.applications.values()}
    api = by_app_id[registration_by_name(small, "entra-mcp api").client_id]
    assert [s["value"] for s in api["api"]["oauth2PermissionScopes"]] == ["Identity.Investigate"]
    assert api["identifierUris"] == [f"api://{api['appId']}"]
    assert [r["value"] for r in api["appRoles"]] == ["Identity.Investigate.All"]
    sync = by_app_id[registration_by_name(small, "entra-mcp sync").client_id]
    (graph,) = sync["requiredResourceAccess"]
    assert graph["resourceAppId"] == "00000003-0000-0000-c000-000000000000"
    assert len(graph["resourceAccess"]) == len(SYNC_APP_ROLES)
    sync_sp = next(s for s in small.service_principals.values() if s["appId"] == sync["appId"])
    granted = {a["appRoleId"] for a in small.app_role_assignments.values() if a["principalId"] == sync_sp["id"]}
    assert granted == {ra["id"] for ra in graph["resourceAccess"]}
    portal = by_app_id[registration_by_name(small, "entra-mcp portal").client_id]
    assert portal["web"]["redirectUris"] == ["http://127.0.0.1:8765/auth/callback"]
