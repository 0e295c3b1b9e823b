"""End-of-turn writes and flow control (net/flush.py): a producer paused for a connection's
congestion is looked at again after that connection's flush.

Writes wait for the end of the loop turn, so a congestion check made while bytes were only
queued can pause a producer, and the flush then sends those bytes with no window event or
resume_writing to say the congestion is over. ``flush`` itself must then wake the paused
producers (``stalled``), once each; without that the stream stops for good.
"""

from __future__ import annotations

import pytest

from meshproxy.http.server import HttpServerConnection
from meshproxy.upstream.client import UpstreamConnection


class _Codec:
    def __init__(self):
        self.out = [b"queued bytes"]

    def data_to_send(self) -> bytes:
        data, self.out = b"".join(self.out), []
        return data


class _Transport:
    def __init__(self):
        self.written: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.written.append(data)


class _Exchange:
    def __init__(self, log: list):
        self.log = log

    def on_downstream_writable(self) -> None:
        self.log.append(("downstream", self))

    def on_upstream_writable(self) -> None:
        self.log.append(("upstream", self))


def _bare(cls, **attrs):
    obj = cls.__new__(cls)
    for k, v in attrs.items():
        setattr(obj, k, v)
    return obj


@pytest.mark.sources_only("builds connections without their __init__")
def test_server_flush_wakes_each_stalled_exchange_once_after_writing():
    log: list = []
    a, b = _Exchange(log), _Exchange(log)
    t = _Transport()
    srv = _bare(HttpServerConnection, codec=_Codec(), transport=t, closed=False, h2=True, exchanges={},
                stalled=[a, b])
    srv.flush()
    assert t.written == [b"queued bytes"]
    assert log == [("downstream", a), ("downstream", b)]
    assert srv.stalled == []
    srv.flush()  # nothing stalled any more: nobody is woken twice
    assert log == [("downstream", a), ("downstream", b)]


@pytest.mark.sources_only("builds connections without their __init__")
def test_server_flush_wakes_stalled_exchange_that_stalls_again_only_next_time():
    log: list = []
    srv = _bare(HttpServerConnection, codec=_Codec(), transport=_Transport(), closed=False, h2=True,
                exchanges={}, stalled=[])

    class Again(_Exchange):
        def on_downstream_writable(self):
            super().on_downstream_writable()
            srv.stalled.append(self)  # still congested after this flush: waits for the next

    ex = Again(log)
    srv.stalled.append(ex)
    srv.flush()
    assert log == [("downstream", ex)] and srv.stalled == [ex]
    srv.flush()
    assert log == [("downstream", ex), ("downstream", ex)]


@pytest.mark.sources_only("builds connections without their __init__")
def test_upstream_flush_wakes_each_stalled_request_body_once():
    log: list = []
    a = _Exchange(log)
    t = _Transport()
    conn = _bare(UpstreamConnection, codec=_Codec(), transport=t, closed=False, stalled=[a])
    conn.flush()
    assert t.written == [b"queued bytes"]
    assert log == [("upstream", a)] and conn.stalled == []
