"""Authorization: Istio ``AuthorizationPolicy`` semantics for inbound traffic.

``engine.py`` compiles the policies of one config snapshot into an ``Authorizer``
(pure: attributes in, ``Decision`` out); ``filter.py`` adapts it to the HTTP filter
chain (``AuthzFilter``) and to L4 connections (``check_tcp``). Nothing here touches
sockets or the event loop.
"""

from .engine import Attributes, Authorizer, Decision

__all__ = ["Attributes", "Authorizer", "Decision"]
