"""Request spans: parenting, sampling, attributes, errors, and the 'none' exporter's zero cost."""

import subprocess
import sys

import pytest

pytest.importorskip("opentelemetry.sdk")

from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter  # noqa: E402
from opentelemetry.trace import SpanKind, StatusCode  # noqa: E402

from meshproxy.codec.events import RequestHead  # noqa: E402
from meshproxy.config.routing import Tracing  # noqa: E402
from meshproxy.observe import propagation  # noqa: E402
from meshproxy.observe.propagation import TraceContext  # noqa: E402
from meshproxy.observe.tracing import make_tracer, span_name, tracer_provider_shutdown  # noqa: E402

TID = 0x4BF92F3577B34DA6A3CE929D0E0E4736
SID = 0x00F067AA0BA902B7


def head(target=b"/api/v1?limit=2", authority=b"reviews:9080", method=b"GET", version="1.1", headers=None):
    if headers is None:
        headers = [(b"host", authority), (b"user-agent", b"curl/8.5"), (b"x-request-id", b"req-1")]
    return RequestHead(stream_id=1, method=method, target=target, authority=authority, headers=headers,
                       http_version=version)


@pytest.fixture
def exporter():
    return InMemorySpanExporter()


def tracer_for(exporter, sampling=1.0, **kw):
    return make_tracer(Tracing(exporter="none", sampling=sampling), "reviews.default", exporter=exporter, **kw)


