"""Two sidecars in process: A (client side) → mTLS → B (inbound) → app.

HTTP travels as HTTP/2 streams over one mTLS connection; opaque TCP over its own;
B sees A's SPIFFE ID (x-forwarded-client-cert, metrics, authorization); STRICT
refuses plaintext; wrong identities and foreign CAs are refused; certificates
rotate under a continuous request stream without a failed request."""

from __future__ import annotations

import asyncio
import json
from datetime import timedelta

import aiohttp
import pytest
from aiohttp import web
from e2e_support import metric_value, metrics_text
from l7_peers import start_ws_echo

from meshproxy.net.addrs import OrigDst
from meshproxy.tls.ca import CertificateAuthority

TD = "cluster.local"
A_NODE = {"pod_name": "frontend-7d4b9c8f6d-x2x9z", "pod_namespace": "shop", "app": "frontend", "version": "v3"}
"""Sidecar A's pod: B learns its workload, app and version from A's peer metadata line."""
A_LABELS = {"source_workload": "frontend", "source_app": "frontend", "source_version": "v3",
            "source_cluster": "Kubernetes", "source_canonical_service": "frontend", "source_canonical_revision": "v3"}
FRONTEND = f"spiffe://{TD}/ns/shop/sa/frontend"
REVIEWS = f"spiffe://{TD}/ns/shop/sa/reviews"


@pytest.fixture
def pki(tmp_path):
    """``pki(name, spiffe_id, ca=None)`` → the security.tls config for a fresh workload cert."""
    cas = {"main": CertificateAuthority.create(TD, timedelta(days=1))}

    def issue(name: str, spiffe_id: str, ca: str = "main", ttl=timedelta(hours=1)) -> dict:
        if ca not in cas:
            cas[ca] = CertificateAuthority.create(TD, timedelta(days=1))
        out = tmp_path / name
        cas[ca].issue(spiffe_id, ttl).save(str(out))
        return {"cert_file": str(out / "cert.pem"), "key_file": str(out / "key.pem"),
                "bundle_file": str(out / "bundle.pem"), "rotation_check_interval": "0.2s"}

    issue.cas = cas
    issue.dir = tmp_path
    return issue


class App:
    def __init__(self):
        self.requests: list[dict] = []
        self.port = 0

    async def start(self):
        async def handle(req):
            self.requests.append({"path": req.path, "headers": dict(req.headers),
                                  "peer": req.transport.get_extra_info("peername")[0]})
            return web.Response(text=f"hello {req.path}")

        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", handle)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]
        return self


@pytest.fixture
async def app():
    a = await App().start()
    yield a
    await a.runner.cleanup()


async def sidecar_b(proxy, origdst, app, tls, mode="STRICT", policies=None):
    origdst.default = OrigDst("127.0.0.1", app.port)  # B's inbound: clients meant the app's port
    sec = {"tls": tls, "peer_authentication": {"mode": mode}}
    if policies:
        sec["authorization_policies"] = policies
    return await proxy({"inbound": {"enabled": True}, "security": sec,
                        "node": {"pod_name": "reviews-v1-5b7c8d9f4-abcde", "pod_namespace": "shop", "app": "reviews",
                                 "version": "v1"}})


async def sidecar_a(proxy, b, tls, identities=(REVIEWS,), h2_upgrade_policy="DO_NOT_UPGRADE"):
    port = b.port("virtualInbound")
    return await proxy({
        "listeners": [{"name": "web", "port": 0, "protocol": "http", "upstream": f"127.0.0.1:{port}"}],
        "clusters": [{"name": "reviews", "endpoints": [f"127.0.0.1:{port}"],
                      "mtls": {"enabled": True, "identities": list(identities)}}],
        "routes": [{"name": "reviews", "cluster": "reviews"}],
        "security": {"tls": tls, "h2_upgrade_policy": h2_upgrade_policy},
        "node": A_NODE,
    })


async def admin_certs(r) -> dict:
    """The workload certificate's entry in the sidecar's /certs."""
    status, body, _ = await get(r.url("admin", "/certs"))
    assert status == 200
    [entry] = json.loads(body)["certificates"]
    return entry["cert_chain"][0]


async def get(url, **kw):
    async with aiohttp.ClientSession() as s:
        async with s.get(url, **kw) as resp:
            return resp.status, await resp.text(), resp.headers


