"""The shapes of the tool answers, as pydantic models: the MCP server publishes each one's JSON schema as the tool's
`outputSchema` and checks every answer against it.

The models describe the dicts the answer functions return; they add nothing and drop nothing (extra fields are
allowed, so an answer may carry more than its model names). Top-level fields are typed; nested directory objects are
objects (`dict`) whose fields are Graph's own camelCase names. `None` is "unknown" (an area disabled or not synced,
with a finding saying why), never "no". Times are ISO 8601 UTC ending in `Z`.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from .findings import Severity

Obj = dict[str, Any]


class Finding(BaseModel):
    """A conclusion of the server about the answer: a stable code (docs/findings.md), a severity, one line."""

    model_config = ConfigDict(extra="allow")
    code: str
    severity: Severity
    message: str


class Answer(BaseModel):
    """What every answer has: the mirror time it came from and the findings."""

    model_config = ConfigDict(extra="allow")
    asOf: str | None = Field(description="Time of the mirror this answer came from (ISO 8601 UTC, ...Z); null when never synced.")
    findings: list[Finding] = Field(description="Findings ({code, severity, message}), most severe first.")


class LookupUserAnswer(Answer):
    matches: list[Obj] | None = Field(description="Users: id, displayName, userPrincipalName, mail, jobTitle, department, officeLocation, accountEnabled, userType...")
    matchType: Literal["exact", "fuzzy", "none"] | None
    matchedBy: Literal["identifier", "accountName", "name", "similarName"] | None = Field(
        None, description="How: an identifier, the local part of an address or mailNickname, the whole name exactly "
        "(in any script), or a similar name.")
    total: int | None = Field(None, description="How many users match in all; `matches` is capped at `limit`.")
    truncated: bool | None = None
    suggestions: list[Obj] | None = Field(None, description="The closest names when nothing matched.")


class GroupMembershipsAnswer(Answer):
    user: Obj | None
    groups: list[Obj] | None = Field(description="Groups: id, displayName, kind, dynamic, direct, via (the chain of groups it comes through).")
    total: int | None = None
    directCount: int | None = None
    truncated: bool | None = None


class GroupMembersAnswer(Answer):
    group: Obj | None
    members: list[Obj] | None = Field(description="Members: id, displayName, type...")
    total: int | None
    countsByType: dict[str, int] | None = None
    truncated: bool | None = None
    sortedByName: bool | None = None
    transitive: bool | None = None
    owners: list[Obj] | None = Field(None, description="The group's owners (id, displayName, userPrincipalName, type): who "
                                     "approves membership; null when owners are not mirrored.")


class AccountStateAnswer(Answer):
    user: Obj | None
    accountEnabled: bool | None
    lastPasswordChangeDateTime: str | None
    passwordExpired: bool | None = Field(description="true/false, or null when unknown (synced from AD, guests, no policy).")
    passwordExpiresDateTime: str | None = None
    passwordNeverExpires: bool | None
    onPremisesSyncEnabled: bool | None
    lastSignInDateTime: str | None = Field(description="Last interactive sign-in; null when unknown or never.")
    lastNonInteractiveSignInDateTime: str | None = None
    lastSuccessfulSignInDateTime: str | None = None
    userType: str | None
    externalUserState: str | None
    authentication: Obj | None = Field(
        default=None, description="MFA/SSPR readiness: isMfaRegistered, isMfaCapable, isSsprEnabled, isSsprRegistered, "
        "isSsprCapable, isPasswordlessCapable, methodsRegistered, preferredMethod, isAdmin (the report's flag: holds an "
        "admin role); null when unknown.")
    roles: Obj | None = Field(
        default=None, description="Directory roles: privileged, active and eligible (PIM) [{role, directoryScopeId, via}], "
        "roleAssignableGroups, ownsRoleAssignableGroups [{id, displayName, roles}] (an owner can add themselves: "
        "privileged when the group holds a role; null when owners are not mirrored); null when unknown.")
    licenses: list[Obj] | None = Field(
        default=None, description="Licences: skuId, skuPartNumber, name, disabledPlans, state, error (name, state and error null when the "
        "licences area is not synced); null when unknown.")
    risk: Obj | None = Field(
        default=None, description="Identity Protection: riskLevel, riskState, riskDetail, riskLastUpdatedDateTime; null when unknown.")
    devices: Obj | None = Field(None, description="The user's Entra devices, compact: total, enabled, managed, compliant, "
                                "items (displayName, operatingSystem, joinType joined/hybridJoined/registered, isManaged, "
                                "isCompliant, approximateLastSignInDateTime); null when the devices area is not synced.")


class ResetEligibilityAnswer(Answer):
    user: Obj | None
    verdict: Literal["self_service", "helpdesk_cloud", "on_premises", "not_by_helpdesk", "escalate",
                     "guest_home_tenant", "unknown"] | None = Field(
        description="self_service (SSPR ready), helpdesk_cloud, on_premises (synced, no writeback known), not_by_helpdesk "
        "(privileged target), escalate (caller unverified, disabled, at risk, VIP), guest_home_tenant, unknown.")
    reasons: list[str] | None = Field(description="Why, most decisive first.")
    deskRole: str | None = None
    rolesThatMayReset: list[str] | None = Field(
        default=None, description="Admin roles allowed to reset this password (Entra's table); null when roles are unknown.")
    callerVerified: bool | None = Field(default=None, description="true/false when a chat session was given; null when not.")
    passwordWriteback: bool | None = None
    authentication: Obj | None = None
    roles: Obj | None = None
    risk: Obj | None = None


class AppPrincipalAnswer(Answer):
    appId: str | None = None
    displayName: str | None = None
    application: Obj | None = Field(description="The app registration, or null when this tenant does not hold it (or it is unknown).")
    servicePrincipal: Obj | None = Field(description="The enterprise app (service principal), or null.")
    credentials: list[Obj] | None = Field(description="Secrets and certificates: type, displayName, endDateTime, expired, expiresInDays.")
    credentialsTotal: int | None = None
    appRoles: list[Obj] | None = None
    appRolesTotal: int | None = None
    owners: list[Obj] | None = Field(None, description="Owners of the app registration and enterprise app: whom to route an "
                                     "app problem or an access approval to; null when owners are not mirrored.")


class AppAccessAnswer(Answer):
    user: Obj | None = None
    app: Obj | None = None
    hasAccess: bool | None = Field(description="true/false, or null when it cannot be known from the mirror.")
    reason: str | None
    assignmentRequired: bool | None = None
    assignments: list[Obj] | None = Field(description="The user's assignments to the app: appRole and via (direct or the group).")
    assignmentsTotal: int | None = None
    conditionalAccess: Obj | None = Field(None, description=(
        "Conditional Access from the mirrored policies: policies (displayName, state enabled|reportOnly, applies "
        "true|dependsOnSignIn|null, matchedBy, requires {block, builtInControls, operator, text}, dependsOn "
        "[{condition, detail}], unknown), blocked, dependsOnSignIn, deviceCheck, and liveWhatIf when Graph's What If "
        "was asked; null when the policies are not mirrored."))
    liveWhatIf: Obj | None = Field(None, description=(
        "Only with live_what_if=true and a tenant that allows it: Graph's Conditional Access What If answer, asked "
        "now: policies (policyApplies, analysisReasons) and differences from the local evaluation."))
    approvers: Obj | None = Field(None, description=(
        "Who can grant access when the user lacks it: appOwners, and assignedGroups (the groups assigned to the app, "
        "each with its owners); null when access is granted or owners are not mirrored."))


class TicketContextAnswer(Answer):
    requester: Obj | None = Field(description="status (found, ambiguous, notFound), profile, account summary, manager, or candidates.")
    mentions: Obj | None = Field(description="users, groups and apps the ticket text names; unresolvedAddresses.")
    signIns: Obj | None = Field(None, description="The requester's sign-in evidence (last 24 h): verdict, nextStep, causes, lockout, lastSuccess, and per named app; null when sign-in events are not mirrored.")


class ExplainSignInAnswer(Answer):
    user: Obj | None = Field(description="id (null for a name the tenant does not have), displayName, userPrincipalName.")
    app: Obj | None = Field(description="The app the question was narrowed to (appId, displayName), or null.")
    verdict: str = Field(description="The most decisive cause known, from the directory and the sign-in log together.")
    nextStep: str = Field(description="What the service desk does next.")
    window: Obj | None = Field(description="from, to, keptFrom, successesFrom, asOf: what the sign-in log covers; null when it is not mirrored.")
    signInEvents: Obj | None = Field(description="failures and causes counted in the window; null when sign-in events are not mirrored.")
    failures: list[Obj] | None = Field(description="Per error code: errorCode, known, kind, cause, userSees, nextStep, finding, count, first, last, failureReason, additionalDetails, apps, clientApps, ipAddresses, failedConditionalAccessPolicies, grantControls.")
    lastSuccess: Obj | None = Field(description="createdDateTime, appDisplayName, ipAddress, clientAppUsed, city, countryOrRegion, source; null when none is known.")
    lockout: Obj | None = Field(description="probablyLockedNow, lockedAt, clearsAt (an estimate), lockouts, failedPasswordsSinceLastSuccess, basis.")
    directory: Obj | None = Field(description="accountEnabled, passwordExpired, lastPasswordChangeDateTime... from the directory; null when not synced.")
    appAccess: Obj | None = Field(description="hasAccess and reason for the named app; null without an app or when unknown.")


class SignInFailuresSummaryAnswer(Answer):
    window: Obj | None = Field(description="from, to, keptFrom, successesFrom, asOf; null when sign-in events are not mirrored.")
    app: Obj | None = Field(description="The app the picture was narrowed to, or null.")
    failures: int | None = Field(description="Failed sign-ins in the window; null when sign-in events are not mirrored.")
    topErrorCodes: list[Obj] | None = Field(description="errorCode, count, users, cause, kind, finding.")
    topApps: list[Obj] | None
    topIpAddresses: list[Obj] | None = Field(description="ipAddress, count, accounts, city, countryOrRegion.")
    topUsers: list[Obj] | None
    suspectedSprays: list[Obj] | None = Field(description="One IP failing passwords against many accounts: ipAddress, accounts, failures, first, last.")
    sharedAddresses: list[Obj] | None = Field(None, description="Addresses many accounts fail from but also sign in from (an office's egress): not flagged as sprays.")
    spikes: list[Obj] | None = Field(description="App and error code far above their hourly average in the last hour.")


class ChatSessionAnswer(Answer):
    valid: bool | None = Field(description="Whether the chat session token is live; null when sign-in is not configured here.")
    reason: str | None = Field(description="Why it is not valid.")
    identity: Obj | None = Field(description="The verified identity: tid, oid, name, preferredUsername.")
    user: Obj | None = Field(description="The verified person's directory record and account summary.")
    matchesClaimedUser: bool | None = Field(description="Whether the verified person is the user they claim to be; null when nothing was claimed.")


class SyncStatusAnswer(Answer):
    """One tenant's status, or with several tenants and none named, `tenants` listing each."""

    tenant: str | None = None
    tenantId: str | None = None
    intervalMinutes: float | None = None
    version: int | None = None
    lastError: str | None = Field(None, description="The tenant's last error when every area failed with it (then not repeated per area).")
    lastErrorAt: str | None = None
    areas: dict[str, Obj] | None = Field(None, description="Per area: enabled, disabledReason, lastSuccess, lastError (only when newer than lastSuccess), lastErrorAt, objectCount, mode.")
    tenants: list[Obj] | None = Field(None, description="With several tenants: one such status each.")
    replication: Obj | None = Field(None, description="Several replicas only: leading (whether this replica syncs the tenant), published (the newest version its leader published: version, asOf, by), serving (the one this replica answers from), inSync.")
    findings: list[Finding] = Field(default_factory=list)


__all__ = [
    "AccountStateAnswer",
    "Answer",
    "AppAccessAnswer",
    "AppPrincipalAnswer",
    "ChatSessionAnswer",
    "ExplainSignInAnswer",
    "Finding",
    "GroupMembersAnswer",
    "GroupMembershipsAnswer",
    "LookupUserAnswer",
    "SignInFailuresSummaryAnswer",
    "SyncStatusAnswer",
    "TicketContextAnswer",
]
