"""Detection tables for ``meshproxy.detect.sniff`` (linkerd ``http/detect`` style)."""

from __future__ import annotations

import ssl

import pytest

from meshproxy.detect.sniff import (
    H1_LINE_CAP,
    H2_PREFACE,
    TLS_PEEK_CAP,
    Kind,
    PortProtocol,
    is_server_first_port,
    sniff,
)


def client_hello(server_hostname: str | None = "api.example.com", alpn: list[str] | None = None) -> bytes:
    """A real ClientHello from the stdlib TLS stack, captured through memory BIOs."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if alpn:
        ctx.set_alpn_protocols(alpn)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = ctx.wrap_bio(incoming, outgoing, server_hostname=server_hostname)
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


REQUEST = b"GET / HTTP/1.1\r\n"


@pytest.mark.parametrize("n", range(len(REQUEST) + 1))
def test_every_prefix_of_a_request_line(n: int) -> None:
    expected = Kind.H1 if n == len(REQUEST) else Kind.NEED_MORE
    assert sniff(REQUEST[:n]).kind is expected


@pytest.mark.parametrize(
    "data, kind",
    [
        (b"", Kind.NEED_MORE),
        (b"POST /upload?x=1 HTTP/1.0\r\nHost: a\r\n\r\n", Kind.H1),
        (b"OPTIONS * HTTP/1.1\r\n", Kind.H1),
        (b"CONNECT example.com:443 HTTP/1.1\r\n", Kind.H1),
        (b"GET http://example.com/a HTTP/1.1\r\n", Kind.H1),
        (b"M-SEARCH * HTTP/1.1\r\n", Kind.H1),  # any token is a method
        (b"GET / HTTP/1.1\n", Kind.OPAQUE),  # bare LF
        (b"GET / HTTP/2.0\r\n", Kind.OPAQUE),
        (b"GET  / HTTP/1.1\r\n", Kind.OPAQUE),  # double space
        (b"GET / HTTP/1.1 \r\n", Kind.OPAQUE),
        (b"GET /\x00 HTTP/1.1", Kind.OPAQUE),  # a byte rules it out before the line ends
        (b"G(T / HTTP/1.1", Kind.OPAQUE),  # ( is not a tchar
        (b" GET / HTTP/1.1\r\n", Kind.OPAQUE),
        (b"GET / HTTX", Kind.OPAQUE),
        (b"GET / HTTP/1.1\r", Kind.NEED_MORE),
        (b"GET / HTTP/1.1\rX", Kind.OPAQUE),
        (b"SSH-2.0-OpenSSH_9.6\r\n", Kind.OPAQUE),
        (b"\x00\x01\x02\xff\xfe", Kind.OPAQUE),
        (b"\x80\x00\x00\x00", Kind.OPAQUE),
        (b"*1\r\n$4\r\nPING\r\n", Kind.OPAQUE),  # Redis RESP
        (H2_PREFACE, Kind.H2),
        (H2_PREFACE + b"\x00\x00\x12\x04\x00\x00\x00\x00\x00junk", Kind.H2),
        (H2_PREFACE[:-1] + b"X", Kind.OPAQUE),
        (b"PRI * HTTP/2.0\r\n\r\nXX", Kind.OPAQUE),
        (b"\x16", Kind.NEED_MORE),
        (b"\x16\x03", Kind.NEED_MORE),
        (b"\x16\x03\x01", Kind.NEED_MORE),
        (b"\x16\x03\x05\x00\x10", Kind.OPAQUE),
        (b"\x16\x02\x00", Kind.OPAQUE),
        (b"\x17\x03\x03\x00\x10", Kind.OPAQUE),  # application data, not a handshake
        (b"\x16\x03\x01\x00\x05\x02\x00\x00\x01\x00", Kind.TLS),  # a handshake, but not a ClientHello
    ],
)
def test_table(data: bytes, kind: Kind) -> None:
    assert sniff(data).kind is kind


@pytest.mark.parametrize("n", range(1, len(H2_PREFACE)))
def test_every_proper_prefix_of_the_h2_preface_needs_more(n: int) -> None:
    assert sniff(H2_PREFACE[:n]).kind is Kind.NEED_MORE


def test_request_line_without_end_is_opaque_at_the_cap() -> None:
    long = b"GET /" + b"a" * (H1_LINE_CAP - 10)
    assert sniff(long).kind is Kind.NEED_MORE
    assert sniff(long + b"a" * 10).kind is Kind.OPAQUE


def test_client_hello_sni_and_alpn() -> None:
    hello = client_hello("API.Example.com", ["h2", "http/1.1"])
    got = sniff(hello)
    assert got.kind is Kind.TLS
    assert got.sni == "api.example.com"
    assert got.alpn == ("h2", "http/1.1")


def test_client_hello_mesh_alpn_without_sni() -> None:
    got = sniff(client_hello(None, ["istio-peer-exchange", "istio"]))
    assert got.kind is Kind.TLS
    assert got.sni is None
    assert got.alpn == ("istio-peer-exchange", "istio")


def test_client_hello_every_prefix_needs_more_then_tls() -> None:
    hello = client_hello("svc.ns.svc.cluster.local", ["http/1.1"])
    for n in range(1, len(hello)):
        assert sniff(hello[:n]).kind is Kind.NEED_MORE, n
    assert sniff(hello).sni == "svc.ns.svc.cluster.local"
    assert sniff(hello + b"trailing").sni == "svc.ns.svc.cluster.local"


def test_client_hello_split_across_records() -> None:
    hello = client_hello("split.example", ["h2"])
    body = hello[5:]
    version = hello[1:3]
    records = b"".join(
        b"\x16" + version + len(part).to_bytes(2, "big") + part for part in (body[:7], body[7:100], body[100:])
    )
    got = sniff(records)
    assert (got.kind, got.sni, got.alpn) == (Kind.TLS, "split.example", ("h2",))
    assert sniff(records[:-1]).kind is Kind.NEED_MORE


def test_incomplete_huge_record_gives_tls_without_sni_at_the_cap() -> None:
    data = b"\x16\x03\x01\x40\x00\x01\x00\x3f\xfc" + b"\x00" * (TLS_PEEK_CAP - 9)
    assert sniff(data[:1000]).kind is Kind.NEED_MORE
    got = sniff(data)
    assert (got.kind, got.sni) == (Kind.TLS, None)


def test_malformed_client_hello_is_tls_without_sni() -> None:
    body = b"\x01\x00\x00\x05" + b"\x03\x03\xff\xff\xff"
    data = b"\x16\x03\x01" + len(body).to_bytes(2, "big") + body
    got = sniff(data)
    assert (got.kind, got.sni, got.alpn) == (Kind.TLS, None, ())


@pytest.mark.parametrize("port", [25, 587, 3306, 4444, 5432, 6379, 9300, 11211, 27017])
def test_server_first_ports(port: int) -> None:
    assert is_server_first_port(port)


@pytest.mark.parametrize("port", [80, 443, 8080, 9090, 15001])
def test_client_first_ports(port: int) -> None:
    assert not is_server_first_port(port)


def test_server_first_ports_are_configurable() -> None:
    assert is_server_first_port(1234, frozenset({1234}))
    assert not is_server_first_port(3306, frozenset({1234}))


@pytest.mark.parametrize(
    "name, proto",
    [
        ("http", PortProtocol.HTTP),
        ("HTTP", PortProtocol.HTTP),
        ("http-web", PortProtocol.HTTP),
        ("http2", PortProtocol.HTTP2),
        ("http2-internal", PortProtocol.HTTP2),
        ("grpc", PortProtocol.GRPC),
        ("grpc-api", PortProtocol.GRPC),
        ("grpc-web", PortProtocol.GRPC_WEB),
        ("grpc-web-frontend", PortProtocol.GRPC_WEB),
        ("tcp", PortProtocol.TCP),
        ("tcp-db", PortProtocol.TCP),
        ("tls", PortProtocol.TLS),
        ("https", PortProtocol.HTTPS),
        ("https-admin", PortProtocol.HTTPS),
        ("mysql", PortProtocol.TCP),
        ("web", None),
        ("httpx", None),
        ("grpcweb", None),
        ("udp", None),
        ("", None),
    ],
)
def test_port_protocol_parse(name: str, proto: PortProtocol | None) -> None:
    assert PortProtocol.parse(name) is proto


def test_port_protocol_properties() -> None:
    assert PortProtocol.GRPC.is_http and PortProtocol.GRPC.is_h2
    assert PortProtocol.HTTP.is_http and not PortProtocol.HTTP.is_h2
    assert not PortProtocol.TCP.is_http and not PortProtocol.HTTPS.is_http
