"""The cache directory is private to the service account (security-notes: nothing but the service may write there).

The mirror and the sign-in store are diskcache databases whose values are pickles: whoever can write a file there can
make the server run code when it reads it. So the directory is created 0700 (and the process creates files 0600:
`entra-mcp` runs with umask 077), and a directory that another account owns, or that group or others may write, is
refused with a clear fix. One we own that others may only read (an install from before this check) is tightened.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from entra_mcp.errors import ConfigError
from entra_mcp.logs import get_logger

log = get_logger("mirror.permissions")

PRIVATE_DIR = 0o700


def private_directory(path: str | os.PathLike[str], *, create: bool = True) -> Path:
    """`path`, created 0700 when missing (with `create`), after checking nobody but this account can write it."""
    path = Path(path).expanduser()
    if create:
        try:
            path.mkdir(mode=PRIVATE_DIR, parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"cannot create the cache directory {path} ({exc.strerror}). Fix: create it, owned by "
                              f"the account that runs entra-mcp, with `mkdir -m 700 {path}`.") from None
    try:
        st = path.stat()
    except FileNotFoundError:
        return path
    except OSError as exc:
        raise ConfigError(f"cannot read the cache directory {path} ({exc.strerror}).") from None
    if not stat.S_ISDIR(st.st_mode):
        raise ConfigError(f"the cache directory {path} is not a directory. Fix: point server.cache_dir at a directory.")
    me = os.geteuid()
    if st.st_uid != me:
        raise ConfigError(
            f"the cache directory {path} belongs to another account (uid {st.st_uid}, this process runs as uid {me}); "
            "its files are loaded as pickles, so only the account that runs entra-mcp may own it. "
            f"Fix: `chown -R {me} {path}`, or set server.cache_dir to a directory of this account."
        )
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise ConfigError(
            f"the cache directory {path} is writable by other accounts (mode {stat.S_IMODE(st.st_mode):o}); its files "
            f"are loaded as pickles, so nobody else may write there. Fix: `chmod 700 {path}`."
        )
    if stat.S_IMODE(st.st_mode) & 0o077:
        os.chmod(path, PRIVATE_DIR)
        log.info("made the cache directory %s private (mode 700; it was %o)", path, stat.S_IMODE(st.st_mode))
    return path


__all__ = ["PRIVATE_DIR", "private_directory"]
