"""The README's Quickstart command, exactly as written, on a Python that refuses installs outside a virtual
environment (PEP 668, as Debian and Ubuntu ship it): it installs, starts the demo, and a tool answers."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import anyio
import pytest
from mcp import Client
from mcp.client.stdio import StdioServerParameters

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow


def quickstart_command() -> str:
    """The first command of the README's Quickstart section."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Quickstart", 1)[1].split("\n## ", 1)[0]
    commands = [line.strip() for line in section.splitlines() if line.startswith("    ") and line.strip()]
    assert commands, "the Quickstart shows no command"
    return commands[0]


def externally_managed_python(root: Path) -> Path:
    """A Python installation like a distribution's: the interpreter and its standard library (linked), pip beside
    it, and an EXTERNALLY-MANAGED marker in the standard library's directory, so pip refuses to install into it."""
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    base = Path(sys.base_prefix)
    stdlib = base / "lib" / version
    prefix = root / "system-python"
    lib = prefix / "lib" / version
    (prefix / "bin").mkdir(parents=True)
    (lib / "site-packages").mkdir(parents=True)
    for entry in stdlib.iterdir():
        if entry.name not in ("site-packages", "EXTERNALLY-MANAGED"):
            (lib / entry.name).symlink_to(entry)
    for entry in (stdlib / "site-packages").glob("pip*"):
        (lib / "site-packages" / entry.name).symlink_to(entry)
    (lib / "EXTERNALLY-MANAGED").write_text(
        "[externally-managed]\nError=This Python is managed by the system. Use a virtual environment.\n"
    )
    shutil.copy2(base / "bin" / version, prefix / "bin" / version)
    (prefix / "bin" / "python3").symlink_to(version)
    return prefix / "bin"


def test_the_quickstart_works_on_an_externally_managed_python(tmp_path: Path) -> None:
    bin_dir = externally_managed_python(tmp_path)
    home = tmp_path / "home"
    home.mkdir()
    source = tmp_path / "entra-mcp"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(".venv", ".git", "build", "*.egg-info", "__pycache__",
                                                                 ".pytest_cache", ".mypy_cache", ".ruff_cache"))
    env = {k: v for k, v in os.environ.items() if k.startswith("PIP_") or k in ("LANG", "LC_ALL", "SSL_CERT_FILE")}
    env.update({
        "HOME": str(home),
        "PATH": f"{bin_dir}:/usr/local/bin:/usr/bin:/bin",
        "TMPDIR": str(tmp_path),
        # where this machine's pip finds packages and keeps its cache (nothing of the project)
        "XDG_CONFIG_HOME": str(Path.home() / ".config"),
        "PIP_CACHE_DIR": str(Path.home() / ".cache" / "pip"),
    })

    # the stock Python refuses a global install, as on Debian 12
    refused = subprocess.run(["python3", "-m", "pip", "install", "."], cwd=source, env=env, capture_output=True,
                             timeout=300)
    assert refused.returncode != 0 and b"externally-managed-environment" in refused.stderr, refused.stderr[-2000:]

    command = quickstart_command()
    assert re.search(r"\bentra-mcp demo$", command)

    async def main() -> None:
        params = StdioServerParameters(command="bash", args=["-c", command], env=env, cwd=str(source))
        with anyio.fail_after(900):  # the install, then the demo's emulator, sync and server
            async with Client(params, read_timeout_seconds=800) as client:
                result = await client.call_tool("lookup_user", {"query": "alex johnson"})
                assert not result.is_error and result.structured_content
                assert result.structured_content["matchType"] == "fuzzy"

    anyio.run(main)
    assert (home / ".local" / "share" / "entra-mcp" / "bin" / "entra-mcp").exists()
