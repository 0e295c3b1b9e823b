"""HTTP/1.1 codec: httptools (llhttp) behind the event vocabulary of ``events.py``.

Where this sits: ``http/server.py`` runs one ``Http1Codec(role="server")`` per
downstream HTTP/1 connection (parses requests, serialises responses);
``upstream/client.py`` runs ``Http1Codec(role="client")`` per upstream
connection (serialises requests, parses responses). Both feed it bytes from
``data_received`` and write ``data_to_send()`` to their transport. It is sans-IO:
no sockets, no clocks, no asyncio; and nothing above it imports httptools.

Invariants:

1. llhttp sees one message at a time. The codec finds the end of every head
   itself (``find_head``), feeds exactly those bytes to a fresh parser, then
   frames the body: Content-Length bodies are sliced without the parser (no
   copy, no callback); chunked bodies go through the parser in pieces that end
   at each CRLFCRLF, and a chunked message can only end right after one. So the
   codec always knows where the next message starts, and checks each head
   (``_http1_checks``) before anything above sees it.
2. Nothing of a rejected request is emitted: its ``ProtocolError`` comes instead
   of its ``RequestHead``; then the codec stops reading (``should_close``).
3. Responses leave in request order (pipelining): output for a later stream is
   held until every earlier stream's response has ended.
4. Peer faults become ``ProtocolError`` events, never exceptions; misuse by our
   own side raises ``LocalProtocolError``.
5. Upgrade and CONNECT: the request's ``EndStream`` is withheld until its
   response head is sent. A 101 (2xx for CONNECT) turns the stream into a raw
   byte tunnel both ways (``Data`` events, EOF gives ``EndStream``); any other
   status releases the ``EndStream`` and HTTP resumes (a refused CONNECT closes).
   After such a response head, call ``receive_data(b"")`` to collect events for
   bytes that arrived before the decision.
"""

from __future__ import annotations

from httptools import HttpParserError, HttpParserUpgrade, HttpRequestParser, HttpResponseParser

from ._http1_checks import (
    DEFAULT_LIMITS,
    PRIME_REQUEST,
    PRIME_RESPONSE,
    SPECIAL,
    Http1Limits,
    Reject,
    find_head,
    inspect_request,
    inspect_response,
    inspect_trailers,
    keep_alive,
    piece_ends,
    version_of,
)
from ._http1_stream import NONE, Http1Sender, Stream
from ._http1_write import LocalProtocolError
from .events import CANCEL, ConnectionEnded, Data, EndStream, Event, ProtocolError, RequestHead, ResponseHead
from .events import Reset, Trailers

__all__ = ["Http1Codec", "Http1Limits", "LocalProtocolError"]

# Receive states.
_HEAD, _LENGTH, _CHUNKED, _UNTIL_EOF, _WAIT_UPGRADE, _TUNNEL, _DONE = range(7)
_BODY_STATES = (_LENGTH, _CHUNKED, _UNTIL_EOF)


