"""Telemetry end to end: one trace across two sidecars (W3C and B3), the JSON
access log, and a real Prometheus server scraping a sidecar.

Two in-process sidecars play a pod pair: A's outbound listener (CLIENT spans)
forwards to B's inbound listener (SERVER spans), which forwards to the app from
127.0.0.6. The original-destination lookup of each transparent listener is
replaced with a fixed answer (what iptables would have said). Spans are caught
by swapping ``app.http.tracer`` for a tracer built by ``make_tracer`` with an
``InMemorySpanExporter``."""

from __future__ import annotations

import asyncio
import json
import subprocess

import aiohttp
import pytest
from e2e_support import refused_port
from l7_peers import EchoH1, free_port, need_tool

from meshproxy.config.routing import Tracing
from meshproxy.net.addrs import OrigDst
from meshproxy.observe.tracing import make_tracer

T = 0x4BF92F3577B34DA6A3CE929D0E0E4736
P = 0x00F067AA0BA902B7


def fixed_origdst(r, listener_name: str, host: str, port: int) -> None:
    for lst in r.app.listeners:
        if lst.spec.name == listener_name:
            lst.origdst = lambda sock, family: OrigDst(host, port)
            return
    raise KeyError(listener_name)


def in_memory_tracer(r, service: str):
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    r.app.http.tracer = make_tracer(Tracing(), service, exporter=exporter)
    return exporter


@pytest.fixture
async def pod_pair(proxy):
    """(client URL base, A, B, app, span exporters) for app → A outbound → B inbound → app."""
    app = await EchoH1("app").start()
    b = await proxy({"inbound": {"enabled": True}, "node": {"pod_name": "server-6d5f7c9b8-aaaaa"}})
    a = await proxy({"outbound": {"enabled": True}, "node": {"pod_name": "client-6d5f7c9b8-bbbbb"}})
    fixed_origdst(b, "virtualInbound", "127.0.0.1", app.port)
    fixed_origdst(a, "virtualOutbound", "127.0.0.1", b.port("virtualInbound"))
    exp_a, exp_b = in_memory_tracer(a, "client.shop"), in_memory_tracer(b, "server.shop")
    yield f"http://127.0.0.1:{a.port('virtualOutbound')}", a, b, app, exp_a, exp_b
    await app.stop()


async def wait_spans(*exporters, n: int = 1, timeout: float = 5):
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while any(len(e.get_finished_spans()) < n for e in exporters):
        assert loop.time() < deadline, f"spans: {[len(e.get_finished_spans()) for e in exporters]}"
        await asyncio.sleep(0.02)
    return [e.get_finished_spans() for e in exporters]


async def test_w3c_trace_spans_two_sidecars(pod_pair):
    from opentelemetry.trace import SpanKind

    url, a, b, app, exp_a, exp_b = pod_pair
    async with aiohttp.ClientSession() as s:
        async with s.get(f"{url}/reviews/1?x=y", headers={"traceparent": f"00-{T:032x}-{P:016x}-01",
                                                          "tracestate": "vendor=abc"}) as resp:
            assert resp.status == 200
    (span_a,), (span_b,) = await wait_spans(exp_a, exp_b)
    assert span_a.kind is SpanKind.CLIENT and span_b.kind is SpanKind.SERVER
    assert span_a.context.trace_id == T and span_b.context.trace_id == T
    assert span_a.parent is not None and span_a.parent.span_id == P
    assert span_b.parent is not None and span_b.parent.span_id == span_a.context.span_id, \
        "B's span must be the child of A's"
    seen = app.requests[0]
    assert seen["peer"] == "127.0.0.6"
    assert seen["headers"]["traceparent"] == f"00-{T:032x}-{span_b.context.span_id:016x}-01"
    assert seen["headers"].get("tracestate") == "vendor=abc"
    assert span_a.attributes["http.response.status_code"] == 200
    assert span_b.attributes["url.path"] == "/reviews/1"


