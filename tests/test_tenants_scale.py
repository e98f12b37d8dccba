"""Hundreds of tenants, end to end: 200 small customer tenants in the emulator with ONE multi-tenant app consented in
each, `entra-mcp serve` as a process syncing them all through its scheduler (bounded concurrency, per-tenant request
budget), views loaded on demand and the cold ones dropped within the memory budget, answers equal after a reload, and
the server's open files bounded by max_open_mirrors, not by the tenant count."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from _harness import ServeProcess, free_port, wait_until
from entra_mcp.devtenant.customers import customer_state, provider_config
from entra_mcp.devtenant.generate import examples
from entra_mcp.devtenant.server import RunningEmulator, run_emulator

TENANTS = int(os.environ.get("ENTRA_MCP_FLEET_TENANTS", "200"))  # fewer for a quick local look
BUDGET = 30  # requests per 10 s per tenant: low, so the scheduler's parallel syncs must respect it
CONCURRENT = 16  # the budget, not the slots, bounds each tenant: more slots only shorten the first cycle
MAX_OPEN = 12  # mirrors with open SQLite files; far below the tenant count


def _tenant_name(i: int) -> str:
    return f"customer-{i:03d}"


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """The emulator with 200 tenants, and `entra-mcp serve` syncing them, until every tenant is synced."""
    root = tmp_path_factory.mktemp("fleet")
    state, app = customer_state(TENANTS, "small", seed=3)
    with run_emulator(state=state, state_dir=root / "emu") as emu:
        off = ("applications", "service_principals", "sign_in_activity", "auth_methods", "roles", "licenses", "risk",
               "devices", "conditional_access", "owners")
        defaults, entries = provider_config(emu, app, [_tenant_name(i) for i in range(TENANTS)], secret_env="PROVIDER_SECRET",
                                            sync={"max_requests_per_10s": BUDGET, **{a: False for a in off}})
        (root / "tenants.toml").write_text(entries, encoding="utf-8")
        port = free_port()
        config = root / "config.toml"
        config.write_text(f"""tenants_file = "tenants.toml"

[server]
cache_dir = {json.dumps(str(root / "cache"))}
port = {port}
view_memory_mb = 4
max_open_mirrors = {MAX_OPEN}

[scheduler]
max_concurrent_syncs = {CONCURRENT}

