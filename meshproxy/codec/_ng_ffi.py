"""libnghttp2 bindings for the native HTTP/2 codec (cffi ABI mode, no compiler).

Where this sits: private to ``codec/_ng_codec.py``, which ``codec/http2.py``
exports as ``Http2Codec`` when ``load()`` succeeds. It declares the part of
``nghttp2/nghttp2.h`` (1.52, soname ``libnghttp2.so.14``) the codec uses and opens
the shared library on first use; nothing here runs at import time. It does no I/O
of its own and holds no per-connection state.

Declarations are written for speed in Python: byte pointers the codec turns into
``bytes`` (header names and values, DATA chunks, ``mem_send`` output) are
declared ``char *`` instead of ``uint8_t *`` so ``ffi.unpack`` returns ``bytes``;
the two are ABI-identical. For the same reason ``on_frame_recv`` gets its
``nghttp2_frame *`` as ``char *``: the callback unpacks the few fields it reads
in one ``struct`` call instead of one cdata attribute lookup each.

``load()`` returns ``(ffi, lib)`` or raises ``Nghttp2Unavailable``; the result,
good or bad, is cached. ``MESHPROXY_NGHTTP2_LIB`` names another library file
(tests point it at a missing one to exercise the fallback).
"""

from __future__ import annotations

import os

__all__ = ["Nghttp2Unavailable", "load", "available", "has", "OPTIONAL"]