@pytest.mark.parametrize("style", ["multi", "single"])
async def test_b3_headers_are_honoured(pod_pair, style):
    url, a, b, app, exp_a, exp_b = pod_pair
    trace, span = T >> 64, P  # a 64-bit B3 trace id
    if style == "multi":
        hdrs = {"X-B3-TraceId": f"{trace:016x}", "X-B3-SpanId": f"{span:016x}", "X-B3-Sampled": "1"}
    else:
        hdrs = {"b3": f"{trace:016x}-{span:016x}-1"}
    async with aiohttp.ClientSession() as s:
        async with s.get(f"{url}/b3", headers=hdrs) as resp:
            assert resp.status == 200
    (span_a,), (span_b,) = await wait_spans(exp_a, exp_b)
    assert span_a.context.trace_id == trace and span_b.context.trace_id == trace
    assert span_a.parent.span_id == span
    assert span_b.parent.span_id == span_a.context.span_id
    seen = app.requests[0]["headers"]
    assert "x-b3-traceid" in seen, f"B3 headers lost on the way to the app: {seen}"
    assert int(seen["x-b3-traceid"], 16) == trace
    assert seen["x-b3-spanid"] == f"{span_b.context.span_id:016x}"
    assert seen.get("x-b3-sampled") == "1"
    assert seen["traceparent"] == f"00-{trace:032x}-{span_b.context.span_id:016x}-01"
    assert "b3" not in seen or seen["b3"].startswith(f"{trace:016x}-{span_b.context.span_id:016x}")


async def test_new_trace_when_client_sends_none(pod_pair):
    url, a, b, app, exp_a, exp_b = pod_pair
    async with aiohttp.ClientSession() as s:
        async with s.get(f"{url}/fresh") as resp:
            assert resp.status == 200
    (span_a,), (span_b,) = await wait_spans(exp_a, exp_b)
    assert span_a.parent is None
    assert span_b.context.trace_id == span_a.context.trace_id
    assert span_b.parent.span_id == span_a.context.span_id


# === access log ================================================================

ACCESS_FIELDS = ("method", "path", "response_code", "response_flags", "bytes_received", "bytes_sent",
                 "duration", "upstream_host", "request_id", "route_name")


async def test_access_log_one_json_line_per_request(proxy, tmp_path):
    app = await EchoH1("app").start()
    dead = refused_port()
    log_path = tmp_path / "access.log"
    try:
        r = await proxy({
            "listeners": [{"name": "web", "port": 0, "upstream": f"127.0.0.1:{app.port}"}],
            "clusters": [{"name": "app", "endpoints": [f"127.0.0.1:{app.port}"], "protocol": "http1"},
                         {"name": "dead", "endpoints": [f"127.0.0.1:{dead}"]}],
            "routes": [{"name": "dead-route", "match": {"path": {"prefix": "/dead"}}, "cluster": "dead"},
                       {"name": "api", "match": {"path": {"prefix": "/api/"}}, "cluster": "app"}],
            "access_log": {"enabled": True, "path": str(log_path)},
        })
        base = f"http://127.0.0.1:{r.port('web')}"
        bodies = []
        async with aiohttp.ClientSession() as s:
            async with s.get(f"{base}/api/items?page=2", headers={"x-request-id": "rid-1"}) as resp:
                bodies.append((resp.status, await resp.read()))
            async with s.post(f"{base}/api/items", data=b"hello") as resp:
                bodies.append((resp.status, await resp.read()))
            async with s.get(f"{base}/dead/x") as resp:
                bodies.append((resp.status, await resp.read()))
            async with s.get(f"{base}/other") as resp:  # no route: passthrough to the listener's upstream
                bodies.append((resp.status, await resp.read()))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 5
        while (not log_path.exists() or len(log_path.read_text().splitlines()) < 4) and loop.time() < deadline:
            await asyncio.sleep(0.05)
        lines = log_path.read_text().splitlines()
        assert len(lines) == 4, lines
        entries = [json.loads(ln) for ln in lines]
        for e in entries:
            missing = [f for f in ACCESS_FIELDS if f not in e]
            assert not missing, f"missing {missing} in {e}"
            assert isinstance(e["duration"], int) and e["duration"] >= 0
        get, post, dead_e, other = entries
        assert (get["method"], get["path"], get["response_code"], get["response_flags"]) == \
            ("GET", "/api/items?page=2", 200, "-")
        assert get["request_id"] == "rid-1" and get["route_name"] == "api"
        assert get["upstream_host"] == f"127.0.0.1:{app.port}"
        assert get["bytes_received"] == 0 and get["bytes_sent"] == len(bodies[0][1])
        assert (post["method"], post["bytes_received"], post["bytes_sent"]) == ("POST", 5, len(bodies[1][1]))
        assert post["request_id"] == app.requests[1]["headers"]["x-request-id"]
        assert len(post["request_id"]) == 36
        assert bodies[2][0] == 503
        assert (dead_e["response_code"], dead_e["response_flags"]) == (503, "UF")
        assert dead_e["route_name"] == "dead-route" and dead_e["upstream_host"] == f"127.0.0.1:{dead}"
        assert other["route_name"] == "default" and other["response_code"] == 200  # router.py: passthrough
        assert other["upstream_host"] == f"127.0.0.1:{app.port}"
    finally:
        await app.stop()


