"""Admin, health and Prometheus endpoints, Envoy-style paths.

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
  GET  /server_info       state, version, build (sources or compiled), uptime, loop
  GET  /certs             the workload certificate in use and the trust bundle (Envoy's JSON)
  POST /quitquitquit      drain and exit 0, like SIGTERM
  POST /drain_listeners   stop accepting and fail readiness; in-flight work goes on
  POST /logging?level=L   set the log level
"""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING, Any

from ..config.frozen import dump
from ..observe import log as logsetup
from .httpd import Request, Response, Routes, Site

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


def _json(obj) -> Response:
    return Response(200, json.dumps(obj, indent=2) + "\n", "application/json")


class Admin:
    def __init__(self, app: "App"):
        self.app = app
        self.sites: list[Site] = []
        self.bound: dict[str, tuple[str, int]] = {}

    # -- handlers -------------------------------------------------------------
    def index(self, request: Request) -> Response:
        return Response(200, __doc__.split("Admin paths:\n", 1)[1])

    def ready(self, request: Request) -> Response:
        state = self.app.state
        return Response(200 if state == "LIVE" else 503, state + "\n")

    def prometheus(self, request: Request) -> Response:
        return Response(200, self.app.metrics.render(), PROM_CONTENT_TYPE)

    def config_dump(self, request: Request) -> Response:
        snap = self.app.snapshot
        return _json({"version": snap.version, "loaded_at": snap.loaded_at, "source": snap.source,
                      "config": redact(dump(snap.config))})

    def listeners(self, request: Request) -> Response:
        info = self.app.listener_info()
        if request.query.get("format") == "json":
            return _json({"listener_statuses": info})
        return Response(200, "".join(f"{i['name']}::{a}\n" for i in info for a in i["addresses"]))

    def clusters(self, request: Request) -> Response:
        dump = self.app.http.clusters_dump() if self.app.http is not None else []
        if request.query.get("format") == "json":
            return _json({"cluster_statuses": dump})
        return Response(200, "".join(f"{c['name']}::{e['address']}::{k}::{v}\n" for c in dump
                                     for e in c["endpoints"] for k, v in e.items() if k != "address"))

    def server_info(self, request: Request) -> Response:
        return _json(self.app.server_info())

    def certs(self, request: Request) -> Response:
        from ..tls.report import certs_report  # cryptography loads only when someone asks

        mesh = self.app.mesh
        if mesh is None:
            return _json(certs_report(None, "", ""))
        tls = mesh.cfg.tls
        return _json(certs_report(mesh.material, tls.cert_file or "", tls.bundle_file or ""))

    def quit(self, request: Request) -> Response:
        self.app.request_shutdown("POST /quitquitquit")
        return Response(200, "OK\n")

    def drain_listeners(self, request: Request) -> Response:
        self.app.drain_listeners()
        return Response(200, "OK\n")

    def logging(self, request: Request) -> Response:
        level = request.query.get("level")
        if level is not None:
            try:
                logsetup.set_level(level)
            except ValueError as e:
                return Response(400, f"{e}\n")
            log.warning("log level set to %s", level)
        return Response(200, f"active loggers:\n  meshproxy: {logsetup.get_level()}\n")

    # -- sites ----------------------------------------------------------------
    def routes(self, site: str) -> Routes:
        if site == "health":
            return {"/healthz/ready": {"GET": self.ready}}
        if site == "prometheus":
            return {"/stats/prometheus": {"GET": self.prometheus}, "/metrics": {"GET": self.prometheus}}
        return {
            "/": {"GET": self.index},
            "/ready": {"GET": self.ready},
            "/healthz/ready": {"GET": self.ready},
            "/stats/prometheus": {"GET": self.prometheus},
            "/config_dump": {"GET": self.config_dump},
            "/listeners": {"GET": self.listeners},
            "/clusters": {"GET": self.clusters},
            "/server_info": {"GET": self.server_info},
            "/certs": {"GET": self.certs},
            "/quitquitquit": {"POST": self.quit},
            "/drain_listeners": {"POST": self.drain_listeners},
            "/logging": {"POST": self.logging},
        }

    async def start(self) -> None:
        cfg = self.app.snapshot.config
        for name, ep in (("admin", cfg.admin), ("health", cfg.health), ("prometheus", cfg.prometheus)):
            if not ep.enabled:
                continue
            site = Site(self.routes(name))
            try:
                await site.start(ep.address, ep.port)
            except OSError as e:
                raise OSError(e.errno, f"{name}: cannot bind {ep.address}:{ep.port}: {e.strerror}") from None
            self.sites.append(site)
            self.bound[name] = site.bound

    async def stop(self) -> None:
        for site in self.sites:
            site.close()
        self.sites.clear()
