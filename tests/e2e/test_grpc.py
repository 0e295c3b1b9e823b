"""gRPC through meshproxy with real grpcio peers: unary, server/client/bidi
streaming, non-OK status with details and trailing metadata, through one proxy
(declared ``grpc`` port or detection) and through a chain of two proxies, and the
Istio request metrics gRPC adds (``request_protocol="grpc"``,
``grpc_response_status``). The blocking grpcio client runs in a worker thread so
the in-process proxy's loop keeps serving."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from e2e_support import metric_value, metrics_text
from grpc_echo import EchoClient, serve
from l7_peers import listener

TIMEOUT = 10


@pytest.fixture
def grpc_server():
    server, port, svc = serve()
    yield port, svc
    server.stop(0)


def call_everything(target: str) -> dict:
    """Every call shape against ``target``; returns what came back."""
    c = EchoClient(target)
    try:
        out: dict = {}
        resp, call = c.unary.with_call(b"hello", timeout=TIMEOUT, metadata=(("x-client", "c1"),))
        out["unary"] = resp
        out["unary_trailing"] = dict(call.trailing_metadata())
        out["unary_code"] = call.code()
        out["big"] = c.unary(b"b" * (1 << 20), timeout=TIMEOUT)
        stream = c.server_stream(b"40", timeout=TIMEOUT)
        out["server_stream"] = list(stream)
        out["server_stream_trailing"] = dict(stream.trailing_metadata())
        out["client_stream"] = c.client_stream(iter([b"a", b"b", b"c"]), timeout=TIMEOUT)
        out["bidi"] = list(c.bidi(iter([b"x", b"y"]), timeout=TIMEOUT))
        try:
            c.unary(b"fail:widget", timeout=TIMEOUT)
            out["error"] = None
        except grpc.RpcError as e:
            out["error"] = (e.code(), e.details(), dict(e.trailing_metadata()))
        return out
    finally:
        c.close()


def check_results(out: dict) -> None:
    assert out["unary"] == b"echo:hello" and out["unary_code"] == grpc.StatusCode.OK
    assert "x-peer" in out["unary_trailing"]
    assert out["big"] == b"echo:" + b"b" * (1 << 20)
    assert out["server_stream"] == [b"m%d" % i for i in range(40)]
    assert out["server_stream_trailing"]["x-count"] == "40"
    assert out["client_stream"] == b"a,b,c"
    assert out["bidi"] == [b"X", b"Y"]
    assert out["error"] is not None, "the failing call succeeded"
    code, details, trailing = out["error"]
    assert code == grpc.StatusCode.NOT_FOUND
    assert details == "no such thing: widget"
    assert trailing.get("x-reason") == "missing"
    assert trailing.get("x-bin-bin") == b"\x00\x01"


@pytest.mark.parametrize("how", ["declared", "detected"])
async def test_grpc_through_one_proxy(proxy, grpc_server, how):
    port, svc = grpc_server
    extra = {"ports": [{"port": port, "protocol": "grpc"}]} if how == "declared" else {}
    r = await proxy(listener(port, name="grpc", **extra))
    out = await asyncio.to_thread(call_everything, f"127.0.0.1:{r.port('grpc')}")
    check_results(out)
    assert svc.metadata[0].get("x-client") == "c1"
    assert "x-request-id" in svc.metadata[0]
    text = await metrics_text(r)
    outcome = "declared" if how == "declared" else "http2"
    assert metric_value(text, "meshproxy_protocol_detection_total", outcome=outcome) >= 1
    service = f"127.0.0.1:{port}"
    ok = metric_value(text, "istio_requests_total", request_protocol="grpc", grpc_response_status="0",
                      response_code="200", destination_service=service)
    assert ok == 5, text
    assert metric_value(text, "istio_requests_total", request_protocol="grpc", grpc_response_status="5",
                        response_code="200", destination_service=service) == 1
    assert metric_value(text, "istio_requests_total", request_protocol="http") == 0


async def test_grpc_through_two_chained_proxies(proxy, grpc_server):
    port, svc = grpc_server
    b = await proxy(listener(port, name="b", ports=[{"port": port, "protocol": "grpc"}]))
    a = await proxy(listener(b.port("b"), name="a"))
    out = await asyncio.to_thread(call_everything, f"127.0.0.1:{a.port('a')}")
    check_results(out)
    for r in (a, b):
        text = await metrics_text(r)
        assert metric_value(text, "istio_requests_total", request_protocol="grpc", grpc_response_status="0") == 5
        assert metric_value(text, "istio_requests_total", request_protocol="grpc", grpc_response_status="5") == 1
    # one request id end to end: A sets it, B keeps it
    ids = {m.get("x-request-id") for m in svc.metadata}
    assert None not in ids and len(ids) == len(svc.metadata)


async def test_grpc_deadline_and_cancel_do_not_wedge_the_proxy(proxy, grpc_server):
    port, _ = grpc_server
    r = await proxy(listener(port, name="grpc", ports=[{"port": port, "protocol": "grpc"}]))
    target = f"127.0.0.1:{r.port('grpc')}"

    def cancel_then_call():
        c = EchoClient(target)
        try:
            it = c.server_stream(b"100000", timeout=TIMEOUT)
            first = next(it)
            it.cancel()
            return first, c.unary(b"after", timeout=TIMEOUT)
        finally:
            c.close()

    first, after = await asyncio.to_thread(cancel_then_call)
    assert first == b"m0" and after == b"echo:after"


async def test_long_server_stream_through_passthrough_is_not_cut_at_15s(proxy):
    """A server-streaming call that lasts longer than 15 s through a listener with
    no route (passthrough, as all transparent sidecar traffic is by default) must
    not be cut: Istio disables the route timeout unless one is configured."""
    import time
    from concurrent import futures

    def slow(request, context):
        for i in range(17):
            yield b"tick%d" % i
            time.sleep(1.0)

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
        "test.Slow", {"Ticks": grpc.unary_stream_rpc_method_handler(slow)}),))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        r = await proxy(listener(port, name="grpc", ports=[{"port": port, "protocol": "grpc"}]))

        def call():
            from grpc_echo import CHANNEL_OPTIONS
            ch = grpc.insecure_channel(f"127.0.0.1:{r.port('grpc')}", options=CHANNEL_OPTIONS)
            got = []
            try:
                for m in ch.unary_stream("/test.Slow/Ticks")(b"", timeout=30):
                    got.append(m)
                return got, None
            except grpc.RpcError as e:
                return got, f"{e.code()}: {e.details()}"
            finally:
                ch.close()

        got, error = await asyncio.to_thread(call)
        assert error is None, f"stream cut after {len(got)} messages: {error}"
        assert got == [b"tick%d" % i for i in range(17)]
    finally:
        server.stop(0)
