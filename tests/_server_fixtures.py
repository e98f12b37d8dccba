"""Fixtures for the server tests: an emulated tenant, its mirror on disk, a config pointing at both.

The mirror is filled by the product's own sync against the emulator over HTTPS when the sync package provides
`run_sync`; the expected answers come from the emulator's ground truth (its state and `examples()`).
"""

from __future__ import annotations

import os
import sys
import tomllib
from collections import defaultdict
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

import pytest

from _auth_fixtures import serve_product
from _harness import ENTRA_MCP, free_port
from entra_mcp.config import Settings, parse_settings
from entra_mcp.mirror.snapshot import AreaStatus
from entra_mcp.mirror.store import MirrorStore

VENV_BIN = Path(sys.executable).parent


@dataclass
class ServerEnv:
    emulator: Any
    tenant: Any  # the EmulatedTenant (ground truth)
    name: str  # its name in the config
    root: Path
    cache_dir: Path
    config_path: Path
    settings: Settings
    env: dict[str, str] = field(default_factory=dict)  # the secret variables the config names

    def subprocess_env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k != "ENTRA_MCP_CONFIG"}
        env.update(self.env)
        env["PYTHONUNBUFFERED"] = "1"
        return env

    def user(self, user_id: str) -> dict[str, Any]:
        return self.tenant.users[user_id]


def config_data(emulator: Any, cache_dir: Path, **server: Any) -> dict[str, Any]:
    data = tomllib.loads(emulator.config_toml(0, cache_dir=cache_dir))
    data.setdefault("server", {}).update(server)
    return data


def write_config(path: Path, data: dict[str, Any]) -> Path:
    import json

    q = json.dumps
    lines = ["[server]"]
    for k, v in data["server"].items():
        lines.append(f"{k} = {q(v) if isinstance(v, (str, list)) else str(v).lower() if isinstance(v, bool) else v}")
    for t in data["tenants"]:
        lines += ["", "[[tenants]]"]
        lines += [f"{k} = {q(v)}" for k, v in t.items() if not isinstance(v, dict)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def sync_mirror(settings: Settings, store: MirrorStore, *, full: bool = True) -> None:
    """Fill the mirror with the product's own sync, over HTTPS from the emulator, and insist it worked."""
    import anyio

    from entra_mcp.sync.engine import sync_tenant

    for tenant in settings.tenants:
        result = anyio.run(lambda: sync_tenant(tenant, store, full=full))
        assert result.error is None, result.error


def write_ground_truth(store: MirrorStore, name: str, tenant: Any) -> None:
    now = datetime.now(timezone.utc)
    users, sign_in = {}, {}
    for uid, u in tenant.users.items():
        record = {k: v for k, v in u.items() if k != "signInActivity"}
        record["managerId"] = tenant.managers.get(uid)
        users[uid] = record
        if u.get("signInActivity") is not None:
            sign_in[uid] = u["signInActivity"]
    by_resource: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for a in tenant.app_role_assignments.values():
        by_resource[a["resourceId"]].append(dict(a))
    data = {
        "users": {"users": users},
        "sign_in_activity": {"sign_in": sign_in},
        "groups": {"groups": {k: dict(v) for k, v in tenant.groups.items()}, "members": {k: dict(v) for k, v in tenant.members.items()}},
        "applications": {"applications": {k: dict(v) for k, v in tenant.applications.items()}},
        "service_principals": {"service_principals": {k: dict(v) for k, v in tenant.service_principals.items()}},
        "app_role_assignments": {"assignments": dict(by_resource)},
        "domains": {"domains": {d["id"]: dict(d) for d in tenant.domains}},
    }
    with store.writer(name) as w:
        w.set_tenant(tenant_id=tenant.tenant_id, interval_minutes=15)
        for area, payload in data.items():  # the directory areas; later areas (devices, sign-in events...) read as never synced
            count = sum(len(c) for c in payload.values())
            w.commit_full(area, payload, delta_link=None, status=AreaStatus(enabled=True, last_success=now, object_count=count, mode="full"))


@contextmanager
def serve_http(env: ServerEnv, **server: Any) -> Iterator[str]:
    """The HTTP transport over env's mirror, served by uvicorn in a thread on a free port; yields the base URL.
    `server` overrides [server] keys (allowed_hosts, max_body_bytes...)."""
    import anyio

    data = env.settings.model_dump(mode="python")
    data["server"].update({"port": free_port(), **server})
    if "auth" in server:
        data["server"]["auth"] = {**env.settings.server.auth.model_dump(), **server["auth"]}
    settings = parse_settings(data)
    with serve_product(settings) as (base, hooks):
        try:
            yield base
        finally:
            anyio.run(hooks.aclose)


@pytest.fixture(scope="session")
def server_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerEnv]:
    """A small emulated tenant, synced once into a mirror, with a config file for `entra-mcp serve`."""
    from entra_mcp.devtenant.server import run_emulator

    root = tmp_path_factory.mktemp("server")
    with run_emulator(size="small", seed=7) as emulator:
        cache_dir = root / "cache"
        data = config_data(emulator, cache_dir, port=free_port())
        config_path = write_config(root / "config.toml", data)
        settings = parse_settings(data, source=config_path)
        env = emulator.secret_env(0)
        saved = {k: os.environ.get(k) for k in env}
        os.environ.update(env)
        try:
            store = MirrorStore(cache_dir)
            try:
                sync_mirror(settings, store)
            finally:
                store.close()
            yield ServerEnv(emulator, emulator.tenant(0), settings.tenants[0].name, root, cache_dir, config_path, settings, env)
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v


__all__ = ["ENTRA_MCP", "ServerEnv", "config_data", "free_port", "serve_http", "server_env", "sync_mirror", "write_config", "write_ground_truth"]
