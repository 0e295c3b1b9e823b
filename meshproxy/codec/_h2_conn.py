"""The h2 connection object ``codec/http2.py`` drives, with four patches.

Where this sits: private to ``codec/_h2_codec.py`` (the h2 backend); nothing else imports it. It is
sans-IO like h2 itself: no asyncio, no sockets.

h2 (4.x) is a good frame engine, but four of its policies do not fit a proxy.
Each patch is small, overrides one documented-in-source hook, and is pinned by a
hostile test in ``tests/unit/codec/test_http2.py`` so an h2 upgrade that moves
the hook fails loudly instead of silently losing the protection:

1. *Stream limit.* h2 answers a HEADERS frame beyond its own
   MAX_CONCURRENT_STREAMS with ``TooManyStreamsError``, a connection error, and
   without decoding the header block. We still advertise the limit, but tell h2
   the limit is unbounded so it decodes the block (keeping HPACK state in step)
   and opens the stream; the codec then refuses it with RST_STREAM
   REFUSED_STREAM and the connection survives (RFC 9113 section 5.1.2).
2. *Graceful GOAWAY.* h2 moves to CLOSED on any GOAWAY (python-hyper/h2#1181),
   after which frames for in-flight streams are connection errors. On a
   received GOAWAY with NO_ERROR we put the state machine back, so streams at
   or below ``last_stream_id`` complete. A graceful GOAWAY we *send* never goes
   through h2 at all (see ``goaway_frame``).
3. *Header block size.* h2 buffers up to 64 CONTINUATION frames of up to
   MAX_FRAME_SIZE each (about 1 MiB) before decoding. ``_BoundedFrameBuffer``
   caps the compressed block instead (CONTINUATION flood, CVE-2024-27316).
4. *Content-length.* h2 raises a connection error when a body disagrees with
   its content-length; ``LengthCheckedStream`` marks the stream instead and the
   codec resets only that stream (RFC 9113 section 8.1.1). Pinned by
   ``tests/e2e/test_h2_proxy.py::test_content_length_mismatch_is_a_stream_error_not_a_connection_error``.
"""

from __future__ import annotations

from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.exceptions import DenialOfServiceError
from h2.frame_buffer import FrameBuffer
from h2.settings import Settings, SettingCodes
from h2.stream import H2Stream
from hyperframe.frame import ContinuationFrame, GoAwayFrame, HeadersFrame

UNBOUNDED_STREAMS = 2**31 - 1


class _AdvertisedLimitSettings(Settings):
    """Settings that advertise MAX_CONCURRENT_STREAMS but hide it from h2's own
    check (patch 1); ``items()`` still serialises the advertised value."""

    @property  # type: ignore[override]
    def max_concurrent_streams(self) -> int:
        return UNBOUNDED_STREAMS


class _BoundedFrameBuffer(FrameBuffer):
    """A FrameBuffer that refuses header blocks (HEADERS + CONTINUATION*) whose
    compressed size exceeds ``max_block`` (patch 3). Raising h2's
    ``DenialOfServiceError`` makes h2 queue GOAWAY ENHANCE_YOUR_CALM."""

    def __init__(self, server: bool, max_block: int) -> None:
        super().__init__(server=server)
        self._max_block = max_block
        self._block_size = 0

    def _update_header_buffer(self, f):  # type: ignore[no-untyped-def]
        if isinstance(f, (HeadersFrame, ContinuationFrame)):
            if isinstance(f, HeadersFrame) and not self._headers_buffer:
                self._block_size = 0
            self._block_size += len(f.data)
            if self._block_size > self._max_block:
                raise DenialOfServiceError(
                    f"header block larger than {self._max_block} bytes"
                )
        return super()._update_header_buffer(f)


class LengthCheckedStream(H2Stream):
    """Patch 4: a body that disagrees with its content-length marks the stream
    (``length_mismatch``) instead of raising, which h2 turns into a connection
    error; RFC 9113 section 8.1.1 makes it a stream error, and the codec resets
    just that stream."""

    length_mismatch = False

    def _track_content_length(self, length: int, end_stream: bool) -> None:
        self._actual_content_length += length
        expected = self._expected_content_length
        if expected is not None and (expected < self._actual_content_length
                                     or (end_stream and expected != self._actual_content_length)):
            self.length_mismatch = True


class PatchedH2Connection(H2Connection):
    """``H2Connection`` with the patches of this module applied."""

    def __init__(
        self,
        *,
        client_side: bool,
        max_concurrent_streams: int,
        initial_window_size: int,
        max_header_list_size: int,
        max_header_block: int,
        decoder_hard_limit: int,
    ) -> None:
        config = H2Configuration(
            client_side=client_side,
            header_encoding=None,
            # The codec validates and normalises in one pass of its own
            # (``_h2_headers``): h2's generator chain is slower, and it turns a
            # malformed request into a connection error where RFC 9113
            # section 8.1.1 asks for a stream error.
            validate_inbound_headers=False,
            normalize_inbound_headers=False,
            validate_outbound_headers=False,
            normalize_outbound_headers=False,
        )
        super().__init__(config=config)
        self.local_settings = _AdvertisedLimitSettings(
            client=client_side,
            initial_values={
                SettingCodes.MAX_CONCURRENT_STREAMS: max_concurrent_streams,
                SettingCodes.INITIAL_WINDOW_SIZE: initial_window_size,
                SettingCodes.MAX_HEADER_LIST_SIZE: max_header_list_size,
                SettingCodes.ENABLE_PUSH: 0,
            },
        )
        # Decoding stops (connection error) only far beyond the advertised
        # size; between the two the codec answers a stream-level 431.
        self.decoder.max_header_list_size = decoder_hard_limit
        self.incoming_buffer = _BoundedFrameBuffer(
            server=not client_side, max_block=max_header_block
        )

    def _begin_new_stream(self, stream_id, allowed_ids):  # type: ignore[no-untyped-def]
        stream = super()._begin_new_stream(stream_id, allowed_ids)
        stream.__class__ = LengthCheckedStream  # patch 4
        return stream

    def _receive_goaway_frame(self, frame):  # type: ignore[no-untyped-def]
        state = self.state_machine.state
        frames, events = super()._receive_goaway_frame(frame)
        if frame.error_code == 0:  # graceful: keep in-flight streams alive (patch 2)
            self.state_machine.state = state
        return frames, events


def goaway_frame(last_stream_id: int, error_code: int = 0, debug: bytes = b"") -> bytes:
    """Serialise a GOAWAY without telling h2, whose state machine would refuse
    every later frame on in-flight streams (patch 2)."""
    f = GoAwayFrame(stream_id=0, last_stream_id=last_stream_id, error_code=error_code,
                    additional_data=debug)
    return f.serialize()
