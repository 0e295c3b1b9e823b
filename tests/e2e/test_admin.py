"""Admin, health and Prometheus endpoints, Envoy-style."""

from __future__ import annotations

import asyncio
import json

import aiohttp
import pytest


async def get(url, method="GET"):
    async with aiohttp.ClientSession() as s:
        async with s.request(method, url) as resp:
            return resp.status, await resp.text()


async def test_ready_and_health(proxy):
    r = await proxy()
    assert await get(r.url("admin", "/ready")) == (200, "LIVE\n")
    assert (await get(r.url("health", "/healthz/ready")))[0] == 200
    # The health site serves only readiness; the prometheus site only metrics.
    assert (await get(r.url("health", "/config_dump")))[0] == 404
    status, text = await get(r.url("prometheus", "/stats/prometheus"))
    assert status == 200 and "meshproxy_server_state 1.0" in text


async def test_admin_listens_on_localhost_only_by_default(proxy):
    r = await proxy()
    assert r.app.admin.bound["admin"][0] == "127.0.0.1"


async def test_prometheus_on_admin_too(proxy):
    r = await proxy()
    status, text = await get(r.url("admin", "/stats/prometheus"))
    assert status == 200 and "# TYPE istio_tcp_connections_opened_total counter" in text


async def test_config_dump_is_effective_config_with_secrets_redacted(proxy):
    r = await proxy({"listeners": [{"name": "web", "port": 0, "upstream": "127.0.0.1:1"}]})
    status, text = await get(r.url("admin", "/config_dump"))
    assert status == 200
    dump = json.loads(text)
    assert dump["config"]["listeners"][0]["name"] == "web"
    assert dump["config"]["outbound"]["port"] == 0
    assert dump["config"]["drain"]["duration"] == 0.1


async def test_certs_without_a_workload_certificate(proxy):
    r = await proxy()
    status, text = await get(r.url("admin", "/certs"))
    assert status == 200 and json.loads(text) == {"certificates": []}
    status, text = await get(r.url("admin", "/"))
    assert "GET  /certs" in text


def test_redact():
    from meshproxy.admin.server import redact

    assert redact({"tls": {"key_file": "/k", "cert_file": "/c"}, "api_token": "t", "n": [{"secret": 1}]}) == {
        "tls": {"key_file": "[redacted]", "cert_file": "/c"}, "api_token": "[redacted]", "n": [{"secret": "[redacted]"}]}


async def test_listeners(proxy):
    r = await proxy({"listeners": [{"name": "web", "port": 0, "upstream": "127.0.0.1:1"}],
                     "outbound": {"enabled": True}})
    status, text = await get(r.url("admin", "/listeners"))
    assert status == 200
    assert f"web::127.0.0.1:{r.port('web')}" in text.splitlines()
    assert f"virtualOutbound::127.0.0.1:{r.port('virtualOutbound')}" in text.splitlines()
    status, text = await get(r.url("admin", "/listeners?format=json"))
    names = {x["name"] for x in json.loads(text)["listener_statuses"]}
    assert names == {"web", "virtualOutbound"}


@pytest.mark.parametrize("path", ["/quitquitquit", "/drain_listeners", "/logging?level=debug"])
async def test_get_on_mutating_path_is_405(proxy, path):
    r = await proxy()
    assert (await get(r.url("admin", path)))[0] == 405
    assert r.app.state == "LIVE"


async def test_logging_level(proxy):
    import logging

    r = await proxy()
    status, text = await get(r.url("admin", "/logging?level=debug"), "POST")
    assert status == 200 and "meshproxy: debug" in text
    assert logging.getLogger("meshproxy").level == logging.DEBUG
    status, text = await get(r.url("admin", "/logging?level=loud"), "POST")
    assert status == 400 and "unknown log level" in text
    await get(r.url("admin", "/logging?level=info"), "POST")


async def test_drain_listeners_fails_readiness_and_stops_accepting(proxy):
    async def upstream(reader, writer):
        writer.write(b"ok")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(upstream, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    r = await proxy({"listeners": [{"name": "web", "port": 0, "upstream": f"127.0.0.1:{port}"}]})
    lport = r.port("web")
    assert (await get(r.url("admin", "/drain_listeners"), "POST")) == (200, "OK\n")
    assert await get(r.url("admin", "/ready")) == (503, "DRAINING\n")
    assert (await get(r.url("health", "/healthz/ready")))[0] == 503
    with pytest.raises(ConnectionRefusedError):
        await asyncio.open_connection("127.0.0.1", lport)
    server.close()


async def test_quitquitquit_exits_zero(proxy):
    r = await proxy()
    assert (await get(r.url("admin", "/quitquitquit"), "POST")) == (200, "OK\n")
    assert await asyncio.wait_for(r.task, 5) == 0


async def test_server_info_names_the_build_the_suite_runs(proxy):
    import os
    import subprocess
    import sys

    r = await proxy()
    status, text = await get(r.url("admin", "/server_info"))
    expected = "compiled" if os.environ.get("MESHPROXY_EXPECT_COMPILED") == "1" else "sources"
    info = json.loads(text)
    assert status == 200 and info["build"] == expected and info["state"] == "LIVE"
    out = subprocess.run([sys.executable, "-m", "meshproxy", "--version"], capture_output=True, text=True, timeout=30)
    assert out.stdout.strip().endswith(f"({expected})"), out.stdout + out.stderr
