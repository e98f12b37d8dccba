"""DirectoryView: the indexes the identity answers need, built once per snapshot version.

A view never changes after `build()`; a new snapshot version gets a new view. It holds no copies of the directory
objects, only keys pointing at the snapshot's dicts, so its memory is a fraction of the snapshot's.

Indexes
- exact identifiers (casefolded): userPrincipalName, mail, otherMails, proxyAddresses (answered with or without
  the `smtp:` / `sip:` prefix);
  object ids through the snapshot's own dict; employeeId as written (tried as given, upper and lower case);
  onPremisesSamAccountName separately (it also answers `DOMAIN\\sam` and `sam@domain`);
- the local part of a UPN or mail address (`wei.wang` answers `wei.wang@<a tenant domain>`, found through the exact
  index and the tenant's few domains, so it costs no memory) and mailNickname where it differs from both;
- folded name tokens (casefold + diacritics stripped) of displayName, givenName and surname, with a sorted
  vocabulary for prefix search and rapidfuzz edit distance for typos; a name written in another script is also
  indexed by its Latin spelling (anyascii: "Иван Петров" -> "ivan petrov", "王伟" -> "wang wei"), and one in an
  abjad (Arabic, Hebrew), which writes no short vowels, by its consonant skeleton ("محمد" ~ "Mohammed");
- reverse membership: member id -> the groups it is a DIRECT member of (transitive closure is computed on demand);
- domains by name; and, made on first use (a group, app or ticket answer): app role assignments by principal id,
  service principals and applications by appId, object id and name, groups by object id, name and mail.
"""

from __future__ import annotations

import gc
import heapq
from bisect import bisect_left
from collections import defaultdict, deque
from itertools import chain, compress, repeat
from operator import and_, is_not, itemgetter, methodcaller, ne, not_
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Callable, Iterable, Mapping

from rapidfuzz import fuzz, process
from rapidfuzz.distance import OSA

from ..mirror.snapshot import AreaStatus, DirectorySnapshot
from ..mirror.table import records_column
from . import member_index_child
from .member_index import MemberOf
from .text import folded_name, is_abjad, latin_name, latin_tokens, name_tokens, skeleton, utcnow

_EMPTY: tuple[str, ...] = ()
_EMPTY_POSITIONS: tuple[int, ...] = ()

# Scores of one query token against one name token.
_EXACT, _PREFIX_BASE, _TYPO1, _TYPO2 = 1.0, 0.80, 0.72, 0.55
_MAX_PREFIX_TOKENS = 3000
_SCORE_CACHE_SIZE = 8
# DirectoryView.updated patches at most this many changed users; more are indexed afresh
PATCH_MAX_CHANGED = 2000
# a consonant skeleton match (an abjad name) is a guess about vowels: ranked like a one-letter typo
_SKELETON = 0.72


def _add(index: dict[str, Any], key: str, value: str) -> None:
    """Multi-valued index kept lean: a plain value while unique, a tuple once a key is shared."""
    old = index.setdefault(key, value)
    if old is value or old == value:
        return
    if isinstance(old, tuple):
        if value not in old:
            index[key] = old + (value,)
    else:
        index[key] = (old, value)


_INDEXED_USER_FIELDS = (
    "userPrincipalName", "mail", "otherMails", "proxyAddresses", "employeeId", "onPremisesSamAccountName",
    "displayName", "givenName", "surname", "mailNickname",
)


def _column(objects: Mapping[str, Mapping[str, Any]], name: str) -> list[Any]:
    """Every object's `name`, in iteration order: straight from the column of a mirror Table, else one get each."""
    column = getattr(objects, "column", None)
    if column is not None:
        return column(name)  # type: ignore[no-any-return]
    return [obj.get(name) for obj in objects.values()]


def _values(index: Mapping[str, Any], key: str) -> tuple[str, ...]:
    found = index.get(key)
    if found is None:
        return _EMPTY
    return found if isinstance(found, tuple) else (found,)


def _bulk_add(index: dict[str, Any], keys: list[str], values: list[str], position: Callable[[str], int]) -> None:
    """_add(index, key, value) for every pair, at C speed: each key is set once; the few keys that several ids share
    are then made the tuple of those ids in position order (what _add gives when called in position order)."""
    held = list(map(index.setdefault, keys, values))
    shared: dict[str, set[str]] = {}
    for i in compress(range(len(keys)), map(is_not, held, values)):
        old = held[i]
        if old == values[i]:
            continue  # the same id (another object of an equal string)
        found = shared.get(keys[i])
        if found is None:
            current = index[keys[i]]
            found = shared[keys[i]] = set(current) if type(current) is tuple else {current}
        found.add(values[i])
    for key, found in shared.items():
        index[key] = tuple(sorted(found, key=position)) if len(found) > 1 else next(iter(found))


def _folded_keys(texts: list[str]) -> list[str]:
    """The casefolded key of each text: the text object itself where it is already folded (saves a copy per key),
    without a call per text."""
    return [text if text == key else key for text, key in zip(texts, map(str.casefold, texts))]


def _present(values: list[Any], user_ids: list[str]) -> tuple[list[Any], list[str]]:
    """(the values that are set, the ids of their users): two lists, no pair objects (a bulk build makes its
    temporary objects in one block each, so freeing them leaves no holes among the kept ones); the very lists when
    every value is set."""
    if all(values):
        return values, user_ids
    return [v for v in values if v], [uid for v, uid in zip(values, user_ids) if v]


def _present_items(lists: list[Any], user_ids: list[str]) -> tuple[list[Any], list[str]]:
    """_present over list values (otherMails, proxyAddresses): each set item and its user's id, in order."""
    return [item for found in lists if found for item in found if item], _item_owners(lists, user_ids)


def _item_owners(lists: list[Any], owners: list[Any]) -> list[Any]:
    """The owner (a user's id, a value of the user's) of each set item of `lists`, in the order of _present_items."""
    return [owner for found, owner in zip(lists, owners) if found for item in found if item]


def _folded_column(texts: list[Any]) -> list[Any]:
    """The casefolded key of each set text (as _folded_keys), None for each unset one: a list as long as `texts` (a
    column read by row)."""
    if all(texts):
        return _folded_keys(texts)
    keys = iter(_folded_keys([text for text in texts if text]))
    return [next(keys) if text else None for text in texts]


