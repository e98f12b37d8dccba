"""Following Graph's paging: @odata.nextLink to the end, the deltaLink from the last page only.

A Pager is an async iterator of pages (lists of objects). Empty pages that still carry a nextLink are followed; a
nextLink seen twice is an error (a server bug would otherwise loop forever); `delta_link` is set only once the last
page (the one without a nextLink) has been read, so a run cut short never yields a bookmark.
"""

from __future__ import annotations

from typing import Any, AsyncIterator, Mapping

from entra_mcp.errors import GraphError
from entra_mcp.graph.client import GraphClient


class PagingLoop(GraphError):
    code = "GRAPH_PAGING_LOOP"


class Pager:
    def __init__(
        self,
        client: GraphClient,
        path_or_url: str,
        *,
        params: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
        area: str | None = None,
        max_pages: int = 1_000_000,
    ) -> None:
        self._client = client
        self._first = path_or_url
        self._params = params
        self._headers = headers
        self._area = area
        self._max_pages = max_pages
        self.delta_link: str | None = None
        self.pages = 0
        self.items = 0
        self.complete = False

    def __aiter__(self) -> AsyncIterator[list[dict[str, Any]]]:
        return self._run()

    async def _run(self) -> AsyncIterator[list[dict[str, Any]]]:
        seen: set[str] = set()
        url: str | None = self._first
        params = self._params
        while url is not None:
            body = await self._client.get(url, params=params, headers=self._headers, area=self._area)
            params = None  # nextLinks carry the whole query
            self.pages += 1
            value = body.get("value")
            items = [v for v in value if isinstance(v, dict)] if isinstance(value, list) else []
            self.items += len(items)
            next_link = body.get("@odata.nextLink")
            if next_link is not None and not isinstance(next_link, str):
                raise GraphError(f"Graph returned a malformed @odata.nextLink on {self._first}")
            if next_link is None:
                dl = body.get("@odata.deltaLink")
                self.delta_link = dl if isinstance(dl, str) else None
                self.complete = True
            elif next_link in seen:
                raise PagingLoop(f"Graph returned the same @odata.nextLink twice while paging {self._first}; stopping")
            elif self.pages >= self._max_pages:
                raise PagingLoop(f"more than {self._max_pages} pages while paging {self._first}; stopping")
            else:
                seen.add(next_link)
            if items:
                yield items
            url = next_link


async def fetch_all(client: GraphClient, path: str, *, params: Mapping[str, str] | None = None, area: str | None = None) -> list[dict[str, Any]]:
    """Every object of a (non-delta) list."""
    out: list[dict[str, Any]] = []
    async for page in Pager(client, path, params=params, area=area):
        out.extend(page)
    return out


__all__ = ["Pager", "PagingLoop", "fetch_all"]
