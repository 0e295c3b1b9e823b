"""Protocol detection on peeked bytes: TLS | H2 | H1 | OPAQUE | NEED_MORE.

Where this sits: ``net/listener.py`` hands each accepted connection to
``detect/peek.py``, which reads with a timeout and calls ``sniff()`` on all the
bytes peeked so far until it answers something other than ``NEED_MORE`` (or the
timeout fires: then the connection is opaque TCP). The peeked bytes are replayed
to whatever handles the connection next; this module never consumes them.

It is pure: bytes in, a ``Sniffed`` value out; no sockets, no clocks. Declared
port protocols (``PortProtocol``) and server-first ports
(``is_server_first_port``) are decided before any byte is read: a server-first
protocol never sends first, so peeking would only wait for the timeout.

Decision list (``sniff``), first match wins:

1. No bytes yet → NEED_MORE.
2. First byte 0x16 (TLS handshake record):
   a. record header ``16 03 0[0-4]`` (or a proper prefix of one) → TLS, with
      SNI and ALPN once the whole ClientHello has arrived;
   b. while it is incomplete → NEED_MORE, up to ``TLS_PEEK_CAP`` bytes, then
      TLS without SNI;
   c. a malformed ClientHello inside a valid record → TLS without SNI;
   d. anything else after 0x16 → OPAQUE.
3. Starts with the HTTP/2 prior-knowledge preface → H2; a proper prefix of the
   preface → NEED_MORE.
4. First line is ``METHOD SP target SP HTTP/1.d CRLF`` (METHOD a token, target
   visible ASCII) → H1; while the bytes are still a prefix of such a line and
   fewer than ``H1_LINE_CAP`` → NEED_MORE.
5. Anything else → OPAQUE.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass

H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
TLS_PEEK_CAP = 16 * 1024 + 5
"""Bytes to wait for a complete ClientHello (one full TLS record) before giving
up on SNI and answering TLS without it."""
H1_LINE_CAP = 8 * 1024
"""Bytes to wait for the end of an HTTP/1 request line before calling it opaque."""

DEFAULT_SERVER_FIRST_PORTS = frozenset({25, 587, 3306, 4444, 5432, 6379, 9300, 11211, 27017})
"""SMTP, submission, MySQL, 4444 (Istio's list), Postgres, Redis, Elasticsearch
transport, memcached, MongoDB: the client waits for the server to speak."""


class Kind(enum.Enum):
    TLS = "tls"
    H2 = "h2"
    H1 = "h1"
    OPAQUE = "opaque"
    NEED_MORE = "need_more"


@dataclass(frozen=True, slots=True)
class Sniffed:
    """The answer for the bytes peeked so far."""

    kind: Kind
    sni: str | None = None
    """TLS: the server_name from the ClientHello, lower-cased; None if absent or unknown."""
    alpn: tuple[str, ...] = ()
    """TLS: the ALPN protocols the client offers, in its order."""


NEED_MORE = Sniffed(Kind.NEED_MORE)
OPAQUE = Sniffed(Kind.OPAQUE)
H2 = Sniffed(Kind.H2)
H1 = Sniffed(Kind.H1)
TLS_UNKNOWN = Sniffed(Kind.TLS)

# tchar (RFC 9110 5.6.2) for the method; visible ASCII for the target.
_TOKEN = rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]"
_H1_LINE = re.compile(_TOKEN + rb"+ [\x21-\x7e]+ HTTP/1\.[0-9]\r\n")


def _nested_optional(parts: list[bytes]) -> bytes:
    """``a(?:b(?:c)?)?``: matches every prefix of the concatenation of ``parts``."""
    out = b""
    for part in reversed(parts):
        out = part + (b"(?:" + out + b")?" if out else b"")
    return out


# A prefix of a request line: method, then optionally " target", then optionally
# " " and a prefix of "HTTP/1.d\r".
_H1_PREFIX = re.compile(
    _nested_optional(
        [_TOKEN + b"+", b" ", rb"[\x21-\x7e]+", b" "] + [re.escape(bytes([c])) for c in b"HTTP/1."] + [b"[0-9]", b"\r"]
    )
)


def sniff(data: bytes) -> Sniffed:
    """Classify the first bytes of a connection (see the module's decision list)."""
    if not data:  # 1
        return NEED_MORE
    if data[0] == 0x16:  # 2
        return _sniff_tls(data)
    if data.startswith(H2_PREFACE):  # 3
        return H2
    if H2_PREFACE.startswith(data):
        return NEED_MORE
    lf = data.find(b"\n")  # 4
    if lf >= 0:
        return H1 if _H1_LINE.fullmatch(data, 0, lf + 1) else OPAQUE
    if len(data) < H1_LINE_CAP and _H1_PREFIX.fullmatch(data):
        return NEED_MORE
    return OPAQUE  # 5


def _sniff_tls(data: bytes) -> Sniffed:
    head = data[:3]
    if not b"\x16\x03\x04".startswith(head[:2]) or (len(head) == 3 and head[2] > 4):  # 2d
        return OPAQUE
    hello = _reassemble_handshake(data)
    if hello is None:  # 2b
        return NEED_MORE if len(data) < TLS_PEEK_CAP else TLS_UNKNOWN
    if not hello:
        return TLS_UNKNOWN
    return _parse_client_hello(hello)  # 2a / 2c


def _reassemble_handshake(data: bytes) -> bytes | None:
    """The first handshake message's body, joined across records; None if incomplete,
    b"" if the records are not a ClientHello we can read."""
    frags = []
    got = 0
    pos = 0
    need = -1
    while True:
        if len(data) < pos + 5:
            return None
        if data[pos] != 0x16 or data[pos + 1] != 3:
            return b""
        rlen = int.from_bytes(data[pos + 3 : pos + 5], "big")
        if rlen == 0 or rlen > 16384 + 2048:
            return b""
        end = pos + 5 + rlen
        if len(data) < end:
            return None
        frags.append(data[pos + 5 : end])
        got += rlen
        pos = end
        if need < 0 and got >= 4:
            first = b"".join(frags)
            if first[0] != 1:  # not a ClientHello
                return b""
            need = 4 + int.from_bytes(first[1:4], "big")
        if need >= 0 and got >= need:
            return b"".join(frags)[4:need]


def _parse_client_hello(body: bytes) -> Sniffed:
    """SNI and ALPN from a ClientHello body (RFC 8446 4.1.2); TLS without them if malformed."""
    try:
        pos = 2 + 32  # legacy_version, random
        pos += 1 + body[pos]  # session id
        pos += 2 + int.from_bytes(body[pos : pos + 2], "big")  # cipher suites
        pos += 1 + body[pos]  # compression methods
        if pos == len(body):
            return TLS_UNKNOWN  # no extensions
        end = pos + 2 + int.from_bytes(body[pos : pos + 2], "big")
        if end > len(body):
            return TLS_UNKNOWN
        pos += 2
        sni: str | None = None
        alpn: list[str] = []
        while pos + 4 <= end:
            etype = int.from_bytes(body[pos : pos + 2], "big")
            elen = int.from_bytes(body[pos + 2 : pos + 4], "big")
            ext = body[pos + 4 : pos + 4 + elen]
            pos += 4 + elen
            if etype == 0:
                sni = _parse_sni(ext)
            elif etype == 16:
                alpn = _parse_alpn(ext)
        return Sniffed(Kind.TLS, sni, tuple(alpn))
    except (IndexError, UnicodeDecodeError):
        return TLS_UNKNOWN


def _parse_sni(ext: bytes) -> str | None:
    pos, end = 2, 2 + int.from_bytes(ext[0:2], "big")
    while pos + 3 <= end:
        ntype = ext[pos]
        nlen = int.from_bytes(ext[pos + 1 : pos + 3], "big")
        name = ext[pos + 3 : pos + 3 + nlen]
        if ntype == 0 and len(name) == nlen:
            return name.decode("ascii").lower()
        pos += 3 + nlen
    return None


def _parse_alpn(ext: bytes) -> list[str]:
    out = []
    pos, end = 2, min(len(ext), 2 + int.from_bytes(ext[0:2], "big"))
    while pos < end:
        plen = ext[pos]
        out.append(ext[pos + 1 : pos + 1 + plen].decode("ascii"))
        pos += 1 + plen
    return out


def is_server_first_port(port: int, ports: frozenset[int] = DEFAULT_SERVER_FIRST_PORTS) -> bool:
    """Whether ``port`` speaks server-first by default: skip peeking, relay as opaque TCP."""
    return port in ports


class PortProtocol(enum.Enum):
    """A protocol declared for a port (Istio port naming: ``<protocol>[-<suffix>]``).

    A declared protocol skips detection. ``parse`` returns None for names that
    declare nothing we know (``web``, ``udp``, ``""``): those ports are sniffed.
    """

    HTTP = "http"
    HTTP2 = "http2"
    GRPC = "grpc"
    GRPC_WEB = "grpc-web"
    TCP = "tcp"
    TLS = "tls"
    HTTPS = "https"

    @classmethod
    def parse(cls, name: str) -> PortProtocol | None:
        """``http``, ``http-web``, ``grpc-api``, ``grpc-web``, ``tcp-db``, ``HTTPS`` ...;
        Istio's ``mongo``/``mysql``/``redis`` are opaque TCP here."""
        name = name.strip().lower()
        for prefix, proto in _PREFIXES:
            if name == prefix or name.startswith(prefix + "-"):
                return proto
        return None

    @property
    def is_http(self) -> bool:
        """Plaintext HTTP of some version: run the HTTP path without sniffing."""
        return self in (PortProtocol.HTTP, PortProtocol.HTTP2, PortProtocol.GRPC, PortProtocol.GRPC_WEB)

    @property
    def is_h2(self) -> bool:
        """HTTP/2 with prior knowledge (gRPC needs it)."""
        return self in (PortProtocol.HTTP2, PortProtocol.GRPC)


# Longest prefix first, so ``grpc-web`` is not read as ``grpc`` with suffix ``web``.
_PREFIXES = (
    ("grpc-web", PortProtocol.GRPC_WEB),
    ("http2", PortProtocol.HTTP2),
    ("https", PortProtocol.HTTPS),
    ("http", PortProtocol.HTTP),
    ("grpc", PortProtocol.GRPC),
    ("tcp", PortProtocol.TCP),
    ("tls", PortProtocol.TLS),
    ("mongo", PortProtocol.TCP),
    ("mysql", PortProtocol.TCP),
    ("redis", PortProtocol.TCP),
)
