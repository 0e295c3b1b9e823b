"""Istio's request metrics, recorded in plain Python and rendered on scrape.

Where this sits: beside the HTTP path. ``http/server.py`` calls
``RequestMetrics.record()`` once per finished request (or keeps the ``Series``
of a label set it sees again and calls ``observe``); ``Metrics.render()``
collects. Recording is a tuple hash, a dict lookup, three ``bisect``s and a few
integer additions — no locks and no Prometheus client objects per request —
because this runs for every request on the byte path (in C when the optional
extension is built, ``SeriesType``).

Families (Istio names): ``istio_requests_total`` (counter),
``istio_request_duration_milliseconds``, ``istio_request_bytes``,
``istio_response_bytes`` (histograms), labelled with Istio's standard labels
plus ``response_code``, ``grpc_response_status`` and ``response_flags``.
"""

from __future__ import annotations

from bisect import bisect_left
from typing import Any

from prometheus_client.metrics_core import CounterMetricFamily, HistogramMetricFamily

from ..codec import native
from .metrics import ISTIO_LABELS, istio_labels

DURATION_BUCKETS_MS = (0.5, 1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000,
                       300000, 600000, 1800000, 3600000)
"""Istio's default buckets for istio_request_duration_milliseconds."""
SIZE_BUCKETS = (1, 10, 100, 1000, 10000, 100000, 1000000, 10000000, 100000000)
"""Istio's default buckets for istio_request_bytes / istio_response_bytes."""

REQUEST_LABELS = ISTIO_LABELS + ("response_code", "grpc_response_status", "response_flags")
CODES = {c: str(c) for c in range(100, 600)}
"""``response_code`` label values, made once."""


class Series:
    """One label set's counter and histograms. ``RequestMetrics.series(labels)`` hands one
    out so a caller that sees the same labels again (a connection) can keep it."""

    __slots__ = ("count", "dur", "dur_sum", "req", "req_sum", "resp", "resp_sum")

    def __init__(self):
        self.count = 0
        self.dur = [0] * (len(DURATION_BUCKETS_MS) + 1)
        self.dur_sum = 0.0
        self.req = [0] * (len(SIZE_BUCKETS) + 1)
        self.req_sum = 0
        self.resp = [0] * (len(SIZE_BUCKETS) + 1)
        self.resp_sum = 0

    def observe(self, duration_ms: float, request_bytes: int, response_bytes: int) -> None:
        self.count += 1
        self.dur[bisect_left(DURATION_BUCKETS_MS, duration_ms)] += 1
        self.dur_sum += duration_ms
        self.req[bisect_left(SIZE_BUCKETS, request_bytes)] += 1
        self.req_sum += request_bytes
        self.resp[bisect_left(SIZE_BUCKETS, response_bytes)] += 1
        self.resp_sum += response_bytes


# The optional C extension (``codec/native``) has a ``Series`` twin: the class above stays the
# reference (tests/unit/observe/test_series_native.py compares them) and the bounds are handed
# over from here.
_fast = native.load()
if _fast is not None:
    _fast.series_setup(DURATION_BUCKETS_MS, SIZE_BUCKETS)
SeriesType = Series if _fast is None else _fast.Series
"""What ``RequestMetrics`` makes a series of: ``Series`` or its C twin."""


