"""TLS inside our own protocol, through ``ssl.MemoryBIO``, for both ends of mTLS
between sidecars.

Where this sits: server side, ``net/inbound_mtls.py`` installs a ``TlsLayer`` on
an accepted transport when detection saw a ClientHello with meshproxy's ALPN;
the peeked ClientHello is fed first, so nothing is lost (``loop.start_tls``
cannot do that). Client side, ``connect_tls`` opens a connection to a peer
sidecar for the relay and the upstream pool. After the handshake the next
protocol is put on top with ``layer.attach(protocol)``; to it the layer *is* the
transport (``write``, ``write_eof``, ``pause_reading``,
``get_extra_info("ssl_object")`` ...).

Why our own layer rather than the loop's TLS transport: (a) replaying peeked
bytes; (b) the client checks the server's SPIFFE ID after ``do_handshake``
returns but *before* its Finished message leaves, so a server with the wrong
identity never completes its handshake and never opens a connection to its app;
(c) TLS 1.3 half-close: ``write_eof`` sends close_notify and reading goes on.

Invariants:
1. Every decrypted byte reaches the inner protocol in order; every byte the
   inner protocol writes is encrypted in order; output of one call is one
   transport write.
2. Flow control passes straight through: the raw transport's pause/resume
   writing reaches the inner protocol; the inner protocol's pause/resume reading
   reaches the raw transport.
3. A handshake failure closes the connection and reports once through
   ``on_fail``; the inner protocol never sees it.
4. Between sidecars (``hello`` given) each side's first plaintext is its peer
   metadata line (``net/peer_hello.py``); the peer's line never reaches the inner
   protocol, and a connection whose first line is not one is closed. The server
   side is ready (``on_ready``) only with the client's line in hand.
"""

from __future__ import annotations

import asyncio
import ssl
from typing import Any, Callable

from .peer_hello import HelloError, HelloReader, label_values

_READ = 16 * 1024
"""Bytes asked of ``SSLObject.read``: one TLS record's plaintext at most (RFC 8446 section 5.1),
which is all one call returns anyway. A larger request costs more, not less: ``read(n)``
allocates ``n`` bytes before shrinking them to what it got. At 256 KiB that allocation is
above glibc's mmap threshold until something raises it: then every record costs an
mmap/mremap/munmap (about 15 us a record here; ``bench/micro_tls_read.py``)."""


