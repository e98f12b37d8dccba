"""Per-caller tenant and tool access ([server.access], docs/audit.md "Access").

`AccessPolicy.for_caller(caller)` decides which mirrored tenants and tools a caller may use:
- the local operator (stdio, `entra-mcp call`, and HTTP with server.auth.mode = "none", which config allows on
  loopback only): everything;
- a caller matched by one or more [[server.access.rules]]: the union of what those rules grant (a rule matches when
  every selector it gives matches: `tids` the token's tid, `roles` one of the token's app roles, `groups` one of the
  token's group ids, `api_keys` the key's name);
- else an Entra caller whose tenant (tid) is a mirrored tenant: that tenant, every tool (`home_tenant = true`);
- else an API key: every tenant and tool when `unmatched_api_keys = "all"` (the default with one configured tenant),
  nothing when "none" (the default with several);
- else nothing.

`PermittedViews` is the ONE place where this is enforced: it stands in front of the server's ViewProvider for the
tools, resolving `tenant` arguments among the permitted tenants only. A tenant the caller may not use is refused with
exactly the error of a tenant that does not exist, listing only permitted names, so answers, errors, suggestions and
sync_status never reveal another tenant's data or existence.
"""

from __future__ import annotations

import difflib
import re
from collections import OrderedDict
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Iterable, Sequence

from entra_mcp.config import AccessRule, Settings, tenant_hint
from entra_mcp.errors import ConfigError, InvalidArgument, NotFoundError
from entra_mcp.logs import get_logger
from entra_mcp.views import TenantView

log = get_logger("server.access")
_GUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
MAX_CACHED_CALLERS = 10_000
OVERAGE_UNMATCHED = " (token group overage: group rules not matched, the caller's tenant is not mirrored)"


@dataclass(frozen=True)
class Caller:
    """Who is calling, as the access policy and the audit trail see it (from server/auth.py's Principal)."""

    kind: str  # "local" | "anonymous" | "entra" | "api_key" | "oauth" ...
    key: str  # the principal's key (entra: tid/oid; api_key: api_key:<hash>); never a secret
    tid: str | None = None
    oid: str | None = None
    upn: str | None = None
    name: str | None = None  # display name, or the API key's name
    key_name: str | None = None
    client_id: str | None = None
    roles: tuple[str, ...] = ()
    groups: tuple[str, ...] = ()
    groups_overage: bool = False  # the token left the groups out (over 200): `groups` says nothing

    @classmethod
    def of(cls, principal: Any) -> "Caller":
        """From a server/auth.py Principal (fields read defensively: other modes add their own)."""
        kind = str(getattr(principal, "kind", "anonymous"))

        def text(name: str) -> str | None:
            value = getattr(principal, name, None)
            return str(value) if value else None

        return cls(kind=kind, key=text("key") or kind, tid=text("tid"), oid=text("oid"), upn=text("preferred_username"),
                   name=text("name"), key_name=text("key_name"), client_id=text("client_id"),
                   roles=tuple(str(r) for r in getattr(principal, "roles", None) or ()),
                   groups=tuple(str(g) for g in getattr(principal, "groups", None) or ()),
                   groups_overage=bool(getattr(principal, "groups_overage", False)))

    def audit_fields(self) -> dict[str, Any]:
        return {k: v for k, v in {"kind": self.kind, "tid": self.tid, "oid": self.oid, "upn": self.upn,
                                  "keyName": self.key_name, "name": self.name if self.kind == "local" else None,
                                  "clientId": self.client_id}.items() if v}


LOCAL = Caller("local", "local")


@dataclass(frozen=True)
class Access:
    """What one caller may use: tenant names and tool names (None: all), and why (for logs and audit)."""

    tenants: frozenset[str] | None
    tools: frozenset[str] | None
    why: str

    def tenant_ok(self, name: str) -> bool:
        return self.tenants is None or name in self.tenants

    def tool_ok(self, name: str) -> bool:
        return self.tools is None or name in self.tools


EVERYTHING = Access(None, None, "local operator")


def _lower(values: Iterable[str]) -> frozenset[str]:
    return frozenset(v.lower() for v in values)


