"""The benchmarks' one writer of docs/benchmarks.md: a section replaced in place, or added at the end."""

from __future__ import annotations

from pathlib import Path

DOC = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"


def write_section(section: str, lines: list[str]) -> str:
    """Replace `section` (a '## ' heading line) and its body up to the next '## ' heading with `lines`; add it at
    the end when the document has no such section. Returns the section's text."""
    text = DOC.read_text(encoding="utf-8") if DOC.exists() else "# Benchmarks\n"
    body = "\n".join([section, "", *lines, ""])
    if section in text:
        start = text.index(section)
        nxt = text.find("\n## ", start + len(section))
        text = text[:start] + body + (text[nxt + 1:] if nxt != -1 else "")
    else:
        text = text.rstrip("\n") + "\n\n" + body
    DOC.write_text(text, encoding="utf-8")
    return body
