"""Write coalescing: every connection writes at most once per loop turn.

Where this sits: ``http/server.py`` and ``upstream/client.py`` queue output in
their codecs, the HTTP/1.1 express lane (``http/express.py``,
``upstream/express.py``) in ``TurnWrites.out_q``, and each ``mark()``s itself
here instead of writing after every ``send_*``. Marks made from the loop's
callbacks (reads, timers, connect futures) are written by one ``call_soon``:
the end of the loop turn, after every connection that was ready in it has been
read. So a response head, its body and its end that arrive in one upstream read
leave as ONE downstream write, and the requests of many downstream connections
to one upstream leave as one write too. Written back to back like that, the
requests to an upstream and the responses to clients on the other CPU wake each
peer once per turn instead of once per request (about a tenth of the express
lane's CPU under load on a 2-vCPU host, bench/RESULTS.md). ``with flusher:``
(callbacks that must see their writes done before they return: EOF, connection
loss, resume_writing) writes when the outermost one exits.

Two rules keep flow control whole when writes wait: a bulk chunk (``BULK``)
is written at once by whoever queues it (``TurnWrites.queue``, the general
path's ``send_data``), so the transport's pause_writing sees it as it comes; and a producer paused for a connection's
congestion is looked at again after that connection's ``flush`` (``stalled``),
because what the flush sent may have ended the congestion with no event saying
so (``tests/e2e/test_h2_proxy.py`` slow-reader cases).
"""

from __future__ import annotations

import asyncio
from typing import Any, Protocol

BULK = 16 * 1024
"""A body chunk at least this big is written at once instead of at the end of the loop
turn: coalescing only pays for small messages, and a bulk transfer's flow control rests
on the transport seeing its bytes (pause_writing) as they come. One turn may read many
chunks from one socket (libuv reads up to 32 times per readiness event)."""


class Flushable(Protocol):
    """What ``Flusher`` needs of a connection."""

    dirty: bool

    def flush(self) -> None: ...


class Flusher:
    __slots__ = ("loop", "dirty", "depth", "scheduled")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.dirty: list[Flushable] = []
        self.depth = 0
        self.scheduled = False

    def mark(self, conn: Flushable) -> None:
        if conn.dirty:
            return
        conn.dirty = True
        self.dirty.append(conn)
        if self.depth == 0 and not self.scheduled:
            self.scheduled = True
            self.loop.call_soon(self.run)

    def run(self) -> None:
        self.scheduled = False
        dirty = self.dirty
        while dirty:
            self.dirty = []
            for conn in dirty:
                conn.dirty = False
                conn.flush()
            dirty = self.dirty

    def __enter__(self) -> "Flusher":
        self.depth += 1
        return self

    def __exit__(self, *exc) -> None:
        self.depth -= 1
        if self.depth == 0 and self.dirty:
            self.run()


class TurnWrites:
    """Mixin for a protocol that writes raw bytes (the express lane's two ends): ``queue``
    keeps them until the flusher's run, then ``flush`` hands the turn's bytes to the transport
    in one write. Needs ``flusher``, ``transport``, ``closed`` and, set in ``__init__``,
    ``out_q = []`` and ``dirty = False``. Whoever closes the transport calls ``flush`` first;
    whoever aborts it clears ``out_q``."""

    out_q: list[bytes]
    dirty: bool
    closed: bool
    flusher: Any  # the loop's Flusher
    transport: Any

    def queue(self, data: bytes) -> None:
        self.out_q.append(data)
        if len(data) >= BULK:
            self.flush()  # bulk: now, so the transport's own flow control sees it
        elif not self.dirty:
            self.flusher.mark(self)

    def flush(self) -> None:
        out = self.out_q
        if out:
            data = out[0] if len(out) == 1 else b"".join(out)
            out.clear()
            if not self.closed:
                self.transport.write(data)


_flushers: dict[asyncio.AbstractEventLoop, Flusher] = {}


def flusher_for(loop: asyncio.AbstractEventLoop) -> Flusher:
    """The loop's flusher (one per loop, so tests may run several loops)."""
    f = _flushers.get(loop)
    if f is None:
        if len(_flushers) > 16:  # drop flushers of closed loops
            for old in [lp for lp in _flushers if lp.is_closed()]:
                del _flushers[old]
        f = _flushers[loop] = Flusher(loop)
    return f
