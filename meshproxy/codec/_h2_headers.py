"""Header translation at the HTTP/2 codec boundary, in one pass each way.

Where this sits: private to the HTTP/2 backends (``_h2_codec``, ``_ng_codec``).
Inbound, h2 or nghttp2 hands us the decoded header list (their own validation is
off, see ``_h2_conn`` and ``_ng_codec``); ``lift_request`` /
``lift_response`` / ``check_trailers`` validate it against RFC 9113 section 8.2
and 8.3 and lift pseudo-headers into the event's fields. Outbound,
``request_block`` / ``response_block`` / ``trailer_block`` build the header list
the backend encodes, stripping what HTTP/2 forbids. Together they make HTTP/2 <->
HTTP/1.1 translation possible above the codec:

- received heads never carry pseudo-headers, connection-specific headers or
  ``host`` (it is folded into ``authority``); split ``cookie`` fields are joined
  with ``"; "`` (RFC 9113 section 8.2.3);
- sent heads never carry connection-specific headers, headers named by
  ``Connection``, ``host`` (it becomes ``:authority``) or upper-case names.

Inbound functions return a ``str`` reason instead of raising: a malformed message
is a stream error, and raising costs more than returning on the hot path.

``lift_request``, ``lift_response`` and ``_clean`` are C functions when the
optional extension ``_ngfast`` was built (``codec/native``): the per-field loops
are most of their cost. The Python functions here (``*_py``) are the reference;
tests/unit/codec/test_h2_headers.py compares the two on generated lists, and the
C versions call them for any field that is not an exact ``(bytes, bytes)`` tuple.
"""

from __future__ import annotations

from itertools import chain

from hpack import NeverIndexedHeaderTuple

from . import native
from .events import Headers, RequestHead, ResponseHead

