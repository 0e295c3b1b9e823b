"""Process logging: one line per event on stderr, level adjustable at run time.

Where this sits: ``cli.py`` calls ``setup()`` once; ``admin/server.py`` calls
``set_level()`` for ``POST /logging?level=``. The byte path never logs.
"""

from __future__ import annotations

import json
import logging
import sys
import time

LEVELS = ("debug", "info", "warning", "error", "critical")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out)


def setup(level: str = "info") -> None:
    root = logging.getLogger("meshproxy")
    if not any(getattr(h, "_meshproxy", False) for h in root.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(JsonFormatter())
        handler._meshproxy = True  # type: ignore[attr-defined]
        root.addHandler(handler)
        root.propagate = False
    set_level(level)


def set_level(level: str) -> None:
    level = level.lower()
    if level not in LEVELS:
        raise ValueError(f"unknown log level {level!r}; expected one of {', '.join(LEVELS)}")
    logging.getLogger("meshproxy").setLevel(level.upper())


def get_level() -> str:
    return logging.getLevelName(logging.getLogger("meshproxy").getEffectiveLevel()).lower()
