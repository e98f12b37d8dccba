"""Account state: can this person sign in, and if not, why — computed from the mirror, never guessed.

Password expiry follows the domain of the UPN (passwordValidityPeriodInDays / passwordNotificationWindowInDays from
/domains; Entra's defaults 90 / 14 when the mirror lacks them, and the answer says so). Accounts synced from
on-premises AD follow AD's password policy, which the mirror cannot see: their passwordExpired is null.
Sign-in times of "0001-01-01T00:00:00Z" mean never; an unavailable sign-in area gives null, not "never".
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any, Mapping

from ..errors import NotFoundError
from . import access
from .account_facts import account_sections
from .common import area_finding, as_of, freshness_findings, name_of, user_ref
from .findings import finding, quote, sort_findings, suspicious_findings
from .text import iso, parse_time, utcnow
from .users import resolve_user
from .view import DirectoryView

DEFAULT_VALIDITY_DAYS = 90
DEFAULT_NOTIFICATION_DAYS = 14
NEVER_EXPIRES_DAYS = 2147483647  # what /domains reports for "passwords never expire"
STALE_SIGN_IN_DAYS = 90
_SIGN_IN_FIELDS = ("lastSignInDateTime", "lastNonInteractiveSignInDateTime", "lastSuccessfulSignInDateTime")


def _password_policy(view: DirectoryView, user: Mapping[str, Any]) -> tuple[int | None, int, bool]:
    """(validity days or None for never, notification days, assumed defaults?) for the user's UPN domain."""
    upn = str(user.get("userPrincipalName") or "")
    domain = view.domains.get(upn.rpartition("@")[2].casefold()) if "@" in upn else None
    if domain is None or domain.get("passwordValidityPeriodInDays") is None:
        return DEFAULT_VALIDITY_DAYS, DEFAULT_NOTIFICATION_DAYS, True
    validity = int(domain["passwordValidityPeriodInDays"])
    notification = domain.get("passwordNotificationWindowInDays")
    notification = DEFAULT_NOTIFICATION_DAYS if notification is None else int(notification)
    if validity <= 0 or validity >= NEVER_EXPIRES_DAYS:
        return None, notification, False
    return validity, notification, False


def _account_state(view: DirectoryView, user: Mapping[str, Any], now: datetime | None) -> dict[str, Any]:
    current = utcnow(now)
    name = name_of(user)
    findings: list[dict[str, str]] = []
    enabled = user.get("accountEnabled")
    if enabled is False:
        findings.append(finding("ACCOUNT_DISABLED", f"The account of {name} is disabled: it cannot sign in until it is enabled."))

    # ---- password
    policies = str(user.get("passwordPolicies") or "")
    never_expires = "disablepasswordexpiration" in policies.replace(" ", "").casefold().split(",")
    last_change = parse_time(user.get("lastPasswordChangeDateTime"))
    synced = user.get("onPremisesSyncEnabled")
    password_expired: bool | None = None
    password_expires: datetime | None = None
    if synced is True:
        findings.append(
            finding(
                "ONPREM_SYNCED",
                f"{name} is synchronised from on-premises AD: reset the password in AD (or through SSPR with password "
                "writeback); AD's password policy applies, so expiry is unknown here.",
            )
        )
    elif user.get("userType") == "Guest":
        pass  # a B2B guest signs in with their home organisation's credentials: expiry is decided there
    elif never_expires:
        password_expired = False
        findings.append(finding("PASSWORD_NEVER_EXPIRES", f"The password of {name} is set never to expire (passwordPolicies)."))
    elif last_change is not None:
        validity, notification, assumed = _password_policy(view, user)
        if assumed:
            reason = (
                "the domains area is not synced" if not view.area_ready("domains")
                else "the domain or its password policy is not in the mirror"
            )
            findings.append(
                finding(
                    "PASSWORD_POLICY_ASSUMED",
                    f"The password policy of {name}'s domain is unknown ({reason}): Entra's defaults of "
                    f"{DEFAULT_VALIDITY_DAYS} days validity and {DEFAULT_NOTIFICATION_DAYS} days notice were assumed.",
                )
            )
        if validity is None:
            password_expired = False
        else:
            password_expires = last_change + timedelta(days=validity)
            password_expired = current >= password_expires
            days_left = (password_expires - current).total_seconds() / 86400
            if password_expired:
                findings.append(
                    finding(
                        "PASSWORD_EXPIRED",
                        f"The password of {name} expired on {iso(password_expires)} (changed {iso(last_change)}, "
                        f"valid {validity} days): the user must change it at sign-in or have it reset.",
                    )
                )
            elif days_left <= notification:
                findings.append(
                    finding(
                        "PASSWORD_EXPIRING",
                        f"The password of {name} expires in {max(int(days_left), 0)} days ({iso(password_expires)}).",
                    )
                )
    if synced is False:
        findings.append(
            finding(
                "ONPREM_SYNC_STOPPED",
                f"{name} was synchronised from on-premises AD and no longer is (onPremisesSyncEnabled false): the cloud "
                "account is now managed in Entra ID.",
            )
        )

    # ---- guests and licences
    user_type = user.get("userType")
    external_state = user.get("externalUserState")
    if user_type == "Guest":
        if external_state == "PendingAcceptance":
            findings.append(
                finding(
                    "GUEST_PENDING",
                    f"Guest {name} has not accepted the invitation yet: resend the invitation or share the redemption link.",
                )
            )
        else:
            findings.append(
                finding(
                    "GUEST",
                    f"{name} is a guest from another organisation: they sign in with their home organisation's "
                    "account, so password resets and MFA happen there.",
                )
            )
    licenses = user.get("assignedLicenses")
    if licenses is not None and len(licenses) == 0 and user_type != "Guest" and enabled is not False:
        findings.append(finding("NO_LICENSE", f"{name} has no licence assigned: mailbox and Office apps will not work."))

    # ---- sign-ins
    sign_in_fields: dict[str, str | None] = {f: None for f in _SIGN_IN_FIELDS}
    unavailable = area_finding(
        view,
        "sign_in_activity",
        "the last sign-in is unknown (null), not absent.",
        code="SIGNIN_DATA_UNAVAILABLE",
    )
    if unavailable is not None:
        findings.append(unavailable)
    else:
        activity = user.get("signInActivity") or {}
        times = {f: parse_time(activity.get(f)) for f in _SIGN_IN_FIELDS}
        sign_in_fields = {f: iso(t) for f, t in times.items()}
        interactive = times["lastSignInDateTime"]
        other = max((t for t in times.values() if t is not None), default=None)
        other_note = f"; last non-interactive or successful sign-in {iso(other)}" if other and other != interactive else ""
        if interactive is None:
            findings.append(
                finding("NEVER_SIGNED_IN", f"{name} has no interactive sign-in recorded{other_note}.")
            )
        elif current - interactive > timedelta(days=STALE_SIGN_IN_DAYS):
            findings.append(
                finding(
                    "STALE_SIGN_IN",
                    f"{name} last signed in interactively {int((current - interactive).days)} days ago "
                    f"({iso(interactive)}){other_note}.",
                )
            )

    findings.extend(suspicious_findings("user", user))
    return {
        "accountEnabled": enabled,
        "lastPasswordChangeDateTime": iso(last_change),
        "passwordExpired": password_expired,
        "passwordExpiresDateTime": iso(password_expires),
        "passwordNeverExpires": never_expires,
        "onPremisesSyncEnabled": synced,
        "lastSignInDateTime": sign_in_fields["lastSignInDateTime"],
        "lastNonInteractiveSignInDateTime": sign_in_fields["lastNonInteractiveSignInDateTime"],
        "lastSuccessfulSignInDateTime": sign_in_fields["lastSuccessfulSignInDateTime"],
        "userType": user_type,
        "externalUserState": external_state,
        "findings": findings,
    }


