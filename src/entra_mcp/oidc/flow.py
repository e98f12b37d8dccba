"""Authorization code + PKCE sign-in against Entra ID (docs/sign-in.md rules 9-12). No web framework in here.

`begin()` picks a fresh `state` (256 bits) and keeps a pending sign-in server-side for 10 minutes, bound to the browser
(the hash of a random value, the binding, that the browser keeps in a cookie), and gives the authorize URL. The PKCE
verifier and the nonce are derived from the state and the binding (HMAC-SHA-256), so the store holds neither: only the
browser that started the sign-in, with the state back from the IdP, can recompute them. Pending sign-ins are capped
per client address and in total, and /auth/login is rate-limited per address (SignInBusy, shown as 429).
`complete()` takes the `state` back exactly once, checks the browser binding and the age BEFORE the code is redeemed,
redeems the code at the token endpoint (client secret + verifier, the configured redirect URI), validates the ID
token (nonce included) and starts a session: a portal session (cookie) or, for chat, a one-time code the widget trades
for a chat-session token. The ID token is dropped after validation; nothing of it but the identity is kept.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Literal
from urllib.parse import urlencode, urlsplit, urlunsplit

import httpx

from entra_mcp.config import Settings
from entra_mcp.errors import AuthError, ConfigError
from entra_mcp.logs import get_logger
from entra_mcp.oidc.provider import OidcProvider, ProviderUnavailable
from entra_mcp.oidc.sessions import Session, SessionService, looks_like_challenge, looks_like_secret, new_secret, s256
from entra_mcp.oidc.validate import Identity, TokenRejected, TokenValidator
from entra_mcp.ratelimit import Limiter, RateLimiter

log = get_logger("oidc.flow")

Flow = Literal["portal", "chat"]
FLOWS: tuple[Flow, ...] = ("portal", "chat")
STATE_SECONDS = 600.0
MAX_PENDING = 10_000  # pending sign-ins (started, not yet back) in total
MAX_PENDING_PER_CLIENT = 30  # ... and per client address
LOGINS_PER_MINUTE = 60  # /auth/login per client address
PURGE_EVERY_SECONDS = 60.0  # lapsed sign-in records leave the disk at least this often while sign-ins happen
_STATE_NS = "state"
_DEFAULT_PORTS = {"http": 80, "https": 443}
_UNSAFE_RE = re.compile(r"[\x00-\x20\x7f\\]")


class SignInError(AuthError):
    """The sign-in cannot go on (bad request, replayed or expired state, refused code). Shown to the user as 400."""

    code = "SIGN_IN"


class SignInBusy(SignInError):
    """Too many sign-ins started from this address (or in all) right now. Shown as 429 with Retry-After."""

    code = "SIGN_IN_BUSY"

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


def origin_of(url: str) -> str | None:
    """scheme://host[:port] with the default port dropped and case folded; None when `url` is not absolute http(s)."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return None
    if parts.scheme not in _DEFAULT_PORTS or not parts.hostname or parts.username is not None or parts.password is not None:
        return None
    host = parts.hostname.lower()
    if ":" in host:
        host = f"[{host}]"
    if port is None or port == _DEFAULT_PORTS[parts.scheme]:
        return f"{parts.scheme}://{host}"
    return f"{parts.scheme}://{host}:{port}"


def _dot_segments(path: str) -> bool:
    low = path.lower()
    return any(seg in (".", "..", "%2e", "%2e%2e", ".%2e", "%2e.") for seg in low.split("/")) or "%2f" in low or "%5c" in low


def _prefix_ok(path: str, prefix: str) -> bool:
    """`path` lies under `prefix` on a segment boundary ("/chat" admits "/chat" and "/chat/x", not "/chatroom")."""
    if prefix.endswith("/"):
        return path.startswith(prefix) or path + "/" == prefix
    return path == prefix or path.startswith(prefix + "/")


def return_prefixes(urls: Collection[str]) -> frozenset[tuple[str, str]]:
    """(origin, path prefix) of each allow-listed return URL ("https://chat.example" is the prefix "/")."""
    out = set()
    for url in urls:
        origin = origin_of(url)
        if origin:
            out.add((origin, urlsplit(url).path or "/"))
    return frozenset(out)


