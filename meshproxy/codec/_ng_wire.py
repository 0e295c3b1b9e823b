"""The C side of the nghttp2 codec: constants, header lists, callbacks.

Where this sits: between ``_ng_ffi`` (the declarations and the loaded library)
and ``_ng_codec`` (the codec, which owns every session and all stream state).
Importing it loads libnghttp2. It creates one callback table and one data
provider that every session shares; each callback finds its codec through the
session's ``user_data`` handle and calls back into it. No I/O.

Callbacks never raise into C: cffi turns an exception into
NGHTTP2_ERR_CALLBACK_FAILURE (``onerror`` keeps it in ``callback_error``), which
makes ``mem_recv``/``mem_send`` fail and the codec end the connection.
"""

from __future__ import annotations

import struct
import sys
from itertools import chain

from . import _ng_ffi, native as _native

ffi, lib = _ng_ffi.load()

VERSION = ffi.string(lib.nghttp2_version(0).version_str).decode("ascii", "replace")
"""The loaded libnghttp2's version, e.g. ``1.52.0``."""
MAX_STREAM_ID = 2**31 - 1
RESET_RATE_LIMIT = _ng_ffi.has(lib, "nghttp2_option_set_stream_reset_rate_limit")
DEFAULT_WINDOW = 65535
NULL = ffi.NULL

# nghttp2.h constants
ERR_DEFERRED = -508
ERR_CALLBACK_FAILURE = -902
ERR_BAD_CLIENT_MAGIC = -903
ERR_FLOODED = -904
ERR_TOO_MANY_CONTINUATIONS = -905
FLAG_END_STREAM = 0x1
FLAG_ACK = 0x1
DATA_EOF = 0x1
DATA_NO_END_STREAM = 0x2
HCAT_REQUEST = 0
HCAT_RESPONSE = 1
DATA, HEADERS, RST_STREAM, SETTINGS, PING, GOAWAY = 0, 1, 3, 4, 6, 7
SETTINGS_ENABLE_PUSH = 0x2
SETTINGS_MAX_CONCURRENT_STREAMS = 0x3
SETTINGS_INITIAL_WINDOW_SIZE = 0x4
SETTINGS_MAX_HEADER_LIST_SIZE = 0x6
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

# cffi's backend functions, without the ``FFI`` method wrappers (hot paths)
_backend = ffi._backend
_from_handle = _backend.from_handle
unpack = _backend.unpack
_memmove = _backend.memmove
_from_buffer = _backend.from_buffer
_cast = _backend.cast
_char_array = ffi.typeof("char[]")
_nv_array = ffi.typeof("nghttp2_nv[]")
_uintptr = ffi.typeof("uintptr_t")
_id = id


# === header lists -> nghttp2_nv[] ===

_NV_PACKED = ffi.sizeof("nghttp2_nv") == struct.calcsize("PPNNB7x") == 40
_nv_structs: dict[int, struct.Struct] = {}
_DATA_AT = sys.getsizeof(b"") - 1
"""Where a ``bytes`` object's data starts, counted from its ``id()`` (CPython's
``ob_sval``): ``id(b) + _DATA_AT`` is the pointer ``ffi.from_buffer(b)`` gives,
without the two cffi calls per field that asking for it costs."""


def _data_by_id() -> bool:
    """Whether ``id() + _DATA_AT`` is a ``bytes`` object's data pointer here: CPython,
    checked against cffi on a few objects (else ``nva`` joins the fields into one blob)."""
    if not _NV_PACKED or sys.implementation.name != "cpython":
        return False
    probes = [b"", b"x", b"abc" * 50, bytes(range(256))]
    return all(int(_cast(_uintptr, _from_buffer(_char_array, b, False))) == id(b) + _DATA_AT
               for b in probes)


_BY_ID = _data_by_id()


def _packer(n: int) -> struct.Struct:
    packer = _nv_structs.get(n)
    if packer is None:
        packer = struct.Struct("PPNNB7x" * n)
        if n <= 128:  # the usual sizes; a rare huge list is packed uncached
            _nv_structs[n] = packer
    return packer


