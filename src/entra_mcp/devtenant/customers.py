"""Many customer tenants served by one multi-tenant app: what a service provider's hosted entra-mcp talks to.

- `add_provider_app(state, ...)`: registers ONE multi-tenant app ("entra-mcp provider", signInAudience
  AzureADMultipleOrgs) in the first tenant, with a client secret and the sync permissions, and consents to it in
  each customer tenant: admin consent creates the app's service principal there (docs/graph-facts-tenants.md) and
  grants each consented application permission as an appRoleAssignment of that service principal to Microsoft
  Graph's (docs/graph-facts-consent.md). Its client credentials then get a token in every consented tenant whose
  `roles` claim lists exactly the permissions granted THERE (`app_roles`), so Graph answers 403
  Authorization_RequestDenied in a tenant whose admin left one out (`withhold_permission`); a tenant without the
  consent refuses the token with AADSTS7000229 (the login host asks `consent_error`).
- `customer_state(count, size, seed)`: `count` tenants for a scale test (generated without their own certificate key
  pair each: one RSA key is reused, which is what makes 200 tenants cheap), with the provider app consented in all.
- `provider_config(emu, app, names)`: the `[tenant_defaults]` block and the tenants file pointing at a running emulator.
- `RequestLog` (`runtime.requests`): each tenant's Graph requests as the emulator received them ($batch items one
  each), so a test can check that the product kept every tenant within its request budget (`max_in_window`); and
  each HTTP request ($batch once) with its arrival and the `client-request-id` header the client sent, per token.
"""

from __future__ import annotations

import secrets
import threading
import time
import uuid
from collections import defaultdict, deque
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

from entra_mcp.devtenant.model import AppRegistration, ClientSecret, EmulatedTenant, EmulatorState

PROVIDER_APP = "entra-mcp provider"
MULTI_TENANT = "AzureADMultipleOrgs"
PROVIDER_SECRET_ENV = "DEVTENANT_PROVIDER_SECRET"


def add_provider_app(state: EmulatorState, *, roles: Iterable[str] | None = None, consent_in: Iterable[str] | None = None,
                     seed: int = 1) -> AppRegistration:
    """The multi-tenant app, registered in the first tenant and consented in `consent_in` (tenant ids; default all)."""
    from entra_mcp.devtenant.generate import SYNC_APP_ROLES

    home = next(iter(state.tenants.values()))
    client_id = str(uuid.uuid5(uuid.NAMESPACE_URL, f"entra-mcp/provider/{seed}/{home.tenant_id}"))
    reg = AppRegistration(client_id=client_id, display_name=PROVIDER_APP,
                          secrets=[ClientSecret(key_id=str(uuid.uuid4()), value=secrets.token_urlsafe(30),
                                                display_name="provider")],
                          granted_roles=list(roles if roles is not None else SYNC_APP_ROLES), sign_in_audience=MULTI_TENANT)
    with home.lock:
        home.registrations[client_id] = reg
    for tid in (list(state.tenants) if consent_in is None else list(consent_in)):
        consent(state.tenants[tid], reg, home)
    return reg


def consent(tenant: EmulatedTenant, reg: AppRegistration, home: EmulatedTenant,
            permissions: Iterable[str] | None = None) -> dict[str, Any]:
    """Admin consent in `tenant`: the app's service principal appears there (owned by the home tenant) with an app
    role assignment to Microsoft Graph for each of `permissions` (default: every permission the app asks for)."""
    sp = provider_principal(tenant, reg.client_id)
    if sp is None:
        sp = tenant.create_service_principal({"appId": reg.client_id, "displayName": reg.display_name,
                                              "appDisplayName": reg.display_name, "appOwnerOrganizationId": home.tenant_id,
                                              "servicePrincipalNames": [reg.client_id], "signInAudience": MULTI_TENANT})
    graph = _graph_principal(tenant)
    if graph is not None:
        have = set(app_roles(tenant, reg) or [])
        ids = {r.get("value"): r.get("id") for r in graph.get("appRoles", [])}
        for permission in (reg.granted_roles if permissions is None else permissions):
            if permission not in have and ids.get(permission):
                tenant.add_app_role_assignment(str(graph["id"]), str(sp["id"]), str(ids[permission]))
    return sp


