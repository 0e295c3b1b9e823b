"""Pure L4 decision: given an accepted connection, where does it go (or why not)?

Where this sits: ``net/listener.py`` calls ``decide()`` once per accepted
connection, after reading the original destination, and acts on the answer;
this module touches no sockets, so every branch is unit-tested on values.

Decision list:
1. Explicit listener → its configured upstream.
2. Transparent listener without an original destination, or whose original
   destination is the proxy's own listening address → refuse (a loop: the
   connection was never redirected, or it would come straight back here).
3. Original destination port is one of the proxy's own transparent ports on a
   local address → refuse (loop).
4. Inbound → the app at ``app_host`` (``app_host_v6`` for IPv6) on the original
   port, leaving from the passthrough source so iptables does not capture it.
5. Outbound → the original destination (passthrough).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import NO_ROUTE
from .addrs import Direction, OrigDst, SockAddr, Upstream, is_loopback


@dataclass(frozen=True, slots=True)
class Forward:
    """Connect to ``upstream`` (from ``source`` if set) and relay."""

    upstream: Upstream
    source: str | None = None


@dataclass(frozen=True, slots=True)
class Refuse:
    """Close the connection without connecting anywhere."""

    reason: str
    flag: str = NO_ROUTE.flag
    """Envoy response flag for metrics and logs."""


@dataclass(frozen=True, slots=True)
class Plan:
    """What a listener needs to decide, fixed when the listener is built."""

    direction: Direction
    own_ports: frozenset[int] = frozenset()
    """The proxy's transparent listener ports (15001, 15006)."""
    local_hosts: frozenset[str] = frozenset()
    """Addresses known to be this pod's own (instance IP), besides loopback."""
    fixed_upstream: Upstream | None = None
    app_host: str = "127.0.0.1"
    app_host_v6: str = "::1"
    passthrough_source: str | None = "127.0.0.6"
    passthrough_source_v6: str | None = "::6"


def decide(plan: Plan, local: SockAddr, orig: OrigDst | None) -> Forward | Refuse:
    if plan.direction is Direction.EXPLICIT:  # 1
        assert plan.fixed_upstream is not None
        return Forward(plan.fixed_upstream)
    if orig is None or (orig.host == local.host and orig.port == local.port):  # 2
        return Refuse("connection was not redirected to this listener (loop)")
    if orig.port in plan.own_ports and (  # 3
        is_loopback(orig.host) or orig.host == local.host or orig.host in plan.local_hosts
    ):
        return Refuse(f"original destination {orig} is the proxy itself (loop)")
    if plan.direction is Direction.INBOUND:  # 4
        if orig.is_v6:
            return Forward(Upstream(plan.app_host_v6, orig.port), plan.passthrough_source_v6)
        return Forward(Upstream(plan.app_host, orig.port), plan.passthrough_source)
    return Forward(Upstream(orig.host, orig.port))  # 5
