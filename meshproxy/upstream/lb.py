"""Load balancing: pure choice of an endpoint (no sockets, no clocks).

Where this sits: ``upstream/cluster.py`` asks its balancer for the next endpoint
for each request. Round robin for now; least-request P2C, ring hash and peak
EWMA plug in here later behind the same ``pick()``.
"""

from __future__ import annotations

from typing import Generic, Sequence, TypeVar

T = TypeVar("T")


class RoundRobin(Generic[T]):
    """Each endpoint in turn."""

    __slots__ = ("endpoints", "_next")

    def __init__(self, endpoints: Sequence[T]):
        if not endpoints:
            raise ValueError("round robin needs at least one endpoint")
        self.endpoints = list(endpoints)
        self._next = 0

    def pick(self) -> T:
        i = self._next
        self._next = (i + 1) % len(self.endpoints)
        return self.endpoints[i]
