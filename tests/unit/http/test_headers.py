"""Header hygiene: hop-by-hop stripping, identity headers, x-request-id,
x-forwarded-*, HTTP/1 <-> HTTP/2 host/authority, local replies."""

from __future__ import annotations

import re
import uuid

import pytest

from meshproxy.codec.events import RequestHead, ResponseHead
from meshproxy.http import headers as h


def req(headers, *, upgrade=None, method=b"GET", authority=b"svc", version="1.1"):
    return RequestHead(1, method, b"/", authority, [(n.lower(), v) for n, v in headers],
                       http_version=version, upgrade=upgrade)


def clean(headers, *, direction="outbound", peer="10.0.0.9", scheme="http", rid=b"rid-1", **kw):
    head = req(headers, **kw)
    used = h.clean_request(head, direction=direction, peer_ip=peer, scheme=scheme, request_id=rid)
    return head, used


def names(headers):
    return [n for n, _ in headers]


def without_added(headers):
    """The fields left from the input: drop what clean_request adds at the end."""
    return [(n, v) for n, v in headers if n not in (b"x-request-id", b"x-forwarded-proto")]


# === hop-by-hop ===

@pytest.mark.parametrize("given, kept", [
    ([(b"connection", b"keep-alive"), (b"keep-alive", b"timeout=5"), (b"accept", b"*/*")],
     [(b"accept", b"*/*")]),
    ([(b"proxy-connection", b"keep-alive"), (b"transfer-encoding", b"chunked"), (b"a", b"1")],
     [(b"a", b"1")]),
    ([(b"upgrade", b"websocket"), (b"a", b"1")], [(b"a", b"1")]),  # no upgrade on the head
    # Connection-named fields go, wherever they are in the list
    ([(b"x-foo", b"1"), (b"connection", b"close, X-Foo ,x-bar"), (b"x-bar", b"2"), (b"x-baz", b"3")],
     [(b"x-baz", b"3")]),
    # ... but never host or content-length
    ([(b"host", b"svc"), (b"content-length", b"3"), (b"connection", b"host, content-length")],
     [(b"host", b"svc"), (b"content-length", b"3")]),
    # te: trailers kept (alone), anything else dropped
    ([(b"te", b"trailers")], [(b"te", b"trailers")]),
    ([(b"te", b"gzip, Trailers;q=0.5")], [(b"te", b"trailers")]),
    ([(b"te", b"gzip")], []),
    ([(b"te", b"trailers"), (b"connection", b"TE")], [(b"te", b"trailers")]),  # RFC 9110 10.1.4 style
    ([(b"te", b"trailers"), (b"te", b"trailers")], [(b"te", b"trailers")]),
    # trailer is end-to-end (RFC 9110 6.6.2)
    ([(b"trailer", b"grpc-status")], [(b"trailer", b"grpc-status")]),
])
def test_hop_by_hop_removed(given, kept):
    head, _ = clean(given)
    assert without_added(head.headers) == kept


def test_websocket_upgrade_keeps_upgrade_and_connection_upgrade():
    head, _ = clean([(b"connection", b"Upgrade, keep-alive"), (b"upgrade", b"websocket"),
                     (b"sec-websocket-key", b"k"), (b"keep-alive", b"5")], upgrade=b"websocket")
    assert without_added(head.headers) == [(b"upgrade", b"websocket"), (b"sec-websocket-key", b"k"),
                                           (b"connection", b"upgrade")]
    assert head.upgrade == b"websocket"


def test_connect_keeps_no_upgrade_fields():
    head, _ = clean([(b"connection", b"upgrade"), (b"upgrade", b"x")], upgrade=b"connect", method=b"CONNECT")
    assert without_added(head.headers) == []


def test_h2c_upgrade_is_dropped_and_the_request_goes_on_plain():
    head, _ = clean([(b"connection", b"Upgrade, HTTP2-Settings"), (b"upgrade", b"h2c"),
                     (b"http2-settings", b"AAMA"), (b"a", b"1")], upgrade=b"h2c")
    assert without_added(head.headers) == [(b"a", b"1")]
    assert head.upgrade is None


def test_hop_by_hop_constant():
    assert h.HOP_BY_HOP == {b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding",
                            b"te", b"upgrade"}


# === identity headers ===

