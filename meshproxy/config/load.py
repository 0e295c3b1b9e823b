"""YAML file → validated ``Config``; every error names the file, the field path and
what was expected.

Where this sits: called by ``cli.py`` at start (``run``, ``validate``) and, later,
by the config watcher on reload. It never exits the process: it raises
``ConfigError`` and the caller decides (exit 2 at start, keep the old snapshot on
reload).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from .model import Config


class ConfigError(Exception):
    """A config file could not be read or is invalid. ``str()`` is the user-facing
    message, one problem per line: ``FILE: field.path: what was expected``."""

    def __init__(self, source: str, problems: list[tuple[str, str]]):
        self.source = source
        self.problems = problems
        super().__init__("\n".join(f"{source}: {path}: {msg}" if path else f"{source}: {msg}"
                                   for path, msg in problems))


def _path(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


def _message(err: dict[str, Any]) -> str:
    kind = err["type"]
    got = err.get("input")
    if kind == "extra_forbidden":
        return "unknown field (check the spelling; see the configuration reference)"
    if kind == "missing":
        return "required field is missing"
    msg = err["msg"]
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, "):]
    if msg.startswith("Input should be "):
        msg = "expected " + msg[len("Input should be "):]
    elif msg.startswith("List should have "):
        msg = "expected a list with " + msg[len("List should have "):]
    elif msg.startswith("String should have "):
        msg = "expected a string with " + msg[len("String should have "):]
    if msg.startswith("expected ") and ", got " not in msg:
        if got is not None and not isinstance(got, (dict, list)):
            msg += f", got {got!r}"
    return msg


def from_dict(data: Any, source: str = "<config>") -> Config:
    """Validate a parsed mapping; raise ``ConfigError`` naming each bad field."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(source, [("", f"expected a mapping at the top level, got {type(data).__name__}")])
    try:
        return Config.model_validate(data)
    except ValidationError as e:
        problems = []
        for err in e.errors():
            path = _path(err["loc"])
            msg = _message(err)
            # A model-level validator puts the path in its message ("listeners[1].name: ...").
            if not path and ": " in msg and not msg.startswith("expected"):
                path, msg = msg.split(": ", 1)
            problems.append((path, msg))
        raise ConfigError(source, problems) from None


def load(path: str | os.PathLike[str] | None) -> Config:
    """Load ``path`` (None → built-in defaults)."""
    if path is None:
        return Config()
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(source, [("", "file not found")]) from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(source, [("", f"cannot read file: {e}")]) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(e, "problem", None) or str(e)
        raise ConfigError(source, [("", f"invalid YAML: {where}{problem}")]) from None
    return from_dict(data, source)
