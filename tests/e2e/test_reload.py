"""Hot reload from the config file: authorization policies and routes change for new
requests; an invalid file is refused and the running config kept."""

from __future__ import annotations

import asyncio

import aiohttp
import yaml
from aiohttp import web
from e2e_support import BASE, merge, metric_value

from meshproxy.app import App
from meshproxy.config.load import load
from meshproxy.config.snapshot import Snapshot
from meshproxy.net.addrs import OrigDst


async def start_app(name: str):
    async def handle(req):
        return web.Response(text=f"{name}:{req.path}")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, site._server.sockets[0].getsockname()[1]


async def get(url):
    async with aiohttp.ClientSession() as s:
        async with s.get(url) as resp:
            return resp.status, await resp.text()


async def wait_for(predicate, timeout=5.0):
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        if await predicate():
            return True
        await asyncio.sleep(0.05)
    return False


async def test_policies_and_routes_reload_and_bad_files_are_refused(tmp_path, origdst):
    runner_a, port_a = await start_app("a")
    runner_b, port_b = await start_app("b")
    path = tmp_path / "mesh.yaml"

    def write(allowed_paths, cluster_port, extra=""):
        cfg = merge(BASE, {
            "inbound": {"enabled": True},
            "reload": {"interval": "0.1s"},
            "clusters": [{"name": "app", "endpoints": [f"127.0.0.1:{cluster_port}"]}],
            "routes": [{"name": "all", "match": {"path": {"prefix": "/r/"}}, "cluster": "app"}],
            "security": {"authorization_policies": [
                {"name": "paths", "action": "ALLOW", "rules": [{"to": [{"paths": allowed_paths}]}]}]},
        })
        path.write_text(yaml.safe_dump(cfg) + extra)

    write(["/a", "/r/*"], port_a)
    origdst.default = OrigDst("127.0.0.1", port_a)  # unrouted inbound requests go to app a
    app = App(Snapshot(load(path), source=str(path)), origdst=origdst)
    task = asyncio.ensure_future(app.run())
    await asyncio.wait_for(app.ready.wait(), 10)
    port = app.listeners[0].bound[0].port
    url = f"http://127.0.0.1:{port}"
    try:
        assert await get(f"{url}/a") == (200, "a:/a")
        assert (await get(f"{url}/b"))[0] == 403
        assert await get(f"{url}/r/x") == (200, "a:/r/x")

        write(["/a", "/b", "/r/*"], port_b)  # allow /b, and move the route to app b
        assert await wait_for(lambda: _status_is(f"{url}/b", 200)), "policy change not applied"
        assert await get(f"{url}/r/x") == (200, "b:/r/x")
        assert app.snapshot.version == 2

        path.write_text("routes: [{name: broken}]\n")  # invalid: no cluster
        assert await wait_for(lambda: _metric_at_least(app, "meshproxy_config_errors_total", 1))
        assert app.snapshot.version == 2
        assert await get(f"{url}/b") == (200, "a:/b")  # the running config is kept
        text = await metrics_text_of(app)
        assert metric_value(text, "meshproxy_config_reloads_total") == 1
    finally:
        app.request_shutdown("test end")
        await asyncio.wait_for(task, 10)
        await runner_a.cleanup()
        await runner_b.cleanup()


async def _status_is(url, status) -> bool:
    return (await get(url))[0] == status


async def metrics_text_of(app) -> str:
    host, port = app.admin.bound["prometheus"]
    async with aiohttp.ClientSession() as s:
        async with s.get(f"http://{host}:{port}/stats/prometheus") as resp:
            return await resp.text()


async def _metric_at_least(app, name, value) -> bool:
    return metric_value(await metrics_text_of(app), name) >= value


def test_changed_sections_names_what_needs_a_restart():
    from meshproxy.app import _changed_sections
    from meshproxy.config.load import from_dict

    old = from_dict({})
    new = from_dict({"outbound": {"port": 15011}, "security": {"peer_authentication": {"mode": "STRICT"}},
                     "routes": [], "log": {"level": "debug"}})
    assert _changed_sections(old, new, App.RELOADABLE) == ["outbound", "log", "security.peer_authentication"]
