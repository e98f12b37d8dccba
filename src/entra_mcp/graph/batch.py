"""Graph's JSON batching ($batch) for GET requests: many small reads in few round trips.

`batch_get(client, urls, area=...)` sends the relative URLs in POST /$batch requests of at most 20 (Graph's limit),
concurrently, and answers each URL with its objects (the `value` of the item's body, every @odata.nextLink followed)
or None when the object is gone (404). Per item (docs/graph-facts-batch.md):
- 200: the answer; a nextLink inside an item is followed with ordinary GETs (a Pager);
- 404: None (the object was deleted meanwhile);
- 403: PermissionDenied with the item's Graph code (the area is then disabled, as for any 403);
- 429, 503, 504 and 424 (failed dependency), and items Graph left out of its answer: sent again in the next round,
  after a back-off honouring the largest Retry-After of the round's items; throttled items count in the client's
  `throttled` figure and every round's back-off draws from the client's retry budget (TransientError when spent);
- any other status: GraphError with the status and Graph code.
The POST itself goes through GraphClient.request: its own 429/5xx retries, token refresh and error mapping apply.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import anyio

from entra_mcp.errors import GraphError, PermissionDenied
from entra_mcp.graph.client import GraphClient, parse_retry_after
from entra_mcp.graph.paging import Pager

BATCH_LIMIT = 20  # requests per $batch (Graph's limit)
_RETRY_ITEM = frozenset({429, 503, 504, 424})


def _error_code(body: dict[str, Any]) -> str | None:
    err = body.get("error")
    code = err.get("code") if isinstance(err, dict) else None
    return code if isinstance(code, str) else None


def _first(group: BaseExceptionGroup) -> BaseException:
    """The first error a task group collected (an error of ours before anything else)."""
    leaves: list[BaseException] = []
    stack: list[BaseException] = [group]
    while stack:
        e = stack.pop(0)
        if isinstance(e, BaseExceptionGroup):
            stack[:0] = list(e.exceptions)
        else:
            leaves.append(e)
    return next((e for e in leaves if isinstance(e, GraphError)), leaves[0] if leaves else group)


async def batch_get(
    client: GraphClient,
    urls: Sequence[str],
    *,
    area: str | None = None,
    progress: Callable[[int], None] | None = None,
) -> dict[str, list[dict[str, Any]] | None]:
    """url -> its objects (all pages), or None for 404. `urls` are relative to the Graph version root
    (e.g. "/servicePrincipals/{id}/appRoleAssignedTo?$top=999"). `progress(n)` gets the count answered after
    each round."""
    out: dict[str, list[dict[str, Any]] | None] = {}
    pending = list(dict.fromkeys(urls))
    attempt = 0
    while pending:
        chunks = [pending[i:i + BATCH_LIMIT] for i in range(0, len(pending), BATCH_LIMIT)]
        retry: list[str] = []
        waits: list[float] = []

        async def one(chunk: list[str]) -> None:
            reqs = [{"id": str(n), "method": "GET", "url": url} for n, url in enumerate(chunk)]
            body = await client.post("/$batch", json={"requests": reqs}, area=area, weight=len(reqs))
            answered: set[str] = set()
            for resp in body.get("responses") or []:
                if not isinstance(resp, dict):
                    continue
                try:
                    url = chunk[int(resp.get("id"))]  # type: ignore[arg-type]
                except (TypeError, ValueError, IndexError):
                    continue
                answered.add(url)
                try:
                    status = int(resp.get("status") or 0)
                except (TypeError, ValueError):
                    status = 0
                found = resp.get("body")
                rbody: dict[str, Any] = found if isinstance(found, dict) else {}
                if status == 200:
                    rows = [v for v in rbody.get("value") or [] if isinstance(v, dict)]
                    nxt = rbody.get("@odata.nextLink")
                    if isinstance(nxt, str):
                        async for page in Pager(client, nxt, area=area):
                            rows.extend(page)
                    out[url] = rows
                elif status == 404:
                    out[url] = None
                elif status == 403:
                    raise PermissionDenied(f"Graph refused {url.split('?', 1)[0]} in $batch", status=403,
                                           graph_code=_error_code(rbody))
                elif status in _RETRY_ITEM:
                    if status == 429:
                        client.stats.throttled += 1
                    given = resp.get("headers")
                    headers: dict[str, Any] = given if isinstance(given, dict) else {}
                    ra = next((v for k, v in headers.items() if str(k).lower() == "retry-after"), None)
                    w = parse_retry_after(str(ra)) if ra is not None else None
                    if w is not None:
                        waits.append(w)
                    retry.append(url)
                else:
                    code = _error_code(rbody)
                    raise GraphError(f"Graph answered HTTP {status} ({code}) for {url.split('?', 1)[0]} in $batch",
                                     status=status, graph_code=code)
            retry.extend(url for url in chunk if url not in answered)

        try:
            async with anyio.create_task_group() as tg:
                for chunk in chunks:
                    tg.start_soon(one, chunk)
        except BaseExceptionGroup as group:  # the task group wraps: callers catch PermissionDenied / GraphError
            raise _first(group) from None
        if progress is not None:
            progress(len(out))
        pending = retry
        if pending:
            attempt += 1
            await client.back_off(attempt, max(waits) if waits else None, f"{len(pending)} $batch items throttled",
                                  throttled=bool(waits))
    return out


__all__ = ["BATCH_LIMIT", "batch_get"]
