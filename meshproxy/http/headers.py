"""Header hygiene: what a proxy hop must strip, add and translate on every request.

Where this sits: between the codec and the router. ``http/chain.py``'s
``HeaderHygiene`` filter (always the first filter) calls ``clean_request`` on
each request head the codec delivers and ``clean_response`` on each response
head before the downstream codec writes it; ``http/server.py`` calls
``to_http1_request``/``to_http2_request`` when the upstream leg speaks a
different HTTP version than the downstream one, and ``local_reply`` whenever
meshproxy answers by itself. Pure code: no asyncio, no sockets, no parser
libraries; heads are the ``codec/events.py`` classes (lower-case ``bytes`` names,
pseudo-headers already lifted into fields).

Rules, in the order ``clean_request`` applies them (one pass over the headers):

1. Hop-by-hop fields go (``HOP_BY_HOP``, RFC 9110 section 7.6.1), and so does
   every field the ``Connection`` header names, except a few that carry their own
   rule below or that routing needs (``host``, ``content-length``). Exceptions:
   ``te`` survives reduced to ``te: trailers`` when it offers ``trailers`` (HTTP/2
   and gRPC need it; Envoy does the same); ``upgrade`` and ``connection: upgrade``
   survive when the head is a protocol upgrade (WebSocket) the codec accepted.
   ``trailer`` is *not* hop-by-hop: RFC 9110 section 6.6.2 makes it end-to-end
   metadata and Envoy forwards it.
2. Identity headers only meshproxy may assert go, whichever side sent them:
   ``x-forwarded-client-cert`` and every ``x-meshproxy-*`` field.
3. ``x-request-id``: the first value is kept (later duplicates dropped); with
   none, one is generated (UUID version 4 text).
4. ``x-forwarded-for``: inbound appends the peer's IP; outbound leaves it alone.
   On the outbound leg the peer is this pod's own app over loopback: appending it
   would add a meaningless ``127.0.0.1`` hop, and the next sidecar's inbound leg
   records this pod's IP anyway (it is the source of the mTLS connection). So the
   chain gets exactly one entry per pod crossed, as with Envoy sidecars.
5. ``x-forwarded-proto``: inbound always sets the downstream scheme (the client's
   claim is untrusted, as Envoy with ``use_remote_address``); outbound sets it only
   when the app sent none.

``clean_request`` and ``clean_response`` mutate the head: they assign a *new*
list to ``head.headers`` (building one list is cheaper than deleting from the
old one), so whoever kept the old list still sees it unchanged. The small
helpers (``set_header``, ``remove_headers``) mutate the list they are given.
"""

from __future__ import annotations

import random
from http import HTTPStatus
from typing import Any

from ..codec import native
from ..codec.events import Headers, RequestHead, ResponseHead

HOP_BY_HOP = frozenset(
    (b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"te", b"upgrade")
)
"""Fields that describe one connection, never forwarded as they are (RFC 9110 7.6.1;
``proxy-connection`` is the legacy field the RFC also names)."""

IDENTITY_HEADERS = frozenset((b"x-forwarded-client-cert",))
"""Fields only meshproxy may assert; stripped from whatever arrives (plus ``x-meshproxy-*``)."""

MESHPROXY_PREFIX = b"x-meshproxy-"
RESPONSE_FLAGS_HEADER = b"x-meshproxy-response-flags"
REQUEST_ID = b"x-request-id"
X_FORWARDED_FOR = b"x-forwarded-for"
X_FORWARDED_PROTO = b"x-forwarded-proto"

# One dict lookup per header decides whether a field needs attention; everything
# else is copied as is (after a cheap first-byte test for ``x-meshproxy-``: names
# are never empty, the codecs reject such fields).
_DROP, _CONNECTION, _TE, _UPGRADE, _RID, _XFF, _XFP = range(7)
_REQUEST_ACTIONS: dict[bytes, int] = {
    b"connection": _CONNECTION,
    b"keep-alive": _DROP,
    b"proxy-connection": _DROP,
    b"transfer-encoding": _DROP,
    b"te": _TE,
    b"upgrade": _UPGRADE,
    b"x-forwarded-client-cert": _DROP,
    REQUEST_ID: _RID,
    X_FORWARDED_FOR: _XFF,
    X_FORWARDED_PROTO: _XFP,
}
_RESPONSE_ACTIONS: dict[bytes, int] = {
    b"connection": _CONNECTION,
    b"keep-alive": _DROP,
    b"proxy-connection": _DROP,
    b"transfer-encoding": _DROP,
    b"te": _DROP,  # a request-only field
    b"upgrade": _UPGRADE,
}
# Connection tokens that never remove a field: connection options, and fields
# with a rule of their own or that routing and framing need.
_NOT_NOMINATED = frozenset(_REQUEST_ACTIONS) | {b"close", b"host", b"content-length", b""}
_PLAIN_CONNECTION = frozenset((b"keep-alive", b"close", b"upgrade"))
_X = MESHPROXY_PREFIX[0]
_XPLEN = len(MESHPROXY_PREFIX)
_CONNECTION_UPGRADE = (b"connection", b"upgrade")
_TE_TRAILERS = (b"te", b"trailers")
_OUTBOUND_LIKE = frozenset(("outbound", "explicit"))


