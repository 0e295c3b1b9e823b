"""Test helpers for the HTTP/2 codec: raw frames in, parsed frames out, and a
client/server codec pair joined back to back (h2 ``FrameFactory``, h11
``ConnectionPair``)."""

from __future__ import annotations

from hpack import Decoder, Encoder
from hyperframe.frame import (ContinuationFrame, DataFrame, Frame, GoAwayFrame, HeadersFrame,
                              PingFrame, RstStreamFrame, SettingsFrame, WindowUpdateFrame)

from meshproxy.codec import http2
from meshproxy.codec.http2 import Http2Limits

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


def request_fields(path: bytes = b"/", method: bytes = b"GET", authority: bytes = b"svc",
                   extra: list | None = None) -> list:
    fields = [(b":method", method), (b":scheme", b"http"), (b":authority", authority),
              (b":path", path)]
    return fields + (extra or [])


class FrameFactory:
    """Builds serialised client frames; one HPACK encoder per connection."""

    def __init__(self) -> None:
        self.encoder = Encoder()

    def preamble(self, settings: dict | None = None) -> bytes:
        return PREFACE + self.settings(settings or {})

    def settings(self, settings: dict | None = None, ack: bool = False) -> bytes:
        f = SettingsFrame(0)
        if ack:
            f.flags.add("ACK")
        else:
            f.settings = dict(settings or {})
        return f.serialize()

    def block(self, fields: list) -> bytes:
        return self.encoder.encode(fields)

    def headers(self, stream_id: int, fields: list | bytes, end_stream: bool = False,
                end_headers: bool = True) -> bytes:
        f = HeadersFrame(stream_id)
        f.data = fields if isinstance(fields, bytes) else self.block(fields)
        if end_headers:
            f.flags.add("END_HEADERS")
        if end_stream:
            f.flags.add("END_STREAM")
        return f.serialize()

    def continuation(self, stream_id: int, data: bytes, end_headers: bool = False) -> bytes:
        f = ContinuationFrame(stream_id)
        f.data = data
        if end_headers:
            f.flags.add("END_HEADERS")
        return f.serialize()

    def data(self, stream_id: int, data: bytes, end_stream: bool = False,
             pad_length: int = 0) -> bytes:
        f = DataFrame(stream_id)
        f.data = data
        if end_stream:
            f.flags.add("END_STREAM")
        if pad_length:
            f.flags.add("PADDED")
            f.pad_length = pad_length
        return f.serialize()

    def rst(self, stream_id: int, error_code: int = 0x8) -> bytes:
        return RstStreamFrame(stream_id, error_code=error_code).serialize()

    def ping(self, opaque: bytes = b"\x00" * 8, ack: bool = False) -> bytes:
        f = PingFrame(0, opaque_data=opaque)
        if ack:
            f.flags.add("ACK")
        return f.serialize()

    def window_update(self, stream_id: int, increment: int) -> bytes:
        return WindowUpdateFrame(stream_id, window_increment=increment).serialize()

    def goaway(self, last_stream_id: int, error_code: int = 0) -> bytes:
        return GoAwayFrame(0, last_stream_id=last_stream_id, error_code=error_code).serialize()


def parse_frames(data: bytes) -> list[Frame]:
    """Split serialised frames (no preface) into hyperframe objects."""
    frames = []
    view = memoryview(data)
    while view:
        f, length = Frame.parse_frame_header(view[:9])
        f.parse_body(view[9:9 + length])
        frames.append(f)
        view = view[9 + length:]
    return frames


def goaways(frames: list[Frame]) -> list[GoAwayFrame]:
    return [f for f in frames if isinstance(f, GoAwayFrame)]


def rsts(frames: list[Frame]) -> list[tuple[int, int]]:
    return [(f.stream_id, f.error_code) for f in frames if isinstance(f, RstStreamFrame)]


class RawServer:
    """A server-role codec driven by hand-built client frames."""

    def __init__(self, limits: Http2Limits = Http2Limits(), handshake: bool = True) -> None:
        self.codec = http2.Http2Codec("server", limits)
        self.codec.initiate()
        self.ff = FrameFactory()
        self.decoder = Decoder()
        if handshake:  # else the test feeds a real client's preface
            # Like a real client: our SETTINGS are acknowledged at once, so the
            # windows and limits they announce are in force on both backends.
            self.codec.receive_data(self.ff.preamble() + self.ff.settings(ack=True))
            self.drain()

    def feed(self, data: bytes) -> list:
        return self.codec.receive_data(data)

    def drain(self) -> list[Frame]:
        return parse_frames(self.codec.data_to_send())

    def headers_sent(self, frames: list[Frame]) -> list[tuple[int, list]]:
        return [(f.stream_id, self.decoder.decode(f.data, raw=True))
                for f in frames if isinstance(f, HeadersFrame)]


class ConnectionPair:
    """A client-role and a server-role codec joined back to back."""

    def __init__(self, limits: Http2Limits = Http2Limits(),
                 client_limits: Http2Limits | None = None) -> None:
        self.client = http2.Http2Codec("client", client_limits or limits)
        self.server = http2.Http2Codec("server", limits)
        self.client.initiate()
        self.server.initiate()
        self.pump()

    def pump(self) -> tuple[list, list]:
        """Shuttle bytes both ways until quiet; return (server_events, client_events)."""
        server_events: list = []
        client_events: list = []
        while True:
            to_server = self.client.data_to_send()
            if to_server:
                server_events += self.server.receive_data(to_server)
            to_client = self.server.data_to_send()
            if to_client:
                client_events += self.client.receive_data(to_client)
            if not to_server and not to_client:
                return server_events, client_events