@pytest.mark.parametrize("direction", ["inbound", "outbound"])
def test_identity_headers_stripped(direction):
    head, _ = clean([(b"x-forwarded-client-cert", b"By=spiffe://evil"), (b"x-meshproxy-response-flags", b"UF"),
                     (b"x-meshproxy-anything", b"1"), (b"x-meshprox", b"kept"), (b"x-other", b"kept")],
                    direction=direction)
    assert [(n, v) for n, v in head.headers if n.startswith(b"x-m") or n == b"x-other"
            or n == b"x-forwarded-client-cert"] == [(b"x-meshprox", b"kept"), (b"x-other", b"kept")]


# === x-request-id ===

def test_request_id_kept_first_of_several():
    head, used = clean([(b"x-request-id", b"abc"), (b"a", b"1"), (b"x-request-id", b"def")])
    assert used == b"abc"
    assert h.get_all(head.headers, b"x-request-id") == [b"abc"]


def test_request_id_given_is_used_when_absent():
    head, used = clean([(b"a", b"1")], rid=b"pre")
    assert used == b"pre" and h.get_all(head.headers, b"x-request-id") == [b"pre"]


def test_empty_request_id_is_replaced():
    head, used = clean([(b"x-request-id", b"")], rid=None)
    assert used and h.get_all(head.headers, b"x-request-id") == [used]


UUID4 = re.compile(rb"\A[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}\Z")


def test_generated_request_id_is_uuid4():
    head, used = clean([(b"a", b"1")], rid=None)
    assert UUID4.match(used)
    assert uuid.UUID(used.decode()).version == 4
    assert h.get_header(head.headers, b"x-request-id") == used


def test_generated_request_ids_are_unique_and_valid():
    ids = [h.new_request_id() for _ in range(10_000)]
    assert len(set(ids)) == 10_000
    assert all(UUID4.match(i) for i in ids)
    assert all(uuid.UUID(i.decode()).variant == uuid.RFC_4122 for i in ids[:100])
    # every hex digit but the version's is random: each position takes many values
    for pos in range(36):
        seen = {i[pos] for i in ids}
        if pos in (8, 13, 18, 23):
            assert seen == {ord("-")}
        elif pos == 14:
            assert seen == {ord("4")}
        elif pos == 19:
            assert seen == set(b"89ab")
        else:
            assert len(seen) == 16, (pos, seen)


# === x-forwarded-for / x-forwarded-proto ===

@pytest.mark.parametrize("given, inbound, outbound", [
    ([], [b"10.0.0.9"], []),
    ([b"1.1.1.1"], [b"1.1.1.1, 10.0.0.9"], [b"1.1.1.1"]),
    ([b"a, b"], [b"a, b, 10.0.0.9"], [b"a, b"]),
    ([b"a", b"b"], [b"a, b, 10.0.0.9"], [b"a", b"b"]),  # several fields join into one
    ([b""], [b"10.0.0.9"], [b""]),
])
def test_x_forwarded_for(given, inbound, outbound):
    fields = [(b"x-forwarded-for", v) for v in given]
    head, _ = clean(fields, direction="inbound")
    assert h.get_all(head.headers, b"x-forwarded-for") == inbound
    head, _ = clean(fields, direction="outbound")
    assert h.get_all(head.headers, b"x-forwarded-for") == outbound


def test_x_forwarded_for_keeps_its_place_inbound():
    head, _ = clean([(b"a", b"1"), (b"x-forwarded-for", b"x"), (b"b", b"2")], direction="inbound")
    assert names(head.headers)[:3] == [b"a", b"x-forwarded-for", b"b"]


def test_x_forwarded_for_ipv6_peer():
    head, _ = clean([], direction="inbound", peer="fd00::1")
    assert h.get_header(head.headers, b"x-forwarded-for") == b"fd00::1"


def test_explicit_counts_as_outbound():
    head, _ = clean([(b"x-forwarded-for", b"a")], direction="explicit")
    assert h.get_all(head.headers, b"x-forwarded-for") == [b"a"]


def test_bad_direction():
    with pytest.raises(ValueError):
        clean([], direction="Inbound")


@pytest.mark.parametrize("direction, given, scheme, want", [
    ("outbound", [], "http", [b"http"]),
    ("outbound", [b"https"], "http", [b"https"]),  # the app's own claim stands
    ("inbound", [], "https", [b"https"]),
    ("inbound", [b"https"], "http", [b"http"]),  # overwritten: untrusted from outside
    ("inbound", [b"http", b"https"], "https", [b"https"]),
])
def test_x_forwarded_proto(direction, given, scheme, want):
    head, _ = clean([(b"x-forwarded-proto", v) for v in given], direction=direction, scheme=scheme)
    assert h.get_all(head.headers, b"x-forwarded-proto") == want


