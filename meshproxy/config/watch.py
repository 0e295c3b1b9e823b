"""Hot reload: watch the config file, validate a changed one, hand it on — or keep the old one.

Where this sits: beside the data flow. ``app.py`` starts a ``ConfigWatcher`` when
the proxy was started with a file; a changed file (polled every ``interval``, or
at once on SIGHUP) is loaded and validated — in a child process
(``config/frozen.py``) when the proxy itself runs without pydantic, otherwise
with ``config/load.py`` in-process. A valid file goes to ``on_change(config)`` (the app swaps what can be swapped: routes,
clusters, authorization policies); an invalid one goes to ``on_error(message)``
and the running configuration stays as it is.
"""

from __future__ import annotations

import asyncio
import logging
import os
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    from .model import Config

log = logging.getLogger("meshproxy.config")


class ConfigWatcher:
    def __init__(self, path: str, interval: float, on_change: Callable[["Config"], None],
                 on_error: Callable[[str], None], *, isolated: bool = False):
        self.path = path
        self.isolated = isolated
        """Validate in a child process (the running sidecar never imports pydantic)."""
        self.interval = interval
        self.on_change = on_change
        self.on_error = on_error
        self._stamp = self._read_stamp()
        self._task: asyncio.Task | None = None

    def _read_stamp(self):
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    def _changed(self, force: bool) -> bool:
        stamp = self._read_stamp()
        if not force and stamp == self._stamp:
            return False
        self._stamp = stamp
        return True

    def check_now(self, force: bool = False) -> bool:
        """Reload in-process if the file changed (or ``force``); True when a new config was taken."""
        from .load import ConfigError, load

        if not self._changed(force):
            return False
        try:
            cfg = load(self.path)
        except ConfigError as e:
            self.on_error(str(e))
            return False
        self.on_change(cfg)
        return True

    async def check(self, force: bool = False) -> bool:
        """``check_now``, validating in a child process when ``isolated`` (the loop keeps serving)."""
        if not self.isolated:
            return self.check_now(force)
        from .frozen import CompileError, compile_config_async

        if not self._changed(force):
            return False
        try:
            cfg = await compile_config_async(self.path)
        except CompileError as e:
            self.on_error(str(e))
            return False
        self.on_change(cfg)
        return True

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            await self._guarded()

    async def _guarded(self, force: bool = False) -> None:
        try:
            await self.check(force)
        except Exception:  # a bug in a reload must not stop the watcher
            log.exception("config reload failed")

    def check_soon(self) -> None:
        """SIGHUP: check at once, forced, without blocking the caller."""
        asyncio.get_running_loop().create_task(self._guarded(force=True))

    def start(self) -> None:
        if self._task is None and self.interval > 0:
            self._task = asyncio.get_running_loop().create_task(self._run())

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None
