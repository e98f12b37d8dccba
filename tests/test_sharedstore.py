"""[server.store] and the shared store's connection (sharedstore/connection.py) against a real redis-server."""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import uuid
from pathlib import Path

import pytest
from _redis import RedisServer, have_redis, redis_server, unique_prefix  # noqa: F401

from entra_mcp.config import StoreSettings, parse_settings
from entra_mcp.errors import ConfigError, StoreUnavailable
from entra_mcp.oidc.sessions import SessionService
from entra_mcp.oidc.validate import Identity
from entra_mcp.sharedstore.connection import SharedRedis, client_kwargs
from entra_mcp.sharedstore.counters import SharedRateLimiter
from entra_mcp.sharedstore.sessions import RedisSessionStore
from _harness import free_port, wait_until

SECRET = "s3cret-Redis-pass-never-shown"


def store_settings(**kw: object) -> StoreSettings:
    return parse_settings({"server": {"store": kw}}).server.store


# ------------------------------------------------------------------ config


def test_no_store_by_default() -> None:
    s = parse_settings({})
    assert s.server.store.redis_url is None and not s.server.store.shared


def test_a_password_in_the_url_is_refused_without_echoing_it() -> None:
    with pytest.raises(ConfigError) as e:
        store_settings(redis_url=f"redis://app:{SECRET}@redis.internal:6379/0")
    msg = str(e.value)
    assert "server.store.redis_url" in msg and "password_env" in msg
    assert SECRET not in msg


@pytest.mark.parametrize("url, words", [
    ("http://redis.internal:6379", "redis://"),
    ("redis.internal:6379", "redis://"),
    ("redis://:6379/0", "no host"),
    ("redis://redis.internal:99999/0", "invalid port"),
])
def test_bad_urls_say_what_is_expected(url: str, words: str) -> None:
    with pytest.raises(ConfigError) as e:
        store_settings(redis_url=url)
    assert words in str(e.value)


def test_tls_options_need_rediss_and_options_need_a_url() -> None:
    with pytest.raises(ConfigError, match="rediss://"):
        store_settings(redis_url="redis://r:6379/0", ca_bundle="/etc/ssl/ca.pem")
    with pytest.raises(ConfigError, match="without redis_url"):
        store_settings(password_env="REDIS_PASSWORD")
    with pytest.raises(ConfigError, match="named twice"):
        store_settings(redis_url="rediss://user@r:6380/0", username="other")
    with pytest.raises(ConfigError, match="key_prefix"):
        store_settings(redis_url="redis://r:6379/0", key_prefix="has space")


