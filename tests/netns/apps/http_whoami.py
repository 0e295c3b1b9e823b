"""Who-am-i HTTP/1.1 app for the L7 netns pod tests (runs inside a pod as an ordinary app).

``http_whoami.py NAME PORT``: listens on 0.0.0.0:PORT with keep-alive and answers
every request with JSON ``{"pod", "peer", "method", "path", "headers"}``; each
request is also logged to stdout as a JSON line, flushed. Prints ``"listening"``
once bound.
"""

from __future__ import annotations

import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    pod = "?"

    def _answer(self) -> None:
        n = int(self.headers.get("content-length") or 0)
        body = self.rfile.read(n) if n else b""
        seen = {"pod": self.pod, "peer": self.client_address[0], "method": self.command, "path": self.path,
                "headers": {k.lower(): v for k, v in self.headers.items()}, "len": len(body)}
        print(json.dumps({"event": "request", **seen}), flush=True)
        out = json.dumps(seen).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    do_GET = do_POST = do_PUT = _answer

    def log_message(self, *args) -> None:
        pass


def main() -> None:
    Handler.pod = sys.argv[1]
    server = ThreadingHTTPServer(("0.0.0.0", int(sys.argv[2])), Handler)
    server.daemon_threads = True
    print(json.dumps({"event": "listening", "port": server.server_address[1]}), flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
