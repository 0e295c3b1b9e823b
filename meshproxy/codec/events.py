"""The one event vocabulary every codec speaks.

Where this sits: ``codec/http1.py`` (httptools) and ``codec/http2.py`` (libnghttp2,
or h2 as the fallback) turn bytes into these events and these events back into
bytes. Everything above the codec (``http/server.py``, the filter chain, the
router, ``upstream/client.py``) sees only these classes and never imports
httptools, nghttp2 or h2.

Rules:

1. Every event carries ``stream_id``. HTTP/1.1 numbers requests on a connection
   1, 2, 3 ... in arrival order (pipelining answers them in that order);
   HTTP/2 uses its own stream ids.
2. A message is ``RequestHead``/``ResponseHead``, then zero or more ``Data``,
   then optionally ``Trailers``, then ``EndStream``. ``Reset`` may end a stream
   at any point instead of ``EndStream``.
3. Header names are lower-case ``bytes``; values are ``bytes`` exactly as sent
   (validated by the codec). Pseudo-headers never appear in ``headers``: they
   are lifted into the head's fields.
4. Errors caused by the peer are events too (``ProtocolError``), carrying the
   status code a server should answer with; the codec never raises on hostile
   input.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Union

Headers = list[tuple[bytes, bytes]]


@dataclass(slots=True)
class RequestHead:
    """A request's head, with pseudo-headers lifted out of ``headers``."""

    stream_id: int
    method: bytes
    """Upper-case method, e.g. ``b"GET"``."""
    target: bytes
    """Request target as sent: origin-form path+query (``/a?b``), absolute-form URI,
    authority-form (CONNECT) or ``*``."""
    authority: bytes | None
    """``Host`` (HTTP/1.1) or ``:authority`` (HTTP/2); None if absent."""
    headers: Headers
    """Regular headers, lower-case names, in order; includes ``host`` for HTTP/1."""
    http_version: str = "1.1"
    """``"1.0"``, ``"1.1"`` or ``"2"``."""
    scheme: bytes = b"http"
    """``:scheme`` for HTTP/2; ``http`` for HTTP/1 unless the target is absolute-form."""
    keep_alive: bool = True
    """HTTP/1: whether the connection may carry another request after this one."""
    upgrade: bytes | None = None
    """HTTP/1 ``Upgrade`` protocol token when ``Connection: upgrade`` is requested
    (``b"websocket"``), ``b"connect"`` for CONNECT; the stream becomes a byte
    tunnel once the peer answers 101 (or 2xx for CONNECT)."""
    expect_continue: bool = False
    """The client sent ``Expect: 100-continue`` and waits before sending the body."""
    end_stream: bool = False
    """True when no body follows (HTTP/2 END_STREAM on HEADERS, or HTTP/1 with no
    body framing). An ``EndStream`` event is still emitted after the head."""
    content_length: int | None = None
    """Declared body length, when the message declares one."""


@dataclass(slots=True)
class ResponseHead:
    """A response's head (final or informational)."""

    stream_id: int
    status: int
    headers: Headers
    http_version: str = "1.1"
    reason: bytes = b""
    keep_alive: bool = True
    """HTTP/1: whether the upstream connection may be reused after this response."""
    end_stream: bool = False
    content_length: int | None = None


@dataclass(slots=True)
class Data:
    """A chunk of body bytes (framing removed)."""

    stream_id: int
    data: bytes
    flow_controlled_length: int = 0
    """HTTP/2: bytes to acknowledge with ``Codec.ack(stream_id, n)`` once the data
    has been passed on (includes padding). 0 for HTTP/1."""


@dataclass(slots=True)
class Trailers:
    """Trailing headers (HTTP/1 chunked trailers, HTTP/2 trailing HEADERS)."""

    stream_id: int
    headers: Headers


@dataclass(slots=True)
class EndStream:
    """The message on this stream is complete."""

    stream_id: int


@dataclass(slots=True)
class Reset:
    """The stream ended abnormally (RST_STREAM, or connection loss mid-message)."""

    stream_id: int
    error_code: int = 0
    """HTTP/2 error code (RFC 9113 section 7); 0x8 CANCEL for HTTP/1 aborts."""
    remote: bool = True
    """True if the peer reset the stream, False if we did."""


@dataclass(slots=True)
class ProtocolError:
    """The peer broke the protocol. The server side answers ``status`` (HTTP/1)
    or resets/GOAWAYs (HTTP/2) as ``connection_fatal`` says."""

    stream_id: int | None
    status: int
    """Status to answer with: 400, 408, 413, 414, 431, 502 ..."""
    message: str
    """Short, clear, safe to put in a response body."""
    connection_fatal: bool = True
    """Whether the connection must be closed (HTTP/1: always after a framing error)."""
    error_code: int = 0x1
    """HTTP/2 error code for RST_STREAM/GOAWAY (0x1 PROTOCOL_ERROR by default)."""


@dataclass(slots=True)
class ConnectionEnded:
    """HTTP/2 GOAWAY received, or the peer closed the connection cleanly."""

    last_stream_id: int | None = None
    error_code: int = 0
    extra: dict = field(default_factory=dict)


@dataclass(slots=True)
class WindowOpened:
    """HTTP/2: the peer opened flow-control window on ``stream_id`` (0 = connection);
    blocked ``send_data`` may continue."""

    stream_id: int


Event = Union[
    RequestHead,
    ResponseHead,
    Data,
    Trailers,
    EndStream,
    Reset,
    ProtocolError,
    ConnectionEnded,
    WindowOpened,
]

# HTTP/2 error codes used across the codebase (RFC 9113 section 7).
NO_ERROR = 0x0
PROTOCOL_ERROR = 0x1
INTERNAL_ERROR = 0x2
FLOW_CONTROL_ERROR = 0x3
STREAM_CLOSED = 0x5
FRAME_SIZE_ERROR = 0x6
REFUSED_STREAM = 0x7
CANCEL = 0x8
COMPRESSION_ERROR = 0x9
CONNECT_ERROR = 0xA
ENHANCE_YOUR_CALM = 0xB
