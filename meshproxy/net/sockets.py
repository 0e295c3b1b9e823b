"""Listening sockets: bound here so their options are explicit.

Where this sits: ``net/listener.py`` asks for a listening socket per address; the
loop's ``create_server(sock=...)`` then serves it.
"""

from __future__ import annotations

import errno
import socket


def listen_socket(host: str, port: int, backlog: int = 1024) -> socket.socket:
    """A bound, listening, non-blocking TCP socket. IPv6 sockets are v6-only so
    ``0.0.0.0`` and ``::`` can be bound side by side on the same port."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind((host, port))
        sock.listen(backlog)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def ipv6_unavailable(exc: OSError) -> bool:
    """True if binding failed only because this host (namespace) has no IPv6."""
    return exc.errno in (errno.EAFNOSUPPORT, errno.EADDRNOTAVAIL, errno.EPROTONOSUPPORT)