def test_clean_request_typical_inbound_exact():
    head, used = clean([(b"host", b"svc"), (b"user-agent", b"curl"), (b"connection", b"keep-alive"),
                        (b"x-forwarded-for", b"1.2.3.4"), (b"x-meshproxy-x", b"1")],
                       direction="inbound", scheme="https", rid=b"r")
    assert used == b"r"
    assert head.headers == [(b"host", b"svc"), (b"user-agent", b"curl"),
                            (b"x-forwarded-for", b"1.2.3.4, 10.0.0.9"),
                            (b"x-request-id", b"r"), (b"x-forwarded-proto", b"https")]


def test_clean_request_replaces_the_list():
    original = [(b"connection", b"close"), (b"a", b"1")]
    head = req(original)
    h.clean_request(head, direction="outbound", peer_ip="1.1.1.1", scheme="http")
    assert head.headers is not original
    assert original == [(b"connection", b"close"), (b"a", b"1")]


# === HTTP/2 <-> HTTP/1 ===

@pytest.mark.parametrize("authority, given, want", [
    (b"svc:8080", [(b"a", b"1")], [(b"host", b"svc:8080"), (b"a", b"1")]),  # added first
    (b"svc", [(b"a", b"1"), (b"host", b"other")], [(b"a", b"1"), (b"host", b"svc")]),  # authority wins
    (b"svc", [(b"host", b"svc"), (b"host", b"x")], [(b"host", b"svc")]),
    (None, [(b"host", b"svc")], [(b"host", b"svc")]),
    (None, [], []),
])
def test_to_http1_request(authority, given, want):
    head = req(given, authority=authority, version="2")
    h.to_http1_request(head)
    assert head.headers == want
    assert head.authority == authority


@pytest.mark.parametrize("authority, given, want_authority", [
    (None, [(b"host", b"svc"), (b"a", b"1")], b"svc"),
    (b"svc", [(b"a", b"1"), (b"host", b"svc")], b"svc"),
    (b"svc", [(b"host", b"other"), (b"a", b"1"), (b"host", b"x")], b"svc"),
    (b"svc", [(b"a", b"1")], b"svc"),
    (None, [(b"a", b"1")], None),
])
def test_to_http2_request(authority, given, want_authority):
    head = req(given, authority=authority)
    h.to_http2_request(head)
    assert head.authority == want_authority
    assert head.headers == [(b"a", b"1")]


# === responses ===

@pytest.mark.parametrize("status, given, want", [
    (200, [(b"connection", b"keep-alive, x-a"), (b"x-a", b"1"), (b"keep-alive", b"t=5"),
           (b"transfer-encoding", b"chunked"), (b"content-type", b"text/html"), (b"trailer", b"x-t")],
     [(b"content-type", b"text/html"), (b"trailer", b"x-t")]),
    (200, [(b"upgrade", b"websocket"), (b"x-meshproxy-response-flags", b"UF"), (b"x-request-id", b"r")],
     [(b"x-request-id", b"r")]),
    (101, [(b"upgrade", b"websocket"), (b"connection", b"Upgrade, keep-alive"), (b"sec-websocket-accept", b"s")],
     [(b"upgrade", b"websocket"), (b"sec-websocket-accept", b"s"), (b"connection", b"upgrade")]),
])
def test_clean_response(status, given, want):
    head = ResponseHead(1, status, list(given))
    h.clean_response(head)
    assert head.headers == want


def test_clean_response_keeps_our_flags_on_a_local_reply():
    head, _ = h.local_reply(1, 503, "upstream connect error", "UF", http_version="1.1")
    before = list(head.headers)
    h.clean_response(head, local=True)
    assert head.headers == before


# === local replies ===

def test_local_reply_http1_close():
    head, body = h.local_reply(3, 503, "upstream connect error", "UF", http_version="1.1",
                               request_id=b"rid", keep_alive=False)
    assert body == b"meshproxy: Service Unavailable: upstream connect error (UF)\n"
    assert (head.stream_id, head.status, head.reason, head.http_version) == (3, 503, b"Service Unavailable", "1.1")
    assert head.content_length == len(body) and not head.keep_alive and not head.end_stream
    assert head.headers == [
        (b"content-type", b"text/plain; charset=utf-8"),
        (b"content-length", b"%d" % len(body)),
        (b"x-meshproxy-response-flags", b"UF"),
        (b"x-request-id", b"rid"),
        (b"connection", b"close"),
    ]


