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
        layer.handshaken = True  # as if the handshake had just completed
        layer.backlog.append(b"early")
        layer.connection_lost(None)
        p = Proto()
        layer.attach(p)
        return p.events

    assert asyncio.run(main()) == ["made", b"early", "lost"]