def nva(fields: list) -> tuple:
    """``(nghttp2_nv[] cdata, count, keepalive)`` for ``fields`` (name, value)
    tuples; a tuple subclass (hpack's ``NeverIndexedHeaderTuple``) is sent with
    NGHTTP2_NV_FLAG_NO_INDEX. nghttp2 copies the fields during ``submit_*``, so
    ``keepalive`` only has to outlive that call.

    Where ``nghttp2_nv`` has the usual LP64 layout the array is one
    ``struct.pack``: setting cdata fields one by one costs several times more. On
    CPython its pointers point into the fields' own ``bytes`` (``_DATA_AT``; kept
    alive by ``fields``); otherwise, or when a field is not exactly ``bytes``, into
    one joined blob."""
    n = len(fields)
    if _BY_ID:
        args: list = []
        for f in fields:
            name, value = f
            if name.__class__ is not bytes or value.__class__ is not bytes:
                break
            args += (_id(name) + _DATA_AT, _id(value) + _DATA_AT, len(name), len(value),
                     f.__class__ is not tuple)
        else:
            packed = _packer(n).pack(*args)
            return _from_buffer(_nv_array, packed, False), n, (fields, packed)
    if _NV_PACKED:
        blob = b"".join(chain.from_iterable(fields))
        addr = int(_cast(_uintptr, _from_buffer(_char_array, blob, False)))
        args = []
        for f in fields:
            name, value = f
            ln, lv = len(name), len(value)
            args += (addr, addr + ln, ln, lv, f.__class__ is not tuple)
            addr += ln + lv
        packed = _packer(n).pack(*args)
        return _from_buffer(_nv_array, packed, False), n, (blob, packed)
    arr = ffi.new("nghttp2_nv[]", n)
    keep = []
    for i, f in enumerate(fields):
        name, value = ffi.from_buffer(f[0]), ffi.from_buffer(f[1])
        keep += (name, value)
        nv = arr[i]
        nv.name, nv.value, nv.namelen, nv.valuelen = name, value, len(f[0]), len(f[1])
        nv.flags = 0 if f.__class__ is tuple else 1
    return arr, n, keep


def _frame_layout() -> tuple:
    """``(struct.Struct, size)`` reading, from a received ``nghttp2_frame``, the
    fields ``_on_frame`` needs: the header's length, stream id, type and flags,
    RST_STREAM's error code and the HEADERS category. Built from the declared
    layout (``offsetof``), so it matches whatever ABI cffi sees."""
    fields = [(0, "N"),  # hd.length (size_t)
              (ffi.offsetof("nghttp2_frame_hd", "stream_id"), "i"),
              (ffi.offsetof("nghttp2_frame_hd", "type"), "B"),
              (ffi.offsetof("nghttp2_frame_hd", "flags"), "B"),
              (ffi.offsetof("nghttp2_rst_stream", "error_code"), "I"),
              (ffi.offsetof("nghttp2_headers", "cat"), "i")]
    fmt, at = "@", 0
    for offset, code in sorted(fields):
        if offset < at:
            raise RuntimeError("unexpected nghttp2_frame layout")
        fmt += "%dx%s" % (offset - at, code) if offset > at else code
        at = offset + struct.calcsize("@" + code)
    layout = struct.Struct(fmt)
    if layout.size != at or at > ffi.sizeof("nghttp2_frame"):
        raise RuntimeError("unexpected nghttp2_frame layout")
    return layout, at


_FRAME, _FRAME_SIZE = _frame_layout()
_frame_fields = _FRAME.unpack
_frame_ptr = ffi.typeof("nghttp2_frame *")


def goaway_frame(last_stream_id: int, error_code: int) -> bytes:
    return struct.pack(">I B B I I I", 8, 7, 0, 0, last_stream_id & MAX_STREAM_ID, error_code)[1:]


# === callbacks (module-level: one set for every session) ===

callback_error: list = [None]


def _onerror(exc_type, exc_value, tb) -> None:  # noqa: ANN001 - cffi's signature
    callback_error[0] = exc_value


