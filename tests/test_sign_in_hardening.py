"""Sign-in hardening over real HTTP (uvicorn on loopback, the emulator's login host over HTTPS): pending sign-ins
capped per address and in total and lapsing after STATE_SECONDS, /auth/login rate-limited per address, nothing
replayable in the store, return_to honouring path prefixes, the chat hand-over returning only to exact widget pages,
and error pages that reflect nothing and forbid framing.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from starlette.applications import Starlette

from _auth_fixtures import WIDGET_ORIGIN, Harness, counting_transport, emulator_settings, free_port, serve
from entra_mcp.config import parse_settings
from entra_mcp.devtenant.server import run_emulator
from entra_mcp.oidc import flow as flow_module
from entra_mcp.oidc.routes import SignIn

pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module")
def emu() -> Iterator[Any]:
    with run_emulator(tenants=1, seed=13) as e:
        yield e


@pytest.fixture
async def h(emu: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Harness]:
    for k, v in emu.secret_env(None, with_sign_in=True).items():
        monkeypatch.setenv(k, v)
    port = free_port()
    public = f"http://127.0.0.1:{port}"
    data = emulator_settings(emu, tmp_path, public_url=public, port=port).model_dump(mode="json")
    # The widget's origin is listed by page and by prefix only: nothing else there is a place to send people to.
    data["oidc"]["allowed_return_to"] = [f"{public}/", f"{WIDGET_ORIGIN}/chat", f"{WIDGET_ORIGIN}/help/"]
    settings = parse_settings(data)
    counting = counting_transport(emu)
    sign_in = SignIn.from_settings(settings, transport=counting)
    app = Starlette(routes=sign_in.routes())
    with serve(app, port) as base:
        harness = Harness(emu, settings, app, counting)
        await harness.client.aclose()
        harness.client = httpx.AsyncClient(base_url=base, timeout=20)  # real HTTP, not the ASGI transport
        harness.sign_in_obj = sign_in  # type: ignore[attr-defined]
        yield harness
        await harness.aclose()
    sign_in.sessions.store.close()


async def test_pending_sign_ins_are_capped_per_address(h: Harness) -> None:
    store = h.sign_in_obj.sessions.store  # type: ignore[attr-defined]
    cap = flow_module.MAX_PENDING_PER_CLIENT
    before = len(store)
    started = [await h.login("portal", "/") for _ in range(cap + 10)]
    assert [r.status_code for r in started[:cap]] == [302] * cap
    refused = started[-1]
    assert refused.status_code == 429 and int(refused.headers["retry-after"]) >= 1
    assert "location" not in refused.headers
    # what one address can make the server write is bounded by the cap, not by how often it asks
    assert len(store) - before == cap
    # a sign-in that comes back frees its place
    user = next(iter(h.emu.tenant(0).users.values()))["userPrincipalName"]
    h.client.cookies.set("entra_mcp_signin", started[0].cookies["entra_mcp_signin"])
    done = await h.client.get(await h.authenticate(started[0].headers["location"], user))
    assert done.status_code == 303, done.text
    assert (await h.login("portal", "/")).status_code == 302


async def test_pending_sign_ins_on_disk_still_count_after_a_restart(h: Harness) -> None:
    cap = flow_module.MAX_PENDING_PER_CLIENT
    started = [await h.login("portal", "/") for _ in range(cap)]
    assert [r.status_code for r in started] == [302] * cap
    # A new process over the same cache directory: the records on disk are counted at start, so the cap still holds.
    restarted = SignIn.from_settings(h.settings, transport=counting_transport(h.emu))
    try:
        assert restarted.flow.pending == cap
        port = free_port()
        with serve(Starlette(routes=restarted.routes()), port) as base:
            async with httpx.AsyncClient(base_url=base, timeout=20) as client:
                refused = await client.get("/auth/login", params={"flow": "portal", "return_to": "/"})
                assert refused.status_code == 429, refused.text[:200]
                # a sign-in started before the restart comes back to the new process and frees its place there
                user = next(iter(h.emu.tenant(0).users.values()))["userPrincipalName"]
                callback = urlsplit(await h.authenticate(started[0].headers["location"], user))
                client.cookies.set("entra_mcp_signin", started[0].cookies["entra_mcp_signin"])
                done = await client.get(f"{callback.path}?{callback.query}")
                assert done.status_code == 303, done.text
                assert restarted.flow.pending == cap - 1
    finally:
        restarted.sessions.store.close()


async def test_the_store_holds_nothing_a_thief_could_replay(h: Harness) -> None:
    start = await h.login("portal", "/")
    q = {k: v[0] for k, v in parse_qs(urlsplit(start.headers["location"]).query).items()}
    store_dir = Path(h.sign_in_obj.sessions.store.directory)  # type: ignore[attr-defined]
    raw = b"".join(p.read_bytes() for p in store_dir.rglob("*") if p.is_file())
    for secret in (q["state"], q["nonce"], start.cookies.get("entra_mcp_signin") or "x" * 43):
        assert secret.encode() not in raw
    record = h.sign_in_obj.sessions.store.get("state", q["state"])  # type: ignore[attr-defined]
    assert set(record) == {"binding", "flow", "returnTo", "tenant", "chatChallenge", "createdAt", "client"}
    assert "127.0.0.1" not in record["client"]  # the caps count by a digest of the address, not the address
    # and the sign-in still completes: verifier and nonce are recomputed from the state and the browser's binding
    callback = await h.authenticate(start.headers["location"], next(iter(h.emu.tenant(0).users.values()))["userPrincipalName"])
    done = await h.client.get(callback)
    assert done.status_code == 303, done.text


@pytest.mark.parametrize("target,ok", [
    (f"{WIDGET_ORIGIN}/help/", True),
    (f"{WIDGET_ORIGIN}/help/faq?x=1", True),
    (f"{WIDGET_ORIGIN}/chat", True),
    (f"{WIDGET_ORIGIN}/chat/sub", True),
    (f"{WIDGET_ORIGIN}/", False),
    (f"{WIDGET_ORIGIN}/helpdesk", False),
    (f"{WIDGET_ORIGIN}/chatroom", False),
    (f"{WIDGET_ORIGIN}/help/../admin", False),
    (f"{WIDGET_ORIGIN}/help/%2e%2e/admin", False),
    (f"{WIDGET_ORIGIN}/help%2f..%2fadmin", False),
    ("/any/path/here", True),
])
async def test_return_to_honours_the_path_prefix(h: Harness, target: str, ok: bool) -> None:
    r = await h.login("portal", target)
    assert r.status_code == (302 if ok else 400), (target, r.text[:200])


async def test_the_chat_hand_over_returns_only_to_an_exact_widget_page(h: Harness) -> None:
    from entra_mcp.oidc.sessions import s256

    challenge = s256(h.verifier)
    public = h.settings.server.resolved_public_url
    for target in (f"{WIDGET_ORIGIN}/help/faq", f"{WIDGET_ORIGIN}/chat/other", f"{WIDGET_ORIGIN}/", "/chat", f"{public}/x"):
        r = await h.login("chat", target, chat_challenge=challenge)
        assert r.status_code == 400, target
    assert (await h.login("chat", f"{WIDGET_ORIGIN}/chat?room=1", chat_challenge=challenge)).status_code == 302
    token = await h.chat_token()  # the whole hand-over still works
    assert len(token) == 43


async def test_the_callback_error_page_reflects_nothing_and_forbids_framing(h: Harness) -> None:
    marker = "<script>alert('x')</script>Call 555-0100 to restore access"
    r = await h.client.get("/auth/callback", params={"error": "access_denied" + marker, "error_description": marker})
    assert r.status_code == 400
    assert "555-0100" not in r.text and "script" not in r.text.lower() and "access_denied" not in r.text
    assert "frame-ancestors 'none'" in r.headers["content-security-policy"]
    assert "default-src 'none'" in r.headers["content-security-policy"]
    assert r.headers["x-frame-options"] == "DENY" and r.headers["referrer-policy"] == "no-referrer"
    assert r.headers["x-content-type-options"] == "nosniff"


async def test_json_bodies_are_bounded_in_depth(h: Harness) -> None:
    for body in (b"[" * 5000 + b"]" * 5000, b'{"code":' * 500 + b"1" + b"}" * 500, b'{"code": "' + b"\\" * 3000 + b'"}'):
        r = await h.client.post("/auth/chat/exchange", content=body, headers={"Content-Type": "application/json"})
        assert r.status_code in (400, 413), r.text[:200]
    ok_shape = {"code": "A" * 43, "code_verifier": "v" * 43}
    r = await h.client.post("/auth/chat/exchange", json=ok_shape)
    assert r.status_code == 400 and r.json()["error"] == "invalid_code"


async def test_discovery_failures_are_remembered_with_backoff(h: Harness) -> None:
    """While the login host's discovery fails, unauthenticated requests do not each cause an outbound fetch."""
    import anyio

    h.counting.down = lambda r: r.url.path.endswith("/openid-configuration")
    answers = [(await h.login("portal", "/")).status_code for _ in range(30)]
    assert answers == [503] * 30
    assert h.counting.count("/openid-configuration") == 1
    h.counting.down = lambda r: False
    with anyio.fail_after(15):  # the first backoff is 2 s
        while (await h.login("portal", "/")).status_code == 503:
            await anyio.sleep(0.5)
    assert h.counting.count("/openid-configuration") == 2