def safe_return_to(
    value: str | None,
    *,
    allowed_origins: Collection[str] = (),
    allowed_prefixes: Collection[tuple[str, str]] = (),
    exact: bool = False,
    default: str = "/",
) -> str:
    """`value` if it is a relative path on this server, or an absolute URL on an allow-listed origin (any path) or
    under an allow-listed (origin, path prefix) (rule 10). `exact`: only an absolute URL whose origin and path equal
    an allow-listed entry (the chat hand-over, which puts a one-time code in the URL).

    Refused: protocol-relative `//evil`, `/\\evil`, other origins, paths outside the prefixes (dot segments and encoded
    slashes included), userinfo tricks, `javascript:` and every scheme but http(s), control characters and
    backslashes anywhere.
    """
    if value is None or value == "":
        return default
    if len(value) > 2048 or _UNSAFE_RE.search(value):
        raise SignInError("return_to contains characters that are not allowed")
    if value.startswith("/") and not exact:
        if value.startswith("//"):
            raise SignInError("return_to must be a path on this server or an allow-listed URL (got a protocol-relative URL)")
        parts = urlsplit(value)
        if parts.scheme or parts.netloc:
            raise SignInError("return_to must be a path on this server or an allow-listed URL")
        return value
    origin = origin_of(value)
    if origin is None:
        raise SignInError("return_to must be a path on this server or an allow-listed URL (oidc.allowed_return_to)")
    path = urlsplit(value).path or "/"
    if exact:
        if (origin, path) not in allowed_prefixes:
            raise SignInError("the chat flow's return_to must be exactly one of oidc.allowed_return_to (the widget's page)")
        return value
    if origin in allowed_origins:
        return value
    if _dot_segments(path) or not any(o == origin and _prefix_ok(path, p) for o, p in allowed_prefixes):
        raise SignInError("return_to is not under an allow-listed URL (oidc.allowed_return_to)")
    return value


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _digest(value: str) -> str:
    return hashlib.sha256(value.encode("utf-8")).hexdigest()


def _client_key(address: str) -> str:
    """What the pending-sign-in caps count by: a digest of the client's address, so the store holds no address."""
    return "client:" + _digest(address)[:24]


def _derived(binding: str, state: str, purpose: str) -> str:
    """A secret only the browser holding `binding` can recompute once the IdP sends `state` back (43 base64url
    characters: a valid PKCE verifier, and a nonce)."""
    return _b64(hmac.new(binding.encode("ascii"), f"{purpose}:{state}".encode("ascii"), hashlib.sha256).digest())


pkce_challenge = s256


@dataclass(frozen=True)
class LoginStart:
    authorize_url: str
    binding: str  # the value the browser must keep in the sign-in cookie


@dataclass(frozen=True)
class LoginResult:
    flow: Flow
    return_to: str
    session_id: str | None = None  # portal: the new session's id (cookie value)
    session: Session | None = None
    chat_code: str | None = None  # chat: the one-time code for the widget
    identity: Identity | None = None  # who signed in (for the audit trail)

    def redirect_target(self) -> str:
        if self.flow == "chat":
            parts = urlsplit(self.return_to)
            return urlunsplit(parts._replace(fragment=urlencode({"chat_code": self.chat_code or ""})))
        return self.return_to


