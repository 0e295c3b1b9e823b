"""Typed addresses, so the original destination, the peer and the upstream can't be mixed up.

Where this sits: ``net/listener.py`` builds a ``ConnContext`` from these when it
accepts a connection; decisions (``net/decide.py``) and metrics read them.
"""

from __future__ import annotations

import enum
import ipaddress
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class SockAddr:
    """An IP address and port."""

    host: str
    port: int

    @property
    def is_v6(self) -> bool:
        return ":" in self.host

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if self.is_v6 else f"{self.host}:{self.port}"

    @classmethod
    def of(cls, sockname: tuple) -> "SockAddr":
        """From a ``getsockname()``/``getpeername()`` tuple (v4 or v6); v4-mapped v6 is unwrapped."""
        host = sockname[0]
        if host.startswith("::ffff:") and "." in host:
            host = host[7:]
        return cls(host, int(sockname[1]))


@dataclass(frozen=True, slots=True)
class OrigDst(SockAddr):
    """Where the client meant to connect, before iptables redirected it (``SO_ORIGINAL_DST``)."""


@dataclass(frozen=True, slots=True)
class Peer(SockAddr):
    """The remote end of an accepted connection (the client)."""


@dataclass(frozen=True, slots=True)
class Upstream(SockAddr):
    """Where the proxy connects."""


class Direction(enum.Enum):
    """Which way a connection flows through the sidecar."""

    INBOUND = "inbound"
    """From another pod to this pod's app (reporter=destination)."""
    OUTBOUND = "outbound"
    """From this pod's app to somewhere else (reporter=source)."""
    EXPLICIT = "explicit"
    """Through an explicit listener bound to a fixed upstream (reporter=source)."""


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
