"""Value types shared by the config models: durations, ports, IP addresses, host:port.

Where this sits: imported by ``config/model.py`` and ``config/routing.py``; pure.
"""

from __future__ import annotations

import ipaddress
from typing import Annotated, Any

from pydantic import BeforeValidator, Field

from .values import parse_duration, parse_hostport  # noqa: F401 (re-exported)

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
