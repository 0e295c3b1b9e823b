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
5. Byte counts are exact: bytes *read* from each side (peeked bytes included),
   whichever path moved them (see below), and they never go down.

Two paths. The slow path is the ``_Side`` protocols: one Python call per read,
counting as it goes. Once the pair is joined, a side whose transport is plain
TCP (not TLS, not our ``TlsLayer``) is *spliced*: it gets a ``_Splice``
protocol whose ``data_received`` is the other transport's bound ``write``, so a
read runs no Python frame of ours (uvloop caches the bound method at
``set_protocol``; asyncio looks it up per read and finds the instance
attribute). Its other callbacks are the side's own, so flow control, half-close,
reset mirroring and the idle timeout are the same code on both paths. A spliced
side's count comes from the kernel (``TCP_INFO``), read when someone asks (the
metrics flush, the idle check) and in ``connection_lost``, while the fd is still
open. The kernel counts every byte ever received on the socket, so bytes read
before the splice (peeked by detection, ``early``) are in it already and are
not added again.

Bulk transfers go one step further: a joined pair of plain sides is probed every
``BulkSplice.interval``; one that moved ``rate_bytes`` in a direction since the
last probe is handed to ``net/kpipe.py``, which moves both directions with
splice(2) in the kernel (no read buffer, no copy into Python). Small request/
response traffic stays on the transport fast path, where a read costs the least.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import struct
import sys
from typing import Any, Callable

from . import kpipe
from ..errors import (DOWNSTREAM_CONNECTION_TERMINATION as _DC, IDLE_TIMEOUT as _SI,
                      UPSTREAM_CONNECT_FAILURE as _UF, UPSTREAM_CONNECTION_TERMINATION as _UC)

log = logging.getLogger("meshproxy.relay")

_LINGER_RST = struct.pack("ii", 1, 0)

# -- kernel byte counts (Linux TCP_INFO) --------------------------------------------
_TCP_INFO = getattr(socket, "TCP_INFO", None)
_TCP_INFO_LEN = 232
"""Bytes asked for: ``struct tcp_info`` up to ``tcpi_snd_wnd`` (Linux 5.x); an older
kernel returns less, a newer one more fields we do not ask for."""
_BYTES_RECEIVED = 128
"""Offset of ``u64 tcpi_bytes_received`` (Linux ≥ 4.1; bytes, plus 1 for a FIN)."""
_MIN_INFO_LEN = _BYTES_RECEIVED + 8
_U64 = struct.Struct("=Q")
_I32 = struct.Struct("=i")
_CLOSE = 7
_FIN_IN = frozenset((6, 8, 9, 11))
"""``tcpi_state`` values that mean a FIN came in: TIME_WAIT, CLOSE_WAIT, LAST_ACK, CLOSING.
(ESTABLISHED, SYN_*, FIN_WAIT1/2: none yet; CLOSE: either a FIN or a reset.)"""

if sys.platform == "linux":
    from fcntl import ioctl as _ioctl
    from termios import FIONREAD as _FIONREAD
else:  # no TCP_INFO byte counts: every side stays on the slow path
    _ioctl = _FIONREAD = None


def _kernel_read(sock, saw_eof: bool, final: bool = False, errored: bool = False) -> int | None:
    """Bytes the proxy has read from ``sock`` so far, from the kernel: received, less
    what still waits unread in the receive queue, less 1 for a FIN (the kernel counts
    it). ``saw_eof``: the loop already delivered the EOF. None when it can't be told;
    the caller then keeps its last count. Only while the fd is open."""
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, _TCP_INFO, _TCP_INFO_LEN)
        unread = _I32.unpack(_ioctl(sock.fileno(), _FIONREAD, b"\0\0\0\0"))[0]
    except (OSError, ValueError):
        return None
    if len(info) < _MIN_INFO_LEN:
        return None
    state = info[0]
    if saw_eof or state in _FIN_IN:
        fin = 1
    elif state != _CLOSE:
        fin = 0
    elif not final:
        return None  # a FIN or a reset, not yet seen by the loop: the close path will know
    elif errored:
        fin = 0
    else:  # closing: the loop no longer reads, so a pending socket error is ours to take
        try:
            fin = 0 if sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) else 1
        except OSError:
            return None
    return _U64.unpack_from(info, _BYTES_RECEIVED)[0] - unread - fin


