"""HTTP/2 codec: one connection's bytes <-> ``codec/events.py`` events.

Where this sits: ``http/server.py`` drives a ``role="server"`` ``Http2Codec`` for
each downstream h2/h2c connection and ``upstream/client.py`` a ``role="client"``
one for each pooled upstream connection. They feed it what the transport read
(``receive_data``/``receive_eof``), call ``send_*`` for what the stream layer
decided, and write ``data_to_send()`` to the transport. Nothing above this module
imports h2 or nghttp2.

Two backends keep one interface and one set of event semantics (the invariants
are listed in ``_h2_codec``):

- ``nghttp2``: ``_ng_codec.NgHttp2Codec`` on libnghttp2 through cffi (ABI mode;
  only ``libnghttp2.so.14`` is needed at run time). The default when it loads:
  HTTP/2 framing and HPACK in C cost a fraction of the CPU.
- ``h2``: ``_h2_codec.H2Codec`` on the pure-Python h2 library, the fallback.

``MESHPROXY_H2_BACKEND=h2|nghttp2`` forces one (``nghttp2`` fails loudly when the
library cannot be loaded); it is read once, when this module is imported.
``BACKEND`` names the one in use; ``codec_class(name)`` gives either class.
"""

from __future__ import annotations

import logging
import os

from . import _ng_ffi
from ._h2_codec import H2Codec
from ._h2_guard import Http2Limits, StreamUnavailable

__all__ = ["BACKEND", "Http2Codec", "Http2Limits", "StreamUnavailable", "codec_class"]

log = logging.getLogger(__name__)

BACKENDS = ("nghttp2", "h2")


def codec_class(name: str) -> type:
    """The codec class of backend ``name``; raises ``_ng_ffi.Nghttp2Unavailable``
    for ``nghttp2`` when libnghttp2 cannot be loaded."""
    if name == "h2":
        return H2Codec
    if name == "nghttp2":
        try:
            from ._ng_codec import NgHttp2Codec
        except _ng_ffi.Nghttp2Unavailable:
            raise
        except (MemoryError, OSError, RuntimeError) as exc:  # e.g. no executable memory
            raise _ng_ffi.Nghttp2Unavailable(f"libnghttp2 callbacks unavailable: {exc}") from exc
        return NgHttp2Codec
    raise ValueError(f"unknown HTTP/2 backend {name!r} (expected one of {', '.join(BACKENDS)})")


def _choose() -> tuple[str, type]:
    forced = os.environ.get("MESHPROXY_H2_BACKEND", "").strip().lower()
    if forced:
        return forced, codec_class(forced)
    try:
        return "nghttp2", codec_class("nghttp2")
    except _ng_ffi.Nghttp2Unavailable as exc:
        log.debug("HTTP/2 backend h2: %s", exc)
        return "h2", H2Codec


BACKEND, Http2Codec = _choose()
log.debug("HTTP/2 codec backend: %s", BACKEND)
