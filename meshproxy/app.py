"""Lifecycle: start → ready → drain → exit.

Where this sits: on top of everything. ``cli.py`` builds an ``App`` from a
``Snapshot`` and awaits ``run()``. ``App`` binds the listeners (``net/``), starts
the admin sites (``admin/``), flips to LIVE, and on SIGTERM/SIGINT or
``POST /quitquitquit`` drains: stop accepting, let in-flight connections finish
for up to ``drain.duration``, close what is left, return 0.

States (Envoy's names): PRE_INITIALIZING → LIVE → DRAINING → (exit).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
import time

from . import __version__, build
from .admin.server import Admin
from .config.snapshot import Snapshot
from .loop import loop_name
from .net.addrs import Direction
from .net.listener import Connections, Listener, explicit_spec, transparent_spec
from .net.origdst import original_dst
from .observe.metrics import Metrics

log = logging.getLogger("meshproxy.app")

GC_THRESHOLDS = (7000, 20, 20)
"""Cyclic GC: collect the youngest generation every 7000 net allocations instead of 700. The
request path makes short-lived containers that reference counting frees; at the default
the collector ran many times per thousand requests for nothing (about 3.5 % of CPU)."""

FLUSH_INTERVAL = 5.0
"""Seconds between moves of live byte counts into Prometheus counters (also done before every scrape)."""


def _changed_sections(old, new, reloadable) -> list[str]:
    """Top-level (and ``security.*``) sections that differ and cannot be swapped live."""
    out = []
    from .config.frozen import fields_of

    for name in fields_of(old):
        a, b = getattr(old, name), getattr(new, name)
        if name == "security":
            for sub in fields_of(a):
                if getattr(a, sub) != getattr(b, sub) and f"security.{sub}" not in reloadable:
                    out.append(f"security.{sub}")
        elif a != b and name not in reloadable:
            out.append(name)
    return out


class App:
    def __init__(self, snapshot: Snapshot, *, origdst=original_dst):
        self.snapshot = snapshot
        cfg = snapshot.config
        self.metrics = Metrics(cfg.node)
        self.connections = Connections(self.metrics)
        self.admin = Admin(self)
        self.state = "PRE_INITIALIZING"
        self.ready = asyncio.Event()
        """Set once listeners are bound and admin is up (tests await it)."""
        self.started_at = time.time()
        self._stop = asyncio.Event()
        self._stop_reason = ""
        self._draining = False
        self.listeners: list[Listener] = []
        self.origdst = origdst
        self.http = None
        """The ``HttpContext`` shared by all listeners; built in ``start()`` (needs the loop)."""
        self.mesh = None
        """``net.mesh.Mesh`` when ``security.tls`` names a workload certificate."""
        self.authorizer = None
        """``authz.engine.Authorizer`` when authorization policies are configured."""
        self.watcher = None
        """``config.watch.ConfigWatcher`` when started from a file."""
        self._flusher: asyncio.Task | None = None

    def _build_listeners(self) -> None:
        cfg = self.snapshot.config
        own = {cfg.inbound.port, cfg.outbound.port}
        specs = []
        if cfg.outbound.enabled:
            specs.append(transparent_spec("virtualOutbound", Direction.OUTBOUND, cfg.outbound.addresses,
                                          cfg.outbound.port, own, cfg))
        if cfg.inbound.enabled:
            specs.append(transparent_spec("virtualInbound", Direction.INBOUND, cfg.inbound.addresses,
                                          cfg.inbound.port, own, cfg))
        specs.extend(explicit_spec(lst, cfg) for lst in cfg.listeners)
        self.listeners = [Listener(spec, self.connections, self.metrics, self.origdst, self.http, self.mesh,
                                   self.authorizer) for spec in specs]

    # -- queries for admin ----------------------------------------------------
    def listener_info(self) -> list[dict]:
        return [{"name": lst.spec.name, "direction": lst.spec.plan.direction.value,
                 "addresses": [str(a) for a in lst.bound]} for lst in self.listeners]

    def server_info(self) -> dict:
        return {"version": __version__, "build": build(), "state": self.state,
                "uptime_seconds": int(time.time() - self.started_at),
                "loop": loop_name(), "config_version": self.snapshot.version,
                "active_connections": self.active_connections()}

    # -- lifecycle ------------------------------------------------------------
    async def start(self) -> None:
        """Bind everything; on failure close what was bound and raise ``OSError``."""
        self.metrics.server_state.set(0)
        cfg = self.snapshot.config
        sec = cfg.security
        if sec.tls.enabled:
            from .net.mesh import Mesh

            self.mesh = Mesh(sec, self.metrics)  # may raise StartupError
        if sec.authorization_policies:
            from .authz.engine import Authorizer

            self.authorizer = Authorizer(sec.authorization_policies)
        if cfg.inbound.enabled or cfg.outbound.enabled or any(lst.protocol != "tcp" for lst in cfg.listeners):
            from .http.context import HttpContext  # the HTTP stack is loaded only where HTTP can arrive

            self.http = HttpContext(cfg, self.metrics, mesh=self.mesh, authorizer=self.authorizer)
        self._build_listeners()
        try:
            for lst in self.listeners:
                await lst.start()
            await self.admin.start()
        except OSError:
            await self._close_all()
            raise
        self._flusher = asyncio.get_running_loop().create_task(self._flush_loop())
        if self.mesh is not None:
            self.mesh.start()
        if self.snapshot.source != "<defaults>":
            from .config.watch import ConfigWatcher

            from .config.frozen import Record

            self.watcher = ConfigWatcher(self.snapshot.source, cfg.reload.interval, self.apply, self._reload_failed,
                                         isolated=isinstance(cfg, Record))
            self.watcher.start()
        self.state = "LIVE"
        self.metrics.server_state.set(1)
        gc.freeze()  # start-up objects never change: keep them out of every later collection
        gc.set_threshold(*GC_THRESHOLDS)
        self.ready.set()
        log.info("meshproxy %s live on %s (loop: %s)", __version__,
                 ", ".join(f"{i['name']}={'/'.join(i['addresses'])}" for i in self.listener_info()),
                 loop_name())

    async def _flush_loop(self) -> None:
        while True:
            await asyncio.sleep(FLUSH_INTERVAL)
            self.connections.flush()

    # -- hot reload -----------------------------------------------------------
    RELOADABLE = ("routes", "clusters", "security.authorization_policies", "reload")

    def apply(self, cfg) -> None:
        """Take a new, valid config: routes, clusters and authorization policies apply to new
        requests and connections at once (in-flight work keeps the old ones); anything else
        is reported as needing a restart and keeps its running value."""
        old = self.snapshot.config
        self.snapshot = self.snapshot.successor(cfg, self.snapshot.source)
        authorizer = None
        if cfg.security.authorization_policies:
            from .authz.engine import Authorizer

            authorizer = Authorizer(cfg.security.authorization_policies)
        self.authorizer = authorizer
        for lst in self.listeners:
            if lst.spec.plan.direction is Direction.INBOUND:
                lst.authorizer = authorizer
        if self.http is not None:
            self.http.set_authorizer(authorizer)
            self.http.set_routing(cfg)
        self.metrics.config_reloads.inc()
        stale = _changed_sections(old, cfg, self.RELOADABLE)
        log.info("config version %d loaded from %s%s", self.snapshot.version, self.snapshot.source,
                 f"; changes to {', '.join(stale)} take effect after a restart" if stale else "")

    def _reload_failed(self, message: str) -> None:
        self.metrics.config_errors.inc()
        log.error("config reload refused, keeping version %d:\n%s", self.snapshot.version, message)

    def reload_now(self) -> None:
        """SIGHUP: check the file at once."""
        if self.watcher is not None:
            self.watcher.check_soon()

    def request_shutdown(self, reason: str) -> None:
        if not self._stop.is_set():
            self._stop_reason = reason
            self._stop.set()

    def drain_listeners(self) -> None:
        """Stop accepting and fail readiness; connections in flight go on."""
        if not self._draining:
            self._draining = True
            self.state = "DRAINING"
            self.metrics.server_state.set(2)
            for lst in self.listeners:
                lst.close()
            if self.http is not None:
                self.http.drain()
            log.info("listeners drained: no new connections accepted")

    async def run(self) -> int:
        """Start, serve until asked to stop, drain, return the exit code."""
        loop = asyncio.get_running_loop()
        await self.start()
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                loop.add_signal_handler(sig, self.request_shutdown, signal.Signals(sig).name)
            except (NotImplementedError, RuntimeError, ValueError):
                pass  # not the main thread (tests): shutdown comes from request_shutdown
        try:
            loop.add_signal_handler(signal.SIGHUP, self.reload_now)
        except (NotImplementedError, RuntimeError, ValueError):
            pass
        try:
            await self.serve_until_stopped()
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                try:
                    loop.remove_signal_handler(sig)
                except (NotImplementedError, RuntimeError, ValueError):
                    pass
        return 0

    async def serve_until_stopped(self) -> None:
        await self._stop.wait()
        cfg = self.snapshot.config.drain
        await self.drain(cfg.duration, cfg.exit_on_zero_active_connections)

    async def drain(self, duration: float, exit_on_zero: bool) -> None:
        """Stop accepting; keep in-flight connections for ``duration`` (Istio's
        terminationDrainDuration), or only until none is left when ``exit_on_zero``
        (Istio's EXIT_ON_ZERO_ACTIVE_CONNECTIONS); then close what is left."""
        log.info("draining (%s): %d active connections, up to %.1fs",
                 self._stop_reason or "requested", len(self.connections.active), duration)
        self.drain_listeners()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + duration
        if exit_on_zero:
            while self.active_connections() and loop.time() < deadline:
                await asyncio.sleep(0.05)
        else:
            await asyncio.sleep(duration)
        if self.active_connections():
            log.warning("drain period over: closing %d connections", self.active_connections())
            self.connections.abort_all()
            if self.http is not None:
                self.http.close()
            await asyncio.sleep(0)
        await self._close_all()
        log.info("meshproxy stopped")

    def active_connections(self) -> int:
        """Relayed TCP connections plus downstream HTTP connections."""
        return len(self.connections.active) + (len(self.http.connections) if self.http is not None else 0)

    async def _close_all(self) -> None:
        if self._flusher is not None:
            self._flusher.cancel()
        for lst in self.listeners:
            lst.close()
        if self.http is not None:
            self.http.close()
        if self.mesh is not None:
            self.mesh.stop()
        if self.watcher is not None:
            self.watcher.stop()
        await self.admin.stop()