def _nominated(value: bytes, into: set[bytes] | None) -> set[bytes] | None:
    """Add the field names a ``Connection`` value nominates for removal to ``into``."""
    v = value.lower()
    if v in _PLAIN_CONNECTION:
        return into
    for token in v.split(b","):
        token = token.strip(b" \t")
        if token not in _NOT_NOMINATED:
            if into is None:
                into = set()
            into.add(token)
    return into


def _offers_trailers(value: bytes) -> bool:
    if value == b"trailers":
        return True
    return any(t.split(b";", 1)[0].strip(b" \t") == b"trailers" for t in value.lower().split(b","))


# === request ids ===

_getrandbits = random.getrandbits  # the module's instance is reseeded in each forked worker


_UUID4_KEEP = ~((0xF << 76) | (0xC << 60)) & (2**128 - 1)
"""The bits of a random 128-bit number a version 4 UUID keeps (all but version and variant)."""
_UUID4_SET = (0x4 << 76) | (0x8 << 60)
"""Version nibble ``4`` and variant bits ``10``."""


def _new_request_id_py() -> bytes:
    """A random UUID version 4 in its 36-character text form.

    122 random bits with the version and variant bits set, as hex with the hyphens put
    in: several times cheaper than ``str(uuid.uuid4())`` (no ``os.urandom`` syscall, no
    ``UUID`` object), and cheaper than formatting five fields with ``%x``. Not a secret,
    so Mersenne Twister randomness is enough."""
    h = ((_getrandbits(128) & _UUID4_KEEP) | _UUID4_SET).to_bytes(16, "big").hex().encode()
    return b"-".join((h[:8], h[8:12], h[12:16], h[16:20], h[20:]))


# === requests ===


def clean_request(head: RequestHead, *, direction: str, peer_ip: str, scheme: str,
                  request_id: bytes | None = None) -> bytes:
    """Apply the module's rules to a request head; return its ``x-request-id``.

    ``direction`` is ``"inbound"``, ``"outbound"`` or ``"explicit"`` (treated as
    outbound: the app is the client). ``peer_ip`` is the downstream peer's address
    without port (IPv6 without brackets); ``scheme`` the downstream transport's
    (``"https"`` when it was TLS). ``request_id`` is used when the request carries
    none, instead of generating one.

    Mutates ``head``: ``head.headers`` becomes a new list, and an ``h2c`` upgrade
    (which a sidecar does not proxy: the upstream leg's protocol is the pool's
    choice) is cleared from ``head.upgrade`` so the request goes on as a plain one.
    """
    inbound = direction == "inbound"
    if not inbound and direction not in _OUTBOUND_LIKE:
        raise ValueError(f"direction must be 'inbound', 'outbound' or 'explicit', got {direction!r}")
    return hygiene_request(head, inbound, peer_ip, scheme, request_id)


def _hygiene_request_py(head: RequestHead, inbound: bool, peer_ip: str | bytes, scheme: str | bytes,
                        request_id: bytes | None) -> bytes:
    """``clean_request`` with the direction already decided (``hygiene_request``, positional,
    is this or its C twin; ``http/chain.py``'s ``HeaderHygiene`` calls it per request)."""
    upgrade = head.upgrade
    if upgrade is not None and upgrade.lower() == b"h2c":
        head.upgrade = upgrade = None
    keep_upgrade = upgrade is not None and upgrade != b"connect"
    actions = _REQUEST_ACTIONS
    nominated: set[bytes] | None = None
    while True:  # a second round only when Connection names other fields
        out: Headers = []
        append = out.append
        rid = None
        xff_at = -1
        xff: list[bytes] | None = None
        has_xfp = has_te = False
        found: set[bytes] | None = None
        fields: Any = head.headers  # any shape: odd input must fail as in the C twin
        for item in fields:
            name = item[0]
            action = actions.get(name)
            if action is None:
                if name[0] == _X and name[:_XPLEN] == MESHPROXY_PREFIX:
                    continue
                if nominated is not None and name in nominated:
                    continue
                append(item)
            elif action == _RID:
                if rid is None and item[1]:
                    rid = item[1]
                    append(item)
            elif action == _XFF:
                if not inbound:
                    append(item)
                else:  # joined into the first one's place below
                    if xff is None:
                        xff = []
                        xff_at = len(out)
                        append(item)
                    if item[1]:
                        xff.append(item[1])
            elif action == _XFP:
                if not inbound:
                    has_xfp = True
                    append(item)
            elif action == _CONNECTION:
                if nominated is None:
                    found = _nominated(item[1], found)
            elif action == _TE:
                if not has_te and _offers_trailers(item[1]):
                    has_te = True
                    append(_TE_TRAILERS)
            elif action == _UPGRADE:
                if keep_upgrade:
                    append(item)
            # _DROP: nothing
        if found is None:
            break
        nominated = found
    if keep_upgrade:
        append(_CONNECTION_UPGRADE)
    if rid is None:
        rid = request_id or new_request_id()
        append((REQUEST_ID, rid))
    if inbound:
        ip = peer_ip.encode() if isinstance(peer_ip, str) else peer_ip
        if xff is None:
            append((X_FORWARDED_FOR, ip))
        else:
            xff.append(ip)
            out[xff_at] = (X_FORWARDED_FOR, b", ".join(xff))
    if not has_xfp:
        append((X_FORWARDED_PROTO, scheme.encode() if isinstance(scheme, str) else scheme))
    head.headers = out
    return rid


