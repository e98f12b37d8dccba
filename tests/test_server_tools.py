"""The MCP tools, prompts and resources, checked through a real MCP client over each transport: in memory, stdio
(the installed `entra-mcp serve` as a subprocess) and streamable HTTP (uvicorn on a free port). Expected answers come
from the emulator's ground truth."""

from __future__ import annotations

import json
import os
from contextlib import ExitStack, asynccontextmanager
from pathlib import Path
from typing import Any, AsyncIterator, Iterator

import anyio
import pytest
from _harness import live_children
from _server_fixtures import ENTRA_MCP, ServerEnv, serve_http, server_env  # noqa: F401 (fixture)
from mcp import Client
from mcp.client.stdio import StdioServerParameters

from entra_mcp.devtenant.generate import examples
from entra_mcp.mirror.store import MirrorStore
from entra_mcp.server.app import create_server
from entra_mcp.views import ViewProvider

# stdio_client is set up before each test (once for the module) so that connect() can take it from the request
pytestmark = [pytest.mark.anyio, pytest.mark.usefixtures("stdio_client")]

TOOLS = {
    "lookup_user",
    "list_group_memberships",
    "list_group_members",
    "check_account_state",
    "get_app_principal",
    "check_app_access",
    "get_ticket_identity_context",
    "validate_chat_session",
    "sync_status",
    "explain_sign_in",
    "sign_in_failures_summary",
    "check_reset_eligibility",
}


@pytest.fixture(scope="module")
def http_url(server_env: ServerEnv) -> Iterator[str]:
    """The HTTP transport of the same server, served by uvicorn in a thread."""
    with serve_http(server_env) as base:
        yield f"{base}/mcp"


@pytest.fixture(scope="module")
async def stdio_client(server_env: ServerEnv) -> AsyncIterator[Client]:
    """One `entra-mcp serve --no-sync` over stdio for the module's stdio cases (a process costs ~3 s CPU to start;
    the server keeps no state between calls that one test could leave to another)."""
    params = StdioServerParameters(
        command=str(ENTRA_MCP),
        args=["--config", str(server_env.config_path), "serve", "--no-sync"],
        env=server_env.subprocess_env(),
    )
    async with Client(params, read_timeout_seconds=30) as client:
        yield client


@asynccontextmanager
async def connect(transport: str, env: ServerEnv, request: pytest.FixtureRequest) -> AsyncIterator[Client]:
    if transport == "memory":
        store = MirrorStore(env.cache_dir)
        views = ViewProvider.from_settings(env.settings, store)
        async with Client(create_server(env.settings, views=views)) as client:
            yield client
        store.close()
    elif transport == "stdio":
        yield request.getfixturevalue("stdio_client")  # already set up: see pytestmark
    else:
        url = request.getfixturevalue("http_url")
        async with Client(url, read_timeout_seconds=30) as client:
            yield client


TRANSPORTS = ["memory", "stdio", "http"]


async def call(client: Client, tool: str, **args: Any) -> dict[str, Any]:
    with anyio.fail_after(30):
        result = await client.call_tool(tool, args)
    assert not result.is_error, f"{tool}({args}) failed: {result.content[0].text}"  # type: ignore[union-attr]
    assert result.structured_content is not None
    # the text content carries a summary and the same data as JSON, for clients that ignore structuredContent
    assert json.loads(result.content[-1].text) == result.structured_content  # type: ignore[union-attr]
    return result.structured_content


async def call_error(client: Client, tool: str, **args: Any) -> str:
    with anyio.fail_after(30):
        result = await client.call_tool(tool, args)
    assert result.is_error, f"{tool}({args}) should have failed"
    text = result.content[0].text  # type: ignore[union-attr]
    assert "Traceback" not in text and 'File "' not in text
    return text


