"""HTTP/2 peers for the end-to-end tests: a raw frame client and an h2c upstream.

``RawH2`` writes frames itself (hyperframe + one hpack encoder), so a test can do
what a well-behaved client library refuses to: open more streams than the peer
allows, reset a stream in the same write as its HEADERS, flood resets, never
send a WINDOW_UPDATE. It reads frames back one by one and decodes response
header blocks in order.

``H2Upstream`` is an h2c (prior knowledge) origin server on the h2 library that
honours flow control: it echoes requests as JSON (headers, body, trailers), and
serves ``/big?n=BYTES`` by sending only what the proxy's windows allow, counting
what it managed to send.
"""

from __future__ import annotations

import asyncio
import json

import h2.config
import h2.connection
import h2.events
import h2.settings
from hpack import Decoder, Encoder
from hyperframe.frame import (DataFrame, Frame, GoAwayFrame, HeadersFrame, PingFrame, RstStreamFrame,
                              SettingsFrame, WindowUpdateFrame)

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
NO_ERROR, PROTOCOL_ERROR, CANCEL, REFUSED_STREAM, ENHANCE_YOUR_CALM = 0x0, 0x1, 0x8, 0x7, 0xB


class Response:
    def __init__(self):
        self.headers: list[tuple[str, str]] = []
        self.trailers: list[tuple[str, str]] = []
        self.body = bytearray()
        self.ended = False
        self.reset: int | None = None

    @property
    def status(self) -> int:
        return int(dict(self.headers)[":status"])

    def header(self, name: str) -> str | None:
        return dict(self.headers).get(name)


