"""An immutable, versioned view of the config that the running proxy reads.

Where this sits: ``app.py`` holds the current ``Snapshot``; a reload builds a new
one and swaps the reference, so work that started under the old snapshot keeps
it to the end.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .model import Config


@dataclass(frozen=True, slots=True)
class Snapshot:
    config: "Config"
    """The validated ``model.Config``, or its frozen copy (``config/frozen.py``) in ``meshproxy run``."""
    version: int = 1
    source: str = "<defaults>"
    """The file it came from, or ``<defaults>``."""
    loaded_at: float = field(default_factory=time.time)

    def successor(self, config: "Config", source: str) -> "Snapshot":
        return Snapshot(config, self.version + 1, source)
