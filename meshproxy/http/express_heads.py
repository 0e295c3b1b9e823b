"""Pure: the express lane's one-pass head rewriting, for the heads that need nothing unusual.

Where this sits: ``http/express.py`` calls ``plain_request`` on each request head
httptools has accepted, and ``upstream/express.py`` calls ``plain_response`` on
each response head. Both take the head's raw field lines (no per-field parser
callbacks) and read each through a bounded memo of lines already classified,
since a sidecar sees the same few lines over and over. Each does, in one loop
over the lines, what the general
path does in several passes — the codec's checks (``codec/_http1_checks``),
header hygiene (``headers.clean_request`` / ``clean_response``), the Host rule
(``headers.to_http1_request``) and rendering (``codec/_http1_write``) — and
produces the same bytes. Whenever a head holds anything those passes would
treat specially (a ``Connection`` option other than keep-alive/close,
``TE``, ``Upgrade``, ``Expect``, ``Transfer-Encoding`` on a request, gRPC, a
duplicate or missing Host, an odd Content-Length, an ``x-meshproxy-`` or
underscore name, an unseen Host value, ``X-Forwarded-For`` inbound) the
function returns None and the caller takes the exact route (the same helpers
the general path calls), so rare heads cost a little more and never differ.
``tests/unit/http/test_express_heads.py`` checks both against the general
functions.

The two loops run in C when the optional extension ``codec/_ngfast`` was built
(``_load_fast`` hands it the memos, the line classifiers and ``new_request_id``,
so the rules stay here); ``plain_request_py`` / ``plain_response_py`` are the
reference the tests compare them with.
"""

from __future__ import annotations

from typing import Any

from ..codec import native
from ..codec._http1_checks import _CR, _GOOD_HOSTS, _LF, _UNDERSCORE
from .headers import MESHPROXY_PREFIX, new_request_id

# What a raw field line is, as each function reads it: ``bytes`` for an ordinary line (what is
# forwarded for it: name lower-cased, ``name: value\r\n``; empty when it is dropped) or a tuple
# whose first item is one of these kinds. Lines repeat (a sidecar sees the same few clients and
# apps), so each classification is kept in a bounded memo keyed by the raw line.
_HOST, _CL, _CLOSE, _RID, _XFF, _XFP, _UNDER, _ODD, _CHUNKED, _GRPC = range(10)
_ODD_LINE = (_ODD,)
_CONN, _KDROP, _CT, _TE = range(100, 104)
"""Name kinds that only say how to read the value (the name's line kinds are the ones above)."""
_REQUEST_KINDS = {
    b"content-type": _CT,
    b"host": _HOST, b"content-length": _CL, b"connection": _CONN,
    b"keep-alive": _KDROP, b"proxy-connection": _KDROP, b"x-forwarded-client-cert": _KDROP,
    b"x-request-id": _RID, b"x-forwarded-for": _XFF, b"x-forwarded-proto": _XFP,
    b"transfer-encoding": _ODD, b"te": _ODD, b"upgrade": _ODD, b"expect": _ODD,
}
_RESPONSE_KINDS = {
    b"content-length": _CL, b"connection": _CONN, b"transfer-encoding": _TE,
    b"keep-alive": _KDROP, b"proxy-connection": _KDROP, b"te": _KDROP, b"upgrade": _KDROP,
}
_BLANKS = b" \t"
_X = MESHPROXY_PREFIX[0]
_XPLEN = len(MESHPROXY_PREFIX)
_BODY_METHODS = frozenset((b"POST", b"PUT", b"PATCH"))
_MEMO_MAX = 2048
_REQ_MEMO: dict[bytes, Any] = {}
_RESP_MEMO: dict[bytes, Any] = {}
_START_MEMO: dict[bytes, int] = {}
"""Response start lines (``HTTP/1.1 <status> <reason>``, final statuses) of heads the parser
accepted, with their status: with ``plain_response(..., known_only=True)`` they let a head made
only of lines already accepted skip the parser (``known_response``)."""


def split_field_line(line: bytes) -> tuple[bytes, bytes] | None:
    """``(lower-case name, value)`` of one field line of a head the HTTP/1 parser accepted, read
    as that parser reports it (blanks before the value dropped, blanks after it kept), or None for a line that is not
    exactly one field (an obs-fold continuation, a stray CR or LF inside, no colon)."""
    if not line or line[0] in _BLANKS or _LF in line or _CR in line:
        return None
    name, colon, value = line.partition(b":")
    if not colon or not name:
        return None
    return name.lower(), value.lstrip(_BLANKS)


def head_lines(head: bytes) -> tuple[bytes, list[bytes]]:
    """``(start line, field lines)`` of a whole head (``...\r\n\r\n``) the HTTP/1 parser
    accepted: the field lines are everything between the start line and the blank line."""
    lines = head.split(b"\r\n")
    start = lines[0]
    del lines[-2:]
    del lines[0]
    return start, lines