class RequestMetrics:
    """Accumulates request series; is itself a Prometheus collector. Labels are
    ``observe.metrics.istio_labels(...)`` plus (code, grpc status, flags)."""

    def __init__(self) -> None:
        self.series: dict[tuple[str, ...], Any] = {}  # Series or its C twin (SeriesType)
        """Every label set seen; a series, once made, stays for the process's life."""

    def series_for(self, labels: tuple[str, ...]) -> Any:
        """The series of ``labels`` (the full ``REQUEST_LABELS`` tuple), made on first use."""
        s = self.series.get(labels)
        if s is None:
            s = self.series[labels] = SeriesType()
        return s

    def record(self, labels: tuple[str, ...], duration_ms: float, request_bytes: int, response_bytes: int) -> None:
        """``labels`` is the full ``REQUEST_LABELS`` tuple."""
        self.series_for(labels).observe(duration_ms, request_bytes, response_bytes)

    def describe(self):
        return []

    def collect(self):
        total = CounterMetricFamily("istio_requests", "Requests, by Istio's standard labels", labels=REQUEST_LABELS)
        dur = HistogramMetricFamily("istio_request_duration_milliseconds", "Request duration in milliseconds",
                                    labels=REQUEST_LABELS)
        req = HistogramMetricFamily("istio_request_bytes", "Request sizes (headers and body) in bytes",
                                    labels=REQUEST_LABELS)
        resp = HistogramMetricFamily("istio_response_bytes", "Response sizes (headers and body) in bytes",
                                     labels=REQUEST_LABELS)
        for labels, s in list(self.series.items()):
            values = list(labels)
            total.add_metric(values, s.count)
            dur.add_metric(values, _cumulative(DURATION_BUCKETS_MS, s.dur), s.dur_sum)
            req.add_metric(values, _cumulative(SIZE_BUCKETS, s.req), s.req_sum)
            resp.add_metric(values, _cumulative(SIZE_BUCKETS, s.resp), s.resp_sum)
        yield total
        yield dur
        yield req
        yield resp


class ConnectionSeries:
    """One downstream connection's view of the request metrics (``http/server.py`` and
    ``http/express.py`` each keep one): Istio's labels built once per (service, protocol)
    and the series of each outcome kept, both bounded, so recording a request is a tuple
    lookup. ``peer``: the mTLS peer sidecar's ``net.mesh.PeerInfo``, or None."""

    __slots__ = ("requests", "me", "reporter", "peer", "_labels", "_series")

    def __init__(self, requests: RequestMetrics, me, reporter: str, peer=None):
        self.requests = requests
        self.me = me
        self.reporter = reporter
        self.peer = peer
        self._labels: dict[tuple, tuple[str, ...]] = {}
        self._series: dict[tuple, Any] = {}

    def labels(self, service: str | None, proto: str, upstream=None) -> tuple[str, ...]:
        """Istio's labels (``ISTIO_LABELS`` order) of requests to ``service`` over ``proto``;
        ``upstream``: the peer sidecar the request went to over mTLS (its ``PeerInfo``), which
        names the destination side of a ``source`` reporter's labels."""
        key = (service, proto, upstream)
        labels = self._labels.get(key)
        if labels is None:
            peer = self.peer
            if peer is not None:
                labels = istio_labels(self.me, self.reporter, service or "unknown", proto, "mutual_tls",
                                      peer.principal, peer.namespace, peer.metadata)
            elif upstream is not None:  # Istio: a source reporter's connection_security_policy is unknown
                labels = istio_labels(self.me, self.reporter, service or "unknown", proto, "unknown",
                                      upstream.principal, upstream.namespace, upstream.metadata)
            else:
                policy = "none" if self.reporter == "destination" else "unknown"
                labels = istio_labels(self.me, self.reporter, service or "unknown", proto, policy)
            if len(self._labels) >= 64:
                self._labels.clear()
            self._labels[key] = labels
        return labels

    def observe(self, service: str | None, proto: str, status: int, grpc_status: str, flag: str,
                duration_ms: float, request_bytes: int, response_bytes: int, upstream=None) -> None:
        key = (service, proto, status, grpc_status, flag, upstream)
        series = self._series.get(key)
        if series is None:
            if len(self._series) >= 64:
                self._series.clear()
            series = self._series[key] = self.requests.series_for(
                self.labels(service, proto, upstream) + (CODES.get(status) or str(status), grpc_status, flag))
        series.observe(duration_ms, request_bytes, response_bytes)


def _cumulative(bounds, counts) -> list[tuple[str, float]]:
    out = []
    running = 0
    for bound, n in zip(bounds, counts):
        running += n
        out.append((_fmt(bound), running))
    running += counts[-1]
    out.append(("+Inf", running))
    return out


def _fmt(bound) -> str:
    return str(float(bound))
