"""W3C trace context and B3: parse tables, precedence, inject, round trips."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshproxy.observe.propagation import (
    TRACE_HEADERS,
    TraceContext,
    extract,
    format_b3_single,
    format_traceparent,
    inject,
    parse_b3_multi,
    parse_b3_single,
    parse_traceparent,
    parse_tracestate,
)

TID = 0x4BF92F3577B34DA6A3CE929D0E0E4736
SID = 0x00F067AA0BA902B7
TP = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


# === traceparent ===

@pytest.mark.parametrize("value, expected", [
    (TP, TraceContext(TID, SID, True)),
    (b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00", TraceContext(TID, SID, False)),
    (b"  " + TP + b"\t", TraceContext(TID, SID, True)),  # OWS around the value
    (b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-03", TraceContext(TID, SID, True)),  # other flag bits
    (b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-02", TraceContext(TID, SID, False)),
    # future versions: the first four fields, anything after a dash ignored
    (b"01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", TraceContext(TID, SID, True)),
    (b"cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what-the-future-holds",
     TraceContext(TID, SID, True)),
])
def test_traceparent_valid(value, expected):
    assert parse_traceparent(value) == expected


@pytest.mark.parametrize("value", [
    b"",
    b"00",
    b"00-00000000000000000000000000000000-00f067aa0ba902b7-01",  # zero trace id
    b"00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",  # zero span id
    b"ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",  # forbidden version
    b"00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",  # upper-case hex
    b"00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",  # short trace id
    b"00-4bf92f3577b34da6a3ce929d0e0e47366-00f067aa0ba902b7-01",  # long trace id
    b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b-01",  # short span id
    b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1",  # short flags
    b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0x",  # bad hex
    b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902bz-01",
    b"00_4bf92f3577b34da6a3ce929d0e0e4736_00f067aa0ba902b7_01",  # wrong separators
    TP + b"-extra",  # version 00 must be exactly 55 characters
    TP + b"x",
    b"cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x",  # future: field 5 needs a dash
    b"0x-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
    b"00-+bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",  # int(..., 16) would take these
    b"00-4bf92f3577b34da6a3ce929d0e0e_736-00f067aa0ba902b7-01",
])
def test_traceparent_invalid(value):
    assert parse_traceparent(value) is None


@pytest.mark.parametrize("values, expected", [
    ([b"congo=t61rcWkgMzE"], b"congo=t61rcWkgMzE"),
    ([b"rojo=00f067aa0ba902b7,congo=t61rcWkgMzE"], b"rojo=00f067aa0ba902b7,congo=t61rcWkgMzE"),
    ([b"rojo=1 , , congo=2"], b"rojo=1,congo=2"),  # OWS and empty members dropped
    ([b"rojo=1", b"congo=2"], b"rojo=1,congo=2"),  # several header lines combine
    ([b"fw529a3039@dt=abc", b"a*/_-9=x y"], b"fw529a3039@dt=abc,a*/_-9=x y"),
    ([b""], None),
    ([b"Rojo=1"], None),  # keys are lower case
    ([b"rojo=1,rojo=2"], None),  # duplicate key
    ([b"rojo"], None),
    ([b"rojo=a,b"], None),
    ([b"rojo=x="], None),  # '=' not allowed in values
    ([b"rojo=x "], b"rojo=x"),  # trailing OWS is stripped, not part of the value
    ([b",".join(b"k%d=v" % i for i in range(33))], None),  # more than 32 members
    ([b",".join(b"k%d=v" % i for i in range(32))], b",".join(b"k%d=v" % i for i in range(32))),
])
def test_tracestate(values, expected):
    assert parse_tracestate(values) == expected


# === B3 ===

@pytest.mark.parametrize("value, expected", [
    (b"4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7", TraceContext(TID, SID, None, None, True)),
    (b"4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1", TraceContext(TID, SID, True, None, True)),
    (b"4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0", TraceContext(TID, SID, False, None, True)),
    (b"4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-d", TraceContext(TID, SID, True, None, True)),
    (b"4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1-05e3ac9a4f6e3b90",
     TraceContext(TID, SID, True, None, True)),
    (b"a3ce929d0e0e4736-00f067aa0ba902b7-1", TraceContext(0xA3CE929D0E0E4736, SID, True, None, True)),  # 64-bit
    (b"0", TraceContext(0, 0, False, None, True)),  # sampling-only
    (b"1", TraceContext(0, 0, True, None, True)),
    (b"d", TraceContext(0, 0, True, None, True)),
])
def test_b3_single_valid(value, expected):
    assert parse_b3_single(value) == expected


@pytest.mark.parametrize("value", [
    b"", b"2", b"true",
    b"4bf92f3577b34da6a3ce929d0e0e4736",  # no span id
    b"4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-2",  # bad sampling state
    b"4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1-05e3ac9a4f6e3b9",  # short parent id
    b"4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1-0000000000000000",  # zero parent id
    b"4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7--05e3ac9a4f6e3b90",
    b"00000000000000000000000000000000-00f067aa0ba902b7-1",
    b"4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-1",
    b"4bf92f3577b34da6a3ce929d0e0e47-00f067aa0ba902b7",  # 30 hex digits
    b"4BF92F3577B34DA6A3CE929D0E0E4736-00F067AA0BA902B7",  # B3 is lower-hex
])
def test_b3_single_invalid(value):
    assert parse_b3_single(value) is None


@pytest.mark.parametrize("args, expected", [
    ((b"4bf92f3577b34da6a3ce929d0e0e4736", b"00f067aa0ba902b7", b"1", None), TraceContext(TID, SID, True, None, True)),
    ((b"4bf92f3577b34da6a3ce929d0e0e4736", b"00f067aa0ba902b7", None, None), TraceContext(TID, SID, None, None, True)),
    ((b"a3ce929d0e0e4736", b"00f067aa0ba902b7", b"0", None),
     TraceContext(0xA3CE929D0E0E4736, SID, False, None, True)),
    ((b"a3ce929d0e0e4736", b"00f067aa0ba902b7", b"true", None),
     TraceContext(0xA3CE929D0E0E4736, SID, True, None, True)),
    ((b"a3ce929d0e0e4736", b"00f067aa0ba902b7", b"0", b"1"),  # debug wins
     TraceContext(0xA3CE929D0E0E4736, SID, True, None, True)),
    ((None, None, b"0", None), TraceContext(0, 0, False, None, True)),  # sampling-only
    ((None, None, None, b"1"), TraceContext(0, 0, True, None, True)),
    ((None, None, None, None), None),
    ((b"4bf92f3577b34da6a3ce929d0e0e4736", None, b"1", None), None),
    ((None, b"00f067aa0ba902b7", b"1", None), None),
    ((b"4bf92f3577b34da6a3ce929d0e0e47", b"00f067aa0ba902b7", b"1", None), None),
    ((b"4bf92f3577b34da6a3ce929d0e0e4736", b"00f067aa0ba902", b"1", None), None),
    ((b"0000000000000000", b"00f067aa0ba902b7", b"1", None), None),
    ((b"4bf92f3577b34da6a3ce929d0e0e4736", b"xxf067aa0ba902b7", b"1", None), None),
])
def test_b3_multi(args, expected):
    assert parse_b3_multi(*args) == expected


def test_b3_64_bit_trace_id_is_padded_to_128_on_the_way_out():
    ctx = extract([(b"x-b3-traceid", b"a3ce929d0e0e4736"), (b"x-b3-spanid", b"00f067aa0ba902b7"),
                   (b"x-b3-sampled", b"1")])
    out = dict(inject([], ctx))
    assert out[b"x-b3-traceid"] == b"0000000000000000a3ce929d0e0e4736"
    assert out[b"traceparent"] == b"00-0000000000000000a3ce929d0e0e4736-00f067aa0ba902b7-01"


# === extract: precedence ===

B3_SINGLE = (b"b3", b"11111111111111111111111111111111-2222222222222222-0")
B3_MULTI = [(b"x-b3-traceid", b"33333333333333333333333333333333"), (b"x-b3-spanid", b"4444444444444444"),
            (b"x-b3-sampled", b"1")]


@pytest.mark.parametrize("headers, expected", [
    ([], None),
    ([(b"host", b"a"), (b"user-agent", b"curl")], None),
    ([(b"traceparent", TP)], TraceContext(TID, SID, True)),
    ([(b"traceparent", TP), (b"tracestate", b"a=1"), (b"tracestate", b"b=2")],
     TraceContext(TID, SID, True, b"a=1,b=2")),
    ([(b"traceparent", TP), (b"tracestate", b"A=1")], TraceContext(TID, SID, True)),  # bad tracestate dropped
    ([(b"tracestate", b"a=1")], None),  # tracestate alone means nothing
    # W3C over B3 single over B3 multi; B3 beside W3C is remembered (b3=True) so it is written on
    ([B3_SINGLE, (b"traceparent", TP), *B3_MULTI], TraceContext(TID, SID, True, None, True)),
    ([*B3_MULTI, B3_SINGLE], TraceContext(0x11111111111111111111111111111111, 0x2222222222222222, False, None, True)),
    ([*B3_MULTI], TraceContext(0x33333333333333333333333333333333, 0x4444444444444444, True, None, True)),
    # invalid W3C falls back to B3
    ([(b"traceparent", b"00-zz"), B3_SINGLE],
     TraceContext(0x11111111111111111111111111111111, 0x2222222222222222, False, None, True)),
    ([(b"traceparent", b"00-zz"), (b"b3", b"nonsense"), *B3_MULTI],
     TraceContext(0x33333333333333333333333333333333, 0x4444444444444444, True, None, True)),
    # two traceparent headers are invalid
    ([(b"traceparent", TP), (b"traceparent", TP)], None),
    ([(b"b3", b"0")], TraceContext(0, 0, False, None, True)),
    ([(b"x-b3-sampled", b"0")], TraceContext(0, 0, False, None, True)),
])
def test_extract(headers, expected):
    assert extract(headers) == expected


# === inject ===

def test_inject_replaces_every_trace_header_and_keeps_the_rest_in_order():
    headers = [(b"host", b"reviews:9080"), (b"traceparent", b"00-old"), (b"tracestate", b"old=1"),
               (b"x-request-id", b"r1"), B3_SINGLE, *B3_MULTI, (b"x-b3-parentspanid", b"5555555555555555"),
               (b"x-b3-flags", b"1"), (b"accept", b"*/*")]
    before = list(headers)
    ctx = TraceContext(TID, SID, True, b"congo=t61rcWkgMzE")
    out = inject(headers, ctx)
    assert headers == before  # input untouched
    assert out == [(b"host", b"reviews:9080"), (b"x-request-id", b"r1"), (b"accept", b"*/*"),
                   (b"traceparent", TP), (b"tracestate", b"congo=t61rcWkgMzE")]


def test_inject_writes_b3_multi_when_the_context_came_from_b3():
    ctx = TraceContext(TID, SID, False, None, True)
    out = inject([B3_SINGLE], ctx)
    assert out == [(b"traceparent", b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00"),
                   (b"x-b3-traceid", b"4bf92f3577b34da6a3ce929d0e0e4736"), (b"x-b3-spanid", b"00f067aa0ba902b7"),
                   (b"x-b3-sampled", b"0")]
    assert extract(out) == TraceContext(TID, SID, False, None, True)  # W3C wins, agrees, B3 remembered


def test_inject_sampling_only_context():
    assert inject([(b"b3", b"0"), (b"a", b"b")], TraceContext(0, 0, False, None, True)) == \
        [(b"a", b"b"), (b"x-b3-sampled", b"0")]
    assert inject([(b"traceparent", TP)], TraceContext(0, 0, None, None, False)) == []


def test_exactly_one_context_upstream():
    ctx = TraceContext(TID, SID, True, None, True)
    out = inject([B3_SINGLE, *B3_MULTI, (b"traceparent", TP)], ctx)
    names = [n for n, _ in out if n in TRACE_HEADERS]
    assert sorted(names) == sorted({*names})  # no header twice
    assert extract(out) == TraceContext(TID, SID, True, None, True)
    assert extract([h for h in out if h[0] != b"traceparent"]) == ctx


# === round trips ===

trace_ids = st.integers(1, 2**128 - 1)
span_ids = st.integers(1, 2**64 - 1)
ts_members = st.lists(
    st.tuples(st.from_regex(r"[a-z][a-z0-9_\-*/]{0,20}", fullmatch=True),
              st.from_regex(r"[\x21-\x2b\x2d-\x3c\x3e-\x7e]{1,20}", fullmatch=True)),
    max_size=32, unique_by=lambda kv: kv[0])


@given(trace_ids, span_ids, st.booleans())
def test_traceparent_format_parse_identity(t, s, sampled):
    ctx = TraceContext(t, s, sampled)
    value = format_traceparent(ctx)
    assert len(value) == 55
    assert parse_traceparent(value) == ctx


@given(trace_ids, span_ids, st.sampled_from([None, True, False]))
def test_b3_single_format_parse_identity(t, s, sampled):
    ctx = TraceContext(t, s, sampled, None, True)
    assert parse_b3_single(format_b3_single(ctx)) == ctx


@given(trace_ids, span_ids, st.booleans(), ts_members)
def test_inject_extract_round_trip(t, s, sampled, members):
    state = b",".join(f"{k}={v}".encode() for k, v in members) or None
    ctx = TraceContext(t, s, sampled, state, False)
    assert extract(inject([(b"host", b"x")], ctx)) == ctx
    # B3-only receivers see the same ids and decision
    b3ctx = TraceContext(t, s, sampled, None, True)
    out = [h for h in inject([], b3ctx) if h[0] != b"traceparent"]
    assert extract(out) == b3ctx


@given(st.binary(max_size=80))
def test_parsers_never_raise(value):
    parse_traceparent(value)
    parse_b3_single(value)
    parse_tracestate([value])
    extract([(b"traceparent", value), (b"b3", value), (b"x-b3-traceid", value), (b"x-b3-spanid", value)])
