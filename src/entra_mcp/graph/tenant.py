"""The Graph client of one configured tenant: its Graph host, its credential (msal), its CA bundle."""

from __future__ import annotations

from typing import Any

import httpx

from entra_mcp.config import TenantSettings
from entra_mcp.graph.client import GraphClient
from entra_mcp.graph.credentials import TokenProvider


def make_client(tenant: TenantSettings, *, transport: httpx.AsyncBaseTransport | None = None, **kwargs: Any) -> GraphClient:
    """A GraphClient for `tenant` (kwargs: GraphClient's, e.g. concurrency, retry policy)."""
    return GraphClient(tenant.graph_host, TokenProvider(tenant), ca_bundle=str(tenant.ca_bundle) if tenant.ca_bundle else None,
                       transport=transport, **kwargs)


__all__ = ["make_client"]
