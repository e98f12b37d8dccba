"""Configuration: a TOML file validated with pydantic.

Where the file comes from: `--config PATH`, else `$ENTRA_MCP_CONFIG`, else `./config.toml`.
Secrets never live in the file: it names an environment variable (or a file path) that holds them, and nothing in
this module ever puts a secret's value into a message.
"""

from __future__ import annotations

import difflib
import hashlib
import ipaddress
import os
import re
import tomllib
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from entra_mcp.errors import ConfigError

DEFAULT_CONFIG_NAME = "config.toml"
CONFIG_ENV = "ENTRA_MCP_CONFIG"

# login host and Graph host per national cloud (docs/graph-facts-directory.md, "National clouds")
CLOUDS: dict[str, tuple[str, str]] = {
    "global": ("https://login.microsoftonline.com", "https://graph.microsoft.com"),
    "usgov": ("https://login.microsoftonline.us", "https://graph.microsoft.us"),
    "usgov-dod": ("https://login.microsoftonline.us", "https://dod-graph.microsoft.us"),
    "china": ("https://login.chinacloudapi.cn", "https://microsoftgraph.chinacloudapi.cn"),
}

CloudName = Literal["global", "usgov", "usgov-dod", "china", "custom"]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


MIN_API_KEY_CHARS = 16
MIN_API_KEY_DISTINCT = 8
# Names of what cache_dir holds besides the tenants' mirrors: a tenant cannot be called like one of them.
RESERVED_TENANT_NAMES = frozenset({"sessions"})


class OAuthSettings(_Section):
    """[server.auth.oauth]: the authorization server for MCP clients (server.auth.mode = "oauth", docs/oauth.md)."""

    # How clients identify themselves: RFC 7591 registration at /oauth/register, and/or an https URL as client_id
    # whose JSON document (the Client ID Metadata Document) this server fetches.
    dynamic_registration: bool = True
    client_metadata_documents: bool = True
    # Client ID Metadata Document fetching: https only, never to private, loopback or link-local addresses except the
    # hosts listed here (exact host names or IP literals, e.g. "127.0.0.1" for a test bed); bounded in size and time.
    client_metadata_allowed_hosts: list[str] = Field(default_factory=list)
    client_metadata_max_bytes: int = Field(default=5120, ge=256, le=1_000_000)
    client_metadata_timeout_seconds: float = Field(default=5.0, gt=0, le=60)
    client_metadata_cache_seconds: int = Field(default=300, ge=0, le=86_400)
    client_metadata_ca_bundle: Path | None = None  # an extra CA to trust when fetching documents (a test bed)
    # Lifetimes: access tokens are short; a refresh token family (one sign-in and consent) lasts refresh_token_days at
    # most, each refresh token is single use (rotated; a reused one revokes its whole family).
    access_token_minutes: float = Field(default=10, gt=0, le=24 * 60)
    refresh_token_days: float = Field(default=14, gt=0, le=365)
    registered_client_days: float = Field(default=180, gt=0, le=3650)
    registrations_per_minute: int = Field(default=30, ge=1)  # per client address, on /oauth/register
    # After a person approved a client (same client id, redirect host and scope), its next authorizations skip the
    # consent page for remember_consent_days; revoking a token of it (or a detected replay) forgets the approval.
    remember_consent: bool = True
    remember_consent_days: float = Field(default=30, gt=0, le=365)
    # Browser-based MCP clients: the exact origins (scheme://host[:port]) whose pages may call /mcp, the metadata,
    # token, registration and revocation endpoints (CORS, oauth/cors.py). None by default; never "*".
    cors_origins: list[str] = Field(default_factory=list, max_length=100)

    @field_validator("cors_origins")
    @classmethod
    def _origins(cls, v: list[str]) -> list[str]:
        out = []
        for origin in v:
            parts = urlsplit(origin.strip())
            loopback = parts.hostname in ("127.0.0.1", "localhost", "::1")
            if origin.strip() == "*" or "*" in origin:
                raise ValueError("cors_origins lists exact origins; \"*\" (any page on the web) is not allowed. Fix: "
                                 "list each web client's origin, e.g. \"https://chat.example.com\"")
            if (parts.scheme not in ("https", "http") or (parts.scheme == "http" and not loopback) or not parts.hostname
                    or parts.path not in ("", "/") or parts.query or parts.fragment or parts.username is not None):
                raise ValueError(f"cors_origins entry {origin[:80]!r} is not an origin: use https://host[:port] "
                                 "(http only for 127.0.0.1, localhost or [::1]), with no path")
            out.append(f"{parts.scheme}://{parts.netloc.lower()}")
        return out


