"""Outbound flow control: per-stream send queues released as windows open.

Where this sits: private to ``codec/_h2_codec.py`` (the h2 backend). ``flush`` moves queued body bytes
into h2 as far as the peer's stream and connection windows (and its
MAX_FRAME_SIZE) allow, then the deferred END_STREAM or trailers once nothing is
left. It never calls ``send_data`` beyond the window, so h2 never raises
``FlowControlError`` on our behalf.
"""

from __future__ import annotations

from collections import deque

from h2.connection import H2Connection


class Stream:
    """One stream's send queue and lifecycle flags, as the codec sees them."""

    __slots__ = ("id", "queue", "pending", "end_requested", "trailers", "local_ended",
                 "remote_ended", "responded", "rejected")

    def __init__(self, stream_id: int) -> None:
        self.id = stream_id
        self.queue: deque = deque()
        """Body chunks (bytes or memoryview) waiting for window, in order."""
        self.pending = 0
        """Total bytes in ``queue``."""
        self.end_requested = False
        """The caller has ended its side; END_STREAM goes after the queue."""
        self.trailers: list | None = None
        """Encoded-ready trailer fields to send instead of an empty END_STREAM."""
        self.local_ended = False
        """END_STREAM has been handed to h2."""
        self.remote_ended = False
        """The peer's END_STREAM has been received."""
        self.responded = False
        """Server role: a final (>= 200) response head was sent."""
        self.rejected = False
        """Server role: refused with a local 431; its inbound events are swallowed."""


def flush(conn: H2Connection, st: Stream) -> bool:
    """Send what the windows allow from ``st.queue``; once it is empty and the end
    was requested, send END_STREAM (or the trailers). Returns True when the
    queue is empty, False when it waits for WINDOW_UPDATE."""
    sid, q = st.id, st.queue
    ended = False
    while q:
        window = conn.local_flow_control_window(sid)
        if window <= 0:
            return False
        chunk = q[0]
        size = min(len(chunk), window, conn.max_outbound_frame_size)
        if size == len(chunk):
            q.popleft()
        else:
            view = memoryview(chunk)
            q[0], chunk = view[size:], view[:size]
        st.pending -= size
        ended = not q and st.end_requested and st.trailers is None
        conn.send_data(sid, chunk, end_stream=ended)
    if st.end_requested and not st.local_ended:
        if st.trailers is not None:
            conn.send_headers(sid, st.trailers, end_stream=True)
        elif not ended:
            conn.end_stream(sid)
        st.local_ended = True
    return True
