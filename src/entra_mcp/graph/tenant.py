"""The Graph client of one configured tenant: its Graph host, its credential (msal), its CA bundle."""

from __future__ import annotations

from typing import Any

import httpx

from entra_mcp.config import TenantSettings
from entra_mcp.graph.budget import tenant_budget
from entra_mcp.graph.client import GraphClient
from entra_mcp.graph.credentials import TokenProvider


def make_client(tenant: TenantSettings, *, transport: httpx.AsyncBaseTransport | None = None, **kwargs: Any) -> GraphClient:
    """A GraphClient for `tenant` (kwargs: GraphClient's, e.g. concurrency, retry policy), within the tenant's
    request budget (`[tenants.sync] max_requests_per_10s`, shared by every client of the tenant in this process)."""
    kwargs.setdefault("budget", tenant_budget(f"{tenant.name}\0{tenant.tenant_id}", tenant.sync.max_requests_per_10s))
    return GraphClient(tenant.graph_host, TokenProvider(tenant), ca_bundle=str(tenant.ca_bundle) if tenant.ca_bundle else None,
                       transport=transport, **kwargs)


__all__ = ["make_client"]