# === a real Prometheus server =================================================

@pytest.fixture
def prometheus_server(tmp_path):
    """``start(target "host:port")`` → the base URL of a Prometheus scraping
    ``/stats/prometheus`` there every second; killed by PID at teardown."""
    binary = need_tool("prometheus")
    procs: list[subprocess.Popen] = []

    def start(target: str) -> str:
        port = free_port()
        cfg = tmp_path / "prometheus.yml"
        cfg.write_text(f"""
global: {{scrape_interval: 1s, scrape_timeout: 900ms, evaluation_interval: 1s}}
scrape_configs:
  - job_name: meshproxy
    metrics_path: /stats/prometheus
    static_configs: [{{targets: ["{target}"]}}]
""")
        log = open(tmp_path / "prometheus.log", "wb")
        procs.append(subprocess.Popen(
            [binary, f"--config.file={cfg}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL))
        return f"http://127.0.0.1:{port}"

    yield start
    for p in procs:
        if p.poll() is None:
            p.kill()
        p.wait(timeout=10)


async def test_real_prometheus_scrapes_request_metrics(proxy, prometheus_server, tmp_path):
    app = await EchoH1("app").start()
    try:
        r = await proxy({
            "listeners": [{"name": "web", "port": 0, "upstream": f"127.0.0.1:{app.port}"}],
            "clusters": [{"name": "reviews", "endpoints": [f"127.0.0.1:{app.port}"], "protocol": "http1"}],
            "routes": [{"name": "reviews", "cluster": "reviews"}],
        })
        async with aiohttp.ClientSession() as s:
            for i in range(3):
                async with s.get(f"http://127.0.0.1:{r.port('web')}/r/{i}") as resp:
                    assert resp.status == 200
        host, port = r.app.admin.bound["prometheus"]
        prom = prometheus_server(f"{host}:{port}")
        query = 'istio_requests_total{reporter="source",destination_service="reviews"}'
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 20
        result = []
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as s:
            while loop.time() < deadline:
                try:
                    async with s.get(f"{prom}/api/v1/query", params={"query": query}) as resp:
                        if resp.status == 200:
                            body = await resp.json()
                            assert body["status"] == "success", body
                            result = body["data"]["result"]
                            if result:
                                break
                except (aiohttp.ClientError, asyncio.TimeoutError):
                    pass  # not up yet
                await asyncio.sleep(0.25)
        plog = (tmp_path / "prometheus.log").read_text(errors="replace")
        assert result, f"no series for {query} within 20 s; prometheus log:\n{plog[-2000:]}"
        assert len(result) == 1, result
        labels, (_, value) = result[0]["metric"], result[0]["value"]
        assert float(value) == 3
        assert labels["reporter"] == "source" and labels["response_code"] == "200"
        assert labels["destination_service"] == "reviews" and labels["request_protocol"] == "http"
        assert labels["source_workload"] == "web" and labels["source_workload_namespace"] == "shop"
        assert labels["response_flags"] == "-" and labels["job"] == "meshproxy"
    finally:
        await app.stop()
