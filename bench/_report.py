"""What the benchmarks share for their reports: the one writer of docs/benchmarks.md (a section replaced in place, or
added at the end), percentiles of latency samples, and markdown table lines."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Iterable, Sequence

DOC = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"


def write_section(section: str, lines: list[str], *, keep_subsections: bool = False) -> str:
    """Replace `section` (a '## ' heading line) and its body up to the next '## ' heading with `lines`; add it at
    the end when the document has no such section. With `keep_subsections`, the body replaced ends at the section's
    first '### ' heading instead: the subsections written below it by hand or by other benchmarks stay. Returns the
    section's text."""
    text = DOC.read_text(encoding="utf-8") if DOC.exists() else "# Benchmarks\n"
    body = "\n".join([section, "", *lines, ""])
    if section in text:
        start = text.index(section)
        nxt = text.find("\n## ", start + len(section))
        if keep_subsections:
            sub = text.find("\n### ", start + len(section))
            if sub != -1 and (nxt == -1 or sub < nxt):
                nxt = sub
        if nxt != -1 and not body.endswith("\n\n"):
            body += "\n"  # a blank line before the heading that follows
        text = text[:start] + body + (text[nxt + 1:] if nxt != -1 else "")
    else:
        text = text.rstrip("\n") + "\n\n" + body
    DOC.write_text(text, encoding="utf-8")
    return body


def percentile(values: Iterable[float], p: float, *, scale: float = 1.0) -> float:
    """The `p`-th percentile (0-100) of `values`, nearest rank on the sorted values, times `scale` (1000: seconds
    to milliseconds); nan when there are none."""
    s = sorted(values)
    if not s:
        return math.nan
    return s[min(len(s) - 1, int(round(p / 100 * (len(s) - 1))))] * scale


def latency(values: Iterable[float], *, scale: float = 1.0, digits: int | None = None) -> dict[str, float]:
    """n, p50, p99 and max of latency samples (times `scale`; rounded to `digits` when given)."""
    s = sorted(values)
    out = {"p50": percentile(s, 50, scale=scale), "p99": percentile(s, 99, scale=scale),
           "max": s[-1] * scale if s else math.nan}
    if digits is not None:
        out = {k: round(v, digits) for k, v in out.items()}
    return {"n": len(s), **out}


def table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> list[str]:
    """The lines of a markdown table: the header, its rule, one line per row (cells as str())."""
    return [f"| {' | '.join(header)} |", f"|{'---|' * len(header)}",
            *[f"| {' | '.join(str(c) for c in row)} |" for row in rows]]
