"""Client for ``echo_server.py``: send a payload, read the header and the echo, report JSON.

Every socket operation has a timeout. The payload starts with a fixed
non-HTTP, non-TLS prefix so protocol detection classifies it as opaque TCP, then
deterministic pseudo-random bytes. ``--chunk``/``--delay`` make a slow
transfer (for drain tests). A reader thread drains the echo while writing, so
large payloads cannot deadlock on full buffers. Output is one JSON object:

    {"ok": bool, "error": str|null, "peer": ip, "local": ip, "port": int,
     "sent": n, "received": n, "echo_ok": bool, "elapsed": s}

``error`` names the exception class (``ConnectionRefusedError``,
``ConnectionResetError``, ``timeout``, ``eof-before-header`` ...).
"""

from __future__ import annotations

import argparse
import json
import random
import socket
import threading
import time

PREFIX = b"\x00meshproxy-netns-test\n"


def payload(size: int, seed: int = 7) -> bytes:
    rnd = random.Random(seed)
    body = rnd.randbytes(max(0, size - len(PREFIX)))
    return (PREFIX + body)[:size] if size >= len(PREFIX) else PREFIX[:size]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("host")
    parser.add_argument("port", type=int)
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--chunk", type=int, default=0, help="send in chunks of this many bytes")
    parser.add_argument("--delay", type=float, default=0.0, help="seconds between chunks")
    parser.add_argument("--timeout", type=float, default=5.0, help="per socket operation")
    args = parser.parse_args()

    data = payload(args.size)
    result: dict = {"ok": False, "error": None, "peer": None, "local": None, "port": None,
                    "sent": 0, "received": 0, "echo_ok": False}
    start = time.monotonic()
    received = bytearray()
    read_error: list[str] = []
    sock = None
    try:
        family = socket.AF_INET6 if ":" in args.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.settimeout(args.timeout)
        sock.connect((args.host, args.port))

        def reader() -> None:
            try:
                while True:
                    chunk = sock.recv(65536)
                    if not chunk:
                        return
                    received.extend(chunk)
            except socket.timeout:
                read_error.append("timeout")
            except OSError as exc:
                read_error.append(type(exc).__name__)
                result["detail"] = str(exc)

        thread = threading.Thread(target=reader, daemon=True)
        thread.start()
        step = args.chunk or len(data) or 1
        for off in range(0, len(data), step):
            sock.sendall(data[off:off + step])
            result["sent"] += len(data[off:off + step])
            if args.delay:
                time.sleep(args.delay)
        sock.shutdown(socket.SHUT_WR)
        thread.join(args.timeout + 1)
        if thread.is_alive():
            read_error.append("timeout")
    except socket.timeout:
        result["error"] = "timeout"
    except OSError as exc:
        result["error"] = type(exc).__name__
        result["detail"] = str(exc)
    finally:
        if sock is not None:
            sock.close()
    result["received"] = len(received)
    if result["error"] is None and read_error:
        result["error"] = read_error[0]
    head, sep, echo = bytes(received).partition(b"\n")
    if sep and head.startswith(b"PEER "):
        parts = head.decode().split()
        result["peer"], result["local"], result["port"] = parts[1], parts[4], int(parts[5])
        result["echo_ok"] = echo == data
    elif result["error"] is None:
        result["error"] = "eof-before-header" if not received else "bad-header"
    result["ok"] = result["error"] is None and result["echo_ok"]
    result["elapsed"] = round(time.monotonic() - start, 3)
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
