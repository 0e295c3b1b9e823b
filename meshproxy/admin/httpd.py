"""A small HTTP/1.1 server for the admin, health and Prometheus sites, on meshproxy's own codec.

Where this sits: beside the data flow. ``admin/server.py`` defines the routes
(path → method → handler) and starts one ``Site`` per address. It reuses
``codec/http1.py`` (httptools) instead of aiohttp: aiohttp alone costs about
11 MiB of resident memory, a quarter of the sidecar's idle budget, for a handful
of plain-text endpoints.

Rules: keep-alive and pipelining come from the codec; an unknown path is 404; a
known path with another method is 405 with ``allow``; request bodies are read
and ignored (capped at 64 KiB: larger → 413); a handler that raises answers 500
and is logged.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Callable
from urllib.parse import parse_qsl

from ..codec.events import Data, EndStream, ProtocolError, RequestHead, ResponseHead
from ..codec.http1 import Http1Codec
from ..net.sockets import listen_socket

log = logging.getLogger("meshproxy.admin")

MAX_BODY = 64 * 1024


@dataclass(slots=True)
class Request:
    method: str
    path: str
    query: dict[str, str] = field(default_factory=dict)


@dataclass(slots=True)
class Response:
    status: int = 200
    body: bytes | str = b""
    content_type: str = "text/plain; charset=utf-8"
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)


Handler = Callable[[Request], Response]
Routes = dict[str, dict[str, Handler]]


class _Conn(asyncio.Protocol):
    def __init__(self, routes: Routes):
        self.routes = routes
        self.codec = Http1Codec("server")
        self.transport: asyncio.Transport | None = None
        self.current: dict[int, tuple[RequestHead, int]] = {}

    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        for ev in self.codec.receive_data(data):
            t = type(ev)
            if t is RequestHead:
                self.current[ev.stream_id] = (ev, 0)
            elif t is Data:
                head, size = self.current.get(ev.stream_id, (None, 0))
                if head is not None:
                    self.current[ev.stream_id] = (head, size + len(ev.data))
            elif t is EndStream:
                head, size = self.current.pop(ev.stream_id, (None, 0))
                if head is not None:
                    self._answer(head, size)
            elif t is ProtocolError:
                self._send(ev.stream_id, Response(ev.status, f"{ev.message}\n"), keep_alive=False)
        self._flush()

    def eof_received(self):
        return True if self.current else None

    def _answer(self, head: RequestHead, size: int) -> None:
        target = head.target.decode("latin-1")
        path, _, qs = target.partition("?")
        methods = self.routes.get(path)
        if size > MAX_BODY:
            resp = Response(413, "request body too large\n")
        elif methods is None:
            resp = Response(404, f"no such path: {path}\n")
        elif head.method.decode("latin-1") not in methods:
            allow = ", ".join(sorted(methods))
            resp = Response(405, f"method not allowed; use {allow}\n", headers=[(b"allow", allow.encode())])
        else:
            try:
                resp = methods[head.method.decode("latin-1")](
                    Request(head.method.decode("latin-1"), path, dict(parse_qsl(qs))))
            except Exception:
                log.exception("admin handler for %s failed", path)
                resp = Response(500, "internal error\n")
        self._send(head.stream_id, resp, keep_alive=head.keep_alive)

    def _send(self, sid: int, resp: Response, keep_alive: bool) -> None:
        body = resp.body.encode() if isinstance(resp.body, str) else resp.body
        headers = [(b"content-type", resp.content_type.encode()), *resp.headers]
        self.codec.send_head(ResponseHead(sid, resp.status, headers, keep_alive=keep_alive,
                                          content_length=len(body)))
        self.codec.send_data(sid, body, True)

    def _flush(self) -> None:
        data = self.codec.data_to_send()
        if data and self.transport is not None:
            self.transport.write(data)
        if self.codec.should_close and not self.current and self.transport is not None:
            self.transport.close()


class Site:
    """One listening address serving ``routes``."""

    def __init__(self, routes: Routes):
        self.routes = routes
        self.server: asyncio.AbstractServer | None = None
        self.bound: tuple[str, int] | None = None

    async def start(self, host: str, port: int) -> None:
        sock = listen_socket(host, port, backlog=128)
        self.bound = sock.getsockname()[:2]
        self.server = await asyncio.get_running_loop().create_server(lambda: _Conn(self.routes), sock=sock)

    def close(self) -> None:
        if self.server is not None:
            self.server.close()
            self.server = None