def test_server_span_joins_the_incoming_trace(exporter):
    tracer = tracer_for(exporter)
    parent = propagation.extract([(b"traceparent", b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
                                  (b"tracestate", b"congo=t61rcWkgMzE")])
    span = tracer.start("server", head(), "10.0.0.5:43210", parent, "reviews-route")
    ctx = span.context()
    span.end(200, "-", "10.0.0.9:9080", 120, 2048, None)

    (s,) = exporter.get_finished_spans()
    assert s.name == "reviews:9080/api/v1"
    assert s.kind is SpanKind.SERVER
    assert s.context.trace_id == TID
    assert s.parent.span_id == SID and s.parent.is_remote
    assert s.context.span_id != SID
    assert s.context.trace_state.to_header() == "congo=t61rcWkgMzE"
    assert s.resource.attributes["service.name"] == "reviews.default"
    # context() is this span, and is exactly what inject writes upstream
    assert ctx == TraceContext(TID, s.context.span_id, True, b"congo=t61rcWkgMzE", False)
    out = dict(propagation.inject([(b"host", b"reviews:9080")], ctx))
    assert out[b"traceparent"] == b"00-%032x-%016x-01" % (TID, s.context.span_id)
    assert out[b"tracestate"] == b"congo=t61rcWkgMzE"
    assert s.status.status_code is StatusCode.UNSET


def test_attributes(exporter):
    tracer = tracer_for(exporter, attributes={"istio.canonical_service": "reviews"})
    span = tracer.start("server", head(version="2"), "[fd00::5]:43210", None, "r1")
    span.end(201, "-", "10.0.0.9:9080", 120, 2048, None)
    a = dict(exporter.get_finished_spans()[0].attributes)
    assert a == {
        "istio.canonical_service": "reviews",
        "http.request.method": "GET",
        "url.path": "/api/v1",
        "url.query": "limit=2",
        "url.scheme": "http",
        "server.address": "reviews",
        "server.port": 9080,
        "network.peer.address": "fd00::5",
        "network.peer.port": 43210,
        "network.protocol.version": "2",
        "user_agent.original": "curl/8.5",
        "http.request.header.x-request-id": ("req-1",),
        "meshproxy.route": "r1",
        "http.request.size": 120,
        "http.response.size": 2048,
        "http.response.status_code": 201,
        "meshproxy.response_flags": "-",
        "upstream.address": "10.0.0.9:9080",
    }


def test_optional_attributes_absent(exporter):
    tracer = tracer_for(exporter)
    span = tracer.start("client", head(b"/x", None, b"FOO", headers=[]), "", None, "")
    span.end(0, "-", None, 0, 0, None)
    s = exporter.get_finished_spans()[0]
    a = s.attributes
    assert s.kind is SpanKind.CLIENT and s.name == "/x"
    assert a["http.request.method"] == "_OTHER" and a["http.request.method_original"] == "FOO"
    for key in ("url.query", "server.address", "network.peer.address", "user_agent.original", "meshproxy.route",
                "http.response.status_code", "upstream.address"):
        assert key not in a
    assert s.status.status_code is StatusCode.UNSET


@pytest.mark.parametrize("kind, status, flags, grpc, error", [
    ("server", 200, "-", None, None),
    ("server", 404, "-", None, None),
    ("client", 404, "-", None, "404"),  # OTel: 4xx is an error on client spans only
    ("server", 503, "-", None, "503"),
    ("server", 503, "UF,URX", None, "503 UF,URX"),
    ("server", 0, "DC", None, "DC"),
    ("server", 200, "", None, None),
    ("server", 200, "-", "0", None),
    ("server", 200, "-", "5", None),  # NOT_FOUND is not a server error
    ("server", 200, "-", "14", "grpc:14"),
    ("client", 200, "-", "5", "grpc:5"),
])
def test_errors(exporter, kind, status, flags, grpc, error):
    span = tracer_for(exporter).start(kind, head(), "10.0.0.5", None, "r")
    span.end(status, flags, None, 1, 1, grpc)
    s = exporter.get_finished_spans()[0]
    if error is None:
        assert s.status.status_code is StatusCode.UNSET
        assert "error.type" not in s.attributes
    else:
        assert s.status.status_code is StatusCode.ERROR
        assert s.status.description == error
    assert s.attributes["meshproxy.response_flags"] == (flags or "-")


def test_end_twice_exports_once(exporter):
    span = tracer_for(exporter).start("server", head(), "10.0.0.5", None, "r")
    span.end(200, "-", None, 0, 0, None)
    span.end(500, "UF", None, 0, 0, None)
    (s,) = exporter.get_finished_spans()
    assert s.attributes["http.response.status_code"] == 200


def test_sampling_zero_records_nothing_but_still_propagates(exporter):
    tracer = tracer_for(exporter, sampling=0.0)
    spans = [tracer.start("server", head(), "10.0.0.5", None, "r") for _ in range(20)]
    for span in spans:
        assert not span.recording
        ctx = span.context()
        assert ctx.valid and ctx.sampled is False  # the next hop joins, unsampled
        span.end(200, "-", None, 0, 0, None)
    assert exporter.get_finished_spans() == ()


def test_sampled_parent_is_followed_at_sampling_zero(exporter):
    tracer = tracer_for(exporter, sampling=0.0)
    span = tracer.start("server", head(), "10.0.0.5", TraceContext(TID, SID, True), "r")
    assert span.context().sampled is True
    span.end(200, "-", None, 0, 0, None)
    (s,) = exporter.get_finished_spans()
    assert s.context.trace_id == TID and s.parent.span_id == SID


def test_unsampled_parent_is_followed_at_sampling_one(exporter):
    tracer = tracer_for(exporter, sampling=1.0)
    span = tracer.start("server", head(), "10.0.0.5", TraceContext(TID, SID, False), "r")
    ctx = span.context()
    span.end(200, "-", None, 0, 0, None)
    assert exporter.get_finished_spans() == ()
    assert ctx.trace_id == TID and ctx.span_id != SID and ctx.sampled is False


@pytest.mark.parametrize("sampling, expected", [(0.0, False), (1.0, True)])
def test_b3_deferred_decision_uses_the_ratio(exporter, sampling, expected):
    parent = propagation.extract([(b"x-b3-traceid", b"%032x" % TID), (b"x-b3-spanid", b"%016x" % SID)])
    assert parent.sampled is None
    span = tracer_for(exporter, sampling=sampling).start("server", head(), "10.0.0.5", parent, "r")
    ctx = span.context()
    span.end(200, "-", None, 0, 0, None)
    assert ctx.trace_id == TID and ctx.sampled is expected and ctx.b3
    assert len(exporter.get_finished_spans()) == int(expected)
    if expected:
        assert exporter.get_finished_spans()[0].parent.span_id == SID
    # the B3 app upstream gets B3 headers back, with our span id
    out = dict(propagation.inject([], ctx))
    assert out[b"x-b3-spanid"] == b"%016x" % ctx.span_id
    assert out[b"x-b3-sampled"] == (b"1" if expected else b"0")


@pytest.mark.parametrize("header, sampling, recorded", [(b"0", 1.0, False), (b"1", 0.0, True), (b"d", 0.0, True)])
def test_b3_sampling_only_forces_the_decision_for_a_new_trace(exporter, header, sampling, recorded):
    parent = propagation.extract([(b"b3", header)])
    span = tracer_for(exporter, sampling=sampling).start("server", head(), "10.0.0.5", parent, "r")
    ctx = span.context()
    span.end(200, "-", None, 0, 0, None)
    assert ctx.valid and ctx.sampled is recorded and ctx.b3
    spans = exporter.get_finished_spans()
    assert len(spans) == int(recorded)
    if recorded:
        assert spans[0].parent is None


def test_client_span_is_child_of_server_span(exporter):
    tracer = tracer_for(exporter)
    server = tracer.start("server", head(), "10.0.0.5", None, "r")
    client = tracer.start("client", head(), "10.0.0.9:9080", server.context(), "r")
    client.end(200, "-", "10.0.0.9:9080", 0, 0, None)
    server.end(200, "-", "10.0.0.9:9080", 0, 0, None)
    c, s = exporter.get_finished_spans()
    assert s.parent is None
    assert c.context.trace_id == s.context.trace_id and c.parent.span_id == s.context.span_id


@pytest.mark.parametrize("target, authority, method, name", [
    (b"/api?x=1", b"reviews:9080", b"GET", "reviews:9080/api"),
    (b"/", b"a", b"GET", "a/"),
    (b"http://ratings:9080/r/1?q", b"ratings:9080", b"GET", "ratings:9080/r/1"),
    (b"http://ratings:9080", b"ratings:9080", b"GET", "ratings:9080/"),
    (b"db:5432", b"db:5432", b"CONNECT", "db:5432"),
    (b"*", b"a", b"OPTIONS", "a*"),
])
def test_span_name(target, authority, method, name):
    assert span_name(head(target, authority, method)) == name


def test_service_name_from_config_wins(exporter):
    tracer = make_tracer(Tracing(service_name="custom"), "reviews.default", exporter=exporter)
    tracer.start("server", head(), "", None, "").end(200, "-", None, 0, 0, None)
    assert exporter.get_finished_spans()[0].resource.attributes["service.name"] == "custom"


def test_console_and_otlp_build_and_shut_down():
    for exporter in ("console", "otlp"):
        # sampling 0: nothing is exported, so shutting down needs no collector
        tracer = make_tracer(Tracing(exporter=exporter, sampling=0.0, endpoint="http://127.0.0.1:9/v1/traces"), "s")
        tracer.start("server", head(), "", None, "").end(200, "-", None, 0, 0, None)
        tracer_provider_shutdown(tracer)
    tracer_provider_shutdown(None)


def test_none_exporter_imports_no_opentelemetry():
    code = (
        "import sys\n"
        "from meshproxy.config.routing import Tracing\n"
        "from meshproxy.observe import tracing, propagation\n"
        "assert tracing.make_tracer(Tracing(), 'svc') is None\n"
        "propagation.inject([], propagation.extract([(b'b3', b'1')]))\n"
        "bad = [m for m in sys.modules if m.startswith('opentelemetry')]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