class AuthSettings(_Section):
    mode: Literal["entra", "api_key", "none", "oauth"] = "none"
    tenant: str | None = None
    audience: str | None = None
    required_scopes: list[str] = Field(default_factory=lambda: ["Identity.Investigate"])
    allow_app_tokens: bool = False
    # entra mode: tenant GUIDs besides server.auth.tenant whose users' tokens /mcp accepts (multi-tenant API). Separate
    # from oidc.allowed_tenants, which only says who may sign in to the portal and chat.
    allowed_tenants: list[str] = Field(default_factory=list)
    api_keys_env: str = "ENTRA_MCP_API_KEYS"
    oauth: OAuthSettings = Field(default_factory=OAuthSettings)

    def api_keys(self) -> list[str]:
        """The configured API keys (api_key mode). Raises ConfigError naming the variable when there are none."""
        return [key for _, key in self.named_api_keys()]

    def named_api_keys(self) -> list[tuple[str, str]]:
        """(name, key) of each configured API key. The variable holds `name=key` or a bare `key` per comma-separated
        item; a bare key (the format before keys had names) is named `key-<first 8 hex of its SHA-256>`, so it can
        still be told apart in the audit trail. Names are what [server.access] rules and the audit trail use; the keys
        themselves are never shown."""
        raw = os.environ.get(self.api_keys_env, "")
        items = [_api_key_item(k.strip()) for k in raw.split(",") if k.strip()]
        keys = [key for _, key in items]
        if not keys:
            raise ConfigError(
                f"server.auth.mode is 'api_key' but the environment variable {self.api_keys_env} is empty or unset. "
                f"Fix: export {self.api_keys_env}=<key1>,<key2> (or change server.auth.api_keys_env)."
            )
        weak = [n for n, k in enumerate(keys, 1) if len(k) < MIN_API_KEY_CHARS or len(set(k)) < MIN_API_KEY_DISTINCT]
        if weak:  # the keys themselves are never shown
            raise ConfigError(
                f"{self.api_keys_env} holds a key too easy to guess (key {', '.join(map(str, weak))} of {len(keys)}): "
                f"an API key needs at least {MIN_API_KEY_CHARS} characters, {MIN_API_KEY_DISTINCT} of them different. "
                "Fix: generate one, e.g. `python3 -c 'import secrets; print(secrets.token_urlsafe(32))'`."
            )
        names = [name for name, _ in items]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ConfigError(
                f"{self.api_keys_env} names several keys {', '.join(map(repr, dupes))}: each key needs its own name. "
                f"Fix: rename them (name=key, comma-separated)."
            )
        return items


API_KEY_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]{0,63}$")


def _api_key_item(item: str) -> tuple[str, str]:
    """`name=key` -> (name, key); a bare key (possibly ending in base64 `=` padding) -> (key-<hash8>, key)."""
    name, sep, key = item.partition("=")
    if sep and API_KEY_NAME.match(name.strip()) and key.strip().strip("="):
        return name.strip(), key.strip()
    return "key-" + hashlib.sha256(item.encode("utf-8")).hexdigest()[:8], item


class AccessRule(_Section):
    """One [[server.access.rules]] entry: which callers (every selector given must match; any value of a list) may use
    which mirrored tenants and tools."""

    name: str | None = Field(default=None, max_length=64)
    tids: list[str] = Field(default_factory=list)  # the caller's Entra tenant (token `tid`)
    roles: list[str] = Field(default_factory=list)  # app roles in the token (`roles`), from one of `tids`
    groups: list[str] = Field(default_factory=list)  # group object ids in the token (`groups`), from one of `tids`
    api_keys: list[str] = Field(default_factory=list)  # API key names (server.auth.api_keys_env, name=key)
    tenants: list[str] = Field(min_length=1)  # configured [[tenants]] names, or "*" for all
    tools: list[str] = Field(default_factory=lambda: ["*"])  # tool names, or "*" for all

    @model_validator(mode="after")
    def _check(self) -> "AccessRule":
        if not (self.tids or self.roles or self.groups or self.api_keys):
            raise ValueError("a rule needs at least one of tids, roles, groups or api_keys (who it is for)")
        if self.api_keys and (self.tids or self.roles or self.groups):
            raise ValueError("api_keys cannot be combined with tids, roles or groups in one rule (an API key has no "
                             "Entra identity): split it into two rules")
        if (self.roles or self.groups) and not self.tids:
            raise ValueError("roles and groups are assigned by each tenant's own admins: name the tenants whose "
                             "assignments you trust in `tids` (their tenant GUIDs)")
        for t in self.tids:
            if not _GUID.match(t):
                raise ValueError(f"tids holds {t[:80]!r}, which is not a tenant GUID (the token's tid claim)")
        if not self.tools:
            raise ValueError("tools is empty: list tool names, or \"*\" for every tool")
        return self


class AccessSettings(_Section):
    """[server.access]: which callers may use which mirrored tenants and tools (server/access.py)."""

    rules: list[AccessRule] = Field(default_factory=list)
    # A caller of the HTTP endpoint whose Entra tenant is a mirrored tenant and whom no rule matches sees that tenant.
    home_tenant: bool = True
    # An API key no rule names: "all" tenants and tools, or "none". Unset: "all" when one tenant is configured (the
    # single-tenant deployment keeps working as before), "none" with several (a key never silently sees every customer).
    unmatched_api_keys: Literal["all", "none"] | None = None


class AuditSettings(_Section):
    """[server.audit]: the audit trail of tool calls and sign-in events (audit/, docs/audit.md)."""

    enabled: bool = True
    path: Path | None = None  # default: <cache_dir>/audit/audit.jsonl
    max_bytes: int = Field(default=10_000_000, ge=4096)  # the file is rotated before it would grow past this
    keep_files: int = Field(default=50, ge=1, le=100_000)  # rotated files kept (oldest removed first)
    retention_days: float = Field(default=400, ge=0)  # rotated files older than this are removed (0: no age limit)
    mirror: Literal["none", "stderr", "syslog"] = "none"  # also send each record there

    @field_validator("path")
    @classmethod
    def _expand_path(cls, v: Path | None) -> Path | None:
        return Path(os.path.expandvars(str(v))).expanduser() if v is not None else None

    def resolved_path(self, cache_dir: Path) -> Path:
        return self.path or Path(cache_dir) / "audit" / "audit.jsonl"


_GUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")


def _env_secret(key: str, variable: str | None, what: str) -> str | None:
    """The secret in the environment variable `variable` names (None when no variable is configured); ConfigError
    naming the key and the variable, never a value, when it is unset or empty."""
    if not variable:
        return None
    value = os.environ.get(variable)
    if not value:
        raise ConfigError(f"{key} names {variable}, which is unset or empty. Fix: export {variable}=<{what}>.")
    return value


REDIS_SCHEMES = ("redis", "rediss", "unix")


class StoreSettings(_Section):
    """[server.store]: the store shared by several replicas (sessions, sign-in state, rate-limit counters). Absent
    `redis_url`: the local diskcache under cache_dir (one machine). The password is read from `password_env` when
    the connection opens; a URL carrying a password is refused (secrets never live in the config file)."""

    redis_url: str | None = None
    username: str | None = None  # the Redis ACL user (AUTH username password); none: the default user
    password_env: str | None = None  # the environment variable holding the password
    ca_bundle: Path | None = None  # rediss:// only: the PEM of the CA that signed the Redis server's certificate
    key_prefix: str = Field(default="entra-mcp:", min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:{}-]+$")
    timeout_seconds: float = Field(default=2.0, gt=0, le=30)  # connect and each command; a slower Redis is unreachable
    start_wait_seconds: float = Field(default=10.0, ge=0, le=300)  # serve waits this long for Redis at start, then exits
    # One sync leader per tenant (cluster/): the leader publishes each committed mirror version here (immutable
    # files; a directory every replica mounts, never a database) and the others adopt it. Needs redis_url.
    snapshot_dir: Path | None = None
    lease_seconds: float = Field(default=30.0, ge=2, le=600)  # a dead leader is replaced within this time
    snapshot_poll_seconds: float = Field(default=2.0, gt=0, le=300)  # how often followers look for a new version
    snapshot_keep: int = Field(default=3, ge=1, le=100)  # published data versions kept per tenant

    @field_validator("redis_url")
    @classmethod
    def _url(cls, v: str | None) -> str | None:
        if v is None:
            return None
        parts = urlsplit(v)
        if parts.scheme not in REDIS_SCHEMES:
            raise ValueError(
                f"redis_url must start with redis:// (plain), rediss:// (TLS) or unix:// (a socket path); got "
                f"{(parts.scheme + '://') if parts.scheme else 'no scheme'}"
            )
        if parts.password is not None:  # the URL itself is never echoed: it holds the secret
            raise ValueError(
                "redis_url carries a password: secrets never go in the config file. Fix: remove it from the URL and "
                "set password_env to the name of an environment variable holding it (and username for an ACL user)."
            )
        if parts.scheme != "unix" and not parts.hostname:
            raise ValueError("redis_url names no host; e.g. redis://127.0.0.1:6379/0")
        try:
            parts.port  # noqa: B018 - raises on a bad port
        except ValueError:
            raise ValueError("redis_url has an invalid port") from None
        return v

    @field_validator("snapshot_dir")
    @classmethod
    def _expand_dir(cls, v: Path | None) -> Path | None:
        return Path(os.path.expandvars(str(v))).expanduser() if v is not None else None

    @model_validator(mode="after")
    def _check(self) -> "StoreSettings":
        if self.redis_url is None:
            others = [k for k in ("username", "password_env", "ca_bundle", "snapshot_dir") if getattr(self, k) is not None]
            if others:
                raise ValueError(f"{', '.join(others)} set without redis_url; set redis_url or remove them")
            return self
        if self.ca_bundle is not None and not self.redis_url.startswith("rediss://"):
            raise ValueError("ca_bundle is for TLS only: use a rediss:// redis_url, or remove ca_bundle")
        if self.username is not None and urlsplit(self.redis_url).username:
            raise ValueError("the ACL user is named twice (in redis_url and in username); keep one")
        return self

    @property
    def shared(self) -> bool:
        """Whether a shared store (Redis) is configured."""
        return self.redis_url is not None

    def redacted_url(self) -> str:
        """redis_url for messages: scheme, host, port and database only."""
        if self.redis_url is None:
            return "(none)"
        parts = urlsplit(self.redis_url)
        if parts.scheme == "unix":
            return f"unix://{parts.path}"
        host = parts.hostname or ""
        host = f"[{host}]" if ":" in host else host
        port = f":{parts.port}" if parts.port else ""
        return f"{parts.scheme}://{host}{port}{parts.path}"

    def password(self) -> str | None:
        """The Redis password from its variable, read when the connection opens."""
        return _env_secret("server.store.password_env", self.password_env, "the Redis password")