def test_tls_trust_and_credentials_reach_the_client(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    monkeypatch.setenv("REDIS_PW_TEST", SECRET)
    s = store_settings(redis_url="rediss://redis.internal:6380/2", ca_bundle=str(ca), username="entra",
                       password_env="REDIS_PW_TEST")
    kw = client_kwargs(s)
    assert kw["ssl_ca_certs"] == str(ca) and kw["ssl_cert_reqs"] == "required" and kw["ssl_check_hostname"]
    assert kw["username"] == "entra" and kw["password"] == SECRET
    assert s.redacted_url() == "rediss://redis.internal:6380/2"
    ca.unlink()
    with pytest.raises(ConfigError, match="ca_bundle"):
        client_kwargs(s)


def test_an_unset_password_variable_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("REDIS_PW_UNSET", raising=False)
    s = store_settings(redis_url="redis://127.0.0.1:6379/0", password_env="REDIS_PW_UNSET")
    with pytest.raises(ConfigError, match="REDIS_PW_UNSET"):
        SharedRedis.from_settings(s)


# ------------------------------------------------------------------ the connection


def test_commands_go_to_the_configured_server_under_the_prefix(redis_server: RedisServer) -> None:
    prefix = unique_prefix()
    shared = SharedRedis.from_settings(store_settings(redis_url=redis_server.url, key_prefix=prefix))
    try:
        shared.wait_reachable(5)
        shared.call(lambda c: c.set(shared.key("a", "b"), b"1"))
        with redis_server.client() as raw:
            assert raw.get(f"{prefix}a:b") == b"1"
    finally:
        shared.close()


def test_password_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                       caplog: pytest.LogCaptureFixture) -> None:
    if not have_redis():
        pytest.skip("redis-server is not installed")
    with RedisServer(tmp_path / "r", password=SECRET) as server:
        monkeypatch.setenv("REDIS_PW_TEST", SECRET)
        ok = SharedRedis.from_settings(store_settings(redis_url=server.url, password_env="REDIS_PW_TEST"))
        ok.wait_reachable(5)
        ok.close()
        monkeypatch.setenv("REDIS_PW_TEST", "not-the-password")
        bad = SharedRedis.from_settings(store_settings(redis_url=server.url, password_env="REDIS_PW_TEST"))
        with caplog.at_level(logging.DEBUG), pytest.raises(StoreUnavailable) as e:
            bad.wait_reachable(30)  # a refused password fails at once: waiting would not fix it
        bad.close()
    msg = str(e.value)
    assert "password or ACL user was refused" in msg and "password_env" in msg
    assert SECRET not in msg and "not-the-password" not in msg and "not-the-password" not in caplog.text


def test_unreachable_at_start_is_a_clear_error() -> None:
    port = free_port()
    shared = SharedRedis.from_settings(store_settings(redis_url=f"redis://127.0.0.1:{port}/0", timeout_seconds=0.5))
    with pytest.raises(StoreUnavailable) as e:
        shared.wait_reachable(0.3)
    msg = str(e.value)
    assert f"redis://127.0.0.1:{port}/0" in msg and "connection refused" in msg and "start_wait_seconds" in msg


def test_down_then_back_fails_fast_and_recovers_with_one_warning(tmp_path: Path,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    if not have_redis():
        pytest.skip("redis-server is not installed")
    with RedisServer(tmp_path / "r") as server:
        shared = SharedRedis(store_settings(redis_url=server.url))
        shared.ping()
        server.kill9()
        with caplog.at_level(logging.INFO, logger="entra_mcp.sharedstore"):
            with pytest.raises(StoreUnavailable, match="does not answer"):
                shared.ping()
            assert not shared.available
            # while down, calls fail without touching the network (the client is never asked)
            asked = []
            for _ in range(50):
                with pytest.raises(StoreUnavailable):
                    shared.call(lambda c: asked.append(1))
            assert asked == []
            server.start()
            wait_until(lambda: shared.available, timeout=10, what="the background probe to see Redis again")
            shared.ping()
        warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 1 and "unavailable (connection refused)" in warnings[0].getMessage()
        assert any("answers again" in r.getMessage() for r in caplog.records)
        shared.close()


# ------------------------------------------------------------------ sign-in records in Redis


@pytest.fixture
def shared(redis_server: RedisServer):  # type: ignore[no-untyped-def]
    s = SharedRedis(store_settings(redis_url=redis_server.url, key_prefix=unique_prefix()))
    yield s
    s.close()


def test_records_are_keyed_by_the_secrets_hash_and_stored_as_json(shared: SharedRedis) -> None:
    store = RedisSessionStore(shared)
    secret = "S" * 43
    store.put("session", secret, {"kind": "portal", "n": 1}, ttl=60)
    keys = [k.decode() for k in shared.client.keys(shared.prefix + "*")]
    assert keys == [shared.key("rec", "session", hashlib.sha256(secret.encode()).hexdigest())]
    raw = shared.client.get(keys[0])
    assert secret.encode() not in raw and json.loads(raw) == {"kind": "portal", "n": 1}
    assert 0 < shared.client.pttl(keys[0]) <= 60_000
    assert store.get("session", secret) == {"kind": "portal", "n": 1}
    assert store.get("chatcode", secret) is None  # namespaced
    shared.client.set(keys[0], b"\x80\x04not json")  # whoever writes Redis cannot hand a replica a pickle
    assert store.get("session", secret) is None
    assert store.delete("session", secret) and not store.delete("session", secret)


def test_records_expire_in_redis(shared: SharedRedis) -> None:
    store = RedisSessionStore(shared)
    store.put("state", "x" * 43, {"a": 1}, ttl=0.05)
    wait_until(lambda: store.get("state", "x" * 43) is None, timeout=5, what="the record to expire")


def test_take_is_atomic_across_replicas(redis_server: RedisServer) -> None:
    """Eight replicas (connections) race to redeem one state: exactly one gets it."""
    prefix = unique_prefix()
    replicas = [SharedRedis(store_settings(redis_url=redis_server.url, key_prefix=prefix)) for _ in range(8)]
    try:
        RedisSessionStore(replicas[0]).put("state", "s" * 43, {"flow": "portal"}, ttl=60)
        barrier = threading.Barrier(len(replicas))
        got: list[dict[str, object] | None] = []

        def redeem(r: SharedRedis) -> None:
            barrier.wait(timeout=10)
            got.append(RedisSessionStore(r).take("state", "s" * 43))

        threads = [threading.Thread(target=redeem, args=(r,)) for r in replicas]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=10)
        assert sorted(map(bool, got)) == [False] * 7 + [True]
    finally:
        for r in replicas:
            r.close()


