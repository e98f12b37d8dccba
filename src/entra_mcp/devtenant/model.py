"""The emulator's in-memory state: tenants, their directory objects and their app registrations.

Directory objects are kept as Graph-shaped dicts holding every property (camelCase, as Graph names them); the Graph
routes project them with `$select` and default properties. The login host only reads registrations, users and
passwords from here. Everything the emulator serves is derived from this state.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

# The all-zero appRoleId: "default access" in appRoleAssignments.
DEFAULT_ACCESS_ROLE = "00000000-0000-0000-0000-000000000000"
# Password every generated user signs in with on the emulator's authorize page.
DEFAULT_USER_PASSWORD = "Passw0rd!demo"


@dataclass
class ClientSecret:
    key_id: str
    value: str
    display_name: str = ""
    end_date_time: str = "2299-12-31T00:00:00Z"


@dataclass
class ClientCertificate:
    key_id: str
    thumbprint_sha1_b64url: str  # x5t of the certificate, as a client assertion names it
    thumbprint_sha256_b64url: str  # x5t#S256
    public_key_pem: bytes
    certificate_pem: bytes = b""
    private_key_pem: bytes = b""  # kept so the control API can hand the test bed a working PEM (cert + key)
    end_date_time: str = "2299-12-31T00:00:00Z"


@dataclass
class AppRegistration:
    """An app that can ask the login host for tokens (the product's sync app, a portal web app, an API)."""

    client_id: str
    display_name: str
    secrets: list[ClientSecret] = field(default_factory=list)
    certificates: list[ClientCertificate] = field(default_factory=list)
    # application permissions granted with admin consent, e.g. ["User.Read.All", "GroupMember.Read.All"]
    granted_roles: list[str] = field(default_factory=list)
    redirect_uris: list[str] = field(default_factory=list)
    # delegated scopes this app exposes as an API (identifierUri api://{client_id}), e.g. ["Identity.Investigate"]
    exposed_scopes: list[str] = field(default_factory=list)
    # app roles this API exposes for app-only callers
    exposed_app_roles: list[str] = field(default_factory=list)
    sign_in_audience: str = "AzureADMyOrg"


@dataclass
class EmulatedTenant:
    tenant_id: str  # GUID
    domain: str  # verified default domain, e.g. "contoso.example"
    display_name: str
    premium: bool = True  # Entra ID P1/P2: signInActivity is served only when True
    registrations: dict[str, AppRegistration] = field(default_factory=dict)  # client_id -> registration
    # Graph-shaped directory objects, id -> dict with every property
    users: dict[str, dict[str, Any]] = field(default_factory=dict)
    groups: dict[str, dict[str, Any]] = field(default_factory=dict)
    applications: dict[str, dict[str, Any]] = field(default_factory=dict)
    service_principals: dict[str, dict[str, Any]] = field(default_factory=dict)
    # group id -> {member id: kind}, DIRECT members only; kind is the tail of @odata.type ("user", "group",
    # "servicePrincipal", "device")
    members: dict[str, dict[str, str]] = field(default_factory=dict)
    # user id -> manager's user id
    managers: dict[str, str] = field(default_factory=dict)
    # appRoleAssignment id -> Graph-shaped appRoleAssignment (id, appRoleId, createdDateTime, principalDisplayName,
    # principalId, principalType, resourceDisplayName, resourceId)
    app_role_assignments: dict[str, dict[str, Any]] = field(default_factory=dict)
    domains: list[dict[str, Any]] = field(default_factory=list)
    organization: dict[str, Any] = field(default_factory=dict)
    # user id -> password for the authorize page (DEFAULT_USER_PASSWORD unless set)
    passwords: dict[str, str] = field(default_factory=dict)
    lock: threading.RLock = field(default_factory=threading.RLock, repr=False)

    def user_by_upn(self, upn: str) -> dict[str, Any] | None:
        """Case-insensitive userPrincipalName lookup (used by the authorize page)."""
        needle = upn.strip().lower()
        for u in self.users.values():
            if str(u.get("userPrincipalName", "")).lower() == needle:
                return u
        return None

    def password_for(self, user_id: str) -> str:
        return self.passwords.get(user_id, DEFAULT_USER_PASSWORD)


@dataclass
class EmulatorState:
    """All tenants the emulator serves; a tenant is addressed by its id or any of its domains."""

    tenants: dict[str, EmulatedTenant] = field(default_factory=dict)  # tenant_id -> tenant

    def resolve(self, tenant: str) -> EmulatedTenant | None:
        key = tenant.strip().lower()
        if key in self.tenants:
            return self.tenants[key]
        for t in self.tenants.values():
            if key == t.domain.lower() or any(key == str(d.get("id", "")).lower() for d in t.domains):
                return t
        return None
