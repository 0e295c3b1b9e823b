"""Python-only cost of one request through the HTTP/2 (h2c both legs) path, without sockets in the loop.

Where this sits: a developer's tool next to ``bench/run.py`` and ``bench/micro_express.py``.
It starts a real ``App`` in-process (explicit listener ``protocol: http`` → a cluster
``protocol: http2`` → a small h2c origin on loopback), sends one real request over
h2c to create the downstream ``HttpServerConnection`` and the pooled upstream
``Http2Connection``, then swaps both transports for recording fakes. From then on
an h2 client (the ``h2`` library) and the origin's own h2 state machine make the
frames, and only the proxy's two ``data_received`` calls per request are timed:
the client's HEADERS in, the origin's response (HEADERS + 1 KiB DATA with
END_STREAM, and its WINDOW_UPDATEs) in. Every response is checked, so a change
that breaks the path cannot look fast.

    .venv/bin/python bench/micro_h2.py [--n 5000] [--rounds 5] [--batch 1] [--profile FILE.pstats]

``--batch K`` sends K requests per downstream read (K streams in flight, as with
``h2load -m``). Prints microseconds per proxied request (best and median round);
compare between commits on one quiet machine, pinned (``taskset -c 1``).
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import gc
import statistics
import sys
import time

import h2.config
import h2.connection
import h2.events

from micro_support import install_uvloop, restore_transports, start_app, swap_transports

BODY = b"x" * 1024
RESPONSE_HEADERS = [(b":status", b"200"), (b"server", b"nginx/1.22.1"), (b"date", b"Tue, 01 Dec 2026 20:00:00 GMT"),
                    (b"content-type", b"application/octet-stream"), (b"content-length", b"1024"),
                    (b"last-modified", b"Tue, 01 Dec 2026 19:00:00 GMT"), (b"etag", b'"6568a3c0-400"'),
                    (b"accept-ranges", b"bytes")]


def _nothing() -> None:
    pass


class Origin:
    """The upstream's h2 state machine: answers each request with RESPONSE_HEADERS + BODY."""

    def __init__(self):
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
        self.conn.initiate_connection()

    def receive(self, data: bytes) -> bytes:
        for ev in self.conn.receive_data(data):
            if isinstance(ev, h2.events.RequestReceived):
                self.conn.send_headers(ev.stream_id, RESPONSE_HEADERS)
                self.conn.send_data(ev.stream_id, BODY, end_stream=True)
            elif isinstance(ev, h2.events.DataReceived):
                self.conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
        return self.conn.data_to_send()


class OriginProtocol(asyncio.Protocol):
    def __init__(self, holder: list):
        self.origin = Origin()
        holder.append(self.origin)

    def connection_made(self, transport):
        self.transport = transport
        transport.write(self.origin.conn.data_to_send())

    def data_received(self, data):
        out = self.origin.receive(data)
        if out:
            self.transport.write(out)


class Client:
    """The downstream h2 client: makes request frames, reads and checks responses."""

    def __init__(self, authority: bytes):
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        self.conn.initiate_connection()
        self.headers = [(b":method", b"GET"), (b":scheme", b"http"), (b":authority", authority), (b":path", b"/1k"),
                        (b"user-agent", b"h2load nghttp2/1.52.0")]
        self.done = 0
        self.bad: list = []

    def requests(self, k: int) -> bytes:
        for _ in range(k):
            sid = self.conn.get_next_available_stream_id()
            self.conn.send_headers(sid, self.headers, end_stream=True)
        return self.conn.data_to_send()

    def receive(self, data: bytes) -> bytes:
        status = {}
        body = {}
        for ev in self.conn.receive_data(data):
            if isinstance(ev, h2.events.ResponseReceived):
                status[ev.stream_id] = dict(ev.headers).get(b":status")
            elif isinstance(ev, h2.events.DataReceived):
                body[ev.stream_id] = body.get(ev.stream_id, 0) + len(ev.data)
                self.conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
            elif isinstance(ev, h2.events.StreamEnded):
                if status.get(ev.stream_id) != b"200" or body.get(ev.stream_id) != len(BODY):
                    self.bad.append((ev.stream_id, status.get(ev.stream_id), body.get(ev.stream_id)))
                self.done += 1
            elif isinstance(ev, h2.events.StreamReset):
                self.bad.append((ev.stream_id, "reset", ev.error_code))
        return self.conn.data_to_send()


