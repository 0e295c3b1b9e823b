"""Who-am-i echo server for the netns pod tests (runs inside a pod as an ordinary app).

Listens dual-stack (``::`` with IPV6_V6ONLY off, so IPv4 peers arrive as
``::ffff:a.b.c.d``) on every ``--port``. The protocol is client-first, so the
sidecar's protocol detection never waits on us: on a connection's first bytes
the server writes one header line, then echoes every byte until the client
half-closes::

    PEER <peer-ip> <peer-port> LOCAL <local-ip> <local-port>\\n<echo of all data>

Each accepted connection is also logged to stdout as a JSON line, flushed, so
tests can read what the app saw even when the client was told nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import sys


def _plain(addr: str) -> str:
    return addr[7:] if addr.startswith("::ffff:") else addr


async def _handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    peer = writer.get_extra_info("peername")
    local = writer.get_extra_info("sockname")
    peer_ip, local_ip = _plain(peer[0]), _plain(local[0])
    print(json.dumps({"event": "accept", "peer": peer_ip, "peer_port": peer[1],
                      "local": local_ip, "port": local[1]}), flush=True)
    header = f"PEER {peer_ip} {peer[1]} LOCAL {local_ip} {local[1]}\n".encode()
    total = 0
    try:
        while True:
            data = await asyncio.wait_for(reader.read(65536), timeout=60)
            if not data:
                break
            if header:
                writer.write(header)
                header = b""
            writer.write(data)
            total += len(data)
            await writer.drain()
        if header:  # client sent nothing: still say who we see
            writer.write(header)
        await writer.drain()
    except (OSError, asyncio.TimeoutError):
        pass
    finally:
        print(json.dumps({"event": "close", "peer": peer_ip, "port": local[1], "bytes": total}), flush=True)
        writer.close()


def _listen(port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    sock.bind(("::", port))
    sock.listen(128)
    sock.setblocking(False)
    return sock


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, action="append", required=True)
    args = parser.parse_args()
    servers = [await asyncio.start_server(_handle, sock=_listen(p)) for p in args.port]
    print(json.dumps({"event": "listening", "ports": args.port}), flush=True)
    await asyncio.gather(*(s.serve_forever() for s in servers))


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        sys.exit(0)