{defaults}""", encoding="utf-8")
        env = {**os.environ, "PROVIDER_SECRET": app.secrets[0].value}
        base = f"http://127.0.0.1:{port}"
        server = ServeProcess(config, env=env, log_path=root / "serve.log", base=base)
        try:
            server.wait_ready(timeout=60)

            def all_synced() -> bool:
                # the serve log says when each run is done (cheap to read); /healthz is asked once at the end: each
                # answer reads 200 mirrors' freshness, most of them past max_open_mirrors (a reconnection each)
                if server.log().count(": sync done in ") < TENANTS:
                    return False
                tenants = httpx.get(f"{base}/healthz", timeout=30).json()["tenants"]
                return len(tenants) == TENANTS and all(t["synced"] for t in tenants)

            started = time.monotonic()
            wait_until(all_synced, timeout=float(os.environ.get("ENTRA_MCP_FLEET_WAIT", "150")), what="every tenant synced by serve", proc=server.proc,
                       log_path=server.log_path)
            if os.environ.get("ENTRA_MCP_FLEET_DEBUG"):
                ticks = os.sysconf("SC_CLK_TCK")
                fields = Path(f"/proc/{server.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
                print(f"all synced in {time.monotonic() - started:.1f} s; serve CPU {(int(fields[11]) + int(fields[12])) / ticks:.1f} s;"
                      f" this process CPU {time.process_time():.1f} s")
            yield {"emu": emu, "server": server, "base": base, "app": app, "cache": root / "cache"}
        finally:
            server.stop()


async def _calls(base: str, calls: list[tuple[str, dict[str, Any]]]) -> list[tuple[bool, Any]]:
    out = []
    async with Client(streamable_http_client(f"{base}/mcp"), mode="legacy") as client:
        for tool, args in calls:
            r = await client.call_tool(tool, args)
            out.append((bool(r.is_error), r.structured_content if not r.is_error else r.content[0].text))  # type: ignore[union-attr]
    return out


def test_every_tenant_is_synced_within_its_request_budget(fleet: dict[str, Any]) -> None:
    emu: RunningEmulator = fleet["emu"]
    log = emu.runtime.requests
    counts = log.counts()
    assert len(counts) == TENANTS  # every tenant was read, with the one app's token of that tenant
    worst = max(log.max_in_window(tid, 10.0) for tid in counts)
    assert worst <= BUDGET, f"a tenant got {worst} requests within 10 s (budget {BUDGET})"
    health = httpx.get(f"{fleet['base']}/healthz", timeout=10).json()
    assert health["status"] == "ok" and {t["tenant"] for t in health["tenants"]} == {_tenant_name(i) for i in range(TENANTS)}


def test_cold_views_are_dropped_and_reloaded_with_equal_answers(fleet: dict[str, Any]) -> None:
    emu: RunningEmulator = fleet["emu"]
    picked = sorted({i * TENANTS // 20 for i in range(20)})  # 20 tenants: more than the 4 MB budget holds (~5 small views)

    def lookups(indexes: list[int]) -> list[tuple[str, dict[str, Any]]]:
        return [("lookup_user", {"query": examples(emu.tenant(i))["ceo"], "tenant": _tenant_name(i)}) for i in indexes]

    first = anyio.run(_calls, fleet["base"], lookups(picked))
    again = anyio.run(_calls, fleet["base"], lookups(picked))
    assert all(not err for err, _ in first), first[:2]
    for (_, a), i in zip(first, picked):
        ceo = emu.tenant(i).users[examples(emu.tenant(i))["ceo"]]
        assert a["matches"][0]["userPrincipalName"] == ceo["userPrincipalName"]
    assert first == again  # the views dropped in between were reloaded and answer the same
    server_log = fleet["server"].log()
    assert "to stay within the memory budget" in server_log


def test_an_unknown_tenant_among_hundreds_is_answered_with_close_matches(fleet: dict[str, Any]) -> None:
    cold = _tenant_name(TENANTS - 3)  # never asked about, and past the tenants loaded at start
    (err, text), (err2, text2) = anyio.run(_calls, fleet["base"], [
        ("lookup_user", {"query": "someone", "tenant": "customer-1999"}),
        ("sync_status", {"tenant": cold}),
    ])
    assert err and "unknown tenant 'customer-1999'" in text and "customer-199" in text
    assert text.count("customer-") < 8  # close matches, not the list of 200
    assert not err2 and text2["tenant"] == cold and text2["areas"]["users"]["lastSuccess"]
    assert f"tenant {cold}: view of" not in fleet["server"].log()  # sync_status read freshness, loaded no view


def _sqlite_files(pid: int, cache: Path) -> dict[str, int]:
    """The process's open descriptors on SQLite files under `cache`, by tenant directory."""
    out: dict[str, int] = {}
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = Path(os.readlink(f"/proc/{pid}/fd/{fd}"))
        except OSError:  # closed meanwhile
            continue
        if target.name.startswith("cache.db") and cache in target.parents:
            out[target.parent.name] = out.get(target.parent.name, 0) + 1
    return out


def test_open_files_stay_bounded_whatever_the_tenant_count(fleet: dict[str, Any]) -> None:
    """Every tenant synced and its freshness read (each /healthz), views of 14 tenants loaded: yet at most
    max_open_mirrors mirrors hold SQLite files open, where each used to keep its own from every thread (~3,700
    descriptors for 200 tenants)."""
    emu: RunningEmulator = fleet["emu"]
    pid = fleet["server"].proc.pid
    cache = fleet["cache"].resolve()
    picked = [TENANTS - 1 - i * 7 for i in range(MAX_OPEN + 2)]  # more views than mirrors may stay open
    anyio.run(_calls, fleet["base"], [("lookup_user", {"query": examples(emu.tenant(i))["ceo"], "tenant": _tenant_name(i)})
                                      for i in picked])
    assert httpx.get(f"{fleet['base']}/healthz", timeout=10).status_code == 200  # reads all 200 mirrors again
    held = _sqlite_files(pid, cache)
    threads = len(os.listdir(f"/proc/{pid}/task"))
    assert 0 < len(held) <= MAX_OPEN, sorted(held)
    assert sum(held.values()) <= MAX_OPEN * (2 * threads + 1), held  # a database and its WAL per thread, one shared memory
    total = len(os.listdir(f"/proc/{pid}/fd"))
    assert total < 100 + MAX_OPEN * (2 * threads + 1), total