@pytest.mark.parametrize("policy", ["UPGRADE", "DO_NOT_UPGRADE"])
async def test_http_over_mtls_between_sidecars(proxy, origdst, app, pki, policy):
    b = await sidecar_b(proxy, origdst, app, pki("b", REVIEWS))
    a = await sidecar_a(proxy, b, pki("a", FRONTEND), h2_upgrade_policy=policy)
    url = f"http://127.0.0.1:{a.port('web')}"
    results = await asyncio.gather(*(get(f"{url}/r{i}") for i in range(40)))
    assert all(status == 200 for status, _, _ in results), results[:3]
    assert {body for _, body, _ in results} == {f"hello /r{i}" for i in range(40)}
    seen = app.requests[0]
    assert seen["peer"] == "127.0.0.6"
    xfcc = seen["headers"]["x-forwarded-client-cert"]
    assert f"By={REVIEWS}" in xfcc and f"URI={FRONTEND}" in xfcc and "Hash=" in xfcc
    assert seen["headers"]["X-Forwarded-Proto"] == "https"
    pool = a.app.http.pools["reviews"]
    if policy == "UPGRADE":
        # Many concurrent HTTP/1.1 requests from the app, one multiplexed mTLS connection between sidecars.
        assert len(pool.all) == 1 and next(iter(pool.all)).protocol == "http2"
        assert next(iter(pool.all)).requests == 40
    else:
        # Istio's default: HTTP/1.1 stays HTTP/1.1 over pooled mTLS connections (the express lane's)...
        assert {c.protocol for c in pool.all} == {"express"} and sum(c.requests for c in pool.all) == 40
        assert all(c.key.identities == (REVIEWS,) for c in pool.all)
        # ... which keep serving: sequential requests reuse one
        before = set(pool.all)
        for i in range(5):
            assert (await get(f"{url}/s{i}"))[:2] == (200, f"hello /s{i}")
        assert sum(c.requests for c in pool.all) - sum(c.requests for c in before & set(pool.all)) <= 5
    text = await metrics_text(b)
    assert metric_value(text, "istio_requests_total", reporter="destination", source_principal=FRONTEND,
                        source_workload_namespace="shop", connection_security_policy="mutual_tls",
                        response_code="200", **A_LABELS) == (40 if policy == "UPGRADE" else 45)
    # A (reporter=source) names B from B's certificate and metadata line; Istio reports a source's
    # connection_security_policy as unknown
    text_a = await metrics_text(a)
    assert metric_value(text_a, "istio_requests_total", reporter="source", source_workload="frontend",
                        destination_principal=REVIEWS, destination_workload="reviews-v1",
                        destination_workload_namespace="shop", destination_app="reviews", destination_version="v1",
                        destination_cluster="Kubernetes", connection_security_policy="unknown",
                        destination_canonical_service="reviews", destination_canonical_revision="v1",
                        response_code="200") == (40 if policy == "UPGRADE" else 45)
    connections = 1 if policy == "UPGRADE" else len(before)
    assert metric_value(text, "meshproxy_protocol_detection_total", outcome="mtls") == connections


async def test_spoofed_xfcc_from_the_app_is_replaced(proxy, origdst, app, pki):
    b = await sidecar_b(proxy, origdst, app, pki("b", REVIEWS))
    a = await sidecar_a(proxy, b, pki("a", FRONTEND))
    status, _, _ = await get(f"http://127.0.0.1:{a.port('web')}/x",
                             headers={"x-forwarded-client-cert": "URI=spiffe://cluster.local/ns/kube-system/sa/admin"})
    assert status == 200
    assert "kube-system" not in app.requests[0]["headers"]["x-forwarded-client-cert"]


async def test_strict_refuses_plaintext_permissive_accepts(proxy, origdst, app, pki):
    b = await sidecar_b(proxy, origdst, app, pki("b", REVIEWS), mode="STRICT")
    with pytest.raises(aiohttp.ClientError):
        await get(f"http://127.0.0.1:{b.port('virtualInbound')}/plain")
    assert app.requests == []
    text = await metrics_text(b)
    assert metric_value(text, "meshproxy_mtls_failures_total", reason="not_mtls_in_strict") >= 1  # aiohttp retries once
    p = await sidecar_b(proxy, origdst, app, pki("p", REVIEWS), mode="PERMISSIVE")
    status, body, _ = await get(f"http://127.0.0.1:{p.port('virtualInbound')}/plain")
    assert (status, body) == (200, "hello /plain")
    assert "x-forwarded-client-cert" not in app.requests[0]["headers"]