def to_http1_request(head: RequestHead) -> None:
    """Make ``head`` sendable over HTTP/1.1: a ``host`` field equal to ``head.authority``.

    Mutates ``head.headers`` in place. The authority wins when both are present
    and differ: for HTTP/2-origin requests ``:authority`` is the target (RFC 9113
    8.3.1); HTTP/1-origin heads never differ (the codec takes authority from
    ``Host`` or rejects a Host that contradicts an absolute-form target). A missing
    ``host`` is added first in the list (RFC 9110 7.2). Without an authority
    (HTTP/1.0 with no Host) nothing changes.
    """
    authority = head.authority
    if authority is None:
        return
    headers = head.headers
    at = -1
    more = False
    for i, item in enumerate(headers):
        if item[0] == b"host":
            if at < 0:
                at = i
            else:
                more = True
                break
    if at < 0:
        headers.insert(0, (b"host", authority))
        return
    if headers[at][1] != authority:
        headers[at] = (b"host", authority)
    if more:
        headers[at + 1:] = [h for h in headers[at + 1:] if h[0] != b"host"]


def to_http2_request(head: RequestHead) -> None:
    """Make ``head`` sendable over HTTP/2: ``authority`` set (from ``host`` when it is
    None) and no ``host`` field. Mutates ``head`` and ``head.headers`` in place."""
    headers = head.headers
    for i, (name, value) in enumerate(headers):
        if name == b"host":
            if head.authority is None:
                head.authority = value
            headers[i:] = [h for h in headers[i:] if h[0] != b"host"]
            return


# === responses ===


def clean_response(head: ResponseHead, *, local: bool = False) -> None:
    """Strip hop-by-hop fields (and fields ``Connection`` names) from a response head.

    A 101 keeps ``upgrade`` and gets a single ``connection: upgrade``.
    ``x-meshproxy-*`` fields are removed unless ``local`` (the head is meshproxy's
    own local reply, which carries ``x-meshproxy-response-flags``). Mutates
    ``head``: ``head.headers`` becomes a new list.
    """
    hygiene_response(head, local)


def _hygiene_response_py(head: ResponseHead, local: bool) -> None:
    """``clean_response``, positional (``hygiene_response`` is this or its C twin)."""
    keep_upgrade = head.status == 101
    if not keep_upgrade:
        found = None
        fields: Any = head.headers  # any shape: odd input must fail as in the C twin
        for item in fields:
            if item[0] == b"connection":
                found = _nominated(item[1], found)
        if found is None:
            _clean_response_plain(head, local)
            return
    _clean_response_rules(head, local, keep_upgrade)


def _clean_response_plain(head: ResponseHead, local: bool) -> None:
    """``clean_response`` for the common head (not a 101, Connection names no other field):
    the fields the rules name simply go. Same result as ``_clean_response_rules``."""
    actions = _RESPONSE_ACTIONS
    fields: Any = head.headers  # any shape: odd input must fail as in the C twin
    if local:
        head.headers = [item for item in fields if item[0] not in actions]
    else:
        head.headers = [item for item in fields if item[0] not in actions
                        and (item[0][0] != _X or item[0][:_XPLEN] != MESHPROXY_PREFIX)]


