"""meshproxy: a transparent L4/L7 sidecar proxy for a small, readable service-mesh data plane."""

__version__ = "0.1.0"


def build() -> str:
    """``"compiled"`` when the per-request modules were built with mypyc (setup.py's
    ``MESHPROXY_MYPYC=1``, ``tests/compiled.sh``; what ``bench/run.py`` measures), else ``"sources"``."""
    from importlib.util import find_spec

    spec = find_spec("meshproxy.http.exchange")
    origin = spec.origin if spec is not None else None
    return "sources" if origin is None or origin.endswith(".py") else "compiled"
