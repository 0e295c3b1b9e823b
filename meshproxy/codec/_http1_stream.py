"""HTTP/1 send side: framing decisions, in-order output, connection reuse.

Where this sits: the base class of ``codec/http1.py``'s ``Http1Codec``, which adds
the receive side. Output is queued in ``_out`` (drained by ``data_to_send()`` in
one ``b"".join``, so a small response is one transport write). A stream that is
not first in wire order writes into its own ``held`` list instead, flushed when
every earlier stream has ended: that is how pipelined responses (server role)
and pipelined requests (client role) keep their order.

Framing of what we send (the codec owns Content-Length/Transfer-Encoding; the
caller's values for them are dropped and re-derived):

1. Server role, response to HEAD, or 204/304 (and 1xx): no body; a HEAD/304
   Content-Length is passed on as declared.
2. 101 (to an Upgrade request), 2xx to CONNECT: raw tunnel, no framing.
3. A known length (``head.content_length``, else the caller's Content-Length
   field; ``end_stream`` on the head means 0) → ``content-length``.
4. Unknown length: ``transfer-encoding: chunked`` to HTTP/1.1 peers; to an
   HTTP/1.0 client, the body ends when we close.
   Server role: ``connection: close`` (and ``should_close``) when the request or
   ``ResponseHead.keep_alive=False`` asks for it, when draining, or when framing
   needs the close; ``connection: keep-alive`` to an HTTP/1.0 client otherwise.
5. Client role: a request without a body and without a length gets no framing
   (``content-length: 0`` for POST/PUT/PATCH); upgrade requests likewise.
"""

from __future__ import annotations

from collections import deque

from ._http1_write import (
    CONTINUE_100,
    LAST_CHUNK,
    LocalProtocolError,
    finish,
    render_fields,
    render_trailers,
    status_line,
)
from .events import CANCEL, Event, Headers, RequestHead, ResponseHead

# How a stream's body is framed on the wire.
NONE, FIXED, CHUNKS, CLOSE, RAW = range(5)
_EMPTY_BODY_METHODS = frozenset((b"POST", b"PUT", b"PATCH"))


class Stream:
    """One request/response exchange on the connection."""

    __slots__ = (
        "stream_id", "is_head", "connect", "upgrade", "http10", "keep_alive", "req_done",
        "framing", "remaining", "final", "ended", "held", "last", "dead", "answer",
    )

    def __init__(self, stream_id: int) -> None:
        self.stream_id = stream_id
        self.is_head = False
        """The request method is HEAD (its response has no body)."""
        self.connect = False
        self.upgrade: bytes | None = None
        """Upgrade token of the request (``b"connect"`` for CONNECT)."""
        self.http10 = False
        """Server role: the client spoke HTTP/1.0 (no chunked responses)."""
        self.keep_alive = True
        """Server role: the request allows another request after it."""
        self.req_done = False
        """Server role: the whole request has been received."""
        self.framing = NONE
        self.remaining = 0
        """FIXED framing: body bytes still to send."""
        self.final = False
        """The head we send for this stream has been sent (final response, or request)."""
        self.ended = False
        """Our side of the stream has ended."""
        self.held: list[bytes] | None = None
        """Output waiting for earlier streams; None once this stream writes straight out."""
        self.last = False
        """The connection closes once this stream's output is written."""
        self.dead = False
        """The connection will close before this stream gets its turn: sends are dropped."""
        self.answer: bool | None = None
        """Server role, upgrade/CONNECT: whether the response head accepted the tunnel."""


