"""The optional C extension ``codec/_ngfast``, or None.

Where this sits: read once, at import, by the modules whose hot loops it has in C
(``_ng_wire`` for the nghttp2 codec, ``_h2_headers``, ``http/headers``,
``http/express_heads``, ``observe/requests``);
each hands it what it needs and keeps its Python code as the reference. ``setup.py``
builds the extension when a C compiler is present; ``MESHPROXY_NGFAST=0`` switches
it off everywhere.
"""

from __future__ import annotations

import os


def load():  # noqa: ANN201 - the extension module or None
    """The ``_ngfast`` module, or None when it was not built or is switched off."""
    if os.environ.get("MESHPROXY_NGFAST", "1") == "0":
        return None
    try:
        from . import _ngfast
    except ImportError:
        return None
    return _ngfast
