"""Helpers for the emulated-Graph tests: tokens through real msal, Graph and control calls through real httpx over
the emulator's HTTPS port, and a tiny delta applier (what any client's mirror does with pages)."""

from __future__ import annotations

from typing import Any

import httpx
import msal
import requests

from entra_mcp.devtenant.server import RunningEmulator


def app_token(emu: RunningEmulator, tenant_index: int = 0) -> str:
    """A fresh app-only Graph token for the tenant's sync app (client credentials through msal)."""
    tenant = emu.tenant(tenant_index)
    reg = emu.sync_app(tenant_index)
    # requests lets REQUESTS_CA_BUNDLE override `verify`: a session that ignores the environment trusts only our CA
    session = requests.Session()
    session.trust_env = False
    session.verify = str(emu.ca_bundle)
    with session:
        app = msal.ConfidentialClientApplication(
            reg.client_id, client_credential=reg.secrets[0].value, authority=f"{emu.login_url}/{tenant.tenant_id}",
            instance_discovery=False, http_client=session)
        result = app.acquire_token_for_client([f"{emu.graph_url}/.default"])
    assert "access_token" in result, result.get("error_description")
    return str(result["access_token"])


def graph(emu: RunningEmulator, tenant_index: int = 0, token: str | None = None) -> httpx.Client:
    token = token if token is not None else app_token(emu, tenant_index)
    return httpx.Client(base_url=f"{emu.graph_url}/v1.0", verify=emu.ssl_context(), timeout=20,
                        headers={"Authorization": f"Bearer {token}"})


def control(emu: RunningEmulator, method: str, path: str, body: Any = None) -> Any:
    with httpx.Client(base_url=f"{emu.base_url}/_emulator", verify=emu.ssl_context(), timeout=20) as c:
        r = c.request(method, path, json=body)
        assert r.status_code == 200, r.text
        return r.json()


def mutate(emu: RunningEmulator, *ops: dict[str, Any], tenant_index: int = 0) -> list[Any]:
    tid = emu.tenant(tenant_index).tenant_id
    return list(control(emu, "POST", f"/tenants/{tid}/mutations", {"mutations": list(ops)})["results"])


def pages(client: httpx.Client, url: str, params: dict[str, str] | None = None,
          headers: dict[str, str] | None = None, limit: int = 500) -> list[dict[str, Any]]:
    """Every page of a collection or a delta round, following nextLink until it stops (or a deltaLink comes)."""
    out: list[dict[str, Any]] = []
    r = client.get(url, params=params, headers=headers)
    while True:
        assert r.status_code == 200, r.text
        body = r.json()
        out.append(body)
        nxt = body.get("@odata.nextLink")
        if not nxt:
            return out
        assert len(out) < limit, "paging did not end"
        r = client.get(nxt, headers=headers)


def apply_delta(mirror: dict[str, dict[str, Any]], members: dict[str, set[str]] | None,
                round_pages: list[dict[str, Any]]) -> None:
    """Apply a delta round the way a careful client does: merge by id, removals drop, members@delta by group id."""
    for page in round_pages:
        for item in page["value"]:
            oid = item["id"]
            if "@removed" in item:
                mirror.pop(oid, None)
                if members is not None:
                    members.pop(oid, None)
                continue
            props = {k: v for k, v in item.items() if k != "members@delta"}
            mirror.setdefault(oid, {}).update(props)
            if members is not None and "members@delta" in item:
                current = members.setdefault(oid, set())
                for ref in item["members@delta"]:
                    if "@removed" in ref:
                        current.discard(ref["id"])
                    else:
                        current.add(ref["id"])