def _graph_principal(tenant: EmulatedTenant) -> dict[str, Any] | None:
    from entra_mcp.devtenant.generate import GRAPH_APP_ID

    with tenant.lock:
        return next((sp for sp in tenant.service_principals.values() if sp.get("appId") == GRAPH_APP_ID), None)


def _graph_grants(tenant: EmulatedTenant, sp_id: str) -> list[tuple[str, str]]:
    """(assignment id, permission) of each app role of Microsoft Graph granted to the service principal `sp_id`."""
    graph = _graph_principal(tenant)
    if graph is None:
        return []
    values = {r.get("id"): r.get("value") for r in graph.get("appRoles", [])}
    with tenant.lock:
        return [(str(a["id"]), str(values[a["appRoleId"]])) for a in tenant.assignments_for_resource(str(graph["id"]))
                if a.get("principalId") == sp_id and values.get(a.get("appRoleId"))]


def app_roles(tenant: EmulatedTenant, reg: AppRegistration) -> list[str] | None:
    """The `roles` of a client-credentials token for Graph that a multi-tenant app gets in `tenant`: the Graph
    permissions granted to its service principal there (sorted); None for an app of this tenant's own (its
    registration's granted roles apply, as before) or one without a service principal here."""
    if reg.sign_in_audience != MULTI_TENANT:
        return None
    sp = provider_principal(tenant, reg.client_id)
    if sp is None:
        return None
    return sorted({perm for _, perm in _graph_grants(tenant, str(sp["id"]))})


def withhold_permission(tenant: EmulatedTenant, client_id: str, permission: str) -> bool:
    """The customer's admin removes one granted permission of the app (its app role assignment to Graph): from the
    next token on, Graph refuses what needs it. True when there was such a grant."""
    sp = provider_principal(tenant, client_id)
    if sp is None:
        return False
    found = [aid for aid, perm in _graph_grants(tenant, str(sp["id"])) if perm == permission]
    for aid in found:
        tenant.remove_app_role_assignment(aid)
    return bool(found)


def revoke_consent(tenant: EmulatedTenant, client_id: str) -> None:
    """Remove the app's service principal from `tenant` (the customer's admin deleted the enterprise app)."""
    sp = provider_principal(tenant, client_id)
    if sp is not None:
        tenant.hard_delete(str(sp["id"]))


def provider_principal(tenant: EmulatedTenant, client_id: str) -> dict[str, Any] | None:
    with tenant.lock:
        return next((sp for sp in tenant.service_principals.values() if sp.get("appId") == client_id), None)


def consent_error(tenant: EmulatedTenant, reg: AppRegistration) -> str | None:
    """Why `reg` (registered in another tenant) cannot get a token in `tenant`, or None: Entra's AADSTS7000229 when
    no admin consented (no service principal of the app there)."""
    if reg.client_id in tenant.registrations or provider_principal(tenant, reg.client_id) is not None:
        return None
    return (f"The client application {reg.client_id} is missing service principal in the tenant {tenant.tenant_id}. "
            "See instructions here: https://go.microsoft.com/fwlink/?linkid=2225119")


def customer_state(count: int, size: str = "small", seed: int = 1, *, sizes: Callable[[int], str] | None = None,
                   progress: Callable[[str], None] | None = None) -> tuple[EmulatorState, AppRegistration]:
    """`count` tenants (their size `sizes(index)`, default `size`) with the provider app consented in each."""
    from entra_mcp.devtenant import generate

    state = EmulatorState()
    with reused_certificate_key():
        for index in range(count):
            kind = sizes(index) if sizes is not None else size
            if progress is not None and index % 50 == 0:
                progress(f"generating tenants {index + 1}-{min(count, index + 50)} of {count}")
            state.add_tenant(generate.generate_tenant(kind, seed, index))
    return state, add_provider_app(state, seed=seed)


def provider_config(emu: Any, app: AppRegistration, names: Iterable[str], *, secret_env: str = PROVIDER_SECRET_ENV,
                    sync: dict[str, Any] | None = None) -> tuple[str, str]:
    """(the main config's `[tenant_defaults]` block, the tenants file's text) for the running emulator `emu`: every
    tenant of it under `names`, all with the provider app's client id and secret (in `secret_env`)."""
    import json

    q = json.dumps
    defaults = (f"[tenant_defaults]\nclient_id = {q(app.client_id)}\nclient_secret_env = {q(secret_env)}\n"
                f'cloud = "custom"\nlogin_url = {q(emu.login_url)}\ngraph_url = {q(emu.graph_url)}\n'
                f"ca_bundle = {q(str(emu.ca_bundle))}\n")
    if sync:
        defaults += "\n[tenant_defaults.sync]\n" + "".join(f"{k} = {q(v)}\n" for k, v in sync.items())
    entries = "".join(f'[[tenants]]\nname = {q(n)}\ntenant_id = {q(t.tenant_id)}\n\n' for n, t in zip(names, emu.tenants()))
    return defaults, entries