async def setup():
    loop = asyncio.get_running_loop()
    holder: list[Origin] = []
    up = await loop.create_server(lambda: OriginProtocol(holder), "127.0.0.1", 0)
    up_port = up.sockets[0].getsockname()[1]
    app, port = await start_app(up_port, "http2", "<micro_h2>")
    client = Client(b"127.0.0.1:%d" % port)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(client.requests(1))
    while client.done < 1:
        data = await asyncio.wait_for(reader.read(65536), 5)
        assert data, "the proxy closed the connection"
        out = client.receive(data)
        if out:
            writer.write(out)
    assert not client.bad, client.bad
    await asyncio.sleep(0.05)  # let the origin's last WINDOW_UPDATEs and SETTINGS ACKs land
    servers = [c for c in app.http.connections if type(c).__name__ == "HttpServerConnection"]
    assert len(servers) == 1, f"expected one HTTP/2 server connection, found {servers}"
    ups = [c for conns in app.http.pools["app"].h2.values() for c in conns]
    assert len(ups) == 1 and len(holder) == 1, (ups, holder)
    return app, client, servers[0], ups[0], holder[0], writer


def drive(client: Client, server, upconn, origin: Origin, n: int, batch: int, prof=None) -> float:
    """``n`` requests (``batch`` per downstream read) through the proxy; seconds spent in the proxy.
    The cyclic GC is off meanwhile: the h2 peers' garbage would otherwise be collected on the
    proxy's clock. ``prof``: a ``cProfile.Profile`` switched on around the proxy's calls only."""
    down_t, up_t = server.transport, upconn.transport
    end_of_turn = server.flusher.run  # what the loop runs after each turn's reads (net/flush.py)
    if prof is not None:
        on, off = prof.enable, prof.disable
    else:
        on = off = _nothing
    gc.collect()
    gc.disable()
    spent = 0.0
    clock = time.perf_counter
    start_done = client.done
    for _ in range(n // batch):
        frames = client.requests(batch)
        on()
        t0 = clock()
        server.data_received(frames)
        end_of_turn()
        t1 = clock()
        off()
        answer = origin.receive(up_t.take())
        on()
        t2 = clock()
        upconn.data_received(answer)
        end_of_turn()
        t3 = clock()
        off()
        spent += (t1 - t0) + (t3 - t2)
        back = client.receive(down_t.take())
        if back:
            on()
            t4 = clock()
            server.data_received(back)  # the client's WINDOW_UPDATEs: part of the proxy's work
            end_of_turn()
            spent += clock() - t4
            off()
        acks = origin.receive(up_t.take())
        if acks:
            on()
            t5 = clock()
            upconn.data_received(acks)
            end_of_turn()
            spent += clock() - t5
            off()
    gc.enable()
    assert not client.bad, client.bad[:5]
    assert client.done - start_done == (n // batch) * batch, (client.done - start_done, n)
    return spent


async def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=5000)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--profile", help="write a cProfile of one extra round here")
    args = ap.parse_args()
    app, client, server, upconn, origin, writer = await setup()
    swap_transports(server, upconn)
    try:
        drive(client, server, upconn, origin, 500, args.batch)  # warm up
        per = [drive(client, server, upconn, origin, args.n, args.batch) / args.n * 1e6 for _ in range(args.rounds)]
        print(f"h2c path, Python only: best {min(per):.2f} us/request, median {statistics.median(per):.2f}"
              f" ({args.rounds} rounds of {args.n}, {args.batch} per read)")
        if args.profile:
            prof = cProfile.Profile()
            drive(client, server, upconn, origin, args.n, args.batch, prof)
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
