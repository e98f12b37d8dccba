"""The indexes of identity/view.py are built column by column (`_index_users`, `_index_groups`, `_index_apps`,
`_index_assignments`). Checked here against their definitions written one object at a time: for any users
(colliding addresses in mixed case, addresses whose casefold changes length, proxies repeating the UPN or each other,
numeric employee ids, nicknames equal to an address's local part, names in other scripts, missing or empty values)
and any groups, apps and assignments (ids, names, mails and appIds colliding in mixed case, missing principals), the
bulk build gives exactly the same indexes, from mirror Tables as from plain dicts."""

from __future__ import annotations

from typing import Any, Mapping

from hypothesis import given, settings
from hypothesis import strategies as st

from entra_mcp.identity.text import folded_name, is_abjad, latin_name, latin_tokens, name_tokens, skeleton
from entra_mcp.identity.view import _add, _upn_domains, _index_apps, _index_assignments, _index_groups, _index_users
from entra_mcp.mirror.snapshot import DirectorySnapshot
from entra_mcp.mirror.table import Table, concat_groups, pack_groups, records_column


def reference(users: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The indexes by their definition: each user in position order, each key's ids in the order first seen."""
    found: dict[str, dict[str, dict[Any, None]]] = {
        name: {} for name in ("exact", "sam", "employee_ids", "nicknames", "full_names", "postings", "skeletons")}
    names, domains = [], set()

    def add(index: str, key: str, value: Any) -> None:
        found[index].setdefault(key, {}).setdefault(value)

    for pos, (uid, user) in enumerate(users.items()):
        upn, mail = user.get("userPrincipalName"), user.get("mail")
        own: set[str] = set()
        for text in (upn, mail, *(user.get("otherMails") or ())):
            if text:
                add("exact", text.casefold(), uid)
                own.add(text.casefold())
        if upn and upn.casefold().rfind("@") > 0:
            domains.add(upn.casefold()[upn.casefold().rfind("@") + 1:])
        for proxy in user.get("proxyAddresses") or ():
            if proxy and proxy.partition(":")[2].casefold() not in own:  # not the user's own address again
                add("exact", proxy.casefold(), uid)
                own.add(proxy.casefold())
        if user.get("employeeId"):
            add("employee_ids", str(user["employeeId"]), uid)
        if user.get("onPremisesSamAccountName"):
            add("sam", user["onPremisesSamAccountName"].casefold(), uid)
        nick = user.get("mailNickname")
        if nick and not any(a and a[: len(nick.casefold()) + 1].casefold() == nick.casefold() + "@" for a in (upn, mail)):
            add("nicknames", nick.casefold(), uid)
        display, first, last = user.get("displayName"), user.get("givenName"), user.get("surname")
        tokens = name_tokens(display) if not (name_tokens(first) and name_tokens(last) and display == f"{first} {last}") \
            else name_tokens(first) + name_tokens(last)
        folded = " ".join(tokens)
        names.append(folded)
        fulls = {folded} - {""}
        words = set(tokens)
        alias = None
        if name_tokens(first) and name_tokens(last) and display != f"{first} {last}":
            alias = " ".join(name_tokens(first) + name_tokens(last))
            words.update(name_tokens(first), name_tokens(last))
            fulls.add(alias)
        if not folded.isascii() or (alias is not None and not alias.isascii()):
            fulls.update({latin_name(display), latin_name(f"{first} {last}") if alias is not None else ""} - {""})
            for word in list(words):
                words.update(latin_tokens(word))
                if latin_tokens(word) and is_abjad(word):
                    for latin in latin_tokens(word):
                        if skeleton(latin):
                            add("skeletons", skeleton(latin), pos)
        for key in fulls:
            add("full_names", key, uid)
        for word in words:
            add("postings", word, pos)
    out: dict[str, Any] = {
        name: {key: (tuple(values) if name in ("postings", "skeletons") or len(values) > 1 else next(iter(values)))
               for key, values in index.items()}
        for name, index in found.items()}
    return {**out, "user_ids": list(users), "user_names": names, "upn_domains": domains}


_TEXT = st.sampled_from(["Ana", "ANA", "ana", "Ben", "Chloé", "Иван", "Петров", "محمد", "علي", "王伟", "O'Brien", "Ana Ben",
                         "", "x_y", "Łęcki"])
_ADDRESS = st.builds(lambda local, domain: f"{local}@{domain}", st.sampled_from(["ana", "ANA", "ben", "a.b", "Wei", "STRAßE", "İla", "Ana.B"]),
                     st.sampled_from(["contoso.example", "Contoso.Example", "fabrikam.example"]))
_PROXY = st.builds(lambda prefix, address: f"{prefix}{address}", st.sampled_from(["SMTP:", "smtp:", "sip:", "X500:smtp:", ""]),
                   _ADDRESS)


@st.composite
def directories(draw: Any) -> dict[str, dict[str, Any]]:
    users = {}
    for i in range(draw(st.integers(0, 12))):
        first, last = draw(st.one_of(st.none(), _TEXT)), draw(st.one_of(st.none(), _TEXT))
        display = draw(st.one_of(st.none(), _TEXT, st.just(f"{first} {last}")))
        user: dict[str, Any] = {"id": f"u{i}", "displayName": display, "givenName": first, "surname": last}
        for name, values in (("userPrincipalName", _ADDRESS), ("mail", _ADDRESS), ("otherMails", st.lists(_ADDRESS, max_size=2)),
                             ("proxyAddresses", st.lists(st.one_of(_PROXY, st.just("")), max_size=3)),
                             ("employeeId", st.one_of(st.sampled_from(["E1", "e1", "E2"]), st.integers(0, 3))),
                             ("onPremisesSamAccountName", st.sampled_from(["ana", "ANA", "ben"])),
                             ("mailNickname", st.sampled_from(["ana", "Ana", "ben", "wei", "strasse", "Straße", "i\u0307la", "İla"]))):
            if draw(st.booleans()):
                user[name] = draw(st.one_of(st.none(), values))
        if draw(st.integers(0, 9)) == 0:
            user[draw(st.sampled_from(["userPrincipalName", "mail", "mailNickname"]))] = ""
        if user.get("userPrincipalName") and draw(st.booleans()):
            user["mail"] = user["userPrincipalName"]  # the mirror then stores one object for both
        users[user["id"]] = user
    return users


@settings(max_examples=150, deadline=None)
@given(directories())
def test_bulk_user_indexes_equal_their_definition(users: dict[str, dict[str, Any]]) -> None:
    expected = reference(users)
    for built in (_index_users(users), _index_users(Table.from_dicts(users))):
        assert {k: list(v) if k in ("user_ids", "user_names") else v for k, v in built.items()} == expected


def test_shared_keys_hold_their_ids_in_position_order() -> None:
    users = {f"u{i}": {"id": f"u{i}", "userPrincipalName": f"u{i}@contoso.example", "mail": "desk@contoso.example",
                       "mailNickname": "Helpdesk", "employeeId": 7, "displayName": "Sam Lee", "givenName": "Sam", "surname": "Lee"}
             for i in (3, 1, 2)}
    built = _index_users(users)
    assert built["exact"]["desk@contoso.example"] == ("u3", "u1", "u2")
    assert built["employee_ids"]["7"] == ("u3", "u1", "u2")
    assert built["nicknames"]["helpdesk"] == ("u3", "u1", "u2")
    assert built["full_names"]["sam lee"] == ("u3", "u1", "u2")
    assert built["postings"]["lee"] == (0, 1, 2)


def test_addresses_whose_casefold_changes_length() -> None:
    """A nickname is the local part of an address by the address's own prefix casefolded ("STRAßE@..."[:8] is
    "strasse@c", so "strasse" is not its local part, while "straße" is); a proxy repeats an address by its whole
    casefolded key. Each case here once made the bulk build differ from the definition when broken."""
    users = {
        "u0": {"id": "u0", "userPrincipalName": "STRAßE@contoso.example", "mailNickname": "strasse",
               "proxyAddresses": ["SMTP:strasse@contoso.example", "smtp:STRAßE@contoso.example"]},
        "u1": {"id": "u1", "userPrincipalName": "a@contoso.example", "mail": "İla@contoso.example", "mailNickname": "i\u0307la",
               "proxyAddresses": ["smtp:İLA@contoso.example", "X500:smtp:b@contoso.example", "smtp:b@contoso.example",
                                  "x500:SMTP:B@contoso.example"]},
        "u2": {"id": "u2", "userPrincipalName": "wei@contoso.example", "otherMails": ["W@fabrikam.example"],
               "mailNickname": "WEI", "proxyAddresses": ["sip:w@fabrikam.example", "smtp:wei@contoso.example", "wei@x.example"]},
        "u3": {"id": "u3", "userPrincipalName": "straße@contoso.example", "mailNickname": "Straße", "mail": "",
               "proxyAddresses": ["", "SMTP:STRASSE@contoso.example"]},
        "u4": {"id": "u4", "userPrincipalName": "Ana.B@contoso.example", "mailNickname": "ana"},  # a prefix, not the part
    }
    expected = reference(users)
    for built in (_index_users(users), _index_users(Table.from_dicts(users))):
        assert {k: list(v) if k in ("user_ids", "user_names") else v for k, v in built.items()} == expected
    assert expected["nicknames"] == {"strasse": ("u0", "u3"), "i\u0307la": "u1", "ana": "u4"}


@settings(max_examples=200, deadline=None)
@given(st.lists(st.builds(lambda local, domain: local + domain, st.sampled_from(["", "a", "b@", "@", "a@b"]),
                          st.sampled_from(["", "@", "@x.example", "x.example", "@y", "@y@z"] + [f"@d{i}" for i in range(12)])),
                max_size=40))
def test_upn_domains_equal_their_definition(keys: list[str]) -> None:
    """More domains than passes, UPNs without "@" or with nothing before it, "@" inside the local part."""
    assert _upn_domains(keys) == {key.rpartition("@")[2] for key in keys if key.rpartition("@")[0]}


# ---------------------------------------------------------------- groups, apps, assignments (made on first use)

def reference_groups(groups: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """The group indexes by their definition, group by group."""
    keys: dict[str, Any] = {}
    names: set[str] = set()
    for gid, group in groups.items():
        _add(keys, gid.casefold(), gid)
        name = folded_name(group.get("displayName"))
        if name:
            _add(keys, name, gid)
            names.add(name)
        if group.get("mail"):
            _add(keys, str(group["mail"]).casefold(), gid)
    return {"group_keys": keys, "group_names": tuple(sorted(names)), "group_name_set": frozenset(names)}


def reference_apps(applications: Mapping[str, Mapping[str, Any]],
                   service_principals: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """The app indexes by their definition, object by object."""
    by: dict[str, dict[str, str]] = {"application": {}, "servicePrincipal": {}}
    keys: dict[str, Any] = {}
    names: set[str] = set()
    for kind, objects in (("application", applications), ("servicePrincipal", service_principals)):
        for oid, obj in objects.items():
            app_id = str(obj.get("appId") or "").casefold()
            ref = app_id or f"{kind}:{oid}"
            if app_id:
                by[kind].setdefault(app_id, oid)
                _add(keys, app_id, ref)
            _add(keys, oid.casefold(), ref)
            for name_field in ("displayName", "appDisplayName"):
                name = folded_name(obj.get(name_field))
                if name:
                    _add(keys, name, ref)
                    names.add(name)
    return {"sp_by_app_id": by["servicePrincipal"], "app_by_app_id": by["application"], "app_keys": keys,
            "app_names": tuple(sorted(names)), "app_name_set": frozenset(names)}


def reference_assignments(assignments: Mapping[str, list[Mapping[str, Any]]]) -> dict[str, tuple[Any, ...]]:
    out: dict[str, list[Any]] = {}
    for listed in assignments.values():
        for assignment in listed:
            if assignment.get("principalId"):
                out.setdefault(assignment["principalId"], []).append(assignment)
    return {k: tuple(v) for k, v in out.items()}


_ID = st.sampled_from(["G1", "g1", "A-1", "a-1", "x", "Sales"])
_NAME = st.one_of(st.none(), st.sampled_from(["Sales", "sales ", "SALES!", "Ventes Été", "ventes ete", "", "営業", "g1"]))


@st.composite
def directory_objects(draw: Any) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any], dict[str, list[dict[str, Any]]]]:
    def objects(fields: dict[str, Any]) -> dict[str, Any]:
        out = {}
        for oid in draw(st.lists(_ID, max_size=6, unique=True)):
            obj: dict[str, Any] = {"id": oid}
            for name, values in fields.items():
                if draw(st.booleans()):
                    obj[name] = draw(values)
            out[oid] = obj
        return out

    groups = objects({"displayName": _NAME, "mail": st.one_of(st.none(), st.sampled_from(["", "Sales", "a@b.example", "A@B.example"]))})
    app_id = st.one_of(st.none(), st.sampled_from(["", "APP1", "app1", "app2", "Sales"]))
    applications = objects({"appId": app_id, "displayName": _NAME})
    sps = objects({"appId": app_id, "displayName": _NAME, "appDisplayName": _NAME})
    assignments = {resource: [{"id": f"{resource}-{i}", "principalId": draw(st.one_of(st.none(), st.sampled_from(["", "u1", "u2", "G1"]))),
                               "resourceId": resource} for i in range(draw(st.integers(0, 3)))]
                   for resource in draw(st.lists(st.sampled_from(["r1", "r2", "r3"]), unique=True))}
    return groups, applications, sps, assignments


@settings(max_examples=150, deadline=None)
@given(directory_objects())
def test_directory_indexes_equal_their_definition(found: tuple[Any, ...]) -> None:
    groups, applications, sps, assignments = found
    expected = {**reference_groups(groups), **reference_apps(applications, sps),
                "assignments_by_principal": reference_assignments(assignments)}
    grouped = concat_groups([pack_groups(assignments)]) if assignments else {}
    for tables in (False, True):
        snapshot = DirectorySnapshot(
            tenant="t", tenant_id="t", as_of=None, interval_minutes=15,
            groups=Table.from_dicts(groups) if tables else groups,
            applications=Table.from_dicts(applications) if tables else applications,
            service_principals=Table.from_dicts(sps) if tables else sps,
            app_role_assignments=grouped if tables else assignments)
        built = {**_index_groups(snapshot), **_index_apps(snapshot), "assignments_by_principal": _index_assignments(snapshot)}
        assert built == expected
        for principal, listed in built["assignments_by_principal"].items():  # the very assignment objects, in order
            assert [a["id"] for a in listed] == [a["id"] for a in expected["assignments_by_principal"][principal]]


def test_records_column_reads_a_table_or_each_record() -> None:
    grouped = concat_groups([pack_groups({"r1": [{"id": "a", "principalId": "u1"}, {"id": "b"}], "r2": [{"id": "c", "principalId": "u2"}]})])
    records = [r for listed in grouped.values() for r in listed]
    assert records_column(records, "principalId") == ["u1", None, "u2"]
    assert records_column(records[1:], "principalId") == [None, "u2"]  # not the whole table: one get each
    assert records_column(records[::-1], "principalId") == ["u2", None, "u1"]
    assert records_column([{"principalId": "u3"}, *records], "principalId") == ["u3", "u1", None, "u2"]
    assert records_column([], "principalId") == []


def test_group_app_and_assignment_indexes_are_made_on_first_use_and_kept() -> None:
    """Not in build() (a cold start's first answer is most often a user's): made once on first use, kept by a
    freshness refresh, a patch over the same collections and the prepared index (pickled), made again from a newer
    collection."""
    import pickle
    from dataclasses import replace

    from entra_mcp.identity.view import DirectoryView

    groups = {"g1": {"id": "g1", "displayName": "Sales Team", "mail": "Sales@contoso.example"}}
    sps = {"s1": {"id": "s1", "appId": "APP-1", "displayName": "Payroll"}}
    assignments = {"s1": [{"id": "a1", "principalId": "u1", "resourceId": "s1"}]}
    snap = DirectorySnapshot(tenant="t", tenant_id="t", as_of=None, interval_minutes=15, version=1,
                             users=Table.from_dicts({"u1": {"id": "u1", "userPrincipalName": "u1@contoso.example"}}),
                             groups=Table.from_dicts(groups), service_principals=Table.from_dicts(sps),
                             app_role_assignments=concat_groups([pack_groups(assignments)]))
    view = DirectoryView.build(snap)
    assert not [name for name in view._derived if name.startswith("view.")]
    keys = view.group_keys
    assert keys == {"g1": "g1", "sales team": "g1", "sales@contoso.example": "g1"} and view.group_keys is keys
    assert view.app_refs("payroll") == ("app-1",) and view.longest_name == 2
    assert [a["id"] for a in view.assignments_of("u1")] == ["a1"]
    assert replace(view, snapshot=replace(snap, stamp=2)).group_keys is keys
    view.index_on_first_use()
    loaded = pickle.loads(pickle.dumps(view))
    assert {"view.groups", "view.apps", "view.assignments", "view.longest_name"} <= set(loaded._derived)
    assert loaded.group_keys == keys and loaded.sp_by_app_id == {"app-1": "s1"}
    same = view.updated(replace(snap, version=2))
    assert same is not None and same.group_keys is keys
    renamed = Table.from_dicts({"g1": {**groups["g1"], "displayName": "Sales EMEA Team"}})
    newer = view.updated(replace(snap, version=3, groups=renamed))
    assert newer is not None and newer.group_keys == {"g1": "g1", "sales emea team": "g1", "sales@contoso.example": "g1"}
    assert newer.longest_name == 3 and newer.sp_by_app_id is view.sp_by_app_id