def _remember(memo: dict, line: bytes, what: Any) -> Any:
    """Keep what ``line`` was classified as (the memo is emptied when full); return it."""
    if len(memo) >= _MEMO_MAX:
        memo.clear()
    memo[line] = what
    return what


def _request_line(line: bytes) -> Any:
    """Classify a request field line (see the kinds above) and remember it; None: decline."""
    nv = split_field_line(line)
    if nv is None:
        return None
    name, value = nv
    e: Any
    kind = _REQUEST_KINDS.get(name)
    if kind is None:
        if name[0] == _X and name[:_XPLEN] == MESHPROXY_PREFIX:
            e = b""  # only meshproxy may say these
        elif _UNDERSCORE in name:
            e = (_UNDER, name + b": " + value + b"\r\n")
        else:
            e = name + b": " + value + b"\r\n"
    elif kind == _HOST:
        if value not in _GOOD_HOSTS:
            return None  # not checked yet: the exact path checks it (and remembers it there)
        e = (_HOST, value, b"host: " + value + b"\r\n")
    elif kind == _CL:
        n = _length(value)
        e = _ODD_LINE if n is None else (_CL, n)
    elif kind == _CONN:
        e = b"" if _keeps(value) else (_CLOSE,) if value.lower() == b"close" else _ODD_LINE
    elif kind == _RID:
        return (_RID, value, b"x-request-id: " + value + b"\r\n")  # unique per request: not remembered
    elif kind == _XFF:
        e = (_XFF, b"x-forwarded-for: " + value + b"\r\n")
    elif kind == _XFP:
        e = (_XFP, b"x-forwarded-proto: " + value + b"\r\n")
    elif kind == _CT:
        e = _ODD_LINE if value.startswith(b"application/grpc") else b"content-type: " + value + b"\r\n"
    elif kind == _KDROP:
        e = b""
    else:
        e = _ODD_LINE
    return _remember(_REQ_MEMO, line, e)


def plain_request_py(method: bytes, target: bytes, lines, inbound: bool, peer_ip: bytes,
                     underscores_ok: bool, available: int, scheme: bytes = b"http", extra: bytes = b""):
    """``(upstream head bytes, request id, authority, body length, keep-alive)`` for an
    HTTP/1.1 request head whose raw field ``lines`` (``head_lines``) need nothing unusual
    and whose body is exactly the ``available`` bytes that followed the head, else None.

    The head must already have passed the HTTP/1 parser; ``target`` is origin-form. The
    result is what ``clean_request`` (with ``scheme``), ``to_http1_request`` and the codec's
    request rendering make of it; ``extra`` (whole field lines) is added after hygiene's own
    fields, as ``x-forwarded-client-cert`` is on the general path."""
    out = [method + b" " + target + b" HTTP/1.1\r\n"]
    append = out.append
    memo = _REQ_MEMO
    host: bytes | None = None
    cl: int | None = None
    rid: bytes | None = None
    e: Any
    keep = True
    xfp = False
    for line in lines:
        e = memo.get(line)
        if e is None:
            e = _request_line(line)
            if e is None:
                return None
        if e.__class__ is bytes:
            append(e)
            continue
        kind = e[0]
        if kind == _HOST:
            if host is not None:
                return None
            host = e[1]
            append(e[2])
        elif kind == _CL:
            if cl is not None:
                return None
            cl = e[1]
        elif kind == _CLOSE:
            keep = False
        elif kind == _RID:
            if rid is None and e[1]:
                rid = e[1]
                append(e[2])
        elif kind == _XFF:
            if inbound:
                return None
            append(e[1])
        elif kind == _XFP:
            if not inbound:
                xfp = True
                append(e[1])
        elif kind == _UNDER:
            if not underscores_ok:
                return None
            append(e[1])
        else:  # _ODD
            return None
    if host is None:
        return None
    n = 0 if cl is None else cl
    if n != available:
        return None
    if rid is None:
        rid = new_request_id()
        append(b"x-request-id: " + rid + b"\r\n")
    if inbound:
        append(b"x-forwarded-for: " + peer_ip + b"\r\n")
    if not xfp:
        append(b"x-forwarded-proto: " + scheme + b"\r\n")
    if extra:
        append(extra)
    if cl is not None:
        append(b"content-length: %d\r\n\r\n" % n)
    elif method in _BODY_METHODS:
        append(b"content-length: 0\r\n\r\n")
    else:
        append(b"\r\n")
    return b"".join(out), rid, host, n, keep


def _response_line(line: bytes) -> Any:
    """Classify a response field line and remember it; None: decline."""
    nv = split_field_line(line)
    if nv is None:
        return None
    name, value = nv
    e: Any
    kind = _RESPONSE_KINDS.get(name)
    if kind is None:
        if name[0] == _X and name[:_XPLEN] == MESHPROXY_PREFIX:
            e = b""
        elif name == b"grpc-status":
            e = (_GRPC, value, name + b": " + value + b"\r\n")
        else:
            e = name + b": " + value + b"\r\n"
    elif kind == _CL:
        n = _length(value)
        e = _ODD_LINE if n is None else (_CL, n)
    elif kind == _CONN:
        e = b"" if _keeps(value) else (_CLOSE,) if value.lower() == b"close" else _ODD_LINE
    elif kind == _TE:
        e = (_CHUNKED,) if value.lower() == b"chunked" else _ODD_LINE
    else:  # hop-by-hop: dropped
        e = b""
    return _remember(_RESP_MEMO, line, e)