@dataclass
class AccessPolicy:
    rules: Sequence[AccessRule]
    tenant_names: Sequence[str]
    tenant_of_tid: Callable[[str], list[str]]  # caller tid -> the configured tenants that are that directory
    home_tenant: bool = True
    unmatched_api_keys: str = "all"
    # (tid, oid) -> the person's transitive group ids from the mirror of their tenant, or None when it is not
    # mirrored: the answer for a token whose groups overflowed (see _groups_of_caller)
    groups_of: Callable[[str, str], Sequence[str] | None] = lambda tid, oid: None
    _cache: OrderedDict[Caller, Access] = field(default_factory=OrderedDict)
    _warned: set[str] = field(default_factory=set)

    @classmethod
    def from_settings(cls, settings: Settings | None, tool_names: Sequence[str],
                      tenant_of_tid: Callable[[str], list[str]] | None = None,
                      groups_of: Callable[[str, str], Sequence[str] | None] | None = None) -> "AccessPolicy":
        """The policy of [server.access]; ConfigError naming the key when a rule names an unknown tool."""
        if settings is None:
            return cls((), (), lambda tid: [], unmatched_api_keys="all")
        acc = settings.server.access
        for n, rule in enumerate(acc.rules):
            unknown = [t for t in rule.tools if t != "*" and t not in tool_names]
            if unknown:
                close = difflib.get_close_matches(unknown[0], list(tool_names), n=1)
                hint = f"did you mean {close[0]!r}?" if close else f"the tools: {', '.join(tool_names)}"
                raise ConfigError(f"server.access.rules[{n}].tools names {', '.join(map(repr, unknown))}, which is not a "
                                  f"tool ({hint}). Fix: use tool names, or \"*\" for every tool.")
        unmatched = acc.unmatched_api_keys or ("all" if len(settings.tenants) <= 1 else "none")
        if tenant_of_tid is None:
            by_tid: dict[str, list[str]] = {}
            for t in settings.tenants:
                by_tid.setdefault(t.tenant_id.lower(), []).append(t.name)
            tenant_of_tid = lambda tid: by_tid.get(tid.lower(), [])  # noqa: E731
        policy = cls(list(acc.rules), [t.name for t in settings.tenants], tenant_of_tid, acc.home_tenant, unmatched)
        if groups_of is not None:
            policy.groups_of = groups_of
        return policy

    def for_caller(self, caller: Caller) -> Access:
        if caller.kind in ("local", "anonymous"):
            return EVERYTHING
        hit = self._cache.get(caller)
        if hit is not None:
            return hit
        access = self._decide(caller)
        if access.tenants == frozenset() or caller.groups_overage:
            # not kept: a tenant configured by domain may be synced (its tid known) later; an overage caller's groups
            # come from the mirror, which the next sync may change
            return access
        self._cache[caller] = access
        while len(self._cache) > MAX_CACHED_CALLERS:
            self._cache.popitem(last=False)
        return access

    def _decide(self, caller: Caller) -> Access:
        overage_note = ""
        if caller.groups_overage and any(r.groups for r in self.rules):
            caller, overage_note = self._groups_of_caller(caller)
        matched = [(n, r) for n, r in enumerate(self.rules) if self._matches(r, caller)]
        if matched:
            tenants: set[str] | None = set()
            tools: set[str] | None = set()
            for _, r in matched:
                if tenants is not None:
                    tenants = None if "*" in r.tenants else tenants | set(r.tenants)
                if tools is not None:
                    tools = None if "*" in r.tools else tools | set(r.tools)
            why = "rule " + ", ".join(r.name or f"#{n}" for n, r in matched) + overage_note
            return Access(frozenset(tenants) if tenants is not None else None,
                          frozenset(tools) if tools is not None else None, why)
        if caller.kind == "api_key":
            if self.unmatched_api_keys == "all":
                return Access(None, None, "API key without a rule (unmatched_api_keys = all)")
            return Access(frozenset(), None, "API key without a rule (unmatched_api_keys = none)")
        if self.home_tenant and caller.tid:
            home = self.tenant_of_tid(caller.tid)
            if home:
                return Access(frozenset(home), None, "home tenant" + overage_note)
        # No tenant; the tools stay listed so that each call says plainly that no tenant is available.
        return Access(frozenset(), None, "no rule" + overage_note)

    def _groups_of_caller(self, caller: Caller) -> tuple[Caller, str]:
        """A caller whose token left its groups out (over 200 groups): their transitive groups from the mirror of
        their own tenant when it is mirrored (no Graph call on the request path); else group rules cannot match,
        and the Access says so (docs/oauth.md "Roles and groups")."""
        groups = self.groups_of(caller.tid, caller.oid) if caller.tid and caller.oid else None
        if groups is None:
            if caller.key in self._warned:
                return caller, OVERAGE_UNMATCHED
            self._warned.add(caller.key)
            if len(self._warned) > MAX_CACHED_CALLERS:
                self._warned.clear()
            log.warning("caller tid=%s oid=%s has too many groups for its token (overage) and its tenant is not "
                        "mirrored: [server.access] rules by group cannot match it", caller.tid, caller.oid)
            return caller, OVERAGE_UNMATCHED
        return replace(caller, groups=tuple(groups)), " (token group overage: groups from the mirror)"

    @staticmethod
    def _matches(rule: AccessRule, caller: Caller) -> bool:
        if rule.api_keys:
            return caller.kind == "api_key" and caller.key_name is not None and caller.key_name in rule.api_keys
        if caller.kind == "api_key" or not caller.tid:
            return False
        if rule.tids and caller.tid.lower() not in _lower(rule.tids):
            return False
        if rule.roles and not set(rule.roles) & set(caller.roles):
            return False
        if rule.groups and not _lower(rule.groups) & _lower(caller.groups):
            return False
        return True


