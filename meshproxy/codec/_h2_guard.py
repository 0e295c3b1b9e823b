"""Abuse protections for one HTTP/2 connection: the limits and their counters.

Where this sits: private to the HTTP/2 backends (``_h2_codec``, ``_ng_codec``),
which report what the peer did (``Guard.control_frame`` ...) and turn a returned
reason into GOAWAY ENHANCE_YOUR_CALM. Pure counting: no h2, no I/O, no clock.
Defaults and semantics follow Envoy (``envoy.config.core.v3.Http2ProtocolOptions``
and the 1.27.1 premature-reset overload rule). ``Http2Limits`` and
``StreamUnavailable`` are re-exported by ``codec/http2.py``.
"""

from __future__ import annotations

from dataclasses import dataclass


class StreamUnavailable(RuntimeError):
    """``send_head`` (client role) on a connection that cannot open a stream now:
    check ``can_open_stream()`` first and use another connection."""


@dataclass(frozen=True, slots=True)
class Http2Limits:
    """Protections and windows for one connection; defaults follow Envoy's."""

    max_concurrent_streams: int = 100
    """Advertised SETTINGS_MAX_CONCURRENT_STREAMS; streams beyond it get
    RST_STREAM REFUSED_STREAM and the connection survives."""
    max_header_list_size: int = 60 * 1024
    """Advertised SETTINGS_MAX_HEADER_LIST_SIZE (Envoy max_request_headers_kb=60).
    A request over it gets ``ProtocolError(stream_id, 431, connection_fatal=False)``;
    a header block over twice it is a connection error."""
    max_headers_count: int = 100
    """Envoy max_headers_count: more fields than this is treated like too large."""
    initial_stream_window: int = 256 * 1024
    """SETTINGS_INITIAL_WINDOW_SIZE: what a peer may send per stream before ``ack()``."""
    initial_connection_window: int = 1024 * 1024
    """Connection receive window, opened by a WINDOW_UPDATE right after the preface."""
    max_outbound_control_frames: int = 1000
    """Envoy max_outbound_control_frames: PING/SETTINGS ACKs and RST_STREAMs the peer
    made us queue and ``data_to_send()`` has not drained yet (PING/SETTINGS flood)."""
    max_consecutive_empty_frames: int = 1
    """Envoy max_consecutive_inbound_frames_with_empty_payload (empty DATA flood)."""
    premature_reset_total_stream_count: int = 500
    """Envoy 1.27.1 overload.premature_reset_total_stream_count (CVE-2023-44487):
    GOAWAY once streams the client reset before any response reach half of this,
    or half of all closed streams once this many have closed."""


class Guard:
    """Counters behind ``Http2Limits``; each report returns a reason to GOAWAY
    ENHANCE_YOUR_CALM, or None."""

    __slots__ = ("limits", "control_queued", "empty_frames", "closed", "premature")

    def __init__(self, limits: Http2Limits) -> None:
        self.limits = limits
        self.control_queued = 0
        """Control frames queued since the last ``data_to_send()``."""
        self.empty_frames = 0
        """Consecutive DATA frames with no payload and no END_STREAM."""
        self.closed = 0
        """Streams closed on this connection, however they ended."""
        self.premature = 0
        """Streams the client reset before a final response was sent."""

    def control_frame(self) -> str | None:
        self.control_queued += 1
        if self.control_queued > self.limits.max_outbound_control_frames:
            return "outbound control frame flood"
        return None

    def empty_frame(self) -> str | None:
        self.empty_frames += 1
        if self.empty_frames > self.limits.max_consecutive_empty_frames:
            return "empty frame flood"
        return None

    def premature_reset(self) -> str | None:
        """A client reset an unanswered stream (already counted in ``closed``)."""
        self.premature += 1
        limit = self.limits.premature_reset_total_stream_count
        bad2, closed = 2 * self.premature, self.closed
        if (bad2 >= limit) if closed < limit else (bad2 >= closed):
            return "too many premature stream resets"
        return None
