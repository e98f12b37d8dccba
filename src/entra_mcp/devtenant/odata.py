"""OData query options as the emulated Graph understands them: option parsing, `$filter`, `$select`, opaque tokens.

Nothing here speaks HTTP: errors are `GraphFailure` (status, Graph error code, message), which graph.py renders as
Microsoft's error body. The `$filter` support is the subset Microsoft documents for directory objects, with the
"advanced query" rule: `ne`, `not` and `endswith` need `ConsistencyLevel: eventual` and `$count=true`.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
from dataclasses import dataclass
from typing import Any, Callable

# ------------------------------------------------------------------------------------------------------ errors


class GraphFailure(Exception):
    """An error response: HTTP status, Graph error code and message, extra headers."""

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}


def bad_request(message: str, code: str = "BadRequest") -> GraphFailure:
    return GraphFailure(400, code, message)


# ------------------------------------------------------------------------------------------ entity properties

USER_DEFAULT = (
    "businessPhones", "displayName", "givenName", "jobTitle", "mail", "mobilePhone", "officeLocation",
    "preferredLanguage", "surname", "userPrincipalName", "id",
)
USER_PROPERTIES = frozenset(USER_DEFAULT) | {
    "aboutMe", "accountEnabled", "ageGroup", "assignedLicenses", "assignedPlans", "birthday", "city", "companyName",
    "consentProvidedForMinor", "country", "createdDateTime", "creationType", "deletedDateTime", "department",
    "employeeHireDate", "employeeId", "employeeLeaveDateTime", "employeeOrgData", "employeeType",
    "externalUserState", "externalUserStateChangeDateTime", "faxNumber", "hireDate", "identities", "imAddresses",
    "interests", "isResourceAccount", "lastPasswordChangeDateTime", "legalAgeGroupClassification",
    "licenseAssignmentStates", "mailboxSettings", "mailNickname", "mySite", "onPremisesDistinguishedName",
    "onPremisesDomainName", "onPremisesExtensionAttributes", "onPremisesImmutableId", "onPremisesLastSyncDateTime",
    "onPremisesProvisioningErrors", "onPremisesSamAccountName", "onPremisesSecurityIdentifier",
    "onPremisesSyncEnabled", "onPremisesUserPrincipalName", "otherMails", "passwordPolicies", "passwordProfile",
    "pastProjects", "postalCode", "preferredDataLocation", "preferredName", "provisionedPlans", "proxyAddresses",
    "responsibilities", "schools", "securityIdentifier", "showInAddressList", "signInActivity",
    "signInSessionsValidFromDateTime", "skills", "state", "streetAddress", "usageLocation", "userType",
}
GROUP_PROPERTIES = frozenset({
    "id", "assignedLabels", "assignedLicenses", "classification", "createdDateTime", "deletedDateTime",
    "description", "displayName", "expirationDateTime", "groupTypes", "isAssignableToRole", "mail", "mailEnabled",
    "mailNickname", "membershipRule", "membershipRuleProcessingState", "onPremisesDomainName",
    "onPremisesLastSyncDateTime", "onPremisesNetBiosName", "onPremisesProvisioningErrors",
    "onPremisesSamAccountName", "onPremisesSecurityIdentifier", "onPremisesSyncEnabled", "preferredDataLocation",
    "preferredLanguage", "proxyAddresses", "renewedDateTime", "securityEnabled", "securityIdentifier", "theme",
    "visibility",
})
APPLICATION_PROPERTIES = frozenset({
    "id", "addIns", "api", "appId", "applicationTemplateId", "appRoles", "createdDateTime", "deletedDateTime",
    "description", "disabledByMicrosoftStatus", "displayName", "groupMembershipClaims", "identifierUris", "info",
    "isDeviceOnlyAuthSupported", "isFallbackPublicClient", "keyCredentials", "logo", "notes", "optionalClaims",
    "parentalControlSettings", "passwordCredentials", "publicClient", "publisherDomain", "requiredResourceAccess",
    "samlMetadataUrl", "serviceManagementReference", "signInAudience", "spa", "tags", "tokenEncryptionKeyId",
    "uniqueName", "verifiedPublisher", "web",
})
SERVICE_PRINCIPAL_PROPERTIES = frozenset({
    "id", "accountEnabled", "addIns", "alternativeNames", "appDescription", "appDisplayName", "appId",
    "applicationTemplateId", "appOwnerOrganizationId", "appRoleAssignmentRequired", "appRoles", "deletedDateTime",
    "description", "disabledByMicrosoftStatus", "displayName", "homepage", "info",
    "keyCredentials", "loginUrl", "logoutUrl", "notes", "notificationEmailAddresses", "oauth2PermissionScopes",
    "passwordCredentials", "preferredSingleSignOnMode", "preferredTokenSigningKeyThumbprint", "replyUrls",
    "resourceSpecificApplicationPermissions", "samlSingleSignOnSettings", "servicePrincipalNames",
    "servicePrincipalType", "signInAudience", "tags", "tokenEncryptionKeyId", "verifiedPublisher",
})
APP_ROLE_ASSIGNMENT_PROPERTIES = frozenset({
    "id", "appRoleId", "createdDateTime", "deletedDateTime", "principalDisplayName", "principalId", "principalType",
    "resourceDisplayName", "resourceId",
})


@dataclass(frozen=True)
class EntityType:
    name: str  # "user"
    properties: frozenset[str]
    default: tuple[str, ...] | None  # None: every stored property
    # $filter: property -> allowed operators (eq, in, startswith, any, ge, le)
    filterable: dict[str, frozenset[str]]

    def known(self, prop: str) -> bool:
        return prop in self.properties


_S = frozenset({"eq", "in", "startswith"})
_E = frozenset({"eq", "in"})
_B = frozenset({"eq"})
_ANY = frozenset({"any"})
_DATE = frozenset({"eq", "ge", "le", "gt", "lt"})

USER = EntityType("user", USER_PROPERTIES, USER_DEFAULT, {
    "id": _E, "userPrincipalName": _S, "mail": _S, "displayName": _S, "givenName": _S, "surname": _S,
    "accountEnabled": _B, "userType": _E, "employeeId": _S, "onPremisesSamAccountName": _S, "mailNickname": _S,
    "jobTitle": _S, "department": _S, "companyName": _S, "officeLocation": _S, "externalUserState": _E,
    "usageLocation": _E, "onPremisesSyncEnabled": _B, "createdDateTime": _DATE, "proxyAddresses": _ANY,
    "otherMails": _ANY, "businessPhones": _ANY, "imAddresses": _ANY,
})
GROUP = EntityType("group", GROUP_PROPERTIES, None, {
    "id": _E, "displayName": _S, "mail": _S, "mailNickname": _S, "mailEnabled": _B, "securityEnabled": _B,
    "onPremisesSyncEnabled": _B, "createdDateTime": _DATE, "groupTypes": _ANY, "proxyAddresses": _ANY,
    "isAssignableToRole": _B, "membershipRuleProcessingState": _E,
})
APPLICATION = EntityType("application", APPLICATION_PROPERTIES, None, {
    "id": _E, "appId": _E, "displayName": _S, "signInAudience": _E, "publisherDomain": _S, "createdDateTime": _DATE,
    "identifierUris": _ANY, "tags": _ANY,
})
SERVICE_PRINCIPAL = EntityType("servicePrincipal", SERVICE_PRINCIPAL_PROPERTIES, None, {
    "id": _E, "appId": _E, "displayName": _S, "servicePrincipalType": _E, "accountEnabled": _B,
    "appOwnerOrganizationId": _E, "appRoleAssignmentRequired": _B, "servicePrincipalNames": _ANY, "tags": _ANY,
})
APP_ROLE_ASSIGNMENT = EntityType("appRoleAssignment", APP_ROLE_ASSIGNMENT_PROPERTIES, None, {
    "id": _E, "principalId": _E, "principalType": _E, "appRoleId": _E,
})
ENTITY_BY_KIND = {"user": USER, "group": GROUP, "application": APPLICATION, "servicePrincipal": SERVICE_PRINCIPAL}


def default_properties(entity: EntityType, obj: dict[str, Any]) -> list[str]:
    if entity.default is not None:
        return list(entity.default)
    return [k for k in obj if k in entity.properties or k == "id"]


def project(obj: dict[str, Any], props: list[str] | None, entity: EntityType) -> dict[str, Any]:
    """The object as Graph returns it: `$select`ed properties (missing ones null) or the entity's defaults."""
    if props is None:
        props = default_properties(entity, obj)
    out = {"id": obj["id"]}
    for p in props:
        if p != "id":
            out[p] = obj.get(p)
    return out


