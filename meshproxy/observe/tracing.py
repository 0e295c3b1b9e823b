"""Request spans over the OpenTelemetry SDK, one per proxied request and direction.

Where this sits: beside the HTTP path. ``app.py`` calls ``make_tracer(cfg.tracing,
service)`` once and ``tracer_provider_shutdown(tracer)`` on exit. For every
request ``http/server.py`` does::

    parent = propagation.extract(head.headers)
    span = tracer.start("server", head, peer, parent, route.name)   # inbound; "client" outbound
    upstream_headers = propagation.inject(head.headers, span.context())
    ...
    span.end(status, flags, upstream, request_bytes, response_bytes, grpc_status)

Rules:

1. ``exporter: none`` costs nothing: ``make_tracer`` returns None and this module
   never imports ``opentelemetry`` (the SDK is an optional dependency).
2. Sampling: a parent's decision is followed (``ParentBased``); new traces, and B3
   parents that deferred the decision, are sampled by ``TraceIdRatioBased(sampling)``;
   a B3 sampling-only parent (``b3: 0``/``1``) forces the decision for a new trace.
3. Unsampled spans still get ids (so the next hop joins the same trace with
   ``sampled=0``) but record nothing: attributes are only built for recording spans.
4. Export happens off the event loop (``BatchSpanProcessor``'s thread). No global
   OpenTelemetry state is touched, so several tracers can live in one process.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from .propagation import TraceContext

if TYPE_CHECKING:
    from ..codec.events import RequestHead
    from ..config.routing import Tracing

# Methods OpenTelemetry's HTTP conventions know; others are reported as "_OTHER".
_KNOWN_METHODS = frozenset({"CONNECT", "DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT", "TRACE", "QUERY"})
# gRPC status codes that are errors on a server span (OTel RPC conventions); on a client span any non-zero is.
_GRPC_SERVER_ERRORS = frozenset({2, 4, 12, 13, 14, 15})

_otel: Any = None
"""The lazily imported OpenTelemetry pieces (``_load_otel()``)."""


def make_tracer(cfg: Tracing, service_name: str, *, exporter: Any = None,
                attributes: dict[str, str] | None = None) -> RequestTracer | None:
    """A tracer for ``cfg``, or None when ``cfg.exporter`` is ``none`` and no
    ``exporter`` is given. ``cfg.service_name`` wins over ``service_name`` (the
    caller's ``<workload>.<namespace>`` default). ``exporter`` (a ``SpanExporter``,
    e.g. ``InMemorySpanExporter`` in tests) replaces the configured one and is fed
    synchronously by a ``SimpleSpanProcessor``. ``attributes`` are set on every
    recorded span (e.g. ``{"istio.canonical_service": "reviews"}``)."""
    if exporter is None and cfg.exporter == "none":
        return None
    return RequestTracer(cfg, cfg.service_name or service_name, exporter, attributes)


def tracer_provider_shutdown(tracer: RequestTracer | None) -> None:
    """Flush and stop ``tracer`` (None is fine); for ``app.py``'s exit path."""
    if tracer is not None:
        tracer.shutdown()


