"""Build hook for the C parts; everything else is in pyproject.toml.

``meshproxy.codec._ngfast`` moves the nghttp2 codec's per-header-field and
per-DATA-chunk callbacks into C (see its source). It is optional: without a C
compiler or Python headers the build skips it and the codec uses its pure-cffi
path, with the same behaviour.

``MESHPROXY_MYPYC=1`` also compiles the modules of the per-request path
(``COMPILED``) to C extensions with mypyc: the same Python source, its type
annotations enforced at run time, about a sixth less CPU per request
(bench/RESULTS.md). It is the build to ship: ``pip install mypy wheel``, then
``MESHPROXY_MYPYC=1 pip install --no-build-isolation .`` (mypy must be importable
here, and an isolated build environment would not have it). It is off by default, so an editable
install runs the sources being edited; ``tests/compiled.sh`` builds it beside
them for ``bench/run.py``, which measures it, and for ``tests/run``, which runs
the whole suite on both builds.
A module listed here must pass ``mypy`` (``tests/unit/test_compiled_build.py``).
"""

import os

from setuptools import Extension, setup

COMPILED = [
    "meshproxy/net/flush.py",
    "meshproxy/http/express.py",
    "meshproxy/upstream/express.py",
    "meshproxy/http/exchange.py",
    "meshproxy/http/server.py",
    "meshproxy/http/headers.py",
    "meshproxy/upstream/client.py",
    "meshproxy/upstream/pool.py",
    "meshproxy/codec/_ng_codec.py",
    "meshproxy/net/tls_layer.py",
    "meshproxy/observe/requests.py",
    "meshproxy/http/express_heads.py",
    "meshproxy/codec/_http1_write.py",
    "meshproxy/http/router.py",
    "meshproxy/upstream/cluster.py",
    "meshproxy/upstream/lb.py",
    "meshproxy/codec/http1.py",
    "meshproxy/codec/_http1_stream.py",
    "meshproxy/codec/_http1_checks.py",
]
"""Modules compiled by mypyc when ``MESHPROXY_MYPYC=1``."""

MYPY_ARGS = ["--follow-imports=silent"]
"""mypy's options for them: imported modules are read for their types, not checked."""

ext_modules = [Extension("meshproxy.codec._ngfast", ["meshproxy/codec/_ngfast.c"],
                         optional=True, extra_compile_args=["-O2", "-Wall", "-Wno-unused-parameter"])]
if os.environ.get("MESHPROXY_MYPYC") == "1":
    from mypyc.build import mypycify

    ext_modules += mypycify([*MYPY_ARGS, *COMPILED], opt_level="3")

setup(ext_modules=ext_modules)