def parse_select(raw: str | None, entity: EntityType, extra: frozenset[str] = frozenset()) -> list[str] | None:
    """`$select` -> property names in the order asked (id first); 400 for a property the type does not have."""
    if raw is None:
        return None
    names: list[str] = []
    canonical = {p.lower(): p for p in entity.properties | extra}
    for part in raw.split(","):
        part = part.strip()
        if not part:
            continue
        name = canonical.get(part.lower())
        if name is None:
            raise bad_request(f"Could not find a property named '{part}' on type 'microsoft.graph.{entity.name}'.", "Request_BadRequest")
        if name not in names:
            names.append(name)
    if not names:
        raise bad_request("Invalid $select: no property named.", "Request_BadRequest")
    return names


# -------------------------------------------------------------------------------------------- query options

KNOWN_OPTIONS = ("select", "filter", "top", "count", "search", "expand", "orderby", "skiptoken", "deltatoken",
                 "skip", "format")


def parse_options(items: list[tuple[str, str]]) -> dict[str, str]:
    """Query string -> {option name without $, lower case: value}. Unknown `$x` -> 400, as Graph answers."""
    out: dict[str, str] = {}
    for key, value in items:
        lk = key.lower()
        name = lk[1:] if lk.startswith("$") else lk
        if name in KNOWN_OPTIONS:
            if name in out:
                raise bad_request(f"Query option '${name}' was specified more than once, but it must be specified at most once.")
            out[name] = value
        elif lk.startswith("$"):
            raise bad_request(f"Unrecognized query argument specified: '{key}'.")
    if "skip" in out:
        raise bad_request("'$skip' is not supported by the service.", "Request_BadRequest")
    if "format" in out and out["format"].lower() != "json":
        raise bad_request(f"Unsupported $format: '{out['format']}'.")
    return out