class Collector:
    """What the header and DATA-chunk callbacks collect for one session, between two
    ``on_frame_recv``: the cffi path's twin of ``_ngfast.Collector`` (same members and
    methods), so the codec reads both the same way."""

    __slots__ = ("fields", "fsize", "chunks", "hard_limit", "over", "failed", "error")

    def __init__(self, hard_limit: int) -> None:
        self.fields: list = []
        """The (name, value) fields of the header block being received."""
        self.fsize = 0
        """Their size as RFC 7541 counts it (name + value + 32 each)."""
        self.chunks: list = []
        """The chunks of the DATA frame being received."""
        self.hard_limit = hard_limit
        """Above this the block is refused (``over``)."""
        self.over = 0
        self.failed = 0  # only the C collector can fail (out of memory)
        self.error = None  # the C collector's callback exception (cffi keeps it in callback_error)

    def take(self) -> tuple[list, int]:
        """``(fields, size)`` of the header block; starts a new one."""
        fields, size = self.fields, self.fsize
        self.fields = []
        self.fsize = 0
        return fields, size

    def data(self) -> bytes:
        """The DATA frame's chunks joined; starts a new frame."""
        chunks = self.chunks
        if not chunks:
            return b""
        data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        chunks.clear()
        return data


@ffi.callback("nghttp2_on_header_callback", error=ERR_CALLBACK_FAILURE, onerror=_onerror)
def _on_header(session, frame, name, namelen, value, valuelen, flags, ud):  # noqa: ANN001
    col = _from_handle(ud)._col
    col.fields.append((unpack(name, namelen), unpack(value, valuelen)))
    col.fsize += namelen + valuelen + 32
    if col.fsize > col.hard_limit:
        col.over = 1
        return ERR_CALLBACK_FAILURE
    return 0


@ffi.callback("nghttp2_on_begin_headers_callback", error=ERR_CALLBACK_FAILURE, onerror=_onerror)
def _on_begin_headers(session, frame, ud):  # noqa: ANN001
    """Client role only: nghttp2's HTTP checks may reset a stream in the middle of a
    header block, whose fields then never reach ``on_frame_recv``."""
    _from_handle(ud)._col.take()
    return 0


@ffi.callback("nghttp2_on_data_chunk_recv_callback", error=ERR_CALLBACK_FAILURE, onerror=_onerror)
def _on_chunk(session, flags, stream_id, data, length, ud):  # noqa: ANN001
    _from_handle(ud)._col.chunks.append(unpack(data, length))
    return 0


@ffi.callback("nghttp2_on_frame_recv_callback", error=ERR_CALLBACK_FAILURE, onerror=_onerror)
def _on_frame(session, frame, ud):  # noqa: ANN001 - frame is a char * (see _ng_ffi)
    """The frame's fields, unpacked for the codec's ``_frame`` (``_ngfast`` passes the same)."""
    length, sid, t, flags, code, cat = _frame_fields(unpack(frame, _FRAME_SIZE))
    if t == GOAWAY:
        g = _cast(_frame_ptr, frame).goaway
        debug = unpack(g.opaque_data, g.opaque_data_len) if g.opaque_data_len else b""
        return _from_handle(ud)._frame(t, sid, flags, length, g.error_code, g.last_stream_id, debug)
    return _from_handle(ud)._frame(t, sid, flags, length, code, cat, b"")


@ffi.callback("nghttp2_on_stream_close_callback", error=ERR_CALLBACK_FAILURE, onerror=_onerror)
def _on_close(session, stream_id, error_code, ud):  # noqa: ANN001
    return _from_handle(ud)._closed(stream_id, error_code)


@ffi.callback("nghttp2_data_source_read_callback", error=ERR_CALLBACK_FAILURE, onerror=_onerror)
def _on_read(session, stream_id, buf, length, data_flags, source, ud):  # noqa: ANN001
    """The codec's ``_read`` says what goes in the DATA frame (``_ngfast`` calls it too)."""
    r = _from_handle(ud)._read(stream_id, length)
    if r.__class__ is int:
        return r
    data, flags = r
    n = len(data)
    if n:
        _memmove(buf, data, n)
    if flags:
        data_flags[0] = flags
    return n


def _callback_table(begin_headers: bool):  # noqa: ANN202 - a cffi pointer
    table_p = ffi.new("nghttp2_session_callbacks **")
    if lib.nghttp2_session_callbacks_new(table_p) != 0:
        raise MemoryError("nghttp2_session_callbacks_new failed")
    table = ffi.gc(table_p[0], lib.nghttp2_session_callbacks_del)
    lib.nghttp2_session_callbacks_set_on_header_callback(table, _on_header)
    lib.nghttp2_session_callbacks_set_on_data_chunk_recv_callback(table, _on_chunk)
    lib.nghttp2_session_callbacks_set_on_frame_recv_callback(table, _on_frame)
    lib.nghttp2_session_callbacks_set_on_stream_close_callback(table, _on_close)
    if begin_headers:
        lib.nghttp2_session_callbacks_set_on_begin_headers_callback(table, _on_begin_headers)
    return table


