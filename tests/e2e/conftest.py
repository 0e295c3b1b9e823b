"""In-process end-to-end fixtures: a real ``App`` on 127.0.0.1 port 0, real upstreams,
both event loops (asyncio and uvloop), original-destination lookup stubbed
(linkerd's ``MockOrigDst``) so transparent listeners work without iptables."""

from __future__ import annotations

import asyncio

import pytest
import uvloop
from e2e_support import BASE, MockOrigDst, Running, merge

from meshproxy.app import App
from meshproxy.config.load import from_dict
from meshproxy.config.snapshot import Snapshot


def pytest_asyncio_loop_factories(config, item):
    if "tests/e2e/" in str(item.fspath).replace("\\", "/"):
        return {"asyncio": asyncio.new_event_loop, "uvloop": uvloop.new_event_loop}
    return None


@pytest.fixture
def origdst():
    return MockOrigDst()


@pytest.fixture
async def proxy(origdst):
    """``await proxy({...config overrides...})`` → a started ``Running``; stopped at teardown."""
    started: list[Running] = []

    async def start(over: dict | None = None) -> Running:
        app = App(Snapshot(from_dict(merge(BASE, over or {}))), origdst=origdst)
        task = asyncio.ensure_future(app.run())
        ready = asyncio.ensure_future(app.ready.wait())
        done, _ = await asyncio.wait([task, ready], timeout=10, return_when=asyncio.FIRST_COMPLETED)
        if task in done:
            task.result()  # raises the start error
        assert ready in done, "proxy did not become ready"
        r = Running(app, task)
        started.append(r)
        return r

    yield start
    for r in started:
        r.app.request_shutdown("test teardown")
        try:
            await asyncio.wait_for(r.task, 10)
        except Exception:
            pass