class PermittedViews:
    """The server's ViewProvider as one caller may see it (see the module docstring). `access()` gives the current
    call's Access; `touched(name)` is told each tenant a call resolved (for the audit record)."""

    def __init__(self, inner: Any, access: Callable[[], Access], touched: Callable[[str], None] | None = None) -> None:
        self._inner = inner
        self._access = access
        self._touched = touched

    def __getattr__(self, name: str) -> Any:  # store and anything else the tools do not read per tenant
        return getattr(self._inner, name)

    @property
    def names(self) -> list[str]:
        access = self._access()
        return [n for n in self._inner.names if access.tenant_ok(n)]

    def resolve(self, tenant: str | None) -> str:
        """The permitted tenant meant by `tenant`; an unknown or forbidden one fails alike, naming permitted ones."""
        access = self._access()
        if access.tenants is None:
            name: str = self._inner.resolve(tenant)
        else:
            name = self._resolve_among(tenant, access)
        if self._touched is not None:
            self._touched(name)
        return name

    def _resolve_among(self, tenant: str | None, access: Access) -> str:
        permitted = self.names
        if tenant is None or tenant == "":
            if len(permitted) == 1:
                return permitted[0]
            if not permitted:
                overage = (" Your sign-in token could not list your groups (you are in more than 200) and your "
                           "directory is not mirrored here, so access rules by group cannot apply to you."
                           if access.why.endswith(OVERAGE_UNMATCHED) else "")
                raise InvalidArgument("no tenant is available to this caller: the server's [server.access] policy grants "
                                      f"it none.{overage} Ask the server's operator for access.")
            raise InvalidArgument(
                f"several tenants are available ({', '.join(permitted)}); pass `tenant` with one of these names.")
        try:
            name: str = self._inner.resolve(tenant)
        except NotFoundError:
            name = ""
        if name and access.tenant_ok(name):
            return name
        # The words of views.py's ViewProvider.resolve for a tenant that does not exist, over the permitted names.
        hint = tenant_hint(tenant, permitted)
        close = hint.removeprefix("Did you mean ").removesuffix("?").split(", ") if hint.startswith("Did you") else []
        raise NotFoundError(f"unknown tenant {tenant[:80]!r}: no tenant of this server has that name or id. {hint}",
                            suggestions=close)

    def current(self, tenant: str | None = None) -> TenantView:
        tv: TenantView = self._inner.current(self.resolve(tenant))
        return tv

    def status(self, tenant: str | None = None) -> TenantView:
        tv: TenantView = self._inner.status(self.resolve(tenant))
        return tv

    def all(self) -> list[TenantView]:
        return [self._inner.current(n) for n in self.names]

    def statuses(self) -> list[TenantView]:
        return [self._inner.status(n) for n in self.names]

    def find_tenant_id(self, tenant_id: str) -> str | None:
        """The permitted tenant whose id is `tenant_id`; None for another tenant's id, as for an unknown one."""
        name: str | None = self._inner.find_tenant_id(tenant_id)
        return name if name is not None and self._access().tenant_ok(name) else None


def guid(text: str | None) -> bool:
    return bool(text) and bool(_GUID.match(text or ""))


__all__ = ["EVERYTHING", "LOCAL", "Access", "AccessPolicy", "Caller", "PermittedViews"]
