"""Fallback capture when tcpdump is not installed: AF_PACKET on one interface, raw frames to a file.

``packet_capture.py IFACE OUTFILE SECONDS`` (run inside the namespace that owns
IFACE, as root) puts IFACE in promiscuous mode for this socket only (a bridge then
passes up the frames it forwards between its ports), prints ``listening`` once the
socket is bound, and appends every frame to OUTFILE (length-prefixed, 4 bytes
big-endian) until SIGTERM/SIGINT or SECONDS elapse. Tests only search the bytes,
so the format is deliberately trivial.
"""

from __future__ import annotations

import signal
import socket
import struct
import sys
import time

ETH_P_ALL = 0x0003
SOL_PACKET = 263
PACKET_ADD_MEMBERSHIP = 1
PACKET_MR_PROMISC = 1


def main() -> None:
    iface, out, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3])
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    signal.signal(signal.SIGINT, lambda *_: stop.append(1))
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    sock.bind((iface, ETH_P_ALL))
    index = socket.if_nametoindex(iface)
    sock.setsockopt(SOL_PACKET, PACKET_ADD_MEMBERSHIP, struct.pack("iHH8s", index, PACKET_MR_PROMISC, 0, b""))
    sock.settimeout(0.1)
    print("listening", flush=True)
    deadline = time.monotonic() + seconds
    with open(out, "wb") as f:
        while not stop and time.monotonic() < deadline:
            try:
                frame = sock.recv(65535)
            except socket.timeout:
                continue
            except InterruptedError:
                continue
            f.write(struct.pack(">I", len(frame)) + frame)
            f.flush()
    sock.close()


if __name__ == "__main__":
    main()
