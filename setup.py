"""Build hook for the one optional C extension; everything else is in pyproject.toml.

``meshproxy.codec._ngfast`` moves the nghttp2 codec's per-header-field and
per-DATA-chunk callbacks into C (see its source). It is optional: without a C
compiler or Python headers the build skips it and the codec uses its pure-cffi
path, with the same behaviour.
"""

from setuptools import Extension, setup

setup(ext_modules=[Extension("meshproxy.codec._ngfast", ["meshproxy/codec/_ngfast.c"],
                             optional=True, extra_compile_args=["-O2", "-Wall", "-Wno-unused-parameter"])])
