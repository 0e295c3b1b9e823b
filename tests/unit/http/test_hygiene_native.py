"""The C hygiene functions of ``_ngfast`` give exactly what the Python reference
functions of ``http/headers.py`` give (``_hygiene_request_py``,
``_hygiene_response_py``), on generated heads that hit every rule, and the
built-in ``HeaderHygiene`` filter uses them."""

from __future__ import annotations

import copy
import os
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshproxy.codec.events import RequestHead, ResponseHead
from meshproxy.http import chain
from meshproxy.http import headers as h

if h._fast is None:
    if os.environ.get("CI"):
        raise RuntimeError("meshproxy.codec._ngfast was not built (setup.py; needs gcc and Python headers)")
    pytest.skip("meshproxy.codec._ngfast not built here", allow_module_level=True)
c_request, c_response = h._fast.clean_request, h._fast.clean_response
py_request, py_response = h._hygiene_request_py, h._hygiene_response_py

NAMES = [b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"te", b"upgrade",
         b"x-forwarded-client-cert", b"x-request-id", b"x-forwarded-for", b"x-forwarded-proto",
         b"x-meshproxy-flags", b"x-meshproxy-", b"x-meshprox", b"host", b"content-length", b"close", b"accept",
         b"x-a", b"x-b", b"X-A", b"te2", b"connectio"]
VALUES = [b"", b"trailers", b"Trailers", b"trailers;q=1", b"gzip, trailers", b"gzip,\ttrailers ;q=0.5",
          b"trailersx", b"keep-alive", b"close", b"upgrade", b"x-a", b"X-A", b" x-a\t", b"close, x-b",
          b"x-a,x-b", b"x-request-id", b"x-forwarded-for, host, content-length", b"accept", b"1.2.3.4",
          b"a\nx-a", b"\x0bx-a", b",,", b"websocket"]
RID = re.compile(rb"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")


def request(fields, upgrade=None) -> RequestHead:
    return RequestHead(1, b"GET", b"/", b"svc", list(fields), upgrade=upgrade)


def response(status, fields) -> ResponseHead:
    return ResponseHead(1, status, list(fields))


def run_request(fn, fields, inbound, peer_ip, scheme, request_id, upgrade=None):
    head = request(copy.copy(fields), upgrade)
    rid = fn(head, inbound, peer_ip, scheme, request_id)
    out = head.headers
    if not request_id and not any(n == b"x-request-id" and v for n, v in fields):
        # generated: random, so compare its place and form, not its value
        assert RID.match(rid), rid
        out = [(n, b"<generated>" if v is rid else v) for n, v in out]
        rid = b"<generated>"
    return rid, out, head.upgrade


@settings(max_examples=600, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(NAMES), st.sampled_from(VALUES)), max_size=12),
       st.booleans(), st.sampled_from(["10.0.0.9", b"10.0.0.9", "fd00::1"]), st.sampled_from(["http", b"https"]),
       st.sampled_from([None, b"", b"given-id"]))
def test_request_c_equals_python(fields, inbound, peer_ip, scheme, request_id):
    assert (run_request(c_request, fields, inbound, peer_ip, scheme, request_id)
            == run_request(py_request, fields, inbound, peer_ip, scheme, request_id))


@settings(max_examples=600, deadline=None)
@given(st.sampled_from([200, 101, 204, 404]),
       st.lists(st.tuples(st.sampled_from(NAMES), st.sampled_from(VALUES)), max_size=12), st.booleans())
def test_response_c_equals_python(status, fields, local):
    a, b = response(status, fields), response(status, fields)
    assert c_response(a, local) is None and py_response(b, local) is None
    assert a.headers == b.headers


@pytest.mark.parametrize("fields, inbound, want", [
    # Connection names a field: it goes, and the fields with rules of their own stay
    ([(b"connection", b"x-a, x-request-id, host"), (b"x-a", b"1"), (b"host", b"h"), (b"x-request-id", b"r")],
     False, [(b"host", b"h"), (b"x-request-id", b"r"), (b"x-forwarded-proto", b"http")]),
    # inbound: every x-forwarded-for value joined into the first one's place, the peer appended
    ([(b"x-forwarded-for", b"1.1.1.1"), (b"accept", b"*/*"), (b"x-forwarded-for", b""),
      (b"x-forwarded-for", b"2.2.2.2"), (b"x-forwarded-proto", b"https"), (b"x-request-id", b"r")],
     True, [(b"x-forwarded-for", b"1.1.1.1, 2.2.2.2, 10.0.0.9"), (b"accept", b"*/*"), (b"x-request-id", b"r"),
            (b"x-forwarded-proto", b"http")]),
    # te: only "trailers" survives, once; x-meshproxy-* and xfcc go
    ([(b"te", b"gzip, Trailers;q=1"), (b"te", b"trailers"), (b"x-meshproxy-flags", b"UF"),
      (b"x-forwarded-client-cert", b"By=spiffe://x"), (b"x-request-id", b""), (b"x-request-id", b"r")],
     False, [(b"te", b"trailers"), (b"x-request-id", b"r"), (b"x-forwarded-proto", b"http")]),
])
def test_request_corners(fields, inbound, want):
    for fn in (c_request, py_request):
        head = request(fields)
        assert fn(head, inbound, "10.0.0.9", "http", None) == b"r"
        assert head.headers == want