SERVER_CALLBACKS = _callback_table(False)
"""The callback table of server sessions (nghttp2 copies it)."""
CLIENT_CALLBACKS = _callback_table(True)
"""The callback table of client sessions, whose HTTP checks nghttp2 does."""

PROVIDER = ffi.new("nghttp2_data_provider *")
"""The data provider attached to every stream with a body (nghttp2 copies it)."""
PROVIDER.read_callback = _on_read


# === the optional C helpers (_ngfast.c) ===

class Native:
    """The ``_ngfast`` extension bound to the loaded libnghttp2, and the callback
    table (server and client alike) whose header, begin-headers, DATA-chunk,
    frame-received and stream-closed callbacks are its C ones, and a data provider
    whose read callback is too: a codec that uses it passes a ``fast.Collector``
    (holding its ``_frame``, ``_closed`` and ``_read``) to ``fast.recv``/``fast.send``
    instead of a ``Collector``."""

    def __init__(self, fast) -> None:  # noqa: ANN001 - the extension module
        def addr(fn) -> int:  # noqa: ANN001 - an ABI-mode function pointer
            return int(_cast(_uintptr, fn))

        off = ffi.offsetof
        layout = (off("nghttp2_frame_hd", "stream_id"), off("nghttp2_frame_hd", "type"),
                  off("nghttp2_frame_hd", "flags"), off("nghttp2_rst_stream", "error_code"),
                  off("nghttp2_headers", "cat"), off("nghttp2_goaway", "last_stream_id"),
                  off("nghttp2_goaway", "error_code"), off("nghttp2_goaway", "opaque_data"),
                  off("nghttp2_goaway", "opaque_data_len"))
        c = fast.callbacks()
        self.provider = ffi.new("nghttp2_data_provider *")
        """The data provider of a codec using the helpers: its read callback is the C one."""
        self.provider.read_callback = _cast(ffi.typeof("nghttp2_data_source_read_callback"),
                                            c["data_source_read"])
        fast.bind(addr(lib.nghttp2_session_mem_recv), addr(lib.nghttp2_session_mem_send),
                  addr(lib.nghttp2_submit_request), addr(lib.nghttp2_submit_response),
                  addr(lib.nghttp2_submit_headers), addr(self.provider), layout)
        fast.bind_extra(addr(lib.nghttp2_session_get_stream_remote_window_size),
                        addr(lib.nghttp2_session_get_remote_window_size),
                        addr(lib.nghttp2_session_consume), addr(lib.nghttp2_session_want_read),
                        addr(lib.nghttp2_submit_data), addr(lib.nghttp2_session_resume_data))
        self.fast = fast
        table_p = ffi.new("nghttp2_session_callbacks **")
        if lib.nghttp2_session_callbacks_new(table_p) != 0:
            raise MemoryError("nghttp2_session_callbacks_new failed")
        table = self.callbacks = ffi.gc(table_p[0], lib.nghttp2_session_callbacks_del)
        lib.nghttp2_session_callbacks_set_on_header_callback(
            table, _cast(ffi.typeof("nghttp2_on_header_callback"), c["on_header"]))
        lib.nghttp2_session_callbacks_set_on_begin_headers_callback(
            table, _cast(ffi.typeof("nghttp2_on_begin_headers_callback"), c["on_begin_headers"]))
        lib.nghttp2_session_callbacks_set_on_data_chunk_recv_callback(
            table, _cast(ffi.typeof("nghttp2_on_data_chunk_recv_callback"), c["on_data_chunk_recv"]))
        lib.nghttp2_session_callbacks_set_on_frame_recv_callback(
            table, _cast(ffi.typeof("nghttp2_on_frame_recv_callback"), c["on_frame_recv"]))
        lib.nghttp2_session_callbacks_set_on_stream_close_callback(
            table, _cast(ffi.typeof("nghttp2_on_stream_close_callback"), c["on_stream_close"]))


_fast = _native.load()
native: Native | None = None if _fast is None else Native(_fast)
"""The C helpers, or None (not built, or switched off): codecs read this when they
are created, so tests may swap it."""
