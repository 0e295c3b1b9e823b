"""ALPN values sidecars speak to each other over mTLS (no TLS imports: the L4 path loads this).

``meshproxy-h2``: HTTP carried as HTTP/2 streams (HTTP/1.1 from the app included);
``meshproxy-http1``: HTTP/1.1 (the app's HTTP/1.1 requests on pooled connections, as
Istio's default ``h2UpgradePolicy`` keeps them; upgrades such as WebSocket and CONNECT);
``meshproxy-tcp``: opaque TCP bytes.
On each of them both sides send their peer metadata line first (``net/peer_hello.py``).
"""

ALPN_H2 = "meshproxy-h2"
ALPN_HTTP1 = "meshproxy-http1"
ALPN_TCP = "meshproxy-tcp"
MESH_ALPNS = (ALPN_H2, ALPN_HTTP1, ALPN_TCP)

# tls/context.py defines ALPN_H2 and ALPN_TCP too (it needs them without importing net/);
# tests/unit/net/test_mesh_tls.py pins that the two agree.
