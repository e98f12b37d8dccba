"""Service-desk playbooks, loaded from prompts/*.md and served as MCP prompts.

A playbook file starts with a small header between `---` lines:

    ---
    name: sign_in_failure
    title: A user cannot sign in
    description: One line for the prompt list.
    argument: user | required | The user as the ticket names them (UPN, mail or name).
    argument: ticket_text | optional | The ticket's text, if there is one.
    ---
    Markdown body; {{user}} and {{ticket_text}} are replaced by the arguments.

The files live in the repo's prompts/ folder; src/entra_mcp/prompts is a symlink to it, so they ship in the wheel as
package data of entra_mcp (pyproject's package-data `prompts/*.md`).
Arguments are substituted literally (no format strings) and fenced as data, never as instructions.
"""

from __future__ import annotations

import re
from importlib import resources
from pathlib import Path
from typing import Any, Iterable, Mapping

from mcp.server.mcpserver.prompts.base import Prompt, PromptArgument, UserMessage

from entra_mcp.logs import get_logger

log = get_logger("server.prompts")

_ARG_MAX = 20_000
_PLACEHOLDER = re.compile(r"\{\{\s*([a-z_][a-z0-9_]*)\s*\}\}")


def _prompt_files() -> list[tuple[str, str]]:
    """(file name, text) of every playbook, from the installed package or, in a source tree, from prompts/."""
    found: dict[str, str] = {}
    try:
        pkg = resources.files("entra_mcp") / "prompts"
        for entry in pkg.iterdir():
            if entry.name.endswith(".md"):
                found[entry.name] = entry.read_text(encoding="utf-8")
    except (ModuleNotFoundError, FileNotFoundError, NotADirectoryError, TypeError):
        pass
    if not found:
        root = Path(__file__).resolve().parents[3] / "prompts"
        if root.is_dir():
            found = {p.name: p.read_text(encoding="utf-8") for p in root.glob("*.md")}
    return sorted(found.items())


def parse_playbook(text: str, *, source: str = "<prompt>") -> tuple[dict[str, Any], str]:
    """Split a playbook into its header (name, title, description, arguments) and body."""
    if not text.startswith("---"):
        raise ValueError(f"{source}: a playbook starts with a '---' header")
    _, header, body = text.split("---", 2)
    meta: dict[str, Any] = {"arguments": []}
    for line in header.strip().splitlines():
        key, _, value = line.partition(":")
        key, value = key.strip(), value.strip()
        if key == "argument":
            name, required, description = (part.strip() for part in value.split("|", 2))
            meta["arguments"].append(PromptArgument(name=name, required=required == "required", description=description))
        elif key in ("name", "title", "description"):
            meta[key] = value
        elif key:
            raise ValueError(f"{source}: unknown header key {key!r}")
    if "name" not in meta:
        raise ValueError(f"{source}: the header needs a name")
    return meta, body.strip() + "\n"


def _render(body: str, arguments: dict[str, Any]) -> str:
    def value(match: re.Match[str]) -> str:
        raw = arguments.get(match.group(1))
        if raw is None or str(raw).strip() == "":
            return "(not given)"
        text = str(raw)[:_ARG_MAX].replace("\x00", "")
        # Fence the argument so whatever it says stays data inside the playbook.
        text = text.replace("```", "'''")
        return text if "\n" not in text else f"\n```text\n{text}\n```\n"

    return _PLACEHOLDER.sub(value, body)


def _make_prompt(meta: dict[str, Any], body: str) -> Prompt:
    names = {a.name for a in meta["arguments"]}

    async def render(**arguments: Any) -> list[UserMessage]:
        unknown = set(arguments) - names
        if unknown:
            raise ValueError(f"unknown argument(s) {sorted(unknown)}; this prompt takes {sorted(names)}")
        return [UserMessage(_render(body, arguments))]

    return Prompt(
        context_kwarg=None,
        name=meta["name"],
        title=meta.get("title"),
        description=meta.get("description", ""),
        arguments=meta["arguments"],
        fn=render,
    )


def prompt_refusal(prompts: Mapping[str, Prompt], name: str, arguments: Mapping[str, Any] | None) -> str | None:
    """Why prompts/get of `name` with `arguments` cannot be answered, in words the caller can act on (None: it can).
    The names come from the client: quoted and cut short."""
    prompt = prompts.get(name)
    if prompt is None:
        return f"no prompt named {name[:64]!r}; the prompts are {', '.join(sorted(prompts))}"
    declared = prompt.arguments or []
    given = set(arguments or {})
    missing = [a.name for a in declared if a.required and a.name not in given]
    unknown = sorted(given - {a.name for a in declared})
    takes = ", ".join(f"{a.name} ({'required' if a.required else 'optional'})" for a in declared) or "no arguments"
    if missing:
        return f"prompt {name} needs the argument(s) {', '.join(missing)}; it takes {takes}"
    if unknown:
        shown = ", ".join(repr(u[:64]) for u in unknown[:5]) + (", ..." if len(unknown) > 5 else "")
        return f"prompt {name} has no argument(s) {shown}; it takes {takes}"
    return None


def load_prompts(files: Iterable[tuple[str, str]] | None = None) -> list[Prompt]:
    prompts = []
    for name, text in files if files is not None else _prompt_files():
        try:
            meta, body = parse_playbook(text, source=name)
        except ValueError as exc:
            log.warning("skipping playbook %s: %s", name, exc)
            continue
        prompts.append(_make_prompt(meta, body))
    return prompts


__all__ = ["load_prompts", "parse_playbook", "prompt_refusal"]
