"""The C header-list functions of ``_ngfast`` give exactly what the Python
reference functions of ``_h2_headers`` give, on generated header lists that hit
every rule (well-formed, malformed, odd types), and the codec uses them."""

from __future__ import annotations

import os

import pytest
from hpack import NeverIndexedHeaderTuple
from hypothesis import given, settings
from hypothesis import strategies as st

from meshproxy.codec import _h2_headers as hh
from meshproxy.codec.events import RequestHead, ResponseHead

if hh._fast is None:
    if os.environ.get("CI"):
        raise RuntimeError("meshproxy.codec._ngfast was not built (setup.py; needs gcc and Python headers)")
    pytest.skip("meshproxy.codec._ngfast not built here", allow_module_level=True)
fast = hh._fast

PSEUDO = [b":method", b":scheme", b":authority", b":path", b":status", b":protocol"]
NAMES = [b"accept", b"user-agent", b"x-a", b"cookie", b"host", b"content-length", b"expect", b"te",
         b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade",
         b"authorization", b"proxy-authorization", b"X-Upper", b"Host", b"bad name", b"", b"x_u"]
VALUES = [b"", b"GET", b"CONNECT", b"http", b"/", b"svc", b"200", b"101", b"20", b"abc", b"12", b"1x",
          b"trailers", b"gzip", b"100-continue", b"x-a", b" lead", b"trail ", b"a\nb", b"a\x00b",
          b"keep-alive, x-a", b"\x0bx-a\x0c,x_u"]


@st.composite
def field(draw):
    name = draw(st.sampled_from(PSEUDO + NAMES))
    value = draw(st.sampled_from(VALUES))
    kind = draw(st.sampled_from(["tuple"] * 8 + ["never", "list"]))
    if kind == "never":
        return NeverIndexedHeaderTuple(name, value)
    if kind == "list":
        return [name, value]
    return (name, value)


@st.composite
def request_list(draw):
    """Mostly well-ordered requests (so the shortcut is reached), sometimes anything."""
    regular = draw(st.lists(field(), max_size=8))
    if draw(st.booleans()):
        pseudo = [(b":method", draw(st.sampled_from([b"GET", b"POST", b"CONNECT"]))),
                  (b":scheme", b"http"), (b":path", draw(st.sampled_from([b"/", b""]))),
                  (b":authority", draw(st.sampled_from([b"svc", b"other"])))]
        pseudo = draw(st.permutations(pseudo))[:draw(st.integers(2, 4))]
        pseudo += draw(st.lists(st.sampled_from([(b":path", b"/x"), (b":status", b"200")]), max_size=1))
        return [tuple(p) for p in pseudo] + regular
    return draw(st.lists(field(), max_size=10))


@st.composite
def response_list(draw):
    regular = draw(st.lists(field(), max_size=8))
    if draw(st.booleans()):
        return [(b":status", draw(st.sampled_from([b"200", b"101", b"20", b"abc", b"404"])))] + regular
    return draw(st.lists(field(), max_size=10))


def shape(out: list) -> list:
    return [(type(f), tuple(f)) for f in out]


@pytest.fixture
def python_calls():
    """Spies in front of the Python reference functions, as the C functions see them:
    the list of (name, args) of every call C hands to Python."""
    calls = []

    def spy(name, fn):
        def call(*args):
            calls.append((name, args))
            return fn(*args)
        return call

    fast.headers_setup(RequestHead, ResponseHead, NeverIndexedHeaderTuple,
                       spy("lift_request", hh.lift_request_py), spy("lift_response", hh.lift_response_py),
                       spy("clean", hh._clean_py))
    yield calls
    fast.headers_setup(RequestHead, ResponseHead, NeverIndexedHeaderTuple, hh.lift_request_py,
                       hh.lift_response_py, hh._clean_py)


@settings(max_examples=800, deadline=None)
@given(request_list(), st.booleans(), st.sampled_from([64, 4096]), st.sampled_from([None, 10, 10**6]),
       st.sampled_from([3, 100]))
def test_lift_request_in_c_matches_python(fields, end, max_size, size, max_count):
    got = fast.lift_request(1, list(fields), end, max_size, max_count, size)
    assert got == hh.lift_request_py(1, list(fields), end, max_size, max_count, size)


@settings(max_examples=800, deadline=None)
@given(response_list(), st.booleans(), st.booleans(), st.sampled_from([64, 4096]),
       st.sampled_from([None, 10, 10**6]))
def test_lift_response_in_c_matches_python(fields, end, checked, max_size, size):
    got = fast.lift_response(3, list(fields), end, max_size, 100, checked, size)
    assert got == hh.lift_response_py(3, list(fields), end, max_size, 100, checked, size)


@settings(max_examples=800, deadline=None)
@given(st.lists(field(), max_size=10), st.booleans())
def test_clean_in_c_matches_python(headers, drop_host):
    got, ref = [], []
    assert fast.clean(list(headers), got, drop_host) == hh._clean_py(list(headers), ref, drop_host)
    assert shape(got) == shape(ref)


