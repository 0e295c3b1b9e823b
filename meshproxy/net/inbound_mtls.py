"""Inbound mTLS from another sidecar: terminate, identify the peer, hand on by ALPN.

Where this sits: ``net/listener.py`` calls ``terminate_mtls`` when detection saw
a ClientHello offering a meshproxy ALPN on an inbound port whose mode is STRICT
or PERMISSIVE. A ``TlsLayer`` terminates TLS on the already-accepted transport
(replaying the peeked ClientHello). After the handshake and the client's peer
metadata line (``net/peer_hello.py``) the peer's SPIFFE ID is read from its
certificate (the handshake already verified the chain against the trust bundle),
and the negotiated ALPN picks the next protocol: HTTP/2 or
HTTP/1.1 server, or the L4 relay to the app. Authorization happens there (per
request for HTTP, per connection for TCP).
"""

from __future__ import annotations

import logging

from .mesh_alpn import ALPN_H2, ALPN_HTTP1, ALPN_TCP
from .tls_layer import TlsLayer

log = logging.getLogger("meshproxy.mtls")


def terminate_mtls(listener, ctx, verdict, transport, peeked: bytes) -> None:
    mesh = listener.mesh
    failures = listener.metrics.mtls_failures

    def ready(layer: TlsLayer) -> None:
        peer = mesh.peer_of(layer.sslobj, layer.peer_metadata)
        if peer is None:
            failures.labels("inbound", "no_spiffe_id").inc()
            log.info("mTLS from %s refused: the client certificate has no SPIFFE ID", ctx.peer)
            layer.abort()
            return
        ctx.peer_info = peer
        alpn = layer.sslobj.selected_alpn_protocol()
        if alpn == ALPN_TCP:
            listener._relay_to(ctx, verdict, layer, b"", False)
        elif alpn in (ALPN_H2, ALPN_HTTP1):
            listener._serve_http(ctx, verdict, layer, b"", False, alpn == ALPN_H2)
        else:
            failures.labels("inbound", "alpn").inc()
            layer.abort()

    def failed(message: str) -> None:
        # after the handshake, only the client's metadata line can be missing or wrong
        failures.labels("inbound", "peer_metadata" if layer.handshaken else "handshake").inc()
        log.info("mTLS from %s failed: %s", ctx.peer, message)

    layer = TlsLayer(transport, mesh.server_ctx, ready, failed, hello=mesh.hello)
    transport.set_protocol(layer)
    layer.feed(peeked)