class RawH2:
    """A frame-level HTTP/2 client. ``auto_window``: hand every received DATA byte
    back at once (WINDOW_UPDATE on stream and connection); False models a slow
    reader that never acknowledges."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, auto_window: bool = True):
        self.reader = reader
        self.writer = writer
        self.auto_window = auto_window
        self.enc = Encoder()
        self.dec = Decoder()
        self.responses: dict[int, Response] = {}
        self.goaway: GoAwayFrame | None = None
        self.server_settings: dict[int, int] = {}
        self.closed = False
        self.frames: list[Frame] = []

    @classmethod
    async def connect(cls, port: int, *, auto_window: bool = True, initial_window: int = 65535,
                      host: str = "127.0.0.1") -> "RawH2":
        reader, writer = await asyncio.open_connection(host, port, limit=1 << 20)
        c = cls(reader, writer, auto_window)
        settings = SettingsFrame(0, settings={SettingsFrame.INITIAL_WINDOW_SIZE: initial_window,
                                              SettingsFrame.ENABLE_PUSH: 0})
        writer.write(PREFACE + settings.serialize())
        await writer.drain()
        return c

    # --- frames out ---------------------------------------------------------
    def headers_frame(self, sid: int, headers, end_stream: bool = False) -> bytes:
        flags = ["END_HEADERS"] + (["END_STREAM"] if end_stream else [])
        return HeadersFrame(sid, self.enc.encode(headers), flags=flags).serialize()

    @staticmethod
    def data_frame(sid: int, data: bytes, end_stream: bool = False) -> bytes:
        return DataFrame(sid, data, flags=["END_STREAM"] if end_stream else []).serialize()

    @staticmethod
    def rst_frame(sid: int, code: int = CANCEL) -> bytes:
        return RstStreamFrame(sid, error_code=code).serialize()

    @staticmethod
    def window_frame(sid: int, n: int) -> bytes:
        return WindowUpdateFrame(sid, window_increment=n).serialize()

    def request_headers(self, path: str = "/", method: str = "GET", authority: str = "test.local",
                        extra=()) -> list[tuple[str, str]]:
        return [(":method", method), (":scheme", "http"), (":authority", authority), (":path", path), *extra]

    async def send(self, *chunks: bytes) -> None:
        self.writer.write(b"".join(chunks))
        await self.writer.drain()

    async def request(self, sid: int, path: str = "/", method: str = "GET", body: bytes | None = None,
                      extra=(), trailers=None) -> None:
        hdrs = self.request_headers(path, method, extra=extra)
        if body is None and trailers is None:
            await self.send(self.headers_frame(sid, hdrs, True))
            return
        out = [self.headers_frame(sid, hdrs, False)]
        if body:
            out.append(self.data_frame(sid, body, trailers is None))
        if trailers is not None:
            out.append(self.headers_frame(sid, trailers, True))
        elif not body:
            out.append(self.data_frame(sid, b"", True))
        await self.send(*out)

    # --- frames in ----------------------------------------------------------
    async def read_frame(self, timeout: float = 5) -> Frame | None:
        """One frame (None on EOF). Server SETTINGS are acknowledged, PINGs answered."""
        try:
            head = await asyncio.wait_for(self.reader.readexactly(9), timeout)
        except (asyncio.IncompleteReadError, ConnectionResetError):
            self.closed = True
            return None
        frame, length = Frame.parse_frame_header(memoryview(head))
        body = await asyncio.wait_for(self.reader.readexactly(length), timeout) if length else b""
        frame.parse_body(memoryview(body))
        self.frames.append(frame)
        await self._on_frame(frame)
        return frame

    async def _on_frame(self, f: Frame) -> None:
        if isinstance(f, SettingsFrame) and "ACK" not in f.flags:
            self.server_settings.update(f.settings)
            await self.send(SettingsFrame(0, flags=["ACK"]).serialize())
        elif isinstance(f, PingFrame) and "ACK" not in f.flags:
            await self.send(PingFrame(0, f.opaque_data, flags=["ACK"]).serialize())
        elif isinstance(f, HeadersFrame):
            r = self.responses.setdefault(f.stream_id, Response())
            block = [(k.decode() if isinstance(k, bytes) else k, v.decode() if isinstance(v, bytes) else v)
                     for k, v in self.dec.decode(f.data, raw=True)]
            if r.headers and int(dict(r.headers).get(":status", "200")) >= 200:
                r.trailers.extend(block)
            elif block and block[0][0] == ":status" and int(block[0][1]) < 200:
                pass  # 1xx
            else:
                r.headers = block
            if "END_STREAM" in f.flags:
                r.ended = True
        elif isinstance(f, DataFrame):
            r = self.responses.setdefault(f.stream_id, Response())
            r.body += f.data
            if "END_STREAM" in f.flags:
                r.ended = True
            if self.auto_window and f.flow_controlled_length:
                await self.send(self.window_frame(0, f.flow_controlled_length),
                                self.window_frame(f.stream_id, f.flow_controlled_length))
        elif isinstance(f, RstStreamFrame):
            self.responses.setdefault(f.stream_id, Response()).reset = f.error_code
        elif isinstance(f, GoAwayFrame):
            self.goaway = f

    async def read_until(self, pred, timeout: float = 10) -> None:
        """Read frames until ``pred()`` holds; AssertionError on EOF or timeout."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not pred():
            left = deadline - loop.time()
            assert left > 0, f"timed out; frames so far: {[type(f).__name__ for f in self.frames[-20:]]}"
            try:
                f = await self.read_frame(left)
            except asyncio.TimeoutError:
                raise AssertionError(f"timed out; last frames: {[repr(f) for f in self.frames[-10:]]}") from None
            if f is None:
                assert pred(), f"connection closed first; last frames: {[repr(f) for f in self.frames[-10:]]}"
                return

    async def read_until_eof(self, timeout: float = 5) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not self.closed:
            left = deadline - loop.time()
            assert left > 0, "connection did not close"
            try:
                await self.read_frame(left)
            except asyncio.TimeoutError:
                raise AssertionError("connection did not close") from None

    def done(self, sid: int) -> bool:
        r = self.responses.get(sid)
        return r is not None and (r.ended or r.reset is not None)

    def close(self) -> None:
        self.writer.close()