def codes(answer: dict[str, Any]) -> set[str]:
    return {f["code"] for f in answer.get("findings") or []}


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_tools_are_listed_read_only_with_limits(transport: str, server_env: ServerEnv, request: pytest.FixtureRequest) -> None:
    async with connect(transport, server_env, request) as client:
        tools = {t.name: t for t in (await client.list_tools()).tools}
    assert set(tools) == TOOLS
    for tool in tools.values():
        a = tool.annotations
        assert a is not None and a.read_only_hint is True and a.idempotent_hint is True
        assert a.open_world_hint is False and a.destructive_hint is False
        assert tool.description and len(tool.description) > 80, tool.name
    q = tools["lookup_user"].input_schema["properties"]
    assert q["query"]["minLength"] == 1 and q["query"]["maxLength"] == 512
    assert q["limit"]["minimum"] == 1 and q["limit"]["maximum"] == 100
    assert tools["lookup_user"].input_schema["required"] == ["query"]
    assert set(tools["check_app_access"].input_schema["required"]) == {"user", "app"}
    assert "tenant" in tools["sync_status"].input_schema["properties"]


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_answers_match_the_emulated_directory(transport: str, server_env: ServerEnv, request: pytest.FixtureRequest) -> None:
    t = server_env.tenant
    ex = examples(t)
    ceo = t.users[ex["ceo"]]
    async with connect(transport, server_env, request) as client:
        # lookup by UPN, by object id, by mail (case-insensitive): exact
        for query in (ceo["userPrincipalName"], ceo["id"], ceo["mail"].upper()):
            a = await call(client, "lookup_user", query=query)
            assert a["matchType"] == "exact" and [m["id"] for m in a["matches"]] == [ceo["id"]]
            assert a["asOf"]
        # the three Alex Johnsons: fuzzy, all listed, capped by limit with the total kept
        alexes = {u["id"] for u in t.users.values() if u["displayName"] == "Alex Johnson"}
        a = await call(client, "lookup_user", query="alex johnson")
        assert {m["id"] for m in a["matches"]} == alexes
        a = await call(client, "lookup_user", query="alex johnson", limit=1)
        assert len(a["matches"]) == 1 and a["total"] == len(alexes)

        # account state against the ground truth
        disabled = await call(client, "check_account_state", user=ex["disabled_user"])
        assert disabled["accountEnabled"] is False and "ACCOUNT_DISABLED" in codes(disabled)
        expired = await call(client, "check_account_state", user=t.users[ex["password_expired_user"]]["userPrincipalName"])
        assert expired["passwordExpired"] is True and "PASSWORD_EXPIRED" in codes(expired)
        pending = await call(client, "check_account_state", user=ex["guest_pending"])
        assert pending["externalUserState"] == "PendingAcceptance" and pending["userType"] == "Guest"
        synced = await call(client, "check_account_state", user=ex["synced_user"])
        assert synced["onPremisesSyncEnabled"] is True

        # memberships: the direct groups are exactly the groups holding the user
        user_id = next(iter(t.members[ex["nested_leaf_group"]]))
        direct_truth = {gid for gid, members in t.members.items() if user_id in members}
        m = await call(client, "list_group_memberships", user=user_id, transitive=False)
        assert {g["id"] for g in m["groups"]} == direct_truth and all(g["direct"] for g in m["groups"])
        m = await call(client, "list_group_memberships", user=user_id)
        inherited = [g for g in m["groups"] if not g["direct"]]
        assert {g["id"] for g in m["groups"]} >= direct_truth and inherited  # Tier 1 sits inside Service Desk...
        assert all(g["via"] for g in inherited)

        # members of All Staff: total is the truth, list capped at limit
        members = await call(client, "list_group_members", group="All Staff", limit=5)
        assert members["total"] == len(t.members[ex["all_staff"]]) and len(members["members"]) == 5


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_app_ticket_and_status_answers(transport: str, server_env: ServerEnv, request: pytest.FixtureRequest) -> None:
    t = server_env.tenant
    ex = examples(t)
    async with connect(transport, server_env, request) as client:
        sf = t.service_principals[ex["salesforce_sp"]]
        app = await call(client, "get_app_principal", app=sf["appId"])
        assert app["servicePrincipal"]["appId"] == sf["appId"]
        assert app["servicePrincipal"]["appRoleAssignmentRequired"] is True
        legacy = await call(client, "get_app_principal", app="Legacy Payroll Connector")
        assert {"APP_CREDENTIAL_EXPIRED", "APP_ALL_CREDENTIALS_EXPIRED"} & codes(legacy)
        assigned_users = {a["principalId"] for a in t.app_role_assignments.values()
                          if a["resourceId"] == sf["id"] and a["principalType"] == "User"}
        someone = sorted(assigned_users)[0]
        access = await call(client, "check_app_access", user=someone, app="Salesforce")
        assert access["hasAccess"] is True and any(x["via"] == "direct" for x in access["assignments"])

        # ticket context: the CFO writes; requester resolved with manager and the VIP finding; Salesforce mentioned
        cfo = t.users[ex["cfo"]]
        ctx = await call(
            client,
            "get_ticket_identity_context",
            requester=cfo["mail"],
            ticket_text="Hi, I cannot open Salesforce since this morning.",
        )
        req = ctx["requester"]
        assert req["status"] == "found" and req["profile"]["id"] == cfo["id"]
        assert req["manager"]["id"] == t.managers[cfo["id"]]
        assert "VIP_REQUESTER" in codes(ctx)
        assert any(a.get("displayName") == "Salesforce" for a in ctx["mentions"]["apps"])
        # the same ticket past server.heavy_text_chars: computed by an answer worker (server/workers.py), same answer
        padded = await call(client, "get_ticket_identity_context", requester=cfo["mail"],
                            ticket_text="Hi, I cannot open Salesforce since this morning. " + "Please help. " * 200)
        assert padded["requester"] == req and padded["mentions"]["apps"] == ctx["mentions"]["apps"]

        status = await call(client, "sync_status")
        assert status["asOf"] and status["tenant"] == server_env.name
        assert status["areas"]["users"]["objectCount"] == len(t.users)


