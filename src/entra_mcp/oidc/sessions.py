"""Server-side sessions for the client portal (cookie) and agent chat (opaque chat-session token).

Rules (docs/sign-in.md rules 11, 12): ids are 256-bit random values from `secrets`, stored only as hashes
(mirror/session_store.py); a session is created fresh at every sign-in and any session the browser held before is
deleted (no fixation); idle and absolute timeouts; deleting a session (logout, revoke) leaves a short-lived tombstone so
a later check can say "revoked" rather than "unknown". A chat-session token is such a session id, of kind "chat"; it is
never an Entra token. The ID token itself is never stored.

The chat hand-over: the widget starts sign-in with `chat_challenge` = S256(a verifier it keeps); the callback stores
the identity and that challenge under a one-time code (1 minute, single use) and sends the browser back to the widget
with the code in the URL fragment; the widget trades code + verifier once for the chat-session token
(`redeem_chat_code`). See docs/sign-in.md.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any, Literal, TypeGuard

from entra_mcp.config import Settings
from entra_mcp.logs import get_logger
from entra_mcp.mirror.session_store import SessionRecords, SessionStore
from entra_mcp.oidc.validate import Identity

log = get_logger("oidc.sessions")

SessionKind = Literal["portal", "chat"]
ChatReason = Literal["expired", "revoked", "unknown", "wrong_tenant"]

_SECRET_RE = re.compile(r"^[A-Za-z0-9_-]{43}$")  # token_urlsafe(32): 256 bits; also a base64url SHA-256
_VERIFIER_RE = re.compile(r"^[A-Za-z0-9._~-]{43,128}$")  # RFC 7636 code_verifier alphabet and length
_SESSION_NS = "session"
_ENDED_NS = "ended"
_CHAT_CODE_NS = "chatcode"
TOMBSTONE_SECONDS = 7 * 24 * 3600.0
CHAT_CODE_SECONDS = 60.0  # the hand-over is automatic (a redirect, then one POST): a minute is plenty
TOUCH_EVERY_SECONDS = 30.0
PURGE_EVERY_SECONDS = 3600.0  # expired records are swept at start and then at most hourly, on sign-in  # last_seen is rewritten at most this often (idle precision)


def new_secret() -> str:
    """A fresh 256-bit random value, URL-safe (43 characters)."""
    return secrets.token_urlsafe(32)


def looks_like_secret(value: str | None) -> TypeGuard[str]:
    return isinstance(value, str) and _SECRET_RE.match(value) is not None


looks_like_challenge = looks_like_secret  # S256 challenges have the same shape: 43 base64url characters


def s256(verifier: str) -> str:
    """base64url(SHA-256(verifier)) without padding, as PKCE's S256."""
    return base64.urlsafe_b64encode(hashlib.sha256(verifier.encode("ascii")).digest()).rstrip(b"=").decode("ascii")


@dataclass(frozen=True)
class Session:
    kind: SessionKind
    identity: Identity
    created_at: float
    last_seen: float
    idle_seconds: float
    max_seconds: float

    @property
    def expires_at(self) -> float:
        """When the session ends at the latest (absolute timeout)."""
        return self.created_at + self.max_seconds

    @property
    def idle_expires_at(self) -> float:
        return min(self.last_seen + self.idle_seconds, self.expires_at)

    def expired(self, now: float) -> bool:
        return now >= self.idle_expires_at

    def public(self) -> dict[str, Any]:
        """What /auth/session shows: who, which kind, until when. No ids, no tokens."""
        return {
            "kind": self.kind,
            **self.identity.as_dict(),
            "createdAt": _iso(self.created_at),
            "expiresAt": _iso(self.expires_at),
            "idleExpiresAt": _iso(self.idle_expires_at),
        }

    def record(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            **self.identity.record(),
            "createdAt": self.created_at,
            "lastSeen": self.last_seen,
            "idle": self.idle_seconds,
            "max": self.max_seconds,
        }

    @classmethod
    def from_record(cls, r: dict[str, Any]) -> "Session":
        return cls(
            kind=r["kind"],
            identity=Identity.from_record(r),
            created_at=float(r["createdAt"]),
            last_seen=float(r["lastSeen"]),
            idle_seconds=float(r["idle"]),
            max_seconds=float(r["max"]),
        )


