"""Event loop choice: uvloop when importable, plain asyncio otherwise (a speedup, never a requirement).

Where this sits: ``cli.py`` calls ``run(main())``; tests run the same code on both loops.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any, Coroutine


def loop_name() -> str:
    """``uvloop`` or ``asyncio``: what ``run`` will use (``MESHPROXY_LOOP=asyncio`` forces asyncio)."""
    if os.environ.get("MESHPROXY_LOOP", "auto") == "asyncio":
        return "asyncio"
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return "asyncio"
    return "uvloop"


def run(main: Coroutine[Any, Any, int]) -> int:
    if loop_name() == "uvloop":
        import uvloop

        return uvloop.run(main)
    return asyncio.run(main)