@pytest.mark.parametrize("case", ["wrong-identity", "foreign-ca"])
async def test_bad_peers_are_refused(proxy, origdst, app, pki, case):
    b_tls = pki("b", REVIEWS, ca="other" if case == "foreign-ca" else "main")
    b = await sidecar_b(proxy, origdst, app, b_tls)
    identities = (f"spiffe://{TD}/ns/shop/sa/ratings",) if case == "wrong-identity" else (REVIEWS,)
    a = await sidecar_a(proxy, b, pki("a", FRONTEND), identities)
    status, body, headers = await get(f"http://127.0.0.1:{a.port('web')}/x")
    assert status == 503 and headers["x-meshproxy-response-flags"] == "UF"
    assert app.requests == []


async def test_authorization_policies_end_to_end(proxy, origdst, app, pki):
    policies = [
        {"name": "deny-admin", "action": "DENY", "rules": [{"to": [{"paths": ["/admin*"]}]}]},
        {"name": "deny-internal-host", "action": "DENY", "rules": [{"to": [{"hosts": ["internal.shop.svc:*"]}]}]},
        {"name": "frontend-reads", "action": "ALLOW",
         "rules": [{"from": [{"principals": ["cluster.local/ns/shop/sa/front*"]}], "to": [{"methods": ["GET"]}]}]},
    ]
    b = await sidecar_b(proxy, origdst, app, pki("b", REVIEWS), policies=policies)
    a = await sidecar_a(proxy, b, pki("a", FRONTEND))
    url = f"http://127.0.0.1:{a.port('web')}"
    assert (await get(f"{url}/ok"))[0] == 200
    status, body, _ = await get(f"{url}/admin/x")
    assert (status, body) == (403, "RBAC: access denied")
    # hosts: the Host as the client sent it, case-insensitive, reaches B's policy through A
    status, body, _ = await get(f"{url}/ok", headers={"Host": "Internal.SHOP.svc:8080"})
    assert (status, body) == (403, "RBAC: access denied")
    async with aiohttp.ClientSession() as s:
        async with s.post(f"{url}/ok") as resp:
            assert resp.status == 403  # default deny: no ALLOW matches POST
    assert [r["path"] for r in app.requests] == ["/ok"]
    text = await metrics_text(b)
    assert metric_value(text, "meshproxy_authz_decisions_total", policy="deny-admin", enforced="true") == 1
    assert metric_value(text, "meshproxy_authz_decisions_total", policy="deny-internal-host", enforced="true") == 1


async def test_tcp_over_mtls(proxy, origdst, pki):
    got = asyncio.get_running_loop().create_future()

    async def echo(reader, writer):
        data = await reader.readexactly(100_000)
        got.set_result(writer.get_extra_info("peername")[0])
        writer.write(data[::-1])
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(echo, "127.0.0.1", 0)
    app_port = server.sockets[0].getsockname()[1]
    origdst.default = OrigDst("127.0.0.1", app_port)
    b = await proxy({"inbound": {"enabled": True}, "ports": [{"port": app_port, "protocol": "tcp"}],
                     "security": {"tls": pki("b", REVIEWS), "peer_authentication": {"mode": "STRICT"}},
                     "node": {"pod_name": "reviews-v1-5b7c8d9f4-abcde", "pod_namespace": "shop", "app": "reviews",
                              "version": "v1"}})
    a = await proxy({"outbound": {"enabled": True}, "ports": [{"port": app_port, "protocol": "tcp"}],
                     "security": {"tls": pki("a", FRONTEND),
                                  "mesh_destinations": [{"cidrs": ["127.0.0.0/8"], "identities": [REVIEWS]}]},
                     "node": A_NODE})
    origdst.by_listener_port[a.port("virtualOutbound")] = OrigDst("127.0.0.1", b.port("virtualInbound"))
    reader, writer = await asyncio.open_connection("127.0.0.1", a.port("virtualOutbound"))
    payload = bytes(range(256)) * 390 + b"x" * 160
    writer.write(payload)
    await writer.drain()
    assert await asyncio.wait_for(reader.readexactly(100_000), 10) == payload[::-1]
    assert await got == "127.0.0.6"
    writer.close()
    server.close()
    await asyncio.sleep(0.1)
    text = await metrics_text(b)
    assert metric_value(text, "istio_tcp_connections_opened_total", reporter="destination",
                        source_principal=FRONTEND, connection_security_policy="mutual_tls", **A_LABELS) == 1
    # A (reporter=source) names B from B's certificate and metadata line, on every TCP series
    text_a = await metrics_text(a)
    b_side = dict(destination_principal=REVIEWS, destination_workload="reviews-v1", destination_app="reviews",
                  destination_workload_namespace="shop", destination_version="v1",
                  destination_canonical_service="reviews", destination_canonical_revision="v1")
    for name, value in [("istio_tcp_connections_opened_total", 1), ("istio_tcp_connections_closed_total", 1),
                        ("istio_tcp_received_bytes_total", 100_000), ("istio_tcp_sent_bytes_total", 100_000)]:
        assert metric_value(text_a, name, reporter="source", source_workload="frontend", **b_side) == value, name
    assert metric_value(text_a, "istio_tcp_connections_opened_total", reporter="source",
                        destination_workload="unknown") == 0