def test_request_id_given_or_generated():
    head = request([(b"accept", b"*/*")])
    assert c_request(head, False, "10.0.0.9", "http", b"from-filter") == b"from-filter"
    assert (b"x-request-id", b"from-filter") in head.headers
    head = request([(b"accept", b"*/*")])
    rid = c_request(head, False, "10.0.0.9", "http", None)
    assert RID.match(rid) and (b"x-request-id", rid) in head.headers


@pytest.mark.parametrize("odd", [
    pytest.param(lambda: request([[b"accept", b"*/*"]]), id="a field that is a list"),
    pytest.param(lambda: request([(b"accept", "text")]), id="a str value"),
    pytest.param(lambda: request([(b"accept", b"*/*")], upgrade=b"websocket"), id="an upgrade"),
    pytest.param(lambda: request([(b"accept", b"*/*")], upgrade=b"H2C"), id="an h2c upgrade"),
])
def test_request_odd_input_goes_to_python(odd):
    """Anything but the common case is the Python function's: same result, same errors."""
    a, b = odd(), odd()
    ra = c_request(a, True, "10.0.0.9", "http", b"r")
    rb = py_request(b, True, "10.0.0.9", "http", b"r")
    assert (ra, a.headers, a.upgrade) == (rb, b.headers, b.upgrade)


def test_request_empty_name_raises_like_python():
    for fn in (c_request, py_request):
        with pytest.raises(IndexError):
            fn(request([(b"", b"v")]), False, "10.0.0.9", "http", None)


def test_response_corners():
    for fn in (c_response, py_response):
        head = response(101, [(b"connection", b"Upgrade, x-a"), (b"upgrade", b"websocket"), (b"x-a", b"1"),
                              (b"x-request-id", b"r"), (b"keep-alive", b"t=5")])
        fn(head, False)
        assert head.headers == [(b"upgrade", b"websocket"), (b"x-request-id", b"r"), (b"connection", b"upgrade")]
        head = response(503, [(b"x-meshproxy-response-flags", b"UF"), (b"te", b"trailers"), (b"date", b"d")])
        fn(head, True)
        assert head.headers == [(b"x-meshproxy-response-flags", b"UF"), (b"date", b"d")]
        head = response(200, [(b"x-meshproxy-response-flags", b"UF"), (b"transfer-encoding", b"chunked")])
        fn(head, False)
        assert head.headers == []


def test_response_odd_input_goes_to_python():
    a = ResponseHead(1, 200, [[b"date", b"d"], (b"connection", b"close")])
    b = ResponseHead(1, 200, [[b"date", b"d"], (b"connection", b"close")])
    c_response(a, False)
    py_response(b, False)
    assert a.headers == b.headers == [[b"date", b"d"]]


def test_new_request_id_c_equals_python():
    """The same text from the same random state, so the C function is the reference's twin."""
    import random

    state = random.getstate()
    try:
        random.seed(1234)
        want = [h._new_request_id_py() for _ in range(500)]
        random.seed(1234)
        got = [h._fast.new_request_id() for _ in range(500)]
    finally:
        random.setstate(state)
    assert got == want
    assert all(RID.match(r) for r in got) and len(set(got)) == 500
    assert h.new_request_id is h._fast.new_request_id


def test_bad_arguments_are_errors():
    with pytest.raises(TypeError):
        c_request(request([]), False, "10.0.0.9")
    with pytest.raises(TypeError):
        c_response(response(200, []))
    with pytest.raises(AttributeError):
        c_response(object(), False)


def test_the_module_and_the_filter_use_the_c_functions():
    assert h.hygiene_request is c_request and h.hygiene_response is c_response
    assert chain._hygiene_request is c_request and chain._hygiene_response is c_response


def test_no_reference_leaks(memory_growth):
    fields = [(b"connection", b"x-a"), (b"x-a", b"1"), (b"x-forwarded-for", b"1.1.1.1"), (b"te", b"trailers"),
              (b"accept", b"*/*"), (b"x-meshproxy-flags", b"UF")]

    def req_case():
        c_request(request(fields), True, "10.0.0.9", "http", None)

    def resp_case():
        c_response(response(101, fields + [(b"upgrade", b"websocket")]), False)

    assert memory_growth([req_case, resp_case, h._fast.new_request_id], 20_000) < 64 * 1024