def parse_top(raw: str | None, *, maximum: int = 999) -> int | None:
    if raw is None:
        return None
    try:
        n = int(raw.strip())
    except ValueError:
        raise bad_request(f"Invalid page size specified: '{raw}'. Must be between 1 and {maximum} inclusive.", "Request_BadRequest") from None
    if not 1 <= n <= maximum:
        raise bad_request(f"Invalid page size specified: '{raw}'. Must be between 1 and {maximum} inclusive.", "Request_BadRequest")
    return n


def parse_bool_option(name: str, raw: str | None) -> bool:
    if raw is None:
        return False
    v = raw.strip().lower()
    if v not in ("true", "false"):
        raise bad_request(f"Invalid value '{raw}' for query option '${name}': expected true or false.")
    return v == "true"


# ------------------------------------------------------------------------------------------------- $filter

_TOKEN_RE = re.compile(r"""
    (?P<ws>\s+)
  | (?P<str>'(?:[^']|'')*')
  | (?P<guid>[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}(?![\w-]))
  | (?P<num>-?\d+(?:\.\d+)?(?![\w-]))
  | (?P<date>\d{4}-\d\d-\d\dT[\d:.]+Z?)
  | (?P<ident>[A-Za-z_][A-Za-z0-9_]*(?:/[A-Za-z_][A-Za-z0-9_]*)*)
  | (?P<punct>[(),:])
""", re.VERBOSE)

_COMPARE = ("eq", "ne", "gt", "ge", "lt", "le")


@dataclass
class _Tok:
    kind: str
    text: str
    pos: int


def _tokenize(text: str) -> list[_Tok]:
    toks: list[_Tok] = []
    pos = 0
    while pos < len(text):
        m = _TOKEN_RE.match(text, pos)
        if m is None:
            raise bad_request(f"Invalid filter clause: Syntax error at position {pos} in '{text}'.")
        kind = m.lastgroup or ""
        if kind != "ws":
            toks.append(_Tok(kind, m.group(), pos))
        pos = m.end()
    return toks


