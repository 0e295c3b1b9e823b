"""Which HTTP/2 codec backend ``codec/http2.py`` picks: nghttp2 when libnghttp2
loads, h2 when it does not, and what ``MESHPROXY_H2_BACKEND`` forces. The choice
is made at import, so each case imports the module in a fresh interpreter."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from meshproxy.codec import _ng_ffi, http2
from meshproxy.codec._h2_codec import H2Codec

PROBE = "import meshproxy.codec.http2 as h; print(h.BACKEND, h.Http2Codec.__name__)"
MISSING = "/nonexistent/libnghttp2.so.14"


def probe(**env: str) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items()
             if k not in ("MESHPROXY_H2_BACKEND", "MESHPROXY_NGHTTP2_LIB")}
    return subprocess.run([sys.executable, "-c", PROBE], env={**clean, **env},
                          capture_output=True, text=True, timeout=60)


needs_nghttp2 = pytest.mark.skipif(not _ng_ffi.available(), reason="libnghttp2 not loadable here")


@needs_nghttp2
def test_default_is_nghttp2_when_the_library_loads():
    assert probe().stdout.split() == ["nghttp2", "NgHttp2Codec"]


def test_missing_library_falls_back_to_h2():
    assert probe(MESHPROXY_NGHTTP2_LIB=MISSING).stdout.split() == ["h2", "H2Codec"]


def test_env_forces_h2():
    assert probe(MESHPROXY_H2_BACKEND="h2").stdout.split() == ["h2", "H2Codec"]


@needs_nghttp2
def test_env_forces_nghttp2():
    assert probe(MESHPROXY_H2_BACKEND="nghttp2").stdout.split() == ["nghttp2", "NgHttp2Codec"]


def test_forcing_nghttp2_without_the_library_fails_loudly():
    done = probe(MESHPROXY_H2_BACKEND="nghttp2", MESHPROXY_NGHTTP2_LIB=MISSING)
    assert done.returncode != 0 and "Nghttp2Unavailable" in done.stderr and MISSING in done.stderr


def test_unknown_backend_is_refused():
    done = probe(MESHPROXY_H2_BACKEND="quic")
    assert done.returncode != 0 and "unknown HTTP/2 backend 'quic'" in done.stderr
    with pytest.raises(ValueError):
        http2.codec_class("quic")


def test_loader_reports_a_missing_library_and_caches_the_answer(monkeypatch):
    monkeypatch.setenv("MESHPROXY_NGHTTP2_LIB", MISSING)
    _ng_ffi.reset_for_tests()
    try:
        assert not _ng_ffi.available()
        with pytest.raises(_ng_ffi.Nghttp2Unavailable, match="cannot load"):
            _ng_ffi.load()
        monkeypatch.delenv("MESHPROXY_NGHTTP2_LIB")
        assert not _ng_ffi.available()  # cached until reset
    finally:
        _ng_ffi.reset_for_tests()


def test_h2_class_is_always_available():
    assert http2.codec_class("h2") is H2Codec


@needs_nghttp2
def test_header_list_packing_matches_the_field_by_field_fallback(monkeypatch):
    """``nva`` packs nghttp2_nv[] with one struct.pack on LP64, pointing into the fields'
    own bytes on CPython or into one joined blob; the portable path (cdata fields one by
    one) must describe the same fields and flags. A field that is not exactly ``bytes``
    takes the blob."""
    from hpack import NeverIndexedHeaderTuple

    from meshproxy.codec import _ng_wire

    fields = [(b":status", b"200"), (b"x-empty", b""), NeverIndexedHeaderTuple(b"authorization", b"s3cret")]

    def described(by_id: bool, packed: bool, fields=fields) -> list:
        monkeypatch.setattr(_ng_wire, "_BY_ID", by_id)
        monkeypatch.setattr(_ng_wire, "_NV_PACKED", packed)
        arr, n, _keep = _ng_wire.nva(fields)
        ffi = _ng_wire.ffi
        return [(ffi.unpack(arr[i].name, arr[i].namelen), ffi.unpack(arr[i].value, arr[i].valuelen),
                 arr[i].flags) for i in range(n)]

    expected = [(b":status", b"200", 0), (b"x-empty", b"", 0), (b"authorization", b"s3cret", 1)]
    assert _ng_wire._BY_ID == (sys.implementation.name == "cpython")
    assert described(_ng_wire._BY_ID, True) == described(False, True) == described(False, False) == expected
    mixed = [(b"x-a", bytearray(b"1")), (b"x-b", b"2")]
    assert described(_ng_wire._BY_ID, True, mixed) == [(b"x-a", b"1", 0), (b"x-b", b"2", 0)]
