"""Token validation rules (docs/sign-in.md rules 1-8) against a login host with keys generated in the test.

The same rules are exercised with the emulator's real keys in test_oidc_emulator.py; this module also covers the
key-cache behaviour that needs a JWKS endpoint under the test's control (throttling, rollover, outage).
"""

from __future__ import annotations

import time
import uuid

import anyio
import pytest

from _auth_fixtures import FakeClock, LocalIdP, public_pem, sign_hs256, unsigned
from entra_mcp.oidc.provider import OidcProvider, ProviderUnavailable
from entra_mcp.oidc.validate import InsufficientScope, TokenRejected, TokenValidator

PORTAL = str(uuid.uuid4())
API = str(uuid.uuid4())
NONCE = "n-" + uuid.uuid4().hex

pytestmark = pytest.mark.anyio


@pytest.fixture
def idp() -> LocalIdP:
    return LocalIdP()


def make(idp: LocalIdP, *, clock: FakeClock | None = None, allowed: tuple[str, ...] = ()) -> TokenValidator:
    provider = OidcProvider(idp.login, idp.tid, allowed_tenants=allowed, transport=idp.transport(), clock=clock or FakeClock())
    return TokenValidator(provider)


async def reason(coro) -> str:  # type: ignore[no-untyped-def]
    with pytest.raises(TokenRejected) as info:
        await coro
    return info.value.reason


async def test_good_id_token_gives_tid_oid_identity(idp: LocalIdP) -> None:
    v = make(idp)
    claims = idp.claims(aud=PORTAL, nonce=NONCE)
    result = await v.validate_id_token(idp.mint(claims), client_id=PORTAL, nonce=NONCE)
    assert result.identity.key == (idp.tid, claims["oid"])
    assert result.identity.preferred_username == "test.user@contoso.example"


async def test_alg_none_and_hs256_with_public_key_are_rejected(idp: LocalIdP) -> None:
    v = make(idp)
    claims = idp.claims(aud=PORTAL, nonce=NONCE)
    none_token = unsigned({"alg": "none", "kid": "key-1"}, claims)
    assert await reason(v.validate_id_token(none_token, client_id=PORTAL, nonce=NONCE)) == "alg"
    hs = sign_hs256(public_pem(idp.keys["key-1"]), {"alg": "HS256", "kid": "key-1"}, claims)
    assert await reason(v.validate_id_token(hs, client_id=PORTAL, nonce=NONCE)) == "alg"
    for alg in ("RS384", "PS256", "ES256", "RS256 ", "rs256"):
        tok = idp.mint(claims, header={"alg": alg})
        assert await reason(v.validate_id_token(tok, client_id=PORTAL, nonce=NONCE)) == "alg"


async def test_embedded_keys_in_header_are_ignored(idp: LocalIdP) -> None:
    """jwk/jku/x5u/x5c naming the attacker's key do not make the attacker's signature acceptable."""
    v = make(idp)
    attacker = LocalIdP(tenants=idp.tenants)
    attacker.keys = {}
    evil = attacker.add_key("key-1")
    from _auth_fixtures import public_jwk

    header = {
        "jwk": public_jwk(evil, "key-1"),
        "jku": "https://evil.example/keys",
        "x5u": "https://evil.example/cert.pem",
        "x5c": ["MIIB"],
    }
    tok = attacker.mint(idp.claims(aud=PORTAL, nonce=NONCE), header=header)
    assert await reason(v.validate_id_token(tok, client_id=PORTAL, nonce=NONCE)) == "signature"
    # and a genuine token with those header fields still validates: they are simply not read
    good = idp.mint(idp.claims(aud=PORTAL, nonce=NONCE), header=header)
    await v.validate_id_token(good, client_id=PORTAL, nonce=NONCE)