class ServerSettings(_Section):
    cache_dir: Path = Path("~/.cache/entra-mcp")
    transport: Literal["stdio", "http"] = "stdio"
    host: str = "127.0.0.1"
    port: int = Field(default=8765, ge=1, le=65535)
    public_url: str | None = None
    allowed_hosts: list[str] = Field(default_factory=list)
    allowed_origins: list[str] = Field(default_factory=list)
    max_body_bytes: int = Field(default=1_000_000, ge=1024)
    # Bounds per HTTP client (server/limits.py): a whole request (headers and body) must arrive within
    # request_timeout_seconds; bodies being read by all requests together stay under max_buffered_bytes; each caller of
    # /mcp (an Entra user or app, an API key) gets max_requests_per_minute, max_sessions_per_caller open MCP sessions
    # and max_concurrent_calls calls in progress at once (more wait their turn).
    request_timeout_seconds: float = Field(default=15.0, ge=1, le=600)
    max_buffered_bytes: int = Field(default=64_000_000, ge=1024)
    max_requests_per_minute: int = Field(default=600, ge=1)
    max_sessions_per_caller: int = Field(default=32, ge=1)
    mcp_session_idle_seconds: float = Field(default=1800, ge=1, le=86400)  # an MCP session with no request this long ends
    max_concurrent_calls: int = Field(default=4, ge=1, le=64)
    # Of one CPU, what a caller's tool answers may use on average (after a short burst); long answers give way to
    # others at their checkpoints (entra_mcp/pacing.py). 1 turns pacing off.
    tool_cpu_share_per_caller: float = Field(default=0.5, gt=0, le=1)
    # Heavy answers (a ticket text longer than heavy_text_chars once normalised) are computed in answer_workers
    # processes forked from the server (server/workers.py), off its GIL; one not done within answer_timeout_seconds is
    # stopped with an error. 0 workers: in the server's threads.
    answer_workers: int = Field(default=2, ge=0, le=32)
    answer_timeout_seconds: float = Field(default=60.0, ge=1, le=3600)
    heavy_text_chars: int = Field(default=2000, ge=0)
    # memory for the tenants' loaded views (indexes) together; 0 = no budget. With a budget, a tenant's view is loaded
    # at its first call and the least recently used views are dropped when the estimate goes over (views.py)
    view_memory_mb: int = Field(default=0, ge=0)
    # tenants' mirrors whose SQLite files stay open while unused; past it the least recently used are closed and
    # reopened at their next use (mirror/open_files.py): open descriptors stay bounded whatever the tenant count
    max_open_mirrors: int = Field(default=64, ge=1, le=100_000)
    auth: AuthSettings = Field(default_factory=AuthSettings)
    store: StoreSettings = Field(default_factory=StoreSettings)
    access: AccessSettings = Field(default_factory=AccessSettings)
    audit: AuditSettings = Field(default_factory=AuditSettings)

    @field_validator("cache_dir")
    @classmethod
    def _expand(cls, v: Path) -> Path:
        return Path(os.path.expandvars(str(v))).expanduser()

    @property
    def resolved_public_url(self) -> str:
        return (self.public_url or f"http://{self.host}:{self.port}").rstrip("/")


class SyncSettings(_Section):
    users: bool = True
    groups: bool = True
    applications: bool = True
    service_principals: bool = True
    sign_in_activity: bool = True
    auth_methods: bool = True  # MFA/SSPR registration report: AuditLog.Read.All, Entra ID P1/P2
    roles: bool = True  # directory roles and PIM eligibility: RoleManagement.Read.Directory
    licenses: bool = True  # subscribed SKUs and licence-assignment errors: LicenseAssignment.Read.All
    risk: bool = True  # risky users: IdentityRiskyUser.Read.All, Entra ID P2
    devices: bool = True
    conditional_access: bool = True
    owners: bool = True
    interval_minutes: float = Field(default=15, gt=0, le=24 * 60)
    # sign-in events (GET /auditLogs/signIns): AuditLog.Read.All and an Entra ID P1/P2 tenant; off unless enabled
    sign_in_events: bool = False
    sign_in_events_days: int = Field(default=7, ge=1, le=30)  # the window kept (Graph keeps 30 days on P1/P2)
    sign_in_events_interval_minutes: float = Field(default=5, gt=0, le=24 * 60)  # its own poll, apart from the sync
    # this tenant's Graph requests per 10 seconds ($batch items count one each), kept by every client of the tenant;
    # Graph throttles per app and tenant at 3,500-8,000 resource units per 10 s (docs/graph-facts-tenants.md)
    max_requests_per_10s: int = Field(default=600, ge=10, le=10_000)


class SchedulerSettings(_Section):
    """How `serve` syncs many tenants (sync/scheduler.py)."""

    max_concurrent_syncs: int = Field(default=4, ge=1, le=64)  # tenants synced at the same time
    # more tenants than max_concurrent_syncs: their first runs after a start spread over this many seconds (0: all at once)
    first_run_jitter_seconds: float = Field(default=30, ge=0, le=3600)
    # serve follows tenants_file: its size/mtime (then hash) looked at this often, and at SIGHUP (0: SIGHUP only)
    tenants_file_poll_seconds: float = Field(default=5, ge=0, le=3600)


