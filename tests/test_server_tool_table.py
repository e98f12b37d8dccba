"""The tools as declared in server/tools.py, seen through a real MCP client: every tool publishes an outputSchema and
its answers conform to it, descriptions carry no leftover indentation, every text argument's limit is the same in
the schema and in the code, one time format (`...Z`) in every answer, and the documented answer shapes when the
applications area is disabled."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import anyio
import pytest
from _server_fixtures import ServerEnv, server_env  # noqa: F401 (fixture)
from mcp import Client

from entra_mcp.devtenant.generate import examples
from entra_mcp.mirror.store import MirrorStore
from entra_mcp.server.app import create_server
from entra_mcp.server.tools import TOOLS
from entra_mcp.views import TenantInfo, ViewProvider

pytestmark = pytest.mark.anyio

Z_TIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$")


def _times(value: Any, key: str = "") -> list[tuple[str, str]]:
    """(key, value) of every string field whose name says it is a time (asOf, ...DateTime, lastSuccess, ...At)."""
    out = []
    if isinstance(value, dict):
        for k, v in value.items():
            out += _times(v, k)
    elif isinstance(value, list):
        for v in value:
            out += _times(v, key)
    elif isinstance(value, str) and (key == "asOf" or key.endswith(("DateTime", "At")) or key == "lastSuccess"):
        out.append((key, value))
    return out


async def _answer(client: Client, tool: str, schemas: dict[str, Any], **args: Any) -> dict[str, Any]:
    """The tool's answer. mcp's Client checks it against the tool's published outputSchema (and raises when it does
    not conform); here also that every time in it is in the one format."""
    assert schemas[tool]
    with anyio.fail_after(30):
        result = await client.call_tool(tool, args)
    assert not result.is_error, result.content[0].text  # type: ignore[union-attr]
    answer = result.structured_content
    assert answer is not None
    bad = [(k, v) for k, v in _times(answer) if not Z_TIME.match(v)]
    assert not bad, f"{tool}: times not in the one format (...Z): {bad}"
    return answer


async def test_every_tool_is_one_declaration_with_an_output_schema(server_env: ServerEnv, tmp_path: Path) -> None:
    from entra_mcp.mirror.session_store import SessionStore
    from entra_mcp.oidc.sessions import SessionService
    from entra_mcp.oidc.validate import Identity

    t = server_env.tenant
    ex = examples(t)
    ceo = t.users[ex["ceo"]]
    app = next(iter(t.service_principals.values()))
    sessions = SessionService(SessionStore(tmp_path / "sessions"))
    token, _ = sessions.create(Identity(tid=t.tenant_id, oid=ceo["id"], name=ceo["displayName"],
                                        preferred_username=ceo["userPrincipalName"]), kind="chat")
    store = MirrorStore(server_env.cache_dir)
    # two tenants: the configured one, and one never synced (sync_status without `tenant` then lists both)
    views = ViewProvider([TenantInfo(server_env.name, t.tenant_id), TenantInfo("unsynced", "fabrikam.example")], store)
    try:
        async with Client(create_server(server_env.settings, views=views, sessions=sessions)) as client:
            listed = {tool.name: tool for tool in (await client.list_tools()).tools}
            assert set(listed) == {spec.name for spec in TOOLS}
            schemas = {}
            for name, tool in listed.items():
                assert tool.output_schema and tool.output_schema.get("type") == "object", name
                assert {"asOf", "findings"} <= set(tool.output_schema["properties"]), name
                assert tool.title, name
                lines = (tool.description or "").splitlines()
                assert lines and not any(line.startswith((" ", "\t")) for line in lines), f"{name}: indented description"
                schemas[name] = tool.output_schema

            upn = ceo["userPrincipalName"]
            await _answer(client, "lookup_user", schemas, query=upn, tenant=server_env.name)
            await _answer(client, "list_group_memberships", schemas, user=upn, tenant=server_env.name)
            await _answer(client, "list_group_members", schemas, group=ex["all_staff"], tenant=server_env.name)
            await _answer(client, "check_account_state", schemas, user=upn, tenant=server_env.name)
            await _answer(client, "get_app_principal", schemas, app=app["appId"], tenant=server_env.name)
            await _answer(client, "check_app_access", schemas, user=upn, app=app["appId"], tenant=server_env.name)
            await _answer(client, "get_ticket_identity_context", schemas, requester=upn,
                          ticket_text=f"Hi,\nplease check {app['displayName']} for me", tenant=server_env.name)
            session = await _answer(client, "validate_chat_session", schemas, session_token=token, claimed_user=upn)
            assert session["valid"] is True and session["asOf"].endswith("Z")
            both = await _answer(client, "sync_status", schemas)
            assert both["asOf"].endswith("Z") and [x["tenant"] for x in both["tenants"]] == [server_env.name, "unsynced"]
            never = await _answer(client, "lookup_user", schemas, query=upn, tenant="unsynced")
            assert never["matches"] is None and never["findings"][0]["code"] == "MIRROR_NOT_SYNCED"
    finally:
        store.close()


async def test_each_text_argument_has_one_limit(server_env: ServerEnv) -> None:
    """A value as long as the schema allows is never refused by the code for its length (a 300-character query
    passed the schema and was then refused), and one character more is refused by the schema."""
    store = MirrorStore(server_env.cache_dir)
    try:
        async with Client(create_server(server_env.settings, views=ViewProvider.from_settings(server_env.settings, store))) as client:
            tools = (await client.list_tools()).tools
            checked = 0
            for tool in tools:
                props = tool.input_schema["properties"]
                for name, prop in props.items():
                    limit = prop.get("maxLength") or next((a.get("maxLength") for a in prop.get("anyOf", []) if "maxLength" in a), None)
                    if not limit or name == "tenant":
                        continue
                    args = {k: "alex" for k in tool.input_schema.get("required", [])}
                    with anyio.fail_after(30):
                        at_limit = await client.call_tool(tool.name, {**args, name: "a" * limit})
                        over = await client.call_tool(tool.name, {**args, name: "a" * (limit + 1)})
                    text = at_limit.content[0].text if at_limit.is_error else ""  # type: ignore[union-attr]
                    assert "characters" not in text and "too long" not in text, f"{tool.name}.{name}: {text}"
                    assert over.is_error and f"at most {limit} characters" in over.content[0].text, f"{tool.name}.{name}"  # type: ignore[union-attr]
                    checked += 1
            assert checked >= 10
            long_query = await client.call_tool("lookup_user", {"query": "x" * 300})
            assert not long_query.is_error and long_query.structured_content["matchType"] == "none"  # type: ignore[index]
    finally:
        store.close()


class _Snapshots:
    """A SnapshotSource (the seam ViewProvider reads) over hand-built snapshots."""

    def __init__(self, **snapshots: Any) -> None:
        self.snapshots = snapshots

    def load_snapshot(self, tenant_name: str) -> Any:
        return self.snapshots.get(tenant_name)

    def version(self, tenant_name: str) -> int:
        return 1 if tenant_name in self.snapshots else 0

    def freshness(self, tenant_name: str) -> None:
        return None  # nothing newer than the snapshot itself


async def test_app_tools_answer_null_with_area_disabled_when_the_applications_area_is_off() -> None:
    """README and the lost_app_access playbook: `null` answers with AREA_DISABLED, not a tool error; and sync_status
    says which areas are disabled."""
    from _identity_fixtures import NOW, AreaStatus, areas, make_snapshot, user

    denied = AreaStatus(enabled=False, disabled_reason="Graph 403 Authorization_RequestDenied: grant Application.Read.All")
    snap = make_snapshot([user("ann", "Ann Example")], area_status=areas(
        applications=denied, service_principals=denied, app_role_assignments=denied))
    views = ViewProvider([TenantInfo("contoso", snap.tenant_id)], _Snapshots(contoso=snap))
    async with Client(create_server(None, views=views, now=lambda: NOW)) as client:
        principal = await client.call_tool("get_app_principal", {"app": "Zoom"})
        access = await client.call_tool("check_app_access", {"user": "ann@contoso.example", "app": "Zoom"})
        status = await client.call_tool("sync_status", {})
    assert not principal.is_error and not access.is_error
    p, a, s = principal.structured_content, access.structured_content, status.structured_content
    assert p and p["application"] is None and p["servicePrincipal"] is None and p["credentials"] is None
    assert a and a["hasAccess"] is None and a["assignments"] is None
    for answer in (p, a, s):
        assert any(f["code"] == "AREA_DISABLED" and "Application.Read.All" in f["message"] for f in answer["findings"])  # type: ignore[index]


def test_every_name_a_playbook_uses_exists() -> None:
    """Each name a prompt puts in backticks is a tool, a tool argument, a finding code, another prompt, or a field (or
    value) the tools' output schemas declare: a renamed field or finding cannot leave a playbook pointing at nothing."""
    import inspect
    import json

    from entra_mcp.identity.findings import FINDINGS
    from entra_mcp.server.prompts import _prompt_files

    tools = {t.name for t in TOOLS}
    arguments = {a for t in TOOLS for a in inspect.signature(t.run).parameters}
    schemas = " ".join(json.dumps(t.answer.model_json_schema()) for t in TOOLS)
    prompts = {file.removesuffix(".md"): text for file, text in _prompt_files()}
    assert {"sign_in_failure", "password_reset_eligibility", "lost_app_access", "verify_requester"} <= set(prompts)
    missing = []
    for name, text in prompts.items():
        for token in re.findall(r"`([^`\n]+)`", text):
            base = token.split("=")[0].split(":")[0].strip()
            if base in tools or base in arguments or base in FINDINGS or base in prompts:
                continue
            if not all(part in schemas for part in re.split(r"[.\[\]]+", base) if part):
                missing.append((name, token))
    assert not missing, missing