_kernel_counts: bool | None = None
"""Whether this kernel's TCP_INFO has ``tcpi_bytes_received`` (probed once)."""


def _kernel_counts_ok(sock) -> bool:
    global _kernel_counts
    if _kernel_counts is None:
        if _TCP_INFO is None or _ioctl is None:
            _kernel_counts = False
        else:
            try:
                _kernel_counts = len(sock.getsockopt(socket.IPPROTO_TCP, _TCP_INFO, _TCP_INFO_LEN)) >= _MIN_INFO_LEN
            except OSError:
                return False  # this socket, not the kernel: ask again next time
            if not _kernel_counts:
                log.info("TCP_INFO has no tcpi_bytes_received (kernel < 4.1): L4 relay stays on the slow path")
    return _kernel_counts


def _plain_tcp_types() -> tuple[type, ...]:
    """Transport classes that are a bare TCP socket: splicing needs ``set_protocol`` to
    take effect for the next read and the socket's counts to be the relayed bytes."""
    from asyncio.selector_events import _SelectorSocketTransport

    types: list[type] = [_SelectorSocketTransport]
    try:
        from uvloop.loop import TCPTransport
    except ImportError:
        pass
    else:
        types.append(TCPTransport)
    return tuple(types)


_PLAIN_TCP = _plain_tcp_types()
_PUMP_TRIES = 20
_PUMP_RETRY = 0.001
"""A bulk pair whose write buffers are not empty is looked at again this often (s), this many times."""
_INET = (socket.AF_INET, socket.AF_INET6)


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

    __slots__ = ("relay", "transport", "other", "nbytes", "eof", "is_down", "early", "sock")

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
        self.sock = None
        """Spliced: the socket whose kernel counters give ``nbytes`` (None: slow path, or closed)."""

    def count(self) -> int:
        """Bytes read from this side so far (from the kernel when spliced)."""
        sock = self.sock
        if sock is not None:
            n = _kernel_read(sock, self.eof)
            if n is not None and n > self.nbytes:
                self.nbytes = n
        return self.nbytes

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
        if self.relay._engaging:
            return  # reading stays paused until the pump starts (or the relay gives up waiting)
        if self.other is not None and not self.other.is_closing():
            self.other.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        sock = self.sock
        if sock is not None:  # the last read of the kernel counters: the fd closes after this call
            self.sock = None
            n = _kernel_read(sock, self.eof, final=True, errored=exc is not None)
            if n is not None and n > self.nbytes:
                self.nbytes = n
        relay = self.relay
        if relay is not None:  # None: the relay finished and let go (a second report changes nothing)
            relay._side_lost(self, exc)


class _Splice:
    """A joined side's protocol on plain TCP: ``data_received`` IS the other
    transport's bound ``write`` (no Python frame per read); every other callback is
    the side's own method, so it behaves exactly as the ``_Side``."""

    __slots__ = ("side", "data_received", "eof_received", "pause_writing", "resume_writing",
                 "connection_lost")

    def __init__(self, side: _Side, write: Callable[[bytes], None]):
        self.side = side
        self.data_received = write
        self.eof_received = side.eof_received
        self.pause_writing = side.pause_writing
        self.resume_writing = side.resume_writing
        self.connection_lost = side.connection_lost

    def connection_made(self, transport) -> None:  # never called: installed on a live transport
        pass


def _protocol(transport) -> object:
    get = getattr(transport, "get_protocol", None)
    return get() if get is not None else None