class TenantSettings(_Section):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
    tenant_id: str = Field(min_length=1)
    client_id: str = Field(min_length=1)
    client_secret_env: str | None = None
    client_secret_file: Path | None = None
    client_certificate_path: Path | None = None
    client_certificate_password_env: str | None = None
    cloud: CloudName = "global"
    login_url: str | None = None
    graph_url: str | None = None
    ca_bundle: Path | None = None
    # whether Entra Connect writes cloud password resets back to AD; Graph does not tell an app, so say it here
    # (check_reset_eligibility: unset = unknown, and a synced account is sent to AD)
    password_writeback: bool | None = None
    allow_live_what_if: bool = False  # check_app_access may call Graph's Conditional Access What If (a live call)
    sync: SyncSettings = Field(default_factory=SyncSettings)

    @model_validator(mode="after")
    def _check(self, info: ValidationInfo) -> "TenantSettings":
        creds = [self.client_secret_env, self.client_secret_file, self.client_certificate_path]
        if sum(c is not None for c in creds) != 1:
            raise ValueError(
                "set exactly one credential: client_secret_env (name of an environment variable holding the "
                "secret), client_secret_file, or client_certificate_path"
            )
        if self.cloud == "custom":
            if not self.login_url or not self.graph_url:
                raise ValueError('cloud = "custom" needs both login_url and graph_url')
        elif self.login_url or self.graph_url:
            raise ValueError(f'login_url and graph_url are only for cloud = "custom" (this tenant has cloud = "{self.cloud}")')
        for url in (self.login_url, self.graph_url):
            if url is not None and not url.startswith("https://"):
                raise ValueError(f"login_url and graph_url must start with https:// (got {url!r})")
        if (info.context or {}).get("check_files", True):
            problem = self.missing_file()
            if problem:
                raise ValueError(problem)
        return self

    def missing_file(self) -> str | None:
        """What is wrong with a file this tenant's settings name (ca_bundle, the certificate, the secret file), with
        the key, the path and the fix; None when each is a readable file. Checked when the config loads, and again
        before every sync run of `serve` (the emulator's CA, for one, is gone once it stops)."""
        files = (
            ("ca_bundle", self.ca_bundle, "point it at the PEM file of the CA to trust, or remove the key to trust "
             "the system's CAs. The local emulator's CA exists only while `entra-mcp devtenant` runs: start it again "
             "and use the config it prints"),
            ("client_certificate_path", self.client_certificate_path,
             "point it at a PEM file holding the certificate and its private key"),
            ("client_secret_file", self.client_secret_file, "point it at a readable file that holds only the secret"),
        )
        for key, value, fix in files:
            if value is None:
                continue
            path = Path(value).expanduser()
            if not path.is_file():
                what = "is a directory, not a file" if path.is_dir() else "does not exist"
                return f"{key}: {path} {what}. Fix: {fix}."
            if not os.access(path, os.R_OK):
                return f"{key}: {path} cannot be read by this user. Fix: {fix}."
        return None

    def check_files(self) -> None:
        """ConfigError when a file the settings name is missing now (see `missing_file`)."""
        problem = self.missing_file()
        if problem:
            raise ConfigError(f"tenants[{self.name!r}].{problem}")

    @property
    def login_host(self) -> str:
        return (self.login_url if self.cloud == "custom" else CLOUDS[self.cloud][0]).rstrip("/")  # type: ignore[union-attr]

    @property
    def graph_host(self) -> str:
        return (self.graph_url if self.cloud == "custom" else CLOUDS[self.cloud][1]).rstrip("/")  # type: ignore[union-attr]

    @property
    def authority(self) -> str:
        return f"{self.login_host}/{self.tenant_id}"

    @property
    def issuer(self) -> str:
        return f"{self.login_host}/{self.tenant_id}/v2.0"

    def client_secret(self) -> str | None:
        """The client secret, read from its variable or file at the moment it is needed."""
        if self.client_secret_env:
            value = os.environ.get(self.client_secret_env)
            if not value:
                raise ConfigError(
                    f"tenants.{self.name}.client_secret_env names the environment variable "
                    f"{self.client_secret_env}, which is unset or empty. Fix: export {self.client_secret_env}=<the "
                    "app registration's client secret>."
                )
            return value
        if self.client_secret_file:
            path = Path(self.client_secret_file).expanduser()
            try:
                value = path.read_text(encoding="utf-8").strip()
            except OSError as exc:
                raise ConfigError(
                    f"tenants.{self.name}.client_secret_file: cannot read {path} ({exc.strerror}). "
                    "Fix: point it at a readable file that holds only the secret."
                ) from None
            if not value:
                raise ConfigError(f"tenants.{self.name}.client_secret_file: {path} is empty.")
            return value
        return None

    def client_certificate(self) -> tuple[bytes, str | None]:
        """PEM bytes (certificate and private key) and the key's password, if any."""
        assert self.client_certificate_path is not None
        path = Path(self.client_certificate_path).expanduser()
        try:
            pem = path.read_bytes()
        except OSError as exc:
            raise ConfigError(
                f"tenants.{self.name}.client_certificate_path: cannot read {path} ({exc.strerror}). "
                "Fix: point it at a PEM file holding the certificate and its private key."
            ) from None
        password = None
        if self.client_certificate_password_env:
            password = os.environ.get(self.client_certificate_password_env)
            if password is None:
                raise ConfigError(
                    f"tenants.{self.name}.client_certificate_password_env names {self.client_certificate_password_env}, "
                    f"which is unset. Fix: export {self.client_certificate_password_env}=<the key's password>."
                )
        return pem, password


class OidcSettings(_Section):
    enabled: bool = False
    tenant: str | None = None
    client_id: str | None = None
    client_secret_env: str | None = None
    allowed_tenants: list[str] = Field(default_factory=list)
    allowed_return_to: list[str] = Field(default_factory=list)
    session_idle_minutes: float = Field(default=60, gt=0)
    session_max_hours: float = Field(default=12, gt=0)
    scopes: list[str] = Field(default_factory=lambda: ["openid", "profile", "email"])

    def client_secret(self) -> str | None:
        return _env_secret("oidc.client_secret_env", self.client_secret_env, "the web app registration's client secret")


