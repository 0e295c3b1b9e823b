"""HTTP/1 head checks (limits, framing, smuggling defences) and chunked-framing helpers.

Where this sits: ``codec/http1.py`` calls ``find_head`` on its receive buffer
until a whole head (request or status line plus header block, through the empty
line) is there, feeds exactly those bytes to httptools, then calls
``inspect_request`` / ``inspect_response`` on what httptools reported. Only when
these pass does the codec emit a ``RequestHead``/``ResponseHead``; so a rejected
request never sends one byte upstream.

httptools (llhttp, strict mode) already rejects: obs-fold, NUL/CR/LF and other
controls in values, whitespace before the colon, Content-Length together with
Transfer-Encoding, duplicate Content-Length (even identical: we do not fold),
non-digit Content-Length, ``chunked`` not last, invalid chunk sizes, and
Content-Length in trailers. It accepts,
and we reject here: oversize heads, too many headers, header names with ``_``,
duplicate or missing Host, Host differing from an absolute-form URI's authority,
Transfer-Encoding values other than exactly ``chunked`` (``chunked `` with
trailing whitespace, ``gzip, chunked``, ``xchunked``), Transfer-Encoding in
HTTP/1.0, versions other than 1.0/1.1, bodies on CONNECT.

Everything here raises ``Reject(status, message)``; the codec turns it into a
``ProtocolError`` (502 on the client role, where the upstream is at fault).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

CRLF2 = b"\r\n\r\n"
# Heads that leave a fresh parser expecting a chunked body.
PRIME_REQUEST = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
PRIME_RESPONSE = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"


@dataclass(frozen=True, slots=True)
class Http1Limits:
    """Hostile-input limits (Envoy's defaults)."""

    max_request_line: int = 16 * 1024
    """Bytes in the request line (status line on the client role); over it → 414."""
    max_header_bytes: int = 60 * 1024
    """Bytes in the whole head, start line included (and in a trailer section); over it → 431."""
    max_headers: int = 100
    """Header fields in a head (and trailer fields); over it → 431."""
    reject_underscore_names: bool = True
    """Reject request header names containing ``_`` (400): ``x_user`` and ``x-user``
    would otherwise reach CGI-style backends as the same variable."""


DEFAULT_LIMITS = Http1Limits()


class Reject(Exception):
    """The peer's message is unacceptable: answer ``status`` and close."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


_BARE_LF = re.compile(rb"[^\r]\n")


def find_head(buf: bytes | bytearray, scan_from: int, limits: Http1Limits) -> int:
    """Offset just past the head's final CRLFCRLF, or -1 while more bytes are needed.

    ``buf`` starts at the start line; ``scan_from`` is where the previous, failed
    search could resume (three bytes before the old end)."""
    end = buf.find(CRLF2, scan_from)
    line_end = buf.find(b"\r\n", 0, end + 2 if end >= 0 else len(buf))
    if (line_end if line_end >= 0 else len(buf)) > limits.max_request_line:
        raise Reject(414, "request line too long")
    if end < 0:
        if len(buf) > limits.max_header_bytes:
            raise Reject(431, "request headers too large")
        if buf[:1] == b"\n" or _BARE_LF.search(buf, max(0, scan_from - 1)):
            raise Reject(400, "bare LF in message head")
        return -1
    end += 4
    if end > limits.max_header_bytes:
        raise Reject(431, "request headers too large")
    if buf.count(b"\r\n", 0, end) - 2 > limits.max_headers:
        raise Reject(431, "too many request headers")
    return end


_VERSIONS = {b"1.1": "1.1", b"1.0": "1.0"}


def version_of(raw: bytes) -> str:
    """``"1.1"``/``"1.0"`` from the three version bytes of a start line, else 505."""
    v = _VERSIONS.get(raw)
    if v is None:
        raise Reject(505, "HTTP version not supported")
    return v


# Header names whose values the codec reads (collected during parsing).
SPECIAL = frozenset(
    (b"host", b"content-length", b"transfer-encoding", b"connection", b"upgrade", b"expect")
)
_HOST = re.compile(rb"[A-Za-z0-9\-._~%!$&'()*+;=]*(?::[0-9]*)?|\[[0-9A-Fa-f:.]+\](?::[0-9]*)?")
_AUTHORITY_FORM = re.compile(rb"(?:[A-Za-z0-9\-._~%]+|\[[0-9A-Fa-f:.]+\]):[0-9]+")
_TOKEN_LIST = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+(?:[ \t]*,[ \t]*[!#$%&'*+\-.^_`|~0-9A-Za-z]+)*")
_DEFAULT_PORT = {b"http": b":80", b"https": b":443"}
_CR, _LF, _UNDERSCORE, _AT = 13, 10, 95, 64
"""Single bytes, tested by value (``95 in name``): ``b"_" in name`` first tries its operand as an
integer and formats the TypeError it gets, ten times the cost of the search."""
_GOOD_HOSTS: dict[bytes, bool] = {}
"""Host values that passed ``_HOST`` (a sidecar sees the same few over and over); bounded."""


def _framing(special: list[tuple[bytes, bytes]], version: str, status: int) -> tuple[int | None, bool]:
    """(content_length, chunked) from Content-Length / Transfer-Encoding."""
    cl: bytes | None = None
    te: bytes | None = None
    if len(special) == 1 and special[0][0] == b"host":
        return None, False
    for name, value in special:
        if name == b"content-length":
            if cl is not None and value != cl:
                raise Reject(status, "conflicting Content-Length")
            cl = value
        elif name == b"transfer-encoding":
            te = value if te is None else te + b"," + value
    if te is not None:
        if cl is not None:
            raise Reject(status, "both Content-Length and Transfer-Encoding")
        if version == "1.0":
            raise Reject(status, "Transfer-Encoding in HTTP/1.0")
        if te.lower() != b"chunked":
            codings = [c.strip(b" \t").lower() for c in te.split(b",")]
            if status == 400 and codings.count(b"chunked") == 1 and codings[-1] == b"chunked":
                if _TOKEN_LIST.fullmatch(te):  # well-formed, e.g. "gzip, chunked": we cannot pass it on
                    raise Reject(501, "unsupported transfer coding")
            raise Reject(status, "invalid Transfer-Encoding")
        return None, True
    if cl is None:
        return None, False
    digits = cl.rstrip(b" \t")
    if not digits.isdigit() or len(digits) > 18:
        raise Reject(status, "invalid Content-Length")
    return int(digits), False


def keep_alive(version: str, special: list[tuple[bytes, bytes]]) -> bool:
    """Whether the Connection field and the version allow another message after this one."""
    conn: bytes | None = None
    for name, value in special:
        if name == b"connection":
            conn = value if conn is None else conn + b"," + value
    if conn is None:
        return version == "1.1"
    conn = conn.lower()
    if conn == b"keep-alive":
        return True
    if conn == b"close":
        return False
    tokens = [t.strip(b" \t") for t in conn.split(b",")]
    if version == "1.1":
        return b"close" not in tokens
    return b"keep-alive" in tokens and b"close" not in tokens


def inspect_request(
    method: bytes,
    target: bytes,
    version: str,
    headers: list[tuple[bytes, bytes]],
    special: list[tuple[bytes, bytes]],
    head: bytes,
    limits: Http1Limits,
) -> tuple[bytes | None, bytes, int | None, bool, bytes | None, bool]:
    """(authority, scheme, content_length, chunked, upgrade, expect_continue), or raises Reject."""
    if limits.reject_underscore_names and _UNDERSCORE in head:
        for name, _ in headers:
            if _UNDERSCORE in name:
                raise Reject(400, "header name with underscore")
    host: bytes | None = None
    conn = upgrade = expect = None
    for name, value in special:
        if name == b"host":
            if host is not None:
                raise Reject(400, "duplicate Host")
            host = value
        elif name == b"connection":
            conn = value if conn is None else conn + b"," + value
        elif name == b"upgrade":
            upgrade = value
        elif name == b"expect":
            expect = value
    if host is not None and host not in _GOOD_HOSTS:
        if not _HOST.fullmatch(host):
            raise Reject(400, "invalid Host")
        if len(_GOOD_HOSTS) >= 1024:
            _GOOD_HOSTS.clear()
        _GOOD_HOSTS[host] = True
    content_length, chunked = _framing(special, version, 400)
    authority, scheme = host, b"http"
    if method == b"CONNECT":
        if not _AUTHORITY_FORM.fullmatch(target):
            raise Reject(400, "CONNECT target must be host:port")
        if chunked or content_length:
            raise Reject(400, "CONNECT with a body")
        return target, scheme, None, False, b"connect", False
    if target[:1] != b"/":
        if target == b"*":
            if method != b"OPTIONS":
                raise Reject(400, "asterisk-form target only with OPTIONS")
        else:
            authority, scheme = _absolute_authority(target, host)
    if host is None and version == "1.1" and authority is None:
        raise Reject(400, "missing Host")
    up = None
    if upgrade is not None and conn is not None and version == "1.1" and not chunked and b"upgrade" in conn.lower():
        up = upgrade.strip(b" \t")
    expect_continue = expect is not None and version == "1.1" and expect.lower() == b"100-continue"
    return authority, scheme, content_length, chunked, up, expect_continue


def _absolute_authority(target: bytes, host: bytes | None) -> tuple[bytes, bytes]:
    scheme, sep, rest = target.partition(b"://")
    scheme = scheme.lower()
    if not sep or scheme not in _DEFAULT_PORT:
        raise Reject(400, "invalid request target")
    end = len(rest)
    for c in (b"/", b"?", b"#"):
        i = rest.find(c)
        if 0 <= i < end:
            end = i
    authority = rest[:end]
    if not authority or _AT in authority or not _HOST.fullmatch(authority):
        raise Reject(400, "invalid authority in request target")
    if host is not None and _norm(host, scheme) != _norm(authority, scheme):
        raise Reject(400, "Host differs from the request target's authority")
    return authority, scheme


def _norm(authority: bytes, scheme: bytes) -> bytes:
    authority = authority.lower()
    port = _DEFAULT_PORT[scheme]
    return authority[: -len(port)] if authority.endswith(port) else authority


def inspect_response(version: str, special: list[tuple[bytes, bytes]]) -> tuple[int | None, bool]:
    """(content_length, chunked) of a response, or raises Reject(502)."""
    return _framing(special, version, 502)


def inspect_trailers(trailers: list[tuple[bytes, bytes]], limits: Http1Limits, server: bool) -> list:
    """Trailers as forwarded: framing fields dropped; limits and name checks as for heads."""
    if len(trailers) > limits.max_headers:
        raise Reject(431, "too many trailer fields")
    out = []
    for name, value in trailers:
        if server and limits.reject_underscore_names and _UNDERSCORE in name:
            raise Reject(400, "trailer name with underscore")
        if name not in (b"content-length", b"transfer-encoding", b"host"):
            out.append((name, value))
    return out


def piece_ends(tail: bytes, buf: bytes):
    """Offsets in ``buf`` just past each CRLFCRLF (including ones that start in
    ``tail``, the bytes fed before ``buf``), then ``len(buf)``; ascending, no repeats.

    A chunked message ends right after a CRLFCRLF (``0 CRLF [trailers] CRLF``), so
    feeding llhttp pieces cut at these offsets makes every message end a piece end."""
    last = 0
    if tail:
        probe = tail + buf[:3]
        j = probe.find(CRLF2)
        while j >= 0:
            last = j + 4 - len(tail)
            yield last
            j = probe.find(CRLF2, j + 1)
    k = buf.find(CRLF2)
    while k >= 0:
        last = k + 4
        yield last
        k = buf.find(CRLF2, k + 1)
    if last != len(buf):
        yield len(buf)
