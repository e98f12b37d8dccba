"""docs/ARCHITECTURE.md's layering tables, checked against every import in src/entra_mcp (parsed with ast).

The document is the rule: a part may import only what its row lists, and the "only from" table names the few places
allowed to import some modules (the emulator, mcp, diskcache, msal, joserfc). A new part needs a row.
"""

from __future__ import annotations

import ast
import functools
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "entra_mcp"
DOC = ROOT / "docs" / "ARCHITECTURE.md"


def _table(title_words: str) -> list[list[str]]:
    """The rows of the first markdown table whose header row starts with `title_words`, as lists of cells."""
    lines = DOC.read_text(encoding="utf-8").splitlines()
    for i, line in enumerate(lines):
        if line.startswith("|") and line.strip("| ").startswith(title_words):
            rows = []
            for row in lines[i + 2 :]:
                if not row.startswith("|"):
                    break
                rows.append([c.strip() for c in row.strip().strip("|").split("|")])
            return rows
    raise AssertionError(f"docs/ARCHITECTURE.md has no table headed {title_words!r}")


def _names(cell: str) -> list[str]:
    return re.findall(r"`([^`]+)`", cell)


def allowed_imports() -> dict[str, set[str]]:
    return {_names(part)[0]: set(_names(may)) for part, may in _table("part | may import")}


def restricted_imports() -> dict[str, list[str]]:
    return {_names(name)[0]: _names(places) for name, places in _table("import | only from")}


def part_of(path: Path) -> str:
    rel = path.relative_to(PACKAGE)
    return rel.parts[0].removesuffix(".py")


@functools.cache  # every test reads every file: parsed once per run (the sources do not change under the tests)
def imports_of(path: Path) -> tuple[tuple[int, str], ...]:
    """(line, dotted module) of every import in the file, relative ones resolved, `from entra_mcp import x` as
    entra_mcp.x."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = ["entra_mcp", *path.relative_to(PACKAGE).with_suffix("").parts[:-1]]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package[: len(package) - (node.level - 1)]
                base = ".".join([*up, base] if base else up)
            if base == "entra_mcp":
                found += [(node.lineno, f"entra_mcp.{alias.name}") for alias in node.names]
            else:
                found.append((node.lineno, base))
    return tuple(found)


def violations(parts: dict[str, set[str]], only: dict[str, list[str]]) -> list[str]:
    problems = []
    known = set(parts)
    for path in sorted(PACKAGE.rglob("*.py")):
        part = part_of(path)
        rel = path.relative_to(PACKAGE).as_posix()
        for line, module in imports_of(path):
            top = module.split(".")
            target = top[1] if top[0] == "entra_mcp" and len(top) > 1 else None
            if top[0] == "entra_mcp" and target is not None and target in known and target != part:
                if target not in parts.get(part, set()):
                    problems.append(f"{rel}:{line} imports {module}: `{part}` may not import `{target}`")
            name = target if target is not None and top[0] == "entra_mcp" else top[0]
            if name in only and not any(rel == p or (p.endswith("/") and rel.startswith(p)) for p in only[name]):
                if not (name == part):  # a part imports itself freely
                    problems.append(f"{rel}:{line} imports {module}: only {', '.join(only[name])} may")
    return problems


def test_every_part_has_a_row_and_every_row_a_part() -> None:
    parts = allowed_imports()
    actual = {part_of(p) for p in PACKAGE.rglob("*.py")} - {"__init__"}
    assert actual - set(parts) == set(), "parts of src/entra_mcp missing from docs/ARCHITECTURE.md's layering table"
    assert set(parts) - actual == set(), "docs/ARCHITECTURE.md's layering table names parts that do not exist"
    for may in parts.values():
        assert may <= actual, f"unknown parts in the layering table: {may - actual}"


def test_imports_follow_the_documented_layers() -> None:
    assert violations(allowed_imports(), restricted_imports()) == []


def test_the_check_catches_a_climb_back_up() -> None:
    """The checker itself: with `mirror` forbidden to import `errors`, or diskcache reserved for `server/`, the
    real code breaks the rules and the check must say where."""
    parts = allowed_imports()
    parts["mirror"] = parts["mirror"] - {"errors"}
    found = violations(parts, restricted_imports())
    assert any(p.startswith("mirror/store.py:") and "`mirror` may not import `errors`" in p for p in found)
    found = violations(allowed_imports(), {**restricted_imports(), "diskcache": ["server/"]})
    assert any(p.startswith("mirror/store.py:") and "diskcache" in p for p in found)


@pytest.mark.parametrize("name", ["devtenant", "mcp", "diskcache"])
def test_restricted_modules_are_actually_used_where_allowed(name: str) -> None:
    """The "only from" table must name places that really import the module (else it has drifted)."""
    only = restricted_imports()[name]
    users = {
        path.relative_to(PACKAGE).as_posix()
        for path in PACKAGE.rglob("*.py")
        for _, module in imports_of(path)
        if module.split(".")[0] == name or module.startswith(f"entra_mcp.{name}")
    }
    users = {u for u in users if part_of(PACKAGE / u) != name}
    for place in only:
        assert any(u == place or (place.endswith("/") and u.startswith(place)) for u in users), place


def _distribution(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def test_the_package_declares_what_it_imports_and_imports_what_it_declares() -> None:
    """Honest dependencies: every third-party module src/entra_mcp imports belongs to a distribution in pyproject's
    [project] dependencies (a transitive one can vanish with its parent's next release), and every one declared is
    imported somewhere."""
    import importlib.metadata
    import sys
    import tomllib

    data = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    declared = {_distribution(re.split(r"[<>=!~;\[ ]", d, maxsplit=1)[0]) for d in data["project"]["dependencies"]}
    owners = importlib.metadata.packages_distributions()
    imported: dict[str, str] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        for line, module in imports_of(path):
            top = module.split(".")[0]
            if top in ("entra_mcp", "__future__") or top in sys.stdlib_module_names:
                continue
            for dist in owners.get(top, [top]):
                imported.setdefault(_distribution(dist), f"{path.relative_to(PACKAGE).as_posix()}:{line}")
    undeclared = {dist: where for dist, where in imported.items() if dist not in declared}
    assert undeclared == {}, f"imported but not declared in pyproject.toml: {undeclared}"
    assert declared - set(imported) == set(), "declared in pyproject.toml but imported nowhere in src/entra_mcp"


def test_a_stdio_server_start_imports_no_http_client_and_no_sign_in_code() -> None:
    """What `entra-mcp serve` imports over stdio with the default config: no HTTP client (the MCP SDK carries its
    own), no msal or Graph client (live What If only), no JOSE (sign-in only). Each is startup CPU a stdio server
    never uses (httpx alone, with its CLI's rich and pygments: ~0.1 s)."""
    from tests._harness import modules_imported_by

    serve = ("import entra_mcp.cli, entra_mcp.server.app, entra_mcp.views, entra_mcp.mirror.store, entra_mcp.server.http,"
             " entra_mcp.sync.tenants_watch, entra_mcp.server.stdio")
    assert modules_imported_by(serve, ("httpx", "msal", "requests", "joserfc", "pygments", "entra_mcp.graph.client",
                                       "entra_mcp.oidc", "entra_mcp.oauth", "entra_mcp.devtenant")) == []
