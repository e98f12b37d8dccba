"""Service-desk answers computed from a DirectorySnapshot: lookup, memberships, account state, app access.

Every answer is a plain function of (DirectoryView, arguments, now) returning a JSON-able dict with the contract's
fields, `asOf` and `findings`. Bad input raises InvalidArgument, unknown objects NotFoundError (with the closest
matches); nothing here does I/O or knows about MCP.
"""

from .account import account_summary, check_account_state
from .apps import check_app_access, get_app_principal, resolve_app
from .common import user_card
from .findings import FINDINGS, findings_markdown, suspicious_fields
from .groups import list_group_members, list_group_memberships, resolve_group
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