_CDEF = """
typedef long ssize_t;
typedef struct {
  int age;
  int version_num;
  const char *version_str;
  const char *proto_str;
} nghttp2_info;
nghttp2_info *nghttp2_version(int least_version);
typedef struct nghttp2_session nghttp2_session;
typedef struct nghttp2_session_callbacks nghttp2_session_callbacks;
typedef struct nghttp2_option nghttp2_option;

typedef struct {
  const char *name;
  const char *value;
  size_t namelen;
  size_t valuelen;
  uint8_t flags;
} nghttp2_nv;

typedef struct {
  size_t length;
  int32_t stream_id;
  uint8_t type;
  uint8_t flags;
  uint8_t reserved;
} nghttp2_frame_hd;

typedef union {
  int fd;
  void *ptr;
} nghttp2_data_source;

typedef ssize_t (*nghttp2_data_source_read_callback)(
    nghttp2_session *session, int32_t stream_id, uint8_t *buf, size_t length,
    uint32_t *data_flags, nghttp2_data_source *source, void *user_data);

typedef struct {
  nghttp2_data_source source;
  nghttp2_data_source_read_callback read_callback;
} nghttp2_data_provider;

typedef struct { nghttp2_frame_hd hd; size_t padlen; } nghttp2_data;
typedef struct { int32_t stream_id; int32_t weight; uint8_t exclusive; } nghttp2_priority_spec;
typedef struct {
  nghttp2_frame_hd hd;
  size_t padlen;
  nghttp2_priority_spec pri_spec;
  nghttp2_nv *nva;
  size_t nvlen;
  int cat;
} nghttp2_headers;
typedef struct { nghttp2_frame_hd hd; nghttp2_priority_spec pri_spec; } nghttp2_priority;
typedef struct { nghttp2_frame_hd hd; uint32_t error_code; } nghttp2_rst_stream;
typedef struct { int32_t settings_id; uint32_t value; } nghttp2_settings_entry;
typedef struct { nghttp2_frame_hd hd; size_t niv; nghttp2_settings_entry *iv; } nghttp2_settings;
typedef struct {
  nghttp2_frame_hd hd;
  size_t padlen;
  nghttp2_nv *nva;
  size_t nvlen;
  int32_t promised_stream_id;
  uint8_t reserved;
} nghttp2_push_promise;
typedef struct { nghttp2_frame_hd hd; uint8_t opaque_data[8]; } nghttp2_ping;
typedef struct {
  nghttp2_frame_hd hd;
  int32_t last_stream_id;
  uint32_t error_code;
  char *opaque_data;
  size_t opaque_data_len;
  uint8_t reserved;
} nghttp2_goaway;
typedef struct { nghttp2_frame_hd hd; int32_t window_size_increment; uint8_t reserved; } nghttp2_window_update;
typedef struct { nghttp2_frame_hd hd; void *payload; } nghttp2_extension;

typedef union {
  nghttp2_frame_hd hd;
  nghttp2_data data;
  nghttp2_headers headers;
  nghttp2_priority priority;
  nghttp2_rst_stream rst_stream;
  nghttp2_settings settings;
  nghttp2_push_promise push_promise;
  nghttp2_ping ping;
  nghttp2_goaway goaway;
  nghttp2_window_update window_update;
  nghttp2_extension ext;
} nghttp2_frame;

typedef int (*nghttp2_on_frame_recv_callback)(nghttp2_session *session,
    const char *frame, void *user_data);
typedef int (*nghttp2_on_data_chunk_recv_callback)(nghttp2_session *session,
    uint8_t flags, int32_t stream_id, const char *data, size_t len, void *user_data);
typedef int (*nghttp2_on_stream_close_callback)(nghttp2_session *session,
    int32_t stream_id, uint32_t error_code, void *user_data);
typedef int (*nghttp2_on_begin_headers_callback)(nghttp2_session *session,
    const nghttp2_frame *frame, void *user_data);
typedef int (*nghttp2_on_header_callback)(nghttp2_session *session,
    const nghttp2_frame *frame, const char *name, size_t namelen,
    const char *value, size_t valuelen, uint8_t flags, void *user_data);

int nghttp2_session_callbacks_new(nghttp2_session_callbacks **callbacks_ptr);
void nghttp2_session_callbacks_del(nghttp2_session_callbacks *callbacks);
void nghttp2_session_callbacks_set_on_frame_recv_callback(
    nghttp2_session_callbacks *cbs, nghttp2_on_frame_recv_callback cb);
void nghttp2_session_callbacks_set_on_data_chunk_recv_callback(
    nghttp2_session_callbacks *cbs, nghttp2_on_data_chunk_recv_callback cb);
void nghttp2_session_callbacks_set_on_stream_close_callback(
    nghttp2_session_callbacks *cbs, nghttp2_on_stream_close_callback cb);
void nghttp2_session_callbacks_set_on_header_callback(
    nghttp2_session_callbacks *cbs, nghttp2_on_header_callback cb);
void nghttp2_session_callbacks_set_on_begin_headers_callback(
    nghttp2_session_callbacks *cbs, nghttp2_on_begin_headers_callback cb);

int nghttp2_option_new(nghttp2_option **option_ptr);
void nghttp2_option_del(nghttp2_option *option);
void nghttp2_option_set_no_auto_window_update(nghttp2_option *option, int val);
void nghttp2_option_set_peer_max_concurrent_streams(nghttp2_option *option, uint32_t val);
void nghttp2_option_set_no_http_messaging(nghttp2_option *option, int val);
void nghttp2_option_set_max_send_header_block_length(nghttp2_option *option, size_t val);
void nghttp2_option_set_no_closed_streams(nghttp2_option *option, int val);
void nghttp2_option_set_max_outbound_ack(nghttp2_option *option, size_t val);
void nghttp2_option_set_max_settings(nghttp2_option *option, size_t val);
void nghttp2_option_set_max_continuations(nghttp2_option *option, size_t val);
void nghttp2_option_set_stream_reset_rate_limit(nghttp2_option *option, uint64_t burst,
    uint64_t rate);

int nghttp2_session_server_new2(nghttp2_session **session_ptr,
    const nghttp2_session_callbacks *callbacks, void *user_data, const nghttp2_option *option);
int nghttp2_session_client_new2(nghttp2_session **session_ptr,
    const nghttp2_session_callbacks *callbacks, void *user_data, const nghttp2_option *option);
void nghttp2_session_del(nghttp2_session *session);

ssize_t nghttp2_session_mem_recv(nghttp2_session *session, const char *in, size_t inlen);
ssize_t nghttp2_session_mem_send(nghttp2_session *session, const char **data_ptr);
int nghttp2_session_want_read(nghttp2_session *session);
int nghttp2_session_resume_data(nghttp2_session *session, int32_t stream_id);
int nghttp2_session_consume(nghttp2_session *session, int32_t stream_id, size_t size);
int nghttp2_session_set_local_window_size(nghttp2_session *session, uint8_t flags,
    int32_t stream_id, int32_t window_size);
uint32_t nghttp2_session_get_remote_settings(nghttp2_session *session, int id);
int32_t nghttp2_session_get_stream_remote_window_size(nghttp2_session *session, int32_t stream_id);
int32_t nghttp2_session_get_remote_window_size(nghttp2_session *session);
uint32_t nghttp2_session_get_next_stream_id(nghttp2_session *session);
int32_t nghttp2_session_get_last_proc_stream_id(nghttp2_session *session);
int nghttp2_session_terminate_session(nghttp2_session *session, uint32_t error_code);

int nghttp2_submit_settings(nghttp2_session *session, uint8_t flags,
    const nghttp2_settings_entry *iv, size_t niv);
int32_t nghttp2_submit_request(nghttp2_session *session, const nghttp2_priority_spec *pri_spec,
    const nghttp2_nv *nva, size_t nvlen, const nghttp2_data_provider *data_prd,
    void *stream_user_data);
int nghttp2_submit_response(nghttp2_session *session, int32_t stream_id,
    const nghttp2_nv *nva, size_t nvlen, const nghttp2_data_provider *data_prd);
int32_t nghttp2_submit_headers(nghttp2_session *session, uint8_t flags, int32_t stream_id,
    const nghttp2_priority_spec *pri_spec, const nghttp2_nv *nva, size_t nvlen,
    void *stream_user_data);
int nghttp2_submit_trailer(nghttp2_session *session, int32_t stream_id,
    const nghttp2_nv *nva, size_t nvlen);
int nghttp2_submit_data(nghttp2_session *session, uint8_t flags, int32_t stream_id,
    const nghttp2_data_provider *data_prd);
int nghttp2_submit_rst_stream(nghttp2_session *session, uint8_t flags, int32_t stream_id,
    uint32_t error_code);
"""

