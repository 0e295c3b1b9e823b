"""TLS inside our own protocol, through ``ssl.MemoryBIO``: terminate mTLS on a
connection whose first bytes were already read by protocol detection.

Where this sits: ``net/listener.py`` installs a ``TlsLayer`` on an accepted
transport when detection saw a ClientHello with meshproxy's ALPN; the peeked
ClientHello is fed first, so nothing is lost (``loop.start_tls`` cannot do that:
it expects the handshake to start on the socket). After the handshake
``on_ready(layer)`` runs; the caller verifies the peer identity and puts the
next protocol (HTTP server or L4 relay) on top with ``layer.set_protocol``. To
that protocol the layer *is* the transport (``write``, ``pause_reading``,
``get_extra_info("ssl_object")`` ...).

Invariants:
1. Every decrypted byte reaches the inner protocol in order; every byte the
   inner protocol writes is encrypted in order; output of one call is one
   transport write.
2. Flow control passes straight through: the raw transport's pause/resume
   writing reaches the inner protocol; the inner protocol's pause/resume reading
   reaches the raw transport.
3. A handshake failure closes the connection and reports once through
   ``on_fail``; the inner protocol never sees it.
"""

from __future__ import annotations

import asyncio
import ssl
from typing import Callable

_READ = 256 * 1024


class TlsLayer(asyncio.Protocol):
    def __init__(self, raw: asyncio.Transport, context: ssl.SSLContext,
                 on_ready: Callable[["TlsLayer"], None], on_fail: Callable[[str], None],
                 handshake_timeout: float = 10.0, loop: asyncio.AbstractEventLoop | None = None):
        self.raw = raw
        self.incoming = ssl.MemoryBIO()
        self.outgoing = ssl.MemoryBIO()
        self.sslobj = context.wrap_bio(self.incoming, self.outgoing, server_side=True)
        self.on_ready = on_ready
        self.on_fail = on_fail
        self.inner: asyncio.Protocol | None = None
        self.handshaken = False
        self.closing = False
        self.eof_seen = False
        self.loop = loop or asyncio.get_running_loop()
        self._timer = self.loop.call_later(handshake_timeout, self._handshake_timeout) if handshake_timeout else None

    # === raw transport side =============================================
    def data_received(self, data: bytes) -> None:
        self.incoming.write(data)
        if not self.handshaken:
            if not self._handshake():
                return
        self._read_app()

    def feed(self, data: bytes) -> None:
        """Bytes already read from the socket (the peeked ClientHello)."""
        if data:
            self.data_received(data)

    def eof_received(self) -> bool:
        self.eof_seen = True
        self.incoming.write_eof()
        if self.handshaken:
            self._read_app()
            if self.inner is not None:
                keep = self.inner.eof_received()
                if keep:
                    return True
        self.close()
        return False

    def connection_lost(self, exc) -> None:
        self.closing = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self.inner is not None:
            self.inner.connection_lost(exc)
        elif not self.handshaken:
            self._fail("connection closed during the TLS handshake")

    def pause_writing(self) -> None:
        if self.inner is not None:
            self.inner.pause_writing()

    def resume_writing(self) -> None:
        if self.inner is not None:
            self.inner.resume_writing()

    # === TLS ============================================================
    def _handshake(self) -> bool:
        try:
            self.sslobj.do_handshake()
        except ssl.SSLWantReadError:
            self._flush()
            return False
        except (ssl.SSLError, ValueError) as e:
            self._flush()
            self._fail(f"TLS handshake failed: {getattr(e, 'reason', None) or e}")
            self.raw.close()
            return False
        self._flush()
        self.handshaken = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.on_ready(self)
        return not self.closing

    def _handshake_timeout(self) -> None:
        self._timer = None
        if not self.handshaken:
            self._fail("TLS handshake timed out")
            self.raw.abort()

    def _fail(self, message: str) -> None:
        cb, self.on_fail = self.on_fail, None
        if cb is not None:
            cb(message)

    def _read_app(self) -> None:
        inner = self.inner
        while not self.closing:
            try:
                chunk = self.sslobj.read(_READ)
            except ssl.SSLWantReadError:
                break
            except ssl.SSLZeroReturnError:  # close_notify: the peer finished sending
                if inner is not None and not self.eof_seen:
                    self.eof_seen = True
                    if not inner.eof_received():
                        self.close()
                break
            except ssl.SSLError:
                self.abort()
                break
            if not chunk:
                break
            if inner is not None:
                inner.data_received(chunk)
        self._flush()  # key updates, session tickets

    def _flush(self) -> None:
        data = self.outgoing.read()
        if data and not self.raw.is_closing():
            self.raw.write(data)

    # === the transport the inner protocol sees ==========================
    def set_protocol(self, protocol: asyncio.Protocol) -> None:
        self.inner = protocol

    def get_protocol(self) -> asyncio.Protocol | None:
        return self.inner

    def write(self, data) -> None:
        if self.closing:
            return
        try:
            self.sslobj.write(data)
        except ssl.SSLError:
            self.abort()
            return
        self._flush()

    def writelines(self, chunks) -> None:
        self.write(b"".join(chunks))

    def can_write_eof(self) -> bool:
        return False

    def write_eof(self) -> None:
        raise NotImplementedError("TLS connections close as a whole")

    def close(self) -> None:
        if self.closing:
            return
        self.closing = True
        if self.handshaken:
            try:
                self.sslobj.unwrap()
            except ssl.SSLError:
                pass
            self._flush()
        self.raw.close()

    def abort(self) -> None:
        self.closing = True
        self.raw.abort()

    def is_closing(self) -> bool:
        return self.closing or self.raw.is_closing()

    def pause_reading(self) -> None:
        self.raw.pause_reading()

    def resume_reading(self) -> None:
        if not self.closing:
            self.raw.resume_reading()

    def is_reading(self) -> bool:
        return self.raw.is_reading()

    def set_write_buffer_limits(self, high=None, low=None) -> None:
        self.raw.set_write_buffer_limits(high, low)

    def get_write_buffer_size(self) -> int:
        return self.raw.get_write_buffer_size()

    def get_extra_info(self, name, default=None):
        if name == "ssl_object":
            return self.sslobj
        if name == "peercert":
            return self.sslobj.getpeercert()
        if name == "cipher":
            return self.sslobj.cipher()
        return self.raw.get_extra_info(name, default)