class Settings(_Section):
    server: ServerSettings = Field(default_factory=ServerSettings)
    scheduler: SchedulerSettings = Field(default_factory=SchedulerSettings)
    # shared keys merged under every [[tenants]] entry (an entry's own keys win; its [tenants.sync] table is merged
    # key by key), and a TOML file of more [[tenants]] entries (a relative path is relative to this config file)
    # (both are read by parse_settings before validation and left out of a dump: its tenants are already merged)
    tenant_defaults: dict[str, Any] = Field(default_factory=dict, exclude=True)
    tenants_file: Path | None = Field(default=None, exclude=True)
    tenants: list[TenantSettings] = Field(default_factory=list)
    oidc: OidcSettings = Field(default_factory=OidcSettings)
    source: Path | None = Field(default=None, exclude=True)

    @model_validator(mode="after")
    def _check(self) -> "Settings":
        names = [t.name for t in self.tenants]
        reserved = sorted({n for n in names if n.lower() in RESERVED_TENANT_NAMES})
        if reserved:
            raise ValueError(
                f"tenant name {', '.join(map(repr, reserved))} is reserved: cache_dir keeps its own data under that "
                f"name ({', '.join(sorted(RESERVED_TENANT_NAMES))} are reserved). Fix: choose another [[tenants]] name."
            )
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"tenant names must be unique; repeated: {', '.join(dupes)}")
        auth = self.server.auth
        if auth.mode == "entra":
            if not auth.tenant or auth.tenant not in names:
                raise ValueError("server.auth.mode = 'entra' needs server.auth.tenant set to the name of a [[tenants]] entry")
            if not auth.audience:
                raise ValueError("server.auth.mode = 'entra' needs server.auth.audience (the API app registration's client id)")
        if auth.mode == "oauth" and not self.oidc.enabled:
            raise ValueError(
                "server.auth.mode = 'oauth' signs people in with Entra through [oidc]: set oidc.enabled = true with "
                "oidc.tenant and oidc.client_id (docs/oauth.md)"
            )
        if auth.mode == "none" and self.server.transport == "http":
            _check_open_mode(self.server)
        for n, rule in enumerate(self.server.access.rules):
            unknown = [t for t in rule.tenants if t != "*" and t not in names]
            if unknown:
                close = difflib.get_close_matches(unknown[0], names, n=1)
                hint = f"did you mean {close[0]!r}?" if close else f"configured: {', '.join(names) or 'none'}"
                raise ValueError(f"server.access.rules[{n}].tenants names {', '.join(map(repr, unknown))}, which is not a "
                                 f"[[tenants]] name ({hint}). Fix: use a configured tenant's name, or \"*\" for all.")
        if self.oidc.enabled:
            if not self.oidc.tenant or self.oidc.tenant not in names:
                raise ValueError("oidc.enabled needs oidc.tenant set to the name of a [[tenants]] entry")
            if not self.oidc.client_id:
                raise ValueError("oidc.enabled needs oidc.client_id (the web app registration's client id)")
        return self

    def tenant(self, name: str | None) -> TenantSettings:
        """The tenant called `name`, or the only one when `name` is None."""
        if name is None:
            if len(self.tenants) == 1:
                return self.tenants[0]
            if not self.tenants:
                raise ConfigError("no [[tenants]] are configured. Fix: add a [[tenants]] table (see config.example.toml).")
            raise ConfigError(
                f"several tenants are configured ({', '.join(t.name for t in self.tenants[:10])}"
                f"{f' and {len(self.tenants) - 10} more' if len(self.tenants) > 10 else ''}): name one."
            )
        for t in self.tenants:
            if t.name == name:
                return t
        raise ConfigError(f"unknown tenant {name[:80]!r}. {tenant_hint(name, [t.name for t in self.tenants])}")


def tenant_hint(name: str, names: list[str], *, shown: int = 10) -> str:
    """"Did you mean ...?" with the closest configured names, else the configured names (the first `shown` of many)."""
    close = difflib.get_close_matches(name, names, n=3, cutoff=0.6)
    if not close:
        folded = name.casefold()
        close = [n for n in names if folded and (folded in n.casefold() or n.casefold() in folded)][:3]
    if close:
        return f"Did you mean {', '.join(close)}?"
    if not names:
        return "No tenants are configured."
    more = f" and {len(names) - shown} more (`entra-mcp tenants list`)" if len(names) > shown else ""
    return f"Configured: {', '.join(names[:shown])}{more}."


def _check_open_mode(server: ServerSettings) -> None:
    """server.auth.mode = "none" leaves /mcp open: only when every way in is loopback. A loopback bind behind a reverse
    proxy (public_url on a public name) or an extra allowed Host would open it to whoever reaches the proxy."""
    fix = "Fix: set server.auth.mode to 'entra' or 'api_key'"
    if not _is_loopback(server.host):
        raise ValueError(
            f"server.auth.mode = 'none' is only allowed on a loopback host, and server.host is {server.host!r}. "
            f"{fix}, or bind 127.0.0.1."
        )
    public = urlsplit(server.resolved_public_url).hostname or ""
    if not _is_loopback(public):
        raise ValueError(
            f"server.auth.mode = 'none' leaves /mcp open to anyone, and server.public_url ({server.resolved_public_url}) "
            "is not a loopback address: behind a reverse proxy every client of the proxy could call the tools "
            f"unauthenticated. {fix}, or set public_url to http://127.0.0.1:{server.port}."
        )
    hosts = [h for h in server.allowed_hosts if not _is_loopback(h.rsplit(":", 1)[0] if h.count(":") == 1 else h)]
    if hosts:
        raise ValueError(
            f"server.auth.mode = 'none' leaves /mcp open to anyone, and server.allowed_hosts lets non-loopback names in "
            f"({', '.join(hosts)}). {fix}, or remove them."
        )


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _known_keys(model: type[BaseModel]) -> list[str]:
    return [k for k in model.model_fields if k != "source"]


