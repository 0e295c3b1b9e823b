"""Certificate rotation: notice when the workload's files change, validate the
new set, and swap it in only if it is good.

Where this sits: beside the data flow. ``net/mesh.py`` owns one
:class:`CertWatcher`; on ``on_change`` it rebuilds its ``ssl`` contexts (new
handshakes use the new material, established connections keep theirs), on
``on_error`` it logs and counts. Cert-manager's CSI driver, a mounted Secret
(Kubernetes swaps the ``..data`` symlink, so the inode changes) or ``meshproxy ca
issue`` into the same directory all deliver rotations as file changes.

Invariants:
1. The current material is replaced only by material that passed
   ``certs.load_material`` as a whole; a half-written update (new key, old
   certificate) is refused and the next poll, after the other file lands, accepts it.
2. ``on_error`` is called once per distinct (files, problem) state, not every poll;
   while in error the files are re-read every poll, so a certificate that was
   not yet valid is picked up once it is.
3. Identical material (files touched, rewritten with the same content) does not
   call ``on_change``.
4. Polling is a few ``stat`` calls per interval; files are read only when
   something changed or the last attempt failed.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from datetime import datetime, timezone
from typing import Callable

from ..config.security import Tls
from .certs import Material, TlsMaterialError, load_material

log = logging.getLogger("meshproxy.tls")

_Stamp = tuple[tuple[int, int, int] | None, ...]


def expiry_timestamp(material: Material) -> float:
    """When ``material``'s certificate expires, as a Unix timestamp (for a gauge)."""
    return material.not_after.timestamp()


class CertWatcher:
    """Polls ``cfg``'s three files every ``cfg.rotation_check_interval`` seconds.

    ``on_change(material)`` receives each new valid material; ``on_error(message)``
    a one-line reason an update was refused (the current material stays).
    ``current`` is the material already in use (compared against, so an
    unchanged set does not call ``on_change``); the file state is taken at
    construction, so build the watcher right after loading, or call :meth:`load`.
    ``clock`` returns Unix time (certificate validity); ``loop`` runs the task.
    """

    def __init__(self, cfg: Tls, on_change: Callable[[Material], None], on_error: Callable[[str], None], *,
                 current: Material | None = None, clock: Callable[[], float] = time.time,
                 loop: asyncio.AbstractEventLoop | None = None):
        self.cfg = cfg
        self.on_change = on_change
        self.on_error = on_error
        self.current = current
        """The material in use as far as this watcher knows."""
        self.clock = clock
        self.loop = loop
        self._good: _Stamp = self._stamps()
        self._last_error: tuple[_Stamp, str] | None = None
        self._task: asyncio.Task | None = None

    def _stamps(self) -> _Stamp:
        out = []
        for path in (self.cfg.cert_file, self.cfg.key_file, self.cfg.bundle_file):
            try:
                st = os.stat(path) if path else None
            except OSError:
                st = None
            out.append((st.st_mtime_ns, st.st_size, st.st_ino) if st else None)
        return tuple(out)

    def _now(self) -> datetime:
        return datetime.fromtimestamp(self.clock(), timezone.utc)

    def load(self) -> Material:
        """Load the files now and make them current (start-up); raises ``TlsMaterialError``."""
        stamps = self._stamps()
        material = load_material(self.cfg, now=self._now())
        self._good, self._last_error, self.current = stamps, None, material
        return material

    def check_now(self) -> Material | None:
        """One poll: the new material if it changed and was accepted (``on_change`` was called), else None."""
        stamps = self._stamps()  # before reading: a change during the read shows up next poll
        if stamps == self._good and self._last_error is None:
            return None
        try:
            material = load_material(self.cfg, now=self._now())
        except TlsMaterialError as e:
            message = str(e)
            if self._last_error != (stamps, message):
                self._last_error = (stamps, message)
                self.on_error(message)
            return None
        self._good, self._last_error = stamps, None
        if material == self.current:
            return None
        self.current = material
        self.on_change(material)
        return material

    def start(self) -> None:
        """Start polling (idempotent). Needs a running loop unless one was injected."""
        if self._task is None or self._task.done():
            loop = self.loop or asyncio.get_running_loop()
            self._task = loop.create_task(self._run(), name="meshproxy-cert-watcher")

    def stop(self) -> None:
        """Stop polling (idempotent); the current material stays as it is."""
        if self._task is not None:
            self._task.cancel()
            self._task = None

    async def _run(self) -> None:
        interval = max(float(self.cfg.rotation_check_interval), 0.05)
        while True:
            await asyncio.sleep(interval)
            try:
                self.check_now()
            except Exception:  # a callback failed: keep watching
                log.exception("certificate watcher: callback failed")