@pytest.mark.parametrize("kid", ["", "../../etc/passwd", "a" * 129, "kid with space", "k\u00e9y", "/keys"])
async def test_junk_kids_are_rejected_without_a_fetch(idp: LocalIdP, kid: str) -> None:
    v = make(idp)
    await v.validate_id_token(idp.mint(idp.claims(aud=PORTAL, nonce=NONCE)), client_id=PORTAL, nonce=NONCE)
    before = idp.jwks_requests
    tok = idp.mint(idp.claims(aud=PORTAL, nonce=NONCE), header={"kid": kid})
    assert await reason(v.validate_id_token(tok, client_id=PORTAL, nonce=NONCE)) == "kid"
    assert idp.jwks_requests == before


async def test_burst_of_unknown_kids_costs_one_fetch_and_rollover_works(idp: LocalIdP) -> None:
    clock = FakeClock()
    v = make(idp, clock=clock)
    claims = idp.claims(aud=PORTAL, nonce=NONCE)
    await v.validate_id_token(idp.mint(claims), client_id=PORTAL, nonce=NONCE)
    assert idp.jwks_requests == 1
    clock.advance(61)
    junk = [idp.mint(claims, header={"kid": f"junk{i}"}) for i in range(200)]
    results: list[str] = []

    async def one(tok: str) -> None:
        results.append(await reason(v.validate_id_token(tok, client_id=PORTAL, nonce=NONCE)))

    async with anyio.create_task_group() as tg:
        for tok in junk:
            tg.start_soon(one, tok)
    assert results == ["kid"] * 200
    assert idp.jwks_requests == 2  # one throttled refetch for the whole burst
    # The IdP rolls its keys over: within the throttle window the new kid is refused, after it accepted.
    idp.add_key("key-2")
    fresh = idp.mint(idp.claims(aud=PORTAL, nonce=NONCE), kid="key-2")
    assert await reason(v.validate_id_token(fresh, client_id=PORTAL, nonce=NONCE)) == "kid"
    assert idp.jwks_requests == 2
    clock.advance(60)
    await v.validate_id_token(fresh, client_id=PORTAL, nonce=NONCE)
    assert idp.jwks_requests == 3


async def test_requests_arriving_during_the_first_fetch_wait_for_it(idp: LocalIdP) -> None:
    """Cold start under load: requests that come while the JWKS fetch is in flight get its keys (no 503, no refetch)."""
    idp.jwks_gate, idp.jwks_in_flight = anyio.Event(), anyio.Event()
    v = make(idp)
    ok: list[bool] = []

    async def one() -> None:
        await v.validate_id_token(idp.mint(idp.claims(aud=PORTAL, nonce=NONCE)), client_id=PORTAL, nonce=NONCE)
        ok.append(True)

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(one)
            await idp.jwks_in_flight.wait()
            for _ in range(31):
                tg.start_soon(one)
            await anyio.wait_all_tasks_blocked()
            idp.jwks_gate.set()
    assert len(ok) == 32 and idp.jwks_requests == 1


async def test_jwks_down_serves_cached_keys_until_max_age_then_fails_closed(idp: LocalIdP) -> None:
    clock = FakeClock()
    provider = OidcProvider(idp.login, idp.tid, transport=idp.transport(), clock=clock, refresh_after=3600, max_key_age=7200)
    v = TokenValidator(provider)
    await v.validate_id_token(idp.mint(idp.claims(aud=PORTAL, nonce=NONCE)), client_id=PORTAL, nonce=NONCE)
    idp.jwks_down = True
    clock.advance(3700)  # stale: a refresh is tried, fails, cached keys keep serving
    await v.validate_id_token(idp.mint(idp.claims(aud=PORTAL, nonce=NONCE)), client_id=PORTAL, nonce=NONCE)
    assert idp.jwks_requests == 2
    clock.advance(3600)  # past max_key_age since the last good fetch
    with pytest.raises(ProviderUnavailable):
        await v.validate_id_token(idp.mint(idp.claims(aud=PORTAL, nonce=NONCE)), client_id=PORTAL, nonce=NONCE)
    idp.jwks_down = False
    clock.advance(61)
    await v.validate_id_token(idp.mint(idp.claims(aud=PORTAL, nonce=NONCE)), client_id=PORTAL, nonce=NONCE)


