"""Helpers for the in-process end-to-end tests (imported by conftest and tests)."""

from __future__ import annotations

import copy
import socket
from typing import TYPE_CHECKING

from meshproxy.net.addrs import OrigDst

if TYPE_CHECKING:
    import asyncio

    from meshproxy.app import App

BASE = {
    "inbound": {"enabled": False, "addresses": ["127.0.0.1"], "port": 0},
    "outbound": {"enabled": False, "addresses": ["127.0.0.1"], "port": 0},
    "admin": {"port": 0},
    "health": {"address": "127.0.0.1", "port": 0},
    "prometheus": {"address": "127.0.0.1", "port": 0},
    "drain": {"duration": "0.1s", "exit_on_zero_active_connections": True},
    "node": {"pod_name": "web-5b7c8d9f4-abcde", "pod_namespace": "shop"},
}


def merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = merge(out[k], v)
        else:
            out[k] = v
    return out


class MockOrigDst:
    """Answers ``SO_ORIGINAL_DST`` from a table keyed by the client's port;
    ``default`` for clients not in the table (None = not redirected)."""

    def __init__(self):
        self.by_client_port: dict[int, OrigDst] = {}
        self.by_listener_port: dict[int, OrigDst] = {}
        self.default: OrigDst | None = None

    def __call__(self, sock, family):
        hit = self.by_client_port.get(sock.getpeername()[1])
        if hit is None:
            hit = self.by_listener_port.get(sock.getsockname()[1], self.default)
        return hit


class Running:
    def __init__(self, app: App, task: asyncio.Task):
        self.app = app
        self.task = task

    def port(self, name: str) -> int:
        for lst in self.app.listeners:
            if lst.spec.name == name:
                return lst.bound[0].port
        raise KeyError(name)

    def url(self, site: str, path: str) -> str:
        host, port = self.app.admin.bound[site]
        return f"http://{host}:{port}{path}"


async def metrics_text(r: Running) -> str:
    import aiohttp

    async with aiohttp.ClientSession() as s:
        async with s.get(r.url("prometheus", "/stats/prometheus")) as resp:
            assert resp.status == 200
            return await resp.text()


def metric_value(text: str, name: str, **labels: str) -> float:
    """Sum of the samples of ``name`` whose labels include ``labels``."""
    from prometheus_client.parser import text_string_to_metric_families

    total = 0.0
    found = False
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                total += s.value
                found = True
    return total if found else 0.0


def free_port() -> int:
    """A loopback port nobody listens on (bound, read, released)."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


_held: list[socket.socket] = []


def refused_port() -> int:
    """A loopback port whose connects are refused for the rest of the test run: bound and
    never listening, so no listener started later (the proxy's own port-0 sites included)
    can be handed it, as can happen with ``free_port``'s released port."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    _held.append(s)
    return s.getsockname()[1]
