"""The ALPN values the L4 path knows without TLS imports equal the TLS module's."""

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
