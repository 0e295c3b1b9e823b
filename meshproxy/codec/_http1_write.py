"""HTTP/1 serialisation helpers: start lines, header blocks, chunk framing.

Where this sits: ``codec/http1.py`` decides a message's framing and calls these
to render bytes; nothing here keeps state. Heads are rendered in one
``b"".join`` and checked for CR/LF smuggled in through a name or value (a value
from an HTTP/2 peer or a filter must never split a response).
"""

from __future__ import annotations

from http import HTTPStatus

from .events import Headers

_REASONS = {s.value: s.phrase.encode("ascii") for s in HTTPStatus}
_STATUS_LINES: dict[int, bytes] = {}
_REASON_LINES: dict[tuple[int, bytes], bytes] = {}
"""Status lines with the peer's reason phrase (upstreams repeat a few); bounded."""

# Fields the codec owns or inspects while rendering: framing fields are dropped
# (the codec writes its own), the others are noted so it adds only what is missing.
WATCH = frozenset((b"content-length", b"transfer-encoding", b"connection", b"host", b"upgrade"))

CONTINUE_100 = b"HTTP/1.1 100 Continue\r\n\r\n"
LAST_CHUNK = b"0\r\n\r\n"


class LocalProtocolError(Exception):
    """Our own side misused the codec (a bug above it, not the peer's fault)."""


def status_line(status: int, reason: bytes) -> bytes:
    if reason:
        line = _REASON_LINES.get((status, reason))
        if line is None:
            if len(_REASON_LINES) >= 256:
                _REASON_LINES.clear()
            line = _REASON_LINES[(status, reason)] = b"HTTP/1.1 %d %s\r\n" % (status, reason)
        return line
    line = _STATUS_LINES.get(status)
    if line is None:
        if not 100 <= status <= 999:
            raise LocalProtocolError(f"invalid status {status}")
        line = _STATUS_LINES[status] = b"HTTP/1.1 %d %s\r\n" % (status, _REASONS.get(status, b"Unknown"))
    return line


class Rendered:
    """What ``render_fields`` saw while copying the caller's headers."""

    __slots__ = ("content_length", "connection", "host", "upgrade", "count")

    def __init__(self) -> None:
        self.count = 0
        """Field lines appended."""
        self.content_length: bytes | None = None
        self.connection: bytes | None = None
        self.host = False
        self.upgrade = False


def render_fields(lines: list[bytes], headers: Headers) -> Rendered:
    """Append ``name: value`` lines to ``lines``, skipping framing fields."""
    seen = Rendered()
    extend = lines.extend
    start = len(lines)
    for name, value in headers:
        if name in WATCH:
            if name == b"content-length":
                seen.content_length = value
                continue
            if name == b"transfer-encoding":
                continue
            if name == b"connection":
                seen.connection = value if seen.connection is None else seen.connection + b"," + value
            elif name == b"host":
                seen.host = True
            else:
                seen.upgrade = True
        extend((name, b": ", value, b"\r\n"))
    seen.count = (len(lines) - start) >> 2  # four pieces per field line
    return seen


def finish(lines: list[bytes], nlines: int) -> bytes:
    """Join a head of ``nlines`` lines (start line and fields; the final CRLF is added)."""
    lines.append(b"\r\n")
    head = b"".join(lines)
    if head.count(b"\n") != nlines + 1 or head.count(b"\r") != nlines + 1:
        raise LocalProtocolError("CR or LF inside a header name or value")
    return head


def render_trailers(headers: Headers) -> bytes:
    """The last chunk and a trailer section (framing fields dropped)."""
    lines = [b"0\r\n"]
    seen = render_fields(lines, headers)
    return finish(lines, 1 + seen.count)
