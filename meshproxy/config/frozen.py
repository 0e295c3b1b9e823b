"""The running proxy's config: plain frozen records, validated in a separate process.

Where this sits: between ``config/load.py`` and everything that reads the config.
``meshproxy run`` (and every hot reload) runs ``python -m meshproxy.config.compile``
as a short-lived child: the child validates the YAML with the pydantic models and
prints the effective config as JSON, each section tagged with its model's name;
``thaw`` turns that into ``Record``s with the same attribute names and derived
properties (``config/props.py``). The sidecar itself therefore never imports
pydantic, which would cost about 12 MiB of resident memory for as long as it runs
(Istio splits its sidecar the same way: pilot-agent validates and prepares, Envoy
serves). Code that reads config works on either form: attributes, ``fields_of``
and ``dump``.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from typing import Any

from .props import PROPS

TAG = "$model"
"""Key naming a section's model class in the compiled JSON (never a field name)."""

COMPILE_TIMEOUT = 60.0


class CompileError(Exception):
    """The child refused the file (``str(e)`` is its ``FILE: path: expected …`` text) or failed."""

    def __init__(self, message: str, *, config_error: bool):
        super().__init__(message)
        self.config_error = config_error


class Record:
    """An immutable config section: attributes, equality, hashing and a readable repr."""

    __slots__ = ()
    _fields: tuple[str, ...] = ()

    def __init__(self, values: dict[str, Any]):
        for name in self._fields:
            object.__setattr__(self, name, values[name])

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"{type(self).__name__} is frozen")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"{type(self).__name__} is frozen")

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        return all(getattr(self, f) == getattr(other, f) for f in self._fields)

    def __hash__(self) -> int:
        return hash((type(self).__name__, tuple(_hashable(getattr(self, f)) for f in self._fields)))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{f}={getattr(self, f)!r}' for f in self._fields)})"


def _hashable(v: Any) -> Any:
    if isinstance(v, list):
        return tuple(_hashable(x) for x in v)
    if isinstance(v, dict):
        return tuple(sorted((k, _hashable(x)) for k, x in v.items()))
    return v


_classes: dict[tuple[str, tuple[str, ...]], type] = {}


def record_class(name: str, fields: tuple[str, ...]) -> type:
    """The record class for model ``name`` with these fields (made once, with its props mixin)."""
    key = (name, fields)
    cls = _classes.get(key)
    if cls is None:
        bases = (PROPS[name], Record) if name in PROPS else (Record,)
        cls = _classes[key] = type(name, bases, {"__slots__": fields, "_fields": fields})
    return cls


def thaw(value: Any) -> Any:
    """Compiled JSON → records (tagged dicts), lists and plain values."""
    if isinstance(value, dict):
        if TAG in value:
            name = value[TAG]
            fields = tuple(k for k in value if k != TAG)
            return record_class(name, fields)({k: thaw(value[k]) for k in fields})
        return {k: thaw(v) for k, v in value.items()}
    if isinstance(value, list):
        return [thaw(v) for v in value]
    return value


def fields_of(section: Any) -> tuple[str, ...]:
    """Field names of a config section, a record or a pydantic model."""
    if isinstance(section, Record):
        return section._fields
    return tuple(type(section).model_fields)


def dump(section: Any) -> Any:
    """A config section as JSON-ready data (field names, not aliases)."""
    if isinstance(section, Record):
        return {f: dump(getattr(section, f)) for f in section._fields}
    if isinstance(section, list):
        return [dump(v) for v in section]
    if isinstance(section, dict):
        return {k: dump(v) for k, v in section.items()}
    if hasattr(section, "model_dump"):
        return section.model_dump(mode="json")
    return section


def _interpreter() -> str:
    """This very interpreter: ``sys.executable``, or the binary behind ``/proc/self/exe`` when
    that path is not executable for our uid (a venv whose link points into a private home)."""
    exe = sys.executable
    if exe and os.access(exe, os.X_OK):
        return exe
    return "/proc/self/exe" if os.path.exists("/proc/self/exe") else (exe or "python3")


def _argv(path: str | None) -> list[str]:
    return [_interpreter(), "-m", "meshproxy.config.compile", "--json", *([path] if path else [])]


def _env() -> dict[str, str]:
    """The child imports exactly what we would: this package, pydantic and PyYAML from our own
    ``sys.path`` (a venv, an editable checkout), however the interpreter was reached."""
    env = dict(os.environ)
    pkg_root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env["PYTHONPATH"] = os.pathsep.join([pkg_root, *(p for p in sys.path if p and p != pkg_root)])
    return env


def _result(returncode: int, out: bytes, err: bytes) -> Any:
    if returncode == 0:
        try:
            return thaw(json.loads(out))
        except ValueError as e:
            raise CompileError(f"config compiler printed invalid JSON: {e}", config_error=False) from None
    message = err.decode("utf-8", "replace").strip() or f"config compiler exited with {returncode}"
    raise CompileError(message, config_error=returncode == 2)


def compile_config(path: str | None) -> Any:
    """Validate ``path`` (``None``: built-in defaults) in a child process; the effective config as records."""
    try:
        p = subprocess.run(_argv(path), capture_output=True, env=_env(), timeout=COMPILE_TIMEOUT)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise CompileError(f"cannot run the config compiler: {e}", config_error=False) from None
    return _result(p.returncode, p.stdout, p.stderr)


async def compile_config_async(path: str | None) -> Any:
    """``compile_config`` without blocking the event loop (hot reload)."""
    try:
        proc = await asyncio.create_subprocess_exec(*_argv(path), stdout=asyncio.subprocess.PIPE,
                                                    stderr=asyncio.subprocess.PIPE, env=_env())
    except OSError as e:
        raise CompileError(f"cannot run the config compiler: {e}", config_error=False) from None
    try:
        out, err = await asyncio.wait_for(proc.communicate(), COMPILE_TIMEOUT)
    except asyncio.TimeoutError:
        proc.kill()
        await proc.wait()
        raise CompileError("config compiler timed out", config_error=False) from None
    return _result(proc.returncode, out, err)
