"""The access log: one JSON line per finished request, with Envoy's/Istio's field names.

Where this sits: beside the HTTP path. ``app.py`` calls ``make_access_log(cfg.access_log)``
once (None when disabled: the request path then skips logging with one ``is None``
test), ``reopen()`` on SIGHUP and ``close()`` on exit, after the last request.
``http/server.py`` calls ``log(entry)`` when a request ends (after the response was
sent or the stream was reset); ``entry_for(head, ...)`` fills the request-derived
keys from a ``RequestHead`` in one pass over its headers.

Rules:

1. ``log()`` never writes: it encodes the line and buffers it. The buffer is
   written in one batch at most ``flush_interval`` (100 ms) later via
   ``loop.call_later``, at once when it holds ``max_buffer_bytes``, and on
   ``close()``/``reopen()``/``flush()``. Outside a running loop ``log()`` writes at once.
2. Keys (``FIELDS``, in this order; Istio's default JSON format plus trace ids):

   ===============================  ===========================================================
   start_time                       request start; ``time.time()`` float, written as
                                    ISO-8601 UTC with ms (``2024-05-01T12:00:00.123Z``); a str
                                    is written as is
   method, path, protocol           ``GET``; path with query as received; ``HTTP/1.1``/``HTTP/2``
   response_code                    int, 0 when no response was sent
   response_flags                   Envoy flags (``UF,URX``); ``-`` when none (never null)
   response_code_details            optional, e.g. ``via_upstream``, ``route_not_found``
   connection_termination_details   optional
   upstream_transport_failure_reason optional
   bytes_received, bytes_sent       request / response body bytes (ints)
   duration                         ms from start to last byte sent (int; floats truncated)
   upstream_service_time            ms the upstream took to answer (int, optional)
   x_forwarded_for, user_agent,     request header values
   request_id, authority
   upstream_host, upstream_cluster, ``ip:port`` of the chosen endpoint; cluster name;
   upstream_local_address           our address on the upstream connection
   downstream_local_address,        ``ip:port`` of our listener (the original destination
   downstream_remote_address        for captured traffic); ``ip:port`` of the client
   requested_server_name            TLS SNI
   route_name                       name of the matched route
   traceparent, trace_id            W3C traceparent sent upstream; its 32-hex trace id
                                    (taken from ``traceparent`` when not given)
   ===============================  ===========================================================

   Missing keys and None are written as ``null``; ``bytes`` values are decoded as
   UTF-8 (undecodable bytes as ``\\xNN``). Keys not listed are appended after these.
3. Writing fails softly: an ``OSError`` drops the batch, counts the lines in
   ``dropped`` and logs one warning; requests are never failed by the access log.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import time
from typing import TYPE_CHECKING, Any, TextIO

if TYPE_CHECKING:
    from ..codec.events import RequestHead
    from ..config.routing import AccessLog

log = logging.getLogger("meshproxy.access_log")

FIELDS = (
    "start_time", "method", "path", "protocol", "response_code", "response_flags", "response_code_details",
    "connection_termination_details", "upstream_transport_failure_reason", "bytes_received", "bytes_sent",
    "duration", "upstream_service_time", "x_forwarded_for", "user_agent", "request_id", "authority",
    "upstream_host", "upstream_cluster", "upstream_local_address", "downstream_local_address",
    "downstream_remote_address", "requested_server_name", "route_name", "traceparent", "trace_id",
)
"""Every key written, in order."""
_FIELD_SET = frozenset(FIELDS)
_MS_FIELDS = ("duration", "upstream_service_time")

PROTOCOLS = {"1.0": "HTTP/1.0", "1.1": "HTTP/1.1", "2": "HTTP/2"}
"""``RequestHead.http_version`` → the ``protocol`` field."""

_encode = json.JSONEncoder(separators=(",", ":")).encode


def make_access_log(cfg: AccessLog) -> AccessLogger | None:
    """An ``AccessLogger`` for ``cfg``, or None when the access log is disabled."""
    if not cfg.enabled:
        return None
    return AccessLogger(cfg.path)


class AccessLogger:
    """Buffers JSON lines and writes them in batches to stdout (``path == "-"``) or
    appends them to a file opened once."""

    def __init__(self, path: str = "-", *, flush_interval: float = 0.1, max_buffer_bytes: int = 256 * 1024):
        self.path = path
        self.flush_interval = flush_interval
        self.max_buffer_bytes = max_buffer_bytes
        self.dropped = 0
        """Lines lost to write errors or logged after ``close()``."""
        self._buf: list[str] = []
        self._size = 0
        self._timer: asyncio.TimerHandle | None = None
        self._file: TextIO | None = None
        self._closed = False
        self._warned = False
        self._time_cache: tuple[int, str] = (-1, "")
        if path != "-":
            self._file = open(path, "a", encoding="utf-8", newline="\n")

    def log(self, entry: dict[str, Any]) -> None:
        """Buffer one request's line; ``entry`` uses the keys in ``FIELDS``."""
        if self._closed:
            self.dropped += 1
            return
        line = self.encode(entry)
        self._buf.append(line)
        self._size += len(line)
        if self._size >= self.max_buffer_bytes:
            self.flush()
        elif self._timer is None:
            loop = asyncio._get_running_loop()
            if loop is None:
                self.flush()
            else:
                self._timer = loop.call_later(self.flush_interval, self._on_timer)

    def encode(self, entry: dict[str, Any]) -> str:
        """``entry`` → one JSON line (with its ``\\n``), keys in ``FIELDS`` order."""
        out: dict[str, Any] = {}
        get = entry.get
        for key in FIELDS:
            v = get(key)
            if type(v) is bytes:
                v = v.decode("utf-8", "backslashreplace")
            out[key] = v
        st = out["start_time"]
        if isinstance(st, (int, float)) and not isinstance(st, bool):
            out["start_time"] = self._iso(st)
        for key in _MS_FIELDS:
            if type(out[key]) is float:
                out[key] = int(out[key])
        if not out["response_flags"]:
            out["response_flags"] = "-"
        tp = out["traceparent"]
        if out["trace_id"] is None and type(tp) is str and len(tp) >= 35:
            out["trace_id"] = tp[3:35]
        for k, v in entry.items():
            if k not in _FIELD_SET:
                out[k] = v.decode("utf-8", "backslashreplace") if type(v) is bytes else v
        return _encode(out) + "\n"

    def _iso(self, t: float) -> str:
        sec = int(t)
        cached_sec, prefix = self._time_cache
        if sec != cached_sec:
            prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec))
            self._time_cache = (sec, prefix)
        return f"{prefix}.{int((t - sec) * 1000):03d}Z"

    def _on_timer(self) -> None:
        self._timer = None
        self.flush()

    def flush(self) -> None:
        """Write the buffered lines now, in one write."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._buf:
            return
        data = "".join(self._buf)
        n = len(self._buf)
        self._buf.clear()
        self._size = 0
        try:
            f = self._file if self._file is not None else sys.stdout
            f.write(data)
            f.flush()
        except (OSError, ValueError) as e:  # ValueError: the stream was closed under us
            self.dropped += n
            if not self._warned:
                self._warned = True
                log.warning("access log: cannot write to %s (%s); dropping lines", self.path, e)

    def reopen(self) -> None:
        """Flush, then reopen the file (after log rotation; on SIGHUP). No-op for stdout."""
        self.flush()
        if self._file is not None and not self._closed:
            self._file.close()
            self._file = open(self.path, "a", encoding="utf-8", newline="\n")
            self._warned = False

    def close(self) -> None:
        """Flush and close the file; later ``log()`` calls are dropped."""
        if self._closed:
            return
        self.flush()
        self._closed = True
        if self._file is not None:
            self._file.close()


def entry_for(head: RequestHead, **fields: Any) -> dict[str, Any]:
    """The request-derived keys of an entry (method, path, protocol, authority,
    user_agent, x_forwarded_for, request_id, traceparent), read from ``head``, with
    ``fields`` (the outcome: response_code, durations, addresses ...) added over them."""
    entry: dict[str, Any] = {
        "method": head.method,
        "path": head.target,
        "protocol": PROTOCOLS.get(head.http_version, head.http_version),
        "authority": head.authority,
    }
    xff = None
    for name, value in head.headers:
        if name == b"user-agent":
            entry["user_agent"] = value
        elif name == b"x-request-id":
            entry["request_id"] = value
        elif name == b"x-forwarded-for":
            xff = value if xff is None else xff + b"," + value
        elif name == b"traceparent":
            entry["traceparent"] = value
    if xff is not None:
        entry["x_forwarded_for"] = xff
    entry.update(fields)
    return entry
