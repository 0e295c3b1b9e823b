"""Upstream HTTP/1.1 connections of the express lane: one response at a time, parsed lean.

Where this sits: ``http/express.py`` (the express lane's downstream side) takes
one of these from ``upstream/pool.py`` (key protocol ``"express"``), writes a
whole request with ``send``, and gets the response back through three calls on
its side: ``response_start`` (status, fields, framing, the first body bytes),
``response_body`` (more body; ``ended`` on the last), ``upstream_failed``. The
general path's ``upstream/client.py`` does the same job through codec events
and an exchange; this does it with no per-event objects, for the traffic the
express lane takes: a response head is checked by a fresh httptools parser
unless every line of it was accepted in an earlier head (``known_response``).

Invariants:
1. The same acceptance as ``codec/http1.py`` on the client role: a head is taken
   by httptools and ``plain_response`` (or ``inspect_response``), or is made only of
   a start line and field lines they took before, within the same size, line and
   count limits; a fault is ``UPSTREAM_PROTOCOL_ERROR`` (502 before the response
   started).
2. Content-Length bodies are sliced without the parser; chunked bodies are fed
   to the parser in pieces that end at each CRLFCRLF (``piece_ends``), so the
   end of the message is always a piece end and nothing after it is taken as
   body. A body delimited by the connection's end ends at EOF.
3. The connection goes back to the pool only when the response ended cleanly,
   both sides allow keep-alive and nothing arrived after the response. After
   any fault it is closed, never reused.
4. Informational (1xx) responses are dropped, as on the general path: the
   request never carried ``Expect`` or ``Upgrade``.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from httptools import HttpParserError, HttpParserUpgrade, HttpResponseParser

from ..codec._http1_checks import (DEFAULT_LIMITS, SPECIAL, Reject, find_head, inspect_response,
                                   inspect_trailers, keep_alive, piece_ends, version_of)
from ..codec._http1_write import render_fields
from ..codec.events import ResponseHead
from ..errors import UPSTREAM_CONNECTION_TERMINATION, UPSTREAM_PROTOCOL_ERROR, UPSTREAM_RESET
from ..http.express_heads import fields_of, head_lines, known_response, plain_response, remember_start
from ..http.headers import clean_response
from ..net.flush import TurnWrites

log = logging.getLogger("meshproxy.upstream")

# Receive states.
_IDLE, _HEAD, _FIXED, _CHUNKED, _UNTIL_EOF = range(5)


class ExpressConnection(TurnWrites, asyncio.Protocol):
    """One upstream HTTP/1.1 connection in a ``Pool`` (key protocol ``"express"``)."""

    protocol = "express"

    def __init__(self, key, pool, limits=None) -> None:
        self.key = key
        self.pool = pool
        self.limits = limits or DEFAULT_LIMITS
        self.flusher = pool.flusher
        self.transport: Any = None
        """The ``asyncio.Transport``; None until ``connection_made``."""
        self.out_q: list[bytes] = []
        """Bytes written this loop turn, handed to the transport at its end (``TurnWrites``)."""
        self.dirty = False
        self.closed = False
        self.requests = 0
        """Requests sent on this connection so far (``max_requests_per_connection``)."""
        self.idle_since = 0.0
        self.call: Any = None
        """The downstream (``http.express.ExpressServer``) whose response this is, or None."""
        self.state = _IDLE
        self.is_head = False
        self.buf = b""
        self.remaining = 0
        self.keep = True
        self.parser: Any = None
        """The chunked body's decoder (httptools ``HttpResponseParser``) while one is in use."""
        self.tail = b""
        # scratch filled by the parser callbacks
        self.fields: list[tuple[bytes, bytes]] = []
        """Trailer fields of a chunked body."""
        self.sink = _HeadSink()
        self.body: list[bytes] = []
        self.complete = False

    # === what the pool and the express lane call ===
    def available(self) -> bool:
        return self.call is None and not self.closed

    def send(self, call, data: bytes, is_head: bool) -> None:
        """Write one whole request; its response goes to ``call``."""
        self.call = call
        self.requests += 1
        self.is_head = is_head
        self.state = _HEAD
        self.queue(data)

    def abandon(self) -> None:
        """The downstream gave up on the response: this connection cannot be reused."""
        self.call = None
        self.out_q.clear()
        self.closed = True
        self.pool.forget(self)
        if self.transport is not None:
            self.transport.abort()

    def pause_reading(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.resume_reading()

    def close(self) -> None:
        if not self.closed:
            self.flush()
            self.closed = True
            self.pool.forget(self)
            if self.transport is not None:
                self.transport.close()

    # === transport callbacks ===
    def connection_made(self, transport) -> None:
        self.transport = transport

    def connection_lost(self, exc) -> None:
        self.closed = True
        self.pool.forget(self)
        call = self.call
        if call is not None:
            self.call = None
            call.upstream_failed(UPSTREAM_CONNECTION_TERMINATION, "upstream connection closed")

    def eof_received(self):
        call = self.call
        st = self.state
        self.closed = True
        self.pool.forget(self)
        if call is not None:
            self.call = None
            if st == _UNTIL_EOF:
                self.state = _IDLE
                call.response_body(b"", True)
            elif st == _HEAD and self.buf:
                call.upstream_failed(UPSTREAM_PROTOCOL_ERROR, "upstream closed the connection inside a response head")
            else:
                call.upstream_failed(UPSTREAM_RESET, "upstream reset the stream (error code 8)")
        return False

    def data_received(self, data: bytes) -> None:
        try:
            self._receive(data)
        except Exception:  # the per-connection boundary: a bug closes this connection only
            log.exception("internal error on upstream connection %s:%s; closing it", self.key.host, self.key.port)
            call, self.call = self.call, None
            self.abandon()
            if call is not None:
                call.upstream_failed(UPSTREAM_PROTOCOL_ERROR, "internal error")

    # === receiving ===
    def _receive(self, data: bytes) -> None:
        st = self.state
        if st == _HEAD:
            buf = self.buf + data if self.buf else data
            limits = self.limits
            end = buf.find(b"\r\n\r\n") + 4
            if (end >= 4 and buf[0] != 13 and buf[0] != 10 and end <= limits.max_header_bytes
                    and buf.find(b"\r\n") <= limits.max_request_line):
                # the common read: a whole head within the limits (the field count is checked in _head)
                self.buf = b""
                head, rest = (buf, b"") if end == len(buf) else (buf[:end], buf[end:])
                if not self._head(head, rest) or self.state != _HEAD or not rest:
                    return
                buf = rest  # an informational response: the final one follows
            self._heads(buf)
        elif st == _FIXED:
            n = len(data)
            if n < self.remaining:
                self.remaining -= n
                self.call.response_body(data, False)
                return
            rest, data = data[self.remaining:], data[:self.remaining]
            self.remaining = 0
            self._done(data, rest)
        elif st == _CHUNKED:
            self._chunked(data)
        elif st == _UNTIL_EOF:
            self.call.response_body(data, False)
        else:  # _IDLE: bytes nobody asked for, the connection is out of step
            self.abandon()

    def _heads(self, buf: bytes) -> None:
        """Response heads in ``buf`` the way the codec finds them (``find_head``), for the reads
        ``_receive`` does not take at once: a head in pieces, blank lines first, a limit crossed."""
        while True:
            if buf[:1] in (b"\r", b"\n"):  # empty lines between messages are ignored
                buf = buf.lstrip(b"\r\n")
                if not buf:
                    self.buf = b""
                    return
            try:
                end = find_head(buf, 0, self.limits)
            except Reject as r:
                self._fault(r.message)
                return
            if end < 0:
                self.buf = buf
                return
            self.buf = b""
            head = buf if end == len(buf) else buf[:end]
            rest = b"" if end == len(buf) else buf[end:]
            if not self._head(head, rest):
                return
            if self.state != _HEAD:  # a final response: its body (if any) was taken
                return
            buf = rest  # an informational response: the final one follows
            if not buf:
                return

    def _head(self, head: bytes, rest: bytes) -> bool:
        """A whole response head; False when the connection failed on it."""
        start, lines = head_lines(head)
        if len(lines) > self.limits.max_headers:
            return self._fault("too many response headers")
        known = known_response(start, lines)  # every line accepted before: no parser needed
        if known is not None:
            status, plain = known
        else:
            sink = self.sink
            sink.complete = False
            parser = HttpResponseParser(sink)  # checks the head; its fields are read from its lines
            try:
                parser.feed_data(head)
            except HttpParserUpgrade:
                pass
            except HttpParserError as e:
                if not sink.complete:
                    return self._fault(f"malformed message head: {e}")
            status = parser.get_status_code()
            plain = plain_response(lines) if status >= 200 and start[:9] == b"HTTP/1.1 " else None
            if plain is not None:
                remember_start(start, status)
        if plain is not None:
            lines, cl, chunked, keep, grpc = plain
        else:  # the general path's checks and hygiene, one by one
            fields = fields_of(head, HttpResponseParser)  # no more fields than lines
            special = [f for f in fields if f[0] in SPECIAL]
            try:
                if head[:5] != b"HTTP/":
                    raise Reject(502, "not an HTTP response")
                version = version_of(head[5:8])
                cl, chunked = inspect_response(version, special)
            except Reject as r:
                return self._fault(r.message)
            if status < 200 or status == 101:
                if status == 101:
                    return self._fault("unexpected 101 response")
                return True  # informational: dropped, the final response follows
            keep = keep_alive(version, special)
            lines, grpc = _clean_lines(status, fields)
        parts = start.split(b" ", 2)
        reason = parts[2] if len(parts) == 3 else b""
        no_body = self.is_head or status == 204 or status == 304
        if no_body:
            chunked = False
        self.keep = keep and (no_body or chunked or cl is not None)
        call = self.call
        if no_body or (not chunked and cl == 0):
            self.state = _IDLE
            call.response_start(status, reason, lines, grpc, cl, False, b"", True)
            self._release(rest)
        elif cl is not None:
            if len(rest) >= cl:
                self.state = _IDLE
                body, rest = (rest, b"") if len(rest) == cl else (rest[:cl], rest[cl:])
                call.response_start(status, reason, lines, grpc, cl, False, body, True)
                self._release(rest)
            else:
                self.state = _FIXED
                self.remaining = cl - len(rest)
                call.response_start(status, reason, lines, grpc, cl, False, rest, False)
        elif chunked:
            self.state = _CHUNKED
            self.tail = b""
            self.body = []
            self.parser = HttpResponseParser(self)  # decodes the chunks; its fields are the trailers
            self.parser.feed_data(head)
            self.fields = []
            self.complete = False
            call.response_start(status, reason, lines, grpc, None, True, b"", False)
            if rest and self.call is call:
                self._chunked(rest)
        else:
            self.state = _UNTIL_EOF
            call.response_start(status, reason, lines, grpc, None, True, rest, False)
        return True

    def _chunked(self, data: bytes) -> None:
        parser = self.parser
        start = 0
        for end in piece_ends(self.tail, data):
            try:
                parser.feed_data(data[start:end] if start or end != len(data) else data)
            except HttpParserError as e:
                self._fault(f"malformed chunked body: {e}")
                return
            start = end
            if self.complete:
                break
        self.tail = data[-3:] if len(data) >= 3 else (self.tail + data)[-3:]
        body, self.body = self.body, []
        piece = body[0] if len(body) == 1 else b"".join(body)
        call = self.call
        if not self.complete:
            if piece:
                call.response_body(piece, False)
            return
        trailers = None
        if self.fields:
            try:
                trailers = inspect_trailers(self.fields, self.limits, False)
            except Reject as r:
                self._fault(r.message)
                return
        self.state = _IDLE
        call.response_body(piece, True, trailers)
        self._release(data[start:])

    def _done(self, body: bytes, rest: bytes) -> None:
        call = self.call
        self.state = _IDLE
        call.response_body(body, True)
        self._release(rest)

    def _release(self, rest: bytes) -> None:
        """The response ended: back to the pool, unless anything says otherwise."""
        self.call = None
        if rest.strip(b"\r\n") or not self.keep or self.closed:
            self.close()
        else:
            self.pool.release(self)

    def _fault(self, message: str) -> bool:
        call, self.call = self.call, None
        self.abandon()
        if call is not None:
            call.upstream_failed(UPSTREAM_PROTOCOL_ERROR, message)
        return False

    # === httptools callbacks of the chunked-body parser (called only from feed_data) ===
    def on_header(self, name: bytes, value: bytes) -> None:
        self.fields.append((name.lower(), value))

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        self.complete = True


class _HeadSink:
    """The protocol of the parser that checks a response head: only whether the message
    ended within it (a parse error after that end is not the head's fault)."""

    __slots__ = ("complete",)

    def __init__(self) -> None:
        self.complete = False

    def on_message_complete(self) -> None:
        self.complete = True


def _clean_lines(status: int, fields) -> tuple[list[bytes], bytes | None]:
    """The field lines ``clean_response`` and ``render_fields`` keep of a response head that
    ``plain_response`` declined, and its first ``grpc-status`` value (or None)."""
    head = ResponseHead(0, status, fields)
    clean_response(head)
    lines: list[bytes] = []
    render_fields(lines, head.headers)
    grpc = None
    for k, v in head.headers:
        if k == b"grpc-status":
            grpc = v
            break
    return lines, grpc
