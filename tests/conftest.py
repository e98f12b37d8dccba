"""Shared fixtures: the local Entra ID + Graph emulator, served over real HTTPS on 127.0.0.1.

`emulator` (session scope)
    One emulator for the whole run: `run_emulator(size="small", seed=1)`. Treat it as READ-ONLY: do not change its
    state, faults, keys or grants (other tests see the same instance). It is a `RunningEmulator`:
      emu.base_url / emu.login_url / emu.graph_url   "https://127.0.0.1:PORT" (all three equal)
      emu.ca_bundle                                  Path of ca.pem: msal `verify=str(...)`, httpx `verify=ssl ctx`
      emu.state, emu.runtime, emu.tokens, emu.faults, emu.login
      emu.tenant(i), emu.sync_app(i), emu.portal_app(i), emu.api_app(i)    (i = tenant index, default 0)
      emu.config_toml(tenant_index=0, cache_dir=...), emu.secret_env()     the product's config and its secret env
      emu.ssl_context()                                                    an SSLContext trusting only ca.pem

`fresh_emulator` (function scope)
    A factory for tests that change state or inject faults: `emu = fresh_emulator(**run_emulator_kwargs)` starts a
    new emulator (same keyword arguments as `run_emulator`, e.g. `faults=FaultPlan(throttle_next=3)`, `tenants=2`,
    `state=my_state`) and stops it when the test ends. Start ~0.3 s for a small tenant.

No process outlives the run: the test process adopts the processes its children leave behind (Linux's child
subreaper), and at the end of the session kills whatever is still running below it, naming each on stderr (a test
that killed a helper on time-out but not the servers the helper started would otherwise leave them serving and
syncing, and slowing every test after it).

msal and REQUESTS_CA_BUNDLE: `requests` lets REQUESTS_CA_BUNDLE / CURL_CA_BUNDLE from the environment override a
session's `verify` (psf/requests#3829), so msal's `verify=ca_bundle` is silently ignored when either is set. The
fixtures do not hide this; product code must not rely on `verify=` alone (see tests/test_devtenant_login.py).
"""

from __future__ import annotations

import ctypes
import sys
from contextlib import ExitStack
from typing import Any, Callable, Iterator

import pytest

from entra_mcp.devtenant.server import RunningEmulator, run_emulator


def _adopt_orphans() -> None:
    """prctl(PR_SET_CHILD_SUBREAPER): orphaned descendants are re-parented to this process instead of init."""
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0)
        except (OSError, AttributeError):  # no prctl: leftovers go to init, as before
            pass


_adopt_orphans()


def pytest_sessionfinish(session: pytest.Session) -> None:
    """After every fixture is torn down: kill what is still running below this process, and say so. (Under
    pytest-xdist each worker does this for its own tests; the controller's children are the workers themselves.)"""
    import psutil

    if getattr(session.config.option, "dist", "no") != "no" and not hasattr(session.config, "workerinput"):
        return
    left = psutil.Process().children(recursive=True)
    for proc in left:
        try:
            sys.stderr.write(f"\nkilling a process the tests left running: {' '.join(proc.cmdline())[:300]}\n")
            proc.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(left, timeout=10)


# The slowest modules, slowest first (per-module totals of `--durations=0`, whole suite, 2026-12-02). The whole suite
# runs each module on one xdist worker (--dist loadfile) in collection order (scripts/test.sh: --no-loadscope-reorder),
# so the long ones start first and the short ones fill in at the end: both workers finish together, instead of one
# starting a two-minute module while the other has nothing left. Modules not listed follow in their usual order.
SLOWEST_FIRST = (
    "test_crash_drills.py", "test_endurance_soak.py", "test_first_hour.py", "test_server_command.py",
    "test_tenants_scale.py", "test_hostile_http.py", "test_devtenant_graph_models.py", "test_cluster_failover.py",
    "test_sign_ins.py", "test_quickstart.py", "test_sync_emulator.py", "test_tenants_command.py",
    "test_hostile_http_bounds.py", "test_replicas.py", "test_devtenant_signins.py", "test_oauth_end_to_end.py",
    "test_serve_process.py", "test_access_end_to_end.py", "test_identity_generated.py", "test_server_http_load.py",
    "test_access_audit.py",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The slowest modules first (SLOWEST_FIRST); the order of the tests inside a module is kept (a stable sort)."""
    rank = {name: i for i, name in enumerate(SLOWEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))


@pytest.fixture(scope="session")
def anyio_backend() -> str:
    """`@pytest.mark.anyio` tests run on asyncio (what uvicorn and the product use)."""
    return "asyncio"


@pytest.fixture(scope="session")
def emulator() -> Iterator[RunningEmulator]:
    with run_emulator(size="small", seed=1) as emu:
        yield emu


@pytest.fixture
def fresh_emulator() -> Iterator[Callable[..., RunningEmulator]]:
    with ExitStack() as stack:

        def start(**kwargs: Any) -> RunningEmulator:
            return stack.enter_context(run_emulator(**kwargs))

        yield start
