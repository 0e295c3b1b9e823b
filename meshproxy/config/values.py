"""Plain value parsers the config models and the running proxy share (no pydantic).

Where this sits: ``config/model_types.py`` wraps these as pydantic validators for
the config files; ``config/props.py`` and runtime code (``upstream/cluster.py``)
call them directly, so the running proxy never needs the validation library.
"""

from __future__ import annotations

import re
from typing import Any

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}
_HOSTPORT = re.compile(r"\[([0-9A-Fa-f:.]+)\]:(\d+)|([^:\[\]\s]+):(\d+)")
_POD_HASH = re.compile(r"^(.*?)(?:-[a-z0-9]{6,10})?-[a-z0-9]{5}$")


def parse_duration(value: Any) -> float:
    """``250ms``, ``5s``, ``2m``, ``1h`` or a number of seconds → seconds (float)."""
    if isinstance(value, bool):
        raise ValueError("expected a duration such as 250ms, 5s, 2m or 1h")
    if isinstance(value, (int, float)):
        if value < 0:
            raise ValueError("expected a duration >= 0")
        return float(value)
    if isinstance(value, str):
        m = _DURATION.match(value)
        if m:
            return float(m.group(1)) * _UNITS[m.group(2)]
    raise ValueError(f"expected a duration such as 250ms, 5s, 2m or 1h, got {value!r}")


def parse_hostport(value: Any) -> tuple[str, int]:
    """``host:port`` or ``[v6]:port`` → (host, port)."""
    if not isinstance(value, str):
        raise ValueError(f"expected 'host:port', got {value!r}")
    m = _HOSTPORT.fullmatch(value.strip())
    if not m:
        raise ValueError(f"expected 'host:port' or '[ipv6]:port', got {value!r}")
    host = m.group(1) or m.group(3)
    port = int(m.group(2) or m.group(4))
    if not 1 <= port <= 65535:
        raise ValueError(f"port must be 1..65535, got {port}")
    return host, port


def workload_from_pod(pod_name: str) -> str:
    """``reviews-v1-5b7c8d9f4-abcde`` → ``reviews-v1`` (Deployment → ReplicaSet → Pod naming)."""
    m = _POD_HASH.match(pod_name)
    return m.group(1) if m and m.group(1) else pod_name