class RequestTracer:
    """Owns one ``TracerProvider``; starts ``RequestSpan``s."""

    def __init__(self, cfg: Tracing, service_name: str, exporter: Any = None,
                 attributes: dict[str, str] | None = None):
        o = _load_otel()
        self._o = o
        if exporter is not None:
            processor = o.SimpleSpanProcessor(exporter)
        else:
            if cfg.exporter == "otlp":
                from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
                exporter = OTLPSpanExporter(endpoint=cfg.endpoint)
            else:
                exporter = o.ConsoleSpanExporter()
            processor = o.BatchSpanProcessor(exporter)
        self._provider = o.TracerProvider(
            sampler=o.MeshSampler(cfg.sampling),
            resource=o.Resource.create({"service.name": service_name}),
        )
        self._provider.add_span_processor(processor)
        self._tracer = self._provider.get_tracer("meshproxy")
        self._attributes = dict(attributes or {})

    def start(self, kind: Literal["server", "client"], head: RequestHead, peer: str,
              parent: TraceContext | None, route: str, *, start_time_ns: int | None = None) -> RequestSpan:
        """Start the span for one request. ``kind``: ``server`` on the inbound
        side (a peer calling our app), ``client`` on the outbound side (our app
        calling another service), as Istio's sidecars do. ``peer``: the remote address (``ip``,
        ``ip:port`` or ``[v6]:port``). ``parent``: ``propagation.extract(...)`` or
        None. ``route``: the route name ('' if none). ``start_time_ns``: epoch ns
        when the request began (default now)."""
        o = self._o
        ctx = o.Context()
        if parent is not None:
            if parent.valid:
                state = o.TraceState.from_header([parent.tracestate.decode("ascii")]) if parent.tracestate else None
                remote = o.SpanContext(parent.trace_id, parent.span_id, True,
                                       o.TraceFlags(1 if parent.sampled else 0), state)
                ctx = o.set_span_in_context(o.NonRecordingSpan(remote), ctx)
                if parent.sampled is None:
                    ctx = o.set_value(o.DECISION, o.DEFER, ctx)
            elif parent.sampled is not None:
                ctx = o.set_value(o.DECISION, parent.sampled, ctx)
        span = self._tracer.start_span(span_name(head), ctx, o.SERVER if kind == "server" else o.CLIENT,
                                       start_time=start_time_ns)
        if span.is_recording():
            span.set_attributes(self._start_attributes(head, peer, route))
        return RequestSpan(span, kind == "client", parent, o)

    def _start_attributes(self, head: RequestHead, peer: str, route: str) -> dict[str, Any]:
        method = head.method.decode("ascii", "replace")
        a: dict[str, Any] = dict(self._attributes)
        if method in _KNOWN_METHODS:
            a["http.request.method"] = method
        else:
            a["http.request.method"] = "_OTHER"
            a["http.request.method_original"] = method
        path, query = _path_query(head)
        a["url.path"] = _s(path)
        if query is not None:
            a["url.query"] = _s(query)
        a["url.scheme"] = _s(head.scheme)
        if head.authority:
            host, port = _split_hostport(_s(head.authority))
            a["server.address"] = host
            if port is not None:
                a["server.port"] = port
        if peer:
            host, port = _split_hostport(peer)
            a["network.peer.address"] = host
            if port is not None:
                a["network.peer.port"] = port
        a["network.protocol.version"] = head.http_version
        for name, value in head.headers:
            if name == b"user-agent":
                a["user_agent.original"] = _s(value)
            elif name == b"x-request-id":
                a["http.request.header.x-request-id"] = (_s(value),)
        if route:
            a["meshproxy.route"] = route
        return a

    def shutdown(self) -> None:
        """Export what is buffered, then stop the provider (idempotent)."""
        self._provider.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self._provider.force_flush(timeout_millis)


class RequestSpan:
    """One request's span. ``context()`` is what to inject upstream; ``end()`` once."""

    __slots__ = ("_span", "_client", "_parent", "_o", "_ctx", "_ended")

    def __init__(self, span: Any, client: bool, parent: TraceContext | None, o: Any):
        self._span = span
        self._client = client
        self._parent = parent
        self._o = o
        self._ctx: TraceContext | None = None
        self._ended = False

    @property
    def recording(self) -> bool:
        """Whether this span is sampled and will be exported."""
        return self._span.is_recording()

    def context(self) -> TraceContext:
        """This span's own ids and decision, carrying the parent's ``tracestate``
        and B3-ness: inject it upstream so the next hop is our child."""
        if self._ctx is None:
            sc = self._span.get_span_context()
            p = self._parent
            self._ctx = TraceContext(sc.trace_id, sc.span_id, sc.trace_flags.sampled,
                                     p.tracestate if p is not None else None, p is not None and p.b3)
        return self._ctx

    def set_peer(self, principal: str | None) -> None:
        """Record the verified SPIFFE ID of the mTLS peer (``meshproxy.peer.principal``)."""
        if principal and self._span.is_recording():
            self._span.set_attribute("meshproxy.peer.principal", principal)

    def end(self, status: int, flags: str = "-", upstream: str | None = None, request_bytes: int = 0,
            response_bytes: int = 0, grpc_status: str | None = None, *, end_time_ns: int | None = None) -> None:
        """Record the outcome and end the span (later calls do nothing). ``status``:
        the response code (0 if none was sent); ``flags``: Envoy response flags
        (``-`` for none); ``upstream``: the endpoint's ``host:port``; byte counts
        include headers, as in Istio's metrics. Errors: 5xx, any flag, 4xx on a
        client span, and gRPC statuses the OTel RPC conventions call errors."""
        if self._ended:
            return
        self._ended = True
        span = self._span
        if span.is_recording():
            a: dict[str, Any] = {"http.request.size": request_bytes, "http.response.size": response_bytes}
            if status:
                a["http.response.status_code"] = status
            no_flags = not flags or flags == "-"
            a["meshproxy.response_flags"] = "-" if no_flags else flags
            if upstream:
                a["upstream.address"] = upstream
            error_type = None
            if status >= 500 or (self._client and status >= 400):
                error_type = str(status)
            elif not no_flags:
                error_type = flags
            if grpc_status is not None and grpc_status.isdigit():
                code = int(grpc_status)
                a["rpc.grpc.status_code"] = code
                if error_type is None and code and (self._client or code in _GRPC_SERVER_ERRORS):
                    error_type = f"grpc:{code}"
            if error_type is not None:
                a["error.type"] = error_type
                o = self._o
                description = error_type if no_flags or error_type == flags else f"{error_type} {flags}"
                span.set_status(o.Status(o.ERROR, description))
            span.set_attributes(a)
        span.end(end_time=end_time_ns)