Node = tuple[Any, ...]


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.toks = _tokenize(text)
        self.i = 0

    def peek(self, k: int = 0) -> _Tok | None:
        j = self.i + k
        return self.toks[j] if j < len(self.toks) else None

    def fail(self) -> GraphFailure:
        t = self.peek()
        pos = t.pos if t else len(self.text)
        return bad_request(f"Invalid filter clause: Syntax error at position {pos} in '{self.text}'.")

    def take(self, kind: str | None = None, text: str | None = None) -> _Tok:
        t = self.peek()
        if t is None or (kind and t.kind != kind) or (text and t.text.lower() != text):
            raise self.fail()
        self.i += 1
        return t

    def is_word(self, word: str) -> bool:
        t = self.peek()
        return t is not None and t.kind == "ident" and t.text.lower() == word

    def parse(self) -> Node:
        node = self.expr()
        if self.peek() is not None:
            raise self.fail()
        return node

    def expr(self) -> Node:
        node = self.conj()
        while self.is_word("or"):
            self.i += 1
            node = ("or", node, self.conj())
        return node

    def conj(self) -> Node:
        node = self.unary()
        while self.is_word("and"):
            self.i += 1
            node = ("and", node, self.unary())
        return node

    def unary(self) -> Node:
        if self.is_word("not"):
            self.i += 1
            return ("not", self.unary())
        return self.primary()

    def value(self) -> Any:
        t = self.take()
        if t.kind == "str":
            return t.text[1:-1].replace("''", "'")
        if t.kind == "guid" or t.kind == "date":
            return t.text
        if t.kind == "num":
            return float(t.text) if "." in t.text else int(t.text)
        if t.kind == "ident" and t.text.lower() in ("true", "false", "null"):
            return {"true": True, "false": False, "null": None}[t.text.lower()]
        self.i -= 1
        raise self.fail()

    def primary(self) -> Node:
        t = self.peek()
        if t is None:
            raise self.fail()
        if t.kind == "punct" and t.text == "(":
            self.i += 1
            node = self.expr()
            self.take("punct", ")")
            return node
        ident = self.take("ident").text
        low = ident.lower()
        nxt = self.peek()
        if low in ("startswith", "endswith") and nxt is not None and nxt.text == "(":
            self.i += 1
            prop = self.take("ident").text
            self.take("punct", ",")
            val = self.value()
            self.take("punct", ")")
            return (low, prop, val)
        if "/" in ident and ident.rsplit("/", 1)[1].lower() == "any":
            prop = ident.rsplit("/", 1)[0]
            self.take("punct", "(")
            var = self.take("ident").text
            self.take("punct", ":")
            inner = self.lambda_body(var)
            self.take("punct", ")")
            return ("any", prop, inner)
        if self.is_word("in"):
            self.i += 1
            self.take("punct", "(")
            vals = [self.value()]
            while self.peek() is not None and self.peek().text == ",":  # type: ignore[union-attr]
                self.i += 1
                vals.append(self.value())
            self.take("punct", ")")
            return ("in", ident, vals)
        op = self.take("ident").text.lower()
        if op not in _COMPARE:
            self.i -= 1
            raise self.fail()
        return (op, ident, self.value())

    def lambda_body(self, var: str) -> Node:
        t = self.take("ident")
        low = t.text.lower()
        if low in ("startswith", "endswith"):
            self.take("punct", "(")
            if self.take("ident").text != var:
                raise self.fail()
            self.take("punct", ",")
            val = self.value()
            self.take("punct", ")")
            return (low, val)
        if t.text != var:
            self.i -= 1
            raise self.fail()
        op = self.take("ident").text.lower()
        if op not in ("eq", "ne"):
            raise self.fail()
        return (op, self.value())


def _fold(v: Any) -> Any:
    return v.lower() if isinstance(v, str) else v


Predicate = Callable[[dict[str, Any]], bool]


@dataclass
class Filter:
    """A compiled `$filter`: `match(obj)`, plus `lookup` = (property, values) when it is a plain eq/in on one
    property, so callers can answer from an index instead of scanning."""

    text: str
    match: Predicate
    lookup: tuple[str, list[Any]] | None
    advanced: bool


