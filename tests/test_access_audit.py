"""Per-caller tenant access ([server.access]) and the audit trail ([server.audit], `entra-mcp audit`), end to end.

One two-tenant emulator and its mirror per module; the product's real HTTP app (entra mode, and api_key mode) served
by uvicorn on loopback ports, asked with a real mcp.Client over streamable HTTP; `entra-mcp serve` over stdio and
`entra-mcp call` as subprocesses; every one of them writes the same audit trail.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time
import tomllib
from collections.abc import AsyncIterator, Iterator
from contextlib import ExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import anyio
import httpx2
import pytest
from mcp import Client
from mcp.client.stdio import StdioServerParameters
from mcp.client.streamable_http import streamable_http_client
from pydantic import Field

from _auth_fixtures import WIDGET_ORIGIN, Harness, counting_transport
from _harness import ENTRA_MCP, free_port, serve_app
from _server_fixtures import write_ground_truth
from entra_mcp.audit.read import read_lines, verify
from entra_mcp.config import parse_settings
from entra_mcp.errors import ConfigError
from entra_mcp.mirror.store import MirrorStore
from entra_mcp.oidc.validate import Identity

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(240)]

KEYS = {"desk-all": "all-" + secrets.token_urlsafe(24), "desk-lookup": "lookup-" + secrets.token_urlsafe(24)}
UNNAMED_KEY = secrets.token_urlsafe(24)
SCOPE = "Identity.Investigate"


@dataclass
class Env:
    emu: Any
    root: Path
    settings: Any  # entra mode
    key_settings: Any  # api_key mode, same mirror and trail
    config_path: Path  # the entra-mode config as a file (stdio serve, call, audit)
    env: dict[str, str]
    entra_url: str
    key_url: str
    chat_a: str  # a chat session token of a tenant-A user
    chat_b: str  # ... of a tenant-B user
    names: tuple[str, str]
    audit_path: Path
    app: Any  # the entra-mode HTTP app

    def user(self, tenant: int, n: int = 0) -> dict[str, Any]:
        users = sorted((u for u in self.emu.tenant(tenant).users.values()
                        if u.get("accountEnabled", True) and u.get("userType", "Member") == "Member"),
                       key=lambda u: u["userPrincipalName"])
        return dict(users[n])

    def token(self, tenant: int, n: int = 0) -> str:
        t = self.emu.tenant(tenant)
        tokens = self.emu.tokens.issue_user_tokens(t, self.emu.portal_app(tenant), self.user(tenant, n),
                                                   audience=self.emu.api_app(0).client_id, scp=[SCOPE], scopes=[SCOPE])
        return str(tokens.access_token)


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return str(value)
    return json.dumps(value)


def write_toml(path: Path, data: dict[str, Any]) -> Path:
    """A config file from parsed data (sections and arrays of tables, as far as this module needs)."""
    lines: list[str] = []

    def table(prefix: str, d: dict[str, Any]) -> None:
        scalars = {k: v for k, v in d.items() if not isinstance(v, dict) and not (isinstance(v, list) and v and isinstance(v[0], dict))}
        lines.append(f"[{prefix}]")
        lines.extend(f"{k} = {_toml(v)}" for k, v in scalars.items())
        for k, v in d.items():
            if isinstance(v, dict):
                table(f"{prefix}.{k}", v)
            elif isinstance(v, list) and v and isinstance(v[0], dict):
                for item in v:
                    lines.append(f"[[{prefix}.{k}]]")
                    lines.extend(f"{ik} = {_toml(iv)}" for ik, iv in item.items() if not isinstance(iv, dict))

    for key, value in data.items():
        if isinstance(value, dict):
            table(key, value)
        elif isinstance(value, list):
            for item in value:
                lines.append(f"[[{key}]]")
                lines.extend(f"{k} = {_toml(v)}" for k, v in item.items() if not isinstance(v, dict))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    from entra_mcp.devtenant.server import run_emulator
    from entra_mcp.server.app import create_server
    from entra_mcp.server.auth import build_hooks
    from entra_mcp.server.http import create_http_app
    from entra_mcp.views import ViewProvider

    root = tmp_path_factory.mktemp("access-audit")
    with ExitStack() as stack:
        emu = stack.enter_context(run_emulator(tenants=2, seed=5, size="small"))
        cache = root / "cache"
        port, key_port = free_port(), free_port()
        data = tomllib.loads(emu.config_toml(None, cache, with_sign_in=True))
        names = (emu.tenant_name(0), emu.tenant_name(1))
        data["server"].update({"public_url": f"http://127.0.0.1:{port}", "port": port, "transport": "http"})
        data["server"]["auth"]["allowed_tenants"] = [emu.tenant(1).tenant_id]
        data["server"]["access"] = {"rules": [
            {"name": "all", "api_keys": ["desk-all"], "tenants": ["*"]},
            {"name": "lookup-only", "api_keys": ["desk-lookup"], "tenants": [names[0]], "tools": ["lookup_user"]},
        ]}
        data["server"]["audit"] = {"path": str(root / "trail" / "audit.jsonl")}
        data["oidc"]["allowed_return_to"] = [f"http://127.0.0.1:{port}/", f"{WIDGET_ORIGIN}/", f"{WIDGET_ORIGIN}/chat"]
        emu.add_redirect_uri(f"http://127.0.0.1:{port}/auth/callback", None)
        settings = parse_settings(data)
        key_data = json.loads(json.dumps(data))
        key_data["server"].update({"port": key_port, "public_url": f"http://127.0.0.1:{key_port}"})
        key_data["server"]["auth"] = {"mode": "api_key", "api_keys_env": "AUDIT_TEST_KEYS"}
        key_data.pop("oidc")
        key_settings = parse_settings(key_data)
        config_path = write_toml(root / "config.toml", {**data, "server": {**data["server"], "transport": "stdio"}})

        env = {**emu.secret_env(None, with_sign_in=True),
               "AUDIT_TEST_KEYS": ",".join(f"{k}={v}" for k, v in KEYS.items()) + "," + UNNAMED_KEY}
        saved = {k: os.environ.get(k) for k in env}
        os.environ.update(env)
        stack.callback(lambda: [os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)
                                for k, v in saved.items()])
        store = MirrorStore(cache)
        stack.callback(store.close)
        for i, name in enumerate(names):
            write_ground_truth(store, name, emu.tenant(i))

        hooks = build_hooks(settings)
        views = ViewProvider.from_settings(settings, store)
        app = create_http_app(settings, create_server(settings, views=views, sessions=hooks.sessions), views=views,
                              extra_routes=hooks.routes, protect=hooks.protect)
        base = stack.enter_context(serve_app(app, port))
        key_hooks = build_hooks(key_settings)
        key_views = ViewProvider.from_settings(key_settings, store)
        key_app = create_http_app(key_settings, create_server(key_settings, views=key_views), views=key_views,
                                  extra_routes=key_hooks.routes, protect=key_hooks.protect)
        key_base = stack.enter_context(serve_app(key_app, key_port))

        assert hooks.sessions is not None
        ua, ub = _user(emu, 0), _user(emu, 1)
        chat_a, _ = hooks.sessions.create(Identity(emu.tenant(0).tenant_id, ua["id"], ua.get("displayName"),
                                                   ua["userPrincipalName"]), kind="chat")
        chat_b, _ = hooks.sessions.create(Identity(emu.tenant(1).tenant_id, ub["id"], ub.get("displayName"),
                                                   ub["userPrincipalName"]), kind="chat")
        yield Env(emu, root, settings, key_settings, config_path, env, base + "/mcp", key_base + "/mcp", chat_a, chat_b,
                  names, settings.server.audit.resolved_path(cache), app)
        # the hooks' HTTP clients lived on uvicorn's loop, which is gone by now; their connections went with it


def _user(emu: Any, tenant: int, n: int = 0) -> dict[str, Any]:
    users = sorted((u for u in emu.tenant(tenant).users.values()
                    if u.get("accountEnabled", True) and u.get("userType", "Member") == "Member"),
                   key=lambda u: u["userPrincipalName"])
    return dict(users[n])


@asynccontextmanager
async def http_client(url: str, credential: str) -> AsyncIterator[Client]:
    async with httpx2.AsyncClient(headers={"Authorization": f"Bearer {credential}"}, timeout=30) as http:
        async with Client(streamable_http_client(url, http_client=http), mode="legacy") as client:
            yield client


async def ask(client: Client, tool: str, **args: Any) -> tuple[bool, Any]:
    """(is_error, structured content or the error text)."""
    with anyio.fail_after(30):
        r = await client.call_tool(tool, args)
    if r.is_error:
        return True, r.content[0].text  # type: ignore[union-attr]
    return False, r.structured_content


def records(env: Env) -> list[dict[str, Any]]:
    return [line.record for line in read_lines(env.audit_path) if line.record is not None]


def _cli(env: Env, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    """`entra-mcp COMMAND ARGS` in this process: (exit code, stdout)."""
    from entra_mcp.cli import main

    import logging

    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    capsys.readouterr()
    try:
        code = main(["--config", str(env.config_path), *args])
    finally:  # main() points logging at this test's captured stderr: give the next tests theirs back
        root.handlers[:], root.level = handlers, level
    return code, capsys.readouterr().out


# ---------------------------------------------------------------- access


async def test_a_caller_of_tenant_a_cannot_see_tenant_b_by_name_id_or_chat_session(env: Env) -> None:
    a_name, b_name = env.names
    b_user, b_tid = env.user(1), env.emu.tenant(1).tenant_id
    async with http_client(env.entra_url, env.token(0)) as client:
        # by name: refused exactly like a tenant that does not exist
        err_b = await ask(client, "lookup_user", query=b_user["userPrincipalName"], tenant=b_name)
        fake = b_name[:-1] + ("x" if b_name[-1] != "x" else "y")
        err_fake = await ask(client, "lookup_user", query=b_user["userPrincipalName"], tenant=fake)
        assert err_b[0] and err_fake[0]
        assert err_b[1].replace(b_name, "<T>") == err_fake[1].replace(fake, "<T>")
        assert a_name in err_b[1]
        # by tenant id
        err_id = await ask(client, "check_account_state", user=b_user["id"], tenant=b_tid)
        other_guid = "00000000-0000-4000-8000-" + b_tid[-12:]
        err_guid = await ask(client, "check_account_state", user=b_user["id"], tenant=other_guid)
        assert err_id[0] and err_guid[0]
        assert err_id[1].replace(b_tid, "<T>") == err_guid[1].replace(other_guid, "<T>")
        # by the user's own identifiers, tenant left out: answered from A only, nothing of B
        for query in (b_user["id"], b_user["userPrincipalName"]):
            is_error, answer = await ask(client, "lookup_user", query=query)
            text = json.dumps(answer)
            assert b_user["id"] not in text and b_user["userPrincipalName"] not in text and b_name not in text
        # by chat session: a session of tenant B reads exactly like one that does not exist
        _, of_b = await ask(client, "validate_chat_session", session_token=env.chat_b)
        _, unknown = await ask(client, "validate_chat_session", session_token=secrets.token_urlsafe(32))
        assert of_b["valid"] is False and of_b == unknown
        _, of_a = await ask(client, "validate_chat_session", session_token=env.chat_a)
        assert of_a["valid"] is True and of_a["identity"]["tid"] == env.emu.tenant(0).tenant_id
        # sync_status and the tenants resource show only A
        _, status = await ask(client, "sync_status")
        assert status["tenant"] == a_name and b_name not in json.dumps(status)
        listed = await client.read_resource("entra://tenants")
        assert [t["tenant"] for t in json.loads(listed.contents[0].text)] == [a_name]  # type: ignore[union-attr]
        card = await client.read_resource(f"entra://{a_name}/users/{env.user(0, 8)['id']}")
        assert env.user(0, 8)["userPrincipalName"] in card.contents[0].text  # type: ignore[union-attr]
        read = [r for r in records(env) if r["event"] == "resource_read"][-1]
        assert read["resource"] == "users" and read["objects"] == [env.user(0, 8)["id"]] and read["tenant"] == a_name
        # and its own tenant works
        is_error, mine = await ask(client, "lookup_user", query=env.user(0)["userPrincipalName"])
        assert not is_error and mine["matchType"] == "exact"
    async with http_client(env.entra_url, env.token(1)) as client:  # the other way round
        is_error, mine = await ask(client, "lookup_user", query=b_user["userPrincipalName"])
        assert not is_error and mine["matches"][0]["id"] == b_user["id"]
        is_error, text = await ask(client, "lookup_user", query="x", tenant=a_name)
        assert is_error and a_name not in text.split(".", 1)[1]


async def test_api_keys_by_name_tools_hidden_and_refused(env: Env) -> None:
    a_name, b_name = env.names
    async with http_client(env.key_url, KEYS["desk-lookup"]) as client:
        tools = [t.name for t in (await client.list_tools()).tools]
        assert tools == ["lookup_user"]
        refused = await ask(client, "check_account_state", user=env.user(0)["id"])
        missing = await ask(client, "no_such_tool", user=env.user(0)["id"])
        assert refused[0] and missing[0]
        assert refused[1].replace("check_account_state", "<X>") == missing[1].replace("no_such_tool", "<X>")
        is_error, text = await ask(client, "lookup_user", query="x", tenant=b_name)
        assert is_error and b_name in text.split(".")[0] and b_name not in text.split(".", 1)[1]
        is_error, answer = await ask(client, "lookup_user", query=env.user(0)["userPrincipalName"])
        assert not is_error and answer["matchType"] == "exact"
    async with http_client(env.key_url, KEYS["desk-all"]) as client:
        _, status = await ask(client, "sync_status")
        assert [t["tenant"] for t in status["tenants"]] == list(env.names)
    # an unnamed key with no rule, and two tenants configured: nothing (unmatched_api_keys defaults to "none")
    async with http_client(env.key_url, UNNAMED_KEY) as client:
        is_error, text = await ask(client, "lookup_user", query=env.user(0)["userPrincipalName"])
        assert is_error and "no tenant is available to this caller" in text
        assert a_name not in text and b_name not in text


def test_bad_access_config_names_the_key_and_the_fix(env: Env) -> None:
    from entra_mcp.server.access import AccessPolicy

    base = env.settings.model_dump(mode="json")
    bad_tenant = json.loads(json.dumps(base))
    bad_tenant["server"]["access"] = {"rules": [{"api_keys": ["k"], "tenants": [env.names[0] + "z"]}]}
    with pytest.raises(ConfigError, match=r"server\.access\.rules\[0\]\.tenants .*did you mean"):
        parse_settings(bad_tenant)
    roles_alone = json.loads(json.dumps(base))
    roles_alone["server"]["access"] = {"rules": [{"roles": ["Desk"], "tenants": ["*"]}]}
    with pytest.raises(ConfigError, match="tids"):
        parse_settings(roles_alone)
    bad_tool = json.loads(json.dumps(base))
    bad_tool["server"]["access"] = {"rules": [{"api_keys": ["k"], "tenants": ["*"], "tools": ["lookup_usr"]}]}
    with pytest.raises(ConfigError, match=r"server\.access\.rules\[0\]\.tools .*lookup_user"):
        AccessPolicy.from_settings(parse_settings(bad_tool), ["lookup_user", "sync_status"])


def test_api_key_names_are_backward_compatible(monkeypatch: pytest.MonkeyPatch) -> None:
    from entra_mcp.config import AuthSettings

    padded = secrets.token_urlsafe(30)[:38] + "=="  # a base64 key with padding is a bare key, not name=key
    monkeypatch.setenv("K", f"desk-a={KEYS['desk-all']},{UNNAMED_KEY}, {padded}")
    named = AuthSettings(mode="api_key", api_keys_env="K").named_api_keys()
    assert named[0] == ("desk-a", KEYS["desk-all"])
    assert named[1][1] == UNNAMED_KEY and named[1][0].startswith("key-") and UNNAMED_KEY not in named[1][0]
    assert named[2][1] == padded
    monkeypatch.setenv("K", f"a={KEYS['desk-all']},a={UNNAMED_KEY}")
    with pytest.raises(ConfigError, match="each key needs its own name") as err:
        AuthSettings(mode="api_key", api_keys_env="K").named_api_keys()
    assert UNNAMED_KEY not in str(err.value)


# ---------------------------------------------------------------- audit


async def test_every_http_tool_call_gives_exactly_one_record(env: Env) -> None:
    before = len(records(env))
    upn = env.user(0, 1)["userPrincipalName"]
    async with http_client(env.entra_url, env.token(0, 2)) as client:
        await ask(client, "lookup_user", query=upn, ticket_id="INC0012345")
        await ask(client, "check_account_state", user=upn)
        await ask(client, "lookup_user", query="nobody-at-all@nowhere.example", tenant="nope")  # an error
        bad = await ask(client, "lookup_user", query=upn, ticket_id="bad id; DROP")  # refused by the schema
        assert bad[0] and "DROP" not in bad[1]
        await ask(client, "lookup_user", query=upn, limit=0)  # out of range
    after = records(env)[before:]
    assert len(after) == 5, after
    me = env.user(0, 2)
    assert {r["caller"]["oid"] for r in after} == {me["id"]}
    assert {r["caller"]["upn"] for r in after} == {me["userPrincipalName"]}
    assert {r["transport"] for r in after} == {"http"}
    assert len({r["session"] for r in after}) == 1 and all(len(r["session"]) == 24 for r in after)
    first = after[0]
    assert first["tool"] == "lookup_user" and first["outcome"] == "ok" and first["ticketId"] == "INC0012345"
    assert first["tenant"] == env.names[0] and env.user(0, 1)["id"] in first["objects"]
    assert first["client"]["name"] and first["latencyMs"] >= 0
    assert after[1]["tool"] == "check_account_state" and after[1]["objects"][0] == env.user(0, 1)["id"]
    assert after[2]["outcome"] == "error" and after[2]["errorCode"] == "NOT_FOUND"
    assert after[3]["outcome"] == "error" and "ticketId" not in after[3]
    assert after[4]["outcome"] == "error"
    # a playbook fetched is one record too: who, which, outcome; never its arguments
    async with http_client(env.entra_url, env.token(0, 2)) as client:
        prompt = (await client.list_prompts()).prompts[0]
        args = {a.name: "SECRET-TICKET-TEXT 4711" for a in prompt.arguments or ()}
        await client.get_prompt(prompt.name, args)
        from mcp.shared.exceptions import MCPError

        with pytest.raises(MCPError, match="has no argument.*'no_such_argument'"):
            await client.get_prompt(prompt.name, {**args, "no_such_argument": "x"})
    prompts = [r for r in records(env)[before + 5:] if r["event"] == "prompt_get"]
    assert [(r["prompt"], r["outcome"]) for r in prompts] == [(prompt.name, "ok"), (prompt.name, "error")], prompts
    assert prompts[0]["caller"]["oid"] == me["id"] and prompts[0]["transport"] == "http" and prompts[0]["latencyMs"] >= 0
    assert "SECRET-TICKET-TEXT" not in env.audit_path.read_text()


async def test_every_stdio_tool_call_gives_exactly_one_record(env: Env) -> None:
    before = len(records(env))
    upn = env.user(0, 3)["userPrincipalName"]
    params = StdioServerParameters(command=str(ENTRA_MCP), args=["--config", str(env.config_path), "serve", "--no-sync"],
                                   env={**{k: v for k, v in os.environ.items() if k != "ENTRA_MCP_CONFIG"}, **env.env})
    async with Client(params, read_timeout_seconds=60) as client:
        for tool, args in (("lookup_user", {"query": upn, "tenant": env.names[0]}), ("sync_status", {"tenant": env.names[1]}),
                           ("check_account_state", {"user": "nobody@nowhere.example", "tenant": env.names[0]})):
            await ask(client, tool, **args)
    stdio = records(env)[before:]
    assert [r["tool"] for r in stdio] == ["lookup_user", "sync_status", "check_account_state"]
    assert {r["transport"] for r in stdio} == {"stdio"} and {r["caller"]["kind"] for r in stdio} == {"local"}
    assert stdio[1]["tenant"] == env.names[1]  # the local operator sees every tenant


def test_an_entra_mcp_call_gives_exactly_one_record(env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    before = len(records(env))
    upn = env.user(0, 3)["userPrincipalName"]
    code, _ = _cli(env, capsys, "call", f"--tenant={env.names[0]}", "lookup_user", f"query={upn}", "ticket_id=CHG-77")
    assert code == 0
    call = records(env)[before:]
    assert len(call) == 1 and call[0]["transport"] == "call" and call[0]["ticketId"] == "CHG-77"


async def test_no_secret_token_or_session_id_in_the_trail(env: Env) -> None:
    async with httpx2.AsyncClient(headers={"Authorization": f"Bearer {KEYS['desk-all']}"}, timeout=30) as http:
        async with Client(streamable_http_client(env.key_url, http_client=http), mode="legacy") as client:
            await ask(client, "validate_chat_session", session_token=env.chat_a)
            await ask(client, "check_reset_eligibility", user=env.user(0)["id"], chat_session=env.chat_a,
                      tenant=env.names[0])
        # the raw MCP session ids this module's clients used never appear; their hashes do
    token = env.token(0, 4)
    async with http_client(env.entra_url, token) as client:
        await ask(client, "lookup_user", query=env.user(0)["userPrincipalName"])
    text = b"".join(p.read_bytes() for p in env.audit_path.parent.iterdir() if p.is_file()).decode()
    secrets_used = [*KEYS.values(), UNNAMED_KEY, env.chat_a, env.chat_b, token, *env.env.values()]
    for s in secrets_used:
        assert s not in text, "a secret reached the audit trail"
    assert "eyJ" not in text  # no JWT of any kind
    rec = [r for r in records(env) if r.get("caller", {}).get("keyName") == "desk-all"]
    assert rec and all(r["caller"] == {"kind": "api_key", "keyName": "desk-all"} for r in rec)


async def test_sign_in_events_are_recorded_without_secrets(env: Env) -> None:
    before = len(records(env))
    h = Harness(env.emu, env.settings, env.app, counting_transport(env.emu))
    try:
        upn = env.user(0, 7)["userPrincipalName"]
        done = await h.sign_in("portal", user=upn)
        assert done.status_code == 303, done.text
        cookie = next(v for k, v in h.client.cookies.items() if "session" in k.lower())
        bad = await h.client.get("/auth/callback", params={"code": "x" * 20, "state": "y" * 40})
        assert bad.status_code == 400
        chat = await h.chat_token(upn)
        out = await h.client.post("/auth/logout", headers={"Authorization": f"Bearer {chat}",
                                                           "Origin": env.settings.server.resolved_public_url})
        assert out.status_code == 200 and out.json()["signedOut"] is True
    finally:
        await h.aclose()
    got = [(r["event"], r["outcome"], r.get("flow")) for r in records(env)[before:]]
    assert got == [("sign_in", "ok", "portal"), ("sign_in", "failed", None), ("sign_in", "ok", "chat"),
                   ("chat_session", "ok", "chat"), ("sign_out", "ok", "chat"), ("sign_out", "ok", "portal")], got
    ok = records(env)[before]
    assert ok["caller"]["upn"] == upn and ok["caller"]["oid"] == env.user(0, 7)["id"] and len(ok["session"]) == 24
    text = env.audit_path.read_text()
    assert cookie not in text and chat not in text


async def test_audit_command_answers_who_looked_up_a_user(env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    target = env.user(0, 5)
    me = env.user(0, 6)
    async with http_client(env.entra_url, env.token(0, 6)) as client:
        await ask(client, "check_account_state", user=target["userPrincipalName"], ticket_id="INC-5")
    code, out = _cli(env, capsys, "audit", "--user", target["userPrincipalName"], "--since", "1h", "--json")
    assert code == 0
    found = json.loads(out)
    assert found["user"][0]["id"] == target["id"]
    assert [(r["caller"]["upn"], r["ticketId"]) for r in found["records"]] == [(me["userPrincipalName"], "INC-5")]
    code, out = _cli(env, capsys, "audit", "--caller", me["userPrincipalName"])
    assert code == 0 and "check_account_state" in out and "ticketId=INC-5" in out
    assert _cli(env, capsys, "audit", "--user", target["id"], "--until", "2000-01-01")[1].count("tool_call") == 0
    assert _cli(env, capsys, "audit", "--since", "yesterday-ish")[0] == 2
    code, out = _cli(env, capsys, "audit", "--verify")
    assert code == 0 and "chain intact" in out


def test_verify_names_an_edited_and_a_deleted_line(env: Env, tmp_path: Path) -> None:
    from entra_mcp.audit.trail import AuditTrail

    trail = AuditTrail(tmp_path / "a.jsonl")
    for n in range(8):
        trail.record("tool_call", {"tool": "lookup_user", "objects": [f"id-{n}"]})
    assert verify(trail.path).ok
    lines = trail.path.read_bytes().splitlines(keepends=True)
    edited = lines.copy()
    edited[3] = edited[3].replace(b"id-3", b"id-9")
    trail.path.write_bytes(b"".join(edited))
    v = verify(trail.path)
    assert not v.ok and v.broken_line == 5 and "line 4" in (v.reason or "")
    trail.path.write_bytes(b"".join(lines[:2] + lines[3:]))  # line 3 deleted
    v = verify(trail.path)
    assert not v.ok and v.broken_line == 3
    trail.path.write_bytes(b"".join(lines[:-1]))  # the last line cut off
    v = verify(trail.path)
    assert not v.ok and "end" in (v.reason or "")
    trail.path.write_bytes(b"".join(lines[1:]))  # the first line removed
    assert not verify(trail.path).ok
    trail.path.write_bytes(b"".join(lines))
    assert verify(trail.path).ok


def test_rotation_and_retention_keep_the_chain(tmp_path: Path) -> None:
    from entra_mcp.audit.trail import AuditTrail, rotated_files

    clock = [time.time()]
    trail = AuditTrail(tmp_path / "audit.jsonl", max_bytes=4096, keep_files=3, retention_days=30,
                       clock=lambda: clock[0])
    for n in range(120):
        assert trail.record("tool_call", {"tool": "lookup_user", "objects": [f"{n:04d}" * 8]})
    kept = rotated_files(trail.path)
    assert len(kept) == 3 and all(p.stat().st_size <= 4096 for p in kept + [trail.path])
    v = verify(trail.path)
    assert v.ok, v.reason
    assert v.notes and "retention" in v.notes[0]
    retained = [line.record for line in read_lines(trail.path) if line.record and line.record["event"] == "audit_retention"]
    assert retained
    # age: files older than retention_days go too (the newest rotated file always stays)
    for p in kept[:-1]:
        os.utime(p, (clock[0] - 40 * 86400, clock[0] - 40 * 86400))
    trail.max_bytes = trail.path.stat().st_size + 10  # the next record rotates
    trail.record("tool_call", {"tool": "sync_status"})
    # 4 rotated: the oldest goes by count, the next (40 days old) by age; the fresh one and the newest stay
    assert len(rotated_files(trail.path)) == 2 and verify(trail.path).ok
    # a rotated file removed by hand (no retention record) is caught
    trail.max_bytes = 4096
    for _ in range(60):
        trail.record("tool_call", {"tool": "lookup_user", "objects": ["x" * 40]})
    files = rotated_files(trail.path)
    assert len(files) >= 2
    files[-1].unlink()
    assert not verify(trail.path).ok


def test_several_processes_append_to_one_trail(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    code = ("import sys; from pathlib import Path; from entra_mcp.audit.trail import AuditTrail\n"
            "t = AuditTrail(Path(sys.argv[1]), max_bytes=20000)\n"
            "for n in range(150): t.record('tool_call', {'tool': 'lookup_user', 'objects': [sys.argv[2] + str(n)]})\n")
    procs = [subprocess.Popen([sys.executable, "-c", code, str(path), tag]) for tag in ("p", "q", "r")]
    for p in procs:
        assert p.wait(timeout=120) == 0
    v = verify(path)
    assert v.ok, v.reason
    got = [line.record for line in read_lines(path) if line.record and line.record["event"] == "tool_call"]
    assert len(got) == 450


def test_group_rules_for_a_token_whose_groups_overflowed_use_the_mirror(env: Env) -> None:
    """A token over 200 groups carries the overage claim and no `groups`: the policy takes the person's transitive
    groups from the mirror of their own tenant (server/app.py `_groups_of`, real views over this module's mirror);
    a caller whose tenant is not mirrored matches no group rule, and the Access says why."""
    import uuid

    from entra_mcp.oidc.validate import group_claims
    from entra_mcp.server.access import OVERAGE_UNMATCHED, AccessPolicy, Caller
    from entra_mcp.server.app import _groups_of, _tenant_of_tid
    from entra_mcp.views import ViewProvider

    t = env.emu.tenant(0)
    uid, gid = next((u, g) for u in sorted(t.users) for g in t.member_of(u))
    outer = next((p for p in t.member_of(gid)), None)  # a group `gid` is nested in, when there is one
    data = env.settings.model_dump(mode="json")
    data["server"]["access"] = {"rules": [{"name": "by-group", "tids": [t.tenant_id], "groups": [outer or gid],
                                           "tenants": [env.names[1]]}]}
    settings = parse_settings(data)
    store = MirrorStore(settings.server.cache_dir)
    try:
        views = ViewProvider.from_settings(settings, store)
        policy = AccessPolicy.from_settings(settings, ["lookup_user"], _tenant_of_tid(views), _groups_of(views))
        # the claims of an overage token, read as oidc/validate.py reads them
        _, groups, overage = group_claims({"_claim_names": {"groups": "src1"}, "groups": ["not-trusted"],
                                           "_claim_sources": {"src1": {"endpoint": "https://graph.windows.net/x"}}})
        assert groups == () and overage is True
        assert group_claims({"hasgroups": True})[2] is True and group_claims({"groups": [gid]}) == ((), (gid,), False)
        mirrored = policy.for_caller(Caller("oauth", f"{t.tenant_id}/{uid}", t.tenant_id, uid, groups_overage=True))
        assert mirrored.tenants == frozenset({env.names[1]}) and "groups from the mirror" in mirrored.why
        without = policy.for_caller(Caller("oauth", f"{t.tenant_id}/{uid}", t.tenant_id, uid))  # no groups, no overage
        assert without.tenants == frozenset({env.names[0]}) and without.why == "home tenant"
        # entra mode: an access token carries the API app's roles assigned to the user (devtenant/id_claims.py)
        from entra_mcp.devtenant.id_claims import define_app_role, service_principal_id
        from entra_mcp.devtenant.tokens import unverified_claims

        api = env.emu.api_app(0).client_id
        role = define_app_role(t, api, "Desk.Auditor")
        t.add_app_role_assignment(service_principal_id(t, api), uid, role)
        user = t.users[uid]
        claims = unverified_claims(env.emu.tokens.issue_user_tokens(t, env.emu.portal_app(0), user, audience=api,
                                                                    scp=[SCOPE], scopes=[SCOPE]).access_token)
        assert claims["roles"] == ["Desk.Auditor"] and "groups" not in claims
        stranger = str(uuid.uuid4())
        refused = policy.for_caller(Caller("oauth", f"{stranger}/{uid}", stranger, uid, groups_overage=True))
        assert refused.tenants == frozenset() and refused.why.endswith(OVERAGE_UNMATCHED)
    finally:
        store.close()


async def test_mcp_param_headers_do_not_reveal_a_forbidden_tool(env: Env) -> None:
    """MCP 2026-07-28 lets a tool mirror an argument into an `Mcp-Param-*` header, and the SDK answers a mismatch with
    HTTP 400 before any middleware. For a tool the caller may not use that 400 would say the tool exists: a forbidden
    and an unknown tool, called with the same mismatching header, are refused alike (a tool error, same words)."""
    from entra_mcp.server.app import create_server
    from entra_mcp.server.auth import build_hooks
    from entra_mcp.server.http import create_http_app
    from entra_mcp.views import ViewProvider

    settings = env.key_settings
    port = free_port()
    data = settings.model_dump(mode="json")
    data["server"].update({"port": port, "public_url": f"http://127.0.0.1:{port}"})
    settings = parse_settings(data)
    store = MirrorStore(settings.server.cache_dir)
    hooks = build_hooks(settings)
    views = ViewProvider.from_settings(settings, store)
    server = create_server(settings, views=views, audit=False)
    server.add_tool(probe, name="header_probe")
    app = create_http_app(settings, server, views=views, extra_routes=hooks.routes, protect=hooks.protect)

    async def answer(key: str, tool: str) -> tuple[Any, ...]:
        async def mismatch(request: Any) -> None:  # after the SDK client mirrored the right value, if it knew the tool
            request.headers["Mcp-Param-User"] = "someone-else"

        async with httpx2.AsyncClient(headers={"Authorization": f"Bearer {key}"}, timeout=30,
                                      event_hooks={"request": [mismatch]}) as http:
            async with Client(streamable_http_client(f"http://127.0.0.1:{port}/mcp", http_client=http),
                              mode="2026-07-28") as client:
                try:
                    r = await client.call_tool(tool, {"user": "alice"})
                except Exception as exc:  # the SDK's 400 surfaces as an exception
                    return ("raised", type(exc).__name__, str(exc).replace(tool, "<X>"))
                return ("result", r.is_error, r.content[0].text.replace(tool, "<X>"))  # type: ignore[union-attr]

    try:
        with serve_app(app, port):
            allowed = await answer(KEYS["desk-all"], "header_probe")  # a caller the tool is not forbidden to: 400
            assert allowed[0] == "raised" and "Mcp-Param-User" in allowed[2], allowed
            forbidden = await answer(KEYS["desk-lookup"], "header_probe")
            unknown = await answer(KEYS["desk-lookup"], "no_such_tool")
            assert forbidden == unknown and forbidden[:2] == ("result", True), (forbidden, unknown)
    finally:
        store.close()


def probe(user: Annotated[str, Field(json_schema_extra={"x-mcp-header": "User"})]) -> str:
    """A tool whose `user` argument is mirrored into the Mcp-Param-User header."""
    return user
