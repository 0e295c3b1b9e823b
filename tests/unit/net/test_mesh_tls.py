"""Mesh TLS pieces that need no network: ALPN constants, lazy imports, the TLS layer's hand-over."""

from meshproxy.net import mesh_alpn
from meshproxy.tls import context


def test_alpn_constants_agree():
    assert mesh_alpn.ALPN_H2 == context.ALPN_H2
    assert mesh_alpn.ALPN_TCP == context.ALPN_TCP
    assert len(set(mesh_alpn.MESH_ALPNS)) == 3


def test_run_does_not_import_cryptography():
    import subprocess
    import sys

    code = ("import sys, meshproxy.cli, meshproxy.app; meshproxy.cli.build_parser(); "
            "print('cryptography' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert out.stdout.strip() == "False", out.stderr


def test_tls_layer_reports_a_loss_between_handshake_and_attach():
    """A peer that closes right after the handshake (e.g. a TCP authorization denial)
    must still reach the protocol attached afterwards, or the client hangs."""
    import asyncio
    import ssl

    from meshproxy.net.tls_layer import TlsLayer

    class Proto(asyncio.Protocol):
        def __init__(self):
            self.events = []

        def connection_made(self, t):
            self.events.append("made")

        def data_received(self, d):
            self.events.append(d)

        def eof_received(self):
            self.events.append("eof")
            return True

        def connection_lost(self, exc):
            self.events.append("lost")

    async def main():
        layer = TlsLayer(None, ssl.create_default_context(), lambda l: None, lambda m: None, handshake_timeout=0,
                         server_side=False)
        layer.handshaken = layer.ready = True  # as if the handshake had just completed
        layer.backlog.append(b"early")
        layer.connection_lost(None)
        p = Proto()
        layer.attach(p)
        return p.events

    assert asyncio.run(main()) == ["made", b"early", "lost"]


def test_tls_layer_delivers_every_record_of_one_read(tls_materials):
    """Several TLS records arriving in one read all reach the inner protocol, in order, and
    a read that leaves nothing to decrypt stops without a further (raising) read."""
    import asyncio

    from meshproxy.net.tls_layer import TlsLayer
    from meshproxy.tls import context

    mats = tls_materials

    class Wire:
        """A raw transport that hands what is written to the other layer (all at once, on demand)."""

        def __init__(self):
            self.peer = None
            self.out = []

        def write(self, data):
            self.out.append(bytes(data))

        def pump(self):
            data, self.out = b"".join(self.out), []
            if data:
                self.peer.data_received(data)
            return len(data)

        def is_closing(self):
            return False

    class Inner(asyncio.Protocol):
        def __init__(self):
            self.got = []

        def data_received(self, d):
            self.got.append(d)

    async def main():
        ready = []
        cw, sw = Wire(), Wire()
        server = TlsLayer(sw, context.server_context(mats["b"], ["x"]), ready.append, print, handshake_timeout=0)
        client = TlsLayer(None, context.client_context(mats["a"], ["x"]), ready.append, print, handshake_timeout=0,
                          server_side=False)
        cw.peer, sw.peer = server, client
        client.connection_made(cw)
        for _ in range(10):
            if not (cw.pump() + sw.pump()) and len(ready) == 2:
                break
        assert len(ready) == 2
        inner = Inner()
        server.attach(inner)
        client.attach(Inner())
        for piece in (b"one", b"two" * 9000, b"three"):  # three writes, four records: one read for the server
            client.write(piece)
        cw.pump()
        assert b"".join(inner.got) == b"one" + b"two" * 9000 + b"three"
        assert not server.incoming.pending and not server.sslobj.pending()
        # records of exactly the read size, and a write of many records: each read takes one
        # whole record (never more than a record's 16 KiB of plaintext), nothing is left behind
        inner.got.clear()
        big = bytes(range(256)) * 400  # 102400 bytes: six full records and a partial one
        for piece in (b"a" * 16384, b"b" * 16385, big):
            client.write(piece)
        cw.pump()
        assert b"".join(inner.got) == b"a" * 16384 + b"b" * 16385 + big
        assert max(len(c) for c in inner.got) == 16384
        assert not server.incoming.pending and not server.sslobj.pending()

    asyncio.run(main())


def test_tls_layer_calls_the_ssl_core_directly():
    """The per-record calls skip ``ssl.SSLObject``'s one-line Python wrappers: ``core`` is the
    ``_ssl`` object under it (on CPython), and a write through the layer goes through ``core``."""
    import asyncio
    import ssl

    from meshproxy.net.tls_layer import TlsLayer

    async def main():
        layer = TlsLayer(None, ssl.create_default_context(), lambda l: None, lambda m: None, handshake_timeout=0,
                         server_side=False)
        assert layer.core is not layer.sslobj
        assert type(layer.core).__module__ == "_ssl"
        assert layer.core is layer.sslobj._sslobj
        calls = []

        class Core:
            def write(self, data):
                calls.append(bytes(data))
                return len(data)

        class Raw:
            def write(self, data):
                calls.append(("raw", data))

            def is_closing(self):
                return False

        layer.raw, layer.core = Raw(), Core()
        layer.write(b"hello")
        return calls

    assert asyncio.run(main()) == [b"hello"]  # nothing in the outgoing BIO: no raw write
