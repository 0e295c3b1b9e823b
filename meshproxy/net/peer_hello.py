"""Peer metadata exchange between sidecars: one line each way at the start of every mTLS connection.

Where this sits: ``net/tls_layer.py`` sends ``Mesh.hello`` (made here by ``encode``)
as the first plaintext of each mTLS connection between sidecars, on both sides,
right after the handshake, and takes the peer's line off the front of the stream
with ``HelloReader`` before any byte reaches the protocol on top. The inbound side
waits for it before it picks that protocol, so the connection's
``net.mesh.PeerInfo`` names the calling workload and Istio's ``source_workload``,
``source_app``, ``source_version`` and ``source_cluster`` labels are filled in
(``observe/metrics.istio_labels``). Istio does the same job with its metadata
exchange (the ``istio-peer-exchange`` ALPN for TCP, ``x-envoy-peer-metadata``
headers for HTTP); one line per connection costs nothing per request.

The line: ``MESHPROXY-PEER <JSON object>\\n`` with string values for ``workload``,
``app``, ``version``, ``cluster``, ``canonical_service`` and ``canonical_revision``
(others are ignored, missing ones are unknown), at most ``MAX_LINE`` bytes. The
peer's namespace and principal are not taken from it: they come from its verified
certificate. Pure: no I/O.
"""

from __future__ import annotations

import json

MAGIC = b"MESHPROXY-PEER "
MAX_LINE = 2048
"""Bytes a peer's line may take, newline included."""
KEYS = ("workload", "app", "version", "cluster", "canonical_service", "canonical_revision")
_NOT_A_HELLO = "the peer did not start with its metadata line (not a meshproxy sidecar?)"


class HelloError(ValueError):
    """The peer's first line is not a hello: the connection is not a meshproxy sidecar's."""


def encode(workload: str, app: str, version: str, cluster: str, canonical_service: str = "",
           canonical_revision: str = "") -> bytes:
    """Our line (``unknown`` or empty values are sent as they are: the peer labels them unknown)."""
    body = json.dumps({"workload": workload, "app": app, "version": version, "cluster": cluster,
                       "canonical_service": canonical_service, "canonical_revision": canonical_revision},
                      separators=(",", ":"), ensure_ascii=True).encode()
    line = MAGIC + body + b"\n"
    if len(line) > MAX_LINE:
        raise ValueError(f"peer metadata line of {len(line)} bytes is over {MAX_LINE}")
    return line


def decode(line: bytes) -> dict[str, str]:
    """The peer's metadata from its line (without the newline); ``HelloError`` when it is not one."""
    if not line.startswith(MAGIC):
        raise HelloError(_NOT_A_HELLO)
    try:
        data = json.loads(line[len(MAGIC):])
    except (ValueError, UnicodeDecodeError):
        raise HelloError("the peer's metadata line is not JSON") from None
    if not isinstance(data, dict):
        raise HelloError("the peer's metadata line is not a JSON object")
    return {k: v for k in KEYS if isinstance(v := data.get(k), str) and v and v != "unknown"}


def label_values(metadata: dict[str, str] | None) -> tuple[str, ...]:
    """The values of ``KEYS`` in order, for Istio's labels; ``unknown`` for what is missing."""
    md = metadata or {}
    return tuple(md.get(k, "unknown") for k in KEYS)


class HelloReader:
    """Collects the peer's line from the first decrypted chunks: ``feed(chunk)`` returns the
    bytes after the line once it is complete (possibly empty), None while more is needed;
    ``metadata`` is set then. Raises ``HelloError`` on a malformed or oversized line."""

    __slots__ = ("buf", "metadata")

    def __init__(self) -> None:
        self.buf = b""
        self.metadata: dict[str, str] | None = None

    def feed(self, chunk: bytes) -> bytes | None:
        buf = self.buf + chunk
        end = buf.find(b"\n", 0, MAX_LINE)
        if end < 0:
            if not MAGIC.startswith(buf[:len(MAGIC)]):
                raise HelloError(_NOT_A_HELLO)
            if len(buf) >= MAX_LINE:
                raise HelloError(f"the peer's metadata line is over {MAX_LINE} bytes")
            self.buf = buf
            return None
        self.metadata = decode(buf[:end])
        self.buf = b""
        return buf[end + 1:]
