"""The Graph client's retry arithmetic and error typing, and paging, with httpx.MockTransport (the behaviour against
the real emulator is in test_sync_emulator.py)."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta, timezone
from typing import Any, Callable

import anyio
import httpx
import pytest

from entra_mcp.errors import AuthError, DeltaTokenExpired, GraphError, NotFound, PermissionDenied, TransientError
from entra_mcp.graph.client import REQUEST_GATE, GraphClient, RetryPolicy, parse_retry_after
from entra_mcp.graph.paging import Pager, PagingLoop

HOST = "https://graph.example"
NOW = datetime(2026, 11, 26, 12, 0, 0, tzinfo=timezone.utc)


class Tokens:
    """A token source like TokenProvider: the same token until a forced refresh."""

    def __init__(self) -> None:
        self.issued = 0
        self.forced = 0
        self.current: str | None = None

    async def token(self, *, force_refresh: bool = False) -> str:
        if force_refresh or self.current is None:
            self.issued += 1
            self.current = f"tok{self.issued}"
        self.forced += force_refresh
        return self.current


def make(handler: Callable[[httpx.Request], httpx.Response], **kw: Any) -> tuple[GraphClient, list[float], Tokens]:
    sleeps: list[float] = []

    async def sleep(s: float) -> None:
        sleeps.append(s)

    tokens = Tokens()
    client = GraphClient(HOST, tokens, transport=httpx.MockTransport(handler), sleep=sleep, wall_clock=lambda: NOW,
                         random=lambda: 1.0, **kw)
    return client, sleeps, tokens


def run(coro_fn: Callable[[], Any]) -> Any:
    return anyio.run(coro_fn)


def test_parse_retry_after_forms() -> None:
    assert parse_retry_after("10") == 10.0
    assert parse_retry_after("2.128") == pytest.approx(2.128)
    assert parse_retry_after("Thu, 26 Nov 2026 12:00:07 GMT", now=NOW) == pytest.approx(7.0)
    assert parse_retry_after("Thu, 26 Nov 2026 11:00:00 GMT", now=NOW) == 0.0
    assert parse_retry_after(None) is None and parse_retry_after("soon") is None and parse_retry_after("-1") is None


def test_retry_after_is_honoured_in_every_form() -> None:
    answers = iter([
        httpx.Response(429, headers={"Retry-After": "2.128"}, json={"error": {"code": "TooManyRequests"}}),
        httpx.Response(429, headers={"Retry-After": "3"}),
        httpx.Response(503, headers={"Retry-After": "Thu, 26 Nov 2026 12:00:05 GMT"}),
        httpx.Response(504),
        httpx.Response(200, json={"value": [1]}),
    ])
    client, sleeps, _ = make(lambda req: next(answers))
    body = run(lambda: client.get("/users"))
    assert body == {"value": [1]}
    # 504 without Retry-After: the second failure that is not throttling -> back-off 0.5 * 2**1 (jitter factor 1.0)
    assert sleeps == [pytest.approx(2.128), 3.0, pytest.approx(5.0), 1.0]
    assert client.stats.requests == 5 and client.stats.retries == 4 and client.stats.throttled == 2


def test_each_request_sent_carries_a_client_request_id_made_after_its_gate() -> None:
    """Graph's client-request-id on every attempt: a fresh UUID version 7 whose time is when the request gate let the
    attempt through (a request held at the gate carries the time it was let go, not the time it was asked for)."""
    clock = {"now": NOW}
    seen: list[str] = []
    answers = iter([httpx.Response(503, headers={"Retry-After": "0"}), httpx.Response(200, json={"value": []})])

    def handler(req: httpx.Request) -> httpx.Response:
        seen.append(req.headers["client-request-id"])
        return next(answers)

    async def gate() -> None:  # a gate that takes 10 s (on the injected wall clock) to let each request go
        clock["now"] += timedelta(seconds=10)

    client = GraphClient(HOST, Tokens(), transport=httpx.MockTransport(handler), sleep=lambda s: anyio.sleep(0),
                         wall_clock=lambda: clock["now"], random=lambda: 1.0)

    async def go() -> None:
        REQUEST_GATE.set(gate)
        await client.get("/users")

    run(go)
    ids = [uuid.UUID(x) for x in seen]
    assert len(set(ids)) == 2 and all(u.version == 7 and u.variant == uuid.RFC_4122 for u in ids)
    sent_at = [datetime.fromtimestamp((u.int >> 80) / 1000, timezone.utc) for u in ids]
    assert sent_at == [NOW + timedelta(seconds=10), NOW + timedelta(seconds=20)]


def test_dropped_connections_are_retried() -> None:
    calls = {"n": 0}

    def handler(req: httpx.Request) -> httpx.Response:
        calls["n"] += 1
        if calls["n"] == 1:
            raise httpx.RemoteProtocolError("peer closed connection without sending complete message body")
        if calls["n"] == 2:
            raise httpx.ReadError("connection reset")
        return httpx.Response(200, json={"ok": True})

    client, sleeps, _ = make(handler)
    assert run(lambda: client.get("/users")) == {"ok": True}
    assert len(sleeps) == 2 and sleeps[0] == 0.5 and sleeps[1] == 1.0


def test_retry_budget_and_attempts_run_out() -> None:
    client, sleeps, _ = make(lambda req: httpx.Response(503), retry=RetryPolicy(max_attempts=3, budget=100))
    with pytest.raises(TransientError, match="gave up after 3 attempts"):
        run(lambda: client.get("/users"))
    client2, _, _ = make(lambda req: httpx.Response(429, headers={"Retry-After": "1"}), retry=RetryPolicy(max_attempts=50, budget=4))
    with pytest.raises(TransientError, match="retry budget"):
        run(lambda: client2.get("/users"))
    assert client2.stats.retries == 4


def test_401_gets_one_fresh_token_and_one_retry() -> None:
    seen: list[str] = []

    def handler(req: httpx.Request) -> httpx.Response:
        seen.append(req.headers["Authorization"])
        if req.headers["Authorization"] == "Bearer tok1":
            return httpx.Response(401, json={"error": {"code": "InvalidAuthenticationToken", "message": "Lifetime validation failed, the token is expired."}})
        return httpx.Response(200, json={"value": []})

    client, _, tokens = make(handler)
    assert run(lambda: client.get("/users")) == {"value": []}
    assert seen == ["Bearer tok1", "Bearer tok2"] and tokens.forced == 1

    client2, _, tokens2 = make(lambda req: httpx.Response(401, json={"error": {"code": "InvalidAuthenticationToken"}}))
    with pytest.raises(AuthError):
        run(lambda: client2.get("/users"))
    assert tokens2.forced == 1 and client2.stats.requests == 2


@pytest.mark.parametrize(("status", "body", "exc", "text"), [
    (403, {"error": {"code": "Authorization_RequestDenied", "message": "Insufficient privileges"}}, PermissionDenied, "grant Application.Read.All"),
    (410, {"error": {"code": "Gone"}}, DeltaTokenExpired, "full resync"),
    (400, {"error": {"code": "syncStateNotFound"}}, DeltaTokenExpired, "syncStateNotFound"),
    (400, {"error": {"code": "resyncRequired"}}, DeltaTokenExpired, "resyncRequired"),
    (404, {"error": {"code": "Request_ResourceNotFound"}}, NotFound, "Request_ResourceNotFound"),
    (400, {"error": {"code": "BadRequest", "message": "nope"}}, GraphError, "BadRequest"),
])
def test_errors_are_typed(status: int, body: dict[str, Any], exc: type[Exception], text: str) -> None:
    client, sleeps, _ = make(lambda req: httpx.Response(status, json=body))
    with pytest.raises(exc, match=text) as info:
        run(lambda: client.get("/applications"))
    assert sleeps == []
    if isinstance(info.value, PermissionDenied):
        assert info.value.graph_code == "Authorization_RequestDenied"


def test_sign_in_refusals_name_the_cause() -> None:
    body = {"error": {"code": "Authentication_MSGraphPermissionMissing", "message": "Calling principal does not have required MSGraph permissions AuditLog.Read.All"}}
    client, _, _ = make(lambda req: httpx.Response(403, json=body))
    with pytest.raises(PermissionDenied, match="grant AuditLog.Read.All"):
        run(lambda: client.get("/users", params={"$select": "id,signInActivity"}))


def test_links_to_other_hosts_are_refused() -> None:
    client, _, _ = make(lambda req: httpx.Response(200, json={}))
    with pytest.raises(GraphError, match="another host"):
        run(lambda: client.get("https://evil.example/v1.0/users"))


def _pages(pages: dict[str, dict[str, Any]]) -> Callable[[httpx.Request], httpx.Response]:
    def handler(req: httpx.Request) -> httpx.Response:
        key = req.url.params.get("$skiptoken") or "first"
        return httpx.Response(200, json=pages[key])
    return handler


async def _collect(client: GraphClient, path: str) -> tuple[list[Any], Pager]:
    pager = Pager(client, path)
    out: list[Any] = []
    async for page in pager:
        out.extend(page)
    return out, pager


def test_paging_follows_empty_pages_and_reads_delta_link_from_the_last_page_only() -> None:
    pages = {
        "first": {"value": [{"id": "1"}], "@odata.nextLink": f"{HOST}/v1.0/users/delta?$skiptoken=a", "@odata.deltaLink": "early-ignored"},
        "a": {"value": [], "@odata.nextLink": f"{HOST}/v1.0/users/delta?$skiptoken=b"},
        "b": {"value": [{"id": "2"}, {"id": "3"}], "@odata.deltaLink": f"{HOST}/v1.0/users/delta?$deltatoken=z"},
    }
    client, _, _ = make(_pages(pages))
    items, pager = run(lambda: _collect(client, "/users/delta"))
    assert [i["id"] for i in items] == ["1", "2", "3"]
    assert pager.delta_link == f"{HOST}/v1.0/users/delta?$deltatoken=z" and pager.pages == 3 and pager.complete


def test_paging_detects_a_loop_and_keeps_no_delta_link() -> None:
    pages = {
        "first": {"value": [{"id": "1"}], "@odata.nextLink": f"{HOST}/v1.0/users?$skiptoken=a"},
        "a": {"value": [{"id": "2"}], "@odata.nextLink": f"{HOST}/v1.0/users?$skiptoken=a"},
    }
    client, _, _ = make(_pages(pages))
    pager_box: list[Pager] = []

    async def go() -> None:
        pager = Pager(client, "/users")
        pager_box.append(pager)
        async for _ in pager:
            pass

    with pytest.raises(PagingLoop):
        run(go)
    assert pager_box[0].delta_link is None and not pager_box[0].complete


def test_a_429_pauses_every_request_of_the_client() -> None:
    """The resource-unit bucket is per app and tenant: after a 429 the other requests wait out its Retry-After too
    (plus up to 20% jitter) instead of burning the bucket again."""
    throttled_once = {"done": False}

    def handler(req: httpx.Request) -> httpx.Response:
        if req.url.path.endswith("/users") and not throttled_once["done"]:
            throttled_once["done"] = True
            return httpx.Response(429, headers={"Retry-After": "5"})
        return httpx.Response(200, json={})

    client, sleeps, _ = make(handler, clock=lambda: 100.0)

    async def go() -> None:
        await client.get("/users")  # throttled: waits 5 s itself
        await client.get("/groups")  # the client is paused until 105: waits 5 s * (1 + 0.2 * jitter 1.0)

    run(go)
    assert sleeps == [5.0, 6.0]


def test_batch_answers_each_item_and_sends_only_the_throttled_ones_again() -> None:
    """graph/batch.py ($batch, docs/graph-facts-batch.md): at most 20 requests a POST; per item 200 (its nextLink
    followed), 404 -> None, 429 with Retry-After and an item Graph left out -> sent again in the next round after the
    largest Retry-After (counted as throttled); 403 -> PermissionDenied with Graph's code."""
    import json

    from entra_mcp.graph.batch import BATCH_LIMIT, batch_get

    posts: list[list[str]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        if request.method == "GET":  # the nextLink inside an item
            return httpx.Response(200, json={"value": [{"id": "p2"}]})
        assert request.url.path == "/v1.0/$batch"
        items = json.loads(request.content)["requests"]
        assert len(items) <= BATCH_LIMIT and all(i["method"] == "GET" for i in items)
        posts.append([i["url"] for i in items])
        first = len(posts) <= 2  # the first round is two POSTs (29 URLs)
        out = []
        for i in items:
            url = i["url"]
            if url == "/a/throttled" and first:
                out.append({"id": i["id"], "status": 429, "headers": {"Retry-After": "7"},
                            "body": {"error": {"code": "TooManyRequests"}}})
            elif url == "/a/left-out" and first:
                continue
            elif url == "/a/gone":
                out.append({"id": i["id"], "status": 404, "body": {"error": {"code": "Request_ResourceNotFound"}}})
            elif url == "/a/paged":
                out.append({"id": i["id"], "status": 200, "body": {
                    "value": [{"id": "p1"}], "@odata.nextLink": f"{HOST}/v1.0/a/paged?$skiptoken=2"}})
            else:
                out.append({"id": i["id"], "status": 200, "body": {"value": [{"id": url}]}})
        return httpx.Response(200, json={"responses": out})

    client, sleeps, _ = make(handler)
    urls = [f"/a/{n}" for n in range(25)] + ["/a/throttled", "/a/left-out", "/a/gone", "/a/paged"]
    out = run(lambda: batch_get(client, urls))
    assert sorted(map(len, posts)) == [2, 9, 20] and sorted(posts[-1]) == ["/a/left-out", "/a/throttled"]
    assert out["/a/gone"] is None and [o["id"] for o in out["/a/paged"]] == ["p1", "p2"]  # type: ignore[union-attr]
    assert out["/a/3"] == [{"id": "/a/3"}] and out["/a/throttled"] == [{"id": "/a/throttled"}]
    assert out["/a/left-out"] == [{"id": "/a/left-out"}] and len(out) == len(urls)
    assert client.stats.throttled == 1 and sleeps and max(sleeps) >= 7

    def refusing(request: httpx.Request) -> httpx.Response:
        items = json.loads(request.content)["requests"]
        return httpx.Response(200, json={"responses": [
            {"id": i["id"], "status": 403 if i["url"] == "/b/secret" else 200,
             "body": {"error": {"code": "Authorization_RequestDenied"}} if i["url"] == "/b/secret" else {"value": []}}
            for i in items]})

    client, _, _ = make(refusing)
    with pytest.raises(PermissionDenied) as err:
        run(lambda: batch_get(client, ["/b/open", "/b/secret"]))
    assert err.value.graph_code == "Authorization_RequestDenied" and "/b/secret" in str(err.value)
