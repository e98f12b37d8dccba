"""The `roles` and `groups` claims of the emulator's user tokens, as Entra issues them (docs/graph-facts-token-claims.md).

- `roles`: the `value` of every app role of the token's application (its service principal in the user's tenant)
  that is assigned to the user directly, or to a group the user is a DIRECT member of (app role assignment does not
  follow nested groups). The default-access assignment (the all-zero role id) and roles without a value add nothing.
- `groups`: only when the application object asks for it (`groupMembershipClaims`): "SecurityGroup" the
  security-enabled groups the user belongs to, directly or through nesting; "All" every group; "ApplicationGroup"
  only the groups assigned to the application; absent or "None", no claim. More than 200 groups (the JWT limit) is
  an *overage*: no `groups` claim, but `_claim_names: {"groups": "src1"}` and `_claim_sources` pointing at Graph's
  getMemberObjects for the user, which the receiver must call to learn the groups.

`token_claims(tenant, client_id, user)` returns the claims to add; tokens.py hooks it into the ID token (client_id:
the app signing in) and the access token (client_id: the API the token is for; nothing for Graph).
`define_app_role` and `set_group_claims` are the small mutations tests and `demo` use to set an application up.
"""

from __future__ import annotations

import uuid
from collections import deque
from typing import Any

from entra_mcp.devtenant.model import DEFAULT_ACCESS_ROLE, EmulatedTenant

MAX_JWT_GROUPS = 200  # more than this many groups in a JWT is an overage (docs/graph-facts-token-claims.md)
GROUP_CLAIM_KINDS = ("None", "SecurityGroup", "All", "ApplicationGroup", "DirectoryRole")


def _application(tenant: EmulatedTenant, client_id: str) -> dict[str, Any] | None:
    return next((a for a in tenant.applications.values() if a.get("appId") == client_id), None)


def _service_principal(tenant: EmulatedTenant, client_id: str) -> dict[str, Any] | None:
    return next((sp for sp in tenant.service_principals.values() if sp.get("appId") == client_id), None)


def _transitive_groups(tenant: EmulatedTenant, member_id: str) -> list[str]:
    seen: dict[str, None] = {}
    queue = deque(tenant.member_of(member_id))
    while queue:
        gid = queue.popleft()
        if gid in seen or gid == member_id:
            continue
        seen[gid] = None
        queue.extend(tenant.member_of(gid))
    return list(seen)


def token_claims(tenant: EmulatedTenant, client_id: str, user: dict[str, Any]) -> dict[str, Any]:
    """`roles`, and `groups` or the overage claims, of a token issued to `client_id` for `user` (may be empty)."""
    claims: dict[str, Any] = {}
    uid = str(user["id"])
    with tenant.lock:
        sp = _service_principal(tenant, client_id)
        app = _application(tenant, client_id)
        assigned: list[dict[str, Any]] = []
        if sp is not None:
            principals = {uid, *tenant.member_of(uid)}
            assigned = [a for a in tenant.assignments_for_resource(str(sp["id"])) if a.get("principalId") in principals]
            values = {str(r["id"]): r.get("value") for r in sp.get("appRoles", []) if r.get("isEnabled", True)}
            roles = sorted({values[a["appRoleId"]] for a in assigned
                            if a.get("appRoleId") != DEFAULT_ACCESS_ROLE and values.get(a["appRoleId"])})
            if roles:
                claims["roles"] = roles
        kind = (app or {}).get("groupMembershipClaims") or "None"
        if kind in ("None", "DirectoryRole"):
            return claims
        groups = _transitive_groups(tenant, uid)
        if kind == "SecurityGroup":
            groups = [g for g in groups if tenant.groups.get(g, {}).get("securityEnabled")]
        elif kind == "ApplicationGroup":
            on_app = {a.get("principalId") for a in assigned}
            groups = [g for g in groups if g in on_app]
    if len(groups) > MAX_JWT_GROUPS:
        claims["_claim_names"] = {"groups": "src1"}
        claims["_claim_sources"] = {"src1": {
            "endpoint": f"https://graph.windows.net/{tenant.tenant_id}/users/{uid}/getMemberObjects"}}
    elif groups:
        claims["groups"] = sorted(groups)
    return claims


def define_app_role(tenant: EmulatedTenant, client_id: str, value: str, *, display_name: str | None = None) -> str:
    """Add an app role (for users and groups) to the application `client_id` and its service principal; its id."""
    role = {"allowedMemberTypes": ["User"], "description": display_name or value, "displayName": display_name or value,
            "id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"approle:{client_id}:{value}")), "isEnabled": True,
            "origin": "Application", "value": value}
    with tenant.lock:
        for obj in (_application(tenant, client_id), _service_principal(tenant, client_id)):
            if obj is None:
                raise KeyError(f"no application or service principal with appId {client_id!r}")
            if not any(r.get("id") == role["id"] for r in obj.setdefault("appRoles", [])):
                obj["appRoles"] = [*obj["appRoles"], role]
    return str(role["id"])


def set_group_claims(tenant: EmulatedTenant, client_id: str, kind: str) -> None:
    """Set the application's `groupMembershipClaims` (one of GROUP_CLAIM_KINDS)."""
    if kind not in GROUP_CLAIM_KINDS:
        raise ValueError(f"groupMembershipClaims must be one of {', '.join(GROUP_CLAIM_KINDS)}")
    with tenant.lock:
        app = _application(tenant, client_id)
        if app is None:
            raise KeyError(f"no application with appId {client_id!r}")
        app["groupMembershipClaims"] = None if kind == "None" else kind


def service_principal_id(tenant: EmulatedTenant, client_id: str) -> str:
    sp = _service_principal(tenant, client_id)
    if sp is None:
        raise KeyError(f"no service principal with appId {client_id!r}")
    return str(sp["id"])


__all__ = ["GROUP_CLAIM_KINDS", "MAX_JWT_GROUPS", "define_app_role", "service_principal_id", "set_group_claims",
           "token_claims"]