def span_name(head: RequestHead) -> str:
    """Envoy's default operation name: authority + path without the query
    (``reviews:9080/api``); the authority alone for CONNECT."""
    path, _ = _path_query(head)
    return _s((head.authority or b"") + path)


def _path_query(head: RequestHead) -> tuple[bytes, bytes | None]:
    t = head.target
    if head.method == b"CONNECT":
        return b"", None
    if t[:1] != b"/":
        scheme_end = t.find(b"://")
        if scheme_end < 0:
            return t, None  # "*" (OPTIONS)
        slash = t.find(b"/", scheme_end + 3)
        t = t[slash:] if slash >= 0 else b"/"
    path, sep, query = t.partition(b"?")
    return path, (query if sep else None)


def _split_hostport(addr: str) -> tuple[str, int | None]:
    if addr.startswith("["):
        end = addr.find("]")
        host, rest = addr[1:end], addr[end + 1:]
        return host, int(rest[1:]) if rest[1:].isdigit() else None
    host, sep, port = addr.rpartition(":")
    if not sep or ":" in host or not port.isdigit():
        return addr, None  # no port, or a bare IPv6 address
    return host, int(port)


def _s(b: bytes) -> str:
    return b.decode("utf-8", "backslashreplace")


def _load_otel() -> Any:
    """Import the SDK once and gather what the request path needs in one namespace."""
    global _otel
    if _otel is not None:
        return _otel
    from types import SimpleNamespace

    from opentelemetry import context as otel_context
    from opentelemetry import trace
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SimpleSpanProcessor
    from opentelemetry.sdk.trace.sampling import (Decision, ParentBased, Sampler, SamplingResult,
                                                  TraceIdRatioBased)

    decision_key = otel_context.create_key("meshproxy-sampling-decision")
    defer = object()

    class MeshSampler(Sampler):
        """``ParentBased(TraceIdRatioBased(ratio))``, plus the two cases B3 can
        express and a W3C parent cannot: a parent that deferred the decision
        (ratio on the parent's trace id) and a decision without ids (forced)."""

        def __init__(self, ratio: float):
            self._ratio = TraceIdRatioBased(ratio)
            self._parent_based = ParentBased(self._ratio)

        def should_sample(self, parent_context, trace_id, name, kind=None, attributes=None, links=None,
                          trace_state=None):
            d = parent_context.get(decision_key) if parent_context is not None else None
            if d is None:
                return self._parent_based.should_sample(parent_context, trace_id, name, kind, attributes, links)
            if d is defer:
                return self._ratio.should_sample(parent_context, trace_id, name, kind, attributes, links)
            return SamplingResult(Decision.RECORD_AND_SAMPLE if d else Decision.DROP)

        def get_description(self) -> str:
            return f"MeshSampler{{{self._parent_based.get_description()}}}"

    _otel = SimpleNamespace(
        Context=otel_context.Context, set_value=otel_context.set_value, DECISION=decision_key, DEFER=defer,
        SpanContext=trace.SpanContext, TraceFlags=trace.TraceFlags, TraceState=trace.TraceState,
        NonRecordingSpan=trace.NonRecordingSpan, set_span_in_context=trace.set_span_in_context,
        SERVER=trace.SpanKind.SERVER, CLIENT=trace.SpanKind.CLIENT,
        Status=trace.Status, ERROR=trace.StatusCode.ERROR,
        Resource=Resource, TracerProvider=TracerProvider, MeshSampler=MeshSampler,
        BatchSpanProcessor=BatchSpanProcessor, SimpleSpanProcessor=SimpleSpanProcessor,
        ConsoleSpanExporter=ConsoleSpanExporter,
    )
    return _otel