class H2Upstream:
    """An h2c origin (prior knowledge). Every request is answered with a JSON echo
    of what arrived, after its body ended; ``/big?n=N`` answers N bytes of ``z``
    within the flow-control windows (in DATA frames of ``&frame=BYTES`` if given); ``/slow`` answers after ``slow_delay``."""

    def __init__(self, max_streams: int = 1000):
        self.max_streams = max_streams
        self.port = 0
        self.server: asyncio.AbstractServer | None = None
        self.connections = 0
        self.requests: list[dict] = []
        self.max_open = 0
        self.big_sent = 0
        self.slow_delay = 0.5
        self._tasks: set = set()

    async def start(self) -> "H2Upstream":
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        self.server.close()
        for t in list(self._tasks):
            t.cancel()

    async def _serve(self, reader, writer):
        self._tasks.add(asyncio.current_task())
        self.connections += 1
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False, header_encoding="utf-8"))
        conn.local_settings = h2.settings.Settings(client=False, initial_values={
            h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: self.max_streams})
        conn.initiate_connection()
        writer.write(conn.data_to_send())
        streams: dict[int, dict] = {}
        big: dict[int, int] = {}  # stream id -> bytes still to send
        frame_size: dict[int, int] = {}  # stream id -> DATA frame size asked for (``&frame=N``)

        def pump():
            for sid in list(big):
                left = big[sid]
                while left:
                    try:
                        room = min(conn.local_flow_control_window(sid), frame_size.get(sid, conn.max_outbound_frame_size), left)
                    except Exception:
                        left = 0
                        break
                    if room <= 0:
                        break
                    conn.send_data(sid, b"z" * room)
                    self.big_sent += room
                    left -= room
                if left:
                    big[sid] = left
                else:
                    del big[sid]
                    streams.pop(sid, None)
                    try:
                        conn.end_stream(sid)
                    except Exception:
                        pass

        async def answer_later(sid, delay):
            await asyncio.sleep(delay)
            try:
                respond(sid)
                writer.write(conn.data_to_send())
            except Exception:
                pass

        def respond(sid):
            st = streams[sid]
            path = st["headers"].get(":path", "")
            if path.startswith("/big"):
                q = dict(kv.split("=", 1) for kv in path.partition("?")[2].split("&") if "=" in kv)
                n = int(q.get("n", 8 << 20))
                if "frame" in q:
                    frame_size[sid] = int(q["frame"])
                conn.send_headers(sid, [(":status", "200"), ("content-type", "application/octet-stream")])
                big[sid] = n
                pump()
                return
            body = json.dumps({"headers": st["headers"], "body": st["body"].decode("latin-1"),
                               "trailers": st["trailers"], "open": len(streams)}).encode()
            conn.send_headers(sid, [(":status", "200"), ("content-type", "application/json"),
                                    ("content-length", str(len(body)))])
            conn.send_data(sid, body, end_stream=True)
            streams.pop(sid, None)

        try:
            while True:
                data = await reader.read(65536)
                if not data:
                    break
                for ev in conn.receive_data(data):
                    if isinstance(ev, h2.events.RequestReceived):
                        streams[ev.stream_id] = {"headers": dict(ev.headers), "body": bytearray(),
                                                 "trailers": {}, "header_list": list(ev.headers)}
                        self.max_open = max(self.max_open, len(streams))
                    elif isinstance(ev, h2.events.DataReceived):
                        streams[ev.stream_id]["body"] += ev.data
                        conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
                    elif isinstance(ev, h2.events.TrailersReceived):
                        streams[ev.stream_id]["trailers"] = dict(ev.headers)
                    elif isinstance(ev, h2.events.StreamEnded):
                        st = streams[ev.stream_id]
                        self.requests.append(st)
                        if st["headers"].get(":path", "").startswith("/slow"):
                            t = asyncio.ensure_future(answer_later(ev.stream_id, self.slow_delay))
                            self._tasks.add(t)
                        else:
                            respond(ev.stream_id)
                    elif isinstance(ev, h2.events.StreamReset):
                        streams.pop(ev.stream_id, None)
                        big.pop(ev.stream_id, None)
                    elif isinstance(ev, h2.events.WindowUpdated):
                        pump()
                    elif isinstance(ev, h2.events.ConnectionTerminated):
                        break
                writer.write(conn.data_to_send())
                await writer.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()