class TlsLayer(asyncio.Protocol):
    def __init__(self, raw: asyncio.Transport | None, context: ssl.SSLContext,
                 on_ready: Callable[["TlsLayer"], None], on_fail: Callable[[str], None],
                 handshake_timeout: float = 10.0, loop: asyncio.AbstractEventLoop | None = None,
                 server_side: bool = True, verify: Callable[[ssl.SSLObject], object] | None = None,
                 hello: bytes = b""):
        """``raw`` is the accepted transport (server side) or None (client side: set by
        ``connection_made``). ``verify(ssl_object)`` (client side) raises to refuse the
        server before our Finished message is sent. ``hello``: our peer metadata line
        (``net/peer_hello.py``), sent first after the handshake; with it, the peer's line is
        expected first too and taken off the stream (``peer_metadata``), and the server side
        calls ``on_ready`` only once it has arrived."""
        self.raw: Any = raw
        """The TCP transport under the layer (None on the client side until ``connection_made``)."""
        self.incoming = ssl.MemoryBIO()
        self.outgoing = ssl.MemoryBIO()
        self.sslobj = context.wrap_bio(self.incoming, self.outgoing, server_side=server_side)
        self.core: Any = getattr(self.sslobj, "_sslobj", self.sslobj)
        """What does the work under ``sslobj``: the ``_ssl`` C object that ``ssl.SSLObject`` wraps in
        one-line Python methods. The per-record calls (``read``, ``write``, ``pending``) go to it
        directly, which saves an interpreted frame per call; the wrapper serves everything else."""
        self.on_ready = on_ready
        self.on_fail: Callable[[str], None] | None = on_fail
        self.verify = verify
        self.inner: asyncio.Protocol | None = None
        self.backlog: list[bytes] = []
        """Decrypted bytes that arrived before ``attach``."""
        self.handshaken = False
        self.closing = False
        self.eof_seen = False
        """The peer sent close_notify (or the socket hit EOF)."""
        self.eof_sent = False
        self.lost: tuple | None = None
        """``(exc,)`` once the raw connection is gone before a protocol was attached."""
        self.hello = hello
        self.hello_reader: HelloReader | None = HelloReader() if hello else None
        """Reads the peer's metadata line; None once it was read (or without a hello)."""
        self.peer_metadata: dict[str, str] | None = None
        """The peer's workload/app/version/cluster from its line (``peer_hello.decode``)."""
        self.verified: str | None = None
        """Client side: what ``verify`` returned when it is a string (the server's SPIFFE ID)."""
        self._peer_info: Any = None
        self.on_peer: Callable[["TlsLayer"], None] | None = None
        """Client side: called once the server's metadata line has arrived (``peer_info`` is set then)."""
        self.ready = False
        """``on_ready`` was called."""
        self.loop = loop or asyncio.get_running_loop()
        self._timer = self.loop.call_later(handshake_timeout, self._handshake_timeout) if handshake_timeout else None

    def connection_made(self, transport) -> None:  # client side
        self.raw = transport
        self._handshake()

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
        self.incoming.write_eof()
        if self.handshaken:
            self._read_app()
            if not self.ready:  # ended before its metadata line
                self._fail("the peer closed before its metadata line")
                self.abort()
                return False
            if not self.eof_seen:  # EOF without close_notify: still the end of the stream
                self._peer_eof()
            return not self.closing
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
            self._fail(f"connection closed during the TLS handshake{f' ({exc})' if exc else ''}")
        elif not self.ready:
            self._fail("connection closed before the peer's metadata line")
        else:
            self.lost = (exc,)  # gone between the handshake and ``attach``: tell the protocol then

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
        if self.verify is not None:
            try:
                result = self.verify(self.sslobj)
                self.verified = result if isinstance(result, str) else None
            except Exception as e:  # the wrong peer: our Finished never leaves, its handshake never ends
                self._fail(str(e) or type(e).__name__)
                self.closing = True
                self.raw.abort()
                return False
        if self.hello:
            self.core.write(self.hello)  # leaves with our Finished (client) or right after the handshake
        self._flush()
        self.handshaken = True
        if self.hello_reader is not None and self.sslobj.server_side:
            return True  # ``on_ready`` once the client's metadata line is in (``_read_app``); the timer runs on
        self._ready()
        return not self.closing

    def _ready(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.ready = True
        self.on_ready(self)

    def _handshake_timeout(self) -> None:
        self._timer = None
        if not self.ready:
            self._fail("TLS handshake timed out" if not self.handshaken else "no peer metadata line in time")
            self.abort()

    def _fail(self, message: str) -> None:
        cb, self.on_fail = self.on_fail, None
        if cb is not None:
            cb(message)

    def _read_app(self) -> None:
        while not self.closing and not self.eof_seen:
            try:
                chunk = self.core.read(_READ)
            except ssl.SSLWantReadError:
                break
            except ssl.SSLZeroReturnError:
                chunk = b""
            except ssl.SSLError:
                self.abort()
                break
            if not chunk:  # close_notify: the peer finished sending (it may still read)
                self._peer_eof()
                break
            if self.hello_reader is not None:
                chunk = self._after_hello(chunk)
                if not chunk:
                    continue  # the line is not complete yet, or nothing followed it
            if self.inner is not None:
                self.inner.data_received(chunk)
            else:
                self.backlog.append(chunk)
            if not self.incoming.pending and not self.core.pending():
                break  # nothing left to decrypt: skip the read that would only raise SSLWantReadError
        self._flush()  # key updates, session tickets

    def _after_hello(self, chunk: bytes) -> bytes:
        """Take the peer's metadata line off the front of the stream: what follows it in
        ``chunk`` (empty while the line is incomplete). A line that is not one fails the
        connection. The server side becomes ready here."""
        reader = self.hello_reader
        assert reader is not None
        try:
            rest = reader.feed(chunk)
        except HelloError as e:
            self._fail(str(e))
            self.abort()
            return b""
        if rest is None:
            return b""
        self.peer_metadata = reader.metadata
        self.hello_reader = None
        if not self.ready:
            self._ready()
        elif self.on_peer is not None:
            cb, self.on_peer = self.on_peer, None
            cb(self)
        return b"" if self.closing else rest

    def peer_info(self) -> Any:
        """Client side: the verified server as a ``net.mesh.PeerInfo`` (its SPIFFE ID and its
        metadata line), once that line has arrived; else None. Made once per connection."""
        p = self._peer_info
        if p is None and self.verified is not None and self.peer_metadata is not None:
            from .mesh import upstream_peer

            p = self._peer_info = upstream_peer(self.verified, label_values(self.peer_metadata))
        return p

    def _peer_eof(self) -> None:
        self.eof_seen = True
        if self.inner is None:
            return  # ``attach`` delivers it
        if not self.inner.eof_received():
            self.close()
        elif self.eof_sent:
            self.close()  # both directions are done

    def _flush(self) -> None:
        data = self.outgoing.read()
        if data and not self.raw.is_closing():
            self.raw.write(data)

    # === the transport the inner protocol sees ==========================
    def attach(self, protocol: asyncio.Protocol) -> None:
        """Put ``protocol`` on top: ``connection_made(self)``, then any bytes (and EOF)
        that arrived before it."""
        self.inner = protocol
        protocol.connection_made(self)  # type: ignore[arg-type]  # the layer is the inner protocol's transport
        backlog, self.backlog = self.backlog, []
        for chunk in backlog:
            protocol.data_received(chunk)
        if self.eof_seen:
            self.eof_seen = False
            self._peer_eof()
        if self.lost is not None:
            protocol.connection_lost(self.lost[0])

    def set_protocol(self, protocol: asyncio.Protocol) -> None:
        self.inner = protocol

    def get_protocol(self) -> asyncio.Protocol | None:
        return self.inner

    def write(self, data) -> None:
        if self.closing:
            return
        try:
            self.core.write(data)
        except ssl.SSLError:
            self.abort()
            return
        self._flush()

    def writelines(self, chunks) -> None:
        self.write(b"".join(chunks))

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        """TLS 1.3 half-close: send close_notify; reading goes on until the peer's."""
        if self.closing or self.eof_sent:
            return
        self.eof_sent = True
        try:
            self.sslobj.unwrap()
        except ssl.SSLWantReadError:
            pass
        except ssl.SSLError:
            self.abort()
            return
        self._flush()
        if self.eof_seen:
            self.close()

    def close(self) -> None:
        if self.closing:
            return
        self.closing = True
        if self.handshaken and not self.eof_sent:
            self.eof_sent = True
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


async def connect_tls(loop: asyncio.AbstractEventLoop, host: str, port: int, context: ssl.SSLContext,
                      verify: Callable[[ssl.SSLObject], object], local_addr=None, hello: bytes = b"") -> TlsLayer:
    """Connect to a peer sidecar and finish the mTLS handshake with ``verify`` accepting
    its identity; raises ``OSError``, ``ssl.SSLError`` or ``ConnectionError`` (with the
    reason) otherwise. The caller ``attach``es its protocol to the returned layer."""
    done: asyncio.Future = loop.create_future()

    def ready(layer: TlsLayer) -> None:
        if not done.done():
            done.set_result(layer)

    def failed(message: str) -> None:
        if not done.done():
            done.set_exception(ConnectionError(f"mTLS to {host}:{port}: {message}"))

    layer = TlsLayer(None, context, ready, failed, loop=loop, server_side=False, verify=verify, hello=hello)
    await loop.create_connection(lambda: layer, host, port, local_addr=local_addr)
    try:
        return await done
    except BaseException:
        layer.abort()
        raise
