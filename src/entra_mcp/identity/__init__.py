"""Service-desk answers computed from a DirectorySnapshot: lookup, memberships, account state, app access.

Every answer is a plain function of (DirectoryView, arguments, now) returning a JSON-able dict with the contract's
fields, `asOf` and `findings` ({code, severity, message}; codes in findings.FINDINGS). Bad input raises
InvalidArgument, unknown objects NotFoundError (with the closest matches); nothing here does I/O or knows about MCP.

Choices worth knowing (each documented where it is made):
- group `kind` is the base kind (security, microsoft365, distribution, mailEnabledSecurity); dynamic membership is
  a separate `dynamic: true` with `membershipRule` (groups.py);
- app access through a group needs DIRECT membership of the assigned group, as Entra grants it; nested routes are
  listed with `effective: false` and NESTED_GROUP_ONLY (apps.py);
- password expiry: unknown (null) for accounts synced from AD and for guests; from the UPN domain's policy
  otherwise, Entra's 90/14-day defaults when the mirror lacks it (PASSWORD_POLICY_ASSUMED) (account.py);
- sign-ins: "0001-01-01" means never; an unavailable sign-in area means unknown (null + SIGNIN_DATA_UNAVAILABLE);
  staleness is judged on the last interactive sign-in (account.py);
- password reset eligibility follows Entra's "who can reset passwords" table; a role through a role-assignable
  group or a PIM eligibility counts as held (reset.py, docs/graph-facts-account.md);
- directory text is data: findings name the field, messages never repeat instruction-like text (findings.py).
"""

from .account import account_summary, check_account_state
from .apps import check_app_access, get_app_principal, resolve_app
from .common import user_card
from .findings import FINDINGS, findings_markdown, suspicious_fields
from .groups import list_group_members, list_group_memberships, resolve_group
from .reset import check_reset_eligibility
from .status import sync_status
from .ticket import get_ticket_identity_context
from .users import lookup_user, resolve_user
from .view import DirectoryView

__all__ = [
    "FINDINGS",
    "DirectoryView",
    "account_summary",
    "check_account_state",
    "check_app_access",
    "check_reset_eligibility",
    "findings_markdown",
    "get_app_principal",
    "get_ticket_identity_context",
    "list_group_members",
    "list_group_memberships",
    "lookup_user",
    "resolve_app",
    "resolve_group",
    "resolve_user",
    "suspicious_fields",
    "user_card",
    "sync_status",
]
