"""Relay flow control and half-close with fake transports (no sockets); then the
fast path: its kernel byte counts (real loopback sockets), the spliced protocol's
delegation, and the fall back to the slow path."""

from __future__ import annotations

import socket
import struct
import time

import pytest

from meshproxy.net import relay as relay_mod
from meshproxy.net.relay import Relay, _kernel_read, _Splice, _splice


class FakeTransport:
    def __init__(self):
        self.written: list[bytes] = []
        self.reading = True
        self.closing = False
        self.eof_written = False

    def write(self, data):
        self.written.append(bytes(data))

    def writelines(self, chunks):
        for c in chunks:
            self.write(c)

    def pause_reading(self):
        self.reading = False

    def resume_reading(self):
        self.reading = True

    def is_closing(self):
        return self.closing

    def close(self):
        self.closing = True

    def abort(self):
        self.closing = True

    def can_write_eof(self):
        return True

    def write_eof(self):
        self.eof_written = True

    def get_extra_info(self, name, default=None):
        return default


def joined():
    closed = []
    relay = Relay(None, on_close=closed.append, buffer_limit=1024,
                  connect_timeout=1, idle_timeout=0)
    down, up = FakeTransport(), FakeTransport()
    relay.down.transport, relay.up.transport = down, up
    relay.down.other, relay.up.other = up, down
    relay.up_made = True
    return relay, down, up, closed


def test_bytes_cross_in_order_and_are_counted():
    relay, down, up, _ = joined()
    relay.down.data_received(b"ab")
    relay.down.data_received(b"cd")
    relay.up.data_received(b"xyz")
    assert up.written == [b"ab", b"cd"] and down.written == [b"xyz"]
    assert (relay.received, relay.sent) == (4, 3)


def test_full_upstream_buffer_pauses_downstream_reading():
    relay, down, up, _ = joined()
    relay.up.pause_writing()  # the upstream transport's buffer passed the high-water mark
    assert down.reading is False and up.reading is True
    relay.up.resume_writing()
    assert down.reading is True


def test_full_downstream_buffer_pauses_upstream_reading():
    relay, down, up, _ = joined()
    relay.down.pause_writing()
    assert up.reading is False and down.reading is True
    relay.down.resume_writing()
    assert up.reading is True


def test_early_bytes_are_kept_until_the_other_side_exists():
    relay = Relay(None, on_close=lambda r: None, buffer_limit=1024,
                  connect_timeout=1, idle_timeout=0)
    relay.down.data_received(b"early")
    assert relay.down.early == [b"early"] and relay.received == 5


def test_half_close_propagates_then_both_eofs_close():
    relay, down, up, closed = joined()
    assert relay.down.eof_received() is True  # keep the downstream open for the response
    assert up.eof_written and not up.closing
    assert relay.up.eof_received() is False   # both directions ended: close
    assert down.closing


def test_on_close_runs_once_after_both_sides_are_lost():
    relay, down, up, closed = joined()
    relay.down.connection_lost(None)
    assert up.closing and closed == []
    relay.up.connection_lost(None)
    assert closed == [relay] and relay.flag == ""
    relay.up.connection_lost(None)
    assert closed == [relay]


def test_reset_is_propagated_as_reset_and_flagged():
    relay, down, up, closed = joined()
    relay.up.connection_lost(ConnectionResetError())
    assert down.closing and relay.flag == "UC"


# === the fast path ===


linux_only = pytest.mark.skipif(relay_mod._ioctl is None, reason="TCP_INFO byte counts are Linux only")


@pytest.fixture
def pair():
    """(ours, theirs): a connected loopback TCP pair; ``ours`` plays the proxy's socket."""
    lst = socket.create_server(("127.0.0.1", 0))
    theirs = socket.create_connection(lst.getsockname())
    ours, _ = lst.accept()
    lst.close()
    yield ours, theirs
    ours.close()
    theirs.close()


def settle():
    time.sleep(0.05)  # loopback delivery is immediate, but give softirqs a moment


@linux_only
def test_counts_bytes_read_not_bytes_queued(pair):
    ours, theirs = pair
    theirs.sendall(b"x" * 3000)
    settle()
    assert _kernel_read(ours, saw_eof=False) == 0  # received by the kernel, not yet read by us
    assert len(ours.recv(1000)) == 1000
    assert _kernel_read(ours, saw_eof=False) == 1000
    ours.recv(5000)
    assert _kernel_read(ours, saw_eof=False) == 3000


@pytest.mark.parametrize("read_data, read_eof", [(False, False), (True, False), (True, True)])
@linux_only
def test_fin_is_not_a_byte(pair, read_data, read_eof):
    """The kernel counts a FIN in tcpi_bytes_received; we don't, whether or not the
    loop has read the data or the EOF yet (CLOSE_WAIT)."""
    ours, theirs = pair
    theirs.sendall(b"y" * 700)
    theirs.shutdown(socket.SHUT_WR)
    settle()
    if read_data:
        assert ours.recv(1000) == b"y" * 700
    if read_eof:
        assert ours.recv(10) == b""
    expected = 700 if read_data else 0
    assert _kernel_read(ours, saw_eof=read_eof) == expected
    assert _kernel_read(ours, saw_eof=read_eof, final=True) == expected


