"""Read the original destination of a redirected connection (``SO_ORIGINAL_DST``).

Where this sits: ``net/listener.py`` calls ``original_dst(sock)`` once per accepted
connection on a transparent listener. Tests swap in their own lookup (linkerd's
``MockOrigDst`` idea) through the listener's ``origdst`` argument.

Linux netfilter answers with a ``sockaddr_in`` (IPv4, ``SOL_IP``) or a
``sockaddr_in6`` (IPv6, ``SOL_IPV6``); both are parsed by ``parse_sockaddr``.
"""

from __future__ import annotations

import socket
import struct

from .addrs import OrigDst

SO_ORIGINAL_DST = 80  # linux/netfilter_ipv4.h; IP6T_SO_ORIGINAL_DST has the same value
_SOL_IPV6 = getattr(socket, "SOL_IPV6", 41)


def parse_sockaddr(raw: bytes) -> OrigDst:
    """Parse a kernel ``sockaddr_in`` (16 bytes) or ``sockaddr_in6`` (28 bytes)."""
    if len(raw) < 8:
        raise ValueError(f"sockaddr too short ({len(raw)} bytes)")
    family = struct.unpack_from("=H", raw, 0)[0]
    port = struct.unpack_from("!H", raw, 2)[0]
    if family == socket.AF_INET:
        return OrigDst(socket.inet_ntop(socket.AF_INET, raw[4:8]), port)
    if family == socket.AF_INET6:
        if len(raw) < 24:
            raise ValueError(f"sockaddr_in6 too short ({len(raw)} bytes)")
        return OrigDst.of((socket.inet_ntop(socket.AF_INET6, raw[8:24]), port))
    raise ValueError(f"unexpected address family {family}")


def original_dst(sock, family: int) -> OrigDst | None:
    """The pre-NAT destination of ``sock``, or None when the connection was not
    redirected (the kernel has no NAT mapping for it)."""
    try:
        if family == socket.AF_INET6:
            raw = sock.getsockopt(_SOL_IPV6, SO_ORIGINAL_DST, 28)
        else:
            raw = sock.getsockopt(socket.SOL_IP, SO_ORIGINAL_DST, 16)
    except OSError:
        return None
    return parse_sockaddr(raw)
