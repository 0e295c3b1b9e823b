"""Admin, health and Prometheus endpoints (aiohttp), Envoy-style paths.

Where this sits: beside the data flow. ``app.py`` starts up to three sites:
admin (127.0.0.1:15000, every path below), health (``/healthz/ready`` on 15021)
and Prometheus (``/stats/prometheus`` on 15090). Handlers only read the app's
state or ask it to drain/stop; they never touch the byte path.

Admin paths:
  GET  /                  this list
  GET  /ready             200 LIVE once listeners are bound and not draining, else 503
  GET  /stats/prometheus  Prometheus text
  GET  /config_dump       effective config as JSON (secrets redacted)
  GET  /listeners         one line per listener address (``?format=json`` for JSON)
  GET  /clusters          per-endpoint counters, Envoy's text format (``?format=json`` for JSON)
  GET  /server_info       state, version, uptime, loop
  POST /quitquitquit      drain and exit 0, like SIGTERM
  POST /drain_listeners   stop accepting and fail readiness; in-flight work goes on
  POST /logging?level=L   set the log level
"""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING, Any

from aiohttp import web

from .. import __version__
from ..observe import log as logsetup

if TYPE_CHECKING:
    from ..app import App

log = logging.getLogger("meshproxy.admin")

_SECRET_WORDS = ("key", "secret", "token", "password")
PROM_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def redact(value: Any, field: str = "") -> Any:
    """Replace values of fields that hold secrets (``*key*``, ``*secret*`` ...)."""
    if isinstance(value, dict):
        return {k: redact(v, k) for k, v in value.items()}
    if isinstance(value, list):
        return [redact(v, field) for v in value]
    if any(w in field.lower() for w in _SECRET_WORDS) and value not in (None, ""):
        return "[redacted]"
    return value


class Admin:
    def __init__(self, app: "App"):
        self.app = app
        self.runners: list[web.AppRunner] = []
        self.bound: dict[str, tuple[str, int]] = {}

    # -- handlers -------------------------------------------------------------
    async def index(self, request: web.Request) -> web.Response:
        return web.Response(text=__doc__.split("Admin paths:\n", 1)[1])

    async def ready(self, request: web.Request) -> web.Response:
        state = self.app.state
        return web.Response(status=200 if state == "LIVE" else 503, text=state + "\n")

    async def prometheus(self, request: web.Request) -> web.Response:
        body = self.app.metrics.render()
        return web.Response(body=body, headers={"Content-Type": PROM_CONTENT_TYPE})

    async def config_dump(self, request: web.Request) -> web.Response:
        dump = {"version": self.app.snapshot.version, "loaded_at": self.app.snapshot.loaded_at,
                "source": self.app.snapshot.source,
                "config": redact(self.app.snapshot.config.model_dump(mode="json"))}
        return web.json_response(dump, dumps=lambda o: json.dumps(o, indent=2))

    async def listeners(self, request: web.Request) -> web.Response:
        info = self.app.listener_info()
        if request.query.get("format") == "json":
            return web.json_response({"listener_statuses": info}, dumps=lambda o: json.dumps(o, indent=2))
        lines = [f"{i['name']}::{a}" for i in info for a in i["addresses"]]
        return web.Response(text="\n".join(lines) + "\n")

    async def clusters(self, request: web.Request) -> web.Response:
        dump = self.app.http.clusters_dump() if self.app.http is not None else []
        if request.query.get("format") == "json":
            return web.json_response({"cluster_statuses": dump}, dumps=lambda o: json.dumps(o, indent=2))
        lines = [f"{c['name']}::{e['address']}::{k}::{v}" for c in dump for e in c["endpoints"]
                 for k, v in e.items() if k != "address"]
        return web.Response(text="\n".join(lines) + "\n")

    async def server_info(self, request: web.Request) -> web.Response:
        return web.json_response(self.app.server_info(), dumps=lambda o: json.dumps(o, indent=2))

    async def quit(self, request: web.Request) -> web.Response:
        self.app.request_shutdown("POST /quitquitquit")
        return web.Response(text="OK\n")

    async def drain_listeners(self, request: web.Request) -> web.Response:
        self.app.drain_listeners()
        return web.Response(text="OK\n")

    async def logging(self, request: web.Request) -> web.Response:
        level = request.query.get("level")
        if level is not None:
            try:
                logsetup.set_level(level)
            except ValueError as e:
                return web.Response(status=400, text=f"{e}\n")
            log.warning("log level set to %s", level)
        return web.Response(text=f"active loggers:\n  meshproxy: {logsetup.get_level()}\n")

    # -- sites ----------------------------------------------------------------
    def _admin_app(self) -> web.Application:
        app = web.Application()
        r = app.router
        r.add_get("/", self.index)
        r.add_get("/ready", self.ready)
        r.add_get("/healthz/ready", self.ready)
        r.add_get("/stats/prometheus", self.prometheus)
        r.add_get("/config_dump", self.config_dump)
        r.add_get("/listeners", self.listeners)
        r.add_get("/clusters", self.clusters)
        r.add_get("/server_info", self.server_info)
        r.add_post("/quitquitquit", self.quit)
        r.add_post("/drain_listeners", self.drain_listeners)
        r.add_post("/logging", self.logging)
        return app

    def _health_app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/healthz/ready", self.ready)
        return app

    def _prom_app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/stats/prometheus", self.prometheus)
        app.router.add_get("/metrics", self.prometheus)
        return app

    async def start(self) -> None:
        cfg = self.app.snapshot.config
        for name, ep, make in (("admin", cfg.admin, self._admin_app), ("health", cfg.health, self._health_app),
                               ("prometheus", cfg.prometheus, self._prom_app)):
            if not ep.enabled:
                continue
            runner = web.AppRunner(make(), access_log=None, handle_signals=False)
            await runner.setup()
            site = web.TCPSite(runner, ep.address, ep.port, reuse_address=True)
            try:
                await site.start()
            except OSError as e:
                await runner.cleanup()
                raise OSError(e.errno, f"{name}: cannot bind {ep.address}:{ep.port}: {e.strerror}") from None
            self.runners.append(runner)
            sock = site._server.sockets[0]  # type: ignore[union-attr]
            self.bound[name] = sock.getsockname()[:2]

    async def stop(self) -> None:
        for runner in self.runners:
            await runner.cleanup()
        self.runners.clear()
