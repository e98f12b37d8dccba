"""The catalogue of sign-in error codes (identity/data/sign_in_errors.toml): code -> cause, what the user sees, the
service desk's next step, the finding it raises. Unknown codes are reported as unknown, with the code and Microsoft's
own failureReason text, never guessed."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from typing import Any

KINDS = ("password", "lockout", "mfa", "conditional_access", "device", "assignment", "account", "unknown_account",
         "session", "consent", "interrupt", "app")


@dataclass(frozen=True)
class ErrorCode:
    code: int
    cause: str
    user_sees: str
    next_step: str
    finding: str
    kind: str
    blocking: bool = True


@lru_cache(maxsize=1)
def catalogue() -> dict[int, ErrorCode]:
    text = resources.files("entra_mcp.identity").joinpath("data/sign_in_errors.toml").read_text(encoding="utf-8")
    out: dict[int, ErrorCode] = {}
    for key, entry in tomllib.loads(text).items():
        out[int(key)] = ErrorCode(code=int(key), cause=entry["cause"], user_sees=entry["user_sees"],
                                  next_step=entry["next_step"], finding=entry["finding"], kind=entry["kind"],
                                  blocking=bool(entry.get("blocking", True)))
    return out


def describe(code: int, failure_reason: Any = None) -> dict[str, Any]:
    """What the answers say about one error code."""
    entry = catalogue().get(code)
    if entry is None:
        reason = failure_reason if isinstance(failure_reason, str) and failure_reason.strip() else None
        return {"errorCode": code, "known": False, "kind": "unknown", "blocking": True,
                "cause": f"Error code {code} is not in entra-mcp's catalogue"
                         + (f"; Microsoft's text: {reason[:300]}" if reason else "") + ".",
                "userSees": None,
                "nextStep": f"Look the code up at https://login.microsoftonline.com/error?code={code} before acting.",
                "finding": "SIGN_IN_UNKNOWN_ERROR_CODE"}
    return {"errorCode": code, "known": True, "kind": entry.kind, "blocking": entry.blocking, "cause": entry.cause,
            "userSees": entry.user_sees, "nextStep": entry.next_step, "finding": entry.finding}


__all__ = ["KINDS", "ErrorCode", "catalogue", "describe"]
