"""One tenant's mirror as the tools read it: a consistent, immutable-by-convention picture of the directory.

The sync writes the mirror (mirror/store.py); readers load a DirectorySnapshot from it and never see a half-applied
run. Objects are Graph-shaped dicts (camelCase property names as Graph returns them, only the properties the sync
selects). Loaded from the mirror, the object collections are mirror/table.py Tables: read-only mappings of
read-only records that read like those dicts (tests and tools may also build a snapshot from plain dicts). Nothing
here speaks HTTP or MCP.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal, Mapping

AreaName = Literal[
    "users",
    "sign_in_activity",
    "groups",
    "applications",
    "service_principals",
    "app_role_assignments",
    "domains",
]
AREAS: tuple[AreaName, ...] = (
    "users",
    "sign_in_activity",
    "groups",
    "applications",
    "service_principals",
    "app_role_assignments",
    "domains",
)

# member kinds as stored in DirectorySnapshot.members (the tail of Graph's @odata.type)
MemberKind = Literal["user", "group", "servicePrincipal", "device", "orgContact", "other"]


@dataclass(frozen=True)
class AreaStatus:
    """How one area of one tenant stands. Times are timezone-aware UTC."""

    enabled: bool
    disabled_reason: str | None = None  # e.g. "not enabled in config" or "Graph 403 Authorization_RequestDenied: grant Application.Read.All"
    last_success: datetime | None = None
    last_error: str | None = None  # never carries a secret
    last_error_at: datetime | None = None
    object_count: int | None = None
    mode: str | None = None  # "full" or "delta": how the last successful run went


@dataclass
class DirectorySnapshot:
    """Everything the identity tools may know about one tenant, as of `as_of`.

    users             id -> user dict: id, displayName, givenName, surname, userPrincipalName, mail, otherMails,
                      proxyAddresses, jobTitle, department, officeLocation, companyName, employeeId, accountEnabled,
                      userType, externalUserState, createdDateTime, lastPasswordChangeDateTime, passwordPolicies,
                      onPremisesSyncEnabled, onPremisesLastSyncDateTime, onPremisesSamAccountName, usageLocation,
                      assignedLicenses, "managerId" (the manager's object id or None) and, when the sign_in_activity
                      area synced, signInActivity.
    groups            id -> group dict: id, displayName, description, mail, mailEnabled, securityEnabled, groupTypes,
                      membershipRule, membershipRuleProcessingState, onPremisesSyncEnabled.
    members           group id -> {member id: MemberKind}: DIRECT members only.
    applications      id -> application dict: id, appId, displayName, signInAudience, appRoles, keyCredentials,
                      passwordCredentials, createdDateTime.
    service_principals id -> servicePrincipal dict: id, appId, displayName, appDisplayName, accountEnabled,
                      appOwnerOrganizationId, appRoleAssignmentRequired, servicePrincipalType, servicePrincipalNames,
                      appRoles, keyCredentials, passwordCredentials, tags.
    app_role_assignments  resource service principal id -> list of {id, principalId, principalType
                      ("User"|"Group"|"ServicePrincipal"), principalDisplayName, appRoleId, resourceId}.
    domains           list of domain dicts: id, isDefault, isVerified, passwordValidityPeriodInDays,
                      passwordNotificationWindowInDays.
    areas             area name -> AreaStatus (every name in AREAS is present).
    as_of             when the newest successful sync run of this tenant committed (None: never synced).
    """

    tenant: str  # the tenant's name in the config
    tenant_id: str
    as_of: datetime | None
    interval_minutes: float
    users: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    groups: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    members: dict[str, dict[str, MemberKind]] = field(default_factory=dict)
    applications: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    service_principals: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    app_role_assignments: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    domains: list[dict[str, Any]] = field(default_factory=list)
    areas: dict[str, AreaStatus] = field(default_factory=dict)
    version: int = 0  # grows with every committed change; readers compare it to reload
