"""Identity context for a service-desk ticket: who is asking, in what state their account is, whom they report to,
and which users, groups and apps the ticket names. An unknown or ambiguous requester is an answer, not an error.

Mentions are found conservatively (a wrong "this is about X" is worse than a missed one): addresses by pattern and
exact identifier; people only by a 2-3 word capitalised sequence equal to a full name; groups and apps only by their
whole name as whole words (one-word names only when written with the name's own capitalisation).
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any, Mapping

from ..errors import InvalidArgument
from ..pacing import checkpoint
from .account import account_summary
from .common import as_of, freshness_findings, name_of, user_card, user_ref
from .findings import finding, quote, sort_findings, suspicious_findings
from .groups import group_card
from .text import USER_EXPECTED, clean_identifier, looks_like_instruction, name_tokens
from .users import MATCH_TYPES, is_identifier, match_user
from .view import DirectoryView

MAX_TICKET_SCAN = 20_000
MAX_MENTIONS = 10
_ADDRESS = re.compile(r"(?<![\w.+-])[A-Za-z0-9._%+'-]{1,64}@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,24}\b")
_WORD = re.compile(r"[^\W\d_][\w'’-]*")
_VIP_TITLE = re.compile(
    r"\b(chief|ceo|cfo|coo|cto|cio|ciso|cmo|president|director|managing partner|general counsel|chair(man|woman|person)?)\b",
    re.IGNORECASE,
)
_PROFILE_EXTRA = ("companyName", "employeeId", "usageLocation")


def _manager(view: DirectoryView, user: Mapping[str, Any]) -> Mapping[str, Any] | None:
    manager_id = user.get("managerId")
    if not manager_id:
        return None
    manager = view.user(manager_id)
    if manager is None:
        return {"id": manager_id, "displayName": None, "userPrincipalName": None, "jobTitle": None}
    return {
        "id": manager_id,
        "displayName": manager.get("displayName"),
        "userPrincipalName": manager.get("userPrincipalName"),
        "jobTitle": manager.get("jobTitle"),
    }


def _requester(
    view: DirectoryView, requester: str, now: datetime | None, findings: list[dict[str, str]]
) -> dict[str, Any]:
    text = clean_identifier(requester, argument="requester", expected=USER_EXPECTED)
    users = view.snapshot.users
    match = match_user(view, text)
    # the same words as lookup_user: a whole-name match is "fuzzy" (by name, not by an identifier)
    out: dict[str, Any] = {"query": text, "matchType": MATCH_TYPES[match.how], "matchedBy": match.matched_by}
    if not match.confident:
        if match.ids and not is_identifier(text):
            candidates = match.exact_ids if match.how in ("name", "exact") else match.ids
            out["status"] = "ambiguous"
            out["candidates"] = [user_card(users[uid]) for uid in candidates[:MAX_MENTIONS]]
            out["candidatesTotal"] = len(candidates) if match.how in ("name", "exact") else match.total
            for uid in candidates[:MAX_MENTIONS]:
                findings.extend(suspicious_findings("user", users[uid]))
            findings.append(
                finding(
                    "REQUESTER_AMBIGUOUS",
                    f"{out['candidatesTotal']} users match the requester {quote(text)}: confirm which one (by UPN) "
                    "before acting.",
                )
            )
        else:
            out["status"] = "notFound"
            similar = match.ids or (view.closest_user_ids(text) if users else [])
            out["suggestions"] = [user_ref(users[uid]) for uid in similar[:MAX_MENTIONS]]
            for uid in similar[:MAX_MENTIONS]:
                findings.extend(suspicious_findings("user", users[uid]))
            findings.append(
                finding(
                    "REQUESTER_NOT_FOUND",
                    f"No user in the mirror matches the requester {quote(text)}: the person may be external, "
                    "new since the last sync, or using another address.",
                )
            )
        return out

    user = users[match.ids[0]]
    out["status"] = "found"
    if match.how != "exact":
        how = "by name only" if match.how == "name" else "by a similar name"
        findings.append(
            finding(
                "REQUESTER_FUZZY_MATCH",
                f"The requester {quote(text)} was matched {how} to {name_of(user)}, not by an address or account: "
                "confirm it is them.",
            )
        )
    summary = account_summary(view, user["id"], now=now)
    findings.extend(summary.pop("findings"))
    findings.extend(suspicious_findings("user", user))
    if _VIP_TITLE.search(str(user.get("jobTitle") or "")):
        findings.append(
            finding(
                "VIP_REQUESTER",
                f"The requester {name_of(user)} is an executive ({quote(user.get('jobTitle'), 50)}): verify identity "
                "out of band (call back on a number from the directory, or their manager/assistant) before any "
                "password reset, MFA change or access grant.",
            )
        )
    out["profile"] = {**user_card(user), **{f: user.get(f) for f in _PROFILE_EXTRA}}
    out["accountState"] = summary
    out["manager"] = _manager(view, user)
    return out


def _name_spans(text: str) -> list[str]:
    """2-3 word runs of capitalised words (candidate person names), longest first at each place."""
    words = [(m.group(0), m.start(), m.end()) for m in _WORD.finditer(text)]
    out: list[str] = []
    i = 0
    while i < len(words):
        checkpoint()
        if not words[i][0][0].isupper():
            i += 1
            continue
        j = i
        while j + 1 < len(words) and words[j + 1][0][0].isupper() and text[words[j][2] : words[j + 1][1]].strip() == "":
            j += 1
        run = [w[0] for w in words[i : j + 1]]
        for size in (3, 2):
            for start in range(0, len(run) - size + 1):
                out.append(" ".join(run[start : start + size]))
        i = j + 1
    return out


def _known_names(text: str, names: frozenset[str], longest: int) -> list[str]:
    """Folded names from `names` that appear in `text` as whole words, longest first, without overlap."""
    tokens = name_tokens(text)
    found: list[str] = []
    i = 0
    while i < len(tokens):
        checkpoint()
        for size in range(min(longest, len(tokens) - i), 0, -1):
            gram = " ".join(tokens[i : i + size])
            if gram in names:
                found.append(gram)
                i += size
                break
        else:
            i += 1
    return list(dict.fromkeys(found))


def _single_word_ok(text: str, display_name: str) -> bool:
    """A one-word name counts only when written with its own capitalisation ("Zoom", not "zoom in")."""
    return bool(re.search(rf"(?<!\w){re.escape(display_name)}(?!\w)", text))


def _mentions(
    view: DirectoryView, text: str, requester_id: str | None, findings: list[dict[str, str]]
) -> dict[str, Any]:
    snap = view.snapshot
    users: dict[str, dict[str, Any]] = {}
    unresolved: list[str] = []
    for address in dict.fromkeys(m.group(0).strip(".") for m in _ADDRESS.finditer(text)):
        ids = view.exact_users(address)
        if len(ids) == 1:
            users.setdefault(ids[0], {**user_card(snap.users[ids[0]]), "matchedBy": "address", "text": address})
        elif len(ids) > 1:
            for uid in ids[:MAX_MENTIONS]:
                users.setdefault(uid, {**user_card(snap.users[uid]), "matchedBy": "address", "text": address,
                                       "ambiguous": True})
        elif len(unresolved) < MAX_MENTIONS:
            unresolved.append(address)
    for span in _name_spans(text):
        checkpoint()
        if len(users) >= MAX_MENTIONS * 2:
            break
        ids = view.users_named(span)
        for uid in ids[:5]:
            users.setdefault(uid, {**user_card(snap.users[uid]), "matchedBy": "name", "text": span,
                                   "ambiguous": len(ids) > 1})
    for uid, card in users.items():
        card["isRequester"] = uid == requester_id
        findings.extend(suspicious_findings("user", snap.users[uid]))

    groups = []
    for name in _known_names(text, view.group_name_set, view.longest_name):
        for gid in view.groups_matching(name):
            group = snap.groups[gid]
            if " " not in name and not _single_word_ok(text, str(group.get("displayName") or "")):
                continue
            groups.append({**group_card(group), "text": group.get("displayName")})
            findings.extend(suspicious_findings("group", group))
        if len(groups) >= MAX_MENTIONS:
            break
    apps = []
    for name in _known_names(text, view.app_name_set, view.longest_name):
        for ref in view.app_refs(name):
            application, sp = view.app_objects(ref)
            obj = sp or application or {}
            if " " not in name and not _single_word_ok(text, str(obj.get("displayName") or "")):
                continue
            apps.append(
                {
                    "appId": obj.get("appId"),
                    "displayName": obj.get("displayName"),
                    "servicePrincipalId": sp.get("id") if sp else None,
                    "accountEnabled": sp.get("accountEnabled") if sp else None,
                    "appRoleAssignmentRequired": sp.get("appRoleAssignmentRequired") if sp else None,
                }
            )
            findings.extend(suspicious_findings("servicePrincipal", sp) + suspicious_findings("application", application))
        if len(apps) >= MAX_MENTIONS:
            break
    user_list = sorted(users.values(), key=lambda u: (u["matchedBy"] != "address", u.get("ambiguous", False)))
    return {
        "users": user_list[:MAX_MENTIONS],
        "groups": groups[:MAX_MENTIONS],
        "apps": apps[:MAX_MENTIONS],
        "unresolvedAddresses": unresolved,
        "truncated": len(user_list) > MAX_MENTIONS or len(groups) > MAX_MENTIONS or len(apps) > MAX_MENTIONS,
    }


def get_ticket_identity_context(
    view: DirectoryView, requester: str, ticket_text: str | None = None, now: datetime | None = None
) -> dict[str, Any]:
    """Who the requester is (profile, compact account state, manager) and what the ticket text names. The requester
    may be unknown or ambiguous: `requester.status` says so ("found" | "ambiguous" | "notFound") with candidates or
    suggestions; findings flag executives (verify out of band), instruction-like text and account problems."""
    if ticket_text is not None and not isinstance(ticket_text, str):
        raise InvalidArgument(f"ticket_text must be text (the ticket's subject and body); got {type(ticket_text).__name__}.")
    findings: list[dict[str, str]] = freshness_findings(view.snapshot, now)
    requester_out = _requester(view, requester, now, findings)
    mentions: dict[str, Any] = {"users": [], "groups": [], "apps": [], "unresolvedAddresses": [], "truncated": False}
    if ticket_text:
        text = ticket_text
        if len(text) > MAX_TICKET_SCAN:
            text = text[:MAX_TICKET_SCAN]
            findings.append(
                finding(
                    "TICKET_TEXT_TRUNCATED",
                    f"Only the first {MAX_TICKET_SCAN} of {len(ticket_text)} characters of the ticket were scanned.",
                )
            )
        if looks_like_instruction(text):
            findings.append(finding("SUSPICIOUS_TICKET_TEXT"))
        requester_id = (requester_out.get("profile") or {}).get("id")
        mentions = _mentions(view, text, requester_id, findings)
    return {
        "requester": requester_out,
        "mentions": mentions,
        "asOf": as_of(view),
        "findings": sort_findings(findings),
    }