async def test_rotation_under_continuous_requests(proxy, origdst, app, pki):
    b_tls = pki("b", REVIEWS)
    b = await sidecar_b(proxy, origdst, app, b_tls)
    a = await sidecar_a(proxy, b, pki("a", FRONTEND))
    url = f"http://127.0.0.1:{a.port('web')}"
    before = b.app.mesh.material.fingerprint
    certs_before = await admin_certs(b)
    failures: list = []
    stop = asyncio.Event()

    async def hammer():
        async with aiohttp.ClientSession() as s:
            while not stop.is_set():
                try:
                    async with s.get(f"{url}/r") as resp:
                        if resp.status != 200:
                            failures.append(resp.status)
                        await resp.read()
                except aiohttp.ClientError as e:
                    failures.append(repr(e))

    tasks = [asyncio.ensure_future(hammer()) for _ in range(4)]
    await asyncio.sleep(0.3)
    pki.cas["main"].issue(REVIEWS, timedelta(hours=2)).save(str(pki.dir / "b"))  # new material, same files
    for _ in range(50):
        await asyncio.sleep(0.1)
        if b.app.mesh.material.fingerprint != before:
            break
    await asyncio.sleep(0.3)
    # New handshakes use the new certificate: a fresh sidecar A sees it.
    a2 = await sidecar_a(proxy, b, pki("a2", FRONTEND))
    assert (await get(f"http://127.0.0.1:{a2.port('web')}/new"))[0] == 200
    stop.set()
    await asyncio.gather(*tasks)
    assert b.app.mesh.material.fingerprint != before, "rotation was not picked up"
    assert failures == []
    assert len(app.requests) > 20
    text = await metrics_text(b)
    assert metric_value(text, "meshproxy_certificate_rotations_total") == 1
    assert metric_value(text, "meshproxy_certificate_expiry_timestamp_seconds") > 0
    # Envoy's /certs shows the certificate new handshakes use: the rotated one, from the same file.
    certs_after = await admin_certs(b)
    assert certs_before["path"] == certs_after["path"] == b_tls["cert_file"]
    assert certs_before["subject_alt_names"] == certs_after["subject_alt_names"] == [{"uri": REVIEWS}]
    assert certs_after["serial_number"] != certs_before["serial_number"]
    assert certs_after["expiration_time"] > certs_before["expiration_time"]  # 2 h against 1 h


async def test_broken_rotation_keeps_old_material(proxy, origdst, app, pki):
    b_tls = pki("b", REVIEWS)
    b = await sidecar_b(proxy, origdst, app, b_tls)
    before = b.app.mesh.material.fingerprint
    other = pki("other", REVIEWS)
    with open(b_tls["key_file"], "wb") as f, open(other["key_file"], "rb") as g:
        f.write(g.read())  # a key that does not match the certificate
    for _ in range(30):
        await asyncio.sleep(0.1)
        text = await metrics_text(b)
        if metric_value(text, "meshproxy_certificate_rotation_errors_total") >= 1:
            break
    assert metric_value(text, "meshproxy_certificate_rotation_errors_total") >= 1
    assert b.app.mesh.material.fingerprint == before
    a = await sidecar_a(proxy, b, pki("a", FRONTEND))
    assert (await get(f"http://127.0.0.1:{a.port('web')}/still"))[0] == 200