def test_a_session_made_on_one_replica_is_valid_on_another_and_ends_everywhere(redis_server: RedisServer) -> None:
    prefix = unique_prefix()
    a, b = (SharedRedis(store_settings(redis_url=redis_server.url, key_prefix=prefix)) for _ in range(2))
    try:
        one, two = SessionService(RedisSessionStore(a)), SessionService(RedisSessionStore(b))
        me = Identity(str(uuid.uuid4()), str(uuid.uuid4()), "Ada", "ada@contoso.example")
        sid, _ = one.create(me, kind="chat")
        assert two.validate_chat_token(sid).valid
        assert two.revoke_chat_token(sid)
        assert one.validate_chat_token(sid).reason == "revoked"
    finally:
        a.close()
        b.close()


def test_store_down_raises_store_unavailable_and_writes_nothing(tmp_path: Path) -> None:
    if not have_redis():
        pytest.skip("redis-server is not installed")
    with RedisServer(tmp_path / "r") as server:
        shared = SharedRedis(store_settings(redis_url=server.url, timeout_seconds=0.5))
        store = RedisSessionStore(shared)
        server.kill9()
        with pytest.raises(StoreUnavailable) as e:
            store.put("session", "z" * 43, {"a": 1}, ttl=60)
        assert "session store is unavailable" in str(e.value) and "127.0.0.1" not in str(e.value)
        server.start()
        wait_until(lambda: _answers(store), timeout=10, what="the store to answer again")
        assert store.get("session", "z" * 43) is None
        shared.close()


def _answers(store: RedisSessionStore) -> bool:
    try:
        store.get("probe", "p" * 43)
        return True
    except StoreUnavailable:
        return False


# ------------------------------------------------------------------ shared rate limits


def test_rate_limit_is_counted_across_replicas(shared: SharedRedis, redis_server: RedisServer) -> None:
    other = SharedRedis(store_settings(redis_url=redis_server.url, key_prefix=shared.prefix))
    try:
        one, two = SharedRateLimiter(shared, "mcp", 6), SharedRateLimiter(other, "mcp", 6)
        answers = [(one if i % 2 else two).admit("tid/oid") for i in range(6)]
        assert answers == [None] * 6
        assert (one.admit("tid/oid") or 0) >= 1 and (two.admit("tid/oid") or 0) >= 1
        assert one.admit("another caller") is None

        async def on_the_loop() -> list[int | None]:
            # the server's path: awaited on the event loop, the same buckets as the synchronous calls
            return [await one.admit_async("async caller"), await two.admit_async("async caller"),
                    one.admit("async caller"), await two.admit_async("async caller")]

        import anyio

        got = anyio.run(on_the_loop)
        assert got == [None, None, None, None]
        assert anyio.run(one.admit_async, "another caller") is None  # another loop: its own client, same counters
        assert [one.admit("async caller") for _ in range(4)][-1] is not None  # 6 a minute: spent by both kinds
    finally:
        other.close()