async def test_jwks_down_from_the_start_fails_closed(idp: LocalIdP) -> None:
    idp.jwks_down = True
    v = make(idp)
    with pytest.raises(ProviderUnavailable):
        await v.validate_id_token(idp.mint(idp.claims(aud=PORTAL, nonce=NONCE)), client_id=PORTAL, nonce=NONCE)


async def test_issuer_audience_tenant_and_v1_rules(idp: LocalIdP) -> None:
    v = make(idp)
    other = idp.tenants[1]

    async def r(**kw: object) -> str:
        return await reason(v.validate_id_token(idp.mint(idp.claims(**{"aud": PORTAL, "nonce": NONCE, **kw})), client_id=PORTAL, nonce=NONCE))  # type: ignore[arg-type]

    assert await r(iss=f"{idp.login}/{other}/v2.0", tid=other) == "issuer"  # another tenant, single-tenant mode
    assert await r(iss=f"{idp.login}/{idp.tid}/v2.0/") == "issuer"
    assert await r(iss=f"https://evil.example/{idp.tid}/v2.0") == "issuer"
    assert await r(tid=other) == "issuer"  # tid disagrees with iss
    assert await r(iss=f"https://sts.windows.net/{idp.tid}/", ver="1.0") == "v1"
    assert await r(ver="1.0") == "v1"
    assert await r(aud=API) == "audience"
    assert await r(aud="00000003-0000-0000-c000-000000000000") == "audience"  # a Graph token
    assert await r(aud=[PORTAL]) == "claims"
    for missing in ("exp", "iss", "oid", "tid"):
        assert await r(**{missing: None}) == "claims", missing
    assert await r(oid="not-a-guid") == "claims"


async def test_times_with_sixty_seconds_leeway(idp: LocalIdP) -> None:
    v = make(idp)
    now = time.time()
    tok = idp.mint(idp.claims(aud=PORTAL, nonce=NONCE, now=now, exp=int(now) + 100))
    await v.validate_id_token(tok, client_id=PORTAL, nonce=NONCE, now=now + 150)  # within leeway
    assert await reason(v.validate_id_token(tok, client_id=PORTAL, nonce=NONCE, now=now + 170)) == "expired"
    future = idp.mint(idp.claims(aud=PORTAL, nonce=NONCE, nbf=int(now) + 120))
    assert await reason(v.validate_id_token(future, client_id=PORTAL, nonce=NONCE, now=now)) == "not_yet_valid"
    await v.validate_id_token(future, client_id=PORTAL, nonce=NONCE, now=now + 61)
    future_iat = idp.mint(idp.claims(aud=PORTAL, nonce=NONCE, iat=int(now) + 600))
    assert await reason(v.validate_id_token(future_iat, client_id=PORTAL, nonce=NONCE, now=now)) == "not_yet_valid"
    with pytest.raises(ValueError):
        TokenValidator(v.provider, leeway=300)


async def test_nonce_must_match(idp: LocalIdP) -> None:
    v = make(idp)
    tok = idp.mint(idp.claims(aud=PORTAL, nonce="other"))
    assert await reason(v.validate_id_token(tok, client_id=PORTAL, nonce=NONCE)) == "nonce"
    tok = idp.mint(idp.claims(aud=PORTAL))
    assert await reason(v.validate_id_token(tok, client_id=PORTAL, nonce=NONCE)) == "nonce"


async def test_tampered_payload_and_garbage_are_rejected(idp: LocalIdP) -> None:
    v = make(idp)
    tok = idp.mint(idp.claims(aud=PORTAL, nonce=NONCE))
    h, p, s = tok.split(".")
    from _auth_fixtures import b64url
    import json

    evil = b64url(json.dumps(idp.claims(aud=PORTAL, nonce=NONCE, oid=str(uuid.uuid4()))).encode())
    assert await reason(v.validate_id_token(f"{h}.{evil}.{s}", client_id=PORTAL, nonce=NONCE)) == "signature"
    for junk in ("", "a.b", "a.b.c", "x" * 20000, "....", f"{h}.{p}", "\u00e9.\u00e9.\u00e9"):
        assert await reason(v.validate_id_token(junk, client_id=PORTAL, nonce=NONCE)) in {"malformed", "alg", "kid"}