OPTIONAL = frozenset(("nghttp2_option_set_max_continuations",
                      "nghttp2_option_set_stream_reset_rate_limit"))
"""Functions an unpatched or differently patched 1.52 may lack: the codec calls
them only when present (``has``)."""

_REQUIRED = ("nghttp2_session_server_new2", "nghttp2_session_mem_recv",
             "nghttp2_session_mem_send", "nghttp2_session_consume",
             "nghttp2_option_set_no_auto_window_update", "nghttp2_option_set_max_outbound_ack",
             "nghttp2_submit_trailer", "nghttp2_session_get_last_proc_stream_id")


class Nghttp2Unavailable(ImportError):
    """libnghttp2 (or cffi) could not be loaded; the h2 backend is used instead."""


_cache: tuple | Nghttp2Unavailable | None = None


def _library_name() -> str:
    override = os.environ.get("MESHPROXY_NGHTTP2_LIB")
    if override:
        return override
    return "libnghttp2.so.14"


def load() -> tuple:
    """Return ``(ffi, lib)``, opening libnghttp2 the first time."""
    global _cache
    if _cache is None:
        try:
            _cache = _open()
        except Nghttp2Unavailable as exc:
            _cache = exc
    if isinstance(_cache, Nghttp2Unavailable):
        raise _cache
    return _cache


def has(lib, name: str) -> bool:  # noqa: ANN001 - a cffi Lib
    """Whether the loaded library exports ``name`` (one of ``OPTIONAL``)."""
    try:
        getattr(lib, name)
    except AttributeError:
        return False
    return True


def available() -> bool:
    """Whether ``load()`` succeeds."""
    try:
        load()
    except Nghttp2Unavailable:
        return False
    return True


def _open() -> tuple:
    try:
        import cffi
    except ImportError as exc:  # cffi comes with cryptography, but be explicit
        raise Nghttp2Unavailable(f"cffi is not installed: {exc}") from exc
    ffi = cffi.FFI()
    ffi.cdef(_CDEF)
    name = _library_name()
    try:
        lib = ffi.dlopen(name)
    except OSError as exc:
        raise Nghttp2Unavailable(f"cannot load {name}: {exc}") from exc
    for symbol in _REQUIRED:  # an ABI-mode lookup fails only when first used
        try:
            getattr(lib, symbol)
        except AttributeError as exc:
            raise Nghttp2Unavailable(f"{name} lacks {symbol}") from exc
    return ffi, lib


def reset_for_tests() -> None:
    """Forget the cached load result (tests switch ``MESHPROXY_NGHTTP2_LIB``)."""
    global _cache
    _cache = None
