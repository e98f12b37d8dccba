"""`entra-mcp call TOOL [key=value ...] [--tenant T] [--json]`: one MCP tool answered from the mirror, from the shell.

The call goes through the very server `entra-mcp serve` runs (the same tool table, input schema, argument checks,
answers and findings), held in memory: no MCP client, no network, nothing synced. Human-readable by default (the
answer's summary line, its fields, its findings); `--json` prints the structured answer for scripts. Exit 0 answered,
1 the tool answered with an error (unknown user, ...), 2 bad usage or configuration.
"""

from __future__ import annotations

import argparse
import difflib
import json
import sys
from typing import Any

from entra_mcp.config import load_settings
from entra_mcp.errors import InvalidArgument

NAME = "call"
HELP = "ask one tool from the shell, answered from the mirror (e.g. call lookup_user query='alex johnson')"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("tool", nargs="?", metavar="TOOL", help="the tool to call; without it, the tools are listed")
    p.add_argument("arguments", nargs="*", metavar="KEY=VALUE", help="the tool's arguments, e.g. query='alex johnson'")
    p.add_argument("--tenant", metavar="NAME", help="the configured tenant to ask (optional with one tenant)")
    p.add_argument("--json", action="store_true", help="print the structured answer as JSON (for scripts)")


def _describe_arguments(schema: dict[str, Any]) -> str:
    required = set(schema.get("required") or ())
    parts = []
    for name, prop in (schema.get("properties") or {}).items():
        kind = _kind(prop)
        parts.append(f"{name} ({kind}{', required' if name in required else ''})")
    return ", ".join(parts) or "no arguments"


def _kind(prop: dict[str, Any]) -> str:
    types = [prop.get("type")] + [alt.get("type") for alt in prop.get("anyOf") or ()]
    for kind in ("integer", "boolean", "number", "string"):
        if kind in types:
            return kind
    return "string"


def _parse(tool: str, pairs: list[str], schema: dict[str, Any]) -> dict[str, Any]:
    """key=value pairs as the tool's arguments, typed by its input schema; InvalidArgument says what it expects."""
    properties = schema.get("properties") or {}
    expects = f"{tool} takes: {_describe_arguments(schema)}"
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        key = key.strip()
        if not sep or not key:
            raise InvalidArgument(f"{pair!r} is not key=value. {expects}.")
        if key not in properties:
            close = difflib.get_close_matches(key, list(properties), n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise InvalidArgument(f"{tool} has no argument {key!r}{hint}. {expects}.")
        kind = _kind(properties[key])
        if kind == "integer":
            try:
                out[key] = int(value)
            except ValueError:
                raise InvalidArgument(f"{key} must be a whole number; got {value!r}. {expects}.") from None
        elif kind == "boolean":
            if value.lower() not in ("true", "false", "yes", "no", "1", "0"):
                raise InvalidArgument(f"{key} must be true or false; got {value!r}. {expects}.")
            out[key] = value.lower() in ("true", "yes", "1")
        else:
            out[key] = value
    missing = [name for name in schema.get("required") or () if name not in out]
    if missing:
        raise InvalidArgument(f"{tool} needs {', '.join(missing)}. {expects}.")
    return out


def _render(value: Any, indent: int = 0) -> list[str]:
    """An answer as indented text: scalars as `key: value`, lists item by item."""
    pad = "  " * indent
    lines: list[str] = []
    if isinstance(value, dict):
        for key, item in value.items():
            if isinstance(item, (dict, list)) and item:
                lines.append(f"{pad}{key}:")
                lines.extend(_render(item, indent + 1))
            else:
                lines.append(f"{pad}{key}: {_scalar(item)}")
    elif isinstance(value, list):
        for item in value:
            sub = _render(item, indent + 1)
            if sub:
                lines.append(f"{pad}- {sub[0].strip()}")
                lines.extend(sub[1:])
    else:
        lines.append(f"{pad}{_scalar(value)}")
    return lines


def _scalar(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, dict)):
        return "[]" if isinstance(value, list) else "{}"
    return " ".join(str(value).split())  # one line: directory text cannot fake further lines


def _human(summary: str, answer: dict[str, Any]) -> str:
    findings = answer.get("findings") or []
    body = {k: v for k, v in answer.items() if k != "findings"}
    lines = [summary, "", *_render(body)]
    if findings:
        lines += ["", "findings:"]
        lines += [f"  - [{f.get('severity')}] {f.get('code')}: {_scalar(f.get('message'))}" for f in findings]
    return "\n".join(lines)


def _arguments(tools: dict[str, Any], tool: str, pairs: list[str], tenant: str | None) -> dict[str, Any]:
    if tool not in tools:
        close = difflib.get_close_matches(tool, list(tools), n=1)
        hint = f" Did you mean {close[0]}?" if close else ""
        raise InvalidArgument(f"there is no tool {tool!r}.{hint} The tools: {', '.join(tools)}.")
    schema = tools[tool].input_schema
    arguments = _parse(tool, pairs, schema)
    if tenant is not None:
        if "tenant" not in (schema.get("properties") or {}):
            raise InvalidArgument(f"{tool} does not take a tenant.")
        arguments["tenant"] = tenant
    return arguments


async def _call(settings: Any, tool: str | None, pairs: list[str], tenant: str | None, as_json: bool) -> int:
    from entra_mcp.mirror.store import MirrorStore
    from entra_mcp.server.app import create_server
    from entra_mcp.server.local import in_process
    from entra_mcp.views import ViewProvider

    store = MirrorStore(settings.server.cache_dir)
    try:
        views = ViewProvider.from_settings(settings, store, cache=True)
        server = create_server(settings, views=views, channel="call")
        async with in_process(server) as client:
            tools = {t.name: t for t in (await client.list_tools()).tools}
            if tool is None:
                for t in tools.values():
                    print(f"{t.name}: {_describe_arguments(t.input_schema)}")
                return 0
            try:  # (raised inside the client's task group it would arrive wrapped: decided here instead)
                arguments = _arguments(tools, tool, pairs, tenant)
            except InvalidArgument as exc:
                sys.stderr.write(f"entra-mcp call: {exc}\n")
                return 2
            result = await client.call_tool(tool, arguments)
    finally:
        store.close()
    texts = [str(getattr(c, "text")) for c in result.content if getattr(c, "type", None) == "text"]
    if result.is_error:
        sys.stderr.write(f"entra-mcp call: {texts[0] if texts else 'the tool answered with an error'}\n")
        return 1
    answer = result.structured_content or {}
    if as_json:
        print(json.dumps(answer, indent=2, ensure_ascii=False))
    else:
        print(_human(texts[0] if texts else tool, answer))
    return 0


def run(args: argparse.Namespace) -> int:
    import anyio

    settings = load_settings(getattr(args, "config", None), check_files=False)  # reads the mirror only
    return anyio.run(_call, settings, args.tool, list(args.arguments or ()), args.tenant, args.json)


__all__ = ["HELP", "NAME", "add_arguments", "run"]