async def test_multi_tenant_allow_list(idp: LocalIdP) -> None:
    third = str(uuid.uuid4())
    idp.tenants.append(third)
    v = make(idp, allowed=(idp.tenants[1],))
    guest = idp.tenants[1]
    ok = idp.mint(idp.claims(aud=PORTAL, nonce=NONCE, tid=guest))
    assert (await v.validate_id_token(ok, client_id=PORTAL, nonce=NONCE)).identity.tid == guest
    not_listed = idp.mint(idp.claims(aud=PORTAL, nonce=NONCE, tid=third))
    assert await reason(v.validate_id_token(not_listed, client_id=PORTAL, nonce=NONCE)) == "issuer"
    # tid allow-listed but iss names another tenant
    mixed = idp.mint(idp.claims(aud=PORTAL, nonce=NONCE, tid=guest, iss=f"{idp.login}/{third}/v2.0"))
    assert await reason(v.validate_id_token(mixed, client_id=PORTAL, nonce=NONCE)) == "issuer"


async def test_same_upn_in_another_tenant_is_another_identity(idp: LocalIdP) -> None:
    v = make(idp, allowed=(idp.tenants[1],))
    victim = idp.claims(aud=PORTAL, nonce=NONCE, preferred_username="ceo@contoso.example", email="ceo@contoso.example")
    attacker = idp.claims(
        aud=PORTAL, nonce=NONCE, tid=idp.tenants[1], oid=victim["oid"], preferred_username="ceo@contoso.example"
    )
    a = await v.validate_id_token(idp.mint(victim), client_id=PORTAL, nonce=NONCE)
    b = await v.validate_id_token(idp.mint(attacker), client_id=PORTAL, nonce=NONCE)
    assert a.identity.preferred_username == b.identity.preferred_username
    assert a.identity.key != b.identity.key


async def test_access_token_rules(idp: LocalIdP) -> None:
    v = make(idp)

    async def check(**kw: object):  # type: ignore[no-untyped-def]
        opts = {"allow_app_tokens": kw.pop("allow_app_tokens", False)}
        claims = idp.claims(**{"aud": API, "scp": "Identity.Investigate User.Read", "azp": PORTAL, **kw})  # type: ignore[arg-type]
        return await v.validate_access_token(
            idp.mint(claims), audience=API, required_scopes=["Identity.Investigate"], **opts  # type: ignore[arg-type]
        )

    assert (await check()).scopes >= {"Identity.Investigate"}
    await check(aud=f"api://{API}")
    for bad_aud in (PORTAL, "00000003-0000-0000-c000-000000000000", f"api://{PORTAL}"):
        assert await reason(check(aud=bad_aud)) == "audience"
    with pytest.raises(InsufficientScope):
        await check(scp="User.Read")
    # an ID token (aud = the portal, no scp) presented as an access token
    id_token = idp.mint(idp.claims(aud=PORTAL, nonce=NONCE))
    assert await reason(v.validate_access_token(id_token, audience=API, required_scopes=["Identity.Investigate"])) == "audience"
    # app-only tokens
    assert await reason(check(scp=None, roles=["Identity.Investigate"], idtyp="app")) == "app_only"
    assert await reason(check(scp=None)) == "app_only"
    assert await reason(check(idtyp="app")) == "app_only"
    assert (await check(scp=None, roles=["Identity.Investigate"], idtyp="app", allow_app_tokens=True)).app_only
    with pytest.raises(InsufficientScope):
        await check(scp=None, roles=["Other"], idtyp="app", allow_app_tokens=True)
    assert await reason(check(ver="1.0", iss=f"https://sts.windows.net/{idp.tid}/")) == "v1"
