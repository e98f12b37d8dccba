"""Finding people: exact identifiers first, then ranked fuzzy name search; ambiguity is shown, never resolved silently."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Mapping

from ..errors import InvalidArgument, NotFoundError
from .common import area_finding, area_unavailable_reason, as_of, freshness_findings, user_card, user_ref
from .findings import clean, quote, sort_findings, suspicious_findings
from .text import USER_EXPECTED, clean_identifier, clean_limit
from .view import DirectoryView

_GUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$", re.IGNORECASE)
_ADDRESS_INSIDE = re.compile(r"[A-Za-z0-9._%+'-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+")
# A single name match is taken as the user only when it is this good (all tokens exact or long prefixes) and alone.
_CONFIDENT = 0.85
MAX_LOOKUP_LIMIT = 100


def _name_part(query: str) -> str:
    """The part of a query a name search can use: the local part of an address, the account of DOMAIN\\sam."""
    if "@" in query:
        query = query.split("@", 1)[0]
    if "\\" in query:
        query = query.rsplit("\\", 1)[1]
    return re.sub(r"[._\-]+", " ", query) if " " not in query else query


def lookup_user(view: DirectoryView, query: str, limit: int = 10, *, now: datetime | None = None) -> dict[str, Any]:
    """Users matching `query`: exact identifiers (matchType "exact"), else ranked name matches ("fuzzy"), else
    matchType "none" with `suggestions` (the closest names). Several matches are all listed, with the fields that
    tell them apart. `matchedBy` says how: identifier, accountName (the local part of an address, or mailNickname),
    name (the whole name exactly, in any script) or similarName."""
    text = clean_identifier(query, argument="query", expected=USER_EXPECTED)
    limit = clean_limit(limit, default=10, maximum=MAX_LOOKUP_LIMIT)
    findings = freshness_findings(view.snapshot, now)
    unavailable = area_finding(view, "users", "no user can be looked up until it syncs.")
    if unavailable is not None and not view.snapshot.users:
        return {"matches": [], "matchType": "none", "matchedBy": None, "total": 0, "truncated": False,
                "suggestions": [], "asOf": as_of(view), "findings": sort_findings([unavailable, *findings])}
    if unavailable is not None:
        findings.append(unavailable)

    match = match_user(view, text, limit=limit)
    match_type = MATCH_TYPES[match.how]
    suggestions: list[dict[str, Any]] = []
    if match.how == "none" and not _GUID.match(text) and view.snapshot.users:
        for uid in view.closest_user_ids(_name_part(text)):
            suggestions.append(user_ref(view.snapshot.users[uid]))
            findings.extend(suspicious_findings("user", view.snapshot.users[uid]))

    users = view.snapshot.users
    matches = []
    for uid in match.ids[:limit]:
        user = users[uid]
        card = user_card(user)
        if match.how != "exact":
            card["score"] = min(1.0, match.scores.get(uid, 0.0))
        matches.append(card)
        findings.extend(suspicious_findings("user", user))
    answer: dict[str, Any] = {
        "matches": matches,
        "matchType": match_type,
        "matchedBy": match.matched_by,
        "total": match.total,
        "truncated": match.total > len(matches),
    }
    if match.how == "none":
        answer["suggestions"] = suggestions
    answer["asOf"] = as_of(view)
    answer["findings"] = sort_findings(findings)
    return answer


def _describe(user: Mapping[str, Any]) -> str:
    details = ", ".join(
        quote(user.get(field), 40) for field in ("jobTitle", "department") if user.get(field)
    )
    return clean(user.get("userPrincipalName")) + (f" ({details})" if details else "")


def _ambiguous(text: str, ids: tuple[str, ...] | list[str], view: DirectoryView, how: str) -> InvalidArgument:
    users = view.snapshot.users
    shown = [_describe(users[uid]) for uid in list(ids)[:10]]
    more = f" and {len(ids) - 10} more" if len(ids) > 10 else ""
    return InvalidArgument(
        f"{len(ids)} users {how} {quote(text)}: give the UPN or object id of the one you mean: "
        f"{'; '.join(shown)}{more}."
    )


@dataclass(frozen=True)
class UserMatch:
    """How a query designates users, the same in every tool.

    `how` is "exact" (an identifier, or the local part of an address / mailNickname written as a handle such as
    "wei.wang", or as a word that is nobody's name), "name" (a whole name exactly, in any script), "fuzzy" (close names, or a one-word query that is
    also someone's address local part, ranked first) or "none". `ids` are the candidates, best first; the first
    `exact_count` of them matched the query exactly (the ones to list when several fit). `confident` when one user
    alone matches well. `matched_by`: identifier | accountName | name | similarName | None; `scores` for ranking.
    """

    how: str
    ids: tuple[str, ...]
    total: int
    confident: bool = False
    matched_by: str | None = None
    exact_count: int = 0
    scores: Mapping[str, float] = field(default_factory=dict)

    @property
    def exact_ids(self) -> tuple[str, ...]:
        return self.ids[: self.exact_count] if self.exact_count else self.ids


# matchType in answers: a whole-name match is a match by name, not by an identifier (REQUESTER_FUZZY_MATCH)
MATCH_TYPES = {"exact": "exact", "name": "fuzzy", "fuzzy": "fuzzy", "none": "none"}
_NONE = UserMatch("none", (), 0)
# "wei.wang", "alex.johnson2", "j_smith": written like an account, not like a name
_HANDLE = re.compile(r"^[^\s@\\]*[._\d-][^\s@\\]*$")


def _exact_ids(view: DirectoryView, text: str) -> tuple[str, ...]:
    ids = view.exact_users(text)
    if not ids:
        # "José Müller <jose.muller@contoso.example>", "mailto:...": the address inside decides
        address = _ADDRESS_INSIDE.search(text)
        if address and address.group(0) != text:
            ids = view.exact_users(address.group(0))
    return ids


def match_user(view: DirectoryView, text: str, *, limit: int = 10) -> UserMatch:
    """Candidates for an already cleaned query (see `clean_identifier`)."""
    ids = _exact_ids(view, text)
    if ids:
        return UserMatch("exact", ids, len(ids), len(ids) == 1, "identifier", len(ids))
    if _GUID.match(text) or not view.snapshot.users:
        return _NONE
    local = view.local_part_users(text)
    if local and _HANDLE.match(text):
        return UserMatch("exact", local, len(local), len(local) == 1, "accountName", len(local))
    name = _name_part(text)
    hits, total = view.search_names(name, limit=max(limit, 10))
    scores = {hit.user_id: hit.score for hit in hits}
    if is_identifier(text):
        # an address or account that is not in the directory never becomes a person with a similar name
        # ("john.smith@gmail.example" is not our John Smith): name matches are candidates only
        if not hits:
            return _NONE
        return UserMatch("fuzzy", tuple(scores), total, matched_by="similarName", scores=scores)
    named = view.users_named(name)
    first = (*local, *(uid for uid in named if uid not in local))
    for uid in first:
        scores[uid] = 1.1  # exact beats any similarity
    ordered = tuple(dict.fromkeys((*first, *(hit.user_id for hit in hits))))
    total = max(total, len(ordered))
    if local and set(ordered) == set(local):
        return UserMatch("exact", local, len(local), len(local) == 1, "accountName", len(local))
    if local:
        # one word that is also somebody's address local part and other people's name ("alex"): that account
        # first, the names after it
        return UserMatch("fuzzy", ordered, total, len(ordered) == 1, "accountName", len(local), scores)
    if named:
        return UserMatch("name", ordered, total, len(named) == 1, "name", len(named), scores)
    if hits:
        confident = total == 1 and hits[0].score >= _CONFIDENT
        return UserMatch("fuzzy", ordered, total, confident, "similarName", scores=scores)
    return _NONE


def is_identifier(text: str) -> bool:
    """An address or DOMAIN\\account form, as opposed to a person's name."""
    return "@" in text or "\\" in text


def resolve_user(view: DirectoryView, user: str) -> Mapping[str, Any]:
    """The one user `user` designates (UPN, mail, proxy address, object id, employee id, on-prem account name, or a
    name that only one user has). NotFoundError with the closest matches; InvalidArgument listing the candidates
    when several users fit."""
    text = clean_identifier(user, argument="user", expected=USER_EXPECTED)
    users = view.snapshot.users
    match = match_user(view, text)
    if match.confident:
        return users[match.ids[0]]
    if match.how == "exact":
        raise _ambiguous(text, match.ids, view, "have the identifier")
    if match.how == "name":
        raise _ambiguous(text, match.exact_ids, view, "are named")
    if is_identifier(text):
        suggestions = [_describe_short(users[uid]) for uid in match.ids[:5]]
        raise NotFoundError(
            f"No user has the address or account name {quote(text)} in the mirror"
            + ("; users with a similar name are not assumed to be the same person." if suggestions else "."),
            suggestions=suggestions,
        )
    if match.how == "fuzzy":
        hits, total = match.ids, match.total
        raise InvalidArgument(
            f"No user is named exactly {quote(text)}; {total} users come close: give the UPN or object id of the one "
            f"you mean: {'; '.join(_describe(users[uid]) for uid in hits)}"
            + (f" and {total - len(hits)} more." if total > len(hits) else ".")
        )
    if not users:
        reason = area_unavailable_reason(view, "users") or "the mirror holds no users"
        raise NotFoundError(f"No user {quote(text)} can be found: {reason}.")
    if _GUID.match(text):
        raise NotFoundError(f"No user has the object id {quote(text)} in the mirror.")
    suggestions = [_describe_short(users[uid]) for uid in view.closest_user_ids(_name_part(text))]
    raise NotFoundError(f"No user matches {quote(text)}.", suggestions=suggestions)


def _describe_short(user: Mapping[str, Any]) -> str:
    return f"{quote(user.get('displayName'), 40)} <{clean(user.get('userPrincipalName'))}>"
