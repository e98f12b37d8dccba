"""Finding people: exact identifiers first, then ranked fuzzy name search; ambiguity is shown, never resolved silently."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any

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
    tell them apart."""
    text = clean_identifier(query, argument="query", expected=USER_EXPECTED)
    limit = clean_limit(limit, default=10, maximum=MAX_LOOKUP_LIMIT)
    findings = freshness_findings(view.snapshot, now)
    unavailable = area_finding(view, "users", "no user can be looked up until it syncs.")
    if unavailable is not None and not view.snapshot.users:
        return {"matches": [], "matchType": "none", "total": 0, "truncated": False, "suggestions": [],
                "asOf": as_of(view), "findings": sort_findings([unavailable, *findings])}
    if unavailable is not None:
        findings.append(unavailable)

    ids = _exact_ids(view, text)
    match_type = "exact"
    scores: dict[str, float] = {}
    total = len(ids)
    suggestions: list[dict[str, Any]] = []
    if not ids and not _GUID.match(text):
        hits, total = view.search_names(_name_part(text), limit=limit)
        ids = tuple(hit.user_id for hit in hits)
        scores = {hit.user_id: hit.score for hit in hits}
        match_type = "fuzzy"
    if not ids:
        match_type, total = "none", 0
        if not _GUID.match(text):
            suggestions = [user_ref(view.snapshot.users[uid]) for uid in view.closest_user_ids(_name_part(text))]

    users = view.snapshot.users
    matches = []
    for uid in ids[:limit]:
        user = users[uid]
        card = user_card(user)
        if uid in scores:
            card["score"] = min(1.0, scores[uid])
        matches.append(card)
        findings.extend(suspicious_findings("user", user))
    answer: dict[str, Any] = {
        "matches": matches,
        "matchType": match_type,
        "total": total,
        "truncated": total > len(matches),
    }
    if match_type == "none":
        answer["suggestions"] = suggestions
    answer["asOf"] = as_of(view)
    answer["findings"] = sort_findings(findings)
    return answer


def _describe(user: dict[str, Any]) -> str:
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
    """How a query designates users: `how` is "exact" (an identifier), "name" (a full name exactly), "fuzzy" (close
    names; `confident` when one user alone matches well) or "none"; `ids` are the candidates, best first."""

    how: str
    ids: tuple[str, ...]
    total: int
    confident: bool = False


def _exact_ids(view: DirectoryView, text: str) -> tuple[str, ...]:
    ids = view.exact_users(text)
    if not ids:
        # "José Müller <jose.muller@contoso.example>", "mailto:...": the address inside decides
        address = _ADDRESS_INSIDE.search(text)
        if address and address.group(0) != text:
            ids = view.exact_users(address.group(0))
    return ids


def match_user(view: DirectoryView, text: str) -> UserMatch:
    """Candidates for an already cleaned query (see `clean_identifier`)."""
    ids = _exact_ids(view, text)
    if ids:
        return UserMatch("exact", ids, len(ids), confident=len(ids) == 1)
    if _GUID.match(text) or not view.snapshot.users:
        return UserMatch("none", (), 0)
    name = _name_part(text)
    if is_identifier(text):
        # an address or account that is not in the directory never becomes a person with a similar name
        # ("john.smith@gmail.example" is not our John Smith): name matches are candidates only
        hits, total = view.search_names(name, limit=10)
        return UserMatch("fuzzy", tuple(h.user_id for h in hits), total) if hits else UserMatch("none", (), 0)
    named = view.users_named(name)
    if named:
        return UserMatch("name", named, len(named), confident=len(named) == 1)
    hits, total = view.search_names(name, limit=10)
    if hits:
        return UserMatch("fuzzy", tuple(h.user_id for h in hits), total, total == 1 and hits[0].score >= _CONFIDENT)
    return UserMatch("none", (), 0)


def is_identifier(text: str) -> bool:
    """An address or DOMAIN\\account form, as opposed to a person's name."""
    return "@" in text or "\\" in text


def resolve_user(view: DirectoryView, user: str) -> dict[str, Any]:
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
        raise _ambiguous(text, match.ids, view, "are named")
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


def _describe_short(user: dict[str, Any]) -> str:
    return f"{quote(user.get('displayName'), 40)} <{clean(user.get('userPrincipalName'))}>"