def compile_filter(text: str, entity: EntityType) -> Filter:
    node = _Parser(text).parse()
    advanced = [False]

    def unsupported(prop: str) -> GraphFailure:
        return bad_request(f"Unsupported or invalid query filter clause specified for property '{prop}' of resource "
                           f"'{entity.name[0].upper()}{entity.name[1:]}'.", "Request_UnsupportedQuery")

    def check(prop: str, op: str) -> str:
        canon = next((p for p in entity.filterable if p.lower() == prop.lower()), None)
        if canon is None:
            raise unsupported(prop)
        ops = entity.filterable[canon]
        if op == "ne":
            ok = "eq" in ops
            advanced[0] = True
        elif op == "endswith":
            ok = "startswith" in ops
            advanced[0] = True
        else:
            ok = op in ops
        if not ok:
            raise unsupported(canon)
        return canon

    def build(n: Node) -> Predicate:
        op = n[0]
        if op in ("and", "or"):
            a, b = build(n[1]), build(n[2])
            return (lambda o: a(o) and b(o)) if op == "and" else (lambda o: a(o) or b(o))
        if op == "not":
            advanced[0] = True
            inner = build(n[1])
            return lambda o: not inner(o)
        if op == "any":
            prop = check(n[1], "any")
            iop, val = n[2][0], _fold(n[2][1])
            if iop == "ne":
                advanced[0] = True
            if iop == "eq":
                return lambda o: any(_fold(x) == val for x in (o.get(prop) or ()))
            if iop == "ne":
                return lambda o: any(_fold(x) != val for x in (o.get(prop) or ()))
            if iop == "startswith":
                return lambda o: any(isinstance(x, str) and x.lower().startswith(val) for x in (o.get(prop) or ()))
            advanced[0] = True
            return lambda o: any(isinstance(x, str) and x.lower().endswith(val) for x in (o.get(prop) or ()))
        prop = check(n[1], op if op in ("startswith", "endswith", "in", "ne") or op == "eq" else op)
        if op == "in":
            vals = {_fold(v) for v in n[2]}
            return lambda o: _fold(o.get(prop)) in vals
        val = _fold(n[2])
        if op == "startswith":
            return lambda o: isinstance(o.get(prop), str) and o[prop].lower().startswith(str(val))
        if op == "endswith":
            return lambda o: isinstance(o.get(prop), str) and o[prop].lower().endswith(str(val))
        if op == "eq":
            return lambda o: _fold(o.get(prop)) == val
        if op == "ne":
            return lambda o: _fold(o.get(prop)) != val
        cmp: Callable[[Any, Any], bool] = {"gt": lambda a, b: a > b, "ge": lambda a, b: a >= b, "lt": lambda a, b: a < b,
                                           "le": lambda a, b: a <= b}[op]
        return lambda o: o.get(prop) is not None and cmp(_fold(o.get(prop)), val)

    match = build(node)
    lookup: tuple[str, list[Any]] | None = None
    if node[0] in ("eq", "in"):
        canon = check(node[1], node[0])
        lookup = (canon, [node[2]] if node[0] == "eq" else list(node[2]))
    return Filter(text, match, lookup, advanced[0])


def delta_id_filter(text: str) -> list[str]:
    """Delta's only `$filter`: `id eq '...'` joined with `or`, at most 50 ids."""
    node = _Parser(text).parse()
    ids: list[str] = []

    def walk(n: Node) -> None:
        if n[0] == "or":
            walk(n[1])
            walk(n[2])
        elif n[0] == "eq" and n[1].lower() == "id" and isinstance(n[2], str):
            ids.append(n[2])
        else:
            raise bad_request("Delta query only supports $filter=id eq '{id}' clauses joined with 'or'.", "Request_UnsupportedQuery")

    walk(node)
    if len(ids) > 50:
        raise bad_request("Delta query supports at most 50 id filters.", "Request_UnsupportedQuery")
    return ids


# ------------------------------------------------------------------------------------------- opaque tokens


def seal(key: bytes, payload: dict[str, Any]) -> str:
    """An opaque, tamper-evident token carrying `payload` (paging cursors, delta state)."""
    body = base64.urlsafe_b64encode(json.dumps(payload, separators=(",", ":")).encode()).rstrip(b"=")
    mac = base64.urlsafe_b64encode(hmac.new(key, body, hashlib.sha256).digest()[:18]).rstrip(b"=")
    return (body + b"." + mac).decode()


def unseal(key: bytes, token: str) -> dict[str, Any] | None:
    """The payload of a token made by `seal` with `key`, or None when it is malformed or forged."""
    try:
        body, mac = token.encode("ascii").split(b".")
        want = base64.urlsafe_b64encode(hmac.new(key, body, hashlib.sha256).digest()[:18]).rstrip(b"=")
        if not hmac.compare_digest(mac, want):
            return None
        payload = json.loads(base64.urlsafe_b64decode(body + b"=" * (-len(body) % 4)))
    except (ValueError, UnicodeError):
        return None
    return payload if isinstance(payload, dict) else None
