"""Trace context on the wire: W3C ``traceparent``/``tracestate`` and Zipkin B3.

Where this sits: on the HTTP path, beside the filter chain. ``http/server.py``
calls ``extract(head.headers)`` on each request it receives, hands the result to
``observe/tracing.RequestTracer.start`` as the span's parent, and calls
``inject(headers, span.context())`` on the request it sends upstream, so the next
hop becomes a child of our span. When tracing is off nothing here runs and the
trace headers pass through untouched (they are end-to-end headers).

Rules:

1. Pure: bytes in, values out. No OpenTelemetry, no asyncio, no I/O, never
   raises on hostile input (a malformed header is simply "no context").
2. W3C wins over B3 when both are present and valid; B3 single (``b3``) wins
   over B3 multi (``x-b3-*``), as the B3 spec says.
3. ``inject`` leaves exactly one consistent context upstream: it removes every
   ``traceparent``/``tracestate``/``b3``/``x-b3-*`` header and writes ours. If the
   incoming context was B3, it also writes the B3 multi headers so B3-only
   applications keep their traces.
4. Ids are ``int``; 64-bit B3 trace ids are kept as the same number, which is the
   128-bit id padded with zeros on the left (that is how they are written back).

Specs: https://www.w3.org/TR/trace-context/ and https://github.com/openzipkin/b3-propagation
"""

from __future__ import annotations

import re
from dataclasses import dataclass

Headers = list[tuple[bytes, bytes]]

_OWS = b" \t"

# version-traceid-spanid-flags, then (future versions only) "-" and anything.
_TRACEPARENT = re.compile(rb"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?", re.S)
# traceid-spanid[-sampled[-parentspanid]]; lower-hex as the B3 spec says.
_B3_SINGLE = re.compile(rb"([0-9a-f]{32}|[0-9a-f]{16})-([0-9a-f]{16})(?:-([01d])(?:-([0-9a-f]{16}))?)?")
_B3_TRACE_ID = re.compile(rb"[0-9a-f]{32}|[0-9a-f]{16}")
_B3_SPAN_ID = re.compile(rb"[0-9a-f]{16}")
# tracestate list-member: key "=" value (W3C section 3.3.1.3).
_TS_MEMBER = re.compile(
    rb"([a-z0-9][a-z0-9_\-*/]{0,240}@[a-z][a-z0-9_\-*/]{0,13}|[a-z][a-z0-9_\-*/]{0,255})"
    rb"=([\x20-\x2b\x2d-\x3c\x3e-\x7e]{0,255}[\x21-\x2b\x2d-\x3c\x3e-\x7e])"
)
_TS_MAX_MEMBERS = 32

_B3_SAMPLED = {b"1": True, b"0": False, b"d": True, b"true": True, b"false": False}

TRACE_HEADERS = frozenset({
    b"traceparent", b"tracestate", b"b3",
    b"x-b3-traceid", b"x-b3-spanid", b"x-b3-parentspanid", b"x-b3-sampled", b"x-b3-flags",
})
"""Every header ``inject`` replaces."""


@dataclass(frozen=True, slots=True)
class TraceContext:
    """A position in a trace, as read from or written to request headers."""

    trace_id: int
    """128-bit trace id; 0 only in a sampling-only context (see ``valid``)."""
    span_id: int
    """64-bit id of the span that sent the request (our parent), or of our own span
    when this context is to be injected."""
    sampled: bool | None
    """The sender's sampling decision; None when it left the decision to us (B3
    without ``x-b3-sampled``)."""
    tracestate: bytes | None = None
    """W3C ``tracestate`` (validated, members joined with ``,``), None if absent."""
    b3: bool = False
    """True if the context came from B3 headers (then ``inject`` writes B3 too)."""

    @property
    def valid(self) -> bool:
        """False for a B3 sampling-only context (``b3: 0``, ``x-b3-sampled: 1``
        without ids): it carries a decision but no trace to join."""
        return self.trace_id != 0 and self.span_id != 0


# === W3C ===

def parse_traceparent(value: bytes) -> TraceContext | None:
    """``traceparent`` value → context, or None if invalid. Version ``00`` must be
    exactly 55 characters; a higher version is read by its first four fields
    (W3C 3.2.4); ``ff``, upper-case hex and all-zero ids are invalid."""
    m = _TRACEPARENT.fullmatch(value.strip(_OWS))
    if m is None:
        return None
    version, trace_id, span_id, flags, rest = m.groups()
    if version == b"ff" or (version == b"00" and rest is not None):
        return None
    t, s = int(trace_id, 16), int(span_id, 16)
    if not t or not s:
        return None
    return TraceContext(t, s, bool(int(flags, 16) & 1))


def format_traceparent(ctx: TraceContext) -> bytes:
    """Context → version ``00`` ``traceparent`` value (``sampled=None`` is written as not sampled)."""
    return b"00-%032x-%016x-%s" % (ctx.trace_id, ctx.span_id, b"01" if ctx.sampled else b"00")


def parse_tracestate(values: list[bytes]) -> bytes | None:
    """All ``tracestate`` header values (in order) → one normalised value, or None
    if absent, empty or invalid (an invalid ``tracestate`` is dropped whole; the
    ``traceparent`` stays valid)."""
    members = []
    keys = set()
    for value in values:
        for member in value.split(b","):
            member = member.strip(_OWS)
            if not member:
                continue
            m = _TS_MEMBER.fullmatch(member)
            if m is None or m[1] in keys:
                return None
            keys.add(m[1])
            members.append(member)
    if not members or len(members) > _TS_MAX_MEMBERS:
        return None
    return b",".join(members)


