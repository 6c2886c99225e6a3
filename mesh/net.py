"""Plain TCP sockets every ambit server opens the same way."""

from __future__ import annotations

import socket

import trio


async def open_listener(host: str, port: int, *, backlog: int = 1024) -> trio.socket.SocketType:
    """A listening TCP socket with SO_REUSEADDR; closed again if binding fails."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = trio.socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        await sock.bind((host, port))
        sock.listen(backlog)
    except OSError:
        sock.close()
        raise
    return sock