def _clean_response_rules(head: ResponseHead, local: bool, keep_upgrade: bool) -> None:
    """``clean_response``: the module's rules, field by field."""
    actions = _RESPONSE_ACTIONS
    nominated: set[bytes] | None = None
    while True:
        out: Headers = []
        append = out.append
        found: set[bytes] | None = None
        fields: Any = head.headers  # any shape: odd input must fail as in the C twin
        for item in fields:
            name = item[0]
            action = actions.get(name)
            if action is None:
                if not local and name[0] == _X and name[:_XPLEN] == MESHPROXY_PREFIX:
                    continue
                if nominated is not None and name in nominated:
                    continue
                append(item)
            elif action == _CONNECTION:
                if nominated is None:
                    found = _nominated(item[1], found)
            elif action == _UPGRADE:
                if keep_upgrade:
                    append(item)
        if found is None:
            break
        nominated = found
    if keep_upgrade:
        append(_CONNECTION_UPGRADE)
    head.headers = out


# The optional C extension (``codec/native``) has both loops and ``new_request_id``; the Python
# functions above stay the reference (tests/unit/http/test_hygiene_native.py compares them), and
# the C loops call them for any head that is not the common case.
_fast = native.load()
if _fast is not None:
    _fast.hygiene_setup(_hygiene_request_py, _hygiene_response_py, _getrandbits)
hygiene_request = _hygiene_request_py if _fast is None else _fast.clean_request
hygiene_response = _hygiene_response_py if _fast is None else _fast.clean_response
new_request_id = _new_request_id_py if _fast is None else _fast.new_request_id


_PHRASES: dict[int, str] = {
    400: "Bad Request",
    403: "Forbidden",
    404: "Not Found",
    408: "Request Timeout",
    413: "Content Too Large",
    414: "URI Too Long",
    421: "Misdirected Request",
    429: "Too Many Requests",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}
"""RFC 9110 phrases for the statuses meshproxy answers by itself."""


def status_phrase(status: int) -> str:
    phrase = _PHRASES.get(status)
    if phrase is None:
        try:
            phrase = HTTPStatus(status).phrase
        except ValueError:
            phrase = "Unknown"
    return phrase


def local_reply(stream_id: int, status: int, message: str, flag: str, *, http_version: str,
                request_id: bytes | None = None, keep_alive: bool = True) -> tuple[ResponseHead, bytes]:
    """A response meshproxy sends by itself, and its body.

    The body is one line: ``meshproxy: <phrase>: <message> (<flag>)``, except for
    authorization denials, whose body is exactly Envoy's ``RBAC: access denied``. The flag
    (Envoy-style, e.g. ``UF``, see ``errors.py``) also travels in
    ``x-meshproxy-response-flags`` so clients and tests need not parse the body.
    ``x-request-id`` is echoed when known; ``connection: close`` is added for
    HTTP/1 when the connection will not be reused. The head carries
    ``content_length``; the caller sends the body (none for a HEAD request).
    """
    phrase = status_phrase(status)
    if flag == "RBAC":
        text = message  # what Envoy's RBAC filter answers, byte for byte
    elif flag:
        text = f"meshproxy: {phrase}: {message} ({flag})\n"
    else:
        text = f"meshproxy: {phrase}: {message}\n"
    body = text.encode("utf-8", "replace")
    headers: Headers = [
        (b"content-type", b"text/plain; charset=utf-8"),
        (b"content-length", b"%d" % len(body)),
    ]
    if flag:
        headers.append((RESPONSE_FLAGS_HEADER, flag.encode("ascii")))
    if request_id:
        headers.append((REQUEST_ID, request_id))
    if not keep_alive and http_version != "2":
        headers.append((b"connection", b"close"))
    head = ResponseHead(stream_id, status, headers, http_version=http_version,
                        reason=phrase.encode("ascii"), keep_alive=keep_alive,
                        content_length=len(body))
    return head, body


# === helpers (names are lower-case bytes) ===


def get_header(headers: Headers, name: bytes) -> bytes | None:
    """The first value of ``name``, or None."""
    for n, v in headers:
        if n == name:
            return v
    return None


def get_all(headers: Headers, name: bytes) -> list[bytes]:
    """Every value of ``name``, in order."""
    return [v for n, v in headers if n == name]


def set_header(headers: Headers, name: bytes, value: bytes) -> None:
    """Replace all ``name`` fields by one (at the first one's place, else appended).
    Mutates ``headers``."""
    for i, (n, _) in enumerate(headers):
        if n == name:
            headers[i] = (name, value)
            rest = headers[i + 1:]
            if any(h[0] == name for h in rest):
                headers[i + 1:] = [h for h in rest if h[0] != name]
            return
    headers.append((name, value))


def remove_headers(headers: Headers, names: set[bytes] | frozenset[bytes]) -> int:
    """Remove every field whose name is in ``names``; return how many. Mutates ``headers``."""
    kept = [h for h in headers if h[0] not in names]
    removed = len(headers) - len(kept)
    if removed:
        headers[:] = kept
    return removed