# === B3 ===

def parse_b3_single(value: bytes) -> TraceContext | None:
    """``b3`` value → context, or None if invalid. ``0``, ``1`` and ``d`` alone give
    a sampling-only context (ids 0); ``d`` (debug) counts as sampled."""
    value = value.strip(_OWS)
    sampled = _B3_SAMPLED.get(value) if len(value) == 1 else None
    if sampled is not None:
        return TraceContext(0, 0, sampled, None, True)
    m = _B3_SINGLE.fullmatch(value)
    if m is None:
        return None
    t, s = int(m[1], 16), int(m[2], 16)
    if not t or not s or (m[4] is not None and not int(m[4], 16)):
        return None
    return TraceContext(t, s, None if m[3] is None else m[3] != b"0", None, True)


def format_b3_single(ctx: TraceContext) -> bytes:
    """Context → ``b3`` value (128-bit trace id; the sampling field only when known)."""
    if not ctx.valid:
        return b"" if ctx.sampled is None else (b"1" if ctx.sampled else b"0")
    ids = b"%032x-%016x" % (ctx.trace_id, ctx.span_id)
    return ids if ctx.sampled is None else ids + (b"-1" if ctx.sampled else b"-0")


def parse_b3_multi(trace_id: bytes | None, span_id: bytes | None, sampled: bytes | None,
                   flags: bytes | None) -> TraceContext | None:
    """``x-b3-traceid``/``-spanid``/``-sampled``/``-flags`` values → context, or None.
    ``x-b3-flags: 1`` (debug) means sampled; ``true``/``false`` are accepted for
    ``x-b3-sampled`` (legacy tracers). A decision without ids is sampling-only."""
    decision = None
    if flags is not None and flags.strip(_OWS) == b"1":
        decision = True
    elif sampled is not None:
        decision = _B3_SAMPLED.get(sampled.strip(_OWS).lower())
    if trace_id is None and span_id is None:
        return None if decision is None else TraceContext(0, 0, decision, None, True)
    if trace_id is None or span_id is None:
        return None
    trace_id, span_id = trace_id.strip(_OWS), span_id.strip(_OWS)
    if _B3_TRACE_ID.fullmatch(trace_id) is None or _B3_SPAN_ID.fullmatch(span_id) is None:
        return None
    t, s = int(trace_id, 16), int(span_id, 16)
    if not t or not s:
        return None
    return TraceContext(t, s, decision, None, True)


# === headers ===

def extract(headers: Headers) -> TraceContext | None:
    """The request's trace context: W3C if valid, else B3 single, else B3 multi,
    else None. One pass over the headers; a repeated ``traceparent`` is invalid."""
    tp = None
    tp_count = 0
    ts: list[bytes] = []
    b3 = None
    multi: dict[bytes, bytes] | None = None
    for name, value in headers:
        if name not in TRACE_HEADERS:
            continue
        if name == b"traceparent":
            tp, tp_count = value, tp_count + 1
        elif name == b"tracestate":
            ts.append(value)
        elif name == b"b3":
            b3 = value if b3 is None else b3
        else:
            if multi is None:
                multi = {}
            multi.setdefault(name, value)
    if tp_count == 1:
        ctx = parse_traceparent(tp)
        if ctx is not None:
            state = parse_tracestate(ts) if ts else None
            # B3 headers beside traceparent (a previous sidecar wrote both): keep writing
            # B3 too, so B3-only apps further down still see the context.
            with_b3 = b3 is not None or multi is not None
            if state is not None or with_b3:
                ctx = TraceContext(ctx.trace_id, ctx.span_id, ctx.sampled, state, with_b3)
            return ctx
    if b3 is not None:
        ctx = parse_b3_single(b3)
        if ctx is not None:
            return ctx
    if multi is not None:
        return parse_b3_multi(multi.get(b"x-b3-traceid"), multi.get(b"x-b3-spanid"),
                              multi.get(b"x-b3-sampled"), multi.get(b"x-b3-flags"))
    return None


def inject(headers: Headers, ctx: TraceContext) -> Headers:
    """A new header list: ``headers`` without any trace header, plus ``ctx`` as
    ``traceparent`` (and ``tracestate`` when it has one), plus ``x-b3-traceid``,
    ``x-b3-spanid`` and ``x-b3-sampled`` when ``ctx.b3``. A sampling-only ``ctx``
    writes only ``x-b3-sampled`` (when B3). ``headers`` itself is not changed."""
    out = [h for h in headers if h[0] not in TRACE_HEADERS]
    if ctx.valid:
        out.append((b"traceparent", format_traceparent(ctx)))
        if ctx.tracestate:
            out.append((b"tracestate", ctx.tracestate))
        if ctx.b3:
            out.append((b"x-b3-traceid", b"%032x" % ctx.trace_id))
            out.append((b"x-b3-spanid", b"%016x" % ctx.span_id))
    if ctx.b3 and ctx.sampled is not None:
        out.append((b"x-b3-sampled", b"1" if ctx.sampled else b"0"))
    return out