def test_local_reply_http2_never_carries_connection():
    head, body = h.local_reply(5, 403, "RBAC: access denied", "RBAC", http_version="2", keep_alive=False)
    assert body == b"RBAC: access denied"  # Envoy's RBAC body, byte for byte
    assert h.get_header(head.headers, b"connection") is None
    assert h.get_header(head.headers, b"x-request-id") is None
    assert h.get_header(head.headers, b"content-length") == str(len(body)).encode()


@pytest.mark.parametrize("status, phrase", [
    (400, "Bad Request"), (403, "Forbidden"), (404, "Not Found"), (408, "Request Timeout"),
    (413, "Content Too Large"), (414, "URI Too Long"), (421, "Misdirected Request"),
    (429, "Too Many Requests"), (431, "Request Header Fields Too Large"), (500, "Internal Server Error"),
    (502, "Bad Gateway"), (503, "Service Unavailable"), (504, "Gateway Timeout"), (418, "I'm a Teapot"),
    (599, "Unknown"),
])
def test_local_reply_phrases(status, phrase):
    head, body = h.local_reply(1, status, "m", "NR", http_version="1.1")
    assert head.reason == phrase.encode()
    assert body == f"meshproxy: {phrase}: m (NR)\n".encode()


def test_local_reply_without_flag():
    head, body = h.local_reply(1, 400, "bad", "", http_version="1.1")
    assert body == b"meshproxy: Bad Request: bad\n"
    assert h.get_header(head.headers, b"x-meshproxy-response-flags") is None


# === helpers ===

def test_helpers():
    hs = [(b"a", b"1"), (b"b", b"2"), (b"a", b"3")]
    assert h.get_header(hs, b"a") == b"1" and h.get_header(hs, b"z") is None
    assert h.get_all(hs, b"a") == [b"1", b"3"] and h.get_all(hs, b"z") == []
    h.set_header(hs, b"a", b"9")
    assert hs == [(b"a", b"9"), (b"b", b"2")]
    h.set_header(hs, b"c", b"4")
    assert hs == [(b"a", b"9"), (b"b", b"2"), (b"c", b"4")]
    same = hs
    assert h.remove_headers(hs, {b"a", b"c"}) == 2 and hs is same and hs == [(b"b", b"2")]
    assert h.remove_headers(hs, frozenset()) == 0


# === properties ===

from hypothesis import given, strategies as st  # noqa: E402

_NAMES = st.sampled_from([b"connection", b"keep-alive", b"te", b"upgrade", b"transfer-encoding",
                          b"proxy-connection", b"x-request-id", b"x-forwarded-for", b"x-forwarded-proto",
                          b"x-forwarded-client-cert", b"x-meshproxy-flags", b"host", b"accept", b"x-a", b"x-b"])
_VALUES = st.sampled_from([b"", b"trailers", b"keep-alive", b"x-a", b"close, x-b", b"1", b"gzip"])


@given(st.lists(st.tuples(_NAMES, _VALUES), max_size=12), st.sampled_from(["inbound", "outbound"]))
def test_clean_request_properties(fields, direction):
    head = req(fields)
    used = h.clean_request(head, direction=direction, peer_ip="10.0.0.9", scheme="http")
    out = head.headers
    assert not any(n in h.HOP_BY_HOP and (n, v) != (b"te", b"trailers") for n, v in out)
    assert not any(n.startswith(b"x-meshproxy-") or n == b"x-forwarded-client-cert" for n, _ in out)
    assert h.get_all(out, b"x-request-id") == [used]
    assert len(h.get_all(out, b"x-forwarded-proto")) >= 1
    if direction == "inbound":
        assert len(h.get_all(out, b"x-forwarded-for")) == 1
    # plain fields keep their order, minus the ones Connection named
    named = {t.strip() for n, v in fields if n == b"connection" for t in v.split(b",")}
    plain = [f for f in fields if f[0] in (b"host", b"accept", b"x-a", b"x-b")
             and (f[0] not in named or f[0] in (b"host",))]
    assert [f for f in out if f[0] in (b"host", b"accept", b"x-a", b"x-b")] == plain
    # cleaning again changes nothing but XFF (inbound appends one more hop)
    again = req(out)
    assert h.clean_request(again, direction="outbound", peer_ip="10.0.0.9", scheme="http") == used
    assert again.headers == out