@linux_only
def test_fin_after_ours_is_told_from_a_reset_only_at_close(pair):
    """FIN_WAIT2 then the peer's FIN leaves the socket in CLOSE, as a reset does: a
    periodic read can't tell them apart (None: keep the last count), the close path can."""
    ours, theirs = pair
    ours.shutdown(socket.SHUT_WR)
    theirs.sendall(b"z" * 10)
    theirs.shutdown(socket.SHUT_WR)
    settle()
    assert _kernel_read(ours, saw_eof=False) is None
    assert _kernel_read(ours, saw_eof=False, final=True) == 0  # 10 bytes still unread
    ours.recv(100)
    assert _kernel_read(ours, saw_eof=False, final=True) == 10


@linux_only
def test_reset_is_not_counted_as_a_byte(pair):
    ours, theirs = pair
    theirs.sendall(b"q" * 7)
    settle()
    ours.recv(3)
    theirs.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    theirs.close()
    settle()
    assert _kernel_read(ours, saw_eof=False) is None
    assert _kernel_read(ours, saw_eof=False, final=True) == 3  # pending error read: a reset
    assert _kernel_read(ours, saw_eof=False, final=True, errored=True) == 3


class ShortInfoSocket:
    """A kernel older than 4.1: TCP_INFO stops before tcpi_bytes_received."""

    family = socket.AF_INET

    def getsockopt(self, level, opt, buflen=0):
        return bytes(120)

    def fileno(self):
        return -1


def test_old_kernel_gives_no_count():
    assert _kernel_read(ShortInfoSocket(), saw_eof=False) is None


class SockTransport(FakeTransport):
    """A fake transport that can swap protocols and has a socket."""

    def __init__(self, sock=None):
        super().__init__()
        self.sock = sock
        self.protocol = None

    def set_protocol(self, protocol):
        self.protocol = protocol

    def get_protocol(self):
        return self.protocol

    def get_extra_info(self, name, default=None):
        return self.sock if name == "socket" else default


def spliceable():
    closed = []
    relay = Relay(None, on_close=closed.append, buffer_limit=1024, connect_timeout=1, idle_timeout=0)
    down, up = SockTransport(), SockTransport()
    relay.down.transport, relay.up.transport = down, up
    relay.down.other, relay.up.other = up, down
    relay.up_made = True
    return relay, down, up, closed


def test_spliced_protocol_reads_straight_into_the_other_write_and_delegates_the_rest():
    relay, down, up, closed = spliceable()
    fast_down, fast_up = _Splice(relay.down, up.write), _Splice(relay.up, down.write)
    assert fast_down.data_received == up.write
    fast_down.data_received(b"req")
    assert up.written == [b"req"]
    fast_up.pause_writing()  # the upstream's write buffer is full: stop reading the downstream
    assert down.reading is False
    fast_up.resume_writing()
    assert down.reading is True
    assert fast_down.eof_received() is True and up.eof_written
    assert fast_up.eof_received() is False and down.closing
    fast_down.connection_lost(None)
    fast_up.connection_lost(None)
    assert closed == [relay] and relay.flag == ""


def test_only_plain_tcp_transports_are_spliced(monkeypatch):
    """A TLS transport, our TlsLayer or anything else that is not a bare TCP transport
    keeps the slow path (its socket's counts would be ciphertext)."""
    relay, down, up, _ = spliceable()
    down.sock = object()
    _splice(relay.down, up)
    assert down.protocol is None and relay.down.sock is None


def test_a_unix_socket_is_not_spliced(monkeypatch):
    relay, down, up, _ = spliceable()
    monkeypatch.setattr(relay_mod, "_PLAIN_TCP", (SockTransport,))
    a, b = socket.socketpair()
    with a, b:
        down.sock = a
        _splice(relay.down, up)
    assert down.protocol is None and relay.down.sock is None


@linux_only
def test_old_kernel_keeps_the_slow_path(monkeypatch, pair):
    relay, down, up, _ = spliceable()
    monkeypatch.setattr(relay_mod, "_PLAIN_TCP", (SockTransport,))
    monkeypatch.setattr(relay_mod, "_kernel_counts", None)
    down.sock = ShortInfoSocket()
    _splice(relay.down, up)
    assert down.protocol is None and relay.down.sock is None
    monkeypatch.setattr(relay_mod, "_kernel_counts", None)
    down.sock = pair[0]
    _splice(relay.down, up)
    assert isinstance(down.protocol, _Splice) and relay.down.sock is pair[0]


@linux_only
def test_peeked_bytes_are_not_counted_twice(monkeypatch, pair):
    """Detection read 5 bytes from the socket before the relay existed; the kernel's
    count has them too: the total is the bytes read, once."""
    ours, theirs = pair
    monkeypatch.setattr(relay_mod, "_PLAIN_TCP", (SockTransport,))
    theirs.sendall(b"hello world")
    settle()
    peeked = ours.recv(5)
    relay = Relay(None, on_close=lambda r: None, buffer_limit=1024, connect_timeout=1, idle_timeout=0)
    down, up = SockTransport(ours), SockTransport()
    relay.attach(down, peeked)
    relay.down.other, relay.up.other = up, down
    assert relay.received == 5
    _splice(relay.down, up)
    assert relay.received == 5  # 6 more in the kernel's queue, not read yet
    ours.recv(100)  # the loop reads them (and writes them upstream)
    assert relay.received == 11
    theirs.shutdown(socket.SHUT_WR)
    settle()
    assert relay.received == 11  # the FIN is not a byte
    relay.down.connection_lost(None)
    assert relay.received == 11 and relay.down.sock is None