def known_response(start: bytes, lines: list[bytes]) -> Any:
    """``(status, plain_response(lines))`` for a response head made only of lines the HTTP/1
    parser has already accepted in earlier heads (its start line in ``_START_MEMO``, every field
    line in the line memo), else None: then the caller parses the head. The parser's verdict
    on a head is the sum of its verdicts on its lines (obs-fold and stray CR/LF are never
    remembered) plus what ``plain_response`` checks across lines (duplicate or conflicting
    framing fields) and the caller's limits (head size, line length, field count)."""
    status = _START_MEMO.get(start)
    if status is None:
        return None
    plain = plain_response(lines, True)
    return None if plain is None else (status, plain)


def remember_start(start: bytes, status: int) -> None:
    """Remember the start line of a final HTTP/1.1 response head the parser accepted and
    ``plain_response`` took (``known_response`` then takes heads like it without the parser)."""
    _remember(_START_MEMO, start, status)


def plain_response_py(lines, known_only: bool = False):
    """``(forwarded field lines, content length or None, chunked, keep-alive, grpc-status or
    None)`` for an HTTP/1.1 response head (not 1xx), already accepted by the HTTP/1 parser,
    whose raw field ``lines`` (``head_lines``) need nothing unusual, else None. The forwarded
    lines are what ``clean_response`` and the codec's ``render_fields`` keep, one
    ``name: value\r\n`` each (dropped ones as empty bytes); framing is the caller's.
    ``known_only``: decline at the first line not in the memo instead of classifying it
    (for a head the parser has not seen)."""
    out: list[bytes] = []
    append = out.append
    memo = _RESP_MEMO
    e: Any
    cl: int | None = None
    chunked = False
    keep = True
    grpc: bytes | None = None
    for line in lines:
        e = memo.get(line)
        if e is None:
            if known_only:
                return None
            e = _response_line(line)
            if e is None:
                return None
        if e.__class__ is bytes:
            append(e)
            continue
        kind = e[0]
        if kind == _CL:
            if cl is not None:
                return None
            cl = e[1]
        elif kind == _CLOSE:
            keep = False
        elif kind == _CHUNKED:
            if chunked:
                return None
            chunked = True
        elif kind == _GRPC:
            if grpc is None:
                grpc = e[1]
            append(e[2])
        else:  # _ODD
            return None
    if chunked and cl is not None:
        return None
    return out, cl, chunked, keep, grpc


class _Fields:
    """Collects a head's fields the way httptools reports them: the exact path's input."""

    def __init__(self) -> None:
        self.fields: list[tuple[bytes, bytes]] = []

    def on_header(self, name: bytes, value: bytes) -> None:
        self.fields.append((name.lower(), value))


def fields_of(head: bytes, parser_class: Any) -> list[tuple[bytes, bytes]]:
    """``(lower-case name, value)`` of each field of a ``head`` the parser already accepted
    (``parser_class``: httptools' request or response parser)."""
    sink = _Fields()
    parser_class(sink).feed_data(head)
    return sink.fields


def _length(value: bytes) -> int | None:
    """A Content-Length value as the codec reads it (digits, trailing blanks allowed), else None."""
    digits = value.rstrip(b" \t")
    if not digits.isdigit() or len(digits) > 18:
        return None
    return int(digits)


def _keeps(value: bytes) -> bool:
    """A Connection value that only says keep-alive (``close`` and anything else: False)."""
    return value == b"keep-alive" or value.lower() == b"keep-alive"


def _load_fast():  # noqa: ANN202 - the extension module or None
    """``_ngfast`` (the C loops of ``plain_request``/``plain_response``) handed this module's
    memos, classifiers, ``new_request_id`` and reference functions; None when not built or
    switched off (``codec/native``)."""
    _ngfast = native.load()
    if _ngfast is None:
        return None
    kinds = (_HOST, _CL, _CLOSE, _RID, _XFF, _XFP, _UNDER, _ODD, _CHUNKED, _GRPC)
    if kinds != tuple(range(10)):  # the C loops read these numbers
        raise RuntimeError("express_heads line kinds changed: update _ngfast.c")
    _ngfast.express_setup(_REQ_MEMO, _RESP_MEMO, _request_line, _response_line, new_request_id,
                          plain_request_py, plain_response_py)
    return _ngfast


_fast = _load_fast()
plain_request = plain_request_py if _fast is None else _fast.plain_request
"""``plain_request_py``, its loop in C when ``_ngfast`` was built (positional arguments only then)."""
plain_response = plain_response_py if _fast is None else _fast.plain_response
"""``plain_response_py``, its loop in C when ``_ngfast`` was built."""
