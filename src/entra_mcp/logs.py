"""Logging to stderr (stdout is the MCP wire in stdio mode), with a last-line scrubber for token-shaped text."""

from __future__ import annotations

import logging
import re
import sys

LOGGER_NAME = "entra_mcp"

# JWTs (three base64url parts) and bearer/secret-looking assignments. A scrubber is defence in depth only: the code
# never hands a secret to a logger in the first place.
_TOKEN_RE = re.compile(r"eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]*")
_ASSIGN_RE = re.compile(r"(?i)\b(client_secret|access_token|refresh_token|id_token|code_verifier|password|session)=([^&\s]+)")


def scrub(text: str) -> str:
    text = _TOKEN_RE.sub("[redacted-token]", text)
    return _ASSIGN_RE.sub(lambda m: f"{m.group(1)}=[redacted]", text)


class _ScrubbingFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return scrub(super().format(record))


def setup_logging(level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_ScrubbingFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)
    logging.getLogger(LOGGER_NAME).setLevel(level.upper())


def get_logger(name: str) -> logging.Logger:
    return logging.getLogger(name if name.startswith(LOGGER_NAME) else f"{LOGGER_NAME}.{name}")