class SignInFlow:
    """Authorization code + PKCE for one web app registration ([oidc])."""

    def __init__(
        self,
        *,
        client_id: str,
        client_secret: Callable[[], str | None],
        redirect_uri: str,
        scopes: Collection[str],
        provider: OidcProvider,
        validator: TokenValidator,
        sessions: SessionService,
        allowed_return_origins: Collection[str],
        allowed_return_to: Collection[str] = (),
        http: httpx.AsyncClient | None = None,
        clock: Callable[[], float] = time.time,
        login_rate: Limiter | None = None,
    ) -> None:
        self.client_id = client_id
        self._client_secret = client_secret
        self.redirect_uri = redirect_uri
        self.scopes = list(dict.fromkeys(["openid", *scopes]))
        self.provider = provider
        self.validator = validator
        self.sessions = sessions
        self.allowed_return_origins = frozenset(allowed_return_origins)
        self.allowed_return_prefixes = return_prefixes(allowed_return_to)
        self._http = http or provider.http
        self._clock = clock
        self.token_requests = 0
        self._pending: OrderedDict[str, tuple[str, float]] = OrderedDict()  # state digest -> (client, expires)
        self._pending_per_client: Counter[str] = Counter()
        # sign-ins started per client address: counted by all replicas together when given the shared limiter
        self._login_rate: Limiter = login_rate or RateLimiter(LOGINS_PER_MINUTE)
        self._last_purge = time.monotonic()
        self._count_stored_pending()

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        *,
        provider: OidcProvider,
        validator: TokenValidator,
        sessions: SessionService,
        **kw: object,
    ) -> "SignInFlow":
        o = settings.oidc
        if not o.client_id:
            raise ConfigError("oidc.client_id is not set (the web app registration's client id)")
        public = settings.server.resolved_public_url
        origins = {origin_of(public)}
        bad = [u for u in o.allowed_return_to if origin_of(u) is None]
        if bad:
            raise ConfigError(f"oidc.allowed_return_to entries must be absolute http(s) URLs; not usable: {', '.join(bad)}")
        return cls(
            client_id=o.client_id,
            client_secret=o.client_secret,
            redirect_uri=public + "/auth/callback",
            scopes=o.scopes,
            provider=provider,
            validator=validator,
            sessions=sessions,
            allowed_return_origins={x for x in origins if x},
            allowed_return_to=o.allowed_return_to,
            **kw,  # type: ignore[arg-type]
        )

    def check_return_to(self, value: str | None, *, exact: bool = False) -> str:
        return safe_return_to(value, allowed_origins=self.allowed_return_origins,
                              allowed_prefixes=self.allowed_return_prefixes, exact=exact)

    # -- pending sign-ins ------------------------------------------------------------------------------------
    # Counted per client address (its digest: the store holds no address) and in total. The records live in the
    # session store; a restarted process counts the ones already there, so a restart does not reopen the caps.
    def _count_stored_pending(self) -> None:
        now = self._clock()
        found = []
        for key, record in self.sessions.store.records(_STATE_NS):
            expires = float(record.get("createdAt", 0)) + STATE_SECONDS
            if expires > now:
                found.append((expires, key, str(record.get("client") or "unknown")))
        for expires, key, client in sorted(found):  # oldest first, as _forget_lapsed expects
            self._pending[key] = (client, expires)
            self._pending_per_client[client] += 1
        if found:
            log.info("counted %d sign-ins still pending from before the start", len(found))

    def _forget_lapsed(self) -> None:
        now = self._clock()
        while self._pending:
            key, (client, expires) = next(iter(self._pending.items()))
            if expires > now:
                break
            self._forget(key)
        if time.monotonic() - self._last_purge > PURGE_EVERY_SECONDS:
            self._last_purge = time.monotonic()
            self.sessions.store.purge_expired()

    def _forget(self, key: str) -> None:
        entry = self._pending.pop(key, None)
        if entry is not None:
            self._pending_per_client[entry[0]] -= 1
            if self._pending_per_client[entry[0]] <= 0:
                del self._pending_per_client[entry[0]]

    def _admit(self, client: str) -> None:
        """`client` is the digest of the client's address (`_client_key`)."""
        self._forget_lapsed()
        wait = self._login_rate.admit(client)
        if wait is not None:
            raise SignInBusy("too many sign-ins started from this address; wait a moment and try again", wait)
        if self._pending_per_client[client] >= MAX_PENDING_PER_CLIENT or len(self._pending) >= MAX_PENDING:
            raise SignInBusy("too many sign-ins are in progress; finish one or wait a few minutes", 60)

    @property
    def pending(self) -> int:
        """Sign-ins started and not yet back (nor lapsed), as this process knows them."""
        self._forget_lapsed()
        return len(self._pending)

    async def begin(
        self,
        *,
        flow: str,
        return_to: str | None,
        tenant: str | None = None,
        binding: str | None = None,
        chat_challenge: str | None = None,
        client: str = "unknown",
    ) -> LoginStart:
        """Where to send the browser to sign in, and the binding value for its sign-in cookie.

        `chat_challenge` (chat flow, required): S256 of a verifier the widget keeps for /auth/chat/exchange.
        `client`: the client's address, for the per-address caps (SignInBusy)."""
        if flow not in FLOWS:
            raise SignInError("flow must be 'portal' or 'chat'")
        if flow == "chat" and not looks_like_challenge(chat_challenge):
            raise SignInError(
                "the chat flow needs chat_challenge: base64url(SHA-256(verifier)) of a random verifier the widget keeps "
                "and sends with the one-time code to /auth/chat/exchange"
            )
        target = self.check_return_to(return_to, exact=flow == "chat")
        client = _client_key(client)
        self._admit(client)
        home = await self.provider.metadata()
        if tenant and tenant.lower() not in (self.provider.tenant.lower(), home.tenant_id.lower()):
            if tenant.lower() not in self.provider.allowed_tenants:
                raise SignInError("tenant is not one of the tenants allowed to sign in (oidc.allowed_tenants)")
        meta = await self.provider.metadata(tenant) if tenant else home
        binding = binding if binding is not None and looks_like_secret(binding) else new_secret()
        state = new_secret()
        nonce, verifier = _derived(binding, state, "nonce"), _derived(binding, state, "pkce")
        self.sessions.store.put(
            _STATE_NS,
            state,
            {
                "binding": _digest(binding),
                "flow": flow,
                "returnTo": target,
                "tenant": meta.tenant_id,
                "chatChallenge": chat_challenge if flow == "chat" else None,
                "createdAt": self._clock(),
                "client": client,
            },
            ttl=STATE_SECONDS,
        )
        self._pending[_digest(state)] = (client, self._clock() + STATE_SECONDS)
        self._pending_per_client[client] += 1
        query = {
            "client_id": self.client_id,
            "response_type": "code",
            "redirect_uri": self.redirect_uri,
            "response_mode": "query",
            "scope": " ".join(self.scopes),
            "state": state,
            "nonce": nonce,
            "code_challenge": pkce_challenge(verifier),
            "code_challenge_method": "S256",
        }
        return LoginStart(f"{meta.authorization_endpoint}?{urlencode(query)}", binding)

    async def complete(
        self, *, code: str | None, state: str | None, binding: str | None, previous_session: str | None = None
    ) -> LoginResult:
        """Finish the sign-in at the callback. Every check on `state` happens before the code goes anywhere."""
        if not looks_like_secret(state):
            raise SignInError("the sign-in response has no valid state; start again from the sign-in link")
        assert state is not None
        self._forget(_digest(state))
        record = self.sessions.store.take(_STATE_NS, state)  # single use, whatever happens next
        if record is None:
            raise SignInError("this sign-in response was already used or has expired; start again from the sign-in link")
        if not binding or not hmac.compare_digest(_digest(binding), str(record.get("binding"))):
            raise SignInError("this sign-in was started in another browser; start again from the sign-in link")
        if self._clock() - float(record.get("createdAt", 0)) > STATE_SECONDS:
            raise SignInError("the sign-in took longer than 10 minutes; start again from the sign-in link")
        if not code or len(code) > 4096:
            raise SignInError("the sign-in response has no authorization code")
        id_token = await self._redeem(code, record, verifier=_derived(binding, state, "pkce"))
        try:
            result = await self.validator.validate_id_token(
                id_token, client_id=self.client_id, nonce=_derived(binding, state, "nonce")
            )
        except TokenRejected as exc:
            log.warning("ID token refused at sign-in: %s", exc.reason)
            raise SignInError(f"the identity provider's answer was refused ({exc.reason})") from None
        flow: Flow = record["flow"]
        identity = result.identity
        if identity.tid.lower() != str(record["tenant"]).lower():
            # The sign-in went to one tenant's endpoints; an ID token of another tenant is not its answer.
            raise SignInError("the identity provider answered for another tenant than the one sign-in started with")
        if flow == "chat":
            code = self.sessions.issue_chat_code(identity, challenge=str(record["chatChallenge"]))
            return LoginResult("chat", record["returnTo"], chat_code=code, identity=identity)
        sid, session = self.sessions.create(identity, kind="portal", replaces=previous_session)
        return LoginResult("portal", record["returnTo"], session_id=sid, session=session, identity=identity)

    def discard_state(self, state: str | None) -> None:
        """Consume a state without redeeming anything (the IdP answered with an error)."""
        if looks_like_secret(state):
            assert state is not None
            self._forget(_digest(state))
            self.sessions.store.take(_STATE_NS, state)

    async def _redeem(self, code: str, record: dict[str, object], *, verifier: str) -> str:
        meta = await self.provider.metadata(str(record["tenant"]))
        form = {
            "client_id": self.client_id,
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": self.redirect_uri,
            "code_verifier": verifier,
            "scope": " ".join(self.scopes),
        }
        secret = self._client_secret()
        if secret:
            form["client_secret"] = secret
        self.token_requests += 1
        try:
            resp = await self._http.post(meta.token_endpoint, data=form, headers={"Accept": "application/json"})
        except httpx.HTTPError as exc:
            raise ProviderUnavailable(f"cannot reach the token endpoint ({type(exc).__name__})") from None
        try:
            body = resp.json()
        except ValueError:
            body = {}
        if resp.status_code != 200 or not isinstance(body, dict) or not isinstance(body.get("id_token"), str):
            codes = body.get("error_codes") if isinstance(body, dict) else None
            aadsts = codes[0] if isinstance(codes, list) and codes and isinstance(codes[0], int) else None
            error = body.get("error") if isinstance(body, dict) else None
            log.warning("code redemption refused: HTTP %s %s AADSTS%s", resp.status_code, error, aadsts)
            raise SignInError(
                f"the identity provider refused the sign-in code ({error or 'HTTP ' + str(resp.status_code)}"
                f"{f', AADSTS{aadsts}' if aadsts else ''}); start again from the sign-in link",
                aadsts=aadsts,
            )
        return str(body["id_token"])


__all__ = ["FLOWS", "LoginResult", "LoginStart", "SignInBusy", "SignInError", "SignInFlow", "origin_of", "pkce_challenge",
           "return_prefixes", "safe_return_to"]
