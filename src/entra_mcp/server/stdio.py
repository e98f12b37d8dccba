"""MCP over stdio with the process's real stdout claimed for the wire.

stdout is the MCP wire and nothing else: the real stdout is claimed first thing and file descriptor 1 is pointed at
stderr, so a stray print or a chatty library cannot corrupt the protocol.

stdin may be a pipe, a socket or a terminal (read on the event loop), or a regular file or /dev/null (containers
without an interactive stdin, service managers, scripted runs), which the event loop cannot poll (epoll refuses
them): those are read in a worker thread, where a read never waits long. At the end of stdin the server answers
what it has read and exits.
"""

from __future__ import annotations

import os
import stat
import sys
from typing import Any


MAX_LINE = 64 << 20  # bytes of one message on stdin; far beyond any request a client sends


def _pollable(fd: int) -> bool:
    """Whether the event loop can wait on `fd` (pipes, sockets, terminals; not files or /dev/null)."""
    mode = os.fstat(fd).st_mode
    return stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode) or (stat.S_ISCHR(mode) and os.isatty(fd))


class StdoutWire:
    """The process's real stdout, claimed for the MCP wire; fd 1 then points at stderr."""

    def __init__(self) -> None:
        sys.stdout.flush()
        self.fd = os.dup(1)
        os.set_inheritable(self.fd, False)
        os.dup2(2, 1)

    def release(self) -> None:
        try:
            os.dup2(self.fd, 1)
            os.close(self.fd)
        except OSError:
            pass


class _FdLines:
    """Lines from a file descriptor, read on the event loop (no worker thread per line, unlike anyio.wrap_file)."""

    def __init__(self, fd: int, pollable: bool = True) -> None:
        self.fd = fd
        self.buf = bytearray()
        self.pollable = pollable

    def __aiter__(self) -> "_FdLines":
        return self

    async def __anext__(self) -> str:
        import anyio

        end = self.buf.find(b"\n")
        while end < 0:
            if self.pollable:
                await anyio.wait_readable(self.fd)
                try:
                    chunk = os.read(self.fd, 1 << 16)
                except BlockingIOError:
                    continue
            else:  # abandoned on cancel: a stop never waits for a read
                chunk = await anyio.to_thread.run_sync(os.read, self.fd, 1 << 16, abandon_on_cancel=True)
            if not chunk:
                if not self.buf:
                    raise StopAsyncIteration
                line = bytes(self.buf)
                self.buf.clear()
                return line.decode("utf-8", "replace")
            newline = chunk.find(b"\n")
            end = len(self.buf) + newline if newline >= 0 else -1
            self.buf += chunk
            if end < 0 and len(self.buf) > MAX_LINE:
                # no JSON-RPC message is this long (stdin may be /dev/zero or a binary file): stop reading
                sys.stderr.write(f"entra-mcp: stdin sent more than {MAX_LINE} bytes without a line break; "
                                 "it is not MCP: stopping\n")
                self.buf.clear()
                raise StopAsyncIteration
        line = bytes(self.buf[:end])
        del self.buf[: end + 1]
        return line.decode("utf-8", "replace") + "\n"


class _FdWriter:
    """Text to a file descriptor from the event loop; waits (without blocking the loop) while the pipe is full."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    async def write(self, text: str) -> None:
        import anyio

        data = memoryview(text.encode("utf-8"))
        while data:
            try:
                data = data[os.write(self.fd, data):]
            except BlockingIOError:
                await anyio.wait_writable(self.fd)

    async def flush(self) -> None:
        return None


def run_stdio(server: Any, wire: StdoutWire) -> None:
    import anyio
    from mcp.server.stdio import stdio_server

    # stdin is claimed like stdout: a private duplicate carries the wire, fd 0 reads /dev/null for anything else.
    stdin_fd = os.dup(0)
    os.set_inheritable(stdin_fd, False)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    # Non-blocking only while serving: the flag lives on the shared open file (a terminal, a parent's pipe).
    pollable = _pollable(stdin_fd)
    was_blocking = os.get_blocking(stdin_fd), os.get_blocking(wire.fd)
    if pollable:
        os.set_blocking(stdin_fd, False)
    if _pollable(wire.fd):
        os.set_blocking(wire.fd, False)

    async def main() -> None:
        lowlevel = server._lowlevel_server  # what MCPServer.run_stdio_async runs, with our own streams
        async with stdio_server(stdin=_FdLines(stdin_fd, pollable), stdout=_FdWriter(wire.fd)) as (read_stream, write_stream):  # type: ignore[arg-type]
            await lowlevel.run(read_stream, write_stream, lowlevel.create_initialization_options())

    try:
        anyio.run(main)
    finally:
        os.set_blocking(stdin_fd, was_blocking[0])
        os.set_blocking(wire.fd, was_blocking[1])
        os.dup2(stdin_fd, 0)
        os.close(stdin_fd)


__all__ = ["StdoutWire", "run_stdio"]