def _not_local_part(nick_keys: list[Any], addresses: list[Any], address_keys: list[Any]) -> list[bool]:
    """For each row: its nickname key is set and is not the local part of its address (`address[:len(key) + 1]`
    casefolded is not `key + "@"`); `address_keys` are the addresses casefolded (None where unset or not to check).

    An ASCII address folds letter by letter, so its folded prefix is the prefix of its key: two startswith at C speed
    per row; the rows with another address are checked by the definition."""
    starts = address_keys if all(address_keys) else [key or "" for key in address_keys]
    keys = nick_keys if all(nick_keys) else [key or "" for key in nick_keys]
    # key + "@" starts the address key: the key starts it and "@" follows (no "key@" string made per row)
    local = map(and_, map(str.startswith, starts, keys), map(str.startswith, starts, repeat("@"), map(len, keys)))
    out = list(map(not_, local)) if keys is nick_keys else list(map(and_, map(bool, nick_keys), map(not_, local)))
    texts = addresses if all(addresses) else [text or "" for text in addresses]
    for i in compress(range(len(texts)), map(not_, map(str.isascii, texts))):
        key = nick_keys[i]
        if key is not None and address_keys[i] is not None:
            out[i] = texts[i][: len(key) + 1].casefold() != key + "@"
    return out


