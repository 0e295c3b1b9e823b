"""What both HTTP/2 backends share: the open-stream table and what connection-level events mean for it.

Where this sits: the base of ``codec/_h2_codec.H2Codec`` (h2) and
``codec/_ng_codec.NgHttp2Codec`` (libnghttp2). Each backend keeps its own frame
engine, stream records and ``_forget``; the rules here — which streams a GOAWAY
ends and with which events, how a dying connection ends its streams — are written
once so the two backends cannot drift apart.
"""

from __future__ import annotations

from .events import NO_ERROR, REFUSED_STREAM, ConnectionEnded, Reset


class StreamTable:
    """Needs, from the backend: ``_streams`` (id → stream record with ``id`` and
    ``pending``), ``_client``, ``_dead``, ``_goaway_received``, ``send_head``, ``send_data`` and ``_forget``."""

    @property
    def open_streams(self) -> int:
        """Streams not yet closed in both directions."""
        return len(self._streams)

    def pending(self, stream_id: int) -> int:
        """Bytes queued on ``stream_id`` waiting for the peer's window."""
        st = self._streams.get(stream_id)
        return st.pending if st is not None else 0

    def send_response(self, head, data: bytes) -> None:
        """A response head and its whole body: ``send_head(head)`` then ``send_data(...,
        end_stream=True)``. A backend may submit both at once (``NgHttp2Codec``)."""
        self.send_head(head)
        self.send_data(head.stream_id, data, True)

    def send_end(self, stream_id: int) -> None:
        """End the stream (empty DATA with END_STREAM), after any queued data."""
        self.send_data(stream_id, b"", True)

    def _reset_all(self, out: list, code: int, remote: bool = True) -> None:
        """The connection is gone: a ``Reset`` for every open stream."""
        for sid in list(self._streams):
            out.append(Reset(sid, code, remote))
        self._streams.clear()

    def _goaway_received_events(self, last: int, code: int, debug: bytes, out: list) -> None:
        """The peer's GOAWAY. Graceful (NO_ERROR): a client's streams above ``last`` were
        never processed, so they end with REFUSED_STREAM (safe to retry) and the rest
        complete. Any other code ends the connection and every stream with it."""
        self._goaway_received = True
        extra = {"additional_data": debug} if debug else {}
        if code == NO_ERROR:
            if self._client:
                for st in [s for s in self._streams.values() if s.id > last]:
                    self._forget(st)
                    out.append(Reset(st.id, REFUSED_STREAM, True))
            out.append(ConnectionEnded(last, code, extra))
            return
        self._dead = True
        self._reset_all(out, code)
        out.append(ConnectionEnded(last, code, extra))