async def test_sign_ins_started_from_one_address_are_rate_limited(h: Harness) -> None:
    """/auth/login is rate-limited per client address (flow.LOGINS_PER_MINUTE, here the same limiter at 3 a minute):
    the start over the rate is a 429 with Retry-After, sends nobody anywhere and writes nothing."""
    from entra_mcp.ratelimit import RateLimiter

    assert 1 <= flow_module.LOGINS_PER_MINUTE <= 60
    limited = SignIn.from_settings(h.settings, transport=counting_transport(h.emu), login_rate=RateLimiter(3))
    try:
        port = free_port()
        with serve(Starlette(routes=limited.routes()), port) as base:
            async with httpx.AsyncClient(base_url=base, timeout=20) as client:
                started = [await client.get("/auth/login", params={"flow": "portal", "return_to": "/"}) for _ in range(3)]
                written = len(limited.sessions.store)
                refused = await client.get("/auth/login", params={"flow": "portal", "return_to": "/"})
        assert [r.status_code for r in started] == [302] * 3
        assert refused.status_code == 429 and int(refused.headers["retry-after"]) >= 1, refused.text[:200]
        assert "location" not in refused.headers and "from this address" in refused.text
        assert len(limited.sessions.store) == written
    finally:
        limited.sessions.store.close()