def _model_at(loc: tuple[Any, ...]) -> type[BaseModel] | None:
    """The pydantic model that owns the key at `loc` (for suggestions on unknown keys)."""
    model: type[BaseModel] = Settings
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        field = model.model_fields.get(str(part))
        if field is None:
            return None
        ann = field.annotation
        inner = getattr(ann, "__args__", (ann,))
        nxt = next((a for a in inner if isinstance(a, type) and issubclass(a, BaseModel)), None)
        if nxt is None:
            return None
        model = nxt
    return model


def _describe(exc: ValidationError, data: dict[str, Any], origins: list[str] | None = None) -> str:
    lines = []
    for err in exc.errors():
        loc = tuple(err["loc"])
        path = _dotted(loc, data)
        if origins and len(loc) > 1 and loc[0] == "tenants" and isinstance(loc[1], int) and loc[1] < len(origins) \
                and origins[loc[1]]:
            path = f"{origins[loc[1]]}: {path}"  # an entry of the tenants file: name the file
        if err["type"] == "extra_forbidden":
            owner = _model_at(loc)
            key = str(loc[-1])
            close = difflib.get_close_matches(key, _known_keys(owner), n=1) if owner else []
            fix = f"did you mean '{close[0]}'?" if close else "remove it (config.example.toml lists every key)"
            lines.append(f"  {path}: unknown key; {fix}")
        elif err["type"] == "missing":
            lines.append(f"  {path}: required key is missing; add it (see config.example.toml)")
        else:
            msg = err["msg"].removeprefix("Value error, ")
            lines.append(f"  {path or '(top level)'}: {msg}")
    if len(lines) > MAX_PROBLEM_LINES:
        lines = lines[:MAX_PROBLEM_LINES] + [f"  ... and {len(lines) - MAX_PROBLEM_LINES} more problems like these"]
    return "\n".join(lines)


def _dotted(loc: tuple[Any, ...], data: dict[str, Any]) -> str:
    parts: list[str] = []
    node: Any = data
    for part in loc:
        if isinstance(part, int):
            name = None
            if isinstance(node, list) and part < len(node) and isinstance(node[part], dict):
                name = node[part].get("name")
            parts[-1] = f"{parts[-1]}[{name!r}]" if name else f"{parts[-1]}[{part}]"
            node = node[part] if isinstance(node, list) and part < len(node) else None
        else:
            parts.append(str(part))
            node = node.get(part) if isinstance(node, dict) else None
    return ".".join(parts)


def config_path(explicit: str | os.PathLike[str] | None = None) -> Path:
    if explicit:
        return Path(explicit).expanduser()
    env = os.environ.get(CONFIG_ENV)
    if env:
        return Path(env).expanduser()
    return Path(DEFAULT_CONFIG_NAME)


# ------------------------------------------------------------------ many tenants: shared defaults and a tenants file

# keys that name one tenant: never shared through [tenant_defaults]
TENANT_OWN_KEYS = frozenset({"name", "tenant_id"})
CREDENTIAL_KEYS = ("client_secret_env", "client_secret_file", "client_certificate_path", "client_certificate_password_env")
CUSTOM_CLOUD_KEYS = ("login_url", "graph_url")
MAX_PROBLEM_LINES = 25  # a tenants file of hundreds of entries with one shared mistake must not print hundreds of lines


def merge_tenant(defaults: dict[str, Any], entry: dict[str, Any]) -> dict[str, Any]:
    """One [[tenants]] entry over the shared defaults: the entry's keys win, its `sync` table is merged key by key,
    and an entry naming its own credential (or cloud) drops the defaults' other credential (or custom URLs)."""
    base = dict(defaults)
    if any(k in entry for k in CREDENTIAL_KEYS):
        for k in CREDENTIAL_KEYS:
            base.pop(k, None)
    if "cloud" in entry:
        for k in CUSTOM_CLOUD_KEYS:
            base.pop(k, None)
    merged = {**base, **entry}
    if isinstance(base.get("sync"), dict) and isinstance(entry.get("sync"), dict):
        merged["sync"] = {**base["sync"], **entry["sync"]}
    return merged


def _defaults_problems(defaults: Any) -> list[str]:
    """What is wrong with [tenant_defaults] itself, said once (not once per tenant)."""
    if not isinstance(defaults, dict):
        return ["  tenant_defaults: must be a table ([tenant_defaults])"]
    lines = []
    for key in sorted(TENANT_OWN_KEYS & set(defaults)):
        lines.append(f"  tenant_defaults.{key}: names one tenant and cannot be shared; set it in each [[tenants]] entry")
    # validate the defaults as a tenant of their own, keeping only the errors about keys they set
    probe = {"name": "defaults", "tenant_id": "defaults", "client_id": "defaults", **defaults}
    try:
        TenantSettings.model_validate(probe, context={"check_files": False})
    except ValidationError as exc:
        for err in exc.errors():
            loc = tuple(err["loc"])
            if not loc or loc[0] not in defaults or loc[0] in TENANT_OWN_KEYS:
                continue
            path = "tenant_defaults." + ".".join(str(p) for p in loc)
            if err["type"] == "extra_forbidden":
                owner = SyncSettings if len(loc) > 1 and loc[0] == "sync" else TenantSettings
                close = difflib.get_close_matches(str(loc[-1]), _known_keys(owner), n=1)
                lines.append(f"  {path}: unknown key; " + (f"did you mean '{close[0]}'?" if close else
                                                          "remove it (config.example.toml lists every key)"))
            else:
                lines.append(f"  {path}: {err['msg'].removeprefix('Value error, ')}")
    return lines


