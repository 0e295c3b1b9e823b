"""Python-only cost of one request through the HTTP/1.1 express lane (no sockets in the loop).

Where this sits: a developer's tool next to ``bench/run.py``. ``run.py`` measures the
whole proxy against HAProxy (kernel, scheduling and all); this isolates the part we
write: it starts a real ``App`` in-process (explicit listener ``protocol: http`` → a
cluster → a tiny upstream on loopback), proxies one real request to create the
downstream ``ExpressServer`` and the pooled upstream ``ExpressConnection``, then swaps
both transports for recording fakes and drives the two ``data_received`` callbacks
directly, N times: request in, response in. The fakes check every response that
comes out, so a change that breaks the lane cannot look fast.

    .venv/bin/python bench/micro_express.py [--n 20000] [--rounds 5] [--profile FILE.pstats]

Prints microseconds per proxied request (the best and median round). Run it pinned
(``taskset -c 1``) on a quiet machine; it is a comparison tool between commits, not a target.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import statistics
import sys
import time

from micro_support import install_uvloop, restore_transports, start_app, swap_transports

BODY = b"x" * 1024
RESPONSE = (b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Tue, 01 Dec 2026 20:00:00 GMT\r\n"
            b"Content-Type: application/octet-stream\r\nContent-Length: 1024\r\n"
            b"Last-Modified: Tue, 01 Dec 2026 19:00:00 GMT\r\nConnection: keep-alive\r\n"
            b'ETag: "6568a3c0-400"\r\nAccept-Ranges: bytes\r\n\r\n' + BODY)
REQUEST = b"GET /1k HTTP/1.1\r\nHost: 127.0.0.1:18081\r\nUser-Agent: wrk\r\nAccept: */*\r\n\r\n"


class Upstream(asyncio.Protocol):
    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        self.transport.write(RESPONSE)


async def setup():
    loop = asyncio.get_running_loop()
    up = await loop.create_server(Upstream, "127.0.0.1", 0)
    app, port = await start_app(up.sockets[0].getsockname()[1], "http1", "<micro_express>")
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(REQUEST)
    head = await reader.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head
    await reader.readexactly(1024)
    servers = [c for c in app.http.connections if type(c).__name__ == "ExpressServer"]
    assert len(servers) == 1, f"expected one express connection, found {servers}"
    server = servers[0]
    pool = app.http.pools["app"]
    ups = [c for conns in pool.idle.values() for c in conns]
    assert len(ups) == 1, f"expected one idle upstream connection, found {ups}"
    return app, server, ups[0], writer


def drive(server, upconn, n: int) -> float:
    """``n`` requests through the lane; seconds taken."""
    down_t, up_t = server.transport, upconn.transport
    sd, su = server.data_received, upconn.data_received
    end_of_turn = server.flusher.run  # what the loop runs after each turn's reads (net/flush.py)
    t0 = time.perf_counter()
    for _ in range(n):
        sd(REQUEST)
        end_of_turn()
        su(RESPONSE)
        end_of_turn()
    dt = time.perf_counter() - t0
    # every request went upstream and every response came back whole
    assert len(up_t.out) == n and len(down_t.out) == n, (len(up_t.out), len(down_t.out))
    assert all(o.endswith(BODY) and o.startswith(b"HTTP/1.1 200 OK\r\n") for o in down_t.out[-3:])
    assert up_t.out[-1].startswith(b"GET /1k HTTP/1.1\r\n")
    down_t.out.clear()
    up_t.out.clear()
    return dt


async def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=20000)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--profile", help="write a cProfile of one extra round here")
    args = ap.parse_args()
    app, server, upconn, writer = await setup()
    try:
        swap_transports(server, upconn)
        drive(server, upconn, 2000)  # warm the memos and caches
        per = [drive(server, upconn, args.n) / args.n * 1e6 for _ in range(args.rounds)]
        print(f"express lane, Python only: best {min(per):.2f} us/request, median {statistics.median(per):.2f}"
              f" ({args.rounds} rounds of {args.n})")
        if args.profile:
            prof = cProfile.Profile()
            prof.enable()
            drive(server, upconn, args.n)
            prof.disable()
            prof.dump_stats(args.profile)
            print(f"profile written to {args.profile}")
    finally:
        restore_transports(server, upconn)
        writer.close()
        await app._close_all()
    return 0


if __name__ == "__main__":
    install_uvloop()
    sys.exit(asyncio.run(main()))