class reused_certificate_key:
    """While active, every generated sync-app certificate uses one RSA key (generation of 200 keys costs ~30 s of CPU;
    certificates, thumbprints and key ids stay distinct)."""

    def __enter__(self) -> "reused_certificate_key":
        from cryptography.hazmat.primitives.asymmetric import rsa

        self._original = rsa.generate_private_key
        key = self._original(public_exponent=65537, key_size=2048)
        rsa.generate_private_key = lambda *a, **k: key  # restored in __exit__
        return self

    def __exit__(self, *exc: object) -> None:
        from cryptography.hazmat.primitives.asymmetric import rsa

        rsa.generate_private_key = self._original


@dataclass
class RequestLog:
    """Graph requests per tenant id, as (monotonic time) stamps, and their total; and per access token (its `uti`:
    one client process), so a test tells apart the requests of replicas that share one app registration. Those count
    a $batch's items one each, as Graph's limits do; `http` keeps each HTTP request once, per token, as (arrival,
    the client's `client-request-id` header or ""). `on_http(token_id, client_request_id)`, when set, is called on
    each HTTP request before it is answered (in the emulator's thread): a test can act at a chosen request, e.g. pause
    the client that sent it."""

    clock: Callable[[], float] = time.monotonic
    stamps: dict[str, deque[float]] = field(default_factory=lambda: defaultdict(deque))
    by_token: dict[str, deque[float]] = field(default_factory=lambda: defaultdict(deque))
    http: dict[str, deque[tuple[float, str]]] = field(default_factory=lambda: defaultdict(deque))
    on_http: Callable[[str, str], None] | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def record(self, tenant_id: str, token_id: str = "") -> None:
        with self._lock:
            now = self.clock()
            self.stamps[tenant_id].append(now)
            if token_id:
                self.by_token[token_id].append(now)

    def record_http(self, token_id: str, client_request_id: str) -> None:
        """One HTTP request to Graph (a $batch once), authenticated as `token_id`."""
        with self._lock:
            self.http[token_id].append((self.clock(), client_request_id))
        hook = self.on_http
        if hook is not None:
            hook(token_id, client_request_id)

    def http_requests(self, tokens: set[str], start: float = 0.0, end: float = float("inf")) -> list[tuple[float, str]]:
        """The HTTP requests sent with any of `tokens` that arrived between `start` and `end`: (arrival,
        client-request-id), in arrival order."""
        with self._lock:
            return sorted(x for t in tokens for x in self.http.get(t, ()) if start <= x[0] <= end)

    def tokens_between(self, start: float, end: float) -> set[str]:
        """The tokens that sent a request between the monotonic times `start` and `end`."""
        with self._lock:
            return {t for t, s in self.by_token.items() if any(start <= x <= end for x in s)}

    def count_by(self, tokens: set[str], start: float, end: float = float("inf")) -> int:
        """Requests sent with any of `tokens` between `start` and `end`."""
        with self._lock:
            return sum(1 for t in tokens for x in self.by_token.get(t, ()) if start <= x <= end)

    def counts(self) -> dict[str, int]:
        with self._lock:
            return {tid: len(s) for tid, s in self.stamps.items()}

    def max_in_window(self, tenant_id: str, seconds: float = 10.0) -> int:
        """The most requests this tenant received within any `seconds`-long window."""
        with self._lock:
            times = list(self.stamps.get(tenant_id, ()))
        best = start = 0
        for end, t in enumerate(times):
            while t - times[start] > seconds:
                start += 1
            best = max(best, end - start + 1)
        return best

    def reset(self) -> None:
        with self._lock:
            self.stamps.clear()
            self.by_token.clear()
            self.http.clear()


__all__ = ["MULTI_TENANT", "PROVIDER_APP", "PROVIDER_SECRET_ENV", "RequestLog", "add_provider_app", "consent",
           "consent_error", "customer_state", "provider_config", "provider_principal", "revoke_consent"]