def read_tenants_file(path: Path) -> list[dict[str, Any]]:
    """The [[tenants]] entries of a tenants file (TOML holding only [[tenants]] tables). ConfigError naming the file."""
    fix = "Fix: point tenants_file at a TOML file of [[tenants]] tables (`entra-mcp tenants add` creates it)."
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"tenants_file: {path} does not exist. {fix}") from None
    except IsADirectoryError:
        raise ConfigError(f"tenants_file: {path} is a directory, not a file. {fix}") from None
    except OSError as exc:
        raise ConfigError(f"tenants_file: cannot read {path} ({exc.strerror}). {fix}") from None
    data = _parse_toml(raw, f"tenants_file: {path}")
    other = sorted(set(data) - {"tenants"})
    if other:
        raise ConfigError(f"tenants_file: {path}: unknown key {', '.join(map(repr, other))}; a tenants file holds only "
                          "[[tenants]] tables (shared keys go in [tenant_defaults] of the main config)")
    entries = data.get("tenants", [])
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise ConfigError(f"tenants_file: {path}: `tenants` must be an array of tables ([[tenants]])")
    return entries


def _expand_tenants(data: dict[str, Any], source: Path | None) -> tuple[dict[str, Any], list[str]]:
    """`data` with the tenants file's entries appended and [tenant_defaults] merged under every entry; and for each
    entry where it came from ("" for the main config, else the tenants file's path)."""
    defaults = data.get("tenant_defaults", {})
    file_value = data.get("tenants_file")
    if not defaults and file_value is None:
        own = data.get("tenants")
        return data, [""] * (len(own) if isinstance(own, list) else 0)  # not a list: pydantic says what is wrong
    problems = _defaults_problems(defaults)
    if problems:
        where = f" in {source}" if source else ""
        raise ConfigError(f"invalid configuration{where}:\n" + "\n".join(problems))
    own = data.get("tenants", [])
    if not isinstance(own, list):
        return data, []  # pydantic says what is wrong with it
    entries = list(own)
    origins = [""] * len(entries)
    out = dict(data)
    if file_value is not None:
        if not isinstance(file_value, (str, os.PathLike)) or not str(file_value).strip():
            raise ConfigError("tenants_file: must be the path of a TOML file of [[tenants]] tables")
        path = Path(os.path.expandvars(str(file_value))).expanduser()
        if not path.is_absolute() and source is not None:
            path = Path(source).parent / path
        extra = read_tenants_file(path)
        entries += extra
        origins += [str(path)] * len(extra)
        out["tenants_file"] = path
    out["tenants"] = [merge_tenant(defaults, e) if isinstance(e, dict) else e for e in entries]
    return out, origins


def parse_settings(data: dict[str, Any], *, source: Path | None = None, check_files: bool = True) -> Settings:
    """Validate a config mapping; a ConfigError lists every problem with its key and the fix (entries of the tenants
    file name that file). With `check_files` (the default) the files a tenant names (ca_bundle, certificate, secret
    file) must exist; `status`, which only reads the mirror, passes False so it can show why a sync fails."""
    data, origins = _expand_tenants(data, source)
    try:
        settings = Settings.model_validate(data, context={"check_files": check_files})
    except ValidationError as exc:
        where = f" in {source}" if source else ""
        raise ConfigError(f"invalid configuration{where}:\n{_describe(exc, data, origins)}") from None
    return settings.model_copy(update={"source": source})


def load_settings(path: str | os.PathLike[str] | None = None, *, check_files: bool = True) -> Settings:
    """Load and validate the config file. Raises ConfigError (exit code 2 at the CLI) with the key and the fix."""
    p = config_path(path)
    try:
        raw = p.read_bytes()
    except FileNotFoundError:
        raise ConfigError(
            f"no config file at {p}. Fix: pass --config PATH, set {CONFIG_ENV}, or copy config.example.toml to "
            "./config.toml. To try entra-mcp without a tenant, run `entra-mcp demo`."
        ) from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {p}: {exc.strerror}") from None
    return parse_settings(_parse_toml(raw, str(p)), source=p, check_files=check_files)


def _parse_toml(raw: bytes, what: str) -> dict[str, Any]:
    """TOML bytes as a mapping; ConfigError naming `what` (the file) when they are not UTF-8 TOML."""
    try:
        return tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(f"{what} is not UTF-8 text") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{what} is not valid TOML: {exc}. Fix the syntax at that line.") from None


__all__ = [
    "CLOUDS",
    "AuthSettings",
    "OidcSettings",
    "ServerSettings",
    "SchedulerSettings",
    "Settings",
    "StoreSettings",
    "SyncSettings",
    "TenantSettings",
    "config_path",
    "load_settings",
    "merge_tenant",
    "parse_settings",
    "read_tenants_file",
    "tenant_hint",
]
