"""The audit trail (docs/audit.md): `AuditTrail` appends chained JSON lines; `read` checks and filters them.

For code that records sign-in events (oidc/routes.py; the OAuth authorization server's consent, token and revocation
events): `sign_in_event(settings, event, outcome, ...)`. Only identifiers and outcomes go in: never a token, code,
secret or raw session id.
"""

from __future__ import annotations

from typing import Any

from entra_mcp.audit.trail import AuditTrail, session_ref


def sign_in_event(settings: Any, event: str, outcome: str, *, tid: str | None = None, oid: str | None = None,
                  upn: str | None = None, flow: str | None = None, client_id: str | None = None,
                  client_name: str | None = None, session_id: str | None = None, reason: str | None = None,
                  ip: str | None = None, **extra: Any) -> bool:
    """Record one sign-in event in the trail [server.audit] configures (no-op when it is off).

    `event`: what happened ("sign_in", "sign_out", "consent", "token", "refresh", "revoke", ...); `outcome`: "ok",
    "failed" or "refused"; `reason`: a short machine word when not ok. `session_id` is hashed before it is written.
    `extra` holds further identifiers (scope, redirectHost, ...); fields named like secrets are dropped."""
    trail = AuditTrail.from_settings(settings)
    if trail is None:
        return False
    caller = {"kind": "entra" if oid else None, "tid": tid, "oid": oid, "upn": upn}
    client = {"clientId": client_id, "name": client_name}
    return trail.record(event, {
        "caller": {k: v for k, v in caller.items() if v} or None,
        "client": {k: v for k, v in client.items() if v} or None,
        "flow": flow, "session": session_ref(session_id), "outcome": outcome, "reason": reason, "ip": ip, **extra,
    })


__all__ = ["AuditTrail", "session_ref", "sign_in_event"]
