"""Raw TCP client for the mTLS netns tests: send one known plaintext line, read until EOF.

``marker_client.py HOST PORT MARKER [--timeout S] [--until-echo]`` connects, writes
``MARKER\\n``, half-closes and reads everything the server sends until EOF, a reset or
the timeout (every socket operation is bounded). With ``--until-echo`` it stops
reading as soon as the echoed ``MARKER\\n`` has arrived (it does not depend on the
half-close coming back as EOF). Prints one JSON line::

    {"connected": bool, "error": str|null, "eof": bool, "received": "<latin-1 text>", "elapsed": s}

``error`` names the exception class (``ConnectionResetError``, ``timeout`` ...) or
is null for a clean EOF (or, with ``--until-echo``, a complete echo). Against
``echo_server.py`` a successful exchange receives ``PEER <ip> <port> LOCAL <ip> <port>\\n``
followed by the echoed marker line.
"""

from __future__ import annotations

import argparse
import json
import socket
import time


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("host")
    parser.add_argument("port", type=int)
    parser.add_argument("marker")
    parser.add_argument("--timeout", type=float, default=5.0)
    parser.add_argument("--until-echo", action="store_true")
    args = parser.parse_args()

    result: dict = {"connected": False, "error": None, "eof": False, "received": ""}
    line = args.marker.encode() + b"\n"
    received = bytearray()
    start = time.monotonic()
    family = socket.AF_INET6 if ":" in args.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.settimeout(args.timeout)
    try:
        sock.connect((args.host, args.port))
        result["connected"] = True
        sock.sendall(line)
        sock.shutdown(socket.SHUT_WR)
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                result["eof"] = True
                break
            received.extend(chunk)
            if args.until_echo and received.endswith(line):
                break
    except socket.timeout:
        result["error"] = "timeout"
    except OSError as exc:
        result["error"] = type(exc).__name__
        result["detail"] = str(exc)
    finally:
        sock.close()
    result["received"] = received.decode("latin-1")
    result["elapsed"] = round(time.monotonic() - start, 3)
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
