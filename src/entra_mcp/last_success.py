"""The rule of the last successful sign-in per user and app, shared by the sync (sync/sign_ins.py, which folds the
successes it reads into the mirror) and the answers (identity/sign_ins.py, which folds the polls' lists into what
the sync folded): both must keep the same success, or a reloaded server would answer differently from the mirror.

A leaf: the standard library only, so both layers may import it (docs/ARCHITECTURE.md, "Layers").
"""

from __future__ import annotations

from typing import Any


def is_later(time: Any, than: Any) -> bool:
    """Whether a success at `time` replaces the one held at `than` (both `createdDateTime` values).

    Times are compared as the sync writes them (sync/sign_ins.py `iso`: "2026-12-01T10:00:00Z", so text order is
    time order). A missing, empty or non-text time is the earliest of all: any timed success replaces it, and it
    replaces nothing. An equal time keeps the one held (the first seen wins a tie), so folding the same success in
    again changes nothing."""
    return (time if isinstance(time, str) else "") > (than if isinstance(than, str) else "")


__all__ = ["is_later"]
