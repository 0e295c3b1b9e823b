"""Hot reload: watch the config file, validate a changed one, hand it on — or keep the old one.

Where this sits: beside the data flow. ``app.py`` starts a ``ConfigWatcher`` when
the proxy was started with a file; a changed file (polled every ``interval``, or
at once on SIGHUP) is loaded and validated with ``config/load.py``. A valid file
goes to ``on_change(config)`` (the app swaps what can be swapped: routes,
clusters, authorization policies); an invalid one goes to ``on_error(message)``
and the running configuration stays as it is.
"""

from __future__ import annotations

import asyncio
import logging
import os
from typing import Callable

from .load import ConfigError, load
from .model import Config

log = logging.getLogger("meshproxy.config")


class ConfigWatcher:
    def __init__(self, path: str, interval: float, on_change: Callable[[Config], None],
                 on_error: Callable[[str], None]):
        self.path = path
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

    def check_now(self, force: bool = False) -> bool:
        """Reload if the file changed (or ``force``); True when a new config was taken."""
        stamp = self._read_stamp()
        if not force and stamp == self._stamp:
            return False
        self._stamp = stamp
        try:
            cfg = load(self.path)
        except ConfigError as e:
            self.on_error(str(e))
            return False
        self.on_change(cfg)
        return True

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                self.check_now()
            except Exception:  # a bug in a reload must not stop the watcher
                log.exception("config reload failed")

    def start(self) -> None:
        if self._task is None and self.interval > 0:
            self._task = asyncio.get_running_loop().create_task(self._run())

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None
