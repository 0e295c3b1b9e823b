"""Read the client's first bytes with a timeout, then hand the connection on.

Where this sits: ``net/listener.py`` installs a ``Peeker`` as the accepted
transport's protocol when the port's protocol is neither declared nor
server-first. Each read is passed to the pure ``detect/sniff.py``; on the first
answer other than NEED_MORE (or at the timeout, or at EOF) ``on_done(kind,
peeked, eof)`` is called once, with every byte read so far, so the next
protocol replays them: nothing is lost.
"""

from __future__ import annotations

import asyncio
from typing import Callable

from .sniff import H1, OPAQUE, Kind, Sniffed, sniff

TIMEOUT = "timeout"
"""``on_done`` outcome when the timeout fired first (the connection is opaque)."""


class Peeker(asyncio.Protocol):
    __slots__ = ("loop", "on_done", "on_lost", "buf", "timer", "done", "transport", "http_only")

    def __init__(self, loop: asyncio.AbstractEventLoop, transport: asyncio.Transport, timeout: float,
                 on_done: Callable[[asyncio.Transport, "Sniffed | str", bytes, bool], None],
                 on_lost: Callable[[], None], http_only: bool = False):
        self.loop = loop
        self.on_done = on_done
        self.on_lost = on_lost
        self.buf = b""
        self.done = False
        self.transport = transport
        """Installed with ``transport.set_protocol(peeker)``, so ``connection_made`` is not called."""
        self.http_only = http_only
        """A declared HTTP port: only tell HTTP/2 prior knowledge from HTTP/1 (never opaque)."""
        self.timer = loop.call_later(timeout, self._timeout) if timeout > 0 else None

    def data_received(self, data: bytes) -> None:
        if self.done:
            return
        self.buf += data
        result = sniff(self.buf)
        if result.kind is Kind.NEED_MORE:
            return
        if self.http_only and result.kind is not Kind.H2 and result.kind is not Kind.TLS:
            result = H1
        self._finish(result, False)

    def eof_received(self) -> bool:
        if not self.done:
            result = sniff(self.buf) if self.buf else OPAQUE
            if result.kind is Kind.NEED_MORE:
                result = OPAQUE
            if self.http_only and result.kind is not Kind.H2 and result.kind is not Kind.TLS:
                result = H1
            self._finish(result, True)
        return True

    def _timeout(self) -> None:
        self.timer = None
        if not self.done:
            self._finish(H1 if self.http_only and self.buf else TIMEOUT, False)

    def _finish(self, result, eof: bool) -> None:
        self.done = True
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.on_done(self.transport, result, self.buf, eof)

    def connection_lost(self, exc) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if not self.done:
            self.done = True
            self.on_lost()
