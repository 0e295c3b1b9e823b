"""Relay flow control and half-close with fake transports (no sockets)."""

from __future__ import annotations

from meshproxy.net.relay import Relay


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