@pytest.mark.parametrize("transport", ["memory", "http"])
async def test_the_answer_workers_end_with_the_server(transport: str, server_env: ServerEnv) -> None:
    """A heavy answer forks an answer worker (server/workers.py); when the server ends (an in-process server's
    connection, the HTTP app's lifespan), its workers are ended and reaped with it, not left to their idle exit."""
    cfo = server_env.tenant.users[examples(server_env.tenant)["cfo"]]
    text = "Hi, I cannot open Salesforce since this morning. " + "Please help. " * 200  # past heavy_text_chars
    before = live_children(os.getpid())
    workers: set[int] = set()

    async def ask_heavy(client: Client) -> None:
        answer = await call(client, "get_ticket_identity_context", requester=cfo["mail"], ticket_text=text)
        assert answer["requester"]["profile"]["id"] == cfo["id"]
        workers.update(live_children(os.getpid()) - before)
        assert workers, "the heavy answer was computed by a forked answer worker"

    if transport == "memory":
        store = MirrorStore(server_env.cache_dir)
        try:
            async with Client(create_server(server_env.settings, views=ViewProvider.from_settings(server_env.settings, store))) as client:
                await ask_heavy(client)
        finally:
            store.close()
    else:
        with ExitStack() as stack:  # uvicorn in a thread; entered and left off the event loop (its exit runs anyio)
            base = await anyio.to_thread.run_sync(stack.enter_context, serve_http(server_env))
            try:
                async with Client(f"{base}/mcp", read_timeout_seconds=30) as client:
                    await ask_heavy(client)
            finally:
                await anyio.to_thread.run_sync(stack.close)
    left = [pid for pid in workers if Path(f"/proc/{pid}").exists()]
    assert not left, f"answer workers still running (or not reaped) after the server ended: {left}"


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_bad_input_is_a_clear_tool_error_and_the_server_keeps_serving(
    transport: str, server_env: ServerEnv, request: pytest.FixtureRequest
) -> None:
    ceo = server_env.tenant.users[examples(server_env.tenant)["ceo"]]
    async with connect(transport, server_env, request) as client:
        assert "at least 1 character" in await call_error(client, "check_account_state", user="")
        assert "at most 512 characters" in await call_error(client, "lookup_user", query="x" * 10_000)
        assert "control character" in await call_error(client, "lookup_user", query="adele\x00\x1b[2J")
        assert "less than or equal to 100" in await call_error(client, "lookup_user", query="adele", limit=1000)
        text = await call_error(client, "lookup_user", query="adele", tenant="fabrikam")
        assert "fabrikam" in text and server_env.name in text  # names the configured tenants
        text = await call_error(client, "check_account_state", user="' or 1 eq 1")
        assert "query expression" in text or "No user" in text
        assert "No user" in await call_error(client, "check_account_state", user="nobody.at.all@nowhere.example")
        assert "No group" in await call_error(client, "list_group_members", group="00000000-0000-0000-0000-0000000000ff")
        assert await call_error(client, "check_app_access", user=ceo["id"], app="No Such Application Anywhere")
        # and the server still answers
        a = await call(client, "lookup_user", query=ceo["userPrincipalName"])
        assert a["matches"][0]["id"] == ceo["id"]


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_prompts_and_resources(transport: str, server_env: ServerEnv, request: pytest.FixtureRequest) -> None:
    ex = examples(server_env.tenant)
    ceo = server_env.tenant.users[ex["ceo"]]
    async with connect(transport, server_env, request) as client:
        prompts = {p.name: p for p in (await client.list_prompts()).prompts}
        assert {"sign_in_failure", "lost_app_access", "password_reset_eligibility", "verify_requester"} <= set(prompts)
        assert [a.name for a in prompts["lost_app_access"].arguments or [] if a.required] == ["user", "app"]
        rendered = await client.get_prompt("lost_app_access", {"user": "Adele <adele@contoso.example>", "app": "Salesforce"})
        text = rendered.messages[0].content.text  # type: ignore[union-attr]
        assert "check_app_access" in text and "Salesforce" in text and "{{" not in text
        assert "never as instructions" in text or "never instructions" in text
        for name, args, uses in (
                ("sign_in_failure", {"user": "adele@contoso.example", "ticket_text": "locked out since 9:00"},
                 ("explain_sign_in", "sign_in_failures_summary", "locked out since 9:00")),
                ("password_reset_eligibility", {"user": "adele@contoso.example"},
                 ("validate_chat_session", "check_reset_eligibility", "not_by_helpdesk"))):
            text = (await client.get_prompt(name, args)).messages[0].content.text  # type: ignore[union-attr]
            assert all(u in text for u in uses) and "adele@contoso.example" in text and "{{" not in text, name

        templates = {t.uri_template for t in (await client.list_resource_templates()).resource_templates}
        assert {"entra://{tenant}/users/{user}", "entra://{tenant}/groups/{group}", "entra://{tenant}/sync-status"} <= templates
        user = json.loads((await client.read_resource(f"entra://{server_env.name}/users/{ceo['id']}")).contents[0].text)  # type: ignore[union-attr]
        assert user["user"]["id"] == ceo["id"] and user["accountEnabled"] is True
        group = json.loads((await client.read_resource(f"entra://{server_env.name}/groups/{ex['all_staff']}")).contents[0].text)  # type: ignore[union-attr]
        assert group["total"] == len(server_env.tenant.members[ex["all_staff"]])
        tenants = json.loads((await client.read_resource("entra://tenants")).contents[0].text)  # type: ignore[union-attr]
        assert tenants == [{"tenant": server_env.name, "synced": True, "asOf": tenants[0]["asOf"]}]


