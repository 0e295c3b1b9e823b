"""The peer metadata line between sidecars (``net/peer_hello.py``) and the TLS layer's part in it."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshproxy.net.peer_hello import MAGIC, MAX_LINE, HelloError, HelloReader, decode, encode

LINE = encode("reviews-v1", "reviews", "v1", "Kubernetes", "reviews", "v1")


def test_encode_then_decode():
    assert LINE.startswith(MAGIC) and LINE.endswith(b"\n") and LINE.count(b"\n") == 1
    assert decode(LINE[:-1]) == {"workload": "reviews-v1", "app": "reviews", "version": "v1", "cluster": "Kubernetes",
                                 "canonical_service": "reviews", "canonical_revision": "v1"}


def test_unknown_empty_and_odd_values_are_left_out():
    assert decode(encode("w", "unknown", "", "c")[:-1]) == {"workload": "w", "cluster": "c"}
    assert decode(MAGIC + b'{"workload": 7, "app": ["x"], "extra": "y", "version": "v2"}') == {"version": "v2"}


@pytest.mark.parametrize("line, why", [
    (b"GET / HTTP/1.1", "not start with its metadata line"),
    (MAGIC + b"{nope", "not JSON"),
    (MAGIC + b'["a"]', "not a JSON object"),
])
def test_not_a_hello(line, why):
    with pytest.raises(HelloError, match=why):
        decode(line)


@given(st.lists(st.integers(min_value=1, max_value=40), max_size=30), st.binary(max_size=50))
def test_reader_takes_the_line_however_it_is_cut(cuts, rest):
    """The line arrives in any pieces, possibly with the stream's first bytes after it:
    the reader returns exactly those bytes once the line is complete, and None before."""
    stream = LINE + rest
    pieces, i = [], 0
    for n in cuts:
        pieces.append(stream[i:i + n])
        i += n
    pieces.append(stream[i:])
    reader = HelloReader()
    out = []
    for p in pieces:
        got = reader.feed(p) if reader.metadata is None else p
        if got is not None:
            out.append(got)
    assert reader.metadata == decode(LINE[:-1])
    assert b"".join(out) == rest


@pytest.mark.parametrize("first", [b"\x16\x03\x01", b"GET / HTTP/1.1\r\n", b"PRI * HTTP/2.0\r\n", b"MESHPROXY-X"])
def test_reader_refuses_a_stream_that_does_not_start_with_the_magic_at_once(first):
    with pytest.raises(HelloError, match="not start with its metadata line"):
        HelloReader().feed(first)


def test_reader_refuses_an_endless_line():
    reader = HelloReader()
    assert reader.feed(MAGIC + b"{" + b" " * 100) is None
    with pytest.raises(HelloError, match=f"over {MAX_LINE} bytes"):
        reader.feed(b" " * MAX_LINE)


def test_encode_refuses_a_line_over_the_limit():
    with pytest.raises(ValueError, match="over"):
        encode("w" * MAX_LINE, "a", "v", "c")


# === the TLS layer ===========================================================

class Wire:
    """A raw transport that hands what is written to the other layer, on demand."""

    def __init__(self):
        self.peer = None
        self.out = []
        self.aborted = False

    def write(self, data):
        self.out.append(bytes(data))

    def pump(self):
        data, self.out = b"".join(self.out), []
        if data and not self.aborted:
            self.peer.data_received(data)
        return len(data)

    def is_closing(self):
        return self.aborted

    def abort(self):
        self.aborted = True

    close = abort


class Inner(asyncio.Protocol):
    def __init__(self):
        self.got = []

    def data_received(self, d):
        self.got.append(d)


def _pair(mats, client_hello: bytes, server_hello: bytes):
    from meshproxy.net.tls_layer import TlsLayer
    from meshproxy.tls import context

    events = []
    cw, sw = Wire(), Wire()
    server = TlsLayer(sw, context.server_context(mats["b"], ["x"]), lambda l: events.append("server ready"),
                      lambda m: events.append(f"server failed: {m}"), handshake_timeout=0, hello=server_hello)
    client = TlsLayer(None, context.client_context(mats["a"], ["x"]), lambda l: events.append("client ready"),
                      lambda m: events.append(f"client failed: {m}"), handshake_timeout=0, server_side=False,
                      hello=client_hello)
    cw.peer, sw.peer = server, client
    client.connection_made(cw)
    return client, server, cw, sw, events


def test_each_side_gets_the_others_line_and_none_of_it_reaches_the_protocols(tls_materials):
    mats = tls_materials
    b_line = encode("ratings-v2", "ratings", "v2", "east")

    async def main():
        client, server, cw, sw, events = _pair(mats, LINE, b_line)
        sw.pump()  # nothing yet
        cw.pump()  # ClientHello
        sw.pump()  # ServerHello ... Finished
        assert events == ["client ready"]  # the client does not wait for the server's line
        up = Inner()
        client.attach(up)
        client.write(b"GET / HTTP/1.1\r\n\r\n")  # right behind our Finished and our line
        cw.pump()
        assert events == ["client ready", "server ready"]  # the server had the client's line first
        assert server.peer_metadata == decode(LINE[:-1])
        down = Inner()
        server.attach(down)
        assert b"".join(down.got) == b"GET / HTTP/1.1\r\n\r\n"
        server.write(b"HTTP/1.1 200 OK\r\n\r\n")
        sw.pump()
        assert b"".join(up.got) == b"HTTP/1.1 200 OK\r\n\r\n"
        assert client.peer_metadata == {"workload": "ratings-v2", "app": "ratings", "version": "v2",
                                        "cluster": "east"}

    asyncio.run(main())


def test_a_peer_without_the_line_is_refused_before_the_server_is_ready(tls_materials):
    mats = tls_materials

    async def main():
        client, server, cw, sw, events = _pair(mats, b"", encode("b", "b", "v", "c"))
        cw.pump()
        sw.pump()
        client.attach(Inner())
        client.write(b"GET /secret HTTP/1.1\r\n\r\n")
        cw.pump()
        assert events == ["client ready", "server failed: the peer did not start with its metadata line "
                                          "(not a meshproxy sidecar?)"]
        assert sw.aborted and server.inner is None and server.backlog == []

    asyncio.run(main())
