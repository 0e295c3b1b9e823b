#!/usr/bin/env python3
"""New mTLS handshakes per second against one TLS server (stdlib only; used by `bench/run.py --suite mesh`).

    mtls_handshakes.py --host H --port P --alpn meshproxy-h2 --cert C --key K --ca BUNDLE --duration S [--threads N]
                       [--peer-line]

Each of N threads loops for S seconds: a fresh TCP connection, a full TLS 1.3 handshake with the client certificate
(never resumed: no session is offered), the ALPN given, then the HTTP/2 client preface + an empty SETTINGS frame,
and it waits for the server's first HTTP/2 frame. A TLS 1.3 server only sends application data after it has read
and verified the client's Finished (and so the client certificate), so a frame back means the server completed the
handshake too; then the connection is closed. With ``--peer-line`` (meshproxy's ALPNs) the client first sends a
peer metadata line, as a sidecar does (``meshproxy/net/peer_hello.py``), and the server's own line, which comes
first, is skipped before looking for its frame: so meshproxy's B does what it does for a sidecar's connection
(reads the line, starts its protocol), not what it does for a stranger (refuse it). Prints one line:

    BENCH handshakes=N duration_us=D errors=E alpn_mismatch=M

The threads overlap because CPython releases the GIL inside the handshake and socket calls.
"""
from __future__ import annotations

import argparse
import socket
import ssl
import sys
import threading
import time

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"
PEER_LINE = b'MESHPROXY-PEER {"workload":"bench-handshakes","app":"bench","version":"v1","cluster":"bench"}\n'


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--host", required=True)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--alpn", required=True)
    ap.add_argument("--cert", required=True)
    ap.add_argument("--key", required=True)
    ap.add_argument("--ca", required=True)
    ap.add_argument("--duration", type=float, default=5.0)
    ap.add_argument("--threads", type=int, default=8)
    ap.add_argument("--peer-line", action="store_true", help="send and skip meshproxy's peer metadata lines")
    a = ap.parse_args()

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.check_hostname = False          # SPIFFE identities are URI SANs; the chain is still verified
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_verify_locations(a.ca)
    ctx.load_cert_chain(a.cert, a.key)
    ctx.set_alpn_protocols([a.alpn])

    counts = [0] * a.threads
    errors = [0] * a.threads
    mismatch = [0] * a.threads
    first_error: list[str] = []
    stop_at = time.monotonic() + a.duration

    def worker(i: int) -> None:
        while time.monotonic() < stop_at:
            try:
                with socket.create_connection((a.host, a.port), timeout=5) as raw:
                    raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                    with ctx.wrap_socket(raw) as s:
                        if s.selected_alpn_protocol() != a.alpn:
                            mismatch[i] += 1
                        s.sendall(PEER_LINE + PREFACE if a.peer_line else PREFACE)
                        got, skip = b"", a.peer_line
                        while skip or len(got) < 9:
                            chunk = s.recv(4096)
                            if not chunk:
                                raise ConnectionError("closed before the server's first HTTP/2 frame")
                            got += chunk
                            if skip and b"\n" in got:
                                got, skip = got.split(b"\n", 1)[1], False
                counts[i] += 1
            except Exception as e:      # counted; the first one is printed
                errors[i] += 1
                if not first_error:
                    first_error.append(repr(e))
                time.sleep(0.01)

    t0 = time.monotonic()
    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(a.threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(a.duration + 30)
    dur = time.monotonic() - t0
    if first_error:
        print(f"first error: {first_error[0]}", file=sys.stderr)
    print(f"BENCH handshakes={sum(counts)} duration_us={dur * 1e6:.0f} errors={sum(errors)} "
          f"alpn_mismatch={sum(mismatch)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
