"""The L4 relay: two ``asyncio.Protocol``s joined back to back.

Where this sits: ``net/listener.py`` makes a ``Relay`` for every accepted
connection that is not HTTP (today: every connection). The downstream protocol
is the accepted socket; the upstream protocol is the connection the relay opens
to the decided destination. Bytes go straight from one transport's
``data_received`` to the other transport's ``write``.

Invariants:
1. No byte is lost or reordered: the only buffers are the transports' own, and
   ``close()`` on a transport flushes before closing.
2. Memory stays bounded: each transport's write buffer has a high-water mark
   (``buffer_limit``); when one side's buffer passes it, reading from the *other*
   side pauses until it drains below the low-water mark (a quarter), so a slow
   reader slows the writer instead of growing buffers.
3. Half-close is propagated: EOF from one side becomes ``write_eof`` on the
   other; the pair closes when both directions have ended.
4. The byte path does no allocation beyond the bytes objects the loop hands us,
   no logging, no Prometheus calls: counters are plain ints flushed elsewhere.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import struct
from typing import Callable

from ..errors import (DOWNSTREAM_CONNECTION_TERMINATION as _DC, IDLE_TIMEOUT as _SI,
                      UPSTREAM_CONNECT_FAILURE as _UF, UPSTREAM_CONNECTION_TERMINATION as _UC)

log = logging.getLogger("meshproxy.relay")

_LINGER_RST = struct.pack("ii", 1, 0)


def _reset(transport: asyncio.BaseTransport) -> None:
    """Close ``transport`` with a TCP RST (mirrors an upstream refusal or reset)."""
    sock = transport.get_extra_info("socket")
    if sock is not None:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RST)
        except OSError:
            pass
    transport.abort()


class _Side(asyncio.Protocol):
    """One end of the pair. ``other`` is the peer side's transport."""

    __slots__ = ("relay", "transport", "other", "nbytes", "eof", "is_down", "early")

    def __init__(self, relay: "Relay", is_down: bool):
        self.relay = relay
        self.transport: asyncio.Transport | None = None
        self.other: asyncio.Transport | None = None
        self.nbytes = 0
        """Bytes read from this side (request bytes for downstream, response bytes for upstream)."""
        self.eof = False
        self.is_down = is_down
        self.early: list[bytes] | None = None
        """Bytes read before the other side existed (a read already in flight when
        reading was paused); written first once it does."""

    # -- byte path -------------------------------------------------------------
    def data_received(self, data: bytes) -> None:
        self.nbytes += len(data)
        other = self.other
        if other is None:
            self.early = (self.early or []) + [data]
            return
        other.write(data)

    def eof_received(self) -> bool:
        self.eof = True
        other = self.other
        if other is not None and not other.is_closing():
            if self.relay.down.eof and self.relay.up.eof:
                other.close()
                return False
            if other.can_write_eof():
                other.write_eof()
        return True  # keep our transport open for writing the other direction

    # -- flow control: our write buffer is full → stop reading the other side --
    def pause_writing(self) -> None:
        if self.other is not None:
            self.other.pause_reading()

    def resume_writing(self) -> None:
        if self.other is not None and not self.other.is_closing():
            self.other.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self.relay._side_lost(self, exc)


class _Down(_Side):
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self.transport = transport
        transport.pause_reading()  # until the upstream is connected


class _Up(_Side):
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self.transport = transport
        self.relay.up_made = True


