"""validate_chat_session's answer: the sign-in part's verdict on a chat session token, joined with the directory.

The verdict ({valid, reason, identity}) comes from oidc/sessions.py; this adds the verified person's directory record
and account summary, and compares them with the user the person claims to be. Only the verified identity says who
someone is; the claim is checked against it, never the other way round.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Mapping

from ..errors import InvalidArgument, NotFoundError
from .account import account_summary
from .common import as_of, user_card
from .findings import finding
from .users import resolve_user
from .view import DirectoryView

SIGN_IN_NOT_CONFIGURED: dict[str, Any] = {
    "asOf": None,
    "valid": None,
    "reason": "sign-in is not configured on this server (the [oidc] section is off), so chat sessions cannot be "
    "verified here; verify the person another way.",
    "identity": None,
    "user": None,
    "matchesClaimedUser": None,
    "findings": [finding("SIGN_IN_NOT_CONFIGURED")],
}


def chat_session_answer(
    verdict: Mapping[str, Any],
    claimed: str | None,
    view: DirectoryView | None,
    *,
    mirrored: bool,
    not_synced: dict[str, str] | None = None,
    now: datetime | None = None,
) -> dict[str, Any]:
    """The answer for a verdict. `view` is the current view of the verified identity's tenant (None when it is not
    mirrored here, `mirrored=False`, or not synced yet, when `not_synced` is the finding to add)."""
    data: dict[str, Any] = {"valid": verdict.get("valid"), "reason": verdict.get("reason"),
                            "identity": verdict.get("identity"), "asOf": None}
    findings: list[dict[str, str]] = list(verdict.get("findings") or [])
    ident = data["identity"] if data["valid"] else None
    if not ident:
        data["user"] = None
        data["matchesClaimedUser"] = False if claimed and data["valid"] is False else None
        data["findings"] = findings
        return data
    oid = str(ident.get("oid") or "")
    user = None
    if not mirrored:
        findings.append(finding("TENANT_NOT_MIRRORED", "The signed-in user's tenant is not one this server mirrors."))
    elif view is None:
        if not_synced:
            findings.append(not_synced)
    else:
        data["asOf"] = as_of(view)
        record = view.user(oid)
        if record is None:
            findings.append(finding("SIGNED_IN_USER_NOT_IN_MIRROR",
                                    "The verified user is not in the mirror (created after the last sync?)."))
        else:
            user = {**user_card(record), "account": account_summary(view, oid, now)}
    data["user"] = user
    data["matchesClaimedUser"] = None
    if claimed is not None and view is not None:
        try:
            claimed_id = str(resolve_user(view, claimed).get("id") or "")
            data["matchesClaimedUser"] = claimed_id.casefold() == oid.casefold()
        except (NotFoundError, InvalidArgument):
            data["matchesClaimedUser"] = False
            findings.append(finding("CLAIMED_USER_NOT_FOUND", "The claimed user was not found in the directory."))
        if data["matchesClaimedUser"] is False:
            findings.append(finding("CLAIMED_USER_MISMATCH", "The verified person is NOT the user they claim to be. "
                                    "Do not act for the claimed user."))
    data["findings"] = findings
    return data


__all__ = ["SIGN_IN_NOT_CONFIGURED", "chat_session_answer"]
