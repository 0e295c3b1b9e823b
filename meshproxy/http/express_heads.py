"""Pure: the express lane's one-pass head rewriting, for the heads that need nothing unusual.

Where this sits: ``http/express.py`` calls ``plain_request`` on each request head
httptools has accepted, and ``upstream/express.py`` calls ``plain_response`` on
each response head. Each does, in one loop over the fields, what the general
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
"""

from __future__ import annotations

from ..codec._http1_checks import _GOOD_HOSTS
from .headers import MESHPROXY_PREFIX, new_request_id

_HOST, _CL, _CONN, _DROP, _RID, _XFF, _XFP, _ODD, _TE, _CT = range(10)
_REQUEST_KINDS = {
    b"content-type": _CT,
    b"host": _HOST, b"content-length": _CL, b"connection": _CONN,
    b"keep-alive": _DROP, b"proxy-connection": _DROP, b"x-forwarded-client-cert": _DROP,
    b"x-request-id": _RID, b"x-forwarded-for": _XFF, b"x-forwarded-proto": _XFP,
    b"transfer-encoding": _ODD, b"te": _ODD, b"upgrade": _ODD, b"expect": _ODD,
}
_RESPONSE_KINDS = {
    b"content-length": _CL, b"connection": _CONN, b"transfer-encoding": _TE,
    b"keep-alive": _DROP, b"proxy-connection": _DROP, b"te": _DROP, b"upgrade": _DROP,
}
_X = MESHPROXY_PREFIX[0]
_XPLEN = len(MESHPROXY_PREFIX)
_BODY_METHODS = frozenset((b"POST", b"PUT", b"PATCH"))


def plain_request(method: bytes, target: bytes, fields, inbound: bool, peer_ip: bytes,
                  underscores_ok: bool, available: int, scheme: bytes = b"http", extra: bytes = b""):
    """``(upstream head bytes, request id, authority, body length, keep-alive)`` for an
    HTTP/1.1 request head whose (lower-case) ``fields`` need nothing unusual and whose
    body is exactly the ``available`` bytes that followed the head, else None.

    ``target`` is origin-form. The head is what ``clean_request`` (with ``scheme``),
    ``to_http1_request`` and the codec's request rendering make of it; ``extra`` (whole
    field lines) is added after hygiene's own fields, as ``x-forwarded-client-cert`` is
    on the general path."""
    lines = [method + b" " + target + b" HTTP/1.1\r\n"]
    append = lines.append
    kinds = _REQUEST_KINDS
    host = cl = rid = None
    keep = True
    xfp = False
    for name, value in fields:
        kind = kinds.get(name)
        if kind is None:
            if name[0] == _X and name[:_XPLEN] == MESHPROXY_PREFIX:
                continue  # only meshproxy may say these
            if not underscores_ok and b"_" in name:
                return None
            append(name + b": " + value + b"\r\n")
        elif kind == _HOST:
            if host is not None or value not in _GOOD_HOSTS:
                return None
            host = value
            append(b"host: " + value + b"\r\n")
        elif kind == _CL:
            if cl is not None:
                return None
            cl = value
        elif kind == _CONN:
            if not _keeps(value):
                if value.lower() != b"close":
                    return None
                keep = False
        elif kind == _RID:
            if rid is None and value:
                rid = value
                append(b"x-request-id: " + value + b"\r\n")
        elif kind == _XFF:
            if inbound:
                return None
            append(b"x-forwarded-for: " + value + b"\r\n")
        elif kind == _XFP:
            if not inbound:
                xfp = True
                append(b"x-forwarded-proto: " + value + b"\r\n")
        elif kind == _CT:
            if value.startswith(b"application/grpc"):
                return None
            append(b"content-type: " + value + b"\r\n")
        elif kind == _ODD:
            return None
        # _DROP: nothing
    if host is None:
        return None
    n = 0
    if cl is not None:
        n = _length(cl)
        if n is None:
            return None
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
    return b"".join(lines), rid, host, n, keep


def plain_response(fields):
    """``(field lines, content length or None, chunked, keep-alive, grpc-status or None)``
    for an HTTP/1.1 response head (not 1xx) whose lower-case ``fields`` need nothing
    unusual, else None. The lines are what ``clean_response`` and the codec's
    ``render_fields`` keep, one ``name: value\\r\\n`` each; framing is the caller's."""
    lines = []
    append = lines.append
    kinds = _RESPONSE_KINDS
    cl = None
    chunked = False
    keep = True
    grpc = None
    for name, value in fields:
        kind = kinds.get(name)
        if kind is None:
            if name[0] == _X and name[:_XPLEN] == MESHPROXY_PREFIX:
                continue
            if name == b"grpc-status" and grpc is None:
                grpc = value
            append(name + b": " + value + b"\r\n")
        elif kind == _CL:
            if cl is not None:
                return None
            cl = _length(value)
            if cl is None:
                return None
        elif kind == _CONN:
            if not _keeps(value):
                if value.lower() != b"close":
                    return None
                keep = False
        elif kind == _TE:
            if chunked or value.lower() != b"chunked":
                return None
            chunked = True
        # _DROP: nothing
    if chunked and cl is not None:
        return None
    return lines, cl, chunked, keep, grpc


def _length(value: bytes) -> int | None:
    """A Content-Length value as the codec reads it (digits, trailing blanks allowed), else None."""
    digits = value.rstrip(b" \t")
    if not digits.isdigit() or len(digits) > 18:
        return None
    return int(digits)


def _keeps(value: bytes) -> bool:
    """A Connection value that only says keep-alive (``close`` and anything else: False)."""
    return value == b"keep-alive" or value.lower() == b"keep-alive"