class Relay:
    """A downstream connection, the upstream it is joined to, and their counters.

    Life: the listener ``attach``es the accepted transport (reading paused, with
    any bytes already peeked) and calls ``connect()`` or ``refuse()`` → bytes flow
    → both sides end → ``on_close(relay)`` runs exactly once; ``flag`` is then the
    Envoy response flag ("" for a clean close; otherwise one of ``errors.py``)."""

    __slots__ = ("loop", "down", "up", "flag", "on_close", "buffer_limit",
                 "connect_timeout", "idle_timeout", "ctx", "up_made", "lost",
                 "_idle_handle", "_idle_mark", "_idle_strikes", "_closed", "_connect_task",
                 "flushed_rx", "flushed_tx")

    def __init__(self, loop: asyncio.AbstractEventLoop, *, on_close: Callable[["Relay"], None],
                 buffer_limit: int, connect_timeout: float, idle_timeout: float):
        self.loop = loop
        self.down = _Down(self, True)
        self.up = _Up(self, False)
        self.flag = ""
        self.on_close = on_close
        self.buffer_limit = buffer_limit
        self.connect_timeout = connect_timeout
        self.idle_timeout = idle_timeout
        self.ctx = None
        """Set by the listener: what it knows of this connection (for metrics and logs)."""
        self.up_made = False
        self.lost = 0
        """How many of the made sides have reported ``connection_lost``."""
        self._idle_handle: asyncio.TimerHandle | None = None
        self._idle_mark = 0
        self._idle_strikes = 0
        self._closed = False
        self._connect_task: asyncio.Task | None = None
        self.flushed_rx = 0
        self.flushed_tx = 0
        """Byte counts already moved into Prometheus counters (owned by the listener)."""

    @property
    def received(self) -> int:
        """Bytes read from the downstream (the request direction)."""
        return self.down.nbytes

    @property
    def sent(self) -> int:
        """Bytes read from the upstream and written to the downstream (the response direction)."""
        return self.up.nbytes

    def attach(self, transport: asyncio.Transport, peeked: bytes = b"", eof: bool = False) -> None:
        """Take over an accepted transport; ``peeked`` bytes were already read from it
        (protocol detection) and go upstream first; ``eof``: the client already half-closed."""
        transport.set_protocol(self.down)
        self.down.connection_made(transport)
        if peeked:
            self.down.early = [peeked]
            self.down.nbytes = len(peeked)
        self.down.eof = eof

    def refuse(self, flag: str) -> None:
        """Close the downstream without connecting (loop, no route)."""
        self.flag = flag
        _reset(self.down.transport)

    def connect(self, host: str, port: int, source: str | None, ssl=None, verify=None) -> None:
        """Open the upstream and start relaying when it is up. With ``ssl`` (a client
        context) the upstream is a mesh peer: after the handshake ``verify(ssl_object)``
        must accept its identity (it raises otherwise), or nothing is relayed."""
        self._connect_task = self.loop.create_task(self._connect(host, port, source, ssl, verify))

    async def _connect(self, host: str, port: int, source: str | None, ssl_ctx, verify) -> None:
        down = self.down.transport
        self.up.other = down  # a server-first upstream may send before we resume
        try:
            local = (source, 0) if source else None
            await asyncio.wait_for(
                self.loop.create_connection(lambda: self.up, host, port, local_addr=local, ssl=ssl_ctx,
                                            server_hostname="" if ssl_ctx is not None else None),
                self.connect_timeout)
            if verify is not None:
                verify(self.up.transport.get_extra_info("ssl_object"))
        except Exception as e:  # refused, unreachable, timeout, TLS or peer identity failure: all UF
            if self.up.transport is not None:
                self.up.transport.abort()
            self.flag = _UF.flag
            log.debug("upstream %s:%s connect failed: %r", host, port, e)
            if not down.is_closing():
                _reset(down)
            return
        finally:
            self._connect_task = None
            self._maybe_finish()
        up = self.up.transport
        if down.is_closing():  # the downstream went away while we connected
            up.close()
            return
        self.down.other = up
        if self.down.early:
            up.writelines(self.down.early)
            self.down.early = None
        if self.down.eof and up.can_write_eof():
            up.write_eof()
        high = self.buffer_limit
        down.set_write_buffer_limits(high, high // 4)
        up.set_write_buffer_limits(high, high // 4)
        down.resume_reading()
        if self.idle_timeout > 0:
            self._idle_handle = self.loop.call_later(self.idle_timeout / 2, self._idle_check)

    def _idle_check(self) -> None:
        """Idle timeout without reading the clock on the byte path: every half
        period compare the byte counters with the last check; two checks in a row
        with no progress close the pair (idle time between T and 1.5 T)."""
        total = self.down.nbytes + self.up.nbytes
        if total == self._idle_mark:
            self._idle_strikes += 1
            if self._idle_strikes >= 2:
                self._idle_handle = None
                self.flag = self.flag or _SI.flag
                self.close()
                return
        else:
            self._idle_mark = total
            self._idle_strikes = 0
        self._idle_handle = self.loop.call_later(self.idle_timeout / 2, self._idle_check)

    def close(self) -> None:
        """Close both sides, flushing what is buffered."""
        for side in (self.down, self.up):
            if side.transport is not None and not side.transport.is_closing():
                side.transport.close()

    def abort(self) -> None:
        """Close both sides now, dropping buffered bytes (end of drain)."""
        if self._connect_task is not None:
            self._connect_task.cancel()
        for side in (self.down, self.up):
            if side.transport is not None:
                side.transport.abort()

    def _side_lost(self, side: _Side, exc: Exception | None) -> None:
        self.lost += 1
        if exc is not None and not self.flag:
            self.flag = _DC.flag if side.is_down else _UC.flag
        other = side.other
        if other is not None and not other.is_closing():
            if exc is not None:
                _reset(other)  # propagate a reset as a reset
            else:
                other.close()  # flushes what is still buffered, then FIN
        if side.is_down and self._connect_task is not None:
            self._connect_task.cancel()
        self._maybe_finish()

    def _maybe_finish(self) -> None:
        if self._closed or self._connect_task is not None:
            return
        if self.lost < (2 if self.up_made else 1):
            return
        self._closed = True
        if self._idle_handle is not None:
            self._idle_handle.cancel()
            self._idle_handle = None
        self.on_close(self)
