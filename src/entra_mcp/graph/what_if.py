"""Graph's Conditional Access What If evaluation, asked live for one user and one app (check_app_access with
live_what_if=true, only for tenants whose config sets allow_live_what_if).

POST /identity/conditionalAccess/evaluate (v1.0; Policy.Read.ConditionalAccess or Policy.Read.All) with the user as a
#microsoft.graph.userSignIn, the app as a #microsoft.graph.applicationContext and no sign-in conditions: Graph then
answers, per policy, policyApplies and analysisReasons (notEnoughInformation where a policy depends on the sign-in).
Sources in docs/graph-facts-access.md. A client per call: live calls are rare and explicitly asked for.
"""

from __future__ import annotations

from typing import Any

from entra_mcp.config import Settings
from entra_mcp.errors import EntraMcpError
from entra_mcp.graph.tenant import make_client


class LiveWhatIf:
    """`await what_if(tenant_name, user_id, app_id)` -> Graph's whatIfAnalysisResult list."""

    def __init__(self, settings: Settings) -> None:
        self._tenants = {t.name: t for t in settings.tenants}

    def allowed(self, tenant_name: str) -> bool:
        t = self._tenants.get(tenant_name)
        return bool(t is not None and t.allow_live_what_if)

    async def __call__(self, tenant_name: str, user_id: str, app_id: str) -> list[dict[str, Any]]:
        tenant = self._tenants.get(tenant_name)
        if tenant is None or not tenant.allow_live_what_if:
            raise EntraMcpError(f"live What If is not allowed for tenant {tenant_name!r} (allow_live_what_if)")
        body = {
            "signInIdentity": {"@odata.type": "#microsoft.graph.userSignIn", "userId": user_id},
            "signInContext": {"@odata.type": "#microsoft.graph.applicationContext", "includeApplications": [app_id]},
            "signInConditions": {},
            "appliedPoliciesOnly": False,
        }
        async with make_client(tenant) as client:
            answer = await client.post("/identity/conditionalAccess/evaluate", json=body, area="what_if")
        value = answer.get("value")
        return [v for v in value if isinstance(v, dict)] if isinstance(value, list) else []


__all__ = ["LiveWhatIf"]