@pytest.mark.parametrize("regular", [
    [(b"x-a", b" lead")], [(b"x-a", b"a\nb")], [(b"X-Upper", b"v")], [(b"bad name", b"v")],
    [(b"accept", b"*/*"), (b"x-a", b"trail ")], [(b"x-a", b"a\x00b")], [(b"x-a", b"a\rb")],
    [(b"x-a", b"\tv")], [(b"", b"v")],
])
def test_a_request_with_one_bad_field_is_malformed_in_c_too(regular):
    req = [(b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/")] + regular
    got = fast.lift_request(1, req, True, 4096, 100, None)
    assert isinstance(got, str) and got == hh.lift_request_py(1, req, True, 4096, 100)


@pytest.mark.parametrize("fields", [
    [(b":method", b"CONNECT"), (b":authority", b"db:5432")],
    [(b":method", b"CONNECT"), (b":authority", b"db:5432"), (b":path", b"/")],
    [(b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/"), (b"cookie", b"a=1"), (b"cookie", b"b=2"),
     (b"host", b"svc")],
    [(b":method", b"POST"), (b":scheme", b"http"), (b":path", b"/"), (b"content-length", b"5"),
     (b"content-length", b"5"), (b"expect", b"100-Continue")],
    [(b":method", b"POST"), (b":scheme", b"http"), (b":path", b"/"), (b"content-length", b"5"),
     (b"content-length", b"6")],
    [(b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/"), (b":authority", b"a"), (b"host", b"b")],
    [(b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/"), (b"content-length", b"9" * 40)],
    [(b":method", b"GET"), (b":scheme", b"http"), (b":scheme", b"https"), (b":path", b"/")],
    [(b":method", b"GET"), (b":method", b"POST"), (b":scheme", b"http"), (b":path", b"/")],
    [(b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/"), (b":path", b"/b")],
    [(b":method", b"GET"), (b":authority", b"a"), (b":authority", b"b"), (b":scheme", b"http"), (b":path", b"/")],
    [(b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/"), (b":status", b"200")],
    [(b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/"), (b"x-a", b"1"), (b":path", b"/b")],
])
def test_request_corners_in_c_match_python(fields):
    assert fast.lift_request(1, fields, False, 4096, 100, None) == hh.lift_request_py(1, fields, False, 4096, 100)


def test_clean_drops_what_connection_nominates_in_c_too():
    headers = [(b"Connection", b" X-Drop ,, keep-alive"), (b"x-drop", b"1"), (b"X-Keep", b"2"), (b"", b"e"),
               (b"TE", b"Trailers"), (b"te", b"gzip"), (b"Authorization", b"s"), (b"Host", b"h"),
               (b"connection", b"\x0bx-vt\x0c"), (b"x-vt", b"3")]  # bytes.strip(): any ASCII whitespace
    got, ref = [], []
    assert fast.clean(headers, got, False) == hh._clean_py(headers, ref, False) == b"h"
    assert shape(got) == shape(ref)
    assert not any(f[1][0] == b"x-vt" for f in shape(got))
    assert (NeverIndexedHeaderTuple, (b"authorization", b"s")) in shape(got)


def test_the_codec_uses_the_c_versions(python_calls):
    assert (hh.lift_request, hh.lift_response, hh._clean) == (fast.lift_request, fast.lift_response, fast.clean)
    req = [(b":method", b"GET"), (b":scheme", b"http"), (b":authority", b"svc"), (b":path", b"/a"),
           (b"accept", b"*/*"), (b"user-agent", b"h2load")]
    head = hh.lift_request(1, req, True, 4096, 100)
    assert isinstance(head, RequestHead) and head.headers == req[4:] and head.authority == b"svc"
    resp = [(b":status", b"200"), (b"server", b"nginx"), (b"content-length", b"1024")]
    rhead = hh.lift_response(1, resp, False, 4096, 100, True)
    assert isinstance(rhead, ResponseHead) and rhead.content_length == 1024 and rhead.headers == resp[1:]
    assert hh.response_block(ResponseHead(1, 200, resp[1:])) == [(b":status", b"200")] + resp[1:]
    assert python_calls == []  # ordinary lists never reach the Python versions


def test_odd_field_types_are_handed_to_python(python_calls):
    odd_request = [(b":method", bytearray(b"GET"))]
    assert fast.lift_request(1, odd_request, True, 4096, 100) == "missing :scheme or :path"
    assert fast.lift_response(1, ((b":status", b"200"),), True, 4096, 100, True).status == 200
    out = []
    assert fast.clean([[b"x-a", b"1"]], out, True) is None and out == [(b"x-a", b"1")]
    assert [name for name, _ in python_calls] == ["lift_request", "lift_response", "clean"]
    assert python_calls[0][1] == (1, odd_request, True, 4096, 100)  # the caller's own arguments


def test_the_c_functions_do_not_leak_references(memory_growth):
    """Every path (a head, a reason, 431, a hand-back) run many times leaves no objects
    behind: a leaked reference per call would keep thousands of heads and lists alive."""
    good = [(b":method", b"GET"), (b":scheme", b"http"), (b":authority", b"svc"), (b":path", b"/"),
            (b"cookie", b"a"), (b"cookie", b"b"), (b"content-length", b"0"), (b"expect", b"x")]
    cases = [
        lambda: fast.lift_request(1, good, True, 4096, 100, None),
        lambda: fast.lift_request(1, good + [(b"Bad", b"v")], True, 4096, 100, None),
        lambda: fast.lift_request(1, good, True, 10, 100, None),
        lambda: fast.lift_request(1, [(b":method", b"CONNECT"), (b":authority", b"a:1")], True, 4096, 100, None),
        lambda: fast.lift_request(1, [(b":method", bytearray(b"GET"))], True, 4096, 100, None),
        lambda: fast.lift_request(1, good + [(b"content-length", b"1")], True, 4096, 100, None),
        lambda: fast.lift_response(1, [(b":status", b"200"), (b"content-length", b"5")], True, 4096, 100, True,
                                   None),
        lambda: fast.lift_response(1, [(b":status", b"20x")], True, 4096, 100, False, None),
        lambda: fast.clean([(b"Connection", b"x-a"), (b"x-a", b"1"), (b"authorization", b"s"), (b"Host", b"h"),
                            (b"X-B", b"2")], [], True),
    ]
    grown = memory_growth(cases, 3000)
    assert grown < 50_000, grown
