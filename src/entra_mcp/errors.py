"""The one error hierarchy of entra-mcp, grouped by what the caller should do.

EntraMcpError
├── ConfigError            bad or missing configuration: the user fixes the file or environment (exit 2)
├── AuthError              a credential was refused by the login host (AADSTS code kept, secret never)
├── GraphError             Microsoft Graph answered with an error that retrying will not fix
│   ├── PermissionDenied   403: the app lacks a permission; the area is disabled, the rest goes on
│   ├── DeltaTokenExpired  the delta link is no longer valid: a full resync of that area follows
│   └── NotFound           404 from Graph
├── TransientError         throttling, 5xx, dropped connections after the retry budget ran out
│   └── StoreUnavailable   the shared store (Redis, [server.store]) cannot be reached now: retry shortly
├── MirrorError            the local mirror cannot be read or written (disk full, read-only, locked)
├── NotFoundError          a tool was asked about a user, group, app or tenant the mirror does not hold
└── InvalidArgument        a tool or command was given input it cannot use; the message says what it expected

Messages are written for the person (or model) reading them: what went wrong and what to do. They never carry a
secret, a token or a session id.
"""

from __future__ import annotations

from typing import Sequence


class EntraMcpError(Exception):
    """Base class; `code` is machine-readable, the message is for people."""

    code = "ERROR"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code

    @property
    def message(self) -> str:
        return str(self)


class ConfigError(EntraMcpError):
    code = "CONFIG"


class AuthError(EntraMcpError):
    """The login host refused a credential. `aadsts` is the AADSTS number when Entra gave one."""

    code = "AUTH"

    def __init__(self, message: str, *, aadsts: int | None = None, code: str | None = None) -> None:
        super().__init__(message, code=code)
        self.aadsts = aadsts


class GraphError(EntraMcpError):
    code = "GRAPH"

    def __init__(self, message: str, *, status: int | None = None, graph_code: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.graph_code = graph_code


class PermissionDenied(GraphError):
    code = "PERMISSION_DENIED"


class DeltaTokenExpired(GraphError):
    code = "DELTA_TOKEN_EXPIRED"


class NotFound(GraphError):
    code = "GRAPH_NOT_FOUND"


class TransientError(EntraMcpError):
    code = "TRANSIENT"


class StoreUnavailable(TransientError):
    """The shared store (Redis) did not answer: refused, timed out, or refused our credentials. Never names a secret."""

    code = "STORE_UNAVAILABLE"


class MirrorError(EntraMcpError):
    code = "MIRROR"


class NotFoundError(EntraMcpError):
    """A lookup found nothing; `suggestions` are the closest names the mirror holds."""

    code = "NOT_FOUND"

    def __init__(self, message: str, *, suggestions: Sequence[str] = ()) -> None:
        if suggestions:
            message = f"{message} Closest matches: {', '.join(suggestions)}."
        super().__init__(message)
        self.suggestions = list(suggestions)


class InvalidArgument(EntraMcpError):
    code = "INVALID_ARGUMENT"


__all__ = [
    "AuthError",
    "ConfigError",
    "DeltaTokenExpired",
    "EntraMcpError",
    "GraphError",
    "InvalidArgument",
    "MirrorError",
    "NotFound",
    "NotFoundError",
    "PermissionDenied",
    "StoreUnavailable",
    "TransientError",
]