@dataclass(frozen=True)
class ChatSessionCheck:
    """The answer of `validate_chat_token`: valid, or the reason it is not, and who the session belongs to."""

    valid: bool
    reason: ChatReason | None = None
    identity: dict[str, str | None] | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"valid": self.valid, "reason": self.reason, "identity": self.identity}


def _iso(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


class SessionService:
    """Creates, finds, touches and ends portal and chat sessions; validates chat-session tokens."""

    def __init__(
        self,
        store: SessionRecords,
        *,
        idle_seconds: float = 3600.0,
        max_seconds: float = 12 * 3600.0,
        tenant_ids: Collection[str] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.idle_seconds = idle_seconds
        self.max_seconds = max_seconds
        self.tenant_ids = frozenset(t.lower() for t in tenant_ids) if tenant_ids is not None else None
        # Why a person may no longer use this server's tools (no [server.access] rule or home tenant grants them a
        # tenant), or None: set by the MCP server (server/app.py create_server), asked when an OAuth grant refreshes.
        self.access_check: Callable[[Identity], str | None] | None = None
        self._clock = clock
        self._last_purge = time.monotonic()
        self.store.purge_expired()  # whatever lapsed while the server was down

    @classmethod
    def from_settings(
        cls, settings: Settings, *, store: SessionRecords | None = None, tenant_ids: Collection[str] | None = None,
        **kw: Any
    ) -> "SessionService":
        """`tenant_ids`: the tenant GUIDs whose sessions are valid (None: any tenant that could sign in). `store`: where
        the records live (the Redis one when [server.store] redis_url is set); default the local one in cache_dir."""
        o = settings.oidc
        return cls(
            store or SessionStore(settings.server.cache_dir),
            idle_seconds=o.session_idle_minutes * 60,
            max_seconds=o.session_max_hours * 3600,
            tenant_ids=tenant_ids,
            **kw,
        )

    # -- lifecycle -------------------------------------------------------------------------------------------
    def create(self, identity: Identity, *, kind: SessionKind, replaces: str | None = None) -> tuple[str, Session]:
        """A new session with a fresh id. `replaces`: the id the browser held before sign-in, deleted (rotation)."""
        if replaces:
            self.delete(replaces, reason="revoked")
        if time.monotonic() - self._last_purge > PURGE_EVERY_SECONDS:
            self._last_purge = time.monotonic()
            self.store.purge_expired()
        now = self._clock()
        max_seconds = self.max_seconds
        session = Session(kind, identity, now, now, min(self.idle_seconds, max_seconds), max_seconds)
        sid = new_secret()
        # Written first: once the record lapses (and is purged) a later check still says "expired", not "unknown".
        self.store.put(_ENDED_NS, sid, {"kind": kind, "reason": "expired"}, ttl=max_seconds + TOMBSTONE_SECONDS)
        self._save(sid, session, now)
        log.info("%s session started for tid=%s oid=%s", kind, identity.tid, identity.oid)
        return sid, session

    def _save(self, sid: str, session: Session, now: float) -> None:
        ttl = max(session.idle_expires_at - now, 0.05)
        self.store.put(_SESSION_NS, sid, session.record(), ttl=ttl)

    def lookup(self, sid: str | None, *, kind: SessionKind, touch: bool = True) -> tuple[Session | None, ChatReason | None]:
        """The live session of this kind, or None and why not (unknown, expired, revoked, wrong_tenant)."""
        if not looks_like_secret(sid):
            return None, "unknown"
        assert sid is not None
        record = self.store.get(_SESSION_NS, sid)
        if record is None:
            ended = self.store.get(_ENDED_NS, sid)
            if ended is not None and ended.get("kind") == kind:
                return None, "expired" if ended.get("reason") == "expired" else "revoked"
            return None, "unknown"
        try:
            session = Session.from_record(record)
        except (KeyError, TypeError, ValueError):
            return None, "unknown"
        if session.kind != kind:
            return None, "unknown"
        now = self._clock()
        if session.expired(now):
            self.delete(sid, reason="expired")
            return None, "expired"
        if self.tenant_ids is not None and session.identity.tid.lower() not in self.tenant_ids:
            return None, "wrong_tenant"
        if touch and now - session.last_seen >= TOUCH_EVERY_SECONDS:
            session = Session(session.kind, session.identity, session.created_at, now, session.idle_seconds, session.max_seconds)
            self._save(sid, session, now)
        return session, None

    def get(self, sid: str | None, *, kind: SessionKind = "portal") -> Session | None:
        return self.lookup(sid, kind=kind)[0]

    def delete(self, sid: str | None, *, reason: Literal["revoked", "expired"] = "revoked") -> bool:
        """End the session now; later checks of its id answer `reason`."""
        if not looks_like_secret(sid):
            return False
        assert sid is not None
        record = self.store.take(_SESSION_NS, sid)
        if record is None:
            return False
        self.store.put(_ENDED_NS, sid, {"kind": record.get("kind"), "reason": reason}, ttl=TOMBSTONE_SECONDS)
        return True

    # -- chat ------------------------------------------------------------------------------------------------
    def issue_chat_code(self, identity: Identity, *, challenge: str) -> str:
        """A one-time code (1 minute) the chat widget trades for a chat-session token.

        `challenge` is S256(verifier) of a verifier only the widget that started the sign-in holds (sent to
        /auth/login as `chat_challenge`): a code stolen from, or planted into, another browser is worthless."""
        if not looks_like_challenge(challenge):
            raise ValueError("chat challenge must be a base64url SHA-256 (43 characters)")
        code = new_secret()
        rec = {**Session("chat", identity, 0, 0, 0, 0).record(), "challenge": challenge}
        self.store.put(_CHAT_CODE_NS, code, rec, ttl=CHAT_CODE_SECONDS)
        return code

    def redeem_chat_code(self, code: str | None, verifier: str | None) -> tuple[str, Session] | None:
        """Trade a one-time code and the widget's verifier for a new chat session (token, session); None when the
        code is unknown, used or expired, or the verifier does not match. The code is spent either way."""
        if not looks_like_secret(code) or not isinstance(verifier, str) or not _VERIFIER_RE.match(verifier):
            return None
        assert code is not None
        rec = self.store.take(_CHAT_CODE_NS, code)
        if rec is None or not hmac.compare_digest(s256(verifier), str(rec.get("challenge", ""))):
            return None
        return self.create(Identity.from_record(rec), kind="chat")

    def validate_chat_token(self, token: str | None, *, tenant: str | None = None) -> ChatSessionCheck:
        """Is this chat-session token live? `tenant`: a tenant GUID the session must belong to (else wrong_tenant)."""
        session, reason = self.lookup(token, kind="chat")
        if session is None:
            return ChatSessionCheck(False, reason or "unknown")
        if tenant is not None and session.identity.tid.lower() != tenant.lower():
            return ChatSessionCheck(False, "wrong_tenant")
        return ChatSessionCheck(True, None, session.identity.as_dict())

    def validate_chat_session(self, session_token: str) -> dict[str, Any]:
        """The mapping the `validate_chat_session` tool expects: valid, reason, identity."""
        return self.validate_chat_token(session_token).as_dict()

    def revoke_chat_token(self, token: str | None) -> bool:
        session, _ = self.lookup(token, kind="chat", touch=False)
        return session is not None and self.delete(token)

    def purge_expired(self) -> int:
        return self.store.purge_expired()


__all__ = ["ChatSessionCheck", "Session", "SessionKind", "SessionService", "looks_like_challenge", "looks_like_secret",
           "new_secret", "s256"]