def check_account_state(view: DirectoryView, user: str, now: datetime | None = None) -> dict[str, Any]:
    """Can `user` sign in, and what stands in the way: disabled, expired password, on-premises sync, guest
    invitation, stale or missing sign-ins, missing licence; plus MFA/SSPR readiness (`authentication`), directory
    roles (`roles`), licences with their errors (`licenses`), Identity Protection risk (`risk`) and the user's
    devices (`devices`: joined/hybrid/registered, managed, compliant). Unknowns are null, each with a finding saying
    why."""
    record = resolve_user(view, user)
    state = _account_state(view, record, now)
    sections, more = account_sections(view, record)
    findings = state.pop("findings") + more + freshness_findings(view.snapshot, now)
    devices, device_findings = access.devices_summary(view, record)
    return {
        "user": {**user_ref(record), "mail": record.get("mail")},
        **state,
        **sections,
        "devices": devices,
        "asOf": as_of(view),
        "findings": sort_findings(findings + device_findings),
    }


def account_summary(view: DirectoryView, user_id: str, now: datetime | None = None) -> dict[str, Any]:
    """The compact account state of the user with this object id: what ticket context and chat-session validation
    show. NotFoundError when the mirror does not hold the id."""
    record = view.user(user_id) if isinstance(user_id, str) else None
    if record is None:
        raise NotFoundError(f"No user has the object id {quote(user_id)} in the mirror.")
    state = _account_state(view, record, now)
    return {
        "accountEnabled": state["accountEnabled"],
        "passwordExpired": state["passwordExpired"],
        "passwordNeverExpires": state["passwordNeverExpires"],
        "lastSignInDateTime": state["lastSignInDateTime"],
        "onPremisesSyncEnabled": state["onPremisesSyncEnabled"],
        "userType": state["userType"],
        "externalUserState": state["externalUserState"],
        "findings": sort_findings([f for f in state["findings"] if f["severity"] != "info" or f["code"] in _KEY_INFO]),
    }


# info-level findings still worth a line in a compact summary
_KEY_INFO = {"ONPREM_SYNCED", "SIGNIN_DATA_UNAVAILABLE", "GUEST", "NEVER_SIGNED_IN"}
