"""The user indexes are built column by column (identity/view.py `_index_users`). Checked here against their
definition written one user at a time: for any users (colliding addresses in mixed case, proxies repeating the UPN or
each other, numeric employee ids, nicknames equal to an address's local part, names in other scripts, missing names),
the bulk build gives exactly the same indexes, from a mirror Table as from plain dicts."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from entra_mcp.identity.text import is_abjad, latin_name, latin_tokens, name_tokens, skeleton
from entra_mcp.identity.view import _index_users
from entra_mcp.mirror.table import Table


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
_ADDRESS = st.builds(lambda local, domain: f"{local}@{domain}", st.sampled_from(["ana", "ANA", "ben", "a.b", "Wei", "STRAßE", "İla"]),
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
    }
    expected = reference(users)
    for built in (_index_users(users), _index_users(Table.from_dicts(users))):
        assert {k: list(v) if k in ("user_ids", "user_names") else v for k, v in built.items()} == expected
    assert expected["nicknames"] == {"strasse": ("u0", "u3"), "i\u0307la": "u1"}