def _splice(side: _Side, other: asyncio.Transport) -> None:
    """Put ``side`` on the fast path if its transport is plain TCP and the kernel
    counts bytes; otherwise leave it on the slow path (TLS, ``TlsLayer``, old kernel)."""
    transport = side.transport
    if type(transport) not in _PLAIN_TCP or transport.is_closing():
        return
    if transport.get_extra_info("sslcontext") is not None or transport.get_extra_info("ssl_object") is not None:
        return
    sock = transport.get_extra_info("socket")
    if sock is None or sock.family not in _INET or not _kernel_counts_ok(sock):
        return
    side.sock = sock
    transport.set_protocol(_Splice(side, other.write))


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
                 "flushed_rx", "flushed_tx", "bulk", "pump", "_probe_handle", "_probe_mark",
                 "_engaging")

    def __init__(self, loop: asyncio.AbstractEventLoop, *, on_close: Callable[["Relay"], None],
                 buffer_limit: int, connect_timeout: float, idle_timeout: float,
                 bulk: kpipe.BulkSplice | None = None):
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
        self.bulk = bulk if kpipe.AVAILABLE else None
        """When a bulk transfer moves to splice(2) (None: never)."""
        self.pump: kpipe.Pump | None = None
        """The kernel pump, once a bulk transfer was moved to it."""
        self._probe_handle: asyncio.TimerHandle | None = None
        self._probe_mark = (0, 0)
        self._engaging = False
        """Waiting for both write buffers to empty before the pump starts (reading paused)."""

    @property
    def received(self) -> int:
        """Bytes read from the downstream (the request direction)."""
        return self.down.count()

    @property
    def sent(self) -> int:
        """Bytes read from the upstream and written to the downstream (the response direction)."""
        return self.up.count()

    @property
    def spliced(self) -> tuple[bool, bool]:
        """Whether (downstream, upstream) reads bypass Python (for tests and debugging)."""
        return (isinstance(_protocol(self.down.transport), _Splice),
                isinstance(_protocol(self.up.transport), _Splice))

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

    def connect(self, host: str, port: int, source: str | None, ssl=None, verify=None, hello: bytes = b"",
                on_peer: Callable[[Any], None] | None = None) -> None:
        """Open the upstream and start relaying when it is up. With ``ssl`` (a client
        context) the upstream is a mesh peer: after the handshake ``verify(ssl_object)``
        must accept its identity (it raises otherwise), or nothing is relayed; ``hello`` is our
        peer metadata line (``Mesh.hello``); ``on_peer(peer_info)`` is called once the peer
        sidecar's own line has arrived (``net.mesh.PeerInfo``: who answered, for the labels)."""
        self._connect_task = self.loop.create_task(self._connect(host, port, source, ssl, verify, hello, on_peer))

    async def _connect(self, host: str, port: int, source: str | None, ssl_ctx, verify, hello: bytes,
                       on_peer=None) -> None:
        down = self.down.transport
        self.up.other = down  # a server-first upstream may send before we resume
        try:
            local = (source, 0) if source else None
            if ssl_ctx is None:
                await asyncio.wait_for(
                    self.loop.create_connection(lambda: self.up, host, port, local_addr=local),
                    self.connect_timeout)
            else:  # a mesh peer: our own TLS layer (identity checked before our Finished; half-close works)
                from .tls_layer import connect_tls

                layer = await asyncio.wait_for(
                    connect_tls(self.loop, host, port, ssl_ctx, verify or (lambda sslobj: None), local, hello),
                    self.connect_timeout)
                if on_peer is not None:
                    if layer.peer_metadata is not None:  # its line came with the handshake
                        on_peer(layer.peer_info())
                    else:
                        layer.on_peer = lambda lay: on_peer(lay.peer_info())
                layer.attach(self.up)
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
        _splice(self.down, up)
        _splice(self.up, down)
        down.resume_reading()
        if self.bulk is not None and self.down.sock is not None and self.up.sock is not None:
            self._probe_mark = (self.down.nbytes, self.up.nbytes)
            self._probe_handle = self.loop.call_later(self.bulk.interval, self._probe)
        if self.idle_timeout > 0:
            self._idle_handle = self.loop.call_later(self.idle_timeout / 2, self._idle_check)

    def _idle_check(self) -> None:
        """Idle timeout without reading the clock on the byte path: every half
        period compare the byte counters with the last check; two checks in a row
        with no progress close the pair (idle time between T and 1.5 T)."""
        total = self.down.count() + self.up.count()
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

    # -- bulk transfers: splice(2) ---------------------------------------------------
    def _probe(self) -> None:
        """Hand the pair to the kernel once one direction moved ``rate_bytes`` since the last probe."""
        self._probe_handle = None
        down, up = self.down, self.up
        if self._closed or down.eof or up.eof or down.sock is None or up.sock is None:
            return
        mark = (down.count(), up.count())
        moved = max(mark[0] - self._probe_mark[0], mark[1] - self._probe_mark[1])
        self._probe_mark = mark
        if moved >= self.bulk.rate_bytes:
            self._try_pump(_PUMP_TRIES)
        else:
            self._probe_handle = self.loop.call_later(self.bulk.interval, self._probe)

    def _try_pump(self, tries: int) -> None:
        """Start the pump once both write buffers are empty (no byte may be left behind in
        a transport). Until then reading is paused on both sides (``_engaging``: flow
        control does not resume it) and the buffers are looked at every ``_PUMP_RETRY``
        s; after ``tries`` reading resumes and probing goes on, so two peers that each
        wait for the other to read cannot stall the pair for longer than that."""
        self._probe_handle = None
        down, up = self.down, self.up
        dt, ut = down.transport, up.transport
        if self._closed or down.eof or up.eof or dt.is_closing() or ut.is_closing():
            self._engaging = False
            return
        if dt.get_write_buffer_size() == 0 and ut.get_write_buffer_size() == 0:
            try:
                pump = kpipe.Pump(self.loop, down.sock.fileno(), up.sock.fileno(), self.bulk.pipe_size,
                                  self._pump_eof, self._pump_end)
            except OSError as e:  # out of descriptors or pipes: stay on the transport path
                log.debug("bulk splice not started: %r", e)
            else:
                dt.pause_reading()
                ut.pause_reading()
                self._engaging = False
                self.pump = pump
                pump.start()
                return
        elif tries > 1:
            if not self._engaging:
                self._engaging = True
                dt.pause_reading()
                ut.pause_reading()
            self._probe_handle = self.loop.call_later(_PUMP_RETRY, self._try_pump, tries - 1)
            return
        if self._engaging:  # give up for now: back to the transport path, flow control intact
            self._engaging = False
            high = self.buffer_limit
            if ut.get_write_buffer_size() < high:
                dt.resume_reading()
            if dt.get_write_buffer_size() < high:
                ut.resume_reading()
        self._probe_handle = self.loop.call_later(self.bulk.interval, self._probe)

    def _pump_eof(self, from_down: bool) -> None:
        (self.down if from_down else self.up).eof = True

    def _pump_end(self, on_down: bool, exc: OSError | None) -> None:
        """The pump stopped by itself: both directions ended, or one socket failed."""
        if exc is None:
            self.close()
            return
        failed, other = (self.down, self.up) if on_down else (self.up, self.down)
        if not self.flag:
            self.flag = _DC.flag if on_down else _UC.flag
        for side in (failed, other):  # final counts now: the sockets' state is about to change
            sock = side.sock
            if sock is not None:
                side.sock = None
                n = _kernel_read(sock, side.eof, final=True, errored=side is failed)
                if n is not None and n > side.nbytes:
                    side.nbytes = n
        if other.transport is not None and not other.transport.is_closing():
            _reset(other.transport)  # mirror the reset
        if failed.transport is not None:
            failed.transport.abort()

    @property
    def pumped(self) -> bool:
        """Whether this pair was moved to splice(2) (for tests and debugging)."""
        return self.pump is not None

    def _stop_pump(self) -> None:
        if self.pump is not None and not self.pump.ended:
            self.pump.stop()

    def close(self) -> None:
        """Close both sides, flushing what is buffered."""
        self._stop_pump()
        for side in (self.down, self.up):
            if side.transport is not None and not side.transport.is_closing():
                side.transport.close()

    def abort(self) -> None:
        """Close both sides now, dropping buffered bytes (end of drain)."""
        if self._connect_task is not None:
            self._connect_task.cancel()
        self._stop_pump()
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
        self._stop_pump()
        if self._probe_handle is not None:
            self._probe_handle.cancel()
            self._probe_handle = None
        if self._idle_handle is not None:
            self._idle_handle.cancel()
            self._idle_handle = None
        self.on_close(self)
        # Both sides are gone and no callback can follow: let go of the transports and of each
        # other, so reference counting frees the pair (the relay <-> side and side <-> transport
        # links are cycles, and the collector would have to find them per connection).
        for side in (self.down, self.up):
            side.transport = side.other = None
            side.relay = None
