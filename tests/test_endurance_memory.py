"""Memory over time: a view reload must not pin garbage.

The server reloads its view after every sync (every interval_minutes). The reload indexes the mirror with the cyclic
collector off and then called gc.freeze(), which moves EVERY object the collector tracks into the permanent
generation, garbage and in-flight requests included. Cyclic garbage that is waiting for a collection at that moment (a finished request's
task and stream objects, an exception and its frames from a retried Graph call...) can then never be collected: the
30-minute soak measured the server growing ~22 MB per reload (163 MB -> 441 MB in 12 minutes, medium tenant,
32 clients). This test leaves one unreachable reference cycle pending, reloads a view, and checks that the cycle can
still be collected, and one unreachable only after the reload (a request that was in flight) too.
"""

from __future__ import annotations

import gc
import weakref
from pathlib import Path
from typing import Iterator

import pytest

from _server_fixtures import write_ground_truth


class _Node:
    other: "_Node"


@pytest.fixture
def collector_restored() -> Iterator[None]:
    enabled = gc.isenabled()
    try:
        yield
    finally:
        gc.unfreeze()  # gc.freeze() is process-wide: give the rest of the run an ordinary collector
        if enabled:
            gc.enable()
        gc.collect()


def test_a_view_reload_leaves_pending_garbage_collectable(tmp_path: Path, collector_restored: None) -> None:
    from entra_mcp.devtenant.generate import generate_state
    from entra_mcp.mirror.store import MirrorStore
    from entra_mcp.views import TenantInfo, ViewProvider

    tenant = next(iter(generate_state("small", 3, 1).tenants.values()))
    store = MirrorStore(tmp_path / "cache")
    try:
        write_ground_truth(store, "contoso", tenant)
        views = ViewProvider([TenantInfo("contoso", tenant.tenant_id, 15)], store, background_reload=False)

        gc.disable()  # garbage made between two collections, as a busy server always has some
        a, b = _Node(), _Node()
        a.other, b.other = b, a
        pending = weakref.ref(a)
        del a, b
        c, d = _Node(), _Node()  # a request in flight during the reload: alive now, garbage once it ends
        c.other, d.other = d, c
        in_flight = weakref.ref(c)

        view = views.current("contoso")  # the reload after a sync
        assert view.view is not None
        del c, d  # the request ends

        gc.enable()
        gc.collect()
        assert pending() is None, "the reload froze pending garbage: it can never be collected (a leak on every sync)"
        assert in_flight() is None, "the reload froze a live request's objects: once garbage they are never collected"
    finally:
        store.close()