@pytest.mark.parametrize("policy", ["UPGRADE", "DO_NOT_UPGRADE"])
async def test_websocket_and_trailers_over_mtls(proxy, origdst, pki, policy):
    """Upgrades become an HTTP/1.1 tunnel between sidecars; a chunked request with trailers
    (as HTTP/2 with UPGRADE, else HTTP/1.1 over mTLS) reaches the peer's app as HTTP/1.1 with
    its body and trailers."""
    seen = {}

    async def chunked_app(reader, writer):
        head = await reader.readuntil(b"\r\n\r\n")
        seen["head"] = head
        seen["body"] = await reader.readuntil(b"0\r\nx-checksum: 42\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(chunked_app, "127.0.0.1", 0)
    raw_port = server.sockets[0].getsockname()[1]

    runner, ws_port = await start_ws_echo()

    app = App()
    app.port = raw_port
    b = await sidecar_b(proxy, origdst, app, pki("b", REVIEWS))
    a = await sidecar_a(proxy, b, pki("a", FRONTEND), h2_upgrade_policy=policy)
    # Chunked body + trailers from an HTTP/1.1 client, through A → (mTLS) → B → HTTP/1.1 app.
    reader, writer = await asyncio.open_connection("127.0.0.1", a.port("web"))
    writer.write(b"POST /t HTTP/1.1\r\nHost: reviews\r\nTransfer-Encoding: chunked\r\nTE: trailers\r\n\r\n"
                 b"5\r\nhello\r\n0\r\nx-checksum: 42\r\n\r\n")
    await writer.drain()
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert head.startswith(b"HTTP/1.1 200 ")
    assert seen["head"].startswith(b"POST /t HTTP/1.1\r\n")
    assert b"5\r\nhello\r\n" in seen["body"] and seen["body"].endswith(b"0\r\nx-checksum: 42\r\n\r\n")
    writer.close()
    # WebSocket: B's inbound now points at the WebSocket app. (A's pooled HTTP/1.1 connection to B
    # was accepted for the first app: B keeps each connection's original destination, so the
    # tunnel goes through a fresh sidecar A.)
    origdst.default = OrigDst("127.0.0.1", ws_port)
    a = await sidecar_a(proxy, b, pki("a2", FRONTEND), h2_upgrade_policy=policy)
    async with aiohttp.ClientSession() as s:
        async with s.ws_connect(f"http://127.0.0.1:{a.port('web')}/ws") as ws:
            await ws.send_str("over-mtls")
            msg = await asyncio.wait_for(ws.receive(), 5)
            assert msg.data == "echo:over-mtls"
    text = await metrics_text(b)
    assert metric_value(text, "istio_requests_total", reporter="destination", response_code="101",
                        connection_security_policy="mutual_tls") == 1
    server.close()
    await runner.cleanup()


async def test_peer_identity_in_access_log_and_span(proxy, origdst, app, pki, tmp_path):
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from meshproxy.config.routing import Tracing
    from meshproxy.observe.tracing import make_tracer

    log_path = tmp_path / "access.log"
    origdst.default = OrigDst("127.0.0.1", app.port)
    b = await proxy({"inbound": {"enabled": True}, "access_log": {"enabled": True, "path": str(log_path)},
                     "security": {"tls": pki("b", REVIEWS)}})
    exporter = InMemorySpanExporter()
    b.app.http.tracer = make_tracer(Tracing(exporter="console"), "reviews", exporter=exporter)
    a = await sidecar_a(proxy, b, pki("a", FRONTEND))
    assert (await get(f"http://127.0.0.1:{a.port('web')}/who"))[0] == 200
    b.app.http.access_log.flush()
    import json

    line = json.loads(log_path.read_text().splitlines()[-1])
    assert line["downstream_peer_uri_san"] == FRONTEND and line["path"] == "/who"
    spans = exporter.get_finished_spans()
    assert spans and spans[-1].attributes["meshproxy.peer.principal"] == FRONTEND


async def test_a_client_without_the_peer_metadata_line_is_refused(proxy, origdst, app, pki):
    """A valid mesh certificate is not enough: a client that is not a meshproxy sidecar (no metadata
    line first) gets nothing from B's app, and B counts it."""
    from meshproxy.config.security import Tls
    from meshproxy.tls.certs import load_material
    from meshproxy.tls.context import client_context

    b = await sidecar_b(proxy, origdst, app, pki("b", REVIEWS))
    tls = pki("a", FRONTEND)
    material = load_material(Tls(cert_file=tls["cert_file"], key_file=tls["key_file"], bundle_file=tls["bundle_file"]))
    reader, writer = await asyncio.open_connection("127.0.0.1", b.port("virtualInbound"),
                                                   ssl=client_context(material, ["meshproxy-http1"]))
    assert writer.get_extra_info("ssl_object").selected_alpn_protocol() == "meshproxy-http1"
    writer.write(b"GET /no-line HTTP/1.1\r\nHost: reviews\r\n\r\n")
    try:
        got = await asyncio.wait_for(reader.read(), 5)
    except ConnectionError:
        got = b""
    writer.close()
    assert b"HTTP/1.1" not in got and app.requests == []
    text = await metrics_text(b)
    assert metric_value(text, "meshproxy_mtls_failures_total", direction="inbound", reason="peer_metadata") == 1
