"""Shared bits of the L7 real-peer tests: an HTTP/1.1 echo origin, a raw HTTP/1.1
recorder, subprocess runs with a deadline, and config builders."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket

import pytest
from aiohttp import web


class EchoH1:
    """aiohttp origin: answers JSON with what it got; counts client connections."""

    def __init__(self, name: str = "h1"):
        self.name = name
        self.requests: list[dict] = []
        self.port = 0
        self.delay = 0.0
        """Seconds to wait before answering (timeout tests)."""
        self.runner: web.AppRunner | None = None

    async def handle(self, req: web.Request) -> web.StreamResponse:
        body = await req.read()
        peer = req.transport.get_extra_info("peername")
        self.requests.append({"method": req.method, "path": req.path_qs, "body": body,
                              "headers": {k.lower(): v for k, v in req.headers.items()},
                              "peer": peer[0], "peer_port": peer[1]})
        if self.delay:
            await asyncio.sleep(self.delay)
        if req.path.startswith("/big"):
            return web.Response(body=b"z" * int(req.query.get("n", 1 << 20)))
        return web.json_response({"upstream": self.name, "method": req.method, "path": req.path_qs,
                                  "len": len(body), "headers": self.requests[-1]["headers"]})

    async def start(self) -> "EchoH1":
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self.handle)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]
        return self

    @property
    def connections(self) -> int:
        return len({r["peer_port"] for r in self.requests})

    async def stop(self) -> None:
        await self.runner.cleanup()


class RecorderH1:
    """A raw HTTP/1.1 origin that records each request's bytes (head and chunked body
    with trailers) and answers chunked with a trailer ``x-t: done``."""

    def __init__(self):
        self.received = b""
        self.requests: list[tuple[bytes, bytes]] = []
        self.port = 0
        self.server = None

    async def start(self) -> "RecorderH1":
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def _handle(self, reader, writer):
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                self.received += head
                body = b""
                low = head.lower()
                if b"transfer-encoding: chunked" in low:
                    while True:
                        line = await reader.readuntil(b"\r\n")
                        body += line
                        size = int(line.split(b";")[0], 16)
                        if size == 0:
                            while (line := await reader.readuntil(b"\r\n")) != b"\r\n":
                                body += line
                            body += line
                            break
                        body += await reader.readexactly(size + 2)
                elif b"content-length:" in low:
                    n = int(low.split(b"content-length:")[1].split(b"\r\n")[0])
                    body = await reader.readexactly(n)
                self.received += body
                self.requests.append((head, body))
                writer.write(b"HTTP/1.1 201 Created\r\ntransfer-encoding: chunked\r\ntrailer: x-t\r\n"
                             b"x-origin: recorder\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\nx-t: done\r\n\r\n")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    def stop(self) -> None:
        self.server.close()


async def run(argv: list[str], timeout: float = 30) -> tuple[int, str, str]:
    """Run a command to completion with a deadline (killed by PID on expiry)."""
    proc = await asyncio.create_subprocess_exec(*argv, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.PIPE)
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except asyncio.TimeoutError:
        proc.kill()
        await proc.wait()
        raise AssertionError(f"{argv[0]} did not finish within {timeout}s")
    return proc.returncode, out.decode(errors="replace"), err.decode(errors="replace")


def need_tool(name: str) -> str:
    """Path of an external tool; missing fails in CI and skips elsewhere."""
    path = shutil.which(name)
    if path is None:
        why = f"{name} is not installed (tests/run installs it as root)"
        if os.environ.get("CI"):
            pytest.fail(why)
        pytest.skip(why)
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def listener(upstream_port: int, name: str = "web", **extra) -> dict:
    cfg = {"listeners": [{"name": name, "port": 0, "upstream": f"127.0.0.1:{upstream_port}"}]}
    cfg.update(extra)
    return cfg


def h1_cluster(port: int, name: str = "h1app") -> dict:
    """A cluster speaking HTTP/1.1 upstream and a catch-all route to it."""
    return {"clusters": [{"name": name, "endpoints": [f"127.0.0.1:{port}"], "protocol": "http1"}],
            "routes": [{"name": f"to-{name}", "cluster": name}]}


def loads(b: bytes | str) -> dict:
    return json.loads(b)


class Nginx:
    """nginx as a real origin: one process (``master_process off``), HTTP/1.1 on
    ``h1_port`` and h2c prior knowledge on ``h2_port``, both answering ``ok``.
    Started and killed by PID; everything it writes stays in ``workdir``."""

    def __init__(self, workdir):
        self.workdir = workdir
        self.h1_port = free_port()
        self.h2_port = free_port()
        self.proc = None

    def start(self) -> "Nginx":
        import subprocess
        import time

        nginx = need_tool("nginx")
        w = self.workdir
        temps = "".join(f"{k}_temp_path {w}/{k};\n" for k in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
        conf = w / "nginx.conf"
        conf.write_text(f"""
daemon off; master_process off; worker_processes 1;
pid {w}/nginx.pid; error_log {w}/error.log warn;
events {{ worker_connections 1024; }}
http {{
  access_log off; {temps}
  keepalive_requests 100000;
  server {{ listen 127.0.0.1:{self.h1_port}; location / {{ return 200 "ok\\n"; }} }}
  server {{ listen 127.0.0.1:{self.h2_port} http2; location / {{ return 200 "ok\\n"; }} }}
}}
""")
        self.proc = subprocess.Popen([nginx, "-p", str(w), "-c", str(conf), "-e", str(w / "error.log")],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 10
        while True:
            try:
                for p in (self.h1_port, self.h2_port):
                    socket.create_connection(("127.0.0.1", p), timeout=0.5).close()
                return self
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    err = self.proc.stderr.read().decode(errors="replace") if self.proc.poll() is not None else ""
                    self.stop()
                    raise AssertionError(f"nginx did not start: {err}")
                time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
        if self.proc is not None:
            self.proc.wait(timeout=5)


async def start_ws_echo() -> tuple[web.AppRunner, int]:
    """An aiohttp WebSocket origin on ``/ws`` answering ``echo:<text>``; returns (runner, port)."""
    async def ws_handler(request):
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        async for msg in ws:
            await ws.send_str("echo:" + msg.data)
        return ws

    app = web.Application()
    app.router.add_get("/ws", ws_handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, site._server.sockets[0].getsockname()[1]
