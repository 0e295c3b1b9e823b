"""A gRPC echo service on grpcio's generic handlers (raw bytes messages, no protoc).

Methods of ``test.Echo``:

- ``Unary``: echoes the request; a request starting with ``fail:`` aborts with
  NOT_FOUND, details ``no such thing: <rest>`` and trailing metadata
  ``x-reason: missing`` / ``x-bin-bin: b"\\x00\\x01"``. It also returns the
  invocation metadata it saw (``x-seen-*`` trailing metadata) and the peer.
- ``ServerStream``: request ``N`` → N messages ``m0 .. m{N-1}``, then trailing metadata.
- ``ClientStream``: joins every request message with ``,``.
- ``Bidi``: echoes each message upper-cased.

Run as a script (``python grpc_echo.py PORT [HOST]``) it serves until killed and
prints ``listening`` once bound (for the network-namespace pods).
"""

from __future__ import annotations

import sys
from concurrent import futures

import grpc

SERVICE = "test.Echo"
CHANNEL_OPTIONS = [("grpc.enable_http_proxy", 0), ("grpc.enable_retries", 0)]


class EchoService:
    def __init__(self):
        self.peers: list[str] = []
        self.metadata: list[dict] = []

    def _seen(self, context) -> None:
        self.peers.append(context.peer())
        self.metadata.append({k: v for k, v in context.invocation_metadata()})

    def unary(self, request: bytes, context) -> bytes:
        self._seen(context)
        if request.startswith(b"fail:"):
            context.set_trailing_metadata((("x-reason", "missing"), ("x-bin-bin", b"\x00\x01")))
            context.abort(grpc.StatusCode.NOT_FOUND, "no such thing: " + request[5:].decode())
        context.set_trailing_metadata((("x-peer", context.peer()),))
        return b"echo:" + request

    def server_stream(self, request: bytes, context):
        self._seen(context)
        context.set_trailing_metadata((("x-count", request.decode()),))
        for i in range(int(request)):
            yield b"m%d" % i

    def client_stream(self, request_iterator, context) -> bytes:
        self._seen(context)
        return b",".join(request_iterator)

    def bidi(self, request_iterator, context):
        self._seen(context)
        for msg in request_iterator:
            yield msg.upper()

    def handler(self) -> grpc.GenericRpcHandler:
        return grpc.method_handlers_generic_handler(SERVICE, {
            "Unary": grpc.unary_unary_rpc_method_handler(self.unary),
            "ServerStream": grpc.unary_stream_rpc_method_handler(self.server_stream),
            "ClientStream": grpc.stream_unary_rpc_method_handler(self.client_stream),
            "Bidi": grpc.stream_stream_rpc_method_handler(self.bidi),
        })


def serve(host: str = "127.0.0.1", port: int = 0) -> tuple[grpc.Server, int, EchoService]:
    svc = EchoService()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    server.add_generic_rpc_handlers((svc.handler(),))
    bound = server.add_insecure_port(f"{host}:{port}")
    server.start()
    return server, bound, svc


class EchoClient:
    """Blocking stubs for ``test.Echo`` over an insecure channel to ``target``."""

    def __init__(self, target: str):
        self.channel = grpc.insecure_channel(target, options=CHANNEL_OPTIONS)
        m = f"/{SERVICE}/"
        self.unary = self.channel.unary_unary(m + "Unary")
        self.server_stream = self.channel.unary_stream(m + "ServerStream")
        self.client_stream = self.channel.stream_unary(m + "ClientStream")
        self.bidi = self.channel.stream_stream(m + "Bidi")

    def close(self) -> None:
        self.channel.close()


if __name__ == "__main__":
    port = int(sys.argv[1])
    host = sys.argv[2] if len(sys.argv) > 2 else "[::]"
    server, bound, _ = serve(host, port)
    print(f"listening {bound}", flush=True)
    server.wait_for_termination()
