"""``python -m meshproxy.config.compile [--json] [FILE]``: validate a config file and print it, effective.

Where this sits: run as a short-lived child by ``config/frozen.py`` (at start and on
every hot reload) so that the sidecar process never loads pydantic. Prints the
effective configuration (every default filled in) as JSON on stdout, each section
tagged with its model's name under ``$model``; a bad file prints the usual
``FILE: field.path: expected …`` text on stderr and exits 2.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from pydantic import BaseModel

from .frozen import TAG
from .load import ConfigError, load

EXIT_CONFIG = 2


def freeze(value: Any) -> Any:
    """A validated model → JSON data with every section tagged by its model class name."""
    if isinstance(value, BaseModel):
        out: dict[str, Any] = {TAG: type(value).__name__}
        for name in type(value).model_fields:
            out[name] = freeze(getattr(value, name))
        return out
    if isinstance(value, (list, tuple)):
        return [freeze(v) for v in value]
    if isinstance(value, dict):
        return {str(k): freeze(v) for k, v in value.items()}
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    raise TypeError(f"config value of type {type(value).__name__} cannot be compiled: {value!r}")


def main(argv: list[str]) -> int:
    args = [a for a in argv if a != "--json"]
    if len(args) > 1:
        print("usage: python -m meshproxy.config.compile [--json] [FILE]", file=sys.stderr)
        return 64
    try:
        cfg = load(args[0] if args else None)
    except ConfigError as e:
        print(str(e), file=sys.stderr)
        return EXIT_CONFIG
    try:
        json.dump(freeze(cfg), sys.stdout, separators=(",", ":"))
        sys.stdout.flush()
    except BrokenPipeError:  # the reader went away (e.g. `| head`): nothing left to say
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