def _index_users(users: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """The user indexes of DirectoryView (its fields of the same names) plus "upn_domains", for `users` in order.

    Built column by column (a list operation per column and per kind of key, at C speed where it can be) rather than
    user by user: the same indexes, a fraction of the cost on a large tenant. A multi-valued key holds its ids in
    position order; a name is tokenised once per distinct (displayName, givenName, surname)."""
    (upns, mails, other_mails, proxies, employee_ids_col, accounts, displays, givens, surnames,
     nicks) = [_column(users, name) for name in _INDEXED_USER_FIELDS]
    user_ids: list[str] = list(users)  # object ids are found in snapshot.users itself (see exact_users)
    n = len(user_ids)
    rows = getattr(users, "pos", None)  # a mirror Table's own id -> row map (answers use it too)
    position = (rows if rows is not None and len(rows) == n else dict(zip(user_ids, range(n)))).__getitem__

    # exact identifiers: UPN, mail (unless the very object of the UPN: the mirror stores an equal one once), other
    # mails, then the proxy addresses whose address part is not already one of the user's keys
    exact: dict[str, Any] = {}
    upn_keys = _folded_column(upns)  # by row, None where unset
    texts, ids = _present(upn_keys, user_ids)
    _bulk_add(exact, texts, ids, position)
    upn_domains = _upn_domains(texts)
    mail_keys = _folded_column([mail if mail is not upn else None for mail, upn in zip(mails, upns)])
    _bulk_add(exact, *_present(mail_keys, user_ids), position)
    texts, ids = _present_items(other_mails, user_ids)
    _bulk_add(exact, _folded_keys(texts), ids, position)
    has_own = {*compress(user_ids, mail_keys), *ids}  # the few users with a key besides their UPN
    # a proxy's address part is already a key when it is the user's UPN, mail or other mail (the common "SMTP:" + UPN)
    # or one of its earlier proxies; only the others become keys. Compared with the user's UPN key for every proxy at
    # C speed; the proxies of the users with other keys are looked up in `exact` after
    texts, ids = _present_items(proxies, user_ids)
    keys = _folded_keys(texts)
    kept = list(map(ne, map(itemgetter(2), map(str.partition, keys, repeat(":"))), _item_owners(proxies, upn_keys)))
    get = exact.get
    for i in compress(range(len(ids)), map(has_own.__contains__, ids)):
        if kept[i]:
            held, uid = get(keys[i].partition(":")[2]), ids[i]
            kept[i] = held != uid and not (type(held) is tuple and uid in held)
    if any(map(ne, map(str.count, compress(keys, kept), repeat(":")), repeat(1))):
        kept = _not_after_own_proxy(kept, keys, ids)  # "a@b" or "X500:smtp:a@b": may be a later proxy's address
    _bulk_add(exact, list(compress(keys, kept)), list(compress(ids, kept)), position)
    del texts, ids, keys, kept, has_own  # before the next temporary lists are made

    # employeeId kept as written (lookups try the query as given, upper and lower case); accounts; nicknames that
    # are not the local part of the user's UPN or mail
    employee_ids: dict[str, Any] = {}
    texts, ids = _present(employee_ids_col, user_ids)
    _bulk_add(employee_ids, texts if {*map(type, texts)} <= {str} else [e if isinstance(e, str) else str(e) for e in texts],
              ids, position)
    sam: dict[str, Any] = {}
    texts, ids = _present(accounts, user_ids)
    _bulk_add(sam, _folded_keys(texts), ids, position)
    nicknames: dict[str, Any] = {}
    nick_keys = _folded_column(nicks)
    kept = _not_local_part(nick_keys, upns, upn_keys)
    for i in compress(range(n), mail_keys):  # the few users whose mail is not their UPN
        if kept[i] and mails[i][: len(nick_keys[i]) + 1].casefold() == nick_keys[i] + "@":
            kept[i] = False
    _bulk_add(nicknames, list(compress(nick_keys, kept)), list(compress(user_ids, kept)), position)
    del texts, ids, upn_keys, mail_keys, nick_keys, kept  # the temporary lists go before the name indexes

    # names: each distinct (displayName, givenName, surname) is tokenised once, then its users' positions are added;
    # users are grouped by the three at C speed (a key is kept per distinct name, the others are freed at once)
    by_name: defaultdict[tuple[Any, Any, Any], list[int]] = defaultdict(list)
    deque(map(list.append, map(by_name.__getitem__, zip(displays, givens, surnames)), range(n)), maxlen=0)
    positions = [(display, given, surname, at) for (display, given, surname), at in by_name.items()]
    by_name.clear()
    user_names: list[str] = [""] * n
    token_cache: dict[str, list[str]] = {}  # givenName and surname repeat a lot
    names_seen: dict[str, str] = {}
    full_lists: dict[str, list[list[int]]] = {}
    token_lists: dict[str, list[list[int]]] = {}
    skeleton_lists: dict[str, list[list[int]]] = {}

    def tokens_of(text: str | None) -> list[str]:
        if not text:
            return []
        found = token_cache.get(text)
        if found is None:
            found = token_cache[text] = name_tokens(text)
        return found

    for display, given, surname, at in positions:
        given_tokens = tokens_of(given)
        surname_tokens = tokens_of(surname)
        if given_tokens and surname_tokens and display == f"{given} {surname}":
            display_tokens = given_tokens + surname_tokens  # the usual name: no second folding
            alias = None
        else:
            display_tokens = name_tokens(display)
            alias = " ".join((*given_tokens, *surname_tokens)) if given_tokens and surname_tokens else None
        display_name = " ".join(display_tokens)
        display_name = names_seen.setdefault(display_name, display_name)  # one copy per name
        for p in at:
            user_names[p] = display_name
        fulls = {display_name} if display_name else set()
        tokens = {*display_tokens}
        if alias is not None:
            tokens.update(given_tokens, surname_tokens)
            fulls.add(alias)
        bares: set[str] = set()
        if not display_name.isascii() or (alias is not None and not alias.isascii()):
            # another script: the Latin spelling the desk types is a name of the user too
            fulls.update(full for full in (latin_name(display), latin_name(f"{given} {surname}") if alias is not None else "")
                         if full)
            for token in list(tokens):
                spelled = latin_tokens(token)
                tokens.update(spelled)
                if spelled and is_abjad(token):
                    bares.update(bare for bare in map(skeleton, spelled) if bare)
        for key in fulls:
            full_lists.setdefault(key, []).append(at)
        for token in tokens:
            token_lists.setdefault(token, []).append(at)
        for bare in bares:
            skeleton_lists.setdefault(bare, []).append(at)

    def merged(lists: list[list[int]]) -> tuple[int, ...]:
        return tuple(lists[0]) if len(lists) == 1 else tuple(sorted(chain.from_iterable(lists)))

    full_names: dict[str, Any] = {}
    for key, lists in full_lists.items():
        found = merged(lists)
        full_names[key] = user_ids[found[0]] if len(found) == 1 else tuple(map(user_ids.__getitem__, found))
    return {
        "user_ids": user_ids, "user_names": user_names, "exact": exact, "sam": sam,
        "employee_ids": employee_ids, "nicknames": nicknames, "full_names": full_names, "upn_domains": upn_domains,
        "postings": {token: merged(lists) for token, lists in token_lists.items()},
        "skeletons": {bare: merged(lists) for bare, lists in skeleton_lists.items()},
    }


def _not_after_own_proxy(kept: list[bool], keys: list[str], uids: list[str]) -> list[bool]:
    """`kept` (a flag per proxy key; a user's proxies are listed together) with the proxies whose address part is the
    key of an earlier kept proxy of the same user turned off ("smtp:a@b" after "a@b", "X500:smtp:a@b" after
    "smtp:a@b")."""
    out = list(kept)
    for i, key in enumerate(keys):
        if out[i]:
            address = key.partition(":")[2]
            j = i - 1
            while j >= 0 and uids[j] is uids[i]:
                if out[j] and keys[j] == address:
                    out[i] = False
                    break
                j -= 1
    return out


def _upn_domains(upn_keys: list[str]) -> set[str]:
    """The domains of casefolded UPNs (the part after the last "@", when something comes before it).

    A tenant's UPNs share a few domains: each pass takes the first UPN left, then drops every UPN ending in "@" + a
    domain found (one endswith each, at C speed); after a few passes the rest is split one by one."""
    found: set[str] = set()
    pending = upn_keys
    for _ in range(8):
        if not pending:
            return found
        local, _, domain = pending[0].rpartition("@")
        if local:
            found.add(domain)
        rest = pending[1:]
        pending = list(compress(rest, map(not_, map(str.endswith, rest, repeat(tuple(f"@{d}" for d in found))))))
    return found | {domain for local, _, domain in map(methodcaller("rpartition", "@"), pending) if local}


def _index_users_domains(users: Mapping[str, Mapping[str, Any]]) -> set[str]:
    """The casefolded domains of every user's UPN (what _index_users collects as "upn_domains")."""
    return _upn_domains(_folded_keys([upn for upn in _column(users, "userPrincipalName") if upn]))


def _patched_keys(index: dict[str, Any], was: dict[str, Any], now: dict[str, Any], pos: Any) -> dict[str, Any]:
    """A copy of the multi-valued `index` (key -> id, or ids in position order) with the entries of `was` removed
    and those of `now` added (both built by _index_users over the same few users)."""
    out = dict(index)
    for key, found in was.items():
        gone = set(found) if isinstance(found, tuple) else {found}
        held = out.get(key)
        if held is None:
            continue
        rest = tuple(uid for uid in (held if isinstance(held, tuple) else (held,)) if uid not in gone)
        if not rest:
            del out[key]
        else:
            out[key] = rest if len(rest) > 1 else rest[0]
    for key, found in now.items():
        held = out.get(key)
        merged = dict.fromkeys((*(() if held is None else held if isinstance(held, tuple) else (held,)),
                                *(found if isinstance(found, tuple) else (found,))))
        ordered = tuple(sorted(merged, key=pos))
        out[key] = ordered if len(ordered) > 1 else ordered[0]
    return out


def _patched_positions(index: dict[str, tuple[int, ...]], was: dict[str, tuple[int, ...]],
                       now: dict[str, tuple[int, ...]], rows: list[int]) -> dict[str, tuple[int, ...]]:
    """A copy of a token -> user positions index with the postings of `was` removed and those of `now` added; the
    positions in `was` and `now` are indexes into `rows` (the real positions of the users they were built over)."""
    out = dict(index)
    for key, found in was.items():
        gone = {rows[i] for i in found}
        rest = tuple(p for p in out.get(key, _EMPTY_POSITIONS) if p not in gone)
        if rest:
            out[key] = rest
        else:
            out.pop(key, None)
    for key, found in now.items():
        out[key] = tuple(sorted({*out.get(key, _EMPTY_POSITIONS), *(rows[i] for i in found)}))
    return out


def _vocabulary(postings: Mapping[str, Any]) -> tuple[tuple[str, ...], dict[tuple[str, int], tuple[str, ...]]]:
    """(sorted tokens, (first letter, length) -> tokens) of the name postings."""
    vocabulary = tuple(sorted(postings))
    buckets: defaultdict[tuple[str, int], list[str]] = defaultdict(list)
    for word in vocabulary:
        buckets[(word[0], len(word))].append(word)
    return vocabulary, {key: tuple(words) for key, words in buckets.items()}


def _index_domains(snapshot: DirectorySnapshot) -> dict[str, dict[str, Any]]:
    return {str(d.get("id", "")).casefold(): d for d in snapshot.domains if d.get("id")}


def _folded_names(texts: list[Any]) -> list[str]:
    """folded_name of each text, computed once per distinct text (group and app names repeat)."""
    cache: dict[Any, str] = {}
    for text in texts:
        if text not in cache:
            cache[text] = folded_name(text)
    return list(map(cache.__getitem__, texts))


def _index_groups(snapshot: DirectorySnapshot) -> dict[str, Any]:
    groups = snapshot.groups
    ids = list(groups)
    position = dict(zip(ids, range(len(ids)))).__getitem__
    names = _folded_names(_column(groups, "displayName"))
    mails = _column(groups, "mail")
    group_keys: dict[str, Any] = {}
    # each group's id, folded name and mail (the order _add would give them group by group: ids in group order)
    _bulk_add(group_keys, _folded_keys(ids), ids, position)
    _bulk_add(group_keys, *_present(names, ids), position)
    texts, owners = _present(mails, ids)
    _bulk_add(group_keys, _folded_keys([str(mail) for mail in texts]), owners, position)
    group_names = set(names)
    group_names.discard("")
    return {"group_keys": group_keys, "group_names": tuple(sorted(group_names)), "group_name_set": frozenset(group_names)}


def _index_apps(snapshot: DirectorySnapshot) -> dict[str, Any]:
    sp_by_app_id: dict[str, str] = {}
    app_by_app_id: dict[str, str] = {}
    app_keys: dict[str, Any] = {}
    app_names: set[str] = set()
    for kind, objects, by_app_id in (
        ("application", snapshot.applications, app_by_app_id),
        ("servicePrincipal", snapshot.service_principals, sp_by_app_id),
    ):
        app_ids = [str(app_id or "").casefold() for app_id in _column(objects, "appId")]
        names = _folded_names(_column(objects, "displayName"))
        app_names_ = _folded_names(_column(objects, "appDisplayName"))
        for oid, app_id, name, app_name in zip(objects, app_ids, names, app_names_):
            ref = app_id or f"{kind}:{oid}"  # an object without appId is still findable by its id
            if app_id:
                by_app_id.setdefault(app_id, oid)
                _add(app_keys, app_id, ref)
            _add(app_keys, oid.casefold(), ref)
            for folded in (name, app_name):
                if folded:
                    _add(app_keys, folded, ref)
                    app_names.add(folded)
    return {"sp_by_app_id": sp_by_app_id, "app_by_app_id": app_by_app_id, "app_keys": app_keys,
            "app_names": tuple(sorted(app_names)), "app_name_set": frozenset(app_names)}


def _index_assignments(snapshot: DirectorySnapshot) -> dict[str, tuple[Mapping[str, Any], ...]]:
    """principal id -> its app role assignments, in the mirror's order."""
    assignments = list(chain.from_iterable(snapshot.app_role_assignments.values()))
    principals = records_column(assignments, "principalId")
    by_principal: defaultdict[Any, list[Mapping[str, Any]]] = defaultdict(list)
    deque(map(list.append, map(by_principal.__getitem__, principals), assignments), maxlen=0)
    return {k: tuple(v) for k, v in by_principal.items() if k}


@dataclass(frozen=True)
class NameHit:
    """One fuzzy name match: the user id and a score in [0, 1.1]."""

    user_id: str
    score: float


@dataclass(frozen=True, eq=False)
class DirectoryView:
    snapshot: DirectorySnapshot
    built_at: datetime
    user_ids: tuple[str, ...]  # position -> user id (postings hold positions)
    user_names: tuple[str, ...]  # position -> folded displayName
    exact: dict[str, Any]  # casefolded UPN, mail, other mail, proxy address -> user id or tuple of ids
    sam: dict[str, Any]  # casefolded onPremisesSamAccountName -> user id(s)
    employee_ids: dict[str, Any]  # employeeId as stored -> user id(s)
    nicknames: dict[str, Any]  # casefolded mailNickname that is not the UPN's or mail's local part -> user id(s)
    postings: dict[str, tuple[int, ...]]  # folded name token -> user positions
    vocabulary: tuple[str, ...]  # sorted tokens
    typo_buckets: dict[tuple[str, int], tuple[str, ...]]  # (first letter, length) -> tokens, for typo search
    full_names: dict[str, Any]  # folded displayName (and its Latin spelling) -> user id(s)
    skeletons: dict[str, tuple[int, ...]]  # consonant skeleton of a token of an abjad name -> user positions
    member_of: MemberOf  # member id -> direct group ids (compact: identity/member_index.py)
    domains: dict[str, dict[str, Any]]  # casefolded domain name -> domain dict
    known_domains: frozenset[str]  # domain names of the tenant and of its UPNs (for sam@domain)
    _scores_cache: dict[str, dict[int, float]] = field(default_factory=dict, repr=False)
    # name -> (the objects it was derived from, value): indexes the answers derive from this view's collections on
    # first use (derived()); shared by the copies a freshness refresh makes, so they survive it
    _derived: dict[str, tuple[tuple[Any, ...], Any]] = field(default_factory=dict, repr=False)

    # ------------------------------------------------------------ build

    @classmethod
    def build(cls, snapshot: DirectorySnapshot, *, now: datetime | None = None) -> "DirectoryView":
        """Index `snapshot` (about 2-3 s and 60 MB for 100,000 users and 600,000 memberships)."""
        # Building allocates a million small objects and frees none: the cyclic GC would only rescan them.
        gc_was_enabled = gc.isenabled()
        gc.disable()
        try:
            return cls._build(snapshot, now)
        finally:
            if gc_was_enabled:
                gc.enable()

    @classmethod
    def _build(cls, snapshot: DirectorySnapshot, now: datetime | None) -> "DirectoryView":
        users = _index_users(snapshot.users)
        users["user_ids"] = user_ids = tuple(users["user_ids"])
        # a server's cold start may have had a child build the reverse memberships meanwhile (member_index_child)
        member_of = member_index_child.take(snapshot, user_ids)
        if member_of is None:
            member_of = MemberOf.build(snapshot.members, user_ids)
        return cls._assemble(snapshot, now, users, member_of, _index_domains(snapshot))

    @classmethod
    def _assemble(cls, snapshot: DirectorySnapshot, now: datetime | None, users: dict[str, Any],
                  member_of: MemberOf, domains: dict[str, dict[str, Any]],
                  vocabulary: tuple[tuple[str, ...], dict[tuple[str, int], tuple[str, ...]]] | None = None) -> "DirectoryView":
        words, typo_buckets = vocabulary if vocabulary is not None else _vocabulary(users["postings"])
        return cls(
            snapshot=snapshot,
            built_at=utcnow(now),
            user_ids=tuple(users["user_ids"]),
            user_names=tuple(users["user_names"]),
            exact=users["exact"],
            sam=users["sam"],
            employee_ids=users["employee_ids"],
            nicknames=users["nicknames"],
            skeletons=users["skeletons"],
            postings=users["postings"],
            vocabulary=words,
            typo_buckets=typo_buckets,
            full_names=users["full_names"],
            member_of=member_of,
            known_domains=frozenset(users["upn_domains"] | set(domains)),
            domains=domains,
        )

    def updated(self, snapshot: DirectorySnapshot, *, now: datetime | None = None,
                max_changed: int = PATCH_MAX_CHANGED) -> "DirectoryView | None":
        """This view's indexes brought to `snapshot`, a later version of the same mirror, by patching what changed:
        the entries of the users whose indexed properties changed, the direct groups of the members whose groups
        changed; the domains are indexed again, and the group, app and assignment indexes (made on first use) are
        kept when the snapshot holds the very same collections. Equal to build(snapshot), and
        this view is left as it is (it keeps answering meanwhile). None when a build is the better way: users were
        added or removed (every later position moves), or more than `max_changed` users changed."""
        gc_was_enabled = gc.isenabled()
        gc.disable()
        try:
            return self._updated(snapshot, now, max_changed)
        finally:
            if gc_was_enabled:
                gc.enable()

    def _updated(self, snapshot: DirectorySnapshot, now: datetime | None, max_changed: int) -> "DirectoryView | None":
        old_users, new_users = self.snapshot.users, snapshot.users
        if len(new_users) != len(self.user_ids) or tuple(new_users) != self.user_ids:
            return None
        changed: set[int] = set()
        maybe = snapshot.changed_ids(self.snapshot, "users", new_users)
        if maybe is not None:  # the users in the mirror's rewritten buckets: compare those only
            pos = getattr(new_users, "pos", None) or {uid: p for p, uid in enumerate(self.user_ids)}
            for uid in maybe:
                before_user, after_user = old_users[uid], new_users[uid]
                if any(before_user.get(name) != after_user.get(name) for name in _INDEXED_USER_FIELDS):
                    changed.add(pos[uid])
            if len(changed) > max_changed:
                return None
        else:  # no bucket revisions (a snapshot built by hand): compare the indexed columns
            n = len(self.user_ids)
            for name in _INDEXED_USER_FIELDS:
                before, after = _column(old_users, name), _column(new_users, name)
                if before != after:
                    changed.update(compress(range(n), map(ne, before, after)))
                    if len(changed) > max_changed:
                        return None
        users: dict[str, Any] = {"user_ids": self.user_ids, "user_names": self.user_names, "exact": self.exact,
                                 "sam": self.sam, "employee_ids": self.employee_ids, "nicknames": self.nicknames,
                                 "full_names": self.full_names, "postings": self.postings, "skeletons": self.skeletons}
        vocabulary = (self.vocabulary, self.typo_buckets)
        upn_domains: set[str] | None = None  # None: the UPN domains did not change
        if changed:
            rows = sorted(changed)
            ids = [self.user_ids[p] for p in rows]
            was = _index_users({uid: old_users[uid] for uid in ids})
            now_ = _index_users({uid: new_users[uid] for uid in ids})
            position = (getattr(new_users, "pos", None) or {uid: p for p, uid in enumerate(self.user_ids)}).__getitem__
            for key in ("exact", "sam", "employee_ids", "nicknames", "full_names"):
                if was[key] or now_[key]:
                    users[key] = _patched_keys(users[key], was[key], now_[key], position)
            for key in ("postings", "skeletons"):
                if was[key] or now_[key]:
                    users[key] = _patched_positions(users[key], was[key], now_[key], rows)
            names = list(self.user_names)
            for i, p in enumerate(rows):
                names[p] = now_["user_names"][i]
            users["user_names"] = tuple(names)
            if users["postings"].keys() != self.postings.keys():
                vocabulary = _vocabulary(users["postings"])
            if was["upn_domains"] != now_["upn_domains"]:  # a domain only these users had may be gone
                upn_domains = _index_users_domains(new_users)
        domains = _index_domains(snapshot)
        if upn_domains is None and domains.keys() != self.domains.keys():
            upn_domains = _index_users_domains(new_users)  # the tenant's domains changed: which are the UPNs' own?
        users["upn_domains"] = self.known_domains if upn_domains is None else upn_domains
        old_members, new_members = self.snapshot.members, snapshot.members
        if list(old_members) != list(new_members):
            member_of = MemberOf.build(new_members, self.user_ids)
        else:
            member_of = self.member_of
            maybe = snapshot.changed_ids(self.snapshot, "members", new_members)
            moved = [gid for gid in (new_members if maybe is None else maybe) if new_members[gid] != old_members[gid]]
            if moved:
                changes: dict[str, tuple[str, ...]] = {}

                def now_in(member: str) -> tuple[str, ...]:
                    found = changes.get(member)
                    return member_of.groups(member, new_users) if found is None else found

                order = {gid: i for i, gid in enumerate(new_members)}.__getitem__
                for gid in moved:
                    before_ids, after_ids = old_members[gid].keys(), new_members[gid].keys()
                    for member in after_ids - before_ids:
                        changes[member] = tuple(sorted((*now_in(member), gid), key=order))
                    for member in before_ids - after_ids:
                        changes[member] = tuple(g for g in now_in(member) if g != gid)
                member_of = member_of.patched(changes)
        patched = self._assemble(snapshot, now, users, member_of, domains, vocabulary)
        # the derived indexes are keyed by the very collections they read: those of collections the reload reused
        # stay valid (the others would only keep the older collections alive until their next use)
        live = {id(c) for c in (*snapshot.collections.values(), snapshot.users, snapshot.groups, snapshot.members,
                                snapshot.applications, snapshot.service_principals, snapshot.app_role_assignments)}
        patched._derived.update({name: found for name, found in self._derived.items()
                                 if all(id(s) in live or not s or isinstance(s, (bool, int, str)) for s in found[0])})
        return patched

    def derived(self, name: str, sources: tuple[Any, ...], make: Callable[[], Any]) -> Any:
        """The index `name` that `make()` derives from `sources` (collections of this view's snapshot), made once
        and kept while the view holds those very collections (a refresh that changed no object keeps them; a newer
        snapshot of one of them makes it again)."""
        found = self._derived.get(name)
        if found is not None and len(found[0]) == len(sources) and all(
                a is b or (not a and not b) for a, b in zip(found[0], sources)):  # two empty collections are alike
            return found[1]
        value = make()
        self._derived[name] = (sources, value)
        return value

    # ------------------------------------------------------------ indexed on first use
    # Groups, apps and app role assignments are indexed the first time a group, app or ticket answer needs them (tens
    # of ms on a large tenant), not in build(): a server's first answer is most often a user's, and a cold start
    # indexes everything else before it. Kept in `_derived` with the collections they were made from, so a freshness
    # refresh and a patch over the same collections keep them, and the prepared index carries them (derive_indexes).

    ON_FIRST_USE = ("group_keys", "group_names", "group_name_set", "sp_by_app_id", "app_by_app_id", "app_keys",
                    "app_names", "app_name_set", "longest_name", "assignments_by_principal")

    def _groups_index(self) -> dict[str, Any]:
        snap = self.snapshot
        return self.derived("view.groups", (snap.groups,), lambda: _index_groups(snap))  # type: ignore[no-any-return]

    def _apps_index(self) -> dict[str, Any]:
        snap = self.snapshot
        return self.derived(  # type: ignore[no-any-return]
            "view.apps", (snap.applications, snap.service_principals), lambda: _index_apps(snap))

    @property
    def group_keys(self) -> dict[str, Any]:
        """casefolded id / folded name / mail -> group id(s)"""
        return self._groups_index()["group_keys"]  # type: ignore[no-any-return]

    @property
    def group_names(self) -> tuple[str, ...]:
        """folded group names, sorted (suggestions)"""
        return self._groups_index()["group_names"]  # type: ignore[no-any-return]

    @property
    def group_name_set(self) -> frozenset[str]:
        """folded group names, for mention matching"""
        return self._groups_index()["group_name_set"]  # type: ignore[no-any-return]

    @property
    def sp_by_app_id(self) -> dict[str, str]:
        """casefolded appId -> service principal id"""
        return self._apps_index()["sp_by_app_id"]  # type: ignore[no-any-return]

    @property
    def app_by_app_id(self) -> dict[str, str]:
        """casefolded appId -> application id"""
        return self._apps_index()["app_by_app_id"]  # type: ignore[no-any-return]

    @property
    def app_keys(self) -> dict[str, Any]:
        """casefolded object id / appId / folded name -> appId(s)"""
        return self._apps_index()["app_keys"]  # type: ignore[no-any-return]

    @property
    def app_names(self) -> tuple[str, ...]:
        """folded app names, sorted"""
        return self._apps_index()["app_names"]  # type: ignore[no-any-return]

    @property
    def app_name_set(self) -> frozenset[str]:
        return self._apps_index()["app_name_set"]  # type: ignore[no-any-return]

    @property
    def longest_name(self) -> int:
        """most tokens in a group or app name (mention matching tries n-grams up to this)"""
        snap = self.snapshot
        return self.derived(  # type: ignore[no-any-return]
            "view.longest_name", (snap.groups, snap.applications, snap.service_principals),
            lambda: min(12, max((n.count(" ") + 1 for n in (*self.group_names, *self.app_names)), default=1)))

    @property
    def assignments_by_principal(self) -> dict[str, tuple[Mapping[str, Any], ...]]:
        snap = self.snapshot
        return self.derived(  # type: ignore[no-any-return]
            "view.assignments", (snap.app_role_assignments,), lambda: _index_assignments(snap))

    def index_on_first_use(self) -> None:
        """Make the indexes made on first use now (off the request path: a reload, a prepared index)."""
        for name in self.ON_FIRST_USE:
            getattr(self, name)

    # ------------------------------------------------------------ areas

    def area(self, name: str) -> AreaStatus | None:
        return self.snapshot.areas.get(name)

    def area_ready(self, name: str) -> bool:
        """The area is enabled and has synced at least once: its absence of data means absence."""
        status = self.snapshot.areas.get(name)
        return bool(status and status.enabled and status.last_success is not None)

    # ------------------------------------------------------------ users

    def user(self, user_id: str) -> Mapping[str, Any] | None:
        return self.snapshot.users.get(user_id)

    def exact_users(self, query: str) -> tuple[str, ...]:
        """Users whose UPN, mail, other mail, proxy address, object id, employee id or on-premises account name is
        `query` (case-insensitive; `DOMAIN\\sam` and `sam@<a tenant domain>` forms accepted)."""
        key = query.strip().casefold()
        if key.startswith(("smtp:", "sip:")):
            key = key.split(":", 1)[1]
        found = _values(self.exact, key) or _values(self.exact, "smtp:" + key) or _values(self.exact, "sip:" + key)
        if found:
            return found
        raw = query.strip()
        for object_id in (key, raw):
            if object_id in self.snapshot.users:
                return (object_id,)
        for employee_id in dict.fromkeys((raw, raw.upper(), raw.lower())):
            found = _values(self.employee_ids, employee_id)
            if found:
                return found
        found = _values(self.sam, key)
        if found:
            return found
        if "\\" in key:
            domain, _, account = key.rpartition("\\")
            if domain and account:
                return _values(self.sam, account)
        if "@" in key:
            account, _, domain = key.rpartition("@")
            if account and (domain in self.known_domains or domain.endswith((".local", ".lan", ".corp", ".internal"))):
                return _values(self.sam, account)
        return _EMPTY

    def local_part_users(self, handle: str) -> tuple[str, ...]:
        """Users whose UPN, mail or proxy address is `handle`@<one of the tenant's domains>, or whose mailNickname is
        `handle` ("wei.wang", "alex.johnson2"); UPN owners first."""
        key = handle.strip().casefold()
        if not key or "@" in key or "\\" in key or " " in key:
            return _EMPTY
        found: dict[str, None] = {}
        for domain in sorted(self.known_domains):
            address = f"{key}@{domain}"
            for uid in _values(self.exact, address) or _values(self.exact, "smtp:" + address):
                found[uid] = None
        for uid in _values(self.nicknames, key):
            found[uid] = None
        return tuple(found)

    def users_named(self, name: str) -> tuple[str, ...]:
        """Users whose folded displayName (or "givenName surname") is exactly `name` folded."""
        return _values(self.full_names, folded_name(name))

    def _token_scores(self, token: str) -> dict[int, float]:
        """User position -> best score of `token` against that user's name tokens (the last few are cached: a
        lookup that finds nothing asks again for suggestions)."""
        cached = self._scores_cache.get(token)
        if cached is not None:
            return cached
        scores = self._compute_token_scores(token)
        if len(self._scores_cache) >= _SCORE_CACHE_SIZE:
            self._scores_cache.clear()
        self._scores_cache[token] = scores
        return scores

    def _compute_token_scores(self, token: str) -> dict[int, float]:
        candidates: dict[str, float] = {}
        vocabulary = self.vocabulary
        if token in self.postings:
            candidates[token] = _EXACT
        start = bisect_left(vocabulary, token)
        for i in range(start, min(start + _MAX_PREFIX_TOKENS, len(vocabulary))):
            word = vocabulary[i]
            if not word.startswith(token):
                break
            if word != token:
                candidates[word] = _PREFIX_BASE + 0.15 * len(token) / len(word)
        if len(token) >= 4:
            typos = self._typos(token, (token[0], token[1]))
            if not typos and not candidates:
                # nothing starts like the token: maybe the first letter is the typo ("Kose" for "Jose")
                others = {first for first, _ in self.typo_buckets} - {token[0], token[1]}
                typos = self._typos(token, sorted(others))
            for word, distance in typos:
                score = _TYPO1 if distance <= 1 else _TYPO2
                if score > candidates.get(word, 0.0):
                    candidates[word] = score
        scores: dict[int, float] = {}
        for word, score in candidates.items():
            for pos in self.postings[word]:
                if score > scores.get(pos, 0.0):
                    scores[pos] = score
        if self.skeletons and token.isascii():
            for pos in self.skeletons.get(skeleton(token), _EMPTY_POSITIONS):
                if _SKELETON > scores.get(pos, 0.0):
                    scores[pos] = _SKELETON
        return scores

    def _typos(self, token: str, first_letters: Iterable[str]) -> list[tuple[str, int]]:
        """Vocabulary words within 1 edit (tokens of 4-6 letters) or 2 (longer) of `token`, an adjacent swap counting
        as one, among the words starting with one of `first_letters` (the token's first two letters cover a swap
        at the start). Words are bucketed by first letter and length, so only a sliver of the vocabulary is read."""
        max_distance = 1 if len(token) <= 6 else 2
        found: list[tuple[str, int]] = []
        for first in dict.fromkeys(first_letters):
            for length in range(len(token) - max_distance, len(token) + max_distance + 1):
                bucket = self.typo_buckets.get((first, length))
                if bucket:
                    for word, distance, _ in process.extract(
                        token, bucket, scorer=OSA.distance, score_cutoff=max_distance, limit=64
                    ):
                        found.append((word, distance))
        return found

    def search_names(self, query: str, *, limit: int = 10, require_all: bool = True) -> tuple[list[NameHit], int]:
        """Users ranked by how well their name tokens match the query's tokens (prefix and typo tolerant).

        With `require_all` every query token must match one of the user's tokens; otherwise users matching
        some tokens rank by how many and how well (used for suggestions). Returns (best hits, total matches).
        """
        tokens = list(dict.fromkeys(name_tokens(query)))[:6]
        if not tokens:
            return [], 0
        # one-letter tokens are initials: they filter the matches of the longer tokens instead of generating
        # tens of thousands of candidates each (unless the query is only initials)
        words = [t for t in tokens if len(t) > 1] or tokens[:1]
        initials = [t for t in tokens if t not in words]
        per_token = sorted((self._token_scores(t) for t in words), key=len)
        combined: dict[int, float] = {}
        if require_all:
            first, rest = per_token[0], per_token[1:]
            for pos, score in first.items():
                total = score
                for other in rest:
                    s = other.get(pos)
                    if s is None:
                        break
                    total += s
                else:
                    combined[pos] = total / len(words)
            if initials:
                names = self.user_names
                combined = {
                    pos: score
                    for pos, score in combined.items()
                    if all(any(w.startswith(i) for w in names[pos].split()) for i in initials)
                }
        else:
            for scores in per_token:
                for pos, score in scores.items():
                    combined[pos] = combined.get(pos, 0.0) + score / len(words)
        if not combined:
            return [], 0
        whole = " ".join(tokens)
        names = self.user_names
        best = heapq.nlargest(max(limit * 4, 40), combined.items(), key=lambda item: item[1])
        ranked = []
        for pos, score in best:
            name = names[pos]
            bonus = 0.1 if name == whole else 0.02 * fuzz.ratio(whole, name) / 100
            ranked.append((score + bonus, name, pos))
        ranked.sort(key=lambda r: (-r[0], r[1], self.user_ids[r[2]]))
        return [NameHit(self.user_ids[pos], round(score, 4)) for score, _, pos in ranked[:limit]], len(combined)

    def closest_user_ids(self, query: str, limit: int = 5) -> list[str]:
        """The users closest to `query` by name (for 'not found' suggestions)."""
        hits, _ = self.search_names(query, limit=limit, require_all=False)
        if hits:
            return [hit.user_id for hit in hits]
        # nothing within a typo or two: the nearest name tokens by similarity, whatever the distance
        scores: dict[int, float] = {}
        for token in [t for t in dict.fromkeys(name_tokens(query)) if len(t) > 1][:3]:
            for word, similarity, _ in process.extract(
                token, self.vocabulary, scorer=fuzz.ratio, limit=3, score_cutoff=60
            ):
                for pos in self.postings[word][:5000]:
                    scores[pos] = scores.get(pos, 0.0) + similarity
        best = heapq.nlargest(limit * 4, scores.items(), key=lambda item: item[1])
        best.sort(key=lambda item: (-item[1], self.user_names[item[0]], self.user_ids[item[0]]))
        return [self.user_ids[pos] for pos, _ in best[:limit]]

    # ------------------------------------------------------------ groups

    def groups_matching(self, query: str) -> tuple[str, ...]:
        """Groups whose object id, mail or folded name is `query`."""
        key = query.strip().casefold()
        return _values(self.group_keys, key) or _values(self.group_keys, folded_name(query))

    def closest_group_names(self, query: str, limit: int = 5) -> list[str]:
        target = folded_name(query)
        if not target:
            return []
        matches = process.extract(target, self.group_names, scorer=fuzz.WRatio, limit=limit, score_cutoff=50)
        out = []
        for name, _, _ in matches:
            for gid in _values(self.group_keys, name):
                out.append(str(self.snapshot.groups[gid].get("displayName")))
        return out[:limit]

    def direct_groups(self, member_id: str) -> tuple[str, ...]:
        return self.member_of.groups(member_id, self.snapshot.users)

    def transitive_groups(self, member_id: str) -> dict[str, tuple[str, ...]]:
        """Every group `member_id` belongs to, directly or through nesting, with the shortest chain of groups
        leading to it: group id -> (direct group id, ..., group id). Breadth-first, so cycles are harmless and
        chains are shortest; the order is by depth."""
        chains: dict[str, tuple[str, ...]] = {}
        queue: deque[str] = deque()
        groups_of, users = self.member_of.groups, self.snapshot.users
        for gid in groups_of(member_id, users):
            if gid not in chains:
                chains[gid] = (gid,)
                queue.append(gid)
        while queue:
            gid = queue.popleft()
            chain = chains[gid]
            for parent in groups_of(gid, users):
                if parent not in chains and parent != member_id:
                    chains[parent] = chain + (parent,)
                    queue.append(parent)
        return chains

    def transitive_members(self, group_id: str) -> dict[str, tuple[str, tuple[str, ...]]]:
        """Every member of the group, directly or through nested groups: member id -> (kind, chain of groups from
        `group_id` down to the group it is a direct member of). Breadth-first and cycle safe."""
        out: dict[str, tuple[str, tuple[str, ...]]] = {}
        visited = {group_id}
        queue: deque[tuple[str, tuple[str, ...]]] = deque([(group_id, (group_id,))])
        members = self.snapshot.members
        while queue:
            gid, chain = queue.popleft()
            for member_id, kind in members.get(gid, {}).items():
                if member_id not in out and member_id != group_id:
                    out[member_id] = (kind, chain)
                if kind == "group" and member_id not in visited:
                    visited.add(member_id)
                    queue.append((member_id, chain + (member_id,)))
        return out

    # ------------------------------------------------------------ applications

    def app_refs(self, query: str) -> tuple[str, ...]:
        """App references (casefolded appIds, or "kind:objectId" for an object without appId) matching an appId,
        an application or service principal object id, or a display name."""
        key = query.strip().casefold()
        return _values(self.app_keys, key) or _values(self.app_keys, folded_name(query))

    def app_objects(self, ref: str) -> tuple[Mapping[str, Any] | None, Mapping[str, Any] | None]:
        """(application, service principal) for an app reference from `app_refs`."""
        snap = self.snapshot
        if ref.startswith("application:"):
            return snap.applications.get(ref.split(":", 1)[1]), None
        if ref.startswith("servicePrincipal:"):
            return None, snap.service_principals.get(ref.split(":", 1)[1])
        app_id = self.app_by_app_id.get(ref)
        sp_id = self.sp_by_app_id.get(ref)
        return (
            snap.applications.get(app_id) if app_id else None,
            snap.service_principals.get(sp_id) if sp_id else None,
        )

    def closest_app_names(self, query: str, limit: int = 5) -> list[str]:
        target = folded_name(query)
        if not target:
            return []
        matches = process.extract(target, self.app_names, scorer=fuzz.WRatio, limit=limit, score_cutoff=50)
        out: list[str] = []
        for name, _, _ in matches:
            for ref in _values(self.app_keys, name):
                application, sp = self.app_objects(ref)
                obj = sp or application
                if obj and obj.get("displayName") not in out:
                    out.append(str(obj.get("displayName")))
        return out[:limit]

    def assignments_of(self, principal_id: str) -> tuple[Mapping[str, Any], ...]:
        return self.assignments_by_principal.get(principal_id, ())

    # ------------------------------------------------------------ misc

    def display_name(self, object_id: str) -> str | None:
        snap = self.snapshot
        for objects in (snap.users, snap.groups, snap.service_principals, snap.applications):
            obj = objects.get(object_id)
            if obj is not None:
                return obj.get("displayName")
        return None

    def groups_in(self, ids: Iterable[str]) -> list[Mapping[str, Any]]:
        groups = self.snapshot.groups
        return [groups[g] for g in ids if g in groups]