def test_rate_limit_counts_locally_while_redis_is_down(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    if not have_redis():
        pytest.skip("redis-server is not installed")
    with RedisServer(tmp_path / "r") as server:
        shared = SharedRedis(store_settings(redis_url=server.url, timeout_seconds=0.5))
        limiter = SharedRateLimiter(shared, "mcp", 3)
        assert limiter.admit("k") is None
        server.kill9()
        with caplog.at_level(logging.INFO, logger="entra_mcp.sharedstore"):
            local = [limiter.admit("k") for _ in range(4)]
            assert local[:3] == [None] * 3 and (local[3] or 0) >= 1  # a bucket of its own, still a limit
            import anyio

            assert (anyio.run(limiter.admit_async, "k") or 0) >= 1  # the event loop's path falls back the same way
            assert anyio.run(limiter.admit_async, "other") is None
            server.start()
            wait_until(lambda: shared.available or _probe(shared), timeout=10, what="Redis to answer again")
            assert limiter.admit("fresh key") is None
            assert anyio.run(limiter.admit_async, "fresh key") is None
        warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert sum("counted by this replica alone" in m for m in warned) == 1
        assert any("shared by the replicas again" in r.getMessage() for r in caplog.records)
        shared.close()


def test_the_awaited_limit_reconnects_after_a_redis_restart(tmp_path: Path) -> None:
    """A pooled connection of the event loop's client is dead after Redis restarts: the first awaited admit retries
    on a new connection at once (shared counting goes on), as the synchronous client does."""
    if not have_redis():
        pytest.skip("redis-server is not installed")
    import anyio

    with RedisServer(tmp_path / "r") as server:
        shared = SharedRedis(store_settings(redis_url=server.url))
        limiter = SharedRateLimiter(shared, "mcp", 100)

        async def scenario() -> None:
            assert await limiter.admit_async("k") is None
            server.restart()
            assert await limiter.admit_async("k") is None
            assert shared.available and not limiter._counting_locally

        anyio.run(scenario)
        shared.close()


def _probe(shared: SharedRedis) -> bool:
    try:
        shared.ping()
        return True
    except StoreUnavailable:
        return False


def test_records_of_a_namespace_are_listed_by_digest(shared: SharedRedis) -> None:
    store = RedisSessionStore(shared)
    for i in range(3):
        store.put("state", f"{i}" * 43, {"i": i}, ttl=60)
    store.put("session", "9" * 43, {"i": 9}, ttl=60)
    found = dict(store.records("state"))
    assert found == {hashlib.sha256((f"{i}" * 43).encode()).hexdigest(): {"i": i} for i in range(3)}


# The ACL rule docs/deployment.md gives the service's Redis user: its keys only, no dangerous commands.
DOC_ACL = "on ~{prefix}* resetchannels -@all +@read +@write +@scripting +@connection +time -@dangerous"


def test_the_documented_acl_user_is_enough(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if not have_redis():
        pytest.skip("redis-server is not installed")
    deployment = (Path(__file__).resolve().parents[1] / "docs" / "deployment.md").read_text()
    assert DOC_ACL.format(prefix="entra-mcp:") in deployment
    with RedisServer(tmp_path / "r") as server:
        with server.client() as admin:
            admin.execute_command("ACL", "SETUSER", "entra-mcp", *DOC_ACL.format(prefix="entra-mcp:").split(),
                                  f">{SECRET}")
        monkeypatch.setenv("REDIS_PW_TEST", SECRET)
        shared = SharedRedis(store_settings(redis_url=server.url, username="entra-mcp", password_env="REDIS_PW_TEST"))
        try:
            shared.wait_reachable(5)
            store = RedisSessionStore(shared)
            store.put("state", "a" * 43, {"x": 1}, ttl=60)
            assert dict(store.records("state")) and store.take("state", "a" * 43) == {"x": 1}
            limiter = SharedRateLimiter(shared, "mcp", 2)
            assert [limiter.admit("k") for _ in range(3)][:2] == [None, None]
            assert limiter._counting_locally is False  # the script ran in Redis, not the local fallback
            # the sync leader's lease and publication (cluster/lease.py) under the same user
            from entra_mcp.cluster.lease import Publication, SyncLease

            lease = SyncLease(shared, tenant="contoso", holder="replica-a", ttl_seconds=5)
            token = lease.acquire()
            assert token is not None and lease.renew()
            assert lease.publish(Publication(1, 1, token, "v1.data", "v1.data", "replica-a", None, "data", 0.0))
            assert lease.published() is not None
            lease.release()
            # outside its prefix the user can do nothing
            other = SharedRedis(store_settings(redis_url=server.url, username="entra-mcp",
                                               password_env="REDIS_PW_TEST", key_prefix="other:"))
            with pytest.raises(StoreUnavailable):
                RedisSessionStore(other).put("state", "b" * 43, {"x": 1}, ttl=60)
            other.close()
        finally:
            shared.close()


def test_doctor_checks_the_shared_store(redis_server: RedisServer, tmp_path: Path) -> None:
    import io

    from entra_mcp.commands.doctor import check_shared_store

    out = io.StringIO()
    good = parse_settings({"server": {"store": {"redis_url": redis_server.url, "key_prefix": unique_prefix()}}})
    assert check_shared_store(good, out) and f"shared store {redis_server.url}: ok" in out.getvalue()
    port = free_port()
    bad = parse_settings({"server": {"store": {"redis_url": f"redis://127.0.0.1:{port}/0", "start_wait_seconds": 0.2}}})
    out = io.StringIO()
    assert not check_shared_store(bad, out)
    assert f"shared store redis://127.0.0.1:{port}/0: FAILED" in out.getvalue() and "connection refused" in out.getvalue()
    assert check_shared_store(parse_settings({}), io.StringIO())  # nothing configured: nothing to check


def test_tls_with_the_configured_ca(tmp_path: Path) -> None:
    """rediss:// against a real TLS-only redis-server: the configured CA is trusted, the system's CAs alone are not."""
    if not have_redis():
        pytest.skip("redis-server is not installed")
    from entra_mcp.devtenant.tls import create_tls_files

    tls = create_tls_files(tmp_path / "tls")
    with RedisServer(tmp_path / "r", tls=tls) as server:
        assert server.url.startswith("rediss://")
        shared = SharedRedis(store_settings(redis_url=server.url, ca_bundle=str(tls.ca_bundle)))
        try:
            shared.wait_reachable(5)
            RedisSessionStore(shared).put("state", "t" * 43, {"tls": True}, ttl=60)
            assert RedisSessionStore(shared).take("state", "t" * 43) == {"tls": True}
        finally:
            shared.close()
        untrusted = SharedRedis(store_settings(redis_url=server.url, timeout_seconds=1))
        with pytest.raises(StoreUnavailable, match="TLS handshake failed"):
            untrusted.wait_reachable(0.5)
        untrusted.close()
        plain = SharedRedis(store_settings(redis_url=server.url.replace("rediss://", "redis://"), timeout_seconds=1))
        with pytest.raises(StoreUnavailable):  # plain text to a TLS port never passes for a connection
            plain.wait_reachable(0.5)
        plain.close()
