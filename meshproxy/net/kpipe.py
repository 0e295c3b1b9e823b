"""Bulk transfers in the kernel: socket → pipe → socket with splice(2), no bytes through Python.

Where this sits: ``net/relay.py`` joins two plain TCP sides on its transport fast
path. If the pair then proves to be a bulk transfer (``Relay``'s probe sees at
least ``BulkSplice.rate_bytes`` per second in one direction), the relay hands both
sockets to a ``Pump`` here: each direction becomes splice(src → pipe) then
splice(pipe → dst), so the payload never reaches user space (no read buffer, no
``bytes`` object, no copy). This is the job HAProxy's ``option splice-auto`` does.

Invariants, the same as the relay's:
1. No byte is lost or reordered: a direction only reads when its pipe is empty,
   and a ``Pump`` is only started when both transports' write buffers are empty.
2. Memory is bounded: at most one pipe (``pipe_size``) per direction; while the
   destination cannot take more, the source is not read (the peer's TCP window
   closes: a slow reader slows the writer).
3. Half-close: EOF from one side, once its pipe is drained, is ``shutdown(SHUT_WR)``
   on the other; the pump ends when both directions have ended.
4. Resets are mirrored: a reset or error on one socket aborts the other with an RST.

The sockets stay owned by their (paused) asyncio transports; the pump works on
``dup``-ed descriptors registered with ``add_reader``/``add_writer``, and when it
ends it closes its descriptors and then the transports, so every close and count
still goes through the relay's usual ``connection_lost`` path.
"""

from __future__ import annotations

import asyncio
import errno
import fcntl
import os
import socket
from dataclasses import dataclass
from typing import Callable

_FLAGS = getattr(os, "SPLICE_F_MOVE", 1) | getattr(os, "SPLICE_F_NONBLOCK", 2)
AVAILABLE = hasattr(os, "splice") and hasattr(fcntl, "F_SETPIPE_SZ")
"""splice(2) and pipe sizing exist here (Linux, Python ≥ 3.10)."""


@dataclass(frozen=True, slots=True)
class BulkSplice:
    """When a relayed connection moves to the kernel (from ``config.tcp``)."""

    rate_bytes: int = 8 << 20
    """Bytes in one direction within one probe interval that make a transfer "bulk"."""
    interval: float = 0.5
    """Seconds between probes of a joined pair's byte counts."""
    pipe_size: int = 1 << 20
    """Pipe capacity per direction (the kernel rounds to pages; capped by fs.pipe-max-size)."""


class _Way:
    """One direction: ``src`` → pipe → ``dst``."""

    __slots__ = ("pump", "src", "dst", "rfd", "wfd", "cap", "pending", "reading", "writing", "eof", "done",
                 "src_is_down")

    def __init__(self, pump: "Pump", src: int, dst: int, cap: int, src_is_down: bool):
        self.pump = pump
        self.src, self.dst = src, dst
        self.rfd, self.wfd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            fcntl.fcntl(self.wfd, fcntl.F_SETPIPE_SZ, cap)
        except OSError:
            pass  # keep the default pipe size (64 KiB)
        self.cap = fcntl.fcntl(self.wfd, fcntl.F_GETPIPE_SZ)
        self.pending = 0
        """Bytes in the pipe, not yet written to ``dst``."""
        self.reading = self.writing = False
        self.eof = False
        self.done = False
        self.src_is_down = src_is_down

    def start(self) -> None:
        self._read_on()

    def _read_on(self) -> None:
        if not self.reading:
            self.reading = True
            self.pump.loop.add_reader(self.src, self.on_readable)

    def _read_off(self) -> None:
        if self.reading:
            self.reading = False
            self.pump.loop.remove_reader(self.src)

    def _write_on(self) -> None:
        if not self.writing:
            self.writing = True
            self.pump.loop.add_writer(self.dst, self.on_writable)

    def _write_off(self) -> None:
        if self.writing:
            self.writing = False
            self.pump.loop.remove_writer(self.dst)

    def on_readable(self) -> None:
        try:
            n = os.splice(self.src, self.wfd, self.cap, flags=_FLAGS)
        except BlockingIOError:
            return
        except OSError as e:
            self.pump.fail(self.src_is_down, e)
            return
        if n == 0:
            self.eof = True
            self._read_off()
            self.pump.saw_eof(self.src_is_down)
        else:
            self.pending += n
        self.on_writable()

    def on_writable(self) -> None:
        while self.pending:
            try:
                m = os.splice(self.rfd, self.dst, self.pending, flags=_FLAGS)
            except BlockingIOError:
                self._read_off()  # the destination is full: stop reading until the pipe drains
                self._write_on()
                return
            except OSError as e:
                self.pump.fail(not self.src_is_down, e)
                return
            self.pending -= m
        self._write_off()
        if self.eof:
            if not self.done:
                self.done = True
                try:
                    _shutdown_wr(self.dst)
                except OSError:
                    pass
                self.pump.way_done()
        else:
            self._read_on()

    def close(self) -> None:
        self._read_off()
        self._write_off()
        for fd in (self.rfd, self.wfd):
            try:
                os.close(fd)
            except OSError:
                pass