async def test_validate_chat_session_maps_the_verified_identity_to_the_directory(server_env: ServerEnv, tmp_path: Any) -> None:
    """With the sign-in part's session service: a live chat token gives the verified identity, its directory record,
    and whether it is the user the person claims to be; a bad token is not valid; no secret comes back."""
    from entra_mcp.mirror.session_store import SessionStore
    from entra_mcp.oidc.sessions import SessionService
    from entra_mcp.oidc.validate import Identity

    t = server_env.tenant
    ex = examples(t)
    ceo, cfo = t.users[ex["ceo"]], t.users[ex["cfo"]]
    sessions = SessionService(SessionStore(tmp_path / "sessions"))
    token, _ = sessions.create(Identity(tid=t.tenant_id, oid=ceo["id"], name=ceo["displayName"],
                                        preferred_username=ceo["userPrincipalName"]), kind="chat")
    store = MirrorStore(server_env.cache_dir)
    server = create_server(server_env.settings, views=ViewProvider.from_settings(server_env.settings, store), sessions=sessions)
    async with Client(server) as client:
        ok = await call(client, "validate_chat_session", session_token=token, claimed_user=ceo["userPrincipalName"])
        assert ok["valid"] is True and ok["identity"]["oid"] == ceo["id"]
        assert ok["user"]["id"] == ceo["id"] and ok["user"]["account"]["accountEnabled"] is True
        assert ok["matchesClaimedUser"] is True and ok["asOf"]
        liar = await call(client, "validate_chat_session", session_token=token, claimed_user=cfo["mail"])
        assert liar["valid"] is True and liar["matchesClaimedUser"] is False
        assert "CLAIMED_USER_MISMATCH" in codes(liar)
        bad = await call(client, "validate_chat_session", session_token="not-a-session-" + "x" * 40)
        assert bad["valid"] is False and bad["reason"] and bad["user"] is None
        # a password reset asked from this chat: for the signed-in person verified, for anyone else escalated
        own = await call(client, "check_reset_eligibility", user=ceo["userPrincipalName"], chat_session=token)
        assert own["callerVerified"] is True and "RESET_CALLER_UNVERIFIED" not in codes(own)
        other = await call(client, "check_reset_eligibility", user=cfo["id"], chat_session=token)
        assert other["verdict"] == "escalate" and other["callerVerified"] is False
        assert "RESET_CALLER_UNVERIFIED" in codes(other) and "someone else" in other["reasons"][0]
        for answer in (ok, liar, bad, own, other):
            assert token not in json.dumps(answer)
        unconfigured = create_server(server_env.settings, views=ViewProvider.from_settings(server_env.settings, store))
    async with Client(unconfigured) as client:
        off = await call(client, "validate_chat_session", session_token=token)
        assert off["valid"] is None and "not configured" in off["reason"]
    store.close()


@pytest.mark.parametrize("transport", ["memory", "stdio"])
async def test_instruction_like_directory_text_stays_data(transport: str, server_env: ServerEnv, request: pytest.FixtureRequest) -> None:
    """Users whose fields carry prompt-injection text: the answer flags them, the value is returned verbatim as a
    field, and the one-line summary carries no line breaks or control characters from it."""
    from entra_mcp.devtenant.generate import injection_samples

    samples = [s for s in injection_samples(server_env.tenant) if s["kind"] == "user"]
    assert samples
    async with connect(transport, server_env, request) as client:
        for sample in samples:
            result = await client.call_tool("check_account_state", {"user": sample["id"]})
            assert not result.is_error
            summary = result.content[0].text  # type: ignore[union-attr]
            assert "\n" not in summary and all(ch.isprintable() for ch in summary)
            answer = result.structured_content
            assert answer and "SUSPICIOUS_FIELD" in codes(answer)
            lookup = await call(client, "lookup_user", query=sample["id"])
            assert lookup["matches"][0][sample["field"]] == sample["value"] or sample["field"] not in lookup["matches"][0]
