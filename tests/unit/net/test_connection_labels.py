"""``net/listener.Connections``: a connection whose labels wait for the peer sidecar's
metadata line (outbound mTLS) is counted once, under the labels it settles on."""

from __future__ import annotations

from types import SimpleNamespace

from meshproxy.config.load import from_dict
from meshproxy.net.listener import Connections
from meshproxy.observe.metrics import ISTIO_LABELS, Metrics


class FakeRelay:
    """What ``Connections`` reads of a relay."""

    def __init__(self, labels: tuple[str, ...], pending: bool):
        self.ctx = SimpleNamespace(direction=SimpleNamespace(value="outbound"), labels=labels, labels_pending=pending)
        self.received = self.sent = self.flushed_rx = self.flushed_tx = 0
        self.flag = ""


def labelled(value: str) -> tuple[str, ...]:
    return (value,) * len(ISTIO_LABELS)


def series(metrics: Metrics, name: str, labels: tuple[str, ...], flag: str = "-") -> float | None:
    return metrics.registry.get_sample_value(name, dict(zip(ISTIO_LABELS + ("response_flags",), labels + (flag,))))


def setup() -> tuple[Metrics, Connections]:
    metrics = Metrics(from_dict({}).node)
    return metrics, Connections(metrics)


def test_pending_connection_counts_once_under_the_settled_labels():
    metrics, conns = setup()
    r = FakeRelay(labelled("unknown"), pending=True)
    conns.add(r)
    r.received, r.sent = 10, 20
    conns.flush()  # a scrape before the peer's line: nothing counted yet
    assert series(metrics, "istio_tcp_connections_opened_total", labelled("unknown")) is None
    assert series(metrics, "istio_tcp_received_bytes_total", labelled("unknown")) is None
    conns.settle(r, labelled("reviews"))
    assert series(metrics, "istio_tcp_connections_opened_total", labelled("reviews")) == 1
    conns.settle(r, labelled("other"))  # a connection settles once
    r.received = 15
    conns.remove(r)
    assert series(metrics, "istio_tcp_connections_opened_total", labelled("reviews")) == 1
    assert series(metrics, "istio_tcp_connections_closed_total", labelled("reviews")) == 1
    assert series(metrics, "istio_tcp_received_bytes_total", labelled("reviews")) == 15
    assert series(metrics, "istio_tcp_sent_bytes_total", labelled("reviews")) == 20
    for other in ("unknown", "other"):
        assert series(metrics, "istio_tcp_connections_opened_total", labelled(other)) is None


def test_a_connection_that_never_heard_from_its_peer_is_counted_as_labelled():
    metrics, conns = setup()
    r = FakeRelay(labelled("unknown"), pending=True)
    conns.add(r)
    r.flag = "UF"
    conns.remove(r)
    assert series(metrics, "istio_tcp_connections_opened_total", labelled("unknown")) == 1
    assert series(metrics, "istio_tcp_connections_closed_total", labelled("unknown"), "UF") == 1


def test_a_peer_without_a_name_keeps_the_labels_it_had():
    metrics, conns = setup()
    r = FakeRelay(labelled("unknown"), pending=True)
    conns.add(r)
    conns.settle(r, None)
    assert series(metrics, "istio_tcp_connections_opened_total", labelled("unknown")) == 1


def test_a_plain_connection_is_counted_when_added():
    metrics, conns = setup()
    conns.add(FakeRelay(labelled("plain"), pending=False))
    assert series(metrics, "istio_tcp_connections_opened_total", labelled("plain")) == 1