class Http1Sender:
    """Send half of ``Http1Codec`` (see the module docstring)."""

    def __init__(self, server: bool) -> None:
        self._server = server
        self._out: list[bytes] = []
        self._order: deque[Stream] = deque()
        self._streams: dict[int, Stream] = {}
        self._next_id = 1
        self._closing = False
        self._drain = False
        self._deferred: list[Event] = []
        self._awaiting: deque[Stream] = deque()
        """Client role: requests whose final response has not ended, oldest first."""

    # --- hooks the receive side provides ---

    def _upgrade_decided(self, s: Stream, accepted: bool) -> None:
        raise NotImplementedError

    def _stop_receiving(self) -> None:
        raise NotImplementedError

    # === public API ===

    @property
    def should_close(self) -> bool:
        """Close the connection once the streams received so far are answered and drained."""
        return self._closing or (self._drain and not self._order)

    def data_to_send(self) -> bytes:
        """Everything queued for the wire, as one bytes object."""
        out = self._out
        if not out:
            return b""
        data = out[0] if len(out) == 1 and type(out[0]) is bytes else b"".join(out)
        self._out = []
        return data

    def pending(self, stream_id: int) -> int:
        """Bytes ``send_data`` could not send for lack of flow-control window: always 0 here."""
        return 0

    def next_stream_id(self) -> int:
        """Client role: a fresh stream id for ``send_head`` (1, 2, 3 ...). Server role:
        reserve the next id for a local reply to a request that never arrived whole
        (408 on a head timeout); reading stops and the connection closes after it."""
        sid = self._next_id
        self._next_id += 1
        if self._server:
            s = Stream(sid)
            s.req_done = s.last = True
            self._register(s)
            self._closing = True
            self._stop_receiving()
        return sid

    def start_drain(self) -> None:
        """Server: read no new request; the response to the last one read carries
        ``connection: close``. Client: the next request carries ``connection: close``."""
        self._drain = True
        if self._server:
            self._stop_receiving()

    def close_after_current(self) -> None:
        """The same as ``start_drain`` (the name the codec interface uses)."""
        self.start_drain()

    def close(self, error_code: int = 0) -> None:
        """Abandon the connection: stop reading, drop output not yet queued for the wire."""
        self._closing = True
        self._stop_receiving()
        for s in self._order:
            s.dead, s.held = True, None
        self._order.clear()
        self._streams.clear()

    def ack(self, stream_id: int, n: int) -> None:
        """HTTP/2 flow control; nothing to do for HTTP/1."""

    def send_head(self, head: RequestHead | ResponseHead) -> int:
        """Send a head; returns its stream id (client role: a new id when ``head.stream_id``
        is 0/None)."""
        if self._server:
            if type(head) is not ResponseHead and not isinstance(head, ResponseHead):
                raise LocalProtocolError("the server role sends responses")
            self._send_response_head(head)
        else:
            if type(head) is not RequestHead and not isinstance(head, RequestHead):
                raise LocalProtocolError("the client role sends requests")
            if not head.stream_id:
                head.stream_id = self.next_stream_id()
            self._send_request_head(head)
        return head.stream_id

    def send_continue(self, stream_id: int) -> None:
        """Server role: ``HTTP/1.1 100 Continue`` for a request with ``expect_continue``."""
        s = self._streams.get(stream_id)
        if s is None or s.dead:
            return
        if s.final or not self._server:
            raise LocalProtocolError("100 Continue only before the final response")
        if not s.http10:
            self._write(s, CONTINUE_100)

    def send_data(self, stream_id: int, data: bytes, end_stream: bool = False) -> None:
        """Body bytes (raw bytes in a tunnel). Dropped if the stream already ended or died."""
        s = self._streams.get(stream_id)
        if s is None or s.dead:
            return
        if not s.final or s.ended:
            raise LocalProtocolError("send_data outside a message body")
        if data:
            f = s.framing
            if f == CHUNKS:
                out = self._out if s.held is None else s.held
                out.extend((b"%x\r\n" % len(data), data, b"\r\n"))
            elif f == FIXED:
                if len(data) > s.remaining:
                    raise LocalProtocolError("body longer than its Content-Length")
                s.remaining -= len(data)
                self._write(s, data)
            elif f != NONE:
                self._write(s, data)
        if end_stream:
            self._end(s, LAST_CHUNK)

    def send_trailers(self, stream_id: int, headers: Headers) -> None:
        """Trailers end the stream; they are sent only with chunked framing (else dropped)."""
        s = self._streams.get(stream_id)
        if s is None or s.dead:
            return
        self._end(s, render_trailers(headers))

    def send_end(self, stream_id: int) -> None:
        """End our side of the stream; a no-op if it already ended."""
        s = self._streams.get(stream_id)
        if s is not None and not s.dead:
            self._end(s, LAST_CHUNK)

    def send_reset(self, stream_id: int, error_code: int = CANCEL) -> None:
        """HTTP/1 cannot reset one stream: stop this stream's output and close the
        connection after what is already queued for earlier streams."""
        self._closing = True
        self._stop_receiving()
        s = self._streams.pop(stream_id, None)
        if s is None or s.dead:
            return
        s.ended = s.last = True
        if s.held is not None:
            s.held = []
        else:
            self._advance()

    # === internals ===

    def _register(self, s: Stream) -> None:
        self._streams[s.stream_id] = s
        if self._order:
            s.held = []
        self._order.append(s)

    def _write(self, s: Stream, data: bytes) -> None:
        (self._out if s.held is None else s.held).append(data)

    def _end(self, s: Stream, last_chunk: bytes) -> None:
        if s.ended:
            return
        if not s.final:
            raise LocalProtocolError("stream ended before its head was sent")
        s.ended = True
        f = s.framing
        if f == CHUNKS:
            self._write(s, last_chunk)
        elif (f == FIXED and s.remaining) or f == CLOSE or f == RAW:
            s.last = True  # a short body, or one framed by the close: the connection ends here
        del self._streams[s.stream_id]
        if self._server and not s.req_done:
            s.last = True  # answered before the request was read: reading on would desync
        if s.last:
            self._closing = True
            self._stop_receiving()
        if s.held is None:
            self._advance()

    def _advance(self) -> None:
        """The first stream in wire order has ended: hand the wire to the next ones."""
        order = self._order
        s = order.popleft()
        while not s.last and order:
            s = order[0]
            if s.held:
                self._out.extend(s.held)
            s.held = None
            if not s.ended:
                return
            order.popleft()
        if s.last:
            for d in order:
                d.dead = True
                d.held = None
            order.clear()

    def _send_response_head(self, head: ResponseHead) -> None:
        s = self._streams.get(head.stream_id)
        if s is None or s.dead:  # answered already, or the connection is closing
            return
        if s.final:
            raise LocalProtocolError("response head already sent")
        status = head.status
        lines = [status_line(status, head.reason)]
        seen = render_fields(lines, head.headers)
        n = 1 + seen.count
        if status == 101 or (s.connect and 200 <= status < 300):
            if s.upgrade is None or (status == 101) == s.connect:
                raise LocalProtocolError(f"{status} to a request that did not ask for it")
            if status == 101:
                n += _ensure_upgrade(lines, seen, s.upgrade)
            s.framing, s.final = RAW, True
            self._write(s, finish(lines, n))
            self._upgrade_decided(s, True)
            s.last = self._closing = True  # the tunnel is the connection's last exchange
            return
        if status < 200:
            if not s.http10:  # HTTP/1.0 clients do not expect interim responses
                self._write(s, finish(lines, n))
            return
        if s.upgrade is not None:
            self._upgrade_decided(s, False)
        cl = head.content_length
        if cl is None and seen.content_length is not None:
            cl = _parse_length(seen.content_length)
        close = (s.last or not s.keep_alive or not head.keep_alive or s.connect
                 or (self._drain and s.stream_id == self._next_id - 1))
        if s.is_head or status == 204 or status == 304:
            s.framing = NONE
            if cl is not None and status != 204:
                lines.append(b"content-length: %d\r\n" % cl)
                n += 1
        elif cl is not None or head.end_stream:
            s.framing, s.remaining = FIXED, cl or 0
            lines.append(b"content-length: %d\r\n" % (cl or 0))
            n += 1
        elif not s.http10:
            s.framing = CHUNKS
            lines.append(b"transfer-encoding: chunked\r\n")
            n += 1
        else:
            s.framing, close = CLOSE, True
        said_close = seen.connection is not None and b"close" in seen.connection.lower()
        if close and not said_close:
            lines.append(b"connection: close\r\n")
            n += 1
        elif said_close:
            close = True
        elif s.http10 and seen.connection is None:
            lines.append(b"connection: keep-alive\r\n")
            n += 1
        if close:
            s.last = True
            self._closing = True
            self._stop_receiving()
        s.final = True
        self._write(s, finish(lines, n))
        if head.end_stream:
            self._end(s, LAST_CHUNK)

    def _send_request_head(self, head: RequestHead) -> None:
        if head.stream_id in self._streams:
            raise LocalProtocolError(f"stream {head.stream_id} is already open")
        s = Stream(head.stream_id)
        method = head.method
        s.is_head = method == b"HEAD"
        s.connect = method == b"CONNECT"
        s.upgrade = b"connect" if s.connect else head.upgrade
        lines = [method + b" " + head.target + b" HTTP/1.1\r\n"]
        seen = render_fields(lines, head.headers)
        n = 1 + seen.count
        if not seen.host and head.authority is not None:
            lines.insert(1, b"host: %s\r\n" % head.authority)
            n += 1
        cl = head.content_length
        if cl is None and seen.content_length is not None:
            cl = _parse_length(seen.content_length)
        if cl is None and head.end_stream and s.upgrade is None and not self._order and not self._drain:
            # The common request: no body, nothing else in flight. What _register, _write and
            # _end would do, without the bookkeeping a stream that ends at once never needs.
            if method in _EMPTY_BODY_METHODS:
                lines.append(b"content-length: 0\r\n")
                n += 1
            s.final = s.ended = True
            self._awaiting.append(s)
            self._out.append(finish(lines, n))
            return
        if s.connect:
            s.framing = NONE
        elif cl is not None:
            s.framing, s.remaining = FIXED, cl
            lines.append(b"content-length: %d\r\n" % cl)
            n += 1
        elif head.end_stream or s.upgrade is not None:
            s.framing = NONE
            if head.end_stream and method in _EMPTY_BODY_METHODS:
                lines.append(b"content-length: 0\r\n")
                n += 1
        else:
            s.framing = CHUNKS
            lines.append(b"transfer-encoding: chunked\r\n")
            n += 1
        if s.upgrade is not None and not s.connect:
            n += _ensure_upgrade(lines, seen, s.upgrade)
        elif self._drain and seen.connection is None:
            lines.append(b"connection: close\r\n")
            n += 1
        s.final = True
        self._register(s)
        self._awaiting.append(s)
        self._write(s, finish(lines, n))
        if head.end_stream:
            self._end(s, LAST_CHUNK)

    def _tunnel_send(self, s: Stream) -> None:
        """Client role: the upstream accepted the tunnel; our side now writes raw bytes."""
        if not s.ended:
            s.framing = RAW


def _ensure_upgrade(lines: list[bytes], seen, protocol: bytes) -> int:
    """Add ``connection: upgrade`` / ``upgrade:`` when the caller's headers lack them."""
    added = 0
    if seen.connection is None or b"upgrade" not in seen.connection.lower():
        lines.append(b"connection: upgrade\r\n")
        added += 1
    if not seen.upgrade:
        lines.append(b"upgrade: %s\r\n" % protocol)
        added += 1
    return added


def _parse_length(value: bytes) -> int:
    value = value.strip(b" \t")
    if not value.isdigit():
        raise LocalProtocolError(f"invalid content-length {value!r}")
    return int(value)