async def test_pending_sign_ins_are_capped_in_total_across_addresses(h: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    """Besides the per-address cap, all addresses together hold at most flow.MAX_PENDING pending sign-ins (10,000;
    4 here): clients from 127.0.0.2 and 127.0.0.3, each far under its own cap, fill it; a third address is refused."""
    monkeypatch.setattr(flow_module, "MAX_PENDING", 4)
    base = str(h.client.base_url)

    async def start(address: str) -> httpx.Response:
        transport = httpx.AsyncHTTPTransport(local_address=address)
        async with httpx.AsyncClient(transport=transport, base_url=base, timeout=20) as client:
            return await client.get("/auth/login", params={"flow": "portal", "return_to": "/"})

    filled = [await start(a) for a in ("127.0.0.2", "127.0.0.2", "127.0.0.3", "127.0.0.3")]
    assert [r.status_code for r in filled] == [302] * 4
    refused = await start("127.0.0.4")
    assert refused.status_code == 429 and "in progress" in refused.text, refused.text[:200]
    assert h.sign_in_obj.flow.pending == 4  # type: ignore[attr-defined]


async def test_pending_sign_ins_lapse_and_free_their_place(h: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    """A sign-in that never comes back stops counting once its state lapses (flow.STATE_SECONDS, 10 minutes; 1 s
    here), so the caps cannot be held by abandoned sign-ins."""
    import anyio

    monkeypatch.setattr(flow_module, "STATE_SECONDS", 1.0)
    monkeypatch.setattr(flow_module, "MAX_PENDING_PER_CLIENT", 2)
    first, *rest = [await h.login("portal", "/") for _ in range(3)]
    assert [r.status_code for r in (first, *rest)] == [302, 302, 429]
    with anyio.fail_after(20):
        while (again := await h.login("portal", "/")).status_code == 429:
            await anyio.sleep(0.2)  # polling the server with a bounded deadline
    assert again.status_code == 302
    # and a lapsed sign-in can no longer complete
    user = next(iter(h.emu.tenant(0).users.values()))["userPrincipalName"]
    h.client.cookies.set("entra_mcp_signin", first.cookies["entra_mcp_signin"])
    late = await h.client.get(await h.authenticate(first.headers["location"], user))
    assert late.status_code == 400, late.text[:200]


async def test_a_chat_code_not_redeemed_in_time_is_refused(h: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    """The chat hand-over's one-time code lives sessions.CHAT_CODE_SECONDS (a minute; 0.5 s here): a code stolen
    from the address bar and tried later, even with the widget's verifier, gets nothing."""
    import anyio

    from entra_mcp.oidc import sessions as sessions_module

    assert 0 < sessions_module.CHAT_CODE_SECONDS <= 60
    monkeypatch.setattr(sessions_module, "CHAT_CODE_SECONDS", 0.5)
    done = await h.sign_in("chat", f"{WIDGET_ORIGIN}/chat")
    code = parse_qs(urlsplit(done.headers["location"]).fragment)["chat_code"][0]
    store = h.sign_in_obj.sessions.store  # type: ignore[attr-defined]
    assert store.get(sessions_module._CHAT_CODE_NS, code) is not None
    with anyio.fail_after(10):
        while store.get(sessions_module._CHAT_CODE_NS, code) is not None:
            await anyio.sleep(0.1)  # polling the store until the record lapses, bounded
    late = await h.client.post("/auth/chat/exchange", json={"code": code, "code_verifier": h.verifier},
                               headers={"Origin": WIDGET_ORIGIN})
    assert late.status_code == 400 and late.json()["error"] == "invalid_code", late.text[:200]