def _shutdown_wr(fd: int) -> None:
    """``shutdown(fd, SHUT_WR)`` on a descriptor we do not own as a socket object."""
    s = socket.socket(fileno=fd)
    try:
        s.shutdown(socket.SHUT_WR)
    finally:
        s.detach()


class Pump:
    """Both directions of a relay in the kernel. ``on_end(flag_side, exc)`` is called once
    when the pump stops by itself: ``exc`` None for a clean end (both directions done),
    else the error and whether it came from the downstream (``flag_side`` True)."""

    __slots__ = ("loop", "down_fd", "up_fd", "ways", "on_eof", "on_end", "ended")

    def __init__(self, loop: asyncio.AbstractEventLoop, down_fd: int, up_fd: int, pipe_size: int,
                 on_eof: Callable[[bool], None], on_end: Callable[[bool, OSError | None], None]):
        self.loop = loop
        self.down_fd = os.dup(down_fd)
        self.up_fd = os.dup(up_fd)
        self.ways: list[_Way] = []
        self.on_eof = on_eof
        self.on_end = on_end
        self.ended = False
        try:
            self.ways = [_Way(self, self.down_fd, self.up_fd, pipe_size, True),
                         _Way(self, self.up_fd, self.down_fd, pipe_size, False)]
        except OSError:
            self.stop()
            raise

    def start(self) -> None:
        for way in self.ways:
            way.start()

    def saw_eof(self, from_down: bool) -> None:
        self.on_eof(from_down)

    def way_done(self) -> None:
        if all(w.done for w in self.ways):
            self._end(True, None)

    def fail(self, on_down: bool, exc: OSError) -> None:
        """An error on one socket (``on_down``: the downstream's)."""
        if exc.errno not in (errno.ECONNRESET, errno.EPIPE, errno.ETIMEDOUT, errno.EHOSTUNREACH,
                             errno.ENETUNREACH, errno.ECONNABORTED):
            exc = OSError(exc.errno, f"splice: {exc.strerror}")
        self._end(on_down, exc)

    def _end(self, on_down: bool, exc: OSError | None) -> None:
        if self.ended:
            return
        self.stop()
        self.on_end(on_down, exc)

    def stop(self) -> None:
        """Unregister and close our descriptors (the transports still own the sockets)."""
        self.ended = True
        for way in self.ways:
            way.close()
        for fd in (self.down_fd, self.up_fd):
            try:
                os.close(fd)
            except OSError:
                pass
        self.down_fd = self.up_fd = -1

    @property
    def buffered(self) -> int:
        """Bytes in the pipes (not yet written on)."""
        return sum(w.pending for w in self.ways)
