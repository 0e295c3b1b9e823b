"""Value types shared by the config models: durations, ports, IP addresses, host:port.

Where this sits: imported by ``config/model.py`` and ``config/routing.py``; pure.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Annotated, Any

from pydantic import BeforeValidator, Field

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


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


Duration = Annotated[float, BeforeValidator(parse_duration)]
Port = Annotated[int, Field(ge=0, le=65535)]


def _ip(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"expected an IP address string, got {value!r}")
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        raise ValueError(f"expected an IP address, got {value!r}") from None


IPAddr = Annotated[str, BeforeValidator(_ip)]


def parse_hostport(value: Any) -> tuple[str, int]:
    """``host:port`` or ``[v6]:port`` → (host, port)."""
    if not isinstance(value, str):
        raise ValueError(f"expected 'host:port', got {value!r}")
    m = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\]:(\d+)|([^:\[\]\s]+):(\d+)", value.strip())
    if not m:
        raise ValueError(f"expected 'host:port' or '[ipv6]:port', got {value!r}")
    host = m.group(1) or m.group(3)
    port = int(m.group(2) or m.group(4))
    if not 1 <= port <= 65535:
        raise ValueError(f"port must be 1..65535, got {port}")
    return host, port
