"""SessionService over both session stores (the local diskcache one and the Redis one of [server.store]): timeouts,
rotation, revocation, chat tokens and their reasons."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import pytest

from _auth_fixtures import FakeClock
from _redis import redis_server  # noqa: F401
from entra_mcp.mirror.session_store import SessionStore
from entra_mcp.oidc.sessions import SessionService, looks_like_secret, s256
from entra_mcp.oidc.validate import Identity

TID = str(uuid.uuid4())
VERIFIER = "v" * 64
ME = Identity(TID, str(uuid.uuid4()), "Ada", "ada@contoso.example")


@pytest.fixture
def local_store(tmp_path: Path):  # type: ignore[no-untyped-def]
    s = SessionStore(tmp_path)
    yield s
    s.close()


@pytest.fixture(params=["local", "redis"])
def store(request: pytest.FixtureRequest, tmp_path: Path):  # type: ignore[no-untyped-def]
    """The same semantics from both backends."""
    if request.param == "local":
        s = SessionStore(tmp_path)
        yield s
        s.close()
        return
    from _redis import unique_prefix

    from entra_mcp.config import StoreSettings
    from entra_mcp.sharedstore.connection import SharedRedis
    from entra_mcp.sharedstore.sessions import RedisSessionStore

    server = request.getfixturevalue("redis_server")
    shared = SharedRedis(StoreSettings(redis_url=server.url, key_prefix=unique_prefix()))
    yield RedisSessionStore(shared)
    shared.close()


def service(store: SessionStore, clock: FakeClock, **kw: object) -> SessionService:
    return SessionService(store, idle_seconds=600, max_seconds=3600, clock=clock, **kw)  # type: ignore[arg-type]


def test_ids_are_256_bit_random_and_unique(store: SessionStore) -> None:
    svc = service(store, FakeClock(time.time()))
    ids = {svc.create(ME, kind="portal")[0] for _ in range(200)}
    assert len(ids) == 200 and all(looks_like_secret(i) and len(i) == 43 for i in ids)


def test_idle_timeout_and_touch(store: SessionStore) -> None:
    clock = FakeClock(time.time())
    svc = service(store, clock)
    sid, _ = svc.create(ME, kind="portal")
    clock.advance(590)
    assert svc.get(sid) is not None  # touch: idle window starts again
    clock.advance(590)
    assert svc.get(sid) is not None
    clock.advance(601)
    session, reason = svc.lookup(sid, kind="portal")
    assert session is None and reason == "expired"


def test_absolute_timeout_even_when_active(store: SessionStore) -> None:
    clock = FakeClock(time.time())
    svc = service(store, clock)
    sid, _ = svc.create(ME, kind="portal")
    for _ in range(7):
        clock.advance(500)
        assert svc.get(sid) is not None
    clock.advance(500)  # 4000 s after creation > 3600
    assert svc.lookup(sid, kind="portal") == (None, "expired")


def test_rotation_deletes_the_previous_session(store: SessionStore) -> None:
    svc = service(store, FakeClock(time.time()))
    old, _ = svc.create(ME, kind="portal")
    new, _ = svc.create(ME, kind="portal", replaces=old)
    assert new != old
    assert svc.lookup(old, kind="portal") == (None, "revoked")
    assert svc.get(new) is not None


def test_chat_token_reasons(store: SessionStore) -> None:
    clock = FakeClock(time.time())
    svc = service(store, clock, tenant_ids=[TID])
    code = svc.issue_chat_code(ME, challenge=s256(VERIFIER))
    token, _ = svc.redeem_chat_code(code, VERIFIER)  # type: ignore[misc]
    assert svc.redeem_chat_code(code, VERIFIER) is None  # one time
    ok = svc.validate_chat_token(token)
    assert ok.valid and ok.identity == {"tid": TID, "oid": ME.oid, "name": "Ada", "preferredUsername": "ada@contoso.example"}
    assert svc.validate_chat_token(token, tenant=str(uuid.uuid4())).reason == "wrong_tenant"
    assert svc.validate_chat_token("nope").reason == "unknown"
    assert svc.validate_chat_token("A" * 43).reason == "unknown"
    assert svc.validate_chat_token(None).reason == "unknown"
    # a portal session id is not a chat token
    portal, _ = svc.create(ME, kind="portal")
    assert svc.validate_chat_token(portal).reason == "unknown"
    assert svc.revoke_chat_token(token)
    assert svc.validate_chat_token(token).reason == "revoked"
    other, _ = svc.redeem_chat_code(svc.issue_chat_code(ME, challenge=s256(VERIFIER)), VERIFIER)  # type: ignore[misc]
    clock.advance(601)
    assert svc.validate_chat_token(other).reason == "expired"


def test_sessions_of_tenants_no_longer_served_are_wrong_tenant(store: SessionStore) -> None:
    clock = FakeClock(time.time())
    foreign = Identity(str(uuid.uuid4()), ME.oid, ME.name, ME.preferred_username)
    svc = service(store, clock, tenant_ids=[TID])
    token, _ = svc.create(foreign, kind="chat")
    assert svc.validate_chat_token(token).reason == "wrong_tenant"


def test_expired_records_are_purged_from_disk(local_store: SessionStore) -> None:
    store = local_store
    svc = SessionService(store, idle_seconds=0.3, max_seconds=3600)
    sid, _ = svc.create(ME, kind="portal")
    keep = SessionService(store, idle_seconds=600, max_seconds=3600).create(ME, kind="portal")[0]
    assert store.get("session", sid) is not None
    before = len(store)
    purged = 0
    deadline = time.monotonic() + 10
    while purged == 0:
        purged = store.purge_expired()
        assert time.monotonic() < deadline, "expired session was never purged"
    assert purged == 1 and len(store) == before - 1
    assert svc.lookup(sid, kind="portal") == (None, "expired")  # the tombstone still says why
    assert svc.get(keep) is not None


def test_survives_reopening_the_store(tmp_path: Path) -> None:
    s1 = SessionStore(tmp_path)
    sid, _ = SessionService(s1).create(ME, kind="portal")
    s1.close()
    s2 = SessionStore(tmp_path)
    try:
        session = SessionService(s2).get(sid)
        assert session is not None and session.identity.key == ME.key
    finally:
        s2.close()
