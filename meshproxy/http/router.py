"""Pure routing: (request head, compiled routes) → where the request goes.

Where this sits: ``http/server.py`` calls ``Router.route()`` once per request,
after the request filters ran; the answer names a cluster (or passthrough to
the original destination) and the timeout. A ``Router`` is compiled once per
config snapshot; it imports neither asyncio nor sockets.

Matching, first route wins, all conditions of a route must hold:
1. authority: ``*``; ``*.suffix``; ``prefix.*``; an exact host. A domain without a
   port matches the request's host on any port; with a port, host:port exactly.
2. path (without the query): exact, prefix, or a regex that must match fully.
3. methods: any of the listed ones (none listed = any).
4. headers: each condition holds (multiple values are joined with ``,``).
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from typing import Callable, Sequence

from ..config.routing import HeaderMatch, Route

PASSTHROUGH = "PassthroughCluster"
"""Istio's name for traffic that no route claimed: it goes to the original destination."""


@dataclass(frozen=True, slots=True)
class RouteResult:
    name: str
    """The route's name, or ``"default"`` for passthrough."""
    cluster: str
    """A configured cluster name, or ``PASSTHROUGH``."""
    timeout: float
    """Whole-request timeout in seconds (0 = none)."""


def _domain_matcher(domain: str) -> Callable[[str, str], bool]:
    """``(host, host_with_port) -> bool`` for one configured domain."""
    if domain == "*":
        return lambda host, full: True
    has_port = ":" in domain and not domain.endswith("]")
    key = domain
    if key.startswith("*"):
        suffix = key[1:]
        return (lambda host, full: full.endswith(suffix)) if has_port else (lambda host, full: host.endswith(suffix))
    if key.endswith("*"):
        prefix = key[:-1]
        return (lambda host, full: full.startswith(prefix)) if has_port else (lambda host, full: host.startswith(prefix))
    return (lambda host, full: full == key) if has_port else (lambda host, full: host == key)


def _split_authority(authority: str) -> str:
    """Host without port (IPv6 literals keep their brackets)."""
    if authority.startswith("["):
        end = authority.find("]")
        return authority[: end + 1] if end != -1 else authority
    return authority.rsplit(":", 1)[0] if authority.count(":") == 1 else authority


def _header_matcher(m: HeaderMatch) -> Callable[[dict[str, str]], bool]:
    name = m.name

    if m.present is not None:
        want = m.present

        def test(h: dict[str, str]) -> bool:
            return (name in h) == want
    elif m.exact is not None:
        exact = m.exact

        def test(h: dict[str, str]) -> bool:
            return h.get(name) == exact
    elif m.prefix is not None:
        prefix = m.prefix

        def test(h: dict[str, str]) -> bool:
            v = h.get(name)
            return v is not None and v.startswith(prefix)
    else:
        rx = re.compile(m.regex)  # type: ignore[arg-type, type-var]

        def test(h: dict[str, str]) -> bool:
            v = h.get(name)
            return v is not None and rx.fullmatch(v) is not None

    if m.invert:
        return lambda h: not test(h)
    return test


class _Compiled:
    __slots__ = ("route", "domains", "path", "methods", "headers", "weights", "total")

    def __init__(self, route: Route):
        self.route = route
        self.domains = None if route.match.authority == ["*"] else [_domain_matcher(d) for d in route.match.authority]
        p = route.match.path
        if p is None:
            self.path = None
        elif p.exact is not None:
            exact = p.exact
            self.path = lambda path: path == exact
        elif p.prefix is not None:
            prefix = p.prefix
            self.path = lambda path: path.startswith(prefix)
        else:
            rx = re.compile(p.regex)  # type: ignore[arg-type, type-var]
            self.path = lambda path: rx.fullmatch(path) is not None
        self.methods = frozenset(route.match.methods) or None
        self.headers = [_header_matcher(h) for h in route.match.headers]
        self.weights = [(w.cluster, w.weight) for w in route.weighted_clusters if w.weight > 0]
        self.total = sum(w for _, w in self.weights)


def header_dict(headers: Sequence[tuple[bytes, bytes]]) -> dict[str, str]:
    """Lower-case name → value (repeated headers joined with ``,``), for matching."""
    out: dict[str, str] = {}
    for k, v in headers:
        name = k.decode("latin-1")
        value = v.decode("latin-1")
        out[name] = f"{out[name]},{value}" if name in out else value
    return out


class Router:
    """Routes compiled from one config snapshot."""

    def __init__(self, routes: Sequence[Route], passthrough_timeout: float = 0.0,
                 rand: Callable[[int], int] | None = None):
        self._routes = [_Compiled(r) for r in routes]
        self.needs_headers = any(c.headers for c in self._routes)
        """Some route matches on request headers (otherwise ``route`` ignores them)."""
        self._default = RouteResult("default", PASSTHROUGH, passthrough_timeout)
        self._rand = rand or (lambda n: random.randrange(n))
        first = self._routes[0] if self._routes else None
        self._catch_all = (RouteResult(first.route.name, first.route.cluster, first.route.timeout)
                           if first is not None and first.domains is None and first.path is None
                           and first.methods is None and not first.headers and first.route.cluster is not None
                           else None)
        """The first route matches everything and names one cluster: no request needs looking at."""

    def route(self, method: bytes, authority: bytes | None, path: bytes,
              headers: Sequence[tuple[bytes, bytes]] = ()) -> RouteResult:
        if self._catch_all is not None:
            return self._catch_all
        if not self._routes:
            return self._default
        full = (authority or b"").decode("latin-1").lower()
        host = _split_authority(full)
        p = path.decode("latin-1")
        q = p.find("?")
        if q != -1:
            p = p[:q]
        m = method.decode("latin-1")
        hdrs = header_dict(headers) if self.needs_headers else {}
        for c in self._routes:
            if c.domains is not None and not any(d(host, full) for d in c.domains):
                continue
            if c.path is not None and not c.path(p):
                continue
            if c.methods is not None and m not in c.methods:
                continue
            if c.headers and not all(h(hdrs) for h in c.headers):
                continue
            return RouteResult(c.route.name, self._pick(c), c.route.timeout)
        return self._default

    def _pick(self, c: _Compiled) -> str:
        if c.route.cluster is not None:
            return c.route.cluster
        n = self._rand(c.total)
        for cluster, weight in c.weights:
            if n < weight:
                return cluster
            n -= weight
        return c.weights[-1][0]
