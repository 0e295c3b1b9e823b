"""What one ``SSLObject.read(n)`` costs for each ``n``: why ``net/tls_layer.py`` asks for 16 KiB.

Where this sits: a developer's tool next to ``bench/run.py``. Two ``SSLObject``s joined by
memory BIOs (TLS 1.3, a certificate from meshproxy's own CA) pass messages of a mesh
request's size and of a bulk write's size; the receiver drains each message the way
``TlsLayer._read_app`` does, with several read sizes. Every message is checked whole.

    .venv/bin/python bench/micro_tls_read.py [--n 20000]

``read(n)`` allocates ``n`` bytes and shrinks them to the record it got (one record per call
at most), so asking for more than a record's 16 KiB only adds allocation cost; at 256 KiB
glibc serves that allocation with mmap and gives it back with munmap, once per record.
"""

from __future__ import annotations

import argparse
import ssl
import tempfile
import time
from datetime import timedelta

from meshproxy.config.security import Tls
from meshproxy.net.tls_layer import _READ
from meshproxy.tls import certs, context
from meshproxy.tls.ca import CertificateAuthority

SIZES = (256 * 1024, 64 * 1024, 32 * 1024, _READ)


def pair(tmp: str):
    ca = CertificateAuthority.create("cluster.local", timedelta(days=1))
    mats = {}
    for name in ("a", "b"):
        ca.issue(f"spiffe://cluster.local/ns/bench/sa/{name}", timedelta(hours=1)).save(f"{tmp}/{name}")
        mats[name] = certs.load_material(Tls(cert_file=f"{tmp}/{name}/cert.pem", key_file=f"{tmp}/{name}/key.pem",
                                             bundle_file=f"{tmp}/{name}/bundle.pem"))
    ci, co, si, so = ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO()
    c = context.client_context(mats["a"], ["x"]).wrap_bio(ci, co)
    s = context.server_context(mats["b"], ["x"]).wrap_bio(si, so, server_side=True)
    for _ in range(10):
        for obj in (c, s):
            try:
                obj.do_handshake()
            except ssl.SSLWantReadError:
                pass
        si.write(co.read())
        ci.write(so.read())
    return c, co, s, si


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=20000)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        c, co, s, si = pair(tmp)
        print(f"{c.version()} {c.cipher()[0]}; TlsLayer reads {_READ} bytes at a time")
        for size in (1200, 64 * 1024):
            msg = b"m" * size
            n = args.n if size < 16384 else max(1, args.n // 10)
            for rs in SIZES:
                reads = 0
                t0 = time.perf_counter()
                for _ in range(n):
                    c.write(msg)
                    si.write(co.read())
                    got = []
                    while True:
                        try:
                            got.append(s.read(rs))
                        except ssl.SSLWantReadError:
                            break
                        reads += 1
                        if not si.pending and not s.pending():
                            break
                    assert b"".join(got) == msg
                dt = (time.perf_counter() - t0) / n * 1e6
                print(f"message {size:6d} B, read({rs:6d}): {dt:7.2f} us per message, {reads / n:.1f} reads")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