class Http1Codec(Http1Sender):
    """One HTTP/1.x connection, either role. See the module docstring for the rules.

    Receive: ``receive_data(bytes) -> [Event]``, ``receive_eof() -> [Event]``.
    Send (``Http1Sender``): ``send_head`` (returns the stream id), ``send_data``,
    ``send_trailers``, ``send_end``, ``send_reset``, ``send_continue``;
    ``data_to_send()`` drains. Connection: ``should_close``, ``start_drain()``,
    ``close()``, ``next_stream_id()``; ``ack``/``pending`` exist for parity with HTTP/2.
    Sends on a stream that already ended (or died with the connection) are dropped.
    """

    def __init__(self, role: str = "server", limits: Http1Limits = DEFAULT_LIMITS) -> None:
        if role not in ("server", "client"):
            raise ValueError(f"role must be 'server' or 'client', not {role!r}")
        super().__init__(role == "server")
        self.limits = limits
        self._buf: bytes | bytearray = b""
        """Received bytes not parsed yet: a bytearray while a head arrives in pieces, else bytes."""
        self._scan_from = 0
        self._rstate = _HEAD
        self._cur: Stream | None = None
        """The stream whose message is being received."""
        self._remaining = 0
        self._tail = b""
        """The last (up to 3) chunked-body bytes fed, to find a CRLFCRLF across reads."""
        self._meta = 0
        """Chunked bytes fed since the last body bytes (sizes, extensions, trailers)."""
        self._eof = False
        self._events: list[Event] = []
        self._parser: HttpRequestParser | HttpResponseParser | None = None
        # Scratch filled by the httptools callbacks for the current message.
        self._url = self._reason = b""
        self._fields: list[tuple[bytes, bytes]] = []
        self._special: list[tuple[bytes, bytes]] = []
        self._complete = False
        self._begins = 0
        self._got_body = False

    # === receiving ===

    def receive_data(self, data: bytes) -> list[Event]:
        """Parse ``data``; return the events it completes. ``b""`` collects events made
        possible by a send (an upgrade decided) without new bytes."""
        events = self._events = self._deferred
        self._deferred = []
        if data and self._rstate != _DONE:
            buf = self._buf
            if not buf:
                self._buf = data
            elif type(buf) is bytearray:  # a head arriving in pieces: amortised appends
                buf += data
            else:
                self._buf = bytearray(buf) + data
        while self._buf:
            st = self._rstate
            if st != _HEAD and type(self._buf) is bytearray:
                self._buf = bytes(self._buf)
            if st == _HEAD:
                if not self._read_head():
                    break
            elif st == _LENGTH:
                self._read_length()
            elif st == _CHUNKED:
                if not self._read_chunked():
                    break
            elif st == _UNTIL_EOF or st == _TUNNEL:
                assert self._cur is not None
                rest = self._buf
                assert isinstance(rest, bytes)  # a bytearray only while a head arrives (above)
                events.append(Data(self._cur.stream_id, rest))
                self._buf = b""
            elif st == _DONE:
                self._buf = b""
            else:  # _WAIT_UPGRADE: keep the bytes until the response decides what they are
                if len(self._buf) > self.limits.max_header_bytes:
                    self._fail(400, "too many bytes before the upgrade was answered")
                break
        return events

    def receive_eof(self) -> list[Event]:
        """The peer closed its sending side."""
        events = self._events = self._deferred
        self._deferred = []
        if self._eof:
            return events
        self._eof = True
        st, cur = self._rstate, self._cur
        if st == _TUNNEL or st == _UNTIL_EOF:
            assert cur is not None
            if st == _TUNNEL:
                events.append(EndStream(cur.stream_id))
            else:
                self._message_done()
        elif st in (_LENGTH, _CHUNKED, _WAIT_UPGRADE):
            assert cur is not None
            events.append(Reset(cur.stream_id, CANCEL))
        elif st == _HEAD and not self._server and self._awaiting:
            if self._buf:
                self._fail(502, "upstream closed the connection inside a response head")
            else:
                events.extend(Reset(s.stream_id, CANCEL) for s in self._awaiting)
        events.append(ConnectionEnded())
        self._rstate = _DONE
        self._buf = b""
        self._closing = True
        return events

    # --- httptools callbacks (called only from feed_data) ---

    def on_message_begin(self) -> None:
        self._begins += 1

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_status(self, reason: bytes) -> None:
        self._reason += reason

    def on_header(self, name: bytes, value: bytes) -> None:
        self._fields.append((name.lower(), value))

    def on_body(self, body: bytes) -> None:
        self._got_body = True
        self._events.append(Data(self._cur.stream_id, body))  # type: ignore[union-attr]

    def on_message_complete(self) -> None:
        self._complete = True

    # --- states ---

    def _read_head(self) -> bool:
        buf = self._buf
        if buf[0] == 13 or buf[0] == 10:  # empty lines between messages are ignored
            buf = self._buf = buf.lstrip(b"\r\n")
            self._scan_from = 0
            if not buf:
                return False
        if not self._server and not self._awaiting:
            return self._fail(502, "response without a request")
        try:
            end = find_head(buf, self._scan_from, self.limits)
        except Reject as r:
            return self._fail(r.status, r.message)
        if end < 0:
            self._scan_from = max(0, len(buf) - 3)
            return False
        if end == len(buf) and type(buf) is bytes:
            head = buf
            self._buf = b""
        else:
            head = bytes(buf[:end])
            self._buf = bytes(buf[end:])
        self._scan_from = 0
        self._url = self._reason = b""
        self._fields = []
        self._complete, self._begins = False, 0
        parser = self._parser = HttpRequestParser(self) if self._server else HttpResponseParser(self)
        try:
            parser.feed_data(head)
        except HttpParserUpgrade:
            pass
        except HttpParserError as e:
            if not self._complete:  # after completion: llhttp's upgrade pause, not an error
                return self._fail(400, f"malformed message head: {e}")
        self._special = [f for f in self._fields if f[0] in SPECIAL]
        if self._server:
            return self._request_head(parser, head)  # type: ignore[arg-type]
        return self._response_head(parser, head)  # type: ignore[arg-type]

    def _request_head(self, parser: HttpRequestParser, head: bytes) -> bool:
        method = parser.get_method()
        try:
            le = head.find(b"\r\n")
            if head[le - 8 : le - 3] != b"HTTP/":
                raise Reject(400, "not an HTTP request")
            version = version_of(head[le - 3 : le])
            authority, scheme, cl, chunked, upgrade, expect = inspect_request(
                method, self._url, version, self._fields, self._special, head, self.limits
            )
        except Reject as r:
            return self._fail(r.status, r.message)
        s = Stream(self._next_id)
        self._next_id += 1
        s.is_head = method == b"HEAD"
        s.upgrade = upgrade
        s.connect = upgrade == b"connect"
        s.http10 = version == "1.0"
        s.keep_alive = keep_alive(version, self._special)  # llhttp forgets once the message is complete
        self._register(s)
        self._cur = s
        fields, self._fields = self._fields, []
        no_body = not chunked and not cl
        self._events.append(
            RequestHead(
                s.stream_id, method, self._url, authority, fields, version, scheme, s.keep_alive,
                upgrade, expect, no_body and upgrade is None, cl,
            )
        )
        self._start_body(chunked, cl, no_body)
        return True

    def _response_head(self, parser: HttpResponseParser, head: bytes) -> bool:
        s = self._cur = self._awaiting[0]
        status = parser.get_status_code()
        try:
            if head[:5] != b"HTTP/":
                raise Reject(502, "not an HTTP response")
            version = version_of(head[5:8])
            cl, chunked = inspect_response(version, self._special)
        except Reject as r:
            return self._fail(502, r.message)
        keep = keep_alive(version, self._special)
        fields, self._fields = self._fields, []
        reason = self._reason
        sid = s.stream_id
        if status == 101 or (s.connect and 200 <= status < 300):
            if s.upgrade is None or (status == 101) == s.connect:
                return self._fail(502, f"unexpected {status} response")
            self._events.append(ResponseHead(sid, status, fields, version, reason, False))
            self._rstate = _TUNNEL
            self._closing = True
            self._tunnel_send(s)
            return True
        if status < 200:  # informational: the final response follows
            self._events.append(ResponseHead(sid, status, fields, version, reason, True))
            return True
        no_body = s.is_head or status == 204 or status == 304
        if no_body:
            chunked = False
        keep = keep and (no_body or chunked or cl is not None)
        if not keep:
            self._closing = True
        empty = no_body or (not chunked and cl == 0)
        self._events.append(ResponseHead(sid, status, fields, version, reason, keep, empty, cl))
        if not empty and not chunked and cl is None:
            self._rstate = _UNTIL_EOF
        else:
            self._start_body(chunked, cl, empty)
        return True

    def _start_body(self, chunked: bool, cl: int | None, no_body: bool) -> None:
        if chunked:
            self._rstate = _CHUNKED
            self._tail = b""
            self._meta = 0
            if self._complete:  # llhttp skipped the body (httptools does for Upgrade requests)
                self._parser = HttpRequestParser(self) if self._server else HttpResponseParser(self)
                self._parser.feed_data(PRIME_REQUEST if self._server else PRIME_RESPONSE)
                self._url = self._reason = b""
                self._fields, self._special = [], []
                self._complete, self._begins = False, 1
        elif no_body:
            self._message_done()
        else:
            self._rstate = _LENGTH
            self._remaining = cl  # type: ignore[assignment]

    def _read_length(self) -> None:
        buf, n = self._buf, self._remaining
        assert isinstance(buf, bytes)  # a bytearray only while a head arrives (receive_data)
        sid = self._cur.stream_id  # type: ignore[union-attr]
        if len(buf) <= n:
            self._events.append(Data(sid, buf))
            self._buf = b""
            n -= len(buf)
        else:
            self._events.append(Data(sid, buf[:n]))
            self._buf = buf[n:]
            n = 0
        self._remaining = n
        if n == 0:
            self._message_done()

    def _read_chunked(self) -> bool:
        buf, self._buf = self._buf, b""
        assert isinstance(buf, bytes)  # a bytearray only while a head arrives (receive_data)
        parser = self._parser
        assert parser is not None
        start = 0
        for split in piece_ends(self._tail, buf):
            piece = buf if start == 0 and split == len(buf) else memoryview(buf)[start:split]
            self._got_body = False
            try:
                parser.feed_data(piece)
            except HttpParserUpgrade:
                pass
            except HttpParserError as e:
                if not self._complete:
                    return self._fail(400, f"malformed chunked body: {e}")
            if self._complete:
                if self._begins > 1:
                    return self._fail(400, "ambiguous chunked message end")
                self._buf = buf[split:]
                self._message_done()
                return True
            self._meta = 0 if self._got_body else self._meta + split - start
            if self._meta > self.limits.max_header_bytes:
                return self._fail(431, "chunk metadata or trailers too large")
            start = split
        self._tail = (self._tail + buf[-3:])[-3:]
        return False

    def _message_done(self) -> None:
        self._parser = None  # it holds this codec's callbacks: kept, it would tie the two in a cycle
        s = self._cur
        assert s is not None
        events = self._events
        if self._fields:
            try:
                trailers = inspect_trailers(self._fields, self.limits, self._server)
            except Reject as r:
                self._fail(r.status, r.message)
                return
            self._fields, self._special = [], []
            if trailers:
                events.append(Trailers(s.stream_id, trailers))
        if not self._server:
            self._awaiting.popleft()
            events.append(EndStream(s.stream_id))
            if not s.ended and s.framing != NONE:  # answered before reading the whole request
                self._closing = True
            self._rstate = _DONE if self._closing else _HEAD
            return
        s.req_done = True
        if s.upgrade is not None:
            if s.answer is None:
                self._rstate = _WAIT_UPGRADE
                return
            if s.answer:
                self._rstate = _TUNNEL
                return
        events.append(EndStream(s.stream_id))
        self._rstate = _DONE if (self._closing or self._drain or not s.keep_alive or s.connect) else _HEAD

    def _upgrade_decided(self, s: Stream, accepted: bool) -> None:
        """Server role: the response head for an upgrade/CONNECT stream was sent."""
        s.answer = accepted
        if self._rstate == _WAIT_UPGRADE and self._cur is s:
            if accepted:
                self._rstate = _TUNNEL
            else:
                self._deferred.append(EndStream(s.stream_id))
                self._rstate = _DONE if (s.connect or self._drain or not s.keep_alive) else _HEAD

    def _stop_receiving(self) -> None:
        if self._rstate not in _BODY_STATES and self._rstate != _TUNNEL:
            self._rstate = _DONE
            self._buf = b""

    def _fail(self, status: int, message: str) -> bool:
        """Report a peer fault and stop reading; returns False to end the read loop."""
        if self._server:
            s = self._cur if self._rstate in _BODY_STATES or self._rstate == _WAIT_UPGRADE else None
            if s is None:  # rejected head: give it a stream id so a 4xx can be sent in order
                s = Stream(self._next_id)
                self._next_id += 1
                s.req_done = True
                self._register(s)
            s.last = True
            sid: int | None = s.stream_id
        else:
            status = 502
            sid = self._awaiting[0].stream_id if self._awaiting else None
        self._events.append(ProtocolError(sid, status, message, True))
        self._rstate = _DONE
        self._buf = b""
        self._closing = True
        return False