CONNECTION_SPECIFIC = frozenset(
    (b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade")
)
_SPECIAL = CONNECTION_SPECIFIC | {b"te"}  # fields _connection_specific looks at
_SENSITIVE = frozenset((b"authorization", b"proxy-authorization"))
_REQUEST_PSEUDO = frozenset((b":method", b":scheme", b":authority", b":path"))
_OVERHEAD = 32  # per-field overhead in SETTINGS_MAX_HEADER_LIST_SIZE (RFC 9113 6.5.2)


# RFC 9110 token characters, lower-case only (RFC 9113 section 8.2.1); values may
# not hold NUL/CR/LF nor start or end with SP/HTAB.
_TOKEN = b"!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyz"


def _bad_fields(fields: list) -> str | None:
    """Reason the regular (non-pseudo) received ``fields`` are malformed, else
    None. Bytes operations over all names and over all values joined, not a
    regular expression per field: those cost several times more on the hot path.
    Values are joined with LF between and around them, so an LF inside a value
    shows in the count and leading/trailing SP/HTAB sit next to an LF."""
    if not fields:
        return None
    names, values = zip(*fields)
    if b"" in names or b"".join(names).translate(None, _TOKEN):
        return "invalid header name"
    joined = b"\n".join((b"", *values, b""))
    if (joined.count(b"\n") != len(values) + 1 or b"\x00" in joined or b"\r" in joined
            or b"\n " in joined or b" \n" in joined or b"\n\t" in joined or b"\t\n" in joined):
        return "invalid header value"
    return None


def _list_size(fields: list) -> int:
    """A header list's size as SETTINGS_MAX_HEADER_LIST_SIZE counts it (RFC 9113 6.5.2)."""
    return sum(map(len, chain.from_iterable(fields))) + _OVERHEAD * len(fields)


def _connection_specific(name: bytes, value: bytes) -> str | None:
    if name in CONNECTION_SPECIFIC:
        return "connection-specific header field"
    if name == b"te" and value.lower() != b"trailers":
        return "te other than trailers"
    return None


def lift_request_py(stream_id: int, fields: list, end_stream: bool,
                    max_size: int, max_count: int, size: int | None = None) -> RequestHead | str | int:
    """Validate a received request header block and build its ``RequestHead``.

    Returns the head, a ``str`` reason when the request is malformed (stream
    error PROTOCOL_ERROR), or ``431`` when it exceeds the size/count limits.
    ``size``: the list's size as SETTINGS_MAX_HEADER_LIST_SIZE counts it, when the
    caller has it already.
    """
    if len(fields) > max_count:
        return 431
    method = scheme = path = authority = host = None
    content_length: int | None = None
    headers: Headers = []
    cookies: list[bytes] | None = None
    first = -1  # index of the first regular field
    expect = False
    for i, (name, value) in enumerate(fields):
        if name[:1] == b":":
            if first >= 0:
                return "pseudo-header after regular header"
            if name == b":method" and method is None:
                method = value
            elif name == b":path" and path is None:
                path = value
            elif name == b":scheme" and scheme is None:
                scheme = value
            elif name == b":authority" and authority is None:
                authority = value
            else:
                return "unknown, duplicate or response pseudo-header"
            continue
        if first < 0:
            first = i
        if name in _SPECIAL:
            reason = _connection_specific(name, value)
            if reason is not None:
                return reason
        if name == b"cookie":
            if cookies is None:
                cookies = [value]
            else:
                cookies.append(value)
            continue
        if name == b"host":
            if host is not None:
                return "duplicate host"
            host = value
            continue
        if name == b"content-length":
            if not value.isdigit() or (content_length is not None and int(value) != content_length):
                return "invalid content-length"
            content_length = int(value)
        elif name == b"expect":
            expect = value.lower() == b"100-continue"
        headers.append((name, value))
    if (_list_size(fields) if size is None else size) > max_size:
        return 431
    if first >= 0:
        reason = _bad_fields(fields[first:])
        if reason is not None:
            return reason
    if method is None:
        return "missing :method"
    if host is not None:
        if authority is None:
            authority = host
        elif authority != host:
            return ":authority and host differ"
    upgrade = None
    if method == b"CONNECT":
        if scheme is not None or path is not None or authority is None:
            return "CONNECT needs :authority and no :scheme/:path"
        path = authority
        scheme = b"https"
        upgrade = b"connect"
    elif not scheme or not path:
        return "missing :scheme or :path"
    if cookies is not None:
        headers.append((b"cookie", b"; ".join(cookies)))
    return RequestHead(stream_id, method, path, authority, headers, "2", scheme,
                       True, upgrade, expect, end_stream, content_length)


def lift_response_py(stream_id: int, fields: list, end_stream: bool, max_size: int, max_count: int,
                     checked: bool = False, size: int | None = None) -> ResponseHead | str:
    """Validate a received response (or 1xx) header block into a ``ResponseHead``;
    a ``str`` reason when malformed or over the limits. ``checked``: the field
    names and values were validated already (nghttp2's HTTP checks); ``size`` as
    for ``lift_request``."""
    if len(fields) > max_count:
        return "too many response headers"
    status = None
    content_length: int | None = None
    headers: Headers = []
    first = -1
    for i, (name, value) in enumerate(fields):
        if name[:1] == b":":
            if first >= 0 or name != b":status" or status is not None:
                return "bad pseudo-header in response"
            status = value
            continue
        if first < 0:
            first = i
        if name in _SPECIAL and not checked:
            reason = _connection_specific(name, value)
            if reason is not None:
                return reason
        if name == b"content-length":
            if not value.isdigit():
                return "invalid content-length"
            content_length = int(value)
        headers.append((name, value))
    if (_list_size(fields) if size is None else size) > max_size:
        return "response headers too large"
    if first >= 0 and not checked:
        reason = _bad_fields(fields[first:])
        if reason is not None:
            return reason
    if status is None or len(status) != 3 or not status.isdigit() or status == b"101":
        return "missing or invalid :status"
    return ResponseHead(stream_id, int(status), headers, "2", b"", True, end_stream,
                        content_length)


def check_trailers(fields: list, max_size: int, max_count: int,
                   checked: bool = False) -> Headers | str:
    """Validate received trailers: regular fields only (``checked`` as for
    ``lift_response``)."""
    if len(fields) > max_count:
        return "too many trailers"
    size = 0
    for name, value in fields:
        size += len(name) + len(value) + _OVERHEAD
        if name[:1] == b":":
            return "pseudo-header in trailers"
        if name in _SPECIAL and not checked:
            reason = _connection_specific(name, value)
            if reason is not None:
                return reason
    if size > max_size:
        return "trailers too large"
    if not checked:
        reason = _bad_fields(fields)
        if reason is not None:
            return reason
    return fields if type(fields) is list else list(fields)


def _clean_py(headers: Headers, out: list, drop_host: bool) -> bytes | None:
    """Append the sendable fields of ``headers`` to ``out``; return ``host``."""
    host = None
    nominated: set[bytes] | None = None
    for name, value in headers:
        if len(name) == 10 and name.lower() == b"connection":
            nominated = (nominated or set()) | {t.strip().lower() for t in value.split(b",")}
    for name, value in headers:
        name = name.lower()
        if name in CONNECTION_SPECIFIC or name[:1] == b":":
            continue
        if nominated is not None and name in nominated:
            continue
        if name == b"host":
            host = value
            if drop_host:
                continue
        if name == b"te":
            if value.lower() != b"trailers":
                continue
        if name in _SENSITIVE:
            out.append(NeverIndexedHeaderTuple(name, value))
            continue
        out.append((name, value))
    return host


_fast = native.load()
"""The C versions (``_ngfast``), or None."""
if _fast is not None:
    _fast.headers_setup(RequestHead, ResponseHead, NeverIndexedHeaderTuple, lift_request_py,
                        lift_response_py, _clean_py)
lift_request = lift_request_py if _fast is None else _fast.lift_request
"""``lift_request_py``, in C when ``_ngfast`` was built (positional arguments only then)."""
lift_response = lift_response_py if _fast is None else _fast.lift_response
"""``lift_response_py``, in C when ``_ngfast`` was built (positional arguments only then)."""
_clean = _clean_py if _fast is None else _fast.clean
"""``_clean_py``, in C when ``_ngfast`` was built."""


def request_block(head: RequestHead) -> list:
    """The header list to send for ``head`` (client role)."""
    out: list = []
    pseudo = [(b":method", head.method)]
    host = _clean(head.headers, out, True)
    authority = head.authority or host
    if head.method == b"CONNECT":
        pseudo.append((b":authority", authority or head.target))
    else:
        pseudo.append((b":scheme", head.scheme or b"http"))
        if authority:
            pseudo.append((b":authority", authority))
        pseudo.append((b":path", head.target or b"/"))
    pseudo.extend(out)
    return pseudo


def response_block(head: ResponseHead) -> list:
    """The header list to send for ``head`` (server role)."""
    out: list = [(b":status", b"%d" % head.status)]
    _clean(head.headers, out, True)
    return out


def trailer_block(headers: Headers) -> list:
    """The header list to send as trailers."""
    out: list = []
    _clean(headers, out, True)
    return out
